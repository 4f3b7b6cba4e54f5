"""DP answers take no part in the exact disclosure audit, and nothing a researcher or a reviewer
sees depends on exactly who is inside a DP cell (SQLite and PostgreSQL).

Before: the export check was given the persons behind every DP cell, so its differencing reasons
said "(4 persons)", "(1 persons)" about DP cells. The attacker's test: two projects on the same
aggregate-only dataset whose extracts differ in one chosen person only (inside the cell
``county == '03'`` in one, in county '46' in the other: one extract is rewritten, which is the
same to every query as a world where that person lives elsewhere). The same queries, with the
same noise seed, are asked in both, and everything shown (answers but their noisy figures,
refusals, budgets, query history, audit events, the export check's released cells and the
exported answer's report) must be identical.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import select

from spe.accounts.service import get_user
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.dp import service
from spe.dp.errors import DPError
from spe.dp.export import exported_answer
from spe.exports.actions import released_tables
from spe.projects.extracts import current_extracts
from spe.projects.service import get_project
from spe.sdc.differencing import PersonSets, find_differencing, hash_person_ids
from spe.storage import data_storage
from tests.integration.dp_world import make_health
from tests.integration.test_dp_budget import ask_inline
from tests.integration.test_dp_dataset_budget import second_project

CELL = [["county", "==", "03"]]
QUERIES = [
    {"kind": "count", "epsilon": 0.01, "where": CELL},
    {"kind": "count", "epsilon": 0.05, "by": ["sex"], "where": CELL},
    {"kind": "sum", "epsilon": 0.05, "column": "bmi", "where": [*CELL, ["age", "<=", 0]]},
    {"kind": "mean", "epsilon": 0.05, "column": "bmi", "where": [*CELL, ["age", "<=", 0]]},
    {"kind": "median", "epsilon": 0.05, "column": "age", "where": [*CELL, ["age", "<=", 0]]},
    {
        "kind": "linear_regression",
        "epsilon": 0.05,
        "features": ["age"],
        "target": "bmi",
        "where": [*CELL, ["age", "<=", 0]],
    },
    {
        "kind": "logistic_regression",
        "epsilon": 0.05,
        "features": ["age"],
        "target": "diabetes",
        "where": [*CELL, ["age", "<=", 0]],
    },
    {"kind": "count", "epsilon": 5.0, "where": CELL},  # over the budget: refused
]


def extract_path(slug: str) -> Any:
    with readonly() as s:
        return data_storage().path(current_extracts(s, get_project(s, slug))["health"].path)


def move_the_chosen_person_out_of_the_cell(slug: str) -> None:
    """The only person of county '03' aged 0 with BMI 20 (row 0 of the generated survey)."""
    path = extract_path(slug)
    table = pq.read_table(path)
    chosen = pc.and_(
        pc.and_(pc.equal(table["county"], "03"), pc.equal(table["age"], 0)),
        pc.equal(table["bmi"], 20.0),
    )
    assert pc.sum(chosen).as_py() == 1
    county = pc.if_else(chosen, pa.scalar("46"), table["county"])
    pq.write_table(table.set_column(table.schema.get_field_index("county"), "county", county), path)


def seeded(seed: int) -> Any:
    from spe.dp.compute import compute

    def run(query: Any, table: Any, dp: Any) -> Any:
        return compute(query, table, dp, np.random.RandomState(seed))

    return run


def ask_seeded(slug: str, request: dict[str, Any], seed: int) -> dict[str, Any]:
    """Submit and run the job with a seeded noise source; the answer or the refusal."""
    from spe.jobs.service import claim

    try:
        job_id = service.submit_query("researcher", slug, {"dataset": "health", **request})
        params = claim(job_id)
        assert params is not None
        return service.run_query(job_id, params, compute=seeded(seed))
    except DPError as exc:
        return {"refused": exc.message}


def shown(slug: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the researcher and the reviewer see about the project's DP use, but the noisy
    figures, with ids, times and the project's name made neutral."""
    noisy = {"values", "interval95", "query"}
    out: dict[str, Any] = {
        "answers": [{k: v for k, v in a.items() if k not in noisy} for a in answers]
    }
    with readonly() as s:
        project = get_project(s, slug)
        for who in ("researcher", "reviewer"):
            user = get_user(s, who)
            out[f"budgets:{who}"] = service.budgets(s, user, slug)
            out[f"history:{who}"] = [
                {k: v for k, v in row.items() if k not in ("query", "at")}
                for row in service.history(s, user, slug)
            ]
        out["variables"] = service.variables(s, get_user(s, "researcher"), slug, "health")
        out["released_for_the_export_check"] = released_tables(s, project.id)
        events = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.project == slug, AuditEvent.action.like("dp.%"))
            .order_by(AuditEvent.id)
        )
        out["audit"] = [(e.actor, e.action, _neutral(json.loads(e.details))) for e in events]
        first = next(a for a in answers if "query" in a)["query"]
        export = exported_answer(s, project, first)
        out["export_report"] = {
            k: v for k, v in export.report.items() if k not in ("query", "asked_at")
        }
        header, *rows = export.csv.decode().splitlines()
        out["export_csv_header"] = header
        out["export_csv_rows"] = len(rows)
    return json.loads(json.dumps(out, default=str).replace(slug, "PROJECT"))


def _neutral(details: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(details, sort_keys=True)
    return json.loads(
        re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", text)
    )


def test_what_anyone_sees_is_the_same_with_and_without_a_chosen_person_in_the_dp_cell(
    world, tmp_path, monkeypatch
):
    make_health(tmp_path, monkeypatch, persons=300, total=2.0)
    second_project()
    policy = tmp_path / "policies" / "datasets" / "health.yaml"
    policy.write_text(
        policy.read_text().replace(
            "epsilon_total: 2.0", "epsilon_total: 2.0\n  epsilon_per_project: 1.0"
        )
    )
    move_the_chosen_person_out_of_the_cell("study2")
    with_person = [ask_seeded("study", q, seed) for seed, q in enumerate(QUERIES)]
    without = [ask_seeded("study2", q, seed) for seed, q in enumerate(QUERIES)]
    assert "refused" in with_person[-1] and "refused" not in with_person[0]
    assert shown("study", with_person) == shown("study2", without)


def test_a_dp_answer_gives_the_export_check_no_persons_so_no_reason_counts_a_dp_cell(
    world, tmp_path, monkeypatch
):
    """The old attack: a later table whose cell is the DP cell but three persons. Subtracting
    used to isolate three persons and say so; now there is no DP cell to subtract from."""
    make_health(tmp_path, monkeypatch, persons=200)
    ask_inline(
        {
            "kind": "count",
            "dataset": "health",
            "epsilon": 0.1,
            "by": ["sex"],
            "where": [["age", ">=", 10]],
        }
    )
    with readonly() as s:
        project_id = get_project(s, "study").id
        tables = released_tables(s, project_id)
    assert not [t for t in tables if t.name.startswith("dp:")]
    frame = pq.read_table(extract_path("study")).to_pandas()
    women = frame[(frame.sex == "F") & (frame.age >= 10)]["person_id"]
    fewer = np.sort(hash_person_ids(np.asarray(women, dtype=object).astype("S")))[3:]
    new = PersonSets([(("group", "almost all women"),)], ["cell"], np.array([0, len(fewer)]), fewer)
    assert find_differencing(new, tables, threshold=10) == []
    with transaction() as s:  # nothing of this is kept for later checks either
        assert service.released_tables(s, project_id) == []
