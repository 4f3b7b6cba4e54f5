"""The recorder's reading of kernel messages, and its failing closed, from the browser's side.

The end-to-end routes (user_expressions, the control channel, the debugger, comms, contents)
run through a real hub and sandbox in tests/integration/test_workspace_story.py; here the
recorder runs in this process between a raw client and a plain unix-socket server standing in
for the notebook server, with its real sink pointed at an airlock record socket that is gone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest

from spe.hub.kernel_messages import UnreadableMessage, read_kernel_message
from spe.hub.recorder import (
    ReadBudget,
    Recorder,
    RecordingFailed,
    airlock_records,
    airlock_sink,
    looks_encoded,
)


def message(msg_type: str, content: dict[str, Any], channel: str = "shell") -> dict[str, Any]:
    return {
        "header": {"msg_id": "m1", "msg_type": msg_type, "session": "s", "username": "u"},
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }


def test_user_expressions_and_other_channels_are_read_as_code() -> None:
    content = {"code": "", "silent": True, "user_expressions": {"x": "open('/data/a').read()"}}
    msg = read_kernel_message(
        json.dumps(message("execute_request", content, "control")).encode(), True
    )
    assert msg.carries_code and msg.channel == "control"
    assert msg.record()["content"]["user_expressions"] == content["user_expressions"]
    evaluate = {"command": "evaluate", "arguments": {"expression": "secret"}, "type": "request"}
    msg = read_kernel_message(
        json.dumps(message("debug_request", evaluate, "control")).encode(), True
    )
    assert msg.carries_code and msg.record()["content"] == evaluate
    for msg_type in ("comm_open", "comm_msg", "inspect_request", "complete_request", "input_reply"):
        body = {"comm_id": "c", "data": {}} if msg_type.startswith("comm") else {"code": "x"}
        if msg_type == "input_reply":
            body = {"value": "typed"}
        assert read_kernel_message(json.dumps(message(msg_type, body)).encode(), True).carries_code
    kernel_info = read_kernel_message(json.dumps(message("kernel_info_request", {})).encode(), True)
    assert not kernel_info.carries_code


@pytest.mark.parametrize(
    "frame",
    [
        json.dumps(message("evil_request", {"code": "x"})),
        json.dumps(message("execute_request", {"code": "", "exec_also": "x"})),
        json.dumps(message("kernel_info_request", {"code": "x"})),
        json.dumps(message("execute_request", {"code": "x"}, "iopub")),
        json.dumps({**message("execute_request", {"code": "x"}), "extra": 1}),
        "not json",
        json.dumps([1, 2]),
    ],
    ids=[
        "unknown type",
        "unknown field",
        "field on a code-free type",
        "iopub",
        "extra",
        "text",
        "list",
    ],
)
def test_what_the_recorder_cannot_read_is_refused(frame: str) -> None:
    with pytest.raises(UnreadableMessage):
        read_kernel_message(frame.encode(), True)


def test_binary_frames_with_buffers_are_read_and_buffers_hashed() -> None:
    body = json.dumps(message("comm_msg", {"comm_id": "c", "data": {"x": 1}})).encode()
    buffers = [b"\x00\x01binary", b"more"]
    parts = [body, *buffers]
    offsets, at = [], 4 * (len(parts) + 1)
    for part in parts:
        offsets.append(at)
        at += len(part)
    frame = (
        struct.pack("!I", len(parts)) + struct.pack(f"!{len(parts)}I", *offsets) + b"".join(parts)
    )
    msg = read_kernel_message(frame, False)
    assert msg.msg_type == "comm_msg" and len(msg.buffers) == 2
    with pytest.raises(UnreadableMessage):
        read_kernel_message(struct.pack("!I", 9) + frame[4:], False)  # offsets past the end
    with pytest.raises(UnreadableMessage):
        read_kernel_message(b"\x00\x00", False)


# --- failing closed -------------------------------------------------------------------------------


def _ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return head + mask + masked


async def _scenario(sock_dir: Path, kept: bool) -> dict[str, Any]:
    received: list[bytes] = []

    async def notebook_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.append(head)
        if b"Upgrade: websocket" in head:
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")  # fmt: skip
            await writer.drain()
            received.append(await reader.read(1 << 16))  # anything past the handshake
        else:
            received.append(await reader.read(1 << 16))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    upstream = sock_dir / "server.sock"
    server = await asyncio.start_unix_server(notebook_server, path=str(upstream))
    gone = str(sock_dir / "gone" / "record.sock")
    recorder = Recorder(str(upstream), airlock_records(gone) if kept else airlock_sink(gone))
    front = sock_dir / "recorder.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(front))
    proxy = await asyncio.start_unix_server(recorder.handle, sock=listener)
    out: dict[str, Any] = {}
    async with server, proxy:
        # A cell over the kernel websocket.
        reader, writer = await asyncio.open_unix_connection(str(front))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /user/alice/study/api/kernels/k1/channels HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        out["handshake"] = await reader.readuntil(b"\r\n\r\n")
        cell = json.dumps(message("execute_request", {"code": "print('unrecorded')"}))
        writer.write(_ws_frame(cell.encode()))
        await writer.drain()
        out["after cell"] = await asyncio.wait_for(reader.read(100), 20)  # b"": closed
        writer.close()
        # An upload through the contents API.
        reader, writer = await asyncio.open_unix_connection(str(front))
        body = json.dumps({"type": "file", "format": "text", "content": "x = 1\n"}).encode()
        writer.write(
            b"PUT /user/alice/study/api/contents/a.py HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        out["upload"] = await asyncio.wait_for(reader.read(1 << 16), 20)
        writer.close()
        await asyncio.sleep(0.2)
    out["received"] = received
    return out


@pytest.mark.parametrize("kept", [True, False], ids=["recorder's-sink", "one-shot-sink"])
def test_when_the_audit_log_cannot_be_written_nothing_reaches_the_notebook_server(
    kept: bool,
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="spe-rec-"))
    try:
        out = asyncio.run(_scenario(folder, kept))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    handshake_upstream = out["received"][0]
    # Compression and the binary subprotocol are negotiated away before the server sees them.
    assert b"permessage-deflate" not in handshake_upstream
    assert b" 101 " in out["handshake"]
    assert out["after cell"] == b""  # the recorder closed the websocket ...
    assert all(b"unrecorded" not in chunk for chunk in out["received"])  # ... and sent nothing
    assert out["upload"].startswith(b"HTTP/1.1 503") and b"could not record" in out["upload"]
    assert len(out["received"]) == 2  # the upload never reached the server


async def _kept_connection_story(folder: Path) -> dict[str, Any]:
    """An airlock stand-in that closes each connection after two answers, then one that never
    answers, then one that is gone."""
    sock = folder / "record.sock"
    stored: list[dict[str, Any]] = []
    connections = 0
    silent = False
    open_writers: list[asyncio.StreamWriter] = []

    async def airlock(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        open_writers.append(writer)
        for _ in range(2):
            line = await reader.readline()
            if not line:
                break
            if silent:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(5)
                break
            stored.append(json.loads(line))
            writer.write(json.dumps({"ok": True, "n": len(stored)}).encode() + b"\n")
            await writer.drain()
        writer.close()

    out: dict[str, Any] = {}
    server = await asyncio.start_unix_server(airlock, path=str(sock))
    records = airlock_records(str(sock), timeout=0.5)
    for n in range(3):
        await records("workspace.cell", {"code": f"x = {n}"})
    out["stored"] = [r["details"]["code"] for r in stored]
    out["connections"] = connections
    silent = True
    with pytest.raises(RecordingFailed, match="not answering"):
        await records("workspace.cell", {"code": "late"})
    silent = False
    await records("workspace.cell", {"code": "after the late one"})
    out["after late"] = stored[-1]["details"]["code"]
    server.close()  # the airlock process is gone: its connections with it
    for writer in open_writers:
        writer.close()
    await server.wait_closed()
    sock.unlink()
    out["refused when gone"] = False
    try:
        await records("workspace.cell", {"code": "nowhere"})
    except RecordingFailed:
        out["refused when gone"] = True
    return out


def test_records_go_on_one_kept_connection_which_is_replaced_when_the_airlock_drops_it() -> None:
    """The recorder keeps its connection to the airlock open (a new one per record cost more
    than storing it); a connection the airlock closed is replaced and the record sent again, an
    airlock that does not answer in time or is gone is a refusal, never a pass."""
    folder = Path(tempfile.mkdtemp(prefix="spe-rec-"))
    try:
        out = asyncio.run(_kept_connection_story(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert out["stored"] == ["x = 0", "x = 1", "x = 2"]
    assert out["connections"] == 2  # two records on the first, the third on a new one
    assert out["after late"] == "after the late one"  # no stale answer read as its own
    assert out["refused when gone"]


# --- the read budget ------------------------------------------------------------------------------


def test_encoded_text_is_told_from_tables_and_prose() -> None:
    raw = os.urandom(4096)
    assert looks_encoded(base64.b64encode(raw).decode())
    assert looks_encoded(raw.hex())
    assert looks_encoded("\n".join(base64.encodebytes(raw).decode().split()))  # wrapped lines
    assert not looks_encoded("year,municipality,count\n" + "2020,0301,12\n" * 500)
    assert not looks_encoded("A screen is still a channel, so reads are counted. " * 100)


def test_the_recorder_refuses_encoded_reads_at_once_and_counts_other_files_for_the_day() -> None:
    """The recorder's own part of the read budget; the day's count is the control plane's
    (tests/integration/test_kube_airlock.py and test_quota_db below)."""
    budget = ReadBudget(alarm_bytes=100)
    refusal, alarm = budget.check("out.txt", base64.b64encode(os.urandom(300)).decode())
    assert refusal is not None and alarm is not None and alarm["reason"] == "encoded data"
    assert budget.check("small.txt", "x" * 60) == (None, None)  # encoded-looking but small
    assert budget.check("notes.txt", "a, b; " * 100) == (None, None)
    assert budget.counted("notes.txt", "a, b; " * 100) == 600
    assert budget.counted("analysis.ipynb", "{" + "x" * 5000 + "}") == 0  # notebooks are free
