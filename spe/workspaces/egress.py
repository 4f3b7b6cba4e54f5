"""The egress self-test: from inside each running workspace's network namespace, try to reach
the host's services, a public address and DNS. Every try must fail; a success is an alarm, and
the workspace is stopped.

The probe runs the host's Python in the workspace's network namespace only (``nsenter --net``),
so it tests exactly the walls researcher code has, and nothing of the workspace runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NSENTER = "/usr/bin/nsenter"
PROBE_PYTHON = "/usr/bin/python3"
TIMEOUT_SECONDS = 2.0

# Each target: (label, kind, host, port). Kinds: tcp, udp-dns, resolve.
DEFAULT_TARGETS: tuple[tuple[str, str, str, int], ...] = (
    ("host PostgreSQL", "tcp", "127.0.0.1", 5432),
    ("host Redis", "tcp", "127.0.0.1", 6379),
    ("hub front door", "tcp", "127.0.0.1", 8000),
    ("hub API", "tcp", "127.0.0.1", 8081),
    ("SPE API", "tcp", "127.0.0.1", 8040),
    ("public HTTPS", "tcp", "1.1.1.1", 443),
    ("public DNS over UDP", "udp-dns", "8.8.8.8", 53),
    ("name resolution", "resolve", "example.com", 443),
)

_PROBE = r"""
import json, socket, sys
targets, timeout = json.loads(sys.argv[1]), float(sys.argv[2])
out = []
for label, kind, host, port in targets:
    ok, error = False, ""
    try:
        if kind == "tcp":
            socket.create_connection((host, port), timeout).close()
            ok = True
        elif kind == "udp-dns":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            query = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
            s.sendto(query, (host, port))
            s.recvfrom(512)
            ok = True
        elif kind == "resolve":
            socket.getaddrinfo(host, port)
            ok = True
    except Exception as exc:
        error = type(exc).__name__ + ": " + str(exc)
    out.append({"target": label, "kind": kind, "host": host, "port": port,
                "reached": ok, "error": error})
print(json.dumps(out))
"""


@dataclass(frozen=True)
class ProbeResult:
    pid: int
    attempts: list[dict[str, Any]]

    @property
    def escaped(self) -> list[dict[str, Any]]:
        return [a for a in self.attempts if a["reached"]]


def probe_command(pid: int, targets: Iterable[tuple[str, str, str, int]]) -> list[str]:
    """The exact command: the host's Python in the network namespace of process ``pid``."""
    return [
        NSENTER,
        f"--target={pid}",
        "--net",
        "--",
        PROBE_PYTHON,
        "-I",
        "-c",
        _PROBE,
        json.dumps([list(t) for t in targets]),
        str(TIMEOUT_SECONDS),
    ]


def run_probe(
    pid: int, targets: Iterable[tuple[str, str, str, int]] = DEFAULT_TARGETS
) -> ProbeResult:
    targets = list(targets)
    done = subprocess.run(
        probe_command(pid, targets),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS * len(targets) + 10,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the egress probe could not run in process {pid}: {done.stderr[-300:]}")
    return ProbeResult(pid, json.loads(done.stdout))


def _net_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _bwrap_pids(home: Path) -> list[str]:
    """The bubblewrap processes that bind ``home`` (one per running workspace)."""
    needle = str(home).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"bwrap") and needle in cmdline:
            found.append(entry)
    return found


def _cgroup_members(workspace: str) -> list[str]:
    """The processes in the workspace's pids cgroup (where the runner puts every sandbox)."""
    from spe.workspaces.sandbox_run import cgroup_paths

    procs = cgroup_paths(workspace)["pids"] / "cgroup.procs"
    try:
        return procs.read_text().split()
    except OSError:
        return []


def sandbox_pid(home: Path, workspace: str | None = None) -> int | None:
    """A process inside the workspace whose home is ``home``, living in another network
    namespace than ours: from the workspace's cgroup, else a child of the bubblewrap that binds
    ``home`` on its command line."""
    ours = _net_ns("self")
    for entry in _cgroup_members(workspace) if workspace else []:
        if _net_ns(entry) not in (None, ours):
            return int(entry)
    parents = _bwrap_pids(home)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if ppid in parents and _net_ns(entry) not in (None, ours):
            return int(entry)
    return None


def kill_sandbox_of(home: Path) -> int:
    """Kill the sandboxes binding ``home`` (bwrap takes everything inside with it)."""
    import signal

    killed = 0
    for pid in _bwrap_pids(home):
        try:
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def selftest(
    workspaces: Iterable[tuple[str, str, str, int]],
    stop: Callable[[str, str], None],
    targets: Iterable[tuple[str, str, str, int]] = DEFAULT_TARGETS,
) -> list[dict[str, Any]]:
    """Probe each (name, project, user, pid); record the outcome; stop a workspace that got out."""
    from spe.audit.log import record
    from spe.db.session import get_engine

    targets = list(targets)
    outcomes = []
    for name, project, user, pid in workspaces:
        try:
            result = run_probe(pid, targets)
            escaped = result.escaped
            details: dict[str, Any] = {"pid": pid, "tried": len(result.attempts)}
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            escaped, details = [], {"pid": pid, "error": str(exc)[:500]}
        action = "workspace.egress_alarm" if escaped else "workspace.egress_ok"
        if escaped:
            details["reached"] = [f"{a['target']} ({a['host']}:{a['port']})" for a in escaped]
        with get_engine().begin() as conn:
            record(
                conn,
                "system:egress-selftest",
                action,
                f"workspace:{name}",
                details,
                project=project,
            )
        if escaped:
            stop(name, "egress self-test reached " + ", ".join(details["reached"]))
        outcomes.append({"workspace": name, "user": user, **details, "alarm": bool(escaped)})
    return outcomes


def selftest_running() -> list[dict[str, Any]]:
    """The periodic task: probe every running workspace found on this machine."""
    from spe.db import readonly, transaction
    from spe.workspaces.layout import host_paths
    from spe.workspaces.registry import running_workspaces, workspace_stopped

    with readonly() as session:
        running = running_workspaces(session)
    found = []
    for ws in running:
        pid = sandbox_pid(host_paths(ws.project, ws.username).home, ws.name)
        if pid is not None:
            found.append((ws.name, ws.project, ws.username, pid))

    owners = {name: (project, user) for name, project, user, _pid in found}

    def stop(name: str, reason: str) -> None:
        from spe.workspaces.hub import HubUnavailable, stop_workspace

        # First the record (it closes the airlock at once), then the process.
        with transaction() as session:
            workspace_stopped(session, "system:egress-selftest", name, reason)
        project, user = owners[name]
        try:
            stop_workspace(project, user)
        except HubUnavailable:  # no hub to ask: end the sandbox here
            from spe.workspaces.sandbox_run import remove_cgroups

            remove_cgroups(name)
            kill_sandbox_of(host_paths(project, user).home)

    return selftest(found, stop)
