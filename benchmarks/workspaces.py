"""Workspace benchmark: spawn latency (sandboxed and plain), memory per idle workspace, and many
workspaces spawned at once, through real JupyterHubs and configurable-http-proxies.

Two hubs run side by side, each as ``spe hub`` starts it (``run_hub``, production settings) on
free ports over its own throw-away SPE state (temporary folder, SQLite, the demo world of
``spe.demo`` with 2,000 synthetic persons, researchers and projects made for this run): one
with SPE_WORKSPACE_SANDBOX=none (plain local processes), one with bwrap (the setting is read
when a hub starts). Timed spawns alternate between the two (plain, sandboxed, sandboxed,
plain, ...), so both modes see the same load on a shared machine.

    .venv/bin/python benchmarks/workspaces.py            # 10 spawns per mode, 20 at once
    .venv/bin/python benchmarks/workspaces.py --quick    # 4 spawns per mode, 5 at once

Prints one JSON line per figure on stdout and progress on stderr. Every process it started,
the per-workspace unix users and cgroups of this run, and the temporary folder are removed at
the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
CHP = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
WORKSPACE_ENV = REPO / ".venv-workspace"
PASSWORD = "benchmark password 2026"  # noqa: S105 - a throw-away account
GIB_24_MIB = 24 * 1024
NAMED_SERVERS_PER_USER = 5  # below the hub's limit of 10 per user

GOAL_OVERHEAD = 1.05  # sandbox p50 / plain p50
GOAL_SANDBOX_P50 = 2.0  # seconds
GOAL_FIT_24GIB = 100  # idle workspaces (one kernel each) in 24 GiB

NOTE = (
    "2 cores shared with other agents: absolute figures are noisy; compare the ratios of this run"
)

_started = time.monotonic()


def log(message: str) -> None:
    print(
        f"[workspaces +{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True
    )


def emit(name: str, value: float | int | None, unit: str, **extra: Any) -> None:
    if isinstance(value, float):
        value = round(value, 4)
    print(json.dumps({"name": name, "value": value, "unit": unit, **extra}), flush=True)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchError(Exception):
    pass


# --- the SPE world --------------------------------------------------------------------------------


@dataclass
class World:
    tag: str
    users: list[str]
    projects: list[str]

    def pairs(self) -> list[tuple[str, str]]:
        """Every (user, project) workspace, user by user (each user has one per project, at
        most NAMED_SERVERS_PER_USER)."""
        return [(u, p) for u in self.users for p in self.projects]


def reset_spe() -> None:
    from spe.config import reset_settings
    from spe.db.session import reset_engine
    from spe.keys.signing import forget_cached_keys

    reset_engine()
    reset_settings()
    forget_cached_keys()


def make_world(n_users: int, n_projects: int, persons: int) -> World:
    """The demo world plus researchers and approved projects of this run (all members of all
    projects, terms accepted, each project with an extract of the demo population)."""
    from spe.accounts.models import Role
    from spe.accounts.service import (
        accept_terms,
        create_user,
        get_organisation,
        get_user,
        grant_role,
    )
    from spe.db import transaction
    from spe.demo import HOLDER, INSTITUTION, OPERATOR, publish_demo_data, set_up_demo
    from spe.projects.extracts import extract, grant_dataset
    from spe.projects.service import add_member, approve_project, create_project, get_project

    with contextlib.redirect_stdout(sys.stderr):  # the demo talks on stdout
        set_up_demo()
        publish_demo_data(persons=persons)
    tag = "wsb" + secrets.token_hex(3)  # unique: the sandbox makes a unix user per workspace
    users = [f"{tag}-u{i:02d}" for i in range(1, n_users + 1)]
    projects = [f"{tag}-p{i:02d}" for i in range(1, n_projects + 1)]
    today = datetime.datetime.now(datetime.UTC).date()
    with transaction() as s:
        operator = get_user(s, OPERATOR)
        institution = get_organisation(s, INSTITUTION)
        for name in users:
            user, _ = create_user(s, operator, name, institution, password=PASSWORD)
            grant_role(s, operator, user, Role.RESEARCHER, institution)
    with transaction() as s:
        lead = get_user(s, users[0])
        holder = get_organisation(s, HOLDER)
        institution = get_organisation(s, INSTITUTION)
        for slug in projects:
            project = create_project(
                s,
                lead,
                slug,
                f"Benchmark {slug}",
                "Workspace benchmark",
                holder,
                institution,
                today,
                today + datetime.timedelta(days=30),
            )
            for name in users[1:]:
                add_member(s, lead, project, get_user(s, name))
    with transaction() as s:
        reviewer = get_user(s, "demo-holder")
        for slug in projects:
            project = get_project(s, slug)
            approve_project(s, reviewer, project, "benchmark")
            grant_dataset(
                s,
                reviewer,
                project,
                "population",
                ["sex", "municipality"],
                {"municipality": "county"},
            )
        for name in users:
            accept_terms(s, get_user(s, name))
    for slug in projects:
        extract(slug, "population")
    return World(tag, users, projects)


# --- processes ------------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ppid(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not stat:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def descendants(root: int) -> list[int]:
    """root and every process below it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        parent = _ppid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pss_kib(pid: int) -> tuple[int, int]:
    """(Pss, Rss) of a process in KiB from /proc/<pid>/smaps_rollup; (0, 0) if it is gone."""
    pss = rss = 0
    for line in _read(f"/proc/{pid}/smaps_rollup").decode(errors="replace").splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
    return pss, rss


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = True) -> float:
    """CPU time a process has used (user + system), with that of its reaped children."""
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime, stime, cutime, cstime are fields 14-17.
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICK


def comm(pid: int) -> str:
    """A short label: the program and, for python, the module it runs."""
    words = [a.decode(errors="replace") for a in _read(f"/proc/{pid}/cmdline").split(b"\0") if a]
    if not words:
        return "?"
    program = Path(words[0]).name
    if program.startswith("python") and "-m" in words[:-1]:
        return f"{program} -m {words[words.index('-m') + 1]}"
    return program


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line, environment or working folder names ``text``."""
    needle = text.encode()
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me:
            continue
        if needle in _read(f"/proc/{pid}/cmdline") or needle in _read(f"/proc/{pid}/environ"):
            found.append(pid)
            continue
        with contextlib.suppress(OSError):
            if text in os.readlink(f"/proc/{pid}/cwd"):
                found.append(pid)
    return found


def kill_pids(pids: list[int], grace: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                alive.append(pid)
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
            time.sleep(0.05)
        if not alive:
            return
        pids = alive


def _state(pid: int) -> str:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return stat.rsplit(")", 1)[1].split()[0] if stat else "?"


# --- the hub --------------------------------------------------------------------------------------

_HUB_MAIN = "from spe.workspaces.hub import run_hub; run_hub(services={services!r})"


@dataclass
class Hub:
    """One hub (with its proxy), its SPE state and the world built in it."""

    mode: str  # SPE_WORKSPACE_SANDBOX
    state: Path  # SPE_STATE_DIR
    env: dict[str, str]  # its SPE_ settings
    services: tuple[str, ...]
    world: World | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['SPE_HUB_PROXY_PORT']}"

    @property
    def log_file(self) -> Path:
        return self.state.parent / "hub.log"

    def workspace_dir(self, user: str, project: str) -> Path:
        return self.state.resolve() / "workspaces" / project / user  # as spe.workspaces.layout

    def start(self) -> float:
        self.stop()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
        child_env.update(self.env)
        started = time.perf_counter()
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _HUB_MAIN.format(services=self.services)],
                cwd=REPO,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the hub ourselves
            )
        self.wait(lambda: _answers(self.url + "/hub/api"), 90, "the hub to answer")
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()  # the hub stops its workspaces (cleanup_servers) and proxy
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                log(f"the {self.mode} hub did not stop in 60 s; killing its process group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:]

    def wait(self, check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            if not self.alive():
                raise BenchError(f"the {self.mode} hub exited waiting for {what}\n{self.tail()}")
            time.sleep(every)
        raise BenchError(f"timed out after {timeout:g} s waiting for {what}\n{self.tail()}")


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def login_token(hub: Hub, username: str) -> str:
    """Log in with the SPE password (as a browser does) and make an API token for the user."""
    with requests.Session() as session:
        session.get(hub.url + "/hub/login", timeout=30)
        xsrf = session.cookies.get("_xsrf", path="/hub/")
        answer = session.post(
            hub.url + "/hub/login",
            data={"username": username, "password": PASSWORD, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )
        if answer.status_code != 302:
            raise BenchError(f"login of {username} failed: {answer.status_code}")
        made = session.post(
            f"{hub.url}/hub/api/users/{username}/tokens",
            json={"note": "workspace benchmark", "expires_in": 86400},
            headers={"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/") or ""},
            timeout=30,
        )
        if made.status_code != 201:
            raise BenchError(f"token for {username}: {made.status_code} {made.text[:300]}")
        return str(made.json()["token"])


# --- one workspace --------------------------------------------------------------------------------


@dataclass
class Spawn:
    user: str
    project: str
    ok: bool = False
    seconds: float = math.nan  # request -> /api/status answers 200 through the proxy
    post_seconds: float = math.nan  # the hub's answer to the spawn request
    post_status: int = 0
    error: str = ""
    done_at: float = math.nan  # perf_counter() when it answered


def _session(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    return session


def _wait_progress(session: requests.Session, url: str, timeout: float) -> None:
    """Follow the hub's progress event stream until the server is ready (or failed)."""
    with session.get(url, stream=True, timeout=(10, timeout)) as answer:
        if answer.status_code != 200:
            raise BenchError(f"progress: {answer.status_code}")
        for line in answer.iter_lines():
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if event.get("failed"):
                raise BenchError(f"spawn failed: {event.get('message')}")
            if event.get("ready"):
                return
    raise BenchError("progress stream ended before the server was ready")


def spawn(hub: Hub, user: str, project: str, timeout: float = 120.0) -> Spawn:
    """Ask the hub for the workspace and wait until its /api/status answers 200 through the
    proxy with the user's token."""
    result = Spawn(user, project)
    base = f"{hub.url}/hub/api/users/{user}/servers/{project}"
    status_url = f"{hub.url}/user/{user}/{project}/api/status"
    with _session(hub.tokens[user]) as session:
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        try:
            answer = session.post(base, json={"project": project}, timeout=timeout)
            result.post_seconds = time.perf_counter() - started
            result.post_status = answer.status_code
            if answer.status_code == 202:  # still starting after the hub's slow_spawn_timeout
                _wait_progress(session, base + "/progress", timeout)
            elif answer.status_code != 201:
                raise BenchError(f"spawn request: {answer.status_code} {answer.text[:300]}")
            while True:
                status = session.get(status_url, allow_redirects=False, timeout=30)
                if status.status_code == 200 and "last_activity" in status.json():
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"/api/status still answers {status.status_code}")
                time.sleep(0.02)
            result.done_at = time.perf_counter()
            result.seconds = result.done_at - started
            result.ok = True
        except (BenchError, requests.RequestException, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:500]
    return result


def server_model(hub: Hub, user: str, project: str) -> dict[str, Any] | None:
    with _session(hub.tokens[user]) as session:
        answer = session.get(f"{hub.url}/hub/api/users/{user}", timeout=30)
        answer.raise_for_status()
        model: dict[str, Any] | None = answer.json()["servers"].get(project)
        return model


def workspace_id(user: str, project: str) -> str:
    return f"{project}--{user}"


def stop(hub: Hub, user: str, project: str, remove: bool = False) -> None:
    """Stop the workspace and wait until the hub has forgotten it and its processes are gone."""
    from spe.workspaces.sandbox_run import cgroup_paths

    with _session(hub.tokens[user]) as session:
        answer = session.delete(
            f"{hub.url}/hub/api/users/{user}/servers/{project}",
            json={"remove": remove},
            timeout=60,
        )
        if answer.status_code == 404 and remove:
            return  # a failed spawn the hub has forgotten already
        if answer.status_code not in (202, 204):
            raise BenchError(f"stop {user}/{project}: {answer.status_code} {answer.text[:300]}")
    hub.wait(
        lambda: server_model(hub, user, project) is None,
        60,
        f"{user}/{project} to stop",
        every=0.1,
    )
    if hub.mode != "none":
        procs = cgroup_paths(workspace_id(user, project))["pids"]
        hub.wait(lambda: not procs.exists(), 30, f"the cgroup of {user}/{project} to go")


def server_pid(hub: Hub, user: str, project: str) -> int | None:
    """The notebook server of a plain ("none") workspace, found by its socket argument."""
    socket_path = hub.workspace_dir(user, project) / "run" / "server.sock"
    wanted = f"--ServerApp.sock={socket_path}".encode()
    for pid in _pids():
        argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
        if wanted in argv and b"spe.workspaces.serve" in argv:
            return pid
    return None


def workspace_processes(hub: Hub, user: str, project: str) -> list[int]:
    """Every process of a running workspace: its cgroup's members when sandboxed, else the
    notebook server's process tree."""
    if hub.mode == "none":
        pid = server_pid(hub, user, project)
        return descendants(pid) if pid else []
    from spe.workspaces.sandbox_run import cgroup_paths

    procs = cgroup_paths(workspace_id(user, project))["pids"] / "cgroup.procs"
    return [int(p) for p in procs.read_text().split()]


def start_kernel(hub: Hub, user: str, project: str, timeout: float = 90.0) -> float:
    """Start one kernel in the workspace (POST /api/kernels) and wait until it is idle.

    The server reports a new kernel as "starting" until the kernel answers a first request, as
    when a browser connects; so, like a browser, the benchmark connects to the kernel's
    websocket and sends a kernel_info_request, then waits for the server to say "idle".
    """
    api = f"{hub.url}/user/{user}/{project}/api/kernels"
    token = hub.tokens[user]
    with _session(token) as session:
        started = time.perf_counter()
        answer = session.post(api, json={}, timeout=timeout)
        if answer.status_code != 201:
            raise BenchError(f"kernel start: {answer.status_code} {answer.text[:300]}")
        kernel = answer.json()["id"]
        ws_url = "ws" + api.removeprefix("http") + f"/{kernel}/channels"
        asyncio.run(_kernel_info(ws_url, token, timeout))
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = session.get(f"{api}/{kernel}", timeout=30).json().get("execution_state")
            if state == "idle":
                return time.perf_counter() - started
            time.sleep(0.1)
    raise BenchError(f"kernel of {user}/{project} not idle after {timeout:g} s (state {state})")


async def _kernel_info(url: str, token: str, timeout: float) -> None:
    """Send kernel_info_request on the kernel's websocket (Jupyter's JSON protocol, the one
    SPE's audited connection speaks) and wait for the reply."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    request = HTTPRequest(url, headers={"Authorization": f"token {token}"}, request_timeout=30)
    conn = await asyncio.wait_for(websocket_connect(request), 30)
    try:
        msg_id = secrets.token_hex(16)
        header = {
            "msg_id": msg_id,
            "username": "benchmark",
            "session": secrets.token_hex(16),
            "msg_type": "kernel_info_request",
            "version": "5.3",
            "date": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        message = {"header": header, "parent_header": {}, "metadata": {}, "content": {}}
        await conn.write_message(json.dumps({**message, "channel": "shell", "buffers": []}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(conn.read_message(), max(deadline - time.monotonic(), 1))
            if raw is None:
                raise BenchError("the kernel's websocket closed before kernel_info_reply")
            reply = json.loads(raw)
            if (reply.get("parent_header") or {}).get("msg_id") == msg_id and reply["header"][
                "msg_type"
            ] == "kernel_info_reply":
                return
        raise BenchError(f"no kernel_info_reply within {timeout:g} s")
    finally:
        conn.close()


def memory(hub: Hub, user: str, project: str) -> dict[str, Any]:
    pids = workspace_processes(hub, user, project)
    parts = []
    for pid in pids:
        pss, rss = pss_kib(pid)
        parts.append(
            {
                "pid": pid,
                "process": comm(pid),
                "pss_mib": round(pss / 1024, 1),
                "rss_mib": round(rss / 1024, 1),
            }
        )
    return {
        "pss_mib": sum(p["pss_mib"] for p in parts),
        "rss_mib": sum(p["rss_mib"] for p in parts),
        "processes": parts,
    }


# --- where a spawn's time goes (from the hub's and the server's logs) -----------------------------

_STAMP = re.compile(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")


def _stamp(line: str) -> float | None:
    found = _STAMP.match(line)
    if not found:
        return None
    when = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f")
    return when.timestamp()


def server_log(hub: Hub, user: str, project: str) -> Path:
    return hub.workspace_dir(user, project) / "server.log"


def log_marks(hub: Hub, user: str, project: str) -> tuple[int, int]:
    """Where the hub's and the workspace server's logs end now (both are appended to)."""
    server = server_log(hub, user, project)
    return hub.log_file.stat().st_size, server.stat().st_size if server.exists() else 0


def _read_from(path: Path, offset: int) -> list[str]:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()
    return []


PHASES = ("hub_admission", "server_boot", "server_extensions", "hub_ready", "rest")


def spawn_phases(
    hub: Hub, user: str, project: str, marks: tuple[int, int], got: Spawn
) -> dict[str, float] | None:
    """Split one spawn at the hub's and the server's log lines (millisecond stamps):

    - ``hub_admission``: the hub starting the spawn (its "took N seconds" counts from there) to
      the spawner's "Starting workspace" (access check and audit record, home and templates,
      the hub gateway);
    - ``server_boot``: from there to the notebook server's first log line (when sandboxed:
      unix user, ACLs, cgroups, bwrap; then the interpreter, the imports of jupyter_server,
      jupyterhub.singleuser and what they pull in, the configuration);
    - ``server_extensions``: first log line to "is running at" (server extensions linked and
      loaded: jupyterlab, jupyter_lsp, terminals, notebook_shim, jupyterhub);
    - ``hub_ready``: to the hub's "took N seconds to start" (its HTTP check of the server);
    - ``rest``: the client's total minus the hub's N (the HTTP requests, the hub's handler
      before the spawn starts, the proxy route, the first /api/status, whose token the server
      checks with the hub).
    """
    hub_lines = _read_from(hub.log_file, marks[0])
    server_lines = _read_from(server_log(hub, user, project), marks[1])
    wid = workspace_id(user, project)
    t_spawn = t_starting = t_took = t_first = t_running = None
    hub_seconds = math.nan
    for line in hub_lines:
        if f"Starting workspace {wid} (" in line:
            t_starting = _stamp(line)
        elif f"User {user}:{project} took " in line:
            t_took = _stamp(line)
            took = re.search(r" took ([0-9.]+) seconds to start", line)
            if t_took is not None and took:
                hub_seconds = float(took.group(1))
                t_spawn = t_took - hub_seconds
    for line in server_lines:
        stamp = _stamp(line)
        if stamp is not None and t_first is None:
            t_first = stamp
        if "is running at:" in line and stamp is not None:
            t_running = stamp
    points = [t_spawn, t_starting, t_first, t_running, t_took]
    if any(p is None for p in points):
        return None
    stamps = [float(p) for p in points if p is not None]
    phases = {name: round(b - a, 3) for name, a, b in zip(PHASES, stamps, stamps[1:], strict=False)}
    phases["rest"] = round(got.seconds - hub_seconds, 3)
    return phases


def median_phases(phases: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(quantile([p[k] for p in phases], 0.5), 3) for k in PHASES}


def import_profile(env_dir: Path) -> None:
    """What the notebook server's imports cost in the workspace environment, outside any
    sandbox: the interpreter alone, ``import spe.workspaces.serve`` (what a workspace server
    imports before its first log line), and the same with ``rfc3987_syntax`` made unimportable
    (jsonschema then skips its IRI format checker, which compiles ~35 Lark grammars at import;
    no Jupyter schema uses that format). Best of 3, seconds."""
    python = str(env_dir / "bin" / "python")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "JUPYTERHUB_SINGLEUSER_EXTENSION": "1"}
    variants = {
        "interpreter": "pass",
        "import_server": "import spe.workspaces.serve",
        "import_server_without_rfc3987_syntax": (
            "import sys; sys.modules['rfc3987_syntax'] = None; import spe.workspaces.serve"
        ),
    }
    timings: dict[str, float] = {}
    for name, code in variants.items():
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            done = subprocess.run(
                [python, "-c", code], env=env, cwd="/", capture_output=True, check=False
            )
            if done.returncode != 0:
                log(f"  import profile {name} failed: {done.stderr.decode()[-500:]}")
                break
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    cumulative: dict[str, float] = {}
    traced = subprocess.run(
        [python, "-X", "importtime", "-c", variants["import_server"]],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    )
    wanted = {
        "rfc3987_syntax",
        "jupyterhub.singleuser",
        "jupyter_server.serverapp",
        "jsonschema",
        "jupyter_events",
        "jupyterhub.orm",
        "alembic",
        "jupyter_client",
    }
    for line in traced.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] in wanted and parts[1].isdigit():
            cumulative[parts[2]] = max(cumulative.get(parts[2], 0.0), int(parts[1]) / 1e6)
    for name, seconds in timings.items():
        emit(
            f"workspaces.profile.{name}",
            seconds,
            "s",
            env=str(env_dir),
            **({"importtime_cumulative_s": cumulative} if name == "import_server" else {}),
        )
    log(
        "  workspace env: interpreter {interpreter:.2f} s, import spe.workspaces.serve "
        "{import_server:.2f} s, without rfc3987_syntax "
        "{import_server_without_rfc3987_syntax:.2f} s".format(**timings)
    )


# --- the phases -----------------------------------------------------------------------------------


@dataclass
class Results:
    latency: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "bwrap": []})
    post: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "bwrap": []})
    first: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "bwrap": []})
    load: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "bwrap": []})
    failures: dict[str, list[str]] = field(default_factory=lambda: {"none": [], "bwrap": []})
    phases: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {"none": [], "bwrap": []}
    )
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "bwrap": []})


def latency_phase(hubs: list[Hub], n: int, results: Results) -> None:
    """Per hub one warm-up spawn (reported apart: it makes the home, and the unix user when
    sandboxed), then n timed spawns per hub, alternating between the hubs (A B, B A, ...),
    each workspace stopped before the next spawn."""
    for i in range(n + 1):
        order = hubs if i % 2 == 0 else hubs[::-1]
        for hub in order:
            mode = hub.mode
            assert hub.world is not None
            user, project = hub.world.users[0], hub.world.projects[0]
            results.load[mode].append(loadavg())
            marks = log_marks(hub, user, project)
            got = spawn(hub, user, project)
            if not got.ok:
                results.failures[mode].append(got.error)
                log(f"  {mode} spawn {i}: FAILED {got.error}")
            else:
                label = "warm-up" if i == 0 else f"{i}/{n}"
                log(
                    f"  {mode:5} spawn {label}: {got.seconds:.3f} s (hub answered "
                    f"{got.post_status} after {got.post_seconds:.3f} s)"
                )
                if i == 0:
                    results.first[mode].append(got.seconds)
                else:
                    results.latency[mode].append(got.seconds)
                    results.post[mode].append(got.post_seconds)
                    phases = spawn_phases(hub, user, project, marks, got)
                    if phases:
                        results.phases[mode].append(phases)
                    results.cpu[mode].append(
                        sum(cpu_seconds(p) for p in workspace_processes(hub, user, project))
                    )
            stop(hub, user, project)


def memory_phase(hub: Hub) -> float:
    """One workspace (the only one running), one kernel in it, idle: the sum of the PSS of
    its processes."""
    mode = hub.mode
    assert hub.world is not None
    user, project = hub.world.users[0], hub.world.projects[0]
    got = spawn(hub, user, project)
    if not got.ok:
        raise BenchError(f"memory: spawn failed: {got.error}")
    kernel_s = start_kernel(hub, user, project)
    time.sleep(2.0)  # let the idle kernel and server settle
    mem = memory(hub, user, project)
    stop(hub, user, project)
    pss = float(mem["pss_mib"])
    log(
        f"  {mode} idle workspace with one kernel: PSS {pss:.1f} MiB, RSS {mem['rss_mib']:.1f} "
        f"MiB over {len(mem['processes'])} processes (kernel idle after {kernel_s:.2f} s)"
    )
    fit = int(GIB_24_MIB // pss) if pss > 0 else 0
    goal = mode == "bwrap"
    emit(
        "workspaces.memory.idle_pss",
        pss,
        "MiB",
        sandbox=mode,
        rss_mib=round(float(mem["rss_mib"]), 1),
        kernel_idle_seconds=round(kernel_s, 3),
        processes=mem["processes"],
        how="sum of Pss (smaps_rollup) over the workspace's processes (its cgroup when "
        "sandboxed, else the server's process tree); one workspace running, one idle kernel",
    )
    emit(
        "workspaces.memory.fit_24gib",
        fit,
        "workspaces",
        sandbox=mode,
        pss_mib=round(pss, 1),
        **({"goal": f">= {GOAL_FIT_24GIB}", "passed": fit >= GOAL_FIT_24GIB} if goal else {}),
    )
    return pss


def cpu_throttling(hub: Hub, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Sum of the sandboxes' cgroup cpu.stat (CFS quota throttling) while they run."""
    if hub.mode == "none":
        return {}
    from spe.workspaces.sandbox_run import cgroup_paths

    total = {"nr_periods": 0.0, "nr_throttled": 0.0, "throttled_s": 0.0}
    for user, project in pairs:
        text = _read(str(cgroup_paths(workspace_id(user, project))["cpu"] / "cpu.stat")).decode()
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key in ("nr_periods", "nr_throttled"):
                total[key] += int(value)
            elif key == "throttled_time":
                total["throttled_s"] += int(value) / 1e9
    return {k: round(v, 3) for k, v in total.items()}


def concurrency_phase(hub: Hub, count: int, kernels: bool) -> None:
    """``count`` workspaces requested at the same moment (several users with several projects
    each) until every one answers, twice: first as the very first start of these workspaces
    (new homes; when sandboxed, new unix users), then again after stopping them all. After the
    second round, optionally a kernel in each and their memory with all of them running."""
    assert hub.world is not None
    mode = hub.mode
    pairs = hub.world.pairs()[:count]
    n = len(pairs)
    production = mode == "bwrap"
    for round_name in ("first", "again"):
        load_before = loadavg()
        barrier = threading.Barrier(n)
        marks = {pair: log_marks(hub, *pair) for pair in pairs}

        def one(pair: tuple[str, str], barrier: threading.Barrier = barrier) -> Spawn:
            barrier.wait()
            return spawn(hub, pair[0], pair[1], timeout=300)

        hub_pid = hub.process.pid if hub.process else 0
        hub_cpu = cpu_seconds(hub_pid, children=False)
        started = time.perf_counter()
        pool = ThreadPoolExecutor(n)
        try:
            spawns = list(pool.map(one, pairs))
        finally:  # on Ctrl-C, clean-up stops the hubs at once, which ends these requests
            pool.shutdown(wait=False, cancel_futures=True)
        wall = time.perf_counter() - started
        hub_cpu = cpu_seconds(hub_pid, children=False) - hub_cpu
        ok = [s for s in spawns if s.ok]
        failed = [s for s in spawns if not s.ok]
        for s in failed:
            log(f"    {s.user}/{s.project} FAILED: {s.error}")
        each = [s.seconds for s in ok]
        cpu = [sum(cpu_seconds(p) for p in workspace_processes(hub, s.user, s.project)) for s in ok]
        phases = [
            found
            for s in ok
            if (found := spawn_phases(hub, s.user, s.project, marks[(s.user, s.project)], s))
        ]
        log(
            f"  {mode} ({round_name} start): all {n} answered after {wall:.2f} s; "
            f"{len(failed)} failed; per workspace p50 {quantile(each, 0.5):.2f} s, max "
            f"{max(each, default=math.nan):.2f} s"
        )
        emit(
            "workspaces.concurrent.wall",
            wall,
            "s",
            sandbox=mode,
            round=round_name,
            workspaces=n,
            users=len({u for u, _ in pairs}),
            failed=len(failed),
            per_workspace_p50=round(quantile(each, 0.5), 3),
            per_workspace_p95=round(quantile(each, 0.95), 3),
            per_workspace_max=round(max(each, default=math.nan), 3),
            phases_p50=median_phases(phases) if phases else None,
            server_cpu_s_p50=round(quantile(cpu, 0.5), 3),
            hub_cpu_s=round(hub_cpu, 3),
            cpu_quota_throttling=cpu_throttling(hub, [(s.user, s.project) for s in ok]),
            hub_answered_202=sum(1 for s in spawns if s.post_status == 202),
            loadavg_1min_before=load_before,
            loadavg_1min_after=loadavg(),
        )
        emit(
            "workspaces.concurrent.failed",
            len(failed),
            "workspaces",
            sandbox=mode,
            round=round_name,
            workspaces=n,
            errors=sorted({s.error for s in failed})[:5],
            **({"goal": "0", "passed": not failed} if production else {}),
        )
        if kernels and ok and round_name == "again":
            # Memory per workspace with all of them idle, one kernel each: shared pages (the
            # environment's libraries) are split between them, as on a full machine.
            log(f"    starting a kernel in each of the {len(ok)} workspaces")
            with ThreadPoolExecutor(min(len(ok), 5)) as pool:
                list(pool.map(lambda s: start_kernel(hub, s.user, s.project, 180), ok))
            time.sleep(2.0)
            per = [float(memory(hub, s.user, s.project)["pss_mib"]) for s in ok]
            mean = sum(per) / len(per)
            log(f"    mean PSS per idle workspace with {len(ok)} running: {mean:.1f} MiB")
            emit(
                "workspaces.memory.idle_pss_shared",
                mean,
                "MiB",
                sandbox=mode,
                workspaces=len(ok),
                min_mib=round(min(per), 1),
                max_mib=round(max(per), 1),
                fit_24gib=int(GIB_24_MIB // mean) if mean > 0 else 0,
                how=f"mean PSS per workspace (one idle kernel each) with {len(ok)} running",
            )
        with ThreadPoolExecutor(min(n, 10)) as pool:
            list(pool.map(lambda p: stop(hub, p[0], p[1], remove=True), pairs))


def report_latency(results: Results) -> None:
    p50: dict[str, float] = {}
    for mode in ("none", "bwrap"):
        values = results.latency[mode]
        if not values:
            continue
        p50[mode] = quantile(values, 0.5)
        sandboxed = mode == "bwrap"
        emit(
            "workspaces.spawn.p50",
            p50[mode],
            "s",
            sandbox=mode,
            spawns=len(values),
            p95=round(quantile(values, 0.95), 3),
            mean=round(sum(values) / len(values), 3),
            min=round(min(values), 3),
            max=round(max(values), 3),
            per_spawn=[round(v, 3) for v in values],
            hub_answer_p50=round(quantile(results.post[mode], 0.5), 3),
            server_cpu_s_p50=round(quantile(results.cpu[mode], 0.5), 3),
            first_spawn=[round(v, 3) for v in results.first[mode]],
            failed=len(results.failures[mode]),
            loadavg_1min=[min(results.load[mode]), max(results.load[mode])],
            how="POST /hub/api/users/<u>/servers/<project> until GET /user/<u>/<project>/"
            "api/status answers 200 through the proxy (user's API token)",
            **(
                {"goal": f"<= {GOAL_SANDBOX_P50} s", "passed": p50[mode] <= GOAL_SANDBOX_P50}
                if sandboxed
                else {}
            ),
        )
        emit(
            "workspaces.spawn.p95",
            quantile(values, 0.95),
            "s",
            sandbox=mode,
            spawns=len(values),
        )
        phases = results.phases[mode]
        if phases:
            medians = median_phases(phases)
            emit(
                "workspaces.spawn.breakdown",
                medians["server_boot"],
                "s",
                sandbox=mode,
                spawns=len(phases),
                phases_p50=medians,
                how="median of each phase over the timed spawns, from the millisecond stamps "
                "of the hub's and the server's logs (see spawn_phases); value: server_boot",
            )
    if "none" in p50 and "bwrap" in p50:
        ratio = p50["bwrap"] / p50["none"]
        emit(
            "workspaces.spawn.overhead",
            ratio,
            "bwrap p50 / none p50",
            p95_ratio=round(
                quantile(results.latency["bwrap"], 0.95) / quantile(results.latency["none"], 0.95),
                3,
            ),
            mean_ratio=round(
                (sum(results.latency["bwrap"]) / len(results.latency["bwrap"]))
                / (sum(results.latency["none"]) / len(results.latency["none"])),
                3,
            ),
            goal=f"<= {GOAL_OVERHEAD}",
            passed=ratio <= GOAL_OVERHEAD,
            note=NOTE,
        )


# --- set-up and clean-up --------------------------------------------------------------------------


@dataclass
class Run:
    tmp: Path
    hubs: list[Hub] = field(default_factory=list)
    cleaned: bool = False

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop clean-up
        log("cleaning up")
        for hub in self.hubs:
            with contextlib.suppress(Exception):
                hub.stop()
        # Whatever outlived its hub (a server of a hub killed hard, a kernel): by process id.
        leftovers = processes_mentioning(str(self.tmp))
        if leftovers:
            log(f"  killing {len(leftovers)} leftover processes: {leftovers}")
            kill_pids(leftovers)
        from spe.workspaces.sandbox_run import remove_cgroups, remove_workspace_user

        for hub in self.hubs:
            for user, project in hub.world.pairs() if hub.world else []:
                wid = workspace_id(user, project)
                with contextlib.suppress(Exception):
                    remove_cgroups(wid)
                with contextlib.suppress(Exception):
                    remove_workspace_user(wid)
        shutil.rmtree(self.tmp, ignore_errors=True)
        log(f"removed {self.tmp}")


@contextlib.contextmanager
def clean_run() -> Iterator[Run]:
    # Short: the server socket's path must fit a unix socket address (107 bytes).
    run = Run(Path(tempfile.mkdtemp(prefix="spe-wsb-")))

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    # Also when started in the background by a shell, which makes it ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield run
    finally:
        run.cleanup()
        signal.signal(signal.SIGTERM, previous)


def preflight(env_dir: Path) -> str | None:
    if not os.access(CHP, os.X_OK):
        return f"configurable-http-proxy is not installed at {CHP} (run `npm ci`)"
    if not (env_dir / "bin" / "python").exists():
        return f"the workspace environment {env_dir} is missing (scripts/workspace-env.sh)"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    return None


# --- the recorder: a cell's round trip with and without it ----------------------------------------


GOAL_RECORDER_MS = 5.0  # p50 overhead of the recorder on a cell's round trip
GOAL_RECORDER_RATIO = 1.10
CELLS_PER_BLOCK = 10


def _http_unix(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(path))
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class _KernelChannel:
    """A browser's kernel websocket on ``sock``: cells sent one at a time, each timed from its
    execute_request to its execute_reply."""

    def __init__(self, sock: Path, kernel: str) -> None:
        import uuid

        import websocket

        conn = socket.socket(socket.AF_UNIX)
        conn.connect(str(sock))
        self.ws = websocket.create_connection(
            f"ws://localhost/api/kernels/{kernel}/channels?session_id={uuid.uuid4().hex}",
            socket=conn,
            timeout=30,
        )
        self.cells = 0

    def cell(self) -> float:
        import uuid

        msg_id = uuid.uuid4().hex
        self.cells += 1
        msg = {
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": "b",
                       "username": "bench", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": f"x = {self.cells} * 2", "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }  # fmt: skip
        started = time.perf_counter()
        self.ws.send(json.dumps(msg))
        while True:
            raw = self.ws.recv()
            if not isinstance(raw, str):
                continue
            reply = json.loads(raw)
            if (
                reply.get("channel") == "shell"
                and (reply.get("parent_header") or {}).get("msg_id") == msg_id
            ):
                return time.perf_counter() - started

    def close(self) -> None:
        self.ws.close()


def _cell_round_trips(sock: Path, kernel: str, cells: int) -> list[float]:
    """Seconds from sending an execute_request to its execute_reply, ``cells`` times."""
    channel = _KernelChannel(sock, kernel)
    try:
        return [channel.cell() for _ in range(cells)]
    finally:
        channel.close()


def recorder_phase(env_dir: Path, tmp: Path, cells: int = 300) -> None:
    """One plain notebook server and kernel from the workspace environment on a unix socket;
    cells alternate between the server's socket and the recorder's in front of it (the real
    ``python -m spe.hub.recorder``, its records stored by the airlock's record handler in a real
    SQLite audit log), same kernel, same run."""
    from spe.db.migrate import upgrade
    from spe.setup import ensure_keys
    from spe.workspaces.airlock import MAX_RECORD_LINE, handle_record, serve_lines
    from spe.workspaces.quota import AirlockQuota, QuotaLimits
    from spe.workspaces.registry import RunningWorkspace

    state = tmp / "recorder" / "var"
    state.mkdir(parents=True)
    for key in [k for k in os.environ if k.startswith("SPE_")]:
        del os.environ[key]
    os.environ["SPE_STATE_DIR"] = str(state)
    reset_spe()
    upgrade()
    ensure_keys()
    server_sock, recorder_sock = state / "server.sock", state / "recorder.sock"
    record_sock = state / "record.sock"
    # A second recorder whose records are answered at once and stored nowhere: what the proxy
    # costs apart from storing the record.
    bare_sock, bare_record_sock = state / "bare.sock", state / "bare-record.sock"
    ws = RunningWorkspace("bench--bench", "bench", "bench")
    # As the airlock's (counted in the database), with limits no run reaches: at 30 cells a
    # second the settings' 20 a second refuse a cell once the burst is spent, and the recorder
    # then ends the websocket.
    quota = AirlockQuota(QuotaLimits(1e6, 10**9, 10**15), scope="recorder")
    loop = asyncio.new_event_loop()

    async def record_service() -> None:
        await asyncio.start_unix_server(
            lambda r, w: serve_lines(r, w, lambda line: handle_record(ws, line, quota)),
            path=str(record_sock),
            limit=MAX_RECORD_LINE,
        )
        await asyncio.start_unix_server(
            lambda r, w: serve_lines(r, w, lambda line: {"ok": True}),
            path=str(bare_record_sock),
            limit=MAX_RECORD_LINE,
        )

    loop.run_until_complete(record_service())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    home = tmp / "recorder" / "home"
    home.mkdir()
    server = subprocess.Popen(
        [str(env_dir / "bin" / "jupyter-server"), f"--ServerApp.sock={server_sock}",
         "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={home}", "--ServerApp.allow_root=True"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=home,
    )  # fmt: skip
    recorders = []
    for front, records in ((recorder_sock, record_sock), (bare_sock, bare_record_sock)):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(front))
        listener.listen(64)
        recorders.append(subprocess.Popen(
            [sys.executable, "-m", "spe.hub.recorder", f"--fd={listener.fileno()}",
             f"--upstream={server_sock}", f"--record-socket={records}",
             "--workspace=bench--bench"],
            pass_fds=[listener.fileno()], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        ))  # fmt: skip
        listener.close()
    recorder = recorders[0]
    try:
        deadline = time.monotonic() + 60
        while not server_sock.exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise BenchError("the notebook server for the recorder benchmark did not start")
            time.sleep(0.1)
        answer = _http_unix(
            server_sock,
            b"POST /api/kernels HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        try:
            kernel = json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"]
        except (ValueError, KeyError, IndexError):
            raise BenchError(f"no kernel for the recorder benchmark: {answer[:500]!r}") from None
        _cell_round_trips(server_sock, kernel, 20)  # warm both paths
        _cell_round_trips(recorder_sock, kernel, 20)
        _cell_round_trips(bare_sock, kernel, 20)
        direct: list[float] = []
        through: list[float] = []
        bare: list[float] = []
        # Short blocks of cells, rotating between the paths (which goes first rotates too): each
        # round sees the same load, where four blocks of 50 saw the machine change between them
        # (the p50 of a block moved by more than the recorder adds). One websocket at a time, as
        # a browser tab has: a kernel sends its iopub messages to every open websocket, so with
        # all three open each recorder would also relay the other paths' cells.
        socks = (server_sock, recorder_sock, bare_sock)
        cpu = [cpu_seconds(r.pid, children=False) for r in recorders]
        for round_ in range(cells // CELLS_PER_BLOCK):
            block: dict[int, list[float]] = {}
            for k in range(3):
                which = (round_ + k) % 3
                block[which] = _cell_round_trips(socks[which], kernel, CELLS_PER_BLOCK)
            direct += block[0]
            through += block[1]
            bare += block[2]
        cpu = [
            (cpu_seconds(r.pid, children=False) - c) * 1000 / cells
            for r, c in zip(recorders, cpu, strict=True)
        ]
        p50_direct, p50_through = quantile(direct, 0.5) * 1000, quantile(through, 0.5) * 1000
        paired = quantile([t - d for d, t in zip(direct, through, strict=True)], 0.5) * 1000
        overhead = p50_through - p50_direct
        emit("workspaces.cell_round_trip.direct.p50", p50_direct, "ms", cells=len(direct))
        emit("workspaces.cell_round_trip.recorder.p50", p50_through, "ms", cells=len(through))
        emit(
            "workspaces.cell_round_trip.recorder_unstored.p50",
            quantile(bare, 0.5) * 1000,
            "ms",
            cells=len(bare),
            paired_p50_ms=round(
                quantile([t - d for d, t in zip(direct, bare, strict=True)], 0.5) * 1000, 3
            ),
            what="a recorder whose records are answered at once and stored nowhere",
            cpu_ms_per_cell=round(cpu[1], 3),
        )
        emit(
            "workspaces.recorder.overhead.p50",
            overhead,
            "ms",
            ratio=round(p50_through / p50_direct, 3),
            paired_p50_ms=round(paired, 3),
            recorder_cpu_ms_per_cell=round(cpu[0], 3),
            p90_direct_ms=round(quantile(direct, 0.9) * 1000, 2),
            p90_recorder_ms=round(quantile(through, 0.9) * 1000, 2),
            goal=f"<= {GOAL_RECORDER_MS} ms and <= {round((GOAL_RECORDER_RATIO - 1) * 100)} %",
            met=overhead <= GOAL_RECORDER_MS and p50_through / p50_direct <= GOAL_RECORDER_RATIO,
            loadavg=loadavg(),
            note=NOTE,
        )
        recorder_pss = pss_kib(recorder.pid)[0]
        workspace_pss = sum(pss_kib(pid)[0] for pid in [server.pid, *descendants(server.pid)])
        emit(
            "workspaces.recorder.idle_pss",
            recorder_pss / 1024,
            "MiB",
            workspace_mib=round(workspace_pss / 1024, 1),
            share=round(recorder_pss / max(workspace_pss, 1), 3),
        )
        quota_cost(ws)
    finally:
        for process in (*recorders, server):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        loop.call_soon_threadsafe(loop.stop)


def quota_cost(ws: Any, records: int = 300) -> None:
    """What keeping the quota in the database adds to storing one recorder record: the
    airlock's record handler with the database quota against one that counts nothing,
    interleaved, same run (limits high enough never to refuse)."""
    from spe.workspaces.airlock import handle_record
    from spe.workspaces.quota import AirlockQuota, QuotaLimits, QuotaVerdict

    class Uncounted:
        def charge_on(self, conn: Any, workspace: str, nbytes: int) -> QuotaVerdict:
            return QuotaVerdict()

        def charge(self, workspace: str, nbytes: int) -> QuotaVerdict:
            return QuotaVerdict()  # the handler before the quota shared its transaction

    counted = AirlockQuota(QuotaLimits(1e9, 10**9, 10**15), scope="bench")
    line = json.dumps({"action": "workspace.cell", "details": {"code": "x = 1"}}).encode()
    times: dict[str, list[float]] = {"database": [], "none": []}
    for _ in range(records):
        for name, quota in (("database", counted), ("none", Uncounted())):
            started = time.perf_counter()
            if not handle_record(ws, line, quota)["ok"]:  # type: ignore[arg-type]
                raise BenchError("a record was refused in the quota benchmark")
            times[name].append(time.perf_counter() - started)
    with_quota, without = (quantile(times[k], 0.5) * 1000 for k in ("database", "none"))
    emit(
        "workspaces.recorder.quota_cost.p50",
        with_quota - without,
        "ms",
        record_p50_ms=round(with_quota, 3),
        record_without_quota_p50_ms=round(without, 3),
        records=records,
        loadavg=loadavg(),
        note=NOTE,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 spawns per mode, 5 at once")
    parser.add_argument("--spawns", type=int, help="timed spawns per mode (default 10)")
    parser.add_argument("--concurrent", type=int, help="workspaces at once (default 20)")
    parser.add_argument("--persons", type=int, default=2000, help="demo registry size")
    parser.add_argument(
        "--workspace-env",
        default=str(WORKSPACE_ENV),
        help="the workspaces' Python environment (default .venv-workspace); point it at a "
        "modified copy to measure a change to the environment",
    )
    parser.add_argument(
        "--no-kernels-at-once",
        action="store_true",
        help="skip the kernel in each of the concurrent workspaces (shared-memory figure)",
    )
    parser.add_argument(
        "--services",
        default="",
        help="hub-managed services to run, comma-separated (api, worker, idle-culler; "
        "default none: only the hub, its proxy and the workspaces compete for the CPU)",
    )
    parser.add_argument(
        "--recorder-only",
        action="store_true",
        help="only the recorder's figures (cell round trip with and without it, its memory)",
    )
    parser.add_argument(
        "--recorder-cells",
        type=int,
        default=300,
        help="timed cells per path in the recorder's figures (default 300)",
    )
    args, _unknown = parser.parse_known_args(argv)  # run.py passes every benchmark's options
    spawns = args.spawns or (4 if args.quick else 10)
    concurrent = args.concurrent or (5 if args.quick else 20)
    env_dir = Path(args.workspace_env).resolve()
    reason = preflight(env_dir)
    if reason:
        emit("workspaces", None, "", skipped=True, reason=reason)
        return 0
    services = tuple(s for s in args.services.split(",") if s)
    n_users = max(
        2 if concurrent > NAMED_SERVERS_PER_USER else 1,
        math.ceil(concurrent / NAMED_SERVERS_PER_USER),
    )
    n_projects = math.ceil(concurrent / n_users)
    log(
        f"{spawns} timed spawns per mode, {concurrent} at once ({n_users} users x {n_projects} "
        f"projects); {NOTE}"
    )

    if args.recorder_only:
        with clean_run() as run:
            recorder_phase(env_dir, run.tmp, args.recorder_cells)
        return 0

    with clean_run() as run:
        log("the recorder: cell round trips with and without it")
        recorder_phase(env_dir, run.tmp, args.recorder_cells)
        for mode in ("none", "bwrap"):
            state = run.tmp / mode / "var"  # short: a socket path holds 107 bytes
            env = {
                "SPE_STATE_DIR": str(state),
                "SPE_HUB_PROXY_PORT": str(free_port()),
                "SPE_HUB_API_PORT": str(free_port()),
                "SPE_API_PORT": str(free_port()),
                "SPE_WORKSPACE_ENV_DIR": str(env_dir),
                "SPE_WORKSPACE_SANDBOX": mode,
            }
            hub = Hub(mode, state, env, services)
            run.hubs.append(hub)
            for key in [k for k in os.environ if k.startswith("SPE_")]:
                del os.environ[key]
            os.environ.update(env)
            reset_spe()
            log(f"building the SPE world of the {mode} hub in {state} ({args.persons:,} persons)")
            t = time.perf_counter()
            hub.world = make_world(n_users, n_projects, args.persons)
            log(
                f"  ready in {time.perf_counter() - t:.1f} s: users {hub.world.users}, projects "
                f"{hub.world.projects}"
            )
        log("profiling the notebook server's imports in the workspace environment")
        import_profile(env_dir)
        for hub in run.hubs:
            log(f"starting the hub with SPE_WORKSPACE_SANDBOX={hub.mode}")
            seconds = hub.start()
            log(f"  it answers after {seconds:.1f} s")
            emit("workspaces.hub_start", seconds, "s", sandbox=hub.mode, services=list(services))
            assert hub.world is not None
            hub.tokens = {u: login_token(hub, u) for u in hub.world.users}
        results = Results()
        log(f"spawn latency: {spawns} timed spawns per mode, alternating between the hubs")
        latency_phase(run.hubs, spawns, results)
        report_latency(results)
        bwrap_hub, none_hub = run.hubs[1], run.hubs[0]
        for hub in (bwrap_hub, none_hub):
            log(f"memory of an idle {hub.mode} workspace")
            memory_phase(hub)
        for hub in (bwrap_hub, none_hub):
            log(f"{concurrent} {hub.mode} workspaces at once")
            concurrency_phase(hub, concurrent, not args.no_kernels_at_once)
        for hub in run.hubs:
            hub.stop()
        failed = sum(len(v) for v in results.failures.values())
        if failed:
            emit("workspaces.spawn.failed", failed, "spawns", errors=results.failures)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        emit("workspaces.error", None, "", error=str(exc)[-2000:])
        sys.exit(1)
