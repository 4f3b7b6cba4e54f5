"""Bounds an intruder draws from counts and values never being negative (issue 14, point 1).

Released cells that determine no small group exactly can still confine one: with A + B = 12,
B + C = 11 and other cells, non-negativity may leave a group of 5 between 3 and 8 persons. Per
atom below the threshold (for sums: per atom whose largest value matters) in the part of the
person space the new output is linked to, the intruder's largest value for the atom is sought
as a linear program over the released cells with every atom non-negative (HiGHS). A group whose
largest count stays below the threshold (the upper protection level of the safe versions), or a
total whose largest value lets the second-largest contributor estimate the largest within p %,
fails. Exact or conservative: an atom passes only on an integer witness (released cells, every
atom non-negative and integral, the atom at the threshold or more, checked in exact integer
arithmetic); an LP bound below the threshold fails at once (the integer bound is no larger); an
integer program decides what lies between; what the time budget does not reach goes to a
reviewer, never passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse.csgraph import connected_components

from spe.sdc.audit.history import History, Merge
from spe.sdc.rules import Verdict

# Seconds the bounds of one audit (one space) may take; past them the atoms not yet settled
# send the output to a reviewer.
BOUNDS_SECONDS = 5.0
MAX_WITNESS_VECTORS = 64  # null vectors tried per atom before an LP is solved
_TOL = 1e-7


@dataclass(frozen=True)
class Bounded:
    """A group the bounds confine (rule "count_bound" or "p_percent_bound"), or atoms the time
    budget did not reach (rule "bounds_limit"); ``old_cells``/``new_cells``: the cells whose
    LP multipliers prove the bound (history cell indices; indices among the new rows)."""

    atoms: np.ndarray
    rule: str
    verdict: Verdict
    old_cells: np.ndarray
    new_cells: np.ndarray


@dataclass
class _Problem:
    """The released cells over the refined atoms: cells x atoms (0/1, int64), the atoms'
    true values (sizes or totals), and the atoms each component of the undetermined part holds."""

    matrix: sp.csr_matrix
    values: np.ndarray
    upper: np.ndarray  # per atom: the largest value it may hold (inf: none declared)
    n_old: int
    component: np.ndarray  # per atom: its component (-1: determined, fixed)


def _problem(
    history: History,
    merge: Merge,
    values: np.ndarray,
    free: np.ndarray,
    upper: np.ndarray | None = None,
) -> _Problem:
    parent = merge.refinement.parent
    width = merge.refinement.n_atoms
    offsets, cell_atoms = history.expanded_cells(parent)
    old = sp.csr_matrix(
        (np.ones(len(cell_atoms), dtype=np.int64), cell_atoms, offsets),
        shape=(history.n_cells, width),
    )
    new = merge.new_rows.tocsr().astype(np.int64)
    matrix = sp.vstack([old, new]).tocsr()
    # Components of the undetermined atoms linked by cells: bounds never cross them, and a
    # determined atom is a constant, not a link.
    coo = matrix[:, free].tocoo()
    n_free, n_cells = len(free), matrix.shape[0]
    graph = sp.coo_matrix(
        (np.ones(len(coo.data)), (coo.col, n_free + coo.row)),
        shape=(n_free + n_cells, n_free + n_cells),
    )
    _, label = connected_components(graph, directed=False)
    component = np.full(width, -1, dtype=np.int64)
    component[free] = label[:n_free]
    if upper is None:
        upper = np.full(width, np.inf)
    return _Problem(matrix, values, upper, history.n_cells, component)


class _Clock:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _witness(
    vectors: tuple[sp.csr_matrix, sp.csc_matrix],
    problem: _Problem,
    atom: int,
    target: float,
    integral: bool,
) -> bool:
    """Walk from the true values along null vectors (each as far as non-negativity allows)
    while the atom grows; True once it reaches ``target``. Every step keeps the released cells
    (null vectors, proven) and, for counts, integrality (integer vectors, integer steps)."""
    rows, csc = vectors
    row = rows.getrow(atom)
    if not row.nnz:
        return False
    x = problem.values.astype(np.int64 if integral else np.float64).copy()
    upper = problem.upper
    columns = row.indices[np.argsort(-np.abs(row.data))][:MAX_WITNESS_VECTORS]
    for _ in range(2):
        moved = False
        for f in columns:
            col = csc.getcol(int(f))
            idx, d = col.indices, col.data.astype(x.dtype)
            sign = 1 if d[np.searchsorted(idx, atom)] > 0 else -1
            d = d * sign
            down, up = d < 0, d > 0
            room = np.concatenate([x[idx[down]] / -d[down], (upper[idx[up]] - x[idx[up]]) / d[up]])
            step = room.min()
            if not np.isfinite(step):
                return True  # the atom can grow without end
            step = np.floor(step) if integral else step
            if step <= 0:
                continue
            x[idx] = x[idx] + (step * d).astype(x.dtype)
            moved = True
            if x[atom] >= target - (0 if integral else _TOL):
                return True
        if not moved:
            break
    return False


@dataclass
class _Outcome:
    bounded: bool | None  # True: below target; False: target reachable; None: undecided
    duals: np.ndarray | None  # LP multipliers over the component's cells
    cells: np.ndarray


def _decide(problem: _Problem, atom: int, target: float, integral: bool, clock: _Clock) -> _Outcome:
    """Can the atom reach ``target`` with every released cell kept and every atom >= 0?"""
    comp = np.flatnonzero(problem.component == problem.component[atom])
    sub = problem.matrix[:, comp]
    cells = np.flatnonzero(np.diff(sub.indptr) > 0)
    a = sub[cells]
    x0 = problem.values[comp]
    b = a @ x0
    limits = np.column_stack([np.zeros(len(comp)), problem.upper[comp]])
    k = int(np.searchsorted(comp, atom))
    if clock.left() <= 0:
        return _Outcome(None, None, cells)
    cost = np.zeros(len(comp))
    cost[k] = -1.0
    res = linprog(
        cost,
        A_eq=a.astype(np.float64),
        b_eq=b.astype(np.float64),
        bounds=limits,
        method="highs",
        options={"time_limit": max(clock.left(), 0.01), "presolve": True},
    )
    if res.status == 3:  # unbounded
        return _Outcome(False, None, cells)
    if res.status != 0 or res.x is None:
        return _Outcome(None, None, cells)
    duals = np.asarray(res.eqlin.marginals, dtype=np.float64)
    top = -float(res.fun)
    if top < target - 1e-6 * max(1.0, abs(target)):
        return _Outcome(True, duals, cells)
    if not integral:
        return _Outcome(False, duals, cells)
    # Counts: the LP's vertex is an integer witness when it is integral and exact.
    guess = np.round(res.x).astype(np.int64)
    if _exact_witness(a, b, guess, k, target):
        return _Outcome(False, duals, cells)
    if clock.left() <= 0:
        return _Outcome(None, duals, cells)
    lower = np.zeros(len(comp))
    lower[k] = target
    found = milp(
        c=np.zeros(len(comp)),
        constraints=[LinearConstraint(a.astype(np.float64), b, b)],
        integrality=np.ones(len(comp)),
        bounds=Bounds(lower, np.inf),
        options={"time_limit": max(clock.left(), 0.01)},
    )
    if found.status == 2:  # no integer point reaches the target
        return _Outcome(True, duals, cells)
    if (
        found.status == 0
        and found.x is not None
        and _exact_witness(a, b, np.round(found.x).astype(np.int64), k, target)
    ):
        return _Outcome(False, duals, cells)
    return _Outcome(None, duals, cells)


def _exact_witness(a: sp.csr_matrix, b: np.ndarray, x: np.ndarray, k: int, target: float) -> bool:
    return bool((x >= 0).all() and x[k] >= target and np.array_equal(a @ x, b))


def _already(
    history: History,
    merge: Merge,
    atom: int,
    target: float,
    old_values: np.ndarray,
    *,
    whole: bool,
) -> bool:
    """Was the earlier atom this one was cut from already confined below the target by the
    history alone? Then this output adds nothing (``whole``: only when the atom is all of it,
    as for totals, whose p % level is a part's own)."""
    parent = merge.refinement.parent
    old = int(parent[atom])
    if old < 0 or history.n_cells == 0:
        return False
    if whole and int(np.count_nonzero(parent == old)) != 1:
        return False  # only part of an earlier atom: a new group
    inc = history.incidence()
    cells = np.flatnonzero(inc[:, old].toarray().ravel())
    atoms = np.unique(inc[cells].indices)
    # the earlier atom's component, grown until closed under shared cells
    while True:
        more = np.unique(inc[:, atoms].tocoo().row)
        grown = np.unique(inc[more].indices)
        if len(grown) == len(atoms):
            cells = more
            break
        atoms = grown
    if len(atoms) > 20_000:
        return False
    a = inc[cells][:, atoms]
    x0 = old_values[atoms]
    cost = np.zeros(len(atoms))
    cost[int(np.searchsorted(atoms, old))] = -1.0
    res = linprog(
        cost, A_eq=a.astype(np.float64), b_eq=(a @ x0).astype(np.float64), bounds=(0, None)
    )
    return bool(res.status == 0 and -float(res.fun) < target - 1e-6 * max(1.0, abs(target)))


def count_bounds(
    history: History,
    merge: Merge,
    vectors: sp.csc_matrix,
    threshold: int,
    skip: set[int],
    seconds: float = BOUNDS_SECONDS,
    stats: dict[str, float] | None = None,
) -> list[Bounded]:
    """Atoms below the threshold, linked to the new cells and not determined (``skip``: atoms
    already reported), that non-negativity confines below the threshold."""
    sizes = merge.refinement.sizes
    support = np.flatnonzero(np.diff(vectors.tocsr().indptr) > 0)
    small = support[sizes[support] < threshold]
    if not len(small):
        return []
    problem = _problem(history, merge, sizes, support)
    touched = np.unique(merge.new_rows.tocsr().indices)
    linked = np.unique(problem.component[touched])
    linked = linked[linked >= 0]
    candidates = small[np.isin(problem.component[small], linked)]
    candidates = np.array([a for a in candidates if int(a) not in skip], dtype=np.int64)
    # atoms of the new cells first: they are what the output is about
    first = np.isin(candidates, touched)
    candidates = np.concatenate([candidates[first], candidates[~first]])
    rows = (vectors.tocsr(), vectors.tocsc())
    stats = _stats(stats, len(candidates))
    clock = _Clock(seconds)
    out: list[Bounded] = []
    for n, atom in enumerate(candidates):
        atom = int(atom)
        if clock.left() <= 0:
            rest = candidates[n:]
            out.append(_limit(problem, rest))
            break
        if _witness(rows, problem, atom, threshold, integral=True):
            stats["witnessed"] += 1
            continue
        stats["lps"] += 1
        outcome = _decide(problem, atom, threshold, True, clock)
        if outcome.bounded is False:
            continue
        if outcome.bounded is None:
            out.append(_limit(problem, candidates[n:]))
            break
        # a part of a group already known to be small is no news: it is smaller still
        if _already(history, merge, atom, threshold, history.sizes.astype(float), whole=False):
            continue
        out.append(_found(problem, atom, "count_bound", outcome))
    return out


def sum_bounds(
    history: History,
    merge: Merge,
    vectors: sp.csc_matrix,
    totals: np.ndarray,
    needs: dict[int, float],
    skip: set[int],
    seconds: float = BOUNDS_SECONDS,
    upper: np.ndarray | None = None,
    stats: dict[str, float] | None = None,
) -> list[Bounded]:
    """Atoms whose total the second-largest contributor must not see bounded from above by
    less than ``needs[atom]`` over the true total (the p % rule's upper protection level),
    with every atom's total non-negative (``totals``: the true totals, all >= 0) and at most
    ``upper`` (declared maxima; none if not given)."""
    candidates = np.array(
        sorted(a for a, need in needs.items() if need > 0 and a not in skip), dtype=np.int64
    )
    rows = (vectors.tocsr(), vectors.tocsc())
    support = np.flatnonzero(np.diff(rows[0].indptr) > 0)
    candidates = candidates[np.isin(candidates, support)]
    if not len(candidates):
        return []
    problem = _problem(history, merge, totals, support, upper)
    linked = np.unique(problem.component[np.unique(merge.new_rows.tocsr().indices)])
    candidates = candidates[np.isin(problem.component[candidates], linked[linked >= 0])]
    stats = _stats(stats, len(candidates))
    parent = merge.refinement.parent
    valid = parent >= 0
    old_totals = np.bincount(parent[valid], weights=totals[valid], minlength=history.n_atoms)
    clock = _Clock(seconds)
    out: list[Bounded] = []
    for n, atom in enumerate(candidates):
        atom = int(atom)
        target = float(totals[atom]) + needs[atom]
        if clock.left() <= 0:
            out.append(_limit(problem, candidates[n:]))
            break
        if _witness(rows, problem, atom, target, integral=False):
            stats["witnessed"] += 1
            continue
        stats["lps"] += 1
        outcome = _decide(problem, atom, target, False, clock)
        if outcome.bounded is False:
            continue
        if outcome.bounded is None:
            out.append(_limit(problem, candidates[n:]))
            break
        if _already(history, merge, atom, target, old_totals, whole=True):
            continue
        out.append(_found(problem, atom, "p_percent_bound", outcome))
    return out


def _stats(stats: dict[str, float] | None, candidates: int) -> dict[str, float]:
    stats = {} if stats is None else stats
    stats.update(candidates=float(candidates), witnessed=0.0, lps=0.0)
    return stats


def _found(problem: _Problem, atom: int, rule: str, outcome: _Outcome) -> Bounded:
    cells = outcome.cells
    if outcome.duals is not None:
        used = cells[np.abs(outcome.duals) > 1e-9]
        if len(used):
            cells = used
    return Bounded(
        np.array([atom]),
        rule,
        Verdict.FAIL,
        cells[cells < problem.n_old],
        cells[cells >= problem.n_old] - problem.n_old,
    )


def _limit(problem: _Problem, atoms: np.ndarray) -> Bounded:
    cols = problem.matrix[:, atoms].tocoo().row
    cells = np.unique(cols)
    return Bounded(
        np.asarray(atoms, dtype=np.int64),
        "bounds_limit",
        Verdict.REVIEW,
        cells[cells < problem.n_old],
        cells[cells >= problem.n_old] - problem.n_old,
    )
