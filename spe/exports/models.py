"""Tables of export requests: the request, its outputs and their frozen files, reviewers'
votes and comments, and the tables already released from each project (for differencing)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import BigInteger, Enum, ForeignKey, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spe.db.base import Base, new_id, utcnow


class RequestStatus(enum.StrEnum):
    CHECKING = "checking"  # files frozen; the server reruns every check
    IN_REVIEW = "in_review"  # waiting for the data holder's reviewers
    CHANGES_REQUESTED = "changes_requested"  # the researcher must change and resubmit
    RELEASED = "released"  # the signed bundle can be downloaded by the requester
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    REVOKED = "revoked"  # released, then taken back by a reviewer


class Vote(enum.StrEnum):
    APPROVE = "approve"
    REQUEST_CHANGES = "request_changes"
    REJECT = "reject"


class Decision(enum.StrEnum):
    APPROVED = "approved"
    CHANGES_REQUESTED = "changes_requested"
    REJECTED = "rejected"


class Visibility(enum.StrEnum):
    REVIEWERS = "reviewers"  # private to the data holder's reviewers
    SHARED = "shared"  # the researcher sees it too


def _enum(kind: type[enum.Enum], name: str) -> Enum:
    return Enum(kind, name=name, native_enum=False, length=24, validate_strings=True)


class ExportRequest(Base):
    __tablename__ = "export_requests"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    author: Mapped[str] = mapped_column(String(64), index=True)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[RequestStatus] = mapped_column(_enum(RequestStatus, "export_status"), index=True)
    # Each resubmission starts a new round; votes belong to one round.
    round: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    checked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    decided_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    decided_by: Mapped[str | None] = mapped_column(String(64), default=None)
    auto_released: Mapped[bool] = mapped_column(default=False)
    bundle_path: Mapped[str | None] = mapped_column(String(500), default=None)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(64), default=None)
    revoke_reason: Mapped[str | None] = mapped_column(Text, default=None)
    withdraw_reason: Mapped[str | None] = mapped_column(Text, default=None)

    outputs: Mapped[list[ExportOutput]] = relationship(
        back_populates="request", order_by="ExportOutput.position", lazy="selectin"
    )


class ExportOutput(Base):
    """One result the researcher wants out: a table, a model or a plain file (and its round)."""

    __tablename__ = "export_outputs"
    __table_args__ = (UniqueConstraint("request_id", "round", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("export_requests.id"), index=True)
    round: Mapped[int]
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(128))
    justification: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # table | model | survival | file
    # Who computed the numbers that leave: "server" (a plan the control plane evaluated on the
    # extract), "dp" (an answer from the privacy ledger) or "workspace" (anything the researcher
    # made: the server could not recompute it, so only reviewers may release it).
    computed_by: Mapped[str] = mapped_column(String(16), default="workspace")
    plan_sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    checkable: Mapped[bool] = mapped_column(default=False)
    # Filled by the server-side check: pass | review | fail, the reasons, the full report.
    check_status: Mapped[str | None] = mapped_column(String(8), default=None)
    reasons: Mapped[str] = mapped_column(Text, default="[]")
    report: Mapped[str] = mapped_column(Text, default="{}")
    datasets: Mapped[str] = mapped_column(Text, default="[]")
    decision: Mapped[Decision | None] = mapped_column(
        _enum(Decision, "export_decision"), default=None
    )

    request: Mapped[ExportRequest] = relationship(back_populates="outputs")
    files: Mapped[list[ExportFile]] = relationship(
        back_populates="output", order_by="ExportFile.role", lazy="selectin"
    )


class ExportFile(Base):
    """A file copied out of the outbox by the control plane and frozen by its SHA-256."""

    __tablename__ = "export_files"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    output_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("export_outputs.id"), index=True)
    # output: released when approved; sidecar and evidence: for the check, never released.
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(160))
    media_type: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))

    output: Mapped[ExportOutput] = relationship(back_populates="files")


class ReviewVote(Base):
    __tablename__ = "export_votes"
    __table_args__ = (UniqueConstraint("output_id", "round", "reviewer"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("export_requests.id"), index=True)
    output_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("export_outputs.id"))
    round: Mapped[int]
    reviewer: Mapped[str] = mapped_column(String(64))
    vote: Mapped[Vote] = mapped_column(_enum(Vote, "export_vote"))
    comment: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ReviewComment(Base):
    __tablename__ = "export_comments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("export_requests.id"), index=True)
    output_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("export_outputs.id"), default=None
    )
    round: Mapped[int]
    author: Mapped[str] = mapped_column(String(64))
    visibility: Mapped[Visibility] = mapped_column(_enum(Visibility, "export_visibility"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ReleasedCells(Base):
    """The persons behind each released cell of a project's tables (hashed), for differencing.

    Kept after a revocation: what was out stays known to have been out.
    """

    __tablename__ = "export_released_cells"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    output_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("export_outputs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    released_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
