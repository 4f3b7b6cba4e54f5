"""Per-workspace quotas on the airlock (requests per window, bytes per UTC day) and the read
budget through the browser (bytes per UTC day), kept in the database.

Counters per workspace and window live in ``workspace_quota_windows``, so every airlock process
and replica shares them and a restart forgets nothing. Each charge is one upsert per counter in
one transaction (no read-then-write race): a request over a limit is taken back out of the
counter and refused. The first refusal of a kind on a UTC day inserts an alarm marker row in the
same table; only the caller that inserted it records the one alarm event. When the database
cannot be asked, the request is refused (fail closed), with a sentence and no alarm (there is
nowhere to write one).

The rate is a token bucket kept as one number, its "theoretical arrival time" (GCRA): each
request moves it 1/rate seconds on from max(itself, now), and a request that would move it more
than burst/rate seconds past now is refused (a notebook's "run all" fits in the burst).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, String, Table, delete, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from spe.db.base import Base

log = logging.getLogger("spe.airlock.quota")

RATE = "events_per_second"
VOLUME = "bytes_per_day"
READS = "read_bytes_per_day"
DAY = 86400

REFUSED_RATE = (
    "This workspace sent more than {limit:g} requests a second to SPE's audit log, so SPE refuses "
    "them for now (the cell did not run); slow the loop down, and ask the platform operator if "
    "you need more."
)
REFUSED_VOLUME = (
    "This workspace sent more than {limit} MiB to SPE's audit log today, so SPE refuses more "
    "until midnight UTC (the cell did not run); ask the platform operator."
)
REFUSED_READS = (
    "This workspace has shown {limit} MiB of files in the browser today, its daily limit; look "
    "at data in a notebook (summaries, not whole files), or ask the platform operator."
)
REFUSED_UNCHECKED = (
    "SPE cannot check this workspace's quota now (its database is not answering), so it "
    "refuses the request; try again in a minute, and ask the platform operator if it persists."
)


class QuotaWindow(Base):
    """How much one workspace used of one counter in one window (UTC seconds of its start).

    ``counter`` is a quota's name, or ``alarm:<quota>`` for the marker of the day's alarm."""

    __tablename__ = "workspace_quota_windows"

    workspace: Mapped[str] = mapped_column(String(140), primary_key=True)
    counter: Mapped[str] = mapped_column(String(48), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    used: Mapped[int] = mapped_column(BigInteger, default=0)


@dataclass(frozen=True)
class QuotaLimits:
    """A workspace's airlock quotas (from the settings)."""

    events_per_second: float
    burst: int
    bytes_per_day: int

    @classmethod
    def from_settings(cls) -> QuotaLimits:
        from spe.config import get_settings

        s = get_settings()
        return cls(
            s.workspace_airlock_events_per_second,
            s.workspace_airlock_burst,
            s.workspace_airlock_bytes_per_day,
        )


@dataclass(frozen=True)
class QuotaVerdict:
    """What a charge decided: no refusal when the request may go on."""

    refusal: str | None = None
    alarm: dict[str, Any] | None = None  # details of the one alarm event to record, if any


# Plain SQL, the same on PostgreSQL and SQLite (3.35+): built once, not per request (building
# the statement with the expression language cost more than running it).
_UPSERT = text(
    "INSERT INTO workspace_quota_windows (workspace, counter, window_start, used) "
    "VALUES (:workspace, :counter, :window, :floor + :amount) "
    "ON CONFLICT (workspace, counter, window_start) DO UPDATE SET used = "
    "CASE WHEN workspace_quota_windows.used > :floor THEN workspace_quota_windows.used "
    "ELSE :floor END + :amount "
    "RETURNING used"
)
_TAKE_BACK = text(
    "UPDATE workspace_quota_windows SET used = used - :amount "
    "WHERE workspace = :workspace AND counter = :counter AND window_start = :window"
)


def _upsert(
    conn: Connection, workspace: str, counter: str, window: int, amount: int, floor: int = 0
) -> int:
    """Add ``amount`` to a counter (created at 0; raised to ``floor`` first) and return its new
    value, atomically."""
    params = {"workspace": workspace, "counter": counter, "window": window}
    return int(conn.execute(_UPSERT, {**params, "amount": amount, "floor": floor}).scalar_one())


def _take_back(conn: Connection, workspace: str, counter: str, window: int, amount: int) -> None:
    params = {"workspace": workspace, "counter": counter, "window": window, "amount": amount}
    conn.execute(_TAKE_BACK, params)


def _first_alarm(conn: Connection, workspace: str, kind: str, day: int) -> bool:
    """True for the one caller that marks ``kind``'s alarm of this day."""
    return _upsert(conn, workspace, f"alarm:{kind}", day, 1) == 1


def _forget_old(conn: Connection, workspace: str, day: int) -> None:
    """Windows before yesterday are of no use (the alarm events stay in the audit log)."""
    table: Table = QuotaWindow.__table__  # type: ignore[assignment]
    conn.execute(
        delete(table).where(
            table.c.workspace == workspace,
            table.c.window_start > 0,  # the rate's bucket is window 0, kept
            table.c.window_start < day - DAY,
        )
    )


def _engine() -> Any:
    from spe.db.session import get_engine

    return get_engine()


class AirlockQuota:
    """The airlock quotas of every workspace, kept in the database (shared by every airlock
    process; thread-safe). ``scope`` separates the kernel's requests from the recorder's."""

    def __init__(self, limits: QuotaLimits | None = None, scope: str = "airlock") -> None:
        self._limits = limits
        self.scope = scope

    @property
    def limits(self) -> QuotaLimits:
        # Read each time unless fixed: the settings are cached, and an operator's change applies
        # after the usual restart.
        return self._limits or QuotaLimits.from_settings()

    def charge(self, workspace: str, nbytes: int, now: float | None = None) -> QuotaVerdict:
        """Count one request of ``nbytes`` from ``workspace``; refuse it when over a quota."""
        try:
            with _engine().begin() as conn:
                return self.charge_on(conn, workspace, nbytes, now)
        except Exception:
            log.exception("the quota of %s could not be checked", workspace)
            return QuotaVerdict(REFUSED_UNCHECKED)

    def charge_on(
        self, conn: Connection, workspace: str, nbytes: int, now: float | None = None
    ) -> QuotaVerdict:
        """:meth:`charge` in the caller's transaction, so that a request and its count commit
        together (one commit per record, not two); raises when the database cannot be asked,
        and the caller refuses (fail closed)."""
        limits = self.limits
        now = time.time() if now is None else now
        day = int(now // DAY) * DAY
        now_us, step_us = int(now * 1e6), max(1, int(1e6 / limits.events_per_second))
        rate, volume = f"{self.scope}:rate", f"{self.scope}:bytes"
        used_bytes = _upsert(conn, workspace, volume, day, nbytes)
        # The bucket's arrival time, in microseconds (window 0: one row per workspace).
        arrival = _upsert(conn, workspace, rate, 0, step_us, floor=now_us)
        if used_bytes == nbytes:  # the day's first request: tidy up
            _forget_old(conn, workspace, day)
        kind: str | None = None
        if used_bytes > limits.bytes_per_day:
            kind = VOLUME
        elif arrival - now_us > limits.burst * step_us:
            kind = RATE
        if kind is None:
            return QuotaVerdict()
        _take_back(conn, workspace, volume, day, nbytes)
        _take_back(conn, workspace, rate, 0, step_us)
        first = _first_alarm(conn, workspace, f"{self.scope}:{kind}", day)
        if kind == VOLUME:
            refusal = REFUSED_VOLUME.format(limit=round(limits.bytes_per_day / (1 << 20), 2))
            limit: float = limits.bytes_per_day
        else:
            refusal = REFUSED_RATE.format(limit=limits.events_per_second)
            limit = limits.events_per_second
        alarm = None
        if first:
            alarm = {
                "quota": kind,
                "limit": limit,
                "burst": limits.burst,
                "bytes_today": used_bytes - nbytes,
                "refused_bytes": nbytes,
            }
        return QuotaVerdict(refusal, alarm)


# --- the read budget through the browser ---------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _policy_read_limit(path: str, mtime_ns: int) -> int | None:
    from spe.ingest.policy import load_policy

    return load_policy(Path(path)).read_bytes_per_day


def dataset_read_limit(dataset: str) -> int | None:
    """The dataset policy's daily read budget (policies/datasets/<dataset>.yaml), if it sets one.

    A policy that cannot be read is an error here: the caller refuses (fail closed)."""
    from spe.config import get_settings

    path = Path(get_settings().policies_dir) / "datasets" / f"{dataset}.yaml"
    if not path.exists():
        return None
    return _policy_read_limit(str(path), path.stat().st_mtime_ns)


def read_limit(project: str) -> tuple[int, str | None]:
    """A workspace of ``project``'s daily read budget: the settings' or, where stricter, that
    of a granted dataset's policy; and which dataset set it (None: the settings)."""
    from spe.config import get_settings
    from spe.db import readonly
    from spe.projects.extracts import granted_datasets
    from spe.projects.service import get_project

    limit, by = get_settings().workspace_read_bytes_per_day, None
    with readonly() as session:
        datasets = granted_datasets(session, get_project(session, project))
    for name in datasets:
        own = dataset_read_limit(name)
        if own is not None and own < limit:
            limit, by = own, name
    return limit, by


def charge_read(
    workspace: str, project: str, username: str, details: dict[str, Any], now: float | None = None
) -> dict[str, Any] | None:
    """Count a read through the browser (``details["counted_bytes"]``, set by the recorder:
    files other than notebooks) against the workspace's budget of the UTC day.

    None when it may be shown; else the answer for the recorder, whose ``refusal`` is the
    sentence for the user. The day's first refusal writes the one alarm event, in the same
    transaction as its marker. Anything that cannot be checked is refused."""
    from spe.audit.log import record

    counted = details.get("counted_bytes", 0)
    if not isinstance(counted, int) or isinstance(counted, bool) or counted < 0:
        return {"ok": False, "error": "The read's counted_bytes must be a whole number."}
    if counted == 0:
        return None
    now = time.time() if now is None else now
    day = int(now // DAY) * DAY
    try:
        limit, by = read_limit(project)
        with _engine().begin() as conn:
            used = _upsert(conn, workspace, READS, day, counted)
            if used <= limit:
                return None
            _take_back(conn, workspace, READS, day, counted)
            if _first_alarm(conn, workspace, READS, day):
                alarm = {
                    "source": "recorder",
                    "reason": "daily read budget",
                    "path": str(details.get("path", ""))[:1024],
                    "bytes": counted,
                    "used_today": used - counted,
                    "limit": limit,
                    "limit_from": f"dataset policy {by}" if by else "settings",
                }
                record(
                    conn,
                    username,
                    "workspace.read_alarm",
                    f"workspace:{workspace}",
                    alarm,
                    project=project,
                    dataset=by,
                )
    except Exception:
        log.exception("the read budget of %s could not be checked", workspace)
        return {"ok": False, "error": REFUSED_UNCHECKED}
    sentence = REFUSED_READS.format(limit=round(limit / (1 << 20), 2))
    return {"ok": False, "error": sentence, "refusal": sentence}
