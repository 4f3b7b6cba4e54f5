"""Kubernetes pod settings translated into `podman run` options, one by one. A setting this
translation does not know fails the test that uses it: a pod cannot gain a setting that the
container tests silently leave untried."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
CONTAINER_SECURITY = {
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "privileged",
    "capabilities",
    "seccompProfile",
}
CONTAINER_KEYS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "envFrom",  # resolved by the caller (``env``)
    "securityContext",
    "resources",
    "volumeMounts",
    "workingDir",
    # Not translated, on purpose: declarations and the kubelet's own checks (the tests wait for
    # the ports themselves); a native sidecar's restartPolicy (started first here too).
    "ports",
    "restartPolicy",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "lifecycle",
}


def quantity(text: str | float) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if str(text).endswith(unit):
            return float(str(text)[: -len(unit)]) * units[unit]
    return float(text)


def volume_sources(
    pod_spec: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]], root: Path
) -> dict[str, str]:
    """A host folder per pod volume, as the kubelet prepares it: claims and emptyDirs owned by
    the pod's fsGroup (group-writable, setgid); a Secret's or ConfigMap's keys as files (a
    Secret's with its mode and the fsGroup's group). ``objects``: Secrets and ConfigMaps by (kind,
    name)."""
    group = pod_spec.get("securityContext", {}).get("fsGroup", 0)
    out = {}
    for volume in pod_spec.get("volumes", []):
        folder = root / volume["name"]
        folder.mkdir(parents=True)
        os.chown(folder, 0, group)
        source = volume.get("secret") or volume.get("configMap")
        if source is not None:
            kind = "Secret" if "secret" in volume else "ConfigMap"
            found = objects[(kind, source.get("secretName") or source.get("name"))]
            items = {k: v.encode() for k, v in found.get("stringData", {}).items()}
            for key, value in found.get("data", {}).items():
                items[key] = (
                    base64.b64decode(value) if found["kind"] == "Secret" else value.encode()
                )
            paths = {i["key"]: i["path"] for i in source.get("items", [])} or {k: k for k in items}
            for key, path_name in paths.items():
                path = folder / path_name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(items[key])
                os.chown(path, 0, group)
                path.chmod(source.get("defaultMode", 0o644))
            folder.chmod(0o755)
        elif "persistentVolumeClaim" in volume or "emptyDir" in volume:
            folder.chmod(0o2775)
        else:
            raise AssertionError(f"volume {volume['name']}: a kind this test does not stand in for")
        out[volume["name"]] = str(folder)
    return out


def podman_run_args(
    pod_spec: dict[str, Any],
    container: dict[str, Any],
    sources: dict[str, str],
    env: dict[str, str] | None = None,
) -> list[str]:
    """`podman run` options, image and command for one container of a pod. ``env``: the
    container's environment where it refers to objects of a cluster (given resolved)."""
    pod_sc = pod_spec.get("securityContext", {})
    sc = container.get("securityContext", {})
    assert set(pod_sc) <= POD_SECURITY, f"untranslated pod setting {set(pod_sc) - POD_SECURITY}"
    assert set(sc) <= CONTAINER_SECURITY, f"untranslated setting {set(sc) - CONTAINER_SECURITY}"
    assert set(container) <= CONTAINER_KEYS, f"untranslated {set(container) - CONTAINER_KEYS}"
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
    assert uid is not None, "no runAsUser: the image's user would run"
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        assert uid != 0, "runAsNonRoot with runAsUser 0"
    args = ["--pull=never", "--user", f"{uid}:{gid}"]
    if "fsGroup" in pod_sc:
        args += ["--group-add", str(pod_sc["fsGroup"])]
    if sc.get("readOnlyRootFilesystem"):
        # podman would add writable tmpfs on /tmp, /run and /var/tmp; Kubernetes does not.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    assert not sc.get("privileged")
    capabilities = sc.get("capabilities", {})
    assert not capabilities.get("add")
    if "ALL" in capabilities.get("drop", []):
        args += ["--cap-drop", "ALL"]
    seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile")
    assert seccomp == {"type": "RuntimeDefault"}, seccomp  # podman's default profile
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        args += ["--cpus", str(quantity(limits["cpu"]))]
    if "memory" in limits:
        args += ["--memory", str(int(quantity(limits["memory"])))]
    if env is None:
        assert "envFrom" not in container, "envFrom: the caller resolves the environment"
        env = {}
        for item in container.get("env", []):
            assert "value" in item, f"env {item['name']}: only plain values are translated"
            env[item["name"]] = str(item["value"])
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    if "workingDir" in container:
        args += ["--workdir", container["workingDir"]]
    for mount in container.get("volumeMounts", []):
        mode = "ro" if mount.get("readOnly") else "rw"
        host = sources[mount["name"]]
        if mount.get("subPath"):
            host = str(Path(host) / mount["subPath"])
        args += ["--volume", f"{host}:{mount['mountPath']}:{mode}"]
    if container.get("command"):
        args += ["--entrypoint", json.dumps(container["command"])]
    return [*args, container["image"], *container.get("args", [])]


def resolved_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as Kubernetes gives it, from the rendered objects (envFrom
    and valueFrom references; a Secret the chart does not make, the operator's, is left out;
    the namespace is "spe")."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}

    def data(kind: str, name: str) -> dict[str, str]:
        found = by_name.get((kind, name), {})
        values = dict(found.get("stringData", {}))
        for key, value in found.get("data", {}).items():
            values[key] = base64.b64decode(value).decode() if kind == "Secret" else value
        return values

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(data("ConfigMap", source["configMapRef"]["name"]))
        elif "secretRef" in source:
            env.update(data("Secret", source["secretRef"]["name"]))
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.namespace", ref
            env[var["name"]] = "spe"
        elif "configMapKeyRef" in ref or "secretKeyRef" in ref:
            key = ref.get("configMapKeyRef") or ref["secretKeyRef"]
            kind = "ConfigMap" if "configMapKeyRef" in ref else "Secret"
            value = data(kind, key["name"]).get(key["key"])
            if value is not None:
                env[var["name"]] = value
    return env
