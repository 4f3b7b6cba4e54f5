"""Which earlier released cells a new table's safe version is protected with (linked tables):
found in the audit's history by persons, with the empty cells an earlier table's labels cover.

Plain data, no database: a History built in memory and a table checked with spe.sdc.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from spe.exports.auditing import _label_codes, _unions_of_cells, _with_empty_cells
from spe.sdc.audit import History, NewCell, ReleaseInfo
from spe.sdc.check import check_table
from spe.sdc.safe import MAX_LINKED_SUMS, sums_of_cells


def _three_way() -> pd.DataFrame:
    """A x B x C with one empty cell (a2, b2, c1) and persons p0..."""
    rows = []
    counts = {("a1", "b1", "c1"): 12, ("a1", "b2", "c1"): 3, ("a1", "b1", "c2"): 11}
    counts |= {("a1", "b2", "c2"): 14, ("a2", "b1", "c1"): 2, ("a2", "b2", "c1"): 0}
    counts |= {("a2", "b1", "c2"): 15, ("a2", "b2", "c2"): 13}
    for (a, b, c), n in counts.items():
        rows += [{"a": a, "b": b, "c": c} for _ in range(n)]
    frame = pd.DataFrame(rows)
    frame["person"] = [f"p{i}" for i in range(len(frame))]
    return frame


def _released(report, frame: pd.DataFrame, by: list[str]) -> History:
    """The holder's history with one earlier table over ``by``, on the new table's persons."""
    sets = report.person_sets(include_margins=False)
    hashed = {}
    for i in range(report.n_cells):
        n_cols = len(report.col_labels)
        labels = (*report.row_labels[i // n_cols], *report.col_labels[i % n_cols])
        hashed[labels] = sets.persons[sets.offsets[i] : sets.offsets[i + 1]]
    names = [*report.index, *report.columns]
    where = [names.index(v) for v in by]
    groups: dict[tuple, list[np.ndarray]] = {}
    for labels, persons in hashed.items():
        groups.setdefault(tuple(labels[w] for w in where), []).append(persons)
    cells = [NewCell("count", np.concatenate(p)) for p in groups.values()]
    info = ReleaseInfo("r1", "demo", "A by C", dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "ac")
    return History.empty("holder").extended(info, cells)


def test_an_earlier_a_by_c_table_is_found_as_sums_of_a_by_b_by_c_cells_empty_ones_included():
    frame = _three_way()
    report = check_table(frame, ["a", "b"], ["c"], person_id="person")
    history = _released(report, frame, ["a", "c"])
    sets = report.person_sets(include_margins=False)
    cell_sets = [sets.persons[sets.offsets[i] : sets.offsets[i + 1]] for i in range(8)]
    found = _unions_of_cells(history, cell_sets)
    empty = np.array([len(c) == 0 for c in cell_sets])
    codes = _label_codes(report)
    groups = sorted(g for cells, _ in found for g in _with_empty_cells(codes, empty, cells))
    # Layout: rows (a1,b1) (a1,b2) (a2,b1) (a2,b2) x columns c1 c2; (a2,b2,c1) = cell 6 is empty.
    # (a2, c1) holds the persons of cell 4 alone: an A x C cell covering the empty cell 6, or
    # the same cell released before; the intruder is given both.
    assert groups == [[0, 2], [1, 3], [4], [4, 6], [5, 7]]
    sums = sums_of_cells(report, [(g, "A by C") for g in groups])
    assert [s.value for s in sums] == [15.0, 25.0, 2.0, 2.0, 28.0]


def test_a_number_about_other_persons_is_no_sum_of_the_cells():
    frame = _three_way()
    report = check_table(frame, ["a", "b"], ["c"], person_id="person")
    sets = report.person_sets(include_margins=False)
    cell_sets = [sets.persons[sets.offsets[i] : sets.offsets[i + 1]] for i in range(8)]
    # An earlier cell of the persons of (a1,b1,c1) and one more person outside the table, and
    # one of half of (a1,b1,c2): neither is a sum of whole cells.
    info = ReleaseInfo("r1", "demo", "Other", dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "x")
    outside = np.array([np.iinfo(np.int64).max - 7], dtype=np.int64)
    cells = [
        NewCell("count", np.concatenate([cell_sets[0], outside])),
        NewCell("count", cell_sets[1][: len(cell_sets[1]) // 2]),
    ]
    history = History.empty("holder").extended(info, cells)
    assert _unions_of_cells(history, cell_sets) == []


def test_linked_sums_count_once_and_past_the_bound_refuse_the_safe_version(monkeypatch):
    import pytest

    from spe.sdc import safe
    from spe.sdc.errors import SafeVersionError

    frame = _three_way()
    report = check_table(frame, ["a", "b"], ["c"], person_id="person")
    twice = [([0, 2], "first"), ([2, 0], "second"), (list(range(8)), "all")]
    sums = sums_of_cells(report, twice)  # the grand total is published anyway
    assert len(sums) == 1 and sums[0].source == "first"
    monkeypatch.setattr(safe, "MAX_LINKED_SUMS", 3)
    with pytest.raises(SafeVersionError, match="more than the 3"):
        sums_of_cells(report, [([i], f"r{i}") for i in range(4)])
    assert MAX_LINKED_SUMS == 400
