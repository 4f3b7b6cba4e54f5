"""`spe k8s front-door`, the download filter of a Kubernetes installation, run for real: Debian's
nginx with the front door's rules before a stub standing in for z2jh's proxy-public, as its own
process like in the pod. Download routes are refused, the rest reaches the proxy, and notebook
contents reads end up in the audit log (SQLite and PostgreSQL)."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from spe.audit.models import AuditEvent
from spe.db import readonly
from spe.workspaces.front_door import NGINX

pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists() and not os.environ.get("CI"),
    reason="nginx is not installed (make setup installs nginx-light)",
)


class Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"reached": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def door(spe_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = _free_port()
    folder = tmp_path / "front-door"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")} | spe_env
    process = subprocess.Popen(
        [
            sys.executable, "-m", "spe.cli", "k8s", "front-door", "--port", str(port),
            "--upstream", f"127.0.0.1:{upstream.server_address[1]}", "--folder", str(folder),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")
            break
        except OSError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the front door did not start"
            time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(20)
    upstream.shutdown()


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    status = conn.getresponse().status
    conn.close()
    return status


def test_downloads_are_refused_and_the_rest_reaches_the_proxy(door: int) -> None:
    assert _get(door, "/user/dave/study/files/data.csv") == 403
    assert _get(door, "/user/dave/study/%66iles/data.csv") == 403
    assert _get(door, "/user/dave/study/api/contents/a.csv?format=base64") == 403
    assert _get(door, "/hub/home") == 200


def test_contents_reads_are_shipped_into_the_audit_log(door: int) -> None:
    assert _get(door, "/user/dave/study/api/contents/notes.txt?type=file&format=text") == 200
    deadline = time.monotonic() + 15
    while True:
        with readonly() as s:
            found = s.scalars(
                select(AuditEvent.target).where(AuditEvent.action == "workspace.read")
            ).all()
        if found:
            break
        assert time.monotonic() < deadline, "the read was not shipped"
        time.sleep(0.3)
    assert found == ["workspace:study--dave"]
