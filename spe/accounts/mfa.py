"""Multi-factor authentication for local accounts: TOTP (RFC 6238) with single-use recovery
codes. Who must have it (roles from settings), enrolment (a secret sealed by the platform key,
active once confirmed with a current code), the check at login (a code is used once), and the
reset by an operator or institution admin (every login and token of the account ends).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

import pyotp
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from spe.accounts.models import MfaCredential, MfaRecoveryCode, Role, User
from spe.accounts.permissions import Action, Target, check_can
from spe.audit import record, state_change
from spe.db.base import utcnow
from spe.errors import SPEError

STEP_SECONDS = 30
# A code of the previous or next step is accepted too (clocks drift, people type slowly).
DRIFT_STEPS = 1
_CODE = re.compile(r"^\d{6}$")
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_RECOVERY_LENGTH = 12  # 12 of 31 symbols: about 59 bits, shown as xxxx-xxxx-xxxx


class MfaError(SPEError):
    """An MFA request that cannot be done as asked; the message says what to do."""


@dataclass(frozen=True)
class Enrolment:
    """What the enrolment page shows: the secret as text and the provisioning URI (the QR)."""

    secret: str
    uri: str


# --- who must have it -------------------------------------------------------------------------


def required_roles() -> set[str]:
    from spe.config import get_settings

    settings = get_settings()
    names = {part.strip() for part in settings.mfa_required_roles.split(",") if part.strip()}
    if settings.mfa_researchers:
        names.add(Role.RESEARCHER.value)
    return names


def required(user: User) -> bool:
    """Must ``user`` log in with SPE's second factor (a role of theirs says so)? Not with OIDC
    logins: there the provider does MFA, and SPE_OIDC_REQUIRE_MFA checks that it did."""
    from spe.config import get_settings

    if get_settings().hub_authenticator == "oidc":
        return False
    wanted = required_roles()
    return any(grant.role.value in wanted for grant in user.roles)


def credential(session: Session, user: User) -> MfaCredential | None:
    return session.scalar(select(MfaCredential).where(MfaCredential.user_id == user.id))


def enrolled(session: Session, user: User) -> bool:
    row = credential(session, user)
    return row is not None and row.confirmed_at is not None


def must_enrol(session: Session, user: User) -> bool:
    """The account must have MFA and has not set it up: only the enrolment page is open."""
    return required(user) and not enrolled(session, user)


def recovery_codes_left(session: Session, user: User) -> int:
    return len(
        session.scalars(
            select(MfaRecoveryCode.id).where(
                MfaRecoveryCode.user_id == user.id, MfaRecoveryCode.used_at.is_(None)
            )
        ).all()
    )


# --- enrolment ---------------------------------------------------------------------------------


def _context(user: User) -> str:
    return f"mfa-totp:user:{user.id}"


def _secret(row: MfaCredential, user: User) -> str:
    from spe.keys.sealing import open_secret

    return open_secret(row.secret_sealed, _context(user)).decode()


def _uri(user: User, secret: str) -> str:
    from spe.config import get_settings

    return pyotp.TOTP(secret, interval=STEP_SECONDS).provisioning_uri(
        name=user.username, issuer_name=get_settings().mfa_issuer
    )


@state_change("mfa.enrol_start")
def start_enrolment(session: Session, user: User) -> Enrolment:
    """The secret being set up for ``user`` (made and sealed on first call; the same one until
    confirmed). Refused when MFA is set up already: an admin resets it first."""
    from spe.keys.sealing import seal_secret

    if not user.active:
        raise MfaError(f"The account {user.username} is deactivated.")
    row = credential(session, user)
    if row is not None and row.confirmed_at is not None:
        raise MfaError(
            "Two-step login is set up for your account already; to move it to a new device, ask "
            "your institution admin or an operator to reset it."
        )
    if row is None:
        secret = pyotp.random_base32(32)  # 160 bits, as RFC 4226 recommends
        row = MfaCredential(
            user_id=user.id, secret_sealed=seal_secret(secret.encode(), _context(user))
        )
        session.add(row)
        session.flush()
        record(session, user, "mfa.enrol_start", f"user:{user.username}")
    else:
        secret = _secret(row, user)
    return Enrolment(secret=secret, uri=_uri(user, secret))


def qr_svg(uri: str) -> str:
    """The provisioning URI as an inline SVG QR code (rendered here; the page loads nothing)."""
    import io

    import segno

    out = io.BytesIO()
    segno.make(uri, error="m").save(
        out, kind="svg", scale=5, border=2, xmldecl=False, svgns=True, title="QR code"
    )
    return out.getvalue().decode()


def _step(now: dt.datetime) -> int:
    return int(now.timestamp()) // STEP_SECONDS


def _matching_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step ``code`` belongs to (within the drift), or None."""
    totp = pyotp.TOTP(secret, interval=STEP_SECONDS)
    here = _step(now)
    for step in range(here - DRIFT_STEPS, here + DRIFT_STEPS + 1):
        if secrets.compare_digest(totp.at(step * STEP_SECONDS), code):
            return step
    return None


def _new_recovery_codes(session: Session, user: User, secret: str) -> list[str]:
    """New recovery codes for ``user``; each is kept as a digest keyed by the account's sealed
    TOTP secret (spe.keys.passwords.recovery_code_digest), so a check costs microseconds."""
    from spe.config import get_settings
    from spe.keys.passwords import recovery_code_digest

    session.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.user_id == user.id))
    codes = []
    for _ in range(get_settings().mfa_recovery_codes):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
        digest = recovery_code_digest(secret.encode(), str(user.id), raw)
        session.add(MfaRecoveryCode(user_id=user.id, code_hash=digest))
    return codes


@state_change("mfa.enrol")
def confirm_enrolment(
    session: Session, user: User, code: str, now: dt.datetime | None = None
) -> list[str]:
    """``user`` proves the authenticator app works with a current code: MFA is on from now,
    and every other login and API token of the account ends (one made with the password
    alone, before this, must not live on; the caller gives this browser a new login).
    Returns the recovery codes (shown once; only their hashes are kept)."""
    from spe.accounts.sessions import revoke_everything

    now = now or utcnow()
    row = credential(session, user)
    if row is None:
        raise MfaError("Open the page that sets up two-step login first; it shows your secret.")
    if row.confirmed_at is not None:
        raise MfaError("Two-step login is set up for your account already.")
    code = code.strip().replace(" ", "")
    secret = _secret(row, user)
    step = _matching_step(secret, code, now) if _CODE.match(code) else None
    if step is None:
        raise MfaError(
            "That code is not the current one of the secret shown; check the app's clock and "
            "type the 6 digits it shows now."
        )
    row.confirmed_at = now
    row.last_step = step
    codes = _new_recovery_codes(session, user, secret)
    record(
        session,
        user,
        "mfa.enrol",
        f"user:{user.username}",
        {"method": "totp", "recovery_codes": len(codes)},
    )
    revoke_everything(session, user, user, "MFA set up")
    return codes


# --- at login ----------------------------------------------------------------------------------


def login_credential(session: Session, user: User) -> MfaCredential | None:
    """The account's second factor, read fresh and locked for the rest of the login's
    transaction: two logins with one code, at once, do not both pass (PostgreSQL; SQLite
    writes one transaction at a time anyway)."""
    return session.scalar(
        select(MfaCredential)
        .where(MfaCredential.user_id == user.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def check_code(
    session: Session,
    user: User,
    code: str,
    now: dt.datetime | None = None,
    row: MfaCredential | None = None,
) -> str:
    """Check a login's second factor; returns how it passed ("totp" or "recovery"), or raises
    MfaError with why not (for the audit record; the person is told only that it failed). A
    TOTP code is accepted once; a recovery code once ever (its use is audited). ``row`` is
    the account's credential as login_credential read it in this transaction (read here when
    not given)."""
    now = now or utcnow()
    if row is None:
        row = login_credential(session, user)
    if row is None or row.confirmed_at is None:
        raise MfaError("no second factor set up")
    cleaned = code.strip().replace(" ", "")
    if not cleaned:
        raise MfaError("no code given")
    if _CODE.match(cleaned):
        step = _matching_step(_secret(row, user), cleaned, now)
        if step is None:
            raise MfaError("wrong code")
        if row.last_step is not None and step <= row.last_step:
            raise MfaError("code already used")
        row.last_step = step
        return "totp"
    raw = cleaned.replace("-", "").lower()
    if len(raw) != _RECOVERY_LENGTH or set(raw) - set(_RECOVERY_ALPHABET):
        raise MfaError("wrong code")
    from spe.keys.passwords import is_recovery_digest, recovery_code_matches

    # Read after the credential's lock: two logins with one recovery code take turns here.
    unused = session.scalars(
        select(MfaRecoveryCode).where(
            MfaRecoveryCode.user_id == user.id, MfaRecoveryCode.used_at.is_(None)
        )
    ).all()
    key, owner = _secret(row, user).encode(), str(user.id)
    # The keyed digests first (microseconds each); codes kept as password hashes, by releases
    # before the digests, cost one hash each and are tried last.
    ordered = sorted(unused, key=lambda c: not is_recovery_digest(c.code_hash))
    for candidate in ordered:
        if recovery_code_matches(key, owner, raw, candidate.code_hash):
            candidate.used_at = now
            record(
                session,
                user,
                "mfa.recovery_use",
                f"user:{user.username}",
                {"left": len(unused) - 1},
            )
            return "recovery"
    raise MfaError("wrong recovery code")


# --- reset by an admin -------------------------------------------------------------------------


@state_change("mfa.reset")
def reset_mfa(session: Session, actor: User, user: User, reason: str = "") -> dict[str, int]:
    """An operator, or the institution admin of ``user``, removes their second factor (a lost
    phone); every login and API token of theirs ends, and they set it up again at next login."""
    from spe.accounts.sessions import revoke_everything

    check_can(session, actor, Action.USER_REACTIVATE, Target(user=user))
    row = credential(session, user)
    if row is None:
        raise MfaError(f"{user.username} has no two-step login set up; there is nothing to reset.")
    session.delete(row)
    session.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.user_id == user.id))
    record(
        session,
        actor,
        "mfa.reset",
        f"user:{user.username}",
        {"reason": reason.strip()[:500]} if reason.strip() else {},
    )
    return revoke_everything(session, actor, user, "MFA reset")
