"""The whole story in a real browser (Debian's Chromium driven by Playwright), on the platform
started as `make demo` starts it (`spe up`: front door, hub with the pages, API and worker,
airlock, sealer), over the demo's generated registry.

A data holder sees the published registry and its ingest report, grants a new project and
approves it; a researcher logs in, opens the project's workspace (a bubblewrap sandbox), runs
the template notebook through the Jupyter API and files an export; the automatic check fails
cells; the researcher accepts the safe version of one table; a reviewer approves and a second
reviewer confirms the override of the other; the researcher downloads the signed bundle and it
verifies offline; an auditor filters the log, sees every step in order, and verification is
green. Each page is checked with axe-core (no serious or critical violation) and screenshotted
to test-artifacts/.

The registry is published by the demo's set-up (the same ingest as `spe dataset ingest`);
uploading a registry through a page is not a feature. Every person logs in first with the
demo's one-time password, sets their own, and (the roles that need it) sets up two-step login
with a TOTP code computed here, as their authenticator app would. Skipped with the reason where
Chromium, root, bubblewrap, nginx or configurable-http-proxy is missing, except under CI, where
it must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
from tests.integration.test_hub import _need, _server_env_ok
from tests.integration.test_workspace_story import CHP, WORKSPACE_ENV, _free_ports

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = REPO / "test-artifacts"
PROJECT = "story-study"
RESEARCHER, HOLDER, SECOND, AUDITOR = (
    "demo-researcher",
    "demo-holder",
    "demo-reviewer2",
    "demo-auditor",
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _requirements() -> None:
    _need(CHROMIUM.exists(), f"Chromium is not installed at {CHROMIUM} (make setup)")
    _need(os.geteuid() == 0, "the browser story runs sandboxed workspaces, which need root")
    _need(shutil.which("bwrap") is not None, "bubblewrap (bwrap) is not installed")
    _need(Path("/usr/sbin/nginx").exists(), "nginx is not installed (make setup)")
    _need(os.access(CHP, os.X_OK), f"configurable-http-proxy is not installed at {CHP}")
    _need(AXE.exists(), f"axe-core is not installed at {AXE} (npm ci)")
    _need(_server_env_ok(WORKSPACE_ENV), f"the workspace environment {WORKSPACE_ENV} is missing")
    try:
        import playwright.sync_api  # noqa: F401
        import websocket  # noqa: F401
    except ImportError as exc:
        _need(False, f"{exc.name} is not installed")


@dataclass
class Platform:
    door: str
    state: Path
    log: Path
    passwords: dict[str, str]
    process: subprocess.Popen[bytes]
    browser: Any = None
    shots: list[str] = field(default_factory=list)
    a11y: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    totp: dict[str, str] = field(default_factory=dict)  # username -> TOTP secret ("the app")
    totp_steps: dict[str, int] = field(default_factory=dict)  # username -> last TOTP step used

    def logs(self) -> str:
        parts = [f"--- spe up ---\n{self.log.read_text(errors='replace')[-4000:]}"]
        for name in ("hub.log", "api.log", "worker.log"):
            path = self.state / "logs" / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if self.process.poll() is not None:
                pytest.fail(f"spe up ended while waiting for {what}\n{self.logs()}")
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}\n{self.logs()}")


def _world() -> dict[str, str]:
    """The demo's world, plus a project the holder has not decided on yet."""
    import datetime as dt

    from spe.accounts.service import get_organisation, get_user
    from spe.db import transaction
    from spe.demo import HOLDER, INSTITUTION, publish_demo_data, set_up_demo
    from spe.projects.service import create_project

    logins = set_up_demo()
    publish_demo_data(persons=3000)
    today = dt.datetime.now(dt.UTC).date()
    with transaction() as s:
        create_project(
            s,
            get_user(s, RESEARCHER),
            PROJECT,
            "Income by county",
            "How income differs between counties, by sex and cohort.",
            get_organisation(s, HOLDER),
            get_organisation(s, INSTITUTION),
            today,
            today + dt.timedelta(days=90),
        )
    return {name: password for name, password, _ in logins}


@pytest.fixture(scope="module")
def platform(sqlite_template: Path) -> Iterator[Platform]:
    _requirements()
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    # Not under pytest's temporary folder (pytest chmods it, which resets the workspaces' ACLs).
    tmp = Path(tempfile.mkdtemp(prefix="spe-browser-"))
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
    }
    ARTIFACTS.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        _clear_spe_env(mp)
        for key, value in env.items():
            mp.setenv(key, value)
        _reset_spe()
        passwords = _world()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
        child_env.update(env)
        log = tmp / "spe-up.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "spe.cli", "up"],
                cwd=REPO,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = Platform(f"http://127.0.0.1:{door_port}", state, log, passwords, process)
        try:
            import requests

            def pages_answer() -> bool:
                try:
                    answer = requests.get(running.door + "/services/spe/catalogue", timeout=2)
                except requests.ConnectionError:
                    return False
                return answer.status_code == 200

            running.wait(pages_answer, 90, "the pages to answer through the front door")
            running.timings["platform up"] = time.monotonic() - started
            with sync_playwright() as p:
                running.browser = p.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS
                )
                try:
                    yield running
                finally:
                    running.browser.close()
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            from spe.workspaces.sandbox_run import remove_cgroups

            remove_cgroups(f"{PROJECT}--{RESEARCHER}")
            _reset_spe()
            print(
                "browser story: "
                + ", ".join(f"{k} {v:.1f}s" for k, v in running.timings.items())
                + f"; screenshots: {', '.join(running.shots)}"
            )
            shutil.rmtree(tmp, ignore_errors=True)


# --- a person at a browser ----------------------------------------------------------------------


class Person:
    def __init__(self, platform: Platform, username: str) -> None:
        self.platform = platform
        self.username = username
        self.context = platform.browser.new_context(
            viewport={"width": 1280, "height": 900},
            accept_downloads=True,
            bypass_csp=True,  # axe-core is injected into each page; the pages allow no such script
        )
        self.page = self.context.new_page()

    def _hub_login(self, password: str) -> None:
        page = self.page
        page.goto(self.platform.door + "/hub/login")
        page.fill("#username_input", self.username)
        page.fill("#password_input", password)
        secret = self.platform.totp.get(self.username)
        if secret is not None:  # two-step login: the code the person's app shows now
            import pyotp

            # A code is taken once: wait for the next one if this step's was used already.
            while int(time.time()) // 30 <= self.platform.totp_steps.get(self.username, -1):
                time.sleep(1)
            self.platform.totp_steps[self.username] = int(time.time()) // 30
            page.fill("#otp_input", pyotp.TOTP(secret).now())
        page.click("#login_submit")

    def _enrol_totp(self) -> None:
        """The role needs two-step login: scan the secret into an 'app' (pyotp, here) and
        confirm with its current code; the recovery codes are shown once."""
        import pyotp

        page = self.page
        assert "Your role needs two-step login" in page.inner_text("main")
        if not any("enrol-mfa" in shot for shot in self.platform.shots):
            self.check("enrol-mfa")
        self.open("/projects")  # nothing else opens before it is set up
        assert page.url.endswith("/services/spe/mfa"), page.url
        secret = page.inner_text("#secret").replace(" ", "")
        self.platform.totp_steps[self.username] = int(time.time()) // 30
        page.fill("#code", pyotp.TOTP(secret).now())
        with page.expect_navigation():
            page.click("form.mfa button[type=submit]")
        assert page.locator("#recovery-codes li").count() > 0, page.inner_text("main")
        self.platform.totp[self.username] = secret
        with page.expect_navigation():
            page.click("text=Continue")

    def log_in(self) -> None:
        """Log in; the first time, with the demo's one-time password, which opens only the
        page that sets a password: set one, then log in again with it; a role that needs
        two-step login then sets it up (TOTP) before anything else opens."""
        page = self.page
        self._hub_login(self.platform.passwords[self.username])
        # The hub sends people to the pages, which log them in through the hub's OAuth.
        try:
            page.wait_for_url(re.compile(r".*/services/spe/(password|mfa)?$"), timeout=30000)
            if page.url.endswith("/password"):
                assert "Set your password" in page.inner_text("main")
                if not any("set-password" in shot for shot in self.platform.shots):
                    self.check("set-password")
                # The one-time password opens nothing else.
                self.open("/projects")
                assert page.url.endswith("/services/spe/password"), page.url
                own = f"violet harbour tandem {len(self.username)}7"
                page.fill("#new", own)
                page.fill("#repeat", own)
                with page.expect_navigation():
                    page.click("form.password button[type=submit]")
                self.platform.passwords[self.username] = own
                self._hub_login(own)
                page.wait_for_url(re.compile(r".*/services/spe/(mfa)?$"), timeout=30000)
            if page.url.endswith("/mfa"):
                self._enrol_totp()
            page.wait_for_url(re.compile(r".*/services/spe/$"), timeout=30000)
        except Exception:
            pytest.fail(
                f"logging in ended at {page.url}: {page.inner_text('body')[:500]}\n"
                f"{self.platform.logs()}"
            )
        assert self.username in page.inner_text("header")

    def log_in_again(self) -> None:
        """A later login at the hub from a fresh browser (no cookie of the first login, which
        the hub would honour by skipping its form): the password and the app's code."""
        self.context.close()
        self.context = self.platform.browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True, bypass_csp=True
        )
        self.page = self.context.new_page()
        self._hub_login(self.platform.passwords[self.username])
        self.page.wait_for_url(re.compile(r".*/services/spe/$"), timeout=30000)
        assert self.username in self.page.inner_text("header")

    def open(self, path: str) -> Any:
        self.page.goto(self.platform.door + "/services/spe" + path)
        return self.page

    def check(self, name: str) -> None:
        """Screenshot the page, and run axe-core on it: no serious or critical violation."""
        page = self.page
        shot = f"{len(self.platform.shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        self.platform.shots.append(shot)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1280, f"{name}: the page scrolls sideways at 1280 px ({width} px)"
        page.add_script_tag(path=str(AXE))
        result = page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help}))"
        )
        bad = [v for v in result if v["impact"] in ("serious", "critical")]
        self.platform.a11y[name] = [v["id"] for v in result]
        assert not bad, f"{name}: accessibility violations {bad}"

    def submit(self, selector: str) -> None:
        with self.page.expect_navigation():
            self.page.click(selector)
        flash = self.page.locator(".flash, .refusal")
        assert flash.count() == 0 or "Not possible" not in self.page.title(), self.page.inner_text(
            "main"
        )


def _request_status(request_id: str) -> str:
    from spe.db import readonly
    from spe.exports import actions

    with readonly() as s:
        return actions.get_request(s, request_id).status.value


# --- the story -----------------------------------------------------------------------------------


def _run_cells(platform: Platform, person: Person, cells: list[str]) -> list[dict[str, Any]]:
    """Run cells in a kernel of the workspace over the Jupyter API, as the browser's session."""
    import websocket

    server = f"/user/{person.username}/{PROJECT}"
    request = person.context.request
    xsrf = next(
        (
            c["value"]
            for c in person.context.cookies()
            if c["name"] == "_xsrf" and server in c["path"]
        ),
        None,
    )
    started = request.post(
        f"{platform.door}{server}/api/kernels",
        data=json.dumps({"name": "spe"}),
        headers={"X-XSRFToken": xsrf or "", "Content-Type": "application/json"},
    )
    assert started.status == 201, f"{started.text()[:500]}\n{platform.logs()}"
    kernel = started.json()["id"]
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in person.context.cookies())
    ws = websocket.create_connection(
        f"ws://{platform.door.split('://', 1)[1]}{server}/api/kernels/{kernel}/channels"
        f"?session_id={uuid.uuid4().hex}",
        cookie=cookies,
        origin=platform.door,
        timeout=60,
    )
    replies = []
    try:
        for code in cells:
            msg_id = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "username": person.username,
                            "session": uuid.uuid4().hex,
                            "msg_type": "execute_request",
                            "version": "5.3",
                        },
                        "parent_header": {},
                        "metadata": {},
                        "content": {"code": code, "silent": False, "allow_stdin": False},
                        "channel": "shell",
                        "buffers": [],
                    }
                )
            )
            outputs: list[Any] = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv())
                if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind in ("error", "stream", "execute_result"):
                    outputs.append(msg["content"])
                if kind == "execute_reply":
                    replies.append({**msg["content"], "outputs": outputs})
                    assert msg["content"]["status"] == "ok", (code, outputs, platform.logs())
                    break
            else:
                pytest.fail(f"no reply for {code!r}\n{platform.logs()}")
    finally:
        ws.close()
    return replies


def test_the_whole_story_in_a_browser(platform: Platform) -> None:
    since = time.monotonic()
    from spe.db import readonly
    from spe.projects.extracts import current_extracts
    from spe.projects.service import get_project

    # 1. The data holder: the published registry with its ingest report; a grant; approval.
    holder = Person(platform, HOLDER)
    holder.log_in()
    holder.check("holder-home")
    holder.open("/holder/datasets")
    assert "Population register" in holder.page.inner_text("main")
    holder.check("holder-datasets")
    holder.open(f"/holder/projects/{PROJECT}")
    form = holder.page.locator("form.grant", has_text="population")
    for variable in ("municipality", "sex", "birth_date"):
        form.locator(f"input[value='{variable}']").check()
    form.locator("select[name=gen_birth_date]").select_option("year")  # data minimisation
    holder.check("holder-project-grant")
    with holder.page.expect_navigation():
        form.locator("button").click()
    assert "Granted" in holder.page.inner_text(".flash")
    with holder.page.expect_navigation():
        holder.page.click("text=Approve the project and build its extracts")
    assert "Approved" in holder.page.inner_text(".flash")

    def extract_built() -> bool:
        with readonly() as s:
            return "population" in current_extracts(s, get_project(s, PROJECT))

    platform.wait(extract_built, 90, "the worker to build the project's extract")
    platform.timings["holder"] = time.monotonic() - since

    # 2. The researcher: the project, its workspace, the template, an export request.
    researcher = Person(platform, RESEARCHER)
    researcher.log_in()
    researcher.open("/projects")
    assert PROJECT in researcher.page.inner_text("main")
    researcher.check("researcher-projects")
    # Keyboard: the first Tab reaches the skip link, which leads to the page's content.
    researcher.page.keyboard.press("Tab")
    assert researcher.page.evaluate("document.activeElement.className") == "skip"
    # What is not theirs is refused with a sentence, in the browser as in the API.
    researcher.open("/audit")
    assert "Only an auditor may read the audit log." in researcher.page.inner_text("main")
    researcher.open("/review")
    assert "Only" in researcher.page.inner_text("main")
    researcher.open("/projects")
    researcher.page.click(f"a[href$='/hub/spawn/{RESEARCHER}/{PROJECT}']")
    researcher.page.wait_for_selector("select[name=project]")
    researcher.page.select_option("select[name=project]", PROJECT)
    researcher.page.click("form [type=submit]")
    researcher.page.wait_for_url(re.compile(rf".*/user/{RESEARCHER}/{PROJECT}/.*"), timeout=90000)
    since = time.monotonic()
    template = json.loads((REPO / "notebooks_templates" / "getting-started.ipynb").read_text())
    cells = ["".join(c["source"]) for c in template["cells"] if c["cell_type"] == "code"]
    # Two tables computed in the workspace from the rows the template loaded (so reviewers
    # must look at them): sex by era has two small cells (persons born before 1930: 5 women,
    # 7 men) and a safe version; the youngest cohorts by birth year have small cells too.
    extra = [
        'young = rows[rows["birth_date"].astype(int) >= 2012]\n'
        'year = rows["birth_date"].astype(int)\n'
        'rows["era"] = "1980 or later"\n'
        'rows.loc[year < 1980, "era"] = "1930-1979"\n'
        'rows.loc[year < 1930, "era"] = "before 1930"\n'
        'sa.crosstab(rows, "sex", "era", name="small_cells")\n'
        'sa.crosstab(young, "sex", "birth_date", name="county_year")',
        "print(export({'small_cells.csv': 'Table 2 of the paper', "
        "'county_year.csv': 'Table 3 of the paper'}, title='Tables 2 and 3'))",
    ]
    replies = _run_cells(platform, researcher, [*cells, *extra])
    platform.timings["notebook"] = time.monotonic() - since
    shown = json.dumps(replies[-1]["outputs"])
    request_id = re.search(r"[0-9a-f]{8}-[0-9a-f-]{27}", shown)
    assert request_id is not None, shown
    rid = request_id.group(0)
    platform.wait(lambda: _request_status(rid) == "in_review", 90, "the automatic check")

    # 3. The automatic check failed cells; the researcher sees why and accepts a safe version.
    researcher.open(f"/exports/{rid}")
    assert researcher.page.locator("td.c-fail").count() > 0
    assert "threshold" in researcher.page.inner_text("main")
    researcher.check("researcher-request-failed")
    researcher.page.click("text=see it with small cells suppressed")
    researcher.page.wait_for_selector("text=Accept this safe version of small_cells.csv")
    researcher.check("researcher-safe-version-preview")
    with researcher.page.expect_navigation():
        researcher.page.click("text=Accept this safe version of small_cells.csv")
    platform.wait(lambda: _request_status(rid) == "in_review", 90, "the check of the safe version")
    researcher.open(f"/exports/{rid}")
    researcher.check("researcher-request-safe-version")

    # 4. Review: an override of the still-failing table needs two reviewers.
    holder.open("/review")
    assert rid[:8] in holder.page.inner_text("main")
    holder.check("review-queue")
    holder.open(f"/exports/{rid}")
    holder.check("review-request")
    for output, comment in (
        ("small_cells.csv", "Safe version: small cells suppressed."),
        ("county_year.csv", "Override: years are published at county level already."),
    ):
        vote = holder.page.locator("form.vote", has_text=output)
        vote.locator("input[value=approve]").check()
        vote.locator("textarea").fill(comment)
        with holder.page.expect_navigation():
            vote.locator("button").click()
    with holder.page.expect_navigation():
        holder.page.click("text=Decide the request")
    assert "second reviewer" in holder.page.inner_text("main")  # four eyes
    second = Person(platform, SECOND)
    second.log_in()
    second.open(f"/exports/{rid}")
    # The second reviewer approves both: the safe version passes (one approval was enough),
    # and the other table overrides a failed check (four eyes).
    for output in ("small_cells.csv", "county_year.csv"):
        vote = second.page.locator("form.vote", has_text=output)
        vote.locator("input[value=approve]").check()
        vote.locator("textarea").fill("Agreed: the override is safe.")
        with second.page.expect_navigation():
            vote.locator("button").click()
    with second.page.expect_navigation():
        second.page.click("text=Decide the request")
    assert "released" in second.page.inner_text("main"), second.page.inner_text("main")[:2000]
    second.check("review-decided")

    # 5. The researcher downloads the signed bundle; it verifies offline.
    researcher.open(f"/exports/{rid}")
    with researcher.page.expect_download() as download:
        researcher.page.click("text=Download the signed bundle")
    bundle = ARTIFACTS / "release-bundle.zip"
    download.value.save_as(str(bundle))
    from spe.keys.signing import audit_public_key

    with readonly() as s:
        key = audit_public_key(s)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
    env["SPE_STATE_DIR"] = str(platform.state.parent / "nothing-here")
    verified = subprocess.run(
        [sys.executable, "-m", "spe.cli", "export", "verify", str(bundle), "--public-key", key],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    researcher.open("/exports")
    assert rid[:8] in researcher.page.inner_text("main")
    researcher.check("researcher-exports")
    researcher.open("/terms")
    researcher.check("researcher-terms")
    holder.log_in_again()  # the hub's login form takes the TOTP code (minutes after enrolment)
    holder.open(f"/holder/access?project={PROJECT}")
    assert "export.release" in holder.page.inner_text("main")
    holder.check("holder-who-used-my-data")
    admin = Person(platform, "demo-admin")
    admin.log_in()
    admin.open("/admin")
    assert RESEARCHER in admin.page.inner_text("main")
    admin.check("admin-researchers")

    # 6. The auditor: every step in order, and the log verifies.
    auditor = Person(platform, AUDITOR)
    auditor.log_in()
    auditor.open(f"/exports/{rid}")
    assert "Not possible" in auditor.page.title()  # an auditor reads the log, not the outputs
    auditor.open(f"/audit?project={PROJECT}&limit=200")
    auditor.check("audit-log")
    shown_actions = auditor.page.locator("table.events tbody td:nth-child(4)").all_inner_texts()
    story = list(reversed(shown_actions))  # the page shows the newest first
    wanted = [
        "project.grant",
        "project.approve",
        "workspace.start",
        "workspace.cell",
        "export.file",
        "export.check",
        "export.queue",
        "export.accept_safe",
        "export.vote",
        "export.release",
        "export.download",
    ]
    # Rows loaded with sa.load are recorded too (plans are read by the server, not loaded).
    assert "workspace.load" in story, story
    positions = []
    for action in wanted:
        assert action in story, (action, story)
        positions.append(story.index(action))
    assert positions == sorted(positions), list(zip(wanted, positions, strict=True))
    with auditor.page.expect_navigation():
        auditor.page.click("text=Verify the whole log now")
    assert "Verified:" in auditor.page.inner_text("main")
    auditor.check("audit-verified")
    auditor.open("/catalogue")
    auditor.check("catalogue")
    print("axe-core violations below serious, per page:", json.dumps(platform.a11y))
