"""The recorder: a process outside the sandbox, between the hub's proxy and a workspace's notebook
server, that records in the audit log every code-carrying kernel message and every contents
write and read before it passes, and refuses what it cannot read or cannot record.

One recorder per workspace, started by the spawner on a listening socket it hands over; the
proxy reaches the workspace only through it. Its records go to the control plane's airlock
service on a socket of their own that no sandbox mounts (so it holds no database credentials
and stays small). On Kubernetes it is a sidecar container of the workspace pod with a uid of
its own ("sidecar mode"): it listens on the pod's port, forwards to the notebook server on the
pod's loopback, and sends its records to the TCP airlock with a token of the recorder's role,
mounted in its container only. HTTP/1.1, one request per connection upstream; websockets are
parsed frame by frame from the browser and copied as they are from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import re
import resource
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from spe.hub.kernel_messages import KernelMessage, UnreadableMessage, read_kernel_message

log = logging.getLogger("spe.recorder")

MAX_HEAD = 64 << 10
MAX_BODY = 8 << 20  # the front door caps uploads at 2 MiB; contents models are JSON around them
MAX_MESSAGE = 4 << 20  # one kernel message from the browser (a cell, a comm message with data)
CODE_SUFFIXES = (".py", ".ipynb", ".r", ".R")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    # Negotiated away: no compressed frames (they would hide the code), and the server's legacy
    # JSON protocol rather than its v1 binary one (both are read; one is enough on the wire).
    "sec-websocket-extensions",
    "sec-websocket-protocol",
}
_CHANNELS = re.compile(r"/api/kernels/[^/]+/channels/?$")
_CONTENTS = re.compile(r"/api/contents(/.*)?$")

NOT_RECORDED = (
    "SPE could not record this in the audit log, so it did not reach the workspace; try again, "
    "and ask the platform operator if it keeps failing."
)

Sink = Callable[[str, dict[str, Any]], None]


class RecordingFailed(Exception):
    """The audit log could not be written: the request or message must not pass."""


class RecordRefused(RecordingFailed):
    """The control plane stored the record and refused what it records (a read past the
    workspace's budget); the message is the sentence for the user."""


def _answer_of(result: Any) -> None:
    if isinstance(result, dict) and result.get("ok"):
        return
    if isinstance(result, dict) and isinstance(result.get("refusal"), str):
        raise RecordRefused(result["refusal"])
    error = result.get("error") if isinstance(result, dict) else None
    raise RecordingFailed(str(error or "the airlock refused the record"))


def airlock_sink(record_socket: str, timeout: float = 10.0) -> Sink:
    """Hands each record to the airlock service on the workspace's record socket, on a
    connection of its own, and waits for it to be stored; anything else is RecordingFailed.
    (For callers without an event loop; the recorder uses :class:`AirlockRecords`.)"""

    def write(action: str, details: dict[str, Any]) -> None:
        line = json.dumps({"action": action, "details": details}, ensure_ascii=False)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout)
                conn.connect(record_socket)
                conn.sendall(line.encode("utf-8", "surrogatepass") + b"\n")
                answer = conn.makefile("rb").readline()
            result = json.loads(answer)
        except (OSError, ValueError) as exc:
            raise RecordingFailed(f"the airlock is not answering ({exc})") from None
        _answer_of(result)

    return write


class AirlockRecords:
    """The recorder's way to the airlock: one JSON line out, one back, on a connection kept open
    between records (opening one per record, and a thread to wait on it, cost more than storing
    the record). One record at a time: records from the workspace's websockets queue here.

    When a connection kept from earlier fails (the airlock restarted, or closed it), the record
    is sent once more on a new one: it may be stored twice, never passed unstored. Any other
    failure, and no answer within ``timeout``, is RecordingFailed."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
        token_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._connect = connect
        self._token_file = token_file
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __call__(self, action: str, details: dict[str, Any]) -> None:
        fields: dict[str, Any] = {"action": action, "details": details}
        try:
            if self._token_file is not None:
                # Read each time: the spawner renews it.
                with open(self._token_file, encoding="utf-8") as handle:
                    fields = {"token": handle.read().strip(), **fields}
            line = json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass")
        except (OSError, ValueError) as exc:
            raise RecordingFailed(f"the record could not be written ({exc})") from None
        async with self._lock:
            try:
                result = await asyncio.wait_for(self._ask(line + b"\n"), self._timeout)
            except (OSError, ValueError, EOFError, asyncio.LimitOverrunError) as exc:
                # TimeoutError is an OSError: a late answer must not be read as the next one's.
                self._drop()
                raise RecordingFailed(f"the airlock is not answering ({exc!r})") from None
            except asyncio.CancelledError:
                self._drop()  # an answer may still come: never read it as the next record's
                raise
        _answer_of(result)

    async def _ask(self, line: bytes) -> Any:
        if self._stream is not None:
            try:
                return await self._exchange(line)
            except (OSError, EOFError):  # EOFError: closed before its answer
                self._drop()
        return await self._exchange(line)

    async def _exchange(self, line: bytes) -> Any:
        if self._stream is None:
            self._stream = await self._connect()
        reader, writer = self._stream
        writer.write(line)
        await writer.drain()
        answer = await reader.readuntil(b"\n")
        return json.loads(answer)

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream[1].close()


def airlock_records(record_socket: str, timeout: float = 10.0) -> AirlockRecords:
    """Records to the airlock service on the workspace's record socket (one machine)."""

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(record_socket, limit=MAX_HEAD)

    return AirlockRecords(connect, timeout=timeout)


def tcp_airlock_records(airlock_url: str, token_file: str, timeout: float = 10.0) -> AirlockRecords:
    """Sidecar mode: records to the TCP airlock with the recorder's pod-bound token."""
    host, port = _host_port(airlock_url)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    return AirlockRecords(connect, token_file, timeout)


def _host_port(url: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``host:port``) as a pair."""
    rest = url.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{url!r} is not tcp://host:port")
    return host.strip("[]"), int(port)


async def _open_upstream(upstream: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The notebook server: a unix socket path, or ``tcp://127.0.0.1:port`` in sidecar mode."""
    if upstream.startswith("tcp://"):
        host, port = _host_port(upstream)
        return await asyncio.open_connection(host, port, limit=MAX_HEAD)
    return await asyncio.open_unix_connection(upstream, limit=MAX_HEAD)


def harden_process() -> None:
    """No core file, no ptrace, no /proc/<pid>/mem of the recorder, whoever asks."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0


# --- HTTP -----------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return ""

    @property
    def path(self) -> str:
        return unquote(urlsplit(self.target).path)

    @property
    def is_upgrade(self) -> bool:
        return self.header("upgrade").lower() == "websocket"

    def upstream_bytes(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in HOP_BY_HOP]
        lines = [ln for ln in lines if not ln.lower().startswith("content-length:")]
        if self.is_upgrade:
            lines += ["Connection: Upgrade", "Upgrade: websocket"]
        else:
            lines.append("Connection: close")
            if self.body or self.method in ("POST", "PUT", "PATCH"):
                lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class BadRequest(Exception):
    pass


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("a malformed header")
        headers.append((name, value.strip()))
    return lines[0], headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    values = {k.lower(): v for k, v in headers}
    if "chunked" in values.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if len(body) + size > MAX_BODY:
                raise BadRequest("a body larger than the recorder accepts")
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from browsers
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(values.get("content-length", "0") or 0)
    if length < 0 or length > MAX_BODY:
        raise BadRequest("a body larger than the recorder accepts")
    return await reader.readexactly(length) if length else b""


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("a request head larger than 64 KiB") from None
    start, headers = _parse_head(head[:-4])
    parts = start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("not an HTTP/1.x request")
    request = Request(parts[0], parts[1], parts[2], headers)
    request.body = await _read_body(reader, headers)
    return request


def _answer(status: int, reason: str, sentence: str) -> bytes:
    body = json.dumps({"message": sentence, "reason": None}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[bytes, bytes]:
    """The upstream response's head and whole body (the server closes after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    start, headers = _parse_head(head[:-4])
    values = {k.lower(): v for k, v in headers}
    status = start.split(" ")[1] if start.count(" ") >= 1 else ""
    if method == "HEAD" or status in ("204", "304") or status.startswith("1"):
        body = b""
    elif "content-length" in values or "chunked" in values.get("transfer-encoding", "").lower():
        body = await _read_body(reader, headers)
    else:
        body = await reader.read(MAX_BODY + 1)
    # Re-framed with a length: the client need not know how the server delimited it.
    lines = [
        ln
        for ln in head[:-4].decode("latin-1").split("\r\n")
        if ln.split(":", 1)[0].strip().lower()
        not in ("content-length", "transfer-encoding", "connection", "keep-alive")
    ]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body


# --- contents -------------------------------------------------------------------------------------


def contents_write(request: Request, code_text_bytes: int) -> dict[str, Any]:
    """Audit details of a write (upload, save, create, rename, delete) through the contents API."""
    match = _CONTENTS.search(request.path)
    path = (match.group(1) or "/").lstrip("/") if match else request.path
    details: dict[str, Any] = {
        "source": "recorder",
        "method": request.method,
        "path": path[:1024],
        "bytes": len(request.body),
        "sha256": hashlib.sha256(request.body).hexdigest(),
    }
    try:
        model = json.loads(request.body) if request.body else {}
    except ValueError:
        model = None
    if isinstance(model, dict):
        content = model.get("content")
        if content is not None:
            text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
            raw = text.encode("utf-8", "surrogatepass")
            details["content_sha256"] = hashlib.sha256(raw).hexdigest()
            details["content_bytes"] = len(raw)
            details["format"] = model.get("format")
            if path.endswith(CODE_SUFFIXES) and len(raw) <= code_text_bytes:
                details["text"] = text  # code files are kept, outside the sandbox
        for key in ("copy_from", "path", "type", "chunk"):
            if key in model and isinstance(model[key], str | int):
                details[f"model_{key}"] = model[key]
    return details


def contents_read(request: Request, status: int, body: bytes) -> dict[str, Any]:
    match = _CONTENTS.search(request.path)
    path = (match.group(1) or "/").lstrip("/") if match else request.path
    details: dict[str, Any] = {
        "source": "recorder",
        "path": path[:1024],
        "status": status,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    with contextlib.suppress(ValueError, AttributeError):
        model = json.loads(body)
        content = model.get("content")
        if isinstance(content, str) and model.get("type") == "file":
            raw = content.encode("utf-8", "surrogatepass")
            details["content_sha256"] = hashlib.sha256(raw).hexdigest()
            details["content_bytes"] = len(raw)
    return details


# --- the read budget ------------------------------------------------------------------------------

_ENCODED_ALPHABET = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_"
)
READ_REFUSED_ENCODED = (
    "{path} looks like encoded data (base64 or hex), which SPE does not show in the browser; "
    "this attempt is reported to the auditors."
)


def looks_encoded(text: str) -> bool:
    """Base64 or hex text: nearly every character from their alphabets, no separators."""
    sample = "".join(text[:262144].split()).encode("utf-8", "replace")
    if not sample:
        return False
    inside = sum(1 for b in sample if b in _ENCODED_ALPHABET)
    return inside / len(sample) >= 0.98


@dataclass
class ReadBudget:
    """What the recorder decides itself about showing a file in the browser: large encoded data
    is refused at once, with an alarm. The daily budget is the control plane's (kept in the
    database, per workspace, stricter where a granted dataset's policy says so): the recorder
    sends how many bytes a read counts with its record, and a refusal comes back."""

    alarm_bytes: int

    def counted(self, path: str, text: str) -> int:
        """Bytes of ``text`` the day's budget counts: notebooks the researcher writes are free."""
        if path.endswith(".ipynb"):
            return 0
        return len(text.encode("utf-8", "surrogatepass"))

    def check(self, path: str, text: str) -> tuple[str | None, dict[str, Any] | None]:
        """(refusal sentence or None, alarm details or None) for showing ``text`` of ``path``."""
        size = self.counted(path, text)
        if size >= self.alarm_bytes and looks_encoded(text):
            alarm = {"reason": "encoded data", "path": path[:1024], "bytes": size}
            return READ_REFUSED_ENCODED.format(path=path[:200]), alarm
        return None, None


# --- websocket frames -----------------------------------------------------------------------------


class BadFrame(Exception):
    pass


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes, bytes]:
    """One frame from the browser: (fin, opcode, unmasked payload, the frame's raw bytes)."""
    first = await reader.readexactly(2)
    fin, rsv, opcode = first[0] & 0x80, first[0] & 0x70, first[0] & 0x0F
    masked, length = first[1] & 0x80, first[1] & 0x7F
    if rsv:
        raise BadFrame("a compressed or extended frame")
    if not masked:
        raise BadFrame("an unmasked frame from the browser")
    extra = b""
    if length == 126:
        extra = await reader.readexactly(2)
        length = struct.unpack("!H", extra)[0]
    elif length == 127:
        extra = await reader.readexactly(8)
        length = struct.unpack("!Q", extra)[0]
    if length > MAX_MESSAGE:
        raise BadFrame("a frame larger than the recorder accepts")
    mask = await reader.readexactly(4)
    payload = await reader.readexactly(length)
    return bool(fin), opcode, _unmask(payload, mask), first + extra + mask + payload


class Recorder:
    """Serves one workspace: every connection from the proxy goes to ``upstream`` through here."""

    def __init__(
        self,
        upstream: str,
        sink: Sink | AirlockRecords,
        code_text_bytes: int = 1 << 20,
        read_budget: ReadBudget | None = None,
    ) -> None:
        self.upstream = upstream
        self.sink = sink
        self.code_text_bytes = code_text_bytes
        self.read_budget = read_budget or ReadBudget(64 << 10)

    async def _record(self, action: str, details: dict[str, Any]) -> None:
        if isinstance(self.sink, AirlockRecords):
            await self.sink(action, details)  # on the event loop: no thread to wake
        else:
            await asyncio.to_thread(self.sink, action, details)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("recorder: a connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # the proxy may keep its connection alive; upstream gets one per request
            try:
                request = await read_request(reader)
            except (BadRequest, ValueError) as exc:
                writer.write(_answer(400, "Bad Request", f"The recorder refused this ({exc})."))
                await writer.drain()
                return
            if request is None:
                return
            if request.is_upgrade:
                await self._websocket(request, reader, writer)
                return
            if not await self._http(request, writer):
                return

    async def _http(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        is_contents = bool(_CONTENTS.search(request.path))
        try:
            if is_contents and request.method in ("PUT", "POST", "PATCH", "DELETE"):
                await self._record(
                    "workspace.contents_write", contents_write(request, self.code_text_bytes)
                )
        except RecordingFailed:
            writer.write(_answer(503, "Service Unavailable", NOT_RECORDED))
            await writer.drain()
            return False
        up_reader, up_writer = await _open_upstream(self.upstream)
        try:
            up_writer.write(request.upstream_bytes())
            await up_writer.drain()
            head, body = await _read_response(up_reader, request.method)
        finally:
            up_writer.close()
        status = int(head.split(b" ", 2)[1])
        wants_content = parse_qs(urlsplit(request.target).query).get("content", ["1"])[0] != "0"
        if is_contents and request.method == "GET" and wants_content:
            details = contents_read(request, status, body)
            try:
                refusal = await self._budget(details, status, body)
                if refusal is not None:
                    writer.write(_answer(403, "Forbidden", refusal))
                    await writer.drain()
                    return False
                # The control plane counts the read against the day's budget and may refuse it.
                await self._record("workspace.contents_read", details)
            except RecordRefused as exc:
                writer.write(_answer(403, "Forbidden", str(exc)))
                await writer.drain()
                return False
            except RecordingFailed:
                writer.write(_answer(503, "Service Unavailable", NOT_RECORDED))
                await writer.drain()
                return False
        writer.write(head + body)
        await writer.drain()
        return False  # the answer said Connection: close

    async def _websocket(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        kernel = bool(_CHANNELS.search(request.path))
        up_reader, up_writer = await _open_upstream(self.upstream)
        try:
            up_writer.write(request.upstream_bytes())
            await up_writer.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            await writer.drain()
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                writer.write(await up_reader.read(MAX_BODY))
                await writer.drain()
                return
            down = asyncio.create_task(_copy(up_reader, writer))
            try:
                if kernel:
                    await self._browser_to_kernel(reader, up_writer)
                else:
                    await _copy(reader, up_writer)
            finally:
                down.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await down
        finally:
            up_writer.close()

    async def _budget(self, details: dict[str, Any], status: int, body: bytes) -> str | None:
        """The refusal for showing this file, if any, with its alarm recorded first; sets the
        bytes the day's budget counts in ``details``."""
        path = details["path"]
        if status != 200:
            return None
        try:
            model = json.loads(body)
        except ValueError:
            return None
        if not isinstance(model, dict) or model.get("type") != "file":
            return None
        content = model.get("content")
        if not isinstance(content, str):
            return None
        details["counted_bytes"] = self.read_budget.counted(path, content)
        refusal, alarm = self.read_budget.check(path, content)
        if alarm is not None:
            alarm["sha256"] = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()
            await self._record("workspace.read_alarm", alarm)
        return refusal

    async def _browser_to_kernel(
        self, reader: asyncio.StreamReader, up: asyncio.StreamWriter
    ) -> None:
        pending: list[bytes] = []
        data = bytearray()
        text = True
        while True:
            try:
                fin, opcode, payload, raw = await read_frame(reader)
            except BadFrame as exc:
                await self._refuse(str(exc), None)
                return  # fail closed: the connection ends
            if opcode >= 0x8:  # close, ping, pong: no code, passed at once
                up.write(raw)
                await up.drain()
                if opcode == 0x8:
                    return
                continue
            if opcode in (0x1, 0x2):
                if pending:
                    await self._refuse("a new message inside a fragmented one", None)
                    return
                text = opcode == 0x1
            elif not pending:
                await self._refuse("a continuation frame without a message", None)
                return
            pending.append(raw)
            data += payload
            if len(data) > MAX_MESSAGE:
                await self._refuse("a message larger than the recorder accepts", None)
                return
            if not fin:
                continue
            message, frames = bytes(data), pending
            pending, data = [], bytearray()
            try:
                msg = read_kernel_message(message, text)
            except UnreadableMessage as exc:
                # Not passed; the connection stays (the browser may send other things).
                if not await self._refuse(str(exc), message):
                    return
                continue
            try:
                await self._record_message(msg)
            except RecordingFailed:
                return  # fail closed
            up.write(b"".join(frames))
            await up.drain()

    async def _record_message(self, msg: KernelMessage) -> None:
        if not msg.carries_code:
            return
        details = msg.record()
        if msg.msg_type == "execute_request":
            code = msg.content.get("code", "")
            code = code if isinstance(code, str) else json.dumps(code)
            details["code"] = code
            details["length"] = len(code)
            details["code_sha256"] = hashlib.sha256(
                code.encode("utf-8", "surrogatepass")
            ).hexdigest()
            await self._record("workspace.cell", details)
        else:
            await self._record("workspace.kernel_message", details)

    async def _refuse(self, reason: str, message: bytes | None) -> bool:
        """Record a refused frame; False when even that cannot be recorded."""
        details: dict[str, Any] = {"source": "recorder", "reason": reason[:300]}
        if message is not None:
            details["bytes"] = len(message)
            details["sha256"] = hashlib.sha256(message).hexdigest()
            details["start"] = message[:2000].decode("utf-8", "replace")
        log.warning("recorder refused %s", reason)
        try:
            await self._record("workspace.recorder_refused", details)
        except RecordingFailed:
            return False
        return True


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listener: socket.socket, recorder: Recorder, stop: asyncio.Event) -> None:
    listener.setblocking(False)
    if listener.family == socket.AF_UNIX:
        server = await asyncio.start_unix_server(recorder.handle, sock=listener, limit=MAX_HEAD)
    else:
        server = await asyncio.start_server(recorder.handle, sock=listener, limit=MAX_HEAD)
    async with server:
        await stop.wait()


def tcp_listener(address: str) -> socket.socket:
    """Sidecar mode: the pod's port the hub's proxy reaches (``host:port``)."""
    host, port = _host_port(address)
    listener = socket.create_server((host, port), reuse_port=False)
    return listener


def main(argv: list[str] | None = None) -> None:
    """`python -m spe.hub.recorder`: started by the spawner with the listening socket's fd."""
    import signal

    parser = argparse.ArgumentParser(description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="the listening unix socket (one machine)")
    where.add_argument("--listen", help="sidecar mode: host:port to listen on")
    parser.add_argument(
        "--upstream",
        required=True,
        help="the notebook server: its unix socket, or tcp://127.0.0.1:PORT in sidecar mode",
    )
    sink = parser.add_mutually_exclusive_group(required=True)
    sink.add_argument("--record-socket", help="the airlock's record socket (one machine)")
    sink.add_argument("--airlock-url", help="sidecar mode: the TCP airlock, tcp://host:port")
    parser.add_argument("--token-file", help="sidecar mode: the recorder's pod-bound token")
    parser.add_argument("--code-text-bytes", type=int, default=1 << 20)
    # Kept for spawners that still pass it: the daily budget is the control plane's now.
    parser.add_argument("--read-bytes-per-day", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--read-alarm-bytes", type=int, default=64 << 10)
    parser.add_argument("--workspace", default="", help="for the log only")
    args = parser.parse_args(argv)
    harden_process()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s recorder {args.workspace} %(message)s"
    )
    if args.airlock_url and not args.token_file:
        parser.error("--airlock-url needs --token-file")
    records = (
        airlock_records(args.record_socket)
        if args.record_socket
        else tcp_airlock_records(args.airlock_url, args.token_file)
    )
    listener = socket.socket(fileno=args.fd) if args.fd is not None else tcp_listener(args.listen)
    recorder = Recorder(
        args.upstream,
        records,
        args.code_text_bytes,
        ReadBudget(args.read_alarm_bytes),
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(listener, recorder, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
