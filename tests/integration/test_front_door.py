"""The front door: a real nginx (Debian's) with the generated configuration, before a stub
upstream standing in for JupyterHub's proxy (the stub answers 200 to whatever reaches it, so a
route that gets through is visible). Every download route is tried, also disguised."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spe.workspaces.front_door import NGINX, FrontDoor, nginx_config, read_events, start

pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists() and not os.environ.get("CI"),
    reason="nginx is not installed (make setup installs nginx-light)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stub(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"reached": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoor]:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Stub)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    folder = tmp_path_factory.mktemp("front-door")
    os.chmod(folder, 0o755)  # noqa: S103 - nginx workers (nobody) reach their temp folder
    spec = FrontDoor(
        listen_port=free_port(),
        upstream_port=upstream.server_address[1],
        folder=folder,
        access_log=folder / "access.jsonl",
        error_log=folder / "error.log",
        max_upload_kib=64,
        as_root=os.geteuid() == 0,
    )
    nginx = start(spec)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", spec.listen_port), 0.2).close()
            break
        except OSError:
            assert nginx.poll() is None, "nginx exited"
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
    yield spec
    nginx.terminate()
    nginx.wait(10)
    upstream.shutdown()


def get(door: FrontDoor, path: str, method: str = "GET", body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", door.listen_port, timeout=10)
    conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


SERVER = "/user/ada/study"
BLOCKED = [
    f"{SERVER}/files/data/income/data.parquet",
    f"{SERVER}/files/outbox/table.csv",
    f"{SERVER}/%66iles/data.csv",  # percent-encoded route
    f"{SERVER}//files/data.csv",  # doubled slash
    f"{SERVER}/lab/../files/data.csv",  # dot segments
    f"{SERVER}/FILES/data.csv",  # case
    f"{SERVER}/view/data.csv",
    f"{SERVER}/nbconvert/html/analysis.ipynb",
    f"{SERVER}/terminals/1",
    f"{SERVER}/api/terminals",
    f"{SERVER}/api/contents/data.csv?download=1",
    f"{SERVER}/api/contents/data.csv?content=1&download=true",
    f"{SERVER}/api/contents/data.parquet?type=file&format=base64",
    f"{SERVER}/api/contents/data.parquet?format=BASE64&content=1",
    f"{SERVER}/api/contents/data.parquet?format=%62ase64",  # encoded value
    f"{SERVER}/api/contents/data.csv?%64ownload=1",  # encoded name
    f"{SERVER}/lab/api/workspaces/default",
]
ALLOWED = [
    "/hub/login",
    f"{SERVER}/lab",
    f"{SERVER}/api/contents/analysis.ipynb?type=notebook&content=1",
    f"{SERVER}/api/contents/notes.txt?type=file&format=text&content=1",
    f"{SERVER}/api/kernels",
    f"{SERVER}/api/contents/profile.json?format=json",
]


@pytest.mark.parametrize("path", BLOCKED)
def test_each_download_route_is_refused_however_it_is_spelled(door, path):
    assert get(door, path) == 403


@pytest.mark.parametrize("path", ALLOWED)
def test_ordinary_notebook_traffic_passes(door, path):
    assert get(door, path) == 200


def test_uploads_above_the_limit_are_refused(door):
    small = json.dumps({"type": "file", "format": "text", "content": "x" * 1000}).encode()
    big = json.dumps({"type": "file", "format": "text", "content": "x" * 100_000}).encode()
    assert get(door, f"{SERVER}/api/contents/small.txt", "PUT", small) == 200
    assert get(door, f"{SERVER}/api/contents/big.txt", "PUT", big) == 413


def test_contents_reads_are_logged_with_path_and_bytes_for_the_audit_log(door):
    get(door, f"{SERVER}/api/contents/notes.txt?type=file&format=text&content=1")
    get(door, f"{SERVER}/files/secret.csv")
    lines = door.access_log.read_text().splitlines()
    reads = read_events(lines)
    assert any(r["path"] == "notes.txt" and r["bytes"] > 0 and r["status"] == 200 for r in reads)
    assert all(r["user"] == "ada" and r["project"] == "study" for r in reads)
    assert any('"blocked":"yes"' in line and "/files/secret.csv" in line for line in lines)


def test_the_configuration_is_a_pure_function_of_the_door(tmp_path):
    spec = FrontDoor(8000, 8001, tmp_path, tmp_path / "a.jsonl", tmp_path / "e.log")
    assert nginx_config(spec) == nginx_config(spec)
    text = nginx_config(spec)
    assert "listen 127.0.0.1:8000;" in text and "proxy_pass http://127.0.0.1:8001;" in text
    assert "0.0.0.0" not in text  # noqa: S104 - asserting it is absent


def test_shipped_reads_become_audit_events_once(world, tmp_path):
    from sqlalchemy import select

    from spe.audit.models import AuditEvent
    from spe.db import readonly
    from spe.workspaces.front_door import ship_reads

    log = tmp_path / "access.jsonl"
    entry = {
        "time": "2026-11-23T07:00:00+00:00",
        "method": "GET",
        "uri": "/user/researcher/study/api/contents/notes.txt",
        "args": "type=file&format=text&content=1",
        "status": 200,
        "bytes": 1234,
        "blocked": "",
    }
    log.write_text(json.dumps(entry) + "\n" + '{"partial": ')
    offset = tmp_path / "offset"
    assert ship_reads(log, offset) == 1
    assert ship_reads(log, offset) == 0  # the partial line waits; nothing twice
    with readonly() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "workspace.read"))
        details = json.loads(event.details)
        assert event.actor == "researcher" and event.project == "study"
        assert details["path"] == "notes.txt" and details["bytes"] == 1234
    shutil.rmtree(tmp_path, ignore_errors=True)
