"""Safe versions of a failing table: cell suppression with protected margins, or rounding.

Suppression hides every failing cell (primary) and then enough other cells (secondary) that no
hidden cell can be recomputed, or narrowed below its protection interval, from the published row
and column totals. Rounding publishes counts rounded to base 5 with margins that add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spe.sdc.check import TableReport, axis_index
from spe.sdc.differencing import describe_label, json_scalar
from spe.sdc.errors import SafeVersionError
from spe.sdc.rules import Verdict

METHODS = ("suppress", "round")
ROUNDING_BASE = 5
TOTAL = "Total"

# Rules whose failures rounding counts to base 5 addresses; others still need a reviewer.
_ROUNDING_FIXES = {"threshold", "zeros"}


@dataclass(frozen=True)
class SafeCellChange:
    """What the safe version did to one cell, and why."""

    index: tuple[Any, ...]
    columns: tuple[Any, ...]
    original: Any
    published: Any  # None when suppressed
    action: str  # "suppressed" or "rounded"
    kind: str  # "primary", "secondary" or "rounding"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": [json_scalar(v) for v in self.index],
            "columns": [json_scalar(v) for v in self.columns],
            "original": json_scalar(self.original),
            "published": json_scalar(self.published),
            "action": self.action,
            "kind": self.kind,
            "reason": self.reason,
        }


@dataclass
class SafeTable:
    """A table the researcher may release instead of the failing one.

    ``values`` holds the published cells (NaN where suppressed); the totals are published as
    given (true totals for suppression, sums of the rounded cells for rounding; None when the
    statistic has no additive margins).
    """

    method: str
    agg: str
    index: list[str]
    columns: list[str]
    row_labels: list[tuple[Any, ...]]
    col_labels: list[tuple[Any, ...]]
    values: np.ndarray
    suppressed: np.ndarray
    primary: np.ndarray
    row_totals: np.ndarray | None
    col_totals: np.ndarray | None
    grand_total: float | None
    changes: list[SafeCellChange]
    required: np.ndarray  # protection interval asked for each primary cell (0 elsewhere)
    protection: np.ndarray  # a proven lower bound of each hidden cell's feasible interval
    status: Verdict = Verdict.PASS
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def table(self) -> pd.DataFrame:
        """The published table with a Total row and column when margins are published."""
        if self.row_totals is None or self.col_totals is None:
            return pd.DataFrame(
                self.values,
                index=axis_index(self.row_labels, self.index),
                columns=axis_index(self.col_labels, self.columns),
            )
        # In a one-column table each row total is its one cell (and likewise for one row):
        # publishing it would show a suppressed cell again, so that margin is left out.
        with_rows, with_cols = len(self.col_labels) > 1, len(self.row_labels) > 1
        body = np.column_stack([self.values, self.row_totals]) if with_rows else self.values
        if with_cols:
            bottom = (
                [*self.col_totals.tolist(), self.grand_total] if with_rows else [self.grand_total]
            )
            body = np.vstack([body, np.asarray(bottom, dtype=float)])
        return pd.DataFrame(
            body,
            index=_with_total(self.row_labels, self.index)
            if with_cols
            else axis_index(self.row_labels, self.index),
            columns=_with_total(self.col_labels, self.columns)
            if with_rows
            else axis_index(self.col_labels, self.columns),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "safe_table",
            "method": self.method,
            "agg": self.agg,
            "status": self.status.value,
            "index": list(self.index),
            "columns": list(self.columns),
            "row_labels": [[json_scalar(v) for v in r] for r in self.row_labels],
            "column_labels": [[json_scalar(v) for v in c] for c in self.col_labels],
            "values": [[json_scalar(v) for v in row] for row in self.values.tolist()],
            "row_totals": None
            if self.row_totals is None or len(self.col_labels) == 1
            else [json_scalar(v) for v in self.row_totals.tolist()],
            "column_totals": None
            if self.col_totals is None or len(self.row_labels) == 1
            else [json_scalar(v) for v in self.col_totals.tolist()],
            "grand_total": json_scalar(self.grand_total),
            "changes": [c.to_dict() for c in self.changes],
            "notes": list(self.notes),
        }


def _with_total(labels: list[tuple[Any, ...]], names: list[str]) -> pd.Index:
    if len(names) == 1:
        return pd.Index([label[0] for label in labels] + [TOTAL], name=names[0], dtype=object)
    total = (TOTAL,) + ("",) * (len(names) - 1)
    return pd.MultiIndex.from_tuples([*labels, total], names=names)


def safe_version(report: TableReport, method: str = "suppress") -> SafeTable:
    """A safe version of a checked table: ``suppress`` (cells, with margins) or ``round`` (base 5).

    Tables of 3 or more dimensions are handled in their 2-D layout (row tuples x column tuples)
    with one row total per row tuple and one column total per column tuple.
    """
    if method not in METHODS:
        raise SafeVersionError(f"method is {method!r}; use one of {', '.join(METHODS)}.")
    margin_pairs = [p for p in report.differencing if p.cell_index is None]
    if margin_pairs:
        pair = margin_pairs[0]
        raise SafeVersionError(
            f"The {pair.kind} {describe_label(pair.label)} differs from cell "
            f"{describe_label(pair.released_label)} of released table {pair.released_table!r} by "
            f"{pair.difference} persons; hiding cells cannot change a total, so no safe version "
            "can be made automatically: choose another population or ask a reviewer."
        )
    if report.n_cells == 0:
        raise SafeVersionError("The table has no cells; there is nothing to make safe.")
    if method == "round":
        return _round(report)
    return _suppress(report)


# -- rounding -------------------------------------------------------------------------------
def _round(report: TableReport) -> SafeTable:
    if report.agg != "count":
        raise SafeVersionError(
            f"Rounding protects counts; this is a table of {report.agg}. Use method='suppress'."
        )
    shape = report.shape
    original = report.grid(report.stats.value).astype(np.int64)
    base = ROUNDING_BASE
    rounded = (original + base // 2) // base * base
    changes = []
    for r, c in zip(*np.nonzero(rounded != original), strict=True):
        i = int(r) * shape[1] + int(c)
        failing = [o.rule for o in report.cell(i).failing]
        why = (
            f"rounded to the nearest multiple of {base}"
            + (f" (the cell failed {', '.join(failing)})" if failing else "")
            + f"; a published {rounded[r, c]} stands for any count from "
            f"{max(rounded[r, c] - base // 2, 0)} to {rounded[r, c] + base // 2}."
        )
        changes.append(
            SafeCellChange(
                report.row_labels[r],
                report.col_labels[c],
                int(original[r, c]),
                int(rounded[r, c]),
                "rounded",
                "rounding",
                why,
            )
        )
    unresolved = sorted(
        {
            rule
            for rule, sev in report.severities.items()
            if rule not in _ROUNDING_FIXES and (sev > 0).any()
        }
    )
    notes = [
        f"Every cell is rounded to the nearest multiple of {base}; the totals are the sums of the "
        "rounded cells, so they add up but may differ from the true totals."
    ]
    status = Verdict.PASS
    if unresolved:
        status = Verdict.REVIEW
        notes.append(
            f"Rounding does not address {', '.join(unresolved)}: a reviewer must decide on those "
            "cells."
        )
    empty = np.zeros(shape, dtype=bool)
    return SafeTable(
        method="round",
        agg=report.agg,
        index=report.index,
        columns=report.columns,
        row_labels=report.row_labels,
        col_labels=report.col_labels,
        values=rounded.astype(np.float64),
        suppressed=empty,
        primary=empty.copy(),
        row_totals=rounded.sum(axis=1).astype(np.float64),
        col_totals=rounded.sum(axis=0).astype(np.float64),
        grand_total=float(rounded.sum()),
        changes=changes,
        required=np.zeros(shape),
        protection=np.zeros(shape),
        status=status,
        notes=notes,
    )


# -- suppression ----------------------------------------------------------------------------
def _suppress(report: TableReport) -> SafeTable:
    shape = report.shape
    rules = report.rules
    value = report.grid(report.stats.value)
    additive = report.agg in ("count", "sum")
    if additive:
        weights = np.nan_to_num(np.abs(value.astype(np.float64)), nan=0.0)
    else:
        # No additive margins: protect the pattern as if the persons table were published with
        # its totals, which is the stricter assumption.
        weights = report.grid(report.stats.persons).astype(np.float64)
    severity = report.cell_severity.reshape(shape)
    primary = severity == Verdict.FAIL.severity
    if report.agg == "sum":
        tiny = max(float(weights.max()) * 1e-9, 1e-9)
        required = np.where(primary, np.maximum(rules.p * weights, tiny), 0.0)
    else:
        required = np.where(primary, float(rules.threshold), 0.0)
    hidden, protection, partner = suppression_pattern(weights, primary, required)
    published = np.where(hidden, np.nan, value.astype(np.float64))
    changes = []
    for r, c in zip(*np.nonzero(hidden), strict=True):
        i = int(r) * shape[1] + int(c)
        cell = report.cell(i)
        if primary[r, c]:
            reasons = "; ".join(o.sentence for o in cell.failing if o.verdict == Verdict.FAIL)
            kind, why = "primary", f"suppressed because it fails: {reasons}"
        else:
            pr, pc = partner[r, c]
            protected = describe_label(report.label(int(pr) * shape[1] + int(pc)))
            kind = "secondary"
            why = (
                f"suppressed so that the hidden cell ({protected}) cannot be recomputed from the "
                "row and column totals."
            )
        changes.append(
            SafeCellChange(
                report.row_labels[r],
                report.col_labels[c],
                cell.value,
                None,
                "suppressed",
                kind,
                why,
            )
        )
    notes: list[str] = []
    status = Verdict.PASS
    short = primary & (protection < required)
    if short.any():
        status = Verdict.REVIEW
        for r, c in zip(*np.nonzero(short), strict=True):
            label = describe_label(report.label(int(r) * shape[1] + int(c)))
            notes.append(
                f"Cell ({label}) could only be hidden within an interval of width "
                f"{protection[r, c]:g}, less than the {required[r, c]:g} asked for: a reviewer "
                "must decide, or merge categories."
            )
    review = severity == Verdict.REVIEW.severity
    if review.any():
        status = Verdict.REVIEW
        notes.append(
            f"{int(review.sum())} cells need a reviewer's decision (e.g. full cells or negative "
            "values); suppression leaves them as they are."
        )
    if additive:
        totals = value.astype(np.float64)
        totals = np.nan_to_num(totals, nan=0.0)
        row_totals, col_totals = totals.sum(axis=1), totals.sum(axis=0)
        grand: float | None = float(totals.sum())
        notes.append(
            "The totals are the true totals; the hidden cells cannot be recomputed from them "
            "(each hidden cell's interval is at least its protection level)."
        )
    else:
        row_totals = col_totals = None
        grand = None
        notes.append(
            f"Totals of a {report.agg} table are not sums of its cells and are not published."
        )
    return SafeTable(
        method="suppress",
        agg=report.agg,
        index=report.index,
        columns=report.columns,
        row_labels=report.row_labels,
        col_labels=report.col_labels,
        values=published,
        suppressed=hidden,
        primary=primary,
        row_totals=row_totals,
        col_totals=col_totals,
        grand_total=grand,
        changes=changes,
        required=required,
        protection=protection,
        status=status,
        notes=notes,
    )


def suppression_pattern(
    x: np.ndarray, primary: np.ndarray, required: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hidden cells protecting every primary cell of a non-negative table with published totals.

    For a 2-D table, a primary cell (i, j) is protected by a rectangle (i, j), (k, j), (i, l),
    (k, l) of hidden cells: moving d along it keeps every total, so the attacker's interval for
    each of the four cells is at least min(x[k, j], x[i, l]) + min(x[i, j], x[k, l]) wide.
    Rectangles are picked per primary cell (fewest new cells, then least value) to reach the
    required width; rectangles already hidden cost nothing. A one-row or one-column table is
    protected by hiding cells whose sum reaches the required width.

    Returns (hidden, protection lower bound per cell, protecting partner (row, col) per cell).
    """
    x = np.asarray(x, dtype=np.float64)
    hidden = primary.copy()
    protection = np.zeros(x.shape)
    partner = np.zeros((*x.shape, 2), dtype=np.int64)
    n_rows, n_cols = x.shape
    if not primary.any():
        return hidden, protection, partner
    if n_rows == 1 or n_cols == 1:
        return _suppress_line(x, primary, required, hidden, protection, partner)
    total = float(x.sum()) + 1.0
    # Primary cells needing the most protection first: their rectangles tend to cover others.
    order = sorted(zip(*np.nonzero(primary), strict=True), key=lambda rc: -required[rc])
    rows_idx = np.arange(n_rows)[:, None]
    cols_idx = np.arange(n_cols)[None, :]
    for i, j in order:
        need = required[i, j]
        cost_cell = np.where(hidden, 0.0, 1.0 + x / total)
        inc = np.minimum(x[:, j][:, None], x[i, :][None, :])
        dec = np.minimum(x[i, j], x)
        width = inc + dec
        cost = cost_cell[:, j][:, None] + cost_cell[i, :][None, :] + cost_cell
        invalid = (rows_idx == i) | (cols_idx == j)
        cost[invalid] = np.inf
        width[invalid] = -1.0
        feasible = width >= need
        if feasible.any():
            pick = np.where(feasible, cost, np.inf)
            best = np.flatnonzero(pick == pick.min())
            k, l_ = np.unravel_index(best[np.argmax(width.ravel()[best])], x.shape)
        else:
            top = np.flatnonzero(width == width.max())
            k, l_ = np.unravel_index(top[np.argmin(cost.ravel()[top])], x.shape)
        got = width[k, l_]
        for r, c in ((i, j), (k, j), (i, l_), (k, l_)):
            if not hidden[r, c]:
                hidden[r, c] = True
                partner[r, c] = (i, j)
            protection[r, c] = max(protection[r, c], got)
    return hidden, protection, partner


def _suppress_line(
    x: np.ndarray,
    primary: np.ndarray,
    required: np.ndarray,
    hidden: np.ndarray,
    protection: np.ndarray,
    partner: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row (or column) with its total: each hidden cell lies anywhere in [0, sum of hidden]."""
    shape = x.shape
    flat_x, flat_hidden = x.ravel(), hidden.ravel().copy()
    need = float(required.ravel()[primary.ravel()].max())
    first = int(np.flatnonzero(primary.ravel())[0])
    while True:
        hidden_sum = float(flat_x[flat_hidden].sum())
        if flat_hidden.sum() >= 2 and hidden_sum >= need:
            break
        free = np.flatnonzero(~flat_hidden)
        if len(free) == 0:
            break
        enough = free[flat_x[free] + hidden_sum >= need]
        pick = enough[np.argmin(flat_x[enough])] if len(enough) else free[np.argmax(flat_x[free])]
        flat_hidden[pick] = True
        partner.reshape(-1, 2)[pick] = np.unravel_index(first, shape)
    hidden = flat_hidden.reshape(shape)
    width = float(flat_x[flat_hidden].sum()) if flat_hidden.sum() >= 2 else 0.0
    protection[hidden] = width
    return hidden, protection, partner
