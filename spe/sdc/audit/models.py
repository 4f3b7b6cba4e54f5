"""Tables of the cumulative disclosure audit: releases per data holder, their cells' hashed
person sets per linear space, and a compact history per holder and space (a cache, keyed by the
number of releases it holds, rebuilt from the cells when it falls behind)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from spe.db.base import Base, new_id, utcnow


class SDCRelease(Base):
    """One released output of a project, as the audit knows it (title and date are what a
    reason may name). Kept after a revocation: what was out stays known to have been out."""

    __tablename__ = "sdc_releases"
    __table_args__ = (UniqueConstraint("holder", "release_id", "output_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    holder: Mapped[str] = mapped_column(String(200), index=True)
    project: Mapped[str] = mapped_column(String(200))
    release_id: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(500))
    released_at: Mapped[dt.datetime] = mapped_column()
    output_name: Mapped[str] = mapped_column(String(500))
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SDCReleaseCells(Base):
    """A release's cells in one space ("count" or "sum:dataset.column"): per cell the sorted
    64-bit person hashes (never the pseudonyms), as a compressed npz; ``seq`` orders the
    holder's releases in that space."""

    __tablename__ = "sdc_release_cells"
    __table_args__ = (UniqueConstraint("holder", "space", "seq"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    release: Mapped[uuid.UUID] = mapped_column(ForeignKey("sdc_releases.id"), index=True)
    holder: Mapped[str] = mapped_column(String(200))
    space: Mapped[str] = mapped_column(String(300))
    seq: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class SDCHistorySnapshot(Base):
    """The compact history (atoms, cells over atoms, reduced basis) of a holder in a space,
    valid while ``n_releases`` equals the number of that space's release cells."""

    __tablename__ = "sdc_history_snapshots"

    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    space: Mapped[str] = mapped_column(String(300), primary_key=True)
    n_releases: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SDCReleaseValues(Base):
    """What each person contributed to a release's cells in a sum space (server-computed
    outputs only), aligned with the cells' persons: sealed under the platform key, never shown
    (the p % rule of later audits reads them)."""

    __tablename__ = "sdc_release_values"

    cells: Mapped[uuid.UUID] = mapped_column(ForeignKey("sdc_release_cells.id"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class SDCValueMap(Base):
    """Each person's released value in a holder's sum space (spe.sdc.audit.values.ValueMap),
    sealed; valid while ``n_releases`` equals the number of that space's release cells."""

    __tablename__ = "sdc_value_maps"

    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    space: Mapped[str] = mapped_column(String(300), primary_key=True)
    n_releases: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
