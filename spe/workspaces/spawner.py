"""The hub's spawner: one workspace per (researcher, project), the named server called after
the project, serving on a unix socket in its run folder, sandboxed or not (SPE_WORKSPACE_SANDBOX).
Who may open it is checked on the form, when posted, at start and while it runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from jupyterhub.spawner import LocalProcessSpawner, Spawner
from jupyterhub.utils import maybe_future
from sqlalchemy import select
from sqlalchemy.orm import Session
from tornado import web
from traitlets import Float, default

from spe.accounts.models import User
from spe.config import Settings, get_settings
from spe.errors import SPEError
from spe.projects.models import Project, ProjectMember
from spe.workspaces import layout
from spe.workspaces.forwarder import HubGateway

T = TypeVar("T")

HUB_SOCKET = "hub.sock"  # in the run folder, beside the server's own socket
# jupyter-server refuses --sock unless its port is the default one (it then ignores it).
_JUPYTER_DEFAULT_PORT = 8888
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
NO_DEFAULT_SERVER = (
    "Each workspace belongs to one project: start the server named after the project "
    "(on the home page, add a named server called e.g. 'study')."
)


class WorkspaceRefused(web.HTTPError):
    """A workspace that may not start; the sentence is shown to the person on the hub."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(status, reason)
        self.jupyterhub_message = reason
        self.reason_text = reason

    def __str__(self) -> str:
        return self.reason_text


# --- what the database says (blocking; run in a thread) -----------------------------------------


def open_projects(session: Session, user: User) -> list[Project]:
    """The projects ``user`` may open a workspace for now, by slug."""
    from spe.accounts.permissions import Action, Target, can
    from spe.projects.states import is_open_for_work

    projects = session.scalars(
        select(Project)
        .join(ProjectMember, ProjectMember.project_id == Project.id)
        .where(ProjectMember.user_id == user.id, ProjectMember.removed_at.is_(None))
        .order_by(Project.slug)
    )
    return [
        p
        for p in projects
        if is_open_for_work(p) and can(session, user, Action.PROJECT_DATA_ACCESS, Target(project=p))
    ]


def workspace_refusal(session: Session, username: str, project_slug: str) -> str | None:
    """Why ``username`` may not work in ``project_slug`` now (None when they may); a person
    still waiting for the data holder's approval is told so."""
    from spe.projects.service import data_access_refusal
    from spe.projects.states import is_open_for_work

    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        return f"There is no SPE account {username!r}."
    project = session.scalar(select(Project).where(Project.slug == project_slug))
    if project is None:
        return f"There is no project {project_slug!r}; choose one of yours from the list."
    reason = data_access_refusal(session, user, project)
    if reason is not None:
        return reason
    if not is_open_for_work(project):
        return (
            f"Project {project.slug} is open for work from {project.start_date} to "
            f"{project.end_date}, not today."
        )
    return None


def record_spawn_refusal(username: str, project_slug: str, reason: str) -> None:
    """The refusal event of a workspace that may not start (its own transaction)."""
    from spe.audit.refusals import record_refusal

    record_refusal(username, "workspace.start", f"project:{project_slug}", reason)


def _refusal_now(username: str, project_slug: str) -> str | None:
    from spe.db import readonly

    with readonly() as session:
        return workspace_refusal(session, username, project_slug)


def _form_projects(username: str) -> list[tuple[str, str, dt.date]]:
    from spe.db import readonly

    with readonly() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            return []
        return [(p.slug, p.title, p.end_date) for p in open_projects(session, user)]


@dataclass(frozen=True)
class WorkspacePlan:
    """A workspace cleared to start: whose, which project, and its data folders on the host."""

    project: str
    username: str
    paths: layout.HostPaths
    mounts: dict[str, Path]  # dataset name -> folder of the project's extract


def admit_workspace(username: str, project_slug: str) -> WorkspacePlan:
    """Check access once more and record the start (audited, opens the airlock); blocking."""
    from spe.db import transaction
    from spe.projects.extracts import workspace_mounts
    from spe.workspaces.registry import workspace_started

    with transaction() as session:
        reason = workspace_refusal(session, username, project_slug)
        if reason is None:
            user = session.scalar(select(User).where(User.username == username))
            project = session.scalar(select(Project).where(Project.slug == project_slug))
            assert user is not None and project is not None
            from spe.dp.service import row_mounts

            # Aggregate-only datasets get no mount: they are queried through spe.dp only.
            mounts = row_mounts(session, project, workspace_mounts(session, project))
            workspace_started(session, user, project)
    if reason is not None:  # recorded once the refused transaction has ended
        record_spawn_refusal(username, project_slug, reason)
        raise WorkspaceRefused(reason)
    return WorkspacePlan(project_slug, username, layout.host_paths(project_slug, username), mounts)


def record_stopped(
    project_slug: str, username: str, reason: str, actor: str = "system:hub"
) -> None:
    """Mark the workspace stopped (audited, closes its airlock); blocking, never raises SPE."""
    from spe.db import transaction
    from spe.workspaces.registry import workspace_stopped

    with transaction() as session:
        workspace_stopped(session, actor, layout.workspace_id(project_slug, username), reason)


# --- folders and the server's command line (the seam where the sandbox plugs in) ----------------


def prepare_folders(plan: WorkspacePlan, sandbox: str) -> Path | None:
    """Home (with its outbox and the notebook templates) and run folder; the sandbox runner
    hands them to the workspace's own user. In "none" mode also a folder of links to the data
    (the sandbox binds the extracts instead); returns that folder, if made."""
    from spe.workspaces.templates import copy_templates

    paths = plan.paths
    server_socket = paths.server_socket
    if len(str(server_socket).encode()) > _UNIX_PATH_MAX:
        raise WorkspaceRefused(
            f"The workspace socket path {server_socket} is longer than a unix socket allows; "
            "ask the operator to use a shorter SPE_STATE_DIR.",
            500,
        )
    # Made 0700 once, never chmod-ed later: that would reset the ACL mask the runner sets.
    for folder in (paths.root, paths.home, paths.run):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.outbox.mkdir(exist_ok=True)
    copy_templates(paths.home)
    server_socket.unlink(missing_ok=True)
    data = paths.root / "data"
    if data.exists():  # links only: made afresh, so a revoked grant's data is gone
        shutil.rmtree(data)
    if sandbox != "none":
        # The airlock makes it too (0755) when it sees the workspace; bwrap needs it now.
        paths.airlock.mkdir(mode=0o755, parents=True, exist_ok=True)
        return None
    data.mkdir(mode=0o700)
    for name, folder in plan.mounts.items():
        (data / name).symlink_to(folder, target_is_directory=True)
    return data


@dataclass(frozen=True)
class ServerLaunch:
    """Everything needed to start one workspace's notebook server.

    ``argv``, ``env`` and ``cwd`` are as the server sees them: inside the sandbox the fixed
    paths of ``spe.workspaces.layout`` (HOME, PATH and USER are then the sandbox's to set); in
    "none" mode the host paths.
    """

    workspace: str
    sandbox: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    paths: layout.HostPaths
    mounts: dict[str, Path]
    env_dir: Path
    config_dir: Path | None = None  # the read-only workspace configuration (sandbox only)
    log_file: Path = field(default=Path(os.devnull))


def socket_url(path: Path) -> str:
    return "http+unix://" + quote(str(path), safe="")


def workspace_python(settings: Settings) -> Path:
    """The workspace environment's python; in "none" mode, this one while it is missing."""
    python = Path(settings.workspace_env_dir) / "bin" / "python"
    if python.exists() or settings.workspace_sandbox != "none":
        return python
    # Development only: scripts/workspace-env.sh has not been run yet.
    return Path(sys.executable)


def config_dir(settings: Settings) -> Path:
    """Where the workspaces' read-only configuration is written on the host."""
    return Path(settings.state_dir).resolve() / "workspace-config"


def server_launch(
    plan: WorkspacePlan,
    hub_env: dict[str, str],
    settings: Settings,
    data_links: Path | None = None,
) -> ServerLaunch:
    """The notebook server's command line and environment for a workspace (pure)."""
    from spe.workspaces.workspace_config import workspace_environment

    paths = plan.paths
    sandboxed = settings.workspace_sandbox != "none"
    python = workspace_python(settings)
    if sandboxed:
        home, outbox, data, run = layout.HOME, layout.OUTBOX, layout.DATA, layout.RUN
    else:
        home, outbox, run = paths.home, paths.outbox, paths.run
        data = data_links if data_links is not None else paths.root / "data"
    base_url = hub_env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    hub_api = socket_url(run / HUB_SOCKET) + "/hub/api"
    env = dict(hub_env)
    env.update(
        {
            # The hub is reached through the workspace's own gateway socket, not the network.
            "JUPYTERHUB_API_URL": hub_api,
            "JUPYTERHUB_ACTIVITY_URL": f"{hub_api}/users/{quote(plan.username)}/activity",
            # Only read for its path (and a port jupyter-server accepts next to --sock).
            "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{_JUPYTER_DEFAULT_PORT}{base_url}",
            "JUPYTERHUB_SINGLEUSER_EXTENSION": "1",
            "LANG": "C.UTF-8",
            "PYTHONNOUSERSITE": "1",
            "SPE_WORKSPACE_DATA_DIR": str(data),
            "SPE_OUTBOX_DIR": str(outbox),
        }
    )
    argv = [
        str(python),
        # Isolated: neither the working directory nor PYTHON* variables decide what the server
        # imports (serve.harden_process leaves the home out of sys.path too).
        "-I",
        "-m",
        "spe.workspaces.serve",  # jupyterhub.singleuser on the socket made by start_server
        f"--ServerApp.sock={run / layout.SERVER_SOCKET}",
        "--ServerApp.sock_mode=0600",
        f"--ServerApp.root_dir={home}",
    ]
    if sandboxed:
        # The read-only configuration: cell audit, SPE's kernel only, no terminals.
        env.update(workspace_environment(str(python)))
    else:
        env.update(
            {
                "HOME": str(home),
                "USER": plan.username,
                "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
                "SPE_AIRLOCK_SOCKET": str(paths.airlock_socket),
            }
        )
        # Unsandboxed, the server runs as whoever runs the hub (root on the demo machine).
        argv.append("--ServerApp.allow_root=True")
    return ServerLaunch(
        workspace=layout.workspace_id(plan.project, plan.username),
        sandbox=settings.workspace_sandbox,
        argv=argv,
        env=env,
        cwd=home,
        paths=paths,
        mounts=plan.mounts,
        env_dir=Path(settings.workspace_env_dir),
        config_dir=config_dir(settings) if sandboxed else None,
        log_file=paths.root / "server.log",
    )


def sandbox_owner(workspace: str) -> tuple[int, int] | None:
    """The workspace's own (uid, gid) when sandboxes get one (the hub runs as root)."""
    if os.geteuid() != 0:
        return None
    from spe.workspaces.sandbox_run import workspace_user

    return workspace_user(workspace)


def server_listener(path: Path) -> socket.socket:
    """The server's listening socket, made here (outside any sandbox) and handed over as an fd:
    inside the sandbox its folder is read-only, so nothing there can replace it."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)  # the proxy (this machine's hub user) connects; nobody else
        listener.listen(128)
    except BaseException:
        listener.close()
        raise
    return listener


def start_server(launch: ServerLaunch, settings: Settings) -> subprocess.Popen[bytes]:
    """Start the notebook server: a plain process, or inside the bubblewrap sandbox."""
    listener = server_listener(launch.paths.server_socket)
    try:
        return _start_server(launch, settings, listener.fileno())
    finally:
        listener.close()  # the server holds its own copy


def _start_server(
    launch: ServerLaunch, settings: Settings, listener_fd: int
) -> subprocess.Popen[bytes]:
    env = {**launch.env, "SPE_SERVER_FD": str(listener_fd)}
    with open(launch.log_file, "ab") as log:
        if launch.sandbox == "none":
            return subprocess.Popen(
                launch.argv,
                pass_fds=[listener_fd],
                env=env,
                cwd=launch.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        from spe.workspaces.sandbox import SandboxSpec
        from spe.workspaces.sandbox_run import SandboxLimits, start_sandbox
        from spe.workspaces.workspace_config import write_config_dir

        assert launch.config_dir is not None
        write_config_dir(launch.config_dir, launch.argv[0])
        # jupyter_core otherwise tries to write this marker into the read-only config folder
        # at every start, and the server dies (to move into write_config_dir).
        marker = launch.config_dir / "jupyter" / "migrated"
        if not marker.exists():
            marker.write_text("written by SPE: nothing to migrate\n")
            marker.chmod(0o644)
        owner = sandbox_owner(launch.workspace)
        spec = SandboxSpec(
            workspace_id=launch.workspace,
            home=launch.paths.home,
            datasets=launch.mounts,
            run_dir=launch.paths.run,
            airlock_dir=launch.paths.airlock,
            config_dir=launch.config_dir,
            env_dir=launch.env_dir,
            command=launch.argv,
            env=env,
            pass_fds=(listener_fd,),
            uid=owner[0] if owner else None,
            gid=owner[1] if owner else None,
        )
        limits = SandboxLimits(
            settings.workspace_memory_mb, settings.workspace_pids_max, settings.workspace_cpus
        )
        return start_sandbox(spec, limits, stdout=log, stderr=subprocess.STDOUT)


def start_recorder(plan: WorkspacePlan) -> subprocess.Popen[bytes]:
    """Start the workspace's recorder (spe.hub.recorder) on its own socket, outside the sandbox,
    under the hub's uid; the proxy reaches the notebook server only through it."""
    paths = plan.paths
    listener = server_listener(paths.recorder_socket)
    try:
        with open(paths.root / "recorder.log", "ab") as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "spe.hub.recorder",
                    f"--fd={listener.fileno()}",
                    f"--upstream={paths.server_socket}",
                    f"--record-socket={paths.record_socket}",
                    f"--code-text-bytes={get_settings().recorder_code_text_bytes}",
                    f"--read-bytes-per-day={get_settings().workspace_read_bytes_per_day}",
                    f"--read-alarm-bytes={get_settings().workspace_read_alarm_bytes}",
                    f"--workspace={layout.workspace_id(plan.project, plan.username)}",
                ],
                pass_fds=[listener.fileno()],
                # Nothing of the hub's settings: the recorder holds no database credentials.
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    finally:
        listener.close()


def stop_recorder(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def end_sandbox(workspace: str) -> None:
    """Remove what a sandbox leaves behind on the host (its cgroups, and what runs in them)."""
    from spe.workspaces.sandbox_run import remove_cgroups

    remove_cgroups(workspace)


# --- the spawner --------------------------------------------------------------------------------


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


async def workspace_options_form(spawner: WorkspaceSpawner) -> str:
    """The spawn form: only the projects this person may open now."""
    projects = await _in_thread(_form_projects, spawner.user.name)
    if not projects:
        return (
            "<p>You have no project open for work now. A project needs to be approved and "
            "running, you need to be one of its members, and you need to have accepted the "
            "current terms of use.</p>"
        )
    options = []
    for slug, title, end in projects:
        selected = " selected" if slug == spawner.name else ""
        label = html.escape(f"{title} ({slug}), open until {end}")
        options.append(f'<option value="{html.escape(slug)}"{selected}>{label}</option>')
    return (
        '<label for="spe-project">Project</label>\n'
        '<select class="form-control" name="project" id="spe-project">\n'
        + "\n".join(options)
        + "\n</select>\n"
        "<p>The workspace sees only this project's data; results leave it through an export "
        "request.</p>"
    )


def _apply_user_options(spawner: WorkspaceSpawner, options: dict[str, Any]) -> None:
    # The only choice is the project, and it must be the server's name (start() checks it
    # against the database); anything else sent to the REST API is refused, not ignored.
    unknown = sorted(set(options) - {"project"})
    if unknown:
        raise WorkspaceRefused(f"A workspace has no option {unknown[0]!r}.", 400)


class WorkspaceSpawner(LocalProcessSpawner):
    """A workspace: the named server called after its project, for one researcher."""

    access_check_interval = Float(
        30.0,
        help="Seconds between checks that a running workspace's project is still open to its "
        "user (closed, ended, membership or account gone: the workspace stops).",
    ).tag(config=True)

    _gateway: HubGateway | None = None
    _recorder: subprocess.Popen[bytes] | None = None
    _plan: WorkspacePlan | None = None
    _last_access_check: float = 0.0
    _stop_reason: str | None = None

    @default("options_form")
    def _default_options_form(self) -> Any:
        return workspace_options_form

    @default("options_from_form")
    def _default_options_from_form(self) -> Any:
        return self._options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        return _apply_user_options

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        return []  # nothing of the hub's environment leaks into a workspace

    @default("interrupt_timeout")
    def _default_interrupt_timeout(self) -> int:
        return 10

    @default("term_timeout")
    def _default_term_timeout(self) -> int:
        return 5

    # JupyterHub keeps only (proto, ip, port) of a server, which cannot hold a socket path;
    # the socket is a function of the workspace, so its URL is set on every server object.
    @property
    def server(self) -> Any:
        server = Spawner.server.fget(self)
        if server is not None and not server.connect_url:
            path = self._socket_path()
            if path is not None:
                server.connect_url = socket_url(path)
        return server

    @server.setter
    def server(self, value: Any) -> None:
        Spawner.server.fset(self, value)

    def _socket_path(self) -> Path | None:
        # The recorder's socket: the proxy never reaches the notebook server directly.
        try:
            return layout.host_paths(self.name, self.user.name).recorder_socket
        except ValueError:  # not a name a workspace can have; start() refuses it
            return None

    def make_preexec_fn(self, name: str) -> None:
        # No setuid to a system account: researchers are SPE accounts, not Unix users; the
        # sandbox decides the identity the server runs under.
        return None

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        return env  # HOME and USER come from the launch, not from /etc/passwd

    async def _options_from_form(self, form_data: dict[str, list[str]]) -> dict[str, str]:
        chosen = (form_data.get("project") or [""])[0].strip()
        if not chosen:
            raise WorkspaceRefused("Choose a project.", 400)
        if not self.name:
            raise WorkspaceRefused(NO_DEFAULT_SERVER, 400)
        if chosen != self.name:
            raise WorkspaceRefused(
                f"This workspace is for project {self.name}; to work on {chosen}, start the "
                f"workspace named {chosen}.",
                400,
            )
        reason = await _in_thread(_refusal_now, self.user.name, chosen)
        if reason is not None:
            await _in_thread(record_spawn_refusal, self.user.name, chosen, reason)
            raise WorkspaceRefused(reason)
        return {"project": chosen}

    async def start(self) -> str:
        slug, username = self.name, self.user.name
        if not slug:
            raise WorkspaceRefused(NO_DEFAULT_SERVER, 400)
        # user_options may come from the REST API, which skips the form: checked again here.
        chosen = (self.user_options or {}).get("project", slug)
        if chosen != slug:
            raise WorkspaceRefused(f"This workspace is for project {slug}, not {chosen}.", 400)
        settings = get_settings()
        plan = await _in_thread(admit_workspace, username, slug)
        data_links = await _in_thread(prepare_folders, plan, settings.workspace_sandbox)
        # Before the server: it asks the hub for its version as it starts. The sandbox runner
        # hands the socket to the workspace's user with the rest of the run folder.
        await self._open_gateway(owner=None)
        launch = server_launch(plan, self.get_env(), settings, data_links)
        self.log.info("Starting workspace %s (%s)", launch.workspace, launch.sandbox)
        self.proc = await _in_thread(start_server, launch, settings)
        self.pid = self.proc.pid
        self._plan = plan
        self._recorder = await _in_thread(start_recorder, plan)
        self._last_access_check = time.monotonic()
        _ = self.server  # sets the socket URL on the server object
        return socket_url(plan.paths.recorder_socket)

    async def _open_gateway(self, owner: tuple[int, int] | None) -> None:
        if self._gateway is not None:
            await self._gateway.stop()
        self._gateway = HubGateway(
            layout.host_paths(self.name, self.user.name).run / HUB_SOCKET,
            self.user.name,
            # The hub's API (loopback TCP), reached from outside the sandbox.
            f"http://127.0.0.1:{get_settings().hub_api_port}",
            owner,
        )
        await self._gateway.start()

    async def poll(self) -> int | None:
        status: int | None = await super().poll()
        if status is not None or not self.name or self._stop_pending:
            return status
        if self._gateway is None or not self._gateway.running:
            # The hub restarted while the workspace ran on: its road to the hub comes back.
            owner = None
            if get_settings().workspace_sandbox != "none":
                owner = await _in_thread(
                    sandbox_owner, layout.workspace_id(self.name, self.user.name)
                )
            await self._open_gateway(owner)
        if self._recorder is None or self._recorder.poll() is not None:
            # The only way in is gone (it died, or the hub restarted): it comes back, or
            # nothing reaches the workspace, which is the safe side.
            plan = self._plan or WorkspacePlan(
                self.name, self.user.name, layout.host_paths(self.name, self.user.name), {}
            )
            self._recorder = await _in_thread(start_recorder, plan)
        if time.monotonic() - self._last_access_check >= self.access_check_interval:
            self._last_access_check = time.monotonic()
            reason = await _in_thread(_refusal_now, self.user.name, self.name)
            if reason is not None:
                self.log.warning("Stopping workspace %s: %s", self._log_name, reason)
                await _in_thread(record_stopped, self.name, self.user.name, reason)
                self._stop_reason = reason
                await self._kill()
                return await super().poll() or 0
        return None

    async def _kill(self) -> None:
        await self._signal(signal.SIGTERM)
        await self.wait_for_death(self.term_timeout)
        if await self._signal(0):
            await self._signal(signal.SIGKILL)
            await self.wait_for_death(self.kill_timeout)

    async def _signal(self, sig: int) -> bool:
        """Signal the server's whole process group (its kernels too); True if it still runs."""
        if not self.pid:
            return False
        try:
            if sig != 0 and os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    async def stop(self, now: bool = False) -> None:
        self._stop_reason = "stopped by the hub (its user, the idle culler or the platform)"
        await super().stop(now=now)

    def run_post_stop_hook(self) -> Any:
        # The hub runs this after every stop, also when the server had already died (then it
        # never calls stop()): the one place to close the gateway and record the end.
        return self._after_stop()

    async def _after_stop(self) -> None:
        reason = self._stop_reason or "the notebook server ended by itself"
        self._stop_reason = None
        if self._gateway is not None:
            await self._gateway.stop()
            self._gateway = None
        await _in_thread(stop_recorder, self._recorder)
        self._recorder = None
        if self._socket_path() is not None:  # a workspace's name: it may have started
            steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
                (record_stopped, (self.name, self.user.name, reason)),
            ]
            if get_settings().workspace_sandbox != "none":
                steps.append((end_sandbox, (layout.workspace_id(self.name, self.user.name),)))
            for step, args in steps:
                try:
                    await _in_thread(step, *args)
                except SPEError as exc:  # the other steps still run
                    self.log.error("After stopping %s: %s", self._log_name, exc)
            paths = layout.host_paths(self.name, self.user.name)
            paths.server_socket.unlink(missing_ok=True)
            paths.recorder_socket.unlink(missing_ok=True)
        await maybe_future(super().run_post_stop_hook())
