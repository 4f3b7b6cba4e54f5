"""Organisations, accounts, roles and the terms of use: the actions, each audited.

Every function checks the actor's permission (spe.accounts.permissions) before it acts and
records its audit event in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spe.accounts.models import Organisation, OrgKind, Role, RoleGrant, TermsAcceptance, User
from spe.accounts.password_rules import PasswordRejected, check_password
from spe.accounts.permissions import Action, Target, check_can, check_role_scope, holds
from spe.accounts.sessions import revoke_everything
from spe.accounts.terms import current_terms
from spe.audit import record, state_change
from spe.db.base import utcnow
from spe.errors import NotFound, PermissionDenied, SPEError
from spe.keys.passwords import hash_password, new_password, verify_password

_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,62}$")


class AccountError(SPEError):
    """An account, organisation or role request that cannot be done as asked."""


# --- lookups -----------------------------------------------------------------------------------


def get_organisation(session: Session, name: str) -> Organisation:
    org = session.scalar(select(Organisation).where(Organisation.name == name))
    if org is None:
        known = ", ".join(session.scalars(select(Organisation.name).order_by(Organisation.name)))
        raise NotFound(
            f"There is no organisation named {name!r}"
            + (f"; known: {known}." if known else "; add one with `spe org add`.")
        )
    return org


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"There is no user named {username!r}; check the spelling or add them.")
    return user


def parse_role(name: str) -> Role:
    try:
        return Role(name.replace("-", "_"))
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise AccountError(f"There is no role {name!r}; the roles are: {names}.") from None


def parse_org_kind(name: str) -> OrgKind:
    aliases = {"holder": OrgKind.DATA_HOLDER, "institution": OrgKind.RESEARCH_INSTITUTION}
    try:
        return aliases.get(name) or OrgKind(name.replace("-", "_"))
    except ValueError:
        raise AccountError(
            f"There is no organisation kind {name!r}; use data_holder or research_institution."
        ) from None


# --- bootstrap ---------------------------------------------------------------------------------


def operators_exist(session: Session) -> bool:
    return (
        session.scalar(select(RoleGrant.id).where(RoleGrant.role == Role.OPERATOR).limit(1))
        is not None
    )


@state_change("user.create")
def bootstrap_operator(session: Session, username: str, password: str | None = None) -> str:
    """Create the first platform operator; allowed only while there is none. Returns the
    one-time password."""
    if operators_exist(session):
        raise AccountError("An operator already exists; ask them to add you with `spe user add`.")
    password = password or new_password()
    user = _new_user(session, username, None, "Platform operator", "", password)
    _make_one_time(user)
    session.add(RoleGrant(user=user, role=Role.OPERATOR, organisation_id=None, granted_by="system"))
    record(session, "system:bootstrap", "user.create", f"user:{username}", {"role": "operator"})
    return password


# --- organisations -----------------------------------------------------------------------------


@state_change("org.create")
def create_organisation(session: Session, actor: User, name: str, kind: OrgKind) -> Organisation:
    check_can(session, actor, Action.ORG_CREATE)
    name = name.strip()
    if not name or len(name) > 200:
        raise AccountError("An organisation needs a name of 1 to 200 characters.")
    if session.scalar(select(Organisation.id).where(Organisation.name == name)):
        raise AccountError(f"An organisation named {name!r} already exists.")
    org = Organisation(name=name, kind=kind)
    session.add(org)
    session.flush()
    record(session, actor, "org.create", f"org:{org.id}", {"name": name, "kind": kind.value})
    return org


# --- users -------------------------------------------------------------------------------------


def _new_user(
    session: Session,
    username: str,
    organisation: Organisation | None,
    full_name: str,
    email: str,
    password: str | None,
) -> User:
    if not _USERNAME.match(username):
        raise AccountError(
            f"Username {username!r} is not allowed: use 2-63 lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter."
        )
    if session.scalar(select(User.id).where(User.username == username)):
        raise AccountError(f"The username {username!r} is taken; choose another.")
    user = User(
        username=username,
        organisation=organisation,
        full_name=full_name,
        email=email,
        password_hash=hash_password(password) if password else None,
    )
    session.add(user)
    session.flush()
    return user


@state_change("user.create")
def create_user(
    session: Session,
    actor: User,
    username: str,
    organisation: Organisation | None,
    full_name: str = "",
    email: str = "",
    password: str | None = None,
) -> tuple[User, str]:
    """Create an account; returns it and its one-time password (shown once, never stored)."""
    check_can(session, actor, Action.USER_CREATE, Target(organisation=organisation))
    one_time = password or new_password()
    user = _new_user(session, username, organisation, full_name, email, one_time)
    if password is None:
        _make_one_time(user)
    record(
        session,
        actor,
        "user.create",
        f"user:{username}",
        {"organisation": organisation.name if organisation else None},
    )
    return user, one_time


def _make_one_time(user: User) -> None:
    """The account's password is a one-time one: it logs in once, to set a password, and
    expires unused after SPE_ONE_TIME_PASSWORD_DAYS."""
    from spe.config import get_settings

    user.must_change_password = True
    user.one_time_used_at = None
    user.one_time_expires_at = utcnow() + dt.timedelta(days=get_settings().one_time_password_days)


def one_time_state(user: User, now: dt.datetime | None = None) -> str | None:
    """Why a one-time password no longer logs in ("used", "expired"), or None."""
    if not user.must_change_password:
        return None
    if user.one_time_used_at is not None:
        return "used"
    if user.one_time_expires_at is not None and user.one_time_expires_at <= (now or utcnow()):
        return "expired"
    return None


@state_change("user.password_reset")
def reset_password(session: Session, actor: User, user: User) -> str:
    """Give ``user`` a new one-time password (operator or their institution admin); every
    session and API token of theirs ends."""
    check_can(session, actor, Action.USER_REACTIVATE, Target(user=user))
    one_time = new_password()
    user.password_hash = hash_password(one_time)
    _make_one_time(user)
    user.failed_logins = 0
    user.locked_until = None
    record(session, actor, "user.password_reset", f"user:{user.username}")
    revoke_everything(session, actor, user, "password reset")
    return one_time


def _set_password(session: Session, user: User, new: str, how: str) -> dict[str, int]:
    check_password(new, user.username)
    if verify_password(new, user.password_hash):
        raise PasswordRejected("Choose a password different from the current one.")
    user.password_hash = hash_password(new)
    user.must_change_password = False
    user.one_time_expires_at = None
    user.one_time_used_at = None
    user.password_changed_at = utcnow()
    user.failed_logins = 0
    record(session, user, "user.password_change", f"user:{user.username}", {"how": how})
    return revoke_everything(session, user, user, "password change")


@state_change("user.password_change")
def change_password(session: Session, user: User, current: str, new: str) -> dict[str, int]:
    """``user`` chooses a new password, proving the current one; every session and API token
    of theirs ends (they log in again with the new one)."""
    if not user.active:
        raise PermissionDenied(f"The account {user.username} is deactivated.")
    if not verify_password(current, user.password_hash):
        raise AccountError("The current password is wrong; type it again.")
    state = one_time_state(user)
    if state == "expired":
        raise AccountError(
            "Your one-time password has expired; ask your institution admin or an operator "
            "for a new one."
        )
    return _set_password(session, user, new, "with the current password")


@state_change("user.password_change")
def set_first_password(
    session: Session, user: User, new: str, logged_in_at: dt.datetime | None
) -> dict[str, int]:
    """``user`` logged in with a one-time password (at ``logged_in_at``, the start of this
    login) and now sets their own; the one-time login may do nothing else."""
    if not user.active:
        raise PermissionDenied(f"The account {user.username} is deactivated.")
    used = user.one_time_used_at
    if not user.must_change_password or used is None:
        raise AccountError(
            "Your password is your own already; change it with your current password."
        )
    if logged_in_at is None or logged_in_at < used:
        raise AccountError(
            "Set your password in the login that used the one-time password; log in again."
        )
    return _set_password(session, user, new, "after a one-time login")


@state_change("user.deactivate")
def deactivate_user(session: Session, actor: User, user: User, reason: str) -> None:
    check_can(session, actor, Action.USER_DEACTIVATE, Target(user=user))
    if not reason.strip():
        raise AccountError("Give a reason for deactivating the account.")
    if not user.active:
        raise AccountError(f"The account {user.username} is already deactivated.")
    _deactivate(user, reason)
    record(session, actor, "user.deactivate", f"user:{user.username}", {"reason": reason})
    revoke_everything(session, actor, user, "deactivation")


def _deactivate(user: User, reason: str) -> None:
    user.active = False
    user.deactivated_at = utcnow()
    user.deactivation_reason = reason


@state_change("user.reactivate")
def reactivate_user(session: Session, actor: User, user: User) -> None:
    check_can(session, actor, Action.USER_REACTIVATE, Target(user=user))
    if user.active:
        raise AccountError(f"The account {user.username} is active already.")
    user.active = True
    user.deactivated_at = None
    user.deactivation_reason = None
    user.last_active_at = utcnow()
    record(session, actor, "user.reactivate", f"user:{user.username}")


@state_change("user.deactivate")
def deactivate_inactive(
    session: Session, inactivity_days: int, now: dt.datetime | None = None
) -> list[str]:
    """Deactivate every account with no activity for ``inactivity_days``; returns usernames."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=inactivity_days)
    users = session.scalars(
        select(User).where(User.active.is_(True), User.last_active_at < cutoff)
    ).all()
    done = []
    for user in users:
        reason = f"no activity for {inactivity_days} days"
        _deactivate(user, reason)
        record(
            session,
            "system:inactivity",
            "user.deactivate",
            f"user:{user.username}",
            {"reason": reason, "last_active_at": user.last_active_at.isoformat()},
        )
        revoke_everything(session, "system:inactivity", user, "deactivation")
        done.append(user.username)
    return done


@state_change("user.login")
def record_login(
    session: Session, user: User, ok: bool, source: str = "", password_rehashed: str = ""
) -> None:
    """Record a login attempt; a success also counts as activity. ``password_rehashed`` says
    how the login upgraded the stored password hash (e.g. "scrypt to argon2id"), if it did."""
    if ok:
        user.last_active_at = user.last_login_at = utcnow()
        user.failed_logins = 0
    else:
        user.failed_logins += 1
    details = {"source": source}
    if password_rehashed:
        details["password_rehashed"] = password_rehashed
    record(
        session,
        user,
        "user.login" if ok else "user.login_failed",
        f"user:{user.username}",
        details,
    )


# --- roles -------------------------------------------------------------------------------------


@state_change("role.grant")
def grant_role(
    session: Session, actor: User, user: User, role: Role, organisation: Organisation | None
) -> RoleGrant:
    check_can(
        session, actor, Action.ROLE_GRANT, Target(organisation=organisation, user=user, role=role)
    )
    check_role_scope(role, organisation)
    org_id = organisation.id if organisation else None
    if any(g.role == role and g.organisation_id == org_id for g in user.roles):
        where = f" for {organisation.name}" if organisation else ""
        raise AccountError(f"{user.username} already holds the {role.value} role{where}.")
    grant = RoleGrant(user=user, role=role, organisation_id=org_id, granted_by=actor.username)
    session.add(grant)
    record(
        session,
        actor,
        "role.grant",
        f"user:{user.username}",
        {"role": role.value, "organisation": organisation.name if organisation else None},
    )
    return grant


@state_change("role.revoke")
def revoke_role(
    session: Session, actor: User, user: User, role: Role, organisation: Organisation | None
) -> None:
    check_can(
        session, actor, Action.ROLE_REVOKE, Target(organisation=organisation, user=user, role=role)
    )
    org_id = organisation.id if organisation else None
    grant = next((g for g in user.roles if g.role == role and g.organisation_id == org_id), None)
    if grant is None:
        where = f" for {organisation.name}" if organisation else ""
        raise AccountError(f"{user.username} does not hold the {role.value} role{where}.")
    if role == Role.OPERATOR and user.id == actor.id:
        others = session.scalars(
            select(RoleGrant).where(RoleGrant.role == Role.OPERATOR, RoleGrant.user_id != user.id)
        ).first()
        if others is None:
            raise AccountError("You are the last operator; grant the role to someone else first.")
    user.roles.remove(grant)
    record(
        session,
        actor,
        "role.revoke",
        f"user:{user.username}",
        {"role": role.value, "organisation": organisation.name if organisation else None},
    )
    revoke_everything(session, actor, user, "role removal")


# --- institution admin -------------------------------------------------------------------------


@state_change("user.create")
def enrol_researcher(
    session: Session,
    actor: User,
    institution: Organisation,
    username: str,
    full_name: str = "",
    email: str = "",
) -> tuple[User, str]:
    """An institution admin adds a researcher of their own institution; returns the one-time
    password."""
    if institution.kind != OrgKind.RESEARCH_INSTITUTION:
        raise AccountError(f"{institution.name} is not a research institution.")
    user, password = create_user(session, actor, username, institution, full_name, email)
    grant_role(session, actor, user, Role.RESEARCHER, institution)
    return user, password


@state_change("user.deactivate")
def remove_researcher(session: Session, actor: User, user: User, reason: str) -> None:
    """An institution admin removes a researcher: the role goes and the account is closed."""
    if user.organisation is None or not holds(user, Role.RESEARCHER, user.organisation_id):
        raise AccountError(f"{user.username} is not a researcher of an institution.")
    revoke_role(session, actor, user, Role.RESEARCHER, user.organisation)
    deactivate_user(session, actor, user, reason)


# --- terms of use ------------------------------------------------------------------------------


@state_change("terms.accept")
def accept_terms(session: Session, user: User) -> str:
    """``user`` accepts the current terms of use; returns the version accepted."""
    check_can(session, user, Action.TERMS_ACCEPT, Target(user=user))
    terms = current_terms()
    exists = session.scalar(
        select(TermsAcceptance.id).where(
            TermsAcceptance.user_id == user.id, TermsAcceptance.version == terms.version
        )
    )
    if exists:
        return terms.version
    session.add(TermsAcceptance(user_id=user.id, version=terms.version, text_sha256=terms.sha256))
    try:
        session.flush()
    except IntegrityError:  # accepted concurrently
        raise AccountError("The terms were accepted at the same moment; try again.") from None
    record(
        session,
        user,
        "terms.accept",
        f"user:{user.username}",
        {"version": terms.version, "sha256": terms.sha256},
    )
    return terms.version


def terms_status(
    session: Session, actor: User, organisation: Organisation
) -> list[tuple[str, bool]]:
    """(username, accepted current terms?) for every active account of ``organisation``."""
    check_can(session, actor, Action.TERMS_VIEW_STATUS, Target(organisation=organisation))
    version = current_terms().version
    accepted = set(
        session.scalars(select(TermsAcceptance.user_id).where(TermsAcceptance.version == version))
    )
    users = session.scalars(
        select(User)
        .where(User.organisation_id == organisation.id, User.active.is_(True))
        .order_by(User.username)
    )
    return [(u.username, u.id in accepted) for u in users]
