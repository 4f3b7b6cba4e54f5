"""Per-workspace quotas on the airlock: requests per second (a token bucket) and bytes per UTC day.

A workspace over either quota is refused (fail closed: a cell that cannot be recorded does not
run) and one alarm event per quota and day is recorded; refused requests write nothing else.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Any

RATE = "events_per_second"
VOLUME = "bytes_per_day"

REFUSED_RATE = (
    "This workspace sent more than {limit:g} requests a second to SPE's audit log, so SPE refuses "
    "them for now (the cell did not run); slow the loop down, and ask the platform operator if "
    "you need more."
)
REFUSED_VOLUME = (
    "This workspace sent more than {limit} MiB to SPE's audit log today, so SPE refuses more "
    "until midnight UTC (the cell did not run); ask the platform operator."
)


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


@dataclass
class _Usage:
    tokens: float
    refilled: float
    day: dt.date
    bytes_today: int = 0
    alarmed: set[tuple[str, dt.date]] = field(default_factory=set)


@dataclass(frozen=True)
class QuotaVerdict:
    """What :meth:`AirlockQuota.charge` decided: None reason when the request may go on."""

    refusal: str | None = None
    alarm: dict[str, Any] | None = None  # details of the one alarm event to record, if any


class AirlockQuota:
    """The quotas of every workspace this airlock process serves (thread-safe).

    In this process's memory: with several airlock replicas each enforces the limits on what it
    receives, and a restart starts the day's byte count afresh (the alarm events stay).
    """

    def __init__(self, limits: QuotaLimits | None = None) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    @property
    def limits(self) -> QuotaLimits:
        # Read each time unless fixed: the settings are cached, and an operator's change applies
        # after the usual restart.
        return self._limits or QuotaLimits.from_settings()

    def charge(self, workspace: str, nbytes: int) -> QuotaVerdict:
        """Count one request of ``nbytes`` from ``workspace``; refuse it when over a quota."""
        limits = self.limits
        now = time.monotonic()
        today = dt.datetime.now(dt.UTC).date()
        with self._lock:
            usage = self._usage.get(workspace)
            if usage is None:
                usage = _Usage(float(limits.burst), now, today)
                self._usage[workspace] = usage
            if usage.day != today:
                usage.day, usage.bytes_today = today, 0
            usage.tokens = min(
                float(limits.burst),
                usage.tokens + (now - usage.refilled) * limits.events_per_second,
            )
            usage.refilled = now
            kind: str | None = None
            if usage.bytes_today + nbytes > limits.bytes_per_day:
                kind = VOLUME
            elif usage.tokens < 1.0:
                kind = RATE
            if kind is None:
                usage.tokens -= 1.0
                usage.bytes_today += nbytes
                return QuotaVerdict()
            first = (kind, today) not in usage.alarmed
            usage.alarmed.add((kind, today))
            bytes_today = usage.bytes_today
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
                "bytes_today": bytes_today,
                "refused_bytes": nbytes,
            }
        return QuotaVerdict(refusal, alarm)
