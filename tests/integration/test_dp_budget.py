"""The privacy budget ledger (SQLite and PostgreSQL): sequential composition, refusal with the
remaining budget, no overspending under a race, top-ups by the data holder only (from what the
dataset has unallocated), every query audited and recorded, and the rows/DP paths kept apart.
The dataset's own total, shared by projects, is tested in test_dp_dataset_budget.py."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from spe.accounts.service import get_user
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.dp import service
from spe.dp.errors import BudgetExhausted, DPError, DPPolicyError, WrongAccessPath
from spe.dp.models import DPBudget, DPQuery
from spe.errors import PermissionDenied
from spe.projects.service import get_project
from tests.integration.dp_world import make_health


@pytest.fixture
def health(world, tmp_path, monkeypatch) -> dict[str, Any]:
    return make_health(tmp_path, monkeypatch, total=1.0)


def ask_inline(request: dict[str, Any], username: str = "researcher") -> dict[str, Any]:
    """Submit a query and run its job here (the worker's code path, without the broker)."""
    from spe.tasks import run_inline

    job_id = service.submit_query(username, "study", request)
    view = run_inline(job_id)
    if view.status == "failed":
        raise DPError(str(view.error))
    assert view.result is not None
    return view.result


def events(action: str) -> list[AuditEvent]:
    with readonly() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))
        s.expunge_all()
        return rows


def remaining() -> float:
    with readonly() as s:
        (row,) = service.budgets(s, get_user(s, "researcher"), "study")
        return float(row["remaining"])


def test_queries_spend_the_budget_sequentially_and_each_is_audited_and_recorded(health):
    assert remaining() == 1.0
    first = ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.3})
    assert first["remaining"] == pytest.approx(0.7)
    assert abs(first["values"][0] - health["persons"]) < 60
    assert first["mechanism"].startswith("GeometricTruncated")
    assert first["noise_scale"] == pytest.approx(1 / 0.3)
    lo, hi = first["interval95"][0]
    assert lo <= first["values"][0] <= hi
    second = ask_inline(
        {"kind": "mean", "dataset": "health", "epsilon": 0.2, "column": "bmi", "by": ["sex"]}
    )
    assert second["remaining"] == pytest.approx(0.5)
    assert remaining() == pytest.approx(0.5)
    audited = events("dp.query")
    assert [e.actor for e in audited] == ["researcher", "researcher"]
    details = json.loads(audited[1].details)
    assert details["epsilon"] == 0.2 and details["spec"]["column"] == "bmi"
    assert audited[1].project == "study" and audited[1].dataset == "health"
    with readonly() as s:
        released = s.scalars(select(DPQuery).order_by(DPQuery.created_at)).all()
        assert [r.status for r in released] == ["released", "released"]
        assert json.loads(released[1].result)["values"] == second["values"]


def test_exact_arithmetic_ten_queries_of_a_tenth_spend_exactly_one(health):
    for _ in range(10):
        ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.1})
    assert remaining() == 0.0
    with pytest.raises(BudgetExhausted):
        ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.001})


def test_a_query_over_the_remaining_budget_is_refused_stating_what_remains(health):
    ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.75})
    with pytest.raises(BudgetExhausted) as refused:
        ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.5})
    assert "only 0.25 of the privacy budget for 'health' remains" in refused.value.message
    assert remaining() == pytest.approx(0.25)
    assert events("dp.query_refused")  # the refusal is audited too


def test_two_concurrent_queries_with_budget_for_one_exactly_one_succeeds(health):
    """Both pass the early budget check, compute, and only then race for the ledger."""
    ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.6})  # 0.4 left: one of 0.3
    from spe.dp.compute import compute as real_compute

    jobs = [
        service.submit_query(
            "researcher", "study", {"kind": "count", "dataset": "health", "epsilon": 0.3}
        )
        for _ in range(2)
    ]
    barrier = threading.Barrier(2, timeout=30)

    def slow_compute(*args: Any, **kwargs: Any) -> Any:
        answer = real_compute(*args, **kwargs)
        barrier.wait()  # both have computed before either charges
        return answer

    outcomes: dict[str, Any] = {}

    def run(job_id: str) -> None:
        from spe.jobs.service import claim

        params = claim(job_id)
        assert params is not None
        try:
            outcomes[job_id] = service.run_query(job_id, params, compute=slow_compute)
        except BudgetExhausted as exc:
            outcomes[job_id] = exc

    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    succeeded = [o for o in outcomes.values() if isinstance(o, dict)]
    refused = [o for o in outcomes.values() if isinstance(o, BudgetExhausted)]
    assert len(succeeded) == 1 and len(refused) == 1
    assert "only 0.1 of the privacy budget" in refused[0].message
    with readonly() as s:
        (budget,) = s.scalars(select(DPBudget)).all()
        assert budget.spent_micro == 900_000 and budget.total_micro == 1_000_000
        assert s.scalar(select(func.count()).select_from(DPQuery)) == 3


def test_running_a_query_job_twice_charges_once_and_returns_the_same_answer(health):
    from spe.jobs.service import claim

    job_id = service.submit_query(
        "researcher", "study", {"kind": "count", "dataset": "health", "epsilon": 0.2}
    )
    params = claim(job_id)
    first = service.run_query(job_id, params)
    again = service.run_query(job_id, params)
    assert again == first
    assert remaining() == pytest.approx(0.8)


def test_the_data_holder_sees_and_tops_up_budgets_audited_and_a_researcher_cannot(health):
    ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.9})
    full = "Only epsilon 0 of the total 1 of 'health' is unallocated"  # study holds it all
    with pytest.raises(DPError, match=full), transaction() as s:
        service.topup(s, get_user(s, "reviewer"), "study", "health", 2.0)
    with transaction() as s:
        service.set_total(s, get_user(s, "reviewer"), "health", 3.0)
        view = service.topup(s, get_user(s, "reviewer"), "study", "health", 2.0)
    assert view == {
        "dataset": "health",
        "total": 3.0,
        "spent": 0.9,
        "remaining": 2.1,
        "dataset_remaining": 2.1,
        "queries": 1,
    }
    (event,) = events("dp.budget_topup")
    assert event.actor == "reviewer" and json.loads(event.details)["epsilon"] == 2.0
    with readonly() as s:
        assert service.budgets(s, get_user(s, "reviewer"), "study")[0]["remaining"] == 2.1
    with pytest.raises(PermissionDenied, match="reviewer of the data holder"), transaction() as s:
        service.topup(s, get_user(s, "researcher"), "study", "health", 5.0)
    with pytest.raises(PermissionDenied), readonly() as s:
        service.budgets(s, get_user(s, "researcher_b"), "study")  # not a member
    assert remaining() == pytest.approx(2.1)


def test_a_dp_query_on_a_rows_dataset_is_refused_and_a_rows_read_of_an_aggregate_only_one(
    health, people
):
    from spe.projects.extracts import grant_dataset

    with transaction() as s:
        grant_dataset(s, get_user(s, "reviewer"), get_project(s, "study"), "people", ["income"])
    with pytest.raises(WrongAccessPath, match="gives rows access"):
        service.submit_query(
            "researcher", "study", {"kind": "count", "dataset": "people", "epsilon": 0.1}
        )
    with readonly() as s:
        service.refuse_rows_read(s, "study", "people")  # rows: allowed
        with pytest.raises(WrongAccessPath, match=r"aggregate-only.*spe\.dp"):
            service.refuse_rows_read(s, "study", "health")
    with pytest.raises(WrongAccessPath), transaction() as s:
        service.topup(s, get_user(s, "reviewer"), "study", "people", 1.0)


def test_a_mean_of_a_variable_without_policy_bounds_is_refused_before_any_budget_is_spent(health):
    with pytest.raises(DPPolicyError) as refused:
        service.submit_query(
            "researcher",
            "study",
            {"kind": "mean", "dataset": "health", "epsilon": 0.1, "column": "visits"},
        )
    assert "'visits'" in refused.value.message and "health.yaml" in refused.value.message
    assert remaining() == 1.0


def test_a_workspace_of_the_project_mounts_no_aggregate_only_dataset(health, people):
    from spe.projects.extracts import extract, grant_dataset
    from spe.workspaces.spawner import admit_workspace

    with transaction() as s:
        grant_dataset(s, get_user(s, "reviewer"), get_project(s, "study"), "people", ["income"])
    extract("study", "people")
    plan = admit_workspace("researcher", "study")
    assert set(plan.mounts) == {"people"}


def test_a_non_member_cannot_query(health):
    with pytest.raises(PermissionDenied):
        service.submit_query(
            "researcher_b", "study", {"kind": "count", "dataset": "health", "epsilon": 0.1}
        )
