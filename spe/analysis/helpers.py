"""The helpers researchers call in a notebook: pandas in, an Output (pandas result + verdict) out.

Each helper works out which columns it uses, derives what it must (bins, intervals), computes
and checks the result with spe.sdc and, unless ``record=False``, records it in the outbox with
the evidence rows the export review recomputes it from.
"""

from __future__ import annotations

import difflib
import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from spe.analysis.data import FrameContext, frame_context, workspace_rules
from spe.analysis.errors import AnalysisError
from spe.analysis.formula import formula_columns
from spe.analysis.output import Output
from spe.analysis.outputs import (
    INTERVAL,
    STATISTIC,
    VARIABLE,
    check_aggfunc,
    compute,
    interval_labels,
    nice_edges,
)

Columns = str | Sequence[str]


def _names(value: Columns | None, what: str, *, required: bool) -> list[str]:
    if value is None:
        if required:
            raise AnalysisError(f"Give the {what} column(s).")
        return []
    names = [value] if isinstance(value, str) else list(value)
    if required and not names:
        raise AnalysisError(f"Give at least one {what} column.")
    for name in names:
        if not isinstance(name, str):
            raise AnalysisError(
                f"Name the {what} columns by their names (text), not {type(name).__name__}: "
                "the evidence is recorded by column."
            )
    return names


def _require(df: pd.DataFrame, names: Sequence[str], what: str) -> None:
    for name in names:
        if name not in df.columns:
            known = [str(c) for c in df.columns]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the columns are {known}."
            raise AnalysisError(f"There is no column {name!r} for the {what}{hint}")


def _reserved(names: Sequence[str], reserved: Sequence[str], command: str) -> None:
    for name in names:
        if name in reserved:
            raise AnalysisError(
                f"Rename the column {name!r} first: {command} uses that name for its own labels."
            )


def _evidence(
    df: pd.DataFrame, context: FrameContext, used: Sequence[str], derived: dict[str, Any]
) -> tuple[Any, pd.DataFrame]:
    """The evidence rows as a pyarrow Table and as the frame the replay will read back."""
    import pyarrow as pa

    person = [context.person_id] if context.person_id else []
    if context.person_id in used:
        raise AnalysisError(
            f"The person column {context.person_id!r} cannot also be a column of the output."
        )
    # Positional: derived columns are arrays, and the frame's index may repeat labels.
    frame = pd.DataFrame(
        {
            name: derived[name] if name in derived else df[name].reset_index(drop=True)
            for name in [*person, *used]
        }
    )
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise AnalysisError(
            f"The columns {', '.join(frame.columns)} cannot be stored as evidence ({exc}); "
            "convert mixed or object columns to numbers or text first."
        ) from None
    # Compute from what the replay will read, so workspace and server see the same values.
    return table, table.to_pandas()


def _run(
    command: str,
    df: pd.DataFrame,
    context: FrameContext,
    spec: dict[str, Any],
    used: Sequence[str],
    *,
    derived: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    name: str | None,
    record: bool,
    record_safe: bool | str = False,
) -> Output:
    spec = {**spec, "person_id": context.person_id}
    table, evidence = _evidence(df, context, used, derived or {})
    computed = compute(command, evidence, spec, workspace_rules(context.datasets))
    withheld = computed.withheld_in_workspace() if computed.auto_withhold is not None else None
    out = Output(computed, table, context.datasets, [*context.notes, *notes], withheld)
    if record_safe and out.kind == "table" and not out.passed:
        method = record_safe if isinstance(record_safe, str) else "suppress"
        out = out.safe(method, record=False)
    if record:
        out.record(name)
    elif name is not None:
        out.name = name
    return out


# -- tables ---------------------------------------------------------------------------------
def crosstab(
    df: pd.DataFrame,
    index: Columns,
    columns: Columns,
    values: str | None = None,
    aggfunc: str = "count",
    *,
    person_id: str | None = None,
    name: str | None = None,
    record: bool = True,
    record_safe: bool | str = False,
) -> Output:
    """A frequency table (or ``aggfunc`` of ``values``) of ``index`` by ``columns``, checked.

    Like ``pandas.crosstab`` but with column names: ``crosstab(df, "sex", "region")``. Persons
    are counted by the frame's person column. ``record_safe=True`` records the safe version
    (suppression; or ``"round"``) instead when the table does not pass.
    """
    context = frame_context(df, person_id)
    index_names = _names(index, "index", required=True)
    column_names = _names(columns, "columns", required=True)
    agg = check_aggfunc(aggfunc)
    if agg != "count" and values is None:
        raise AnalysisError(f"aggfunc={aggfunc!r} needs values=, the column to aggregate.")
    used = [*index_names, *column_names, *([values] if values else [])]
    _require(df, used, "table")
    spec = {
        "index": index_names,
        "columns": column_names,
        "values": values,
        "agg": agg,
        "safe": None,
    }
    return _run(
        "crosstab", df, context, spec, used, name=name, record=record, record_safe=record_safe
    )


def pivot_table(
    df: pd.DataFrame,
    values: str,
    index: Columns,
    columns: Columns,
    aggfunc: str = "mean",
    *,
    person_id: str | None = None,
    name: str | None = None,
    record: bool = True,
    record_safe: bool | str = False,
) -> Output:
    """``aggfunc`` (mean, sum, median, std, count, min, max, mode) of one ``values`` column.

    Like ``pandas.pivot_table`` with one values column; empty combinations are NaN. For one
    statistic per group without a column dimension use ``describe(df, [values], by=...)``.
    """
    context = frame_context(df, person_id)
    if not isinstance(values, str):
        raise AnalysisError("pivot_table takes one values column (text); call it once per column.")
    index_names = _names(index, "index", required=True)
    column_names = _names(columns, "columns", required=True)
    used = [*index_names, *column_names, values]
    _require(df, used, "table")
    spec = {
        "index": index_names,
        "columns": column_names,
        "values": values,
        "agg": check_aggfunc(aggfunc),
        "safe": None,
    }
    return _run(
        "pivot_table", df, context, spec, used, name=name, record=record, record_safe=record_safe
    )


def describe(
    df: pd.DataFrame,
    columns: Columns | None = None,
    by: Columns | None = None,
    *,
    person_id: str | None = None,
    name: str | None = None,
    record: bool = True,
    record_safe: bool = False,
) -> Output:
    """count, mean, std, median, min and max of numeric ``columns`` (per ``by`` group).

    One row per column (and group). A minimum or maximum that the rules do not allow (held by
    fewer than the threshold of persons, as a continuous variable's extremes are) is left out
    (NaN) and the report says why; the other statistics are checked cell by cell.
    """
    context = frame_context(df, person_id)
    by_names = _names(by, "by", required=False)
    if columns is None:
        skip = {*by_names, context.person_id}
        names = [
            str(c)
            for c in df.columns
            if c not in skip
            and pd.api.types.is_numeric_dtype(df[c].dtype)
            and not pd.api.types.is_bool_dtype(df[c].dtype)
        ]
        if not names:
            raise AnalysisError("There is no numeric column to describe; name the columns.")
    else:
        names = _names(columns, "describe", required=True)
    used = [*by_names, *names]
    _require(df, used, "describe")
    _reserved(
        [*used, *([context.person_id] if context.person_id else [])],
        [VARIABLE, STATISTIC, "value"],
        "describe",
    )
    spec = {"columns": names, "by": by_names, "safe": None}
    return _run(
        "describe", df, context, spec, used, name=name, record=record, record_safe=record_safe
    )


def _numbers(df: pd.DataFrame, column: str, what: str) -> np.ndarray:
    series = df[column]
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy()
    if not pd.api.types.is_numeric_dtype(series.dtype):
        raise AnalysisError(f"The column {column!r} is not numeric ({series.dtype}); {what}.")
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def _edges(edges: object, what: str) -> list[float]:
    if isinstance(edges, str | bytes) or not isinstance(edges, Sequence | np.ndarray):
        raise AnalysisError(f"Give the {what} as a list of numbers.")
    try:
        out = [float(e) for e in edges]
    except (TypeError, ValueError):
        raise AnalysisError(f"The {what} must be numbers.") from None
    if len(out) < 2 or not all(math.isfinite(e) for e in out):
        raise AnalysisError(f"Give at least two finite {what}.")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise AnalysisError(f"The {what} must increase strictly.")
    return out


def hist(
    df: pd.DataFrame,
    column: str,
    bins: int | Sequence[float] = 10,
    by: Columns | None = None,
    *,
    person_id: str | None = None,
    name: str | None = None,
    record: bool = True,
    record_safe: bool | str = False,
    plot: bool = False,
) -> Output:
    """A histogram as a table of counts per bin ('[0, 10)', ..., the last bin closed).

    ``bins`` is a number of bins (edges on round numbers covering the data, so that they do
    not disclose its minimum and maximum) or the edges themselves; values outside the edges are
    left out. With ``by`` the table has one column of counts per group. ``plot=True`` draws it
    when matplotlib is installed.
    """
    context = frame_context(df, person_id)
    if not isinstance(column, str):
        raise AnalysisError("Name the histogram's column by its name (text).")
    by_names = _names(by, "by", required=False)
    _require(df, [column, *by_names], "histogram")
    if not by_names:
        _reserved([column], [STATISTIC], "hist")
    values = _numbers(df, column, "a histogram needs numbers")
    finite = values[np.isfinite(values)]
    if isinstance(bins, int | np.integer) and not isinstance(bins, bool):
        if bins < 1:
            raise AnalysisError("bins must be at least 1.")
        if not len(finite):
            raise AnalysisError(f"The column {column!r} has no values to make a histogram of.")
        edges = nice_edges(float(finite.min()), float(finite.max()), int(bins))
    else:
        edges = _edges(bins, "bin edges")
    labels = interval_labels(edges, closed_last=True)
    codes = np.searchsorted(np.asarray(edges), values, "right") - 1
    codes[values == edges[-1]] = len(labels) - 1  # the last bin is closed on the right
    outside = ~np.isfinite(values) | (codes < 0) | (codes >= len(labels))
    codes[outside] = -1
    notes = []
    left_out = int((outside & ~np.isnan(values)).sum())
    if left_out:
        notes.append(
            f"{left_out} values outside [{edges[0]:g}, {edges[-1]:g}] are left out of the table."
        )
    derived = {column: pd.Categorical.from_codes(codes, categories=labels, ordered=True)}
    spec = {"column": column, "edges": edges, "by": by_names, "safe": None}
    out = _run(
        "hist",
        df,
        context,
        spec,
        [*by_names, column],
        derived=derived,
        notes=notes,
        name=name,
        record=record,
        record_safe=record_safe,
    )
    if plot:
        try:
            out.plot()
        except AnalysisError as exc:
            warnings.warn(exc.message, stacklevel=2)
    return out


# -- models ---------------------------------------------------------------------------------
def _model(
    command: str,
    df: pd.DataFrame,
    formula: str,
    person_id: str | None,
    name: str | None,
    record: bool,
) -> Output:
    context = frame_context(df, person_id)
    usable = [str(c) for c in df.columns if c != context.person_id]
    used = formula_columns(formula, usable)
    spec = {"formula": formula, "model": command, "columns": used}
    return _run(command, df, context, spec, used, name=name, record=record)


def ols(
    df: pd.DataFrame,
    formula: str,
    *,
    person_id: str | None = None,
    name: str | None = None,
    record: bool = True,
) -> Output:
    """Ordinary least squares (statsmodels) of ``formula``; the table is its coefficients.

    Formulas use column names, numbers, arithmetic and C, I, Q, center, standardize, scale,
    contrasts and np.log-like functions (the export review refits it on the server).
    """
    return _model("ols", df, formula, person_id, name, record)


def logit(
    df: pd.DataFrame,
    formula: str,
    *,
    person_id: str | None = None,
    name: str | None = None,
    record: bool = True,
) -> Output:
    """Logistic regression (statsmodels) of ``formula``; the table is its coefficients."""
    return _model("logit", df, formula, person_id, name, record)


def probit(
    df: pd.DataFrame,
    formula: str,
    *,
    person_id: str | None = None,
    name: str | None = None,
    record: bool = True,
) -> Output:
    """Probit regression (statsmodels) of ``formula``; the table is its coefficients."""
    return _model("probit", df, formula, person_id, name, record)


# -- survival -------------------------------------------------------------------------------
def survival(
    df: pd.DataFrame,
    duration: str,
    event: str,
    by: Columns | None = None,
    intervals: int | Sequence[float] = 10,
    *,
    person_id: str | None = None,
    name: str | None = None,
    record: bool = True,
) -> Output:
    """A Kaplan-Meier life table by time intervals: at risk, events, censored, survival.

    ``event`` is 1 when the event happened at ``duration`` and 0 when the row is censored.
    ``intervals`` is a number of intervals from 0 (on round numbers) or their edges. The counts
    of every interval are checked by the threshold; choose wider intervals when they fail.
    """
    context = frame_context(df, person_id)
    for value, what in ((duration, "duration"), (event, "event")):
        if not isinstance(value, str):
            raise AnalysisError(f"Name the {what} column by its name (text).")
    by_names = _names(by, "by", required=False)
    used = [*by_names, duration, event]
    _require(df, used, "survival table")
    reserved = [INTERVAL, STATISTIC, "at_risk", "events", "censored"]
    _reserved(
        [*by_names, *([context.person_id] if context.person_id else [])], reserved, "survival"
    )
    times = _numbers(df, duration, "survival needs durations as numbers")
    finite = times[np.isfinite(times)]
    if isinstance(intervals, int | np.integer) and not isinstance(intervals, bool):
        if intervals < 1:
            raise AnalysisError("intervals must be at least 1.")
        if not len(finite):
            raise AnalysisError(f"The column {duration!r} has no durations.")
        if finite.min() < 0:
            raise AnalysisError(f"The duration column {duration!r} has negative values.")
        edges = nice_edges(0.0, float(finite.max()), int(intervals))
        if edges[-1] <= float(finite.max()):
            step = edges[-1] - edges[-2]
            edges.append(round(edges[-1] + step, 12))  # the last duration inside the table
    else:
        edges = _edges(intervals, "interval edges")
    spec = {"duration": duration, "event": event, "by": by_names, "edges": edges}
    return _run("survival", df, context, spec, used, name=name, record=record)
