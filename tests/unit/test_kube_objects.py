"""Workspace objects for Kubernetes, tested as objects (no cluster here): each validates against
the Kubernetes schemas of the two newest versions kubernetes-validate ships, and for any project
and user the policy lets nothing out but the airlock (and the hub's API), the data is read-only
and the container runs unprivileged. The pod is built by kubespawner's own make_pod from the
overrides, as KubeSpawner sends it. The recorder sidecar (issue 15) runs under its own uid on the
pod's one open port, with its own token mounted in its container only, and the notebook server
listens on the pod's loopback."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import all_versions
from kubespawner.objects import make_pod

from spe.k8s.provision import project_objects
from spe.workspaces import kube_objects as ko

VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))[-2:]
AIRLOCK_URL = "tcp://10.96.0.20:8950"

projects = st.from_regex(r"\A[a-z0-9][a-z0-9-]{1,62}\Z")
users = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")
datasets = st.lists(st.from_regex(r"\A[a-z][a-z0-9_]{0,40}\Z"), max_size=4, unique=True)


def test_the_two_newest_kubernetes_versions_are_checked() -> None:
    assert len(VERSIONS) == 2 and VERSIONS[-1] == kubernetes_validate.latest_version()


def workspace_pod(spec: ko.WorkspaceSpec) -> dict[str, Any]:
    """The pod KubeSpawner makes with SPE's overrides, as the API receives it."""
    o = ko.spawner_overrides(spec, airlock_url=AIRLOCK_URL)
    pod = make_pod(
        name=ko.pod_name(spec.project, spec.username),
        cmd=["jupyterhub-singleuser", *o["args"]],
        port=o["port"],
        image=o["image"],
        image_pull_policy=o["image_pull_policy"],
        uid=o["uid"],
        gid=o["gid"],
        fs_gid=o["fs_gid"],
        allow_privilege_escalation=o["allow_privilege_escalation"],
        container_security_context=o["container_security_context"],
        pod_security_context=o["pod_security_context"],
        env=o["environment"],
        working_dir=o["working_dir"],
        volumes=o["volumes"],
        volume_mounts=o["volume_mounts"],
        labels=o["extra_labels"],
        cpu_limit=o["cpu_limit"],
        cpu_guarantee=o["cpu_guarantee"],
        mem_limit=o["mem_limit"],
        mem_guarantee=o["mem_guarantee"],
        automount_service_account_token=o["automount_service_account_token"],
        extra_pod_config=o["extra_pod_config"],
        init_containers=o["init_containers"],
    )
    serialised: dict[str, Any] = ko.serialise(pod)
    return serialised


def all_objects(spec: ko.WorkspaceSpec) -> list[dict[str, Any]]:
    built = [
        workspace_pod(spec),
        ko.serialise(ko.home_pvc(spec)),
        ko.serialise(ko.token_secret(spec, "spe1.x.y")),
        ko.serialise(ko.project_network_policy(spec.project)),
        ko.serialise(ko.project_network_policy(spec.project, airlock_cidr="10.0.0.0/8")),
        ko.serialise(ko.default_deny_policy()),
    ]
    extracts = {d: (f"projects/{spec.project}/{d}/v1", "0" * 32) for d in spec.datasets}
    built += [body for _, body in project_objects(spec.project, extracts, namespace="spe")]
    return built


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(version: str) -> None:
    spec = ko.WorkspaceSpec("income-study", "dave", ("income", "population"))
    for body in [*all_objects(spec), ko.serialise(ko.recorder_token_secret(spec, "spe1.x.z"))]:
        kubernetes_validate.validate(body, version, strict=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(projects, users, datasets)
def test_objects_for_any_names_validate(project: str, user: str, names: list[str]) -> None:
    spec = ko.WorkspaceSpec(project, user, tuple(names))
    for body in all_objects(spec):
        for version in VERSIONS:
            kubernetes_validate.validate(body, version, strict=True)


def _selects(peer: dict[str, Any]) -> dict[str, str]:
    assert set(peer) == {"podSelector"}, peer  # no ipBlock, no namespaceSelector
    labels: dict[str, str] = peer["podSelector"]["matchLabels"]
    return labels


@given(projects)
def test_the_policy_lets_nothing_out_but_the_airlock_and_the_hub_api(project: str) -> None:
    policy = ko.serialise(ko.project_network_policy(project))["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["podSelector"]["matchLabels"][ko.PROJECT_LABEL] == ko.label_value(project)
    allowed = set()
    for rule in policy["egress"]:
        ports = {(p["port"], p["protocol"]) for p in rule["ports"]}
        for peer in rule["to"]:
            allowed |= {(tuple(sorted(_selects(peer).items())), port) for port in ports}
    assert allowed == {
        (tuple(sorted(ko.AIRLOCK_SELECTOR.items())), (ko.AIRLOCK_PORT, "TCP")),
        (tuple(sorted(ko.HUB_SELECTOR.items())), (ko.HUB_API_PORT, "TCP")),
    }  # in particular no DNS (port 53) and no address block
    (ingress,) = policy["ingress"]
    assert [_selects(p) for p in ingress["from"]] == [ko.PROXY_SELECTOR, ko.HUB_SELECTOR]
    assert ingress["ports"] == [{"port": ko.SERVER_PORT, "protocol": "TCP"}]


def test_the_default_policy_denies_every_workspace_everything() -> None:
    spec = ko.serialise(ko.default_deny_policy())["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "workspace"}
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert not spec.get("egress") and not spec.get("ingress")


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "169.254.0.0/16", "160.0.0.0/4"])
def test_any_address_block_excludes_the_cloud_metadata_address(cidr: str) -> None:
    block = ko.serialise(ko.project_network_policy("p1", airlock_cidr=cidr))["spec"]["egress"][0]
    assert block["to"][0]["ipBlock"]["except"] == [ko.METADATA_CIDR]


def test_the_metadata_address_itself_is_never_allowed() -> None:
    with pytest.raises(ValueError, match="metadata"):
        ko.ip_block("169.254.169.254/32")
    assert "except" not in ko.serialise(ko.ip_block("10.0.0.0/8"))


@given(projects, users, datasets)
def test_data_is_read_only_and_the_container_unprivileged(
    project: str, user: str, names: list[str]
) -> None:
    pod = workspace_pod(ko.WorkspaceSpec(project, user, tuple(names)))
    spec = pod["spec"]
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    del volumes["recorder-token"]  # the sidecar's (test below)
    data_mounts = [m for m in container["volumeMounts"] if m["mountPath"].startswith("/data")]
    assert len(data_mounts) == len(names)
    for mount in data_mounts:
        assert mount["readOnly"] is True
        claim = volumes[mount["name"]]["persistentVolumeClaim"]
        assert claim["readOnly"] is True
        assert claim["claimName"].startswith("spe-data-")
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/home/researcher", "/tmp"}
    assert "emptyDir" in volumes["tmp"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec.get("hostNetwork") is False and spec.get("enableServiceLinks") is False
    assert spec["dnsPolicy"] == "None" and spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}
    assert "serviceAccountName" not in spec


def test_extract_volumes_are_read_only_many_and_homes_read_write_once() -> None:
    spec = ko.WorkspaceSpec("p1", "dave", ("income",))
    assert ko.serialise(ko.extract_pvc("p1", "income"))["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert ko.serialise(ko.home_pvc(spec))["spec"]["accessModes"] == ["ReadWriteOnce"]


@given(projects, users)
def test_names_are_valid_labels_and_differ_per_workspace(project: str, user: str) -> None:
    dns = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for name in (ko.pod_name(project, user), ko.home_pvc_name(project, user)):
        assert len(name) <= 63 and dns.match(name)
    assert ko.pod_name(project, user) != ko.pod_name(project, user + "x")
    for value in ko.workspace_labels(project, user).values():
        assert re.match(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", value)
        assert len(value) <= 63


def test_a_user_gets_a_profile_for_each_open_project_and_nothing_else() -> None:
    profiles = ko.workspace_profiles([("income", "Income"), ("health", "")])
    assert [p["slug"] for p in profiles] == ["income", "health"]
    assert [p["display_name"] for p in profiles] == ["Income", "health"]
    assert all("kubespawner_override" not in p for p in profiles)  # values come at start


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(projects, users, datasets)
def test_the_recorder_sidecar_is_the_only_way_in_under_its_own_uid(
    project: str, user: str, names: list[str]
) -> None:
    """The pod's open port (the one the NetworkPolicy lets the proxy reach) is the recorder's; the
    notebook server is told to listen on the pod's loopback; the recorder runs under a uid that
    is neither the researcher's nor root, sees nothing of the researcher's, and holds the only
    mount of its token. What a cluster would add to this: that the kubelet starts the native
    sidecar before the notebook container, and that loopback is not reachable from other pods
    (tests/integration/test_kube_airlock.py runs the recorder in sidecar mode for real)."""
    spec = ko.WorkspaceSpec(project, user, tuple(names))
    pod = workspace_pod(spec)["spec"]
    (notebook,) = pod["containers"]
    (recorder,) = pod["initContainers"]
    assert recorder["name"] == ko.RECORDER_CONTAINER and recorder["restartPolicy"] == "Always"
    assert recorder["startupProbe"]["tcpSocket"]["port"] == ko.SERVER_PORT
    args = notebook["args"]
    assert "--ServerApp.ip=127.0.0.1" in args and f"--ServerApp.port={ko.NOTEBOOK_PORT}" in args
    command = recorder["command"]
    assert command[:4] == ["python", "-I", "-m", "spe.hub.recorder"]
    assert f"--listen=0.0.0.0:{ko.SERVER_PORT}" in command
    assert f"--upstream=tcp://127.0.0.1:{ko.NOTEBOOK_PORT}" in command
    assert f"--airlock-url={AIRLOCK_URL}" in command
    assert f"--workspace={spec.workspace}" in command
    sc = recorder["securityContext"]
    assert sc["runAsUser"] == sc["runAsGroup"] == ko.RECORDER_UID
    assert ko.RECORDER_UID not in (0, ko.WORKSPACE_UID, notebook["securityContext"]["runAsUser"])
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert recorder["resources"]["limits"]["memory"]
    # Its token in its container only; none of the researcher's volumes in it.
    assert recorder["volumeMounts"] == [
        {"mountPath": ko.RECORDER_TOKEN_MOUNT, "name": "recorder-token", "readOnly": True}
    ]
    assert "recorder-token" not in {m["name"] for m in notebook["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes["recorder-token"]["secret"]["secretName"]
        == ko.recorder_token_secret_name(project, user)
        != ko.token_secret_name(project, user)
    )
    assert pod["shareProcessNamespace"] is False
    # The policy still opens only SERVER_PORT, now the recorder's.
    (ingress,) = ko.serialise(ko.project_network_policy(project))["spec"]["ingress"]
    assert ingress["ports"] == [{"port": ko.SERVER_PORT, "protocol": "TCP"}]
