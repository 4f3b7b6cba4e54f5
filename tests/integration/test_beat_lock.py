"""The beat scheduler lives and dies with its worker, and two never run: a real `spe worker`
holds the scheduler's lock; a killed worker leaves no scheduler process behind and frees the
lock at once, so the next worker (and only it) schedules."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spe.tasks import BEAT_LOCK, hold_beat_lock

pytestmark = pytest.mark.slow


def _held_elsewhere(lock: Path) -> bool:
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _children(pid: int) -> list[int]:
    found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_only_one_process_holds_the_scheduler_lock(tmp_path: Path) -> None:
    held = hold_beat_lock(tmp_path)
    assert held is not None
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from spe.tasks import hold_beat_lock; "
            "sys.exit(0 if hold_beat_lock(Path(sys.argv[1])) is None else 1)",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert other.returncode == 0, other.stderr  # refused while this process holds it
    held.close()
    assert not _held_elsewhere(tmp_path / BEAT_LOCK)


def test_a_killed_worker_leaves_no_scheduler_and_frees_its_lock(
    spe_env: dict[str, str], tmp_path: Path
) -> None:
    state = Path(spe_env["SPE_STATE_DIR"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")} | spe_env
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "spe.cli", "worker"], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while not _held_elsewhere(state / BEAT_LOCK):
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker never took the scheduler's lock"
            time.sleep(0.2)
        time.sleep(1.0)  # let the scheduler run (Celery's --beat started its child by now)
        children = _children(worker.pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        time.sleep(0.5)
        assert [pid for pid in children if _alive(pid)] == []
        assert not _held_elsewhere(state / BEAT_LOCK)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
