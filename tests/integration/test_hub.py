"""The front door for real: JupyterHub, configurable-http-proxy and a workspace on free ports.

One hub serves the whole module (starting it is the slow part), over a temporary SQLite SPE
with a small world; workspaces run unsandboxed here (SPE_WORKSPACE_SANDBOX=none). Skipped
with the reason where configurable-http-proxy or a single-user server is missing, except under
CI, where it must run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    IN_CI,
    REPO,
    World,
    _clear_spe_env,
    _reset_spe,
    synthetic_numbers,
    write_people_csv,
    write_policy,
)

pytestmark = pytest.mark.slow

requests = pytest.importorskip("requests")  # comes with jupyterhub

CHP = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
PASSWORD = "correct horse battery"


def _need(ok: bool, reason: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(reason + "; CI must run the hub tests")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env_ok(env: Path) -> bool:
    python = env / "bin" / "python"
    if not python.exists():
        return False
    check = subprocess.run(
        [str(python), "-c", "import jupyterhub.singleuser.extension, jupyter_server"],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "JUPYTERHUB_SINGLEUSER_EXTENSION": "1"},
        check=False,
    )
    return check.returncode == 0


def _server_env() -> Path | None:
    """A Python environment that can run the single-user server: the workspaces' own when it
    has jupyterhub in it, else this one (development)."""
    for env in (REPO / ".venv-workspace", Path(sys.prefix)):
        if _server_env_ok(env):
            return env
    return None


_HUB_MAIN = (
    "from spe.workspaces.hub import run_hub; "
    "run_hub(services=('idle-culler', 'api'), overrides={"
    # Quick polls: a workspace whose project ends stops within a second or two.
    "'Spawner': {'poll_interval': 1}, "
    "'WorkspaceSpawner': {'access_check_interval': 1}})"
)


@dataclass
class Hub:
    url: str  # the proxy, as the browser (or the download filter) reaches it
    state: Path
    log: Path
    env: dict[str, str]  # the SPE_ settings it runs with
    process: subprocess.Popen[bytes] | None = None

    def start(self, **settings: str) -> None:
        """(Re)start the hub, with changed SPE_ settings if given."""
        self.stop()
        self.env.update(settings)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
        child_env.update(self.env)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _HUB_MAIN],
                cwd=REPO,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait(lambda: _answers(self.url + "/hub/api"), 40, "the hub to answer", self)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _make_world(tmp: Path) -> None:
    from spe.accounts.service import accept_terms, get_organisation, get_user
    from spe.db import transaction
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy
    from spe.projects.extracts import extract, grant_dataset
    from spe.projects.service import approve_project, create_project, get_project

    World()  # 'researcher' leads the pending project 'study'
    ingest(
        "reviewer",
        write_people_csv(tmp / "people.csv", synthetic_numbers(30)),
        load_policy(write_policy(tmp)),
    )
    today = dt.datetime.now(dt.UTC).date()
    with transaction() as s:
        holder, uni, uni_b = (get_organisation(s, n) for n in ("Holder Agency", "Uni A", "Uni B"))
        # Someone else's project, and one of researcher's that has not started yet.
        create_project(
            s, get_user(s, "researcher_b"), "other", "B's study", "Other work", holder, uni_b,
            today, today + dt.timedelta(days=30),
        )  # fmt: skip
        create_project(
            s, get_user(s, "researcher"), "later", "Later", "Future work", holder, uni,
            today + dt.timedelta(days=10), today + dt.timedelta(days=40),
        )  # fmt: skip
    with transaction() as s:
        reviewer = get_user(s, "reviewer")
        for slug in ("study", "other", "later"):
            approve_project(s, reviewer, get_project(s, slug))
        grant_dataset(s, reviewer, get_project(s, "study"), "people", ["income"])
        for name in ("researcher", "researcher_b", "researcher2"):
            accept_terms(s, get_user(s, name))
    extract("study", "people")


@pytest.fixture(scope="module")
def hub(sqlite_template: Path) -> Iterator[Hub]:
    _need(
        os.access(CHP, os.X_OK),
        f"configurable-http-proxy is not installed at {CHP} (run `npm ci`)",
    )
    server_env = _server_env()
    _need(server_env is not None, "no Python environment with jupyterhub and jupyter_server")
    # Not under pytest's temporary folder: every pytest session (also a concurrent one)
    # chmods that to 0700, which resets the ACL that lets a sandbox's user reach its folders.
    tmp = Path(tempfile.mkdtemp(prefix="spe-hub-test-"))
    state = tmp / "var"
    shutil.copytree(sqlite_template, state)
    os.chmod(state / "keys" / "platform.key", 0o600)
    proxy_port = _free_port()
    env = {
        "SPE_STATE_DIR": str(state),
        "SPE_HUB_PROXY_PORT": str(proxy_port),
        "SPE_HUB_API_PORT": str(_free_port()),
        "SPE_API_PORT": str(_free_port()),
        "SPE_WORKSPACE_SANDBOX": "none",
        "SPE_WORKSPACE_ENV_DIR": str(server_env),
        "SPE_HUB_AUTH_REFRESH_SECONDS": "10",  # revocations reach the hub within 10 s
    }
    with pytest.MonkeyPatch.context() as mp:
        _clear_spe_env(mp)
        for key, value in env.items():
            mp.setenv(key, value)
        _reset_spe()
        _make_world(tmp)
        running = Hub(f"http://127.0.0.1:{proxy_port}", state, tmp / "hub.log", env)
        try:
            running.start()
            yield running
        finally:
            running.stop()
            _reset_spe()
            shutil.rmtree(tmp, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return bool(requests.get(url, timeout=2).status_code == 200)
    except requests.ConnectionError:
        return False


def _wait(check: Any, timeout: float, what: str, hub: Hub | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if hub is not None and (hub.process is None or hub.process.poll() is not None):
            break
        time.sleep(0.2)
    tail = hub.log.read_text(errors="replace")[-3000:] if hub is not None else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def _login(hub: Hub, username: str, password: str = PASSWORD) -> tuple[Any, Any]:
    """A browser session and the answer to its login."""
    session = requests.Session()
    session.get(hub.url + "/hub/login")
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    answer = session.post(
        hub.url + "/hub/login",
        data={"username": username, "password": password, "_xsrf": xsrf},
        allow_redirects=False,
    )
    return session, answer


def _xsrf(session: Any) -> dict[str, str]:
    return {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}


def _logged_in(hub: Hub, username: str = "researcher") -> Any:
    session, answer = _login(hub, username)
    assert answer.status_code == 302, answer.text[:500]
    return session


def _events(action_prefix: str, target: str) -> list[tuple[str, dict[str, Any]]]:
    from sqlalchemy import select

    from spe.audit.models import AuditEvent
    from spe.db import readonly

    with readonly() as s:
        rows = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.startswith(action_prefix), AuditEvent.target == target)
            .order_by(AuditEvent.id)
        ).all()
        return [
            (r.action, json.loads(r.details) if isinstance(r.details, str) else r.details)
            for r in rows
        ]


def _server(session: Any, hub: Hub, project: str = "study") -> dict[str, Any] | None:
    model = session.get(f"{hub.url}/hub/api/users/researcher", headers=_xsrf(session)).json()
    server: dict[str, Any] | None = model["servers"].get(project)
    return server


def _spawn_form_projects(session: Any, hub: Hub, project: str = "study") -> list[str]:
    page = session.get(f"{hub.url}/hub/spawn/researcher/{project}")
    assert page.status_code == 200, page.text[:500]
    return re.findall(r'<option value="([^"]*)"', page.text)


def _form_post(session: Any, hub: Hub, server: str, project: str) -> Any:
    page = session.get(f"{hub.url}/hub/spawn/researcher/{server}")
    action = re.search(r'action="([^"]+)"', page.text)
    assert action is not None, page.text[:500]
    return session.post(
        hub.url + action.group(1).replace("&amp;", "&"),
        data={"project": project},
        allow_redirects=False,
    )


def _ensure_running(session: Any, hub: Hub) -> dict[str, Any]:
    if not (_server(session, hub) or {}).get("ready"):
        answer = session.post(
            f"{hub.url}/hub/api/users/researcher/servers/study",
            json={"project": "study"},
            headers=_xsrf(session),
        )
        assert answer.status_code in (201, 202), answer.text
        _wait(lambda: (_server(session, hub) or {}).get("ready"), 45, "the workspace", hub)
    server = _server(session, hub)
    assert server is not None
    return server


def _ended(pid: int) -> bool:
    """Gone, or a zombie: dead, waiting for this machine's init to reap it (which may be late)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status


def _workspace_pid(hub: Hub) -> int | None:
    """The notebook server's process (inside the sandbox, if any: not bwrap's)."""
    from spe.workspaces.layout import host_paths

    sandboxed = hub.env["SPE_WORKSPACE_SANDBOX"] != "none"
    socket_path = (
        "/run/spe/server.sock"
        if sandboxed
        else str(host_paths("study", "researcher").server_socket)
    )
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        server = "spe.workspaces.serve" in argv and f"--ServerApp.sock={socket_path}" in argv
        if server and not argv[0].endswith("bwrap"):
            return int(entry.name)
    return None


# --- the configuration, without a hub ------------------------------------------------------------


def test_hub_configuration_comes_from_spe_settings(tmp_path: Path) -> None:
    from spe.config import load_settings
    from spe.workspaces.hub_config import ensure_hub_files, hub_config

    settings = load_settings(
        state_dir=tmp_path, hub_proxy_port=9001, hub_api_port=9081, workspace_idle_minutes=7
    )
    files, found = ensure_hub_files(settings)
    for secret in (files.cookie_secret, files.proxy_token, files.control_token):
        assert secret.stat().st_mode & 0o777 == 0o600
    config = hub_config(settings, files, found, public_url="https://spe.example/")
    hub = config["JupyterHub"]
    assert hub["bind_url"] == "http://127.0.0.1:9001"
    assert (hub["hub_ip"], hub["hub_port"]) == ("127.0.0.1", 9081)
    assert hub["public_url"] == "https://spe.example/"
    assert hub["allow_named_servers"] is True
    assert hub["db_url"] == f"sqlite:///{tmp_path.resolve() / 'hub' / 'jupyterhub.sqlite'}"
    services = {s["name"]: s for s in hub["services"]}
    assert services["spe"]["command"][-2:] == ["spe.cli", "api"]
    assert services["spe"]["url"] == "http://127.0.0.1:8040"  # proxied at /services/spe/
    assert hub["default_url"] == "/services/spe/"
    assert services["spe-worker"]["command"][-2:] == ["spe.cli", "worker"]
    assert "--timeout=420" in services["idle-culler"]["command"]
    assert services["spe"]["environment"]["SPE_STATE_DIR"] == str(tmp_path)
    roles = {r["name"]: r for r in hub["load_roles"]}
    assert {"list:users", "delete:servers"} <= set(roles["spe-idle-culler"]["scopes"])
    assert roles["spe-control"]["services"] == ["spe-control"]
    proxy = config["ConfigurableHTTPProxy"]
    assert proxy["command"][0].endswith("node_modules/.bin/configurable-http-proxy")
    assert proxy["api_url"].startswith("http+unix://")  # no second TCP port
    assert found.proxy_token not in repr(found)


# --- the hub, for real ---------------------------------------------------------------------------


def test_hub_answers_through_the_proxy(hub: Hub) -> None:
    version = requests.get(hub.url + "/hub/api", timeout=5)
    assert version.status_code == 200 and "version" in version.json()
    assert requests.get(hub.url + "/hub/login", timeout=5).status_code == 200
    generated = hub.state / "hub" / "jupyterhub_config.py"
    assert generated.stat().st_mode & 0o777 == 0o600
    assert "import apply_hub_config" in generated.read_text()


def test_login_with_the_spe_password_works_and_is_audited(hub: Hub) -> None:
    before = len(_events("user.login", "user:researcher"))
    _, answer = _login(hub, "researcher")
    assert answer.status_code == 302 and answer.headers["Location"].endswith(
        "/services/spe/"
    )  # the pages
    events = _events("user.login", "user:researcher")[before:]
    assert [a for a, _ in events] == ["user.login"]
    assert events[0][1]["source"].startswith("hub from ")


def test_a_wrong_password_fails_and_is_audited(hub: Hub) -> None:
    before = len(_events("user.login", "user:researcher_b"))
    session, answer = _login(hub, "researcher_b", "not the password")
    assert answer.status_code == 403
    assert "jupyterhub-hub-login" not in session.cookies
    events = _events("user.login", "user:researcher_b")[before:]
    assert [a for a, _ in events] == ["user.login_failed"]
    _, unknown = _login(hub, "nobody-here", "whatever")
    assert unknown.status_code == 403
    assert [a for a, _ in _events("user.login", "user:nobody-here")] == ["user.login_failed"]


def test_repeated_failures_lock_the_account(hub: Hub) -> None:
    from spe.workspaces.authenticator import MAX_FAILED_LOGINS

    for _ in range(MAX_FAILED_LOGINS):
        assert _login(hub, "researcher2", "wrong guess")[1].status_code == 403
    # Locked: even the right password is refused now, and that attempt is recorded too.
    assert _login(hub, "researcher2", PASSWORD)[1].status_code == 403
    events = [a for a, _ in _events("user.", "user:researcher2")]
    assert events.count("user.login_failed") == MAX_FAILED_LOGINS + 1
    assert "user.lock" in events and "user.login" not in events
    from spe.accounts.service import get_user
    from spe.db import readonly

    with readonly() as s:
        assert get_user(s, "researcher2").locked_until is not None


def test_the_spawn_form_lists_exactly_the_projects_the_user_may_open(hub: Hub) -> None:
    # 'other' is not theirs; 'later' is theirs but has not started.
    assert _spawn_form_projects(_logged_in(hub), hub) == ["study"]


def test_posting_another_project_is_refused(hub: Hub) -> None:
    session = _logged_in(hub)
    mismatch = _form_post(session, hub, "study", "other")
    assert "This workspace is for project study" in mismatch.text
    not_a_member = _form_post(session, hub, "other", "other")
    assert "not a member of project other" in not_a_member.text
    not_started = _form_post(session, hub, "later", "later")
    assert "open for work from" in not_started.text
    # The REST API skips the form; the spawner checks again at start.
    by_api = session.post(
        f"{hub.url}/hub/api/users/researcher/servers/other",
        json={"project": "other"},
        headers=_xsrf(session),
    )
    assert by_api.status_code == 403 and "not a member" in by_api.json()["message"]
    odd = session.post(
        f"{hub.url}/hub/api/users/researcher/servers/study",
        json={"project": "study", "image": "mine"},
        headers=_xsrf(session),
    )
    assert odd.status_code == 400
    assert _server(session, hub, "other") is None and _server(session, hub) is None


def test_a_workspace_spawns_and_answers_through_the_proxy(hub: Hub) -> None:
    from spe.workspaces.layout import host_paths

    session = _logged_in(hub)
    answer = _form_post(session, hub, "study", "study")
    assert answer.status_code == 302, answer.text[:500]
    _wait(lambda: (_server(session, hub) or {}).get("ready"), 45, "the workspace", hub)
    # A browser page of the workspace sends the person through the hub's OAuth and back.
    page = session.get(f"{hub.url}/user/researcher/study/view/nothing.txt")
    assert page.status_code == 404 and "oauth_callback" in page.history[-1].url
    status = session.get(f"{hub.url}/user/researcher/study/api/status")
    assert status.status_code == 200 and "last_activity" in status.json()
    paths = host_paths("study", "researcher")
    assert paths.server_socket.is_socket()  # the server listens on its unix socket ...
    assert paths.recorder_socket.is_socket()  # ... and the proxy reaches it only through this
    assert (paths.root / "data" / "people" / "data.parquet").exists()
    assert paths.outbox.is_dir()
    assert [a for a, _ in _events("workspace.", "workspace:study--researcher")][-1] == (
        "workspace.start"
    )


def test_the_workspace_reaches_only_its_own_hub_calls_through_its_gateway(hub: Hub) -> None:
    from spe.workspaces.layout import host_paths
    from spe.workspaces.spawner import HUB_SOCKET

    _ensure_running(_logged_in(hub), hub)
    gateway = str(host_paths("study", "researcher").run / HUB_SOCKET)

    def get(path: str) -> int:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(gateway)
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n".encode())
            head = conn.recv(4096).decode(errors="replace")
        return int(head.split()[1])

    assert get("/hub/api") == 200
    assert get("/hub/api/users") == 403
    assert get("/hub/api/users/researcher/tokens") == 403
    assert get("/hub/login") == 403
    assert get("/hub/api/../api/users") == 403


def test_stopping_a_workspace_stops_its_server(hub: Hub) -> None:
    from spe.workspaces.layout import host_paths

    session = _logged_in(hub)
    _ensure_running(session, hub)
    pid = _workspace_pid(hub)
    assert pid is not None
    answer = session.delete(
        f"{hub.url}/hub/api/users/researcher/servers/study", headers=_xsrf(session)
    )
    assert answer.status_code in (202, 204)
    _wait(lambda: not (_server(session, hub) or {}).get("ready"), 30, "the stop", hub)
    _wait(lambda: _ended(pid), 30, "the server process to end", hub)
    assert not host_paths("study", "researcher").server_socket.exists()
    assert not host_paths("study", "researcher").recorder_socket.exists()
    action, details = _events("workspace.", "workspace:study--researcher")[-1]
    assert action == "workspace.stop" and "stopped by the hub" in details["reason"]


def test_stop_workspaces_of_stops_a_projects_workspaces(hub: Hub) -> None:
    from spe.workspaces.hub import stop_workspaces_of

    session = _logged_in(hub)
    _ensure_running(session, hub)
    pid = _workspace_pid(hub)
    assert stop_workspaces_of("study", reason="project closed") == ["study--researcher"]
    assert _server(session, hub) is None  # stopped and forgotten
    _wait(lambda: pid is None or _ended(pid), 30, "the process", hub)
    action, details = _events("workspace.", "workspace:study--researcher")[-1]
    assert (action, details["reason"]) == ("workspace.stop", "project closed")
    assert stop_workspaces_of("study") == []  # nothing left to stop


def test_a_running_workspace_stops_when_its_project_ends(hub: Hub) -> None:
    from spe.audit import record
    from spe.db import transaction
    from spe.projects.service import get_project

    session = _logged_in(hub)
    _ensure_running(session, hub)

    def set_end(day: dt.date) -> None:
        with transaction() as s:
            project = get_project(s, "study")
            project.end_date = day
            record(s, "system:test", "project.test_end_date", "project:study", {"end": str(day)})

    today = dt.datetime.now(dt.UTC).date()
    set_end(today - dt.timedelta(days=1))  # as if the end date had passed
    try:
        _wait(lambda: _server(session, hub) is None, 20, "the workspace to stop itself", hub)
        action, details = _events("workspace.", "workspace:study--researcher")[-1]
        assert action == "workspace.stop" and "ended on" in details["reason"]
    finally:
        set_end(today + dt.timedelta(days=30))


def test_a_sandboxed_workspace_spawns_and_answers_through_the_proxy(hub: Hub) -> None:
    """Last: restarts the module's hub with SPE_WORKSPACE_SANDBOX=bwrap."""
    from spe.workspaces.layout import host_paths

    _need(shutil.which("bwrap") is not None, "bubblewrap (bwrap) is not installed")
    env_dir = Path(os.environ.get("SPE_TEST_WORKSPACE_ENV", REPO / ".venv-workspace"))
    _need(
        _server_env_ok(env_dir),
        f"the workspace environment {env_dir} cannot run jupyterhub-singleuser (add "
        "jupyterhub to scripts/workspace-env.sh)",
    )
    hub.start(SPE_WORKSPACE_SANDBOX="bwrap", SPE_WORKSPACE_ENV_DIR=str(env_dir))
    session = _logged_in(hub)
    _ensure_running(session, hub)
    page = session.get(f"{hub.url}/user/researcher/study/view/nothing.txt")
    assert "oauth_callback" in page.history[-1].url
    status = session.get(f"{hub.url}/user/researcher/study/api/status")
    assert status.status_code == 200, status.text
    pid = _workspace_pid(hub)
    assert pid is not None
    uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
    assert uid != 0  # the workspace's own user, never root
    assert host_paths("study", "researcher").server_socket.is_socket()
    answer = session.delete(
        f"{hub.url}/hub/api/users/researcher/servers/study", headers=_xsrf(session)
    )
    assert answer.status_code in (202, 204)
    _wait(lambda: _ended(pid), 30, "the sandbox to end", hub)


# --- one-time passwords and revocation at the hub (issue 16) ------------------------------------


def test_a_one_time_password_logs_in_to_the_hub_once_and_opens_no_workspace(hub: Hub) -> None:
    from spe.accounts.service import get_user, reset_password
    from spe.db import transaction

    with transaction() as s:
        one_time = reset_password(s, get_user(s, "op"), get_user(s, "researcher_b"))
    session, answer = _login(hub, "researcher_b", one_time)
    assert answer.status_code == 302, answer.text[:300]
    spawn = session.post(
        f"{hub.url}/hub/api/users/researcher_b/servers/other",
        json={"project": "other"},
        headers=_xsrf(session),
    )
    assert spawn.status_code >= 400 and "Set your own password first" in spawn.text
    # Used once: the same one-time password does not log in again.
    assert _login(hub, "researcher_b", one_time)[1].status_code == 403
    events = _events("user.login", "user:researcher_b")
    assert events[-1] == (
        "user.login_failed",
        {"source": events[-1][1]["source"]},
    ) and events[-1][1]["source"].endswith("refused: one-time password used")
    assert events[-2][0] == "user.login" and events[-2][1]["source"].endswith("one-time password")


def test_a_password_reset_ends_the_hubs_login_and_the_hub_says_so(hub: Hub) -> None:
    from spe.accounts.service import get_user, reset_password
    from spe.db import transaction

    session = _logged_in(hub, "inst_admin")
    assert session.get(f"{hub.url}/hub/api/user", headers=_xsrf(session)).status_code == 200
    with transaction() as s:
        reset_password(s, get_user(s, "op"), get_user(s, "inst_admin"))
    time.sleep(11)  # SPE_HUB_AUTH_REFRESH_SECONDS
    home = session.get(f"{hub.url}/hub/home", allow_redirects=False)
    assert home.status_code == 302 and "/hub/login" in home.headers["Location"]
    # The old cookie stays dead: the hub changed the account's cookie id.
    again = session.get(f"{hub.url}/hub/home", allow_redirects=False)
    assert again.status_code == 302 and "/hub/login" in again.headers["Location"]
    assert _events("session.hub_revoke", "user:inst_admin")


def test_the_hubs_logout_button_goes_through_the_pages_logout(hub: Hub) -> None:
    session = _logged_in(hub, "reviewer")
    home = session.get(f"{hub.url}/hub/home")
    assert "/services/spe/logout" in home.text
