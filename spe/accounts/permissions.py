"""Who may do what: every action SPE defines, and the rule that answers it for a person.

Each question exists twice (CONVENTIONS): ``check_can(...)`` raises PermissionDenied with a
sentence the person can act on, ``can(...)`` returns a bool for pages. State rules (may a
project in this status be approved?) live with the capability, not here.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.accounts.models import Organisation, OrgKind, Role, TermsAcceptance, User
from spe.errors import PermissionDenied

if TYPE_CHECKING:
    from spe.projects.models import Project


class Action(enum.StrEnum):
    ORG_CREATE = "org.create"
    USER_CREATE = "user.create"
    USER_DEACTIVATE = "user.deactivate"
    USER_REACTIVATE = "user.reactivate"
    ROLE_GRANT = "role.grant"
    ROLE_REVOKE = "role.revoke"
    TERMS_ACCEPT = "terms.accept"
    TERMS_VIEW_STATUS = "terms.view_status"
    PROJECT_CREATE = "project.create"
    PROJECT_APPROVE = "project.approve"
    PROJECT_CLOSE = "project.close"
    PROJECT_MEMBER_ADD = "project.member_add"
    PROJECT_MEMBER_REMOVE = "project.member_remove"
    PROJECT_DATA_ACCESS = "project.data_access"
    DATASET_INGEST = "dataset.ingest"
    DATASET_QUARANTINE_READ = "dataset.quarantine_read"
    PROJECT_GRANT = "project.grant"
    DATASET_ACCESS_LOG = "dataset.access_log"
    AUDIT_READ = "audit.read"
    AUDIT_VERIFY = "audit.verify"
    DP_BUDGET_VIEW = "dp.budget_view"
    DP_BUDGET_TOPUP = "dp.budget_topup"


# Roles held per organisation, and roles held for the whole platform.
ORG_ROLES = {
    Role.RESEARCHER: OrgKind.RESEARCH_INSTITUTION,
    Role.INSTITUTION_ADMIN: OrgKind.RESEARCH_INSTITUTION,
    Role.HOLDER_REVIEWER: OrgKind.DATA_HOLDER,
}
PLATFORM_ROLES = {Role.AUDITOR, Role.OPERATOR}


@dataclass(frozen=True)
class Target:
    """What an action is about; each rule reads the fields it needs."""

    organisation: Organisation | None = None
    user: User | None = None
    role: Role | None = None
    project: Project | None = None


def holds(actor: User, role: Role, organisation_id: uuid.UUID | None = None) -> bool:
    """Does ``actor`` hold ``role`` (for ``organisation_id``, when the role is per organisation)?"""
    for grant in actor.roles:
        if grant.role != role:
            continue
        if role in PLATFORM_ROLES or organisation_id is None:
            return True
        if grant.organisation_id == organisation_id:
            return True
    return False


def terms_accepted(session: Session, user: User) -> bool:
    from spe.accounts.terms import current_terms

    version = current_terms().version
    return (
        session.scalar(
            select(TermsAcceptance.id).where(
                TermsAcceptance.user_id == user.id, TermsAcceptance.version == version
            )
        )
        is not None
    )


Rule = Callable[[Session, User, Target], str | None]


def _operator_only(what: str) -> Rule:
    def rule(_s: Session, actor: User, _t: Target) -> str | None:
        if holds(actor, Role.OPERATOR):
            return None
        return f"Only a platform operator may {what}; ask your operator."

    return rule


def _user_create(_s: Session, actor: User, t: Target) -> str | None:
    if holds(actor, Role.OPERATOR):
        return None
    org = t.organisation
    if org is not None and holds(actor, Role.INSTITUTION_ADMIN, org.id):
        return None
    return (
        "Only a platform operator, or an institution admin for their own institution, may "
        "create accounts there."
    )


def _user_admin(_s: Session, actor: User, t: Target) -> str | None:
    if holds(actor, Role.OPERATOR):
        return None
    user = t.user
    if (
        user is not None
        and user.organisation_id is not None
        and holds(actor, Role.INSTITUTION_ADMIN, user.organisation_id)
    ):
        if holds(user, Role.OPERATOR) or holds(user, Role.AUDITOR):
            return "Platform operators and auditors are managed by a platform operator."
        return None
    return (
        "Only a platform operator, or the institution admin of the person's own institution, "
        "may change this account."
    )


def _role_change(_s: Session, actor: User, t: Target) -> str | None:
    if holds(actor, Role.OPERATOR):
        return None
    org, user = t.organisation, t.user
    if (
        t.role == Role.RESEARCHER
        and org is not None
        and user is not None
        and user.organisation_id == org.id
        and holds(actor, Role.INSTITUTION_ADMIN, org.id)
    ):
        return None
    return (
        "Only a platform operator may change roles, except that an institution admin may add "
        "or remove the researcher role for people of their own institution."
    )


def _self_only(_s: Session, actor: User, t: Target) -> str | None:
    if t.user is None or t.user.id == actor.id:
        return None
    return "Each person accepts the terms of use for themselves."


def _terms_status(_s: Session, actor: User, t: Target) -> str | None:
    if holds(actor, Role.OPERATOR):
        return None
    if t.organisation is not None and holds(actor, Role.INSTITUTION_ADMIN, t.organisation.id):
        return None
    return "Only the institution's admins and platform operators see who accepted the terms."


def _project_create(_s: Session, actor: User, t: Target) -> str | None:
    org = t.organisation
    if org is not None and holds(actor, Role.RESEARCHER, org.id):
        return None
    return "Only a researcher of the institution may apply for a project on its behalf."


def _is_member(project: Project, user: User, lead: bool = False) -> bool:
    return any(
        m.user_id == user.id and m.removed_at is None and (not lead or m.role.value == "lead")
        for m in project.members
    )


def _project_approve(_s: Session, actor: User, t: Target) -> str | None:
    project = t.project
    if project is None or not holds(actor, Role.HOLDER_REVIEWER, project.holder_id):
        return "Only a reviewer of the data holder may decide on a project's application."
    if _is_member(project, actor):
        return "You are a member of this project, so another reviewer must decide on it."
    return None


def _project_close(_s: Session, actor: User, t: Target) -> str | None:
    project = t.project
    if holds(actor, Role.OPERATOR):
        return None
    if project is not None and holds(actor, Role.HOLDER_REVIEWER, project.holder_id):
        return None
    return "Only a reviewer of the data holder, or a platform operator, may close a project."


def _project_members(_s: Session, actor: User, t: Target) -> str | None:
    project = t.project
    if project is None:
        return "Name the project."
    if holds(actor, Role.HOLDER_REVIEWER, project.holder_id) or _is_member(
        project, actor, lead=True
    ):
        return None
    return "Only the project's lead or a reviewer of its data holder may change its members."


def _data_access(session: Session, actor: User, t: Target) -> str | None:
    project = t.project
    if project is None:
        return "Name the project."
    if not _is_member(project, actor) or not holds(actor, Role.RESEARCHER):
        return f"You are not a member of project {project.slug}; ask its lead to add you."
    if project.status.value != "approved":
        return f"Project {project.slug} is {project.status.value}, so its data cannot be used."
    if project.end_date < dt.datetime.now(dt.UTC).date():
        return (
            f"Project {project.slug} ended on {project.end_date}; its data can no longer be used."
        )
    if not terms_accepted(session, actor):
        return "Accept the current terms of use first (`spe terms accept`)."
    return None


def _holder_reviewer(what: str) -> Rule:
    def rule(_s: Session, actor: User, t: Target) -> str | None:
        org_id = (
            t.project.holder_id
            if t.project is not None
            else (t.organisation.id if t.organisation is not None else None)
        )
        if org_id is not None and holds(actor, Role.HOLDER_REVIEWER, org_id):
            return None
        return f"Only a reviewer of the data holder may {what}."

    return rule


def _dp_budget_view(_s: Session, actor: User, t: Target) -> str | None:
    project = t.project
    if project is None:
        return "Name the project."
    if holds(actor, Role.HOLDER_REVIEWER, project.holder_id):
        return None
    if _is_member(project, actor) and holds(actor, Role.RESEARCHER):
        return None
    return (
        f"Only members of project {project.slug} and reviewers of its data holder may see its "
        "privacy budgets."
    )


def _auditor(_s: Session, actor: User, _t: Target) -> str | None:
    if holds(actor, Role.AUDITOR):
        return None
    return "Only an auditor may read the audit log."


def _verifier(_s: Session, actor: User, _t: Target) -> str | None:
    if holds(actor, Role.AUDITOR) or holds(actor, Role.OPERATOR):
        return None
    return "Only an auditor or a platform operator may verify the audit log."


RULES: dict[Action, Rule] = {
    Action.ORG_CREATE: _operator_only("add organisations"),
    Action.USER_CREATE: _user_create,
    Action.USER_DEACTIVATE: _user_admin,
    Action.USER_REACTIVATE: _user_admin,
    Action.ROLE_GRANT: _role_change,
    Action.ROLE_REVOKE: _role_change,
    Action.TERMS_ACCEPT: _self_only,
    Action.TERMS_VIEW_STATUS: _terms_status,
    Action.PROJECT_CREATE: _project_create,
    Action.PROJECT_APPROVE: _project_approve,
    Action.PROJECT_CLOSE: _project_close,
    Action.PROJECT_MEMBER_ADD: _project_members,
    Action.PROJECT_MEMBER_REMOVE: _project_members,
    Action.PROJECT_DATA_ACCESS: _data_access,
    Action.DATASET_INGEST: _holder_reviewer("publish its datasets"),
    Action.DATASET_QUARANTINE_READ: _holder_reviewer("open its quarantine files"),
    Action.PROJECT_GRANT: _holder_reviewer("grant a project access to its datasets"),
    Action.DATASET_ACCESS_LOG: _holder_reviewer("see who used its data"),
    Action.AUDIT_READ: _auditor,
    Action.AUDIT_VERIFY: _verifier,
    Action.DP_BUDGET_VIEW: _dp_budget_view,
    Action.DP_BUDGET_TOPUP: _holder_reviewer("top up a project's privacy budget"),
}


def refusal(
    session: Session, actor: User, action: Action, target: Target | None = None
) -> str | None:
    """Why ``actor`` may not do ``action`` (None when they may)."""
    if not actor.active:
        reason = f" ({actor.deactivation_reason})" if actor.deactivation_reason else ""
        return (
            f"The account {actor.username} is deactivated{reason}; ask your institution admin "
            "or a platform operator to reactivate it."
        )
    return RULES[action](session, actor, target or Target())


def check_can(session: Session, actor: User, action: Action, target: Target | None = None) -> None:
    """Raise PermissionDenied, with the reason, unless ``actor`` may do ``action``."""
    reason = refusal(session, actor, action, target)
    if reason is not None:
        error = PermissionDenied(reason)
        # What was refused, for the audit log's refusal event (spe.audit.refusals).
        setattr(error, "refused_action", action.value)  # noqa: B010
        setattr(error, "refused_target", _describe(target))  # noqa: B010
        raise error


def _describe(target: Target | None) -> str:
    if target is None:
        return "platform"
    if target.project is not None:
        return f"project:{target.project.slug}"
    if target.user is not None:
        return f"user:{target.user.username}"
    if target.organisation is not None:
        return f"org:{target.organisation.name}"
    return "platform"


def can(session: Session, actor: User, action: Action, target: Target | None = None) -> bool:
    return refusal(session, actor, action, target) is None


def check_role_scope(role: Role, organisation: Organisation | None) -> None:
    """A role per organisation needs an organisation of the right kind; platform roles none."""
    from spe.accounts.service import AccountError

    if role in PLATFORM_ROLES:
        if organisation is not None:
            raise AccountError(f"The {role.value} role is held for the whole platform; drop --org.")
        return
    kind = ORG_ROLES[role]
    if organisation is None:
        raise AccountError(f"The {role.value} role is held for one organisation; add --org NAME.")
    if organisation.kind != kind:
        raise AccountError(
            f"The {role.value} role belongs to a {kind.value.replace('_', ' ')}, and "
            f"{organisation.name} is a {organisation.kind.value.replace('_', ' ')}."
        )
