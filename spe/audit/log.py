"""Recording audit events inside the caller's transaction, and the guard that enforces it.

``record()`` queues an event on the session; the events are inserted (one multi-row insert)
when the session flushes or commits, so the state change and its event commit or roll back
together. A transaction that changes any other table without recording an event is refused
at commit: no change without its event.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, event, insert
from sqlalchemy.orm import ORMExecuteState, Session

from spe.audit.canonical import CanonicalisationError, canonical_details
from spe.audit.models import AuditCheckpoint, AuditEvent
from spe.errors import SPEError

_PENDING = "spe_audit_pending"
_RECORDED = "spe_audit_recorded"
_CHANGED = "spe_state_changed"
AUDIT_TABLES = frozenset({AuditEvent.__tablename__, AuditCheckpoint.__tablename__})
# Tables whose writes need no event of their own: the log itself, and job bookkeeping (progress
# and heartbeats of work whose submission and result are audited).
EXEMPT_TABLES = AUDIT_TABLES | {"jobs"}
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
# Any data-changing SQL statement and the table it changes, however it was issued.
_DML = re.compile(
    r"^\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM|"
    r"REPLACE\s+INTO|MERGE\s+INTO|TRUNCATE(?:\s+TABLE)?)\s+(?:ONLY\s+)?"
    r'(?:"?\w+"?\.)?"?(\w+)"?',
    re.IGNORECASE,
)
_insert_events = insert(AuditEvent.__table__)  # type: ignore[arg-type]


class AuditError(SPEError):
    """The audit log refuses or finds a problem; the message says what."""

    exit_code = 7


def now_text() -> str:
    """The current UTC time in the fixed-width form audit events store."""
    # isoformat(timespec) is fixed-width and faster than strftime.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def actor_name(actor: Any) -> str:
    if isinstance(actor, str):
        return actor
    username = getattr(actor, "username", None)
    if isinstance(username, str):
        return username
    raise AuditError("An audit event needs an actor: a user or a 'system:...' name.")


def record(
    session: Session | Connection,
    actor: Any,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
    *,
    project: str | None = None,
    dataset: str | None = None,
) -> None:
    """Append an event to the log as part of the caller's transaction.

    With an ORM session the event is queued and inserted at flush or commit (one multi-row
    insert per transaction). With a Core connection, for events that change nothing else
    (logins, reads, cell audit), it is inserted at once; the connection's transaction commits
    or rolls it back.
    """
    if not _ACTION.match(action):
        raise AuditError(f"Audit action {action!r} must look like 'noun.verb' in lower case.")
    actor_text = actor_name(actor)
    for label, text in (
        ("actor", actor_text),
        ("target", target),
        ("project", project),
        ("dataset", dataset),
    ):
        if text is not None and not _clean_text(str(text)):
            raise AuditError(
                f"The {label} of audit event {action} is not clean text (NUL or invalid Unicode)."
            )
    try:
        details_text = canonical_details(details)
    except CanonicalisationError as exc:
        raise AuditError(f"The details of audit event {action} {exc}.") from None
    row = {
        "time": now_text(),
        "actor": actor_text,
        "action": action,
        "target": target,
        "project": None if project is None else str(project),
        "dataset": None if dataset is None else str(dataset),
        "details": details_text,
    }
    if isinstance(session, Connection):
        if not session.in_transaction():
            raise AuditError("record() on a connection needs an open transaction (engine.begin()).")
        session.execute(_insert_events, row)
        return
    info = session.info
    pending = info.get(_PENDING)
    if pending is None:
        pending = info[_PENDING] = []
    pending.append(row)
    info[_RECORDED] = info.get(_RECORDED, 0) + 1


def _clean_text(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def recorded_count(session: Session) -> int:
    """How many events this transaction has recorded so far."""
    return int(session.info.get(_RECORDED, 0))


def flush_events(session: Session) -> None:
    """Insert the queued events now (they are otherwise inserted at flush or commit)."""
    pending = session.info.get(_PENDING)
    if pending:
        session.info[_PENDING] = []
        session.connection().execute(_insert_events, pending)


def _mark_changed(session: Session) -> None:
    if session.info.get("spe_readonly"):
        raise AuditError("A read-only transaction tried to change data.")
    session.info[_CHANGED] = session.info.get(_CHANGED, 0) + 1


def _before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
    for obj in (*session.new, *session.deleted, *session.dirty):
        table = getattr(getattr(obj, "__table__", None), "name", None)
        if table in EXEMPT_TABLES:
            continue
        if obj in session.dirty and not session.is_modified(obj):
            continue
        _mark_changed(session)
        break


def _before_flush_events(session: Session, _ctx: Any, _instances: Any) -> None:
    flush_events(session)


def _on_execute(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) not in EXEMPT_TABLES:
            _mark_changed(state.session)


def _before_cursor_execute(
    conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
) -> None:
    match = _DML.match(statement)
    if match and match.group(1).lower() not in EXEMPT_TABLES:
        conn.info[_CHANGED] = conn.info.get(_CHANGED, 0) + 1


def _after_begin(_session: Session, _transaction: Any, connection: Any) -> None:
    connection.info[_CHANGED] = 0


def _before_commit(session: Session) -> None:
    session.flush()
    flush_events(session)
    raw_changes = session.connection().info.get(_CHANGED, 0)
    if raw_changes and session.info.get("spe_readonly"):
        raise AuditError("A read-only transaction tried to change data.")
    if (session.info.get(_CHANGED) or raw_changes) and not session.info.get(_RECORDED):
        raise AuditError(
            "This transaction changed data without recording an audit event, so it was "
            "rolled back; every state change must call spe.audit.record()."
        )


def _clear(session: Session, *_args: Any) -> None:
    for key in (_PENDING, _RECORDED, _CHANGED):
        session.info.pop(key, None)


def install_engine(engine: Engine) -> None:
    """Count every data-changing statement on ``engine``'s connections, raw SQL included."""
    event.listen(engine, "before_cursor_execute", _before_cursor_execute)


def install(session_class: type[Session]) -> None:
    """Install the audit guard on a session class (done once for SPESession)."""
    event.listen(session_class, "after_begin", _after_begin)
    event.listen(session_class, "before_flush", _before_flush)
    event.listen(session_class, "before_flush", _before_flush_events)
    event.listen(session_class, "do_orm_execute", _on_execute)
    event.listen(session_class, "before_commit", _before_commit)
    event.listen(session_class, "after_commit", _clear)
    event.listen(session_class, "after_rollback", _clear)
    event.listen(session_class, "after_soft_rollback", _clear)


# ---------------------------------------------------------------------------------------------
# The register of state-changing functions: each public function that changes state is marked
# with @state_change("noun.verb"); at run time it must record at least one event, and a test
# walks the register and exercises every entry.

P = ParamSpec("P")
R = TypeVar("R")
STATE_CHANGES: dict[str, Callable[..., Any]] = {}


def state_change(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a public function as state-changing; whenever it changes anything it must record
    an event (``action`` names the main one)."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            session = args[0] if args else kwargs.get("session")
            if not isinstance(session, Session):
                raise TypeError(f"{func.__qualname__} must take the session first")
            before = recorded_count(session)
            changes = session.info.get(_CHANGED, 0)
            result = func(*args, **kwargs)
            session.flush()
            changed = session.info.get(_CHANGED, 0) > changes
            if changed and recorded_count(session) == before:
                raise AuditError(
                    f"{func.__module__}.{func.__qualname__} changed state without an audit "
                    "event; the transaction is rolled back."
                )
            return result

        wrapper.__spe_action__ = action  # type: ignore[attr-defined]
        STATE_CHANGES[f"{func.__module__}.{func.__qualname__}"] = wrapper
        return wrapper

    return decorate
