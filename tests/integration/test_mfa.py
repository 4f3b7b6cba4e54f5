"""MFA: TOTP for local accounts with single-use recovery codes, required by role (settings),
enforced by the hub's login (`check_login`, which SPEAuthenticator.authenticate calls, and its
pre-spawn check) and by the pages; reset by an admin ends every login; OIDC logins must show
MFA in amr/acr when a setting says so. Real database (SQLite: the database is not the point),
real pages (TestClient), real pyotp codes computed here as an authenticator app would."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
from types import SimpleNamespace
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient

from spe.accounts.service import get_user
from spe.accounts.tokens import create_token
from spe.api import create_app
from spe.db import readonly, transaction
from spe.web import PREFIX
from spe.web.auth import SESSION_COOKIE, start_pages_session
from spe.workspaces.authenticator import MFA_FIRST, SPEAuthenticator, check_login
from tests.conftest import World
from tests.integration.test_passwords import _events

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

PASSWORD = "correct horse battery"
# role's user in the World -> must they have MFA by default?
ROLES = {
    "researcher": False,
    "reviewer": True,
    "auditor": True,
    "inst_admin": True,
    "op": True,
}


@pytest.fixture
def mfa_world(spe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> World:
    from spe.config import reset_settings

    monkeypatch.setenv("SPE_MFA_RECOVERY_CODES", "2")
    reset_settings()
    world = World()
    with transaction() as s:  # the bootstrap operator's password is a one-time one: set it
        op = get_user(s, "op")
        from spe.keys.passwords import hash_password

        op.password_hash = hash_password(PASSWORD)
        op.must_change_password = False
        op.one_time_expires_at = None
        from spe.audit import record

        record(s, "system:test", "user.password_change", "user:op", {"how": "test set-up"})
    return world


def _browser(username: str) -> TestClient:
    token = start_pages_session(username, "test")
    assert token is not None
    client = TestClient(create_app())
    client.cookies.set(SESSION_COOKIE, token, path=PREFIX + "/")
    return client


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def _enrol_on_the_pages(browser: TestClient) -> tuple[str, list[str]]:
    """Scan the page's secret into an 'app' (pyotp) and confirm with its current code."""
    page = browser.get(PREFIX + "/mfa")
    assert page.status_code == 200, page.text
    # The QR code is drawn by the server, inline: the page asks nothing of another site.
    assert "<svg" in page.text and 'src="http' not in page.text
    secret = re.search(r'<code id="secret">([A-Z2-7 ]+)</code>', page.text).group(1)  # type: ignore[union-attr]
    secret = secret.replace(" ", "")
    done = browser.post(
        PREFIX + "/mfa", data={"code": pyotp.TOTP(secret).now(), "csrf": _csrf(page.text)}
    )
    assert done.status_code == 200, done.text
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", done.text)
    return secret, codes


def _at(offset_steps: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30 * offset_steps)


def test_every_role_logs_in_as_its_mfa_rule_says_before_and_after_enrolment_and_reset(
    mfa_world: World,
) -> None:
    # One world for the table (each row is its own account, address and browser): fast.
    for row, username in enumerate(ROLES):
        _role_row(row, username)


def _role_row(row: int, username: str) -> None:
    must = ROLES[username]
    # Without MFA set up: the password logs in; a role that needs MFA opens only the enrolment.
    first = check_login(username, PASSWORD, "test", address=f"10.1.{row}.1")
    assert first.username == username and first.must_enrol_mfa is must
    browser = _browser(username)
    elsewhere = _browser(username)  # a second login with the password alone
    home = browser.get(PREFIX + "/projects", follow_redirects=False)
    if must:
        assert home.status_code == 303 and home.headers["location"].endswith("/mfa")
        form_token = _csrf(browser.get(PREFIX + "/mfa").text)
        refused = browser.post(PREFIX + "/terms/accept", data={"csrf": form_token})
        assert refused.status_code == 403
    # Enrolment: QR code rendered inline, secret as text, confirmed with a current code.
    secret, codes = _enrol_on_the_pages(browser)
    assert len(codes) == 2
    assert _events("mfa.enrol", f"user:{username}")[-1]["method"] == "totp"
    assert browser.get(PREFIX + "/mfa").status_code == 200  # now: "on", nothing else
    # Setting it up ended every other login (this browser got a new one).
    assert elsewhere.get(PREFIX + "/projects", follow_redirects=False).status_code in (302, 401)
    assert _events("session.revoke_all", f"user:{username}")[-1]["reason"] == "MFA set up"
    # Now every login needs the code: without one, or a wrong one, it is refused and counted.
    totp = pyotp.TOTP(secret)
    assert check_login(username, PASSWORD, "test", address=f"10.1.{row}.2").username is None
    wrong = check_login(username, PASSWORD, "test", address=f"10.1.{row}.2", otp="000000")
    assert wrong.username is None and wrong.reason.startswith("second factor")
    later = _at(2)
    ok = check_login(username, PASSWORD, "test", now=later, otp=totp.at(later))
    assert ok.username == username and ok.second_factor == "totp" and not ok.must_enrol_mfa
    # Replay of the same code within its window: refused.
    again = check_login(username, PASSWORD, "test", now=later, otp=totp.at(later))
    assert again.username is None and again.reason == "second factor: code already used"
    failed = _events("user.login_failed", f"user:{username}")
    assert any("code already used" in e["source"] for e in failed)
    # Reset by an operator (or the institution admin): every login ends, MFA is to set up again.
    from spe.accounts.mfa import reset_mfa

    resetter = "inst_admin" if username == "researcher" else "op"
    if username == "op":
        with transaction() as s:  # an operator's MFA is reset by another operator
            from spe.accounts.models import Role
            from spe.accounts.service import grant_role

            grant_role(s, get_user(s, "op"), get_user(s, "auditor"), Role.OPERATOR, None)
        resetter = "auditor"
    with transaction() as s:
        reset_mfa(s, get_user(s, resetter), get_user(s, username), "lost phone")
    assert browser.get(PREFIX + "/projects", follow_redirects=False).status_code in (302, 401)
    assert _events("session.revoke_all", f"user:{username}")[-1]["reason"] == "MFA reset"
    after = check_login(username, PASSWORD, "test", address=f"10.1.{row}.3")
    assert after.username == username and after.must_enrol_mfa is must


def test_a_recovery_code_logs_in_once_and_its_use_is_audited(mfa_world: World) -> None:
    browser = _browser("reviewer")
    _secret, codes = _enrol_on_the_pages(browser)
    ok = check_login("reviewer", PASSWORD, "test", otp=codes[0].upper())
    assert ok.username == "reviewer" and ok.second_factor == "recovery"
    assert _events("mfa.recovery_use", "user:reviewer")[-1]["left"] == 1
    again = check_login("reviewer", PASSWORD, "test", otp=codes[0])
    assert again.username is None and "wrong recovery code" in again.reason
    with readonly() as s:  # stored hashed: no code in the database
        from spe.accounts.models import MfaCredential, MfaRecoveryCode

        hashes = [r.code_hash for r in s.query(MfaRecoveryCode).all()]
        sealed = s.query(MfaCredential).one().secret_sealed
    assert all(h.startswith("hmac-sha256$1$") for h in hashes)
    assert not any(c.replace("-", "") in h for c in codes for h in hashes)
    assert _secret.encode() not in sealed
    # A password reset does not skip the second factor: the one-time login needs the code too
    # (whoever handed the one-time password over has no code).
    from spe.accounts.service import reset_password

    with transaction() as s:
        one_time = reset_password(s, get_user(s, "op"), get_user(s, "reviewer"))
    assert check_login("reviewer", one_time, "test").username is None
    later = _at(3)
    first = check_login("reviewer", one_time, "test", now=later, otp=pyotp.TOTP(_secret).at(later))
    assert first.username == "reviewer" and first.must_set_password


def test_the_last_of_ten_recovery_codes_costs_no_password_hash_and_logs_in_once(
    mfa_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recovery code is checked by its keyed digest: a login with the last of ten codes
    hashes the password once, not once per code left (each hash is tens of milliseconds)."""
    import spe.keys.passwords as passwords
    from spe.config import reset_settings

    monkeypatch.setenv("SPE_MFA_RECOVERY_CODES", "10")
    reset_settings()
    _secret, codes = _enrol_on_the_pages(_browser("reviewer"))
    assert len(codes) == 10
    real_verify = passwords.verify_password
    checked: list[str] = []

    def counting(password: str, stored: str | None) -> bool:
        checked.append(password)
        return real_verify(password, stored)

    monkeypatch.setattr(passwords, "verify_password", counting)
    for code in reversed(codes):
        checked.clear()
        ok = check_login("reviewer", PASSWORD, "test", address="10.3.0.1", otp=code)
        assert ok.username == "reviewer" and ok.second_factor == "recovery"
        assert checked == [PASSWORD]
    assert _events("mfa.recovery_use", "user:reviewer")[-1]["left"] == 0
    for code in codes[:2]:  # each once only
        again = check_login("reviewer", PASSWORD, "test", address="10.3.0.2", otp=code)
        assert again.username is None and "wrong recovery code" in again.reason


def test_recovery_codes_kept_as_password_hashes_still_work_once(mfa_world: World) -> None:
    """Codes made before the keyed digests (kept as password hashes) keep working, once."""
    from spe.accounts.models import MfaRecoveryCode
    from spe.audit import record
    from spe.keys.passwords import hash_password

    _secret, codes = _enrol_on_the_pages(_browser("reviewer"))
    old = "abcd-efgh-jkmn"
    with transaction() as s:
        user = get_user(s, "reviewer")
        s.add(MfaRecoveryCode(user_id=user.id, code_hash=hash_password(old.replace("-", ""))))
        record(s, "system:test", "mfa.enrol", "user:reviewer", {"how": "an older code"})
    ok = check_login("reviewer", PASSWORD, "test", address="10.3.1.1", otp=old)
    assert ok.username == "reviewer" and ok.second_factor == "recovery"
    again = check_login("reviewer", PASSWORD, "test", address="10.3.1.2", otp=old)
    assert again.username is None and "wrong recovery code" in again.reason
    assert check_login("reviewer", PASSWORD, "test", otp=codes[1]).username == "reviewer"


def test_the_hub_asks_for_the_code_and_refuses_to_spawn_before_enrolment(mfa_world: World) -> None:
    """The hub's own authenticator (its login form's OTP field is on) and its pre-spawn hook."""
    from tornado import web

    hub = SPEAuthenticator()
    assert hub.request_otp
    handler = SimpleNamespace(request=SimpleNamespace(remote_ip="10.2.0.1"), db=None)
    name = asyncio.run(hub.authenticate(handler, {"username": "auditor", "password": PASSWORD}))
    assert name == "auditor"  # logged in, but only to set up MFA
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(hub.pre_spawn_start(SimpleNamespace(name="auditor"), None))
    assert refused.value.status_code == 403 and refused.value.log_message == MFA_FIRST
    secret, _codes = _enrol_on_the_pages(_browser("auditor"))
    asyncio.run(hub.pre_spawn_start(SimpleNamespace(name="auditor"), None))  # allowed now
    no_code = {"username": "auditor", "password": PASSWORD}
    assert asyncio.run(hub.authenticate(handler, no_code)) is None
    # The code of the next step (the confirmation used this one's).
    with_code = {**no_code, "otp": pyotp.TOTP(secret).at(_at(1))}
    assert asyncio.run(hub.authenticate(handler, with_code)) == "auditor"


def test_only_an_admin_or_operator_resets_mfa_through_the_api_and_the_cli(
    mfa_world: World, run_spe: Any
) -> None:
    _enrol_on_the_pages(_browser("researcher"))
    with transaction() as s:
        tokens = {n: create_token(s, get_user(s, n)) for n in ("researcher2", "inst_admin_b")}
    api = TestClient(create_app())
    for other in ("researcher2", "inst_admin_b"):  # a peer, and the admin of another institution
        answer = api.post(
            "/api/v1/users/researcher/mfa-reset",
            json={"reason": "x"},
            headers={"Authorization": f"Bearer {tokens[other]}"},
        )
        assert answer.status_code == 403, answer.text
    assert _events("request.refused")[-1]["actor"] == "inst_admin_b"
    reset = run_spe("--as", "inst_admin", "user", "mfa-reset", "researcher", "--reason", "phone")
    assert reset.returncode == 0, reset.stderr
    assert "Reset the two-step login of researcher" in reset.stdout
    assert _events("mfa.reset", "user:researcher")[-1]["actor"] == "inst_admin"
    # A role that needs MFA gets no API token from the CLI before setting it up.
    refused = run_spe("--as", "reviewer", "token", "create")
    assert refused.returncode != 0 and "needs two-step login" in refused.stderr


def _id_token(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_an_oidc_login_without_mfa_in_amr_or_acr_is_refused_with_a_sentence(
    mfa_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEOIDCAuthenticator's last step (update_auth_model) with the auth state oauthenticator
    builds from the provider's token and userinfo answers."""
    from tornado import web

    from spe.config import reset_settings
    from spe.workspaces.oidc import NO_MFA, SPEOIDCAuthenticator

    monkeypatch.setenv("SPE_OIDC_REQUIRE_MFA", "1")
    monkeypatch.setenv("SPE_OIDC_MFA_ACR", "idporten-loa-high")
    reset_settings()
    oidc = SPEOIDCAuthenticator(user_auth_state_key="oauth_user")

    def login(id_claims: dict[str, Any]) -> Any:
        state = {"id_token": _id_token(id_claims), "oauth_user": {"sub": "researcher"}}
        return asyncio.run(oidc.update_auth_model({"name": "x", "auth_state": state}))

    with pytest.raises(web.HTTPError) as refused:
        login({"sub": "researcher", "amr": ["pwd"]})
    assert refused.value.status_code == 403 and refused.value.log_message == NO_MFA
    assert _events("request.refused")[-1]["sentence"] == NO_MFA
    assert login({"sub": "researcher", "amr": ["pwd", "otp"]})["name"] == "researcher"
    assert login({"sub": "researcher", "acr": "idporten-loa-high"})["name"] == "researcher"


@pytest.mark.parametrize("setting", ["1", "0"], ids=["researchers-need-mfa", "they-do-not"])
def test_researchers_need_mfa_where_the_setting_says_so_at_the_hub_and_on_the_pages(
    mfa_world: World, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """SPE_MFA_RESEARCHERS=1: a researcher without TOTP opens only the enrolment (hub login,
    spawn, pages and their data routes); with 0 (the default) the password alone opens all."""
    from tornado import web

    from spe.config import reset_settings

    monkeypatch.setenv("SPE_MFA_RESEARCHERS", setting)
    reset_settings()
    must = setting == "1"
    first = check_login("researcher", PASSWORD, "test", address="10.4.0.1")
    assert first.username == "researcher" and first.must_enrol_mfa is must
    hub = SPEAuthenticator()
    handler = SimpleNamespace(request=SimpleNamespace(remote_ip="10.4.0.2"), db=None)
    login = {"username": "researcher", "password": PASSWORD}
    assert asyncio.run(hub.authenticate(handler, login)) == "researcher"
    browser = _browser("researcher")
    data_routes = ["/projects", "/catalogue", "/exports"]
    if must:
        with pytest.raises(web.HTTPError) as refused:  # no workspace before enrolment
            asyncio.run(hub.pre_spawn_start(SimpleNamespace(name="researcher"), None))
        assert refused.value.status_code == 403 and refused.value.log_message == MFA_FIRST
        for route in data_routes:
            page = browser.get(PREFIX + route, follow_redirects=False)
            assert page.status_code == 303 and page.headers["location"].endswith("/mfa"), route
        secret, _codes = _enrol_on_the_pages(browser)
        later = _at(2)
        done = check_login(
            "researcher", PASSWORD, "test", now=later, otp=pyotp.TOTP(secret).at(later)
        )
        assert done.username == "researcher" and done.second_factor == "totp"
        assert not done.must_enrol_mfa
    asyncio.run(hub.pre_spawn_start(SimpleNamespace(name="researcher"), None))  # allowed
    for route in data_routes:
        assert browser.get(PREFIX + route, follow_redirects=False).status_code == 200, route
