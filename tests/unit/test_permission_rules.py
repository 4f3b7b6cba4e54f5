"""Each permission and state rule, case by case, with its exact sentence: the tests that kill
the mutants `make mutation` makes of spe/accounts/permissions.py, spe/exports/permissions.py,
spe/exports/states.py and spe/projects/states.py (README, "Mutation testing").

People, organisations, projects and requests are plain model objects that never reach a
database (the rules read only their fields), so these run in milliseconds. Only whether the
terms were accepted is a database question; that one is answered by a stand-in session here
(a real database answers it in tests/integration/test_permissions.py).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from spe.accounts import permissions as P
from spe.accounts.models import Organisation, OrgKind, Role, RoleGrant, User
from spe.accounts.permissions import Action, Target
from spe.errors import PermissionDenied
from spe.exports import permissions as EP
from spe.exports import states as ES
from spe.exports.errors import ExportStateError
from spe.exports.models import ExportRequest, RequestStatus
from spe.projects import states as PS
from spe.projects.models import MemberRole, Project, ProjectMember, ProjectStatus

# The date the code under test calls "today", read again before every test: a date read
# once at collection goes stale when a run crosses midnight (it did, under CI).
TODAY = dt.datetime.now(dt.UTC).date()


@pytest.fixture(autouse=True)
def _today_is_read_per_test() -> None:
    global TODAY
    TODAY = dt.datetime.now(dt.UTC).date()


class Terms:
    """A stand-in session answering only "has this person accepted the current terms?"."""

    def __init__(self, accepted: bool) -> None:
        self.accepted = accepted

    def scalar(self, _query: Any) -> Any:
        return uuid.uuid4() if self.accepted else None


YES, NO = Terms(True), Terms(False)


def org(name: str, kind: OrgKind) -> Organisation:
    return Organisation(id=uuid.uuid4(), name=name, kind=kind)


HOLDER = org("Holder Agency", OrgKind.DATA_HOLDER)
OTHER_HOLDER = org("Other Agency", OrgKind.DATA_HOLDER)
UNI = org("Uni A", OrgKind.RESEARCH_INSTITUTION)
UNI_B = org("Uni B", OrgKind.RESEARCH_INSTITUTION)


def person(
    name: str, *grants: tuple[Role, Organisation | None], home: Organisation | None = None
) -> User:
    user = User(id=uuid.uuid4(), username=name, active=True, organisation_id=None)
    if home is not None:
        user.organisation_id = home.id
    user.roles = [RoleGrant(role=r, organisation_id=o.id if o else None) for r, o in grants]
    return user


def project(
    status: ProjectStatus = ProjectStatus.APPROVED,
    members: tuple[tuple[User, MemberRole], ...] = (),
    start: dt.date | None = None,
    end: dt.date | None = None,
    removed: tuple[User, ...] = (),
) -> Project:
    p = Project(
        id=uuid.uuid4(),
        slug="study",
        status=status,
        holder_id=HOLDER.id,
        institution_id=UNI.id,
        start_date=TODAY if start is None else start,
        end_date=TODAY if end is None else end,
    )
    p.holder = HOLDER
    rows = [ProjectMember(user_id=u.id, role=r, removed_at=None) for u, r in members]
    rows += [
        ProjectMember(user_id=u.id, role=MemberRole.MEMBER, removed_at=dt.datetime.now(dt.UTC))
        for u in removed
    ]
    p.members = rows
    return p


OP = person("op", (Role.OPERATOR, None))
AUD = person("aud", (Role.AUDITOR, None))
REV = person("rev", (Role.HOLDER_REVIEWER, HOLDER), home=HOLDER)
OTHER_REV = person("orev", (Role.HOLDER_REVIEWER, OTHER_HOLDER), home=OTHER_HOLDER)
RES = person("res", (Role.RESEARCHER, UNI), home=UNI)
RES_B = person("resb", (Role.RESEARCHER, UNI_B), home=UNI_B)
ADM = person("adm", (Role.INSTITUTION_ADMIN, UNI), home=UNI)
NOBODY = person("nobody", home=UNI)


def why(actor: User, action: Action, target: Target | None = None, session: Any = YES) -> Any:
    return P.refusal(session, actor, action, target)


# --- who holds what -----------------------------------------------------------------------


def test_holds_matches_the_role_and_for_organisation_roles_the_organisation():
    assert P.holds(REV, Role.HOLDER_REVIEWER, HOLDER.id)
    assert not P.holds(REV, Role.HOLDER_REVIEWER, OTHER_HOLDER.id)
    assert P.holds(REV, Role.HOLDER_REVIEWER)  # any organisation
    assert not P.holds(REV, Role.RESEARCHER)
    assert not P.holds(REV, Role.RESEARCHER, HOLDER.id)
    assert P.holds(OP, Role.OPERATOR, UNI.id)  # platform roles ignore the organisation
    # A second grant of another role before the matching one does not stop the search.
    both = person("both", (Role.RESEARCHER, UNI), (Role.HOLDER_REVIEWER, HOLDER))
    assert P.holds(both, Role.HOLDER_REVIEWER, HOLDER.id)
    two = person("two", (Role.HOLDER_REVIEWER, OTHER_HOLDER), (Role.HOLDER_REVIEWER, HOLDER))
    assert P.holds(two, Role.HOLDER_REVIEWER, HOLDER.id)


def test_a_deactivated_account_is_refused_with_its_reason_or_without():
    gone = person("gone", (Role.OPERATOR, None))
    gone.active = False
    gone.deactivation_reason = None
    assert why(gone, Action.ORG_CREATE) == (
        "The account gone is deactivated; ask your institution admin or a platform operator "
        "to reactivate it."
    )
    gone.deactivation_reason = "left"
    assert why(gone, Action.ORG_CREATE) == (
        "The account gone is deactivated (left); ask your institution admin or a platform "
        "operator to reactivate it."
    )


# --- each rule ----------------------------------------------------------------------------


def test_operator_only_and_user_creation():
    assert why(OP, Action.ORG_CREATE) is None
    assert why(ADM, Action.ORG_CREATE) == (
        "Only a platform operator may add organisations; ask your operator."
    )
    create = (
        "Only a platform operator, or an institution admin for their own institution, may "
        "create accounts there."
    )
    assert why(OP, Action.USER_CREATE, Target(organisation=UNI_B)) is None
    assert why(ADM, Action.USER_CREATE, Target(organisation=UNI)) is None
    assert why(ADM, Action.USER_CREATE, Target(organisation=UNI_B)) == create
    assert why(ADM, Action.USER_CREATE, Target()) == create


def test_account_changes_by_the_operator_or_the_persons_own_institution_admin():
    change = (
        "Only a platform operator, or the institution admin of the person's own institution, "
        "may change this account."
    )
    for action in (Action.USER_DEACTIVATE, Action.USER_REACTIVATE):
        assert why(OP, action, Target(user=RES_B)) is None
        assert why(ADM, action, Target(user=RES)) is None
        assert why(ADM, action, Target(user=RES_B)) == change
        assert why(ADM, action, Target()) == change
        homeless = person("homeless", (Role.RESEARCHER, UNI))
        assert why(ADM, action, Target(user=homeless)) == change
        for platform in (
            person("op2", (Role.OPERATOR, None), home=UNI),
            person("aud2", (Role.AUDITOR, None), home=UNI),
        ):
            assert why(ADM, action, Target(user=platform)) == (
                "Platform operators and auditors are managed by a platform operator."
            )


def test_role_changes_only_the_researcher_role_in_the_admins_own_institution():
    refused = (
        "Only a platform operator may change roles, except that an institution admin may add "
        "or remove the researcher role for people of their own institution."
    )
    ok = Target(organisation=UNI, user=RES, role=Role.RESEARCHER)
    for action in (Action.ROLE_GRANT, Action.ROLE_REVOKE):
        assert why(OP, action, Target(organisation=UNI_B, user=RES_B, role=Role.AUDITOR)) is None
        assert why(ADM, action, ok) is None
        for target in (
            Target(organisation=UNI, user=RES, role=Role.INSTITUTION_ADMIN),
            Target(organisation=None, user=RES, role=Role.RESEARCHER),
            Target(organisation=UNI, user=None, role=Role.RESEARCHER),
            Target(organisation=UNI, user=RES_B, role=Role.RESEARCHER),
            Target(organisation=UNI_B, user=RES_B, role=Role.RESEARCHER),
        ):
            assert why(ADM, action, target) == refused, target
        assert why(RES, action, ok) == refused


def test_terms_each_for_themselves_and_their_status_for_admins_and_operators():
    assert why(RES, Action.TERMS_ACCEPT, Target(user=RES)) is None
    assert why(RES, Action.TERMS_ACCEPT, Target()) is None
    assert why(OP, Action.TERMS_ACCEPT, Target(user=RES)) == (
        "Each person accepts the terms of use for themselves."
    )
    status = "Only the institution's admins and platform operators see who accepted the terms."
    assert why(OP, Action.TERMS_VIEW_STATUS, Target(organisation=UNI_B)) is None
    assert why(ADM, Action.TERMS_VIEW_STATUS, Target(organisation=UNI)) is None
    assert why(ADM, Action.TERMS_VIEW_STATUS, Target(organisation=UNI_B)) == status
    assert why(ADM, Action.TERMS_VIEW_STATUS, Target()) == status


def test_project_application_by_a_researcher_of_the_institution():
    refused = "Only a researcher of the institution may apply for a project on its behalf."
    assert why(RES, Action.PROJECT_CREATE, Target(organisation=UNI)) is None
    assert why(RES, Action.PROJECT_CREATE, Target(organisation=UNI_B)) == refused
    assert why(RES, Action.PROJECT_CREATE, Target()) == refused


def test_project_approval_by_a_reviewer_of_its_holder_who_is_not_a_member():
    refused = "Only a reviewer of the data holder may decide on a project's application."
    p = project(ProjectStatus.PENDING, ((RES, MemberRole.LEAD),))
    assert why(REV, Action.PROJECT_APPROVE, Target(project=p)) is None
    assert why(OTHER_REV, Action.PROJECT_APPROVE, Target(project=p)) == refused
    assert why(REV, Action.PROJECT_APPROVE, Target()) == refused
    member = project(ProjectStatus.PENDING, ((RES, MemberRole.LEAD), (REV, MemberRole.MEMBER)))
    assert why(REV, Action.PROJECT_APPROVE, Target(project=member)) == (
        "You are a member of this project, so another reviewer must decide on it."
    )
    former = project(ProjectStatus.PENDING, ((RES, MemberRole.LEAD),), removed=(REV,))
    assert why(REV, Action.PROJECT_APPROVE, Target(project=former)) is None


def test_project_close_by_its_holders_reviewer_or_an_operator():
    refused = "Only a reviewer of the data holder, or a platform operator, may close a project."
    p = project()
    assert why(OP, Action.PROJECT_CLOSE, Target(project=p)) is None
    assert why(REV, Action.PROJECT_CLOSE, Target(project=p)) is None
    assert why(OTHER_REV, Action.PROJECT_CLOSE, Target(project=p)) == refused
    assert why(REV, Action.PROJECT_CLOSE, Target()) == refused
    assert why(RES, Action.PROJECT_CLOSE, Target(project=p)) == refused


def test_members_changed_by_the_lead_or_the_holders_reviewer():
    refused = "Only the project's lead or a reviewer of its data holder may change its members."
    member = person("mem", (Role.RESEARCHER, UNI), home=UNI)
    p = project(members=((RES, MemberRole.LEAD), (member, MemberRole.MEMBER)))
    for action in (Action.PROJECT_MEMBER_ADD, Action.PROJECT_MEMBER_REMOVE):
        assert why(RES, action, Target(project=p)) is None
        assert why(REV, action, Target(project=p)) is None
        assert why(member, action, Target(project=p)) == refused
        assert why(OTHER_REV, action, Target(project=p)) == refused
        assert why(RES, action, Target()) == "Name the project."
        gone = project(members=(), removed=(RES,))
        gone.members[0].role = MemberRole.LEAD
        assert why(RES, action, Target(project=gone)) == refused


def test_data_access_needs_membership_the_role_approval_time_and_terms():
    p = project(members=((RES, MemberRole.MEMBER),))
    assert why(RES, Action.PROJECT_DATA_ACCESS, Target(project=p)) is None
    assert why(RES, Action.PROJECT_DATA_ACCESS, Target()) == "Name the project."
    outsider = "You are not a member of project study; ask its lead to add you."
    assert why(RES_B, Action.PROJECT_DATA_ACCESS, Target(project=p)) == outsider
    unrolled = person("unrolled", home=UNI)  # a member without the researcher role
    q = project(members=((unrolled, MemberRole.MEMBER),))
    assert why(unrolled, Action.PROJECT_DATA_ACCESS, Target(project=q)) == outsider
    pending = project(ProjectStatus.PENDING, ((RES, MemberRole.MEMBER),))
    assert why(RES, Action.PROJECT_DATA_ACCESS, Target(project=pending)) == (
        "Project study is pending, so its data cannot be used."
    )
    yesterday = TODAY - dt.timedelta(days=1)
    ended = project(members=((RES, MemberRole.MEMBER),), start=yesterday, end=yesterday)
    assert why(RES, Action.PROJECT_DATA_ACCESS, Target(project=ended)) == (
        f"Project study ended on {yesterday}; its data can no longer be used."
    )
    assert why(RES, Action.PROJECT_DATA_ACCESS, Target(project=p), session=NO) == (
        "Accept the current terms of use first (`spe terms accept`)."
    )


def test_holder_actions_by_a_reviewer_of_the_project_or_organisation():
    p = project()
    for action, what in (
        (Action.DATASET_INGEST, "publish its datasets"),
        (Action.DATASET_QUARANTINE_READ, "open its quarantine files"),
        (Action.PROJECT_GRANT, "grant a project access to its datasets"),
        (Action.DATASET_ACCESS_LOG, "see who used its data"),
        (Action.DP_BUDGET_TOPUP, "top up a project's privacy budget"),
    ):
        refused = f"Only a reviewer of the data holder may {what}."
        assert why(REV, action, Target(project=p)) is None
        assert why(REV, action, Target(organisation=HOLDER)) is None
        # The project's holder wins over an organisation named beside it.
        assert why(REV, action, Target(project=p, organisation=OTHER_HOLDER)) is None
        assert why(OTHER_REV, action, Target(project=p, organisation=OTHER_HOLDER)) == refused
        assert why(OTHER_REV, action, Target(project=p)) == refused
        assert why(OTHER_REV, action, Target(organisation=HOLDER)) == refused
        assert why(REV, action, Target()) == refused


def test_dp_budgets_seen_by_members_who_are_researchers_and_the_holders_reviewers():
    refused = (
        "Only members of project study and reviewers of its data holder may see its privacy "
        "budgets."
    )
    unrolled = person("unrolled", home=UNI)
    p = project(members=((RES, MemberRole.MEMBER), (unrolled, MemberRole.MEMBER)))
    assert why(RES, Action.DP_BUDGET_VIEW, Target(project=p)) is None
    assert why(REV, Action.DP_BUDGET_VIEW, Target(project=p)) is None
    assert why(unrolled, Action.DP_BUDGET_VIEW, Target(project=p)) == refused
    assert why(OTHER_REV, Action.DP_BUDGET_VIEW, Target(project=p)) == refused
    assert why(RES_B, Action.DP_BUDGET_VIEW, Target(project=p)) == refused
    assert why(RES, Action.DP_BUDGET_VIEW, Target()) == "Name the project."


def test_the_audit_log_read_by_auditors_and_verified_by_auditors_or_operators():
    assert why(AUD, Action.AUDIT_READ) is None
    assert why(OP, Action.AUDIT_READ) == "Only an auditor may read the audit log."
    assert why(AUD, Action.AUDIT_VERIFY) is None
    assert why(OP, Action.AUDIT_VERIFY) is None
    assert why(REV, Action.AUDIT_VERIFY) == (
        "Only an auditor or a platform operator may verify the audit log."
    )


def test_check_can_raises_with_what_was_refused_and_can_answers_the_same():
    p = project()
    for target, described in (
        (None, "platform"),
        (Target(), "platform"),
        (Target(project=p, user=RES, organisation=UNI), "project:study"),
        (Target(user=RES, organisation=UNI), "user:res"),
        (Target(organisation=UNI), "org:Uni A"),
    ):
        with pytest.raises(PermissionDenied) as refused:
            P.check_can(YES, NOBODY, Action.ORG_CREATE, target)
        assert refused.value.message == (
            "Only a platform operator may add organisations; ask your operator."
        )
        assert refused.value.refused_action == "org.create"  # type: ignore[attr-defined]
        assert refused.value.refused_target == described  # type: ignore[attr-defined]
        assert P.can(YES, NOBODY, Action.ORG_CREATE, target) is False
        assert P.can(YES, OP, Action.ORG_CREATE, target) is True
        assert P.check_can(YES, OP, Action.ORG_CREATE, target) is None


def test_role_scope_names_the_organisation_kind_a_role_needs():
    from spe.accounts.service import AccountError

    for role in (Role.AUDITOR, Role.OPERATOR):
        P.check_role_scope(role, None)
        with pytest.raises(AccountError) as bad:
            P.check_role_scope(role, UNI)
        assert bad.value.message == (
            f"The {role.value} role is held for the whole platform; drop --org."
        )
    P.check_role_scope(Role.RESEARCHER, UNI)
    P.check_role_scope(Role.HOLDER_REVIEWER, HOLDER)
    with pytest.raises(AccountError) as bad:
        P.check_role_scope(Role.RESEARCHER, None)
    assert bad.value.message == "The researcher role is held for one organisation; add --org NAME."
    with pytest.raises(AccountError) as bad:
        P.check_role_scope(Role.HOLDER_REVIEWER, UNI)
    assert bad.value.message == (
        "The holder_reviewer role belongs to a data holder, and Uni A is a research institution."
    )


# --- export requests: who may -------------------------------------------------------------


def request(author: str = "res", status: RequestStatus = RequestStatus.IN_REVIEW) -> Any:
    return ExportRequest(
        id=uuid.UUID(int=0x12345678_0000_0000_0000_000000000000), author=author, status=status
    )


def test_export_review_view_author_and_queue_rules_with_their_sentences():
    p = project(members=((RES, MemberRole.MEMBER),))
    r = request()
    s = YES
    assert EP.review_refusal(s, REV, r, p) is None
    assert EP.review_refusal(s, OTHER_REV, r, p) == (
        "Only a reviewer of Holder Agency, the project's data holder, may review it."
    )
    own = request(author="rev")
    assert EP.review_refusal(s, REV, own, p) == (
        "You filed this request, so you cannot review it; another reviewer of Holder Agency must."
    )
    assert EP.author_refusal(s, RES, r, "withdraw it") is None
    assert EP.author_refusal(s, REV, r, "withdraw it") == (
        "Only res, who filed the request, may withdraw it."
    )
    view = "Only the request's author and the data holder's reviewers may see it."
    assert EP.view_refusal(s, RES, r, p) is None
    assert EP.view_refusal(s, REV, r, p) is None
    assert EP.view_refusal(s, OTHER_REV, r, p) == view
    assert EP.view_refusal(s, RES_B, r, p) == view
    assert EP.queue_refusal(s, REV) is None
    assert EP.queue_refusal(s, REV, p) is None
    assert EP.queue_refusal(s, OTHER_REV) is None
    assert EP.queue_refusal(s, OTHER_REV, p) == (
        "Only a reviewer of Holder Agency may see its review queue."
    )
    assert EP.queue_refusal(s, RES) == "Only a data holder's reviewer has a review queue."


def test_a_deactivated_person_may_do_nothing_with_export_requests():
    p = project(members=((RES, MemberRole.MEMBER),))
    for user in (RES, REV):
        holds = [(g.role, HOLDER if g.role == Role.HOLDER_REVIEWER else UNI) for g in user.roles]
        gone = person(user.username, *holds)
        gone.active = False
        sentence = f"The account {user.username} is deactivated; ask to have it reactivated."
        assert EP.review_refusal(YES, gone, request(), p) == sentence
        assert EP.author_refusal(YES, gone, request(), "act") == sentence
        assert EP.view_refusal(YES, gone, request(), p) == sentence
        assert EP.queue_refusal(YES, gone) == sentence


def test_every_export_question_pair_agrees_and_raises_the_sentence():
    p = project(members=((RES, MemberRole.MEMBER),))
    r = request()
    # Filing asks the database about pending memberships: tests/integration/test_tenants.py.
    cases = {
        "review": [(REV, (r, p)), (OTHER_REV, (r, p))],
        "view": [(RES, (r, p)), (RES_B, (r, p))],
        "queue": [(REV, ()), (RES, ())],
    }
    assert set(cases) | {"file"} == set(EP.PAIRS)
    for name, (check, ask) in EP.PAIRS.items():
        if name == "file":
            continue
        for user, args in cases[name]:
            allowed = ask(YES, user, *args)
            if allowed:
                assert check(YES, user, *args) is None
            else:
                with pytest.raises(PermissionDenied, match=r"\.$"):
                    check(YES, user, *args)
        assert [ask(YES, u, *a) for u, a in cases[name]] == [True, False], name
    assert EP.user_is_author(YES, RES, r) is True
    assert EP.user_is_author(YES, REV, r) is False
    EP.check_user_is_author(YES, RES, r, "act")
    with pytest.raises(PermissionDenied, match=r"Only res, who filed the request, may act\."):
        EP.check_user_is_author(YES, REV, r, "act")


# --- export requests: which states allow what -----------------------------------------------


def test_export_transitions_say_why_not_with_the_short_id():
    assert ES.short_id(request()) == "12345678"
    for status, reason in (
        (RequestStatus.CHECKING, "its files are still being checked"),
        (RequestStatus.IN_REVIEW, "it is waiting for review"),
        (
            RequestStatus.CHANGES_REQUESTED,
            "the reviewers asked for changes; resubmit it or withdraw it",
        ),
        (RequestStatus.RELEASED, "it has been released"),
        (RequestStatus.REJECTED, "it was rejected"),
        (RequestStatus.WITHDRAWN, "it was withdrawn"),
        (RequestStatus.REVOKED, "its release was revoked"),
    ):
        r = request(status=status)
        assert ES.describe_status(r) == reason
        assert ES.is_open(r) == bool(ES.TRANSITIONS[status])
        for to in RequestStatus:
            if to in ES.TRANSITIONS[status]:
                ES.check_transition(r, to, "moved")
            else:
                with pytest.raises(ExportStateError) as refused:
                    ES.check_transition(r, to, "moved")
                assert refused.value.message == f"Request 12345678 cannot be moved: {reason}."
    assert ES.is_open(request(status=RequestStatus.RELEASED)) is True
    assert ES.is_open(request(status=RequestStatus.REVOKED)) is False


def test_export_transition_table_as_written_in_the_design():
    S = RequestStatus
    assert {k: set(v) for k, v in ES.TRANSITIONS.items()} == {
        S.CHECKING: {S.IN_REVIEW, S.RELEASED, S.WITHDRAWN},
        S.IN_REVIEW: {S.CHECKING, S.RELEASED, S.REJECTED, S.CHANGES_REQUESTED, S.WITHDRAWN},
        S.CHANGES_REQUESTED: {S.CHECKING, S.WITHDRAWN},
        S.RELEASED: {S.REVOKED},
        S.REJECTED: set(),
        S.WITHDRAWN: set(),
        S.REVOKED: set(),
    }
    assert ES.STATUS_OWNER == {
        S.CHECKING: ES.Owner.SYSTEM,
        S.IN_REVIEW: ES.Owner.REVIEWER,
        S.CHANGES_REQUESTED: ES.Owner.AUTHOR,
        S.RELEASED: ES.Owner.AUTHOR,
        S.REJECTED: ES.Owner.NOBODY,
        S.WITHDRAWN: ES.Owner.NOBODY,
        S.REVOKED: ES.Owner.NOBODY,
    }


# --- projects: which states allow what ---------------------------------------------------


def test_project_transitions_members_and_working_days():
    S = ProjectStatus
    assert {k: set(v) for k, v in PS.TRANSITIONS.items()} == {
        S.PENDING: {S.APPROVED, S.CLOSED},
        S.APPROVED: {S.CLOSED},
        S.CLOSED: set(),
    }
    assert PS.STATUS_OWNER == {
        S.PENDING: PS.Owner.HOLDER,
        S.APPROVED: PS.Owner.APPLICANT,
        S.CLOSED: PS.Owner.NOBODY,
    }
    for status in S:
        p = project(status)
        for to in S:
            if to in PS.TRANSITIONS[status]:
                PS.check_transition(p, to)
            else:
                with pytest.raises(PS.ProjectStateError) as refused:
                    PS.check_transition(p, to)
                assert refused.value.message == (
                    f"Project study is {status.value} and cannot become {to.value}."
                )
        if status == S.CLOSED:
            with pytest.raises(PS.ProjectStateError) as refused:
                PS.check_members_can_change(p)
            assert refused.value.message == "Project study is closed; its members cannot change."
        else:
            PS.check_members_can_change(p)

    day = dt.timedelta(days=1)
    window = project(start=TODAY - day, end=TODAY + day)
    assert PS.is_open_for_work(window)  # today, by default
    assert PS.is_open_for_work(window, TODAY - day)  # the first day
    assert PS.is_open_for_work(window, TODAY + day)  # the last day
    assert not PS.is_open_for_work(window, TODAY - 2 * day)
    assert not PS.is_open_for_work(window, TODAY + 2 * day)
    assert not PS.is_open_for_work(project(S.PENDING, start=TODAY, end=TODAY), TODAY)
    assert not PS.is_open_for_work(project(start=TODAY + day, end=TODAY + 2 * day))
    assert not PS.is_open_for_work(project(start=TODAY - 2 * day, end=TODAY - day))


# --- what mutation testing asked for -------------------------------------------------------


def test_rule_factories_build_rules_that_answer_by_role_and_holder():
    """RULES is built once at import; calling the factories here proves what they build (the
    mutants of a factory's inner rule only run when the factory runs)."""
    rule = P._operator_only("add organisations")
    assert rule(YES, OP, Target()) is None
    assert rule(YES, ADM, Target()) == (
        "Only a platform operator may add organisations; ask your operator."
    )
    holder_rule = P._holder_reviewer("publish its datasets")
    refused = "Only a reviewer of the data holder may publish its datasets."
    assert holder_rule(YES, REV, Target(project=project())) is None
    assert holder_rule(YES, REV, Target(organisation=HOLDER)) is None
    assert holder_rule(YES, REV, Target(project=project(), organisation=OTHER_HOLDER)) is None
    assert holder_rule(YES, OTHER_REV, Target(project=project())) == refused
    assert holder_rule(YES, OTHER_REV, Target(organisation=HOLDER)) == refused
    assert holder_rule(YES, REV, Target()) == refused


def test_the_queue_of_one_project_is_its_holders_reviewers_only():
    p = project()
    assert EP.user_can_see_queue(YES, REV, p) is True
    assert EP.user_can_see_queue(YES, OTHER_REV, p) is False
    EP.check_user_can_see_queue(YES, REV, p)
    with pytest.raises(PermissionDenied, match=r"Only a reviewer of Holder Agency may see"):
        EP.check_user_can_see_queue(YES, OTHER_REV, p)


@pytest.mark.parametrize("zone", ["Etc/GMT-14", "Etc/GMT+12"])
def test_a_projects_last_day_is_in_utc_whatever_the_machines_zone(monkeypatch, zone):
    """Dates are UTC: on a machine whose zone is 14 hours ahead or 12 behind, a project that
    runs today (UTC) only is open today (at any hour one of the two zones is on another date)."""
    import time

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        today = dt.datetime.now(dt.UTC).date()
        one_day = project(start=today, end=today)
        assert PS.is_open_for_work(one_day)
        local = dt.datetime.now().date()
        if local != today:  # the zone is on another date now: the rule must not use it
            assert not PS.is_open_for_work(one_day, local)
        # Data access ends after the end date in UTC: a project ending today is usable, one
        # that ended yesterday is not (14 hours ahead or 12 behind changes neither).
        ends_today = project(members=((RES, MemberRole.MEMBER),), start=today, end=today)
        yesterday = today - dt.timedelta(days=1)
        ended = project(members=((RES, MemberRole.MEMBER),), start=yesterday, end=yesterday)
        assert why(RES, Action.PROJECT_DATA_ACCESS, Target(project=ends_today)) is None
        assert why(RES, Action.PROJECT_DATA_ACCESS, Target(project=ended)) == (
            f"Project study ended on {yesterday}; its data can no longer be used."
        )
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


# --- projects: who decides on a person added after approval --------------------------------


def test_a_member_added_after_approval_is_decided_by_an_uninvolved_reviewer_of_the_holder():
    from spe.projects import permissions as PP

    newcomer = person("new", (Role.RESEARCHER, UNI), home=UNI)
    p = project(members=((RES, MemberRole.LEAD),), removed=(OTHER_REV,))
    assert PP.is_current_member(p, RES) is True
    assert PP.is_current_member(p, OTHER_REV) is False  # removed
    assert PP.is_current_member(p, newcomer) is False
    assert PP.member_decision_refusal(REV, p, "res", newcomer.id) is None
    assert PP.can_decide_member(REV, p, "res", newcomer.id) is True
    PP.check_can_decide_member(REV, p, "res", newcomer.id, "member.approve")
    outsider = (
        "Only a reviewer of Holder Agency, the data holder of project study, may approve or "
        "refuse its new members."
    )
    for actor, requested_by, user_id, sentence in (
        (OTHER_REV, "res", newcomer.id, outsider),
        (RES, "res", newcomer.id, outsider),
        (
            REV,
            "res",
            REV.id,
            "You cannot decide on your own membership; another reviewer of Holder Agency must.",
        ),
        (
            REV,
            "rev",
            newcomer.id,
            "You added this person yourself, so another reviewer of Holder Agency must decide.",
        ),
    ):
        assert PP.member_decision_refusal(actor, p, requested_by, user_id) == sentence
        assert PP.can_decide_member(actor, p, requested_by, user_id) is False
        with pytest.raises(PermissionDenied) as refused:
            PP.check_can_decide_member(actor, p, requested_by, user_id, "member.refuse")
        assert refused.value.message == sentence
        assert refused.value.refused_action == "member.refuse"  # type: ignore[attr-defined]
        assert refused.value.refused_target == "project:study"  # type: ignore[attr-defined]
    member_reviewer = project(members=((RES, MemberRole.LEAD), (REV, MemberRole.MEMBER)))
    assert PP.member_decision_refusal(REV, member_reviewer, "res", newcomer.id) == (
        "You are a member of project study, so another reviewer of Holder Agency must decide "
        "on its new members."
    )
    gone = person("rev", (Role.HOLDER_REVIEWER, HOLDER), home=HOLDER)
    gone.active = False
    assert PP.member_decision_refusal(gone, p, "res", newcomer.id) == (
        "The account rev is deactivated; ask to have it reactivated."
    )
