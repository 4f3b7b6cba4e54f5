"""The audit expert: does a new output, with everything already released, pin down a small group?

Per linear space (counts; sums of one variable), the new cells are added to the holder's history
and every group of persons smaller than the threshold whose count (or total) became a linear
combination of released cells is found: single atoms by the reduced basis, unions of atoms by
an exact integer program over the null space. Findings name the releases involved, never a
count or a membership.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse.csgraph import connected_components

from spe.sdc.audit.bounds import BOUNDS_SECONDS, Bounded, count_bounds, sum_bounds
from spe.sdc.audit.history import COUNT_SPACE, History, Merge, NewCell, ReleaseInfo
from spe.sdc.audit.rowspace import P, freivalds_zero, null_space
from spe.sdc.rules import Verdict

# A union of atoms is searched exactly up to this many candidate atoms per connected component;
# beyond it the audit does not guess and asks a reviewer.
MAX_GROUP_CANDIDATES = 3000
MAX_CUTS = 5  # groups already determined before this output, skipped per component
MAX_NAMED = 3  # earlier releases named in a sentence
MAX_CERTIFIED_GROUPS = 25  # groups whose releases an LP certificate names exactly
MAX_CERTIFICATE_CELLS = 4000

Contributions = Callable[[str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Finding:
    """One new cell that, with the releases named, determines a small group (or needs a look)."""

    cell_index: int
    verdict: Verdict
    space: str
    rule: str  # "small_group", "p_percent", "review"
    releases: tuple[ReleaseInfo, ...]
    sentence: str

    def to_dict(self) -> dict[str, object]:
        return {
            "cell_index": self.cell_index,
            "verdict": self.verdict.value,
            "rule": self.rule,
            "releases": [
                {"title": r.title, "released_at": r.released_at.isoformat()} for r in self.releases
            ],
            "sentence": self.sentence,
        }


@dataclass
class AuditResult:
    """The audit of one output against a holder's history: per-new-cell findings."""

    space: str
    n_cells: int
    findings: list[Finding] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> Verdict:
        if any(f.verdict == Verdict.FAIL for f in self.findings):
            return Verdict.FAIL
        if self.findings:
            return Verdict.REVIEW
        return Verdict.PASS

    @property
    def passed(self) -> bool:
        return not self.findings

    def for_cell(self, index: int) -> list[Finding]:
        return [f for f in self.findings if f.cell_index == index]

    def failing_cells(self) -> set[int]:
        return {f.cell_index for f in self.findings}

    def merged(self, other: AuditResult) -> AuditResult:
        return AuditResult(
            f"{self.space}+{other.space}",
            max(self.n_cells, other.n_cells),
            [*self.findings, *other.findings],
            {**self.figures, **{f"{other.space}.{k}": v for k, v in other.figures.items()}},
        )


# -- sentences ------------------------------------------------------------------------------
def _together(releases: Sequence[ReleaseInfo], more: bool) -> str:
    if not releases:
        return "This table on its own"
    names = [r.phrase for r in releases]
    if more:
        text = ", ".join(names) + " and other earlier releases"
    elif len(names) == 1:
        text = names[0]
    else:
        text = ", ".join(names[:-1]) + " and " + names[-1]
    return f"Together with {text}, this table"


def _what(space: str, rule: str, threshold: int, p: float) -> str:
    if space == COUNT_SPACE:
        return f"determines the number of persons in a group smaller than {threshold} persons."
    variable = space.split(":", 1)[1]
    if rule == "p_percent":
        return (
            f"determines the total {variable} of a group in which one person's value can be "
            f"estimated within {p:g} %."
        )
    return f"determines the total {variable} of a group smaller than {threshold} persons."


# -- the audit --------------------------------------------------------------------------------
@dataclass
class _Group:
    atoms: np.ndarray
    rule: str
    verdict: Verdict


def audit(
    history: History,
    new_cells: Sequence[NewCell],
    threshold: int,
    p: float = 10.0,
    *,
    contributions: Contributions | None = None,
    bounds_seconds: float = BOUNDS_SECONDS,
    value_bounds: Mapping[str, float] | None = None,
) -> AuditResult:
    """Audit ``new_cells`` (those in ``history``'s space) against everything in ``history``.

    A new cell fails when, together with the history, the output determines (as a linear
    combination of released cells) the count of a group of fewer than ``threshold`` persons,
    or in a sum space the total of such a group, or the total of a group whose largest value
    the second largest contributor could estimate within ``p`` % (``contributions(variable,
    persons)`` gives the values; without it such groups go to a reviewer). It also fails when,
    counts (and, where every value is, values) being non-negative, the released cells confine
    a group below the threshold to fewer than ``threshold`` persons, or bound a total from
    above so closely that its largest value can be estimated within ``p`` %
    (spe.sdc.audit.bounds; ``bounds_seconds`` is their time budget, past which the output goes
    to a reviewer; ``value_bounds`` maps a variable to the largest value one person may hold,
    where the dataset policy declares one, which the intruder is taken to know).
    """
    started = time.perf_counter()
    chosen = history.cells_in_space(new_cells)
    result = AuditResult(history.space, len(new_cells))
    if not chosen or threshold <= 1:
        return result
    merge = history.merge([new_cells[i].persons for i in chosen])
    ref = merge.refinement
    result.figures.update(
        atoms=float(ref.n_atoms),
        rank=float(merge.basis.rank),
        history_cells=float(history.n_cells),
    )
    nulls = null_space(merge.basis)
    old_rows = history.incidence()
    new_rows = merge.new_rows.astype(np.int64)
    valid = np.flatnonzero(ref.parent >= 0)

    def product(x: np.ndarray) -> np.ndarray:
        folded = np.zeros(history.n_atoms, dtype=np.int64)
        np.add.at(folded, ref.parent[valid], x[valid])
        return np.concatenate([old_rows @ folded, new_rows @ x])

    if not nulls.verified or not freivalds_zero(product, nulls.vectors):
        _review_all(result, history, chosen, "could not verify its arithmetic")
        return result
    groups = _determined_atoms(history, merge, threshold, p, contributions)
    groups += _determined_unions(history, merge, nulls.vectors, threshold)
    bounds_started = time.perf_counter()
    skip = {int(a) for g in groups for a in g.atoms}
    stats: dict[str, float] = {}
    if history.space == COUNT_SPACE:
        bounded = count_bounds(
            history, merge, nulls.vectors, threshold, skip, bounds_seconds, stats
        )
    elif contributions is not None:
        most = (value_bounds or {}).get(history.space[4:])
        bounded = _sum_bounds(
            history, merge, nulls.vectors, p, contributions, skip, bounds_seconds, most, stats
        )
    else:
        bounded = []
    result.figures.update({f"bounds_{k}": v for k, v in stats.items()})
    result.figures["bounds_seconds"] = time.perf_counter() - bounds_started
    for found in bounded:
        _add_bounded(result, history, chosen, found, threshold, p)
    for n, group in enumerate(groups):
        # A certificate (an LP per group) names the releases exactly; past the first few
        # groups the output fails anyway, and the releases touching the group are named.
        if n < MAX_CERTIFIED_GROUPS:
            cells, releases, more = _involved(history, merge, group.atoms)
        else:
            cells, releases, more = _touching(history, merge, group.atoms)
        if not len(cells):
            cells = np.arange(len(chosen))
        if group.rule == "review":
            sentence = (
                f"{_together(releases, more)} determines the total of a group whose "
                "contributions could not be checked here; a reviewer must look."
            )
        elif group.rule == "search_limit":
            sentence = (
                f"{_together(releases, more)} leaves too many small groups of persons to search "
                "exactly for one whose count is determined; a reviewer must look."
            )
        else:
            sentence = (
                f"{_together(releases, more)} {_what(history.space, group.rule, threshold, p)}"
            )
        for k in cells:
            result.findings.append(
                Finding(
                    cell_index=chosen[int(k)],
                    verdict=group.verdict,
                    space=history.space,
                    rule=group.rule,
                    releases=tuple(releases),
                    sentence=sentence,
                )
            )
    result.findings = _unique(result.findings)
    result.figures["seconds"] = time.perf_counter() - started
    return result


def _sum_bounds(
    history: History,
    merge: Merge,
    vectors: sp.csc_matrix,
    p: float,
    contributions: Contributions,
    skip: set[int],
    seconds: float,
    most: float | None,
    stats: dict[str, float],
) -> list[Bounded]:
    """The p % rule's upper protection level against totals bounded by non-negativity, for the
    atoms linked to the new cells (an atom that is one new cell is that cell's own p % rule)."""
    ref = merge.refinement
    values = np.asarray(contributions(history.space[4:], ref.persons), dtype=np.float64)
    if len(values) != len(ref.persons) or (values < 0).any():
        return []  # a variable that can be negative gives the intruder no such bound
    if np.isnan(values).any():
        # Some person's contribution is not known as one number (an output the server did not
        # compute, or disagreeing contributions): no bound on sums is computed (a limit).
        stats["unknown_values"] = float(np.isnan(values).sum())
        return []
    totals = np.bincount(ref.atom_of, weights=values, minlength=ref.n_atoms)
    new_cells = merge.new_rows.tocsr()
    lone = {
        int(new_cells.indices[new_cells.indptr[i]])
        for i in range(new_cells.shape[0])
        if new_cells.indptr[i + 1] - new_cells.indptr[i] == 1
    }
    keep = np.ones(ref.n_atoms, dtype=bool)
    keep[list(lone)] = False
    inside = keep[ref.atom_of]
    if not inside.any():
        return []
    atom, value = ref.atom_of[inside].astype(np.int64), values[inside]
    order = np.lexsort((-value, atom))
    atom, value = atom[order], value[order]
    first = np.flatnonzero(np.concatenate([[True], atom[1:] != atom[:-1]]))
    x1 = value[first]
    has_second = np.append(first[1:], len(atom)) - first > 1
    x2 = np.where(has_second, value[np.minimum(first + 1, len(value) - 1)], 0.0)
    ids = atom[first]
    rest = totals[ids] - x1 - x2
    need = p / 100.0 * x1 - rest
    needs = {int(a): float(n) for a, n in zip(ids, need, strict=True) if n > 0}
    upper = None if most is None else ref.sizes * float(most)
    return sum_bounds(history, merge, vectors, totals, needs, skip, seconds, upper, stats)


def _add_bounded(
    result: AuditResult,
    history: History,
    chosen: list[int],
    found: Bounded,
    threshold: int,
    p: float,
) -> None:
    named = sorted(
        {int(history.cell_release[r]) for r in found.old_cells},
        key=lambda i: history.releases[i].released_at,
    )
    releases = [history.releases[i] for i in named[:MAX_NAMED]]
    together = _together(releases, len(named) > MAX_NAMED)
    if found.rule == "count_bound":
        sentence = (
            f"{together} shows, since no count is negative, that a group has fewer than "
            f"{threshold} persons."
        )
    elif found.rule == "p_percent_bound":
        variable = history.space.split(":", 1)[1]
        sentence = (
            f"{together} bounds the total {variable} of a group, since no value is negative, "
            f"so closely that one person's value can be estimated within {p:g} %."
        )
    else:
        sentence = (
            f"{together} leaves groups whose bounds (no count or value being negative) could "
            "not all be computed in the time allowed; a reviewer must look."
        )
    cells = found.new_cells if len(found.new_cells) else np.arange(len(chosen))
    for k in cells:
        result.findings.append(
            Finding(
                cell_index=chosen[int(k)],
                verdict=found.verdict,
                space=history.space,
                rule=found.rule,
                releases=tuple(releases),
                sentence=sentence,
            )
        )


def _unique(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[int, str]] = set()
    out = []
    for f in findings:
        key = (f.cell_index, f.sentence)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _review_all(result: AuditResult, history: History, chosen: list[int], why: str) -> None:
    for i in chosen:
        result.findings.append(
            Finding(
                cell_index=i,
                verdict=Verdict.REVIEW,
                space=history.space,
                rule="review",
                releases=(),
                sentence=(
                    f"The audit of this table against earlier releases {why}; a reviewer must look."
                ),
            )
        )


def _was_determined(history: History, merge: Merge, atoms: np.ndarray) -> bool:
    """Was this group of (refined) atoms already determined by the history alone?"""
    parent = merge.refinement.parent
    if (parent[atoms] < 0).any() or history.basis.rank == 0:
        return False
    olds = np.unique(parent[atoms])
    pieces = np.bincount(parent[parent >= 0], minlength=history.n_atoms)
    if pieces[olds].sum() != len(atoms):  # only part of an earlier atom: new
        return False
    vector = np.zeros((1, history.n_atoms), dtype=np.float64)
    vector[0, olds] = 1.0
    return not history.basis.reduce(vector).any()


def _determined_atoms(
    history: History,
    merge: Merge,
    threshold: int,
    p: float,
    contributions: Contributions | None,
) -> list[_Group]:
    ref = merge.refinement
    groups: list[_Group] = []
    determined = merge.basis.determined_columns()
    is_sum = history.space != COUNT_SPACE
    new_cells = merge.new_rows.tocsr()
    lone_cells = {  # atoms that are exactly one new cell: its own p % rule already checks it
        int(new_cells.indices[new_cells.indptr[i]])
        for i in range(new_cells.shape[0])
        if new_cells.indptr[i + 1] - new_cells.indptr[i] == 1
    }
    for atom in determined:
        atom_arr = np.array([atom])
        small = ref.sizes[atom] < threshold
        if not small and not is_sum:
            continue
        if not small and int(atom) in lone_cells:
            continue
        if _was_determined(history, merge, atom_arr):
            continue
        if small:
            groups.append(_Group(atom_arr, "small_group", Verdict.FAIL))
            continue
        if contributions is None:
            groups.append(_Group(atom_arr, "review", Verdict.REVIEW))
            continue
        members = ref.persons[ref.atom_of == atom]
        values = np.sort(np.abs(np.asarray(contributions(history.space[4:], members), float)))
        if len(values) != len(members) or np.isnan(values).any():
            # a member's contribution is not known as one number: a reviewer decides
            groups.append(_Group(atom_arr, "review", Verdict.REVIEW))
            continue
        if len(values) >= 2 and values[:-2].sum() < p / 100.0 * values[-1]:
            groups.append(_Group(atom_arr, "p_percent", Verdict.FAIL))
    return groups


def _determined_unions(
    history: History, merge: Merge, vectors: sp.csc_matrix, threshold: int
) -> list[_Group]:
    """Unions of two or more small atoms, each undetermined, whose count is determined.

    A set S of atoms is determined iff its indicator is orthogonal to every null vector. Only
    atoms smaller than the threshold can be in a small S; atoms that are the only candidate in
    some null vector can never be (peeled); the rest split into independent components, each
    searched exactly by an integer program (minimise the group's size, S non-empty, S orthogonal
    to the null space).
    """
    sizes = merge.refinement.sizes
    support = np.asarray(abs(vectors).sum(axis=1)).ravel() > 0
    candidates = np.flatnonzero((sizes < threshold) & support)
    if len(candidates) < 2:
        return []
    rows = vectors[candidates].T.tocsr()  # null vectors x candidate atoms
    alive = np.ones(len(candidates), dtype=bool)
    while True:
        live = rows[:, alive] if alive.all() else rows.multiply(alive[np.newaxis, :]).tocsr()
        live.eliminate_zeros()
        per_row = np.diff(live.indptr)
        lonely = live[per_row == 1]
        drop = np.unique(lonely.indices)
        if not len(drop) or not alive[drop].any():
            break
        alive[drop] = False
    keep = np.flatnonzero(alive)
    if len(keep) < 2:
        return []
    sub = rows[:, keep].tocsr()
    sub = sub[np.diff(sub.indptr) > 0]
    # atoms linked when they share a null vector
    link = (abs(sub).T @ abs(sub)).tocsr()
    n_comp, label = connected_components(link, directed=False)
    groups: list[_Group] = []
    for comp in range(n_comp):
        members = np.flatnonzero(label == comp)
        if len(members) < 2:
            continue
        atoms = candidates[keep[members]]
        if len(members) > MAX_GROUP_CANDIDATES:
            groups.append(_Group(atoms, "search_limit", Verdict.REVIEW))
            continue
        block = sub[:, members]
        block = block[np.diff(block.tocsr().indptr) > 0].toarray().astype(np.float64)
        found = _search(block, sizes[atoms].astype(np.float64), threshold, history, merge, atoms)
        if found is not None:
            groups.append(found)
    return groups


def _search(
    block: np.ndarray,
    sizes: np.ndarray,
    threshold: int,
    history: History,
    merge: Merge,
    atoms: np.ndarray,
) -> _Group | None:
    n = len(sizes)
    constraints = [
        LinearConstraint(block, 0, 0),
        LinearConstraint(np.ones((1, n)), 1, np.inf),
        LinearConstraint(sizes[np.newaxis, :], 0, threshold - 1),
    ]
    for _ in range(MAX_CUTS + 1):
        res = milp(
            c=sizes,
            constraints=constraints,
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
        )
        if res.status == 2:  # infeasible: no small determined group here
            return None
        if res.status != 0 or res.x is None:
            return _Group(atoms, "search_limit", Verdict.REVIEW)
        chosen = np.flatnonzero(res.x > 0.5)
        group = atoms[chosen]
        if not _was_determined(history, merge, group):
            return _Group(group, "small_group", Verdict.FAIL)
        cut = np.zeros((1, n))
        cut[0, chosen] = 1
        constraints.append(LinearConstraint(cut, -np.inf, len(chosen) - 1))
    return _Group(atoms, "search_limit", Verdict.REVIEW)


def _implicated(merge: Merge, atoms: np.ndarray) -> np.ndarray:
    """New cells that removed a null vector the group's indicator was not orthogonal to."""
    width = merge.refinement.n_atoms
    indicator = np.zeros((1, width), dtype=np.float64)
    indicator[0, atoms] = 1.0
    w = merge.old_basis.reduce(indicator)[0]  # e_S . v_f for every free column f
    relevant = np.flatnonzero(w)
    if not len(relevant):
        return np.zeros(0, dtype=np.int64)
    hit = np.fmod(merge.reduced[:, relevant], P) != 0
    return np.flatnonzero(hit.any(axis=1))


def _certificate(
    history: History, merge: Merge, atoms: np.ndarray, old_cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """A sparse combination of ``old_cells`` and the new cells equal to the group's indicator:
    (earlier cells used, new cells used), or None. Sought by linear programming (least total
    weight); it only chooses what a sentence names and which new cells a finding is put on."""
    parent = merge.refinement.parent
    width = merge.refinement.n_atoms
    offsets, cell_atoms = history.expanded_cells(parent)
    expanded = sp.csr_matrix(
        (np.ones(len(cell_atoms)), cell_atoms, offsets), shape=(history.n_cells, width)
    )
    new_rows = merge.new_rows.tocsr()
    k_old, k_new = len(old_cells), new_rows.shape[0]
    a = sp.vstack([expanded[old_cells], new_rows]).T.tocsr()  # atoms x cells
    target = np.zeros(width)
    target[atoms] = 1.0
    used = np.union1d(np.unique(a.tocoo().row), atoms)
    a_used = a[used]
    # y = u - v, least total weight; earlier cells weigh a little more, so that the new
    # table's own cells are preferred where either would do
    cost = np.concatenate([np.full(k_old, 1.01), np.ones(k_new)])
    res = linprog(
        np.concatenate([cost, cost]),
        A_eq=sp.hstack([a_used, -a_used]).tocsr(),
        b_eq=target[used],
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0 or res.x is None:
        return None
    y = res.x[: k_old + k_new] - res.x[k_old + k_new :]
    nz = np.abs(y) > 1e-7
    return old_cells[np.flatnonzero(nz[:k_old])], np.flatnonzero(nz[k_old:])


def _touching(
    history: History, merge: Merge, atoms: np.ndarray
) -> tuple[np.ndarray, list[ReleaseInfo], bool]:
    """(new cells implicated, earlier releases touching the group, more?) without an LP."""
    parent = merge.refinement.parent
    heuristic = _implicated(merge, atoms)
    cells = heuristic if len(heuristic) else np.arange(merge.new_rows.shape[0])
    olds = np.unique(parent[atoms][parent[atoms] >= 0])
    named: list[int] = []
    if history.n_cells and len(olds):
        rows = np.unique(history.incidence().tocsc()[:, olds].tocoo().row)
        named = sorted(
            {int(history.cell_release[r]) for r in rows},
            key=lambda i: history.releases[i].released_at,
        )
    return cells, [history.releases[i] for i in named[:MAX_NAMED]], len(named) > MAX_NAMED


def _involved(
    history: History, merge: Merge, atoms: np.ndarray
) -> tuple[np.ndarray, list[ReleaseInfo], bool]:
    """(new cells implicated, earlier releases to name, whether more are involved)."""
    parent = merge.refinement.parent
    old = history.incidence().tocsc() if history.n_cells else None
    new_rows = merge.new_rows.tocsr()

    def touching(group: np.ndarray) -> np.ndarray:
        olds = np.unique(parent[group][parent[group] >= 0])
        if old is None or not len(olds):
            return np.zeros(0, dtype=np.int64)
        return np.unique(old[:, olds].tocoo().row).astype(np.int64)

    heuristic = _implicated(merge, atoms)
    near = np.union1d(atoms, new_rows[heuristic].indices) if len(heuristic) else atoms
    found = None
    for group in (near, np.union1d(atoms, new_rows.indices)):
        candidates = touching(group)[:MAX_CERTIFICATE_CELLS]
        found = _certificate(history, merge, atoms, candidates)
        if found is not None:
            break
    if found is None:  # no certificate found: say so, and name releases touching the group
        cells = heuristic if len(heuristic) else np.arange(new_rows.shape[0])
        named = sorted({int(history.cell_release[r]) for r in touching(atoms)})
        return cells, [history.releases[i] for i in named[:MAX_NAMED]], bool(history.releases)
    old_used, new_used = found
    named = sorted(
        {int(history.cell_release[r]) for r in old_used},
        key=lambda i: history.releases[i].released_at,
    )
    cells = new_used if len(new_used) else heuristic
    return cells, [history.releases[i] for i in named[:MAX_NAMED]], len(named) > MAX_NAMED


def audit_output(
    histories: dict[str, History],
    new_cells: Sequence[NewCell],
    threshold: int,
    p: float = 10.0,
    *,
    contributions: Contributions | None = None,
    bounds_seconds: float = BOUNDS_SECONDS,
    value_bounds: Mapping[str, float] | None = None,
) -> AuditResult:
    """All spaces of an output at once: ``histories`` maps each space to its history."""
    spaces = sorted({s for c in new_cells for s in c.spaces})
    result = AuditResult("", len(new_cells))
    for space in spaces:
        history = histories[space]
        part = audit(
            history,
            new_cells,
            threshold,
            p,
            contributions=contributions,
            bounds_seconds=bounds_seconds,
            value_bounds=value_bounds,
        )
        result.findings += part.findings
        result.figures.update({f"{space}.{k}": v for k, v in part.figures.items()})
    return result
