"""SPE's KubeSpawner with a fake Kubernetes API (no cluster on this machine) and the real
database (SQLite and PostgreSQL): the profiles are the projects a person may open now; start
checks access again, records it, creates the home and the pod-bound token Secret, and the pod
manifest KubeSpawner then builds validates and keeps SPE's isolation."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions
from sqlalchemy import select

from spe.accounts.service import accept_terms, get_user
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.keys.workspace_tokens import verify_token
from spe.projects.service import (
    add_member,
    approve_member,
    approve_project,
    get_project,
    remove_member,
)
from spe.workspaces import kube_objects as ko
from spe.workspaces.spawner import WorkspaceRefused

VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))[-2:]
IPS = {"spe-airlock": "10.96.0.20", "hub": "10.96.0.10"}


class FakeCoreApi:
    """The kubernetes_asyncio CoreV1Api calls the spawner makes, recorded."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.patched: list[dict[str, Any]] = []

    async def read_namespaced_service(self, name: str, namespace: str) -> Any:
        return SimpleNamespace(spec=SimpleNamespace(cluster_ip=IPS[name]))

    async def _create(self, namespace: str, body: dict[str, Any]) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        if any(b["metadata"]["name"] == body["metadata"]["name"] for b in self.created):
            raise ApiException(status=409)
        self.created.append(body)

    async def _patch(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.patched.append(body)

    create_namespaced_persistent_volume_claim = _create
    create_namespaced_secret = _create
    patch_namespaced_persistent_volume_claim = _patch
    patch_namespaced_secret = _patch


def make_spawner(username: str, name: str, options: dict[str, Any]) -> Any:
    from spe.workspaces.kube_spawner import SPEKubeSpawner

    user = SimpleNamespace(
        name=username, url=f"/user/{username}/", escaped_name=username, groups=[], id=1
    )
    hub = SimpleNamespace(
        api_url="http://hub:8081/hub/api", base_url="/hub/", url="http://hub:8081", public_host=""
    )
    with (
        mock.patch("kubespawner.spawner.load_config"),
        mock.patch("kubespawner.spawner.shared_client", return_value=FakeCoreApi()),
    ):
        spawner = SPEKubeSpawner(
            user=user,
            orm_spawner=SimpleNamespace(name=name, server=None),
            hub=hub,
            cmd=["jupyterhub-singleuser"],
            extra_labels={"hub.jupyter.org/network-access-hub": "true"},
        )
    spawner.user_options = options
    spawner.api_token = "hub-token"
    spawner.oauth_client_id = "client"
    return spawner


@pytest.fixture
def open_study(world: Any) -> None:
    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
        accept_terms(s, get_user(s, "researcher"))
        accept_terms(s, get_user(s, "researcher_b"))


def test_profiles_are_the_projects_a_person_may_open_and_nothing_else(open_study: None) -> None:
    from spe.workspaces.kube_spawner import project_profiles

    member = make_spawner("researcher", "study", {})
    stranger = make_spawner("researcher_b", "study", {})
    assert [p["slug"] for p in asyncio.run(project_profiles(member))] == ["study"]
    assert asyncio.run(project_profiles(stranger)) == []


def test_start_checks_records_and_builds_an_isolated_pod(open_study: None) -> None:
    spawner = make_spawner("researcher", "study", {"profile": "study"})
    asyncio.run(spawner.load_user_options())
    kinds = sorted(b["kind"] for b in spawner.api.created)
    assert kinds == ["PersistentVolumeClaim", "Secret", "Secret"]
    secrets = {b["metadata"]["name"]: b for b in spawner.api.created if b["kind"] == "Secret"}
    secret = secrets[ko.token_secret_name("study", "researcher")]
    recorder_secret = secrets[ko.recorder_token_secret_name("study", "researcher")]
    with readonly() as s:
        claims = verify_token(s, secret["stringData"]["token"])
        recorder_claims = verify_token(s, recorder_secret["stringData"]["token"])
        actions = s.scalars(select(AuditEvent.action)).all()
    assert claims["pod"] == spawner.pod_name == ko.pod_name("study", "researcher")
    assert (claims["role"], recorder_claims["role"]) == ("workspace", "recorder")
    assert {"workspace.start", "workspace.token_issue"} <= set(actions)
    pod = ko.serialise(asyncio.run(spawner.get_pod_manifest()))
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    (container,) = pod["spec"]["containers"]
    (recorder,) = pod["spec"]["initContainers"]  # a native sidecar: started first, restarted
    # The notebook server on the pod's loopback; the pod's port is the recorder sidecar's.
    assert "--ServerApp.ip=127.0.0.1" in container["args"]
    assert f"--ServerApp.port={ko.NOTEBOOK_PORT}" in container["args"]
    assert f"--listen=0.0.0.0:{ko.SERVER_PORT}" in recorder["command"]
    assert recorder["restartPolicy"] == "Always"
    assert recorder["name"] == ko.RECORDER_CONTAINER
    assert recorder["securityContext"]["runAsUser"] == ko.RECORDER_UID != ko.WORKSPACE_UID
    assert "--airlock-url=tcp://10.96.0.20:8950" in recorder["command"]
    assert {m["name"] for m in recorder["volumeMounts"]} == {"recorder-token"}
    assert "recorder-token" not in {m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SPE_WORKSPACE_AIRLOCK_URL"] == "tcp://10.96.0.20:8950"
    assert env["JUPYTERHUB_API_URL"] == "http://10.96.0.10:8081/hub/api"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    labels = pod["metadata"]["labels"]
    assert labels[ko.WORKSPACE_LABEL] == "study--researcher"
    assert labels[ko.PROJECT_LABEL] == "study"
    assert labels["hub.jupyter.org/network-access-hub"] == "true"  # z2jh's label kept
    # A second start keeps the home and replaces the tokens.
    asyncio.run(spawner.load_user_options())
    assert [b["kind"] for b in spawner.api.patched] == ["Secret", "Secret"]


def test_start_is_refused_to_a_non_member_and_for_another_project(open_study: None) -> None:
    stranger = make_spawner("researcher_b", "study", {})
    with pytest.raises(WorkspaceRefused, match="member"):
        asyncio.run(stranger.load_user_options())
    assert stranger.api.created == []
    with readonly() as s:  # the refusal leaves its event, as on one machine
        refused = s.scalars(
            select(AuditEvent.target).where(
                AuditEvent.action == "request.refused", AuditEvent.actor == "researcher_b"
            )
        ).all()
    assert refused == ["project:study"]
    other = make_spawner("researcher", "study", {"profile": "elsewhere"})
    with pytest.raises(Exception, match="elsewhere"):
        asyncio.run(other.load_user_options())
    unknown = make_spawner("researcher", "study", {"profile": "study", "image": "evil"})
    with pytest.raises(WorkspaceRefused, match="no option 'image'"):
        unknown.apply_user_options(unknown, unknown.user_options)


async def _no_pod_status(self: Any) -> None:
    return None


async def _stopped(self: Any, now: bool = False) -> None:
    self.stopped_by_test = True


def test_a_running_workspace_renews_its_token_at_half_life(open_study: None) -> None:
    import time

    spawner = make_spawner("researcher", "study", {"profile": "study"})
    asyncio.run(spawner.load_user_options())
    spawner._token_issued = time.time() - 7 * 3600  # older than half of the 12 h lifetime
    with mock.patch("kubespawner.KubeSpawner.poll", _no_pod_status):
        assert asyncio.run(spawner.poll()) is None
    renewed, recorder = [b for b in spawner.api.patched if b["kind"] == "Secret"]
    with readonly() as s:
        claims = verify_token(s, renewed["stringData"]["token"])
        assert verify_token(s, recorder["stringData"]["token"])["role"] == "recorder"
    assert claims["iat"] >= time.time() - 60 and spawner._token_issued == claims["iat"]


def test_a_running_workspace_stops_when_its_user_loses_access(open_study: None) -> None:
    with transaction() as s:
        study = get_project(s, "study")
        add_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
        approve_member(s, get_user(s, "reviewer"), study, get_user(s, "researcher2"))
        accept_terms(s, get_user(s, "researcher2"))
    spawner = make_spawner("researcher2", "study", {"profile": "study"})
    asyncio.run(spawner.load_user_options())
    with transaction() as s:
        study = get_project(s, "study")
        remove_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
    spawner._last_access_check = 0.0
    with (
        mock.patch("kubespawner.KubeSpawner.poll", _no_pod_status),
        mock.patch("kubespawner.KubeSpawner.stop", _stopped),
    ):
        assert asyncio.run(spawner.poll()) == 0
    assert spawner.stopped_by_test
    with readonly() as s:
        reasons = s.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "workspace.stop")
        ).all()
    assert len(reasons) == 1 and "member" in reasons[0]
