"""Running the platform on one machine (`spe up`): every long-running part, stopped by Ctrl-C.

So far: the audit sealer (in this process), a Celery worker for ingest, extraction and export
check jobs, and the SPE API (child processes). The hub joins here with the workspaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

import click

from spe.audit.seal import run_sealer
from spe.config import get_settings


def _start(command: str) -> subprocess.Popen[bytes]:
    logs = get_settings().state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{command}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "spe.cli", command],
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def maintenance(stop: threading.Event, every_seconds: float = 3600.0) -> None:
    """Periodic upkeep: deactivate accounts idle for SPE_INACTIVITY_DAYS (audited), and re-send
    jobs whose worker died or whose message the broker lost (every SPE_JOB_STALE_AFTER_SECONDS)."""
    import time

    from spe.accounts.service import deactivate_inactive
    from spe.db import transaction
    from spe.tasks import reap_stale_jobs

    settings = get_settings()
    last_accounts = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() - last_accounts >= every_seconds:
                with transaction() as session:
                    deactivate_inactive(session, settings.inactivity_days)
                last_accounts = time.monotonic()
            reap_stale_jobs()
        except Exception as exc:
            click.echo(f"maintenance: {exc}", err=True)
        stop.wait(settings.job_stale_after_seconds)


def run_platform(announce: bool = True) -> None:
    stop = threading.Event()

    def _on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    settings = get_settings()
    worker = _start("worker")
    api = _start("api")
    airlock = _start("airlock")
    threading.Thread(target=maintenance, args=(stop,), daemon=True, name="maintenance").start()
    if announce:
        click.echo(
            f"SPE is running: the audit sealer seals every {settings.seal_interval_seconds:g} s "
            f"and appends signed checkpoints to {settings.checkpoint_file}; a task worker "
            f"(pid {worker.pid}, log in {settings.state_dir / 'logs'}) runs ingest and "
            "extraction and export check jobs; the airlock serves running workspaces; the SPE "
            "API listens on "
            f"http://{settings.api_host}:{settings.api_port}/api/v1/docs."
        )
        click.echo("Press Ctrl-C to stop.")
    try:
        run_sealer(should_stop=stop.is_set)
    finally:
        _stop(airlock)
        _stop(api)
        _stop(worker)
    click.echo("SPE stopped cleanly.")
