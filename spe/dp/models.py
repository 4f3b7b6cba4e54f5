"""Tables of DP queries: the budget ledger (a total per dataset, allocations to projects) and the
queries it paid for. Epsilon is kept in whole micro-units so that the ledger's
``spent + cost <= total`` is exact (30 x 0.1 spend 3.0)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from spe.db.base import Base, new_id, utcnow

MICRO = 1_000_000  # micro-epsilon per epsilon


class DPDatasetBudget(Base):
    """The privacy budget of one aggregate-only dataset, set by its data holder: what all
    projects together may spend, what is allocated to projects, and what they have spent."""

    __tablename__ = "dp_dataset_budgets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), unique=True)
    total_micro: Mapped[int] = mapped_column(BigInteger)
    allocated_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DPBudget(Base):
    """A project's allocation from a dataset's budget (``total_micro``), and what it has spent."""

    __tablename__ = "dp_budgets"
    __table_args__ = (UniqueConstraint("project_id", "dataset_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    total_micro: Mapped[int] = mapped_column(BigInteger)
    spent_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DPQuery(Base):
    """One query, answered (its noisy result is a released output) or refused with the reason.

    The id is the job's: a worker that runs the job twice finds the answer already here.
    """

    __tablename__ = "dp_queries"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id"), index=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    username: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    spec: Mapped[str] = mapped_column(Text)  # JSON of the query as asked
    epsilon_micro: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # released | refused
    result: Mapped[str] = mapped_column(Text)  # JSON: the answer, or {"error": sentence}
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
