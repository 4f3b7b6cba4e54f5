"""Refusals leave a trace: every refused change (a permission or a state rule), through the
pages, the API or the CLI, writes one `request.refused` event with the sentence the person was
shown, in its own transaction, while the refused change rolls back; a flood is one event per
actor and reason per minute plus one `request.refused_more` with the count. Real database
(both backends), real pages and API (TestClient), the real `spe` command."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from spe.accounts.service import get_user
from spe.accounts.tokens import create_token
from spe.api import create_app
from spe.audit import record_refusal
from spe.audit.refusals import summarise_refusals
from spe.db import readonly, transaction
from spe.projects.service import get_project
from spe.web import PREFIX
from tests.conftest import World
from tests.integration.test_passwords import _events

PEOPLE = ("researcher", "reviewer", "other_reviewer", "auditor")


@pytest.fixture
def site(spe_env: dict[str, str]) -> dict[str, Any]:
    World()
    with transaction() as s:
        tokens = {name: create_token(s, get_user(s, name)) for name in PEOPLE}
    return {"client": TestClient(create_app()), "tokens": tokens}


def _post(site: dict[str, Any], who: str, path: str, data: dict[str, str]) -> Any:
    return site["client"].post(
        path, data=data, headers={"Authorization": f"Bearer {site['tokens'][who]}"}
    )


def _get(site: dict[str, Any], who: str, path: str) -> Any:
    return site["client"].get(path, headers={"Authorization": f"Bearer {site['tokens'][who]}"})


def _status(slug: str = "study") -> str:
    with readonly() as s:
        return get_project(s, slug).status.value


# (what, actor, how to try it, the sentence's words, the action the event names)
ATTEMPTS: list[tuple[str, str, Callable[[dict[str, Any]], Any], str, str]] = [
    (
        "another holder's reviewer approves a project (pages)",
        "other_reviewer",
        lambda site: _post(site, "other_reviewer", PREFIX + "/holder/projects/study/approve", {}),
        "Only a reviewer of the data holder",
        "project.approve",
    ),
    (
        "a researcher opens the audit log (pages)",
        "researcher",
        lambda site: _get(site, "researcher", PREFIX + "/audit"),
        "Only an auditor may read the audit log",
        "audit.read",
    ),
    (
        "a researcher enrols someone (pages)",
        "researcher",
        lambda site: _post(
            site, "researcher", PREFIX + "/admin/enrol", {"username": "mallory", "csrf": "x"}
        ),
        "Only an institution admin enrols researchers",
        "POST /services/spe/admin/enrol",
    ),
    (
        "a wrong current password (API)",
        "auditor",
        lambda site: site["client"].post(
            "/api/v1/me/password",
            json={"current": "not mine", "new": "plum kettle orbit seventy"},
            headers={"Authorization": f"Bearer {site['tokens']['auditor']}"},
        ),
        "current password is wrong",
        "POST /api/v1/me/password",
    ),
]


@pytest.mark.parametrize(
    ("what", "actor", "attempt", "words", "action"), ATTEMPTS, ids=[a[0] for a in ATTEMPTS]
)
def test_every_refusal_writes_one_event_with_its_sentence(
    site: dict[str, Any],
    what: str,
    actor: str,
    attempt: Callable[[dict[str, Any]], Any],
    words: str,
    action: str,
) -> None:
    before = len(_events("request.refused"))
    answer = attempt(site)
    assert answer.status_code in (400, 403), answer.text[:300]
    assert words in answer.text
    events = _events("request.refused")[before:]
    assert len(events) == 1, events
    assert events[0]["actor"] == actor and events[0]["action"] == action
    assert words in events[0]["sentence"]
    assert _status() == "pending"  # nothing refused took effect


def test_a_state_rule_refusal_is_audited_and_rolls_back(site: dict[str, Any]) -> None:
    ok = _post(site, "reviewer", PREFIX + "/holder/projects/study/approve", {})
    assert ok.status_code in (200, 303), ok.text[:300]
    again = _post(site, "reviewer", PREFIX + "/holder/projects/study/approve", {})
    assert again.status_code in (400, 409)
    event = _events("request.refused")[-1]
    assert event["actor"] == "reviewer" and event["kind"] == "ProjectStateError"
    assert event["action"] == "POST /services/spe/holder/projects/{slug}/approve"
    assert len(_events("project.approve")) == 1


def test_the_cli_records_refusals_of_the_person_it_acts_as(
    site: dict[str, Any], run_spe: Any
) -> None:
    before = len(_events("request.refused"))
    refused = run_spe("--as", "researcher", "user", "deactivate", "reviewer", "--reason", "x")
    assert refused.returncode == 3 and "Only a platform operator" in refused.stderr
    duplicate = run_spe("--as", "op", "org", "add", "Uni A", "--kind", "institution")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    events = _events("request.refused")[before:]
    assert [(e["actor"], e["action"]) for e in events] == [
        ("researcher", "user.deactivate"),
        ("op", "spe org add"),
    ]
    assert events[0]["via"] == "spe user deactivate" and events[0]["kind"] == "PermissionDenied"
    with readonly() as s:
        assert get_user(s, "reviewer").active


def test_a_flood_of_refusals_is_one_event_and_a_count_per_minute(site: dict[str, Any]) -> None:
    before = len(_events("request.refused"))
    for _ in range(30):
        assert _get(site, "researcher", PREFIX + "/audit").status_code == 403
    assert len(_events("request.refused")[before:]) == 1
    assert summarise_refusals(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)) == 1
    more = _events("request.refused_more")
    assert [(e["actor"], e["more"]) for e in more] == [("researcher", 29)]
    # A different reason in the same minute is an event of its own.
    _post(site, "researcher", PREFIX + "/admin/enrol", {"username": "x", "csrf": "x"})
    assert len(_events("request.refused")[before:]) == 2


def test_record_refusal_is_a_function_other_capabilities_call(spe_env: dict[str, str]) -> None:
    at = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    kw = {"now": at, "project": "study", "epsilon": 0.5}
    assert record_refusal("researcher", "dp.query", "project:study", "Budget spent.", **kw)
    assert not record_refusal("researcher", "dp.query", "project:study", "Budget spent.", **kw)
    event = _events("request.refused")[-1]
    assert event == {
        "actor": "researcher",
        "action": "dp.query",
        "sentence": "Budget spent.",
        "project": "study",
        "epsilon": "0.5",
    }
