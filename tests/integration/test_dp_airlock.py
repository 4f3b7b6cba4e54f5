"""DP queries end to end: a workspace's request on its real airlock socket, executed by a real
`spe worker` (SQLAlchemy and Redis brokers; SQLite and PostgreSQL), answered at once with the
epsilon spent; the budget and the aggregate-only datasets through the same socket; a rows load
of an aggregate-only dataset refused with the way to go instead."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from spe.accounts.service import get_user
from spe.db import transaction
from spe.dp.client import DPQueryError, DPResult, call
from spe.projects.service import get_project
from spe.workspaces.layout import host_paths
from spe.workspaces.registry import workspace_started
from tests.integration.dp_world import make_health
from tests.integration.test_airlock import AirlockThread
from tests.integration.test_tasks import REDIS_URL, Workers, embedded_broker_url, redis_client


@pytest.fixture(params=["sqlalchemy", "redis"])
def broker(request: pytest.FixtureRequest, spe_env: dict[str, str]) -> Iterator[str]:
    if request.param == "sqlalchemy":
        yield embedded_broker_url(spe_env)
        return
    client = redis_client(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def dp_workspace(world, tmp_path, monkeypatch, broker, spe_env) -> Iterator[dict[str, Any]]:
    """'health' granted to study, researcher's workspace running, its airlock and a worker."""
    from spe.config import reset_settings

    health = make_health(tmp_path, monkeypatch, persons=400, total=1.0)
    monkeypatch.setenv("SPE_BROKER_URL", broker)
    reset_settings()
    with transaction() as s:
        workspace_started(s, get_user(s, "researcher"), get_project(s, "study"))
    pool = Workers(spe_env, tmp_path)
    pool.start(broker, policies_dir=str(health["policies"]))
    service = AirlockThread().start()
    sock = host_paths("study", "researcher").airlock_socket
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline, "the airlock did not open the socket"
        time.sleep(0.05)
    yield {"socket": sock, **health}
    service.stop()
    pool.kill_all()


def test_a_dp_count_and_mean_through_the_airlock_and_a_worker_come_back_with_epsilon_spent(
    dp_workspace,
):
    sock = dp_workspace["socket"]
    started = time.perf_counter()
    count = DPResult(call({"op": "dp", "kind": "count", "dataset": "health", "epsilon": 0.2}, sock))
    first_seconds = time.perf_counter() - started
    assert abs(count.value - dp_workspace["persons"]) < 60
    assert count.epsilon == 0.2 and count.remaining == pytest.approx(0.8)
    assert count.mechanism.startswith("GeometricTruncated") and count.noise_scale == 5.0
    assert count.interval95 and count.interval95[0][0] <= count.value <= count.interval95[0][1]
    mean = DPResult(
        call(
            {
                "op": "dp",
                "kind": "mean",
                "dataset": "health",
                "epsilon": 0.3,
                "column": "bmi",
                "by": ["sex"],
                "where": [["age", ">=", 18]],
            },
            sock,
        )
    )
    assert mean.by == ["sex"] and mean.labels == [["F"], ["M"]]
    assert all(10 <= v <= 60 for v in mean.values)
    assert mean.remaining == pytest.approx(0.5)
    assert "sex=F" in repr(mean) and "epsilon 0.3 spent" in repr(mean)
    budgets = call({"op": "dp_budget"}, sock)["budgets"]
    assert budgets == [
        {
            "dataset": "health",
            "total": 1.0,
            "spent": 0.5,
            "remaining": 0.5,
            "dataset_remaining": 0.5,
            "queries": 2,
        }
    ]
    assert call({"op": "dp_datasets"}, sock)["datasets"] == ["health"]
    assert first_seconds < 30


def test_over_budget_unbounded_and_rows_path_refusals_come_back_as_sentences(dp_workspace):
    sock = dp_workspace["socket"]
    with pytest.raises(DPQueryError, match=r"only 1 of the privacy budget .* remains"):
        call({"op": "dp", "kind": "count", "dataset": "health", "epsilon": 1.5}, sock)
    with pytest.raises(DPQueryError, match="'visits' has no public bounds"):
        call(
            {"op": "dp", "kind": "sum", "dataset": "health", "epsilon": 0.1, "column": "visits"},
            sock,
        )
    with pytest.raises(DPQueryError, match="aggregate-only"):
        call({"op": "load", "dataset": "health", "columns": ["bmi"], "rows": 1}, sock)


def test_spe_analysis_load_of_an_aggregate_only_dataset_says_to_use_spe_dp(
    dp_workspace, monkeypatch, tmp_path
):
    import spe.analysis as sa
    from spe.config import reset_settings

    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(empty))
    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_SOCKET", str(dp_workspace["socket"]))
    reset_settings()
    with pytest.raises(sa.AnalysisError, match=r"aggregate-only.*Use spe\.dp\."):
        sa.load("health")
    with pytest.raises(sa.AnalysisError, match="There is no dataset 'nothing'"):
        sa.load("nothing")


def test_the_notebook_client_sends_filters_and_group_by_as_the_server_expects(
    dp_workspace, monkeypatch
):
    import spe.dp as dp
    from spe.config import reset_settings

    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_SOCKET", str(dp_workspace["socket"]))
    reset_settings()
    table = dp.crosstab("health", "sex", "diabetes", where={"county": ["03", "46"]}, epsilon=0.1)
    assert table.labels == [["F", "0"], ["F", "1"], ["M", "0"], ["M", "1"]]
    frame = table.table()
    assert list(frame.columns) == ["sex", "diabetes", "value", "low95", "high95"]
    older = dp.count("health", where={"age": (">=", 60)}, epsilon=0.1)
    assert older.value < dp_workspace["persons"] / 2
    assert dp.budget()[0]["remaining"] == pytest.approx(0.8)


def test_the_dp_template_notebook_runs_against_a_real_airlock_and_worker(
    dp_workspace, monkeypatch, tmp_path
):
    import json

    from spe.config import reset_settings
    from tests.conftest import REPO

    empty = tmp_path / "mounted"
    empty.mkdir()
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(empty))
    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_SOCKET", str(dp_workspace["socket"]))
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(host_paths("study", "researcher").outbox))
    reset_settings()
    notebook = json.loads((REPO / "notebooks_templates" / "dp-queries.ipynb").read_text())
    namespace: dict[str, Any] = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "dp-queries.ipynb", "exec"), namespace)  # noqa: S102
    remaining = namespace["dp"].budget()[0]["remaining"]
    assert remaining == pytest.approx(1.0 - 0.1 - 0.2 - 0.3)
    assert namespace["table"].by == ["county", "diabetes"]


def test_dp_queries_waiting_for_a_worker_do_not_hold_up_other_workspaces_cells(
    world, tmp_path, monkeypatch
):
    """No worker runs: eight queries wait for their answers, and a cell is still recorded."""
    import threading

    from spe.dp import service
    from spe.workspaces.client import call as airlock_call

    make_health(tmp_path, monkeypatch, persons=50)
    monkeypatch.setattr(service, "WAIT_SECONDS", 6.0)
    with transaction() as s:
        workspace_started(s, get_user(s, "researcher"), get_project(s, "study"))
    airlock = AirlockThread().start()
    try:
        sock = host_paths("study", "researcher").airlock_socket
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answers: list[str] = []

        def ask() -> None:
            try:
                call({"op": "dp", "kind": "count", "dataset": "health", "epsilon": 0.01}, sock)
            except DPQueryError as exc:
                answers.append(str(exc))

        waiting = [threading.Thread(target=ask) for _ in range(8)]
        for t in waiting:
            t.start()
        time.sleep(1.0)  # all eight are now waiting in the airlock
        started = time.monotonic()
        assert airlock_call({"op": "cell", "code": "1 + 1"}, sock)["ok"]
        assert time.monotonic() - started < 2.0
        for t in waiting:
            t.join(30)
        assert len(answers) == 8 and all("did not finish within 6 s" in a for a in answers)
    finally:
        airlock.stop()


def test_the_researcher_sees_the_declared_bounds_and_categories_never_data_values(
    dp_workspace, monkeypatch
):
    import spe.dp as dp
    from spe.config import reset_settings

    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_SOCKET", str(dp_workspace["socket"]))
    reset_settings()
    frame = dp.variables("health").set_index("name")
    assert frame.loc["county", "categories"] == ["03", "46", "50"]  # as declared in the policy
    assert (frame.loc["bmi", "min"], frame.loc["bmi", "max"]) == (10, 60)
    assert "filters only" in frame.loc["visits", "note"]
    assert frame.attrs["epsilon_total"] == 1.0
    with pytest.raises(DPQueryError, match="no dataset 'people'"):
        dp.variables("people")
