"""The hub's login over SPE's local accounts: lockout after repeated failures, every attempt
audited (``user.login`` / ``user.login_failed``); the blocking database calls run in a thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from jupyterhub.auth import Authenticator
from traitlets import Integer, default

# Lockout: this many failures in a row lock the account for this long. Constants until the
# lead adds settings for them.
MAX_FAILED_LOGINS = 5
LOCKOUT_MINUTES = 15

_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,62}$")
# Checked when the username is unknown, so that answer takes as long as a real one (no telling
# which usernames exist from the timing): a well-formed scrypt hash no password is known for.
_DUMMY_HASH = (
    "scrypt$16384$8$1$gSClP5SVBxZ/0IltHd9WZg==$L3Vdy7Q6VMSK4EugWlAC6TwY3DSsNXzmo2oPHVAlYqM="
)


@dataclass(frozen=True)
class LoginResult:
    username: str | None  # None: refused
    reason: str  # for the log and the audit record, never shown to the person


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; SPE stores UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def check_login(
    username: str,
    password: str,
    source: str,
    max_failures: int = MAX_FAILED_LOGINS,
    lockout_minutes: int = LOCKOUT_MINUTES,
    now: dt.datetime | None = None,
) -> LoginResult:
    """Check a password against SPE's accounts and record the attempt (blocking)."""
    from sqlalchemy import select

    from spe.accounts.models import User
    from spe.accounts.service import record_login
    from spe.audit import record
    from spe.db import transaction
    from spe.keys.passwords import verify_password

    now = now or utcnow()
    if not _USERNAME.match(username):
        verify_password(password, _DUMMY_HASH)
        return LoginResult(None, "malformed username")
    with transaction() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            verify_password(password, _DUMMY_HASH)
            # No account to hang the attempt on: the event names the username tried.
            record(
                session,
                "anonymous",
                "user.login_failed",
                f"user:{username}",
                {"source": source, "reason": "unknown user"},
            )
            return LoginResult(None, "unknown user")
        if user.locked_until is not None and _aware(user.locked_until) > now:
            # Not even checked: a correct guess during the lock must not be told apart.
            record_login(session, user, False, f"{source}; refused: account locked")
            return LoginResult(None, "account locked")
        if not verify_password(password, user.password_hash):
            record_login(session, user, False, f"{source}; wrong password")
            if user.failed_logins >= max_failures:
                user.locked_until = now + dt.timedelta(minutes=lockout_minutes)
                record(
                    session,
                    "system:hub",
                    "user.lock",
                    f"user:{username}",
                    {
                        "failed_logins": user.failed_logins,
                        "locked_until": user.locked_until.isoformat(),
                    },
                )
            return LoginResult(None, "wrong password")
        if not user.active:
            record_login(session, user, False, f"{source}; refused: account deactivated")
            return LoginResult(None, "account deactivated")
        record_login(session, user, True, source)
        user.locked_until = None
        return LoginResult(user.username, "ok")


def account_active(username: str) -> bool:
    """Is there an active SPE account of this name (blocking, read-only)?"""
    from sqlalchemy import select

    from spe.accounts.models import User
    from spe.db import readonly

    with readonly() as session:
        active = session.scalar(select(User.active).where(User.username == username))
    return bool(active)


class SPEAuthenticator(Authenticator):
    """Log in with an SPE account's password; refuses deactivated and locked accounts."""

    max_failed_logins = Integer(
        MAX_FAILED_LOGINS, help="Failed logins in a row that lock the account."
    ).tag(config=True)
    lockout_minutes = Integer(LOCKOUT_MINUTES, help="How long a locked account stays locked.").tag(
        config=True
    )

    @default("allow_all")
    def _allow_all(self) -> bool:
        # Who may log in is SPE's decision (an active account), made in authenticate().
        return True

    @default("auth_refresh_age")
    def _auth_refresh_age(self) -> int:
        return 300

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> str | None:
        username = str(data.get("username") or "").strip().lower()
        password = str(data.get("password") or "")
        remote = getattr(getattr(handler, "request", None), "remote_ip", "") or "unknown"
        result = await asyncio.get_running_loop().run_in_executor(
            None,
            check_login,
            username,
            password,
            f"hub from {remote}",
            self.max_failed_logins,
            self.lockout_minutes,
        )
        if result.username is None:
            self.log.warning("SPE login refused for %r: %s", username[:64], result.reason)
        return result.username

    async def refresh_user(self, user: Any, handler: Any = None) -> bool:
        """A deactivated account is logged out within auth_refresh_age."""
        return await asyncio.get_running_loop().run_in_executor(None, account_active, user.name)
