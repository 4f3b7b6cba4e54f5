"""Submitting, claiming, running and recovering jobs.

A job is claimed with a conditional update, so two deliveries of the same task never run it at
once; a finished job is never run again; a running job whose heartbeat stopped (its worker
died) is claimable again. The work itself is idempotent (ingest and extraction write under a
key derived from their input), so a second run after a crash gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from spe.audit import record, state_change
from spe.db import transaction
from spe.db.base import utcnow
from spe.errors import NotFound, SPEError
from spe.jobs.models import Job

HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class JobView:
    id: str
    kind: str
    status: str
    done: int
    total: int
    result: dict[str, Any] | None
    error: str | None
    attempts: int

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0


def _view(job: Job) -> JobView:
    return JobView(
        str(job.id),
        job.kind,
        job.status,
        job.done,
        job.total,
        json.loads(job.result) if job.result else None,
        job.error,
        job.attempts,
    )


@state_change("job.submit")
def submit(session: Session, actor: Any, kind: str, params: dict[str, Any]) -> Job:
    job = Job(kind=kind, params=json.dumps(params, sort_keys=True), created_by=_name(actor))
    session.add(job)
    session.flush()
    record(session, actor, "job.submit", f"job:{job.id}", {"kind": kind, **params})
    return job


def _name(actor: Any) -> str:
    return actor if isinstance(actor, str) else actor.username


def get(job_id: str) -> JobView:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"{job_id!r} is not a job id.") from None
    with transaction() as session:
        job = session.get(Job, key)
        if job is None:
            raise NotFound(f"There is no job {job_id}.")
        return _view(job)


def _stale_after(value: float | None) -> float:
    from spe.config import get_settings

    return value if value is not None else get_settings().job_stale_after_seconds


def claim(job_id: str, stale_after: float | None = None) -> dict[str, Any] | None:
    """Mark the job running if nobody else is; returns its params, or None if not ours to run."""
    stale_after = _stale_after(stale_after)
    now = utcnow()
    stale = now - dt.timedelta(seconds=stale_after)
    with transaction() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == uuid.UUID(job_id),
                or_(
                    Job.status == "queued",
                    (Job.status == "running") & (Job.heartbeat_at < stale),
                ),
            )
            .values(
                status="running",
                started_at=now,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return json.loads(job.params)


class Progress:
    """Progress reports that double as the heartbeat (written at most every second)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = uuid.UUID(job_id)
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        finished = total > 0 and done >= total
        if now - self.last < HEARTBEAT_SECONDS and not finished:
            return
        self.last = now
        with transaction() as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(done=done, total=total, heartbeat_at=utcnow())
                .execution_options(synchronize_session=False)
            )


def finish(job_id: str, result: dict[str, Any] | None = None, error: str | None = None) -> None:
    with transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(
                status="failed" if error else "done",
                result=json.dumps(result) if result is not None else None,
                error=error,
                finished_at=utcnow(),
                heartbeat_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        )


def run(job_id: str, work: Callable[[dict[str, Any], Progress], dict[str, Any]]) -> JobView:
    """Claim and run a job; a user error fails the job with its sentence, a bug fails it as an
    internal error, and a killed worker leaves it running until its heartbeat goes stale, so
    another worker retries it."""
    params = claim(job_id)
    if params is not None:
        try:
            result = work(params, Progress(job_id))
        except SPEError as exc:
            finish(job_id, error=exc.message)
        except Exception as exc:
            # A bug, not bad input: the job fails visibly instead of being retried forever.
            finish(job_id, error=f"internal error ({type(exc).__name__}: {exc}); please report it")
            raise
        else:
            finish(job_id, result=result)
    return get(job_id)


def stale_jobs(stale_after: float | None = None) -> list[str]:
    """Jobs that should be running but whose worker is gone (or that were never picked up)."""
    stale_after = _stale_after(stale_after)
    stale = utcnow() - dt.timedelta(seconds=stale_after)
    with transaction() as session:
        rows = session.scalars(
            select(Job.id).where(
                or_(
                    (Job.status == "running") & (Job.heartbeat_at < stale),
                    (Job.status == "queued") & (Job.created_at < stale),
                )
            )
        )
        return [str(r) for r in rows]


def wait(
    job_id: str, on_progress: Callable[[JobView], None] | None = None, timeout: float | None = None
) -> JobView:
    started = time.monotonic()
    while True:
        view = get(job_id)
        if on_progress:
            on_progress(view)
        if view.status in ("done", "failed"):
            return view
        if timeout is not None and time.monotonic() - started > timeout:
            return view
        time.sleep(0.25)
