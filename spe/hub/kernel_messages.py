"""What a browser may send a Jupyter kernel, and which of it carries code, by message type.

Pure functions over the kernel websocket protocol as the notebook server speaks it to browsers
(JSON text frames, and the legacy binary frame for messages with buffers); the recorder calls
:func:`read_kernel_message` on every message and records or refuses what comes back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from dataclasses import dataclass, field
from typing import Any

# Every message type a browser sends to a kernel (jupyter_client's protocol 5.x, ipykernel's
# handlers), with the content fields each may carry. A type or field not listed is refused:
# what the recorder does not know, it cannot say is harmless.
#
# Code-carrying: the content reaches code that runs (the executor, the completer and inspector,
# which evaluate attribute access, the debugger, comm targets, input() in running code).
CODE_CARRYING: dict[str, frozenset[str] | None] = {
    # user_expressions are evaluated after the code, also when the code is empty.
    "execute_request": frozenset(
        {"code", "silent", "store_history", "user_expressions", "allow_stdin", "stop_on_error"}
    ),
    "inspect_request": frozenset({"code", "cursor_pos", "detail_level"}),
    "complete_request": frozenset({"code", "cursor_pos"}),
    "is_complete_request": frozenset({"code"}),
    "input_reply": frozenset({"value", "status"}),
    # Free-form by design (the debug adapter protocol, a comm target's own data): kept whole.
    "debug_request": None,
    "comm_open": None,
    "comm_msg": None,
    "comm_close": None,
}
NO_CODE: dict[str, frozenset[str]] = {
    "kernel_info_request": frozenset(),
    "interrupt_request": frozenset(),
    "shutdown_request": frozenset({"restart"}),
    "comm_info_request": frozenset({"target_name"}),
    "history_request": frozenset(
        {"output", "raw", "hist_access_type", "session", "start", "stop", "n", "pattern", "unique"}
    ),
}
CHANNELS = frozenset({"shell", "control", "stdin"})
MESSAGE_KEYS = frozenset({"header", "parent_header", "metadata", "content", "channel", "buffers"})


class UnreadableMessage(ValueError):
    """A frame the recorder cannot read as a kernel message; it is refused."""


@dataclass(frozen=True)
class KernelMessage:
    """One message from the browser to a kernel, as the recorder understood it."""

    channel: str
    msg_type: str
    msg_id: str
    content: dict[str, Any]
    carries_code: bool
    buffers: list[str] = field(default_factory=list)  # SHA-256 of each binary buffer

    def record(self) -> dict[str, Any]:
        """The audit details: the whole content, its hash, and the buffers' hashes."""
        canonical = json.dumps(self.content, sort_keys=True, ensure_ascii=False)
        details: dict[str, Any] = {
            "source": "recorder",
            "layer": "recorder",
            "channel": self.channel,
            "msg_type": self.msg_type,
            "msg_id": self.msg_id,
            "content": self.content,
            "sha256": hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest(),
        }
        if self.buffers:
            details["buffers"] = self.buffers
        return details


def _split_binary(frame: bytes) -> tuple[bytes, list[bytes]]:
    """The legacy binary frame: a big-endian count n, n offsets, then the JSON and buffers."""
    if len(frame) < 4:
        raise UnreadableMessage("a binary frame too short to hold its offsets")
    count = struct.unpack("!I", frame[:4])[0]
    if count < 1 or 4 * (count + 1) > len(frame):
        raise UnreadableMessage("a binary frame whose offsets do not fit it")
    offsets = [*struct.unpack("!" + "I" * count, frame[4 : 4 * (count + 1)]), len(frame)]
    if offsets[0] != 4 * (count + 1) or any(a > b for a, b in itertools.pairwise(offsets)):
        raise UnreadableMessage("a binary frame whose offsets are out of order")
    parts = [frame[a:b] for a, b in itertools.pairwise(offsets)]
    return parts[0], parts[1:]


def read_kernel_message(frame: bytes, text: bool) -> KernelMessage:
    """Read one websocket message from the browser; raise UnreadableMessage to refuse it."""
    buffers: list[bytes] = []
    body = frame
    if not text:
        body, buffers = _split_binary(frame)
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UnreadableMessage("a frame that is not a JSON kernel message") from None
    if not isinstance(msg, dict) or set(msg) - MESSAGE_KEYS:
        raise UnreadableMessage("a kernel message with fields the protocol does not have")
    header, content = msg.get("header"), msg.get("content", {})
    if not isinstance(header, dict) or not isinstance(content, dict):
        raise UnreadableMessage("a kernel message without a header and a content object")
    msg_type, msg_id = header.get("msg_type"), header.get("msg_id", "")
    channel = msg.get("channel", "shell")
    if not isinstance(msg_type, str) or not isinstance(msg_id, str) or channel not in CHANNELS:
        raise UnreadableMessage("a kernel message without a known channel and type")
    if msg_type in CODE_CARRYING:
        known = CODE_CARRYING[msg_type]
        carries_code = True
    elif msg_type in NO_CODE:
        known = NO_CODE[msg_type]
        carries_code = False
    else:
        raise UnreadableMessage(f"a kernel message of a type SPE does not know ({msg_type[:64]})")
    if known is not None and set(content) - known:
        extra = ", ".join(sorted(set(content) - known))[:200]
        raise UnreadableMessage(f"a {msg_type} with fields SPE does not know ({extra})")
    return KernelMessage(
        channel,
        msg_type,
        msg_id[:128],
        content,
        carries_code,
        [hashlib.sha256(b).hexdigest() for b in buffers],
    )
