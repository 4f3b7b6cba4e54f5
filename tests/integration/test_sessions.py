"""Sessions and tokens: logout ends the pages' login; a password change or reset, a
deactivation and a role removal end every login and API token; reactivation revives nothing;
lifetime and idle timeout from settings; the form token is bound to the login. Real database
(both backends) and real pages (TestClient); the hub's vouching is `start_pages_session`, what
the pages call after the hub's OAuth answer. The hub's own cookies and OAuth/API tokens are
tried against a real hub (test_hub's fixture): logout, deactivation and role removal end them."""

from __future__ import annotations

import datetime as dt
import re
import time
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
from tests.integration.test_hub import Hub, _logged_in, _xsrf, hub, requests  # noqa: F401
from tests.integration.test_hub import _events as _hub_events

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


# --- the hub's side: its cookies and OAuth tokens (a real hub, the fixture of test_hub) ----------


def _hub_db(front: Hub) -> Any:
    """A session on the hub's own database (JupyterHub's ORM), as the hub itself reads it."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    return Session(create_engine(f"sqlite:///{front.state / 'hub' / 'jupyterhub.sqlite'}"))


def _hub_tokens(front: Hub, username: str, session_id: str | None = None) -> int:
    """How many OAuth and API tokens of ``username`` the hub holds (of one login, if given)."""
    from jupyterhub import orm

    with _hub_db(front) as db:
        user = db.query(orm.User).filter_by(name=username).one()
        rows = db.query(orm.APIToken).filter_by(user_id=user.id)
        if session_id is not None:
            rows = rows.filter_by(session_id=session_id)
        return int(rows.count())


def _oauth_token_of_this_login(front: Hub, username: str, session_id: str) -> str:
    """An OAuth access token of the pages' client for this browser's hub login, made as the
    hub's token endpoint makes one (the pages keep theirs to themselves)."""
    from jupyterhub import orm
    from jupyterhub.utils import new_token

    value = new_token()
    with _hub_db(front) as db:
        orm.APIToken.new(
            value,
            user=db.query(orm.User).filter_by(name=username).one(),
            client_id="service-spe",
            session_id=session_id,
            scopes=["read:users:name!user"],
            note="test: an OAuth token of this login",
        )
        db.commit()
    return value


def _hub_api_works(front: Hub, token: str) -> bool:
    answer = requests.get(f"{front.url}/hub/api/user", headers={"Authorization": f"token {token}"})
    return bool(answer.status_code == 200)


def _hub_cookie_works(front: Hub, cookies: Any) -> bool:
    home = requests.get(f"{front.url}/hub/home", cookies=cookies, allow_redirects=False)
    return bool(home.status_code == 200)


def _open_the_pages(front: Hub, browser: Any) -> None:
    """The browser opens the pages: they log it in through the hub's OAuth."""
    page = browser.get(f"{front.url}/services/spe/projects")
    assert page.status_code == 200 and "oauth_callback" in " ".join(r.url for r in page.history), (
        page.text[:300]
    )


@pytest.mark.slow
def test_logout_ends_the_hubs_oauth_tokens_of_that_login(hub: Hub) -> None:  # noqa: F811
    browser = _logged_in(hub, "researcher")
    _open_the_pages(hub, browser)
    login = browser.cookies.get("jupyterhub-session-id")
    assert login
    # The pages' own OAuth token (the real flow's) and another of the same login.
    assert _hub_tokens(hub, "researcher", login) >= 1
    token = _oauth_token_of_this_login(hub, "researcher", login)
    assert _hub_api_works(hub, token)
    # The logout button: the pages' logout, then the hub's.
    out = browser.get(f"{hub.url}/services/spe/logout")
    assert "/hub/logout" in " ".join(r.headers.get("location", "") for r in out.history)
    assert _hub_tokens(hub, "researcher", login) == 0
    assert not _hub_api_works(hub, token)
    assert browser.get(f"{hub.url}/services/spe/projects", allow_redirects=False).status_code != 200


def _hub_api_token(front: Hub, browser: Any, username: str) -> str:
    """An API token the person makes on the hub with their login (the hub's own token page)."""
    answer = browser.post(
        f"{front.url}/hub/api/users/{username}/tokens",
        json={"note": "test: made by the person"},
        headers=_xsrf(browser),
    )
    assert answer.status_code == 201, answer.text[:300]
    return str(answer.json()["token"])


def _hub_deactivate(s: Any) -> None:
    deactivate_user(s, get_user(s, "inst_admin"), get_user(s, "researcher2"), "left")


def _hub_remove_role(s: Any) -> None:
    revoke_role(
        s,
        get_user(s, "inst_admin_b"),
        get_user(s, "researcher_b"),
        Role.RESEARCHER,
        get_organisation(s, "Uni B"),
    )


HUB_EVENTS: list[tuple[str, str, Callable[[Any], None]]] = [
    ("deactivation", "researcher2", _hub_deactivate),
    ("role removal", "researcher_b", _hub_remove_role),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reason", "username", "event"), HUB_EVENTS, ids=[e[0] for e in HUB_EVENTS]
)
def test_the_hubs_cookies_and_tokens_end_at(
    hub: Hub,  # noqa: F811
    reason: str,
    username: str,
    event: Callable[[Any], None],
) -> None:
    browser = _logged_in(hub, username)
    _open_the_pages(hub, browser)
    login = browser.cookies.get("jupyterhub-session-id")
    oauth = _oauth_token_of_this_login(hub, username, login)
    made = _hub_api_token(hub, browser, username)
    copied = browser.cookies.copy()  # someone else's copy of the hub's cookie
    assert _hub_cookie_works(hub, copied)
    assert _hub_api_works(hub, oauth) and _hub_api_works(hub, made)
    with transaction() as s:
        event(s)
    time.sleep(11)  # SPE_HUB_AUTH_REFRESH_SECONDS of the hub fixture, and a second
    # A token alone, first (no cookie request has made the hub look yet): refused at once.
    assert not _hub_api_works(hub, oauth) and not _hub_api_works(hub, made)
    assert not _hub_cookie_works(hub, copied)
    assert browser.get(f"{hub.url}/services/spe/projects", allow_redirects=False).status_code != 200
    # Ended for good: the copy of the cookie stays dead and no token is left at the hub.
    assert not _hub_cookie_works(hub, copied)
    assert _hub_tokens(hub, username) == 0
    assert _hub_events("session.hub_revoke", f"user:{username}")
    assert _hub_events("session.revoke_all", f"user:{username}")[-1][1]["reason"] == reason
