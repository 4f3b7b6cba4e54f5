"""Projects: application, approval, membership and closing, each checked and audited."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.accounts.models import Organisation, OrgKind, User
from spe.accounts.permissions import Action, Target, check_can
from spe.audit import record, state_change
from spe.db.base import utcnow
from spe.errors import NotFound, SPEError
from spe.projects.models import MemberRole, Project, ProjectMember, ProjectStatus
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


@state_change("project.member_add")
def add_member(
    session: Session,
    actor: User,
    project: Project,
    user: User,
    role: MemberRole = MemberRole.MEMBER,
) -> ProjectMember:
    check_can(session, actor, Action.PROJECT_MEMBER_ADD, Target(project=project, user=user))
    check_members_can_change(project)
    from spe.accounts.models import Role
    from spe.accounts.permissions import holds

    if not holds(user, Role.RESEARCHER):
        raise ProjectError(f"{user.username} is not a researcher, so cannot join a project.")
    member = next((m for m in project.members if m.user_id == user.id), None)
    if member is not None and member.removed_at is None:
        raise ProjectError(f"{user.username} is a member of {project.slug} already.")
    if member is None:
        member = ProjectMember(project_id=project.id, user_id=user.id, role=role)
        session.add(member)
    else:
        member.removed_at = None
        member.role = role
        member.added_at = utcnow()
    session.flush()
    session.refresh(project, ["members"])
    record(
        session,
        actor,
        "project.member_add",
        _target(project),
        {"user": user.username, "role": role.value},
        project=project.slug,
    )
    return member


@state_change("project.member_remove")
def remove_member(session: Session, actor: User, project: Project, user: User) -> None:
    check_can(session, actor, Action.PROJECT_MEMBER_REMOVE, Target(project=project, user=user))
    check_members_can_change(project)
    member = next(
        (m for m in project.members if m.user_id == user.id and m.removed_at is None), None
    )
    if member is None:
        raise ProjectError(f"{user.username} is not a member of {project.slug}.")
    member.removed_at = utcnow()
    record(
        session,
        actor,
        "project.member_remove",
        _target(project),
        {"user": user.username},
        project=project.slug,
    )


def check_can_access_data(session: Session, user: User, project: Project) -> None:
    """Raise PermissionDenied unless ``user`` may work on ``project``'s data now."""
    check_can(session, user, Action.PROJECT_DATA_ACCESS, Target(project=project))


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
