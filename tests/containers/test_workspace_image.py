"""The workspace image runs the pod SPE's KubeSpawner makes, for real, under podman.

The pod is the one SPEKubeSpawner builds for (researcher, study) with the real database (SQLite):
it admits the researcher, issues the pod-bound tokens into Secrets and returns the manifest, with
the recorder sidecar and the notebook container. Each container's settings are translated into
podman's option by option (user and groups, read-only root, capabilities, no new privileges,
seccomp, limits, environment, volumes); a setting the translation does not know fails the test,
so the pod cannot gain a setting that is silently not tried here. The Kubernetes API is a fake
(no cluster can run on this machine): it records the Secrets and answers the two service
addresses with the pod's loopback.

The pod has no network but its loopback (podman's `--network none`): the stricter stand-in for
SPE's NetworkPolicy, which lets a workspace reach the airlock and the hub's API. On that loopback
run the airlock (SPE's TcpAirlock in the control-plane image, the database on a bind mount) and a
stand-in for the hub's API (tests/containers/harness.py); the browser is a probe in the hub's
container that goes through the pod's port, as the proxy does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import select

from spe.workspaces import kube_objects as ko
from tests.conftest import World, _clear_spe_env, _reset_spe
from tests.containers.conftest import REPO, inspect, podman, unique, wait_for
from tests.containers.pods import podman_run_args, volume_sources

HARNESS = REPO / "tests" / "containers" / "harness.py"
HUB_TOKEN = "hub-token-of-the-server"
USER_TOKEN = "browser-token-of-researcher"


class LoopbackServices:
    """The two Kubernetes API calls SPE's spawner makes, answered for a one-pod world: every
    service is on the pod's loopback; Secrets and PVCs are recorded."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    async def read_namespaced_service(self, name: str, namespace: str) -> Any:
        return SimpleNamespace(spec=SimpleNamespace(cluster_ip="127.0.0.1"))

    async def _create(self, namespace: str, body: dict[str, Any]) -> None:
        self.created.append(body)

    async def _patch(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.created.append(body)

    create_namespaced_persistent_volume_claim = _create
    create_namespaced_secret = _create
    patch_namespaced_persistent_volume_claim = _patch
    patch_namespaced_secret = _patch


def spawn_pod(services: LoopbackServices) -> dict[str, Any]:
    """SPE's KubeSpawner for (researcher, study): admitted, tokens issued, the pod manifest."""
    from spe.workspaces.kube_spawner import SPEKubeSpawner

    user = SimpleNamespace(
        name="researcher", url="/user/researcher/", escaped_name="researcher", groups=[], id=1
    )
    hub = SimpleNamespace(
        api_url="http://127.0.0.1:8081/hub/api",
        base_url="/hub/",
        url="http://127.0.0.1:8081",
        public_host="",
    )
    with (
        mock.patch("kubespawner.spawner.load_config"),
        mock.patch("kubespawner.spawner.shared_client", return_value=services),
    ):
        spawner = SPEKubeSpawner(
            user=user,
            orm_spawner=SimpleNamespace(name="study", server=None),
            hub=hub,
            cmd=["jupyterhub-singleuser"],
        )
    spawner.user_options = {"profile": "study"}
    spawner.api_token = HUB_TOKEN
    spawner.oauth_client_id = "jupyterhub-user-researcher-study"
    asyncio.run(spawner.load_user_options())
    manifest: dict[str, Any] = ko.serialise(asyncio.run(spawner.get_pod_manifest()))
    return manifest


# --- the pod, running ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace_pod(
    built: Any,
    sqlite_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
    cleanup: list[list[str]],
) -> Iterator[dict[str, Any]]:
    workspace_image, controlplane_image = built("workspace"), built("controlplane")
    patch = pytest.MonkeyPatch()
    _clear_spe_env(patch)
    root = tmp_path_factory.mktemp("workspace-pod")
    state = root / "var"
    shutil.copytree(sqlite_template, state)
    (state / "keys" / "platform.key").chmod(0o600)
    patch.setenv("SPE_STATE_DIR", str(state))
    patch.setenv("SPE_K8S_WORKSPACE_IMAGE", workspace_image)
    patch.setenv("SPE_K8S_CONTROLPLANE_IMAGE", controlplane_image)
    _reset_spe()
    from spe.accounts.service import accept_terms, get_user
    from spe.db import transaction
    from spe.projects.service import approve_project, get_project

    World()
    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
        accept_terms(s, get_user(s, "researcher"))
    services = LoopbackServices()
    manifest = spawn_pod(services)
    secrets = {
        ("Secret", b["metadata"]["name"]): b for b in services.created if b["kind"] == "Secret"
    }
    sources = volume_sources(manifest["spec"], secrets, root / "volumes")

    pod = unique("spe-ws")
    podman("pod", "create", "--name", pod, "--network", "none")
    cleanup.append(["pod", "rm", "--force", "--time", "2", pod])
    harness = ["--volume", f"{HARNESS}:/harness/harness.py:ro", controlplane_image]
    names = {"airlock": f"{pod}-airlock", "hub": f"{pod}-hub"}
    podman(
        "run", "--detach", "--pod", pod, "--name", names["airlock"], "--pull=never",
        # The airlock writes the test's SQLite database, owned by the test's user.
        "--user", "0", "--env", f"SPE_STATE_DIR={state}", "--volume", f"{state}:{state}",
        *harness, "python", "/harness/harness.py", "airlock", "--port", str(ko.AIRLOCK_PORT),
        "--pod", manifest["metadata"]["name"],
    )  # fmt: skip
    podman(
        "run", "--detach", "--pod", pod, "--name", names["hub"], "--pull=never",
        "--env", f"HUB_STANDIN_TOKENS={json.dumps([HUB_TOKEN, USER_TOKEN])}",
        *harness, "python", "/harness/harness.py", "hub", "--port", str(ko.HUB_API_PORT),
    )  # fmt: skip

    def logs() -> str:
        return "\n".join(
            f"--- {name}\n" + podman("logs", name, check=False).stdout
            + podman("logs", name, check=False).stderr
            for name in names.values()
        )  # fmt: skip

    for role in ("airlock", "hub"):
        wait_for(lambda r=role: f"{r} ready" in logs(), 60, f"the {role} stand-in", logs)
    # The pod's own containers: native sidecars first, as the kubelet starts them.
    spec = manifest["spec"]
    started = time.monotonic()
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        name = f"{pod}-{container['name']}"
        names[container["name"]] = name
        podman(
            "run", "--detach", "--pod", pod, "--name", name,
            *podman_run_args(spec, container, sources),
        )  # fmt: skip

    # The server's URL prefix: the hub's for a named server; "/" where the spawner, having no
    # server record outside a hub, leaves it out.
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or "/"

    def answers() -> bool:
        return probe_http(prefix + "api", names["hub"]).returncode == 0

    wait_for(answers, 180, "the workspace server through the pod's port", logs)
    yield {
        "manifest": manifest,
        "names": names,
        "pod": pod,
        "state": state,
        "sources": sources,
        "prefix": prefix,
        "logs": logs,
        "start_to_answer": time.monotonic() - started,
    }
    patch.undo()
    _reset_spe()


def probe_http(path: str, hub: str) -> Any:
    code = (
        "import urllib.request; "
        f"urllib.request.urlopen('http://127.0.0.1:{ko.SERVER_PORT}{path}', timeout=5)"
    )
    return podman("exec", hub, "python", "-c", code, check=False, timeout=30)


def browser(pod: dict[str, Any], code: str, port: int = ko.SERVER_PORT) -> dict[str, Any]:
    done = podman(
        "exec", pod["names"]["hub"], "python", "/harness/harness.py", "probe",
        "--port", str(port), "--prefix", pod["prefix"], "--token", USER_TOKEN, "--code", code,
        check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + pod["logs"]()
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def in_workspace(pod: dict[str, Any], code: str) -> str:
    done = podman("exec", pod["names"]["notebook"], "python", "-c", code, check=False, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def cells() -> list[tuple[str, str, dict[str, Any]]]:
    from spe.audit.models import AuditEvent
    from spe.db import readonly

    with readonly() as s:
        rows = s.execute(
            select(AuditEvent.actor, AuditEvent.target, AuditEvent.details).where(
                AuditEvent.action == "workspace.cell"
            )
        ).all()
    return [(actor, target, json.loads(details)) for actor, target, details in rows]


# --- the tests ---------------------------------------------------------------------------------


def test_the_pod_is_kubespawners_with_the_recorder_sidecar(workspace_pod: dict[str, Any]) -> None:
    spec = workspace_pod["manifest"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["notebook"]
    assert [c["name"] for c in spec.get("initContainers", [])] == [ko.RECORDER_CONTAINER]
    running = podman("ps", "--filter", f"pod={workspace_pod['pod']}", "--format", "{{.Names}}")
    assert {workspace_pod["names"][n] for n in ("notebook", ko.RECORDER_CONTAINER)} <= set(
        running.stdout.split()
    )


def test_the_workspace_runs_unprivileged_on_a_read_only_root(
    workspace_pod: dict[str, Any],
) -> None:
    facts = inspect(workspace_pod["names"]["notebook"])
    assert facts["Config"]["User"] == f"{ko.WORKSPACE_UID}:{ko.WORKSPACE_UID}"
    assert facts["HostConfig"]["ReadonlyRootfs"] is True
    # From inside, as the server process (PID 1) and any code it runs sees itself.
    seen = json.loads(
        in_workspace(
            workspace_pod,
            "import json, os\n"
            "status = dict(l.split(':\\t', 1) for l in open('/proc/1/status').read().splitlines()"
            " if ':\\t' in l)\n"
            "def writes(path):\n"
            "    try:\n"
            "        open(path, 'w').close()\n"
            "        return True\n"
            "    except OSError:\n"
            "        return False\n"
            "print(json.dumps({'uid': os.getuid(), 'caps': [status[k].strip() for k in"
            " ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')],"
            " 'nnp': status['NoNewPrivs'].strip(), 'seccomp': status['Seccomp'].strip(),"
            " 'root': writes('/etc/spe-x'), 'config': writes('/etc/spe-workspace/x'),"
            " 'venv': writes('/opt/spe-workspace/x'), 'home': writes('/home/researcher/x'),"
            " 'tmp': writes('/tmp/x'), 'token': writes('/var/run/spe-airlock/token')}))",
        )
    )
    assert seen["uid"] == ko.WORKSPACE_UID
    assert seen["caps"] == ["0000000000000000"] * 5
    assert (seen["nnp"], seen["seccomp"]) == ("1", "2")
    assert not seen["root"] and not seen["config"] and not seen["venv"] and not seen["token"]
    assert seen["home"] and seen["tmp"]


def test_the_workspace_has_no_network_but_the_pods_loopback(
    workspace_pod: dict[str, Any],
) -> None:
    seen = json.loads(
        in_workspace(
            workspace_pod,
            "import json, os, socket\n"
            "def reach(host, port):\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=3).close()\n"
            "        return 'open'\n"
            "    except OSError as exc:\n"
            "        return type(exc).__name__\n"
            "print(json.dumps({'interfaces': sorted(os.listdir('/sys/class/net')),"
            f" 'airlock': reach('127.0.0.1', {ko.AIRLOCK_PORT}),"
            " 'gateway': reach('10.88.0.1', 5432), 'internet': reach('1.1.1.1', 443),"
            " 'dns': reach('deb.debian.org', 80) }))",
        )
    )
    assert seen["interfaces"] == ["lo"]
    assert seen["airlock"] == "open"
    assert seen["gateway"] != "open" and seen["internet"] != "open" and seen["dns"] != "open"


def test_the_server_offers_only_spes_kernel_and_records_each_cell_through_the_airlock(
    workspace_pod: dict[str, Any],
) -> None:
    answer = browser(workspace_pod, "print(6 * 7)")
    assert answer["kernels"] == ["spe"] and answer["default_kernel"] == "spe"
    assert answer["anonymous"] in (302, 403)  # nobody without the hub's token
    assert (answer["status"], answer["output"]) == ("ok", "42\n")
    recorded = [c for c in cells() if "print(6 * 7)" in json.dumps(c[2])]
    assert recorded, workspace_pod["logs"]()
    assert {(actor, target) for actor, target, _ in recorded} == {
        ("researcher", "workspace:study--researcher")
    }
    # The kernel's own record (sent with the workspace's token) and the recorder sidecar's (sent
    # with its own): the airlock stores each as the token's holder.
    sources = {details.get("source") for _, _, details in recorded}
    assert sources == {"workspace", "recorder"}, sources


def test_a_cell_is_refused_when_the_airlock_cannot_record_it(
    workspace_pod: dict[str, Any],
) -> None:
    """Through the pod's port the recorder cannot record the cell and ends the connection; sent
    straight to the notebook server on the pod's loopback (where code in the pod could send it),
    the server and the kernel refuse it. Either way it does not run."""
    podman("stop", "--time", "2", workspace_pod["names"]["airlock"])
    ran = Path(workspace_pod["sources"]["home"]) / "ran"
    code = "open('/home/researcher/ran', 'w').write('x')"
    answer = browser(workspace_pod, code)
    assert answer["status"] == "closed" and answer["output"] == ""
    answer = browser(workspace_pod, code, port=ko.NOTEBOOK_PORT)
    assert answer["status"] == "error"
    assert "could not record this cell" in answer["output"]
    assert not ran.exists()
