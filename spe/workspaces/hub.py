"""Running the hub (``run_hub``: the proxy, SPE API, task worker and idle culler run under it),
and ``stop_workspaces_of``, which project close and the maintenance loop call.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from spe.config import get_settings
from spe.errors import SPEError
from spe.workspaces.hub_config import (
    SERVICES,
    Overrides,
    control_token,
    hub_api_url,
    proxy_command,
    write_generated_config,
)
from spe.workspaces.layout import workspace_id

_PAGINATION = "application/jupyterhub-pagination+json"


class HubUnavailable(SPEError):
    """The hub did not answer (or refused) a request the platform needed."""


def hub_command(config_file: str) -> list[str]:
    return [sys.executable, "-m", "jupyterhub", "-f", config_file]


def run_hub(
    public_url: str | None = None,
    services: Iterable[str] = SERVICES,
    overrides: Overrides | None = None,
) -> None:
    """Write the generated config and exec ``jupyterhub`` with it (never returns).

    ``public_url``: where users reach the front door, when known; ``services``: which managed
    services to run (all by default); ``overrides``: extra traitlet values, for tests.
    """
    proxy = proxy_command()[0]
    if not os.access(proxy, os.X_OK):
        raise HubUnavailable(
            f"configurable-http-proxy is not installed at {proxy}; run `npm ci` in the "
            "repository root (or `make setup`)."
        )
    config = write_generated_config(public_url=public_url, services=services, overrides=overrides)
    command = hub_command(str(config))
    # Exec so that signals (Ctrl-C, `spe up` stopping) reach the hub, which stops everything
    # it started: proxy, services and workspaces. The working folder stays: relative SPE_
    # settings (the default state_dir "var") mean the same in the hub and its services.
    # A hub started in the background inherits an ignored SIGINT and would pass it on to its
    # services, which then take the hub's 30 s interrupt timeout each to stop.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(command[0], command)  # noqa: S606 - becomes the hub: no shell, a fixed argv


# --- the hub's REST API, as the spe-control service ----------------------------------------------


def _request(method: str, path: str, token: str, body: Any = None, accept: str = "") -> Any:
    url = hub_api_url() + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http on loopback
    request.add_header("Authorization", f"token {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            raw = answer.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise HubUnavailable(
            f"The hub refused {method} {path} ({exc.code}); check that it runs with this "
            "state directory's configuration."
        ) from None
    except OSError as exc:
        raise HubUnavailable(
            f"The hub at {url} does not answer ({exc}); the workspaces will be checked again "
            "when it runs (each one stops when its project is no longer open for work)."
        ) from None
    return json.loads(raw) if raw else None


def _users_with_server(server_name: str, token: str) -> list[str]:
    names: list[str] = []
    offset = 0
    while True:
        page = _request(
            "GET", f"/users?state=active&offset={offset}&limit=200", token, accept=_PAGINATION
        )
        if page is None:
            return names
        for user in page["items"]:
            if server_name in (user.get("servers") or {}):
                names.append(user["name"])
        following = (page.get("_pagination") or {}).get("next")
        if not following:
            return names
        offset = following["offset"]


def _server_gone(username: str, server_name: str, token: str) -> bool:
    model = _request("GET", f"/users/{quote(username, safe='')}", token)
    return model is None or server_name not in (model.get("servers") or {})


def stop_workspaces_of(
    project_slug: str, reason: str = "the project is no longer open for work", wait: float = 60.0
) -> list[str]:
    """Stop (and forget) every running workspace of a project; returns their names.

    Each is first marked stopped with ``reason`` (audited), which also closes its airlock, so
    the workspace loses its way out even before its process ends.
    """
    token = control_token()
    if token is None:  # the hub never ran with this state directory: nothing runs
        return []
    usernames = _users_with_server(project_slug, token)
    if not usernames:
        return []
    from spe.db import transaction
    from spe.workspaces.registry import workspace_stopped

    with transaction() as session:
        for username in usernames:
            workspace_stopped(session, "system:hub", workspace_id(project_slug, username), reason)
    for username in usernames:
        # remove: the hub forgets the server too, so it no longer counts against the user's
        # named-server limit.
        _request(
            "DELETE",
            f"/users/{quote(username, safe='')}/servers/{quote(project_slug, safe='')}",
            token,
            body={"remove": True},
        )
    deadline = time.monotonic() + wait
    pending = list(usernames)
    while pending and time.monotonic() < deadline:
        pending = [u for u in pending if not _server_gone(u, project_slug, token)]
        if pending:
            time.sleep(0.25)
    if pending:
        raise HubUnavailable(
            f"The workspaces of {', '.join(pending)} in project {project_slug} did not stop "
            f"within {wait:g} s; the hub keeps stopping them (see its log)."
        )
    return [workspace_id(project_slug, u) for u in usernames]


def stop_workspace(project_slug: str, username: str) -> bool:
    """Ask the hub to stop (and forget) one workspace; False when no hub runs or knows it.

    The caller records why (registry.workspace_stopped), which also closes its airlock.
    """
    token = control_token()
    if token is None:
        return False
    _request(
        "DELETE",
        f"/users/{quote(username, safe='')}/servers/{quote(project_slug, safe='')}",
        token,
        body={"remove": True},
    )
    return True


def main() -> None:
    get_settings()
    run_hub()


if __name__ == "__main__":
    main()
