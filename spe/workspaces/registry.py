"""Recording that a workspace started or stopped (audited), and finding running ones.

The spawner calls ``workspace_started`` before the sandbox starts (so the airlock opens its
socket) and ``workspace_stopped`` when it ends; the airlock serves every running workspace.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.accounts.models import User
from spe.audit import record, state_change
from spe.db.base import utcnow
from spe.projects.models import Project
from spe.workspaces.layout import workspace_id
from spe.workspaces.models import Workspace


@dataclass(frozen=True)
class RunningWorkspace:
    name: str
    project: str
    username: str


@state_change("workspace.start")
def workspace_started(session: Session, user: User, project: Project) -> Workspace:
    """Mark the (project, user) workspace running; the caller has checked data access."""
    name = workspace_id(project.slug, user.username)
    row = session.scalar(select(Workspace).where(Workspace.name == name))
    if row is None:
        row = Workspace(name=name, project_id=project.id, username=user.username)
        session.add(row)
    row.running, row.started_at, row.stopped_at, row.stop_reason = True, utcnow(), None, None
    record(session, user, "workspace.start", f"workspace:{name}", {}, project=project.slug)
    return row


@state_change("workspace.stop")
def workspace_stopped(session: Session, actor: User | str, name: str, reason: str) -> bool:
    """Mark a workspace stopped (by its user, the culler, a project's end); False if unknown."""
    row = session.scalar(select(Workspace).where(Workspace.name == name))
    if row is None or not row.running:
        return False
    row.running, row.stopped_at, row.stop_reason = False, utcnow(), reason
    project = session.get(Project, row.project_id)
    record(
        session,
        actor,
        "workspace.stop",
        f"workspace:{name}",
        {"reason": reason},
        project=project.slug if project else None,
    )
    return True


def running_workspaces(session: Session) -> list[RunningWorkspace]:
    rows = session.execute(
        select(Workspace.name, Project.slug, Workspace.username)
        .join(Project, Project.id == Workspace.project_id)
        .where(Workspace.running.is_(True))
        .order_by(Workspace.name)
    )
    return [RunningWorkspace(n, p, u) for n, p, u in rows]
