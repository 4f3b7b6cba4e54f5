"""Passwords: a one-time password logs in once, only to the page that sets a password, and
expires; the rules from settings; change on the pages, with `spe user password` and through
the API; every change audited. Real database (both backends), real pages (FastAPI's
TestClient); the hub's part of a login is `check_login`, which the hub's authenticator calls,
and `start_pages_session`, which the pages call once the hub vouched for the person."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from spe.accounts.password_rules import password_problem
from spe.accounts.service import get_user, reset_password
from spe.api import create_app
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.web import PREFIX
from spe.web.auth import SESSION_COOKIE, start_pages_session
from spe.workspaces.authenticator import check_login
from tests.conftest import World

PASSWORD = "correct horse battery"
NEW = "plum kettle orbit seventy"
ROLES = ("researcher", "reviewer", "auditor", "inst_admin", "op")


def _events(action: str, target: str | None = None) -> list[dict[str, Any]]:
    with readonly() as s:
        query = select(AuditEvent).where(AuditEvent.action == action)
        if target is not None:
            query = query.where(AuditEvent.target == target)
        rows = s.scalars(query.order_by(AuditEvent.id)).all()
        return [{"actor": r.actor, **json.loads(r.details or "{}")} for r in rows]


def _reset(username: str, by: str = "op") -> str:
    with transaction() as s:
        return reset_password(s, get_user(s, by), get_user(s, username))


def _browser(username: str) -> TestClient:
    """A browser whose hub login was just vouched for: the pages' session cookie is set."""
    token = start_pages_session(username, "test")
    assert token is not None
    client = TestClient(create_app())
    client.cookies.set(SESSION_COOKIE, token, path=PREFIX + "/")
    return client


def _form_token(client: TestClient, path: str = "/password") -> str:
    import re

    page = client.get(PREFIX + path, follow_redirects=False)
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize("username", ROLES)
def test_a_one_time_password_logs_in_once_and_only_to_set_a_password(
    spe_env: dict[str, str], username: str
) -> None:
    World()
    one_time = _reset(username)
    first = check_login(username, one_time, "test", address="10.0.0.1")
    assert first.username == username and first.must_set_password
    # The one-time login opens nothing but the password page.
    browser = _browser(username)
    for path in ("/", "/projects", "/audit", "/review", "/admin"):
        answer = browser.get(PREFIX + path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].endswith("/password")
    refused = browser.post(PREFIX + "/terms/accept", data={"csrf": _form_token(browser)})
    assert refused.status_code == 403 and "one-time password" in refused.text
    # No API token for a one-time login.
    from spe.accounts.tokens import create_token
    from spe.errors import PermissionDenied

    with pytest.raises(PermissionDenied, match="one-time password"), transaction() as s:
        create_token(s, get_user(s, username))
    # The same one-time password does not log in a second time.
    again = check_login(username, one_time, "test", address="10.0.0.1")
    assert again.username is None and again.reason == "one-time password used"
    # Setting the password: the page, no current password asked (the login just proved it).
    page = browser.get(PREFIX + "/password")
    assert page.status_code == 200 and "Set your password" in page.text
    assert 'name="current"' not in page.text
    done = browser.post(
        PREFIX + "/password",
        data={"new": NEW, "repeat": NEW, "csrf": _form_token(browser)},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/hub/logout"
    # Every session of the account ended, this one too; the new password logs in, the old not.
    assert browser.get(PREFIX + "/projects", follow_redirects=False).status_code in (302, 401)
    assert check_login(username, one_time, "test", address="10.0.0.2").username is None
    assert check_login(username, NEW, "test", address="10.0.0.2").username == username
    changes = _events("user.password_change", f"user:{username}")
    assert [c["how"] for c in changes] == ["after a one-time login"]
    assert _events("session.revoke_all", f"user:{username}")[-1]["reason"] == "password change"


def test_a_one_time_password_expires_unused_after_the_configured_days(
    spe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from spe.config import reset_settings

    monkeypatch.setenv("SPE_ONE_TIME_PASSWORD_DAYS", "2")
    reset_settings()
    World()
    one_time = _reset("researcher")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2, minutes=1)
    expired = check_login("researcher", one_time, "test", now=later, address="10.0.0.3")
    assert expired.username is None and expired.reason == "one-time password expired"
    in_time = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert check_login("researcher", one_time, "test", now=in_time).username == "researcher"


def test_the_first_password_is_set_only_in_the_login_that_used_the_one_time_password(
    spe_env: dict[str, str],
) -> None:
    from spe.accounts.service import AccountError, set_first_password

    World()
    _reset("researcher")
    # Not logged in with it yet: the page cannot skip the one-time login.
    with pytest.raises(AccountError, match=r"own already|log in again"), transaction() as s:
        set_first_password(s, get_user(s, "researcher"), NEW, dt.datetime.now(dt.UTC))


RULES = [
    ("short", "tiny pass", "at least 12 characters"),
    ("username", "researcher-is-me-2025", "may not contain your username"),
    ("common", "passwordpassword", "commonly used"),
    ("common with digits", "Welcometothejungle2024!", "commonly used"),
    ("repeated", "aaaaaaaaaaaaaaaa", "too few characters"),
    ("spaces around", " plum kettle orbit ", "start or end with a space"),
    ("good", "plum kettle orbit seventy", None),
]


@pytest.mark.parametrize(("case", "password", "problem"), RULES, ids=[r[0] for r in RULES])
def test_password_rules_come_from_settings_and_the_bundled_list(
    case: str, password: str, problem: str | None
) -> None:
    found = password_problem(password, "researcher", 12)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_the_minimum_length_is_a_setting(spe_env: dict[str, str], monkeypatch: Any) -> None:
    from spe.accounts.password_rules import PasswordRejected, check_password
    from spe.config import reset_settings

    monkeypatch.setenv("SPE_PASSWORD_MIN_LENGTH", "20")
    reset_settings()
    with pytest.raises(PasswordRejected, match="at least 20"):
        check_password("plum kettle orbit", "x")


def test_the_pages_change_a_password_with_the_current_one_and_refuse_a_weak_one(
    spe_env: dict[str, str],
) -> None:
    World()
    check_login("researcher", PASSWORD, "test")
    browser = _browser("researcher")
    page = browser.get(PREFIX + "/password")
    assert "Change your password" in page.text and 'name="current"' in page.text
    weak = browser.post(
        PREFIX + "/password",
        data={"current": PASSWORD, "new": "short", "repeat": "short", "csrf": _form_token(browser)},
    )
    assert weak.status_code == 400 and "at least 12 characters" in weak.text
    wrong = browser.post(
        PREFIX + "/password",
        data={"current": "not it at all", "new": NEW, "repeat": NEW, "csrf": _form_token(browser)},
    )
    assert wrong.status_code == 400 and "current password is wrong" in wrong.text
    ok = browser.post(
        PREFIX + "/password",
        data={"current": PASSWORD, "new": NEW, "repeat": NEW, "csrf": _form_token(browser)},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    assert check_login("researcher", NEW, "test").username == "researcher"
    assert [e["how"] for e in _events("user.password_change", "user:researcher")] == [
        "with the current password"
    ]


def test_spe_user_password_changes_it_and_a_wrong_current_one_is_refused_and_audited(
    spe_env: dict[str, str], run_spe: Any
) -> None:
    World()
    wrong = run_spe("--as", "researcher", "user", "password", input=f"nope\n{NEW}\n")
    assert wrong.returncode != 0 and "current password is wrong" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    refused = _events("request.refused")
    assert refused[-1]["actor"] == "researcher"
    assert refused[-1]["action"] == "spe user password"
    assert "current password is wrong" in refused[-1]["sentence"]
    ok = run_spe("--as", "researcher", "user", "password", input=f"{PASSWORD}\n{NEW}\n")
    assert ok.returncode == 0, ok.stderr
    assert "Your password is changed" in ok.stdout
    assert check_login("researcher", NEW, "test").username == "researcher"


def test_the_api_changes_the_callers_password_and_ends_their_tokens(
    spe_env: dict[str, str],
) -> None:
    from spe.accounts.tokens import create_token

    World()
    with transaction() as s:
        token = create_token(s, get_user(s, "researcher"))
    client = TestClient(create_app())
    headers = {"Authorization": f"Bearer {token}"}
    weak = client.post(
        "/api/v1/me/password", json={"current": PASSWORD, "new": "password1234"}, headers=headers
    )
    assert weak.status_code == 400 and "commonly used" in weak.json()["detail"]
    ok = client.post("/api/v1/me/password", json={"current": PASSWORD, "new": NEW}, headers=headers)
    assert ok.status_code == 200 and ok.json()["tokens_revoked"] == 1
    after = client.get("/api/v1/exports", headers=headers)
    assert after.status_code == 401
    assert check_login("researcher", NEW, "test").username == "researcher"


def _scrypt_hash(password: str) -> str:
    """A hash as SPE stored them before Argon2id (scrypt, N = 2^14, r = 8, p = 1)."""
    import base64
    import hashlib
    import os

    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"scrypt$16384$8$1${encoded[0]}${encoded[1]}"


def _stored_hash(username: str) -> str:
    from spe.accounts.models import User

    with readonly() as s:
        return s.scalar(select(User.password_hash).where(User.username == username)) or ""


def test_a_stored_scrypt_hash_logs_in_and_is_upgraded_to_argon2id_in_the_login_transaction(
    spe_env: dict[str, str], monkeypatch: Any
) -> None:
    import spe.accounts.service as accounts

    World()
    legacy = _scrypt_hash(PASSWORD)
    with transaction() as s:
        from spe.audit import record

        get_user(s, "researcher").password_hash = legacy
        record(s, "system:test", "user.password_change", "user:researcher", {"how": "scrypt"})
    # A wrong password upgrades nothing.
    assert check_login("researcher", "not the password", "test").username is None
    assert _stored_hash("researcher") == legacy
    # The upgrade belongs to the login's transaction: when the login's event cannot be
    # written, the old hash stays.
    real_record_login = accounts.record_login

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the audit event could not be written")

    monkeypatch.setattr(accounts, "record_login", broken)
    with pytest.raises(RuntimeError):
        check_login("researcher", PASSWORD, "test")
    assert _stored_hash("researcher") == legacy
    monkeypatch.setattr(accounts, "record_login", real_record_login)

    assert check_login("researcher", PASSWORD, "test").username == "researcher"
    upgraded = _stored_hash("researcher")
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), upgraded
    login = _events("user.login", "user:researcher")[-1]
    assert login["password_rehashed"] == "scrypt to argon2id"
    with readonly() as s:  # neither hash is in the log
        details = " ".join(s.scalars(select(AuditEvent.details)).all())
    assert legacy.split("$")[-1] not in details and upgraded.split("$")[-1] not in details
    # The next login finds nothing to upgrade.
    assert check_login("researcher", PASSWORD, "test").username == "researcher"
    assert "password_rehashed" not in _events("user.login", "user:researcher")[-1]
    assert _stored_hash("researcher") == upgraded


def test_an_unknown_users_login_takes_as_long_as_a_known_users(spe_env: dict[str, str]) -> None:
    """No telling which usernames exist from the time an answer takes: an unknown username, a
    throttled address and a locked account spend the time of one password check too (a cheap
    dummy check would answer several times faster)."""
    import statistics
    import time

    World()

    def medians(*attempts: tuple[str, str]) -> list[float]:
        """Median ms of failed logins as (username, address), taken in turns: a change of the
        machine's load falls on all of them alike."""
        samples: list[list[float]] = [[] for _ in attempts]
        for _ in range(5):
            for (username, address), out in zip(attempts, samples, strict=True):
                started = time.perf_counter()
                assert (
                    check_login(username, "not the password", "t", address=address).username is None
                )
                out.append((time.perf_counter() - started) * 1000)
        return [statistics.median(s) for s in samples]

    check_login("nobody-here", "warm", "t", address="10.9.0.9")  # imports, connections
    # Each from its own address, ahead of the lock-out (5 failures per account).
    known, unknown, other = medians(
        ("researcher", "10.9.0.1"), ("nobody-here", "10.9.0.2"), ("reviewer", "10.9.0.3")
    )
    assert 0.5 < unknown / known < 2, (unknown, known)
    assert 0.5 < unknown / other < 2, (unknown, other)
    for _ in range(20):  # SPE_LOGIN_SOURCE_MAX_FAILURES: this address is throttled after
        check_login("nobody-else", "x", "t", address="10.9.0.5")
    locked, throttled, unknown = medians(
        ("reviewer", "10.9.0.4"), ("auditor", "10.9.0.5"), ("nobody-here", "10.9.0.6")
    )
    assert _events("user.login_failed", "user:reviewer")[-1]["source"].endswith("account locked")
    assert _events("user.login_failed", "user:auditor")[-1]["reason"] == "source address throttled"
    assert 0.5 < locked / unknown < 2, (locked, unknown)
    assert 0.5 < throttled / unknown < 2, (throttled, unknown)
