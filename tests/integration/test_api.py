"""The SPE API over HTTP (FastAPI's TestClient: the real application, routes, errors and
database; no server socket): researchers file and download, reviewers queue, vote and decide.
The check job is run in the test process where a worker would run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from spe.accounts.service import accept_terms, get_user
from spe.accounts.tokens import create_token, revoke_tokens
from spe.api import create_app
from spe.db import readonly, transaction
from spe.exports.actions import default_outbox
from spe.exports.bundle import verify_bundle
from spe.projects.service import approve_project, get_project
from spe.tasks import run_inline
from tests.integration.test_exports import png_bytes

USERS = ("researcher", "researcher2", "reviewer", "reviewer2", "other_reviewer")


@pytest.fixture
def api(world: Any) -> dict[str, Any]:
    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
        accept_terms(s, get_user(s, "researcher"))
        tokens = {name: create_token(s, get_user(s, name)) for name in USERS}
        outbox = default_outbox(get_project(s, "study"), "researcher")
    outbox.mkdir(parents=True)
    (outbox / "plot.png").write_bytes(png_bytes())
    (outbox / "notes.txt").write_text("Income rises with education.\n")
    client = TestClient(create_app())
    return {"client": client, "tokens": tokens, "outbox": outbox}


def call(api: dict[str, Any], who: str | None, method: str, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {api['tokens'][who]}"} if who else {}
    return api["client"].request(method, f"/api/v1{path}", headers=headers, **kw)


def file_(api: dict[str, Any], *names: str) -> str:
    body = {"title": "Figures", "outputs": [{"name": n, "justification": "paper"} for n in names]}
    response = call(api, "researcher", "POST", "/projects/study/exports", json=body)
    assert response.status_code == 202, response.text
    filed = response.json()
    run_inline(filed["check_job"])  # what the worker does with the dispatched job
    return filed["request"]["id"]


def test_the_openapi_document_is_published_with_both_roles_routes(api):
    doc = api["client"].get("/api/v1/openapi.json").json()
    paths = set(doc["paths"])
    assert {
        "/api/v1/projects/{project}/exports",
        "/api/v1/exports",
        "/api/v1/exports/{request_id}",
        "/api/v1/exports/{request_id}/bundle",
        "/api/v1/exports/{request_id}/withdraw",
        "/api/v1/review/queue",
        "/api/v1/review/{request_id}",
        "/api/v1/review/{request_id}/votes",
        "/api/v1/review/{request_id}/decide",
        "/api/v1/review/{request_id}/revoke",
    } <= paths
    assert doc["components"]["schemas"]["VoteIn"]["required"] == ["output", "vote", "comment"]


def test_without_a_valid_token_the_api_says_how_to_get_one(api):
    assert call(api, None, "GET", "/exports").status_code == 401
    assert "spe token create" in call(api, None, "GET", "/exports").json()["detail"]
    bad = api["client"].get("/api/v1/exports", headers={"Authorization": "Bearer spe_nope"})
    assert bad.status_code == 401 and "unknown or revoked" in bad.json()["detail"]
    with transaction() as s:
        revoke_tokens(s, get_user(s, "researcher2"))
    assert call(api, "researcher2", "GET", "/exports").status_code == 401


def test_a_request_goes_from_filing_through_four_eyes_to_a_verified_download(api, tmp_path):
    rid = file_(api, "plot.png")
    queue = call(api, "reviewer", "GET", "/review/queue").json()
    assert [r["id"] for r in queue] == [rid] and queue[0]["status"] == "in_review"
    detail = call(api, "reviewer", "GET", f"/review/{rid}").json()
    assert detail["outputs"][0]["approvals_needed"] == 2
    image = call(api, "reviewer", "GET", f"/review/{rid}/outputs/plot.png")
    assert image.headers["content-type"] == "image/png" and image.content == png_bytes()
    vote = {"output": "plot.png", "vote": "approve", "comment": "Totals only."}
    assert call(api, "reviewer", "POST", f"/review/{rid}/votes", json=vote).status_code == 201
    early = call(api, "reviewer", "POST", f"/review/{rid}/decide")
    assert early.status_code == 409 and "second reviewer" in early.json()["detail"]
    call(api, "reviewer2", "POST", f"/review/{rid}/votes", json=vote)
    decided = call(api, "reviewer2", "POST", f"/review/{rid}/decide")
    assert decided.status_code == 200 and decided.json()["status"] == "released"
    assert call(api, "researcher2", "GET", f"/exports/{rid}/bundle").status_code == 403
    bundle = call(api, "researcher", "GET", f"/exports/{rid}/bundle")
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zip"
    path = tmp_path / "release.zip"
    path.write_bytes(bundle.content)
    with readonly() as s:
        from spe.keys.signing import audit_public_key

        assert verify_bundle(path, audit_public_key(s)).ok


def test_refusals_are_sentences_with_fitting_status_codes(api):
    rid = file_(api, "notes.txt")
    own = call(
        api,
        "researcher",
        "POST",
        f"/review/{rid}/votes",
        json={"output": "notes.txt", "vote": "approve", "comment": "mine"},
    )
    assert own.status_code == 403
    other = call(api, "other_reviewer", "GET", f"/review/{rid}")
    assert other.status_code == 403 and "Only the request's author" in other.json()["detail"]
    assert call(api, "researcher", "GET", "/exports/00000000").status_code == 404
    bad = call(
        api,
        "researcher",
        "POST",
        "/projects/study/exports",
        json={"outputs": [{"name": "../../etc/passwd", "justification": "x"}]},
    )
    assert bad.status_code == 422 and "not a plain file name" in bad.json()["detail"]
    empty = call(api, "researcher", "POST", "/projects/study/exports", json={"outputs": []})
    assert empty.status_code == 422 and "names no outputs" in empty.json()["detail"]
    withdrawn = call(api, "researcher", "POST", f"/exports/{rid}/withdraw", json={"reason": "x"})
    assert withdrawn.json()["status"] == "withdrawn"
    again = call(api, "researcher", "POST", f"/exports/{rid}/withdraw", json={"reason": "x"})
    assert again.status_code == 409 and "withdrawn" in again.json()["detail"]
    assert "Traceback" not in again.text


def test_private_reviewer_comments_never_reach_the_researcher(api):
    rid = file_(api, "notes.txt")
    call(
        api,
        "reviewer",
        "POST",
        f"/review/{rid}/comments",
        json={"body": "Between us: check the municipality.", "visibility": "reviewers"},
    )
    call(api, "reviewer", "POST", f"/review/{rid}/comments", json={"body": "Thanks, looking."})
    seen = call(api, "researcher", "GET", f"/exports/{rid}").json()
    assert [c["body"] for c in seen["review"]["comments"]] == ["Thanks, looking."]
    reviewers = call(api, "reviewer2", "GET", f"/review/{rid}").json()
    assert len(reviewers["review"]["comments"]) == 2
    private = call(
        api,
        "researcher",
        "POST",
        f"/exports/{rid}/comments",
        json={"body": "psst", "visibility": "reviewers"},
    )
    assert private.status_code == 422


def test_the_api_never_reads_files_outside_the_callers_outbox(api, tmp_path: Path):
    secret = tmp_path / "secret.csv"
    secret.write_text("person,income\nA,1\n")
    (api["outbox"] / "secret.csv").symlink_to(secret)
    response = call(
        api,
        "researcher",
        "POST",
        "/projects/study/exports",
        json={"outputs": [{"name": "secret.csv", "justification": "x"}]},
    )
    assert response.status_code == 422 and "symbolic link" in response.json()["detail"]
