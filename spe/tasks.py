"""The Celery app and its tasks. Tasks take job ids, not objects, and can run twice.

Embedded default: Celery's SQLAlchemy transport on a SQLite file in the state directory, so one
machine needs no broker. Production: Redis (``SPE_BROKER_URL=redis://...``). Delivery is
``acks_late`` with one message prefetched; besides, the job table is the source of truth: a
worker that starts re-sends jobs whose worker died (stale heartbeat), and a job already running
elsewhere or finished is skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from celery import Celery, signals
from kombu import pools

from spe.config import get_settings, mask_url
from spe.errors import SPEError
from spe.jobs import service as jobs

app = Celery("spe")
SQLALCHEMY_POLLING_SECONDS = 0.05


def configure() -> Celery:
    """(Re)configure the app from the current settings."""
    settings = get_settings()
    if settings.broker_url.startswith("sqla+sqlite:///"):
        Path(settings.broker_url.removeprefix("sqla+sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    if app.conf.broker_url not in (None, settings.broker_url):
        # Celery builds its connection and producer pools once, for the first broker it sees;
        # drop them, or a re-configured process keeps sending its jobs to the old broker.
        pools.reset()
        app._pool = None
        app.amqp._producer_pool = None
    app.conf.update(
        broker_url=settings.broker_url,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        beat_schedule={
            "egress-selftest": {
                "task": "spe.egress_selftest",
                "schedule": settings.egress_selftest_minutes * 60,
            },
            "refusal-summaries": {"task": "spe.summarise_refusals", "schedule": 60.0},
        },
    )
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Redeliver a message whose worker vanished after an hour at most; the job table
        # recovers much sooner (see reap_stale_jobs).
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    else:
        app.conf.broker_transport_options = {}
        # The SQLAlchemy transport polls its table; kombu's default 1 s was most of a DP query's
        # latency (the airlock waits for the answer). 50 ms: an idle worker's ~20 small reads/s.
        # (Its transport options go to create_engine, so the interval is set on the class.)
        from kombu.transport import sqlalchemy as kombu_sqlalchemy

        kombu_sqlalchemy.Transport.polling_interval = SQLALCHEMY_POLLING_SECONDS
    return app


configure()


def _ingest(params: dict[str, Any], progress: jobs.Progress) -> dict[str, Any]:
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy

    history = params.get("history")
    result = ingest(
        params["actor"],
        Path(params["source"]),
        load_policy(Path(params["policy"])),
        Path(history) if history else None,
        progress,
    )
    return asdict(result)


def _extract(params: dict[str, Any], progress: jobs.Progress) -> dict[str, Any]:
    from spe.projects.extracts import extract

    return asdict(extract(params["project"], params["dataset"], progress))


def _export_check(params: dict[str, Any], progress: jobs.Progress) -> dict[str, Any]:
    from spe.exports.actions import run_checks

    return run_checks(params["request"], int(params["round"]), progress)


def _dp_query(params: dict[str, Any], progress: jobs.Progress) -> dict[str, Any]:
    from spe.dp.service import run_query

    return run_query(str(progress.job_id), params)


WORK = {
    "ingest": _ingest,
    "extract": _extract,
    "export_check": _export_check,
    "dp_query": _dp_query,
}


@app.task(name="spe.run_job", bind=True)
def run_job(self: Any, job_id: str) -> None:
    view = jobs.get(job_id)
    jobs.run(job_id, WORK[view.kind])


@app.task(name="spe.reap_stale_jobs")
def reap_stale_jobs() -> list[str]:
    """Re-send jobs whose worker died; safe because a job runs only once it is claimed."""
    configure()  # the broker of the current settings (a no-op when it has not changed)
    stale = jobs.stale_jobs()
    for job_id in stale:
        run_job.delay(job_id)
    return stale


@app.task(name="spe.egress_selftest")
def egress_selftest() -> list[dict[str, Any]]:
    """Probe every running workspace's network from inside its namespace (see egress.py)."""
    from spe.workspaces.egress import selftest_running

    return selftest_running()


@app.task(name="spe.summarise_refusals")
def summarise_refusals() -> int:
    """Write the counts of refusals beyond the first per actor, reason and minute."""
    from spe.audit.refusals import summarise_refusals as summarise

    return summarise()


@signals.worker_ready.connect
def _recover_on_start(**_kwargs: Any) -> None:
    reap_stale_jobs()
    # A worker restarted soon after a crash finds the crashed job's heartbeat still fresh, and
    # the broker does not redeliver its message (SQLAlchemy: never; Redis: after an hour): look
    # again once that heartbeat has gone stale.
    reap_stale_jobs.apply_async(countdown=get_settings().job_stale_after_seconds + 1)


class BrokerError(SPEError):
    """The task broker cannot be reached."""

    exit_code = 5


def dispatch(job_id: str) -> None:
    """Send a job to the workers; an unreachable broker is a sentence, and the job stays
    queued in the job table (the platform's maintenance loop sends it again)."""
    from kombu.exceptions import OperationalError

    configure()
    try:
        run_job.apply_async((job_id,), retry=False)
    except (OperationalError, OSError) as exc:
        raise BrokerError(
            f"Cannot reach the task broker at {mask_url(get_settings().broker_url)} ({exc}); "
            f"job {job_id} is saved and `spe up` sends it once the broker is back, or run the "
            "command again with --inline."
        ) from None


def run_inline(job_id: str) -> jobs.JobView:
    """Run a job in this process (the CLI's --inline, tests, the demo's set-up)."""
    view = jobs.get(job_id)
    return jobs.run(job_id, WORK[view.kind])


def submit_and_dispatch(actor: Any, kind: str, params: dict[str, Any], inline: bool) -> str:
    from spe.db import transaction

    with transaction() as session:
        job = jobs.submit(session, actor, kind, params)
        job_id = str(job.id)
    if inline:
        run_inline(job_id)
    else:
        dispatch(job_id)
    return job_id


BEAT_LOCK = "celerybeat.lock"


def hold_beat_lock(state_dir: Path) -> Any | None:
    """The scheduler's lock file, held (open) by this process; None when another holds it.

    An flock ends with its process, however it ends: a killed worker frees it at once.
    """
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / BEAT_LOCK, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def start_beat_thread(state_dir: Path) -> Any | None:
    """Run the beat scheduler as a thread of this process, if no other process runs one.

    A thread, not Celery's ``--beat`` child process: that one outlived a killed worker, and a
    restarted worker then started a second (the egress self-test went out twice).
    """
    from celery.beat import EmbeddedService

    lock = hold_beat_lock(state_dir)
    if lock is None:
        import logging

        logging.getLogger("spe.tasks").info("another process runs the beat scheduler")
        return None
    beat = EmbeddedService(
        app, thread=True, schedule_filename=str(state_dir / "celerybeat-schedule")
    )
    beat._spe_lock = lock  # held as long as the scheduler
    beat.start()
    return beat


def worker_main(concurrency: int = 1, loglevel: str = "INFO") -> None:
    configure()
    # One machine needs one scheduler (the egress self-test, refusal summaries): a thread of
    # the worker that holds the lock, so it stops with its worker and two never run.
    start_beat_thread(Path(get_settings().state_dir))
    app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--concurrency={concurrency}",
            "--pool=solo" if concurrency == 1 else "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "--hostname=spe@%h",
        ]
    )


def describe(view: jobs.JobView) -> str:
    text = f"job {view.id} ({view.kind}): {view.status}"
    if view.total:
        text += f", {view.done:,}/{view.total:,} ({view.percent:.0f} %)"
    if view.error:
        text += f"\n  error: {view.error}"
    if view.result:
        text += "\n  result: " + json.dumps(view.result, sort_keys=True)
    return text
