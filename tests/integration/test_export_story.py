"""The whole story of a result leaving SPE, on generated registry data (the demo's data holder,
projects and synthetic registry): analyses written as plans in a workspace (simulated: the
project's extracts mounted in a folder, the outbox in its place; the sandbox comes with the
workspaces), the server evaluating each plan on the extract, automatic release of a safe table
(the file that leaves is the server's), a refusal with reasons per cell, differencing against
what was released, a two-reviewer override, and each signed bundle verified offline by
`spe export verify`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from spe.accounts.service import get_user
from spe.config import reset_settings
from spe.db import readonly, transaction
from spe.errors import PermissionDenied
from spe.exports import actions
from spe.exports.actions import OutputRequest
from spe.exports.errors import ExportStateError
from spe.projects.service import get_project
from spe.tasks import run_inline

RESEARCHER, HOLDER, SECOND = "demo-researcher", "demo-holder", "demo-reviewer2"


@pytest.fixture
def workspace(spe_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo platform with 8,000 synthetic persons; settings as inside the workspace."""
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
    return {"project": PROJECT, "outbox": outbox}


def file_(ws: dict[str, Any], *outputs: str) -> str:
    with transaction() as s:
        request, job = actions.file_request(
            s,
            get_user(s, RESEARCHER),
            get_project(s, ws["project"]),
            [OutputRequest(f"{n}.plan.json", f"Table {n} for the paper") for n in outputs],
            "Tables",
        )
        rid = str(request.id)
    run_inline(job)  # what the worker does
    return rid


def act(user: str, fn: Any, rid: str, *args: Any) -> Any:
    with transaction() as s:
        return fn(s, get_user(s, user), actions.get_request(s, rid), *args)


def seen_by(user: str, rid: str) -> dict[str, Any]:
    with transaction() as s:
        return actions.detail(s, get_user(s, user), actions.get_request(s, rid))


def verify_offline(bundle: Path, key: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`spe export verify` with no SPE state at all: nothing but the bundle and the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPE_")}
    env["SPE_STATE_DIR"] = str(tmp_path / "nothing-here")
    return subprocess.run(
        [sys.executable, "-m", "spe.cli", "export", "verify", str(bundle), "--public-key", key],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_from_a_generated_output_to_a_signed_bundle_verified_offline(workspace, tmp_path):
    import spe.analysis as sa
    from spe.keys.signing import audit_public_key

    with readonly() as s:
        key = audit_public_key(s)

    # --- in the workspace: three tables as plans, previewed by the same evaluator -------------
    pop = sa.scan("population")
    by_county = pop.crosstab("municipality", "sex", name="county_by_sex")
    assert by_county.passed
    by_year = pop.crosstab(["municipality", "sex"], "birth_date", name="county_sex_year")
    assert not by_year.passed and by_year.failing is not None
    # A derived column (a grid bin of the birth year) is part of the plan, not of a file.
    cohorts = pop.derive(cohort=sa.col("birth_date").bin(width=50))
    safe = cohorts.crosstab(
        "municipality", ["sex", "cohort"], name="county_cohort", safe="suppress"
    )
    assert safe.passed and "safe version" in repr(safe)  # the table itself has small cells
    # Whatever else the workspace writes beside a plan is never what leaves.
    (workspace["outbox"] / "county_cohort.csv").write_text("made,up\n1,2\n", "utf-8")

    # 1. A table whose every check passes (here the safe version the researcher asked for, with
    # its suppressed cells) leaves at once, without a reviewer (microdata.no's speed): the
    # server evaluated the plan on the extract and wrote the file itself.
    first = file_(workspace, "county_cohort")
    done = seen_by(RESEARCHER, first)
    assert done["status"] == "released" and done["auto_released"], done["outputs"][0]["reasons"]
    assert done["outputs"][0]["computed_by"] == "server"
    bundle = tmp_path / "first.zip"
    with transaction() as s:
        path = actions.download(s, get_user(s, RESEARCHER), actions.get_request(s, first))
    bundle.write_bytes(path.read_bytes())
    checked = verify_offline(bundle, key, tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert (
        checked.stdout.startswith("OK: ")
        and "signed by the platform key you gave" in checked.stdout
    )
    with zipfile.ZipFile(bundle) as z:
        released = z.read("outputs/county_cohort.csv").decode()
        names = set(z.namelist())
    assert released == safe.to_spe_csv() and "made,up" not in released
    assert not any(n.endswith((".plan.json", ".spe.json", ".parquet")) for n in names)

    # 2. A table with small cells goes to review; the refusal carries reasons per cell.
    second = file_(workspace, "county_sex_year")
    view = seen_by(RESEARCHER, second)
    assert view["status"] == "in_review"
    out = view["outputs"][0]
    assert out["check_status"] == "fail" and out["reasons"], out["reasons"][:5]
    failing_cells = [c for c in out["report"]["cells"] if c["failing"]]
    assert failing_cells and all(c["failing"][0]["sentence"] for c in failing_cells)
    assert any(r["rule"] == "threshold" for c in failing_cells for r in c["failing"])
    with pytest.raises(PermissionDenied, match="you cannot review it"):
        act(RESEARCHER, actions.vote, second, "county_sex_year.plan.json", "approve", "mine")
    act(
        HOLDER,
        actions.vote,
        second,
        "county_sex_year.plan.json",
        "reject",
        "Single-year cells of 1-5 persons.",
    )
    assert act(HOLDER, actions.decide, second).value == "rejected"
    refused = seen_by(RESEARCHER, second)
    assert refused["review"]["votes"][0]["comment"] == "Single-year cells of 1-5 persons."

    # 3. The cumulative audit: county by sex passes on its own, but together with the released
    # cohort table it determines a small group: the server refuses it, naming the earlier
    # release by title and date and never a count of persons, although the preview passed.
    third = file_(workspace, "county_by_sex")
    third_view = seen_by(RESEARCHER, third)
    assert third_view["status"] == "in_review"
    assert third_view["outputs"][0]["check_status"] == "fail"
    audit = third_view["outputs"][0]["report"]["cumulative_audit"]
    assert audit["status"] == "fail" and audit["findings"]
    for finding in audit["findings"]:
        assert finding["releases"] and all(r["title"] == "Tables" for r in finding["releases"])
        assert "'Tables' (released " in finding["sentence"]
        assert "persons)" not in finding["sentence"] and "(1 " not in finding["sentence"]

    # 4. Overriding a failed check needs two distinct reviewers (four eyes).
    fourth = file_(workspace, "county_sex_year")  # the failing table once more
    act(
        HOLDER,
        actions.vote,
        fourth,
        "county_sex_year.plan.json",
        "approve",
        "Aggregated enough for this purpose.",
    )
    with pytest.raises(ExportStateError, match="four eyes"):
        act(HOLDER, actions.decide, fourth)
    act(SECOND, actions.vote, fourth, "county_sex_year.plan.json", "approve", "Agreed: override.")
    assert act(SECOND, actions.decide, fourth).value == "released"
    with transaction() as s:
        path = actions.download(s, get_user(s, RESEARCHER), actions.get_request(s, fourth))
    override = tmp_path / "override.zip"
    override.write_bytes(path.read_bytes())
    assert verify_offline(override, key, tmp_path).returncode == 0
    with zipfile.ZipFile(override) as z:
        record = json.loads(z.read("review-record.json"))
        report = json.loads(z.read("disclosure-report.json"))
    assert {v["reviewer"] for v in record["votes"]} == {HOLDER, SECOND}
    flagged = report["outputs"][0]["flagged_cells"]
    assert flagged and all(set(c) == {"index", "columns", "status", "rules"} for c in flagged)

    # A tampered copy fails offline, with the reason.
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(override) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.startswith("outputs/"):
                data = data.replace(b",1", b",9", 1)
            dst.writestr(info.filename, data)
    bad = verify_offline(tampered, key, tmp_path)
    assert bad.returncode == 6 and "does not match its SHA-256" in bad.stderr

    # Every step is in the audit log, and the log verifies.
    with readonly() as s:
        from sqlalchemy import select

        from spe.audit.models import AuditEvent

        actions_seen = set(
            s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("export.%")))
        )
    assert actions_seen >= {
        "export.file", "export.check", "export.queue", "export.vote",
        "export.decide", "export.release", "export.download",
    }  # fmt: skip
