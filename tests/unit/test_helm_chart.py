"""The Helm chart's own files (helm/spe), checked without rendering: values.yaml and the
production example validate against values.schema.json and wrong or insecure values are refused;
every value the templates read exists; the z2jh dependency is pinned. The whole release, rendered
with the real z2jh, is tested in test_chart_render.py (it replaced a stand-in of z2jh here)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "spe"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
PRODUCTION = yaml.safe_load((CHART / "values-production.yaml").read_text())


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [e.message for e in validator.iter_errors(values)]


def test_the_schema_is_valid_draft_7() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_the_default_and_the_production_values_validate() -> None:
    assert errors(VALUES) == []
    assert errors(merged(VALUES, PRODUCTION)) == []


def _set(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(values)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


BAD = [
    ("image.workspace.tag", "latest", "an unpinned image"),
    ("image.controlplane.tag", "", "an empty tag"),
    ("auth.type", "ldap", "an unknown login"),
    ("auth.oidc.unknownUsers", "admit", "an unknown enrolment policy"),
    ("workspaces.tokenHours", 1000, "a token living for weeks"),
    ("workspaces.memoryMB", 64, "a workspace too small to start"),
    ("workspaces.homeSize", "10 gigs", "a size Kubernetes cannot read"),
    ("postgresql.url", "mysql://db/spe", "a database SPE does not support"),
    ("redis.url", "amqp://mq", "a broker SPE does not use"),
    ("platformKey", "short", "a platform key that is not 32 bytes"),
    ("airlock.port", 80, "a privileged airlock port"),
    ("surprise", True, "a value the chart does not know (a typo)"),
    ("jupyterhub.singleuser.networkPolicy.egressAllowRules.nonPrivateIPs", True, "internet egress"),
    ("jupyterhub.singleuser.networkPolicy.egressAllowRules.dnsPortsPrivateIPs", True, "DNS egress"),
    ("jupyterhub.singleuser.networkPolicy.enabled", False, "no workspace policy"),
    (
        "jupyterhub.singleuser.networkPolicy.egress",
        [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}],
        "an extra egress rule",
    ),
    ("jupyterhub.hub.networkPolicy.enabled", False, "no hub policy"),
    ("jupyterhub.cull.enabled", False, "the culler off"),
]


@pytest.mark.parametrize(("path", "value", "why"), BAD, ids=[b[2] for b in BAD])
def test_wrong_or_insecure_values_are_refused(path: str, value: Any, why: str) -> None:
    assert errors(_set(VALUES, path, value)), f"{why} was accepted"


def test_oidc_login_needs_its_endpoints_and_client() -> None:
    oidc = _set(VALUES, "auth.type", "oidc")
    assert errors(oidc)  # the defaults leave them empty
    good = merged(oidc, {"auth": {"oidc": PRODUCTION["auth"]["oidc"]}})
    assert errors(good) == []
    assert errors(_set(good, "auth.oidc.tokenUrl", "http://idp/token"))  # not https


def _value_paths(node: Any, prefix: str = "") -> set[str]:
    paths = {prefix} if prefix else set()
    if isinstance(node, dict):
        for key, value in node.items():
            paths |= _value_paths(value, f"{prefix}.{key}" if prefix else key)
    return paths


def test_every_value_a_template_reads_exists_in_values_yaml() -> None:
    known = _value_paths(VALUES)
    used: set[str] = set()
    for template in (CHART / "templates").glob("*"):
        used |= set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()))
    assert used, "the templates read no values?"
    assert sorted(used - known) == []


def test_the_hub_reads_spe_settings_that_the_chart_provides() -> None:
    configmap = (CHART / "templates" / "configmap.yaml").read_text()
    secret = (CHART / "templates" / "secret.yaml").read_text()
    env = VALUES["jupyterhub"]["hub"]["extraEnv"]
    for name, value in env.items():
        ref = value.get("valueFrom", {}) if isinstance(value, dict) else {}
        if "configMapKeyRef" in ref:
            assert ref["configMapKeyRef"]["name"] == "spe-settings"
            assert f"{name}:" in configmap, name
        if "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == VALUES["secrets"]["name"]
            assert f"{name}:" in secret, name
    from spe.config import Settings

    fields = {f"SPE_{n.upper()}" for n in Settings.model_fields}
    assert set(env) <= fields
    assert set(re.findall(r"^  (SPE_[A-Z_]+):", configmap, re.M)) <= fields


def test_the_hub_runs_spes_configuration() -> None:
    code = VALUES["jupyterhub"]["hub"]["extraConfig"]["spe"]
    namespace: dict[str, Any] = {}
    from traitlets.config import Config

    c = Config()
    exec(compile(code, "extraConfig", "exec"), {"c": c}, namespace)  # noqa: S102 - our own text
    assert c.JupyterHub.spawner_class == "spe.workspaces.kube_spawner.SPEKubeSpawner"


def test_the_official_jupyterhub_chart_is_a_pinned_4x_dependency() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (dep,) = chart["dependencies"]
    assert dep["name"] == "jupyterhub"
    assert dep["repository"] == "https://hub.jupyter.org/helm-chart/"
    assert re.fullmatch(r"4\.\d+\.\d+", dep["version"])


def test_notes_say_where_to_log_in() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "/hub/login" in notes and "NetworkPolicy" in notes


def test_spe_pods_run_unprivileged() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for line in (
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        'drop: ["ALL"]',
        "type: RuntimeDefault",
    ):
        assert line in helpers
    for name in ("api", "worker", "beat", "airlock"):
        text = (CHART / "templates" / f"{name}.yaml").read_text()
        assert 'include "spe.containerSecurity"' in text and 'include "spe.podSecurity"' in text


def test_the_api_is_the_hubs_spe_service_at_the_address_people_land_on() -> None:
    from spe.config import load_settings
    from spe.workspaces.kube_spawner import kube_hub_config

    service = VALUES["jupyterhub"]["hub"]["services"]["spe"]
    assert service["url"] == "http://spe-api:8040"
    api = (CHART / "templates" / "api.yaml").read_text()
    landing = kube_hub_config(load_settings())["JupyterHub"]["default_url"]
    assert f"value: {landing}" in api  # JUPYTERHUB_SERVICE_PREFIX
    assert "key: hub.services.spe.apiToken" in api


def test_people_reach_the_hub_only_through_the_front_door() -> None:
    ingress = (CHART / "templates" / "ingress.yaml").read_text()
    assert '"spe-front-door" "proxy-public" .Values.frontDoor.enabled' in ingress
    assert VALUES["jupyterhub"]["proxy"]["service"]["type"] == "ClusterIP"
    assert errors(_set(VALUES, "frontDoor.enabled", False))
    door = (CHART / "templates" / "front-door.yaml").read_text()
    assert '"k8s", "front-door"' in door and "proxy-public:80" in door
