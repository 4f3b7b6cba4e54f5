"""The TCP airlock of Kubernetes workspaces, served for real on 127.0.0.1 (SQLite and
PostgreSQL): a pod-bound token is accepted only from the pod it names, with that pod's labels,
while its workspace runs; another workspace's, a forged and an expired token are refused.
The cluster's pod directory is a fake here (no cluster on this machine); everything else is real.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from spe.accounts.service import accept_terms, get_user
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.k8s.tokens import issue_workspace_token
from spe.projects.service import add_member, approve_project, get_project
from spe.workspaces import kube_objects
from spe.workspaces.airlock_tcp import PodFacts, TcpAirlock
from spe.workspaces.client import AirlockUnavailable, call
from spe.workspaces.registry import workspace_started, workspace_stopped

NS = "spe"
A_IP = "127.0.0.1"  # researcher's pod: the test connects from here
B_IP = "10.9.8.7"  # researcher2's pod, somewhere else in the cluster


class FakePods:
    """The cluster's pods as the airlock would read them (records each lookup)."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], PodFacts] = {}
        self.lookups: list[str] = []

    def add(self, user: str, ip: str, **labels: str) -> None:
        wanted = kube_objects.workspace_labels("study", user)
        self.pods[(NS, kube_objects.pod_name("study", user))] = PodFacts(
            ip, {**wanted, **labels}, "Running"
        )

    def pod(self, namespace: str, name: str) -> PodFacts | None:
        self.lookups.append(name)
        return self.pods.get((namespace, name))


class AirlockThread:
    def __init__(self, pods: FakePods) -> None:
        self.loop = asyncio.new_event_loop()
        self.airlock = TcpAirlock("127.0.0.1", 0, pods, NS)
        self.airlock.pods.seconds = 0  # every request sees the pods as they are now
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> AirlockThread:
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.airlock.start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.airlock.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def cluster(world: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with transaction() as s:
        study = get_project(s, "study")
        # Added at application time: the holder approves the project with its members.
        add_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
        approve_project(s, get_user(s, "reviewer"), study)
        for name in ("researcher", "researcher2"):
            accept_terms(s, get_user(s, name))
            workspace_started(s, get_user(s, name), study)
    tokens = {}
    for name in ("researcher", "researcher2"):
        with transaction() as s:
            tokens[name], _ = issue_workspace_token(
                s, "study", name, namespace=NS, lifetime_seconds=3600
            )
    pods = FakePods()
    pods.add("researcher", A_IP)
    pods.add("researcher2", B_IP)
    service = AirlockThread(pods).start()
    token_file = tmp_path / "token"
    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_URL", f"tcp://127.0.0.1:{service.port}")
    monkeypatch.setenv("SPE_WORKSPACE_AIRLOCK_TOKEN_FILE", str(token_file))
    from spe.config import reset_settings

    reset_settings()
    yield {"tokens": tokens, "pods": pods, "file": token_file, "service": service}
    service.stop()


def _as(cluster: dict[str, Any], token: str) -> None:
    cluster["file"].write_text(token + "\n")


def _refusal(request: dict[str, Any]) -> str:
    with pytest.raises(AirlockUnavailable) as caught:
        call(request)
    return str(caught.value)


def test_a_workspace_with_its_own_token_from_its_own_pod_is_served_as_itself(
    cluster: dict[str, Any],
) -> None:
    _as(cluster, cluster["tokens"]["researcher"])
    answer = call({"op": "hello"})
    assert (answer["workspace"], answer["user"]) == ("study--researcher", "researcher")
    call({"op": "cell", "code": "x = 1"})
    with readonly() as s:
        event = s.execute(
            select(AuditEvent.actor, AuditEvent.target).where(AuditEvent.action == "workspace.cell")
        ).one()
    assert tuple(event) == ("researcher", "workspace:study--researcher")


def test_another_workspaces_token_is_refused_from_this_pod(cluster: dict[str, Any]) -> None:
    # researcher2's genuine token, presented from researcher's pod address.
    _as(cluster, cluster["tokens"]["researcher2"])
    assert "another pod" in _refusal({"op": "hello"})
    with readonly() as s:
        assert s.scalar(select(AuditEvent).where(AuditEvent.action == "workspace.cell")) is None


def test_a_forged_token_is_refused(cluster: dict[str, Any]) -> None:
    prefix, payload, signature = cluster["tokens"]["researcher"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    # Claim to be researcher2 from researcher2's pod name, keeping researcher's signature.
    claims.update(
        user="researcher2",
        ws="study--researcher2",
        pod=kube_objects.pod_name("study", "researcher2"),
    )
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _as(cluster, f"{prefix}.{forged}.{signature}")
    assert "signature" in _refusal({"op": "hello"})
    _as(cluster, "spe1.bm90.aGVsbG8")  # garbage in the right shape
    assert "signature" in _refusal({"op": "hello"})
    _as(cluster, "not a token")
    assert "malformed" in _refusal({"op": "hello"})


def test_an_expired_token_is_refused(cluster: dict[str, Any]) -> None:
    with transaction() as s:
        old, _ = issue_workspace_token(
            s, "study", "researcher", namespace=NS, lifetime_seconds=60, now=time.time() - 120
        )
    _as(cluster, old)
    assert "expired" in _refusal({"op": "hello"})


def test_a_pod_without_its_workspaces_labels_is_refused(cluster: dict[str, Any]) -> None:
    cluster["pods"].add("researcher", A_IP, **{kube_objects.PROJECT_LABEL: "other"})
    _as(cluster, cluster["tokens"]["researcher"])
    assert "labels" in _refusal({"op": "hello"})


def test_a_stopped_workspaces_token_is_refused(cluster: dict[str, Any]) -> None:
    with transaction() as s:
        workspace_stopped(s, "system:test", "study--researcher", "test")
    _as(cluster, cluster["tokens"]["researcher"])
    assert "not running" in _refusal({"op": "hello"})


def test_a_request_without_a_token_is_refused(cluster: dict[str, Any]) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", cluster["service"].port), timeout=10) as conn:
        conn.sendall(b'{"op": "hello"}\n')
        answer = json.loads(conn.makefile().readline())
    assert answer == {"ok": False, "error": "Send the workspace's token with every request."}


def test_token_issue_is_audited_without_the_token(cluster: dict[str, Any]) -> None:
    with readonly() as s:
        details = s.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "workspace.token_issue")
        ).all()
    assert len(details) == 2
    assert all(cluster["tokens"]["researcher"].split(".")[2] not in d for d in details)
    assert {json.loads(d)["pod"] for d in details} == {
        kube_objects.pod_name("study", u) for u in ("researcher", "researcher2")
    }


# --- the recorder as the pod's sidecar (issue 15) -------------------------------------------------


class StandInNotebook:
    """A TCP server on 127.0.0.1 standing in for the notebook server on the pod's loopback: it
    answers websocket upgrades and contents reads, and notes what reached it and whether the
    recorder's record of a cell was already in the audit log when the cell arrived."""

    def __init__(self, file_text: str) -> None:
        self.file_text = file_text
        self.received: list[bytes] = []
        self.cell_recorded_first: list[bool] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.received.append(head)
        if b"Upgrade: websocket" in head:
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")  # fmt: skip
            await writer.drain()
            while chunk := await reader.read(1 << 16):
                recorded = await asyncio.to_thread(_cells, "sidecar cell")
                self.cell_recorded_first.append(bool(recorded))
                self.received.append(chunk)
        else:
            model = {"type": "file", "format": "text", "content": self.file_text}
            body = json.dumps(model).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
            await writer.drain()
        writer.close()

    def start(self) -> StandInNotebook:
        self.thread.start()

        async def listen() -> int:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            return int(self.server.sockets[0].getsockname()[1])

        self.port = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        return self

    def stop(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _cells(code: str) -> list[dict[str, Any]]:
    with readonly() as s:
        rows = s.scalars(select(AuditEvent.details).where(AuditEvent.action == "workspace.cell"))
        return [d for d in map(json.loads, rows) if d.get("code") == code]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_sidecar(airlock_port: int, notebook_port: int, token_file: Any) -> tuple[Any, int]:
    """The recorder in sidecar mode as the pod runs it: its own process, no SPE settings."""
    import socket
    import subprocess
    import sys

    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-m",
            "spe.hub.recorder",
            f"--listen=127.0.0.1:{port}",
            f"--upstream=tcp://127.0.0.1:{notebook_port}",
            f"--airlock-url=tcp://127.0.0.1:{airlock_port}",
            f"--token-file={token_file}",
            "--workspace=study--researcher",
        ],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            assert process.poll() is None, "the recorder ended at start"
            assert time.monotonic() < deadline, "the recorder did not listen"
            time.sleep(0.05)


@pytest.fixture
def sidecar(world: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A running workspace of 'study' granted 'people', whose policy sets a daily read budget of
    1,000 bytes (the settings' is 16 MiB); the TCP airlock; the stand-in notebook server; the
    recorder in sidecar mode with a recorder token in a file only it is given."""
    import shutil

    from spe.config import get_settings, reset_settings
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy
    from spe.projects.extracts import grant_dataset
    from tests.conftest import synthetic_numbers, write_people_csv, write_policy

    shutil.copytree(get_settings().policies_dir / "terms", tmp_path / "policies" / "terms")
    policies = tmp_path / "policies" / "datasets"
    policies.mkdir(parents=True)
    policy = write_policy(policies)
    policy.write_text(policy.read_text() + "read_bytes_per_day: 1000\n")
    monkeypatch.setenv("SPE_POLICIES_DIR", str(tmp_path / "policies"))
    reset_settings()
    ingest(
        "reviewer",
        write_people_csv(tmp_path / "people.csv", synthetic_numbers(12)),
        load_policy(policy),
    )
    with transaction() as s:
        study = get_project(s, "study")
        approve_project(s, get_user(s, "reviewer"), study)
        grant_dataset(s, get_user(s, "reviewer"), study, "people", ["income"])
        accept_terms(s, get_user(s, "researcher"))
        workspace_started(s, get_user(s, "researcher"), study)
    tokens = {}
    with transaction() as s:
        for role in ("workspace", "recorder"):
            tokens[role], _ = issue_workspace_token(
                s, "study", "researcher", namespace=NS, lifetime_seconds=3600, role=role
            )
    pods = FakePods()
    pods.add("researcher", A_IP)
    airlock = AirlockThread(pods).start()
    notebook = StandInNotebook("a, b; " * 100).start()  # 600 bytes of plain text
    token_file = tmp_path / "recorder-token"
    token_file.write_text(tokens["recorder"] + "\n")
    recorder, port = start_sidecar(airlock.port, notebook.port, token_file)
    out = {"tokens": tokens, "pods": pods, "airlock": airlock, "notebook": notebook,
           "recorder": recorder, "port": port, "token_file": token_file}  # fmt: skip
    yield out
    out["recorder"].terminate()
    out["recorder"].wait(10)
    out["airlock"].stop()
    notebook.stop()


def _raw_airlock(port: int, request: dict[str, Any]) -> dict[str, Any]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(json.dumps(request).encode() + b"\n")
        answer: dict[str, Any] = json.loads(conn.makefile().readline())
    return answer


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (what other pods would reach)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_sidecar_records_a_cell_before_the_notebook_sees_it_and_only_its_token_can(
    sidecar: dict[str, Any],
) -> None:
    """A real recorder process in sidecar mode, a real TCP airlock and database, a stand-in
    notebook server on loopback. What a cluster would add (not here): the kubelet starting the
    native sidecar first, the NetworkPolicy, and loopback being the pod's own."""
    import base64
    import os
    import socket

    from tests.security.test_recorder import _ws_frame, message

    with socket.create_connection(("127.0.0.1", sidecar["port"]), timeout=20) as conn:
        key = base64.b64encode(os.urandom(16)).decode()
        conn.sendall(
            (
                "GET /user/researcher/study/api/kernels/k1/channels HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert b" 101 " in conn.recv(4096)
        cell = message("execute_request", {"code": "sidecar cell", "user_expressions": {}})
        conn.sendall(_ws_frame(json.dumps(cell).encode()))
        deadline = time.monotonic() + 20
        while not sidecar["notebook"].cell_recorded_first:
            assert time.monotonic() < deadline, "the cell never reached the notebook server"
            time.sleep(0.05)
    assert sidecar["notebook"].cell_recorded_first == [True]  # recorded before it was passed
    (recorded,) = _cells("sidecar cell")
    assert recorded["source"] == "recorder" and recorded["msg_type"] == "execute_request"

    # The workspace's own token cannot write the recorder's records, however it dresses them.
    port = sidecar["airlock"].port
    forged = {"action": "workspace.cell", "details": {"code": "forged", "source": "recorder"}}
    answer = _raw_airlock(port, {"token": sidecar["tokens"]["workspace"], **forged})
    assert not answer["ok"] and "Only the workspace's recorder" in answer["error"]
    # Nor can the recorder's token be used for the workspace's verbs.
    answer = _raw_airlock(port, {"token": sidecar["tokens"]["recorder"], "op": "cell", "code": "x"})
    assert not answer["ok"] and "only stores the recorder's records" in answer["error"]
    assert _cells("forged") == [] and _cells("x") == []
    with readonly() as s:
        refused = s.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "request.refused")
        ).all()
    assert {json.loads(d)["action"] for d in refused} >= {
        "airlock.recorder_record",
        "airlock.recorder_verb",
    }
    # The recorder's token sent from another pod's address is refused like any token.
    sidecar["pods"].add("researcher", B_IP)
    sidecar["airlock"].airlock.pods.seconds = 0
    answer = _raw_airlock(port, {"token": sidecar["tokens"]["recorder"], **forged})
    assert not answer["ok"] and "another pod" in answer["error"]

    # The notebook server listens on loopback only: from any other address of this machine
    # (what another pod, or the proxy, would use) its port is closed; the recorder's is the way.
    address = _non_loopback_address()
    if address is not None:
        with pytest.raises(OSError):
            socket.create_connection((address, sidecar["notebook"].port), timeout=5).close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_reads_through_the_sidecar_count_against_the_strictest_budget_over_restarts(
    sidecar: dict[str, Any],
) -> None:
    """The dataset policy's 1,000 bytes a day bind (the settings allow 16 MiB): one 600-byte read
    is shown, the next refused with one alarm; after the recorder and the airlock restart, the
    count is still there (it is in the database), and no second alarm is written."""
    import socket

    def read() -> bytes:
        with socket.create_connection(("127.0.0.1", sidecar["port"]), timeout=20) as conn:
            conn.sendall(
                b"GET /user/researcher/study/api/contents/table.csv?type=file&format=text "
                b"HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            return conn.makefile("rb").read()

    def alarms() -> list[dict[str, Any]]:
        with readonly() as s:
            rows = s.scalars(
                select(AuditEvent.details).where(AuditEvent.action == "workspace.read_alarm")
            )
            return [json.loads(d) for d in rows]

    assert read().startswith(b"HTTP/1.1 200")
    refused = read()
    assert refused.startswith(b"HTTP/1.1 403") and b"daily limit" in refused
    (alarm,) = alarms()
    assert alarm["limit"] == 1000 and alarm["limit_from"] == "dataset policy people"
    assert alarm["source"] == "recorder"
    # Both processes restart: the day's count and its alarm marker are in the database.
    sidecar["recorder"].terminate()
    sidecar["recorder"].wait(10)
    sidecar["airlock"].stop()
    sidecar["airlock"] = AirlockThread(sidecar["pods"]).start()
    sidecar["recorder"], sidecar["port"] = start_sidecar(
        sidecar["airlock"].port, sidecar["notebook"].port, sidecar["token_file"]
    )
    assert read().startswith(b"HTTP/1.1 403")
    assert len(alarms()) == 1
    with readonly() as s:
        reads = s.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "workspace.contents_read")
        ).all()
    assert len(reads) == 1  # refused reads are not shown, and not stored beyond the one alarm


@pytest.mark.parametrize("backend", ["sqlite"])
def test_quotas_are_shared_by_processes_and_fail_closed(
    spe_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of 3 spent through one quota object is spent for another and for another process
    (the counters are in the database); the first refusal of the day carries the one alarm.
    Without a database every request is refused (the engine is made to fail: a mock, since a
    database that is away cannot be arranged inside this test's SQLite file)."""
    import subprocess
    import sys

    from spe.workspaces import quota

    limits = quota.QuotaLimits(events_per_second=0.001, burst=3, bytes_per_day=10**9)
    first = quota.AirlockQuota(limits)
    assert [first.charge("study--researcher", 10).refusal for _ in range(3)] == [None] * 3
    verdict = quota.AirlockQuota(limits).charge("study--researcher", 10)
    assert verdict.refusal is not None and "requests a second" in verdict.refusal
    assert verdict.alarm is not None and verdict.alarm["quota"] == quota.RATE
    script = (
        "import json; from spe.workspaces.quota import AirlockQuota, QuotaLimits; "
        "v = AirlockQuota(QuotaLimits(0.001, 3, 10**9)).charge('study--researcher', 10); "
        "w = AirlockQuota(QuotaLimits(0.001, 3, 10**9)).charge('study--researcher2', 10); "
        "print(json.dumps([v.refusal, v.alarm, w.refusal]))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script],
        env={**spe_env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    refusal, alarm, other = json.loads(ran.stdout.strip().splitlines()[-1])
    assert refusal is not None and alarm is None  # refused; the day's alarm was written once
    assert other is None  # another workspace has its own counters

    def away() -> Any:
        raise OSError("the database is away")

    monkeypatch.setattr(quota, "_engine", away)
    assert quota.AirlockQuota(limits).charge("study--researcher2", 1).refusal == (
        quota.REFUSED_UNCHECKED
    )
    answer = quota.charge_read("w", "study", "researcher", {"counted_bytes": 5})
    assert answer is not None and not answer["ok"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_token_from_before_roles_is_the_workspaces_and_a_made_up_role_is_refused(
    spe_env: dict[str, str],
) -> None:
    """Pods keep their token until the spawner renews it, so a genuine token issued before
    roles existed is read as the workspace's (the role with the least); a signed token naming a
    role SPE does not know is refused."""
    from spe.keys import workspace_tokens as wt

    with transaction() as s:  # a token issued makes the key, audited
        issue_workspace_token(s, "study", "researcher", namespace=NS, lifetime_seconds=60)

    def signed(claims: dict[str, Any]) -> str:
        payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
        with readonly() as s:
            signature = wt._key(s, None).sign(wt._DOMAIN + payload)
        return f"{wt.PREFIX}.{wt._b64(payload)}.{wt._b64(signature)}"

    now = int(time.time())
    old = {"ws": "study--researcher", "pod": "p", "project": "study", "user": "researcher",
           "ns": NS, "iat": now, "exp": now + 60, "jti": "00"}  # fmt: skip
    with readonly() as s:
        assert wt.verify_token(s, signed(old))["role"] == "workspace"
        with pytest.raises(wt.WorkspaceTokenError, match="role"):
            wt.verify_token(s, signed({**old, "role": "admin"}))
