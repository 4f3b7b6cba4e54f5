"""Routes for a project's membership: its members and the people waiting for its data holder,
adding and removing (the lead or the holder's reviewers), and the holder's approval or refusal
of people added after the project was approved."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from spe.accounts.models import User
from spe.api.deps import CallerDep, acting, reading
from spe.api.schemas import MemberDecisionIn, MemberIn, MemberRefusalIn, MemberRow
from spe.projects import service

router = APIRouter(prefix="/projects/{project}/members", tags=["projects"])


def _rows(session: Session, user: User, project: str) -> list[MemberRow]:
    row = service.get_project(session, project)
    return [
        MemberRow(
            username=r["username"],
            role=r["role"],
            status=r["status"],
            by=r.get("by"),
            reason=r.get("reason"),
            holder=r.get("holder"),
        )
        for r in service.membership(session, user, row)
    ]


@router.get("", response_model=list[MemberRow])
def members(project: str, who: CallerDep) -> list[MemberRow]:
    """Current members, then people added after approval: pending (waiting for the data
    holder), refused (with the reason) or withdrawn. Members and the holder's reviewers."""
    with reading(who) as (session, user):
        return _rows(session, user, project)


@router.post("", response_model=MemberRow, status_code=201)
def add(project: str, body: MemberIn, who: CallerDep) -> MemberRow:
    """Add a researcher. Once the project is approved they wait for its data holder (status
    'pending': no workspace and no data until a reviewer of the holder approves)."""
    from spe.accounts.service import get_user

    with acting(who) as (session, user):
        row = service.get_project(session, project)
        service.add_member(session, user, row, get_user(session, body.username))
        mine = [r for r in _rows(session, user, project) if r.username == body.username]
    return mine[0]


@router.delete("/{username}", status_code=200)
def remove(project: str, username: str, who: CallerDep) -> dict[str, str]:
    """Remove a member at once (or withdraw a person still waiting for the holder)."""
    from spe.accounts.service import get_user

    with acting(who) as (session, user):
        row = service.get_project(session, project)
        service.remove_member(session, user, row, get_user(session, username))
    return {"status": "removed"}


@router.post("/{username}/approve", response_model=MemberRow)
def approve(project: str, username: str, body: MemberDecisionIn, who: CallerDep) -> MemberRow:
    """A reviewer of the project's data holder lets a pending person in."""
    from spe.accounts.service import get_user

    with acting(who) as (session, user):
        row = service.get_project(session, project)
        service.approve_member(session, user, row, get_user(session, username), body.note)
        mine = [r for r in _rows(session, user, project) if r.username == username]
    return mine[0]


@router.post("/{username}/refuse", response_model=MemberRow)
def refuse(project: str, username: str, body: MemberRefusalIn, who: CallerDep) -> MemberRow:
    """A reviewer of the project's data holder refuses a pending person, with a reason."""
    from spe.accounts.service import get_user

    with acting(who) as (session, user):
        row = service.get_project(session, project)
        service.refuse_member(session, user, row, get_user(session, username), body.reason)
        mine = [r for r in _rows(session, user, project) if r.username == username]
    return mine[0]
