"""All of SPE's settings in one typed place (environment prefix ``SPE_``).

No other module reads ``os.environ``: they call :func:`get_settings`. ``spe config show`` prints
the effective values with secrets masked.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from spe.errors import SPEError

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(SPEError):
    """A setting is missing or wrong; the message says which and how to fix it."""


class Settings(BaseSettings):
    """SPE's settings. Each field has a default that needs nothing installed."""

    model_config = SettingsConfigDict(env_prefix="SPE_", extra="ignore", validate_default=True)

    state_dir: Path = Field(
        default=Path("var"),
        description="Directory for all local state: database, keys, checkpoint file.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means a SQLite file (WAL) under state_dir.",
    )
    platform_key: SecretStr | None = Field(
        default=None,
        description="The platform key, 32 bytes base64; when unset it is read from "
        "platform_key_file (created on first run).",
    )
    platform_key_file: Path | None = Field(
        default=None,
        description="File holding the platform key (mode 0600); "
        "default state_dir/keys/platform.key.",
    )
    checkpoint_file: Path | None = Field(
        default=None,
        description="Append-only file of signed audit checkpoints to ship off the machine; "
        "default state_dir/audit/checkpoints.jsonl.",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Where datasets, project extracts and quarantine files are kept; "
        "default state_dir/data.",
    )
    ingest_max_line_bytes: int = Field(
        default=1 << 20, ge=1024, description="Longest CSV line accepted by the ingest."
    )
    policies_dir: Path = Field(
        default=REPO_ROOT / "policies",
        description="Directory of policies: terms of use, dataset and disclosure policies.",
    )
    seal_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Longest time between an audit event's commit and its sealing.",
    )
    seal_batch_max: int = Field(
        default=20000, ge=1, description="Most audit events sealed under one checkpoint."
    )
    inactivity_days: int = Field(
        default=548,
        ge=1,
        description="Accounts with no activity for this many days are deactivated (18 months).",
    )
    broker_url: str = Field(
        default="",
        description="Celery broker; empty means Celery's SQLAlchemy transport on a SQLite file "
        "in state_dir (no broker to run); redis://host:6379/0 in production.",
    )
    job_stale_after_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A running job whose heartbeat is older than this is taken as dead and "
        "re-run by the next worker (jobs are idempotent).",
    )
    cli_user: str | None = Field(
        default=None,
        description="The SPE user the `spe` command acts as when --as is not given.",
    )
    db_busy_timeout_seconds: float = Field(
        default=30.0, gt=0, description="How long a SQLite writer waits for the write lock."
    )
    api_host: str = Field(
        default="127.0.0.1", description="Address the SPE API listens on (`spe api`, `spe up`)."
    )
    api_port: int = Field(default=8040, ge=1, le=65535, description="Port of the SPE API.")
    workspace_env_dir: Path = Field(
        default=REPO_ROOT / ".venv-workspace",
        description="The workspaces' own Python environment (jupyter-server, ipykernel, pandas, "
        "spe.analysis), separate from the hub's and readable by workspace users.",
    )
    workspace_sandbox: str = Field(
        default="bwrap",
        pattern="^(bwrap|none)$",
        description="How workspaces are isolated: 'bwrap' (bubblewrap, no network) or 'none' "
        "(plain local processes, for development and the benchmark's baseline only).",
    )
    workspace_memory_mb: int = Field(
        default=4096, ge=256, description="Memory limit of one workspace (cgroup), in MiB."
    )
    workspace_pids_max: int = Field(
        default=256, ge=16, description="Most processes and threads in one workspace (cgroup)."
    )
    workspace_cpus: float = Field(
        default=1.0, gt=0, description="CPU time of one workspace, in cores (cgroup quota)."
    )
    workspace_idle_minutes: int = Field(
        default=60, ge=1, description="A workspace idle this long is stopped (its home stays)."
    )
    workspace_airlock_events_per_second: float = Field(
        default=20.0,
        gt=0,
        description="Airlock requests (cells, loads, queries) one workspace may make per second, "
        "on average; beyond it requests are refused (fail closed) and one alarm is recorded.",
    )
    workspace_airlock_burst: int = Field(
        default=200,
        ge=1,
        description="Airlock requests one workspace may make at once before the per-second rate "
        "applies (a notebook's 'run all').",
    )
    workspace_airlock_bytes_per_day: int = Field(
        default=64 << 20,
        ge=1,
        description="Bytes of airlock requests (hence of audit records) one workspace may send "
        "per UTC day (64 MiB); beyond it requests are refused and one alarm is recorded.",
    )
    workspace_read_bytes_per_day: int = Field(
        default=16 << 20,
        ge=0,
        description="Bytes of files other than notebooks one workspace may show in the browser "
        "per UTC day (contents reads, counted by the recorder); beyond it reads are refused "
        "and one alarm is recorded.",
    )
    workspace_read_alarm_bytes: int = Field(
        default=64 << 10,
        ge=1,
        description="A file read through the browser at least this large that looks like "
        "encoded data (base64, hex) is refused and raises an alarm at once.",
    )
    recorder_code_text_bytes: int = Field(
        default=1 << 20,
        ge=0,
        description="The recorder keeps the text of code files (.py, .ipynb, .R) written into a "
        "workspace up to this size, outside the sandbox; larger ones by SHA-256 only.",
    )
    egress_selftest_minutes: float = Field(
        default=10.0,
        gt=0,
        description="How often the egress self-test probes every running workspace (Celery beat).",
    )
    hub_port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="Port of the front door on 127.0.0.1 (the download filter before the hub).",
    )
    hub_proxy_port: int = Field(
        default=8001, ge=1, le=65535, description="Port of configurable-http-proxy (internal)."
    )
    hub_api_port: int = Field(
        default=8081, ge=1, le=65535, description="Port of the JupyterHub API (internal)."
    )
    outbox_dir: Path = Field(
        default=Path("outbox"),
        description="Inside a workspace: the folder where spe.analysis records outputs for "
        "export (relative paths are taken from the current directory).",
    )
    workspace_airlock_socket: Path = Field(
        default=Path("/run/spe-airlock/airlock.sock"),
        description="Inside a workspace: the airlock's socket (cells, loads, export requests).",
    )
    workspace_data_dir: Path = Field(
        default=Path("/data"),
        description="Inside a workspace: where the project's extracts are mounted read-only.",
    )
    export_max_file_bytes: int = Field(
        default=100 << 20,
        ge=1,
        description="Largest single file an export request may carry (100 MiB).",
    )
    export_max_request_bytes: int = Field(
        default=500 << 20,
        ge=1,
        description="Largest total size of the files of one export request (500 MiB).",
    )
    export_max_files: int = Field(default=50, ge=1, description="Most files in one export request.")
    plan_memory_mb: int = Field(
        default=4096,
        ge=64,
        description="Memory cap of one plan evaluation on the server, in MiB (the engine spills "
        "to disk beyond it).",
    )
    plan_threads: int = Field(
        default=2, ge=1, le=64, description="Threads of one plan evaluation on the server."
    )
    export_review_days: int = Field(
        default=60,
        ge=1,
        description="A request waiting for review longer than this is overdue (DGA Art. 9's "
        "two months).",
    )
    # --- Kubernetes and OIDC (helm/spe sets these; unused on one machine) -------------------
    workspace_backend: str = Field(
        default="local",
        pattern="^(local|kubernetes)$",
        description="Where workspaces run: 'local' (this machine's sandbox) or 'kubernetes' "
        "(KubeSpawner pods, spe.workspaces.kube_spawner).",
    )
    k8s_namespace: str = Field(
        default="spe", description="Namespace of workspaces, their volumes and policies."
    )
    k8s_workspace_image: str = Field(
        default="spe-workspace:0.1.0",
        description="Image of workspace pods (docker/Dockerfile.workspace), pinned by tag.",
    )
    k8s_storage_class: str = Field(
        default="", description="Storage class of workspace homes; empty: the cluster default."
    )
    k8s_extract_storage_class: str = Field(
        default="",
        description="Storage class of project extracts; it must offer ReadOnlyMany "
        "(e.g. an NFS or CephFS class). Empty: the cluster default.",
    )
    k8s_home_size: str = Field(default="10Gi", description="Size of each workspace home PVC.")
    k8s_extract_size: str = Field(default="10Gi", description="Size of each extract PVC.")
    k8s_data_claim: str = Field(
        default="spe-data",
        description="The ReadWriteMany PVC holding SPE's data dir; extracts are copied from it "
        "into their project's extract PVC.",
    )
    k8s_controlplane_image: str = Field(
        default="spe-controlplane:0.1.0",
        description="Image of SPE's own pods; runs the jobs that fill extract PVCs.",
    )
    k8s_airlock_service: str = Field(
        default="spe-airlock", description="The Service in front of the TCP airlock."
    )
    k8s_airlock_port: int = Field(
        default=8950, ge=1, le=65535, description="Port of the TCP airlock (`spe k8s airlock`)."
    )
    k8s_hub_service: str = Field(
        default="hub", description="The hub's Service (z2jh names it 'hub'); workspaces call it."
    )
    workspace_token_hours: float = Field(
        default=12.0,
        gt=0,
        le=168,
        description="Lifetime of a workspace's pod-bound airlock token; the spawner renews it "
        "at half-life while the workspace runs.",
    )
    workspace_airlock_url: str = Field(
        default="",
        description="Inside a Kubernetes workspace: tcp://ADDRESS:PORT of the airlock (empty: "
        "use the unix socket).",
    )
    workspace_airlock_token_file: Path = Field(
        default=Path("/run/spe-airlock/token"),
        description="Inside a Kubernetes workspace: the pod-bound token sent to the airlock.",
    )
    hub_authenticator: str = Field(
        default="spe",
        pattern="^(spe|oidc)$",
        description="How people log in to the hub: 'spe' (SPE passwords) or 'oidc' "
        "(OpenID Connect, e.g. Feide or ID-porten; SPE_OIDC_*).",
    )
    oidc_issuer: str = Field(
        default="", description="OIDC issuer URL, e.g. https://auth.dataporten.no."
    )
    oidc_authorize_url: str = Field(default="", description="OIDC authorisation endpoint.")
    oidc_token_url: str = Field(default="", description="OIDC token endpoint.")
    oidc_userinfo_url: str = Field(default="", description="OIDC userinfo endpoint.")
    oidc_client_id: str = Field(default="", description="OIDC client id registered for SPE.")
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="OIDC client secret (a Kubernetes Secret in the chart)."
    )
    oidc_callback_url: str = Field(
        default="", description="https://HOST/hub/oauth_callback, as registered at the provider."
    )
    oidc_scopes: str = Field(
        default="openid profile email", description="Scopes asked for, space-separated."
    )
    oidc_username_claim: str = Field(
        default="sub", description="Claim whose value is the SPE username (mapped, see oidc.py)."
    )
    oidc_institution_claim: str = Field(
        default="",
        description="Claim naming the person's institution (e.g. Feide's eduPersonOrgDN or "
        "an org number); empty: not checked.",
    )
    oidc_institutions: str = Field(
        default="",
        description="Claim value=SPE organisation pairs, comma-separated, e.g. "
        "'uio.no=University of Oslo'.",
    )
    oidc_unknown_users: str = Field(
        default="refuse",
        pattern="^(refuse|enrol)$",
        description="A person who logs in without an SPE account: 'refuse', or 'enrol' as a "
        "researcher of their mapped institution.",
    )
    # --- accounts: passwords, sessions, throttling (spe.accounts) ---
    one_time_password_days: float = Field(
        default=7.0,
        gt=0,
        le=90,
        description="A one-time password that has not been used expires after this many days.",
    )
    password_min_length: int = Field(
        default=12, ge=8, le=128, description="Shortest password a person may choose."
    )
    session_hours: float = Field(
        default=12.0, gt=0, le=168, description="Longest life of a login to the pages."
    )
    session_idle_minutes: float = Field(
        default=60.0,
        gt=0,
        le=1440,
        description="A login to the pages unused for this long ends (idle timeout).",
    )
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed logins in a row that lock an account."
    )
    login_lockout_minutes: float = Field(
        default=15.0, gt=0, description="How long a locked account stays locked."
    )
    login_source_max_failures: int = Field(
        default=20,
        ge=1,
        description="Failed logins from one source address within the window before that "
        "address is throttled (every account is safe from it meanwhile).",
    )
    login_source_window_minutes: float = Field(
        default=15.0,
        gt=0,
        description="Window over which failures per source address are counted; a throttled "
        "address waits this long.",
    )
    login_source_locks_max: int = Field(
        default=3,
        ge=1,
        description="Most accounts one source address may lock within its window; later "
        "failures from it count against the address only (a bounded lock-out).",
    )
    mfa_required_roles: str = Field(
        default="holder_reviewer,auditor,institution_admin,operator",
        description="Roles whose holders must log in with a second factor (TOTP), "
        "comma-separated; they are led to set it up after their password.",
    )
    mfa_researchers: bool = Field(
        default=False, description="Researchers, too, must log in with a second factor (TOTP)."
    )
    mfa_recovery_codes: int = Field(
        default=10, ge=1, le=20, description="Single-use recovery codes made at MFA enrolment."
    )
    mfa_issuer: str = Field(
        default="SPE", description="The platform's name as authenticator apps show it."
    )
    oidc_require_mfa: bool = Field(
        default=False,
        description="An OIDC login must show MFA in the provider's amr or acr claim "
        "(SPE_OIDC_MFA_AMR, SPE_OIDC_MFA_ACR); one that does not is refused.",
    )
    oidc_mfa_amr: str = Field(
        default="mfa,otp,hwk,swk,sms",
        description="amr values (RFC 8176) that count as MFA, comma-separated.",
    )
    oidc_mfa_acr: str = Field(
        default="",
        description="acr values that count as MFA, comma-separated (e.g. ID-porten's "
        "idporten-loa-substantial,idporten-loa-high).",
    )
    hub_auth_refresh_seconds: int = Field(
        default=60,
        ge=10,
        description="How often the hub re-checks a logged-in person (revoked sessions and "
        "deactivated accounts end within this time).",
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError(
                "must start with sqlite:/// or postgresql+psycopg:// "
                "(other databases are not supported)"
            )
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        state = self.state_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{(state / 'spe.db').as_posix()}"
        if self.platform_key_file is None:
            self.platform_key_file = state / "keys" / "platform.key"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{(state / 'celery-broker.sqlite').as_posix()}"
        if self.data_dir is None:
            self.data_dir = state / "data"
        if self.checkpoint_file is None:
            self.checkpoint_file = state / "audit" / "checkpoints.jsonl"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, effective value with secrets masked, description) for every setting."""
        rows = []
        for name, field in type(self).model_fields.items():
            value: Any = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "********" if value.get_secret_value() else ""
            elif value is None:
                shown = ""
            elif name in ("database_url", "broker_url"):
                shown = mask_url(str(value))
            else:
                shown = str(value)
            rows.append((f"SPE_{name.upper()}", shown, field.description or ""))
        return rows


def mask_url(url: str) -> str:
    """Hide the password in a database URL."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:********@", url)


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    name = "SPE_" + "_".join(str(p) for p in first["loc"]).upper()
    return f"Setting {name} is wrong: {first['msg']}; fix or unset that environment variable."


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and overrides); raise ConfigError on bad values."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def reset_settings() -> None:
    """Forget cached settings (tests change the environment)."""
    get_settings.cache_clear()
