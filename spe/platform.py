"""Running the platform on one machine (`spe up`): every long-running part, stopped by Ctrl-C.

Child processes: JupyterHub (which runs the SPE API, the task worker with its beat schedule and
the idle culler as managed services, and spawns the workspaces), the front door (nginx before
the hub's proxy) and the airlock. In this process: the audit sealer and a maintenance thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from spe.audit.seal import run_sealer
from spe.config import get_settings


def _start(*command: str) -> subprocess.Popen[bytes]:
    logs = Path(get_settings().state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{command[0]}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "spe.cli", *command],
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _stop(child: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if child.poll() is not None:
        return
    os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _name(child: subprocess.Popen[bytes]) -> str:
    args = child.args
    if isinstance(args, list | tuple):
        return " ".join(str(a) for a in args[-3:])
    return str(args)


def front_door_spec() -> Any:
    from spe.workspaces.front_door import FrontDoor

    settings = get_settings()
    state = Path(settings.state_dir).resolve()
    return FrontDoor(
        listen_port=settings.hub_port,
        upstream_port=settings.hub_proxy_port,
        folder=state / "front-door",
        access_log=state / "logs" / "front-door.jsonl",
        error_log=state / "logs" / "front-door-error.log",
        as_root=os.geteuid() == 0,
    )


def maintenance(stop: threading.Event, every_seconds: float = 3600.0) -> None:
    """Periodic upkeep: deactivate accounts idle for SPE_INACTIVITY_DAYS (audited), re-send jobs
    whose worker died or whose message the broker lost, and ship the front door's contents reads
    into the audit log."""
    from spe.accounts.service import deactivate_inactive
    from spe.db import transaction
    from spe.tasks import reap_stale_jobs
    from spe.workspaces.front_door import ship_reads

    settings = get_settings()
    door = front_door_spec()
    last_accounts = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() - last_accounts >= every_seconds:
                with transaction() as session:
                    deactivate_inactive(session, settings.inactivity_days)
                last_accounts = time.monotonic()
            reap_stale_jobs()
            ship_reads(door.access_log, door.folder / "shipped-offset")
        except Exception as exc:
            click.echo(f"maintenance: {exc}", err=True)
        stop.wait(min(settings.job_stale_after_seconds, 5.0))


def run_platform(announce: bool = True) -> None:
    from spe.workspaces import front_door

    stop = threading.Event()

    def _on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    settings = get_settings()
    door = front_door_spec()
    public = f"http://127.0.0.1:{settings.hub_port}/"
    children: list[subprocess.Popen[bytes]] = []
    try:
        children.append(_start("airlock"))
        children.append(_start("hub", "--public-url", public))
        children.append(front_door.start(door))
    except BaseException:
        for child in reversed(children):
            _stop(child)
        raise
    threading.Thread(target=maintenance, args=(stop,), daemon=True, name="maintenance").start()
    if announce:
        logs = Path(settings.state_dir) / "logs"
        click.echo(
            f"SPE is running at {public} (log in there). Behind it: JupyterHub with the "
            f"workspaces, the SPE API (http://{settings.api_host}:{settings.api_port}/api/v1/docs)"
            ", the task worker, the airlock, and the audit sealer (signed checkpoints to "
            f"{settings.checkpoint_file}). Logs: {logs}."
        )
        click.echo("Press Ctrl-C to stop.")
    try:
        run_sealer(should_stop=lambda: stop.is_set() or any(c.poll() is not None for c in children))
    finally:
        died = [_name(c) for c in children if c.poll() is not None]
        for child in reversed(children):
            _stop(child)
    if died and not stop.is_set():
        click.echo(f"SPE stopped because a part of it ended: {died[0]}; see the logs.", err=True)
        sys.exit(1)
    click.echo("SPE stopped cleanly.")
