"""The privacy budget belongs to the dataset (SQLite and PostgreSQL): a second project draws from
the same total, the holder sets the total (audited, never below what was spent) and allocates
only what is unallocated, and two projects racing for the last epsilon of the dataset's total,
or two allocations racing for the last unallocated epsilon: exactly one wins."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest
from sqlalchemy import select

from spe.accounts.service import get_user
from spe.db import readonly, transaction
from spe.dp import service
from spe.dp.errors import BudgetExhausted, DPError
from spe.dp.models import DPBudget, DPDatasetBudget
from spe.errors import PermissionDenied
from tests.integration.dp_world import VARIABLES, make_health
from tests.integration.test_dp_budget import events


@pytest.fixture
def health(world, tmp_path, monkeypatch) -> dict[str, Any]:
    return make_health(tmp_path, monkeypatch, total=1.0)


def second_project(slug: str = "study2") -> None:
    """Another approved project of the same holder with 'health' granted and extracted."""
    from spe.projects.extracts import extract, grant_dataset
    from spe.projects.service import approve_project, create_project
    from tests.conftest import get_organisation_by

    with transaction() as s:
        today = dt.datetime.now(dt.UTC).date()
        project = create_project(
            s,
            get_user(s, "researcher"),
            slug,
            "Another study",
            "Health, again",
            get_organisation_by(s, "Holder Agency"),
            get_organisation_by(s, "Uni A"),
            today,
            today + dt.timedelta(days=30),
        )
        reviewer = get_user(s, "reviewer")
        grant_dataset(s, reviewer, project, "health", VARIABLES)
        approve_project(s, reviewer, project)
    extract(slug, "health")


def ask(slug: str, epsilon: float) -> dict[str, Any]:
    from spe.tasks import run_inline

    job_id = service.submit_query(
        "researcher", slug, {"kind": "count", "dataset": "health", "epsilon": epsilon}
    )
    view = run_inline(job_id)
    if view.status == "failed":
        raise BudgetExhausted(str(view.error))
    assert view.result is not None
    return view.result


def as_holder(call: Any, *args: Any) -> Any:
    with transaction() as s:
        return call(s, get_user(s, "reviewer"), *args)


def dataset_view() -> dict[str, Any]:
    with readonly() as s:
        return service.dataset_budget(s, "health")


def test_a_second_project_draws_from_the_same_dataset_total_not_a_fresh_one(health):
    second_project()
    ask("study", 0.4)  # study opens with all of the total (the policy's default share)
    assert dataset_view() == {
        "dataset": "health",
        "total": 1.0,
        "allocated": 1.0,
        "unallocated": 0.0,
        "spent": 0.4,
        "remaining": 0.6,
        "projects": 1,
    }
    with pytest.raises(BudgetExhausted, match="only 0 of the privacy budget for 'health'"):
        ask("study2", 0.1)  # before: a fresh 1.0 of its own
    as_holder(service.set_total, "health", 1.5)
    ask("study2", 0.5)  # opens with what is unallocated (0.5)
    view = dataset_view()
    assert (view["spent"], view["remaining"], view["projects"]) == (0.9, 0.6, 2)


def test_the_holder_sets_the_total_audited_never_below_what_was_spent_and_only_the_holder(health):
    ask("study", 0.7)
    with pytest.raises(DPError, match=r"already spent epsilon 0\.7 of 'health'"):
        as_holder(service.set_total, "health", 0.5)
    view = as_holder(service.set_total, "health", 0.8)
    assert (view["total"], view["remaining"]) == (0.8, pytest.approx(0.1))
    (event,) = events("dp.dataset_total")
    assert event.actor == "reviewer" and event.dataset == "health"
    assert json.loads(event.details)["before"] == 1.0
    # Lowered under the project's allocation (1.0): the dataset's total binds, and says so.
    with pytest.raises(BudgetExhausted, match="remains across all projects"):
        ask("study", 0.2)
    with pytest.raises(PermissionDenied, match="data holder of 'health'"), transaction() as s:
        service.set_total(s, get_user(s, "researcher"), "health", 10.0)
    with pytest.raises(PermissionDenied), transaction() as s:
        service.set_total(s, get_user(s, "other_reviewer"), "health", 10.0)


def _race(jobs: list[tuple[str, str]]) -> dict[str, Any]:
    """Run the query jobs at once; each computes, then all meet, then all charge."""
    from spe.dp.compute import compute as real_compute
    from spe.jobs.service import claim

    barrier = threading.Barrier(len(jobs), timeout=30)

    def slow_compute(*args: Any, **kwargs: Any) -> Any:
        answer = real_compute(*args, **kwargs)
        barrier.wait()
        return answer

    outcomes: dict[str, Any] = {}

    def run(slug: str, job_id: str) -> None:
        params = claim(job_id)
        assert params is not None
        try:
            outcomes[slug] = service.run_query(job_id, params, compute=slow_compute)
        except BudgetExhausted as exc:
            outcomes[slug] = exc

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


def test_two_projects_racing_for_the_last_epsilon_of_the_dataset_exactly_one_wins(health):
    """Both projects hold allocations (1.0 each) larger than what is left of the dataset's total
    (0.3, after the holder lowered it): both pass the early check, compute, and only then race
    for the dataset's row."""
    second_project()
    as_holder(service.set_total, "health", 2.0)
    ask("study", 0.7)
    ask("study2", 0.001)  # opens study2 with the rest (1.0)
    as_holder(service.set_total, "health", 1.001)  # 0.3 left for both
    jobs = [
        (
            slug,
            service.submit_query(
                "researcher", slug, {"kind": "count", "dataset": "health", "epsilon": 0.3}
            ),
        )
        for slug in ("study", "study2")
    ]
    outcomes = _race(jobs)
    won = [o for o in outcomes.values() if isinstance(o, dict)]
    lost = [o for o in outcomes.values() if isinstance(o, BudgetExhausted)]
    assert len(won) == 1 and len(lost) == 1
    assert "only 0 of the privacy budget for 'health'" in lost[0].message
    with readonly() as s:
        (dataset,) = s.scalars(select(DPDatasetBudget)).all()
        assert dataset.spent_micro == dataset.total_micro == 1_001_000
        spent = sorted(b.spent_micro for b in s.scalars(select(DPBudget)))
        assert sum(spent) == 1_001_000  # the loser's project charge was undone


def test_two_allocations_racing_for_the_last_unallocated_epsilon_exactly_one_wins(health):
    """Two projects' first top-ups at once: each opens its allocation with the policy's share
    (1.0, at most what is unallocated) and asks 0.5 more; 1.5 is unallocated, so exactly one
    fits, and the other's whole transaction is refused."""
    second_project()
    second_project("study3")
    ask("study", 0.1)  # study holds the policy's 1.0
    as_holder(service.set_total, "health", 2.5)  # 1.5 unallocated
    results: dict[str, Any] = {}
    barrier = threading.Barrier(2, timeout=30)

    def allocate(slug: str) -> None:
        barrier.wait()
        try:
            results[slug] = as_holder(service.topup, slug, "health", 0.5)
        except DPError as exc:
            results[slug] = exc

    threads = [threading.Thread(target=allocate, args=(s,)) for s in ("study2", "study3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(type(r).__name__ for r in results.values()) == ["DPError", "dict"]
    (refused,) = [r for r in results.values() if isinstance(r, DPError)]
    assert "is unallocated" in refused.message
    view = dataset_view()
    assert (view["allocated"], view["unallocated"], view["projects"]) == (2.5, 0.0, 2)
