"""The server computes every number it releases automatically (issue 13), tried as a hostile
researcher would: every file in the outbox is the attacker's, so each test writes there what
kernel code in a workspace could write (plan documents, made-up CSVs, evidence and records) and
files it through the same function the airlock's export verb calls. The workspace's mount is
simulated by the project's extract folders linked in a directory (the sandboxed path is
tests/integration/test_workspace_story.py's).

What must hold: only a plan evaluated by the server (or a DP answer from the ledger) leaves
without a reviewer; the file that leaves is the server's; labels are public categories or grid
bins; a bad plan queues nothing; the bundle's record of how each output was decided agrees with
the audit log.
"""

from __future__ import annotations

import base64
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from spe.accounts.service import get_user
from spe.config import reset_settings
from spe.db import readonly, transaction
from spe.exports import actions
from spe.exports.actions import OutputRequest
from spe.exports.errors import ExportInputError
from spe.exports.models import ExportRequest
from spe.projects.service import get_project
from spe.tasks import run_inline

RESEARCHER, HOLDER, SECOND = "demo-researcher", "demo-holder", "demo-reviewer2"


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite only: plans are evaluated by DuckDB on the extract files, and the database holds
    only the requests; the export check on PostgreSQL is test_export_story.py's and
    test_dp_export_filed.py's (this module would double the suite's longest minutes)."""
    return str(request.param)


@pytest.fixture
def ws(spe_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo platform on 3,000 generated persons; settings as inside the workspace."""
    from spe.demo import OTHER_PROJECT, PROJECT, publish_demo_data, set_up_demo
    from spe.projects.extracts import plan_catalogue, workspace_mounts

    set_up_demo()
    publish_demo_data(persons=3000)
    with readonly() as s:
        project = get_project(s, PROJECT)
        mounts = workspace_mounts(s, project)
        outbox = actions.default_outbox(project, RESEARCHER)
        catalogue = plan_catalogue(s, project)
    data = tmp_path / "data"
    data.mkdir()
    for name, folder in mounts.items():
        (data / name).symlink_to(folder, target_is_directory=True)
    outbox.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(data))
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(outbox))
    reset_settings()
    versions = {name: src.version for name, src in catalogue.sources.items()}
    return {
        "project": PROJECT,
        "other": OTHER_PROJECT,
        "outbox": outbox,
        "versions": versions,
        "data": data,
    }


# -- plan documents as the workspace would write them ----------------------------------------
def scan(ws: dict[str, Any], dataset: str, columns: list[str] | None = None) -> dict[str, Any]:
    return {
        "op": "scan",
        "dataset": dataset,
        "version": ws["versions"][dataset],
        "columns": columns,
    }


def plan(ws: dict[str, Any], frame: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    return {"spe_plan": 1, "project": ws["project"], "frame": frame, "output": output}


def crosstab(index: list[str], columns: list[str], **more: Any) -> dict[str, Any]:
    out = {
        "command": "crosstab",
        "index": index,
        "columns": columns,
        "values": None,
        "agg": "count",
        "safe": None,
    }
    out.update(more)
    return out


def county_by_sex(ws: dict[str, Any]) -> dict[str, Any]:
    """Persons by income year and sex: income joined to population on the pseudonym."""
    joined = {
        "op": "join",
        "left": scan(ws, "income", ["year"]),
        "right": scan(ws, "population", ["sex"]),
        "how": "inner",
    }
    return plan(ws, joined, crosstab(["year"], ["sex"]))


def put(ws: dict[str, Any], name: str, document: Any) -> str:
    path = ws["outbox"] / f"{name}.plan.json"
    text = document if isinstance(document, str) else json.dumps(document)
    path.write_text(text, "utf-8")
    return path.name


def file_(ws: dict[str, Any], *names: str, title: str = "Tables") -> str:
    with transaction() as s:
        request, job = actions.file_request(
            s,
            get_user(s, RESEARCHER),
            get_project(s, ws["project"]),
            [OutputRequest(n, f"{n} for the paper") for n in names],
            title,
        )
        rid = str(request.id)
    run_inline(job)  # what the worker does
    return rid


def seen_by(user: str, rid: str) -> dict[str, Any]:
    with transaction() as s:
        return actions.detail(s, get_user(s, user), actions.get_request(s, rid))


def act(user: str, fn: Any, rid: str, *args: Any) -> Any:
    with transaction() as s:
        return fn(s, get_user(s, user), actions.get_request(s, rid), *args)


def bundle_of(rid: str, tmp_path: Path) -> zipfile.ZipFile:
    with transaction() as s:
        path = actions.download(s, get_user(s, RESEARCHER), actions.get_request(s, rid))
    copy = tmp_path / f"{rid}.zip"
    copy.write_bytes(path.read_bytes())
    return zipfile.ZipFile(copy)


def requests_count() -> int:
    with readonly() as s:
        return int(s.scalar(select(func.count()).select_from(ExportRequest)) or 0)


def events(action: str, rid: str) -> list[dict[str, Any]]:
    from spe.audit.models import AuditEvent

    with readonly() as s:
        rows = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == action, AuditEvent.target == f"export_request:{rid}")
            .order_by(AuditEvent.seq)
        )
        return [{**json.loads(r.details), "_actor": r.actor} for r in rows]


def server_table(ws: dict[str, Any]) -> pd.DataFrame:
    """Persons by year × sex computed independently of SPE from the extracts (the truth)."""
    income = pq.read_table(ws["data"] / "income" / "data.parquet").to_pandas()
    population = pq.read_table(ws["data"] / "population" / "data.parquet").to_pandas()
    joined = income.merge(population, on="person_id")
    return joined.groupby(["year", "sex"])["person_id"].nunique().unstack("sex")


# -- the tests ---------------------------------------------------------------------------------
def test_a_plan_leaves_automatically_with_the_servers_own_file(ws, tmp_path):
    name = put(ws, "county_by_sex", county_by_sex(ws))
    # The workspace also leaves a made-up CSV of the same name: it must never be what leaves.
    (ws["outbox"] / "county_by_sex.csv").write_text("year,F,M\n03,1,1\n", "utf-8")
    rid = file_(ws, name)
    view = seen_by(RESEARCHER, rid)
    assert view["status"] == "released" and view["auto_released"], view["outputs"][0]["reasons"]
    with bundle_of(rid, tmp_path) as z:
        released = z.read("outputs/county_by_sex.csv").decode()
        record = json.loads(z.read("review-record.json"))
        names = z.namelist()
    assert not any(n.endswith(".plan.json") for n in names)
    truth = server_table(ws)
    lines = released.splitlines()
    for year, row in truth.iterrows():
        assert f"{year},{row['F']},{row['M']}" in lines, (year, lines)
    assert "03,1,1" not in released
    # The bundle tells the truth, as the audit log does.
    assert record["automatic_release"] is True and record["status"] == "released"
    (decision,) = record["decisions"]
    assert decision["how"] == "automatically" and decision["computed_by"] == "server"
    assert decision["rules"]["version"] and decision["plan_sha256"]
    (release,) = events("export.release", rid)
    assert release["automatic"] is True
    (check,) = events("export.check", rid)
    assert check["outputs"][0]["computed_by"] == "server"
    assert check["outputs"][0]["file_sha256"]


def test_fabricated_evidence_is_never_released_automatically(ws):
    """Real pseudonyms of the project, made-up incomes: the advisory check passes, but the
    server could not compute these numbers, so only reviewers may release them."""
    import spe.analysis as sa

    persons = pq.read_table(ws["data"] / "income" / "data.parquet", columns=["person_id"])
    pids = list(dict.fromkeys(persons["person_id"].to_pylist()))[:40]
    fake = pd.DataFrame(
        {
            "person_id": pids,
            "group": ["a"] * 20 + ["b"] * 20,
            "kind": ["wage"] * 40,
            "wage": [100_000.0] * 39 + [987_654.0],  # one "person's exact income"
        }
    )
    fake = sa.use(fake, person_id="person_id", dataset="income")
    out = sa.crosstab(fake, "group", "kind", values="wage", aggfunc="mean", name="fabricated")
    assert out.passed, out.reasons  # the workspace's own evidence passes its own check
    rid = file_(ws, "fabricated.csv")
    view = seen_by(RESEARCHER, rid)
    assert view["status"] == "in_review"
    output = view["outputs"][0]
    assert output["report"]["computed_by"] == "workspace"
    assert "could not recompute" in output["report"]["notice"]
    (queued,) = events("export.queue", rid)
    assert any("computed in the workspace" in why for why in queued["why"])


def test_data_in_row_labels_cannot_leave_automatically(ws):
    """Rows of the extract compressed into the labels of a table: a workspace table goes to
    reviewers; a plan cannot label its rows with anything but public categories or bins."""
    import spe.analysis as sa

    rows = pq.read_table(ws["data"] / "population" / "data.parquet").to_pandas().head(300)
    blob = base64.b64encode(zlib.compress(rows.to_csv().encode())).decode()
    chunks = [blob[i : i + 100] for i in range(0, len(blob), 100)]
    labelled = pd.DataFrame(
        {
            "person_id": [f"p{i}" for i in range(len(chunks) * 12)],
            "label": chunks * 12,
            "all": ["n"] * (len(chunks) * 12),
        }
    )
    labelled = sa.use(labelled, person_id="person_id")
    sa.crosstab(labelled, "label", "all", name="labels", record=True)
    before = requests_count()
    rid = file_(ws, "labels.csv")
    assert seen_by(RESEARCHER, rid)["status"] == "in_review"
    assert requests_count() == before + 1

    # A plan grouping by a label the researcher made (a case/when) is refused at filing, and so
    # is text of the researcher's anywhere in it.
    derived = {
        "op": "derive",
        "input": scan(ws, "population"),
        "columns": {
            "secret": {
                "case": [[{"fn": "eq", "args": [{"col": "sex"}, {"lit": "F"}]}, {"lit": 17}]],
                "otherwise": {"lit": 4},
            }
        },
    }
    put(ws, "derived_label", plan(ws, derived, crosstab(["secret"], ["sex"])))
    with pytest.raises(ExportInputError, match="secret"):
        file_(ws, "derived_label.plan.json")
    # A text literal that is not a declared category (free text) is refused anywhere.
    free = {
        "op": "filter",
        "input": scan(ws, "population"),
        "where": {"fn": "eq", "args": [{"col": "sex"}, {"lit": blob[:60]}]},
    }
    put(ws, "free_text", plan(ws, free, crosstab(["municipality"], ["sex"])))
    with pytest.raises(ExportInputError):
        file_(ws, "free_text.plan.json")
    assert requests_count() == before + 1  # nothing more was queued


def test_data_in_bin_edges_is_refused(ws):
    """A person's wage hidden in the decimals of a bin edge: edges are snapped to the policy
    grid, so an off-grid edge is refused (with the grid values near it), and a workspace
    histogram with such edges goes to reviewers."""
    import spe.analysis as sa

    income = scan(ws, "income")
    put(
        ws,
        "edges",
        plan(
            ws,
            income,
            {
                "command": "hist",
                "column": "wage_income",
                "edges": [0, 512345.67, 2_000_000],
                "by": [],
                "safe": None,
            },
        ),
    )
    before = requests_count()
    with pytest.raises(ExportInputError, match="grid"):
        file_(ws, "edges.plan.json")
    width = {
        "op": "derive",
        "input": income,
        "columns": {"band": {"bin": {"col": "wage_income"}, "width": 12345.6}},
    }
    put(ws, "width", plan(ws, width, crosstab(["band"], ["year"])))
    with pytest.raises(ExportInputError, match="grid"):
        file_(ws, "width.plan.json")
    assert requests_count() == before
    # On the grid, it is computed and checked by the server.
    grid = {
        "op": "derive",
        "input": income,
        "columns": {"band": {"bin": {"col": "wage_income"}, "width": 200_000}},
    }
    put(ws, "grid", plan(ws, grid, crosstab(["band"], ["year"])))
    rid = file_(ws, "grid.plan.json")
    assert seen_by(RESEARCHER, rid)["outputs"][0]["report"]["computed_by"] == "server"
    # The workspace's own histogram with data in its edges: reviewers only.
    frame = sa.load("income")
    sa.hist(frame, "wage_income", bins=[0, 512345.67, 2_000_000], name="wsedges")
    rid = file_(ws, "wsedges.csv")
    assert seen_by(RESEARCHER, rid)["status"] == "in_review"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d, ws: d.update(project=ws["other"]), "project"),
        (lambda d, ws: d["frame"].update(dataset="taxes"), "taxes"),
        (lambda d, ws: d["frame"].update(version=d["frame"]["version"] + 7), "version"),
        (lambda d, ws: d["frame"].update(columns=["address"]), "address"),
        (lambda d, ws: d.update(extra="x"), "extra"),
        (lambda d, ws: d["output"].update(agg="__import__('os').system('id')"), "agg"),
        (lambda d, ws: d["frame"].update(op="sql"), "sql"),
        (lambda d, ws: d["frame"].update(dataset="health"), "health"),
    ],
    ids=[
        "another-project",
        "unknown-dataset",
        "wrong-version",
        "ungranted-column",
        "extra-field",
        "code-string",
        "forbidden-op",
        "aggregate-only",
    ],
)
def test_a_bad_plan_is_refused_with_a_sentence_and_nothing_is_queued(ws, change, match):
    document = plan(ws, scan(ws, "population"), crosstab(["municipality"], ["sex"]))
    change(document, ws)
    name = put(ws, "bad", document)
    before = requests_count()
    with pytest.raises(ExportInputError, match=match) as caught:
        file_(ws, name)
    message = caught.value.message
    assert message.startswith("bad.plan.json") and message.endswith((".", ")"))
    assert "Traceback" not in message and len(message) < 600
    assert requests_count() == before


def test_oversized_and_broken_plans_are_refused(ws):
    deep: dict[str, Any] = {"col": "sex"}
    for _ in range(60):
        deep = {"fn": "not", "args": [deep]}
    document = county_by_sex(ws)
    document["frame"] = {"op": "filter", "input": document["frame"], "where": deep}
    put(ws, "deep", document)
    with pytest.raises(ExportInputError):
        file_(ws, "deep.plan.json")
    put(ws, "broken", '{"spe_plan": 1, "project": ')
    with pytest.raises(ExportInputError, match="not valid JSON"):
        file_(ws, "broken.plan.json")


def test_refiling_an_identical_plan_is_recognised(ws):
    name = put(ws, "county_by_sex", county_by_sex(ws))
    file_(ws, name)
    before = requests_count()
    with pytest.raises(ExportInputError, match="same analysis"):
        file_(ws, name)
    assert requests_count() == before


def test_reviewers_decide_a_failing_plan_and_the_bundle_names_them(ws, tmp_path):
    """The other path: a plan with small cells goes to review; two reviewers override; the
    bundle's record says by whom, as the votes in the audit log do."""
    by_year = plan(ws, scan(ws, "population"), crosstab(["municipality", "sex"], ["birth_date"]))
    name = put(ws, "county_sex_year", by_year)
    rid = file_(ws, name)
    view = seen_by(RESEARCHER, rid)
    assert view["status"] == "in_review"
    out = view["outputs"][0]
    assert out["check_status"] == "fail"
    assert any(c["failing"] for c in out["report"]["cells"])
    act(HOLDER, actions.vote, rid, name, "approve", "Aggregated enough.")
    act(SECOND, actions.vote, rid, name, "approve", "Agreed: override.")
    assert act(SECOND, actions.decide, rid).value == "released"
    with bundle_of(rid, tmp_path) as z:
        record = json.loads(z.read("review-record.json"))
        assert "outputs/county_sex_year.csv" in z.namelist()
    assert record["automatic_release"] is False
    (decision,) = record["decisions"]
    assert decision["how"] == "by reviewers"
    voters = {e["_actor"] for e in events("export.vote", rid)}
    assert set(decision["reviewers"]) == voters == {HOLDER, SECOND}
    (release,) = events("export.release", rid)
    assert release["automatic"] is False


def test_the_getting_started_template_runs_on_plans(ws):
    """The template's plans run as a researcher runs them (the export cells need the airlock of
    a real workspace: tests/integration/test_workspace_story.py runs them there)."""
    from tests.conftest import REPO

    template = json.loads((REPO / "notebooks_templates" / "getting-started.ipynb").read_text())
    cells = ["".join(c["source"]) for c in template["cells"] if c["cell_type"] == "code"]
    namespace: dict[str, Any] = {}
    for cell in cells:
        if "export" in cell:
            continue
        exec(compile(cell, "<template cell>", "exec"), namespace)  # noqa: S102 - our template
    assert namespace["by_county"].table.shape[1] == 2  # F, M (3,000 persons: a small cell)
    assert (ws["outbox"] / "county_by_sex.plan.json").is_file()
    assert (ws["outbox"] / "wage_by_band.plan.json").is_file()
    # The plan the template writes is what the server accepts and computes.
    rid = file_(ws, "wage_by_band.plan.json")
    assert seen_by(RESEARCHER, rid)["outputs"][0]["computed_by"] == "server"


def test_a_declared_level_no_row_has_is_an_empty_cell(ws):
    """Issue 14: a county the catalogue declares appears even when the plan's rows have none,
    and fails as an empty cell instead of silently telling the reader it is zero."""
    only = {
        "op": "filter",
        "input": scan(ws, "population"),
        "where": {"fn": "is_in", "args": [{"col": "municipality"}, {"values": ["03", "46"]}]},
    }
    put(ws, "two_counties", plan(ws, only, crosstab(["municipality"], ["sex"])))
    rid = file_(ws, "two_counties.plan.json")
    out = seen_by(RESEARCHER, rid)["outputs"][0]
    counties = {c["index"][0] for c in out["report"]["cells"]}
    assert {"03", "46"} < counties and len(counties) > 2
    assert out["check_status"] == "fail"
    assert any(r["rule"] == "zeros" for c in out["report"]["cells"] for r in c["failing"])


def test_a_failing_plan_takes_its_safe_version_computed_by_the_server(ws, tmp_path):
    """Accept-safe on a plan output: the server evaluates the frozen plan asking for its safe
    version, a new round carries the outputs, the normal check decides, and the event is
    audited. What the workspace writes after filing (a made-up CSV, another plan under the same
    name) is never read."""
    document = plan(ws, scan(ws, "population"), crosstab(["municipality"], ["sex"]))
    name = put(ws, "county_sex", document)
    rid = file_(ws, name)
    first = seen_by(RESEARCHER, rid)
    assert first["status"] == "in_review"
    assert first["outputs"][0]["check_status"] == "fail"
    failing = [c for c in first["outputs"][0]["report"]["cells"] if c["failing"]]
    assert failing
    # The attacker's workspace rewrites its outbox after filing.
    (ws["outbox"] / "county_sex.csv").write_text("municipality,F,M\n03,1,1\n", "utf-8")
    put(ws, "county_sex", plan(ws, scan(ws, "population"), crosstab(["sex"], ["municipality"])))

    preview = act(RESEARCHER, actions.safe_preview, rid, name, "suppress")
    assert preview["computed_by"] == "server" and preview["can_accept"], preview["cannot_accept"]
    assert preview["suppressed_cells"] >= len(failing) and preview["status"] == "pass"
    with pytest.raises(ExportInputError, match="not a safe version"):
        act(RESEARCHER, actions.safe_preview, rid, name, "jitter")
    # The request page offers it for the plan, and the preview page has the button.
    from fastapi.testclient import TestClient

    from spe.accounts.tokens import create_token
    from spe.api import create_app
    from spe.web import PREFIX
    from tests.integration.test_pages import set_own_passwords

    set_own_passwords([RESEARCHER])  # a one-time password gets no API token
    with transaction() as s:
        token = create_token(s, get_user(s, RESEARCHER))
    client = TestClient(create_app())
    headers = {"Authorization": f"Bearer {token}"}
    page = client.get(f"{PREFIX}/exports/{rid}", headers=headers)
    assert page.status_code == 200 and f"A safe version of {name}" in page.text
    shown = client.get(f"{PREFIX}/exports/{rid}/outputs/{name}/safe-version", headers=headers)
    assert shown.status_code == 200 and "by evaluating the plan on the extract" in shown.text
    assert f"Accept this safe version of {name}" in shown.text
    job = act(RESEARCHER, actions.accept_safe_version, rid, name, "suppress")
    run_inline(job)
    view = seen_by(RESEARCHER, rid)
    (out,) = view["outputs"]
    assert view["round"] == 2 and out["computed_by"] == "server"
    assert out["check_status"] == "pass" and view["status"] == "released", out["reasons"]
    with bundle_of(rid, tmp_path) as z:
        released = z.read("outputs/county_sex.csv").decode()
    assert released == preview["csv"] and "03,1,1" not in released
    for cell in failing:  # every failing cell is left out of what leaves
        row = next(
            line for line in released.splitlines() if line.startswith(f"{cell['index'][0]},")
        )
        assert str(cell["value"]) not in row.split(",")[1:] or cell["value"] == 0
    (accepted,) = events("export.accept_safe", rid)
    assert accepted["computed_by"] == "server" and accepted["method"] == "suppress"
    assert (
        accepted["plan_sha256"] == out["report"]["plan_sha256"] != accepted["replaced_plan_sha256"]
    )
    plan_file = next(f for f in out["files"] if f["role"] == "plan")
    assert accepted["outputs"][0]["files"][0]["sha256"] == plan_file["sha256"]
    # A second acceptance of a released request is refused with a sentence.
    with pytest.raises(Exception, match="cannot take a safe version now"):
        act(RESEARCHER, actions.accept_safe_version, rid, name, "suppress")


def _lp_exact_cells(safe: Any, earlier: dict[tuple[str, str], float]) -> int:
    """How many suppressed failing cells of a year x sex x band safe version an LP intruder pins
    exactly from its published cells and totals and an earlier year x band table (scipy)."""
    import numpy as np
    from scipy.optimize import linprog

    values = np.asarray(safe.values, dtype=float)
    n_rows, n_cols = values.shape
    rows, sums = [], []

    def known(cells: list[int], value: float) -> None:
        row = np.zeros(values.size)
        row[cells] = 1
        rows.append(row)
        sums.append(value)

    for i in np.flatnonzero(~np.isnan(values.ravel())):
        known([int(i)], float(values.ravel()[i]))
    for r in range(n_rows):
        known(list(range(r * n_cols, (r + 1) * n_cols)), float(safe.row_totals[r]))
    for c in range(n_cols):
        known(list(range(c, values.size, n_cols)), float(safe.col_totals[c]))
    for (year, band), value in earlier.items():
        under = [
            r * n_cols + c
            for r, (y, _sex) in enumerate(safe.row_labels)
            for c, (b,) in enumerate(safe.col_labels)
            if str(y) == year and str(b) == band
        ]
        known(under, value)
    exact = 0
    for r, c in zip(*np.nonzero(np.asarray(safe.primary)), strict=True):
        goal = np.zeros(values.size)
        goal[r * n_cols + c] = 1
        low = linprog(goal, A_eq=np.array(rows), b_eq=sums, bounds=(0, None)).fun
        high = -linprog(-goal, A_eq=np.array(rows), b_eq=sums, bounds=(0, None)).fun
        exact += int(high - low < 1e-6)
    return exact


def test_a_safe_version_is_protected_against_a_linked_table_released_earlier(ws):
    """Issue 14's linked tables, through the export path: a year x band table was released
    (by reviewers); the suppression safe version of year x sex x band that the workspace makes
    alone lets an LP recover hidden cells exactly from it. The server protects the safe version
    together with the earlier release (found in the holder's history by its persons), so that
    version is refused with a sentence and nothing new is released or queued."""
    from spe.analysis.plan.builder import run_plan
    from spe.analysis.plan.catalogue import workspace_catalogue

    joined = {
        "op": "join",
        "left": scan(ws, "income", ["year"]),
        "right": scan(ws, "population", ["sex", "birth_date"]),
        "how": "inner",
    }
    frame = {
        "op": "derive",
        "input": joined,
        "columns": {"band": {"bin": {"col": "birth_date"}, "width": 5}},
    }
    year_band = put(ws, "year_band", plan(ws, frame, crosstab(["year"], ["band"])))
    rid = file_(ws, year_band, title="Persons by year and birth cohort")
    act(HOLDER, actions.vote, rid, year_band, "approve", "Published cohorts anyway.")
    act(SECOND, actions.vote, rid, year_band, "approve", "Agreed.")
    assert act(SECOND, actions.decide, rid).value == "released"
    released = seen_by(RESEARCHER, rid)["outputs"][0]["report"]["cells"]
    earlier = {(str(c["index"][0]), str(c["columns"][0])): float(c["value"]) for c in released}

    three = plan(ws, frame, crosstab(["year", "sex"], ["band"]))
    name = put(ws, "year_sex_band", three)
    rid3 = file_(ws, name, title="Persons by year, sex and birth cohort")
    assert seen_by(RESEARCHER, rid3)["outputs"][0]["check_status"] == "fail"
    # The attack: the safe version made without the earlier table gives cells away exactly.
    alone = run_plan(
        {**three, "output": {**three["output"], "safe": "suppress"}}, workspace_catalogue()
    )
    assert _lp_exact_cells(alone._computed.safe, earlier) > 0
    # Through the front door, the server's safe version is protected with the earlier table.
    with pytest.raises(ExportInputError, match="earlier releases"):
        act(RESEARCHER, actions.safe_preview, rid3, name, "suppress")
    with pytest.raises(ExportInputError, match=r"No safe version of year_sex_band\.plan\.json"):
        act(RESEARCHER, actions.accept_safe_version, rid3, name, "suppress")
    view = seen_by(RESEARCHER, rid3)
    assert view["round"] == 1 and view["status"] == "in_review"
    assert events("export.accept_safe", rid3) == []
    # A plan that asks for the safe version itself is checked the same way by the worker.
    asked = {**three, "output": {**three["output"], "safe": "suppress"}}
    rid4 = file_(ws, put(ws, "year_sex_band_safe", asked))
    out = seen_by(RESEARCHER, rid4)["outputs"][0]
    assert out["check_status"] == "fail" and seen_by(RESEARCHER, rid4)["status"] == "in_review"
    assert any("earlier releases" in reason for reason in out["reasons"]), out["reasons"]
