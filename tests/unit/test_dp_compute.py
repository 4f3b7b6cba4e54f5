"""DP computations (spe.dp.compute) without a database: calibration of the noise against theory,
public bounds and categories from the policy only, PrivacyLeakWarning as an error, and shapes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyarrow as pa
import pytest

from spe.dp.compute import Query, check_against_policy, compute, geometric_halfwidth95
from spe.dp.errors import DPError, DPPolicyError
from spe.dp.policy import DPPolicy, VariableBounds

DRAWS = 12_000

POLICY = DPPolicy(
    3.0,
    None,
    {
        "sex": VariableBounds("sex", categories=("F", "M")),
        "county": VariableBounds("county", categories=("03", "46", "50")),
        "age": VariableBounds("age", 0, 100),
        "bmi": VariableBounds("bmi", 10, 60),
        "diabetes": VariableBounds("diabetes", categories=("0", "1")),
    },
)


def table(n: int = 1000, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 100, n)
    return pa.table(
        {
            "sex": pa.array(rng.choice(["F", "M"], n)),
            "county": pa.array(rng.choice(["03", "46", "50", "99"], n)),
            "age": age,
            "bmi": rng.normal(27, 4, n).clip(10, 60),
            "diabetes": pa.array(np.where(rng.random(n) < age / 150, "1", "0")),
        }
    )


def q(**spec) -> Query:
    return Query.from_request({"dataset": "health", "epsilon": 0.5, **spec})


def test_count_noise_matches_the_two_sided_geometric_scale_within_3_percent():
    data = table()
    epsilon = 0.5
    rng = np.random.RandomState(20261206)
    query = q(kind="count", epsilon=epsilon)
    noise = np.array(
        [compute(query, data, POLICY, rng).values[0] - data.num_rows for _ in range(DRAWS)]
    )
    p = math.exp(-epsilon)
    theoretical_sd = math.sqrt(2 * p) / (1 - p)  # two-sided geometric, sensitivity 1
    assert abs(noise.std() / theoretical_sd - 1) < 0.03
    assert abs(noise.mean()) < 0.1  # unbiased away from the truncation at 0
    # The reported scale is the Laplace-equivalent 1/epsilon.
    assert compute(query, data, POLICY, rng).noise_scale == pytest.approx(1 / epsilon)


def test_mean_noise_matches_its_theoretical_scale_for_epsilon_and_sensitivity_within_3_percent():
    """A mean is a noisy sum over a noisy count (epsilon/2 each): to first order its noise is
    (Laplace(width/e) - mean * geometric(e)) / n, e = epsilon / 2, values shifted to [0, width]."""
    data = table(10_000)
    epsilon = 1.0
    rng = np.random.RandomState(7)
    query = q(kind="mean", column="bmi", epsilon=epsilon)
    bmi = data.column("bmi").to_numpy()
    n, shifted_mean = len(bmi), float(np.mean(bmi)) - 10
    answers = [compute(query, data, POLICY, rng) for _ in range(DRAWS)]
    noise = np.array([a.values[0] for a in answers]) - float(np.mean(bmi))
    e, width = epsilon / 2, 60 - 10
    p = math.exp(-e)
    theoretical_sd = math.sqrt(2 * (width / e) ** 2 + shifted_mean**2 * 2 * p / (1 - p) ** 2) / n
    assert abs(noise.std() / theoretical_sd - 1) < 0.03
    assert abs(noise.mean()) < 0.05 * theoretical_sd  # unbiased to first order
    assert answers[0].noise_scale == {"sum": width / e, "count": 1 / e}  # no cell size in it


def test_a_mean_releases_nothing_that_depends_on_the_exact_cell_size():
    small, large = table(900), table(1000)
    a = compute(q(kind="mean", column="bmi", by="sex"), small, POLICY).to_dict()
    b = compute(q(kind="mean", column="bmi", by="sex"), large, POLICY).to_dict()
    assert a["noise_scale"] == b["noise_scale"] and a["mechanism"] == b["mechanism"]


def test_count_interval_covers_the_truth_about_95_percent_of_the_time():
    data = table()
    rng = np.random.RandomState(3)
    query = q(kind="count", epsilon=0.3)
    hits = 0
    for _ in range(4000):
        (lo, hi) = compute(query, data, POLICY, rng).interval95[0]
        hits += lo <= data.num_rows <= hi
    assert 0.94 <= hits / 4000 <= 0.975
    assert geometric_halfwidth95(0.3) > 0


def test_group_cells_are_the_declared_categories_only_never_values_found_in_the_data():
    data = table()
    answer = compute(q(kind="count", by="county", epsilon=50), data, POLICY)
    assert answer.labels == [["03"], ["46"], ["50"]]  # '99' is in the data, not in the policy
    truth = [
        int(np.sum(data.column("county").to_numpy(zero_copy_only=False) == c))
        for c in ("03", "46", "50")
    ]
    assert all(abs(a - t) <= 2 for a, t in zip(answer.values, truth, strict=True))


def test_a_filter_and_a_crosstab_count_the_right_persons():
    data = table()
    answer = compute(
        q(kind="crosstab", by=["sex", "diabetes"], where=[["age", ">=", 50]], epsilon=50),
        data,
        POLICY,
    )
    frame = data.to_pandas()
    older = frame[frame.age >= 50]
    truth = [len(older[(older.sex == s) & (older.diabetes == d)]) for s in "FM" for d in "01"]
    assert answer.labels == [["F", "0"], ["F", "1"], ["M", "0"], ["M", "1"]]
    assert all(abs(a - t) <= 2 for a, t in zip(answer.values, truth, strict=True))


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "mean", "column": "bmi"},
        {"kind": "sum", "column": "age", "by": "sex"},
        {"kind": "var", "column": "bmi"},
        {"kind": "median", "column": "age"},
        {"kind": "quantile", "column": "age", "quantile": 0.9},
        {"kind": "histogram", "column": "age", "bins": 5},
        {"kind": "linear_regression", "features": ["age"], "target": "bmi"},
        {"kind": "logistic_regression", "features": ["age", "bmi"], "target": "diabetes"},
    ],
)
def test_every_query_kind_answers_with_its_mechanism_and_epsilon(spec):
    answer = compute(q(epsilon=1.0, **spec), table(3000), POLICY).to_dict()
    assert answer["epsilon"] == 1.0 and answer["mechanism"]
    assert len(answer["values"]) == len(answer["labels"]) >= 1
    assert all(np.isfinite(v) for v in answer["values"])


def test_a_mean_over_a_variable_without_bounds_is_refused_naming_the_variable_and_policy_file():
    unbounded = DPPolicy(3.0, None, {"sex": VariableBounds("sex", categories=("F", "M"))})
    with pytest.raises(DPPolicyError) as refused:
        check_against_policy(
            q(kind="mean", column="bmi"), unbounded, "policies/datasets/h.yaml", ["sex", "bmi"]
        )
    assert "'bmi'" in refused.value.message
    assert "policies/datasets/h.yaml" in refused.value.message
    assert "never taken from the data" in refused.value.message


def test_a_group_by_without_a_declared_category_list_is_refused():
    with pytest.raises(DPPolicyError, match="'age' has no category list"):
        check_against_policy(q(kind="count", by="age"), POLICY, "p.yaml", ["age"])


def test_a_column_outside_the_grant_is_refused():
    with pytest.raises(DPError, match="no granted variable 'bmi'"):
        check_against_policy(q(kind="mean", column="bmi"), POLICY, "p.yaml", ["age", "sex"])


def test_diffprivlib_privacy_leak_warning_is_an_error_not_a_warning():
    from diffprivlib import tools
    from diffprivlib.utils import PrivacyLeakWarning

    import spe.dp.compute as c

    # A computation that lets diffprivlib take bounds from the data must be refused.
    def leaky(query, data, dp, rng):
        return tools.mean(np.array([1.0, 2.0, 3.0]), epsilon=1.0)  # no bounds

    original = c._compute
    c._compute = leaky
    try:
        with pytest.raises(DPPolicyError, match="bound from the data"):
            compute(q(kind="mean", column="bmi"), table(), POLICY)
    finally:
        c._compute = original
    with warnings.catch_warnings(record=True) as seen:  # outside compute, still a warning
        warnings.simplefilter("always")
        tools.mean(np.array([1.0, 2.0]), epsilon=1.0)
    assert any(issubclass(w.category, PrivacyLeakWarning) for w in seen)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "nope"}, "Unknown DP query"),
        ({"kind": "count", "epsilon": 0}, "epsilon must be"),
        ({"kind": "count", "epsilon": "a lot"}, "epsilon as a number"),
        ({"kind": "mean"}, "needs column="),
        ({"kind": "crosstab", "by": ["sex"]}, "two categorical"),
        ({"kind": "count", "where": [["age", "LIKE", 3]]}, "operator"),
        ({"kind": "quantile", "column": "age", "quantile": 2}, "between 0 and 1"),
        ({"kind": "linear_regression", "target": "bmi"}, "features"),
    ],
)
def test_malformed_queries_are_refused_with_a_sentence(spec, message):
    with pytest.raises(DPError, match=message):
        Query.from_request({"dataset": "health", "epsilon": 0.5, **spec})


def test_a_filter_value_of_the_wrong_type_is_refused():
    with pytest.raises(DPError, match="does not fit the variable 'age'"):
        compute(q(kind="count", where=[["age", ">=", "old"]]), table(), POLICY)


def test_the_client_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, spe.dp; heavy = {'diffprivlib', 'numpy', 'pandas', 'sqlalchemy', "
        "'sklearn', 'pyarrow'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
