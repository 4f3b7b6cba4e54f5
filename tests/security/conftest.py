"""Fixtures for escape tests: real bubblewrap sandboxes over a fake platform in tmp_path.

Each workspace gets the host folders the layout names (under a temporary SPE_STATE_DIR), fake
extracts, a fake platform key and database, and live unix sockets where the airlock and the
notebook server would listen. Without bwrap or the workspace env the tests skip; under CI they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from spe.config import get_settings, reset_settings
from spe.workspaces import layout
from spe.workspaces.sandbox import BWRAP, SandboxSpec
from spe.workspaces.sandbox_run import (
    SandboxLimits,
    cgroups_available,
    remove_workspace_user,
    start_sandbox,
    stop_sandbox,
    workspace_user,
)

IN_CI = bool(os.environ.get("CI"))
SECRET_KEY = "c2VjcmV0LXBsYXRmb3JtLWtleS1uZXZlci1pbi1hLXdvcmtzcGFjZQ=="
LIMITS = SandboxLimits(memory_mb=512, pids_max=128, cpus=1.0)

# Helpers every attack program starts with: `attempt` records what happened to one try, so a
# program reports every try as JSON (its last line of output) instead of dying at the first.
PRELUDE = r"""
import ctypes, errno, json, os, socket, sys
R = {}
def _plain(value):
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)
def attempt(name, fn, *args):
    try:
        value = fn(*args)
    except OSError as exc:
        R[name] = {"ok": False, "errno": errno.errorcode.get(exc.errno, str(exc.errno))}
    except Exception as exc:
        R[name] = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
    else:
        R[name] = {"ok": True, "value": _plain(value)}
libc = ctypes.CDLL(None, use_errno=True)
def syscall(nr, *args):
    res = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if res == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return res
def read(path):
    with open(path, "rb") as f:
        return f.read(200)
def listdir(path):
    return sorted(os.listdir(path))
def connect_tcp(host, port, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect((host, port))
    return "connected"
def connect_unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(path)
    return "connected"
HOST = json.loads(sys.argv[1])
"""
EPILOGUE = "\nprint(json.dumps(R))\n"


def _unavailable() -> str | None:
    if not Path(BWRAP).exists():
        return f"bubblewrap is not installed ({BWRAP}): apt-get install -y bubblewrap"
    env = Path(get_settings().workspace_env_dir)
    if not (env / "bin" / "python").exists():
        return f"the workspace environment {env} is missing: run scripts/workspace-env.sh"
    probe = subprocess.run(
        [
            *(BWRAP, "--unshare-all", "--unshare-user", "--ro-bind", "/usr", "/usr"),
            *("--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"),
            "/usr/bin/true",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"bubblewrap cannot create its namespaces here: {probe.stderr.strip()}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "security: starts real sandboxes and tries to escape")


@pytest.fixture(scope="session")
def sandbox_ready() -> None:
    reason = _unavailable()
    if reason:
        if IN_CI:
            pytest.fail(reason + "; CI must run the sandbox escape tests")
        pytest.skip(reason)


@pytest.fixture
def need_limits() -> None:
    reason = cgroups_available()
    if reason:
        if IN_CI:
            pytest.fail(f"cgroup limits cannot be tested: {reason}; CI must test them")
        pytest.skip(f"cgroup limits cannot be tested: {reason}")


@dataclass
class Workspace:
    id: str
    project: str
    user: str
    paths: layout.HostPaths
    datasets: dict[str, Path]
    uid: int | None
    gid: int | None
    listeners: list[socket.socket] = field(default_factory=list)


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    # As airlock.py does: only the mount decides who reaches the socket.
    os.chmod(path, 0o666)  # noqa: S103
    return sock


class Sandboxes:
    """A fake platform on the host and a way to run attack programs in its workspaces."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env_dir = Path(get_settings().workspace_env_dir).resolve()
        self.config_dir = state / "workspace-config"
        self.config_dir.mkdir(parents=True)
        (self.config_dir / "jupyter_server_config.json").write_text("{}")
        keys = state / "keys"
        keys.mkdir(mode=0o700)
        self.key_file = keys / "platform.key"
        self.key_file.write_text(SECRET_KEY)
        self.key_file.chmod(0o600)
        self.database = state / "spe.db"
        with sqlite3.connect(self.database) as db:
            db.execute("CREATE TABLE users (name TEXT, password_hash TEXT)")
            db.execute("INSERT INTO users VALUES ('op', 'secret-hash')")
        self.workspaces: list[Workspace] = []

    def workspace(self, project: str, user: str, datasets: Mapping[str, str]) -> Workspace:
        """A workspace with its layout folders, extracts (0700, as storage writes them) and
        live airlock and server sockets."""
        wid = layout.workspace_id(project, user)
        paths = layout.host_paths(project, user)
        paths.outbox.mkdir(parents=True)
        (paths.home / "notes.csv").write_text(f"secret notes of {user}\n")
        extracts = {}
        for name, content in datasets.items():
            folder = self.state / "data" / "projects" / project / "extracts" / name / "v1"
            folder.mkdir(parents=True)
            folder.chmod(0o700)
            (folder / "part-0.csv").write_text(content)
            extracts[name] = folder
        uid = gid = None
        if os.geteuid() == 0:
            uid, gid = workspace_user(wid)
        ws = Workspace(wid, project, user, paths, extracts, uid, gid)
        ws.listeners.append(_listen(paths.airlock_socket))
        ws.listeners.append(_listen(paths.server_socket))
        self.workspaces.append(ws)
        return ws

    def spec(
        self,
        ws: Workspace,
        command: list[str],
        env: Mapping[str, str] = {},
        inet_loopback: bool = True,
    ) -> SandboxSpec:
        return SandboxSpec(
            workspace_id=ws.id,
            home=ws.paths.home,
            datasets=ws.datasets,
            run_dir=ws.paths.run,
            airlock_dir=ws.paths.airlock,
            config_dir=self.config_dir,
            env_dir=self.env_dir,
            command=command,
            env=env,
            uid=ws.uid,
            gid=ws.gid,
            inet_loopback=inet_loopback,
        )

    def program(self, code: str, host: Mapping[str, Any] | None = None) -> list[str]:
        """The command that runs ``code`` (after PRELUDE) with the workspace env's Python."""
        return [
            str(self.env_dir / "bin" / "python"),
            "-c",
            PRELUDE + code + EPILOGUE,
            json.dumps(host or {}),
        ]

    def start(
        self,
        ws: Workspace,
        command: list[str],
        limits: SandboxLimits = LIMITS,
        env: Mapping[str, str] = {},
        inet_loopback: bool = True,
    ) -> subprocess.Popen[bytes]:
        return start_sandbox(
            self.spec(ws, command, env, inet_loopback),
            limits,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def run(
        self,
        ws: Workspace,
        code: str,
        host: Mapping[str, Any] | None = None,
        *,
        limits: SandboxLimits = LIMITS,
        env: Mapping[str, str] = {},
        timeout: float = 30,
        inet_loopback: bool = True,
    ) -> dict[str, Any]:
        """Run an attack program to its end; returns its JSON report."""
        process = self.start(ws, self.program(code, host), limits, env, inet_loopback)
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            stop_sandbox(process, ws.id)
        lines = out.decode().strip().splitlines()
        assert process.returncode == 0 and lines, (
            f"the attack program did not report (exit {process.returncode}): {err.decode()}"
        )
        report: dict[str, Any] = json.loads(lines[-1])
        return report

    def close(self) -> None:
        for ws in self.workspaces:
            for sock in ws.listeners:
                sock.close()


@pytest.fixture
def sandboxes(sandbox_ready: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandboxes]:
    for key in list(os.environ):
        if key.startswith("SPE_") and key != "SPE_WORKSPACE_ENV_DIR":
            monkeypatch.delenv(key)
    # A short path, not tmp_path: a unix socket's path is limited to 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="spe-esc-"))
    state = base / "state"
    state.mkdir(mode=0o700)  # as a real state folder should be: root only
    monkeypatch.setenv("SPE_STATE_DIR", str(state))
    reset_settings()
    world = Sandboxes(state)
    try:
        yield world
    finally:
        world.close()
        reset_settings()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def two_workspaces(sandboxes: Sandboxes) -> tuple[Workspace, Workspace]:
    """Alice's workspace in project A (the attacker) and Bob's in project B (the victim)."""
    alice = sandboxes.workspace("escape-a", "alice", {"income": "pid,wage\n1,100\n2,200\n"})
    bob = sandboxes.workspace("escape-b", "bob", {"health": "pid,diagnosis\n7,secret-b\n"})
    (bob.paths.home / "bob-private.txt").write_text("bob's secret\n")
    return alice, bob


@pytest.fixture(scope="session", autouse=True)
def _remove_test_users() -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        for project, user in (("escape-a", "alice"), ("escape-b", "bob")):
            remove_workspace_user(layout.workspace_id(project, user))
