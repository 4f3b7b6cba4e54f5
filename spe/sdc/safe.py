"""Safe versions of a failing table: cell suppression with protected margins, or rounding.

Suppression hides every failing cell (primary) and then enough other cells (secondary) that an
LP intruder, who knows the published cells, the totals, linked earlier releases and his own
contributions, can neither raise nor lower a primary cell past its protection levels. Rounding
publishes counts rounded to base 5 with margins that add up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    # Suppression only (None otherwise): each primary cell's protection levels, and the
    # smallest and largest value the LP intruder can give it (NaN for other cells).
    upper_level: np.ndarray | None = None
    lower_level: np.ndarray | None = None
    intruder_low: np.ndarray | None = None
    intruder_high: np.ndarray | None = None

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


# The most failing cells a suppression protects (each costs two LPs and grows the others): a
# worst-case 50 x 50 table with 874 takes under a second, a 3,000-cell one with 2,938 took 150 s.
MAX_PRIMARY_CELLS = 1000


def safe_version(
    report: TableReport, method: str = "suppress", *, linked: Sequence[PublishedSum] = ()
) -> SafeTable:
    """A safe version of a checked table: ``suppress`` (cells, with margins) or ``round`` (base 5).

    Tables of 3 or more dimensions are handled in their 2-D layout (row tuples x column tuples)
    with one row total per row tuple and one column total per column tuple. ``linked`` are the
    cells of tables already released on the same persons, as sums of this table's cells
    (``linked_sums``): suppression protects the two together. Raises ``SafeVersionError`` when
    no safe version can be made.
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
        if linked:
            raise SafeVersionError(
                "Rounding is not protected against tables released earlier on the same persons "
                "(their exact totals narrow the rounded cells); use method='suppress'."
            )
        return _round(report)
    return _suppress(report, linked)


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


# -- protection levels and the intruder ---------------------------------------------------
@dataclass(frozen=True)
class PublishedSum:
    """A number already released elsewhere that is the sum of some cells of this table.

    A linked table: an earlier A x C table's cell (a, c) is the sum of this A x B x C table's
    cells (a, *, c). ``cells`` marks those cells in the table's 2-D layout; ``source`` names the
    earlier release (its title and date) for the reasons.
    """

    cells: np.ndarray  # bool, the table's shape
    value: float
    source: str


def linked_sums(
    report: TableReport,
    variables: Sequence[str],
    released: Mapping[tuple[Any, ...], Any],
    source: str,
) -> list[PublishedSum]:
    """The cells of an earlier release over ``variables`` (a subset of this table's) as sums.

    ``released`` maps each earlier cell's labels, in the order of ``variables``, to its published
    value; a suppressed earlier cell (None or NaN) is no constraint and is left out.
    """
    names = [*report.index, *report.columns]
    missing = [v for v in variables if v not in names]
    if missing:
        raise SafeVersionError(
            f"The earlier release {source!r} is over {missing[0]!r}, which this table does not "
            "have; only a release over this table's own variables can be protected with it."
        )
    where = [names.index(v) for v in variables]
    n_rows, n_cols = report.shape
    keys: dict[tuple[Any, ...], list[int]] = {}
    for r, row in enumerate(report.row_labels):
        for c, col in enumerate(report.col_labels):
            labels = (*row, *col)
            keys.setdefault(tuple(labels[w] for w in where), []).append(r * n_cols + c)
    out = []
    for key, value in released.items():
        key = tuple(key) if isinstance(key, tuple) else (key,)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        mask = np.zeros(n_rows * n_cols, dtype=bool)
        mask[keys.get(key, [])] = True
        out.append(PublishedSum(mask.reshape(n_rows, n_cols), float(value), source))
    return out


# The most linked sums a safe version takes (each is one more row in both LPs of every failing
# cell, and one more mask every candidate rectangle is tested against): at this many a
# 1,000-cell table is still protected in seconds. Past it the safe version is refused, never
# made against only some of them (that would be optimistic).
MAX_LINKED_SUMS = 400


def sums_of_cells(
    report: TableReport, groups: Sequence[tuple[Sequence[int], str]]
) -> list[PublishedSum]:
    """Earlier released numbers that are sums of whole cells of this table, as linked sums.

    ``groups`` gives, per earlier cell, the flat indices of this table's cells (row-major in
    its 2-D layout) whose persons make up exactly that earlier cell's persons, and the earlier
    release it came from. The intruder is taken to know the sum of those cells exactly (the
    earlier cell on the same persons): at worst a constraint he lacks, which only hides more.
    Duplicates and the grand total (published anyway) are left out; past ``MAX_LINKED_SUMS``
    the safe version is refused. Tables whose statistic has no additive margins take none.
    """
    if report.agg not in ("count", "sum") or not groups:
        return []
    shape = report.shape
    x = np.nan_to_num(report.grid(report.stats.value).astype(np.float64), nan=0.0).ravel()
    seen: dict[tuple[int, ...], str] = {}
    for cells, source in groups:
        key = tuple(sorted({int(i) for i in cells}))
        if not key or (len(key) == x.size and x.size > 1):
            continue
        if any(i < 0 or i >= x.size for i in key):
            raise SafeVersionError(
                f"The earlier release {source!r} names cells this table does not have; it "
                "cannot be protected with it."
            )
        seen.setdefault(key, source)
    if len(seen) > MAX_LINKED_SUMS:
        raise SafeVersionError(
            f"The table shares {len(seen):,} sums of its cells with tables released earlier on "
            f"the same persons, more than the {MAX_LINKED_SUMS} a safe version is protected "
            "against here; choose a coarser table or another population, or ask a reviewer."
        )
    out = []
    for key, source in seen.items():
        mask = np.zeros(x.size, dtype=bool)
        mask[list(key)] = True
        out.append(PublishedSum(mask.reshape(shape), float(x[mask].sum()), source))
    return out


def protection_levels(report: TableReport) -> tuple[np.ndarray, np.ndarray]:
    """The upper and lower protection levels of each failing cell (0 elsewhere), table shape.

    A hidden cell is protected when the intruder's largest value for it is at least the cell
    plus its upper level and the smallest at most the cell minus its lower level.

    - Sums: each failing rule asks for its own level and the cell keeps the largest (as
      τ-ARGUS does). p % rule: ``p·x1 − (X − x1 − x2)``, the amount by which the largest value
      the second-largest contributor can find for the cell must exceed it so that, subtracting
      his own ``x2``, he over-estimates the largest contribution ``x1`` by at least p % of it
      (Hundepool et al. 2012, *Statistical Disclosure Control*, §4.3; the τ-ARGUS manual's
      protection levels). (n, k) dominance: ``(x1 + … + xn)/k − X``. Any other failing rule
      (too few persons, empty, differencing): p % of the cell, τ-ARGUS's safety range for the
      minimum-frequency rule. The lower level equals the upper (τ-ARGUS's symmetric levels): an
      intruder must neither bound the largest contribution from above nor from below.
    - Counts (and statistics without additive margins, protected on their persons): a count
      f below the threshold T keeps the interval [0, T] open: upper level T − f (the intruder
      cannot conclude that fewer than T persons are in the cell) and lower level f (nor that
      anybody is). A failing count of T or more (differencing) keeps T/2 on each side.
    """
    shape = report.shape
    rules = report.rules
    severity = report.cell_severity.reshape(shape)
    primary = severity == Verdict.FAIL.severity
    st = report.stats
    if report.agg == "sum" and st.top is not None and st.total_abs is not None:
        total = report.grid(st.total_abs).astype(np.float64)
        top = st.top.reshape(*shape, -1)
        x1, x2 = top[..., 0], top[..., 1]
        tiny = max(float(total.max(initial=0.0)) * 1e-9, 1e-9)
        level = np.zeros(shape)
        fails = {
            rule: report.grid(sev) == Verdict.FAIL.severity
            for rule, sev in report.severities.items()
        }
        if "p_percent" in fails:
            need = rules.p * x1 - (total - x1 - x2)
            level = np.where(fails["p_percent"], np.maximum(level, need), level)
        if "dominance" in fails:
            topn = top[..., : rules.dominance_n].sum(axis=-1)
            need = topn / rules.dominance_k - total
            level = np.where(fails["dominance"], np.maximum(level, need), level)
        other = np.zeros(shape, dtype=bool)
        for rule, failing in fails.items():
            if rule not in ("p_percent", "dominance"):
                other |= failing
        level = np.where(other, np.maximum(level, rules.p * total), level)
        upper = np.where(primary, np.maximum(level, tiny), 0.0)
        return upper, upper.copy()
    count = report.grid(st.persons if report.agg != "count" else st.value).astype(np.float64)
    threshold = float(rules.threshold)
    small = count < threshold
    upper = np.where(primary, np.where(small, threshold - count, math.ceil(threshold / 2)), 0.0)
    lower = np.where(primary, np.where(small, count, math.ceil(threshold / 2)), 0.0)
    return upper, lower


@dataclass(frozen=True)
class Intruder:
    """What the LP intruder knows besides the published cells, the margins and linked sums.

    ``own_low``: the bound a primary cell's own intruder has on it (the second-largest
    contributor knows the cell holds at least his own value). ``known_low``: what the few
    largest contributors of every other hidden cell know of their cell (at least their own
    contributions); ``known_exact``: cells whose contributors together are all of its persons
    (a sole contributor, or the n of the dominance rule), who know its value exactly. All
    coalitions are assumed to pool what they know: conservative, one LP pair per primary cell.
    """

    own_low: np.ndarray
    known_low: np.ndarray
    known_exact: np.ndarray
    integer: bool

    @classmethod
    def nobody(cls, shape: tuple[int, int], *, integer: bool = False) -> Intruder:
        zeros = np.zeros(shape)
        return cls(zeros, zeros.copy(), np.zeros(shape, dtype=bool), integer)


def intruder_of(report: TableReport) -> Intruder:
    """The intruder of a checked table (see ``Intruder``), from its per-cell evidence."""
    shape = report.shape
    st = report.stats
    persons = report.grid(st.persons).astype(np.int64)
    if report.agg == "sum" and st.top is not None:
        n = report.rules.dominance_n
        top = st.top.reshape(*shape, -1)
        negative = (
            report.grid(st.negative).astype(bool)
            if st.negative is not None
            else np.zeros(shape, dtype=bool)
        )
        # With negative contributions nothing bounds a cell from below.
        own_low = np.where(negative, -np.inf, top[..., 1])
        known_low = np.where(negative, -np.inf, top[..., :n].sum(axis=-1))
        known_exact = (persons >= 1) & (persons <= n) & ~negative
        return Intruder(own_low, known_low, known_exact, integer=False)
    # A person in a count cell knows it is not empty, and nothing more; like the literature's
    # frequency-table intruder, ours does not use even that (pooled over every hidden cell it
    # would refuse most tables with small cells).
    return Intruder.nobody(shape, integer=report.agg == "count")


@dataclass
class Protection:
    """A suppression pattern and what the LP intruder can learn of each primary cell.

    ``low`` and ``high`` are the intruder's smallest and largest values of each primary cell
    (by ``scipy.optimize.linprog``, two LPs per primary cell, or in large tables the bounds a
    rectangle proves; NaN elsewhere); ``width`` is a
    proven lower bound of every hidden cell's interval; ``short`` marks primary cells whose
    protection levels could not be met.
    """

    hidden: np.ndarray
    partner: np.ndarray
    low: np.ndarray
    high: np.ndarray
    width: np.ndarray
    short: np.ndarray
    lps: int = 0


_MAX_REPAIRS = 6  # further partner cells tried per primary cell before giving up
_LP_CHUNK = 5000  # LP variables solved in one block-diagonal LP
_LP_BUDGET = 30_000  # LP variables up to which every primary cell is checked by LP


class _Table:
    """The published constraints of a table, and the LP intruder over its hidden cells."""

    def __init__(
        self,
        x: np.ndarray,
        intruder: Intruder,
        linked: Sequence[PublishedSum],
        margins: tuple[bool, bool],
    ) -> None:
        from scipy.sparse import csr_matrix

        self.x = x
        self.shape = x.shape
        self.lps = 0
        self.intruder = intruder
        n_rows, n_cols = x.shape
        flat = np.arange(x.size).reshape(x.shape)
        rows: list[np.ndarray] = []
        if margins[0]:
            rows += [flat[r] for r in range(n_rows)]
        if margins[1]:
            rows += [flat[:, c] for c in range(n_cols)]
        rows += [np.flatnonzero(s.cells.ravel()) for s in linked]
        lengths = [len(r) for r in rows]
        self.constraints = csr_matrix(
            (
                np.ones(sum(lengths)),
                (
                    np.repeat(np.arange(len(rows)), lengths),
                    np.concatenate(rows) if rows else np.zeros(0, np.int64),
                ),
            ),
            shape=(len(rows), x.size),
        )
        # Rectangle moves must keep each linked sum: masks as +-1 arithmetic.
        self.linked = np.stack([s.cells for s in linked]).astype(np.int8) if linked else None
        self.line = n_rows == 1 or n_cols == 1
        scale = float(np.abs(x[np.isfinite(x)]).max(initial=0.0))
        self.tol = max(scale * 1e-9, 1e-9)

    def bounds(self, hidden_idx: np.ndarray, p: int) -> np.ndarray:
        intr = self.intruder
        x = self.x.ravel()[hidden_idx]
        low = intr.known_low.ravel()[hidden_idx].copy()
        high = np.full(len(hidden_idx), np.inf)
        exact = intr.known_exact.ravel()[hidden_idx]
        low[exact], high[exact] = x[exact], x[exact]
        mine = hidden_idx == p
        low[mine], high[mine] = intr.own_low.ravel()[p], np.inf
        return np.column_stack([low, high])

    def _components(self, hidden: np.ndarray) -> tuple[np.ndarray, Any, np.ndarray]:
        """Hidden cells (flat), the constraints over them, and each one's connected part."""
        from scipy.sparse import bmat, csr_matrix
        from scipy.sparse.csgraph import connected_components

        hidden_idx = np.flatnonzero(hidden.ravel())
        a = self.constraints[:, hidden_idx].tocsr()
        a = a[np.flatnonzero(a.getnnz(axis=1))]
        n_h, n_c = len(hidden_idx), a.shape[0]
        graph = bmat([[None, a.T], [a, None]]) if n_c else csr_matrix((n_h, n_h))
        _, comp = connected_components(graph, directed=False)
        return hidden_idx, a, comp

    def lp_size(self, hidden: np.ndarray, cells: Sequence[int]) -> int:
        """How many LP variables checking ``cells`` takes (each over its connected part)."""
        hidden_idx, _, comp = self._components(hidden)
        n_h = len(hidden_idx)
        sizes = np.bincount(comp[:n_h])
        where = np.searchsorted(hidden_idx, np.asarray(cells, dtype=np.int64))
        return int(sizes[comp[where]].sum())

    def intervals(self, hidden: np.ndarray, cells: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The intruder's smallest and largest value of each flat cell in ``cells``.

        Two LPs per cell, each over the hidden cells connected to it through some constraint.
        The LPs of many cells are solved as one block-diagonal LP per direction: the blocks
        share no variable, so an optimum of their sum is an optimum of every block.
        """
        from scipy.sparse import block_diag, csr_matrix

        hidden_idx, a, comp = self._components(hidden)
        n_h = len(hidden_idx)
        position = {int(h): k for k, h in enumerate(hidden_idx)}
        x = self.x.ravel()
        blocks: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}
        parts = []
        for p in cells:
            me = comp[position[int(p)]]
            if me not in blocks:
                keep = np.flatnonzero(comp[:n_h] == me)
                rows = np.flatnonzero(comp[n_h:] == me)
                sub = a[rows][:, keep]
                members = hidden_idx[keep]
                blocks[me] = (sub, members, sub @ x[members])
            sub, members, b = blocks[me]
            parts.append((int(p), sub, members, b))
        low = np.empty(len(parts))
        high = np.empty(len(parts))
        start = 0
        while start < len(parts):
            # Chunks keep one LP to a size HiGHS solves in well under a second.
            stop, size = start, 0
            while stop < len(parts) and (stop == start or size + len(parts[stop][2]) <= _LP_CHUNK):
                size += len(parts[stop][2])
                stop += 1
            chunk = parts[start:stop]
            lo, hi = self._solve(chunk, block_diag, csr_matrix)
            if lo is None:  # some cell is unbounded on a side: solve them one by one
                for k, part in enumerate(chunk):
                    low[start + k], high[start + k] = self._solve([part], block_diag, csr_matrix)
            else:
                low[start:stop], high[start:stop] = lo, hi
            start = stop
        if self.intruder.integer:
            low, high = np.ceil(low - 1e-7), np.floor(high + 1e-7)
        self.lps += 2 * len(parts)
        return low, high

    def _solve(self, chunk: list[Any], block_diag: Any, csr_matrix: Any) -> tuple[Any, Any]:
        from scipy.optimize import linprog

        a = block_diag([sub for _, sub, _, _ in chunk], format="csr")
        b = np.concatenate([rhs for _, _, _, rhs in chunk])
        bounds = np.vstack([self.bounds(members, p) for p, _, members, _ in chunk])
        sizes = [len(members) for _, _, members, _ in chunk]
        where = np.cumsum([0, *sizes[:-1]]) + [
            int(np.flatnonzero(members == p)[0]) for p, _, members, _ in chunk
        ]
        objective = np.zeros(sum(sizes))
        objective[where] = 1.0
        out = []
        for sign in (1.0, -1.0):
            res = linprog(
                sign * objective,
                A_eq=a if a.shape[0] else None,
                b_eq=b if a.shape[0] else None,
                bounds=bounds,
                method="highs",
            )
            if res.status == 3:  # unbounded on this side
                if len(chunk) > 1:
                    return None, None
                out.append(np.array([-sign * np.inf]))
            elif res.status == 0:
                out.append(res.x[where])
            else:  # cannot happen for a true table: count the cells as disclosed
                out.append(self.x.ravel()[[p for p, _, _, _ in chunk]])
        low, high = out
        return low, high

    def moves(
        self, hidden: np.ndarray, p: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every rectangle through ``p`` (or pair, in a one-line table) the intruder allows.

        Returns (inc, dec, cost, valid) over partner corners (k, l): moving d along the
        rectangle keeps every margin and linked sum, so p can rise by ``inc`` and fall by
        ``dec`` without leaving the intruder's feasible set.
        """
        i, j = p
        x, intr = self.x, self.intruder
        capacity = np.where(intr.known_exact, 0.0, x - intr.known_low)
        own = x[i, j] - intr.own_low[i, j]
        total = float(np.abs(x).sum()) + 1.0
        cost_cell = np.where(hidden, 0.0, 1.0 + np.abs(x) / total)
        if self.line:
            inc = capacity.copy()
            dec = np.full(x.shape, own)
            cost = cost_cell.copy()
            valid = ~intr.known_exact
            valid[i, j] = False
            if self.linked is not None:
                valid &= (self.linked == self.linked[:, i, j][:, None, None]).all(axis=0)
            return inc, dec, cost, valid
        inc = np.minimum(capacity[:, j][:, None], capacity[i, :][None, :])
        dec = np.minimum(own, capacity)
        cost = cost_cell[:, j][:, None] + cost_cell[i, :][None, :] + cost_cell
        exact = intr.known_exact
        valid = ~(exact[:, j][:, None] | exact[i, :][None, :] | exact)
        valid[i, :] = False
        valid[:, j] = False
        if self.linked is not None:
            m = self.linked
            change = m[:, i, j][:, None, None] - m[:, :, j][:, :, None] - m[:, i, :][:, None, :]
            valid &= ((change + m) == 0).all(axis=0)
        return inc, dec, cost, valid

    def cells_of(self, p: tuple[int, int], corner: tuple[int, int]) -> list[tuple[int, int]]:
        (i, j), (k, l_) = p, corner
        if self.line:
            return [(i, j), (k, l_)]
        return [(i, j), (k, j), (i, l_), (k, l_)]


def _pick(
    inc: np.ndarray,
    dec: np.ndarray,
    cost: np.ndarray,
    valid: np.ndarray,
    need_up: float,
    need_down: float,
) -> tuple[tuple[int, int] | None, float]:
    """The cheapest move meeting both needs, else the one going furthest toward them."""
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(need_up > 0, inc / need_up, np.inf)
        down = np.where(need_down > 0, dec / need_down, np.inf)
    score = np.minimum(np.where(valid, np.minimum(up, down), -np.inf), 1e300)
    if not (score > 0).any():
        return None, 0.0
    enough = score >= 1.0
    if enough.any():
        pick = np.where(enough, cost, np.inf)
        best = np.flatnonzero(pick == pick.min())
        flat = best[np.argmax(score.ravel()[best])]
    else:
        best = np.flatnonzero(score == score.max())
        flat = best[np.argmin(cost.ravel()[best])]
    k, l_ = np.unravel_index(flat, inc.shape)
    return (int(k), int(l_)), float(np.minimum(inc[k, l_], 1e300) + np.minimum(dec[k, l_], 1e300))


def protect(
    x: np.ndarray,
    primary: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
    *,
    intruder: Intruder | None = None,
    linked: Sequence[PublishedSum] = (),
    margins: tuple[bool, bool] = (True, True),
) -> Protection:
    """Hide cells until every primary cell keeps its upper and lower protection levels.

    The intruder knows every published cell, the row totals (``margins[0]``), the column totals
    (``margins[1]``), the ``linked`` sums already released and what ``intruder`` says; for
    each primary cell p, two LPs give the smallest and largest value p can take, and the
    pattern is protected when ``high >= x + upper`` and ``low <= x - lower``. Partners are
    added a rectangle at a time (the cheapest that the intruder's knowledge leaves movable),
    and again wherever the LPs show a shortfall.

    Every primary cell gets its LPs while they total at most ``_LP_BUDGET`` variables (tables
    of a few hundred cells); in larger tables a cell whose own rectangles already reach both
    levels is not solved again: a rectangle the intruder cannot rule out is a feasible point
    of his LP, so it proves the bound (and ``low``/``high`` are then those proven bounds).
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    shape = x.shape
    intruder = intruder or Intruder.nobody(shape)
    table = _Table(x, intruder, linked, margins)
    hidden = primary.copy()
    partner = np.zeros((*shape, 2), dtype=np.int64)
    width = np.zeros(shape)
    low = np.full(shape, np.nan)
    high = np.full(shape, np.nan)
    short = np.zeros(shape, dtype=bool)
    order = sorted(zip(*np.nonzero(primary), strict=True), key=lambda rc: -(upper[rc] + lower[rc]))
    used: dict[tuple[int, int], set[tuple[int, int]]] = {}
    # The best rise and fall of each primary cell along one move: a feasible point of the
    # intruder's LP, so a proof that his interval reaches at least that far.
    proven_up = np.zeros(shape)
    proven_down = np.zeros(shape)

    def add_move(p: tuple[int, int], need_up: float, need_down: float) -> bool:
        inc, dec, cost, valid = table.moves(hidden, p)
        for tried in used.setdefault(p, set()):
            valid[tried] = False
        corner, got = _pick(inc, dec, cost, valid, need_up, need_down)
        if corner is None:
            return False
        used[p].add(corner)
        proven_up[p] = max(proven_up[p], inc[corner])
        proven_down[p] = max(proven_down[p], dec[corner])
        for rc in table.cells_of(p, corner):
            if not hidden[rc]:
                hidden[rc] = True
                partner[rc] = p
            width[rc] = max(width[rc], got)
        return True

    def meets(p: Any, lo: Any, hi: Any) -> Any:
        return (x[p] + upper[p] - hi <= table.tol) & (lo - (x[p] - lower[p]) <= table.tol)

    for rc in order:
        i, j = int(rc[0]), int(rc[1])
        add_move((i, j), upper[i, j], lower[i, j])
    flats = [int(i) * shape[1] + int(j) for i, j in order]
    low[primary] = (x - proven_down)[primary]
    high[primary] = (x + proven_up)[primary]
    # Every primary cell is checked by its two LPs while that stays cheap (tables of a few
    # hundred cells); beyond, only those its moves do not already prove protected.
    lp_all = bool(flats) and table.lp_size(hidden, flats) <= _LP_BUDGET
    if flats and not lp_all:
        proven = meets(np.unravel_index(flats, shape), low.ravel()[flats], high.ravel()[flats])
        flats = [f for f, done in zip(flats, proven, strict=True) if not done]
    if flats:
        lo_all, hi_all = table.intervals(hidden, flats)
        low.ravel()[flats], high.ravel()[flats] = lo_all, hi_all
    # Repairs in rounds: one more move for every cell still short, then one batch of LPs.
    pending = [(int(i), int(j)) for i, j in order]
    pending = [p for p in pending if not meets(p, low[p], high[p])]
    for _ in range(_MAX_REPAIRS):
        moved = []
        for p in pending:
            up_short = max(x[p] + upper[p] - high[p], 0.0)
            down_short = max(low[p] - (x[p] - lower[p]), 0.0)
            if add_move(p, up_short, down_short):
                moved.append(p)
            else:
                short[p] = True
        if not moved:
            pending = []
            break
        flats = [i * shape[1] + j for i, j in moved]
        lo_all, hi_all = table.intervals(hidden, flats)
        low.ravel()[flats], high.ravel()[flats] = lo_all, hi_all
        pending = [p for p in moved if not meets(p, low[p], high[p])]
    for p in pending:
        short[p] = True
    if short.any():
        # Last resort: hide every cell. If that protects the cell, the pattern is every cell
        # (which the caller refuses to publish); if not, nothing can.
        everything = np.ones(shape, dtype=bool)
        flats = [int(r) * shape[1] + int(c) for r, c in np.argwhere(short)]
        if len(flats) * x.size > _LP_BUDGET:
            flats = flats[: max(_LP_BUDGET // x.size, 1)]  # a sample: all must pass anyway
        lo_all, hi_all = table.intervals(everything, flats)
        fixed = meets(np.unravel_index(flats, shape), lo_all, hi_all)
        if fixed.all() and len(flats) == int(short.sum()):
            hidden[:] = True
            short[:] = False
            low.ravel()[flats], high.ravel()[flats] = lo_all, hi_all
    spread = high - low
    width = np.where(primary, np.maximum(width, np.where(np.isnan(spread), 0.0, spread)), width)
    # Hiding more cells only widens every interval, so cells checked early stay protected.
    return Protection(hidden, partner, low, high, width, short, table.lps)


_EVERY_CELL = (
    "No safe version can be made: every cell would have to be hidden; merge categories or ask "
    "for a coarser table."
)


def _refuse_empty_lines(
    report: TableReport, primary: np.ndarray, margins: tuple[bool, bool]
) -> None:
    """A failing cell in a row or column whose published total is 0 is told by that total."""
    persons = report.grid(report.stats.persons)
    for axis, published in ((0, margins[0]), (1, margins[1])):
        if not published:
            continue
        empty = (persons.sum(axis=1 - axis) == 0) & (primary.any(axis=1 - axis))
        if empty.any():
            line = int(np.flatnonzero(empty)[0])
            if axis == 0:
                label = tuple(zip(report.index, report.row_labels[line], strict=True))
            else:
                label = tuple(zip(report.columns, report.col_labels[line], strict=True))
            raise SafeVersionError(
                f"No safe version can be made: nobody is in {describe_label(label)}, and its "
                "published total of 0 tells every cell of it, hidden or not; leave that "
                "category out of the population or ask a reviewer."
            )


# -- suppression ----------------------------------------------------------------------------
def _suppress(report: TableReport, linked: Sequence[PublishedSum]) -> SafeTable:
    shape = report.shape
    value = report.grid(report.stats.value)
    additive = report.agg in ("count", "sum")
    if additive:
        x = np.nan_to_num(value.astype(np.float64), nan=0.0)
    else:
        # No additive margins: protect the pattern as if the persons table were published with
        # its totals, which is the stricter assumption.
        x = report.grid(report.stats.persons).astype(np.float64)
        if linked:
            raise SafeVersionError(
                f"A table of {report.agg} has no sums to link with earlier releases; protect "
                "it on its own."
            )
    for s in linked:
        if s.cells.shape != shape:
            raise SafeVersionError(
                f"The earlier release {s.source!r} is laid out for another table; build its "
                "sums with linked_sums on this table."
            )
        if abs(float(x[s.cells].sum()) - s.value) > max(1e-6 * abs(s.value), 1e-6):
            raise SafeVersionError(
                f"A cell of the earlier release {s.source!r} is {s.value:g}, not the sum of "
                "this table's cells under it: it was not computed on the same persons, so the "
                "two cannot be protected together; ask a reviewer."
            )
    severity = report.cell_severity.reshape(shape)
    primary = severity == Verdict.FAIL.severity
    n_primary = int(primary.sum())
    if n_primary > MAX_PRIMARY_CELLS:
        # Two LPs per failing cell: past a few hundred, a researcher waits minutes for a table
        # that would be mostly hidden anyway. Say so at once.
        raise SafeVersionError(
            f"{n_primary} of the table's {report.n_cells} cells fail, more than the "
            f"{MAX_PRIMARY_CELLS} a safe version by suppression protects; merge categories, "
            "choose a coarser table, or round counts (method 'round')."
        )
    upper, lower = protection_levels(report)
    intruder = intruder_of(report)
    n_rows, n_cols = shape
    margins = (n_cols > 1, n_rows > 1)
    if additive:
        _refuse_empty_lines(report, primary, margins)
    if primary.all() and primary.size > 1:
        raise SafeVersionError(_EVERY_CELL)
    result = protect(x, primary, upper, lower, intruder=intruder, linked=linked, margins=margins)
    hidden = result.hidden
    if result.short.any():
        r, c = (int(v) for v in np.argwhere(result.short)[0])
        label = describe_label(report.label(r * n_cols + c))
        raise SafeVersionError(
            f"No safe version can be made: cell ({label}) cannot be hidden well enough, since "
            "whatever else is hidden the published totals"
            + (" and earlier releases" if linked else "")
            + " let it be estimated too closely; merge categories or ask a reviewer."
        )
    if primary.any() and hidden.all() and hidden.size > 1:
        raise SafeVersionError(_EVERY_CELL)
    published = np.where(hidden, np.nan, value.astype(np.float64))
    against = "the row and column totals" + (
        " and " + ", ".join(sorted({s.source for s in linked})) if linked else ""
    )
    changes = []
    for r, c in zip(*np.nonzero(hidden), strict=True):
        i = int(r) * n_cols + int(c)
        cell = report.cell(i)
        if primary[r, c]:
            reasons = "; ".join(o.sentence for o in cell.failing if o.verdict == Verdict.FAIL)
            kind, why = "primary", f"suppressed because it fails: {reasons}"
        else:
            pr, pc = result.partner[r, c]
            protected = describe_label(report.label(int(pr) * n_cols + int(pc)))
            kind = "secondary"
            why = (
                f"suppressed so that the hidden cell ({protected}) cannot be recomputed, or "
                f"estimated too closely, from {against}."
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
    review = severity == Verdict.REVIEW.severity
    if review.any():
        status = Verdict.REVIEW
        notes.append(
            f"{int(review.sum())} cells need a reviewer's decision (e.g. full cells or negative "
            "values); suppression leaves them as they are."
        )
    if additive:
        row_totals, col_totals = x.sum(axis=1), x.sum(axis=0)
        grand: float | None = float(x.sum())
        notes.append(
            "The totals are the true totals; given them"
            + (" and the earlier releases" if linked else "")
            + ", every hidden failing cell keeps its protection levels against an intruder "
            "who knows the published cells and his own contributions (checked by linear "
            "programming)."
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
        required=upper + lower,
        protection=np.where(hidden, result.width, 0.0),
        status=status,
        notes=notes,
        upper_level=upper,
        lower_level=lower,
        intruder_low=result.low,
        intruder_high=result.high,
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
