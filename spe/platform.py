"""Running the platform on one machine (`spe up`): every long-running part, stopped by Ctrl-C.

So far that is the audit sealer; later parts (hub, API, worker) join here.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from spe.audit.seal import run_sealer
from spe.config import get_settings


def run_platform(announce: bool = True) -> None:
    stop = threading.Event()

    def _stop(_sig: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    settings = get_settings()
    if announce:
        click.echo(
            f"SPE is running: the audit sealer seals every {settings.seal_interval_seconds:g} s "
            f"and appends signed checkpoints to {settings.checkpoint_file}."
        )
        click.echo("Press Ctrl-C to stop.")
    run_sealer(should_stop=stop.is_set)
    click.echo("SPE stopped cleanly.")
