"""Tables of the catalogue: datasets, dataset versions, variables, ingest jobs."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spe.accounts.models import Organisation
from spe.db.base import Base, new_id, utcnow


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    conditions: Mapped[str] = mapped_column(Text, default="")
    access: Mapped[str] = mapped_column(String(32), default="rows")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    holder: Mapped[Organisation] = relationship(lazy="joined")
    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", lazy="selectin", order_by="DatasetVersion.version"
    )

    @property
    def latest(self) -> DatasetVersion | None:
        """The newest version that was not withdrawn."""
        readable = [v for v in self.versions if v.withdrawn_at is None]
        return readable[-1] if readable else None


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "ingest_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # sha256 over (source file, policy, identifier history): the same input is the same version.
    ingest_key: Mapped[str] = mapped_column(String(64))
    source_name: Mapped[str] = mapped_column(String(255))
    source_sha256: Mapped[str] = mapped_column(String(64))
    source_format: Mapped[str] = mapped_column(String(16))
    source_encoding: Mapped[str] = mapped_column(String(16))
    policy_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))
    data_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    row_count: Mapped[int] = mapped_column(BigInteger)
    rejected_count: Mapped[int] = mapped_column(BigInteger)
    # JSON: {"accepted": n, "rejected": {reason: n}, ...}
    report: Mapped[str] = mapped_column(Text)
    quarantine_path: Mapped[str | None] = mapped_column(String(500))
    temporal_coverage: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    # How the files rest: spe.keys.datasets.ENCRYPTION, or None for a plain version written
    # before encryption at rest (readers refuse it). The data key's scope is the ingest key.
    encryption: Mapped[str | None] = mapped_column(String(32), default=None)
    # Withdrawal destroys the data key (crypto-shredding) and the files; the row stays.
    withdrawn_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    withdrawn_by: Mapped[str | None] = mapped_column(String(64), default=None)
    withdraw_reason: Mapped[str | None] = mapped_column(Text, default=None)

    dataset: Mapped[Dataset] = relationship(back_populates="versions")
    variables: Mapped[list[Variable]] = relationship(
        back_populates="version", lazy="selectin", order_by="Variable.position"
    )


class Variable(Base):
    __tablename__ = "variables"
    __table_args__ = (UniqueConstraint("version_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    classification: Mapped[str] = mapped_column(String(32))
    generalisation: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")

    version: Mapped[DatasetVersion] = relationship(back_populates="variables")
