"""Sessions and tokens: logout ends the pages' login; a password change or reset, a
deactivation and a role removal end every login and API token; reactivation revives nothing;
lifetime and idle timeout from settings; the form token is bound to the login. Real database
(both backends) and real pages (TestClient); the hub's vouching is `start_pages_session`, what
the pages call after the hub's OAuth answer."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from spe.accounts.models import Role
from spe.accounts.service import (
    change_password,
    deactivate_user,
    get_organisation,
    get_user,
    reactivate_user,
    reset_password,
    revoke_role,
)
from spe.accounts.sessions import session_user
from spe.accounts.tokens import create_token
from spe.api import create_app
from spe.db import transaction
from spe.web import PREFIX
from spe.web.auth import CSRF_COOKIE, SESSION_COOKIE, start_pages_session
from spe.workspaces.authenticator import check_login
from tests.conftest import World

PASSWORD = "correct horse battery"


def _login(username: str = "researcher") -> tuple[TestClient, str]:
    check_login(username, PASSWORD, "test")  # the hub's half of a login
    token = start_pages_session(username, "test")
    assert token is not None
    client = TestClient(create_app())
    client.cookies.set(SESSION_COOKIE, token, path=PREFIX + "/")
    return client, token


def _api_token(username: str = "researcher") -> str:
    with transaction() as s:
        return create_token(s, get_user(s, username))


def _api_works(token: str) -> bool:
    client = TestClient(create_app())
    return bool(
        client.get("/api/v1/exports", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )


def _page_works(client: TestClient) -> bool:
    return bool(client.get(PREFIX + "/projects", follow_redirects=False).status_code == 200)


def test_logout_ends_the_pages_login_and_is_audited(spe_env: dict[str, str]) -> None:
    from tests.integration.test_passwords import _events

    World()
    client, token = _login()
    assert _page_works(client)
    answer = client.get(PREFIX + "/logout", follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["location"] == "/hub/logout"
    # The cookie kept by someone else (a copy of it) no longer works either.
    thief = TestClient(create_app())
    thief.cookies.set(SESSION_COOKIE, token, path=PREFIX + "/")
    assert not _page_works(thief)
    assert session_user(token) is None
    assert [e["actor"] for e in _events("user.logout", "user:researcher")] == ["researcher"]


def _change(s: Any) -> None:
    change_password(s, get_user(s, "researcher"), PASSWORD, "plum kettle orbit seventy")


def _reset(s: Any) -> None:
    reset_password(s, get_user(s, "op"), get_user(s, "researcher"))


def _deactivate(s: Any) -> None:
    deactivate_user(s, get_user(s, "inst_admin"), get_user(s, "researcher"), "left")


def _remove_role(s: Any) -> None:
    revoke_role(
        s,
        get_user(s, "inst_admin"),
        get_user(s, "researcher"),
        Role.RESEARCHER,
        get_organisation(s, "Uni A"),
    )


EVENTS: list[tuple[str, Callable[[Any], None]]] = [
    ("password change", _change),
    ("password reset", _reset),
    ("deactivation", _deactivate),
    ("role removal", _remove_role),
]


@pytest.mark.parametrize(("reason", "event"), EVENTS, ids=[e[0] for e in EVENTS])
def test_every_session_and_api_token_ends_at(
    spe_env: dict[str, str], reason: str, event: Callable[[Any], None]
) -> None:
    from tests.integration.test_passwords import _events

    World()
    browsers = [_login()[0], _login()[0]]  # two browsers of the same person
    tokens = [_api_token(), _api_token()]
    assert all(_page_works(b) for b in browsers) and all(_api_works(t) for t in tokens)
    with transaction() as s:
        event(s)
    assert not any(_page_works(b) for b in browsers)
    assert not any(_api_works(t) for t in tokens)
    revoked = _events("session.revoke_all", "user:researcher")
    assert revoked[-1]["reason"] == reason
    assert revoked[-1]["sessions"] == 2 and revoked[-1]["tokens"] == 2
    # The hub's own login of before the event does not make a new pages login either.
    assert start_pages_session("researcher", "test") is None


def test_reactivation_revives_no_token_and_no_session(spe_env: dict[str, str]) -> None:
    World()
    browser, _ = _login()
    token = _api_token()
    with transaction() as s:
        _deactivate(s)
    with transaction() as s:
        reactivate_user(s, get_user(s, "inst_admin"), get_user(s, "researcher"))
    assert not _page_works(browser) and not _api_works(token)
    # A fresh login after reactivation works.
    assert _page_works(_login()[0])


def test_a_session_ends_after_its_lifetime_and_when_idle(
    spe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from spe.config import reset_settings

    monkeypatch.setenv("SPE_SESSION_HOURS", "2")
    monkeypatch.setenv("SPE_SESSION_IDLE_MINUTES", "10")
    reset_settings()
    World()
    _, token = _login()
    now = dt.datetime.now(dt.UTC)
    assert session_user(token, now + dt.timedelta(minutes=9)) == "researcher"
    # Used at 9 minutes, so still alive at 18; idle from there, so gone at 29.
    assert session_user(token, now + dt.timedelta(minutes=18)) == "researcher"
    assert session_user(token, now + dt.timedelta(minutes=29)) is None
    _, fresh = _login()
    for minutes in range(9, 120, 9):  # kept busy: it still ends at its lifetime
        assert session_user(fresh, now + dt.timedelta(minutes=minutes)) == "researcher"
    assert session_user(fresh, now + dt.timedelta(hours=2, minutes=1)) is None


def _form_token(client: TestClient) -> str:
    page = client.get(PREFIX + "/terms")
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


def test_the_form_token_changes_at_login_and_is_bound_to_the_login(
    spe_env: dict[str, str],
) -> None:
    World()
    # An attacker plants a form token cookie in the browser before the person logs in.
    browser = TestClient(create_app())
    planted = "planted-by-the-attacker-0123456789"
    browser.cookies.set(CSRF_COOKIE, planted, path=PREFIX + "/")
    _, token = _login()
    browser.cookies.set(SESSION_COOKIE, token, path=PREFIX + "/")
    refused = browser.post(PREFIX + "/terms/accept", data={"csrf": planted})
    assert refused.status_code == 403 and "form was not sent from an SPE page" in refused.text
    # The page's own token works, and only with this login: another login's is refused.
    other, _ = _login()
    assert (
        other.post(PREFIX + "/terms/accept", data={"csrf": _form_token(browser)}).status_code == 403
    )
    mine = _form_token(browser)
    assert mine != planted
    accepted = browser.post(PREFIX + "/terms/accept", data={"csrf": mine}, follow_redirects=False)
    assert accepted.status_code == 303
