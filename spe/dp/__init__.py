"""Differentially private queries on aggregate-only datasets: ``spe.dp.count / sum / mean / var /
histogram / quantile / median / crosstab / linear_regression / logistic_regression`` and
``budget()``. The top level is the light notebook client; the server side is service/compute."""

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
    variables,
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
    "variables",
]
