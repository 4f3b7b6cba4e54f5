"""The rules engine on hand-computed tables: one rule at a time, then the report's JSON shape."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spe.sdc import (
    Rules,
    SDCInputError,
    Verdict,
    check_formula,
    check_model,
    check_table,
)
from spe.sdc.compute import top_contributions


def one_cell(persons: list[str], values: list[float] | None = None) -> pd.DataFrame:
    """Rows of one cell (sex=F, region=North), one row per entry of ``persons``."""
    df = pd.DataFrame({"pid": persons, "sex": "F", "region": "North"})
    if values is not None:
        df["income"] = values
    return df


def outcome(report, rule: str, i: int = 0):
    (found,) = [o for o in report.cell(i).outcomes if o.rule == rule]
    return found


# -- threshold: distinct persons, not rows ----------------------------------------------------
THRESHOLD_CASES = [
    # (what it proves, persons column, use the person column, verdict, persons, value)
    ("12 rows from 3 persons fail", ["a"] * 4 + ["b"] * 4 + ["c"] * 4, True, "fail", 3, 12),
    ("10 distinct persons pass", [f"p{i}" for i in range(10)], True, "pass", 10, 10),
    ("9 distinct persons fail", [f"p{i}" for i in range(9)], True, "fail", 9, 9),
    ("without a person column each row is a person", ["a"] * 12, False, "pass", 12, 12),
]


@pytest.mark.parametrize(
    ("persons", "use_pid", "verdict", "n_persons", "value"),
    [case[1:] for case in THRESHOLD_CASES],
    ids=[case[0] for case in THRESHOLD_CASES],
)
def test_threshold_counts_distinct_persons_not_rows(
    persons: list[str], use_pid: bool, verdict: str, n_persons: int, value: int
) -> None:
    report = check_table(one_cell(persons), "sex", "region", person_id="pid" if use_pid else None)
    cell = report.cell(0)
    assert cell.value == value
    assert cell.persons == n_persons
    assert cell.rows == len(persons)
    found = outcome(report, "threshold")
    assert found.verdict == verdict
    assert found.numbers["persons"] == n_persons
    assert found.numbers["threshold"] == 10
    assert report.status == verdict


def test_threshold_sentence_says_the_numbers() -> None:
    report = check_table(
        one_cell(["a"] * 4 + ["b"] * 4 + ["c"] * 4), "sex", "region", person_id="pid"
    )
    assert outcome(report, "threshold").sentence == (
        "Only 3 persons are behind this cell; at least 10 are needed."
    )


def test_a_stricter_threshold_applies() -> None:
    df = one_cell([f"p{i}" for i in range(12)])
    report = check_table(df, "sex", "region", person_id="pid", rules=Rules(threshold=15))
    assert outcome(report, "threshold").verdict == Verdict.FAIL


def test_a_mean_counts_only_persons_with_a_value() -> None:
    persons = [f"p{i}" for i in range(12)]
    values = [100.0] * 9 + [np.nan] * 3
    df = one_cell(persons, values)
    mean = check_table(df, "sex", "region", values="income", agg="mean", person_id="pid")
    assert mean.cell(0).persons == 9
    assert mean.cell(0).value == pytest.approx(100.0)
    assert outcome(mean, "threshold").verdict == Verdict.FAIL
    # The same rows as a plain frequency table: all 12 persons count.
    count = check_table(df, "sex", "region", person_id="pid")
    assert count.cell(0).persons == 12
    assert count.status == Verdict.PASS
    # A count of a values column counts non-missing values, as pandas.crosstab does.
    counted = check_table(df, "sex", "region", values="income", agg="count", person_id="pid")
    assert counted.cell(0).value == 9
    assert counted.cell(0).persons == 9


@pytest.mark.parametrize("agg", ["sum", "median", "std"])
def test_every_statistic_counts_persons_with_a_value(agg: str) -> None:
    df = one_cell([f"p{i}" for i in range(11)], [1.0, 2.0, np.nan] + [5.0] * 8)
    report = check_table(df, "sex", "region", values="income", agg=agg, person_id="pid")
    assert report.cell(0).persons == 10
    assert report.cell(0).rows == 11


# -- dominance and p % on per-person contributions --------------------------------------------
TEN = [f"p{i}" for i in range(10)]
DOMINANCE_CASES = [
    # (what it proves, persons, values, dominance verdict, share)
    ("two largest hold 91.8 % fail", TEN, [500, 400] + [10] * 8, "fail", 900 / 980),
    ("exactly 90 % is not less than k and fails", TEN, [450, 450] + [12.5] * 8, "fail", 0.9),
    ("89.9 % passes", TEN, [449, 450] + [12.625] * 8, "pass", 0.899),
    ("two largest hold 50 % pass", TEN, [300, 200] + [62.5] * 8, "pass", 0.5),
    (
        "a person's rows are summed before ranking",
        ["p0", "p0", *TEN[1:]],
        [250, 250, 400] + [10] * 8,
        "fail",
        900 / 980,
    ),
]


@pytest.mark.parametrize(
    ("persons", "values", "verdict", "share"),
    [case[1:] for case in DOMINANCE_CASES],
    ids=[case[0] for case in DOMINANCE_CASES],
)
def test_dominance_n2_k09_on_per_person_contributions(
    persons: list[str], values: list[float], verdict: str, share: float
) -> None:
    df = one_cell(persons, [float(v) for v in values])
    report = check_table(df, "sex", "region", values="income", agg="sum", person_id="pid")
    found = outcome(report, "dominance")
    assert found.verdict == verdict
    assert found.numbers["share"] == pytest.approx(share, abs=1e-6)
    assert found.numbers["n"] == 2
    assert found.numbers["k"] == 0.9
    assert report.cell(0).persons == 10


def test_a_median_is_a_position_so_dominance_does_not_apply_but_persons_near_it_do() -> None:
    twelve = [f"p{i}" for i in range(12)]
    df = one_cell(twelve, [500.0, 400.0] + [10.0] * 10)  # dominated, but the median is 10
    report = check_table(df, "sex", "region", values="income", agg="median", person_id="pid")
    assert {o.rule for o in report.cell(0).outcomes} == {"zeros", "threshold", "position"}
    assert report.status == Verdict.PASS
    assert report.cell(0).value == 10.0
    assert outcome(report, "position").numbers["near"] == 10
    # Eight persons at 10 are too few to hide whose value the median is.
    df = one_cell(TEN, [500.0, 400.0] + [10.0] * 8)
    report = check_table(df, "sex", "region", values="income", agg="median", person_id="pid")
    assert [o.rule for o in report.cell(0).failing] == ["position"]


STD_CASES = [
    # (what it proves, persons, failing rules)
    ("10 persons give 9 degrees of freedom: too few", 10, ["residual_dof"]),
    ("11 persons give 10 degrees of freedom: enough", 11, []),
]


@pytest.mark.parametrize(
    ("n", "failing"), [case[1:] for case in STD_CASES], ids=[case[0] for case in STD_CASES]
)
def test_a_standard_deviation_needs_residual_degrees_of_freedom(n: int, failing: list) -> None:
    df = one_cell([f"p{i}" for i in range(n)], [float(10 + i % 3) for i in range(n)])
    report = check_table(df, "sex", "region", values="income", agg="std", person_id="pid")
    assert [o.rule for o in report.cell(0).failing] == failing
    assert outcome(report, "residual_dof").numbers["df_resid"] == n - 1


def test_a_dominated_standard_deviation_fails_dominance() -> None:
    # Nine zeros and one large value: the std is that value / sqrt(10), so it gives it away.
    df = one_cell([f"p{i}" for i in range(12)], [1e6] + [0.0] * 11)
    report = check_table(df, "sex", "region", values="income", agg="std", person_id="pid")
    assert outcome(report, "dominance").verdict == Verdict.FAIL


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 1.0, 2.0, 2.0, 5.0, 7.5, 9.0]))),
    st.integers(1, 4),
)
def test_top_contributions_equal_a_per_cell_sort_with_ties(
    rows: list[tuple[int, float]], n_top: int
) -> None:
    cell = np.array([c for c, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows], dtype=np.float64)
    got = top_contributions(cell, values, 5, n_top)
    for c in range(5):
        expected = sorted(values[cell == c], reverse=True)[:n_top]
        expected += [0.0] * (n_top - len(expected))
        assert got[c].tolist() == expected


def test_top_contributions_of_many_rows_equal_a_per_cell_sort() -> None:
    """Above a few hundred thousand rows only candidate rows are ranked; cells whose rows all
    fall in one hand (every other row here) are ranked in full."""
    rng = np.random.default_rng(12)
    n = 400_000
    cell = rng.integers(0, 50, n)
    cell[::2] = np.where(rng.random(n // 2) < 0.01, 50, cell[::2])  # cell 50: even rows only
    values = np.round(rng.lognormal(3, 2, n), 1)
    values[rng.integers(0, n, 2000)] = 7.0  # ties
    for n_top in (1, 2, 3):
        got = top_contributions(cell, values, 52, n_top)
        order = np.lexsort((-values, cell))
        for c in range(52):
            expected = values[order][cell[order] == c][:n_top].tolist()
            expected += [0.0] * (n_top - len(expected))
            assert got[c].tolist() == expected


def test_dominance_counted_on_rows_would_miss_the_person_with_two_rows() -> None:
    persons = ["p0", "p0", *TEN[1:]]
    df = one_cell(persons, [250.0, 250.0, 400.0] + [10.0] * 8)
    by_rows = check_table(df, "sex", "region", values="income", agg="sum")
    assert outcome(by_rows, "dominance").verdict == Verdict.PASS  # 650 / 980
    by_persons = check_table(df, "sex", "region", values="income", agg="sum", person_id="pid")
    assert outcome(by_persons, "dominance").verdict == Verdict.FAIL
    assert by_persons.cell(0).top[:2] == (500.0, 400.0)


P_CASES = [
    # (what it proves, values, p, p % verdict, ratio)
    ("remainder 40 % of the largest fails p=50", [100, 50] + [5] * 8, 50, "fail", 0.4),
    ("the same cell passes the default p=10", [100, 50] + [5] * 8, 10, "pass", 0.4),
    ("remainder 5 % of the largest fails p=10", [1000, 10] + [6.25] * 8, 10, "fail", 0.05),
    ("every contribution zero fails", [0] * 10, 10, "fail", 0.0),
]


@pytest.mark.parametrize(
    ("values", "p", "verdict", "ratio"),
    [case[1:] for case in P_CASES],
    ids=[case[0] for case in P_CASES],
)
def test_p_percent_rule(values: list[float], p: float, verdict: str, ratio: float) -> None:
    df = one_cell(TEN, [float(v) for v in values])
    report = check_table(
        df,
        "sex",
        "region",
        values="income",
        agg="mean",
        person_id="pid",
        rules=Rules(p_percent=p),
    )
    found = outcome(report, "p_percent")
    assert found.verdict == verdict
    assert found.numbers["ratio"] == pytest.approx(ratio, abs=1e-6)


def test_all_zero_contributions_fail_p_percent_but_not_dominance() -> None:
    report = check_table(
        one_cell(TEN, [0.0] * 10), "sex", "region", values="income", agg="sum", person_id="pid"
    )
    assert outcome(report, "dominance").verdict == Verdict.PASS
    assert "reveals each person's value" in outcome(report, "p_percent").sentence


NEGATIVE_CASES = [
    # (what it proves, values, cell status, dominance verdict)
    (
        "a dominant negative contributor fails on absolute values",
        [-500, 400] + [10] * 8,
        "fail",
        "fail",
    ),
    ("a small negative value sends the cell to review", [-5] + [100] * 9, "review", "pass"),
]


@pytest.mark.parametrize(
    ("values", "status", "dominance"),
    [case[1:] for case in NEGATIVE_CASES],
    ids=[case[0] for case in NEGATIVE_CASES],
)
def test_negative_values_use_absolute_contributions_and_go_to_review(
    values: list[float], status: str, dominance: str
) -> None:
    df = one_cell(TEN, [float(v) for v in values])
    report = check_table(df, "sex", "region", values="income", agg="sum", person_id="pid")
    assert outcome(report, "negative_values").verdict == Verdict.REVIEW
    assert outcome(report, "dominance").verdict == dominance
    assert report.cell(0).status == status
    assert report.status == status


# -- zeros and full cells (class disclosure) --------------------------------------------------
def test_zeros_fail_and_full_cells_go_to_review_in_count_tables() -> None:
    # sex x region: F all in North (12), nobody F in South, M: 15 North, 11 South.
    df = pd.DataFrame(
        {
            "pid": [f"p{i}" for i in range(38)],
            "sex": ["F"] * 12 + ["M"] * 26,
            "region": ["North"] * 12 + ["North"] * 15 + ["South"] * 11,
        }
    )
    report = check_table(df, "sex", "region", person_id="pid")
    grid = {(c.index[0], c.columns[0]): c for c in report.cells}
    assert grid["F", "South"].value == 0
    assert grid["F", "South"].status == Verdict.FAIL
    assert [o.rule for o in grid["F", "South"].failing] == ["zeros"]
    assert grid["F", "North"].status == Verdict.REVIEW
    (full,) = grid["F", "North"].failing
    assert full.rule == "full_cell"
    assert "All 12 persons with sex=F fall in this cell" in full.sentence
    assert grid["M", "South"].status == Verdict.REVIEW  # all of South is M
    assert grid["M", "North"].status == Verdict.PASS
    assert report.status == Verdict.FAIL


def test_an_empty_cell_of_a_magnitude_table_fails_as_a_zero() -> None:
    df = pd.DataFrame(
        {
            "pid": [f"p{i}" for i in range(40)],
            "sex": ["F"] * 20 + ["M"] * 20,
            "region": ["North"] * 20 + ["North"] * 10 + ["South"] * 10,
            "income": np.linspace(100, 200, 40),
        }
    )
    report = check_table(df, "sex", "region", values="income", agg="mean", person_id="pid")
    empty = report.cell(0, 1)
    assert math.isnan(empty.value)
    assert [o.rule for o in empty.failing] == ["zeros"]


# -- min, max, mode ---------------------------------------------------------------------------
EXTREME_CASES = [
    # (what it proves, agg, values, failing rules)
    (
        "the max of a continuous variable is one person's value",
        "max",
        [float(v) for v in range(100, 112)],
        ["value_holders"],
    ),
    ("a max shared by 10 persons passes", "max", [3.0] * 10 + [1.0, 2.0], []),
    ("a min shared by 10 persons passes", "min", [0.0] * 10 + [1.0, 2.0], []),
    ("everyone having the same value fails", "min", [2.0] * 12, ["all_same"]),
    (
        "a mode held by 3 persons fails",
        "mode",
        [1.0, 1.0, 1.0] + [float(v) for v in range(9)],
        ["value_holders"],
    ),
    ("a mode held by 10 persons passes", "mode", [7.0] * 10 + [1.0, 2.0], []),
]


@pytest.mark.parametrize(
    ("agg", "values", "failing"),
    [case[1:] for case in EXTREME_CASES],
    ids=[case[0] for case in EXTREME_CASES],
)
def test_min_max_mode_are_released_only_when_enough_persons_hold_the_value(
    agg: str, values: list[float], failing: list[str]
) -> None:
    df = one_cell([f"p{i}" for i in range(len(values))], values)
    report = check_table(df, "sex", "region", values="income", agg=agg, person_id="pid")
    assert [o.rule for o in report.cell(0).failing] == failing


@pytest.mark.parametrize("agg", ["min", "max", "mode"])
def test_min_max_mode_fail_below_the_threshold(agg: str) -> None:
    df = one_cell([f"p{i}" for i in range(5)], [4.0] * 3 + [5.0] * 2)
    report = check_table(df, "sex", "region", values="income", agg=agg, person_id="pid")
    rules = {o.rule for o in report.cell(0).failing}
    assert "threshold" in rules
    assert report.status == Verdict.FAIL


def test_mode_of_labels_picks_the_smallest_of_tied_values() -> None:
    df = one_cell([f"p{i}" for i in range(20)])
    df["job"] = ["nurse"] * 10 + ["baker"] * 10
    report = check_table(df, "sex", "region", values="job", agg="mode", person_id="pid")
    assert report.cell(0).value == "baker"
    assert report.status == Verdict.PASS


# -- models -----------------------------------------------------------------------------------
DOF_CASES = [
    # (what it proves, nobs, df_resid, persons, verdict)
    ("9 residual dof fail", 12, 9, None, "fail"),
    ("10 residual dof pass", 13, 10, None, "pass"),
    ("dof are counted on persons when rows repeat them", 40, 35, 12, "fail"),
    ("enough persons keep the row dof", 40, 35, 40, "pass"),
]


@pytest.mark.parametrize(
    ("nobs", "df_resid", "persons", "verdict"),
    [case[1:] for case in DOF_CASES],
    ids=[case[0] for case in DOF_CASES],
)
def test_residual_degrees_of_freedom(
    nobs: int, df_resid: float, persons: int | None, verdict: str
) -> None:
    report = check_model("ols", nobs, df_resid, persons=persons)
    assert report.status == verdict
    (dof,) = report.outcomes
    assert dof.rule == "residual_dof"
    assert dof.numbers["minimum"] == 10


def test_model_json_carries_status_and_failing_rules() -> None:
    out = json.loads(check_model("logit", 12, 9).to_json())
    assert out["kind"] == "model"
    assert out["model"] == "logit"
    assert out["status"] == "fail"
    assert [f["rule"] for f in out["failing"]] == ["residual_dof"]


def test_check_formula_fits_and_checks_an_ols_model() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x1": rng.normal(size=14), "x2": rng.normal(size=14)})
    df["y"] = 2 * df.x1 - df.x2 + rng.normal(scale=0.1, size=14)
    df["pid"] = [f"p{i}" for i in range(14)]
    report = check_formula(df, "y ~ x1 + x2", "ols", person_id="pid")
    assert report.df_resid == 11
    # 11 residual degrees of freedom pass; but 3 parameters over 14 persons weigh each person
    # 3/14 of their own fit on average, above 1/9: a reviewer looks (test_sdc_model_terms).
    assert [o.rule for o in report.failing] == ["leverage"]
    assert report.status == Verdict.REVIEW
    more = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.normal(size=300)})
    more["y"] = 2 * more.x1 - more.x2 + rng.normal(scale=0.1, size=300)
    more["pid"] = [f"p{i}" for i in range(300)]
    assert check_formula(more, "y ~ x1 + x2", "ols", person_id="pid").status == Verdict.PASS
    assert report.coefficients is not None
    assert report.coefficients["x1"]["estimate"] == pytest.approx(2, abs=0.2)
    small = check_formula(df.iloc[:12], "y ~ x1 + x2", "ols")
    assert small.status == Verdict.FAIL  # 12 - 3 = 9


def test_check_formula_logit_counts_persons() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=60)})
    df["y"] = (df.x + rng.normal(size=60) > 0).astype(int)
    df["pid"] = [f"p{i % 8}" for i in range(60)]  # 8 persons behind 60 rows
    report = check_formula(df, "y ~ x", "logit", person_id="pid")
    assert report.persons == 8
    assert report.status == Verdict.FAIL


def test_check_formula_names_a_bad_formula() -> None:
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 4.0]})
    with pytest.raises(SDCInputError, match="cannot be used"):
        check_formula(df, "y ~ nosuchcolumn", "ols")


# -- the table itself equals pandas.crosstab --------------------------------------------------
@pytest.fixture(scope="module")
def registry() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 4000
    df = pd.DataFrame(
        {
            "pid": rng.integers(0, 900, n),
            "region": pd.Categorical(rng.choice(["North", "South", "West"], n)),
            "sex": rng.choice(["F", "M"], n),
            "year": rng.integers(2019, 2022, n),
            "income": rng.lognormal(10, 1, n),
        }
    )
    df.loc[rng.integers(0, n, 80), "income"] = np.nan
    df.loc[rng.integers(0, n, 20), "sex"] = None
    return df


@pytest.mark.parametrize("agg", ["count", "sum", "mean", "median", "std", "min", "max"])
def test_three_dimensional_tables_equal_pandas_crosstab(registry: pd.DataFrame, agg: str) -> None:
    values = None if agg == "count" else "income"
    report = check_table(
        registry, ["region", "sex"], "year", values=values, agg=agg, person_id="pid"
    )
    if agg == "count":
        expected = pd.crosstab([registry.region, registry.sex], registry.year)
    else:
        expected = pd.crosstab(
            [registry.region, registry.sex], registry.year, values=registry.income, aggfunc=agg
        )
    pd.testing.assert_frame_equal(
        report.table.astype(float), expected.astype(float), check_exact=False, rtol=1e-9
    )
    assert report.shape == expected.shape
    assert any("missing index or column label" in note for note in report.notes)


def test_many_label_combinations_are_numbered_without_overflow_when_only_observed_ones_count() -> (
    None
):
    rng = np.random.default_rng(9)
    n = 20_000  # 5000^3 possible (a, b, c) combinations: more than a dense count can hold
    df = pd.DataFrame({k: rng.integers(0, 5000, n) for k in "abc"} | {"d": rng.integers(0, 2, n)})
    report = check_table(df, ["a", "b", "c"], "d", observed=True)
    expected = pd.crosstab([df.a, df.b, df.c], df.d)
    pd.testing.assert_frame_equal(report.table, expected, check_dtype=False)


def test_a_table_of_more_label_combinations_than_anyone_could_read_is_refused_with_a_fix() -> None:
    rng = np.random.default_rng(9)
    n = 20_000
    df = pd.DataFrame({k: rng.integers(0, 5000, n) for k in "abc"} | {"d": rng.integers(0, 2, n)})
    with pytest.raises(SDCInputError, match=r"cells \(labels: a 4,9\d\d, b .*group labels"):
        check_table(df, ["a", "b", "c"], "d")


def test_label_combinations_no_row_has_are_empty_cells_that_fail_as_zeros() -> None:
    rows = [("x", "p", "u")] * 12 + [("x", "q", "u")] * 12 + [("y", "p", "v")] * 12
    df = pd.DataFrame(rows, columns=["a", "b", "c"]).assign(pid=range(36), v=1.0)
    report = check_table(df, ["a", "b"], "c", person_id="pid")
    expected = pd.crosstab([df.a, df.b], df.c, dropna=False)
    pd.testing.assert_frame_equal(report.table, expected, check_dtype=False, check_names=False)
    assert report.row_labels == [("x", "p"), ("x", "q"), ("y", "p"), ("y", "q")]
    zeros = report.grid(report.severities["zeros"]) > 0
    assert zeros[3].all()  # (y, q): no row at all
    assert zeros.sum() == 2 + 3  # and (x, p, v), (x, q, v), (y, p, u)
    mean = check_table(df, ["a", "b"], "c", values="v", agg="mean", person_id="pid")
    assert np.isnan(mean.table.loc[("y", "q")]).all()
    assert (mean.grid(mean.severities["zeros"]) > 0).sum() == 5


def test_text_seen_only_beside_a_missing_label_makes_no_row_but_declared_levels_stay() -> None:
    """Issue 14: a declared level (a categorical's category) is a cell even when empty, since
    leaving it out tells the reader it is zero; free text seen only beside a missing label is
    no row."""
    df = pd.DataFrame(
        {
            "a": ["x"] * 12 + ["y"] * 12 + ["z"],
            "b": ["p"] * 6 + ["q"] * 6 + ["p"] * 12 + [None],
            "c": pd.Categorical(["u"] * 24 + ["w"], categories=["u", "v", "w"]),
        }
    )
    report = check_table(df, ["a", "b"], "c")
    assert report.row_labels == [("x", "p"), ("x", "q"), ("y", "p"), ("y", "q")]
    assert report.col_labels == [("u",), ("v",), ("w",)]
    assert report.table.columns.dtype == df["c"].dtype
    assert report.grid(report.stats.value)[:, 0].tolist() == [6, 6, 12, 0]
    assert report.grid(report.stats.value)[:, 1:].sum() == 0
    assert (report.grid(report.severities["zeros"])[:, 1:] > 0).all()  # judged as empty cells


def test_arrow_text_labels_give_the_table_of_python_text_labels() -> None:
    rng = np.random.default_rng(4)
    n = 5000
    df = pd.DataFrame(
        {
            "a": pd.array(rng.choice(["Nord", "Süd", "Ost", "Åland"], n), dtype="str"),
            "b": pd.array(rng.choice(["F", "M", None], n, p=[0.5, 0.45, 0.05]), dtype="str"),
            "v": rng.random(n),
        }
    )
    arrow = check_table(df, "a", "b", values="v", agg="sum")
    python = check_table(df.astype({"a": object, "b": object}), "a", "b", values="v", agg="sum")
    assert arrow.row_labels == python.row_labels == [("Nord",), ("Ost",), ("Süd",), ("Åland",)]
    assert arrow.col_labels == python.col_labels
    pd.testing.assert_frame_equal(arrow.table, python.table, check_index_type=False)
    assert (arrow.stats.top == python.stats.top).all()


def test_persons_are_distinct_per_cell(registry: pd.DataFrame) -> None:
    report = check_table(registry, "region", ["sex", "year"], person_id="pid")
    clean = registry.dropna(subset=["sex"])
    expected = clean.groupby(["region", "sex", "year"], observed=True)["pid"].nunique()
    got = report.persons_table.stack(["sex", "year"], future_stack=True)
    got = got[got > 0]
    assert got.sort_index().to_dict() == expected.sort_index().to_dict()


@pytest.mark.parametrize("repeated", [True, False], ids=["person-years", "one-row-per-person"])
def test_string_person_ids_in_arrow_and_python_form_give_the_same_persons(repeated: bool) -> None:
    rng = np.random.default_rng(3)
    ids = np.array([f"{x:032x}" for x in rng.integers(0, 2**60, 3000)], dtype=object)
    rows = rng.integers(0, 300, 3000) if repeated else rng.permutation(3000)
    df = pd.DataFrame(
        {
            "pid": pd.array(ids[rows], dtype="str"),
            "a": rng.choice(list("xyz"), 3000),
            "b": rng.choice(list("pq"), 3000),
        }
    )
    arrow = check_table(df, "a", "b", person_id="pid")
    python = check_table(df.assign(pid=df.pid.astype(object)), "a", "b", person_id="pid")
    assert arrow.persons_info is not None and python.persons_info is not None
    assert arrow.persons_info.distinct_rows == python.persons_info.distinct_rows == (not repeated)
    assert (arrow.stats.persons == python.stats.persons).all()
    a_sets, p_sets = arrow.person_sets(), python.person_sets()
    assert (a_sets.offsets == p_sets.offsets).all()
    assert (a_sets.persons == p_sets.persons).all()


@pytest.mark.parametrize("repeated", [True, False], ids=["person-years", "one-row-per-person"])
@pytest.mark.parametrize("low", [0, 2**50, -(2**62)], ids=["small", "large", "negative"])
def test_integer_person_ids_give_the_persons_of_the_same_ids_as_text(
    repeated: bool, low: int
) -> None:
    rng = np.random.default_rng(6)
    ids = low + rng.choice(2**40 if low else 5000, 3000, replace=False)
    rows = rng.integers(0, 300, 3000) if repeated else rng.permutation(3000)
    df = pd.DataFrame(
        {"pid": ids[rows], "a": rng.choice(list("xyz"), 3000), "b": rng.choice(list("pq"), 3000)}
    )
    numbers = check_table(df, "a", "b", person_id="pid")
    text = check_table(df.assign(pid=df.pid.astype(str)), "a", "b", person_id="pid")
    assert numbers.persons_info is not None
    assert numbers.persons_info.distinct_rows == (not repeated)
    assert (numbers.stats.persons == text.stats.persons).all()
    n_sets, t_sets = numbers.person_sets(), text.person_sets()
    assert (n_sets.offsets == t_sets.offsets).all()
    assert (n_sets.persons == t_sets.persons).all()


def test_integer_ids_are_numbered_densely_when_a_cell_and_an_id_would_not_fit_one_key() -> None:
    from spe.sdc.compute import Persons, fit_persons

    ids = np.array([2**40 - 1, 5, 2**40 - 1, 7], dtype=np.int64)
    small = Persons(ids, 2**40, None, False)
    assert fit_persons(small, 1000) is small  # 10 + 40 bits fit
    dense = fit_persons(small, 2**24)
    assert dense.size == 3 and dense.codes.tolist() == [0, 1, 0, 2]
    assert dense.ids is not None and dense.ids[dense.codes].tolist() == ids.tolist()


@pytest.mark.parametrize("kind", ["fixed_size_binary", "binary", "large_string"])
@pytest.mark.parametrize("trailing_zero", [False, True], ids=["plain", "an-id-ending-in-zero"])
def test_fixed_width_arrow_ids_give_the_persons_of_the_same_ids_in_python(
    kind: str, trailing_zero: bool
) -> None:
    import pyarrow as pa

    rng = np.random.default_rng(5)
    raw = [rng.bytes(15) + b"\x01" for _ in range(400)]
    if trailing_zero:  # hashed without its trailing zero (numpy bytes): not the fast path
        raw[7] = raw[7][:-1] + b"\x00"
    ids: list[Any] = raw
    if kind == "large_string":  # hex text, the zero as a trailing NUL character
        ids = [b.hex() + "\x00" * (trailing_zero and i == 7) for i, b in enumerate(raw)]
    arrow_type = {
        "fixed_size_binary": pa.binary(16),
        "binary": pa.binary(),
        "large_string": pa.large_string(),
    }[kind]
    rows = rng.integers(0, 400, 2000)
    column = pa.array([ids[i] for i in rows], type=arrow_type)
    df = pd.DataFrame(
        {
            "pid": pd.arrays.ArrowExtensionArray(column),
            "a": rng.choice(list("xyz"), 2000),
            "b": rng.choice(list("pq"), 2000),
        }
    )
    arrow = check_table(df, "a", "b", person_id="pid")
    python = check_table(df.assign(pid=df.pid.astype(object)), "a", "b", person_id="pid")
    assert (arrow.stats.persons == python.stats.persons).all()
    a_sets, p_sets = arrow.person_sets(), python.person_sets()
    assert (a_sets.offsets == p_sets.offsets).all()
    assert (a_sets.persons == p_sets.persons).all()


# -- the CLI contract ---------------------------------------------------------------------------
def test_report_json_has_status_and_per_cell_labels_value_persons_and_failing_rules() -> None:
    df = pd.DataFrame(
        {
            "pid": [f"p{i}" for i in range(30)] + ["q1"] * 6,
            "sex": ["F"] * 15 + ["M"] * 15 + ["M"] * 6,
            "region": ["North"] * 10 + ["South"] * 5 + ["North"] * 15 + ["South"] * 6,
            "income": [float(i) for i in range(36)],
        }
    )
    report = check_table(df, "sex", "region", values="income", agg="mean", person_id="pid")
    out = json.loads(report.to_json())
    assert out["kind"] == "table"
    assert out["status"] == "fail"
    assert out["index"] == ["sex"] and out["columns"] == ["region"]
    assert out["agg"] == "mean" and out["values"] == "income" and out["person_id"] == "pid"
    assert out["rules"]["threshold"] == 10
    assert out["summary"]["cells"] == 4
    cells = {(c["index"][0], c["columns"][0]): c for c in out["cells"]}
    assert set(cells) == {("F", "North"), ("F", "South"), ("M", "North"), ("M", "South")}
    for cell in out["cells"]:
        assert set(cell) == {"index", "columns", "value", "persons", "rows", "status", "failing"}
    small = cells["M", "South"]
    assert small["persons"] == 1 and small["rows"] == 6
    assert small["status"] == "fail"
    assert {f["rule"] for f in small["failing"]} >= {"threshold", "p_percent"}
    for failing in small["failing"]:
        assert set(failing) == {"rule", "verdict", "numbers", "sentence"}
    assert cells["F", "North"]["failing"] == []
    assert cells["F", "North"]["value"] == pytest.approx(4.5)
    assert "top_contributions" not in small  # individual values only with evidence=True
    explained = report.to_dict(explain=True, evidence=True)["cells"][0]
    assert {o["rule"] for o in explained["outcomes"]} == {
        "zeros",
        "threshold",
        "dominance",
        "p_percent",
        "negative_values",
    }
    assert len(explained["top_contributions"]) == 2


def test_report_json_turns_missing_values_and_numpy_labels_into_plain_json() -> None:
    df = pd.DataFrame(
        {
            "pid": range(30),
            "year": [2020] * 15 + [2021] * 15,
            "k": [1] * 10 + [2] * 20,
            "v": [1.0] * 30,
        }
    )
    out = json.loads(check_table(df, "year", "k", values="v", agg="mean").to_json())
    values = [c["value"] for c in out["cells"]]
    assert None in values  # the empty cell (2021, 1)
    assert out["cells"][0]["index"] == [2020]


def test_only_failing_cells_can_be_listed() -> None:
    df = one_cell(["a"] * 12)
    out = check_table(df, "sex", "region", person_id="pid").to_dict(only_failing=True)
    assert len(out["cells"]) == 1


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"index": "sexx", "columns": "region"},
            "no column 'sexx' for the index; did you mean 'sex'",
        ),
        ({"index": "sex", "columns": "region", "agg": "avg"}, "agg is 'avg'; use one of"),
        ({"index": "sex", "columns": "region", "agg": "mean"}, "needs a values column"),
        ({"index": "sex", "columns": "sex"}, "both in the index and the columns"),
        ({"index": [], "columns": "sex"}, "at least one column"),
        ({"index": "sex", "columns": "region", "values": "pid", "agg": "mean"}, "not numeric"),
    ],
)
def test_bad_table_requests_are_refused_with_a_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(SDCInputError, match=message):
        check_table(one_cell(["a", "b"]), **kwargs)


def test_rows_without_a_person_are_refused() -> None:
    df = one_cell(["a", None, "b"])
    with pytest.raises(SDCInputError, match="empty in 1 rows; every row must belong to a person"):
        check_table(df, "sex", "region", person_id="pid")
