"""DP mechanisms whose output says nothing exact about who is in a cell (spe.dp.compute, no
database): no output bound that depends on the cell's size (sum, count), no answer, error or
field that differs between neighbouring data except the noisy figures (every query kind, empty
and one-person cells, one-class groups, NaN values), and the policy's budget and export keys.

The attacker here is the researcher who reads an answer, or its failure, and wants to learn
whether a chosen person is inside a DP cell or how many persons are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from spe.dp.compute import Query, compute
from spe.dp.errors import DPError
from spe.dp.policy import DPPolicy, VariableBounds

POLICY = DPPolicy(
    3.0,
    None,
    {
        "county": VariableBounds("county", categories=("03", "46", "50")),
        "age": VariableBounds("age", 0, 100),
        "bmi": VariableBounds("bmi", 10, 60),
        "diabetes": VariableBounds("diabetes", categories=("0", "1")),
    },
)
DRAWS = 10_000


def q(**spec: Any) -> Query:
    return Query.from_request({"dataset": "health", "epsilon": 0.5, **spec})


def cell_of(n: int, age: float = 100.0) -> pa.Table:
    """``n`` persons, every one at the upper bound of age (the worst case for a clamped sum)."""
    return pa.table(
        {
            "county": pa.array(["03"] * n, pa.string()),
            "age": pa.array([age] * n, pa.float64()),
            "bmi": pa.array([30.0] * n, pa.float64()),
            "diabetes": pa.array(["1"] * n, pa.string()),
        }
    )


@pytest.mark.parametrize("n", [3, 300])
def test_a_dp_sum_has_no_answer_at_a_bound_that_depends_on_n_whatever_n_is(n):
    """diffprivlib's tools.sum clamped its answer to [lower * n, upper * n]: at n = 3 with every
    value at the upper bound about half of all answers were exactly 100 * n, which is n. An
    untruncated Laplace answer has no such bound: no answer falls on lower * n or upper * n, the
    share above upper * n is the mechanism's P(noise > 0) = 1/2, the share below lower * n is
    P(noise < -100 n) = exp(-100 n / b) / 2, and the noise is Laplace(b), b = 100 / epsilon
    (a Kolmogorov-Smirnov test at the 0.1 % level; fixed seed)."""
    rng = np.random.RandomState(20261220 + n)
    data, query = cell_of(n), q(kind="sum", column="age")
    answers = np.array([compute(query, data, POLICY, rng).values[0] for _ in range(DRAWS)])
    truth, scale = 100.0 * n, 100.0 / 0.5
    at_a_bound = np.mean((answers == truth) | (answers == 0.0))
    assert at_a_bound == 0.0
    assert abs(np.mean(answers > truth) - 0.5) < 0.02  # 4 standard errors
    below = 0.5 * math.exp(-truth / scale)
    assert abs(np.mean(answers < 0.0) - below) < 4 * math.sqrt(below * (1 - below) / DRAWS) + 1e-9
    assert stats.kstest(answers - truth, stats.laplace(scale=scale).cdf).pvalue > 0.001


@pytest.mark.parametrize("n", [3, 300])
def test_a_dp_counts_share_at_zero_is_the_mechanisms_and_nothing_sits_at_an_upper_bound(n):
    """A count is clamped at 0 only (a bound that does not depend on n): the share of answers at
    0 is P(two-sided geometric noise <= -n) = p^n / (1 + p), p = exp(-epsilon); none is at any
    other bound. The same holds for a histogram's bins."""
    rng = np.random.RandomState(7 + n)
    data = cell_of(n)
    p = math.exp(-0.5)
    expected = p**n / (1 + p)
    counts = np.array([compute(q(kind="count"), data, POLICY, rng).values[0] for _ in range(DRAWS)])
    assert abs(np.mean(counts == 0) - expected) < 4 * math.sqrt(expected * (1 - expected) / DRAWS)
    assert counts.max() < n + 200  # no clamp at an upper bound: the largest is noise's
    bins = [
        compute(q(kind="histogram", column="age", bins=2), cell_of(n, 80.0), POLICY, rng).values[1]
        for _ in range(DRAWS // 4)
    ]
    share = float(np.mean(np.array(bins) == 0))
    assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / (DRAWS // 4)) + 1e-9


KINDS = [
    {"kind": "count"},
    {"kind": "crosstab", "by": ["county", "diabetes"]},
    {"kind": "sum", "column": "age"},
    {"kind": "mean", "column": "bmi", "by": "county"},
    {"kind": "var", "column": "bmi"},
    {"kind": "median", "column": "age"},
    {"kind": "quantile", "column": "bmi", "quantile": 0.9},
    {"kind": "histogram", "column": "age", "bins": 4},
    {"kind": "linear_regression", "features": ["age"], "target": "bmi"},
    {"kind": "logistic_regression", "features": ["age", "bmi"], "target": "diabetes"},
]
NOISY = {"values", "interval95"}


def neighbours(inside: int, nan_bmi: bool = False) -> tuple[pa.Table, pa.Table]:
    """Two extracts differing in one person, who is in the cell ``county == '03'`` in the first
    and in county '46' in the second. The cell holds ``inside`` other persons, all with
    diabetes '1' (one class); the chosen person has diabetes '0' and maybe a NaN BMI."""
    rows = 40
    county = ["03"] * inside + ["46"] * (rows - inside)
    age = [float(20 + i) for i in range(rows)]
    bmi = [25.0 + (i % 7) for i in range(rows)]
    diabetes = ["1"] * inside + ["0" if i % 2 else "1" for i in range(rows - inside)]
    chosen = {"age": 47.0, "bmi": math.nan if nan_bmi else 33.0, "diabetes": "0"}

    def with_chosen(where: str) -> pa.Table:
        return pa.table(
            {
                "county": pa.array([*county, where], pa.string()),
                "age": pa.array([*age, chosen["age"]], pa.float64()),
                "bmi": pa.array([*bmi, chosen["bmi"]], pa.float64()),
                "diabetes": pa.array([*diabetes, chosen["diabetes"]], pa.string()),
            }
        )

    return with_chosen("03"), with_chosen("46")


def seen(spec: dict[str, Any], data: pa.Table) -> dict[str, Any]:
    """What the researcher sees of an answer but its noisy figures, or the refusal sentence."""
    query = q(epsilon=1.0, where=[["county", "==", "03"]], **spec)
    try:
        answer = compute(query, data, POLICY, np.random.RandomState(1)).to_dict()
    except DPError as exc:
        return {"refused": exc.message}
    assert all(np.isfinite(v) for v in answer["values"])  # no NaN that says "someone is here"
    return {k: v for k, v in answer.items() if k not in NOISY}


@pytest.mark.parametrize("inside", [0, 1, 3])
@pytest.mark.parametrize("spec", KINDS, ids=[k["kind"] for k in KINDS])
def test_everything_but_the_noisy_figures_is_the_same_with_and_without_a_person_in_the_cell(
    spec, inside
):
    """With 0, 1 or 3 others in the cell (regressions used to refuse fewer than two persons, and
    a logistic regression a group of one class), the answer's kind, mechanism, noise scale,
    labels and notes, or the refusal, do not change when the chosen person leaves the cell."""
    present, absent = neighbours(inside)
    assert seen(spec, present) == seen(spec, absent)


@pytest.mark.parametrize("spec", KINDS, ids=[k["kind"] for k in KINDS])
def test_a_nan_value_in_the_cell_does_not_show_in_the_answer(spec):
    """A NaN is missing: it never turns an answer into NaN (which would say someone in the cell
    has one)."""
    present, absent = neighbours(5, nan_bmi=True)
    assert seen(spec, present) == seen(spec, absent)


def test_the_regressions_recover_a_clear_relation_on_many_persons():
    rng = np.random.default_rng(5)
    n = 200_000
    age = rng.integers(0, 100, n).astype(float)
    bmi = np.clip(20 + 0.1 * age + rng.normal(0, 3, n), 10, 60)
    risk = 1 / (1 + np.exp(-(-3 + 0.05 * age)))
    diabetes = np.where(rng.random(n) < risk, "1", "0")
    data = pa.table({"age": age, "bmi": bmi, "diabetes": pa.array(diabetes)})
    linear = compute(q(kind="linear_regression", features=["age"], target="bmi"), data, POLICY)
    assert linear.values[0] == pytest.approx(20, abs=0.5)
    assert linear.values[1] == pytest.approx(0.1, abs=0.01)
    logit = compute(
        q(kind="logistic_regression", features=["age"], target="diabetes"), data, POLICY
    )
    # The second-order Taylor objective shrinks the slope; its sign and order stay.
    assert 0.02 < logit.values[1] < 0.06


def test_the_policy_declares_the_project_share_and_whether_dp_exports_need_review(tmp_path):
    from spe.ingest.policy import PolicyError, load_policy

    text = """\
dataset: h
title: H
description: H
holder: Holder Agency
conditions: Tests.
access: aggregate_only
one_row_per_person: true
identifiers: {allow_synthetic: true}
columns:
  fnr: {class: person_id}
  age: {class: attribute, type: int64}
dp:
  epsilon_total: 10
  epsilon_per_project: 2.5
  export: {auto_release: false}
  variables:
    age: {min: 0, max: 110}
"""
    path = tmp_path / "h.yaml"
    path.write_text(text)
    dp = load_policy(path).dp
    assert dp is not None
    assert (dp.epsilon_total, dp.project_default, dp.auto_release) == (10.0, 2.5, False)
    path.write_text(text.replace("  epsilon_per_project: 2.5\n", "").replace("false", "true"))
    dp = load_policy(path).dp
    assert dp is not None and dp.project_default == 10.0 and dp.auto_release is True
    path.write_text(text.replace("auto_release: false", "auto_release: maybe"))
    with pytest.raises(PolicyError, match="auto_release must be true or false"):
        load_policy(path)
    path.write_text(text.replace("epsilon_per_project: 2.5", "epsilon_per_project: 20"))
    with pytest.raises(PolicyError, match=r"at most dp\.epsilon_total"):
        load_policy(path)
