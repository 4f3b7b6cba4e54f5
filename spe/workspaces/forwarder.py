"""A workspace's road to the hub (it has no network): a unix socket in its run folder, served
by the hub process, that forwards the few hub API calls a notebook server needs (token check,
OAuth, activity) and refuses every other.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web

log = logging.getLogger("spe.hub_gateway")

MAX_BODY = 64 << 10  # an OAuth code exchange or an activity report is a few hundred bytes
_FORWARDED_REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept", "User-Agent")
_FORWARDED_ANSWER_HEADERS = ("Content-Type", "X-JupyterHub-Version")


def allowed_calls(username: str, hub_prefix: str = "/hub/api") -> frozenset[tuple[str, str]]:
    """(method, path) pairs a workspace of ``username`` may send to the hub's API."""
    return frozenset(
        {
            ("GET", hub_prefix),  # the version check at start
            ("GET", hub_prefix + "/"),
            ("GET", hub_prefix + "/user"),  # who a token or cookie belongs to
            ("POST", hub_prefix + "/oauth2/token"),  # finishing the browser's OAuth login
            ("POST", f"{hub_prefix}/users/{username}/activity"),  # keeps the culler informed
        }
    )


class HubGateway:
    """One workspace's socket to the hub API (started by its spawner, in the hub's loop)."""

    def __init__(
        self,
        socket_path: Path,
        username: str,
        hub_origin: str,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.owner = owner
        self.hub_origin = hub_origin.rstrip("/")
        self.allowed = allowed_calls(username)
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    @property
    def running(self) -> bool:
        return self._runner is not None and self.socket_path.exists()

    async def start(self) -> None:
        if self.running:
            return
        await self.stop()
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(self.socket_path))
        await site.start()
        # Only the workspace's own user (the sandbox runs as it) may connect; the hub is root.
        self.socket_path.chmod(0o600)
        if self.owner is not None:
            os.chown(self.socket_path, *self.owner)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.socket_path.unlink(missing_ok=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        # The raw path, compared exactly: an encoded or dotted variant of an allowed path is
        # simply not on the list. The query string is dropped (no allowed call needs one).
        path = request.raw_path.split("?", 1)[0]
        if (request.method, path) not in self.allowed:
            log.warning("hub gateway %s refused %s %s", self.socket_path, request.method, path)
            return web.Response(status=403, text="Not available from a workspace.\n")
        body = await request.read()
        headers = {
            k: request.headers[k] for k in _FORWARDED_REQUEST_HEADERS if k in request.headers
        }
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=30))
        async with self._session.request(
            request.method,
            self.hub_origin + path,
            data=body or None,
            headers=headers,
            allow_redirects=False,
        ) as answer:
            data = await answer.read()
            out = {k: answer.headers[k] for k in _FORWARDED_ANSWER_HEADERS if k in answer.headers}
            return web.Response(status=answer.status, body=data, headers=out)
