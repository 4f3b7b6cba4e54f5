"""A DP answer filed for export through the front of the export path (SQLite and PostgreSQL):
the server recognises it from the ledger and releases the answer it recorded, without
reviewers when the dataset's policy allows; a reference the ledger does not hold is refused at
filing and nothing is queued (issue 13, point 6)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from spe.accounts.service import get_user
from spe.db import readonly, transaction
from spe.dp.client import DPResult
from spe.exports import actions
from spe.exports.errors import ExportInputError
from spe.exports.models import ExportRequest
from spe.projects.service import get_project
from spe.tasks import run_inline
from tests.integration.dp_world import make_health
from tests.integration.test_dp_budget import ask_inline


@pytest.fixture
def health(world, tmp_path, monkeypatch) -> dict[str, Any]:
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(tmp_path / "outbox"))
    return make_health(tmp_path, monkeypatch, total=1.0)


def _file(tmp_path: Path, name: str) -> str:
    with transaction() as s:
        request, job = actions.file_request(
            s,
            get_user(s, "researcher"),
            get_project(s, "study"),
            [actions.OutputRequest(name, "Counts by sex for the paper")],
            "DP counts",
            outbox=tmp_path / "outbox",
        )
        rid = str(request.id)
    run_inline(job)
    return rid


def test_a_filed_dp_answer_is_released_as_the_ledger_recorded_it(health, tmp_path):
    answer = ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.2, "by": ["sex"]})
    DPResult(answer).save("counts_by_sex")
    rid = _file(tmp_path, "counts_by_sex.dp.json")
    with transaction() as s:
        request = actions.get_request(s, rid)
        view = actions.detail(s, get_user(s, "researcher"), request)
        path = actions.download(s, get_user(s, "researcher"), request)
    assert view["status"] == "released" and view["auto_released"]
    assert view["outputs"][0]["computed_by"] == "dp"
    with zipfile.ZipFile(path) as z:
        released = z.read("outputs/counts_by_sex.csv").decode()
        record = json.loads(z.read("review-record.json"))
    values = [int(line.split(",")[1]) for line in released.splitlines()[1:]]
    assert values == answer["values"]  # the noisy answer, exactly as recorded
    assert record["decisions"][0]["computed_by"] == "dp"


def test_a_made_up_dp_reference_is_refused_and_nothing_is_queued(health, tmp_path):
    outbox = tmp_path / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / "fake.dp.json").write_text(
        json.dumps({"spe_dp_answer": 1, "query": "0" * 32}), "utf-8"
    )
    with readonly() as s:
        before = s.scalar(select(func.count()).select_from(ExportRequest))
    with pytest.raises(ExportInputError, match=r"fake\.dp\.json"):
        _file(tmp_path, "fake.dp.json")
    with readonly() as s:
        assert s.scalar(select(func.count()).select_from(ExportRequest)) == before
