"""Tables of the audit log: events and signed checkpoints.

``time`` is stored as fixed-width RFC 3339 text (``2026-11-23T03:14:44.123456Z``): it sorts
and filters like a timestamp on every database and goes into the canonical form unchanged,
which keeps verification fast.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from spe.db.base import Base, BigIntPK


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_actor_seq", "actor", "seq"),
        Index("ix_audit_events_project_seq", "project", "seq"),
        Index("ix_audit_events_action_seq", "action", "seq"),
        Index("ix_audit_events_time", "time"),
        # The sealer's "what is not sealed yet" stays cheap however long the log grows.
        Index(
            "ix_audit_events_unsealed",
            "id",
            postgresql_where=text("seq IS NULL"),
            sqlite_where=text("seq IS NULL"),
        ),
    )

    # Insertion order; events are sealed in this order and given their seq then.
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    # Position in the Merkle tree, 1-based; NULL until sealed.
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    time: Mapped[str] = mapped_column(String(27))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    project: Mapped[str | None] = mapped_column(String(64))
    dataset: Mapped[str | None] = mapped_column(String(128))
    # RFC 8785 canonical JSON of the details object.
    details: Mapped[str] = mapped_column(Text)
    # RFC 9162 leaf hash, written when sealed.
    leaf_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigInteger, unique=True)
    root_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[str] = mapped_column(String(27))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    # The compact range (right-edge subtree roots) so the next seal need not re-read leaves.
    frontier: Mapped[str] = mapped_column(Text)
