"""The hub's spawner on Kubernetes: KubeSpawner with SPE's values (SPE_WORKSPACE_BACKEND).

One named server per (researcher, project), offered as one profile per project the person may
open now; checked again at start (audited) and every 30 s while it runs, as the local spawner.
Pod, volumes and policy come from ``kube_objects``; the airlock token is bound to the pod.
"""

from __future__ import annotations

import time
from typing import Any

from kubespawner import KubeSpawner
from traitlets import Float, default

from spe.config import Settings, get_settings
from spe.keys.workspace_tokens import RECORDER_ROLE, WORKSPACE_ROLE
from spe.workspaces import kube_objects as ko
from spe.workspaces.spawner import (
    NO_DEFAULT_SERVER,
    WorkspaceRefused,
    _form_projects,
    _in_thread,
    _refusal_now,
    record_spawn_refusal,
    record_stopped,
    workspace_refusal,
)


def admit_kube_workspace(username: str, project_slug: str) -> tuple[list[str], str, str, float]:
    """Check access once more, record the start and issue the pod's tokens (one transaction):
    the datasets to mount, the workspace's token, the recorder sidecar's, and when they were
    issued; blocking."""
    from sqlalchemy import select

    from spe.accounts.models import User
    from spe.db import transaction
    from spe.projects.extracts import workspace_mounts
    from spe.projects.models import Project
    from spe.workspaces.registry import workspace_started

    with transaction() as session:
        reason = workspace_refusal(session, username, project_slug)
        if reason is None:
            user = session.scalar(select(User).where(User.username == username))
            project = session.scalar(select(Project).where(Project.slug == project_slug))
            assert user is not None and project is not None
            datasets = sorted(workspace_mounts(session, project))
            workspace_started(session, user, project)
            token, recorder_token, issued = _issue_tokens(session, username, project_slug)
    if reason is not None:  # recorded once the refused transaction has ended
        record_spawn_refusal(username, project_slug, reason)
        raise WorkspaceRefused(reason)
    return datasets, token, recorder_token, issued


def _issue_tokens(session: Any, username: str, project_slug: str) -> tuple[str, str, float]:
    from spe.k8s.tokens import issue_workspace_token

    settings = get_settings()
    tokens, issued = [], 0.0
    for role in (WORKSPACE_ROLE, RECORDER_ROLE):
        token, claims = issue_workspace_token(
            session,
            project_slug,
            username,
            namespace=settings.k8s_namespace,
            lifetime_seconds=int(settings.workspace_token_hours * 3600),
            role=role,
        )
        tokens.append(token)
        issued = float(claims["iat"])
    return tokens[0], tokens[1], issued


def renew_token(username: str, project_slug: str) -> tuple[str, str, float]:
    """New tokens for the workspace and its recorder (before the old ones expire)."""
    from spe.db import transaction

    with transaction() as session:
        return _issue_tokens(session, username, project_slug)


def workspace_spec(
    settings: Settings, project: str, username: str, datasets: list[str]
) -> ko.WorkspaceSpec:
    return ko.WorkspaceSpec(
        project=project,
        username=username,
        datasets=tuple(datasets),
        image=settings.k8s_workspace_image,
        cpu=settings.workspace_cpus,
        memory_mb=settings.workspace_memory_mb,
        home_size=settings.k8s_home_size,
        storage_class=settings.k8s_storage_class or None,
        namespace=settings.k8s_namespace,
        recorder_image=settings.k8s_controlplane_image,
        recorder_code_text_bytes=settings.recorder_code_text_bytes,
        read_alarm_bytes=settings.workspace_read_alarm_bytes,
    )


async def project_profiles(spawner: SPEKubeSpawner) -> list[dict[str, Any]]:
    """The profile list: the projects this person may open now, and nothing else."""
    projects = await _in_thread(_form_projects, spawner.user.name)
    return ko.workspace_profiles([(slug, title) for slug, title, _end in projects])


def _apply_user_options(spawner: SPEKubeSpawner, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - {"profile"})
    if unknown:
        raise WorkspaceRefused(f"A workspace has no option {unknown[0]!r}.", 400)


class SPEKubeSpawner(KubeSpawner):
    """A workspace pod: the named server called after its project, for one researcher."""

    access_check_interval = Float(
        30.0,
        help="Seconds between checks that a running workspace's project is still open to its "
        "user (closed, ended, membership or account gone: the pod is stopped).",
    ).tag(config=True)

    _last_access_check: float = 0.0
    _token_issued: float = 0.0
    _hub_api_url: str | None = None

    @default("profile_list")
    def _default_profile_list(self) -> Any:
        return project_profiles

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        return _apply_user_options

    @default("namespace")
    def _default_namespace(self) -> str:
        return get_settings().k8s_namespace

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        return []

    @default("delete_pvc")
    def _default_delete_pvc(self) -> bool:
        return False  # homes outlive a stop; `spe k8s delete-project` removes them

    async def load_user_options(self) -> None:
        """Profile → project, then SPE's checks and values (KubeSpawner calls this in start)."""
        await super().load_user_options()
        slug, username = self.name, self.user.name
        if not slug:
            raise WorkspaceRefused(NO_DEFAULT_SERVER, 400)
        chosen = (self.user_options or {}).get("profile") or slug
        if chosen != slug:
            raise WorkspaceRefused(
                f"This workspace is for project {slug}; to work on {chosen}, start the "
                f"workspace named {chosen}.",
                400,
            )
        settings = get_settings()
        datasets, token, recorder_token, issued = await _in_thread(
            admit_kube_workspace, username, slug
        )
        spec = workspace_spec(settings, slug, username, datasets)
        airlock_ip = await self._service_ip(settings.k8s_airlock_service)
        hub_ip = await self._service_ip(settings.k8s_hub_service)
        # Addresses, not names: the pod gets no DNS, so nothing can tunnel through a resolver.
        self._hub_api_url = f"http://{hub_ip}:{ko.HUB_API_PORT}/hub/api"
        overrides = ko.spawner_overrides(
            spec, airlock_url=f"tcp://{airlock_ip}:{settings.k8s_airlock_port}"
        )
        # z2jh's own labels stay (hub.jupyter.org/network-access-hub lets the pod reach the
        # hub through the hub's NetworkPolicy); SPE's are added.
        overrides["extra_labels"] = {**self.extra_labels, **overrides["extra_labels"]}
        for name, value in overrides.items():
            setattr(self, name, value)
        self.pod_name = ko.pod_name(slug, username)
        await self._ensure(ko.serialise(ko.home_pvc(spec)), replace=False)
        await self._ensure(ko.serialise(ko.token_secret(spec, token)), replace=True)
        await self._ensure(
            ko.serialise(ko.recorder_token_secret(spec, recorder_token)), replace=True
        )
        self._token_issued = issued
        self._last_access_check = time.monotonic()

    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()
        if self._hub_api_url:
            env["JUPYTERHUB_API_URL"] = self._hub_api_url
            env["JUPYTERHUB_ACTIVITY_URL"] = f"{self._hub_api_url}/users/{self.user.name}/activity"
        return env

    async def _service_ip(self, name: str) -> str:
        service = await self.api.read_namespaced_service(name, self.namespace)
        ip = service.spec.cluster_ip if service.spec else None
        if not ip or ip == "None":
            raise WorkspaceRefused(
                f"The service {name} has no cluster address; ask the operator to check the "
                "SPE chart is installed in this namespace.",
                500,
            )
        return str(ip)

    async def _ensure(self, body: dict[str, Any], *, replace: bool) -> None:
        """Create a PVC or Secret; if it exists keep it (a home) or replace it (a token)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        kind, name = body["kind"], body["metadata"]["name"]
        create, patch = {
            "PersistentVolumeClaim": (
                self.api.create_namespaced_persistent_volume_claim,
                self.api.patch_namespaced_persistent_volume_claim,
            ),
            "Secret": (self.api.create_namespaced_secret, self.api.patch_namespaced_secret),
        }[kind]
        try:
            await create(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if replace:
                await patch(name, self.namespace, body)

    async def poll(self) -> int | None:
        status: int | None = await super().poll()
        if status is not None or not self.name:
            return status
        settings = get_settings()
        now = time.monotonic()
        if now - self._last_access_check >= self.access_check_interval:
            self._last_access_check = now
            reason = await _in_thread(_refusal_now, self.user.name, self.name)
            if reason is not None:
                self.log.warning("Stopping workspace %s: %s", self._log_name, reason)
                await _in_thread(record_stopped, self.name, self.user.name, reason)
                await self.stop(now=True)
                return 0
        lifetime = settings.workspace_token_hours * 3600
        if self._token_issued and time.time() - self._token_issued >= lifetime / 2:
            token, recorder_token, self._token_issued = await _in_thread(
                renew_token, self.user.name, self.name
            )
            spec = workspace_spec(settings, self.name, self.user.name, [])
            await self._ensure(ko.serialise(ko.token_secret(spec, token)), replace=True)
            await self._ensure(
                ko.serialise(ko.recorder_token_secret(spec, recorder_token)), replace=True
            )
        return None

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        if self.name:
            await _in_thread(
                record_stopped,
                self.name,
                self.user.name,
                "stopped by the hub (its user, the idle culler or the platform)",
            )


def kube_hub_config(settings: Settings) -> dict[str, dict[str, Any]]:
    """The traitlets SPE sets on a Zero to JupyterHub hub (pure); the chart's hub.extraConfig
    calls ``apply_kube_hub_config(c)``. z2jh's own values set the rest (proxy, culler, db)."""
    from spe.workspaces.hub_config import (
        AUTHENTICATORS,
        COOKIE_MAX_AGE_DAYS,
        NAMED_SERVER_LIMIT,
        SPAWNERS,
    )

    config: dict[str, dict[str, Any]] = {
        "JupyterHub": {
            "spawner_class": SPAWNERS["kubernetes"],
            "authenticator_class": AUTHENTICATORS[settings.hub_authenticator],
            "allow_named_servers": True,
            "named_server_limit_per_user": NAMED_SERVER_LIMIT,
            "redirect_to_server": False,
            "default_url": "/services/spe/",  # the API and pages (z2jh's hub.services.spe)
            "cookie_max_age_days": COOKIE_MAX_AGE_DAYS,
        },
        "SPEKubeSpawner": {
            "namespace": settings.k8s_namespace,
            "start_timeout": 300,  # an image pull on a fresh node
            "http_timeout": 60,
            "poll_interval": 30,
            "disable_user_config": True,
        },
        "Authenticator": {"allow_all": True, "admin_users": set()},
    }
    if settings.hub_authenticator == "oidc":
        from spe.workspaces.oidc import oidc_config

        config["SPEOIDCAuthenticator"] = oidc_config(settings)
    return config


def apply_kube_hub_config(c: Any) -> None:
    """Fill z2jh's ``c`` from SPE's settings (the SPE_* environment of the hub pod)."""
    for section, values in kube_hub_config(get_settings()).items():
        for name, value in values.items():
            setattr(getattr(c, section), name, value)
