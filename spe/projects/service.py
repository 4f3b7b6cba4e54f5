"""Projects: application, approval, membership and closing, each checked and audited.

Members added to an approved project wait for the data holder (pending memberships).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from spe.accounts.models import Organisation, OrgKind, User
from spe.accounts.permissions import Action, Target, check_can, refusal
from spe.audit import record, state_change
from spe.db.base import utcnow
from spe.errors import NotFound, PermissionDenied, SPEError
from spe.projects.models import (
    MemberRequestStatus,
    MemberRole,
    Project,
    ProjectMember,
    ProjectMemberRequest,
    ProjectStatus,
)
from spe.projects.permissions import (
    check_can_decide_member,
    is_current_member,
    member_decision_refusal,
)
from spe.projects.states import check_members_can_change, check_transition

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class ProjectError(SPEError):
    pass


def get_project(session: Session, slug: str) -> Project:
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound(f"There is no project {slug!r}; `spe project list` shows them.")
    return project


def _target(project: Project) -> str:
    return f"project:{project.slug}"


@state_change("project.create")
def create_project(
    session: Session,
    actor: User,
    slug: str,
    title: str,
    purpose: str,
    holder: Organisation,
    institution: Organisation,
    start_date: dt.date,
    end_date: dt.date,
) -> Project:
    """A researcher applies for a project; they become its lead."""
    check_can(session, actor, Action.PROJECT_CREATE, Target(organisation=institution))
    if not _SLUG.match(slug):
        raise ProjectError(
            f"Project name {slug!r} is not allowed: use 2-63 lower-case letters, digits and '-'."
        )
    if session.scalar(select(Project.id).where(Project.slug == slug)):
        raise ProjectError(f"A project named {slug!r} exists already; choose another name.")
    if holder.kind != OrgKind.DATA_HOLDER:
        raise ProjectError(f"{holder.name} is not a data holder.")
    if not purpose.strip():
        raise ProjectError("Describe the project's purpose: the data holder decides on it.")
    if end_date < start_date:
        raise ProjectError(f"The end date {end_date} is before the start date {start_date}.")
    project = Project(
        slug=slug,
        title=title or slug,
        purpose=purpose,
        holder_id=holder.id,
        institution_id=institution.id,
        start_date=start_date,
        end_date=end_date,
        created_by=actor.username,
    )
    session.add(project)
    session.flush()
    session.add(ProjectMember(project_id=project.id, user_id=actor.id, role=MemberRole.LEAD))
    session.flush()
    session.refresh(project, ["members"])
    record(
        session,
        actor,
        "project.create",
        _target(project),
        {
            "title": project.title,
            "holder": holder.name,
            "institution": institution.name,
            "start_date": start_date.isoformat(),
            "end_date": end_date.isoformat(),
        },
        project=project.slug,
    )
    return project


@state_change("project.approve")
def approve_project(session: Session, actor: User, project: Project, note: str = "") -> None:
    check_can(session, actor, Action.PROJECT_APPROVE, Target(project=project))
    check_transition(project, ProjectStatus.APPROVED)
    project.status = ProjectStatus.APPROVED
    project.decided_at = utcnow()
    project.decided_by = actor.username
    record(
        session, actor, "project.approve", _target(project), {"note": note}, project=project.slug
    )


@state_change("project.close")
def close_project(session: Session, actor: User, project: Project, reason: str) -> None:
    """Close a project (or refuse its application); later issues destroy its key and data."""
    check_can(session, actor, Action.PROJECT_CLOSE, Target(project=project))
    if not reason.strip():
        raise ProjectError("Give a reason for closing the project; the researchers will see it.")
    check_transition(project, ProjectStatus.CLOSED)
    from spe.projects.extracts import destroy_project_data

    was = project.status
    project.status = ProjectStatus.CLOSED
    project.closed_at = utcnow()
    project.closed_by = actor.username
    project.close_reason = reason
    record(
        session,
        actor,
        "project.close",
        _target(project),
        {"reason": reason, "was": was.value},
        project=project.slug,
    )
    destroy_project_data(session, actor, project)


def _join(session: Session, project: Project, user: User, role: MemberRole) -> ProjectMember:
    """Make ``user`` a current member (a new row, or the old one revived)."""
    member = next((m for m in project.members if m.user_id == user.id), None)
    if member is None:
        member = ProjectMember(project_id=project.id, user_id=user.id, role=role)
        session.add(member)
    else:
        member.removed_at = None
        member.role = role
        member.added_at = utcnow()
    session.flush()
    session.refresh(project, ["members"])
    return member


def pending_request(session: Session, project: Project, user: User) -> ProjectMemberRequest | None:
    """``user``'s membership of ``project`` waiting for the data holder, if any."""
    return session.scalar(
        select(ProjectMemberRequest).where(
            ProjectMemberRequest.project_id == project.id,
            ProjectMemberRequest.user_id == user.id,
            ProjectMemberRequest.status == MemberRequestStatus.PENDING,
        )
    )


def member_requests(
    session: Session, project: Project, status: MemberRequestStatus | None = None
) -> list[ProjectMemberRequest]:
    """Members asked for after approval, newest first (all, or those of one status)."""
    query = select(ProjectMemberRequest).where(ProjectMemberRequest.project_id == project.id)
    if status is not None:
        query = query.where(ProjectMemberRequest.status == status)
    return list(session.scalars(query.order_by(ProjectMemberRequest.requested_at.desc())))


def awaiting_approval(session: Session, user: User) -> list[ProjectMemberRequest]:
    """``user``'s memberships still waiting for a data holder, newest first."""
    return list(
        session.scalars(
            select(ProjectMemberRequest)
            .where(
                ProjectMemberRequest.user_id == user.id,
                ProjectMemberRequest.status == MemberRequestStatus.PENDING,
            )
            .order_by(ProjectMemberRequest.requested_at.desc())
        )
    )


def _waiting(project: Project) -> str:
    return f"waiting for approval by {project.holder.name}, the project's data holder"


@state_change("project.member_add")
def add_member(
    session: Session,
    actor: User,
    project: Project,
    user: User,
    role: MemberRole = MemberRole.MEMBER,
) -> ProjectMember | ProjectMemberRequest:
    """Add ``user`` to ``project``.

    While the project's application is pending, members join at once: the data holder approves
    the project with them. Once approved, a new member waits (a ProjectMemberRequest) until a
    reviewer of the data holder approves; a reviewer of the data holder who may decide adds
    them at once, as their own decision.
    """
    check_can(session, actor, Action.PROJECT_MEMBER_ADD, Target(project=project, user=user))
    check_members_can_change(project)
    from spe.accounts.models import Role
    from spe.accounts.permissions import holds

    if not holds(user, Role.RESEARCHER):
        raise ProjectError(f"{user.username} is not a researcher, so cannot join a project.")
    if is_current_member(project, user):
        raise ProjectError(f"{user.username} is a member of {project.slug} already.")
    if pending_request(session, project, user) is not None:
        raise ProjectError(f"{user.username} is {_waiting(project)} already; nothing to add.")
    holder_decides = member_decision_refusal(actor, project, "", user.id) is None
    if project.status == ProjectStatus.APPROVED and not holder_decides:
        request = ProjectMemberRequest(
            project_id=project.id, user_id=user.id, role=role, requested_by=actor.username
        )
        session.add(request)
        session.flush()
        record(
            session,
            actor,
            "member.add_pending",
            _target(project),
            {"user": user.username, "role": role.value, "holder": project.holder.name},
            project=project.slug,
        )
        return request
    member = _join(session, project, user, role)
    details: dict[str, Any] = {"user": user.username, "role": role.value}
    if project.status == ProjectStatus.APPROVED:
        details["decided_by_holder"] = True
    record(session, actor, "project.member_add", _target(project), details, project=project.slug)
    return member


def membership(session: Session, actor: User, project: Project) -> list[dict[str, Any]]:
    """The project's current members, then everyone added after approval with where their
    membership stands (waiting for the holder, refused with its reason, withdrawn), for its
    members and its data holder's reviewers."""
    from spe.accounts.models import Role
    from spe.accounts.permissions import holds

    if not (
        is_current_member(project, actor) or holds(actor, Role.HOLDER_REVIEWER, project.holder_id)
    ):
        raise PermissionDenied(
            f"Only members of project {project.slug} and reviewers of {project.holder.name} "
            "see its members."
        )
    rows: list[dict[str, Any]] = [
        {
            "username": m.user.username,
            "role": m.role.value,
            "status": "member",
            "since": m.added_at,
            "by": None,
            "reason": None,
        }
        for m in sorted(project.members, key=lambda m: (m.role.value != "lead", m.user.username))
        if m.removed_at is None
    ]
    for r in member_requests(session, project):
        if r.status == MemberRequestStatus.APPROVED:
            continue  # shown above while a member
        rows.append(
            {
                "username": r.user.username,
                "role": r.role.value,
                "status": r.status.value,
                "since": r.decided_at or r.requested_at,
                "by": r.decided_by or r.requested_by,
                "reason": r.reason,
                "holder": project.holder.name,
                "requested_by": r.requested_by,
                "may_decide": r.status == MemberRequestStatus.PENDING
                and member_decision_refusal(actor, project, r.requested_by, r.user_id) is None,
            }
        )
    return rows


def _pending_or_refuse(session: Session, project: Project, user: User) -> ProjectMemberRequest:
    request = pending_request(session, project, user)
    if request is None:
        raise ProjectError(
            f"{user.username} is not waiting for approval in project {project.slug}; "
            f"`spe project member list {project.slug}` shows who is."
        )
    return request


@state_change("member.approve")
def approve_member(
    session: Session, actor: User, project: Project, user: User, note: str = ""
) -> ProjectMember:
    """A reviewer of the data holder lets a pending person into the project's data."""
    request = _pending_or_refuse(session, project, user)
    check_can_decide_member(actor, project, request.requested_by, user.id, "member.approve")
    check_members_can_change(project)
    member = _join(session, project, user, request.role)
    request.status = MemberRequestStatus.APPROVED
    request.decided_at = utcnow()
    request.decided_by = actor.username
    request.reason = note.strip() or None
    record(
        session,
        actor,
        "member.approve",
        _target(project),
        {"user": user.username, "role": request.role.value, "note": note.strip()},
        project=project.slug,
    )
    return member


@state_change("member.refuse")
def refuse_member(
    session: Session, actor: User, project: Project, user: User, reason: str
) -> ProjectMemberRequest:
    """A reviewer of the data holder refuses a pending person, with a reason the lead sees."""
    request = _pending_or_refuse(session, project, user)
    check_can_decide_member(actor, project, request.requested_by, user.id, "member.refuse")
    if not reason.strip():
        raise ProjectError(
            f"Give a reason for refusing {user.username}; the project's lead will see it."
        )
    request.status = MemberRequestStatus.REFUSED
    request.decided_at = utcnow()
    request.decided_by = actor.username
    request.reason = reason.strip()
    record(
        session,
        actor,
        "member.refuse",
        _target(project),
        {"user": user.username, "reason": reason.strip()},
        project=project.slug,
    )
    return request


@state_change("project.member_remove")
def remove_member(session: Session, actor: User, project: Project, user: User) -> None:
    """Remove a member at once; a person still waiting for the holder is withdrawn at once."""
    check_can(session, actor, Action.PROJECT_MEMBER_REMOVE, Target(project=project, user=user))
    check_members_can_change(project)
    member = next(
        (m for m in project.members if m.user_id == user.id and m.removed_at is None), None
    )
    if member is not None:
        member.removed_at = utcnow()
        details: dict[str, Any] = {"user": user.username}
    else:
        request = pending_request(session, project, user)
        if request is None:
            raise ProjectError(f"{user.username} is not a member of {project.slug}.")
        request.status = MemberRequestStatus.WITHDRAWN
        request.decided_at = utcnow()
        request.decided_by = actor.username
        details = {"user": user.username, "pending": True}
    record(session, actor, "project.member_remove", _target(project), details, project=project.slug)


def data_access_refusal(session: Session, user: User, project: Project) -> str | None:
    """Why ``user`` may not work on ``project``'s data now (None when they may); a person
    waiting for the data holder is told so."""
    if not is_current_member(project, user) and pending_request(session, project, user):
        return (
            f"Your membership of project {project.slug} is {_waiting(project)}; until they "
            "approve it you get no workspace and no data."
        )
    return refusal(session, user, Action.PROJECT_DATA_ACCESS, Target(project=project))


def current_member_query(username: str, project_slug: str) -> Select[Any]:
    """One row when ``username`` is a current member of ``project_slug`` (a Core select, so
    the airlock can ask it on a bare connection before every request)."""
    return (
        select(ProjectMember.id)
        .join(Project, Project.id == ProjectMember.project_id)
        .join(User, User.id == ProjectMember.user_id)
        .where(
            Project.slug == project_slug,
            User.username == username,
            ProjectMember.removed_at.is_(None),
        )
        .limit(1)
    )


def membership_refusal(session: Session, username: str, project_slug: str) -> str | None:
    """Why ``username`` is not a current member of ``project_slug`` (None when they are): the
    one question the airlock asks of a running workspace before every request."""
    if session.execute(current_member_query(username, project_slug)).first() is not None:
        return None
    project = session.scalar(select(Project).where(Project.slug == project_slug))
    user = session.scalar(select(User).where(User.username == username))
    if project is not None and user is not None and pending_request(session, project, user):
        return (
            f"Your membership of project {project_slug} is {_waiting(project)}; until they "
            "approve it you get no workspace and no data."
        )
    return f"You are not a member of project {project_slug}, so this workspace may do nothing."


def check_can_access_data(session: Session, user: User, project: Project) -> None:
    """Raise PermissionDenied unless ``user`` may work on ``project``'s data now."""
    reason = data_access_refusal(session, user, project)
    if reason is not None:
        error = PermissionDenied(reason)
        # What was refused, for the refusal event (spe.audit.refusals).
        setattr(error, "refused_action", Action.PROJECT_DATA_ACCESS.value)  # noqa: B010
        setattr(error, "refused_target", _target(project))  # noqa: B010
        raise error


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.created_at)))


def projects_of_member(session: Session, user: User) -> list[Project]:
    """Projects ``user`` is a current member of, newest first."""
    return list(
        session.scalars(
            select(Project)
            .join(ProjectMember, ProjectMember.project_id == Project.id)
            .where(ProjectMember.user_id == user.id, ProjectMember.removed_at.is_(None))
            .order_by(Project.created_at.desc())
        )
    )


def projects_of_holder(session: Session, holder_ids: list[Any]) -> list[Project]:
    """Projects that use the data of these data holders, pending ones first, then newest."""
    rows = session.scalars(
        select(Project).where(Project.holder_id.in_(holder_ids)).order_by(Project.created_at.desc())
    )
    return sorted(rows, key=lambda p: p.status != ProjectStatus.PENDING)
