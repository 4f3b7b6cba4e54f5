"""A DP answer taken out of SPE (SQLite and PostgreSQL): the notebook saves a reference to the
ledger's query, and the server hands the export check the answer it recorded, as CSV, with
whether the dataset's policy lets it out without reviewers. From the attacker's side: a
reference to another project's query, to a refused one, or to none is refused with a sentence,
and numbers edited into the reference file never reach the CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from spe.db import readonly
from spe.dp.client import DPResult, save
from spe.dp.errors import BudgetExhausted, DPError
from spe.dp.export import exported_answer, read_reference
from spe.projects.service import get_project
from tests.integration.dp_world import make_health
from tests.integration.test_dp_budget import ask_inline
from tests.integration.test_dp_dataset_budget import ask, second_project


@pytest.fixture
def health(world, tmp_path, monkeypatch) -> dict[str, Any]:
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(tmp_path / "outbox"))
    return make_health(tmp_path, monkeypatch, total=1.0)


def test_a_saved_dp_answer_exports_as_the_answer_the_ledger_recorded(health, tmp_path):
    answer = ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.2, "by": ["sex"]})
    path = DPResult(answer).save("counts_by_sex")
    assert path == tmp_path / "outbox" / "counts_by_sex.dp.json"
    assert json.loads(path.read_text()) == {"spe_dp_answer": 1, "query": answer["query"]}
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    query_id = read_reference(path.read_bytes())
    with readonly() as s:
        export = exported_answer(s, get_project(s, "study"), query_id)
    rows = list(csv.DictReader(io.StringIO(export.csv.decode())))
    assert [r["sex"] for r in rows] == ["F", "M"]
    assert [int(r["value"]) for r in rows] == answer["values"]
    assert [[int(r["low95"]), int(r["high95"])] for r in rows] == answer["interval95"]
    assert {r["epsilon"] for r in rows} == {"0.2"} and rows[0]["mechanism"] == answer["mechanism"]
    assert export.auto_release_allowed is True
    assert export.report["query"] == query_id and export.report["epsilon"] == 0.2
    assert export.datasets == ["health"]
    assert "without review" in export.report["decided_by"]


def test_a_policy_can_send_dp_exports_to_reviewers(health):
    policy = health["policies"] / "datasets" / "health.yaml"
    policy.write_text(
        policy.read_text().replace(
            "epsilon_total: 1.0", "epsilon_total: 1.0\n  export: {auto_release: false}"
        )
    )
    answer = ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.1})
    with readonly() as s:
        export = exported_answer(s, get_project(s, "study"), answer["query"])
    assert export.auto_release_allowed is False
    assert "sends DP answers to reviewers" in export.report["decided_by"]


def test_another_projects_refused_unknown_or_made_up_queries_are_refused_with_a_sentence(
    health,
):
    second_project()
    theirs = ask("study", 0.5)["query"]  # study's answer; study2 will try to export it
    with readonly() as s:
        study, study2 = get_project(s, "study"), get_project(s, "study2")
        with pytest.raises(DPError, match="not a DP query answered in project study2"):
            exported_answer(s, study2, theirs)
        for made_up in ("00000000-0000-0000-0000-000000000000", "'; DROP TABLE x; --", ""):
            with pytest.raises(DPError, match="not a DP query answered in project study"):
                exported_answer(s, study, made_up)
    for bad in (b"not json", b'{"spe_dp_answer": 1, "query": "x", "values": [1]}', b"[]"):
        with pytest.raises(DPError, match=r"\.dp\.json"):
            read_reference(bad)


def test_a_refused_query_has_no_answer_to_export(health):
    from spe.db import transaction
    from spe.dp import service
    from spe.jobs.service import claim

    ask("study", 0.8)
    # Two queries pass the early check; the second is refused when charged and recorded so.
    jobs = [
        service.submit_query(
            "researcher", "study", {"kind": "count", "dataset": "health", "epsilon": 0.2}
        )
        for _ in range(2)
    ]
    service.run_query(jobs[0], claim(jobs[0]))
    with pytest.raises(BudgetExhausted):
        service.run_query(jobs[1], claim(jobs[1]))
    with transaction() as s, pytest.raises(DPError, match="was refused"):
        exported_answer(s, "study", jobs[1])


def test_save_refuses_a_made_up_answer_and_a_path_for_a_name(health):
    from spe.dp.client import DPQueryError

    with pytest.raises(DPQueryError, match="names its query"):
        save(DPResult({"kind": "count", "epsilon": 1, "mechanism": "m", "values": [3]}), "x")
    real = DPResult(ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.1}))
    with pytest.raises(DPQueryError, match="not allowed"):
        real.save("../../etc/passwd")
