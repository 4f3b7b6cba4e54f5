"""spe.analysis helpers: the same numbers as pandas and statsmodels, with per-cell verdicts."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import spe.analysis as sa
from spe.analysis import AnalysisError
from spe.analysis.formula import formula_columns
from spe.analysis.outputs import nice_edges
from spe.sdc import Verdict


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A workspace: outbox and data mount in tmp_path, no policies (platform defaults)."""
    from spe.config import reset_settings

    for key in list(os.environ):
        if key.startswith("SPE_") and not key.startswith("SPE_TEST_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SPE_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("SPE_WORKSPACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SPE_POLICIES_DIR", str(tmp_path / "no-policies"))
    reset_settings()
    yield tmp_path
    reset_settings()


def people(n: int = 3000, seed: int = 7) -> pd.DataFrame:
    """Synthetic rows, one per person, with a pseudonym column first as in an extract."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    df = pd.DataFrame(
        {
            "person_id": [f"{v:032x}" for v in rng.integers(0, 2**62, n)],
            "sex": rng.choice(["F", "M"], n),
            "region": rng.choice(["East", "North", "South"], n),
            "age": age,
            "income": rng.lognormal(10, 0.5, n),
            "years": rng.exponential(6, n),
            "died": rng.integers(0, 2, n),
        }
    )
    df["employed"] = (rng.random(n) < 0.2 + 0.008 * (age - 18)).astype(int)
    return sa.use(df, person_id="person_id", dataset="income")


# -- the same numbers as pandas / statsmodels ----------------------------------------------
def test_crosstab_counts_equal_pandas_crosstab(workspace: Path) -> None:
    df = people()
    out = sa.crosstab(df, "sex", "region", record=False)
    expected = pd.crosstab(df["sex"], df["region"])
    pd.testing.assert_frame_equal(out.table, expected, check_index_type=False)
    assert out.status == Verdict.PASS and out.reasons == []
    assert out.loc["F", "East"] == expected.loc["F", "East"]  # behaves like the DataFrame


def test_crosstab_with_two_index_columns_equals_pandas(workspace: Path) -> None:
    df = people()
    out = sa.crosstab(df, ["sex", "region"], "died", record=False)
    expected = pd.crosstab([df["sex"], df["region"]], df["died"])
    pd.testing.assert_frame_equal(out.table, expected, check_index_type=False)


def test_pivot_table_mean_equals_pandas_pivot_table(workspace: Path) -> None:
    df = people()
    out = sa.pivot_table(df, "income", "sex", "region", record=False)
    expected = pd.pivot_table(df, values="income", index="sex", columns="region", aggfunc="mean")
    pd.testing.assert_frame_equal(out.table, expected, check_index_type=False, rtol=1e-12)


def test_describe_equals_pandas_and_leaves_out_disclosive_min_and_max(workspace: Path) -> None:
    df = people()
    out = sa.describe(df, ["age", "income"], by="sex", record=False)
    grouped = df.groupby("sex")
    for sex in ("F", "M"):
        for col in ("age", "income"):
            row = out.table.loc[(sex, col)]
            values = grouped.get_group(sex)[col]
            assert row["count"] == values.count()
            assert math.isclose(row["mean"], values.mean(), rel_tol=1e-12)
            assert math.isclose(row["std"], values.std(), rel_tol=1e-9)
            assert math.isclose(row["median"], values.median(), rel_tol=1e-12)
    # A continuous income's extremes are one person's value: left out, with the reason.
    assert out.table.loc[("F", "income"), ["min", "max"]].isna().all()
    # Integer ages of 18 are held by many persons: allowed and equal to pandas.
    assert out.table.loc[("F", "age"), "min"] == df[df.sex == "F"]["age"].min()
    assert out.status == Verdict.PASS
    assert out.report["summary"]["withheld"] >= 4


def test_hist_counts_equal_numpy_histogram_on_round_edges(workspace: Path) -> None:
    df = people()
    out = sa.hist(df, "age", bins=6, record=False)
    edges = out.spec["edges"]
    assert edges[0] <= df.age.min() and edges[-1] >= df.age.max()
    assert all(float(e).is_integer() for e in edges)  # round numbers, not the raw extremes
    counts, _ = np.histogram(df["age"], bins=edges)
    assert out.table["count"].tolist() == [c for c in counts if c]
    assert out.table.index[0].startswith("[") and out.table.index[-1].endswith("]")


def test_hist_by_group_has_one_count_column_per_group(workspace: Path) -> None:
    df = people()
    out = sa.hist(df, "age", bins=[18, 40, 60, 80], by="sex", record=False)
    assert list(out.table.columns) == ["F", "M"]
    f_counts, _ = np.histogram(df[df.sex == "F"]["age"], bins=[18, 40, 60, 80])
    assert out.table["F"].tolist() == f_counts.tolist()


@pytest.mark.parametrize("kind", ["ols", "logit", "probit"])
def test_models_equal_statsmodels(workspace: Path, kind: str) -> None:
    import statsmodels.formula.api as smf

    df = people()
    formula = "np.log(income) ~ age + C(region)" if kind == "ols" else "employed ~ age + C(sex)"
    out = getattr(sa, kind)(df, formula, record=False)
    fit = getattr(smf, kind)(formula, data=df)
    result = fit.fit() if kind == "ols" else fit.fit(disp=0)
    table = out.table
    np.testing.assert_allclose(table["estimate"], result.params, rtol=1e-9)
    np.testing.assert_allclose(table["std_err"], result.bse, rtol=1e-9)
    np.testing.assert_allclose(table["p_value"], result.pvalues, rtol=1e-6)
    np.testing.assert_allclose(table["ci_low"], result.conf_int()[0], rtol=1e-9)
    np.testing.assert_allclose(table["ci_high"], result.conf_int()[1], rtol=1e-9)
    assert out.status == Verdict.PASS
    assert out.spec["columns"] == (
        ["income", "age", "region"] if kind == "ols" else ["employed", "age", "sex"]
    )


def test_survival_equals_a_hand_computed_kaplan_meier(workspace: Path) -> None:
    df = pd.DataFrame(
        {
            "pid": [f"p{i}" for i in range(8)],
            "t": [1, 2, 2, 3, 4, 5, 5, 6],
            "event": [1, 1, 0, 1, 0, 1, 1, 0],
        }
    )
    out = sa.survival(df, "t", "event", intervals=[0, 2, 4, 6, 8], person_id="pid", record=False)
    table = out.table
    assert list(table.index) == ["[0, 2)", "[2, 4)", "[4, 6)", "[6, 8)"]
    assert table["at_risk"].tolist() == [8, 7, 4, 1]
    assert table["events"].tolist() == [1, 2, 2, 0]
    assert table["censored"].tolist() == [0, 1, 1, 1]
    # S = 7/8 after t=1; x 6/7 after t=2; x 4/5 after t=3; x 1/3 after t=5.
    np.testing.assert_allclose(table["survival"], [0.875, 0.6, 0.2, 0.2], rtol=1e-12)
    greenwood = np.cumsum([1 / (8 * 7), 1 / (7 * 6), 1 / (5 * 4), 2 / (3 * 1)])
    expected_se = [
        0.875 * math.sqrt(greenwood[0]),
        0.6 * math.sqrt(greenwood[2]),
        0.2 * math.sqrt(greenwood[3]),
        0.2 * math.sqrt(greenwood[3]),
    ]
    np.testing.assert_allclose(table["std_err"], expected_se, rtol=1e-12)
    # Eight persons are fewer than the threshold: the counts fail and say so.
    assert out.status == Verdict.FAIL
    assert any("at least 10" in r for r in out.reasons)


def test_survival_by_group_gives_each_group_its_own_curve(workspace: Path) -> None:
    df = people()
    out = sa.survival(df, "years", "died", by="sex", intervals=[0, 5, 10, 20], record=False)
    f = df[df.sex == "F"]
    first = out.table.loc[("F", "[0, 5)")]
    assert first["at_risk"] == len(f)
    assert first["events"] == int(((f.years < 5) & (f.died == 1)).sum())
    assert out.status == Verdict.PASS


# -- failing tables explain themselves -----------------------------------------------------
def test_failing_table_reports_each_failing_cell_with_rule_and_numbers(workspace: Path) -> None:
    df = people()
    df.loc[df.index[:4], "region"] = "Island"  # four persons only
    out = sa.crosstab(df, "region", "sex", record=False)
    assert out.status == Verdict.FAIL
    failing = out.failing
    assert set(failing["rule"]) >= {"threshold"}
    island = failing[failing["cell"].str.contains("region=Island")]
    assert len(island) >= 1
    cell = next(
        c for c in out.report["cells"] if c["index"] == ["Island"] and c["status"] == "fail"
    )
    threshold = next(o for o in cell["failing"] if o["rule"] == "threshold")
    assert threshold["numbers"]["threshold"] == 10
    assert threshold["numbers"]["persons"] == cell["persons"] < 10
    text = repr(out)
    assert "FAIL" in text and "region=Island" in text and "out.safe()" in text
    assert "region=Island" in out._repr_html_()


def test_persons_are_counted_by_the_declared_person_column_not_rows(workspace: Path) -> None:
    df = pd.DataFrame({"pid": ["a", "b", "c"] * 4, "x": "one", "y": "two"})
    sa.use(df, person_id="pid")
    out = sa.crosstab(df, "x", "y", record=False)
    cell = out.report["cells"][0]
    assert cell["value"] == 12 and cell["persons"] == 3 and out.status == Verdict.FAIL


def test_without_a_person_column_each_row_counts_and_a_note_says_so(workspace: Path) -> None:
    df = pd.DataFrame({"x": ["a"] * 12, "y": ["b"] * 12})
    out = sa.crosstab(df, "x", "y", record=False)
    assert out.report["cells"][0]["persons"] == 12
    assert any("No person column is known" in n for n in out.notes)
    assert out.spec["person_id"] is None


def test_merged_frame_without_attrs_falls_back_to_explicit_person_id(workspace: Path) -> None:
    df = people(200)
    merged = df.merge(pd.DataFrame({"sex": ["F", "M"], "label": ["f", "m"]}), on="sex")
    merged.attrs.clear()
    out = sa.crosstab(merged, "label", "region", person_id="person_id", record=False)
    assert out.spec["person_id"] == "person_id"


# -- loading -------------------------------------------------------------------------------
def test_load_reads_both_layouts_and_remembers_the_person_column(workspace: Path) -> None:
    data = workspace / "data"
    (data / "income").mkdir(parents=True)
    df = people(50)
    df.to_parquet(data / "income" / "data.parquet", index=False)
    df[["person_id", "age"]].to_parquet(data / "education.parquet", index=False)
    loaded = sa.load("income", columns=["age"])
    assert list(loaded.columns) == ["person_id", "age"]
    assert loaded.attrs["spe_person_id"] == "person_id"
    assert loaded.attrs["spe_dataset"] == "income"
    assert sa.load("education").attrs["spe_datasets"] == ["education"]
    assert sa.available_datasets() == ["education", "income"]


def test_load_of_a_missing_dataset_lists_the_available_ones(workspace: Path) -> None:
    (workspace / "data").mkdir()
    people(20).to_parquet(workspace / "data" / "income.parquet", index=False)
    with pytest.raises(AnalysisError, match="datasets of this project are: income"):
        sa.load("health")
    with pytest.raises(AnalysisError, match="not allowed"):
        sa.load("../income")


# -- guards --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "formula",
    [
        "y ~ __import__('os').system('true')",
        "y ~ open('/tmp/x')",
        "y ~ x.__class__",
        "y ~ I(x ** 10 ** 10)",
        "y ~ np.load('f')",
        "y ~ [v for v in x]",
        "y ~ unknown_column",
    ],
)
def test_formula_guard_refuses_code_that_is_not_a_model_term(formula: str) -> None:
    with pytest.raises(AnalysisError, match="cannot be used"):
        formula_columns(formula, ["y", "x"])


def test_formula_guard_accepts_model_terms_and_lists_their_columns() -> None:
    formula = 'np.log(y) ~ x + C(g, Treatment("b")) + I(x ** 2) + Q("my col") + x:z - 1'
    assert formula_columns(formula, ["y", "x", "g", "my col", "z"]) == [
        "y",
        "x",
        "g",
        "my col",
        "z",
    ]


@pytest.mark.parametrize(
    ("low", "high", "bins"), [(18, 79, 6), (0.013, 0.97, 10), (-5.5, 1234.0, 8), (3, 3, 5)]
)
def test_nice_edges_cover_the_range_on_round_steps(low: float, high: float, bins: int) -> None:
    edges = nice_edges(low, high, bins)
    assert edges[0] <= low and edges[-1] >= high
    steps = np.diff(edges)
    np.testing.assert_allclose(steps, steps[0])
    assert len(edges) - 1 <= bins + 2


def test_survival_with_a_number_of_intervals_starts_at_zero_and_keeps_every_row(
    workspace: Path,
) -> None:
    df = people()
    out = sa.survival(df, "years", "died", intervals=5, record=False)
    edges = out.spec["edges"]
    assert edges[0] == 0 and edges[-1] > df["years"].max()
    assert out.table["at_risk"].iloc[0] == len(df)
    assert out.table["events"].sum() == df["died"].sum()
    assert out.table["events"].sum() + out.table["censored"].sum() == len(df)


def test_workspace_checks_with_the_datasets_policy_when_there_is_one(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spe.config import REPO_ROOT, reset_settings

    sdc = workspace / "policies" / "sdc"
    (sdc / "datasets").mkdir(parents=True)
    (sdc / "default.yaml").write_text((REPO_ROOT / "policies/sdc/default.yaml").read_text())
    (sdc / "datasets" / "income.yaml").write_text("threshold: 2000\n")
    monkeypatch.setenv("SPE_POLICIES_DIR", str(workspace / "policies"))
    reset_settings()
    out = sa.crosstab(people(), "sex", "region", record=False)
    assert out.status == Verdict.FAIL
    assert out.report["rules"]["threshold"] == 2000
