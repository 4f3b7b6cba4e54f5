"""`spe k8s apply-project` / `delete-project` against a fake cluster API that records calls and
answers like the real one (409 on a second create, 404 on a missing object): no cluster is
available on this machine. Applying twice patches and creates nothing twice; deleting removes
only the project's objects and writes a signed certificate in the audit log; SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions
from sqlalchemy import select

from spe.accounts.service import get_user
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.errors import PermissionDenied
from spe.k8s import KubernetesError
from spe.k8s.provision import apply_project, delete_project
from spe.keys.signing import audit_public_key, verify_signature
from spe.projects.extracts import current_extracts, extract, grant_dataset
from spe.projects.service import approve_project, close_project, get_project
from spe.workspaces import kube_objects as ko
from tests.kube_fakes import FakeCluster

VERSIONS = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))[-2:]


@pytest.fixture
def approved(people: Any) -> None:
    with transaction() as s:
        study = get_project(s, "study")
        grant_dataset(s, get_user(s, "reviewer"), study, "people", ["income"], {})
        approve_project(s, get_user(s, "reviewer"), study)
    extract("study", "people")  # as the worker does after approval


def test_apply_creates_the_projects_volumes_and_policies_once(approved: None) -> None:
    cluster = FakeCluster()
    with transaction() as s:
        done = apply_project(s, get_user(s, "op"), get_project(s, "study"), cluster)
        (row,) = current_extracts(s, get_project(s, "study")).values()
    fill = next(a.name for a in done if a.kind == "Job")
    assert {(a.kind, a.name, a.outcome) for a in done} == {
        ("NetworkPolicy", "spe-workspaces-deny-all", "created"),
        ("NetworkPolicy", ko.project_policy_name("study"), "created"),
        ("PersistentVolumeClaim", ko.extract_pvc_name("study", "people"), "created"),
        ("Job", fill, "created"),
    }
    for body in cluster.objects.values():
        for version in VERSIONS:
            kubernetes_validate.validate(body, version, strict=True)
    claim = cluster.objects[("PersistentVolumeClaim", ko.extract_pvc_name("study", "people"))]
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    # The fill job copies this extract's folder of the data volume into that claim.
    pod = cluster.objects[("Job", fill)]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["env"] == [{"name": "SOURCE", "value": row.path.rsplit("/", 1)[0]}]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"]}
    assert claims["data"] == {"claimName": "spe-data", "readOnly": True}
    assert claims["extract"]["claimName"] == ko.extract_pvc_name("study", "people")
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_a_second_apply_patches_and_creates_no_duplicates(approved: None) -> None:
    cluster = FakeCluster()
    for _ in range(2):
        with transaction() as s:
            done = apply_project(s, get_user(s, "op"), get_project(s, "study"), cluster)
    assert len(cluster.objects) == 4
    assert {(a.kind, a.outcome) for a in done} == {
        ("NetworkPolicy", "updated"),
        ("PersistentVolumeClaim", "updated"),
        ("Job", "unchanged"),  # this extract version was copied already
    }
    patches = [c for c in cluster.calls if c[0] == "patch"]
    assert len(patches) == 3
    with readonly() as s:
        events = s.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "k8s.project_apply")
        ).all()
    assert len(events) == 2


def test_only_an_operator_provisions_and_only_an_approved_project(approved: None) -> None:
    cluster = FakeCluster()
    with pytest.raises(PermissionDenied), transaction() as s:
        apply_project(s, get_user(s, "reviewer"), get_project(s, "study"), cluster)
    with transaction() as s:
        close_project(s, get_user(s, "reviewer"), get_project(s, "study"), "done")
    with pytest.raises(KubernetesError, match="only an approved project"), transaction() as s:
        apply_project(s, get_user(s, "op"), get_project(s, "study"), cluster)
    assert cluster.calls == []


def test_delete_removes_the_projects_objects_and_records_a_signed_certificate(
    approved: None,
) -> None:
    cluster = FakeCluster()
    with transaction() as s:
        apply_project(s, get_user(s, "op"), get_project(s, "study"), cluster)
    # A workspace's home and token, as the spawner leaves them, and another project's volume.
    spec = ko.WorkspaceSpec("study", "researcher")
    cluster.create("PersistentVolumeClaim", "spe", ko.serialise(ko.home_pvc(spec)))
    cluster.create("Secret", "spe", ko.serialise(ko.token_secret(spec, "t")))
    cluster.create("PersistentVolumeClaim", "spe", ko.serialise(ko.extract_pvc("other", "people")))
    with pytest.raises(KubernetesError, match="close it first"), transaction() as s:
        delete_project(s, get_user(s, "op"), get_project(s, "study"), cluster)
    with transaction() as s:
        close_project(s, get_user(s, "reviewer"), get_project(s, "study"), "done")
    with transaction() as s:
        certificate = delete_project(s, get_user(s, "op"), get_project(s, "study"), cluster)
    assert set(cluster.objects) == {
        ("NetworkPolicy", "spe-workspaces-deny-all"),
        ("PersistentVolumeClaim", ko.extract_pvc_name("other", "people")),
    }
    removed = {(o["kind"], o["name"]) for o in certificate["objects"]}
    assert {kind for kind, _ in removed if kind == "Job"} == {"Job"}
    assert {(k, n) for k, n in removed if k != "Job"} == {
        ("Secret", ko.token_secret_name("study", "researcher")),
        ("PersistentVolumeClaim", ko.home_pvc_name("study", "researcher")),
        ("PersistentVolumeClaim", ko.extract_pvc_name("study", "people")),
        ("NetworkPolicy", ko.project_policy_name("study")),
    }
    with readonly() as s:
        (details,) = s.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "k8s.project_delete")
        ).all()
        public = audit_public_key(s)
    logged = json.loads(details)
    assert logged == certificate
    from spe.audit.canonical import canonical_json

    body = {k: v for k, v in logged.items() if k not in ("key_id", "signature")}
    message = b"SPE deletion certificate v1\n" + canonical_json(body).encode()
    assert verify_signature(public, message, logged["signature"])
    # Deleting again finds nothing and says so.
    with transaction() as s:
        again = delete_project(s, get_user(s, "op"), get_project(s, "study"), cluster)
    assert again["objects"] == []


@pytest.mark.parametrize(
    "command", [["--as", "op", "k8s", "apply-project", "study"], ["k8s", "airlock", "--port", "0"]]
)
def test_the_cli_says_what_to_do_without_a_cluster(
    run_spe: Any, world: Any, command: list[str]
) -> None:
    result = run_spe(*command, env={"KUBECONFIG": "/nonexistent"})
    assert result.returncode == 11
    assert "No Kubernetes cluster is configured" in result.stderr
    assert "Traceback" not in result.stderr
