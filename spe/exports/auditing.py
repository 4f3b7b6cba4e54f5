"""The cumulative disclosure audit of an export: each output's cells as linear statistics in the
holder's person space, audited against everything the holder has released from any project
(spe.sdc.audit), and recorded in the same transaction as the release.

The check computes every table on evidence whose person column has been mapped to the holder's
person space (spe.projects.extracts.person_space_of), so the persons behind a cell are the same
numbers whichever project released it.

Sums and means: a plan output's cells carry what each person contributed (the server computed
them, spe.exports.checking), so a total that releases together determine is checked by the
p % rule on the real values, the holder's released values read from their sealed store. A
workspace-computed output's cells carry none (its numbers are claims): such a total goes to a
reviewer, which the output reaches anyway, since nothing the workspace computed leaves alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Earlier:
    """An output of the same request checked before this one: it counts as released."""

    name: str
    cells: list[Any]


def audit(
    holder: str,
    request_id: str,
    project: str,
    title: str,
    cells: Sequence[Any],
    earlier: Sequence[Earlier],
    rules: Any,
) -> Any:
    """Audit ``cells`` against the holder's releases and this request's earlier outputs."""
    from spe.db import readonly
    from spe.sdc.audit import (
        ReleaseInfo,
        audit_output,
        contributions_of,
        load_histories,
        load_value_maps,
    )

    if not cells:
        return None
    with readonly() as session:
        histories = load_histories(session, holder, cells)
        values = load_value_maps(session, holder, cells)
    if any(h.n_atoms > MAX_ATOMS for h in histories.values()):
        return _too_large(cells, histories)
    now = dt.datetime.now(dt.UTC)
    for before in earlier:
        info = ReleaseInfo(request_id, project, f"{title}: {before.name}", now, before.name)
        for space, history in list(histories.items()):
            histories[space] = history.extended(info, before.cells)
    known = [*(c for before in earlier for c in before.cells), *cells]
    return audit_output(
        histories,
        cells,
        rules.threshold,
        rules.p_percent,
        contributions=contributions_of(values, known),
    )


# The audit's cost grows with the square of the atoms (a dense basis): past this many, an
# output goes to a reviewer instead of waiting (never passes unaudited).
MAX_ATOMS = 50_000


def _too_large(cells: Sequence[Any], histories: dict[str, Any]) -> Any:
    """Every cell to a reviewer, with one sentence, when the history is too large to audit."""
    from spe.sdc import Verdict
    from spe.sdc.audit import AuditResult, Finding

    result = AuditResult("", len(cells))
    sentence = (
        "The data holder's releases are too many and too finely cut for the cumulative audit "
        "to finish here; a reviewer must look."
    )
    for space in histories:
        result.findings.append(Finding(0, Verdict.REVIEW, space, "review", (), sentence))
    return result


def with_audit(check: Any, result: Any) -> Any:
    """``check`` with the audit's verdict folded in: its findings become reasons (each names
    the earlier releases, never a count or a membership) and the worst verdict wins."""
    from spe.sdc import Verdict

    if result is None:
        return check
    findings = [f.to_dict() for f in result.findings]
    report = dict(check.report)
    report["cumulative_audit"] = {"status": result.status.value, "findings": findings}
    if not result.findings:
        return dataclasses.replace(check, report=report)
    status = max(check.status, result.status, key=lambda v: v.severity)
    sentences = list(dict.fromkeys(f.sentence for f in result.findings))
    reasons = [*check.reasons, *sentences] if status != Verdict.PASS else []
    report["status"] = status.value
    return dataclasses.replace(check, status=status, reasons=reasons, report=report)


def linked_groups(
    holder: str,
    request_id: str,
    project: str,
    title: str,
    report: Any,
    datasets: Sequence[str],
    earlier: Sequence[Earlier] = (),
    session: Any = None,
) -> list[tuple[list[int], str]]:
    """The earlier released cells (the holder's, from any project, and this request's earlier
    outputs) that are sums of whole cells of ``report``'s table, for its safe version: per such
    cell, the table's flat cell indices and the release's title and date.

    Only cells of the table's own linear space count (counts, or sums of the same variable),
    and only those whose persons are exactly the union of some of the table's cells: a number
    about other persons is no sum of this table's cells. The test is done on the audit's atoms,
    so its cost follows the table's persons and the history's cells, never a scan per cell.
    ``session``: read the history in the caller's transaction instead of a read-only one.
    """
    import numpy as np

    from spe.db import readonly
    from spe.sdc.audit import COUNT_SPACE, ReleaseInfo, load_history, sum_space

    if report.agg not in ("count", "sum") or report.person_id is None:
        return []
    sets = report.person_sets(include_margins=False)
    cell_sets = [sets.persons[sets.offsets[i] : sets.offsets[i + 1]] for i in range(report.n_cells)]
    source = "+".join(sorted(datasets)) or "data"
    variable = None if report.agg == "count" else f"{source}.{report.values}"
    space = COUNT_SPACE if variable is None else sum_space(variable)
    if session is not None:  # the caller's transaction (a release by reviewers)
        history = load_history(session, holder, variable=variable)
    else:
        with readonly() as reading:
            history = load_history(reading, holder, variable=variable)
    now = dt.datetime.now(dt.UTC)
    for before in earlier:
        info = ReleaseInfo(request_id, project, f"{title}: {before.name}", now, before.name)
        history = history.extended(info, [c for c in before.cells if space in c.spaces])
    found = _unions_of_cells(history, cell_sets)
    codes = _label_codes(report)
    empty = np.array([len(c) == 0 for c in cell_sets], dtype=bool)
    return [
        (group, history.releases[release].phrase)
        for cells, release in found
        for group in _with_empty_cells(codes, empty, cells)
    ]


def _label_codes(report: Any) -> Any:
    """Each cell's labels as integer codes, one column per variable (row-major cells)."""
    import numpy as np

    n_cols = len(report.col_labels)
    labels = [
        (*report.row_labels[i // n_cols], *report.col_labels[i % n_cols])
        for i in range(report.n_cells)
    ]
    width = len(labels[0]) if labels else 0
    codes = np.zeros((len(labels), width), dtype=np.int64)
    for v in range(width):
        seen: dict[Any, int] = {}
        codes[:, v] = [seen.setdefault(label[v], len(seen)) for label in labels]
    return codes


def _with_empty_cells(codes: Any, empty: Any, cells: Sequence[int]) -> list[list[int]]:
    """The sums an earlier cell holding exactly the persons of ``cells`` may stand for.

    Persons cannot say which empty cells an earlier table's cell covered: an A x C table's cell
    (a, c) also covers this table's empty cells (a, b, c). So, per set of the variables on which
    ``cells`` agree whose matching non-empty cells are exactly ``cells``, the sum over every
    matching cell, empty or not; the intruder is given all of them (each is true, the cells
    being empty), and the bare sum when no labels explain the group."""
    import itertools

    import numpy as np

    chosen = np.zeros(len(codes), dtype=bool)
    chosen[list(cells)] = True
    sub = codes[chosen]
    constant = [v for v in range(codes.shape[1]) if (sub[:, v] == sub[0, v]).all()]
    groups: set[tuple[int, ...]] = set()
    for size in range(1, len(constant) + 1):
        for variables in itertools.combinations(constant, size):
            cols = list(variables)
            match = (codes[:, cols] == sub[0, cols]).all(axis=1)
            if np.array_equal(match & ~empty, chosen):
                groups.add(tuple(np.flatnonzero(match).tolist()))
    if not groups:
        groups.add(tuple(sorted(cells)))
    return [list(g) for g in sorted(groups)]


def _unions_of_cells(history: Any, cell_sets: Sequence[Any]) -> list[tuple[list[int], int]]:
    """Earlier cells whose persons are exactly a union of whole new cells: (new cells, the
    earlier cell's release index), one per distinct union.

    Atoms are the history's (persons in exactly the same earlier cells). Join every atom with
    the new cells its persons fall in (and persons the history never saw with an "outside"
    node): an earlier cell is a union of whole new cells exactly when each of its atoms lies
    wholly in the new table and its atoms are whole components of that graph, none touching
    the outside.
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_new, n_atoms, n_old = len(cell_sets), history.n_atoms, history.n_cells
    if n_new == 0 or n_atoms == 0 or n_old == 0:
        return []
    persons = np.concatenate(cell_sets).astype(np.int64)
    cell_of = np.repeat(np.arange(n_new), [len(s) for s in cell_sets])
    known = history.persons
    at = np.minimum(np.searchsorted(known, persons), len(known) - 1)
    atom = np.where(known[at] == persons, history.atom_of[at].astype(np.int64), -1)
    _, first = np.unique(persons, return_index=True)
    inside = np.bincount(atom[first][atom[first] >= 0], minlength=n_atoms)
    full = (inside == history.sizes) & (history.sizes > 0)
    # Nodes: new cells, then the outside, then the atoms.
    node = atom + n_new + 1
    graph = coo_matrix(
        (np.ones(len(persons), dtype=np.int8), (cell_of, node)),
        shape=(n_new + 1 + n_atoms, n_new + 1 + n_atoms),
    )
    _, label = connected_components(graph, directed=False)
    atom_label = label[n_new + 1 :]
    comp_atoms = np.bincount(atom_label, minlength=label.max() + 1)
    tainted = label[n_new]
    offsets, entries = history.cell_offsets, history.cell_atoms.astype(np.int64)
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(n_old), lengths)
    ok = np.bincount(owner, weights=~full[entries], minlength=n_old) == 0
    ok &= np.bincount(owner, weights=atom_label[entries] == tainted, minlength=n_old) == 0
    ok &= lengths > 0
    # Whole components: the atoms of the distinct components an earlier cell touches add up to
    # its own atoms.
    n_comp = int(label.max()) + 1
    pairs = np.unique(owner * n_comp + atom_label[entries])
    pair_owner, pair_comp = pairs // n_comp, pairs % n_comp
    whole = np.bincount(pair_owner, weights=comp_atoms[pair_comp], minlength=n_old) == lengths
    chosen = np.flatnonzero(ok & whole)
    if not len(chosen):
        return []
    cells_of_comp: dict[int, list[int]] = {}
    for j, comp in enumerate(label[:n_new].tolist()):
        cells_of_comp.setdefault(comp, []).append(j)
    comps_of = np.split(pair_comp, np.searchsorted(pair_owner, np.arange(1, n_old)))
    out: dict[tuple[int, ...], int] = {}
    for k in chosen.tolist():
        comps = tuple(comps_of[k].tolist())
        if comps not in out:
            out[comps] = int(history.cell_release[k])
    return [
        (sorted(j for c in comps for j in cells_of_comp.get(c, [])), release)
        for comps, release in out.items()
    ]


def record(
    session: Any,
    holder: str,
    request_id: str,
    project: str,
    title: str,
    released_at: dt.datetime,
    name: str,
    cells: Sequence[Any],
) -> None:
    """Enter a released output's cells in the holder's history (the caller's transaction)."""
    from spe.sdc.audit import ReleaseInfo, record_release

    if cells:
        info = ReleaseInfo(request_id, project, title, released_at, name)
        record_release(session, holder, info, list(cells))


PersonSpace = Callable[[Any], Any]
