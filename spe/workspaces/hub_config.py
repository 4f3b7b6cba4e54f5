"""JupyterHub's configuration, built from SPE's settings by a pure function.

``hub_config`` returns every traitlet value as a dict; the generated ``jupyterhub_config.py``
in ``state_dir/hub`` only calls ``apply_hub_config(c)``, so secrets stay in their 0600 files.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from spe.config import REPO_ROOT, Settings, get_settings
from spe.errors import SPEError

# The managed services the hub can run; `spe hub` runs them all.
SERVICES = ("api", "worker", "idle-culler")
CONTROL_SERVICE = "spe-control"  # the token `stop_workspaces_of` uses (not a process)
CULLER_SERVICE = "idle-culler"
WEB_SERVICE = "spe"  # the API and the pages, at /services/spe/ (spe.web.PREFIX)
# Each project a user has opened is one named server; the hub refuses a new one past this.
NAMED_SERVER_LIMIT = 10
# A login lasts a working day, not JupyterHub's default two weeks.
COOKIE_MAX_AGE_DAYS = 1.0
CULL_EVERY_SECONDS = 60
# SPE_WORKSPACE_BACKEND and SPE_HUB_AUTHENTICATOR pick the classes (Kubernetes: kube_spawner).
SPAWNERS = {
    "local": "spe.workspaces.spawner.WorkspaceSpawner",
    "kubernetes": "spe.workspaces.kube_spawner.SPEKubeSpawner",
}
AUTHENTICATORS = {
    "spe": "spe.workspaces.authenticator.SPEAuthenticator",
    "oidc": "spe.workspaces.oidc.SPEOIDCAuthenticator",
}


class HubConfigError(SPEError):
    """The hub cannot be configured; the message says what to fix."""


@dataclass(frozen=True)
class HubFiles:
    """The hub's own state: everything under ``state_dir/hub`` (mode 0700)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "jupyterhub_config.py"

    @property
    def database(self) -> Path:
        return self.root / "jupyterhub.sqlite"

    @property
    def cookie_secret(self) -> Path:
        return self.root / "cookie_secret"

    @property
    def proxy_token(self) -> Path:
        return self.root / "proxy_auth_token"

    @property
    def control_token(self) -> Path:
        return self.root / "control_token"

    @property
    def proxy_api_socket(self) -> Path:
        return self.root / "proxy-api.sock"

    @property
    def proxy_pid(self) -> Path:
        return self.root / "jupyterhub-proxy.pid"


@dataclass(frozen=True)
class HubSecrets:
    proxy_token: str
    control_token: str

    def __repr__(self) -> str:  # never the values
        return "HubSecrets(********)"


def hub_files(settings: Settings | None = None) -> HubFiles:
    settings = settings or get_settings()
    return HubFiles(Path(settings.state_dir).resolve() / "hub")


def proxy_command(repo_root: Path = REPO_ROOT) -> list[str]:
    """configurable-http-proxy as installed by ``npm ci`` at the repository root."""
    return [str(repo_root / "node_modules" / ".bin" / "configurable-http-proxy")]


def _secret_file(path: Path, make: bool) -> str:
    """Read a secret file (creating it 0600 when ``make``); refuse one others can read."""
    if not path.exists():
        if not make:
            raise HubConfigError(f"{path} is missing; start the hub once (`spe hub`) to create it.")
        value = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
        return value
    if path.stat().st_mode & 0o077:
        raise HubConfigError(
            f"{path} can be read by other users, so the secret in it may have leaked; delete it "
            "(the hub makes a new one and everyone logs in again) or `chmod 600` it."
        )
    value = path.read_text().strip()
    if not value:
        raise HubConfigError(f"{path} is empty; delete it and the hub makes a new one.")
    return value


def ensure_hub_files(settings: Settings | None = None) -> tuple[HubFiles, HubSecrets]:
    """Create the hub folder (0700) and its secrets (0600) if missing; return them."""
    files = hub_files(settings)
    files.root.mkdir(parents=True, exist_ok=True)
    files.root.chmod(0o700)
    _secret_file(files.cookie_secret, make=True)
    found = HubSecrets(
        proxy_token=_secret_file(files.proxy_token, make=True),
        control_token=_secret_file(files.control_token, make=True),
    )
    return files, found


def control_token(settings: Settings | None = None) -> str | None:
    """The spe-control service's hub API token, or None when the hub never ran here."""
    path = hub_files(settings).control_token
    if not path.exists():
        return None
    return _secret_file(path, make=False)


def hub_api_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return f"http://127.0.0.1:{settings.hub_api_port}/hub/api"


def settings_environment(settings: Settings) -> dict[str, str]:
    """SPE_* variables that give a child process (the managed services) the same settings.

    The hub passes services only the variables it is told to, so the effective settings are
    spelled out here (services run in the hub's working folder: relative paths still agree).
    """
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"SPE_{name.upper()}"] = str(value)
    return env


def _socket_url(path: Path) -> str:
    return "http+unix://" + quote(str(path), safe="")


def _services(
    settings: Settings,
    found: HubSecrets,
    wanted: Iterable[str],
    python: str,
    env: Mapping[str, str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    wanted = list(wanted)
    unknown = sorted(set(wanted) - set(SERVICES))
    if unknown:
        raise HubConfigError(f"Unknown hub service {unknown[0]!r}; known: {', '.join(SERVICES)}.")
    services: list[dict[str, Any]] = [
        # Not a process: the identity `stop_workspaces_of` uses on the hub's API.
        {"name": CONTROL_SERVICE, "api_token": found.control_token, "display": False}
    ]
    roles: list[dict[str, Any]] = [
        {
            "name": "spe-control",
            "description": "Stop the workspaces of a closed or ended project.",
            "scopes": ["list:users", "read:users:name", "read:servers", "delete:servers"],
            "services": [CONTROL_SERVICE],
        }
    ]
    # No cwd: services share the hub's working folder, so relative settings agree.
    common = {"environment": dict(env), "display": False}
    if "api" in wanted:
        # The API and the pages: proxied at /services/spe/, logging people in through the hub
        # (OAuth, no confirmation page: it is the platform's own service).
        services.append(
            {
                "name": WEB_SERVICE,
                "url": f"http://{settings.api_host}:{settings.api_port}",
                "command": [python, "-m", "spe.cli", "api"],
                "oauth_no_confirm": True,
                **common,
                "display": True,
                "info": {"description": "SPE: catalogue, projects, exports, review, audit"},
            }
        )
        # Every logged-in person may open the pages (what each sees is SPE's to decide).
        roles.append(
            {
                "name": "user",
                "description": "A person with an SPE account: their own servers and the pages.",
                "scopes": ["self", f"access:services!service={WEB_SERVICE}"],
            }
        )
    if "worker" in wanted:
        services.append(
            {"name": "spe-worker", "command": [python, "-m", "spe.cli", "worker"], **common}
        )
    if CULLER_SERVICE in wanted:
        services.append(
            {
                "name": CULLER_SERVICE,
                "command": [
                    python,
                    "-m",
                    "jupyterhub_idle_culler",
                    f"--timeout={settings.workspace_idle_minutes * 60}",
                    f"--cull-every={CULL_EVERY_SECONDS}",
                    "--cull-users=false",
                ],
                **common,
            }
        )
        roles.append(
            {
                "name": "spe-idle-culler",
                "description": "Stop workspaces idle longer than SPE_WORKSPACE_IDLE_MINUTES.",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": [CULLER_SERVICE],
            }
        )
    return services, roles


def hub_config(
    settings: Settings,
    files: HubFiles,
    found: HubSecrets,
    *,
    public_url: str | None = None,
    services: Iterable[str] = SERVICES,
    python: str = sys.executable,
    repo_root: Path = REPO_ROOT,
) -> dict[str, dict[str, Any]]:
    """Every JupyterHub traitlet SPE sets, as {class name: {trait: value}}.

    ``public_url`` is the address users reach (the download filter in front of the proxy);
    unset, the hub answers with relative redirects, which works behind any front door.
    """
    env = settings_environment(settings)
    service_list, roles = _services(settings, found, services, python, env)
    hub: dict[str, Any] = {
        # The proxy: the only listener besides the hub API, both on loopback.
        "bind_url": f"http://127.0.0.1:{settings.hub_proxy_port}",
        "hub_ip": "127.0.0.1",
        "hub_port": settings.hub_api_port,
        "db_url": f"sqlite:///{files.database}",
        "upgrade_db": True,  # the hub's database is its own disposable state
        "cookie_secret_file": str(files.cookie_secret),
        "cookie_max_age_days": COOKIE_MAX_AGE_DAYS,
        "pid_file": str(files.root / "jupyterhub.pid"),
        "authenticator_class": AUTHENTICATORS[settings.hub_authenticator],
        "spawner_class": SPAWNERS[settings.workspace_backend],
        "allow_named_servers": True,
        "named_server_limit_per_user": NAMED_SERVER_LIMIT,
        # There is no default server: every workspace is named after its project.
        "redirect_to_server": False,
        # After logging in, people land on SPE's pages (their projects, queue or log).
        "default_url": f"/services/{WEB_SERVICE}/",
        "services": service_list,
        "load_roles": roles,
        # A stopped platform leaves no workspace running.
        "cleanup_servers": True,
    }
    if public_url:
        hub["public_url"] = public_url
    login: dict[str, dict[str, Any]] = {}
    if settings.hub_authenticator == "oidc":
        from spe.workspaces.oidc import oidc_config

        login["SPEOIDCAuthenticator"] = oidc_config(settings)
    return {
        **login,
        "JupyterHub": hub,
        "ConfigurableHTTPProxy": {
            "command": proxy_command(repo_root),
            "auth_token": found.proxy_token,
            # Its REST API on a socket in the 0700 hub folder rather than one more port.
            "api_url": _socket_url(files.proxy_api_socket),
            "pid_file": str(files.proxy_pid),
        },
        "Spawner": {
            "start_timeout": 60,
            "http_timeout": 30,
            "poll_interval": 30,
            "disable_user_config": True,
        },
        "Authenticator": {"allow_all": True, "admin_users": set()},
    }


Overrides = Mapping[str, Mapping[str, Any]]


def apply_hub_config(
    c: Any,
    *,
    public_url: str | None = None,
    services: Iterable[str] = SERVICES,
    overrides: Overrides | None = None,
) -> None:
    """Fill JupyterHub's ``c`` (called from the generated jupyterhub_config.py).

    ``overrides`` ({class: {trait: value}}) come last: tests shorten poll intervals with them.
    """
    settings = get_settings()
    files, found = ensure_hub_files(settings)
    config = hub_config(settings, files, found, public_url=public_url, services=services)
    for section, values in [*config.items(), *(overrides or {}).items()]:
        for name, value in values.items():
            setattr(getattr(c, section), name, value)


_TEMPLATE = """\
# Generated by SPE at every start of the hub (spe.workspaces.hub); do not edit.
# Change SPE_* settings instead: `spe config show` lists them.
from spe.workspaces.hub_config import apply_hub_config

apply_hub_config(
    c,  # noqa: F821 - JupyterHub's config object
    public_url={public_url!r},
    services={services!r},
    overrides={overrides!r},
)
"""


def write_generated_config(
    settings: Settings | None = None,
    *,
    public_url: str | None = None,
    services: Iterable[str] = SERVICES,
    overrides: Overrides | None = None,
) -> Path:
    """Write ``state_dir/hub/jupyterhub_config.py`` (and the hub's secrets); return its path."""
    settings = settings or get_settings()
    files, found = ensure_hub_files(settings)
    wanted = tuple(services)
    hub_config(settings, files, found, services=wanted)  # fail here, not inside the hub
    plain = {k: dict(v) for k, v in (overrides or {}).items()}
    text = _TEMPLATE.format(public_url=public_url, services=wanted, overrides=plain or None)
    tmp = files.config.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(files.config)
    return files.config
