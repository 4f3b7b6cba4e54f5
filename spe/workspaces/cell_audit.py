"""Cell-level audit: every cell a workspace runs is recorded through the airlock before it runs.

Two layers, both fail closed (a cell that cannot be recorded does not run):
- ``AuditedConnection``, in the notebook server: records each execute request arriving from the
  browser before the kernel sees it. Code in the kernel cannot switch it off.
- the IPython extension (``load_ipython_extension``), in every kernel: records each cell the
  kernel runs, also those that did not come through the browser.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from spe.workspaces.client import AirlockUnavailable, call

REFUSED = (
    "SPE could not record this cell in the audit log, so it did not run ({reason}). Try again; "
    "if it keeps failing, save your work and ask the platform operator."
)


def _refusal_code(reason: str) -> str:
    return f"raise RuntimeError({REFUSED.format(reason=reason)!r})\n"


def record_cell(code: str, source: str, execution_count: int | None = None) -> str | None:
    """Record a cell; None when recorded, else the reason it could not be."""
    request: dict[str, Any] = {"op": "cell", "code": code, "source": source}
    if execution_count is not None:
        request["execution_count"] = execution_count
    try:
        call(request)
    except AirlockUnavailable as exc:
        return str(exc)
    return None


# --- the kernel side ------------------------------------------------------------------------------


class _AuditTransformer:
    """An IPython post-input transformer: sees the whole cell once, just before it runs."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def __call__(self, lines: list[str]) -> list[str]:
        code = "".join(lines)
        if not code.strip():
            return lines
        count = getattr(self.shell, "execution_count", None)
        reason = record_cell(code, "kernel", count if isinstance(count, int) else None)
        if reason is not None:
            return [_refusal_code(reason)]
        return lines


def load_ipython_extension(ipython: Any) -> None:
    if not any(isinstance(t, _AuditTransformer) for t in ipython.input_transformers_post):
        ipython.input_transformers_post.append(_AuditTransformer(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    # Unloading is refused: the server layer would still record, but the kernel layer stays.
    raise RuntimeError("The SPE cell audit cannot be unloaded.")


# --- the server side ------------------------------------------------------------------------------


@functools.cache
def _audited_connection_class() -> type:
    """Built lazily: jupyter_server exists only in the workspace environment."""
    from jupyter_server.services.kernels.connection.channels import (
        ZMQChannelsWebsocketConnection,
    )
    from traitlets import default

    class AuditedConnection(ZMQChannelsWebsocketConnection):
        """Records every execute request from the browser before it reaches the kernel."""

        @default("kernel_ws_protocol")
        def _legacy_protocol(self) -> str:
            # The JSON protocol lets the server read and, if need be, replace the code; the
            # binary v1 protocol would pass it through opaque.
            return ""

        def handle_incoming_message(self, incoming_msg: str) -> None:
            if self.subprotocol or not isinstance(incoming_msg, str):
                self.log.warning("SPE refuses a kernel message it cannot read (binary protocol)")
                return
            try:
                msg = json.loads(incoming_msg)
            except ValueError:
                return
            header = msg.get("header") or {}
            if (
                msg.get("channel", "shell") == "shell"
                and header.get("msg_type") == "execute_request"
            ):
                content = msg.setdefault("content", {})
                code = content.get("code", "")
                if isinstance(code, str) and code.strip():
                    reason = record_cell(code, "server")
                    if reason is not None:
                        content["code"] = _refusal_code(reason)
                        incoming_msg = json.dumps(msg)
            super().handle_incoming_message(incoming_msg)

    return AuditedConnection


def __getattr__(name: str) -> Any:
    # Named in the server config as spe.workspaces.cell_audit.<name>.
    if name == "AuditedConnection":
        return _audited_connection_class()
    raise AttributeError(name)
