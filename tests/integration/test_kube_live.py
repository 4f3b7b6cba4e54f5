"""On a real cluster (only where KUBECONFIG is set, with helm and kubectl, and SPE's images
pushed where the cluster pulls from): install the chart in a fresh
namespace, provision a project, start a workspace pod from SPE's objects, prove from inside that
nothing but the airlock answers and that the airlock knows the pod by its token, then uninstall.

Environment: KUBECONFIG; SPE_LIVE_POSTGRES_URL (a database the cluster reaches);
SPE_LIVE_IMAGE_REGISTRY (prefix of spe-controlplane:0.1.0 and spe-workspace:0.1.0). helm is
the one on PATH or the project's (.venv/bin/helm, from `make setup`); the jupyterhub dependency
is the fetched one (`helm dependency build helm/spe`) or else the vendored z2jh beside the clone
(shared/vendor/), copied into a scratch copy of the chart. The one test that needs a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "spe"


def find_helm(repo: Path = REPO) -> str | None:
    """helm on PATH, else the project's own (`make setup` puts it into .venv/bin)."""
    local = repo / ".venv" / "bin" / "helm"
    return shutil.which("helm") or (str(local) if os.access(local, os.X_OK) else None)


HELM = find_helm() or "helm"
pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason="no cluster: KUBECONFIG is not set (the objects are tested as objects instead)",
    ),
    pytest.mark.skipif(
        find_helm() is None, reason="helm is neither on PATH nor in .venv/bin (make setup)"
    ),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH"),
    pytest.mark.skipif(
        not os.environ.get("SPE_LIVE_POSTGRES_URL"),
        reason="SPE_LIVE_POSTGRES_URL (a PostgreSQL the cluster reaches) is not set",
    ),
]

SETUP = """
import datetime as dt
from spe.accounts.models import OrgKind, Role
from spe.accounts.service import *
from spe.db import transaction
from spe.k8s.tokens import issue_workspace_token
from spe.projects.service import *
from spe.workspaces.registry import workspace_started
with transaction() as s:
    op = get_user(s, "op")
    holder = create_organisation(s, op, "Holder", OrgKind.DATA_HOLDER)
    uni = create_organisation(s, op, "Uni", OrgKind.RESEARCH_INSTITUTION)
    for name, org, role in (("rev", holder, Role.HOLDER_REVIEWER), ("res", uni, Role.RESEARCHER)):
        user, _ = create_user(s, op, name, org, password="correct horse battery")
        grant_role(s, op, user, role, org)
with transaction() as s:
    today = dt.date.today()
    p = create_project(s, get_user(s, "res"), "live", "Live", "test", get_organisation(s, "Holder"),
                       get_organisation(s, "Uni"), today, today + dt.timedelta(days=2))
    approve_project(s, get_user(s, "rev"), p)
    accept_terms(s, get_user(s, "res"))
    workspace_started(s, get_user(s, "res"), p)
    token, _ = issue_workspace_token(s, "live", "res", namespace=NAMESPACE, lifetime_seconds=3600)
print(token)
"""

PROBE = """
import json, socket
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False
print(json.dumps({
    "internet": reach("1.1.1.1", 443),
    "metadata": reach("169.254.169.254", 80),
    "kube_api": reach(KUBE_API, 443),
    "dns": reach(DNS, 53),
    "airlock": reach(AIRLOCK, 8950),
}))
"""


def run(*args: str, input: str | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, input=input, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def chart_with_dependency(scratch: Path) -> Path:
    """helm/spe as `helm dependency build` left it, else a copy with the vendored z2jh."""
    if list((CHART / "charts").glob("jupyterhub*")):
        return CHART
    import yaml

    (version,) = [
        d["version"]
        for d in yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]
        if d["name"] == "jupyterhub"
    ]
    for folder in REPO.parents:
        z2jh = folder / "shared" / "vendor" / f"z2jh-{version}" / "jupyterhub"
        if (z2jh / "Chart.yaml").exists():
            copy = scratch / "spe"
            shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts"))
            shutil.copytree(z2jh, copy / "charts" / "jupyterhub")
            return copy
    pytest.skip(f"no jupyterhub {version} chart: run `helm dependency build helm/spe`")


@pytest.fixture
def release(tmp_path: Path) -> Iterator[str]:
    chart = chart_with_dependency(tmp_path)
    namespace = f"spe-live-{uuid.uuid4().hex[:8]}"
    registry = os.environ.get("SPE_LIVE_IMAGE_REGISTRY", "")
    prefix = f"{registry.rstrip('/')}/" if registry else ""
    run("kubectl", "create", "namespace", namespace)
    try:
        run(
            HELM, "install", "spe", str(chart), "--namespace", namespace, "--wait",
            "--timeout", "10m",
            "--set", f"postgresql.url={os.environ['SPE_LIVE_POSTGRES_URL']}",
            "--set", f"image.controlplane.name={prefix}spe-controlplane",
            "--set", f"image.workspace.name={prefix}spe-workspace",
            "--set", f"jupyterhub.hub.image.name={prefix}spe-controlplane",
            "--set", f"jupyterhub.proxy.chp.image.name={prefix}spe-controlplane",
            "--set", f"jupyterhub.singleuser.image.name={prefix}spe-workspace",
        )  # fmt: skip
        yield namespace
    finally:
        subprocess.run([HELM, "uninstall", "spe", "--namespace", namespace], check=False)
        subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"], check=False)


def test_a_workspace_on_the_cluster_reaches_only_the_airlock(release: str) -> None:
    from spe.workspaces import kube_objects as ko

    ns = release
    api = ["kubectl", "-n", ns, "exec", "deploy/spe-api", "--"]
    run(*api, "spe", "init", "--operator", "op")
    token = run(*api, "python", "-c", f"NAMESPACE={ns!r}\n{SETUP}").strip().splitlines()[-1]
    run(*api, "spe", "--as", "op", "k8s", "apply-project", "live")
    airlock_ip = run(
        "kubectl", "-n", ns, "get", "service", "spe-airlock", "-o", "jsonpath={.spec.clusterIP}"
    )  # fmt: skip
    kube_ip = run("kubectl", "get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}")
    dns_ip = run(
        "kubectl", "-n", "kube-system", "get", "service", "kube-dns",
        "-o", "jsonpath={.spec.clusterIP}",
    )  # fmt: skip
    registry = os.environ.get("SPE_LIVE_IMAGE_REGISTRY", "")
    spec = ko.WorkspaceSpec(
        "live",
        "res",
        image=f"{registry.rstrip('/') + '/' if registry else ''}spe-workspace:0.1.0",
        namespace=ns,
    )
    o = ko.spawner_overrides(spec, airlock_url=f"tcp://{airlock_ip}:8950")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": ko.pod_name("live", "res"), "labels": o["extra_labels"]},
        "spec": {
            **o["extra_pod_config"],
            "automountServiceAccountToken": False,
            "securityContext": o["pod_security_context"],
            "volumes": o["volumes"],
            "containers": [
                {
                    "name": "notebook",
                    "image": spec.image,
                    "command": ["sleep", "600"],
                    "env": [{"name": k, "value": v} for k, v in o["environment"].items()],
                    "securityContext": o["container_security_context"],
                    "volumeMounts": o["volume_mounts"],
                }
            ],
        },
    }
    for body in (ko.home_pvc(spec), ko.token_secret(spec, token)):
        run("kubectl", "-n", ns, "apply", "-f", "-", input=json.dumps(ko.serialise(body)))
    run("kubectl", "-n", ns, "apply", "-f", "-", input=json.dumps(pod))
    name = ko.pod_name("live", "res")
    run("kubectl", "-n", ns, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=300s")
    exec_ = ["kubectl", "-n", ns, "exec", name, "--"]
    probe = PROBE.replace("KUBE_API", repr(kube_ip)).replace("DNS", repr(dns_ip))
    reached = json.loads(run(*exec_, "python", "-c", probe.replace("AIRLOCK", repr(airlock_ip))))
    assert reached == {
        "internet": False,
        "metadata": False,
        "kube_api": False,
        "dns": False,
        "airlock": True,
    }
    hello = run(
        *exec_, "python", "-c",
        "from spe.workspaces.client import call; print(call({'op': 'hello'})['workspace'])",
    )  # fmt: skip
    assert hello.strip() == "live--res"
