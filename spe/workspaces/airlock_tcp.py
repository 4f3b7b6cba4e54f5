"""The airlock on Kubernetes: a TCP server whose callers prove who they are with a pod-bound
token, checked against the pod the token names (its address and labels) and the workspaces
table. The verbs are the unix-socket airlock's (spe.workspaces.airlock.dispatch).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from spe.audit.refusals import record_refusal
from spe.errors import SPEError
from spe.keys.workspace_tokens import RECORDER_ROLE
from spe.workspaces import kube_objects, layout
from spe.workspaces.airlock import (
    MAX_LINE,
    MAX_RECORD_LINE,
    charge,
    dispatch,
    handle_record,
    serve_lines,
)
from spe.workspaces.quota import AirlockQuota
from spe.workspaces.registry import RunningWorkspace

log = logging.getLogger("spe.airlock.tcp")
POD_CACHE_SECONDS = 5.0


class AirlockIdentityError(SPEError):
    """The caller is not the workspace its token names; the message says why."""


@dataclass(frozen=True)
class PodFacts:
    """What the cluster says about a pod: its address and labels, and whether it runs."""

    ip: str | None
    labels: Mapping[str, str]
    phase: str


class PodDirectory(Protocol):
    def pod(self, namespace: str, name: str) -> PodFacts | None: ...


class KubePodDirectory:
    """Pods as the Kubernetes API reports them (in-cluster config, or KUBECONFIG)."""

    def __init__(self) -> None:
        from kubernetes import client

        from spe.k8s.provision import load_cluster_config

        load_cluster_config()
        self.api = client.CoreV1Api()

    def pod(self, namespace: str, name: str) -> PodFacts | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.api.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        labels = found.metadata.labels if found.metadata else None
        status = found.status
        return PodFacts(
            status.pod_ip if status else None,
            dict(labels or {}),
            (status.phase if status else None) or "Unknown",
        )


class CachedPods:
    """A few seconds of memory for pod lookups (every cell asks the airlock)."""

    def __init__(self, pods: PodDirectory, seconds: float = POD_CACHE_SECONDS) -> None:
        self.pods, self.seconds = pods, seconds
        self._seen: dict[tuple[str, str], tuple[float, PodFacts | None]] = {}

    def pod(self, namespace: str, name: str) -> PodFacts | None:
        now = time.monotonic()
        hit = self._seen.get((namespace, name))
        if hit is not None and now - hit[0] < self.seconds:
            return hit[1]
        facts = self.pods.pod(namespace, name)
        self._seen[(namespace, name)] = (now, facts)
        return facts


def identify(token: Any, peer_ip: str, pods: PodDirectory, namespace: str) -> RunningWorkspace:
    """The running workspace whose pod sent ``token`` from ``peer_ip``; refuse anything else."""
    return identify_caller(token, peer_ip, pods, namespace)[0]


def identify_caller(
    token: Any, peer_ip: str, pods: PodDirectory, namespace: str
) -> tuple[RunningWorkspace, str]:
    """The running workspace whose pod sent ``token`` from ``peer_ip``, and who in the pod holds
    the token (its role: the workspace container or the recorder sidecar)."""
    from spe.db import readonly
    from spe.keys.workspace_tokens import verify_token
    from spe.workspaces.registry import running_workspaces

    if not isinstance(token, str) or not token:
        raise AirlockIdentityError("Send the workspace's token with every request.")
    with readonly() as session:
        claims = verify_token(session, token)
        running = {ws.name: ws for ws in running_workspaces(session)}
    project, user, name = claims["project"], claims["user"], claims["ws"]
    if claims["ns"] != namespace:
        raise AirlockIdentityError("The token belongs to another namespace.")
    if name != layout.workspace_id(project, user) or claims["pod"] != kube_objects.pod_name(
        project, user
    ):
        raise AirlockIdentityError("The token's workspace and pod do not belong together.")
    pod = pods.pod(namespace, claims["pod"])
    if pod is None or pod.phase != "Running":
        raise AirlockIdentityError("The token's pod is not running.")
    if pod.ip != peer_ip:
        # A token copied out of its pod is worthless anywhere else.
        raise AirlockIdentityError("The token was sent from another pod than the one it names.")
    wanted = kube_objects.workspace_labels(project, user)
    if any(pod.labels.get(key) != value for key, value in wanted.items()):
        raise AirlockIdentityError("The token's pod does not carry its workspace's labels.")
    ws = running.get(name)
    if ws is None or ws.project != project or ws.username != user:
        raise AirlockIdentityError("The token's workspace is not running.")
    return ws, str(claims["role"])


def handle_line(
    line: bytes,
    peer_ip: str,
    pods: PodDirectory,
    namespace: str,
    quota: AirlockQuota | None = None,
    record_quota: AirlockQuota | None = None,
) -> dict[str, Any]:
    """Answer one request line from ``peer_ip``: identify by token, charge the workspace's
    quota, then the shared verbs; a recorder sidecar's token only stores its records."""
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return {"ok": False, "error": "The request is not one line of JSON."}
    if not isinstance(request, dict):
        return {"ok": False, "error": "The request must be a JSON object."}
    token = request.pop("token", None)
    try:
        ws, role = identify_caller(token, peer_ip, pods, namespace)
    except SPEError as exc:
        log.warning("airlock refused a caller at %s: %s", peer_ip, exc.message)
        return {"ok": False, "error": exc.message}
    except Exception as exc:  # the cluster or database away: refuse, never guess
        log.exception("airlock could not identify a caller at %s", peer_ip)
        return {
            "ok": False,
            "error": f"The airlock cannot check the caller ({type(exc).__name__}).",
        }
    if role == RECORDER_ROLE:
        if "op" in request:
            sentence = "A recorder's token only stores the recorder's records."
            record_refusal(ws.username, "airlock.recorder_verb", f"workspace:{ws.name}", sentence)
            return {"ok": False, "error": sentence}
        # The sidecar outside the workspace container: stored as the recorder's (source
        # recorder), on a quota of its own, as the unix-socket airlock's record socket.
        record = json.dumps(
            {"action": request.get("action"), "details": request.get("details")},
            ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")
        return handle_record(ws, record, record_quota)
    if len(line) > MAX_LINE:  # the recorder's lines may be longer; a workspace's may not
        return {"ok": False, "error": f"A request may be at most {MAX_LINE} bytes."}
    refusal = charge(ws, len(line), quota)
    if refusal is not None:
        return refusal
    if "action" in request:
        # A workspace dressing its claims as the recorder's: refused, and written down (the
        # charge above bounds how often).
        log.warning("airlock refused a recorder record sent with %s's workspace token", ws.name)
        sentence = (
            "Only the workspace's recorder may write the recorder's records; a workspace "
            "records cells and loads with op 'cell' and 'load'."
        )
        record_refusal(ws.username, "airlock.recorder_record", f"workspace:{ws.name}", sentence)
        return {"ok": False, "error": sentence}
    return dispatch(ws, request)


class TcpAirlock:
    """Serves the airlock on host:port; one JSON request per line, one answer per line."""

    def __init__(self, host: str, port: int, pods: PodDirectory, namespace: str) -> None:
        self.host, self.port, self.namespace = host, port, namespace
        self.pods = CachedPods(pods)
        self.server: asyncio.AbstractServer | None = None
        self.quota = AirlockQuota()
        self.record_quota = AirlockQuota(scope="recorder")  # the sidecars', apart from kernels'

    async def start(self) -> int:
        """Start listening; the port (useful when 0 was asked for)."""
        self.server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_RECORD_LINE
        )
        port: int = self.server.sockets[0].getsockname()[1]
        log.info("airlock listening on %s:%s", self.host, port)
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_ip = str(writer.get_extra_info("peername")[0])
        await serve_lines(
            reader,
            writer,
            lambda line: handle_line(
                line, peer_ip, self.pods, self.namespace, self.quota, self.record_quota
            ),
        )


def run_tcp_airlock(host: str, port: int, namespace: str) -> None:
    """`spe k8s airlock`: serve until SIGINT/SIGTERM, pods looked up in the cluster."""
    import signal

    async def main() -> None:
        from concurrent.futures import ThreadPoolExecutor

        from spe.workspaces.airlock import REQUEST_THREADS

        # As the unix-socket airlock: DP queries wait in their threads for a worker's answer,
        # and must not hold up other workspaces' cells.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(REQUEST_THREADS))
        airlock = TcpAirlock(host, port, KubePodDirectory(), namespace)
        await airlock.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await airlock.close()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s airlock %(message)s")
    asyncio.run(main())
