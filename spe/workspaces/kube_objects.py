"""Kubernetes objects of a (researcher, project) workspace, built by pure functions.

Like kubespawner's ``objects.py``: values in, ``kubernetes.client`` models out, no API calls.
The spawner (``kube_spawner``) and ``spe k8s`` decide the values and send the objects.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    ApiClient,
    V1Capabilities,
    V1Container,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1IPBlock,
    V1Job,
    V1JobSpec,
    V1LabelSelector,
    V1NetworkPolicy,
    V1NetworkPolicyEgressRule,
    V1NetworkPolicyIngressRule,
    V1NetworkPolicyPeer,
    V1NetworkPolicyPort,
    V1NetworkPolicySpec,
    V1ObjectMeta,
    V1PersistentVolumeClaim,
    V1PersistentVolumeClaimSpec,
    V1PersistentVolumeClaimVolumeSource,
    V1PodSecurityContext,
    V1PodSpec,
    V1PodTemplateSpec,
    V1Probe,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1Secret,
    V1SecretVolumeSource,
    V1SecurityContext,
    V1TCPSocketAction,
    V1Volume,
    V1VolumeMount,
    V1VolumeResourceRequirements,
)

from spe.workspaces import layout

# The cloud providers' instance metadata service: credentials of the node live behind it.
METADATA_CIDR = "169.254.169.254/32"
# The pod's one open port: the recorder sidecar listens here, and only here; the notebook server
# listens on the pod's loopback (NOTEBOOK_PORT), reachable from outside only through it.
SERVER_PORT = 8888
NOTEBOOK_PORT = 8889
HUB_API_PORT = 8081
AIRLOCK_PORT = 8950
TOKEN_MOUNT = str(layout.AIRLOCK)  # the pod-bound airlock token: TOKEN_MOUNT/token
TOKEN_FILE = "token"  # noqa: S105 - a file name
WORKSPACE_UID = 1000  # the image's "researcher" user (docker/Dockerfile.workspace)
# The recorder sidecar's own uid: neither the researcher's nor the control plane pods' (10001).
RECORDER_UID = 10002
RECORDER_CONTAINER = "recorder"
# The recorder's pod-bound token: its container only.
RECORDER_TOKEN_MOUNT = "/var/run/spe-recorder"  # noqa: S105 - a folder

# z2jh's labels for its hub and proxy pods; SPE's own use app.kubernetes.io/* and spe/*.
HUB_SELECTOR = {"app": "jupyterhub", "component": "hub"}
PROXY_SELECTOR = {"app": "jupyterhub", "component": "proxy"}
AIRLOCK_SELECTOR = {"app.kubernetes.io/name": "spe", "app.kubernetes.io/component": "airlock"}
PROJECT_LABEL = "spe/project"
USER_LABEL = "spe/user"
WORKSPACE_LABEL = "spe/workspace"
DATASET_LABEL = "spe/dataset"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a readable prefix and a hash of it."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    stem = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40].strip("-") or "x"
    return f"{stem}-{_digest(text)}"


def object_name(prefix: str, *parts: str) -> str:
    """A DNS-1123 label (≤ 63) naming an object for ``parts``; unique even when shortened."""
    plain = "-".join([prefix, *parts]).lower()
    if len(plain) <= 63 and _DNS_LABEL.match(plain) and "--" not in plain:
        return plain
    stem = re.sub(r"[^a-z0-9]+", "-", plain).strip("-")[:50].strip("-")
    return f"{stem}-{_digest(prefix, *parts)}"


def pod_name(project: str, username: str) -> str:
    return object_name("spe-ws", project, username)


def home_pvc_name(project: str, username: str) -> str:
    return object_name("spe-home", project, username)


def extract_pvc_name(project: str, dataset: str) -> str:
    return object_name("spe-data", project, dataset)


def token_secret_name(project: str, username: str) -> str:
    return object_name("spe-token", project, username)


def recorder_token_secret_name(project: str, username: str) -> str:
    return object_name("spe-rectoken", project, username)


def project_policy_name(project: str) -> str:
    return object_name("spe-project", project)


def project_labels(project: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "spe",
        "app.kubernetes.io/managed-by": "spe",
        PROJECT_LABEL: label_value(project),
    }


def workspace_labels(project: str, username: str) -> dict[str, str]:
    """Labels of a workspace pod and its objects; the airlock checks them against the token."""
    return {
        **project_labels(project),
        "app.kubernetes.io/component": "workspace",
        USER_LABEL: label_value(username),
        WORKSPACE_LABEL: label_value(layout.workspace_id(project, username)),
    }


@dataclass(frozen=True)
class WorkspaceSpec:
    """What decides a workspace's objects: whose, which project, which extracts, how big."""

    project: str
    username: str
    datasets: tuple[str, ...] = ()
    image: str = "spe-workspace:latest"
    cpu: float = 1.0
    memory_mb: int = 4096
    home_size: str = "10Gi"
    tmp_size: str = "1Gi"
    storage_class: str | None = None
    namespace: str = "spe"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    recorder_image: str = "spe-controlplane:0.1.0"
    recorder_code_text_bytes: int = 1 << 20
    read_alarm_bytes: int = 64 << 10

    @property
    def workspace(self) -> str:
        return layout.workspace_id(self.project, self.username)


# --- security ----------------------------------------------------------------------------------


def pod_security_context() -> V1PodSecurityContext:
    return V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=WORKSPACE_UID,
        run_as_group=WORKSPACE_UID,
        fs_group=WORKSPACE_UID,
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context(uid: int = WORKSPACE_UID) -> V1SecurityContext:
    return V1SecurityContext(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        read_only_root_filesystem=True,
        allow_privilege_escalation=False,
        privileged=False,
        capabilities=V1Capabilities(drop=["ALL"]),
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )


# --- volumes -----------------------------------------------------------------------------------


def workspace_volumes(spec: WorkspaceSpec) -> list[V1Volume]:
    volumes = [
        V1Volume(
            name="home",
            persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                claim_name=home_pvc_name(spec.project, spec.username)
            ),
        ),
        # The root file system is read-only; /tmp is the one scratch place (size-capped).
        V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource(size_limit=spec.tmp_size)),
        V1Volume(
            name="airlock-token",
            secret=V1SecretVolumeSource(
                secret_name=token_secret_name(spec.project, spec.username),
                default_mode=0o440,
                optional=False,
            ),
        ),
        # Mounted in the recorder's container only: the notebook container has no mount of it
        # and shares no process namespace with the recorder, so the file's mode (readable by
        # the recorder's uid) gives the researcher nothing.
        V1Volume(
            name="recorder-token",
            secret=V1SecretVolumeSource(
                secret_name=recorder_token_secret_name(spec.project, spec.username),
                default_mode=0o444,
                optional=False,
            ),
        ),
    ]
    for dataset in sorted(spec.datasets):
        volumes.append(
            V1Volume(
                name=object_name("data", dataset),
                persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                    claim_name=extract_pvc_name(spec.project, dataset), read_only=True
                ),
            )
        )
    return volumes


def workspace_volume_mounts(spec: WorkspaceSpec) -> list[V1VolumeMount]:
    mounts = [
        V1VolumeMount(name="home", mount_path=str(layout.HOME)),
        V1VolumeMount(name="tmp", mount_path="/tmp"),  # noqa: S108 - an emptyDir, not the node's
        V1VolumeMount(name="airlock-token", mount_path=TOKEN_MOUNT, read_only=True),
    ]
    for dataset in sorted(spec.datasets):
        mounts.append(
            V1VolumeMount(
                name=object_name("data", dataset),
                mount_path=f"{layout.DATA}/{dataset}",
                read_only=True,
            )
        )
    return mounts


def home_pvc(spec: WorkspaceSpec) -> V1PersistentVolumeClaim:
    """The home of one (researcher, project): read-write, for this workspace only."""
    return V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=V1ObjectMeta(
            name=home_pvc_name(spec.project, spec.username),
            namespace=spec.namespace,
            labels=workspace_labels(spec.project, spec.username),
        ),
        spec=V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=V1VolumeResourceRequirements(requests={"storage": spec.home_size}),
            storage_class_name=spec.storage_class,
        ),
    )


def extract_pvc(
    project: str,
    dataset: str,
    *,
    size: str = "10Gi",
    storage_class: str | None = None,
    namespace: str = "spe",
) -> V1PersistentVolumeClaim:
    """One project extract, ReadOnlyMany: every workspace of the project mounts it, none writes."""
    return V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=V1ObjectMeta(
            name=extract_pvc_name(project, dataset),
            namespace=namespace,
            labels={**project_labels(project), DATASET_LABEL: label_value(dataset)},
        ),
        spec=V1PersistentVolumeClaimSpec(
            access_modes=["ReadOnlyMany"],
            resources=V1VolumeResourceRequirements(requests={"storage": size}),
            storage_class_name=storage_class,
        ),
    )


def extract_fill_job(
    project: str,
    dataset: str,
    source: str,
    version: str,
    *,
    data_claim: str,
    image: str,
    namespace: str = "spe",
) -> V1Job:
    """Copy one extract version (``source``: its folder in SPE's data volume) into the
    project's extract PVC, once per version. Access modes are not enforced once mounted, so
    this one writer fills the ReadOnlyMany claim before workspaces mount it read-only."""
    script = 'find /extract -mindepth 1 -delete && cp -R "/data/$SOURCE/." /extract/'
    labels = {**project_labels(project), DATASET_LABEL: label_value(dataset)}
    return V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(
            name=object_name("spe-fill", project, dataset, version[:12]),
            namespace=namespace,
            labels=labels,
        ),
        spec=V1JobSpec(
            backoff_limit=3,
            ttl_seconds_after_finished=86400,
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=labels),
                spec=V1PodSpec(
                    restart_policy="Never",
                    automount_service_account_token=False,
                    enable_service_links=False,
                    security_context=pod_security_context(),
                    containers=[
                        V1Container(
                            name="fill",
                            image=image,
                            command=["sh", "-c", script],
                            env=[V1EnvVar(name="SOURCE", value=source)],
                            security_context=container_security_context(),
                            volume_mounts=[
                                V1VolumeMount(name="data", mount_path="/data", read_only=True),
                                V1VolumeMount(name="extract", mount_path="/extract"),
                            ],
                        )
                    ],
                    volumes=[
                        V1Volume(
                            name="data",
                            persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                                claim_name=data_claim, read_only=True
                            ),
                        ),
                        V1Volume(
                            name="extract",
                            persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                                claim_name=extract_pvc_name(project, dataset)
                            ),
                        ),
                    ],
                ),
            ),
        ),
    )


def token_secret(spec: WorkspaceSpec, token: str) -> V1Secret:
    """The workspace's pod-bound airlock token, mounted read-only at TOKEN_MOUNT/token."""
    return V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=V1ObjectMeta(
            name=token_secret_name(spec.project, spec.username),
            namespace=spec.namespace,
            labels=workspace_labels(spec.project, spec.username),
        ),
        string_data={TOKEN_FILE: token},
    )


def recorder_token_secret(spec: WorkspaceSpec, token: str) -> V1Secret:
    """The recorder sidecar's token (role "recorder"), at RECORDER_TOKEN_MOUNT/token in its
    container only: with it the TCP airlock stores records as the recorder's own."""
    return V1Secret(
        api_version="v1",
        kind="Secret",
        type="Opaque",
        metadata=V1ObjectMeta(
            name=recorder_token_secret_name(spec.project, spec.username),
            namespace=spec.namespace,
            labels=workspace_labels(spec.project, spec.username),
        ),
        string_data={TOKEN_FILE: token},
    )


def recorder_container(spec: WorkspaceSpec, *, airlock_url: str) -> V1Container:
    """The recorder sidecar (spe.hub.recorder in sidecar mode): the pod's open port, forwarding
    to the notebook server on the pod's loopback, recording through the TCP airlock with its
    own token, under its own uid, with nothing of the researcher's mounted."""
    return V1Container(
        name=RECORDER_CONTAINER,
        image=spec.recorder_image,
        image_pull_policy="IfNotPresent",
        command=[
            "python",
            "-I",
            "-m",
            "spe.hub.recorder",
            f"--listen=0.0.0.0:{SERVER_PORT}",
            f"--upstream=tcp://127.0.0.1:{NOTEBOOK_PORT}",
            f"--airlock-url={airlock_url}",
            f"--token-file={RECORDER_TOKEN_MOUNT}/{TOKEN_FILE}",
            f"--code-text-bytes={spec.recorder_code_text_bytes}",
            f"--read-alarm-bytes={spec.read_alarm_bytes}",
            f"--workspace={spec.workspace}",
        ],
        env=[V1EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1")],
        # A native sidecar (an init container that keeps running): it holds the pod's port
        # before the notebook container starts, so no process of the researcher's can take it
        # first; the kubelet restarts it if it ends. No port is declared: kubespawner already
        # declares the pod's port on the notebook container (a declaration only).
        restart_policy="Always",
        startup_probe=V1Probe(
            tcp_socket=V1TCPSocketAction(port=SERVER_PORT),
            period_seconds=1,
            failure_threshold=30,
        ),
        security_context=container_security_context(RECORDER_UID),
        resources=V1ResourceRequirements(
            requests={"cpu": "50m", "memory": "64Mi"},
            limits={"cpu": "1", "memory": "256Mi"},
        ),
        volume_mounts=[
            V1VolumeMount(name="recorder-token", mount_path=RECORDER_TOKEN_MOUNT, read_only=True)
        ],
    )


# --- network -----------------------------------------------------------------------------------


def ip_block(cidr: str) -> V1IPBlock:
    """An ipBlock that never includes the cloud metadata address, however wide it is."""
    network = ipaddress.ip_network(cidr, strict=False)
    metadata = ipaddress.ip_network(METADATA_CIDR)
    excepted = None
    if network.version == 4 and metadata.subnet_of(network):  # type: ignore[arg-type]
        if network == metadata:
            raise ValueError(f"{cidr} is the cloud metadata address; it is never allowed.")
        excepted = [METADATA_CIDR]
    return V1IPBlock(cidr=str(network), _except=excepted)


def _peer(selector: Mapping[str, str]) -> V1NetworkPolicyPeer:
    return V1NetworkPolicyPeer(pod_selector=V1LabelSelector(match_labels=dict(selector)))


def project_network_policy(
    project: str,
    *,
    namespace: str = "spe",
    airlock_port: int = AIRLOCK_PORT,
    airlock_cidr: str | None = None,
) -> V1NetworkPolicy:
    """Ingress only from the hub's proxy (and the hub's start-up check) to the server port;
    egress only to the airlock and the hub's API (which jupyterhub-singleuser needs for logins
    and activity). No DNS: the spawner hands out service addresses, so there is no resolver
    to tunnel through. ``airlock_cidr`` names an airlock outside the cluster (ipBlock, never
    including the metadata address)."""
    airlock_peer = (
        V1NetworkPolicyPeer(ip_block=ip_block(airlock_cidr))
        if airlock_cidr
        else _peer(AIRLOCK_SELECTOR)
    )
    return V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=V1ObjectMeta(
            name=project_policy_name(project), namespace=namespace, labels=project_labels(project)
        ),
        spec=V1NetworkPolicySpec(
            pod_selector=V1LabelSelector(
                match_labels={
                    "app.kubernetes.io/component": "workspace",
                    PROJECT_LABEL: label_value(project),
                }
            ),
            policy_types=["Ingress", "Egress"],
            ingress=[
                V1NetworkPolicyIngressRule(
                    _from=[_peer(PROXY_SELECTOR), _peer(HUB_SELECTOR)],
                    ports=[V1NetworkPolicyPort(port=SERVER_PORT, protocol="TCP")],
                )
            ],
            egress=[
                V1NetworkPolicyEgressRule(
                    to=[airlock_peer],
                    ports=[V1NetworkPolicyPort(port=airlock_port, protocol="TCP")],
                ),
                V1NetworkPolicyEgressRule(
                    to=[_peer(HUB_SELECTOR)],
                    ports=[V1NetworkPolicyPort(port=HUB_API_PORT, protocol="TCP")],
                ),
            ],
        ),
    )


def default_deny_policy(namespace: str = "spe") -> V1NetworkPolicy:
    """Every workspace pod, labelled with a project or not: nothing in, nothing out, unless a
    project's policy allows it (policies only ever add allowances)."""
    return V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=V1ObjectMeta(
            name="spe-workspaces-deny-all",
            namespace=namespace,
            labels={"app.kubernetes.io/name": "spe", "app.kubernetes.io/managed-by": "spe"},
        ),
        spec=V1NetworkPolicySpec(
            pod_selector=V1LabelSelector(match_labels={"app.kubernetes.io/component": "workspace"}),
            policy_types=["Ingress", "Egress"],
            ingress=[],
            egress=[],
        ),
    )


# --- what the spawner applies ------------------------------------------------------------------


def serialise(obj: Any) -> Any:
    """A model (or list of them) as the camelCase dict the API and kubespawner's traits take.

    ``kubernetes.client`` models go through its ``ApiClient``; kubespawner builds its pod with
    ``kubernetes_asyncio`` models, whose ApiClient needs a running loop, so those are walked
    here the same way (attribute_map gives the camelCase names, None is left out)."""
    plain = type(obj).__module__.startswith("kubernetes.client") or isinstance(obj, (list, dict))
    if plain and not _has_foreign_models(obj):
        return ApiClient().sanitize_for_serialization(obj)
    if isinstance(obj, (list, tuple)):
        return [serialise(item) for item in obj]
    if isinstance(obj, dict):
        return {key: serialise(value) for key, value in obj.items()}
    if hasattr(obj, "openapi_types") and hasattr(obj, "attribute_map"):
        return {
            obj.attribute_map[name]: serialise(getattr(obj, name))
            for name in obj.openapi_types
            if getattr(obj, name) is not None
        }
    return ApiClient().sanitize_for_serialization(obj)


def _has_foreign_models(obj: Any) -> bool:
    if isinstance(obj, (list, tuple)):
        return any(_has_foreign_models(item) for item in obj)
    if isinstance(obj, dict):
        return any(_has_foreign_models(value) for value in obj.values())
    return hasattr(obj, "openapi_types") and not type(obj).__module__.startswith(
        "kubernetes.client"
    )


def spawner_overrides(
    spec: WorkspaceSpec, *, airlock_url: str, recorder_airlock_url: str | None = None
) -> dict[str, Any]:
    """KubeSpawner trait values for the workspace (kubespawner_override of its profile): the
    notebook container on the pod's loopback, and the recorder sidecar on the pod's port."""
    env = {
        "SPE_WORKSPACE_DATA_DIR": str(layout.DATA),
        "SPE_OUTBOX_DIR": str(layout.OUTBOX),
        "SPE_WORKSPACE_AIRLOCK_URL": airlock_url,
        "SPE_WORKSPACE_AIRLOCK_TOKEN_FILE": f"{TOKEN_MOUNT}/{TOKEN_FILE}",
        "HOME": str(layout.HOME),
        "PYTHONNOUSERSITE": "1",
        **spec.extra_env,
    }
    overrides: dict[str, Any] = {
        "image": spec.image,
        "image_pull_policy": "IfNotPresent",
        "cpu_limit": spec.cpu,
        "cpu_guarantee": min(spec.cpu, 0.1),
        "mem_limit": f"{spec.memory_mb}M",
        "mem_guarantee": f"{min(spec.memory_mb, 512)}M",
        "extra_labels": workspace_labels(spec.project, spec.username),
        "uid": WORKSPACE_UID,
        "gid": WORKSPACE_UID,
        "fs_gid": WORKSPACE_UID,
        "pod_security_context": serialise(pod_security_context()),
        "container_security_context": serialise(container_security_context()),
        "allow_privilege_escalation": False,
        "automount_service_account_token": False,
        "service_account": None,
        "volumes": serialise(workspace_volumes(spec)),
        "volume_mounts": serialise(workspace_volume_mounts(spec)),
        "working_dir": str(layout.HOME),
        "notebook_dir": str(layout.HOME),
        # The pod's port, which the proxy and the hub's check reach: the recorder's. The notebook
        # server is told (its command line wins over JupyterHub's URL) to listen on loopback.
        "port": SERVER_PORT,
        "args": ["--ServerApp.ip=127.0.0.1", f"--ServerApp.port={NOTEBOOK_PORT}"],
        "init_containers": [
            serialise(recorder_container(spec, airlock_url=recorder_airlock_url or airlock_url))
        ],
        "environment": env,
        # SPE makes the home PVC itself (spe k8s / the spawner): kubespawner's own is off.
        "storage_pvc_ensure": False,
        # No resolver: lookups fail at once on loopback instead of waiting for a blocked DNS.
        "extra_pod_config": {
            "enableServiceLinks": False,
            "hostNetwork": False,
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["127.0.0.1"]},
            # The default, said aloud: the notebook container cannot see the recorder's
            # processes (nor reach its memory or its token through /proc/<pid>/root).
            "shareProcessNamespace": False,
        },
    }
    return overrides


def workspace_profiles(projects: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """KubeSpawner profiles: one per project the user may open now, and nothing else."""
    return [
        {
            "display_name": title or slug,
            "slug": slug,
            "description": f"Project {slug}: only this project's data, read-only.",
        }
        for slug, title in projects
    ]
