"""Routes for accounts: change your own password (every session and API token of
the account ends, this one included), and reset a person's two-step login (admins)."""

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


class MfaResetIn(BaseModel):
    reason: str = Field(
        default="", description="Why (e.g. a lost phone); kept in the audit log.", max_length=500
    )


class MfaReset(BaseModel):
    detail: str
    sessions_ended: int
    tokens_revoked: int


@router.post("/users/{username}/mfa-reset", response_model=MfaReset)
def reset_user_mfa(username: str, body: MfaResetIn, who: CallerDep) -> MfaReset:
    """Reset a person's two-step login (operators, and institution admins for their own
    institution's people). Every login and API token of theirs ends; they set it up again at
    their next login."""
    from spe.accounts.mfa import reset_mfa
    from spe.accounts.service import get_user

    with acting(who) as (session, user):
        ended = reset_mfa(session, user, get_user(session, username), body.reason)
    return MfaReset(
        detail=f"The two-step login of {username} is reset; every login and API token of theirs "
        "has ended.",
        sessions_ended=ended["sessions"],
        tokens_revoked=ended["tokens"],
    )
