"""Who may decide on a person added to an approved project: a reviewer of the project's data
holder who is neither a member of the project, nor the one who asked, nor the person.

Each question exists twice (CONVENTIONS): ``check_can_decide_member`` raises PermissionDenied
with a sentence, ``can_decide_member`` returns a bool for pages. Who may add and remove members
at all, and who may use a project's data, stay in spe.accounts.permissions.
"""

from __future__ import annotations

import uuid

from spe.accounts.models import Role, User
from spe.accounts.permissions import holds
from spe.errors import PermissionDenied
from spe.projects.models import Project


def is_current_member(project: Project, user: User) -> bool:
    return any(m.user_id == user.id and m.removed_at is None for m in project.members)


def member_decision_refusal(
    actor: User, project: Project, requested_by: str, user_id: uuid.UUID
) -> str | None:
    """Why ``actor`` may not approve or refuse a membership of ``user_id`` that
    ``requested_by`` asked for (None when they may)."""
    holder = project.holder.name
    if not actor.active:
        return f"The account {actor.username} is deactivated; ask to have it reactivated."
    if not holds(actor, Role.HOLDER_REVIEWER, project.holder_id):
        return (
            f"Only a reviewer of {holder}, the data holder of project {project.slug}, may "
            "approve or refuse its new members."
        )
    if actor.id == user_id:
        return f"You cannot decide on your own membership; another reviewer of {holder} must."
    if is_current_member(project, actor):
        return (
            f"You are a member of project {project.slug}, so another reviewer of {holder} must "
            "decide on its new members."
        )
    if actor.username == requested_by:
        return f"You added this person yourself, so another reviewer of {holder} must decide."
    return None


def check_can_decide_member(
    actor: User, project: Project, requested_by: str, user_id: uuid.UUID, action: str
) -> None:
    reason = member_decision_refusal(actor, project, requested_by, user_id)
    if reason is not None:
        error = PermissionDenied(reason)
        # What was refused, for the refusal event (spe.audit.refusals).
        setattr(error, "refused_action", action)  # noqa: B010
        setattr(error, "refused_target", f"project:{project.slug}")  # noqa: B010
        raise error


def can_decide_member(actor: User, project: Project, requested_by: str, user_id: uuid.UUID) -> bool:
    return member_decision_refusal(actor, project, requested_by, user_id) is None
