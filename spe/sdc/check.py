"""Checking tables and models against the disclosure rules, with an explanation per cell.

``check_table`` builds the table (as ``pandas.crosstab(..., dropna=False)`` would: every
combination of labels, the empty ones too) and, per cell, the persons behind it, the largest
contributions and every rule's outcome; ``check_model`` checks a fitted model's residual degrees
of freedom, the persons each term rests on and the persons' leverage. Reports serialise to the
JSON of the ``spe sdc`` CLI contract.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from spe.sdc import compute
from spe.sdc.differencing import (
    CellLabel,
    DifferencingPair,
    PersonSets,
    ReleasedTable,
    describe_label,
    find_differencing,
    hash_person_ids,
    hashed_sets,
    json_scalar,
)
from spe.sdc.errors import SDCInputError
from spe.sdc.rules import Rules, Verdict

AGGS = compute.AGGS
_MAX_PAIRS_PER_CELL = 5  # a cell lists at most this many differencing partners


@dataclass(frozen=True)
class RuleOutcome:
    """One rule applied to one cell (or to a whole output): the numbers, the verdict, why."""

    rule: str
    verdict: Verdict
    numbers: dict[str, Any]
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "verdict": self.verdict.value,
            "numbers": {k: json_scalar(v) for k, v in self.numbers.items()},
            "sentence": self.sentence,
        }


@dataclass(frozen=True)
class Cell:
    """One cell of a checked table with its evidence and every rule's outcome."""

    index: tuple[Any, ...]
    columns: tuple[Any, ...]
    value: Any
    persons: int
    rows: int
    top: tuple[float, ...]  # largest per-person |contributions| (evidence for reviewers only)
    outcomes: tuple[RuleOutcome, ...]

    @property
    def status(self) -> Verdict:
        worst = max((o.verdict.severity for o in self.outcomes), default=0)
        return Verdict.from_severity(worst)

    @property
    def failing(self) -> list[RuleOutcome]:
        """The outcomes that are not a pass (fail or review)."""
        return [o for o in self.outcomes if o.verdict != Verdict.PASS]

    def to_dict(self, *, explain: bool = False, evidence: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": [json_scalar(v) for v in self.index],
            "columns": [json_scalar(v) for v in self.columns],
            "value": json_scalar(self.value),
            "persons": self.persons,
            "rows": self.rows,
            "status": self.status.value,
            "failing": [o.to_dict() for o in self.failing],
        }
        if explain:
            out["outcomes"] = [o.to_dict() for o in self.outcomes]
        if evidence:
            out["top_contributions"] = [json_scalar(v) for v in self.top]
        return out


_RULE_ORDER = (
    "zeros",
    "threshold",
    "full_cell",
    "dominance",
    "p_percent",
    "negative_values",
    "value_holders",
    "all_same",
    "position",
    "residual_dof",
    "differencing",
)


@dataclass
class TableReport:
    """A checked table: the table itself, per-cell evidence and verdicts, and the overall status.

    Verdicts are computed for all cells at once (arrays); the per-cell explanation objects are
    built only when asked for (``cells``, ``cell``, ``to_dict``).
    """

    agg: str
    values: str | None
    index: list[str]
    columns: list[str]
    person_id: str | None
    rules: Rules
    row_labels: list[tuple[Any, ...]]
    col_labels: list[tuple[Any, ...]]
    stats: compute.CellStats
    severities: dict[str, np.ndarray]  # rule -> per-cell severity (0 pass, 1 review, 2 fail)
    differencing: list[DifferencingPair] = field(default_factory=list)
    table_outcomes: list[RuleOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    persons_info: compute.Persons | None = None
    row_dtypes: list[Any] | None = None  # categorical dimensions keep their categories
    col_dtypes: list[Any] | None = None

    # -- shape and status -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_labels), len(self.col_labels)

    @property
    def n_cells(self) -> int:
        return self.stats.n_cells

    @cached_property
    def cell_severity(self) -> np.ndarray:
        worst = np.zeros(self.n_cells, dtype=np.int8)
        for sev in self.severities.values():
            np.maximum(worst, sev, out=worst)
        return worst

    @property
    def status(self) -> Verdict:
        worst = int(self.cell_severity.max()) if self.n_cells else 0
        for outcome in self.table_outcomes:
            worst = max(worst, outcome.verdict.severity)
        return Verdict.from_severity(worst)

    @property
    def is_magnitude(self) -> bool:
        return self.agg in compute.MAGNITUDE_AGGS

    def grid(self, flat: np.ndarray) -> np.ndarray:
        """A per-cell array in the table's shape (rows x columns)."""
        return np.asarray(flat).reshape(self.shape)

    # -- the table itself -------------------------------------------------------------------
    def _axis_index(
        self, labels: list[tuple[Any, ...]], names: list[str], dtypes: list[Any] | None
    ) -> pd.Index:
        return axis_index(labels, names, dtypes)

    @property
    def table(self) -> pd.DataFrame:
        """The table as pandas.crosstab(..., dropna=False) would return it, without missing
        labels (counts 0 and magnitudes NaN if empty)."""
        return pd.DataFrame(
            self.grid(self.stats.value),
            index=self._axis_index(self.row_labels, self.index, self.row_dtypes),
            columns=self._axis_index(self.col_labels, self.columns, self.col_dtypes),
        )

    @property
    def persons_table(self) -> pd.DataFrame:
        """Distinct persons behind each cell, in the table's shape."""
        return pd.DataFrame(
            self.grid(self.stats.persons),
            index=self._axis_index(self.row_labels, self.index, self.row_dtypes),
            columns=self._axis_index(self.col_labels, self.columns, self.col_dtypes),
        )

    # -- per-cell explanations --------------------------------------------------------------
    def label(self, i: int) -> CellLabel:
        r, c = divmod(i, len(self.col_labels))
        return tuple(zip(self.index, self.row_labels[r], strict=True)) + tuple(
            zip(self.columns, self.col_labels[c], strict=True)
        )

    def cell(self, row: int, column: int | None = None) -> Cell:
        """A cell by (row, column) position, or by flat position when ``column`` is None."""
        i = row if column is None else row * len(self.col_labels) + column
        if not 0 <= i < self.n_cells:
            raise IndexError(f"the table has {self.n_cells} cells; there is no cell {i}")
        r, c = divmod(i, len(self.col_labels))
        st = self.stats
        top = tuple(float(v) for v in st.top[i]) if st.top is not None else ()
        outcomes = tuple(
            o for rule in _RULE_ORDER if rule in self.severities for o in self._outcomes(rule, i)
        )
        value = st.value[i]
        if isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        return Cell(
            index=self.row_labels[r],
            columns=self.col_labels[c],
            value=value,
            persons=int(st.persons[i]),
            rows=int(st.rows[i]),
            top=top,
            outcomes=outcomes,
        )

    @property
    def cells(self) -> list[Cell]:
        return [self.cell(i) for i in range(self.n_cells)]

    def failing_cells(self) -> list[Cell]:
        """The cells whose status is fail or review."""
        return [self.cell(int(i)) for i in np.flatnonzero(self.cell_severity > 0)]

    def _outcomes(self, rule: str, i: int) -> list[RuleOutcome]:
        sev = Verdict.from_severity(int(self.severities[rule][i]))
        st, rules = self.stats, self.rules
        persons = int(st.persons[i])
        where = describe_label(self.label(i))
        if rule == "zeros":
            if sev == Verdict.PASS:
                return [RuleOutcome(rule, sev, {"persons": persons}, "The cell is not empty.")]
            return [
                RuleOutcome(
                    rule,
                    sev,
                    {"persons": 0},
                    f"No person is in this cell ({where}): an empty cell tells that nobody with "
                    "the row's attributes has the column's (class disclosure).",
                )
            ]
        if rule == "threshold":
            numbers: dict[str, Any] = {
                "persons": persons,
                "threshold": rules.threshold,
                "rows": int(st.rows[i]),
            }
            one = persons == 1
            what = "person" if one else "persons"
            if self.values and self.agg != "count":
                what += " with a value"
            if self.person_id is None:
                what = "row" if one else "rows"
                what += " (no person column was given, so each row counts as a person)"
            verb = "is" if one else "are"
            if sev == Verdict.PASS:
                text = (
                    f"{persons} {what} {verb} behind this cell, at least {rules.threshold}."
                    if persons
                    else "The cell is empty (see zeros)."
                )
                return [RuleOutcome(rule, sev, numbers, text)]
            return [
                RuleOutcome(
                    rule,
                    sev,
                    numbers,
                    f"Only {persons} {what} {verb} behind this cell; at least {rules.threshold} "
                    "are needed.",
                )
            ]
        if rule == "full_cell":
            return [self._full_cell(i, sev)]
        if rule == "dominance":
            total = float(st.total_abs[i]) if st.total_abs is not None else 0.0
            n = rules.dominance_n
            topn = float(st.top[i, :n].sum()) if st.top is not None else 0.0
            share = topn / total if total > 0 else 0.0
            numbers = {"n": n, "k": rules.dominance_k, "share": round(share, 6)}
            if total <= 0:
                text = "No non-zero contribution: dominance does not apply (see p_percent)."
            elif sev == Verdict.PASS:
                text = (
                    f"The {n} largest contributors hold {share * 100:.1f} % of the cell total, "
                    f"not more than {rules.dominance_k * 100:g} %."
                )
            else:
                text = (
                    f"The {n} largest contributors hold {share * 100:.1f} % of the cell total; "
                    f"more than {rules.dominance_k * 100:g} % lets them estimate each other's "
                    "values."
                )
            return [RuleOutcome(rule, sev, numbers, text)]
        if rule == "p_percent":
            total = float(st.total_abs[i]) if st.total_abs is not None else 0.0
            x1 = float(st.top[i, 0]) if st.top is not None else 0.0
            x2 = float(st.top[i, 1]) if st.top is not None else 0.0
            ratio = (total - x1 - x2) / x1 if x1 > 0 else 0.0
            numbers = {"p": rules.p_percent, "ratio": round(ratio, 6), "contributors": persons}
            if persons == 0:
                text = "The cell is empty: the p % rule does not apply (see zeros)."
            elif sev == Verdict.PASS:
                text = (
                    f"Without the two largest contributions the rest is {ratio * 100:.1f} % of "
                    f"the largest, at least {rules.p_percent:g} %."
                )
            elif persons <= 1:
                text = "One person contributes to this cell, so the value is that person's."
            elif total <= 0:
                text = "Every contribution is zero, so the cell reveals each person's value."
            else:
                text = (
                    f"Without the two largest contributions the rest is {ratio * 100:.1f} % of "
                    f"the largest, under {rules.p_percent:g} %: the second-largest contributor "
                    f"could estimate the largest within {rules.p_percent:g} %."
                )
            return [RuleOutcome(rule, sev, numbers, text)]
        if rule == "negative_values":
            negative = bool(st.negative[i]) if st.negative is not None else False
            text = (
                "The cell holds negative values: dominance and p % were checked on absolute "
                "contributions and a reviewer must confirm the result."
                if negative
                else "No negative values."
            )
            return [RuleOutcome(rule, sev, {"negative": negative}, text)]
        if rule == "value_holders":
            holders = int(st.holders[i]) if st.holders is not None else 0
            numbers = {"holders": holders, "threshold": rules.threshold, "statistic": self.agg}
            name = {"min": "minimum", "max": "maximum", "mode": "mode"}[self.agg]
            if persons == 0:
                text = "The cell is empty (see zeros)."
            elif sev == Verdict.PASS:
                text = f"The {name} is the value of {holders} persons, at least {rules.threshold}."
            else:
                text = (
                    f"The {name} is the value of only {holders} person"
                    f"{'s' if holders != 1 else ''}; releasing it discloses their value. Publish a "
                    "percentile or a top/bottom-coded value instead."
                )
            return [RuleOutcome(rule, sev, numbers, text)]
        if rule == "all_same":
            distinct = int(st.distinct_values[i]) if st.distinct_values is not None else 0
            numbers = {"distinct_values": min(distinct, 2), "persons": persons}
            if sev == Verdict.PASS:
                text = "The persons in this cell do not all have the same value."
            else:
                text = (
                    f"All {persons} persons in this cell have the same value, so releasing it "
                    "discloses each person's value (class disclosure)."
                )
            return [RuleOutcome(rule, sev, numbers, text)]
        if rule == "position":
            return [self._position(i, sev)]
        if rule == "residual_dof":
            dof = max(persons - 1, 0)
            numbers = {"df_resid": dof, "minimum": rules.residual_dof, "persons": persons}
            if persons == 0:
                text = "The cell is empty (see zeros)."
            elif sev == Verdict.PASS:
                text = f"The standard deviation has {dof} degrees of freedom, at least " + (
                    f"{rules.residual_dof}."
                )
            else:
                text = (
                    f"The standard deviation has only {dof} degrees of freedom (persons - 1); "
                    f"at least {rules.residual_dof} are needed."
                )
            return [RuleOutcome(rule, sev, numbers, text)]
        if rule == "differencing":
            pairs = [p for p in self.differencing if p.cell_index == i]
            if not pairs:
                return [
                    RuleOutcome(
                        rule,
                        sev,
                        {},
                        "No released cell of this project differs from this one by fewer than "
                        f"{rules.threshold} persons.",
                    )
                ]
            return [
                RuleOutcome(
                    rule,
                    Verdict.FAIL,
                    {
                        "released_table": p.released_table,
                        "released_cell": describe_label(p.released_label),
                        "difference": p.difference,
                        "threshold": p.threshold,
                    },
                    p.sentence,
                )
                for p in pairs[:_MAX_PAIRS_PER_CELL]
            ]
        raise AssertionError(f"unknown rule {rule}")

    def _position(self, i: int, sev: Verdict) -> RuleOutcome:
        rules = self.rules
        near = int(self.stats.near[i]) if self.stats.near is not None else 0
        persons = int(self.stats.persons[i])
        rounded = rules.position_rounding == "grid"
        numbers: dict[str, Any] = {
            "near": near,
            "threshold": rules.threshold,
            "tolerance": rules.position_tolerance,
            "rounded_to_digits": rules.position_digits if rounded else None,
        }
        within = f"within {rules.position_tolerance * 100:g} % of the median"
        if persons == 0:
            return RuleOutcome("position", sev, numbers, "The cell is empty (see zeros).")
        if sev == Verdict.PASS:
            text = (
                f"{near} persons have a value {within}, at least {rules.threshold}: it is no "
                "one's value in particular."
            )
        else:
            who = "person has" if near == 1 else "persons have"
            text = (
                f"Only {near} {who} a value {within}; at least {rules.threshold} are needed, or "
                "the median is close to a single person's value. Use a larger group, or publish "
                "counts in bands instead."
            )
        if rounded:
            text += (
                f" The median is published rounded to {rules.position_digits} significant digits "
                "(the policy's grid)."
            )
        return RuleOutcome("position", sev, numbers, text)

    def _full_cell(self, i: int, sev: Verdict) -> RuleOutcome:
        n_cols = len(self.col_labels)
        r, c = divmod(i, n_cols)
        grid = self.grid(self.stats.persons)
        row_total, col_total = int(grid[r].sum()), int(grid[:, c].sum())
        numbers = {
            "persons": int(grid[r, c]),
            "row_persons": row_total,
            "column_persons": col_total,
        }
        if sev == Verdict.PASS:
            return RuleOutcome(
                "full_cell",
                sev,
                numbers,
                "Neither its row nor its column falls wholly in this cell.",
            )
        row_label = describe_label(tuple(zip(self.index, self.row_labels[r], strict=True)))
        col_label = describe_label(tuple(zip(self.columns, self.col_labels[c], strict=True)))
        if grid[r, c] == row_total and n_cols > 1:
            text = (
                f"All {row_total} persons with {row_label} fall in this cell: the table tells that "
                f"each of them has {col_label} (class disclosure)."
            )
        else:
            text = (
                f"All {col_total} persons with {col_label} fall in this cell: the table tells that "
                f"each of them has {row_label} (class disclosure)."
            )
        return RuleOutcome("full_cell", sev, numbers, text)

    # -- persons behind cells (differencing, releases) --------------------------------------
    @cached_property
    def _id_hashes(self) -> np.ndarray | None:
        info = self.persons_info
        if info is None:
            return None
        if info.hashes is not None:
            return info.hashes
        if info.ids is None:
            return None
        return hash_person_ids(info.ids)

    @cached_property
    def _raw_code_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct person codes, their hashes) when the codes are the ids themselves."""
        assert self.stats.pairs is not None
        _, codes = self.stats.pairs.sets(self.n_cells)
        codes = np.sort(codes)
        distinct = codes[compute._run_starts(codes)]
        hashed = hash_person_ids(distinct)
        top = int(distinct[-1]) + 1 if len(distinct) else 0
        if top <= max(4 * len(distinct), 1 << 20):  # a dense lookup is cheaper than searching
            dense = np.zeros(top, dtype=np.int64)
            dense[distinct] = hashed
            return np.zeros(0, dtype=np.int64), dense
        return distinct, hashed

    def _hash_codes(self, codes: np.ndarray) -> np.ndarray:
        hashes = self._id_hashes
        if hashes is not None:
            return hashes[codes]
        distinct, hashed = self._raw_code_hashes  # each person is hashed once, not per group
        if len(distinct) == 0:
            return hashed[codes]
        return hashed[np.searchsorted(distinct, codes)]

    def person_sets(self, *, include_margins: bool = True) -> PersonSets:
        """The hashed persons behind each cell and, optionally, each row, column and the total."""
        if self.stats.pairs is None or self.persons_info is None:
            raise SDCInputError(
                "The persons behind the cells are unknown: check the table with person_id set to "
                "the dataset's person column."
            )
        n_cells, n_cols = self.n_cells, len(self.col_labels)
        offsets, codes = self.stats.pairs.sets(n_cells)
        pair_cell = np.repeat(np.arange(n_cells, dtype=np.int64), np.diff(offsets))
        groups: list[tuple[np.ndarray, np.ndarray, int]] = [(pair_cell, codes, n_cells)]
        labels = [self.label(i) for i in range(n_cells)]
        kinds = ["cell"] * n_cells
        if include_margins:
            size = self.persons_info.size
            n_rows = len(self.row_labels)
            margins = []
            # A one-column table's column total is its grand total (and likewise for rows).
            if n_cols > 1 and n_rows > 1:
                margins.append(("row total", pair_cell // n_cols, n_rows))
                margins.append(("column total", pair_cell % n_cols, n_cols))
            if n_cells > 1:
                margins.append(("grand total", np.zeros_like(pair_cell), 1))
            for kind, group, n_groups in margins:
                keys = np.sort(group * size + codes)
                keys = keys[compute._run_starts(keys)]
                groups.append((keys // size, keys % size, n_groups))
                kinds += [kind] * n_groups
                if kind == "row total":
                    labels += [tuple(zip(self.index, lab, strict=True)) for lab in self.row_labels]
                elif kind == "column total":
                    labels += [
                        tuple(zip(self.columns, lab, strict=True)) for lab in self.col_labels
                    ]
                else:
                    labels.append(())
        all_offsets = [np.zeros(1, dtype=np.int64)]
        all_persons = []
        base = 0
        for group, group_codes, n_groups in groups:
            offs, persons = hashed_sets(group, self._hash_codes(group_codes), n_groups)
            all_offsets.append(offs[1:] + base)
            all_persons.append(persons)
            base += len(persons)
        return PersonSets(
            labels=labels,
            kinds=kinds,
            offsets=np.concatenate(all_offsets),
            persons=np.concatenate(all_persons) if all_persons else np.zeros(0, np.int64),
        )

    # -- serialisation ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        sev = self.cell_severity
        by_rule = {rule: int((s > 0).sum()) for rule, s in self.severities.items() if (s > 0).any()}
        return {
            "cells": self.n_cells,
            "pass": int((sev == 0).sum()),
            "review": int((sev == 1).sum()),
            "fail": int((sev == 2).sum()),
            "cells_by_rule": by_rule,
        }

    def to_dict(
        self, *, explain: bool = False, evidence: bool = False, only_failing: bool = False
    ) -> dict[str, Any]:
        """The CLI contract: overall status; per cell labels, value, persons, failing rules.

        ``explain`` adds every rule's outcome per cell; ``evidence`` adds the largest
        contributions (individual values: for reviewers, never for a release bundle).
        """
        indices = np.flatnonzero(self.cell_severity > 0) if only_failing else range(self.n_cells)
        return {
            "kind": "table",
            "status": self.status.value,
            "agg": self.agg,
            "values": self.values,
            "index": list(self.index),
            "columns": list(self.columns),
            "person_id": self.person_id,
            "shape": list(self.shape),
            "rules": self.rules.to_dict(),
            "summary": self.summary(),
            "table_outcomes": [o.to_dict() for o in self.table_outcomes],
            "differencing": [p.to_dict() for p in self.differencing],
            "notes": list(self.notes),
            "cells": [
                self.cell(int(i)).to_dict(explain=explain, evidence=evidence) for i in indices
            ],
        }

    def to_json(self, *, indent: int | None = None, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(**kwargs), ensure_ascii=False, indent=indent)


def axis_index(
    labels: list[tuple[Any, ...]], names: list[str], dtypes: list[Any] | None = None
) -> pd.Index:
    """The pandas index of a table axis, as pandas.crosstab builds it."""
    dtypes = dtypes or [None] * len(names)
    levels = []
    for d, (name, dtype) in enumerate(zip(names, dtypes, strict=True)):
        values = [label[d] for label in labels]
        if dtype is not None:
            levels.append(pd.CategoricalIndex(values, dtype=dtype, name=name))
        else:
            levels.append(pd.Index(values, name=name, dtype=None if values else object))
    if len(levels) == 1:
        return levels[0]
    return pd.MultiIndex.from_arrays(levels, names=names)


def _columns_list(df: pd.DataFrame, names: str | Sequence[str], what: str) -> list[str]:
    out = [names] if isinstance(names, str) else list(names)
    if not out:
        raise SDCInputError(f"Give at least one column for the table's {what}.")
    for name in out:
        _require_column(df, name, what)
    return out


def _require_column(df: pd.DataFrame, name: str, what: str) -> None:
    if name not in df.columns:
        known = [str(c) for c in df.columns]
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = (
            f"; did you mean {close[0]!r}?" if close else f"; the columns are {', '.join(known)}."
        )
        raise SDCInputError(f"There is no column {name!r} for the {what}{hint}")


def check_table(
    df: pd.DataFrame,
    index: str | Sequence[str],
    columns: str | Sequence[str],
    values: str | None = None,
    agg: str = "count",
    person_id: str | None = None,
    rules: Rules | None = None,
    released: Sequence[ReleasedTable] = (),
    *,
    observed: bool = False,
) -> TableReport:
    """Build a table of ``agg`` over ``values`` by ``index`` x ``columns`` and check every cell.

    Persons are counted as DISTINCT values of ``person_id`` (each row is a person when it is
    None); for a statistic of ``values`` only persons with a non-missing value count. Rules
    default to the platform's (``Rules()``). ``released`` are the project's released tables:
    a new cell or margin that differs from a released cell by 1..threshold-1 persons fails.

    Each axis is every combination of its variables' labels (as ``pandas.crosstab(...,
    dropna=False)`` lists them, missing labels left out), so a combination no row has is an
    empty cell and fails as one. ``observed=True`` keeps only combinations some row has: for
    outputs whose empty combinations are no cell of the output (a life table's intervals after
    everyone has left), never to hide an empty cell of a table.
    """
    if agg not in AGGS:
        raise SDCInputError(f"agg is {agg!r}; use one of {', '.join(AGGS)}.")
    if agg != "count" and values is None:
        raise SDCInputError(f"agg={agg!r} needs a values column to aggregate.")
    rules = rules or Rules()
    index_names = _columns_list(df, index, "index")
    column_names = _columns_list(df, columns, "columns")
    used = index_names + column_names
    twice = sorted({n for n in used if used.count(n) > 1})
    if twice:
        raise SDCInputError(f"The column {twice[0]!r} is both in the index and the columns.")
    if values is not None:
        _require_column(df, values, "values")
    if person_id is not None:
        _require_column(df, person_id, "person id")

    table = compute.layout(df, index_names, column_names, observed=observed)
    rows_axis, cols_axis, cell = table.rows, table.columns, table.cell
    n_cols = len(cols_axis.labels)
    n_cells = table.n_cells
    kept = table.kept
    value_series = None
    if values is not None:
        value_series = df[values] if kept is None else df[values][kept]
    persons = None
    if person_id is not None:
        persons = compute.fit_persons(compute.persons_of(df[person_id]), n_cells)
        if kept is not None:  # fewer rows keep distinct persons distinct
            persons = compute.Persons(
                persons.codes[kept],
                persons.size,
                persons.ids,
                persons.distinct_rows,
                persons.hashes,
            )
    n_top = max(rules.dominance_n, 2)
    stats = compute.cell_stats(
        cell,
        n_cells,
        agg,
        value_series,
        persons,
        n_top,
        table.counts,
        position_tolerance=rules.position_tolerance,
    )
    del cell, table
    if agg in compute.POSITION_AGGS and rules.position_rounding == "grid":
        stats.value = compute.round_significant(stats.value, rules.position_digits)
    report = TableReport(
        agg=agg,
        values=values,
        index=index_names,
        columns=column_names,
        person_id=person_id,
        rules=rules,
        row_labels=rows_axis.labels,
        col_labels=cols_axis.labels,
        stats=stats,
        severities=_severities(stats, agg, rules, len(rows_axis.labels), n_cols),
        notes=list(rules.notes),
        persons_info=persons,
        row_dtypes=rows_axis.dtypes,
        col_dtypes=cols_axis.dtypes,
    )
    if person_id is None:
        report.notes.append(
            "No person column was given: each row counts as one person. Give person_id to count "
            "distinct persons."
        )
    if n_cells == 0:
        report.notes.append("The table has no cells: no row has both an index and a column label.")
    if kept is not None:
        report.notes.append(
            f"{int((~kept).sum())} rows with a missing index or column label are left out, as "
            "pandas.crosstab does."
        )
    if released:
        _check_differencing(report, released)
    return report


def _severities(
    st: compute.CellStats, agg: str, rules: Rules, n_rows: int, n_cols: int
) -> dict[str, np.ndarray]:
    """Every rule's verdict for every cell at once (int8: 0 pass, 1 review, 2 fail)."""
    fail = np.int8(2)
    persons = st.persons
    out: dict[str, np.ndarray] = {}
    out["zeros"] = np.where(persons == 0, np.int8(rules.zeros.severity), np.int8(0))
    out["threshold"] = np.where((persons > 0) & (persons < rules.threshold), fail, np.int8(0))
    if agg == "count":
        grid = np.asarray(persons).reshape(n_rows, n_cols) > 0
        full = np.zeros_like(grid)
        if n_cols > 1:
            full |= grid & (grid.sum(axis=1, keepdims=True) == 1)
        if n_rows > 1:
            full |= grid & (grid.sum(axis=0, keepdims=True) == 1)
        out["full_cell"] = np.where(full.ravel(), np.int8(rules.full_cells.severity), np.int8(0))
    elif agg in compute.MAGNITUDE_AGGS:
        assert st.top is not None and st.total_abs is not None
        total = st.total_abs
        topn = st.top[:, : rules.dominance_n].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, topn / total, 0.0)
            x1 = st.top[:, 0]
            ratio = np.where(x1 > 0, (total - x1 - st.top[:, 1]) / x1, 0.0)
        # The n largest may hold less than k (ARCHITECTURE; ACRO 1.0 fails at >= k too).
        dominated = (total > 0) & (share >= rules.dominance_k)
        out["dominance"] = np.where(dominated, fail, np.int8(0))
        p_fail = (persons > 0) & ((persons <= 1) | (total <= 0) | (ratio < rules.p))
        out["p_percent"] = np.where(p_fail, fail, np.int8(0))
        negative = st.negative if st.negative is not None else np.zeros(len(persons), bool)
        out["negative_values"] = np.where(
            negative, np.int8(rules.negative_values.severity), np.int8(0)
        )
        if agg == "std":
            # A standard deviation has persons - 1 degrees of freedom (ACRO checks these too).
            out["residual_dof"] = np.where(
                (persons > 0) & (persons - 1 < rules.residual_dof), fail, np.int8(0)
            )
    elif agg in compute.ORDER_AGGS:
        assert st.holders is not None and st.distinct_values is not None
        sev = np.int8(rules.extremes.severity)
        out["value_holders"] = np.where(
            (persons > 0) & (st.holders < rules.threshold), sev, np.int8(0)
        )
        out["all_same"] = np.where((persons > 0) & (st.distinct_values == 1), sev, np.int8(0))
    elif agg in compute.POSITION_AGGS:
        assert st.near is not None
        # A median or quantile is one person's value (or the mean of two) unless enough
        # persons lie near it; the threshold rule alone passes a group picked around one person.
        out["position"] = np.where((persons > 0) & (st.near < rules.threshold), fail, np.int8(0))
    return out


def _check_differencing(report: TableReport, released: Sequence[ReleasedTable]) -> None:
    threshold = report.rules.threshold
    if report.persons_info is None:
        report.table_outcomes.append(
            RuleOutcome(
                "differencing",
                Verdict.REVIEW,
                {"released_tables": len(released)},
                f"{len(released)} tables were already released from this project, but without a "
                "person column the new table cannot be checked against them: give person_id.",
            )
        )
        return
    pairs = find_differencing(report.person_sets(include_margins=True), released, threshold)
    report.differencing = pairs
    sev = np.zeros(report.n_cells, dtype=np.int8)
    for pair in pairs:
        if pair.cell_index is not None:
            sev[pair.cell_index] = 2
    report.severities["differencing"] = sev
    report.__dict__.pop("cell_severity", None)  # recomputed with the differencing verdicts
    margin_pairs = [p for p in pairs if p.cell_index is None]
    for pair in margin_pairs:
        report.table_outcomes.append(
            RuleOutcome(
                "differencing",
                Verdict.FAIL,
                {
                    "margin": pair.kind,
                    "cell": describe_label(pair.label),
                    "released_table": pair.released_table,
                    "released_cell": describe_label(pair.released_label),
                    "difference": pair.difference,
                },
                pair.sentence,
            )
        )
    if not pairs:
        report.table_outcomes.append(
            RuleOutcome(
                "differencing",
                Verdict.PASS,
                {"released_tables": len(released)},
                f"No cell or margin differs from a cell of the {len(released)} released tables "
                f"by fewer than {threshold} persons.",
            )
        )


# -- models ---------------------------------------------------------------------------------
MODEL_KINDS = ("ols", "logit", "probit")
EXACT_LEVERAGE = 1.0 - 1e-6  # a person's outcome fitted exactly (up to rounding)


@dataclass(frozen=True)
class TermPersons:
    """The persons one model term rests on.

    ``kind`` is "level" (a level of a categorical), "cell" (a combination of the levels of an
    interaction of categoricals) or "regressor" (a design column with a number in it: the
    persons whose value differs from the column's most common one). ``reference`` marks a level
    or cell without a coefficient of its own (it lies inside the intercept or a main effect).
    """

    name: str
    persons: int
    kind: str = "regressor"
    reference: bool = False


def _plural(n: int, word: str = "person") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _term_outcome(term: TermPersons, rules: Rules) -> RuleOutcome:
    k = rules.threshold
    numbers: dict[str, Any] = {
        "term": term.name,
        "kind": term.kind,
        "persons": term.persons,
        "threshold": k,
        "reference": term.reference,
    }
    what = "The term " + term.name
    if term.reference:
        what = f"The {term.kind} {term.name} (a reference {term.kind}, inside the intercept)"
    if term.persons >= k:
        text = f"{what} rests on {_plural(term.persons)}, at least {k}."
        return RuleOutcome("term_persons", Verdict.PASS, numbers, text)
    if term.kind == "regressor":
        fix = "drop the term, or fit it on a larger group"
        rest = " (the others all have its most common value)"
    else:
        fix = "merge levels or drop the term"
        rest = ""
    text = f"{what} rests on {_plural(term.persons)}{rest}; at least {k} are needed: {fix}."
    return RuleOutcome("term_persons", Verdict.FAIL, numbers, text)


def _leverage_outcome(leverage: np.ndarray, rules: Rules) -> RuleOutcome:
    """Persons' leverage (the share of their own fitted value their outcome makes up).

    When a vector supported on m persons lies in the span of the design (a dummy of a level of
    m persons, or any combination of terms that singles them out), the coefficients determine
    the sum of those persons' outcomes, and some of them has leverage at least 1/m. So no person
    at 1/(threshold - 1) or more means no group under the threshold is singled out.
    """
    k = rules.threshold
    bound = 1.0 / (k - 1) if k > 2 else 1.0
    top = float(leverage.max()) if leverage.size else 0.0
    exact = int((leverage >= EXACT_LEVERAGE).sum())
    high = int((leverage >= bound).sum())
    numbers = {
        "max_leverage": round(min(top, 1.0), 6),
        "bound": round(bound, 6),
        "persons_fitted_exactly": exact,
        "persons_over_bound": high,
    }
    if exact:
        return RuleOutcome(
            "leverage",
            Verdict.FAIL,
            numbers,
            f"The outcomes of {_plural(exact)} are fitted exactly: a combination of the terms "
            "singles them out, so the coefficients give their values. Merge or drop the terms "
            "that few persons rest on.",
        )
    if high:
        return RuleOutcome(
            "leverage",
            rules.leverage,
            numbers,
            f"{_plural(high)} weigh {bound * 100:.1f} % or more of their own fitted values "
            f"(leverage up to {top:.3f}): a combination of the terms may single out fewer than "
            f"{k} persons, or an extreme regressor value stands out; a reviewer checks.",
        )
    return RuleOutcome(
        "leverage",
        Verdict.PASS,
        numbers,
        f"No person weighs {bound * 100:.1f} % or more of their own fitted value (the largest "
        f"leverage is {top:.3f}), so no combination of the terms singles out fewer than {k} "
        "persons.",
    )


@dataclass
class ModelReport:
    """A checked model: residual degrees of freedom (on persons when they are known), the
    persons every term rests on, and the persons' leverage."""

    kind: str
    nobs: int
    df_resid: float
    rules: Rules
    persons: int | None = None
    outcomes: list[RuleOutcome] = field(default_factory=list)
    formula: str | None = None
    coefficients: dict[str, dict[str, float | None]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> Verdict:
        worst = max((o.verdict.severity for o in self.outcomes), default=0)
        return Verdict.from_severity(worst)

    @property
    def failing(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if o.verdict != Verdict.PASS]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "model",
            "model": self.kind,
            "status": self.status.value,
            "formula": self.formula,
            "nobs": self.nobs,
            "persons": self.persons,
            "df_resid": json_scalar(float(self.df_resid)),
            "rules": self.rules.to_dict(),
            "failing": [o.to_dict() for o in self.failing],
            "outcomes": [o.to_dict() for o in self.outcomes],
            "notes": list(self.notes),
        }
        if self.coefficients is not None:
            out["coefficients"] = {
                name: {k: json_scalar(v) for k, v in row.items()}
                for name, row in self.coefficients.items()
            }
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)


def check_model(
    kind: str,
    nobs: int,
    df_resid: float,
    rules: Rules | None = None,
    *,
    persons: int | None = None,
    formula: str | None = None,
    coefficients: dict[str, dict[str, float | None]] | None = None,
    terms: Sequence[TermPersons] = (),
    leverage: np.ndarray | None = None,
) -> ModelReport:
    """Check a fitted model: residual degrees of freedom at least ``rules.residual_dof``; every
    term in ``terms`` resting on at least ``rules.threshold`` persons; no person's ``leverage``
    (per person, summed over their rows) at 1/(threshold - 1) or more.

    When the distinct ``persons`` behind the ``nobs`` rows are known and fewer, the degrees of
    freedom are counted on persons (persons minus parameters): repeated rows of one person add
    no protection. A model whose every term rests on enough persons can still have too few
    residual degrees of freedom, and a model with 200 residual degrees of freedom can have a
    dummy for each of 40 persons: both rules apply.
    """
    if kind not in MODEL_KINDS:
        raise SDCInputError(f"kind is {kind!r}; use one of {', '.join(MODEL_KINDS)}.")
    rules = rules or Rules()
    n_params = nobs - df_resid
    effective = float(df_resid)
    numbers: dict[str, Any] = {
        "df_resid": float(df_resid),
        "nobs": int(nobs),
        "minimum": rules.residual_dof,
    }
    basis = "residual degrees of freedom"
    if persons is not None and persons < nobs:
        effective = min(effective, persons - n_params)
        numbers["persons"] = int(persons)
        numbers["df_resid_persons"] = float(persons - n_params)
        basis = f"residual degrees of freedom counted on {persons} persons"
    verdict = Verdict.PASS if effective >= rules.residual_dof else Verdict.FAIL
    if verdict == Verdict.PASS:
        sentence = f"The model has {effective:g} {basis}, at least {rules.residual_dof}."
    else:
        sentence = (
            f"The model has only {effective:g} {basis}; at least {rules.residual_dof} are needed, "
            "or the estimates come close to individual values. Use more data or fewer parameters."
        )
    return ModelReport(
        kind=kind,
        nobs=int(nobs),
        df_resid=float(df_resid),
        rules=rules,
        persons=persons,
        outcomes=[
            RuleOutcome("residual_dof", verdict, numbers, sentence),
            *(_term_outcome(term, rules) for term in terms),
            *([_leverage_outcome(np.asarray(leverage), rules)] if leverage is not None else []),
        ],
        formula=formula,
        coefficients=coefficients,
    )
