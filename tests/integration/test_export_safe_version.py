"""Accepting the safe version of a failing table, on the demo's generated registry and on
SQLite and PostgreSQL: the server recomputes it from the frozen evidence with its own rules,
starts a new round, checks it again like any output and releases it when rules allow."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from spe.accounts.service import get_user
from spe.audit.models import AuditEvent
from spe.config import reset_settings
from spe.db import readonly, transaction
from spe.errors import NotFound, PermissionDenied
from spe.exports import actions
from spe.exports.actions import OutputRequest
from spe.exports.errors import ExportInputError, ExportStateError
from spe.projects.service import get_project
from spe.storage import data_storage
from spe.tasks import run_inline
from tests.conftest import table_snapshot

RESEARCHER, HOLDER = "demo-researcher", "demo-holder"


@pytest.fixture
def workspace(spe_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo platform with 8,000 synthetic persons; settings as inside the workspace; three
    recorded outputs: a table with small cells, a table that passes, and a note."""
    import spe.analysis as sa
    from spe.demo import PROJECT, publish_demo_data, set_up_demo
    from spe.projects.extracts import workspace_mounts

    set_up_demo()
    publish_demo_data(persons=8000)
    with readonly() as s:
        project = get_project(s, PROJECT)
        mounts = workspace_mounts(s, project)
        outbox = actions.default_outbox(project, RESEARCHER)
    data = tmp_path / "data"
    data.mkdir()
    for name, folder in mounts.items():
        (data / name).symlink_to(folder, target_is_directory=True)
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(data))
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(outbox))
    reset_settings()
    pop = sa.load("population")
    pop["cohort"] = (pop["birth_date"].astype(int) >= 1960).map({True: "1960-", False: "-1959"})
    small = sa.crosstab(pop, "municipality", ["sex", "cohort"], name="county_cohort")
    assert not small.passed
    assert sa.crosstab(pop, "municipality", "sex", name="county_by_sex").passed
    (outbox / "notes.txt").write_text("Income rises with education.\n")
    return {"project": PROJECT, "outbox": outbox, "small": small}


def file_(ws: dict[str, Any], *names: str) -> str:
    with transaction() as s:
        request, job = actions.file_request(
            s,
            get_user(s, RESEARCHER),
            get_project(s, ws["project"]),
            [OutputRequest(n, f"{n} for the paper") for n in names],
            "Tables",
        )
        rid = str(request.id)
    run_inline(job)  # what the worker does
    return rid


def act(user: str, fn: Any, rid: str, *args: Any) -> Any:
    with transaction() as s:
        return fn(s, get_user(s, user), actions.get_request(s, rid), *args)


def seen_by(user: str, rid: str) -> dict[str, Any]:
    with readonly() as s:
        return actions.detail(s, get_user(s, user), actions.get_request(s, rid))


def preview(user: str, rid: str, output: str, method: str = "suppress") -> dict[str, Any]:
    with readonly() as s:
        return actions.safe_preview(
            s, get_user(s, user), actions.get_request(s, rid), output, method
        )


def round_files(rid: str, round_: int) -> dict[str, tuple[str, bytes]]:
    """Every frozen file of a round: name -> (recorded sha256, bytes now in storage)."""
    storage = data_storage()
    with readonly() as s:
        request = actions.get_request(s, rid)
        return {
            f.name: (f.sha256, storage.path(f.path).read_bytes())
            for o in request.outputs
            if o.round == round_
            for f in o.files
        }


def events(rid: str) -> list[dict[str, Any]]:
    """The request's audit events, oldest first: action, actor and details."""
    with readonly() as s:
        rows = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.target == f"export_request:{rid}")
            .order_by(AuditEvent.id)
        )
        return [{"action": r.action, "actor": r.actor, **json.loads(r.details)} for r in rows]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def csv_cells(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


def test_the_accepted_safe_version_is_checked_again_and_released_with_its_cells_suppressed(
    workspace, tmp_path
):
    from spe.exports.bundle import verify_bundle
    from spe.keys.signing import audit_public_key

    rid = file_(workspace, "county_cohort.csv")
    before = seen_by(RESEARCHER, rid)
    assert before["status"] == "in_review" and before["outputs"][0]["check_status"] == "fail"
    first_round = round_files(rid, 1)

    shown = preview(RESEARCHER, rid, "county_cohort.csv")
    assert shown["status"] == "pass" and shown["can_accept"] and shown["suppressed_cells"] > 0
    # The server's safe version is the one the workspace offered (same rules here), computed
    # again from the frozen evidence, not taken from the workspace.
    assert shown["csv"] == workspace["small"].safe(record=False).to_spe_csv()

    job = act(RESEARCHER, actions.accept_safe_version, rid, "county_cohort.csv")
    with readonly() as s:
        request = actions.get_request(s, rid)
        assert (request.status.value, request.round) == ("checking", 2)
    run_inline(job)  # what the worker does

    after = seen_by(RESEARCHER, rid)
    # The safe version passes every check, but the workspace computed its evidence: a reviewer
    # must still look at it (the server could not recompute it), and one approval suffices.
    assert after["status"] == "in_review" and not after["auto_released"]
    assert after["round"] == 2 and after["outputs"][0]["check_status"] == "pass"
    assert after["outputs"][0]["computed_by"] == "workspace"
    assert after["outputs"][0]["justification"] == "county_cohort.csv for the paper"
    act(HOLDER, actions.vote, rid, "county_cohort.csv", "approve", "Safe version: fine.")
    assert act(HOLDER, actions.decide, rid).value == "released"

    # The bundle holds the safe CSV: the suppressed cells are empty, the rest as previewed.
    with transaction() as s:
        path = actions.download(s, get_user(s, RESEARCHER), actions.get_request(s, rid))
        key = audit_public_key(s)
    assert verify_bundle(path, key).ok
    with zipfile.ZipFile(path) as z:
        released = z.read("outputs/county_cohort.csv")
    assert released.decode() == shown["csv"]
    body = [row[1:] for row in csv_cells(released)[3:]]
    assert sum(cell == "" for row in body for cell in row) == shown["suppressed_cells"]
    flags = [c["suppressed"] for row in shown["rows"] for c in row["cells"]]
    assert [cell == "" for row in body for cell in row] == flags

    # The new round: a new sidecar naming the new CSV, the same evidence; round 1 untouched.
    second = round_files(rid, 2)
    sidecar = json.loads(second["county_cohort.spe.json"][1])
    assert sidecar["spec"]["safe"] == "suppress"
    assert sidecar["file_sha256"] == sha(released) == second["county_cohort.csv"][0]
    assert second["county_cohort.evidence.parquet"] == first_round["county_cohort.evidence.parquet"]
    assert sidecar["report"]["status"] == "pass" and "safe" in sidecar["report"]
    assert round_files(rid, 1) == first_round
    assert all(sha(data) == recorded for recorded, data in first_round.values())

    trail = events(rid)
    assert [e["action"] for e in trail] == [
        "export.file",
        "export.check",
        "export.queue",
        "export.accept_safe",
        "export.check",
        "export.queue",
        "export.vote",
        "export.decide",
        "export.release",
        "export.download",
    ]
    accepted = trail[3]
    assert accepted["round"] == 2 and accepted["previous_round"] == 1
    assert (accepted["output"], accepted["method"]) == ("county_cohort.csv", "suppress")
    assert accepted["file_sha256"] == sha(released)
    assert accepted["replaced_file_sha256"] == first_round["county_cohort.csv"][0]
    assert accepted["actor"] == RESEARCHER

    with pytest.raises(ExportStateError, match="it has been released"):
        act(RESEARCHER, actions.accept_safe_version, rid, "county_cohort.csv", "round")


def test_a_rounded_safe_version_publishes_counts_in_multiples_of_five(workspace):
    rid = file_(workspace, "county_cohort.csv")
    job = act(RESEARCHER, actions.accept_safe_version, rid, "county_cohort.csv", "round")
    run_inline(job)
    after = seen_by(RESEARCHER, rid)
    assert after["outputs"][0]["check_status"] == "pass", after["outputs"][0]["reasons"]
    data = round_files(rid, 2)["county_cohort.csv"][1]
    values = [int(v) for row in csv_cells(data)[3:] for v in row[1:]]
    assert values and all(v % 5 == 0 for v in values)
    assert events(rid)[3]["method"] == "round"


def test_a_describe_table_is_made_safe_by_leaving_its_failing_statistics_out(workspace):
    import spe.analysis as sa

    pop = sa.load("population")
    pop["cohort"] = (pop["birth_date"].astype(int) >= 1960).map({True: "1960-", False: "-1959"})
    assert not sa.describe(pop, "birth_date", by=["municipality", "sex", "cohort"], name="d").passed
    rid = file_(workspace, "d.csv")
    with pytest.raises(ExportInputError, match="use method 'suppress'"):
        act(RESEARCHER, actions.accept_safe_version, rid, "d.csv", "round")
    shown = preview(RESEARCHER, rid, "d.csv")
    assert shown["status"] == "pass" and shown["suppressed_cells"] > 0
    run_inline(act(RESEARCHER, actions.accept_safe_version, rid, "d.csv"))
    after = seen_by(RESEARCHER, rid)
    assert after["status"] == "in_review" and after["outputs"][0]["check_status"] == "pass"
    assert round_files(rid, 2)["d.csv"][1].decode() == shown["csv"]


@pytest.mark.parametrize("by", [[], ["sex"]])
def test_a_histogram_is_made_safe_by_rounding_its_counts(workspace, by):
    import spe.analysis as sa

    pop = sa.load("population")
    assert not sa.hist(pop, "birth_date", bins=40, by=by or None, name="years").passed
    rid = file_(workspace, "years.csv")
    shown = preview(RESEARCHER, rid, "years.csv", "round")
    run_inline(act(RESEARCHER, actions.accept_safe_version, rid, "years.csv", "round"))
    after = seen_by(RESEARCHER, rid)["outputs"][0]
    assert after["check_status"] == shown["status"], after["reasons"]
    data = round_files(rid, 2)["years.csv"][1]
    assert data.decode() == shown["csv"]
    lines = csv_cells(data)[(2 if by else 1) :]
    counts = [int(v) for row in lines for v in row[1:] if v]
    assert counts and all(v % 5 == 0 for v in counts)
    assert shown["rounded_cells"] > 0


def test_refusals_say_what_to_do_and_change_nothing(workspace):
    rid = file_(workspace, "notes.txt", "county_by_sex.csv", "county_cohort.csv")
    view = {o["name"]: o["check_status"] for o in seen_by(RESEARCHER, rid)["outputs"]}
    assert view == {"notes.txt": "review", "county_by_sex.csv": "pass", "county_cohort.csv": "fail"}
    before = table_snapshot()
    accept = actions.accept_safe_version
    cases = [
        (HOLDER, ("county_cohort.csv",), PermissionDenied, "Only demo-researcher, who filed"),
        (RESEARCHER, ("county_by_sex.csv",), ExportInputError, "passes every check already"),
        (RESEARCHER, ("notes.txt",), ExportInputError, "not a table recorded by spe.analysis"),
        (RESEARCHER, ("county_cohort.csv", "blur"), ExportInputError, "'blur' is not a safe"),
        (RESEARCHER, ("nothing.csv",), NotFound, "has no output 'nothing.csv'"),
    ]
    for user, args, error, message in cases:
        with pytest.raises(error, match=message):
            act(user, accept, rid, *args)
        assert table_snapshot() == before, (user, args)
    assert not data_storage().exists(f"exports/{_project_id(rid)}/{rid}/r2")
    # The reviewer may look at the safe version, but not accept it.
    seen = preview(HOLDER, rid, "county_cohort.csv")
    assert not seen["can_accept"] and "Only demo-researcher" in seen["cannot_accept"]
    with pytest.raises(PermissionDenied, match="author and the data holder's reviewers"):
        preview("demo-admin", rid, "county_cohort.csv")
    assert table_snapshot() == before

    act(RESEARCHER, actions.withdraw, rid, "wrong table")
    with pytest.raises(ExportStateError, match=r"it was withdrawn.*file a new request"):
        act(RESEARCHER, accept, rid, "county_cohort.csv")
    assert not preview(RESEARCHER, rid, "county_cohort.csv")["can_accept"]


def test_a_frozen_file_altered_in_storage_stops_the_new_round_and_nothing_is_kept(workspace):
    from spe.exports.errors import ExportError

    rid = file_(workspace, "notes.txt", "county_cohort.csv")
    with readonly() as s:
        request = actions.get_request(s, rid)
        note = next(f for o in request.outputs if o.name == "notes.txt" for f in o.files)
        frozen = data_storage().path(note.path)
    frozen.write_text("Income rises with education, in Tromsø above all.\n")
    before = table_snapshot()
    with pytest.raises(ExportError, match="no longer matches the SHA-256 it was frozen with"):
        act(RESEARCHER, actions.accept_safe_version, rid, "county_cohort.csv")
    assert table_snapshot() == before
    round_2 = data_storage().path(f"exports/{_project_id(rid)}/{rid}/r2")
    assert not round_2.exists() and not list(round_2.parent.glob(".tmp-*"))


def test_a_closed_project_takes_no_safe_version(workspace):
    from spe.projects.service import close_project

    rid = file_(workspace, "county_cohort.csv")
    with transaction() as s:
        close_project(s, get_user(s, HOLDER), get_project(s, workspace["project"]), "Ended.")
    with pytest.raises(PermissionDenied, match="is closed, so its data cannot be used"):
        act(RESEARCHER, actions.accept_safe_version, rid, "county_cohort.csv")


def _project_id(rid: str) -> str:
    with readonly() as s:
        return str(actions.get_request(s, rid).project_id)


def test_after_changes_were_requested_the_other_outputs_come_along_and_votes_start_afresh(
    workspace,
):
    rid = file_(workspace, "notes.txt", "county_cohort.csv")
    for reviewer in (HOLDER, "demo-reviewer2"):  # four eyes for a file rules cannot read
        act(reviewer, actions.vote, rid, "notes.txt", "approve", "General text.")
    act(HOLDER, actions.vote, rid, "county_cohort.csv", "request_changes", "Small cells.")
    assert act(HOLDER, actions.decide, rid).value == "changes_requested"
    first = round_files(rid, 1)
    job = act(RESEARCHER, actions.accept_safe_version, rid, "county_cohort.csv")
    # Once the round is being checked, it cannot take another safe version.
    with pytest.raises(ExportStateError, match=r"still being checked.*wait for the check"):
        act(RESEARCHER, actions.accept_safe_version, rid, "county_cohort.csv", "round")
    run_inline(job)
    second = round_files(rid, 2)
    assert second["notes.txt"] == first["notes.txt"]
    assert second["county_cohort.csv"] != first["county_cohort.csv"]
    with readonly() as s:
        request = actions.get_request(s, rid)
        assert request.status.value == "in_review"  # the note still needs reviewers
        assert actions.pending_decisions(s, request) == {
            "notes.txt": "it has no vote yet",
            "county_cohort.csv": "it has no vote yet",
        }
    checked = {o["name"]: o["check_status"] for o in seen_by(RESEARCHER, rid)["outputs"]}
    assert checked == {"notes.txt": "review", "county_cohort.csv": "pass"}


def test_resubmitting_from_the_outbox_still_waits_for_the_reviewers(workspace):
    rid = file_(workspace, "county_cohort.csv")
    with pytest.raises(ExportStateError, match="waiting for review"):
        act(RESEARCHER, actions.resubmit, rid, [OutputRequest("county_cohort.csv", "again")])


def test_the_api_and_the_command_accept_a_safe_version(workspace, run_spe):
    from fastapi.testclient import TestClient

    from spe.accounts.tokens import create_token
    from spe.api import create_app
    from tests.integration.test_pages import set_own_passwords

    set_own_passwords((RESEARCHER, HOLDER))  # a one-time password gets no API token
    with transaction() as s:
        tokens = {n: create_token(s, get_user(s, n)) for n in (RESEARCHER, HOLDER)}
    client = TestClient(create_app())

    def call(who: str, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {tokens[who]}"}
        return client.request(method, f"/api/v1/exports/{path}", headers=headers, **kw)

    rid = file_(workspace, "county_cohort.csv")
    got = call(RESEARCHER, "GET", f"{rid}/outputs/county_cohort.csv/safe-version?method=round")
    assert got.status_code == 200 and got.json()["status"] == "pass", got.text
    assert got.json()["rounded_cells"] > 0
    refused = call(HOLDER, "POST", f"{rid}/outputs/county_cohort.csv/accept-safe", json={})
    assert refused.status_code == 403 and "Only demo-researcher" in refused.json()["detail"]
    bad = call(
        RESEARCHER, "POST", f"{rid}/outputs/county_cohort.csv/accept-safe", json={"method": "x"}
    )
    assert bad.status_code == 422
    done = call(RESEARCHER, "POST", f"{rid}/outputs/county_cohort.csv/accept-safe", json={})
    assert done.status_code == 202, done.text
    assert done.json()["request"]["round"] == 2 and done.json()["request"]["status"] == "checking"
    again = call(RESEARCHER, "POST", f"{rid}/outputs/county_cohort.csv/accept-safe", json={})
    assert again.status_code == 409 and "still being checked" in again.json()["detail"]
    run_inline(done.json()["check_job"])
    assert seen_by(RESEARCHER, rid)["status"] == "in_review"  # computed in the workspace

    other = file_(workspace, "county_cohort.csv")
    args = ("export", "accept-safe", other[:8], "county_cohort.csv", "--method", "round")
    refused_cli = run_spe("--as", HOLDER, *args)
    assert refused_cli.returncode == 3 and "Only demo-researcher" in refused_cli.stderr
    assert "Traceback" not in refused_cli.stderr
    ran = run_spe("--as", RESEARCHER, *args, "--inline")
    assert ran.returncode == 0, ran.stderr
    assert "Accepted the round safe version of county_cohort.csv: checked." in ran.stdout
    assert "is now in review" in ran.stdout, ran.stdout
