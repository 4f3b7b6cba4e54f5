"""Tables of people and organisations: organisations, users, role grants, terms acceptances,
API tokens, the pages' login sessions, failed-login counts per source address, and MFA (TOTP
secrets sealed, recovery codes hashed)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import BigInteger, Enum, ForeignKey, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spe.db.base import Base, new_id, utcnow


class OrgKind(enum.StrEnum):
    DATA_HOLDER = "data_holder"
    RESEARCH_INSTITUTION = "research_institution"


class Role(enum.StrEnum):
    RESEARCHER = "researcher"
    HOLDER_REVIEWER = "holder_reviewer"
    AUDITOR = "auditor"
    INSTITUTION_ADMIN = "institution_admin"
    OPERATOR = "operator"


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[OrgKind] = mapped_column(Enum(OrgKind, native_enum=False, length=32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Organisation({self.name!r}, {self.kind.value})"


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    organisation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("organisations.id"), index=True
    )
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    must_change_password: Mapped[bool] = mapped_column(default=False)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_active_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deactivated_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    deactivation_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    # A one-time password (made by SPE, seen by whoever handed it over) logs in once, to the
    # page that sets the person's own password, and expires unused after a while.
    one_time_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    one_time_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Every login and token made before this instant is void (password change or reset,
    # deactivation, role removal); the hub applies it to its own cookies and tokens and notes
    # when in hub_revoked_at.
    sessions_revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    hub_revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    organisation: Mapped[Organisation | None] = relationship(lazy="joined")
    roles: Mapped[list[RoleGrant]] = relationship(
        back_populates="user", lazy="selectin", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:  # never the password hash
        return f"User({self.username!r})"


class RoleGrant(Base):
    """A role held by a user, scoped to one organisation or (organisation_id NULL) the platform."""

    __tablename__ = "role_grants"
    __table_args__ = (UniqueConstraint("user_id", "role", "organisation_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=32))
    organisation_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organisations.id"))
    granted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    granted_by: Mapped[str] = mapped_column(String(64))

    user: Mapped[User] = relationship(back_populates="roles")


class TermsAcceptance(Base):
    __tablename__ = "terms_acceptances"
    __table_args__ = (UniqueConstraint("user_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    text_sha256: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token for the SPE API; only its SHA-256 is kept (the token is shown once)."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    user: Mapped[User] = relationship(lazy="joined")


class WebSession(Base):
    """A login to the pages; only the SHA-256 of its cookie is kept."""

    __tablename__ = "web_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    user: Mapped[User] = relationship(lazy="joined")


class LoginSource(Base):
    """Failed logins from one source address in its current window (throttling)."""

    __tablename__ = "login_sources"

    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    failures: Mapped[int] = mapped_column(default=0)
    locks: Mapped[int] = mapped_column(default=0)
    throttled_until: Mapped[dt.datetime | None] = mapped_column(default=None)


class MfaCredential(Base):
    """A person's TOTP secret (RFC 6238), sealed by the platform key; active once confirmed with
    a code. ``last_step`` is the time step of the last code accepted (a code is used once)."""

    __tablename__ = "mfa_credentials"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), unique=True)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_step: Mapped[int | None] = mapped_column(BigInteger, default=None)

    def __repr__(self) -> str:  # never the secret
        return f"MfaCredential(user={self.user_id}, confirmed={self.confirmed_at is not None})"


class MfaRecoveryCode(Base):
    """A single-use recovery code; only its keyed digest is kept (the code is shown once)."""

    __tablename__ = "mfa_recovery_codes"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
