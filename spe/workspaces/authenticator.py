"""The hub's login over SPE's local accounts: one-time passwords that log in once (to set a
password), a second factor (TOTP or a recovery code) for accounts that have one, lock-out per
account and throttling per source address, every attempt audited; and
the hub's side of revocation (its cookies and OAuth tokens end when SPE revokes an account's
sessions). The blocking database calls run in a thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from jupyterhub.auth import Authenticator
from traitlets import default

# The defaults of SPE_LOGIN_MAX_FAILURES and SPE_LOGIN_LOCKOUT_MINUTES (the settings rule).
MAX_FAILED_LOGINS = 5
LOCKOUT_MINUTES = 15

_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,62}$")
ONE_TIME_LOGIN_ONLY = (
    "Set your own password first: open /services/spe/password (you logged in with a one-time "
    "password)."
)
MFA_FIRST = (
    "Set up two-step login first: open /services/spe/mfa (your role needs a code from an "
    "authenticator app at every login)."
)
REVOKED_LOGIN = (
    "This token was revoked (password change or reset, deactivation or role removal); log in again."
)
OTP_PROMPT = "Code from your authenticator app, or a recovery code (if you have two-step login)"


@dataclass(frozen=True)
class LoginResult:
    username: str | None  # None: refused
    reason: str  # for the log and the audit record, never shown to the person
    must_set_password: bool = False
    must_enrol_mfa: bool = False
    second_factor: str = ""  # "totp", "recovery" or "" (none asked)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; SPE stores UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _source_row(session: Any, address: str, now: dt.datetime, window: dt.timedelta) -> Any:
    """The failure count of ``address``, its window restarted when over (and not throttled)."""
    from spe.accounts.models import LoginSource

    row = session.get(LoginSource, address)
    if row is None:
        # Two first attempts from one address at once: one fails to insert, and check_login
        # runs it again (see there).
        row = LoginSource(source=address, window_started_at=now, failures=0, locks=0)
        session.add(row)
        session.flush()
    throttled = row.throttled_until is not None and _aware(row.throttled_until) > now
    if not throttled and now - _aware(row.window_started_at) > window:
        row.window_started_at, row.failures, row.locks = now, 0, 0
        row.throttled_until = None
    return row


def check_login(
    username: str,
    password: str,
    source: str,
    max_failures: int | None = None,
    lockout_minutes: float | None = None,
    now: dt.datetime | None = None,
    address: str | None = None,
    otp: str = "",
) -> LoginResult:
    """Check a password (and, for an account with MFA, the code ``otp``) against SPE's
    accounts and record the attempt (blocking).

    ``address`` is the source address throttled on (default: ``source``). Failures, a wrong
    or replayed code included, count against the account and the address; an address over its
    limit is refused without a check and no longer counts against accounts, and one address
    may lock only a few accounts.
    """
    from sqlalchemy.exc import IntegrityError

    args = (username, password, source, max_failures, lockout_minutes, now, address, otp)
    try:
        return _check_login(*args)
    except IntegrityError:  # a concurrent first attempt from the same address: once more
        return _check_login(*args)


def _check_login(
    username: str,
    password: str,
    source: str,
    max_failures: int | None,
    lockout_minutes: float | None,
    now: dt.datetime | None,
    address: str | None,
    otp: str = "",
) -> LoginResult:
    from sqlalchemy import select

    from spe.accounts import mfa
    from spe.accounts.models import User
    from spe.accounts.service import one_time_state, record_login
    from spe.audit import record
    from spe.config import get_settings
    from spe.db import transaction
    from spe.keys.passwords import (
        burn_check,
        hash_password,
        needs_rehash,
        scheme_of,
        verify_password,
    )

    settings = get_settings()
    max_failures = max_failures or settings.login_max_failures
    lockout = dt.timedelta(minutes=lockout_minutes or settings.login_lockout_minutes)
    window = dt.timedelta(minutes=settings.login_source_window_minutes)
    now = now or utcnow()
    address = (address or source or "unknown")[:200]
    if not _USERNAME.match(username):
        # Every refusal before a password check spends the time of one (burn_check: the same
        # Argon2id parameters), so that no timing tells which usernames exist.
        burn_check(password)
        return LoginResult(None, "malformed username")
    with transaction() as session:
        origin = _source_row(session, address, now, window)
        user = session.scalar(select(User).where(User.username == username))
        if origin.throttled_until is not None and _aware(origin.throttled_until) > now:
            burn_check(password)
            # Not checked, and not counted against the account: the address is throttled.
            origin.failures += 1
            record(
                session,
                user if user is not None else "anonymous",
                "user.login_failed",
                f"user:{username}",
                {"source": source, "reason": "source address throttled"},
            )
            return LoginResult(None, "source address throttled")

        def failed_from_address() -> None:
            origin.failures += 1
            if origin.failures >= settings.login_source_max_failures:
                origin.throttled_until = now + window
                record(
                    session,
                    "system:hub",
                    "login.throttle",
                    f"source:{address}",
                    {
                        "failures": origin.failures,
                        "throttled_until": origin.throttled_until.isoformat(),
                    },
                )

        if user is None:
            burn_check(password)
            # No account to hang the attempt on: the event names the username tried.
            record(
                session,
                "anonymous",
                "user.login_failed",
                f"user:{username}",
                {"source": source, "reason": "unknown user"},
            )
            failed_from_address()
            return LoginResult(None, "unknown user")
        if user.locked_until is not None and _aware(user.locked_until) > now:
            # Not even checked: a correct guess during the lock must not be told apart. The time
            # of a check is spent all the same (a lock must not show in the timing either).
            burn_check(password)
            record_login(session, user, False, f"{source}; refused: account locked")
            failed_from_address()
            return LoginResult(None, "account locked")
        account = user

        def failed_for_account(why: str) -> None:
            record_login(session, account, False, f"{source}; {why}")
            failed_from_address()
            if account.failed_logins >= max_failures:
                if origin.locks < settings.login_source_locks_max:
                    origin.locks += 1
                    account.locked_until = now + lockout
                    record(
                        session,
                        "system:hub",
                        "user.lock",
                        f"user:{username}",
                        {
                            "failed_logins": account.failed_logins,
                            "locked_until": account.locked_until.isoformat(),
                            "source": address,
                        },
                    )
                else:
                    # This address has locked its share of accounts: it is throttled instead,
                    # so one address cannot lock everyone out.
                    account.failed_logins = 0
                    origin.throttled_until = now + window
                    record(
                        session,
                        "system:hub",
                        "login.throttle",
                        f"source:{address}",
                        {"reason": "locked its share of accounts", "locks": origin.locks},
                    )

        if not verify_password(password, user.password_hash):
            failed_for_account("wrong password")
            return LoginResult(None, "wrong password")
        if not user.active:
            record_login(session, user, False, f"{source}; refused: account deactivated")
            return LoginResult(None, "account deactivated")
        state = one_time_state(user, now)
        if state is not None:
            record_login(session, user, False, f"{source}; refused: one-time password {state}")
            return LoginResult(None, f"one-time password {state}")
        factor = ""
        # One query for the second factor, locked for the rest of the transaction (a code is
        # accepted once; see mfa.check_code).
        second = mfa.login_credential(session, user)
        if second is not None and second.confirmed_at is not None:
            # Even a one-time login: whoever handed the password over has no code.
            try:
                factor = mfa.check_code(session, user, otp, now, second)
            except mfa.MfaError as why:
                failed_for_account(f"second factor: {why.message}")
                return LoginResult(None, f"second factor: {why.message}")
        must_set = user.must_change_password
        if must_set:
            user.one_time_used_at = now  # it logs in this once, to set a password
        must_enrol = not factor and mfa.required(user)
        how = "".join(
            (
                "; one-time password" if must_set else "",
                f"; second factor: {factor}" if factor else "",
                "; MFA to set up" if must_enrol else "",
            )
        )
        upgraded = ""
        if needs_rehash(user.password_hash):
            # An older hash (scrypt) is replaced now that the password is known, in this
            # login's transaction; the login's event says so (never with the hash).
            upgraded = f"{scheme_of(user.password_hash)} to argon2id"
            user.password_hash = hash_password(password)
        record_login(session, user, True, source + how, password_rehashed=upgraded)
        user.locked_until = None
        return LoginResult(user.username, "ok", must_set, must_enrol, factor)


def account_active(username: str) -> bool:
    """Is there an active SPE account of this name (blocking, read-only)?"""
    from sqlalchemy import select

    from spe.accounts.models import User
    from spe.db import readonly

    with readonly() as session:
        active = session.scalar(select(User.active).where(User.username == username))
    return bool(active)


def must_set_password(username: str) -> bool:
    from sqlalchemy import select

    from spe.accounts.models import User
    from spe.db import readonly

    with readonly() as session:
        return bool(
            session.scalar(select(User.must_change_password).where(User.username == username))
        )


def login_restriction(username: str) -> str | None:
    """Why this hub login may open nothing but a page of SPE's (a one-time password to replace,
    a second factor to set up), or None (blocking, read-only)."""
    from sqlalchemy import select

    from spe.accounts import mfa
    from spe.accounts.models import User
    from spe.db import readonly

    with readonly() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            return None
        if user.must_change_password:
            return ONE_TIME_LOGIN_ONLY
        if mfa.must_enrol(session, user):
            return MFA_FIRST
    return None


def pending_revocation(username: str) -> dt.datetime | None:
    """When SPE revoked the account's sessions, if the hub has not yet ended its own."""
    from sqlalchemy import select

    from spe.accounts.models import User
    from spe.db import readonly

    with readonly() as session:
        row = session.execute(
            select(User.sessions_revoked_at, User.hub_revoked_at).where(User.username == username)
        ).first()
    if row is None or row[0] is None:
        return None
    revoked, applied = _aware(row[0]), row[1]
    if applied is not None and _aware(applied) >= revoked:
        return None
    return revoked


def note_hub_revoked(username: str, revoked: dt.datetime, tokens: int) -> None:
    """Record that the hub ended its cookies and ``tokens`` tokens of ``username``."""
    from sqlalchemy import select

    from spe.accounts.models import User
    from spe.audit import record
    from spe.db import transaction

    with transaction() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            return
        user.hub_revoked_at = revoked
        record(
            session,
            "system:hub",
            "session.hub_revoke",
            f"user:{username}",
            {"tokens": tokens, "revoked_at": revoked.isoformat()},
        )


def end_hub_sessions(db: Any, orm_user: Any) -> int:
    """End every hub login of ``orm_user`` (a new cookie id voids all the hub's cookies) and
    delete its OAuth and API tokens, except the running servers' own. Returns how many."""
    from jupyterhub import orm
    from jupyterhub.utils import new_token

    orm_user.cookie_id = new_token()
    count = 0
    for token in db.query(orm.APIToken).filter_by(user_id=orm_user.id):
        if (token.note or "").startswith("Server at"):
            continue  # the workspace's own credential, not a person's login
        db.delete(token)
        count += 1
    db.commit()
    return count


def _token_note(handler: Any) -> str | None:
    """The note of the hub token this request authenticated with, or None (a cookie, or no
    request at hand)."""
    if handler is None or not getattr(handler, "_token_authenticated", False):
        return None
    token = handler.get_token()
    return str(token.note or "") if token is not None else ""


class SPEAuthenticator(Authenticator):
    """Log in with an SPE account's password and, where the account has one, a second factor;
    refuses deactivated and locked accounts and throttled addresses; a one-time password logs
    in once, only to set a password; an account that must have MFA and has none opens only
    the page that sets it up."""

    @default("request_otp")
    def _request_otp(self) -> bool:
        return True

    @default("otp_prompt")
    def _otp_prompt(self) -> str:
        return OTP_PROMPT

    @default("allow_all")
    def _allow_all(self) -> bool:
        # Who may log in is SPE's decision (an active account), made in authenticate().
        return True

    @default("auth_refresh_age")
    def _auth_refresh_age(self) -> int:
        from spe.config import get_settings

        return get_settings().hub_auth_refresh_seconds

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn(self) -> bool:
        return True

    def logout_url(self, base_url: str) -> str:
        # The hub's logout button goes through the pages' logout, which ends their session and
        # records the logout, then sends the browser to the hub's own /hub/logout.
        root = base_url[: -len("hub/")] if base_url.endswith("hub/") else "/"
        return root + "services/spe/logout"

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    async def _apply_revocation(self, db: Any, username: str) -> bool:
        """End the hub's own logins and tokens of ``username`` if SPE revoked them since."""
        revoked = await self._run(pending_revocation, username)
        if revoked is None:
            return False
        from jupyterhub import orm

        orm_user = db.query(orm.User).filter_by(name=username).first()
        tokens = end_hub_sessions(db, orm_user) if orm_user is not None else 0
        await self._run(note_hub_revoked, username, revoked, tokens)
        self.log.info("ended the hub logins and %d tokens of %s (revoked by SPE)", tokens, username)
        return True

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> str | None:
        username = str(data.get("username") or "").strip().lower()
        password = str(data.get("password") or "")
        otp = str(data.get("otp") or "")[:64]
        remote = getattr(getattr(handler, "request", None), "remote_ip", "") or "unknown"
        result = await self._run(
            check_login, username, password, f"hub from {remote}", None, None, None, remote, otp
        )
        if result.username is None:
            self.log.warning("SPE login refused for %r: %s", username[:64], result.reason)
            return None
        db = getattr(handler, "db", None)
        if db is not None:
            # Before the hub sets its cookie: older logins of this account end now.
            await self._apply_revocation(db, result.username)
        return result.username

    async def refresh_user(self, user: Any, handler: Any = None) -> bool:
        """A deactivated account, or one whose sessions SPE revoked, is logged out within
        auth_refresh_age (SPE_HUB_AUTH_REFRESH_SECONDS)."""
        db = getattr(user, "db", None) or getattr(handler, "db", None)
        # The hub keeps honouring a token whose refresh fails (it cannot send a token to log in
        # again), so a revoked or deactivated account's tokens are deleted, not only its cookie
        # refused, and the token request that finds them revoked is refused itself.
        note = _token_note(handler)
        revoked = db is not None and await self._apply_revocation(db, user.name)
        active = bool(await self._run(account_active, user.name))
        if note is not None and (not active or (revoked and not note.startswith("Server at"))):
            from tornado import web

            raise web.HTTPError(403, REVOKED_LOGIN)
        return active and not revoked

    async def pre_spawn_start(self, user: Any, spawner: Any) -> None:
        """A one-time login opens no workspace (only the page that sets a password), nor does a
        login that must set up its second factor first."""
        why = await self._run(login_restriction, user.name)
        if why is not None:
            from tornado import web

            raise web.HTTPError(403, why)
