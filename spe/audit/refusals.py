"""Refusals in the audit log: every refused request writes one event with its sentence, in a
transaction of its own (the refused one has rolled back), and a flood is summarised: one event
per actor and reason per minute, the rest counted and written as one ``request.refused_more``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import String, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from spe.db.base import Base

REFUSED = "request.refused"
REFUSED_MORE = "request.refused_more"
# The attribute an exception carries once its refusal is in the log (recorded once only).
_RECORDED_ATTR = "_spe_refusal_recorded"


class RefusalTally(Base):
    """How many times one actor was refused for one reason in one minute.

    Bookkeeping only: the first refusal of the minute is an audit event, and the count of the
    others becomes one when the minute is summarised.
    """

    __tablename__ = "audit_refusal_tallies"

    actor: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute: Mapped[str] = mapped_column(String(16), primary_key=True)  # 2026-01-02T03:04
    action: Mapped[str] = mapped_column(String(200))
    sentence: Mapped[str] = mapped_column(String(1000))
    count: Mapped[int] = mapped_column(default=1)


def _minute(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")


def _clean(text: Any, limit: int) -> str:
    """Printable text for the log (a refused request's input may be anything)."""
    value = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return value[:limit]


def record_refusal(
    actor: Any,
    action: str,
    target: str,
    sentence: str,
    *,
    now: dt.datetime | None = None,
    **context: Any,
) -> bool:
    """Write that ``actor`` was refused ``action`` on ``target`` with ``sentence``.

    Runs its own transaction, so call it after the refused transaction has rolled back. The
    first refusal per actor and reason (action and sentence) in a minute is an event
    ``request.refused``; later ones that minute are counted and summarised. Returns whether an
    event was written now. Never raises for a database problem: a refusal is still refused.
    """
    from spe.audit.log import actor_name, record
    from spe.db.session import get_engine

    now = now or dt.datetime.now(dt.UTC)
    who = _clean(actor_name(actor), 200)
    action = _clean(action, 200)
    sentence = _clean(sentence, 1000)
    target = _clean(target, 500)
    reason = hashlib.sha256(f"{action}\n{sentence}".encode()).hexdigest()
    minute = _minute(now)
    details = {"action": action, "sentence": sentence}
    details.update({k: _clean(v, 500) for k, v in context.items() if v is not None})
    try:
        with get_engine().begin() as conn:
            _summarise(conn, who, reason, before=minute)
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(RefusalTally).values(
                            actor=who,
                            reason_sha256=reason,
                            minute=minute,
                            action=action,
                            sentence=sentence,
                            count=1,
                        )
                    )
            except IntegrityError:  # already refused for this reason this minute: count it
                conn.execute(
                    update(RefusalTally)
                    .where(
                        RefusalTally.actor == who,
                        RefusalTally.reason_sha256 == reason,
                        RefusalTally.minute == minute,
                    )
                    .values(count=RefusalTally.count + 1)
                )
                return False
            record(conn, who, REFUSED, target, details)
            return True
    except Exception:  # the log's problem must not turn a refusal into an internal error
        import logging

        logging.getLogger("spe.audit").warning("could not record a refusal", exc_info=True)
        return False


def _summarise(conn: Any, actor: str | None, reason: str | None, before: str) -> int:
    """Write the counts of minutes before ``before`` as events; returns how many."""
    from spe.audit.log import record

    query = select(RefusalTally).where(RefusalTally.minute < before)
    if actor is not None:
        query = query.where(RefusalTally.actor == actor, RefusalTally.reason_sha256 == reason)
    rows = conn.execute(query).all()
    written = 0
    for row in rows:
        if row.count > 1:
            record(
                conn,
                row.actor,
                REFUSED_MORE,
                "audit-log",
                {
                    "action": row.action,
                    "sentence": row.sentence,
                    "minute": row.minute,
                    "more": row.count - 1,
                },
            )
            written += 1
        conn.execute(
            delete(RefusalTally).where(
                RefusalTally.actor == row.actor,
                RefusalTally.reason_sha256 == row.reason_sha256,
                RefusalTally.minute == row.minute,
            )
        )
    return written


def summarise_refusals(now: dt.datetime | None = None) -> int:
    """Summarise every minute that has ended (the beat runs this each minute); returns how many
    summary events were written."""
    from spe.db.session import get_engine

    with get_engine().begin() as conn:
        return _summarise(conn, None, None, before=_minute(now or dt.datetime.now(dt.UTC)))


def refusal_recorded(error: BaseException) -> bool:
    return bool(getattr(error, _RECORDED_ATTR, False))


def record_refusal_of(
    error: BaseException, actor: Any, action: str, target: str = "", **context: Any
) -> None:
    """Record ``error`` (an SPEError that refused ``actor``) once, however many handlers see it.

    A PermissionDenied raised by ``check_can`` names its own action and target; they win over
    the ``action``/``target`` the handler knows (a command or a route).
    """
    if refusal_recorded(error):
        return
    setattr(error, _RECORDED_ATTR, True)
    own_action = getattr(error, "refused_action", None)
    own_target = getattr(error, "refused_target", None)
    if own_action:
        context.setdefault("via", action)
    record_refusal(
        actor,
        own_action or action,
        own_target or target or "-",
        str(getattr(error, "message", error)),
        kind=type(error).__name__,
        **context,
    )
