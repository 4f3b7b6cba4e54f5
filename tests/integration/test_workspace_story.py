"""The workspaces issue, end to end: a researcher logs in, opens a project workspace, runs the
template, and every escape test fails to escape.

Everything is real and every request goes through the front door (nginx), as a browser's would:
nginx -> configurable-http-proxy -> JupyterHub -> a bubblewrap-sandboxed workspace, with the
airlock service (in a thread of this process) as the workspace's one way out, over the demo's
world (project demo-income-study with its population and income extracts). The tests are the
story's steps, in order, sharing one platform: each needs the ones before it (4a only needs the
running workspace, not a kernel).

Skipped with the reason where root, bubblewrap, nginx, configurable-http-proxy or the workspace
environment is missing, except under CI (the variable CI set), where it must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, _clear_spe_env, _reset_spe
from tests.integration.test_airlock import AirlockThread
from tests.integration.test_hub import _need, _server_env_ok

pytestmark = pytest.mark.slow

requests = pytest.importorskip("requests")  # comes with jupyterhub

CHP = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
WORKSPACE_ENV = REPO / ".venv-workspace"
TEMPLATE = REPO / "notebooks_templates" / "getting-started.ipynb"
USER = "demo-researcher"
PROJECT = "demo-income-study"
WORKSPACE = f"{PROJECT}--{USER}"
SERVER = f"/user/{USER}/{PROJECT}"
PARQUET_MAGIC = b"PAR1"
READ_BUDGET = 256 << 10  # bytes of non-notebook files the browser may see per day

_HUB_MAIN = (
    "from spe.workspaces.hub import run_hub; "
    "run_hub(public_url={public!r}, services=())"  # no API, worker or culler: not needed here
)


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (held open together, so no two are the same)."""
    held = [socket.socket() for _ in range(count)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def _template_cells() -> list[str]:
    notebook = json.loads(TEMPLATE.read_text())
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


@dataclass
class Story:
    """The running platform and what the steps learn from each other."""

    door: str  # http://127.0.0.1:<front door port>
    state: Path
    hub_log: Path
    password: str
    airlock: AirlockThread
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    session: Any = None  # the browser: a requests.Session with the login's cookies
    kernel: str | None = None
    ws: Any = None  # the kernel's websocket (websocket-client)
    steps: dict[str, float] = field(default_factory=dict)

    def logs(self) -> str:
        """The tails of the hub's and the workspace's logs, for a failure message."""
        from spe.workspaces.layout import host_paths

        out = []
        for name, path in (
            ("hub", self.hub_log),
            ("workspace", host_paths(PROJECT, USER).root / "server.log"),
            ("recorder", host_paths(PROJECT, USER).root / "recorder.log"),
        ):
            if path.exists():
                out.append(f"--- {name} log ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            dead = [p.args for p in self.processes if p.poll() is not None]
            if dead:
                pytest.fail(f"{dead[0]!r} ended while waiting for {what}\n{self.logs()}")
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}\n{self.logs()}")

    # --- the browser ----------------------------------------------------------------------------

    def hub_xsrf(self) -> dict[str, str]:
        return {"X-XSRFToken": self.session.cookies.get("_xsrf", path="/hub/")}

    def server_xsrf(self) -> dict[str, str]:
        return {"X-XSRFToken": self.session.cookies.get("_xsrf", path=f"{SERVER}/")}

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(self.door + path, timeout=30, **kwargs)

    def server_model(self) -> dict[str, Any] | None:
        answer = self.get(f"/hub/api/users/{USER}", headers=self.hub_xsrf())
        assert answer.status_code == 200, answer.text[:500]
        server: dict[str, Any] | None = answer.json()["servers"].get(PROJECT)
        return server

    # --- the kernel, over its websocket (the notebook's legacy JSON protocol) --------------------

    def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        """Send one kernel message as a browser would; its msg_id."""
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": USER,
                        "session": uuid.uuid4().hex,
                        "msg_type": msg_type,
                        "version": "5.3",
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": content,
                    "channel": channel,
                    "buffers": [],
                }
            )
        )
        return msg_id

    def execute(self, code: str, timeout: float = 60) -> dict[str, Any]:
        """Run one cell; the execute_reply's content, with the cell's error outputs added."""
        msg_id = self.send(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        outputs: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            raw = self.ws.recv()
            if not isinstance(raw, str):
                continue
            msg = json.loads(raw)
            if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind in ("error", "stream", "execute_result"):
                outputs.append({"type": kind, **msg["content"]})
            if kind == "execute_reply" and msg.get("channel") == "shell":
                return {**msg["content"], "outputs": outputs}
        pytest.fail(f"no execute_reply within {timeout} s for {code!r}\n{self.logs()}")


def _requirements() -> None:
    _need(os.geteuid() == 0, "the sandboxed workspace story runs as root (a user per workspace)")
    _need(shutil.which("bwrap") is not None, "bubblewrap (bwrap) is not installed")
    from spe.workspaces.front_door import NGINX

    _need(Path(NGINX).exists(), f"nginx is not installed at {NGINX} (make setup)")
    _need(os.access(CHP, os.X_OK), f"configurable-http-proxy is not installed at {CHP} (npm ci)")
    _need(
        _server_env_ok(WORKSPACE_ENV),
        f"the workspace environment {WORKSPACE_ENV} cannot run jupyterhub-singleuser (run "
        "./scripts/workspace-env.sh .venv-workspace)",
    )
    try:
        import websocket  # noqa: F401 - websocket-client, comes with jupyter_server
    except ImportError:
        _need(False, "websocket-client is not installed in this environment")


def _make_world() -> str:
    """The demo's world in the test's state folder; returns the researcher's password."""
    from spe.accounts.service import change_password, get_user
    from spe.db import transaction
    from spe.demo import publish_demo_data, set_up_demo

    logins = set_up_demo()
    publish_demo_data(persons=3000)
    one_time = next(password for name, password, _ in logins if name == USER)
    # A one-time password opens only the page that sets a password (tests/integration/
    # test_passwords.py): the researcher has set their own before this story.
    own = "plum kettle orbit seventy"
    with transaction() as s:
        change_password(s, get_user(s, USER), one_time, own)
    return own


def _start_front_door(folder: Path, listen: int, upstream: int) -> subprocess.Popen[bytes]:
    from spe.workspaces.front_door import FrontDoor, start

    door = FrontDoor(
        listen_port=listen,
        upstream_port=upstream,
        folder=folder,
        access_log=folder / "access.jsonl",
        error_log=folder / "error.log",
        as_root=True,
    )
    return start(door)


def _stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def story(sqlite_template: Path) -> Iterator[Story]:
    _requirements()
    started = time.monotonic()
    # Not under pytest's temporary folder: pytest chmods that, which resets the ACLs that let
    # the sandbox's user reach its folders. The front door's own folder must be reachable by
    # nginx's workers (nobody), so it is a separate one.
    tmp = Path(tempfile.mkdtemp(prefix="spe-story-"))
    door_folder = Path(tempfile.mkdtemp(prefix="spe-story-door-"))
    os.chmod(door_folder, 0o755)  # noqa: S103 - nginx workers spool request bodies here
    state = tmp / "var"
    shutil.copytree(sqlite_template, state)
    os.chmod(state / "keys" / "platform.key", 0o600)
    door_port, proxy_port, hub_api_port, api_port = _free_ports(4)
    env = {
        "SPE_STATE_DIR": str(state),
        "SPE_HUB_PORT": str(door_port),
        "SPE_HUB_PROXY_PORT": str(proxy_port),
        "SPE_HUB_API_PORT": str(hub_api_port),
        "SPE_API_PORT": str(api_port),
        "SPE_WORKSPACE_SANDBOX": "bwrap",
        "SPE_WORKSPACE_ENV_DIR": str(WORKSPACE_ENV),
        # Small, so that step 4c reaches it; notebooks do not count.
        "SPE_WORKSPACE_READ_BYTES_PER_DAY": str(READ_BUDGET),
    }
    door = f"http://127.0.0.1:{door_port}"
    with pytest.MonkeyPatch.context() as mp:
        _clear_spe_env(mp)
        for key, value in env.items():
            mp.setenv(key, value)
        _reset_spe()
        running = Story(door, state, tmp / "hub.log", _make_world(), AirlockThread())
        try:
            running.airlock.start()
            child_env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
            child_env.update(env)
            with open(running.hub_log, "ab") as log:
                running.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _HUB_MAIN.format(public=door + "/")],
                        cwd=REPO,
                        env=child_env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            running.processes.append(_start_front_door(door_folder, door_port, proxy_port))

            def hub_answers() -> bool:
                try:
                    return bool(requests.get(door + "/hub/api", timeout=2).status_code == 200)
                except requests.ConnectionError:
                    return False

            running.wait(hub_answers, 60, "the hub to answer through the front door")
            running.steps["platform up"] = time.monotonic() - started
            yield running
        finally:
            if running.ws is not None:
                running.ws.close()
            # The hub stops its workspaces as it stops (cleanup_servers), then nginx.
            for process in running.processes:
                _stop(process)
            running.airlock.stop()
            from spe.workspaces.sandbox_run import remove_cgroups

            remove_cgroups(WORKSPACE)  # whatever of the sandbox might be left
            _reset_spe()
            print(
                "story timings: "
                + ", ".join(f"{k} {v:.1f}s" for k, v in running.steps.items())
                + f", total {time.monotonic() - started:.1f}s"
            )
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(door_folder, ignore_errors=True)


def _step(story: Story, name: str, since: float) -> None:
    story.steps[name] = time.monotonic() - since


def _events(action: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from spe.audit.models import AuditEvent
    from spe.db import readonly

    with readonly() as s:
        rows = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == action, AuditEvent.target == f"workspace:{WORKSPACE}")
            .order_by(AuditEvent.id)
        ).all()
        return [
            {
                "actor": r.actor,
                "project": r.project,
                "dataset": r.dataset,
                "details": json.loads(r.details) if isinstance(r.details, str) else r.details,
            }
            for r in rows
        ]


def _cell_sources(code: str) -> set[str]:
    """Which audit layers recorded a cell with this code (the kernel sees it newline-ended).

    The recorder runs outside the sandbox; the other two layers inside it, so their records are
    stored as the workspace's claims."""
    found = [e["details"] for e in _events("workspace.cell")]
    mine = [d for d in found if d["code"].strip() == code.strip()]
    assert all(
        d["source"] == ("recorder" if d["layer"] == "recorder" else "workspace") for d in mine
    )
    return {d["layer"] for d in mine}


# --- 1. log in at the front door, open the project's workspace -----------------------------------


def test_1_the_researcher_logs_in_and_opens_the_project_workspace(story: Story) -> None:
    since = time.monotonic()
    story.session = requests.Session()
    assert story.get("/hub/login").status_code == 200
    answer = story.session.post(
        story.door + "/hub/login",
        data={
            "username": USER,
            "password": story.password,
            "_xsrf": story.session.cookies.get("_xsrf", path="/hub/"),
        },
        allow_redirects=False,
    )
    assert answer.status_code == 302, answer.text[:500]
    assert answer.headers["Location"].endswith("/services/spe/")  # people land on the pages

    form = story.get(f"/hub/spawn/{USER}/{PROJECT}")
    assert form.status_code == 200, form.text[:500]
    assert PROJECT in re.findall(r'<option value="([^"]*)"', form.text)
    action = re.search(r'action="([^"]+)"', form.text)
    assert action is not None, form.text[:500]
    target = action.group(1).replace("&amp;", "&")
    if target.startswith("/"):
        target = story.door + target
    posted = story.session.post(target, data={"project": PROJECT}, allow_redirects=False)
    assert posted.status_code == 302, posted.text[:500]
    story.wait(lambda: (story.server_model() or {}).get("ready"), 60, "the workspace to be ready")
    _step(story, "login+spawn", since)


# --- 2. the workspace answers through the front door; the template is in the home ---------------


def test_2_the_workspace_answers_and_holds_the_template(story: Story) -> None:
    # The browser lands on the workspace's page: through the hub's OAuth and back, every hop
    # at the front door.
    page = story.get(f"{SERVER}/")
    assert page.status_code == 200, page.text[:500]
    assert any("oauth_callback" in r.url for r in page.history)
    assert all(r.url.startswith(story.door) for r in [*page.history, page])
    status = story.get(f"{SERVER}/api/status")
    assert status.status_code == 200, status.text[:500]
    assert "last_activity" in status.json()
    notebook = story.get(
        f"{SERVER}/api/contents/{TEMPLATE.name}", params={"type": "notebook", "content": "1"}
    )
    assert notebook.status_code == 200, f"{notebook.text[:500]}\n{story.logs()}"
    model = notebook.json()
    assert model["type"] == "notebook"
    cells = ["".join(c["source"]) for c in model["content"]["cells"] if c["cell_type"] == "code"]
    assert cells == _template_cells()
    home = story.get(f"{SERVER}/api/contents", params={"content": "1"}).json()
    assert {"outbox", TEMPLATE.name} <= {entry["name"] for entry in home["content"]}


# --- 3. the template runs in a kernel; cells, loads and the export request are on record ---------


def test_3_the_template_runs_and_everything_is_audited(story: Story) -> None:
    import websocket

    since = time.monotonic()
    started = story.session.post(
        f"{story.door}{SERVER}/api/kernels",
        json={"name": "spe"},
        headers=story.server_xsrf(),
        timeout=60,
    )
    assert started.status_code == 201, f"{started.text[:500]}\n{story.logs()}"
    story.kernel = started.json()["id"]
    cookies = "; ".join(f"{c.name}={c.value}" for c in story.session.cookies)
    ws_url = (
        f"ws://127.0.0.1:{story.door.rsplit(':', 1)[1]}{SERVER}/api/kernels/{story.kernel}"
        f"/channels?session_id={uuid.uuid4().hex}"
    )
    # As a browser on the front door's page: its cookies and its Origin.
    try:
        story.ws = websocket.create_connection(
            ws_url, cookie=cookies, origin=story.door, timeout=30
        )
    except websocket.WebSocketBadStatusException as exc:
        pytest.fail(f"the kernel's websocket was refused: {exc}\n{story.logs()}")

    cells = _template_cells()
    # The template's plans read population and income on their own; the template loads
    # population's rows (sa.load), and this loads the project's other dataset's rows too.
    extra = 'income = sa.load("income")\nlen(income)'
    replies = [story.execute(code, timeout=90) for code in [*cells, extra]]
    failed = [
        (code, reply["status"], reply["outputs"])
        for code, reply in zip([*cells, extra], replies, strict=True)
        if reply["status"] != "ok"
    ]
    assert not failed, f"{failed}\n{story.logs()}"
    _step(story, "template cells", since)

    for code in [*cells, extra]:
        assert _cell_sources(code) == {"recorder", "server", "kernel"}, code
    cell_events = _events("workspace.cell")
    assert {(e["actor"], e["project"]) for e in cell_events} == {(USER, PROJECT)}
    loads = _events("workspace.load")
    assert {e["dataset"] for e in loads} == {"population", "income"}
    assert all(e["details"]["rows"] > 0 for e in loads)

    from spe.accounts.service import get_user
    from spe.db import readonly
    from spe.exports.actions import list_requests
    from spe.projects.service import get_project

    with readonly() as s:
        filed = list_requests(s, get_user(s, USER), get_project(s, PROJECT))
    # The template files a plan: the server computes the table itself.
    assert [(r["title"], r["outputs"]) for r in filed] == [("Table 1", ["county_by_sex.plan.json"])]
    # The export cell's answer came back through the airlock, from inside the sandbox.
    export_reply = replies[cells.index(next(c for c in cells if "export(" in c))]
    shown = json.dumps(export_reply["outputs"])
    assert filed[0]["id"] in shown


# --- 4. every download route is refused on the browser's path ------------------------------------


def _refused(answer: Any, *statuses: int) -> None:
    assert answer.status_code in statuses, (
        answer.request.url,
        answer.status_code,
        answer.text[:300],
    )
    assert PARQUET_MAGIC not in answer.content


def _put(story: Story, name: str, model: dict[str, Any]) -> Any:
    url = f"{story.door}{SERVER}/api/contents/{name}"
    answer = story.session.put(url, json=model, headers=story.server_xsrf(), timeout=30)
    # configurable-http-proxy sometimes answers 503 ("write EPIPE") when the server answers a
    # PUT at once and closes the connection (the proxy's race, not a refusal): ask again.
    for _ in range(5):
        if answer.status_code != 503:
            break
        answer = story.session.put(url, json=model, headers=story.server_xsrf(), timeout=30)
    return answer


def _recorded(action: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10) -> Any:
    """The first audit event of ``action`` whose details pass ``check`` (waited for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e["details"] for e in _events(action) if check(e["details"])]
        if found:
            return found[0]
        time.sleep(0.2)
    return None


def test_3b_every_message_that_can_run_code_is_recorded_outside_the_sandbox(story: Story) -> None:
    """Kernel messages a hostile browser sends past the cell hooks: each is recorded by the
    recorder, outside the sandbox, before the kernel sees it; what it cannot read is refused."""
    from spe.workspaces.layout import host_paths

    assert story.ws is not None, "step 3 did not get a kernel"
    home = host_paths(PROJECT, USER).home
    # Empty code, the payload in user_expressions: the kernel evaluates it after the (no) code.
    expression = "open('/home/researcher/ue.txt', 'w').write('ran')"
    sneaky = {
        "code": "",
        "silent": True,
        "store_history": False,
        "user_expressions": {"x": expression},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    story.send("execute_request", sneaky)
    event = _recorded(
        "workspace.cell",
        lambda d: d.get("content", {}).get("user_expressions") == {"x": expression},
    )
    assert event is not None and event["source"] == "recorder" and event["channel"] == "shell"
    story.wait(lambda: (home / "ue.txt").exists(), 30, "the user expression to run")
    # An execute_request on the control channel.
    story.send(
        "execute_request", {**sneaky, "code": "control_ran = 1", "user_expressions": {}}, "control"
    )
    event = _recorded("workspace.cell", lambda d: d.get("channel") == "control")
    assert event is not None and event["code"] == "control_ran = 1"
    # The debugger's evaluate and a comm message carry code or data for code: kept whole.
    evaluate = {
        "seq": 1,
        "type": "request",
        "command": "evaluate",
        "arguments": {"expression": "6*7"},
    }
    story.send("debug_request", evaluate, "control")
    story.send("comm_open", {"comm_id": "c1", "target_name": "jupyter.widget", "data": {"x": 1}})
    story.send("comm_msg", {"comm_id": "c1", "data": {"method": "update", "state": {"v": 2}}})
    for msg_type, content in (("debug_request", evaluate), ("comm_msg", None)):
        event = _recorded("workspace.kernel_message", lambda d, t=msg_type: d.get("msg_type") == t)
        assert event is not None, msg_type
        assert content is None or event["content"] == content
    # What the recorder does not know does not pass: an unknown type, an unknown field.
    story.send("evil_request", {"code": "refused_a = 1"})
    story.send("execute_request", {**sneaky, "code": "refused_b = 1", "exec_this_too": "x"})
    refused = [
        _recorded("workspace.recorder_refused", lambda d, w=w: w in d.get("start", ""))
        for w in ("refused_a", "refused_b")
    ]
    assert all(refused), refused
    check = story.execute("print('refused_a' in dir(), 'refused_b' in dir())")
    assert "False False" in json.dumps(check["outputs"]), check


def test_3c_contents_writes_and_reads_are_recorded_by_hash_outside_the_sandbox(
    story: Story,
) -> None:
    import hashlib

    code = "print('saved through the browser')\n"
    saved = _put(story, "saved.py", {"type": "file", "format": "text", "content": code})
    assert saved.status_code in (200, 201), saved.text[:300]
    write = _recorded("workspace.contents_write", lambda d: d["path"] == "saved.py")
    assert write is not None and write["text"] == code
    assert write["content_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    read = story.get(f"{SERVER}/api/contents/saved.py", params={"type": "file", "format": "text"})
    assert read.status_code == 200
    event = _recorded("workspace.contents_read", lambda d: d["path"] == "saved.py")
    assert event is not None and event["sha256"] == hashlib.sha256(read.content).hexdigest()
    assert event["content_sha256"] == write["content_sha256"]


def test_4a_the_download_routes_and_uploads_are_refused(story: Story) -> None:
    from spe.workspaces.layout import host_paths

    paths = host_paths(PROJECT, USER)
    parquet = "data/population/data.parquet"
    contents = f"{SERVER}/api/contents"
    # The front door refuses the routes that hand out files, whatever the file.
    for path in [
        f"{SERVER}/files/{TEMPLATE.name}",
        f"{SERVER}/files/{parquet}",
        f"{contents}/{TEMPLATE.name}?download=1",
        f"{contents}/{parquet}?download=1",
        f"{contents}/{TEMPLATE.name}?type=file&format=base64&content=1",
        f"{contents}/{parquet}?type=file&format=base64&content=1",
        f"{SERVER}/nbconvert/html/{TEMPLATE.name}",
        f"{SERVER}/nbconvert/html/{TEMPLATE.name}?download=true",
        f"{SERVER}/terminals/1",
        f"{SERVER}/api/terminals",
    ]:
        _refused(story.get(path, allow_redirects=False), 403)
    terminal = story.session.post(
        f"{story.door}{SERVER}/api/terminals", headers=story.server_xsrf(), timeout=30
    )
    _refused(terminal, 403)
    # /data is outside the contents root (the home): not there at all. Dot segments are
    # resolved by the front door, which then names another route (the hub answers that no
    # server of that name runs).
    _refused(story.get(f"{contents}/{parquet}", params={"content": "1"}), 404)
    _refused(story.get(f"{contents}/../../../{parquet}"), 403, 404, 424)

    # Uploads: above the limit the front door refuses; binary (base64) ones the server does.
    too_big = _put(
        story, "upload.txt", {"type": "file", "format": "text", "content": "y" * (3 << 20)}
    )
    assert too_big.status_code == 413, too_big.text[:300]
    binary = _put(story, "upload.bin", {"type": "file", "format": "base64", "content": "aGVsbG8="})
    assert binary.status_code == 413, binary.text[:300]
    assert "small text files" in binary.text  # the workspace server's own refusal
    assert not (paths.home / "upload.txt").exists() and not (paths.home / "upload.bin").exists()
    # The ordinary case still works: a small text file.
    small = _put(story, "notes.txt", {"type": "file", "format": "text", "content": "my notes\n"})
    assert small.status_code in (200, 201), small.text[:300]
    assert (paths.home / "notes.txt").read_text() == "my notes\n"


def test_4b_files_made_in_the_kernel_cannot_be_read_out_through_the_browser(story: Story) -> None:
    assert story.ws is not None, "step 3 did not get a kernel"
    # From the kernel: a link from the home to the data, and a large text file in the home.
    setup = story.execute(
        "import os\n"
        "os.symlink('/data/population', 'population-link')\n"
        "open('big.txt', 'w').write('x' * (3 << 20))\n"
        "sorted(os.listdir('/data/population'))"
    )
    assert setup["status"] == "ok", setup
    assert "data.parquet" in json.dumps(setup["outputs"])
    contents = f"{SERVER}/api/contents"
    linked = f"{contents}/population-link/data.parquet"
    for path in (f"{SERVER}/files/population-link/data.parquet", f"{linked}?download=1"):
        _refused(story.get(path, allow_redirects=False), 403)
    _refused(story.get(linked, params={"type": "file", "format": "base64"}), 403)
    # Past the front door the workspace's server is the second wall: no binary content, and
    # nothing it cannot show as text.
    for params in ({"type": "file", "content": "1"}, {"content": "1"}, {}):
        _refused(story.get(linked, params=params), 403)
    _refused(story.get(linked, params={"type": "file", "format": "text"}), 400)
    # A large text file in the home is not shown in the browser (the server's 413).
    big = story.get(f"{contents}/big.txt", params={"type": "file", "format": "text"})
    assert big.status_code == 413, big.text[:300]
    assert "larger than" in big.text


def test_4c_an_extract_read_out_as_base64_and_reads_past_the_budget_are_refused_with_alarms(
    story: Story,
) -> None:
    """The read-out of issue 15: the extract as base64 text in a .txt, read through the contents
    API; and plain text read until the workspace's daily budget is spent."""
    assert story.ws is not None, "step 3 did not get a kernel"
    made = story.execute(
        "import base64, glob\n"
        "raw = b''.join(open(p, 'rb').read() for p in sorted(glob.glob('/data/*/*.parquet')))\n"
        "open('extract.txt', 'w').write(base64.b64encode(raw).decode())\n"
        "open('table.csv', 'w').write('year,municipality,count\\n' + '2020,0301,12\\n' * 12000)\n"
        "print(len(base64.b64encode(raw)))"
    )
    assert made["status"] == "ok", made
    encoded = int(made["outputs"][0]["text"])
    assert encoded >= 64 << 10, f"the extracts are too small for the test ({encoded} bytes)"
    contents = f"{SERVER}/api/contents"
    read_out = story.get(f"{contents}/extract.txt", params={"type": "file", "format": "text"})
    assert read_out.status_code == 403 and "encoded data" in read_out.text
    assert PARQUET_MAGIC not in read_out.content
    alarm = _recorded("workspace.read_alarm", lambda d: d.get("path") == "extract.txt")
    assert alarm is not None and alarm["reason"] == "encoded data" and alarm["source"] == "recorder"
    # About 150 KiB of plain text fits once in the 256 KiB budget, not twice; one alarm a day.
    answers = [
        story.get(f"{contents}/table.csv", params={"type": "file", "format": "text"})
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 403, 403]
    assert "daily limit" in answers[1].text
    alarms = [e["details"] for e in _events("workspace.read_alarm")]
    assert [a["reason"] for a in alarms] == ["encoded data", "daily read budget"]
    # Notebooks do not count: the template still opens.
    assert story.get(f"{contents}/{TEMPLATE.name}").status_code == 200


# --- 5. the audit cannot be switched off from the kernel, and fails closed ------------------------


def test_5_disabling_the_kernel_audit_leaves_cells_audited_and_the_airlock_fails_closed(
    story: Story,
) -> None:
    from spe.workspaces.cell_audit import REFUSED

    assert story.ws is not None, "step 3 did not get a kernel"
    cleared = story.execute("get_ipython().input_transformers_post.clear()")
    assert cleared["status"] == "ok", cleared
    marker = story.execute("marker = 12345")
    assert marker["status"] == "ok", marker
    # Recorded by the notebook server's layer only: the kernel's own layer is gone.
    assert _cell_sources("marker = 12345") == {"recorder", "server"}

    # The kernel's own airlock socket goes away: the server's hook cannot record, so the cell
    # does not run (the recorder, on its own socket, still records what the browser sent).
    from spe.workspaces.layout import host_paths

    airlock_socket = host_paths(PROJECT, USER).airlock_socket
    hidden = airlock_socket.with_name("hidden.sock")
    airlock_socket.rename(hidden)
    try:
        refused = story.execute("after_the_airlock = 1")
    finally:
        hidden.rename(airlock_socket)
    assert refused["status"] == "error", refused
    sentence = REFUSED.split(" ({reason})")[0]
    assert sentence in refused["evalue"], refused
    assert _cell_sources("after_the_airlock = 1") == {"recorder"}

    story.airlock.stop()  # the whole airlock goes away: the recorder cannot record either ...
    assert not airlock_socket.exists()
    story.send("execute_request", {"code": "after_the_recorder = 1", "silent": False})
    import websocket

    story.ws.settimeout(1)
    closed = False
    deadline = time.monotonic() + 15
    while not closed and time.monotonic() < deadline:
        try:
            story.ws.recv()  # ... so it closes the kernel's websocket, and nothing passes
        except websocket.WebSocketConnectionClosedException:
            closed = True
        except websocket.WebSocketTimeoutException:
            continue
    assert closed, "the recorder kept the websocket open without an audit log"
    assert _cell_sources("after_the_recorder = 1") == set()


# --- 6. stopping the workspace -------------------------------------------------------------------


def test_6_stopping_the_workspace_through_the_hub_is_recorded(story: Story) -> None:
    from sqlalchemy import select

    from spe.db import readonly
    from spe.workspaces.layout import host_paths
    from spe.workspaces.models import Workspace

    since = time.monotonic()
    if story.ws is not None:
        story.ws.close()
        story.ws = None
    answer = story.session.delete(
        f"{story.door}/hub/api/users/{USER}/servers/{PROJECT}",
        headers=story.hub_xsrf(),
        timeout=60,
    )
    assert answer.status_code in (202, 204), answer.text[:500]
    story.wait(lambda: not (story.server_model() or {}).get("ready"), 30, "the workspace to stop")

    def recorded() -> Any:
        with readonly() as s:
            row = s.scalar(select(Workspace).where(Workspace.name == WORKSPACE))
            return None if row is None or row.running else (row.stop_reason, row.stopped_at)

    reason, stopped_at = story.wait(recorded, 30, "the workspace to be recorded stopped")
    assert "stopped by the hub" in reason and stopped_at is not None
    assert "stopped by the hub" in _events("workspace.stop")[-1]["details"]["reason"]
    story.wait(lambda: not host_paths(PROJECT, USER).server_socket.exists(), 15, "the socket to go")
    _step(story, "stop", since)
