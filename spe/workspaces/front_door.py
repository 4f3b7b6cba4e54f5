"""The front door: nginx before JupyterHub's proxy, outside every sandbox, as a download filter.

It refuses the routes that hand out files (``/files/``, ``/view/``, ``/nbconvert/``,
``?download=``, binary ``format=base64`` reads, terminals), caps upload sizes, and writes every
request as a JSON line; ``ship_reads`` turns the notebook contents reads in that log into audit
events. The nginx configuration is built by a pure function; a screen is still a channel.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NGINX = "/usr/sbin/nginx"

# Routes of a user's server (/user/<name>/<server>/...) that hand out whole files.
REFUSAL = "Downloads from a workspace are not allowed; results leave through an export request.\\n"
BLOCKED_ROUTES = ("files", "view", "nbconvert", "terminals", "api/terminals", "lab/api/workspaces")


@dataclass(frozen=True)
class FrontDoor:
    listen_port: int  # the public port on 127.0.0.1
    upstream_port: int  # configurable-http-proxy on 127.0.0.1
    folder: Path  # state_dir/front-door: config, pid, temp files
    access_log: Path  # JSON lines, one per request
    error_log: Path
    max_upload_kib: int = 2048
    as_root: bool = False  # then the workers drop to nobody
    # On Kubernetes (`spe k8s front-door`): the pod's address and z2jh's proxy-public service.
    listen_host: str = "127.0.0.1"
    upstream_host: str = "127.0.0.1"


def nginx_config(door: FrontDoor) -> str:
    """The whole nginx.conf for the front door (pure: the same door gives the same text)."""
    routes = "|".join(re.escape(r) for r in BLOCKED_ROUTES)
    temp = door.folder / "tmp"
    return f"""# Written by SPE (spe/workspaces/front_door.py); rewritten at every start.
{"user nobody nogroup;" if door.as_root else "# not root: workers run as this user"}
worker_processes 1;
daemon off;
pid {door.folder / "nginx.pid"};
error_log {door.error_log} warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    server_tokens off;
    log_format spe_json escape=json
        '{{"time":"$time_iso8601","method":"$request_method","uri":"$uri","args":"$args",'
        '"status":$status,"bytes":$bytes_sent,"request_bytes":$request_length,'
        '"blocked":"$spe_blocked"}}';
    access_log {door.access_log} spe_json;

    # $uri is decoded and normalised by nginx (%XX, "..", "//"), so encoding cannot dodge these.
    map $uri $spe_route_blocked {{
        default 0;
        "~*^/user/[^/]+/[^/]+/({routes})(/|$)" 1;
        "~*^/user/[^/]+/({routes})(/|$)" 1;
    }}
    # Arguments are matched raw: block any download flag, any format but text or json, and
    # percent-encoded argument names (which the server would decode into the same thing).
    map $args $spe_args_blocked {{
        default 0;
        "~*(^|&)download=" 1;
        "~*(^|&)format=(?!(text|json)(&|$))" 1;
        "~(^|&)[^=&]*%" 1;
    }}
    map "$spe_route_blocked$spe_args_blocked" $spe_blocked {{
        default "";
        "~1" "yes";
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" close;
    }}
    server {{
        listen {door.listen_host}:{door.listen_port};
        client_max_body_size {door.max_upload_kib}k;
        # Whole bodies in memory: the workers (nobody) may not reach a spool folder under the
        # state folder.
        client_body_buffer_size {door.max_upload_kib}k;
        if ($spe_blocked) {{
            return 403 "{REFUSAL}";
        }}
        location / {{
            proxy_pass http://{door.upstream_host}:{door.upstream_port};
            proxy_http_version 1.1;
            # With the port: the notebook server compares Host with the browser's Origin.
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_buffering off;
        }}
    }}
}}
"""


def write_config(door: FrontDoor) -> Path:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        folder = door.folder / "tmp" / sub
        folder.mkdir(parents=True, exist_ok=True)
        if door.as_root:  # the workers (nobody) spool request bodies here
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    door.access_log.parent.mkdir(parents=True, exist_ok=True)
    path = door.folder / "nginx.conf"
    path.write_text(nginx_config(door))
    return path


def start(door: FrontDoor) -> subprocess.Popen[bytes]:
    """Check the configuration, then run nginx in the foreground as a child process."""
    config = write_config(door)
    check = subprocess.run(
        [NGINX, "-t", "-q", "-c", str(config), "-p", str(door.folder)],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx refuses the front door's configuration: {check.stderr.strip()}")
    return subprocess.Popen(
        [NGINX, "-c", str(config), "-p", str(door.folder)], start_new_session=True
    )


# --- shipping contents reads into the audit log ------------------------------------------------

_CONTENTS = re.compile(r"^/user/([^/]+)/([^/]+)/api/contents/(.*)$")


def read_events(lines: list[str]) -> list[dict[str, Any]]:
    """The notebook contents reads (path, bytes) in access-log lines, for the audit log."""
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        match = _CONTENTS.match(str(entry.get("uri", "")))
        if not match or entry.get("method") != "GET":
            continue
        user, project, path = match.groups()
        out.append(
            {
                "user": user,
                "project": project,
                "path": path,
                "bytes": int(entry.get("bytes") or 0),
                "status": int(entry.get("status") or 0),
                "blocked": bool(entry.get("blocked")),
                "time": entry.get("time"),
            }
        )
    return out


def ship_reads(access_log: Path, offset_file: Path) -> int:
    """Record the contents reads logged since the last call; returns how many. Restart-safe:
    the byte offset is saved after the events are committed (an event may repeat after a
    crash, none is lost)."""
    from spe.audit.log import record
    from spe.db.session import get_engine

    if not access_log.exists():
        return 0
    offset = 0
    with contextlib.suppress(FileNotFoundError, ValueError):
        offset = int(offset_file.read_text())
    size = access_log.stat().st_size
    if size < offset:  # the log was rotated
        offset = 0
    with open(access_log, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]
    if not complete:
        return 0
    reads = read_events(complete.decode("utf-8", "replace").splitlines())
    if reads:
        with get_engine().begin() as conn:
            for read in reads:
                record(
                    conn,
                    read["user"],
                    "workspace.read",
                    f"workspace:{read['project']}--{read['user']}",
                    {k: read[k] for k in ("path", "bytes", "status", "blocked", "time")},
                    project=read["project"],
                )
    tmp = offset_file.with_suffix(".tmp")
    tmp.write_text(str(offset + len(complete)))
    os.replace(tmp, offset_file)
    return len(reads)
