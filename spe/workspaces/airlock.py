"""The airlock: each running workspace's one way out, a unix socket served by the control plane.

The airlock knows which workspace is calling from the socket the connection arrived on, never
from what the caller says. Through it a workspace records the cells it runs and the datasets
it loads, and files export requests from its own outbox. One JSON request per line, one JSON
answer per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from spe.errors import SPEError
from spe.workspaces.layout import host_paths
from spe.workspaces.quota import REFUSED_UNCHECKED, AirlockQuota
from spe.workspaces.registry import RunningWorkspace

log = logging.getLogger("spe.airlock")

MAX_LINE = 1 << 20  # one request; a cell larger than this is refused (and so does not run)
MAX_RECORD_LINE = 16 << 20  # one record from the recorder (a 4 MiB message, JSON-escaped)
# What the recorder (outside the sandbox) may write, on its own socket only.
RECORDER_ACTIONS = frozenset(
    {
        "workspace.cell",
        "workspace.kernel_message",
        "workspace.contents_write",
        "workspace.contents_read",
        "workspace.recorder_refused",
        "workspace.read_alarm",
    }
)
MAX_CODE_RECORDED = 256 << 10  # longer cells are recorded by hash and length, and their start
SYNC_SECONDS = 1.0
REQUEST_THREADS = 64


# What a workspace says about itself is a claim: every record that arrives through the airlock is
# stored with this source, whatever the request says. The layer that claims to have made it
# (kernel extension or server hook, both inside the sandbox) is kept beside it as "layer".
WORKSPACE_SOURCE = "workspace"
LAYERS = ("kernel", "server")
UNGRANTED_LOAD = (
    "The project has no grant for the dataset {dataset!r}, so SPE does not record loading it; "
    "this attempt is reported to the data holder's auditors."
)


class AirlockError(SPEError):
    """A request the airlock refuses; the message goes back to the workspace."""


def _alarm(ws: RunningWorkspace, action: str, details: dict[str, Any], dataset: str = "") -> None:
    """Record an alarm event for ``ws`` in a transaction of its own."""
    from spe.audit.log import record
    from spe.db.session import get_engine

    with get_engine().begin() as conn:
        record(
            conn,
            ws.username,
            action,
            f"workspace:{ws.name}",
            details,
            project=ws.project,
            dataset=dataset[:128] or None,
        )
    log.warning("airlock alarm %s for %s: %s", action, ws.name, details)


# --- what each request does (synchronous, testable without sockets) ---------------------------


def _cell(ws: RunningWorkspace, request: dict[str, Any]) -> dict[str, Any]:
    from spe.audit.log import record
    from spe.db.session import get_engine

    code = request.get("code")
    if not isinstance(code, str):
        raise AirlockError("A cell record needs the cell's code as text.")
    digest = hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()
    claimed = request.get("sha256")
    if claimed is not None and claimed != digest:
        raise AirlockError("The cell's sha256 does not match its code.")
    layer = request.get("source") if request.get("source") in LAYERS else "kernel"
    details: dict[str, Any] = {
        "sha256": digest,
        "length": len(code),
        "code": code[:MAX_CODE_RECORDED],
        "truncated": len(code) > MAX_CODE_RECORDED,
        "source": WORKSPACE_SOURCE,
        "layer": layer,
    }
    count = request.get("execution_count")
    if isinstance(count, int):
        details["execution_count"] = count
    # A cell changes nothing but the log, so it is recorded on a Core transaction (fast path).
    with get_engine().begin() as conn:
        record(
            conn,
            ws.username,
            "workspace.cell",
            f"workspace:{ws.name}",
            details,
            project=ws.project,
        )
    return {"ok": True, "sha256": digest}


def _load(ws: RunningWorkspace, request: dict[str, Any]) -> dict[str, Any]:
    from spe.audit.log import record
    from spe.db.session import get_engine

    dataset = request.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise AirlockError("A load record needs the dataset's name.")
    columns = request.get("columns") or []
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise AirlockError("columns must be a list of column names.")
    rows = request.get("rows")
    if dataset not in _granted(ws):
        # A claim to have loaded data the project may not see is either a lie or an escape:
        # not a load, an alarm.
        _alarm(
            ws,
            "workspace.load_alarm",
            {"reason": "a load of a dataset the project was not granted", "source": "workspace"},
            dataset,
        )
        raise AirlockError(UNGRANTED_LOAD.format(dataset=dataset[:128]))
    from spe.dp.verbs import refuse_rows_load

    refuse_rows_load(ws, dataset)  # an aggregate-only dataset is never read as rows
    with get_engine().begin() as conn:
        record(
            conn,
            ws.username,
            "workspace.load",
            f"workspace:{ws.name}",
            {
                "columns": columns[:500],
                "rows": rows if isinstance(rows, int) else None,
                "source": WORKSPACE_SOURCE,
            },
            project=ws.project,
            dataset=dataset[:128],
        )
    return {"ok": True}


def _granted(ws: RunningWorkspace) -> set[str]:
    from spe.db import readonly
    from spe.projects.extracts import granted_datasets
    from spe.projects.service import get_project

    with readonly() as session:
        return set(granted_datasets(session, get_project(session, ws.project)))


def _export(ws: RunningWorkspace, request: dict[str, Any]) -> dict[str, Any]:
    from spe.accounts.service import get_user
    from spe.db import transaction
    from spe.exports import actions
    from spe.projects.service import get_project
    from spe.tasks import BrokerError, dispatch

    outputs = request.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise AirlockError(
            'An export request needs "outputs": [{"name": ..., "justification": ...}, ...].'
        )
    wanted = [
        actions.OutputRequest(str(o.get("name", "")), str(o.get("justification", "")))
        for o in outputs
    ]
    title = request.get("title")
    with transaction() as session:
        project = get_project(session, ws.project)
        user = get_user(session, ws.username)
        # The outbox is this workspace's own, whatever the request says.
        exported, job = actions.file_request(
            session,
            user,
            project,
            wanted,
            str(title) if title else "",
            host_paths(ws.project, ws.username).outbox,
        )
        request_id = str(exported.id)
    answer: dict[str, Any] = {"ok": True, "request": request_id, "status": "checking"}
    try:
        dispatch(job)
    except BrokerError as exc:
        answer["note"] = exc.message
    return answer


def _exports(ws: RunningWorkspace, _request: dict[str, Any]) -> dict[str, Any]:
    from spe.accounts.service import get_user
    from spe.db import transaction
    from spe.exports import actions
    from spe.projects.service import get_project

    with transaction() as session:
        mine = actions.list_requests(
            session, get_user(session, ws.username), get_project(session, ws.project)
        )
    return {"ok": True, "requests": mine}


def _dp(ws: RunningWorkspace, request: dict[str, Any]) -> dict[str, Any]:
    from spe.dp.verbs import VERBS

    return VERBS[request["op"]](ws, request)


def _hello(ws: RunningWorkspace, _request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "workspace": ws.name, "project": ws.project, "user": ws.username}


OPERATIONS: dict[str, Callable[[RunningWorkspace, dict[str, Any]], dict[str, Any]]] = {
    "hello": _hello,
    "cell": _cell,
    "load": _load,
    "export": _export,
    "exports": _exports,
    "dp": _dp,  # a differentially private query (spe.dp), answered at once
    "dp_budget": _dp,
    "dp_datasets": _dp,
    "dp_variables": _dp,
}


# Used when a caller passes no quota of its own (each Airlock and TcpAirlock has one).
PROCESS_QUOTA = AirlockQuota()


def handle_request(
    ws: RunningWorkspace, line: bytes, quota: AirlockQuota | None = None
) -> dict[str, Any]:
    """Answer one request from workspace ``ws`` (known from the socket, not from ``line``)."""
    refusal = charge(ws, len(line), quota)
    if refusal is not None:
        return refusal
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return {"ok": False, "error": "The request is not one line of JSON."}
    if not isinstance(request, dict):
        return {"ok": False, "error": "The request must be a JSON object."}
    return dispatch(ws, request)


def charge(
    ws: RunningWorkspace, nbytes: int, quota: AirlockQuota | None = None
) -> dict[str, Any] | None:
    """Count a request against ``ws``'s quotas: None when it may go on, else the refusal.

    Called before the request is even parsed, so that a flood costs the database one alarm
    event per quota and day, and nothing more. An alarm that cannot be written still refuses.
    """
    verdict = (quota or PROCESS_QUOTA).charge(ws.name, nbytes)
    if verdict.refusal is None:
        return None
    if verdict.alarm is not None:
        try:
            _alarm(ws, "workspace.quota_alarm", verdict.alarm)
        except Exception:
            log.exception("airlock could not record a quota alarm for %s", ws.name)
    return {"ok": False, "error": verdict.refusal}


def _membership_refusal(ws: RunningWorkspace) -> str | None:
    """Why ``ws``'s user is not (or no longer, or not yet) a member of its project: a person
    waiting for the data holder, or removed, gets nothing through the airlock."""
    from spe.db import readonly
    from spe.db.session import get_engine
    from spe.projects.service import current_member_query, membership_refusal

    # The common case on a bare connection (it runs before every cell); the sentence only
    # when refused.
    with get_engine().connect() as conn:
        if conn.execute(current_member_query(ws.username, ws.project)).first() is not None:
            return None
    with readonly() as session:
        return membership_refusal(session, ws.username, ws.project)


def dispatch(ws: RunningWorkspace, request: dict[str, Any]) -> dict[str, Any]:
    """Run one parsed request for ``ws``; both transports (unix socket, TCP with a pod-bound
    token in spe.workspaces.airlock_tcp) identify the workspace and charge its quota first,
    then call this."""
    op = request.get("op")
    handler = OPERATIONS.get(op) if isinstance(op, str) else None
    if handler is None:
        return {"ok": False, "error": f"Unknown operation; use one of {', '.join(OPERATIONS)}."}
    try:
        refused = _membership_refusal(ws)
        if refused is not None:
            from spe.audit.refusals import record_refusal

            record_refusal(ws.username, f"airlock.{op}", f"workspace:{ws.name}", refused)
            return {"ok": False, "error": refused}
        return handler(ws, request)
    except SPEError as exc:
        return {"ok": False, "error": exc.message}
    except Exception as exc:  # never let a workspace crash the airlock; it sees a sentence
        log.exception("airlock %s failed for %s", op, ws.name)
        return {"ok": False, "error": f"The airlock could not do {op} ({type(exc).__name__})."}


def handle_record(
    ws: RunningWorkspace, line: bytes, quota: AirlockQuota | None = None
) -> dict[str, Any]:
    """Store one record from the workspace's recorder, which runs outside the sandbox and is the
    only one that can reach this socket: its records are the platform's own (source recorder).

    A cell waits for this before it runs, so the quota's count and the record are one
    transaction (one commit). Every line is counted, also one that is not a record; a refusal
    keeps its count and alarm marker, and stores nothing else."""
    from spe.audit.log import AuditError, record
    from spe.db.session import get_engine

    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        request = None
    action = request.get("action") if isinstance(request, dict) else None
    details = request.get("details") if isinstance(request, dict) else None
    answer: dict[str, Any] = {"ok": True}
    stored = False
    verdict = None
    try:
        with get_engine().begin() as conn:
            verdict = (quota or PROCESS_QUOTA).charge_on(conn, ws.name, len(line))
            if verdict.refusal is not None:
                answer = {"ok": False, "error": verdict.refusal}
            elif not isinstance(request, dict):
                answer = {"ok": False, "error": "The record is not one line of JSON."}
            elif action not in RECORDER_ACTIONS or not isinstance(details, dict):
                answer = {
                    "ok": False,
                    "error": "The recorder may write only its own kinds of record.",
                }
            elif action != "workspace.contents_read":
                try:
                    record(
                        conn,
                        ws.username,
                        action,
                        f"workspace:{ws.name}",
                        {**details, "source": "recorder"},
                        project=ws.project,
                    )
                    stored = True
                except AuditError as exc:  # refused before the insert: the count still holds
                    answer = {"ok": False, "error": exc.message}
    except Exception as exc:
        if verdict is None:
            log.exception("the quota of %s could not be checked", ws.name)
            return {"ok": False, "error": REFUSED_UNCHECKED}
        log.exception("airlock could not store a record of %s's recorder", ws.name)
        return {"ok": False, "error": f"The record could not be stored ({type(exc).__name__})."}
    if verdict.alarm is not None:
        try:
            _alarm(ws, "workspace.quota_alarm", verdict.alarm)
        except Exception:
            log.exception("airlock could not record a quota alarm for %s", ws.name)
    if stored or not answer["ok"]:
        return answer
    assert isinstance(details, dict) and isinstance(action, str)
    # A read: the read budget (spe.workspaces.quota) first; a refused read is not shown, and not
    # stored.
    from spe.workspaces.quota import charge_read

    details = {**details, "source": "recorder"}
    refused = charge_read(ws.name, ws.project, ws.username, details)
    if refused is not None:
        return refused
    try:
        with get_engine().begin() as conn:
            record(conn, ws.username, action, f"workspace:{ws.name}", details, project=ws.project)
    except Exception as exc:
        log.exception("airlock could not store a record of %s's recorder", ws.name)
        return {"ok": False, "error": f"The record could not be stored ({type(exc).__name__})."}
    return {"ok": True}


# --- the server ---------------------------------------------------------------------------------


async def serve_lines(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    answer: Callable[[bytes], dict[str, Any]],
) -> None:
    """One connection of either transport: a JSON line in, ``answer`` (run in a thread), a JSON
    line out, until the caller hangs up; an over-long line ends the connection with a sentence."""
    try:
        while True:
            try:
                line = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError):
                refusal = {"ok": False, "error": f"A request may be at most {MAX_LINE} bytes."}
                writer.write(json.dumps(refusal).encode() + b"\n")
                await writer.drain()
                break
            if not line:
                break
            result = await asyncio.to_thread(answer, line)
            writer.write(json.dumps(result, default=str).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class Airlock:
    """Serves one socket per running workspace and follows the workspaces table."""

    def __init__(self, quota: AirlockQuota | None = None) -> None:
        self.servers: dict[str, tuple[RunningWorkspace, asyncio.AbstractServer]] = {}
        self.record_servers: dict[str, asyncio.AbstractServer] = {}
        self.quota = quota or AirlockQuota()
        self.record_quota = AirlockQuota(scope="recorder")  # the browser's, apart from kernels'

    async def sync(self) -> None:
        from spe.db import readonly
        from spe.workspaces.registry import running_workspaces

        def running() -> list[RunningWorkspace]:
            with readonly() as session:
                return running_workspaces(session)

        wanted = {ws.name: ws for ws in await asyncio.to_thread(running)}
        for name in sorted(set(self.servers) - set(wanted)):
            await self.close(name)
        for name, ws in sorted(wanted.items()):
            if name not in self.servers:
                await self.open(ws)

    async def open(self, ws: RunningWorkspace) -> None:
        paths = host_paths(ws.project, ws.username)
        paths.airlock.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(paths.airlock, 0o755)  # noqa: S103 - the sandbox's user must traverse it
        sock = paths.airlock_socket
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        server = await asyncio.start_unix_server(
            partial(self._serve, ws), path=str(sock), limit=MAX_LINE
        )
        # The workspace's own user must connect; on the host the state folder keeps others out,
        # and no other sandbox has this folder mounted.
        os.chmod(sock, 0o666)  # noqa: S103
        self.servers[ws.name] = (ws, server)
        # The recorder's socket: root-only folder, mounted nowhere.
        record = paths.record_socket
        record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(record.parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
        self.record_servers[ws.name] = await asyncio.start_unix_server(
            partial(self._serve_record, ws), path=str(record), limit=MAX_RECORD_LINE
        )
        os.chmod(record, 0o600)
        log.info("airlock open for %s at %s", ws.name, sock)

    async def close(self, name: str) -> None:
        ws, server = self.servers.pop(name)
        server.close()
        await server.wait_closed()
        record = self.record_servers.pop(name, None)
        if record is not None:
            record.close()
            await record.wait_closed()
        paths = host_paths(ws.project, ws.username)
        for sock in (paths.airlock_socket, paths.record_socket):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        log.info("airlock closed for %s", name)

    async def _serve(
        self, ws: RunningWorkspace, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        def answer(line: bytes) -> dict[str, Any]:
            if ws.name not in self.servers:  # stopped meanwhile
                return {"ok": False, "error": "This workspace is no longer running."}
            return handle_request(ws, line, self.quota)

        await serve_lines(reader, writer, answer)

    async def _serve_record(
        self, ws: RunningWorkspace, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        def answer(line: bytes) -> dict[str, Any]:
            if ws.name not in self.servers:
                return {"ok": False, "error": "This workspace is no longer running."}
            return handle_record(ws, line, self.record_quota)

        await serve_lines(reader, writer, answer)

    async def run(self, stop: asyncio.Event) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # A DP query waits in its thread for the worker's answer: enough threads that waiting
        # queries never hold up the cells and loads of other workspaces.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(REQUEST_THREADS))
        try:
            while not stop.is_set():
                try:
                    await self.sync()
                except Exception:  # the database may be briefly away; try again
                    log.exception("airlock sync failed")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), SYNC_SECONDS)
        finally:
            for name in list(self.servers):
                await self.close(name)


def run_airlock() -> None:
    """`spe airlock`: serve until SIGINT/SIGTERM."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Airlock().run(stop)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s airlock %(message)s")
    asyncio.run(main())
