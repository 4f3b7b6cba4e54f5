"""The DP computations, server-side and pure: a query over an extract's columns with diffprivlib's
mechanisms, groups and bounds from the policy only (never from the data); a PrivacyLeakWarning
is an error."""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spe.dp.errors import DPError, DPPolicyError
from spe.dp.policy import DPPolicy, VariableBounds

NUMERIC_KINDS = {"sum", "mean", "var", "quantile", "median", "histogram"}
REGRESSIONS = {"linear_regression", "logistic_regression"}
KINDS = ("count", "crosstab", *sorted(NUMERIC_KINDS), *sorted(REGRESSIONS))
OPS = {
    "==": "equal",
    "!=": "not_equal",
    "<": "less",
    "<=": "less_equal",
    ">": "greater",
    ">=": "greater_equal",
    "in": "is_in",
}
MAX_CELLS = 10_000
PARALLEL = (
    "Each person is in at most one cell, so the cells share the epsilon (parallel composition)."
)
MIN_EPSILON = 0.001
Z95_LAPLACE = math.log(20.0)  # P(|Laplace(b)| > b ln 20) = 5 %


@dataclass(frozen=True)
class Query:
    """A DP query as the notebook asked it (validated for shape, not yet against a policy)."""

    kind: str
    dataset: str
    epsilon: float
    column: str | None = None
    by: tuple[str, ...] = ()
    where: tuple[tuple[str, str, Any], ...] = ()
    quantile: float | None = None
    bins: int = 10
    features: tuple[str, ...] = ()
    target: str | None = None

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> Query:
        kind = request.get("kind")
        if kind not in KINDS:
            raise DPError(f"Unknown DP query {kind!r}; use one of {', '.join(KINDS)}.")
        dataset = request.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            raise DPError("Name the dataset to query.")
        try:
            epsilon = float(request.get("epsilon"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DPError("Give epsilon as a number, e.g. epsilon=0.1.") from None
        if not math.isfinite(epsilon) or epsilon < MIN_EPSILON:
            raise DPError(f"epsilon must be a number of at least {MIN_EPSILON}.")
        by = _names(request.get("by"), "by")
        features = _names(request.get("features"), "features")
        where = []
        for item in request.get("where") or []:
            if not (isinstance(item, list | tuple) and len(item) == 3 and item[1] in OPS):
                raise DPError(
                    "Each filter is [column, operator, value] with an operator among "
                    f"{', '.join(OPS)}; e.g. where={{'sex': 'F', 'age': ('>=', 18)}}."
                )
            if not isinstance(item[0], str):
                raise DPError("A filter's column must be a column name.")
            if item[1] == "in" and not isinstance(item[2], list):
                raise DPError(f"The filter on {item[0]!r} with 'in' needs a list of values.")
            where.append((item[0], item[1], item[2]))
        column = request.get("column")
        if column is not None and not isinstance(column, str):
            raise DPError("column must be a column name.")
        target = request.get("target")
        if target is not None and not isinstance(target, str):
            raise DPError("target must be a column name.")
        quantile = request.get("quantile")
        if kind == "median":
            quantile = 0.5
        if kind == "quantile" and (not isinstance(quantile, int | float) or not 0 <= quantile <= 1):
            raise DPError("A quantile query needs quantile= a number between 0 and 1.")
        bins = request.get("bins", 10)
        if not isinstance(bins, int) or not 1 <= bins <= 1000:
            raise DPError("bins must be a whole number from 1 to 1000.")
        share = None if quantile is None else float(quantile)
        query = cls(kind, dataset, epsilon, column, by, tuple(where), share, bins, features, target)
        query._check_shape()
        return query

    def _check_shape(self) -> None:
        if self.kind in NUMERIC_KINDS and not self.column:
            raise DPError(f"A {self.kind} query needs column= the variable to summarise.")
        if self.kind == "crosstab" and len(self.by) < 2:
            raise DPError("A crosstab needs two categorical variables (rows and columns).")
        if self.kind == "histogram" and self.by:
            raise DPError("A histogram has no group-by; filter with where= instead.")
        if self.kind in REGRESSIONS:
            if not self.features or not self.target:
                raise DPError(f"A {self.kind} needs features=[...] and target=.")
            if self.by:
                raise DPError("Regressions have no group-by; filter with where= instead.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dataset": self.dataset,
            "epsilon": self.epsilon,
            "column": self.column,
            "by": list(self.by),
            "where": [list(w) for w in self.where],
            "quantile": self.quantile,
            "bins": self.bins,
            "features": list(self.features),
            "target": self.target,
        }

    def columns(self) -> list[str]:
        """Every column the query reads."""
        names = [*(w[0] for w in self.where), *self.by, *self.features]
        names += [c for c in (self.column, self.target) if c]
        return list(dict.fromkeys(names))

    def bounded_columns(self) -> list[str]:
        """Columns whose public min/max the mechanism needs."""
        if self.kind in NUMERIC_KINDS:
            return [self.column] if self.column else []
        if self.kind == "linear_regression":
            return [*self.features, *([self.target] if self.target else [])]
        if self.kind == "logistic_regression":
            return list(self.features)
        return []

    def categorical_columns(self) -> list[str]:
        """Columns whose public category list the query needs (group cells, a binary target)."""
        out = list(self.by)
        if self.kind == "logistic_regression" and self.target:
            out.append(self.target)
        return out


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(value))
    raise DPError(f"{what} must be a column name or a list of column names.")


def check_against_policy(query: Query, dp: DPPolicy, policy_path: str, granted: list[str]) -> None:
    """Refuse a query that reads a column not granted, or needs bounds the policy lacks."""
    for name in query.columns():
        if name not in granted:
            raise DPError(
                f"The dataset {query.dataset!r} has no granted variable {name!r} in this project; "
                f"the granted ones are {', '.join(granted)}."
            )
    for name in query.bounded_columns():
        bounds = dp.variables.get(name)
        if bounds is None or not bounds.numeric:
            raise DPPolicyError(
                f"The variable {name!r} has no public bounds (min and max) in the dataset policy "
                f"{policy_path}, and bounds are never taken from the data; ask the data holder to "
                f"declare them under dp.variables.{name}."
            )
    for name in query.categorical_columns():
        bounds = dp.variables.get(name)
        if bounds is None or not bounds.categories:
            raise DPPolicyError(
                f"The variable {name!r} has no category list in the dataset policy {policy_path}, "
                "and categories are never taken from the data; ask the data holder to declare "
                f"them under dp.variables.{name}.categories."
            )
    if (
        query.kind == "logistic_regression"
        and query.target
        and len(dp.variables[query.target].categories) != 2
    ):
        raise DPError(
            f"A logistic regression needs a target with two categories; {query.target!r} "
            f"has {len(dp.variables[query.target].categories)}."
        )
    if dp.max_epsilon_per_query is not None and query.epsilon > dp.max_epsilon_per_query:
        raise DPError(
            f"The data holder allows at most epsilon {dp.max_epsilon_per_query:g} per query on "
            f"{query.dataset!r}; ask with a smaller epsilon."
        )


# --- computing -------------------------------------------------------------------------------


@dataclass
class Answer:
    """A DP answer: cells (labels and values), the mechanism, its noise scale and intervals."""

    kind: str
    epsilon: float
    mechanism: str
    sensitivity: float | None
    noise_scale: float | dict[str, float] | None  # per mechanism; never per cell
    by: list[str] = field(default_factory=list)
    labels: list[list[Any]] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    interval95: list[list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "epsilon": self.epsilon,
            "mechanism": self.mechanism,
            "sensitivity": self.sensitivity,
            "noise_scale": self.noise_scale,
            "by": self.by,
            "labels": self.labels,
            "values": self.values,
            "interval95": self.interval95,
            **self.extra,
            "notes": self.notes,
        }


def _accountant() -> Any:
    # A fresh accountant per call: diffprivlib's default one would grow in a long-lived worker.
    from diffprivlib import BudgetAccountant

    return BudgetAccountant()


def geometric_halfwidth95(epsilon: float, sensitivity: float = 1.0) -> int:
    """Smallest t with P(|two-sided geometric noise| <= t) >= 95 %, p = exp(-epsilon/s)."""
    p = math.exp(-epsilon / sensitivity)
    # P(|X| > t) = 2 p^(t+1) / (1 + p)
    t = math.log(0.05 * (1 + p) / 2) / math.log(p) - 1
    return max(0, math.ceil(t - 1e-12))


def _filter_mask(table: pa.Table, where: tuple[tuple[str, str, Any], ...]) -> pa.Array | None:
    mask = None
    for column, op, value in where:
        arr = table.column(column)
        try:
            if op == "in":
                cond = pc.is_in(arr, value_set=pa.array(value).cast(arr.type))
            else:
                cond = getattr(pc, OPS[op])(arr, pa.scalar(value).cast(arr.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise DPError(
                f"The filter value {value!r} does not fit the variable {column!r} ({arr.type})."
            ) from None
        cond = pc.fill_null(cond, False)
        mask = cond if mask is None else pc.and_(mask, cond)
    return mask


def _cell_codes(table: pa.Table, by: tuple[str, ...], dp: DPPolicy) -> tuple[np.ndarray, int]:
    """Each row's cell number over the declared categories (-1: a value outside them)."""
    codes = np.zeros(table.num_rows, dtype=np.int64)
    valid = np.ones(table.num_rows, dtype=bool)
    stride = 1
    for name in reversed(by):
        cats = dp.variables[name].categories
        arr = table.column(name)
        try:
            value_set = pa.array(list(cats)).cast(arr.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DPPolicyError(
                f"The categories declared for {name!r} do not fit its type ({arr.type})."
            ) from None
        index = pc.index_in(arr, value_set=value_set)
        valid &= index.is_valid().to_numpy(zero_copy_only=False)
        codes += stride * index.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        stride *= len(cats)
    codes[~valid] = -1
    return codes, stride


def _labels(by: tuple[str, ...], dp: DPPolicy) -> list[list[Any]]:
    if not by:
        return [[]]
    grids = np.meshgrid(*[np.arange(len(dp.variables[b].categories)) for b in by], indexing="ij")
    flat = [g.ravel() for g in grids]
    return [
        [dp.variables[b].categories[int(flat[j][i])] for j, b in enumerate(by)]
        for i in range(len(flat[0]))
    ]


def _numeric(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric column as float64 and its not-missing mask (None: nothing is missing)."""
    arr = table.column(name)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise DPError(
            f"The variable {name!r} is {arr.type}, not a number, so it cannot be summarised."
        )
    if arr.null_count == 0:
        values = arr.to_numpy().astype(np.float64, copy=False)
        present = None
    else:
        present = arr.is_valid().to_numpy(zero_copy_only=False)
        values = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    # A NaN is missing too: left in, it would turn the whole cell's answer into NaN and so tell
    # whether anyone in the cell has one.
    nan = np.isnan(values)
    if nan.any():
        present = ~nan if present is None else present & ~nan
        values = np.where(nan, 0.0, values)
    return values, present


def compute(query: Query, table: pa.Table, dp: DPPolicy, random_state: Any = None) -> Answer:
    """Answer ``query`` over ``table`` (the extract's columns) with diffprivlib.

    ``random_state`` is for tests only (a seeded numpy RandomState); by default every mechanism
    draws from the operating system's secure generator.
    """
    from diffprivlib.utils import PrivacyLeakWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyLeakWarning)
        try:
            return _compute(query, table, dp, random_state)
        except PrivacyLeakWarning as exc:  # a bound that would come from the data
            raise DPPolicyError(
                f"diffprivlib would have taken a bound from the data ({exc}); the query was "
                "refused. Declare the bounds in the dataset policy."
            ) from None


def _compute(query: Query, table: pa.Table, dp: DPPolicy, rng: Any) -> Answer:
    mask = _filter_mask(table, query.where)
    keep = None if mask is None else mask.to_numpy(zero_copy_only=False)
    if query.kind in REGRESSIONS:
        return _regression(query, table, dp, keep, rng)
    labels = _labels(query.by, dp)
    bounds = dp.variables[query.column] if query.column else VariableBounds("")
    if not query.by:  # one cell: no codes to build
        if query.kind == "count":
            n = table.num_rows if mask is None else int(pc.sum(mask).as_py() or 0)
            return _count(query, np.array([n]), labels, rng)
        assert query.column is not None
        values, present = _numeric(table, query.column)
        rows = present if keep is None else (keep if present is None else keep & present)
        cell = values if rows is None else values[rows]
        if query.kind == "histogram":
            return _histogram(query, cell, bounds, rng)
        return _per_cell(query, [cell], labels, bounds, rng)
    codes, ncells = _cell_codes(table, query.by, dp)
    if ncells > MAX_CELLS:
        raise DPError(f"The group-by makes {ncells:,} cells; at most {MAX_CELLS:,} are allowed.")
    if keep is not None:
        codes = np.where(keep, codes, -1)
    if query.kind in ("count", "crosstab"):
        return _count(query, np.bincount(codes[codes >= 0], minlength=ncells), labels, rng)
    assert query.column is not None
    values, present = _numeric(table, query.column)
    if present is not None:
        codes = np.where(present, codes, -1)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    start = np.searchsorted(sorted_codes, 0)
    sizes = np.bincount(sorted_codes[start:], minlength=ncells)
    edges = start + np.concatenate([[0], np.cumsum(sizes)])
    ordered = values[order]
    slices = [ordered[edges[i] : edges[i + 1]] for i in range(ncells)]
    return _per_cell(query, slices, labels, bounds, rng)


def _count(query: Query, counts: np.ndarray, labels: list[list[Any]], rng: Any) -> Answer:
    from diffprivlib.mechanisms import GeometricTruncated

    ncells = len(counts)
    mech = GeometricTruncated(
        epsilon=query.epsilon, sensitivity=1, lower=0, upper=sys.maxsize, random_state=rng
    )
    noisy = [int(mech.randomise(int(c))) for c in counts]
    half = geometric_halfwidth95(query.epsilon)
    return Answer(
        query.kind,
        query.epsilon,
        "GeometricTruncated (two-sided geometric, diffprivlib)",
        1.0,
        1.0 / query.epsilon,
        list(query.by),
        labels,
        noisy,
        [[max(0, v - half), v + half] for v in noisy],
        notes=[PARALLEL] if ncells > 1 else [],
    )


def _per_cell(
    query: Query,
    slices: list[np.ndarray],
    labels: list[list[Any]],
    bounds: VariableBounds,
    rng: Any,
) -> Answer:
    """One diffprivlib call per cell (each person is in one cell: parallel composition)."""
    from diffprivlib import tools
    from diffprivlib.mechanisms import Laplace

    assert bounds.lower is not None and bounds.upper is not None
    lo, hi = bounds.lower, bounds.upper
    width = hi - lo
    sum_sensitivity = max(hi, 0.0) - min(lo, 0.0)
    out: list[Any] = []
    intervals: list[list[float]] = []
    eps = query.epsilon
    # No released figure may depend on a cell's exact number of persons (that would be a count
    # without noise): means and variances are built from noisy sums and a noisy count, whose
    # noise scales depend only on the bounds and epsilon. Unbounded DP: a person joins or leaves.
    for cell in slices:
        clipped = np.clip(cell, lo, hi)
        if query.kind == "sum":
            # Untruncated Laplace: diffprivlib's tools.sum clamps its answer to
            # [lower * n, upper * n], so an answer at a bound would tell the exact n.
            value = Laplace(
                epsilon=eps, delta=0, sensitivity=sum_sensitivity, random_state=rng
            ).randomise(float(np.sum(clipped)))
            half = sum_sensitivity / eps * Z95_LAPLACE
            intervals.append([float(value) - half, float(value) + half])
        elif query.kind in ("mean", "var"):
            value, half = _moment(query.kind, clipped - lo, width, eps, rng)
            value += lo if query.kind == "mean" else 0.0
            intervals.append([float(value) - half, float(value) + half])
        else:  # quantile, median: the exponential mechanism
            assert query.quantile is not None
            value = tools.quantile(
                cell,
                query.quantile,
                epsilon=eps,
                bounds=(lo, hi),
                random_state=rng,
                accountant=_accountant(),
            )
        out.append(float(value))
    parts = {"mean": 2, "var": 3}.get(query.kind, 1)
    mechanism = {
        "sum": "Laplace, untruncated (diffprivlib)",
        "mean": "noisy sum / noisy count: Laplace and GeometricTruncated (diffprivlib), "
        "epsilon/2 each",
        "var": "noisy sums of x and x^2 / noisy count: Laplace and GeometricTruncated "
        "(diffprivlib), epsilon/3 each",
        "quantile": "Exponential (diffprivlib tools.quantile)",
        "median": "Exponential (diffprivlib tools.median)",
    }[query.kind]
    sensitivity: float | None = None
    noise: Any = None
    if query.kind == "sum":
        sensitivity = sum_sensitivity
        noise = sensitivity / eps
    elif query.kind == "mean":
        noise = {"sum": width * parts / eps, "count": parts / eps}
    elif query.kind == "var":
        noise = {
            "sum": width * parts / eps,
            "sum_of_squares": width**2 * parts / eps,
            "count": parts / eps,
        }
    notes = [f"Values are clipped to the policy's bounds [{lo:g}, {hi:g}]."]
    if query.kind in ("mean", "var"):
        notes.append(
            "Built from noisy sums and a noisy count, so the cell's number of persons stays "
            "private; the 95 % interval is approximate (delta method on the noisy figures)."
        )
    return Answer(
        query.kind,
        eps,
        mechanism,
        sensitivity,
        noise,
        list(query.by),
        labels,
        out,
        intervals if intervals else None,
        notes=notes,
    )


def _histogram(query: Query, values: np.ndarray, bounds: VariableBounds, rng: Any) -> Answer:
    from diffprivlib import tools

    lo, hi = bounds.lower, bounds.upper
    counts, edges = tools.histogram(
        values,
        epsilon=query.epsilon,
        bins=query.bins,
        range=(lo, hi),
        random_state=rng,
        accountant=_accountant(),
    )
    half = geometric_halfwidth95(query.epsilon)
    noisy = [int(c) for c in counts]
    return Answer(
        "histogram",
        query.epsilon,
        "GeometricTruncated per bin (diffprivlib tools.histogram)",
        1.0,
        1.0 / query.epsilon,
        ["bin"],
        [[f"[{edges[i]:g}, {edges[i + 1]:g})"] for i in range(len(noisy))],
        noisy,
        [[max(0, v - half), v + half] for v in noisy],
        extra={"bin_edges": [float(e) for e in edges]},
        notes=[f"Bins span the policy's bounds [{lo:g}, {hi:g}]; values outside are left out."],
    )


def _regression(
    query: Query, table: pa.Table, dp: DPPolicy, keep: np.ndarray | None, rng: Any
) -> Answer:
    """The functional mechanism (Zhang et al., "Functional mechanism: regression analysis under
    differential privacy", VLDB 2012): Laplace noise on the coefficients of the objective's
    polynomial (sums over persons), then the noisy objective is minimised. It answers any
    number of persons, none included, the same way: no error and no output range depends on
    who is in the filtered group (diffprivlib's models refused fewer than two persons or a
    single class, and scaled their noise by the exact n)."""
    from diffprivlib.mechanisms import Laplace

    assert query.target is not None
    columns = []
    present = np.ones(table.num_rows, dtype=bool) if keep is None else keep.copy()
    for name in query.features:
        values, ok = _numeric(table, name)
        columns.append(values)
        if ok is not None:
            present &= ok
    lows = np.array([dp.variables[f].lower for f in query.features], dtype=float)
    highs = np.array([dp.variables[f].upper for f in query.features], dtype=float)
    y_low = y_high = 0.0
    if query.kind == "linear_regression":
        y, y_ok = _numeric(table, query.target)
        tb = dp.variables[query.target]
        assert tb.lower is not None and tb.upper is not None
        if y_ok is not None:
            present &= y_ok
        y_low, y_high = tb.lower, tb.upper
        target = _unit(y[present], y_low, y_high)  # in [-1, 1]
        lin_bound = 1.0
        mechanism = "Functional mechanism, Laplace (least squares)"
    else:
        cats = dp.variables[query.target].categories
        arr = table.column(query.target)
        index = pc.index_in(arr, value_set=pa.array(list(cats)).cast(arr.type))
        present &= index.is_valid().to_numpy(zero_copy_only=False)
        labels = index.fill_null(0).to_numpy(zero_copy_only=False)[present]
        target = labels.astype(np.float64) - 0.5  # in {-1/2, 1/2}
        lin_bound = 0.5
        mechanism = "Functional mechanism, Laplace (logistic loss, second-order Taylor)"
    units = [_unit(col[present], lows[j], highs[j]) for j, col in enumerate(columns)]
    z = np.column_stack([np.ones(len(target)), *units])  # every entry in [-1, 1]
    d = z.shape[1]
    upper = np.triu_indices(d)
    quad = (z.T @ z)[upper]  # one person moves each entry by at most 1
    lin = z.T @ target  # by at most 1 (linear) or 1/2 (logistic)
    sensitivity = len(quad) + d * lin_bound  # L1 norm of one person's contribution
    mech = Laplace(epsilon=query.epsilon, delta=0, sensitivity=sensitivity, random_state=rng)
    matrix = np.zeros((d, d))
    matrix[upper] = [mech.randomise(float(v)) for v in quad]
    matrix = matrix + np.triu(matrix, 1).T
    noisy_lin = np.array([mech.randomise(float(v)) for v in lin])
    # The noisy objective need not be convex: its eigenvalues are floored at the noise scale
    # (post-processing of noisy figures with a public constant).
    floor = sensitivity / query.epsilon
    eigenvalues, vectors = np.linalg.eigh(matrix)
    w = vectors @ ((vectors.T @ noisy_lin) / np.maximum(eigenvalues, floor))
    if query.kind == "logistic_regression":
        w = 4.0 * w  # argmin of sum(-(y - 1/2) z.w + (z.w)^2 / 8), the Taylor objective
    # From [-1, 1] units back to the variables' own: u = a x + b.
    a = 2.0 / (highs - lows)
    b = -(highs + lows) / (highs - lows)
    coef = w[1:] * a
    intercept = float(w[0] + np.sum(w[1:] * b))
    if query.kind == "linear_regression":
        half_range, middle = (y_high - y_low) / 2.0, (y_high + y_low) / 2.0
        coef = coef * half_range
        intercept = intercept * half_range + middle
    names = ["intercept", *query.features]
    return Answer(
        query.kind,
        query.epsilon,
        mechanism,
        float(sensitivity),
        float(sensitivity / query.epsilon),
        ["term"],
        [[n] for n in names],
        [intercept, *(float(c) for c in coef)],
        None,
        extra={"target": query.target},
        notes=[
            "Features (and a linear model's target) are clipped to the policy's bounds and "
            "scaled to [-1, 1]; the model is fitted on noisy sums, so with few persons it is "
            "mostly noise."
        ],
    )


def _unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values clipped to [low, high] and mapped onto [-1, 1]."""
    return np.asarray((2.0 * np.clip(values, low, high) - high - low) / (high - low))


def _moment(
    kind: str, shifted: np.ndarray, width: float, eps: float, rng: Any
) -> tuple[float, float]:
    """A DP mean (of values shifted to [0, width]) or variance from noisy sums and a noisy count;
    returns the value and the half-width of its approximate 95 % interval."""
    from diffprivlib.mechanisms import GeometricTruncated, Laplace

    parts = 2 if kind == "mean" else 3
    e = eps / parts
    count = GeometricTruncated(
        epsilon=e, sensitivity=1, lower=0, upper=sys.maxsize, random_state=rng
    ).randomise(len(shifted))
    n = max(float(count), 1.0)
    sum_mech = Laplace(epsilon=e, delta=0, sensitivity=width, random_state=rng)
    total = sum_mech.randomise(float(np.sum(shifted)))
    mean = min(max(total / n, 0.0), width)
    p = math.exp(-e)
    var_count = 2 * p / (1 - p) ** 2
    var_sum = 2 * (width / e) ** 2
    if kind == "mean":
        sd = math.sqrt(var_sum + mean**2 * var_count) / n
        return mean, 1.96 * sd
    square_mech = Laplace(epsilon=e, delta=0, sensitivity=width**2, random_state=rng)
    squares = square_mech.randomise(float(np.sum(shifted**2)))
    second = min(max(squares / n, 0.0), width**2)
    variance = min(max(second - mean**2, 0.0), width**2 / 4)
    var_squares = 2 * (width**2 / e) ** 2
    sd = (
        math.sqrt(var_squares + 4 * mean**2 * var_sum + (2 * mean**2 - second) ** 2 * var_count) / n
    )
    return variance, 1.96 * sd
