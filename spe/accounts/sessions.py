"""Logins to the pages and their end: a session per browser (lifetime and idle timeout from
settings), logout, and the revocation of every session and API token of an account.

Only a session cookie's SHA-256 is stored. Revocation also sets ``users.sessions_revoked_at``,
which the hub's authenticator applies to the hub's own cookies and OAuth tokens.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from spe.accounts.models import ApiToken, User, WebSession
from spe.audit import record, state_change
from spe.db.base import utcnow
from spe.errors import PermissionDenied

# Seen-time is written at most this often per session (a write per page view is waste).
TOUCH_EVERY = dt.timedelta(seconds=30)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@state_change("session.start")
def start_session(session: Session, user: User, source: str = "") -> str:
    """A new login to the pages for ``user``; returns the cookie value (shown to the browser
    only)."""
    from spe.config import get_settings

    if not user.active:
        raise PermissionDenied(f"The account {user.username} is deactivated; it cannot log in.")
    now = utcnow()
    token = secrets.token_urlsafe(32)
    row = WebSession(
        user_id=user.id,
        token_sha256=digest(token),
        source=source[:200],
        created_at=now,
        last_seen_at=now,
        expires_at=now + dt.timedelta(hours=get_settings().session_hours),
    )
    session.add(row)
    session.flush()
    record(
        session,
        user,
        "session.start",
        f"user:{user.username}",
        {"session": str(row.id), "source": source[:200]},
    )
    return token


def session_user(token: str, now: dt.datetime | None = None) -> str | None:
    """The username a live session cookie belongs to, or None (unknown, ended, expired, idle,
    revoked, or the account deactivated). Notes the visit for the idle timeout."""
    from spe.config import get_settings
    from spe.db import readonly
    from spe.db.session import get_engine

    now = now or utcnow()
    idle = dt.timedelta(minutes=get_settings().session_idle_minutes)
    with readonly() as session:
        row = session.scalar(select(WebSession).where(WebSession.token_sha256 == digest(token)))
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            return None
        if now - row.last_seen_at > idle:
            return None
        user = row.user
        if not user.active:
            return None
        if user.sessions_revoked_at is not None and row.created_at <= user.sessions_revoked_at:
            return None
        name, row_id, seen = user.username, row.id, row.last_seen_at
    if now - seen > TOUCH_EVERY:
        # Bookkeeping of the idle timeout, like a job's heartbeat: no audit event of its own
        # (the session's start and end are audited); a Core connection, outside the ORM guard.
        with get_engine().begin() as conn:
            conn.execute(update(WebSession).where(WebSession.id == row_id).values(last_seen_at=now))
    return name


def session_started_at(token: str) -> dt.datetime | None:
    from spe.db import readonly

    with readonly() as session:
        return session.scalar(
            select(WebSession.created_at).where(WebSession.token_sha256 == digest(token))
        )


@state_change("user.logout")
def end_session(session: Session, token: str, source: str = "") -> str | None:
    """Logout: the session ends (whoever holds its cookie is logged out). Returns the username,
    or None when the cookie was no live session (nothing to record)."""
    row = session.scalar(select(WebSession).where(WebSession.token_sha256 == digest(token)))
    if row is None or row.revoked_at is not None:
        return None
    row.revoked_at = utcnow()
    record(
        session,
        row.user,
        "user.logout",
        f"user:{row.user.username}",
        {"session": str(row.id), "source": source[:200]},
    )
    return row.user.username


@state_change("session.revoke_all")
def revoke_everything(session: Session, actor: object, user: User, reason: str) -> dict[str, int]:
    """End every session and API token of ``user`` (password change or reset, deactivation,
    role removal). The hub ends its own cookies and tokens at its next check. Nothing revoked
    comes back: reactivation revives nothing."""
    now = utcnow()
    user.sessions_revoked_at = now
    sessions = list(
        session.scalars(
            select(WebSession).where(WebSession.user_id == user.id, WebSession.revoked_at.is_(None))
        )
    )
    for row in sessions:
        row.revoked_at = now
    tokens = list(
        session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        )
    )
    for token in tokens:
        token.revoked_at = now
    counts = {"sessions": len(sessions), "tokens": len(tokens)}
    record(
        session,
        actor,
        "session.revoke_all",
        f"user:{user.username}",
        {"reason": reason, **counts},
    )
    return counts
