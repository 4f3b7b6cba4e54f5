"""Export requests end to end on SQLite and PostgreSQL: filing, the server-side check, review
with four eyes, refusals with reasons, resubmission, revocation, the signed bundle."""

from __future__ import annotations

import datetime as dt
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from spe.accounts.service import accept_terms, get_user, grant_role
from spe.audit.log import record
from spe.audit.models import AuditEvent
from spe.db import readonly, transaction
from spe.errors import PermissionDenied
from spe.exports import actions
from spe.exports.actions import OutputRequest
from spe.exports.bundle import verify_bundle
from spe.exports.errors import ExportInputError, ExportStateError
from spe.exports.models import RequestStatus
from spe.projects.service import approve_project, get_project
from spe.tasks import run_inline
from tests.conftest import table_snapshot


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    """A real, tiny PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def study(world: Any, tmp_path: Path) -> dict[str, Any]:
    """Project 'study' approved, its researcher has accepted the terms; an outbox with a plot."""
    with transaction() as s:
        approve_project(s, get_user(s, "reviewer"), get_project(s, "study"))
        accept_terms(s, get_user(s, "researcher"))
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "plot.png").write_bytes(png_bytes())
    (outbox / "notes.txt").write_text("Income rises with education.\n")
    return {"outbox": outbox}


def file_(outbox: Path, *names: str, user: str = "researcher") -> str:
    with transaction() as s:
        request, job = actions.file_request(
            s,
            get_user(s, user),
            get_project(s, "study"),
            [OutputRequest(n, f"needed for the paper ({n})") for n in names],
            "Figures",
            outbox,
        )
        request_id = str(request.id)
    run_inline(job)
    return request_id


def status(request_id: str) -> RequestStatus:
    with readonly() as s:
        return actions.get_request(s, request_id).status


def act(user: str, fn: Any, request_id: str, *args: Any) -> Any:
    with transaction() as s:
        return fn(s, get_user(s, user), actions.get_request(s, request_id), *args)


def events(request_id: str) -> list[str]:
    with readonly() as s:
        return list(
            s.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.target == f"export_request:{request_id}")
                .order_by(AuditEvent.id)
            )
        )


def test_a_picture_always_goes_to_review_and_needs_two_reviewers(study, tmp_path):
    rid = file_(study["outbox"], "plot.png")
    assert status(rid) == RequestStatus.IN_REVIEW
    act("reviewer", actions.vote, rid, "plot.png", "approve", "A plain bar chart of totals.")
    with pytest.raises(ExportStateError, match="second reviewer"):
        act("reviewer", actions.decide, rid)
    # The same reviewer voting again is still one pair of eyes.
    act("reviewer", actions.vote, rid, "plot.png", "approve", "Still fine.")
    with pytest.raises(ExportStateError, match="four eyes"):
        act("reviewer", actions.decide, rid)
    act("reviewer2", actions.vote, rid, "plot.png", "approve", "Agreed.")
    assert act("reviewer2", actions.decide, rid) == RequestStatus.RELEASED
    path = act("researcher", actions.download, rid)
    with readonly() as s:
        from spe.keys.signing import audit_public_key

        key = audit_public_key(s)
    result = verify_bundle(path, key)
    assert result.ok, result.problems
    assert {f["path"] for f in result.files} >= {"outputs/plot.png", "review-record.json"}
    assert events(rid) == [
        "export.file",
        "export.check",
        "export.queue",
        "export.vote",
        "export.vote",
        "export.vote",
        "export.decide",
        "export.release",
        "export.download",
    ]


def test_only_the_author_downloads_and_reviewers_cannot_review_their_own_request(study):
    with transaction() as s:
        grant_role(
            s,
            get_user(s, "op"),
            get_user(s, "researcher"),
            __import__("spe.accounts.models").accounts.models.Role.HOLDER_REVIEWER,
            get_project(s, "study").holder,
        )
    rid = file_(study["outbox"], "notes.txt")
    with pytest.raises(PermissionDenied, match="you cannot review it"):
        act("researcher", actions.vote, rid, "notes.txt", "approve", "Mine is fine.")
    with pytest.raises(PermissionDenied, match="reviewer of Holder Agency"):
        act("other_reviewer", actions.vote, rid, "notes.txt", "approve", "ok")
    act("reviewer", actions.vote, rid, "notes.txt", "approve", "Text is general.")
    act("reviewer2", actions.vote, rid, "notes.txt", "approve", "Agreed.")
    act("reviewer2", actions.decide, rid)
    with pytest.raises(PermissionDenied, match="Only researcher"):
        act("researcher2", actions.download, rid)
    with pytest.raises(PermissionDenied, match="Only researcher"):
        act("reviewer", actions.download, rid)


def test_a_refusal_carries_the_reviewers_reason_to_the_researcher(study):
    rid = file_(study["outbox"], "plot.png", "notes.txt")
    act("reviewer", actions.vote, rid, "plot.png", "reject", "Shows a bar for 3 persons.")
    act("reviewer", actions.vote, rid, "notes.txt", "reject", "Names a municipality of 12.")
    assert act("reviewer", actions.decide, rid) == RequestStatus.REJECTED
    with transaction() as s:
        seen = actions.detail(s, get_user(s, "researcher"), actions.get_request(s, rid))
    reasons = {v["output"]: v["comment"] for v in seen["review"]["votes"]}
    assert reasons == {
        "plot.png": "Shows a bar for 3 persons.",
        "notes.txt": "Names a municipality of 12.",
    }
    assert {o["decision"] for o in seen["outputs"]} == {"rejected"}
    with pytest.raises(ExportStateError, match="rejected"):
        act("researcher", actions.download, rid)


def test_mixed_decisions_release_only_the_approved_outputs(study):
    rid = file_(study["outbox"], "plot.png", "notes.txt")
    for reviewer in ("reviewer", "reviewer2"):
        act(reviewer, actions.vote, rid, "plot.png", "approve", "fine")
    act("reviewer", actions.vote, rid, "notes.txt", "reject", "Too detailed.")
    assert act("reviewer", actions.decide, rid) == RequestStatus.RELEASED
    path = act("researcher", actions.download, rid)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
    assert "outputs/plot.png" in names and "outputs/notes.txt" not in names


def test_changes_requested_then_resubmitted_starts_a_new_round_with_votes_reset(study):
    rid = file_(study["outbox"], "notes.txt")
    act("reviewer", actions.vote, rid, "notes.txt", "request_changes", "Round to tens.")
    act("reviewer", actions.comment, rid, "Careful with this one.", "reviewers")
    assert act("reviewer", actions.decide, rid) == RequestStatus.CHANGES_REQUESTED
    with transaction() as s:
        seen = actions.detail(s, get_user(s, "researcher"), actions.get_request(s, rid))
    assert [c["body"] for c in seen["review"]["comments"]] == []  # the private note stays private
    (study["outbox"] / "notes.txt").write_text("Income rises with education (rounded).\n")
    with transaction() as s:
        job = actions.resubmit(
            s,
            get_user(s, "researcher"),
            actions.get_request(s, rid),
            [OutputRequest("notes.txt", "rounded as asked")],
            "rounded",
            study["outbox"],
        )
    run_inline(job)
    with transaction() as s:
        request = actions.get_request(s, rid)
        assert request.status == RequestStatus.IN_REVIEW and request.round == 2
        assert actions.pending_decisions(s, request) == {"notes.txt": "it has no vote yet"}


def test_withdrawn_requests_take_no_votes(study):
    rid = file_(study["outbox"], "notes.txt")
    act("researcher", actions.withdraw, rid, "wrong file")
    assert status(rid) == RequestStatus.WITHDRAWN
    with pytest.raises(ExportStateError, match="withdrawn"):
        act("reviewer", actions.vote, rid, "notes.txt", "approve", "ok")
    with pytest.raises(ExportStateError, match="withdrawn"):
        act("researcher", actions.withdraw, rid, "again")


def test_a_revoked_release_cannot_be_downloaded_and_the_researcher_sees_why(study):
    rid = file_(study["outbox"], "notes.txt")
    act("reviewer", actions.vote, rid, "notes.txt", "approve", "ok")
    act("reviewer2", actions.vote, rid, "notes.txt", "approve", "ok")
    act("reviewer", actions.decide, rid)
    with pytest.raises(ExportInputError, match="reason"):
        act("reviewer", actions.revoke, rid, "  ")
    act("reviewer", actions.revoke, rid, "A small group is identifiable after all.")
    with pytest.raises(ExportStateError, match="identifiable after all"):
        act("researcher", actions.download, rid)
    with transaction() as s:
        mine = actions.list_requests(s, get_user(s, "researcher"))
    assert mine[0]["status"] == "revoked"
    assert mine[0]["revoke_reason"] == "A small group is identifiable after all."
    assert events(rid)[-1] == "export.revoke"


def test_the_queue_shows_age_and_marks_overdue_requests(study):
    old = file_(study["outbox"], "notes.txt")
    new = file_(study["outbox"], "plot.png")
    with transaction() as s:
        actions.get_request(s, old).submitted_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=61)
        record(s, "system:test", "test.backdate", f"export_request:{old}")
    with transaction() as s:
        queue = actions.review_queue(s, get_user(s, "reviewer"))
        overdue = actions.review_queue(s, get_user(s, "reviewer"), overdue_only=True)
        assert [r["id"] for r in queue] == [old, new]
        assert queue[0]["overdue"] and queue[0]["age_days"] > 60 and not queue[1]["overdue"]
        assert [r["id"] for r in overdue] == [old]
        assert actions.review_queue(s, get_user(s, "other_reviewer")) == []
        with pytest.raises(PermissionDenied):
            actions.review_queue(s, get_user(s, "researcher"))


def test_the_check_job_is_idempotent(study):
    rid = file_(study["outbox"], "notes.txt")
    before = len(events(rid))
    assert actions.run_checks(rid, 1)["skipped"].startswith("request is in_review")
    assert len(events(rid)) == before


# --- bad input: each refused with a sentence, nothing copied, nothing recorded -------------------


def _bad_inputs(outbox: Path, data_file: Path) -> dict[str, tuple[list[str], str]]:
    (outbox / "link.csv").symlink_to(data_file)
    os.link(data_file, outbox / "hard.csv")
    with open(outbox / "huge.csv", "wb") as fh:  # 2 GB, sparse: no disk used
        fh.truncate(2 << 30)
    (outbox / "fake.png").write_bytes(b"GIF89a not a png at all")
    (outbox / "broken.csv").write_text('a,b\n1,"unterminated\n')
    (outbox / "ragged.csv").write_text("a,b\n1,2,3\n")
    (outbox / "empty.csv").write_bytes(b"")
    (outbox / "model.pkl").write_bytes(b"\x80\x04")
    os.mkfifo(outbox / "pipe.csv")
    bomb = outbox / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.txt", b"\x00" * (50 << 20))
    traversal = outbox / "escape.zip"
    with zipfile.ZipFile(traversal, "w") as z:
        z.writestr("../../etc/cron.d/x.txt", b"hi")
    return {
        "symlink to the data": (["link.csv"], "symbolic link"),
        "hard link to the data": (["hard.csv"], "hard links"),
        "2 GB file": (["huge.csv"], "more than"),
        "PNG that is not a PNG": (["fake.png"], "not a PNG image"),
        "CSV that does not parse": (["broken.csv"], "does not parse as CSV"),
        "CSV with a ragged row": (["ragged.csv"], "row 2 has 3 fields"),
        "empty file": (["empty.csv"], "is empty"),
        "unknown type": (["model.pkl"], "cannot be exported"),
        "a pipe": (["pipe.csv"], "device, pipe or socket"),
        "zip bomb": (["bomb.zip"], "zip bomb"),
        "path in a zip": (["escape.zip"], "leaves the archive"),
        "../ in a name": (["../secret.csv"], "not a plain file name"),
        "absolute name": (["/etc/passwd"], "not a plain file name"),
        "empty request": ([], "names no outputs"),
        "missing file": (["nothing.csv"], "no such file"),
        "good file next to a bad one": (["notes.txt", "fake.png"], "not a PNG image"),
    }


def test_bad_outputs_are_refused_with_a_reason_and_nothing_is_kept(study, tmp_path):
    from spe.config import get_settings

    data_file = tmp_path / "data.csv"
    data_file.write_text("person,income\nA,1\n")
    cases = _bad_inputs(study["outbox"], data_file)
    exports_dir = Path(get_settings().data_dir) / "exports"
    before = table_snapshot()
    for label, (names, message) in cases.items():
        with pytest.raises(ExportInputError, match=message), transaction() as s:
            actions.file_request(
                s,
                get_user(s, "researcher"),
                get_project(s, "study"),
                [OutputRequest(n, "why") for n in names],
                "bad",
                study["outbox"],
            )
        assert table_snapshot() == before, label
        leftovers = (
            [p for p in exports_dir.rglob("*") if p.is_file()] if exports_dir.exists() else []
        )
        assert leftovers == [], (label, leftovers)


def test_an_outbox_that_is_a_symlink_is_refused(study, tmp_path):
    link = tmp_path / "outbox-link"
    link.symlink_to(study["outbox"])
    with pytest.raises(ExportInputError, match="not a plain folder"), transaction() as s:
        actions.file_request(
            s,
            get_user(s, "researcher"),
            get_project(s, "study"),
            [OutputRequest("notes.txt", "why")],
            "",
            link,
        )


def test_a_justification_is_required_per_output(study):
    with pytest.raises(ExportInputError, match=r"justification for notes\.txt"), transaction() as s:
        actions.file_request(
            s,
            get_user(s, "researcher"),
            get_project(s, "study"),
            [OutputRequest("notes.txt", "  ")],
            "",
            study["outbox"],
        )


def test_only_members_with_data_access_can_file(study):
    for user, message in (("researcher2", "not a member"), ("reviewer", "not a member")):
        with pytest.raises(PermissionDenied, match=message), transaction() as s:
            actions.file_request(
                s,
                get_user(s, user),
                get_project(s, "study"),
                [OutputRequest("notes.txt", "why")],
                "",
                study["outbox"],
            )


USERS = ("researcher", "researcher2", "reviewer", "reviewer2", "other_reviewer", "auditor", "op")


def test_each_permission_question_answers_the_same_twice_for_every_role(study):
    from spe.exports import permissions as perms

    rid = file_(study["outbox"], "notes.txt")
    expected = {
        "file": {"researcher"},
        "review": {"reviewer", "reviewer2"},
        "view": {"researcher", "reviewer", "reviewer2"},
        "queue": {"reviewer", "reviewer2"},
    }
    with transaction() as s:
        request = actions.get_request(s, rid)
        project = get_project(s, "study")
        args = {
            "file": (project,),
            "review": (request, project),
            "view": (request, project),
            "queue": (project,),
        }
        for question, (check, can) in perms.PAIRS.items():
            allowed = set()
            for name in USERS:
                user = get_user(s, name)
                answer = can(s, user, *args[question])
                try:
                    check(s, user, *args[question])
                    raised = False
                except PermissionDenied as refusal:
                    raised = True
                    assert refusal.message.endswith("."), refusal.message
                assert answer != raised, (question, name)
                if answer:
                    allowed.add(name)
            assert allowed == expected[question], question
