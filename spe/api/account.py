"""Routes for the caller's own account: change the password (every session and API token of
the account ends, this one included)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from spe.api.deps import CallerDep, acting

router = APIRouter(tags=["account"])


class PasswordChangeIn(BaseModel):
    current: str = Field(description="Your current password.", max_length=1024)
    new: str = Field(description="The new password (the account rules apply).", max_length=1024)


class PasswordChanged(BaseModel):
    detail: str
    sessions_ended: int
    tokens_revoked: int


@router.post("/me/password", response_model=PasswordChanged)
def change_my_password(body: PasswordChangeIn, who: CallerDep) -> PasswordChanged:
    """Change your password. Every login and API token of yours ends, the token of this
    request too: create a new one with `spe token create`."""
    from spe.accounts.service import change_password

    with acting(who) as (session, user):
        ended = change_password(session, user, body.current, body.new)
    return PasswordChanged(
        detail="Your password is changed; every login and API token of yours has ended.",
        sessions_ended=ended["sessions"],
        tokens_revoked=ended["tokens"],
    )
