"""`spe dp budget`, `spe dp topup` and `spe dp total` in a subprocess (SQLite and PostgreSQL): the
data holder sees and tops up a project's budget within the dataset's total and sets that total,
a researcher sees both, and refusals are sentences."""

from __future__ import annotations

import pytest

from tests.integration.dp_world import make_health


@pytest.fixture
def health(world, tmp_path, monkeypatch):
    return make_health(tmp_path, monkeypatch, total=2.0)


def test_the_holder_tops_up_and_both_holder_and_researcher_see_the_budget(health, run_spe):
    env = {"SPE_POLICIES_DIR": str(health["policies"])}
    shown = run_spe("--as", "researcher", "dp", "budget", "--project", "study", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1].split() == ["health", "2", "0", "2", "0", "2"]
    full = run_spe(
        "--as", "reviewer", "dp", "topup", "study", "health", "--epsilon", "0.5", env=env
    )
    assert full.returncode != 0 and "Only epsilon 0 of the total 2 of 'health'" in full.stderr
    raised = run_spe("--as", "reviewer", "dp", "total", "health", "--epsilon", "2.5", env=env)
    assert raised.returncode == 0, raised.stderr
    # The refused top-up opened nothing: no project holds an allocation yet.
    assert "health: total 2.5, allocated 0 to 0 project(s), unallocated 2.5" in raised.stdout
    added = run_spe(
        "--as", "reviewer", "dp", "topup", "study", "health", "--epsilon", "0.5", env=env
    )
    assert added.returncode == 0, added.stderr
    assert "total 2.5, spent 0, remaining 2.5" in added.stdout
    again = run_spe("--as", "reviewer", "dp", "budget", "--project", "study", env=env)
    assert again.stdout.splitlines()[1].split() == ["health", "2.5", "0", "2.5", "0", "2.5"]
    shown = run_spe("--as", "researcher", "dp", "total", "health", env=env)
    assert "total 2.5, allocated 2.5 to 1 project(s), unallocated 0, spent 0" in shown.stdout


def test_a_researcher_cannot_top_up_and_gets_a_sentence_not_a_traceback(health, run_spe):
    env = {"SPE_POLICIES_DIR": str(health["policies"])}
    refused = run_spe(
        "--as", "researcher", "dp", "topup", "study", "health", "--epsilon", "9", env=env
    )
    assert refused.returncode != 0
    assert "Only a reviewer of the data holder may top up" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
    refused = run_spe("--as", "researcher", "dp", "total", "health", "--epsilon", "99", env=env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "Only a reviewer of the data holder of 'health' may set" in refused.stderr


def test_the_query_history_lists_who_asked_what_and_what_it_spent(health, run_spe):
    from tests.integration.test_dp_budget import ask_inline

    ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.25})
    env = {"SPE_POLICIES_DIR": str(health["policies"])}
    listed = run_spe("--as", "reviewer", "dp", "queries", "--project", "study", env=env)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert "researcher" in line and "health" in line and "count" in line
    assert "epsilon 0.25  released" in line
