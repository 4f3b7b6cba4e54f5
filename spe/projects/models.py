"""Tables of projects and their members."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import Enum, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spe.accounts.models import Organisation, User
from spe.db.base import Base, new_id, utcnow


class ProjectStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    CLOSED = "closed"


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(Text)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    institution_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    start_date: Mapped[dt.date]
    end_date: Mapped[dt.date]
    status: Mapped[ProjectStatus] = mapped_column(
        Enum(ProjectStatus, native_enum=False, length=16), default=ProjectStatus.PENDING
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    decided_by: Mapped[str | None] = mapped_column(String(64), default=None)
    closed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    closed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    close_reason: Mapped[str | None] = mapped_column(Text, default=None)

    holder: Mapped[Organisation] = relationship(foreign_keys=[holder_id], lazy="joined")
    institution: Mapped[Organisation] = relationship(foreign_keys=[institution_id], lazy="joined")
    members: Mapped[list[ProjectMember]] = relationship(back_populates="project", lazy="selectin")

    def __repr__(self) -> str:
        return f"Project({self.slug!r}, {self.status.value})"


class MemberRole(enum.StrEnum):
    LEAD = "lead"
    MEMBER = "member"


class ProjectMember(Base):
    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[MemberRole] = mapped_column(Enum(MemberRole, native_enum=False, length=16))
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    project: Mapped[Project] = relationship(back_populates="members")
    user: Mapped[User] = relationship(lazy="joined")


class ProjectGrant(Base):
    """A project's access to one dataset: which variables, and how quasi-identifiers are
    generalised (data minimisation)."""

    __tablename__ = "project_grants"
    __table_args__ = (UniqueConstraint("project_id", "dataset_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    # JSON list of variable names, and JSON object {variable: generalisation}.
    variables: Mapped[str] = mapped_column(Text)
    generalisations: Mapped[str] = mapped_column(Text, default="{}")
    granted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    granted_by: Mapped[str] = mapped_column(String(64))


class ProjectExtract(Base):
    """The project's own copy of a granted dataset version, under the project's pseudonyms."""

    __tablename__ = "project_extracts"
    __table_args__ = (UniqueConstraint("project_id", "extract_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    dataset_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dataset_versions.id"))
    extract_key: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))
    data_sha256: Mapped[str] = mapped_column(String(64))
    row_count: Mapped[int] = mapped_column()
    size_bytes: Mapped[int] = mapped_column()
    current: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class MemberRequestStatus(enum.StrEnum):
    PENDING = "pending"  # the data holder must decide; the person gets nothing yet
    APPROVED = "approved"  # the person became a member (a ProjectMember row)
    REFUSED = "refused"  # the data holder refused, with a reason the lead sees
    WITHDRAWN = "withdrawn"  # removed before the holder decided


class ProjectMemberRequest(Base):
    """A person added to an approved project, waiting for the data holder's decision.

    Kept apart from ``project_members`` on purpose: every check of membership (workspaces, the
    airlock, DP, exports, pages) reads ``project_members``, so a pending person is simply not a
    member anywhere until the holder approves, whatever code path asks.
    """

    __tablename__ = "project_member_requests"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[MemberRole] = mapped_column(Enum(MemberRole, native_enum=False, length=16))
    status: Mapped[MemberRequestStatus] = mapped_column(
        Enum(MemberRequestStatus, native_enum=False, length=16),
        default=MemberRequestStatus.PENDING,
    )
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    requested_by: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    decided_by: Mapped[str | None] = mapped_column(String(64), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)

    project: Mapped[Project] = relationship()
    user: Mapped[User] = relationship(lazy="joined")
