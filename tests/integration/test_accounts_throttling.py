"""Throttling of failed logins, from where the attacker stands (one address, or many): an
address that fails too often is refused without a check and cannot lock accounts; one address
locks only a bounded number of accounts; many addresses still lock an account. Every lock and
throttle is audited. `check_login` is what the hub's authenticator runs for every login."""

from __future__ import annotations

import pytest

from spe.accounts.service import get_user
from spe.db import readonly
from spe.workspaces.authenticator import check_login
from tests.conftest import World
from tests.integration.test_passwords import _events

PASSWORD = "correct horse battery"
VICTIMS = ("researcher", "researcher2", "researcher_b", "reviewer", "reviewer2", "auditor")


@pytest.fixture
def limits(spe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from spe.config import reset_settings

    for key, value in {
        "SPE_LOGIN_MAX_FAILURES": "3",
        "SPE_LOGIN_SOURCE_MAX_FAILURES": "12",
        "SPE_LOGIN_SOURCE_LOCKS_MAX": "2",
    }.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    World()


def _locked(username: str) -> bool:
    with readonly() as s:
        return get_user(s, username).locked_until is not None


def test_one_address_locks_only_a_bounded_number_of_accounts(limits: None) -> None:
    attacker = "203.0.113.7"
    for victim in VICTIMS[:4]:
        for _ in range(3):
            assert check_login(victim, "guess", "hub", address=attacker).username is None
    locked = [v for v in VICTIMS[:4] if _locked(v)]
    assert locked == ["researcher", "researcher2"]  # two, the address's share
    # The others still log in from their own addresses.
    assert check_login("researcher_b", PASSWORD, "hub", address="198.51.100.1").username
    assert check_login("reviewer", PASSWORD, "hub", address="198.51.100.2").username
    throttles = _events("login.throttle", f"source:{attacker}")
    assert throttles and throttles[0]["reason"] == "locked its share of accounts"
    assert len(_events("user.lock")) == 2


def test_a_throttled_address_is_refused_unchecked_and_counts_against_no_account(
    limits: None,
) -> None:
    attacker = "203.0.113.8"
    # Spread over many accounts, fewer than the per-account limit each.
    for i in range(12):
        check_login(VICTIMS[i % 6], "guess", "hub", address=attacker)
    assert _events("login.throttle", f"source:{attacker}")[0]["failures"] == 12
    # Throttled: even the right password is refused, and the account's count stays.
    with readonly() as s:
        before = get_user(s, "auditor").failed_logins
    refused = check_login("auditor", PASSWORD, "hub", address=attacker)
    assert refused.username is None and refused.reason == "source address throttled"
    for _ in range(5):
        check_login("auditor", "guess", "hub", address=attacker)
    with readonly() as s:
        assert get_user(s, "auditor").failed_logins == before
    assert not _locked("auditor")
    assert _events("user.login_failed", "user:auditor")[-1]["reason"] == (
        "source address throttled"
    )
    # The person, from their own address, logs in.
    assert check_login("auditor", PASSWORD, "hub", address="198.51.100.3").username == "auditor"


def test_failures_from_many_addresses_still_lock_the_account(limits: None) -> None:
    for i in range(3):
        check_login("reviewer", "guess", "hub", address=f"192.0.2.{i}")
    assert _locked("reviewer")
    refused = check_login("reviewer", PASSWORD, "hub", address="198.51.100.4")
    assert refused.username is None and refused.reason == "account locked"
    assert _events("user.lock", "user:reviewer")[0]["failed_logins"] == 3
