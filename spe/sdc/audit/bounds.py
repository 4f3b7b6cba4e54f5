"""Bounds an intruder draws from counts and values never being negative (issue 14, point 1).

Released cells that determine no small group exactly can still confine one: with D+E, A+C+D+E,
A+B+E and C+E released (26, 55, 11 and 26 persons), a group A of 6 lies between 3 and 7. Per
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
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse.csgraph import connected_components

from spe.sdc.audit.history import History, Merge
from spe.sdc.rules import Verdict

# Seconds the bounds of one audit (one space) may take; past them the atoms not yet settled
# send the output to a reviewer.
BOUNDS_SECONDS = 5.0
SPREAD_ROUNDS = 1  # LPs per component that try to witness many atoms at once
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


class _Maximiser:
    """HiGHS kept warm for one component: the same cells and limits, a new objective per
    question (a re-solve from the last basis takes milliseconds where a fresh LP through
    scipy's linprog took tens of them)."""

    def __init__(self, a: sp.csr_matrix, b: np.ndarray, upper: np.ndarray) -> None:
        import highspy  # the control plane's: a workspace's environment never audits

        self.hs = highspy
        csc = a.tocsc().astype(np.float64)
        n = a.shape[1]
        self.columns = np.arange(n, dtype=np.int32)
        lp = highspy.HighsLp()
        lp.num_col_ = n
        lp.num_row_ = a.shape[0]
        lp.sense_ = highspy.ObjSense.kMaximize
        lp.col_cost_ = np.zeros(n)
        lp.col_lower_ = np.zeros(n)
        lp.col_upper_ = np.where(np.isinf(upper), highspy.kHighsInf, upper)
        lp.row_lower_ = b.astype(np.float64)
        lp.row_upper_ = b.astype(np.float64)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
        lp.a_matrix_.index_ = csc.indices.astype(np.int32)
        lp.a_matrix_.value_ = csc.data
        self.highs = highspy.Highs()
        self.highs.setOptionValue("output_flag", False)
        self.highs.passModel(lp)

    def maximise(
        self, cost: np.ndarray, seconds: float
    ) -> tuple[float, np.ndarray | None, np.ndarray | None] | None:
        """(largest value, a point reaching it, row multipliers); inf if unbounded; None if
        HiGHS did not finish (time, numerics)."""
        highspy = self.hs
        self.highs.changeColsCost(len(self.columns), self.columns, cost.astype(np.float64))
        self.highs.setOptionValue("time_limit", max(seconds, 0.01))
        self.highs.run()
        status = self.highs.getModelStatus()
        if status == highspy.HighsModelStatus.kUnbounded:
            return np.inf, None, None
        if status != highspy.HighsModelStatus.kOptimal:
            return None
        solution = self.highs.getSolution()
        return (
            float(self.highs.getInfo().objective_function_value),
            np.asarray(solution.col_value, dtype=np.float64),
            np.asarray(solution.row_dual, dtype=np.float64),
        )


@dataclass
class _Problem:
    """The released cells over the refined atoms: cells x atoms (0/1, int64), the atoms'
    true values (sizes or totals), and the atoms each component of the undetermined part holds."""

    matrix: sp.csr_matrix
    values: np.ndarray
    upper: np.ndarray  # per atom: the largest value it may hold (inf: none declared)
    n_old: int
    component: np.ndarray  # per atom: its component (-1: determined, fixed)
    cache: dict[int, tuple[np.ndarray, sp.csr_matrix, np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )
    solvers: dict[int, _Maximiser] = field(default_factory=dict)

    def solver(self, atom: int) -> _Maximiser:
        label = int(self.component[atom])
        if label not in self.solvers:
            comp, a, b, _ = _component(self, atom)
            self.solvers[label] = _Maximiser(a, b, self.upper[comp])
        return self.solvers[label]


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


@dataclass
class _Outcome:
    bounded: bool | None  # True: below target; False: target reachable; None: undecided
    duals: np.ndarray | None  # LP multipliers over the component's cells
    cells: np.ndarray
    point: np.ndarray | None = None  # a checked point of the component's atoms, if found
    atoms: np.ndarray | None = None  # the component's atoms


def _spread(
    problem: _Problem, targets: np.ndarray, candidates: np.ndarray, integral: bool, clock: _Clock
) -> np.ndarray:
    """Candidates witnessed a few LPs per component: the released cells with every atom in its
    limits, maximising the sum of the candidates not yet witnessed. At a vertex that keeps the
    cells exactly (for counts: an integer point, checked in integers), every candidate at its
    target is witnessed; rounds go on while they witness more."""
    witnessed = np.zeros(len(problem.values), dtype=bool)
    labels = problem.component[candidates]
    for label in np.unique(labels):
        comp, a, b, _ = _component(problem, int(candidates[labels == label][0]))
        chosen = np.flatnonzero(np.isin(comp, candidates))
        for _ in range(SPREAD_ROUNDS):
            left = chosen[~witnessed[comp[chosen]]]
            if not len(left) or clock.left() <= 0:
                break
            cost = np.zeros(len(comp))
            cost[left] = 1.0
            found = problem.solver(int(comp[0])).maximise(cost, clock.left())
            if found is None or found[1] is None:
                break
            point = _checked_point(a, b, found[1], problem.upper[comp], integral)
            if point is None:
                break
            reached = point >= targets[comp] - (0 if integral else _TOL)
            if not (reached[left]).any():
                break
            witnessed[comp] |= reached
    return witnessed


def _component(
    problem: _Problem, atom: int
) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray, np.ndarray]:
    """(atoms, cells x atoms, cell values, cells) of the component holding ``atom``."""
    label = int(problem.component[atom])
    if label not in problem.cache:
        comp = np.flatnonzero(problem.component == label)
        sub = problem.matrix[:, comp]
        cells = np.flatnonzero(np.diff(sub.indptr) > 0)
        # A cell released again (or by another project) is the same constraint: keep its first
        # release, which is also the one a reason names.
        rows = sub[cells]
        rows.sort_indices()
        first: dict[bytes, int] = {}
        for i in range(rows.shape[0]):
            first.setdefault(rows.indices[rows.indptr[i] : rows.indptr[i + 1]].tobytes(), i)
        cells = cells[np.fromiter(first.values(), dtype=np.int64, count=len(first))]
        a = sub[cells]
        problem.cache[label] = (comp, a, a @ problem.values[comp], cells)
    return problem.cache[label]


def _checked_point(
    a: sp.csr_matrix, b: np.ndarray, x: np.ndarray, upper: np.ndarray, integral: bool
) -> np.ndarray | None:
    """``x`` if it keeps the cells: for counts exactly, in integers; for totals to within a
    relative 1e-9 (values are real numbers: a point that close is one an intruder must allow)."""
    if integral:
        guess = np.round(x).astype(np.int64)
        ok = (guess >= 0).all() and np.array_equal(a @ guess, b)
        return guess if ok else None
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    if (x < -1e-9 * scale).any() or (x > upper + 1e-9 * scale).any():
        return None
    if np.abs(a @ x - b).max(initial=0.0) > 1e-9 * scale:
        return None
    return x


def _decide(problem: _Problem, atom: int, target: float, integral: bool, clock: _Clock) -> _Outcome:
    """Can the atom reach ``target`` with every released cell kept and every atom >= 0?"""
    comp, a, b, cells = _component(problem, atom)
    k = int(np.searchsorted(comp, atom))
    if clock.left() <= 0:
        return _Outcome(None, None, cells)
    cost = np.zeros(len(comp))
    cost[k] = 1.0
    found = problem.solver(atom).maximise(cost, clock.left())
    if found is None:
        return _Outcome(None, None, cells)
    top, x, duals = found
    if x is None:  # unbounded
        return _Outcome(False, None, cells)
    if top < target - 1e-6 * max(1.0, abs(target)):
        return _Outcome(True, duals, cells)
    point = _checked_point(a, b, x, problem.upper[comp], integral)
    if not integral:
        return _Outcome(False, duals, cells, point, comp)
    # Counts: the LP's vertex is an integer witness when it is integral and exact.
    if point is not None and point[k] >= target:
        return _Outcome(False, duals, cells, point, comp)
    if clock.left() <= 0:
        return _Outcome(None, duals, cells)
    lower = np.zeros(len(comp))
    lower[k] = target
    search = milp(
        c=np.zeros(len(comp)),
        constraints=[LinearConstraint(a.astype(np.float64), b, b)],
        integrality=np.ones(len(comp)),
        bounds=Bounds(lower, np.inf),
        options={"time_limit": max(clock.left(), 0.01)},
    )
    if search.status == 2:  # no integer point reaches the target
        return _Outcome(True, duals, cells)
    if search.status == 0 and search.x is not None:
        point = _checked_point(a, b, search.x, problem.upper[comp], integral)
        if point is not None and point[k] >= target:
            return _Outcome(False, duals, cells, point, comp)
    return _Outcome(None, duals, cells)


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
        cost,
        A_eq=a.astype(np.float64),
        b_eq=(a @ x0).astype(np.float64),
        bounds=(0, None),
        options={"time_limit": 10.0},  # unsettled: reported as new, the conservative side
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
    stats = _stats(stats, len(candidates))
    clock = _Clock(seconds)
    targets = np.full(len(sizes), float(threshold))
    witnessed = _spread(problem, targets, candidates, True, clock)
    out: list[Bounded] = []
    for n, atom in enumerate(candidates):
        atom = int(atom)
        if witnessed[atom]:
            stats["witnessed"] += 1
            continue
        if clock.left() <= 0:
            out.append(_limit(problem, candidates[n:][~witnessed[candidates[n:]]]))
            break
        stats["lps"] += 1
        outcome = _decide(problem, atom, threshold, True, clock)
        if outcome.point is not None and outcome.atoms is not None:
            witnessed[outcome.atoms] |= outcome.point >= threshold
        if outcome.bounded is False:
            continue
        if outcome.bounded is None:
            out.append(_limit(problem, candidates[n:][~witnessed[candidates[n:]]]))
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
    support = np.flatnonzero(np.diff(vectors.tocsr().indptr) > 0)
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
    targets = np.full(len(totals), np.inf)
    targets[candidates] = [float(totals[a]) + needs[int(a)] for a in candidates]
    witnessed = _spread(problem, targets, candidates, False, clock)
    out: list[Bounded] = []
    for n, atom in enumerate(candidates):
        atom = int(atom)
        target = float(targets[atom])
        if witnessed[atom]:
            stats["witnessed"] += 1
            continue
        if clock.left() <= 0:
            out.append(_limit(problem, candidates[n:][~witnessed[candidates[n:]]]))
            break
        stats["lps"] += 1
        outcome = _decide(problem, atom, target, False, clock)
        if outcome.point is not None and outcome.atoms is not None:
            witnessed[outcome.atoms] |= outcome.point >= targets[outcome.atoms] - _TOL
        if outcome.bounded is False:
            continue
        if outcome.bounded is None:
            out.append(_limit(problem, candidates[n:][~witnessed[candidates[n:]]]))
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
