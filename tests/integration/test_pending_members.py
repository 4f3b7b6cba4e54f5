"""Members through the data holder (issue 16, point 6): a person added to an approved project
waits for a reviewer of the project's data holder, and until then gets nothing, from wherever
they try: the real spawn form and spawner, the real airlock socket, the DP service, filing an
export through the API. Decisions are the holder's own (not another holder's, not the lead's),
a refusal's reason reaches the lead, and removal is immediate. SQLite only: the database is not
the point (the rules are the same queries on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from spe.accounts.models import Role
from spe.accounts.service import accept_terms, get_organisation, get_user, grant_role
from spe.accounts.tokens import create_token
from spe.api import create_app
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.errors import PermissionDenied
from spe.projects.models import MemberRequestStatus, ProjectMember, ProjectMemberRequest
from spe.projects.service import (
    add_member,
    approve_member,
    approve_project,
    get_project,
    pending_request,
    remove_member,
)
from spe.web import PREFIX

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

WAITING = "waiting for approval by Holder Agency"


def events(action: str) -> list[dict[str, Any]]:
    with readonly() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()
        return [
            {"actor": e.actor, "target": e.target, "project": e.project, **json.loads(e.details)}
            for e in rows
        ]


def refusals(actor: str) -> list[dict[str, Any]]:
    return [e for e in events("request.refused") if e["actor"] == actor]


@pytest.fixture
def pending(world: Any) -> Iterator[None]:
    """Project 'study' approved; its lead 'researcher' added 'researcher2' afterwards, who has
    accepted the terms (so only the holder's approval is missing)."""
    with transaction() as s:
        study = get_project(s, "study")
        approve_project(s, get_user(s, "reviewer"), study)
        for name in ("researcher", "researcher2"):
            accept_terms(s, get_user(s, name))
        added = add_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
        assert isinstance(added, ProjectMemberRequest)
    yield


def _api(*names: str) -> tuple[TestClient, dict[str, str]]:
    with transaction() as s:
        tokens = {n: create_token(s, get_user(s, n)) for n in names}
    return TestClient(create_app()), tokens


def _as(tokens: dict[str, str], name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[name]}"}


def test_the_spawn_form_and_the_spawner_refuse_a_pending_member(pending: None) -> None:
    from spe.workspaces.spawner import (
        WorkspaceRefused,
        WorkspaceSpawner,
        admit_workspace,
        workspace_options_form,
    )

    with readonly() as s:
        member = s.scalar(
            select(ProjectMember).where(ProjectMember.user_id == get_user(s, "researcher2").id)
        )
        assert member is None  # a member nowhere until the holder approves
    (added,) = events("member.add_pending")
    assert added["actor"] == "researcher" and added["user"] == "researcher2"
    assert added["holder"] == "Holder Agency" and added["project"] == "study"

    def form(name: str) -> str:
        spawner = SimpleNamespace(user=SimpleNamespace(name=name), name="study")
        return asyncio.run(workspace_options_form(spawner))  # type: ignore[arg-type]

    assert 'value="study"' in form("researcher")  # the lead is offered it
    assert 'value="study"' not in form("researcher2")
    assert "no project open for work" in form("researcher2")
    # Posting the form anyway (or the REST API's options), and the start itself.
    spawner = SimpleNamespace(user=SimpleNamespace(name="researcher2"), name="study")
    with pytest.raises(WorkspaceRefused, match=WAITING):
        asyncio.run(WorkspaceSpawner._options_from_form(spawner, {"project": ["study"]}))  # type: ignore[arg-type]
    with pytest.raises(WorkspaceRefused, match="no workspace and no data"):
        admit_workspace("researcher2", "study")
    refused = refusals("researcher2")
    # One event (a second refusal in the same minute is counted into it, spe.audit.refusals).
    assert refused and {e["action"] for e in refused} == {"workspace.start"}
    assert WAITING in refused[0]["sentence"] and refused[0]["target"] == "project:study"
    assert events("workspace.start") == []
    # Approved by the holder: offered and admitted.
    with transaction() as s:
        approve_member(
            s, get_user(s, "reviewer"), get_project(s, "study"), get_user(s, "researcher2")
        )
    assert 'value="study"' in form("researcher2")
    assert admit_workspace("researcher2", "study").project == "study"


def test_dp_queries_and_export_filing_are_refused_to_a_pending_member(pending: None) -> None:
    from spe.dp.service import submit_query, variables

    query = {"dataset": "people", "kind": "count", "epsilon": 0.1}
    with pytest.raises(PermissionDenied, match=WAITING):
        submit_query("researcher2", "study", query)
    with pytest.raises(PermissionDenied, match=WAITING), readonly() as s:
        variables(s, get_user(s, "researcher2"), "study", "people")
    client, tokens = _api("researcher2")
    answer = client.post(
        "/api/v1/projects/study/exports",
        json={"title": "t", "outputs": [{"name": "table.csv", "justification": "paper"}]},
        headers=_as(tokens, "researcher2"),
    )
    assert answer.status_code == 403 and WAITING in answer.json()["detail"]
    (refused,) = refusals("researcher2")
    assert refused["action"] == "POST /api/v1/projects/{project}/exports"
    assert WAITING in refused["sentence"]
    assert events("export.file") == []


def test_the_airlock_refuses_every_verb_of_a_pending_member(pending: None) -> None:
    """The real airlock on its unix sockets; a workspace of the pending member exists in the
    registry (as if started by a path that skipped the spawner's check)."""
    from spe.workspaces.layout import host_paths
    from spe.workspaces.registry import workspace_started
    from tests.integration.test_airlock import AirlockThread

    with transaction() as s:
        study = get_project(s, "study")
        for name in ("researcher", "researcher2"):
            workspace_started(s, get_user(s, name), study)
    paths = {n: host_paths("study", n) for n in ("researcher", "researcher2")}
    service = AirlockThread().start()
    try:
        deadline = time.monotonic() + 10
        while not all(p.airlock_socket.exists() for p in paths.values()):
            assert time.monotonic() < deadline, "the airlock did not open the sockets"
            time.sleep(0.05)

        def ask(name: str, request: dict[str, Any]) -> dict[str, Any]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(10)
                conn.connect(str(paths[name].airlock_socket))
                conn.sendall(json.dumps(request).encode() + b"\n")
                return dict(json.loads(conn.makefile("rb").readline()))

        verbs = [
            {"op": "hello"},
            {"op": "cell", "code": "1 + 1"},
            {"op": "load", "dataset": "people", "columns": ["income"], "rows": 3},
            {"op": "export", "outputs": [{"name": "t.csv", "justification": "x"}]},
            {"op": "exports"},
            {"op": "dp", "dataset": "people", "kind": "count", "epsilon": 0.1},
            {"op": "dp_budget"},
            {"op": "dp_datasets"},
            {"op": "dp_variables", "dataset": "people"},
        ]
        for verb in verbs:
            answer = ask("researcher2", verb)
            assert answer["ok"] is False and WAITING in answer["error"], (verb, answer)
        assert ask("researcher", {"op": "hello"})["ok"] is True
        refused = refusals("researcher2")
        assert sorted(e["action"] for e in refused) == sorted(f"airlock.{v['op']}" for v in verbs)
        assert all(
            e["target"].startswith("workspace:") and "researcher2" in e["target"] for e in refused
        )
        assert events("workspace.cell") == [] and events("workspace.load") == []
        # Approved: the same workspace is answered. Removed: refused on its very next request.
        with transaction() as s:
            study = get_project(s, "study")
            approve_member(s, get_user(s, "reviewer"), study, get_user(s, "researcher2"))
        assert ask("researcher2", {"op": "hello"})["ok"] is True
        with transaction() as s:
            study = get_project(s, "study")
            remove_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
        answer = ask("researcher2", {"op": "hello"})
        assert answer["ok"] is False and "not a member of project study" in answer["error"]
    finally:
        service.stop()


def test_only_a_reviewer_of_the_projects_own_holder_decides_and_never_the_lead(
    pending: None, capsys: Any
) -> None:
    with (
        pytest.raises(PermissionDenied, match="Only a reviewer of Holder Agency"),
        transaction() as s,
    ):
        approve_member(
            s,
            get_user(s, "other_reviewer"),
            get_project(s, "study"),
            get_user(s, "researcher2"),
        )
    client, tokens = _api("other_reviewer", "researcher")
    for who, path in (
        ("other_reviewer", "refuse"),
        ("researcher", "approve"),
    ):
        answer = client.post(
            f"/api/v1/projects/study/members/researcher2/{path}",
            json={"reason": "mine to say"},
            headers=_as(tokens, who),
        )
        assert answer.status_code == 403, answer.text
        assert "reviewer of Holder Agency" in answer.json()["detail"]
        assert refusals(who)[-1]["action"] == f"member.{path}"
    # The lead who is also a reviewer of the holder still cannot let in their own member.
    with transaction() as s:
        grant_role(
            s,
            get_user(s, "op"),
            get_user(s, "researcher"),
            Role.HOLDER_REVIEWER,
            get_organisation(s, "Holder Agency"),
        )
    with (
        pytest.raises(PermissionDenied, match="You are a member of project study"),
        transaction() as s,
    ):
        approve_member(
            s, get_user(s, "researcher"), get_project(s, "study"), get_user(s, "researcher2")
        )
    with readonly() as s:
        request = pending_request(s, get_project(s, "study"), get_user(s, "researcher2"))
        assert request is not None and request.status == MemberRequestStatus.PENDING
    assert events("member.approve") == [] and events("member.refuse") == []
    # The CLI, in-process (spe.cli.main, as the console script runs it).
    from spe.cli import main

    def spe(*argv: str) -> tuple[int, str, str]:
        code = 0
        try:
            main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = spe(
        "--as", "other_reviewer", "project", "member", "approve", "study", "researcher2"
    )
    assert code != 0 and "Only a reviewer of Holder Agency" in err and "Traceback" not in err
    assert refusals("other_reviewer")[-1]["action"] == "member.approve"
    code, out, _ = spe("--as", "researcher", "project", "member", "list", "study")
    assert code == 0 and "researcher2\tmember\tpending\tpending approval by Holder Agency" in out
    code, out, err = spe(
        "--as",
        "reviewer",
        "project",
        "member",
        "refuse",
        "study",
        "researcher2",
        "--reason",
        "Not in the agreement.",
    )
    assert code == 0 and "the project's lead sees your reason" in out, err
    code, out, _ = spe("--as", "researcher", "project", "member", "list", "study")
    assert "researcher2\tmember\trefused\tby reviewer: Not in the agreement." in out


def test_the_holder_refuses_on_the_page_and_the_lead_reads_the_reason(pending: None) -> None:
    client, tokens = _api("reviewer", "researcher", "researcher2")

    def page(who: str, path: str) -> str:
        answer = client.get(PREFIX + path, headers=_as(tokens, who))
        assert answer.status_code == 200, answer.text
        return " ".join(answer.text.split())

    holder = page("reviewer", "/holder/projects/study")
    assert "Members waiting for your approval" in holder
    assert "Approve researcher2" in holder and "Refuse researcher2" in holder
    assert "pending approval by Holder Agency" in page("researcher", "/projects")
    assert "pending approval by Holder Agency" in page("researcher2", "/projects")
    csrf = client.get(PREFIX + "/projects", headers=_as(tokens, "reviewer")).cookies
    assert csrf is not None
    refused = client.post(
        PREFIX + "/holder/projects/study/members/researcher2/refuse",
        data={"reason": "Not named in the data processing agreement."},
        headers=_as(tokens, "reviewer"),
        follow_redirects=False,
    )
    assert refused.status_code == 303, refused.text
    lead = page("researcher", "/projects")
    assert "refused by reviewer" in lead
    assert "Not named in the data processing agreement." in lead
    (event,) = events("member.refuse")
    assert event["actor"] == "reviewer" and event["reason"].startswith("Not named")
    with pytest.raises(PermissionDenied, match="not a member"), readonly() as s:
        from spe.projects.service import check_can_access_data

        check_can_access_data(s, get_user(s, "researcher2"), get_project(s, "study"))


def test_removal_is_immediate_for_members_and_withdraws_a_pending_one(pending: None) -> None:
    from spe.workspaces.spawner import workspace_refusal

    with transaction() as s:
        study = get_project(s, "study")
        remove_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
    with readonly() as s:
        study = get_project(s, "study")
        assert pending_request(s, study, get_user(s, "researcher2")) is None
        refusal = workspace_refusal(s, "researcher2", "study")
        assert refusal is not None and "not a member" in refusal
    (removed,) = events("project.member_remove")
    assert removed["pending"] is True and removed["user"] == "researcher2"
    with pytest.raises(Exception, match="not waiting for approval"), transaction() as s:
        approve_member(
            s, get_user(s, "reviewer"), get_project(s, "study"), get_user(s, "researcher2")
        )
    # Added again and approved, then removed: access ends with the removal's transaction.
    with transaction() as s:
        study = get_project(s, "study")
        add_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
        approve_member(s, get_user(s, "reviewer2"), study, get_user(s, "researcher2"), "ok")
    with readonly() as s:
        assert workspace_refusal(s, "researcher2", "study") is None
    with transaction() as s:
        remove_member(
            s, get_user(s, "researcher"), get_project(s, "study"), get_user(s, "researcher2")
        )
    with readonly() as s:
        assert "not a member" in (workspace_refusal(s, "researcher2", "study") or "")
    (approved,) = events("member.approve")
    assert approved["actor"] == "reviewer2" and approved["note"] == "ok"


def test_members_of_an_application_and_members_the_holder_adds_join_at_once(world: Any) -> None:
    with transaction() as s:
        study = get_project(s, "study")
        joined = add_member(s, get_user(s, "researcher"), study, get_user(s, "researcher2"))
        assert isinstance(joined, ProjectMember)  # the holder approves the project with them
        approve_project(s, get_user(s, "reviewer"), study)
        by_holder = add_member(s, get_user(s, "reviewer"), study, get_user(s, "researcher_b"))
        assert isinstance(by_holder, ProjectMember)  # the holder's own decision
    added = events("project.member_add")
    assert [e["user"] for e in added] == ["researcher2", "researcher_b"]
    assert added[1].get("decided_by_holder") is True and events("member.add_pending") == []
