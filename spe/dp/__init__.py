"""Differentially private queries on aggregate-only datasets: ``spe.dp.count / sum / mean / var /
histogram / quantile / median / crosstab / linear_regression / logistic_regression``, ``budget()``
and ``answer.save(name)`` (for export). This is the light notebook client; the server side is
service/compute/export."""

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
    save,
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
    "save",
    "sum",
    "var",
    "variables",
]
