"""The workspace side of the airlock: one function that sends a request and returns the answer.

Used by the cell-audit extension, by ``spe.analysis.load`` (to record what was read) and by
``spe.workspaces.client.export`` in notebooks. It runs in every kernel, so it stays small.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

TIMEOUT_SECONDS = 10.0


class AirlockUnavailable(RuntimeError):
    """The airlock did not answer (or answered no): whatever needed it must not go ahead."""


def socket_path() -> Path:
    from spe.config import get_settings

    return Path(get_settings().workspace_airlock_socket)


def _tcp_target() -> tuple[tuple[str, int], str] | None:
    """On Kubernetes: the airlock's (host, port) and this pod's token (read at every call: the
    spawner renews it); None on one machine, where the socket says who calls."""
    from spe.config import get_settings

    settings = get_settings()
    url = settings.workspace_airlock_url
    if not url:
        return None
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    if not port.isdigit():
        raise AirlockUnavailable(f"The airlock address {url!r} is not tcp://HOST:PORT.")
    try:
        token = Path(settings.workspace_airlock_token_file).read_text().strip()
    except OSError as exc:
        raise AirlockUnavailable(f"The workspace's airlock token cannot be read ({exc}).") from None
    return (host.strip("[]"), int(port)), token


def call(
    request: dict[str, Any], path: Path | None = None, timeout: float = TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Send one request; raise AirlockUnavailable unless the airlock answers ok."""
    tcp = _tcp_target()
    target = f"tcp://{tcp[0][0]}:{tcp[0][1]}" if tcp else str(path or socket_path())
    if tcp:
        request = {**request, "token": tcp[1]}
    data = json.dumps(request).encode() + b"\n"
    try:
        family = socket.AF_INET6 if tcp and ":" in tcp[0][0] else socket.AF_INET
        with socket.socket(family if tcp else socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(tcp[0] if tcp else target)
            conn.sendall(data)
            buffer = b""
            while not buffer.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buffer += chunk
    except OSError as exc:
        raise AirlockUnavailable(f"The airlock at {target} cannot be reached ({exc}).") from None
    try:
        answer = json.loads(buffer)
    except ValueError:
        raise AirlockUnavailable("The airlock gave no answer.") from None
    if not answer.get("ok"):
        raise AirlockUnavailable(str(answer.get("error") or "The airlock refused the request."))
    return dict(answer)


def export(outputs: dict[str, str], title: str = "") -> dict[str, Any]:
    """File an export request from a notebook: {file name in the outbox: justification}."""
    return call(
        {
            "op": "export",
            "title": title,
            "outputs": [{"name": n, "justification": j} for n, j in outputs.items()],
        }
    )


def my_exports() -> list[dict[str, Any]]:
    """This project's export requests of mine, with their status."""
    return list(call({"op": "exports"})["requests"])
