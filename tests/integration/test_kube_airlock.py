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
