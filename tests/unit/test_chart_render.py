"""The whole release rendered with the real Zero to JupyterHub chart: the vendored z2jh (beside
the repository, in shared/vendor/) is copied into a scratch copy of helm/spe/charts/ as `helm
dependency build` would put it; `helm lint` and `helm template` run on the default and the
production values, every object validates strictly against the newest two Kubernetes versions
kubernetes-validate offers (1.36 and 1.37 with 1.37.0 installed), and what SPE relies on in z2jh's
own objects is asserted: closed workspace egress, the hub running SPE's configuration (evaluated
here as z2jh mounts it), an internal proxy, SPE's images, and the README's mirror list."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "spe"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
Z2JH_VERSION = next(
    d["version"]
    for d in yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]
    if d["name"] == "jupyterhub"
)
DATABASE = "postgresql+psycopg://u:p@db/spe"
RENDERS = ("default", "production")


def _z2jh() -> Path | None:
    """shared/vendor/z2jh-<version>/jupyterhub beside the clone (../shared here; in CI shared/
    is beside the clean clone, so every ancestor folder is tried)."""
    for folder in REPO.parents:
        chart = folder / "shared" / "vendor" / f"z2jh-{Z2JH_VERSION}" / "jupyterhub"
        if (chart / "Chart.yaml").exists():
            return chart
    return None


def _helm() -> str | None:
    """helm on PATH, else the one `make setup` puts into .venv/bin."""
    local = REPO / ".venv" / "bin" / "helm"
    return shutil.which("helm") or (str(local) if local.exists() else None)


def _missing() -> str | None:
    if _helm() is None:
        return "helm is neither on PATH nor in .venv/bin (make setup fetches it)"
    if _z2jh() is None:
        return f"the vendored z2jh {Z2JH_VERSION} is not in shared/vendor/ beside the clone"
    return None


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of helm/spe with z2jh in charts/ (never written into the repository)."""
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must render the real chart")
        pytest.skip(reason)
    z2jh = _z2jh()
    assert z2jh is not None
    assert yaml.safe_load((z2jh / "Chart.yaml").read_text())["version"] == Z2JH_VERSION
    scratch = tmp_path_factory.mktemp("chart") / "spe"
    shutil.copytree(CHART, scratch, ignore=shutil.ignore_patterns("charts"))
    shutil.copytree(z2jh, scratch / "charts" / "jupyterhub")
    return scratch


def _values_args(name: str) -> list[str]:
    extra = ["-f", str(CHART / "values-production.yaml")] if name == "production" else []
    return ["--set", f"postgresql.url={DATABASE}", *extra]


def _helm_run(*args: str) -> subprocess.CompletedProcess[str]:
    helm = _helm()
    assert helm is not None
    return subprocess.run([helm, *args], capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def rendered(chart: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in RENDERS:
        done = _helm_run("template", "spe", str(chart), "--namespace", "spe", *_values_args(name))
        assert done.returncode == 0, done.stderr
        out[name] = [m for m in yaml.safe_load_all(done.stdout) if m]
    return out


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for o in objects:
        if o["kind"] == "Pod":
            specs.append(o["spec"])
        elif o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append(o["spec"]["template"]["spec"])
    return specs


def _images(objects: list[dict[str, Any]]) -> set[str]:
    return {
        c["image"]
        for spec in _pod_specs(objects)
        for c in [*spec.get("initContainers", []), *spec["containers"]]
    }


# --- lint and strict validation ------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_helm_lint_passes_with_the_real_z2jh(chart: Path, name: str) -> None:
    done = _helm_run("lint", str(chart), *_values_args(name))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def _newest_two_kubernetes_versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("."))

    versions = sorted(set(all_versions()), key=key)[-2:]
    assert key(versions[-1]) >= (1, 36), f"kubernetes-validate knows only up to {versions[-1]}"
    return versions


@pytest.mark.parametrize("name", RENDERS)
def test_every_object_of_the_release_validates_strictly(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    import kubernetes_validate

    objects = rendered[name]
    kinds = {o["kind"] for o in objects}
    # z2jh's own objects are among them, not only SPE's.
    assert {"Deployment", "NetworkPolicy", "Service", "Secret", "DaemonSet"} <= kinds
    assert _one(objects, "Deployment", "hub") and _one(objects, "Deployment", "proxy")
    for version in _newest_two_kubernetes_versions():
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


# --- what SPE relies on in z2jh's objects --------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_workspace_egress_reaches_only_the_hub_and_the_proxy_pods(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """z2jh's policy for every user pod: no address block, no other namespace (no DNS, no cloud
    metadata, no internet); SPE's own per-project policy adds the airlock."""
    policy = _one(rendered[name], "NetworkPolicy", "singleuser")["spec"]
    assert "Egress" in policy["policyTypes"]
    assert policy["egress"], "no rule at all would still be closed, but z2jh writes some"
    for rule in policy["egress"]:
        assert rule.get("to") and rule.get("ports"), rule  # a rule without either opens all
        for peer in rule["to"]:
            assert set(peer) == {"podSelector"}, peer
            labels = peer["podSelector"]["matchLabels"]
            assert labels["app"] == "jupyterhub" and labels["release"] == "spe"
            assert labels["component"] in {"hub", "proxy", "autohttps"}


@pytest.mark.parametrize("name", RENDERS)
def test_the_proxy_and_every_other_service_stay_inside_the_cluster(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    services = [o for o in rendered[name] if o["kind"] == "Service"]
    assert {"proxy-public", "proxy-api", "hub"} <= {s["metadata"]["name"] for s in services}
    for service in services:
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]


@pytest.mark.parametrize("name", RENDERS)
def test_z2jh_runs_spes_images(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    objects = rendered[name]
    controlplane = "{name}:{tag}".format(**VALUES["image"]["controlplane"])
    workspace = "{name}:{tag}".format(**VALUES["image"]["workspace"])

    def image(kind: str, name: str) -> str:
        return str(_one(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]["image"])

    assert image("Deployment", "hub") == controlplane
    assert image("Deployment", "proxy") == controlplane
    settings = _one(objects, "ConfigMap", "spe-settings")["data"]
    assert settings["SPE_K8S_WORKSPACE_IMAGE"] == workspace  # what SPE's spawner starts
    pullers = [
        o for o in objects if o["kind"] == "DaemonSet" and "image-puller" in o["metadata"]["name"]
    ]
    for puller in pullers:  # z2jh pulls the workspace image onto the nodes ahead
        assert workspace in _images([puller])


# --- the hub's configuration, evaluated as z2jh mounts it ----------------------------------------

Z2JH_MOUNT = "/usr/local/etc/jupyterhub/"

EVALUATE = """
import json, sys
from traitlets.config.loader import PyFileConfigLoader
from tornado.httpclient import AsyncHTTPClient

c = PyFileConfigLoader("jupyterhub_config.py", path=sys.argv[1]).load_config()
client = AsyncHTTPClient.configured_class()
print(json.dumps({
    "spawner_class": c.JupyterHub.spawner_class,
    "authenticator_class": c.JupyterHub.authenticator_class,
    "db_url": c.JupyterHub.db_url,
    "http_client": client.__module__ + "." + client.__name__,
    "singleuser_image": c.KubeSpawner.image,
    "services": sorted(s["name"] for s in c.JupyterHub.services),
}))
"""


# What the operator's spe-secrets holds where the chart does not make it (production values).
OPERATOR_SECRETS = {
    "SPE_DATABASE_URL": DATABASE,
    "SPE_BROKER_URL": "redis://redis:6379/0",
    "SPE_PLATFORM_KEY": base64.b64encode(bytes(32)).decode(),
    "SPE_OIDC_CLIENT_SECRET": "client-secret",
}


def _hub_environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The hub container's environment as Kubernetes would give it (operator-made secrets, in
    the production values, stand in with test values)."""
    hub = _one(objects, "Deployment", "hub")["spec"]["template"]["spec"]["containers"][0]
    settings = _one(objects, "ConfigMap", "spe-settings")["data"]
    secrets = next(
        (
            o.get("stringData", {})
            for o in objects
            if o["kind"] == "Secret" and o["metadata"]["name"] == "spe-secrets"
        ),
        {},
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": "/nonexistent",
        # Kubernetes' service links for z2jh's get_name_env
        "PROXY_API_SERVICE_PORT": "8001",
        "HUB_SERVICE_PORT": "8081",
    }
    for var in hub["env"]:
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in ref:
            env[var["name"]] = "spe"  # metadata.namespace
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            if key["name"] == "spe-settings" and key["key"] in settings:
                env[var["name"]] = settings[key["key"]]
        elif "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            if key["name"] == "spe-secrets":
                env[var["name"]] = secrets.get(key["key"], OPERATOR_SECRETS[key["key"]])
            elif key["key"] in {"hub.config.ConfigurableHTTPProxy.auth_token"}:
                env[var["name"]] = "stand-in"
    return env


def start_hub_config(objects: list[dict[str, Any]], where: Path) -> subprocess.Popen[str]:
    """Lay out z2jh's ConfigMap and Secret as the hub pod mounts them (under `where` instead of
    /usr/local/etc/jupyterhub, the one path rewritten) and load jupyterhub_config.py the way
    JupyterHub does, in this environment, in a process of its own."""
    config_map = _one(objects, "ConfigMap", "hub")["data"]
    secret = _one(objects, "Secret", "hub")["data"]
    (where / "config").mkdir(parents=True)
    (where / "secret").mkdir()
    for key, value in config_map.items():
        (where / "config" / key).write_text(value)
    for key, value in secret.items():
        (where / "secret" / key).write_bytes(base64.b64decode(value))
    for name in ("jupyterhub_config.py", "z2jh.py"):
        (where / name).write_text(config_map[name].replace(Z2JH_MOUNT, f"{where}/"))
    return subprocess.Popen(
        [sys.executable, "-c", EVALUATE, str(where)],
        env=_hub_environment(objects),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def hub_configs(
    rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """The hub's effective configuration for each set of values (evaluated side by side)."""
    running = {
        name: start_hub_config(rendered[name], tmp_path_factory.mktemp(f"hub-{name}"))
        for name in RENDERS
    }
    configs = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
        configs[name] = dict(json.loads(stdout.strip().splitlines()[-1]))
    return configs


@pytest.mark.parametrize("name", RENDERS)
def test_z2jhs_hub_configuration_loads_here_and_runs_spes_spawner_and_login(
    hub_configs: dict[str, dict[str, Any]], name: str
) -> None:
    """The configuration z2jh renders for SPE's values loads (tornado's curl client, which needs
    pycurl, included) and ends with SPE's extra configuration in force."""
    config = hub_configs[name]
    assert config["http_client"] == "tornado.curl_httpclient.CurlAsyncHTTPClient"
    assert config["spawner_class"] == "spe.workspaces.kube_spawner.SPEKubeSpawner"
    login = {"default": "SPEAuthenticator", "production": "SPEOIDCAuthenticator"}[name]
    assert config["authenticator_class"].rsplit(".", 1)[-1] == login
    assert config["singleuser_image"] == "{name}:{tag}".format(**VALUES["image"]["workspace"])
    assert config["services"] == ["jupyterhub-idle-culler", "spe"]


def _image_user() -> tuple[int, int]:
    text = (REPO / "docker" / "Dockerfile.controlplane").read_text()
    uid, gid = re.findall(r"^USER (\d+):(\d+)$", text, re.M)[-1]
    return int(uid), int(gid)


def test_the_hub_runs_as_the_images_user_with_its_sqlite_database_on_its_volume(
    rendered: dict[str, list[dict[str, Any]]], hub_configs: dict[str, dict[str, Any]]
) -> None:
    """With the default values the hub opened jupyterhub.sqlite relative to its working folder,
    /var/lib/spe, owned by the image's user while the hub ran as z2jh's uid 1000."""
    uid, gid = _image_user()
    pod = _one(rendered["default"], "Deployment", "hub")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["runAsGroup"] == gid
    assert pod["securityContext"]["fsGroup"] == gid
    assert pod["securityContext"]["runAsNonRoot"] is True
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["name"]]
    db_url = hub_configs["default"]["db_url"]
    assert db_url.startswith("sqlite:////"), db_url  # an absolute path
    assert Path(db_url.removeprefix("sqlite:///")).parent == Path(mount["mountPath"])
    # Another database keeps its URL.
    production = yaml.safe_load((CHART / "values-production.yaml").read_text())
    assert hub_configs["production"]["db_url"] == production["jupyterhub"]["hub"]["db"]["url"]


# --- the images a private cluster mirrors (README) -----------------------------------------------


def _readme_mirror_list() -> set[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- images to mirror -->", 1)[1].split("<!-- end -->", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.M))


def test_the_readme_lists_every_image_a_private_cluster_must_mirror(
    rendered: dict[str, list[dict[str, Any]]], hub_configs: dict[str, dict[str, Any]]
) -> None:
    """Every image of the default and production releases, and the workspace image the hub's
    spawner starts (not in any manifest), with their tags; nothing more."""
    images = set().union(*(_images(rendered[name]) for name in RENDERS))
    images |= {c["singleuser_image"] for c in hub_configs.values()}
    for name in RENDERS:
        images.add(
            _one(rendered[name], "ConfigMap", "spe-settings")["data"]["SPE_K8S_WORKSPACE_IMAGE"]
        )
    assert all(":" in i and not i.endswith(":latest") for i in images), images
    assert _readme_mirror_list() == images
