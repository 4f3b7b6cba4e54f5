"""The egress self-test, for real: a probe in a bubblewrap sandbox's network namespace reaches
nothing (no alarm); a probe in a process that shares the host's network reaches a listening
host service, which raises the alarm and stops the workspace."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from spe.audit.models import AuditEvent
from spe.db import readonly
from spe.workspaces.egress import sandbox_pid, selftest

pytestmark = pytest.mark.skipif(
    (shutil.which("bwrap") is None or os.geteuid() != 0) and not os.environ.get("CI"),
    reason="needs bubblewrap and root (nsenter into another network namespace)",
)


@pytest.fixture
def listener() -> Iterator[int]:
    """A service listening on the host's loopback, as the database or the hub would."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield int(server.getsockname()[1])
    server.close()


def start_sandboxed(home: Path) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            "bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
            "--bind", str(home), "/home/researcher", "--", "/usr/bin/sleep", "60",
        ]
    )  # fmt: skip


def wait_for_pid(home: Path) -> int:
    deadline = time.monotonic() + 10
    while (pid := sandbox_pid(home)) is None:
        assert time.monotonic() < deadline, "the sandboxed process did not appear"
        time.sleep(0.05)
    return pid


def events(action: str) -> list[dict]:
    with readonly() as s:
        return [
            json.loads(e.details)
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == action))
        ]


def test_a_sandboxed_workspace_reaches_nothing_and_raises_no_alarm(world, tmp_path, listener):
    sandbox = start_sandboxed(tmp_path / "home")
    try:
        pid = wait_for_pid(tmp_path / "home")
        stopped: list[str] = []
        targets = [("host service", "tcp", "127.0.0.1", listener),
                   ("public DNS over UDP", "udp-dns", "8.8.8.8", 53),
                   ("name resolution", "resolve", "example.com", 443)]  # fmt: skip
        (outcome,) = selftest(
            [("study--researcher", "study", "researcher", pid)],
            lambda name, why: stopped.append(name),
            targets,
        )
        assert not outcome["alarm"] and outcome["tried"] == 3 and stopped == []
        assert events("workspace.egress_ok")[0]["pid"] == pid
    finally:
        sandbox.kill()
        sandbox.wait()


def test_a_workspace_that_reaches_the_host_raises_the_alarm_and_is_stopped(world, listener):
    leaky = subprocess.Popen(["/usr/bin/sleep", "60"])  # shares the host's network
    try:
        stopped: list[tuple[str, str]] = []
        (outcome,) = selftest(
            [("study--researcher", "study", "researcher", leaky.pid)],
            lambda name, why: stopped.append((name, why)),
            [("host service", "tcp", "127.0.0.1", listener)],
        )
        assert outcome["alarm"]
        assert stopped and stopped[0][0] == "study--researcher"
        assert f"127.0.0.1:{listener}" in stopped[0][1]
        (alarm,) = events("workspace.egress_alarm")
        assert alarm["reached"] == [f"host service (127.0.0.1:{listener})"]
    finally:
        leaky.kill()
        leaky.wait()
