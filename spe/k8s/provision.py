"""A project's objects on the cluster: its extract volumes (ReadOnlyMany) and network policy.

``apply_project`` creates them, or patches what exists (409), so running it twice changes
nothing; ``delete_project`` removes them, workspace homes and tokens included, and records a
signed certificate. The cluster is reached through ``ClusterApi`` (a fake one in the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from spe.accounts.models import Role, User
from spe.accounts.permissions import holds
from spe.audit import record, state_change
from spe.audit.canonical import canonical_json
from spe.db.base import utcnow
from spe.errors import PermissionDenied
from spe.k8s import KubernetesError
from spe.projects.models import Project, ProjectStatus
from spe.workspaces import kube_objects

PVC, POLICY, SECRET, JOB = "PersistentVolumeClaim", "NetworkPolicy", "Secret", "Job"


class ClusterApi(Protocol):
    """The few calls provisioning makes; ``status`` 409 / 404 come back as ConflictOrMissing."""

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> None: ...
    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...
    def names(self, kind: str, namespace: str, label_selector: str) -> list[str]: ...


class ConflictOrMissing(Exception):
    """The cluster answered 409 (exists already) or 404 (not there)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def load_cluster_config() -> None:
    """The cluster's credentials: in-cluster (a pod's service account), else KUBECONFIG."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError, TypeError):
            raise KubernetesError(
                "No Kubernetes cluster is configured: run inside the cluster or set KUBECONFIG."
            ) from None


class KubernetesClusterApi:
    """``ClusterApi`` over the ``kubernetes`` client (in-cluster config, or KUBECONFIG)."""

    def __init__(self) -> None:
        from kubernetes import client

        load_cluster_config()
        core, net, batch = client.CoreV1Api(), client.NetworkingV1Api(), client.BatchV1Api()
        self._calls: dict[str, tuple[Callable[..., Any], ...]] = {
            PVC: (
                core.create_namespaced_persistent_volume_claim,
                core.patch_namespaced_persistent_volume_claim,
                core.delete_namespaced_persistent_volume_claim,
                core.list_namespaced_persistent_volume_claim,
            ),
            POLICY: (
                net.create_namespaced_network_policy,
                net.patch_namespaced_network_policy,
                net.delete_namespaced_network_policy,
                net.list_namespaced_network_policy,
            ),
            SECRET: (
                core.create_namespaced_secret,
                core.patch_namespaced_secret,
                core.delete_namespaced_secret,
                core.list_namespaced_secret,
            ),
            JOB: (
                batch.create_namespaced_job,
                batch.patch_namespaced_job,
                batch.delete_namespaced_job,
                batch.list_namespaced_job,
            ),
        }

    def _call(self, kind: str, which: int, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._calls[kind][which](*args, **kwargs)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise ConflictOrMissing(exc.status) from None
            raise KubernetesError(
                f"The cluster refused a {kind} call ({exc.status} {exc.reason})."
            ) from None

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> None:
        self._call(kind, 0, namespace, body)

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self._call(kind, 1, name, namespace, body)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        # A Job's pods go with it.
        extra = {"propagation_policy": "Background"} if kind == JOB else {}
        self._call(kind, 2, name, namespace, **extra)

    def names(self, kind: str, namespace: str, label_selector: str) -> list[str]:
        found = self._call(kind, 3, namespace, label_selector=label_selector)
        return sorted(item.metadata.name for item in found.items)


@dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    outcome: str  # "created" | "updated" | "unchanged" | "deleted" | "absent"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "outcome": self.outcome}


def project_objects(
    project: str,
    extracts: dict[str, tuple[str, str]],
    *,
    namespace: str,
    extract_size: str = "10Gi",
    storage_class: str | None = None,
    airlock_port: int = kube_objects.AIRLOCK_PORT,
    data_claim: str = "spe-data",
    image: str = "spe-controlplane:0.1.0",
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, body) of everything a project needs on the cluster, in apply order; ``extracts``
    maps each granted dataset to (folder in the data volume, extract version)."""
    objects: list[tuple[str, Any]] = [
        (POLICY, kube_objects.default_deny_policy(namespace)),
        (
            POLICY,
            kube_objects.project_network_policy(
                project, namespace=namespace, airlock_port=airlock_port
            ),
        ),
    ]
    for dataset, (folder, version) in sorted(extracts.items()):
        objects.append(
            (
                PVC,
                kube_objects.extract_pvc(
                    project,
                    dataset,
                    size=extract_size,
                    storage_class=storage_class,
                    namespace=namespace,
                ),
            )
        )
        objects.append(
            (
                JOB,
                kube_objects.extract_fill_job(
                    project,
                    dataset,
                    folder,
                    version,
                    data_claim=data_claim,
                    image=image,
                    namespace=namespace,
                ),
            )
        )
    return [(kind, kube_objects.serialise(body)) for kind, body in objects]


def _patch_of(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    # A claim's spec is immutable but for its size; a policy is patched whole.
    if kind == PVC:
        return {
            "metadata": {"labels": body["metadata"]["labels"]},
            "spec": {"resources": body["spec"]["resources"]},
        }
    return body


def _check_operator(actor: User) -> None:
    if not holds(actor, Role.OPERATOR):
        raise PermissionDenied(
            "Only an operator provisions projects on the cluster; ask one to run this."
        )


def _settings_values() -> dict[str, Any]:
    from spe.config import get_settings

    settings = get_settings()
    return {
        "namespace": settings.k8s_namespace,
        "extract_size": settings.k8s_extract_size,
        "storage_class": settings.k8s_extract_storage_class or None,
        "airlock_port": settings.k8s_airlock_port,
        "data_claim": settings.k8s_data_claim,
        "image": settings.k8s_controlplane_image,
    }


@state_change("k8s.project_apply")
def apply_project(
    session: Session, actor: User, project: Project, api: ClusterApi
) -> list[Applied]:
    """Create or update the project's extract volumes and policies, and fill each volume with
    its current extract (once per extract version); idempotent."""
    from pathlib import PurePosixPath

    from spe.projects.extracts import current_extracts

    _check_operator(actor)
    if project.status != ProjectStatus.APPROVED:
        raise KubernetesError(
            f"Project {project.slug} is {project.status.value}; only an approved project gets "
            "volumes and policies on the cluster."
        )
    values = _settings_values()
    namespace = values["namespace"]
    done: list[Applied] = []
    extracts = {
        name: (str(PurePosixPath(row.path).parent), str(row.dataset_version_id))
        for name, row in current_extracts(session, project).items()
    }
    for kind, body in project_objects(project.slug, extracts, **values):
        name = body["metadata"]["name"]
        try:
            api.create(kind, namespace, body)
            done.append(Applied(kind, name, "created"))
        except ConflictOrMissing as exc:
            if exc.status != 409:
                raise KubernetesError(
                    f"Namespace {namespace} does not exist; create it first."
                ) from None
            if kind == JOB:  # this version was copied already; a Job is not patched
                done.append(Applied(kind, name, "unchanged"))
                continue
            api.patch(kind, namespace, name, _patch_of(kind, body))
            done.append(Applied(kind, name, "updated"))
    record(
        session,
        actor,
        "k8s.project_apply",
        f"project:{project.slug}",
        {"namespace": namespace, "objects": [a.as_dict() for a in done]},
        project=project.slug,
    )
    return done


@state_change("k8s.project_delete")
def delete_project(
    session: Session, actor: User, project: Project, api: ClusterApi
) -> dict[str, Any]:
    """Remove the project's volumes (extracts and workspace homes), tokens and policy from the
    cluster, and record a signed certificate of what was removed. The project must be closed."""
    from spe.keys.signing import checkpoint_signer

    _check_operator(actor)
    if project.status != ProjectStatus.CLOSED:
        raise KubernetesError(
            f"Project {project.slug} is {project.status.value}; close it first "
            f"(`spe project close {project.slug}`), then delete its cluster objects."
        )
    namespace = _settings_values()["namespace"]
    selector = f"{kube_objects.PROJECT_LABEL}={kube_objects.label_value(project.slug)}"
    removed: list[Applied] = []
    for kind in (JOB, SECRET, PVC, POLICY):
        for name in api.names(kind, namespace, selector):
            try:
                api.delete(kind, namespace, name)
                removed.append(Applied(kind, name, "deleted"))
            except ConflictOrMissing:
                removed.append(Applied(kind, name, "absent"))  # gone meanwhile
    certificate = {
        "kind": "spe-k8s-deletion-certificate/v1",
        "project": project.slug,
        "project_id": str(project.id),
        "namespace": namespace,
        "destroyed_at": utcnow().isoformat(),
        "destroyed_by": actor.username,
        "objects": [a.as_dict() for a in removed],
    }
    signer = checkpoint_signer(session)
    message = b"SPE deletion certificate v1\n" + canonical_json(certificate).encode()
    signed = {**certificate, "key_id": signer.key_id, "signature": signer.sign(message)}
    record(
        session,
        actor,
        "k8s.project_delete",
        f"project:{project.slug}",
        signed,
        project=project.slug,
    )
    return signed
