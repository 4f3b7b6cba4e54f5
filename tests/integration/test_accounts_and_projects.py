"""Accounts and projects through their lifecycle, each step audited."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from spe.accounts.service import (
    AccountError,
    accept_terms,
    deactivate_inactive,
    get_user,
    record_login,
)
from spe.audit.models import AuditEvent
from spe.db import transaction
from spe.projects.service import approve_project, close_project, get_project
from spe.projects.states import ProjectStateError


def _events(action: str) -> list[AuditEvent]:
    with transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_inactive_accounts_are_deactivated_after_the_configured_period(world):
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=548)
    with transaction() as s:
        # researcher logs in "now"; everybody else was last active at creation.
        record_login(s, get_user(s, "researcher"), True, "test")
        assert deactivate_inactive(s, 600, now=later) == []
    with transaction() as s:
        done = deactivate_inactive(s, 547, now=later + dt.timedelta(days=1))
    assert "researcher" in done and "op" in done
    with transaction() as s:
        assert not get_user(s, "auditor").active
        assert "no activity" in (get_user(s, "auditor").deactivation_reason or "")
    reasons = {e.target for e in _events("user.deactivate") if e.actor == "system:inactivity"}
    assert "user:auditor" in reasons


def test_terms_acceptance_is_audited_once_per_version(world):
    with transaction() as s:
        version = accept_terms(s, get_user(s, "researcher"))
        assert accept_terms(s, get_user(s, "researcher")) == version  # idempotent
    events = _events("terms.accept")
    assert len(events) == 1
    assert f'"version":"{version}"' in events[0].details


def test_failed_logins_are_counted_and_audited(world):
    with transaction() as s:
        record_login(s, get_user(s, "researcher"), False, "127.0.0.1")
        record_login(s, get_user(s, "researcher"), False, "127.0.0.1")
    with transaction() as s:
        assert get_user(s, "researcher").failed_logins == 2
    assert len(_events("user.login_failed")) == 2


def test_closed_project_cannot_be_approved_and_close_needs_reason(world):
    from spe.projects.service import ProjectError

    with pytest.raises(ProjectError, match="reason"), transaction() as s:
        close_project(s, get_user(s, "reviewer"), get_project(s, "study"), " ")
    with transaction() as s:
        close_project(s, get_user(s, "reviewer"), get_project(s, "study"), "withdrawn")
    with pytest.raises(ProjectStateError, match="closed"), transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
    (event,) = _events("project.close")
    assert event.project == "study" and '"reason":"withdrawn"' in event.details


def test_last_operator_cannot_revoke_own_role(world):
    from spe.accounts.models import Role
    from spe.accounts.service import revoke_role

    with pytest.raises(AccountError, match="last operator"), transaction() as s:
        op = get_user(s, "op")
        revoke_role(s, op, op, Role.OPERATOR, None)


def test_cli_project_flow(world, run_spe):
    assert run_spe("--as", "reviewer", "project", "approve", "study").returncode == 0
    out = run_spe("--as", "researcher", "project", "add-member", "study", "researcher2")
    assert out.returncode == 0, out.stderr
    # Added after approval: a member only once the data holder approves (issue 16, point 6).
    out = run_spe("--as", "reviewer", "project", "member", "approve", "study", "researcher2")
    assert out.returncode == 0, out.stderr
    listing = run_spe("project", "list").stdout
    assert "study\tapproved" in listing and "researcher2" in listing
    out = run_spe("--as", "researcher2", "terms", "accept")
    assert out.returncode == 0 and "version 1" in out.stdout
    status = run_spe("--as", "inst_admin", "terms", "status", "--org", "Uni A").stdout
    assert "researcher2\taccepted" in status and "researcher\tNOT accepted" in status
