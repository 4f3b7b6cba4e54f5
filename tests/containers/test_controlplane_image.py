"""The control-plane image run for real under podman, with the settings SPE's chart gives its
pods (the real z2jh render of tests/unit/test_chart_render.py, translated option by option):
`spe db upgrade` migrates a scratch database on the machine's PostgreSQL, `spe api` serves the
API and the pages, the front door before it refuses downloads; and the hub starts with the
configuration z2jh renders for SPE's values, mounted as z2jh mounts it, as the chart's uid, and
gets as far as waiting for its proxy (there is no cluster here, so no proxy)."""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_URL, _pg_reachable
from tests.containers.conftest import podman, unique, wait_for
from tests.containers.pods import podman_run_args, resolved_env, volume_sources
from tests.unit.test_chart_render import _hub_environment, _one, chart, rendered  # noqa: F401

IMAGE_PATH = "/opt/spe/bin:/usr/local/bin:/usr/bin:/bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pod_spec(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _one(objects, kind, name)["spec"]["template"]["spec"]
    return spec


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    answer = conn.getresponse()
    body = answer.read().decode("utf-8", "replace")
    conn.close()
    return answer.status, body


@pytest.fixture(scope="module")
def scratch_database() -> Iterator[str]:
    reason = _pg_reachable()
    if reason:
        import os

        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    name = f"spe_ct_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def controlplane(
    built: Any,
    rendered: dict[str, list[dict[str, Any]]],  # noqa: F811 - the fixture imported above
    scratch_database: str,
    tmp_path_factory: pytest.TempPathFactory,
    cleanup: list[list[str]],
) -> dict[str, Any]:
    """`spe db upgrade`, then `spe api` and the front door, each in a container with the settings
    of its pod in the chart; host network, to reach the machine's PostgreSQL. The emptyDir for
    SPE's state (keys) is one folder for all three here: the chart's pods get the keys from
    spe-secrets instead."""
    image = built("controlplane")
    objects = rendered["default"]
    root = tmp_path_factory.mktemp("controlplane")
    api_spec = _pod_spec(objects, "Deployment", "spe-api")
    sources = volume_sources(api_spec, {}, root)
    api_port, door_port = _free_port(), _free_port()
    # The machine's PostgreSQL and free ports instead of the cluster's services.
    overrides = {
        "SPE_DATABASE_URL": scratch_database,
        "SPE_API_HOST": "127.0.0.1",
        "SPE_API_PORT": str(api_port),
    }
    names: dict[str, str] = {}

    def run(role: str, spec: dict[str, Any], container: dict[str, Any], *extra: str) -> str:
        env = resolved_env(objects, container) | overrides
        container = {**container, "image": image}
        names[role] = unique(f"spe-cp-{role}")
        cleanup.append(["rm", "--force", "--time", "2", names[role]])
        args = podman_run_args(spec, container, sources, env=env)
        return podman(
            "run", "--name", names[role], "--network", "host", *extra, *args, timeout=300
        ).stdout

    # The migration: the chart's upgrade hook Job.
    (job,) = [
        o
        for o in objects
        if o["kind"] == "Job"
        and "upgrade" in json.dumps(o["spec"]["template"]["spec"]["containers"][0].get("command"))
    ]
    job_spec = job["spec"]["template"]["spec"]
    run("upgrade", job_spec, job_spec["containers"][0])
    (api,) = api_spec["containers"]
    run("api", api_spec, api, "--detach")
    door_spec = _pod_spec(objects, "Deployment", "spe-front-door")
    (door,) = door_spec["containers"]
    # The chart's command with this machine's ports: the API stands in for z2jh's proxy-public.
    command = ["spe", "k8s", "front-door", "--port", str(door_port)]
    command += ["--upstream", f"127.0.0.1:{api_port}"]
    assert door["command"][:4] == command[:4]
    run("front-door", door_spec, {**door, "command": command}, "--detach")

    def logs() -> str:
        out = []
        for n in names.values():
            done = podman("logs", n, check=False)
            out.append(f"--- {n}\n{done.stdout}{done.stderr}")
        return "\n".join(out)

    def answers(port: int) -> bool:
        try:
            return _get(port, "/api/v1/health")[0] == 200
        except OSError:
            return False

    wait_for(lambda: answers(api_port), 60, "the API", logs)
    wait_for(lambda: answers(door_port), 60, "the front door", logs)
    return {"api": api_port, "door": door_port, "database": scratch_database, "logs": logs}


def test_spe_db_upgrade_migrates_a_postgresql_database(controlplane: dict[str, Any]) -> None:
    from spe.db.migrate import head_revision

    engine = create_engine(controlplane["database"])
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        events = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
    engine.dispose()
    assert version == head_revision()
    assert events >= 0


def test_the_api_and_the_pages_answer(controlplane: dict[str, Any]) -> None:
    status, body = _get(controlplane["api"], "/api/v1/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, body = _get(controlplane["api"], "/api/v1/openapi.json")
    assert status == 200 and "/api/v1/health" in json.loads(body)["paths"]
    status, body = _get(controlplane["api"], "/services/spe/login")
    assert status in (200, 302, 303, 307), body[:500]
    status, body = _get(controlplane["api"], "/services/spe/static/spe.css")
    assert status == 200 and body


def test_the_front_door_refuses_downloads_and_passes_the_rest(
    controlplane: dict[str, Any],
) -> None:
    door = controlplane["door"]
    assert _get(door, "/user/dave/study/files/data.csv")[0] == 403
    assert _get(door, "/user/dave/study/%66iles/data.csv")[0] == 403
    assert _get(door, "/user/dave/study/api/contents/a.csv?format=base64")[0] == 403
    assert _get(door, "/api/v1/health") == _get(controlplane["api"], "/api/v1/health")


# --- the hub, as z2jh runs it -------------------------------------------------------------------


def test_the_hub_starts_under_z2jhs_configuration_as_the_charts_user(
    built: Any,
    rendered: dict[str, list[dict[str, Any]]],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
    cleanup: list[list[str]],
) -> None:
    """z2jh's hub pod as rendered for SPE's default values: its ConfigMap and Secret mounted
    where z2jh mounts them, its database volume, its uid, its command. No cluster and no proxy
    here (no network at all): the hub loads the configuration (tornado's curl client, SPE's
    spawner and login), opens its database and waits for the proxy's API."""
    image = built("controlplane")
    objects = rendered["default"]
    spec = _pod_spec(objects, "Deployment", "hub")
    (hub,) = [c for c in spec["containers"] if c["name"] == "hub"]
    by_name = {
        (o["kind"], o["metadata"]["name"]): o
        for o in objects
        if o["kind"] in ("Secret", "ConfigMap")
    }
    sources = volume_sources(spec, by_name, tmp_path_factory.mktemp("hub"))
    env = _hub_environment(objects) | {"PATH": IMAGE_PATH, "HOME": "/var/lib/spe"}
    name = unique("spe-cp-hub")
    cleanup.append(["rm", "--force", "--time", "2", name])
    args = podman_run_args(spec, {**hub, "image": image}, sources, env=env)
    podman("run", "--detach", "--name", name, "--network", "none", *args)

    def logs() -> str:
        done = podman("logs", name, check=False)
        return done.stdout + done.stderr

    wait_for(lambda: "api_request to the proxy failed" in logs(), 90, "the hub to wait", logs)
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    assert state["Running"], logs()
    text_ = logs()
    for failure in ("No module named", "unable to open database file", "Traceback"):
        assert failure not in text_, text_[-3000:]
    uid = hub["securityContext"].get("runAsUser", spec["securityContext"].get("runAsUser"))
    assert podman("exec", name, "id", "-u").stdout.strip() == str(uid)
    (volume,) = [
        v["name"]
        for v in spec["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == "hub-db-dir"
    ]
    assert Path(sources[volume], "jupyterhub.sqlite").exists()
