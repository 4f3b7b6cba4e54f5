"""Agreement with the peer, ACRO: same verdicts where its rules are sound, stricter where not.

Runs only where ``acro`` is installed (it pins pandas < 3, so not in SPE's own environment; the
benchmark environment has it). Cases are generated: one row per person, no negative or missing
values, so that ACRO's row counts equal SPE's person counts.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from spe.sdc import check_table

acro_module = pytest.importorskip("acro")


@pytest.fixture(scope="module")
def acro():
    warnings.filterwarnings("ignore")
    logging.getLogger("acro").setLevel(logging.CRITICAL)
    return acro_module.ACRO(suppress=False)


def _acro_outcome(acro, df: pd.DataFrame, agg: str) -> tuple[str, pd.DataFrame]:
    if agg == "count":
        acro.crosstab(df.a, df.b)
    else:
        acro.crosstab(df.a, df.b, values=df.v, aggfunc=agg)
    record = list(acro.results.results.values())[-1]
    outcome = record.outcome.copy()
    if outcome.columns.nlevels > 1:
        outcome = outcome.droplevel(0, axis=1)
    return record.status, outcome


def _cases(seed: int, n_cases: int):
    rng = np.random.default_rng(seed)
    for k in range(n_cases):
        n = int(rng.integers(20, 300))
        df = pd.DataFrame(
            {
                "a": rng.choice(["x", "y", "z"], n, p=[0.6, 0.35, 0.05]),
                "b": rng.choice(["p", "q", "r", "s"], n, p=[0.4, 0.3, 0.2, 0.1]),
                "pid": np.arange(n),
            }
        )
        shape = k % 4
        if shape == 0:
            df["v"] = rng.lognormal(5, 2, n)
        elif shape == 1:  # small integers: dominance and p % land exactly on their limits
            df["v"] = rng.integers(0, 5, n).astype(float) * rng.choice([1, 1, 1, 1000], n)
        elif shape == 2:
            df["v"] = rng.pareto(1.0, n) * 100
        else:
            df["v"] = rng.integers(0, 3, n).astype(float)
        yield df


def _compare(acro, df: pd.DataFrame, agg: str):
    status, outcome = _acro_outcome(acro, df, agg)
    report = check_table(
        df, "a", "b", values=None if agg == "count" else "v", agg=agg, person_id="pid"
    )
    spe_fail = pd.DataFrame(
        report.cell_severity.reshape(report.shape) == 2,
        index=[label[0] for label in report.row_labels],
        columns=[label[0] for label in report.col_labels],
    )
    acro_fail = outcome.reindex(index=spe_fail.index, columns=spe_fail.columns) != "ok"
    return status, acro_fail, spe_fail, report


@pytest.mark.parametrize("agg", ["count", "mean", "sum", "median"])
def test_threshold_dominance_p_percent_and_zeros_match_acro_cell_for_cell(acro, agg: str) -> None:
    for df in _cases(seed=11, n_cases=60):
        _, acro_fail, spe_fail, _ = _compare(acro, df, agg)
        assert (acro_fail == spe_fail).all().all(), (agg, acro_fail, spe_fail)


def test_std_degrees_of_freedom_match_acro_per_table_and_are_judged_per_cell(acro) -> None:
    # ACRO marks every cell of a failing std table (its mask is the dof table itself), and
    # none with dof 0; SPE judges each cell by its own persons - 1.
    for df in _cases(seed=12, n_cases=40):
        status, _, _, report = _compare(acro, df, "std")
        dof_or_empty = (report.severities["residual_dof"] > 0) | (report.severities["zeros"] > 0)
        assert (status == "fail") == bool(dof_or_empty.any())


@pytest.mark.parametrize("agg", ["min", "max"])
def test_min_and_max_are_stricter_than_acro_only_by_value_holders(acro, agg: str) -> None:
    # ARCHITECTURE: minima and maxima of continuous variables are not released as such.
    for df in _cases(seed=13, n_cases=40):
        _, acro_fail, spe_fail, report = _compare(acro, df, agg)
        assert (spe_fail | ~acro_fail).all().all()  # whatever ACRO fails, SPE fails
        extra = np.flatnonzero((spe_fail & ~acro_fail).to_numpy().ravel())
        for i in extra:
            rules = {o.rule for o in report.cell(int(i)).failing}
            assert rules <= {"value_holders", "all_same"}, rules


def test_several_rows_per_person_make_spe_stricter_than_acro(acro) -> None:
    # ACRO counts rows; SPE counts distinct persons, so it fails at least what ACRO fails.
    rng = np.random.default_rng(14)
    for df in _cases(seed=15, n_cases=30):
        df["pid"] = rng.integers(0, max(len(df) // 3, 1), len(df))
        _, acro_fail, spe_fail, _ = _compare(acro, df, "count")
        assert (spe_fail | ~acro_fail).all().all()
