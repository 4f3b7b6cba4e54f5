"""The table of wrapped keys: every key except the platform key, sealed by the platform key."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from spe.db.base import Base, new_id, utcnow


class WrappedKey(Base):
    __tablename__ = "wrapped_keys"
    __table_args__ = (UniqueConstraint("purpose", "scope"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    purpose: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(128), default="")
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    public: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    destroyed_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    def __repr__(self) -> str:  # never the wrapped bytes
        return f"WrappedKey({self.purpose!r}, {self.scope!r})"
