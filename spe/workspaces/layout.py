"""Where each workspace's pieces live on the host and inside its sandbox.

One workspace per (project, researcher). On the host, under ``state_dir/workspaces/<project>/
<user>/``: ``home`` (read-write; the outbox is ``home/outbox``) and ``run`` (the notebook
server's unix socket). The airlock's socket for the workspace is in ``state_dir/airlock/<id>/``,
a folder the sandbox sees read-only. Inside the sandbox the same things have fixed paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from spe.config import get_settings

# Inside the sandbox.
HOME = Path("/home/researcher")
OUTBOX = HOME / "outbox"
DATA = Path("/data")
RUN = Path("/run/spe")  # the notebook server's socket: RUN / SERVER_SOCKET
AIRLOCK = Path("/run/spe-airlock")  # read-only; the airlock socket: AIRLOCK / AIRLOCK_SOCKET
CONFIG = Path("/etc/spe-workspace")  # read-only Jupyter/IPython configuration and extension
SERVER_SOCKET = "server.sock"
RECORDER_SOCKET = "recorder.sock"
RECORD_SOCKET = "record.sock"
AIRLOCK_SOCKET = "airlock.sock"

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def workspace_id(project_slug: str, username: str) -> str:
    """A workspace's name: ``<project>--<user>`` (both are already restricted names)."""
    for part in (project_slug, username):
        if not _ID.match(part):
            raise ValueError(f"{part!r} cannot name a workspace")
    return f"{project_slug}--{username}"


@dataclass(frozen=True)
class HostPaths:
    """A workspace's folders on the host."""

    root: Path
    home: Path
    outbox: Path
    run: Path
    airlock: Path

    @property
    def server_socket(self) -> Path:
        return self.run / SERVER_SOCKET

    @property
    def airlock_socket(self) -> Path:
        return self.airlock / AIRLOCK_SOCKET

    @property
    def record_socket(self) -> Path:
        """Where the recorder hands its records to the control plane (the airlock service): a
        root-only folder beside the airlock's, never mounted into any sandbox."""
        return self.airlock.parent.parent / "records" / self.airlock.name / RECORD_SOCKET

    @property
    def recorder_socket(self) -> Path:
        """Where the hub's proxy reaches the workspace: the recorder, outside the sandbox (the
        workspace's root folder is never mounted into it)."""
        return self.root / RECORDER_SOCKET


def workspace_dir(project_slug: str, username: str) -> Path:
    return Path(get_settings().state_dir).resolve() / "workspaces" / project_slug / username


def host_paths(project_slug: str, username: str) -> HostPaths:
    root = workspace_dir(project_slug, username)
    airlock = (
        Path(get_settings().state_dir).resolve() / "airlock" / workspace_id(project_slug, username)
    )
    return HostPaths(root, root / "home", root / "home" / "outbox", root / "run", airlock)
