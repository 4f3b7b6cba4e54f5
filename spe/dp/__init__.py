"""Differentially private queries on aggregate-only datasets, and their privacy budgets.

In a notebook: ``spe.dp.count / sum / mean / var / histogram / quantile / median / crosstab /
linear_regression / logistic_regression`` and ``spe.dp.budget()``. This package's top level is
the light client (standard library only); the server side is in ``spe.dp.service``/``compute``.
"""

from spe.dp.client import (
    DPQueryError,
    DPResult,
    budget,
    count,
    crosstab,
    histogram,
    linear_regression,
    logistic_regression,
    mean,
    median,
    quantile,
    sum,
    var,
)

__all__ = [
    "DPQueryError",
    "DPResult",
    "budget",
    "count",
    "crosstab",
    "histogram",
    "linear_regression",
    "logistic_regression",
    "mean",
    "median",
    "quantile",
    "sum",
    "var",
]
