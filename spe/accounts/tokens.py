"""API tokens: a person creates a bearer token for the SPE API and may revoke it.

Only the token's SHA-256 is stored; the token itself is shown once. Tokens are random (256
bits), so a plain hash is enough to keep a stolen database from yielding usable tokens.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from spe.accounts.models import ApiToken, User
from spe.audit import record, state_change
from spe.db.base import utcnow
from spe.errors import PermissionDenied, SPEError

PREFIX = "spe_"
_ONE_TIME_LOGIN_ONLY = (
    "The account still has a one-time password; log in to the pages and set your own first."
)
MAX_DAYS = 365


class TokenError(SPEError):
    """A token request that cannot be done as asked."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@state_change("token.create")
def create_token(session: Session, user: User, name: str = "api", days: int = 30) -> str:
    """A new token for ``user`` (the caller shows it once); expires after ``days``."""
    if not user.active:
        raise PermissionDenied(f"The account {user.username} is deactivated; it gets no token.")
    if user.must_change_password:
        raise PermissionDenied(_ONE_TIME_LOGIN_ONLY)
    if not 1 <= days <= MAX_DAYS:
        raise TokenError(f"A token lives 1 to {MAX_DAYS} days; {days} is outside that.")
    name = (name or "api").strip()[:100]
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id,
        token_sha256=_digest(token),
        name=name,
        expires_at=utcnow() + dt.timedelta(days=days),
    )
    session.add(row)
    session.flush()
    record(
        session,
        user,
        "token.create",
        f"user:{user.username}",
        {"token": str(row.id), "name": name, "days": days},
    )
    return token


@state_change("token.revoke")
def revoke_tokens(session: Session, user: User) -> int:
    """Revoke every live token of ``user``; returns how many."""
    now = utcnow()
    rows = list(
        session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        )
    )
    for row in rows:
        row.revoked_at = now
    record(session, user, "token.revoke", f"user:{user.username}", {"tokens": len(rows)})
    return len(rows)


def authenticate(session: Session, token: str) -> User:
    """The active user a bearer token belongs to; PermissionDenied with the reason otherwise."""
    if not token.startswith(PREFIX):
        raise PermissionDenied("That is not an SPE API token; create one with `spe token create`.")
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == _digest(token)))
    if row is None or row.revoked_at is not None:
        raise PermissionDenied("The API token is unknown or revoked; create a new one.")
    if row.expires_at <= utcnow():
        raise PermissionDenied("The API token has expired; create a new one.")
    if not row.user.active:
        raise PermissionDenied(f"The account {row.user.username} is deactivated.")
    if row.user.must_change_password:
        raise PermissionDenied(_ONE_TIME_LOGIN_ONLY)
    return row.user
