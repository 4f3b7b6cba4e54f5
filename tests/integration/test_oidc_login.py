"""OIDC logins against SPE's accounts (SQLite and PostgreSQL): a known account logs in (audited),
an unknown one is refused or enrolled as a researcher of the institution the provider names,
per SPE_OIDC_UNKNOWN_USERS; a deactivated account, or one the provider places at another
institution, is refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from spe.accounts.models import Role
from spe.accounts.permissions import holds
from spe.accounts.service import deactivate_user, get_user
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.workspaces.oidc import OIDCError, OIDCIdentity, admit_login


def _events(action: str) -> list[str]:
    with readonly() as s:
        return list(s.scalars(select(AuditEvent.target).where(AuditEvent.action == action)))


def test_a_known_account_logs_in_and_the_login_is_audited(world: Any) -> None:
    assert admit_login(OIDCIdentity("researcher", "Uni A", "", ""), "refuse") == "researcher"
    assert "user:researcher" in _events("user.login")


def test_an_unknown_person_is_refused_when_enrolment_is_off(world: Any) -> None:
    with pytest.raises(OIDCError, match="no SPE account 'newbie'"):
        admit_login(OIDCIdentity("newbie", "Uni A", "", ""), "refuse")
    with readonly() as s:
        assert s.scalar(select(AuditEvent).where(AuditEvent.target == "user:newbie")) is None


def test_an_unknown_person_is_enrolled_as_a_researcher_of_their_institution(world: Any) -> None:
    identity = OIDCIdentity("newbie.unia.no", "Uni A", "New Bie", "n@unia.no")
    assert admit_login(identity, "enrol") == "newbie.unia.no"
    with readonly() as s:
        user = get_user(s, "newbie.unia.no")
        assert user.organisation is not None and user.organisation.name == "Uni A"
        assert holds(user, Role.RESEARCHER, user.organisation.id)
        assert user.password_hash is None  # logs in through the provider only
    assert _events("user.create")[-1] == "user:newbie.unia.no"
    assert "user:newbie.unia.no" in _events("role.grant")
    with pytest.raises(OIDCError, match="did not name your institution"):
        admit_login(OIDCIdentity("nobody", None, "", ""), "enrol")


def test_a_deactivated_or_misplaced_account_is_refused(world: Any) -> None:
    with pytest.raises(OIDCError, match="belongs to Uni A"):
        admit_login(OIDCIdentity("researcher", "Uni B", "", ""), "refuse")
    with transaction() as s:
        deactivate_user(s, get_user(s, "op"), get_user(s, "researcher"), "left")
    with pytest.raises(OIDCError, match="deactivated"):
        admit_login(OIDCIdentity("researcher", "Uni A", "", ""), "refuse")
