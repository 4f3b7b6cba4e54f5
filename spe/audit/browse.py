"""Paging through the audit log for people: newest first, keyset pagination on ``seq`` (fast
however long the log), a data holder's view of every event touching their data, and the log's
state at a glance (newest signed checkpoint, its signature, what is not sealed yet).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from spe.audit.log import AuditError
from spe.audit.models import AuditCheckpoint, AuditEvent
from spe.audit.query import EventFilter, event_dict
from spe.audit.seal import checkpoint_message
from spe.keys.signing import audit_public_key, key_id_of, verify_signature

PAGE_SIZE = 50
MAX_SEQ = 2**63 - 1  # the largest BIGINT


@dataclass
class EventPage:
    events: list[dict[str, Any]] = field(default_factory=list)
    older: int | None = None  # pass as ``before`` for the next (older) page
    first_page: bool = True


def _scoped(
    query: Select[Any], datasets: Collection[str] | None, projects: Collection[str] | None
) -> Select[Any]:
    """Only events about these datasets or projects (a data holder's own)."""
    if datasets is None and projects is None:
        return query
    conditions = []
    if datasets:
        conditions.append(AuditEvent.dataset.in_(sorted(datasets)))
    if projects:
        conditions.append(AuditEvent.project.in_(sorted(projects)))
    if not conditions:
        return query.where(AuditEvent.id.is_(None))  # nothing of theirs: an empty page
    return query.where(or_(*conditions))


def page_events(
    session: Session,
    filt: EventFilter,
    *,
    before: int | None = None,
    limit: int = PAGE_SIZE,
    datasets: Collection[str] | None = None,
    projects: Collection[str] | None = None,
) -> EventPage:
    """One page of events, newest first. The first page starts with events not sealed yet."""
    if before is not None and not 0 <= before <= MAX_SEQ:
        # A database integer holds no more (PostgreSQL would refuse the query, SQLite overflow).
        raise AuditError(
            f"'before' must be an event number between 0 and {MAX_SEQ}; use the page's links "
            "to page through the log."
        )
    page = EventPage(first_page=before is None)
    rows: list[AuditEvent] = []
    if before is None:
        unsealed = _scoped(filt.apply(select(AuditEvent)), datasets, projects).where(
            AuditEvent.seq.is_(None)
        )
        rows.extend(session.scalars(unsealed.order_by(AuditEvent.id.desc()).limit(limit)))
    room = limit - len(rows)
    if room > 0:
        sealed = _scoped(filt.apply(select(AuditEvent)), datasets, projects).where(
            AuditEvent.seq.is_not(None)
        )
        if before is not None:
            sealed = sealed.where(AuditEvent.seq < before)
        found = list(session.scalars(sealed.order_by(AuditEvent.seq.desc()).limit(room + 1)))
        if len(found) > room:
            found = found[:room]
            page.older = found[-1].seq
        rows.extend(found)
    page.events = [event_dict(r) for r in rows]
    return page


@dataclass(frozen=True)
class LogState:
    """What the log looks like now, without re-hashing it (that is ``verify_log``'s work)."""

    events: int
    unsealed: int
    oldest_unsealed: str | None
    checkpoint: dict[str, Any] | None
    checkpoint_signature_ok: bool | None
    public_key: str


def log_state(session: Session) -> LogState:
    cp = session.scalar(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1))
    unsealed, oldest = session.execute(
        select(func.count(), func.min(AuditEvent.time)).where(AuditEvent.seq.is_(None))
    ).one()
    public = audit_public_key(session)
    checkpoint = None
    signature_ok = None
    if cp is not None:
        checkpoint = {
            "tree_size": cp.tree_size,
            "root_hash": cp.root_hash,
            "time": cp.time,
            "key_id": cp.key_id,
            "signature": cp.signature,
        }
        message = checkpoint_message(cp.tree_size, cp.root_hash, cp.time)
        signature_ok = cp.key_id == key_id_of(bytes.fromhex(public)) and verify_signature(
            public, message, cp.signature
        )
    sealed = cp.tree_size if cp is not None else 0
    return LogState(
        events=sealed + int(unsealed),
        unsealed=int(unsealed),
        oldest_unsealed=oldest,
        checkpoint=checkpoint,
        checkpoint_signature_ok=signature_ok,
        public_key=public,
    )
