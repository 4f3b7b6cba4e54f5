"""The researcher's fluent API in a workspace, and every command's evidence through compute().

The workspace is real folders: a data mount with data.parquet, catalogue.json and project.json
as extraction writes them, and an outbox.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import spe.analysis as sa
from spe.analysis.outputs import compute
from spe.analysis.plan import (
    Catalogue,
    PlanError,
    canonical_json,
    evaluate,
    plan_hash,
    validate,
    workspace_catalogue,
)
from spe.sdc import Rules
from tests.unit.test_plan_evaluate import make_extracts


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A workspace whose data mount holds income and population with their catalogue.json."""
    from spe.config import reset_settings

    for key in list(os.environ):
        if key.startswith("SPE_") and not key.startswith("SPE_TEST_"):
            monkeypatch.delenv(key, raising=False)
    data = tmp_path / "data"
    catalogue = make_extracts(tmp_path / "generated", persons=400, seed=11)
    for name, source in catalogue.sources.items():
        (data / name).mkdir(parents=True)
        (data / name / "data.parquet").write_bytes(Path(source.path or "").read_bytes())
        (data / name / "catalogue.json").write_text(json.dumps(source.to_json()))
    (data / "project.json").write_text(json.dumps({"project": "demo-project"}))
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(data))
    monkeypatch.setenv("SPE_POLICIES_DIR", str(tmp_path / "no-policies"))
    reset_settings()
    yield tmp_path
    reset_settings()


def test_workspace_catalogue_reads_what_extraction_writes(workspace: Path) -> None:
    catalogue = workspace_catalogue()
    assert catalogue.project == "demo-project"
    assert sorted(catalogue.sources) == ["income", "population"]
    income = catalogue.sources["income"]
    assert income.version == 3 and income.person_column == "pid"
    assert income.columns["county"].categories == ("03", "11", "15", "50")
    assert income.path == workspace / "data" / "income" / "data.parquet"


def test_a_dataset_without_catalogue_json_is_named(workspace: Path) -> None:
    (workspace / "data" / "income" / "catalogue.json").unlink()
    with pytest.raises(PlanError) as caught:
        workspace_catalogue()
    assert caught.value.message == (
        "The dataset 'income' has no catalogue.json, so plans cannot use it; ask the data holder "
        "to extract it again."
    )


def test_the_fluent_api_builds_the_documented_plan_and_records_it(workspace: Path) -> None:
    inc = sa.scan("income")
    pop = sa.scan("population", columns=["sex", "birth_date"])
    out = (
        inc.filter(sa.col("year") >= 2018)
        .join(pop, how="inner")
        .derive(age=2022 - sa.col("birth_date").year())
        .with_columns(age_band=sa.col("age").bin(width=10))
        .crosstab(
            index=["county", "sex"],
            columns="age_band",
            values="wage",
            agg="mean",
            name="wage-by-band",
        )
    )
    document = out.document
    assert document["project"] == "demo-project"
    assert document["frame"]["op"] == "derive"
    assert document["output"] == {
        "command": "crosstab",
        "index": ["county", "sex"],
        "columns": ["age_band"],
        "values": "wage",
        "agg": "mean",
        "safe": None,
    }
    recorded = workspace / "outbox" / "wage-by-band.plan.json"
    assert out.path == recorded
    assert recorded.read_bytes() == canonical_json(document)
    assert out.plan_hash == plan_hash(json.loads(recorded.read_text()))
    assert "computed by the plan evaluator; the server recomputes it on export" in repr(out)
    assert "computed by the plan evaluator" in out._repr_html_()
    # the numbers are the pandas answer on the same rows
    income = pd.read_parquet(workspace / "data" / "income" / "data.parquet")
    population = pd.read_parquet(workspace / "data" / "population" / "data.parquet")
    rows = income[income["year"] >= 2018].merge(population, left_on="pid", right_on="person")
    age = 2022 - pd.to_datetime(rows["birth_date"]).dt.year
    rows["age_band"] = (age // 10 * 10).map(lambda a: f"[{a}, {a + 10})")
    want = rows.groupby(["county", "sex", "age_band"])["wage"].mean()
    table = out.table
    for (county, sex, band), value in want.items():
        if not np.isnan(value):
            assert table.loc[(county, sex), band] == pytest.approx(value, rel=1e-9)


def test_expressions_window_and_quantile_groups_in_the_fluent_api(workspace: Path) -> None:
    frame = (
        sa.scan("income")
        .derive(
            level=sa.when(sa.col("wage") > 50000)
            .then(2)
            .when(sa.col("wage") > 0)
            .then(1)
            .otherwise(0),
            hours0=sa.coalesce(sa.col("hours"), 0),
            in_east=sa.col("county").is_in(["03", "11"]) & ~sa.col("hours").is_null(),
            log_wage=sa.col("wage").log().round(2),
            mid=sa.col("hours").between(10, 40),
            scaled=(sa.col("wage") / 1000).clip(0, 100).cast("int"),
            month=sa.lit(3) * -sa.col("year").abs().sqrt().exp() / sa.col("hours"),
        )
        .window(
            "year",
            previous=sa.lag("wage"),
            nxt=sa.lead("wage", 2),
            change=sa.diff("wage"),
            total=sa.cum_sum("hours"),
        )
        .quantile_group("decile", of="wage", groups=10, within="year")
        .select("wage", "decile", "year", "level")
    )
    preview = frame.preview(5)
    assert list(preview.columns) == ["pid", "wage", "decile", "year", "level"]
    assert len(preview) == 5
    out = frame.describe("wage", by="decile", record=False)
    assert list(out.table.columns) == ["count", "mean", "std", "median", "min", "max"]
    with pytest.raises(PlanError, match="no truth value"):
        bool(sa.col("wage") > 1)


def test_rounding_a_table_of_sums_is_refused(workspace: Path) -> None:
    with pytest.raises(PlanError) as caught:
        sa.scan("income").pivot_table("wage", "county", "year", "sum", safe="round")
    assert caught.value.message == (
        "Rounding protects counts; this is a table of sum. Use safe='suppress'."
    )


def test_a_fluent_grouping_on_free_text_is_refused_with_the_fix(workspace: Path) -> None:
    with pytest.raises(PlanError) as caught:
        sa.scan("income").crosstab("hours", "county", record=False)
    assert caught.value.message.endswith("cut it into bins with .bin(width=...) first.")


# -- every command through compute -------------------------------------------------------------
INCOME = {"op": "scan", "dataset": "income", "version": 3, "columns": None}
JOINED: dict[str, Any] = {
    "op": "derive",
    "input": {
        "op": "join",
        "how": "left",
        "left": INCOME,
        "right": {"op": "scan", "dataset": "population", "version": 1, "columns": None},
    },
    "columns": {
        "band": {"bin": {"col": "hours"}, "edges": [0, 10, 20, 50]},
        "female": {
            "fn": "cast",
            "args": [{"fn": "eq", "args": [{"col": "sex"}, {"lit": "F"}]}],
            "to": "int",
        },
        "duration": {
            "fn": "abs",
            "args": [{"fn": "sub", "args": [{"col": "year"}, {"lit": 2015}]}],
        },
        "event": {"fn": "cast", "args": [{"col": "employed"}], "to": "int"},
    },
}
OUTPUTS = [
    {
        "command": "crosstab",
        "index": ["county"],
        "columns": ["band"],
        "values": None,
        "agg": "count",
        "safe": None,
    },
    {
        "command": "crosstab",
        "index": ["county", "sex"],
        "columns": ["year"],
        "values": "wage",
        "agg": "median",
        # Every cell of it fails, so its safe version is refused (tests/unit/test_sdc_safe.py).
        "safe": None,
    },
    {
        "command": "pivot_table",
        "index": ["sex"],
        "columns": ["band"],
        "values": "wage",
        "agg": "sum",
        "safe": "suppress",
    },
    {"command": "hist", "column": "wage", "width": 20000, "by": [], "safe": None},
    {"command": "hist", "column": "hours", "edges": [0, 10, 20, 50], "by": ["sex"], "safe": None},
    {"command": "describe", "columns": ["wage", "hours"], "by": ["county"], "safe": None},
    {"command": "ols", "formula": "wage ~ hours + C(county) + female"},
    {"command": "logit", "formula": "event ~ hours + female"},
    {"command": "probit", "formula": "event ~ hours"},
    {
        "command": "survival",
        "duration": "duration",
        "event": "event",
        "by": ["sex"],
        "edges": [0, 1, 2, 5, 10],
    },
]


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda o: f"{o['command']}")
def test_every_commands_evidence_goes_through_compute(
    workspace: Path, output: dict[str, Any]
) -> None:
    catalogue: Catalogue = workspace_catalogue()
    document = {"spe_plan": 1, "project": "demo-project", "frame": JOINED, "output": output}
    evidence = evaluate(validate(document, catalogue), catalogue)
    assert evidence.frame.columns[0] == "pid"
    assert evidence.spec["person_id"] == "pid"
    computed = compute(evidence.command, evidence.frame, evidence.spec, Rules())
    assert computed.command == output["command"]
    assert computed.table.size > 0
    assert evidence.datasets == ["income", "population"]


def test_the_safe_version_of_a_plan_output_is_the_same_plan_asking_for_it(workspace: Path) -> None:
    # Heights in 5 cm bands by sex, between 160 and 190 cm: a few cells fail, and every band
    # has enough persons for them to be hidden (income's county 50 is empty, and a published
    # total of 0 cannot be hidden).
    frame = (
        sa.scan("population")
        .filter(sa.col("height") >= 160)
        .filter(sa.col("height") < 190)
        .derive(band=sa.col("height").bin(width=5))
    )
    out = frame.crosstab("sex", "band", name="small-cells")
    assert not out.passed
    safe = out.safe()
    assert safe.document["output"] == {**out.document["output"], "safe": "suppress"}
    assert safe.document["frame"] == out.document["frame"]
    assert safe.path == workspace / "outbox" / "small-cells-safe.plan.json"
    assert safe.status.value in ("pass", "review")  # suppressed: no cell fails any more
