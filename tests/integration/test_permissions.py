"""Who may do what: every role against every action defined so far, and the special cases.

The expected table is written here independently of spe.accounts.permissions; a test proves it
names every role and every action, so a new action cannot be added without deciding it here.
"""

from __future__ import annotations

import pytest

from spe.accounts.models import Role
from spe.accounts.permissions import Action, Target, can, check_can
from spe.accounts.service import (
    accept_terms,
    enrol_researcher,
    get_organisation,
    get_user,
    grant_role,
    remove_researcher,
)
from spe.db import transaction
from spe.errors import PermissionDenied
from spe.projects.service import approve_project, get_project

# A user in the test world holding exactly each role.
USER_OF_ROLE = {
    Role.OPERATOR: "op",
    Role.RESEARCHER: "researcher",
    Role.HOLDER_REVIEWER: "reviewer",
    Role.AUDITOR: "auditor",
    Role.INSTITUTION_ADMIN: "inst_admin",
}

OP, RES, REV, AUD, ADM = (
    Role.OPERATOR,
    Role.RESEARCHER,
    Role.HOLDER_REVIEWER,
    Role.AUDITOR,
    Role.INSTITUTION_ADMIN,
)

# action -> the roles allowed it, for the standard target described in _target().
EXPECTED: dict[Action, set[Role]] = {
    Action.ORG_CREATE: {OP},
    Action.USER_CREATE: {OP, ADM},
    Action.USER_DEACTIVATE: {OP, ADM},
    Action.USER_REACTIVATE: {OP, ADM},
    Action.ROLE_GRANT: {OP, ADM},
    Action.ROLE_REVOKE: {OP, ADM},
    Action.TERMS_ACCEPT: {OP, RES, REV, AUD, ADM},
    Action.TERMS_VIEW_STATUS: {OP, ADM},
    Action.PROJECT_CREATE: {RES},
    Action.PROJECT_APPROVE: {REV},
    Action.PROJECT_CLOSE: {REV, OP},
    Action.PROJECT_MEMBER_ADD: {REV, RES},
    Action.PROJECT_MEMBER_REMOVE: {REV, RES},
    Action.PROJECT_DATA_ACCESS: {RES},
    Action.DATASET_INGEST: {REV},
    Action.DATASET_QUARANTINE_READ: {REV},
    Action.PROJECT_GRANT: {REV},
    Action.DATASET_ACCESS_LOG: {REV},
    Action.AUDIT_READ: {AUD},
    Action.AUDIT_VERIFY: {AUD, OP},
    Action.DP_BUDGET_VIEW: {REV, RES},
    Action.DP_BUDGET_TOPUP: {REV},
}


def test_expected_table_names_every_role_and_every_action():
    assert set(EXPECTED) == set(Action)
    assert set(USER_OF_ROLE) == set(Role)
    for roles in EXPECTED.values():
        assert roles <= set(Role)


def _target(session, action: Action, actor) -> Target:
    uni = get_organisation(session, "Uni A")
    study = get_project(session, "study")
    researcher2 = get_user(session, "researcher2")
    if action in (Action.USER_CREATE, Action.TERMS_VIEW_STATUS, Action.PROJECT_CREATE):
        return Target(organisation=uni)
    if action in (
        Action.DATASET_INGEST,
        Action.DATASET_QUARANTINE_READ,
        Action.DATASET_ACCESS_LOG,
    ):
        return Target(organisation=get_organisation(session, "Holder Agency"))
    if action in (Action.USER_DEACTIVATE, Action.USER_REACTIVATE):
        return Target(user=researcher2)
    if action in (Action.ROLE_GRANT, Action.ROLE_REVOKE):
        return Target(organisation=uni, user=researcher2, role=Role.RESEARCHER)
    if action == Action.TERMS_ACCEPT:
        return Target(user=actor)
    if action.value.startswith(("project.", "dp.")):
        return Target(project=study, user=researcher2)
    return Target()


@pytest.fixture
def approved_world(world):
    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
        for name in USER_OF_ROLE.values():
            accept_terms(s, get_user(s, name))
    return world


def test_every_role_against_every_action(approved_world):
    with transaction() as s:
        for action, role in ((a, r) for a in Action for r in USER_OF_ROLE):
            username = USER_OF_ROLE[role]
            actor = get_user(s, username)
            allowed = can(s, actor, action, _target(s, action, actor))
            assert allowed == (role in EXPECTED[action]), (role, action)
            if not allowed:
                with pytest.raises(PermissionDenied) as refused:
                    check_can(s, actor, action, _target(s, action, actor))
                # A refusal is a sentence a person can act on.
                assert refused.value.message.endswith(".")
                assert len(refused.value.message) > 20


def test_institution_admin_enrols_researchers_of_own_institution_only(world):
    with transaction() as s:
        admin = get_user(s, "inst_admin")
        user, password = enrol_researcher(s, admin, admin.organisation, "newbie")
        assert password and user.organisation.name == "Uni A"
    with pytest.raises(PermissionDenied), transaction() as s:
        enrol_researcher(s, get_user(s, "inst_admin"), get_organisation(s, "Uni B"), "intruder")
    with transaction() as s:
        assert s.query(type(get_user(s, "op"))).filter_by(username="intruder").first() is None


def test_institution_admin_cannot_remove_another_institutions_researcher(world):
    with pytest.raises(PermissionDenied), transaction() as s:
        remove_researcher(s, get_user(s, "inst_admin"), get_user(s, "researcher_b"), "left")
    with transaction() as s:
        assert get_user(s, "researcher_b").active
    with transaction() as s:
        remove_researcher(s, get_user(s, "inst_admin_b"), get_user(s, "researcher_b"), "left")
    with transaction() as s:
        gone = get_user(s, "researcher_b")
        assert not gone.active and not gone.roles


def test_institution_admin_cannot_grant_other_roles(world):
    with pytest.raises(PermissionDenied), transaction() as s:
        admin = get_user(s, "inst_admin")
        grant_role(s, admin, get_user(s, "researcher2"), Role.INSTITUTION_ADMIN, admin.organisation)


def test_data_access_needs_accepted_terms(world):
    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
    with transaction() as s:
        researcher = get_user(s, "researcher")
        target = Target(project=get_project(s, "study"))
        with pytest.raises(PermissionDenied, match="terms of use"):
            check_can(s, researcher, Action.PROJECT_DATA_ACCESS, target)
        accept_terms(s, researcher)
        check_can(s, researcher, Action.PROJECT_DATA_ACCESS, target)


def test_reviewer_who_is_a_member_cannot_approve_the_project(world):
    with transaction() as s:
        reviewer = get_user(s, "reviewer")
        grant_role(s, get_user(s, "op"), reviewer, Role.RESEARCHER, get_organisation(s, "Uni A"))
    with transaction() as s:
        from spe.projects.service import add_member

        add_member(s, get_user(s, "researcher"), get_project(s, "study"), get_user(s, "reviewer"))
    with pytest.raises(PermissionDenied, match="another reviewer"), transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
    with transaction() as s:
        approve_project(s, get_user(s, "reviewer2"), get_project(s, "study"))


def test_deactivated_account_may_do_nothing(world):
    from spe.accounts.service import deactivate_user

    with transaction() as s:
        deactivate_user(s, get_user(s, "op"), get_user(s, "auditor"), "left the agency")
    with transaction() as s:
        auditor = get_user(s, "auditor")
        with pytest.raises(PermissionDenied, match="deactivated"):
            check_can(s, auditor, Action.AUDIT_READ)
