"""Who may do what with export requests, apart from what the request's status allows.

Each question exists twice (CONVENTIONS): ``check_user_can_...`` raises PermissionDenied with a
sentence the person can act on, ``user_can_...`` returns a bool for pages. Reviewers are the
project's data holder's reviewers, and never the request's author.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from spe.accounts.models import Role, User
from spe.accounts.permissions import holds
from spe.errors import PermissionDenied
from spe.exports.models import ExportRequest
from spe.projects.models import Project

Reason = str | None


def _active(user: User) -> Reason:
    if not user.active:
        return f"The account {user.username} is deactivated; ask to have it reactivated."
    return None


def file_refusal(session: Session, user: User, project: Project) -> Reason:
    """Filing needs the right to use the project's data (member, approved, terms accepted); a
    member still waiting for the data holder's approval is told so."""
    from spe.projects.service import data_access_refusal

    return data_access_refusal(session, user, project)


def _is_reviewer(user: User, project: Project) -> bool:
    return holds(user, Role.HOLDER_REVIEWER, project.holder_id)


def review_refusal(
    session: Session, user: User, request: ExportRequest, project: Project
) -> Reason:
    if (reason := _active(user)) is not None:
        return reason
    if request.author == user.username:
        return (
            "You filed this request, so you cannot review it; another reviewer of "
            f"{project.holder.name} must."
        )
    if not _is_reviewer(user, project):
        return (
            f"Only a reviewer of {project.holder.name}, the project's data holder, may review it."
        )
    return None


def author_refusal(session: Session, user: User, request: ExportRequest, what: str) -> Reason:
    if (reason := _active(user)) is not None:
        return reason
    if request.author != user.username:
        return f"Only {request.author}, who filed the request, may {what}."
    return None


def view_refusal(session: Session, user: User, request: ExportRequest, project: Project) -> Reason:
    if (reason := _active(user)) is not None:
        return reason
    if request.author == user.username or _is_reviewer(user, project):
        return None
    return "Only the request's author and the data holder's reviewers may see it."


def queue_refusal(session: Session, user: User, project: Project | None = None) -> Reason:
    if (reason := _active(user)) is not None:
        return reason
    if project is not None and not _is_reviewer(user, project):
        return f"Only a reviewer of {project.holder.name} may see its review queue."
    if project is None and not holds(user, Role.HOLDER_REVIEWER):
        return "Only a data holder's reviewer has a review queue."
    return None


def _raise(reason: Reason) -> None:
    if reason is not None:
        raise PermissionDenied(reason)


def check_user_can_file(session: Session, user: User, project: Project) -> None:
    _raise(file_refusal(session, user, project))


def user_can_file(session: Session, user: User, project: Project) -> bool:
    return file_refusal(session, user, project) is None


def check_user_can_review(
    session: Session, user: User, request: ExportRequest, project: Project
) -> None:
    _raise(review_refusal(session, user, request, project))


def user_can_review(session: Session, user: User, request: ExportRequest, project: Project) -> bool:
    return review_refusal(session, user, request, project) is None


def check_user_is_author(session: Session, user: User, request: ExportRequest, what: str) -> None:
    _raise(author_refusal(session, user, request, what))


def user_is_author(session: Session, user: User, request: ExportRequest) -> bool:
    return author_refusal(session, user, request, "act") is None


def check_user_can_view(
    session: Session, user: User, request: ExportRequest, project: Project
) -> None:
    _raise(view_refusal(session, user, request, project))


def user_can_view(session: Session, user: User, request: ExportRequest, project: Project) -> bool:
    return view_refusal(session, user, request, project) is None


def check_user_can_see_queue(session: Session, user: User, project: Project | None = None) -> None:
    _raise(queue_refusal(session, user, project))


def user_can_see_queue(session: Session, user: User, project: Project | None = None) -> bool:
    return queue_refusal(session, user, project) is None


# Every question, for the test that proves each pair agrees.
PAIRS: dict[str, tuple[Callable[..., None], Callable[..., bool]]] = {
    "file": (check_user_can_file, user_can_file),
    "review": (check_user_can_review, user_can_review),
    "view": (check_user_can_view, user_can_view),
    "queue": (check_user_can_see_queue, user_can_see_queue),
}
