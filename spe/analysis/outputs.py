"""Every output computed from its evidence rows and spec: the same code in workspace and replay.

``compute(command, evidence, spec, rules, released)`` builds the table (or coefficients, or life
table), checks every cell with spe.sdc, and the safe version when the spec asks for one. The
workspace records what it returns; the server calls it again on the copied evidence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spe.analysis.csvtable import MODEL_REL_TOL, TABLE_REL_TOL
from spe.analysis.errors import AnalysisError
from spe.analysis.formula import formula_columns
from spe.sdc import (
    ModelReport,
    ReleasedTable,
    RuleOutcome,
    Rules,
    SafeTable,
    TableReport,
    Verdict,
    check_formula,
    check_table,
    safe_version,
)
from spe.sdc.compute import AGGS
from spe.sdc.differencing import describe_label, json_scalar
from spe.sdc.errors import SDCError

# command -> kind of output
COMMANDS: dict[str, str] = {
    "crosstab": "table",
    "pivot_table": "table",
    "describe": "table",
    "hist": "table",
    "ols": "model",
    "logit": "model",
    "probit": "model",
    "survival": "survival",
}
DESCRIBE_STATISTICS = ("count", "mean", "std", "median", "min", "max")
# Positions the workspace leaves out of describe's file by itself when they fail.
DESCRIBE_WITHHELD = ("median", "min", "max")
SURVIVAL_COUNTS = ("at_risk", "events", "censored")
SURVIVAL_COLUMNS = (*SURVIVAL_COUNTS, "survival", "std_err")
MODEL_COLUMNS = ("estimate", "std_err", "p_value", "ci_low", "ci_high")
SAFE_METHODS = ("suppress", "round")
# Names the helpers add to their working frames; data columns may not take them.
STATISTIC = "statistic"
VARIABLE = "variable"
INTERVAL = "interval"
_MAX_REASONS = 10


def used_columns(command: str, spec: dict[str, Any]) -> list[str]:
    """The evidence columns (besides the person column) an output is computed from."""
    if command in ("crosstab", "pivot_table"):
        cols = [*spec["index"], *spec["columns"]]
        return cols + ([spec["values"]] if spec.get("values") else [])
    if command == "hist":
        return [*spec["by"], spec["column"]]
    if command == "describe":
        return [*spec["by"], *spec["columns"]]
    if command == "survival":
        return [*spec["by"], spec["duration"], spec["event"]]
    if command in ("ols", "logit", "probit"):
        return list(spec["columns"])
    raise AnalysisError(f"There is no analysis command {command!r}.")


# -- interval labels (hist bins, survival intervals) ---------------------------------------
def edge_text(x: float) -> str:
    value = float(x)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def interval_labels(edges: Sequence[float], *, closed_last: bool) -> list[str]:
    """'[0, 10)', '[10, 20)', ..., the last '[90, 100]' when ``closed_last`` (histograms)."""
    out = []
    for k in range(len(edges) - 1):
        right = "]" if closed_last and k == len(edges) - 2 else ")"
        out.append(f"[{edge_text(edges[k])}, {edge_text(edges[k + 1])}{right}")
    return out


def nice_edges(low: float, high: float, bins: int) -> list[float]:
    """About ``bins`` equal intervals on round numbers covering [low, high].

    Round edges disclose the minimum and maximum only to within one interval.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise AnalysisError("The values are not finite numbers; give the edges explicitly.")
    span = high - low
    raw = span / bins if span > 0 else max(abs(low), 1.0) / 10
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-12))
    start = math.floor(low / step) * step
    count = max(math.ceil((high - start) / step - 1e-9), 1)
    if start + count * step <= high and span == 0:
        count += 1
    decimals = max(0, -math.floor(math.log10(step)) + 2)
    return [round(start + k * step, decimals) for k in range(count + 1)]


# -- the computed output --------------------------------------------------------------------
@dataclass
class Part:
    """One checked TableReport behind a block of the output's columns."""

    report: TableReport
    first_column: int  # where its columns start in the output's table
    label: str | None = None  # the column label it stands for in the output (multi-part tables)
    release_name: str = ""  # suffix of its released table (survival counts)
    margins: bool = False  # its margins are derivable from what is published
    release: bool = True  # its persons are stored for differencing (describe: the count only)


@dataclass
class Computed:
    """An output recomputed from evidence: table, per-cell verdicts, report, released persons."""

    command: str
    kind: str
    spec: dict[str, Any]
    rules: Rules
    table: pd.DataFrame  # as published (a safe version when the spec asks for one)
    severity: np.ndarray  # per table cell: 0 pass, 1 review, 2 fail (ignored for safe versions)
    withholdable: np.ndarray  # per table cell: the file may leave it out
    auto_withhold: np.ndarray | None = None  # cells the workspace leaves out when they fail
    parts: list[Part] = field(default_factory=list)
    table_outcomes: list[RuleOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: ModelReport | None = None
    safe: SafeTable | None = None
    rel_tol: float = TABLE_REL_TOL
    header: dict[str, Any] = field(default_factory=dict)

    # -- verdicts ----------------------------------------------------------------------------
    def status(self, withheld: np.ndarray | None = None) -> Verdict:
        """The worst verdict of the published cells (all cells but ``withheld``)."""
        if self.model is not None:
            return self.model.status
        if self.safe is not None:
            return self.safe.status
        worst = 0
        sev = self.severity if withheld is None else np.where(withheld, 0, self.severity)
        if sev.size:
            worst = int(sev.max())
        for outcome in self.table_outcomes:
            worst = max(worst, outcome.verdict.severity)
        return Verdict.from_severity(worst)

    def withheld_of_plan(self) -> np.ndarray | None:
        """Cells a plan's output leaves out, in the preview and in the server's file alike:
        describe's failing extremes, and for describe's safe version (it publishes no totals)
        every failing statistic."""
        if self.command == "describe" and self.spec.get("safe") == "suppress":
            return np.asarray(self.severity >= Verdict.FAIL.severity)
        return self.withheld_in_workspace() if self.auto_withhold is not None else None

    def withheld_in_workspace(self) -> np.ndarray:
        """Cells the workspace leaves out by itself (describe's failing minima and maxima)."""
        if self.auto_withhold is None:
            return np.zeros(self.severity.shape, dtype=bool)
        return self.auto_withhold & (self.severity >= Verdict.FAIL.severity)

    def reasons(self, withheld: np.ndarray | None = None) -> list[str]:
        """Sentences a researcher can act on, one per failing cell (the first few)."""
        if self.model is not None:
            return [o.sentence for o in self.model.failing]
        if self.safe is not None:
            if self.safe.status == Verdict.PASS:
                return []
            return list(self.safe.notes)
        out: list[str] = []
        failing = np.argwhere(self.severity > 0)
        shown = 0
        extra = 0
        for r, c in failing:
            if withheld is not None and withheld[r, c]:
                continue
            if shown >= _MAX_REASONS:
                extra += 1
                continue
            cell = self.cell(int(r), int(c))
            where = describe_label(_cell_label(cell))
            for outcome in cell.get("failing", []):
                out.append(f"{where}: {outcome['sentence']}")
            shown += 1
        if extra:
            out.append(f"{extra} more cells fail or need review; the report lists every cell.")
        for outcome in self.table_outcomes:
            if outcome.verdict != Verdict.PASS:
                out.append(outcome.sentence)
        return out

    # -- per-cell explanation ----------------------------------------------------------------
    def _part_of(self, c: int) -> tuple[Part, int] | None:
        for part in reversed(self.parts):
            if c >= part.first_column:
                local = c - part.first_column
                if local < len(part.report.col_labels):
                    return part, local
                return None
        return None

    def cell(self, r: int, c: int, *, evidence: bool = False) -> dict[str, Any]:
        """One cell's labels, value, persons and every rule's outcome (top contributions too
        when ``evidence``: individual values, for the workspace and reviewers only)."""
        found = self._part_of(c)
        row_names = list(self.table.index.names)
        labels = self.table.index[r]
        labels = labels if isinstance(labels, tuple) else (labels,)
        if found is None:
            return {
                "index": [json_scalar(v) for v in labels],
                "columns": [json_scalar(self.table.columns[c])],
                "index_names": row_names,
                "value": json_scalar(self.table.iat[r, c]),
                "status": Verdict.PASS.value,
                "failing": [],
                "derived": True,
            }
        part, local = found
        report = part.report
        out = report.cell(r * len(report.col_labels) + local).to_dict(
            explain=True, evidence=evidence
        )
        out["index_names"] = list(report.index)
        if part.label is not None:
            out["columns"] = [part.label]
            out["column_names"] = [STATISTIC]
        else:
            out["column_names"] = list(report.columns)
        return out

    def report(
        self, withheld: np.ndarray | None = None, *, evidence: bool = False
    ) -> dict[str, Any]:
        """The machine-readable disclosure report (per cell: labels, value, persons, rules)."""
        if self.model is not None:
            return {"command": self.command, **self.model.to_dict(), "notes": self._notes()}
        status = self.status(withheld)
        if withheld is None and self.safe is not None:
            withheld = np.asarray(self.safe.suppressed, dtype=bool)  # hidden cells: unpublished
        n_rows, n_cols = self.severity.shape
        cells = []
        for r in range(n_rows):
            for c in range(n_cols):
                cell = self.cell(r, c, evidence=evidence)
                cell["published"] = not (withheld is not None and bool(withheld[r, c]))
                cells.append(cell)
        sev = self.severity if withheld is None else np.where(withheld, 0, self.severity)
        by_rule: dict[str, int] = {}
        for cell in cells:
            if cell["published"]:
                for outcome in cell.get("failing", []):
                    by_rule[outcome["rule"]] = by_rule.get(outcome["rule"], 0) + 1
        out: dict[str, Any] = {
            **self.header,
            "kind": self.kind,
            "command": self.command,
            "status": status.value,
            "rules": self.rules.to_dict(),
            "shape": [n_rows, n_cols],
            "summary": {
                "cells": int(sev.size),
                "withheld": int(withheld.sum()) if withheld is not None else 0,
                "pass": int((sev == 0).sum()),
                "review": int((sev == 1).sum()),
                "fail": int((sev == 2).sum()),
                "cells_by_rule": by_rule,
            },
            "table_outcomes": [o.to_dict() for o in self.table_outcomes],
            "differencing": [p.to_dict() for part in self.parts for p in part.report.differencing],
            "notes": self._notes(),
            "cells": cells,
        }
        if self.safe is not None:
            worst = int(self.severity.max()) if self.severity.size else 0
            out["status_before_safe"] = Verdict.from_severity(worst).value
            out["safe"] = self.safe.to_dict()
        return out

    def _notes(self) -> list[str]:
        notes = list(self.notes)
        for part in self.parts:
            for note in part.report.notes:
                if note not in notes:
                    notes.append(note)
        return notes

    # -- persons behind the published cells (differencing later) -------------------------------
    def released_tables(self, name: str, withheld: np.ndarray | None = None) -> list[ReleasedTable]:
        """The persons behind every published cell, to check later outputs against."""
        out = []
        for part in self.parts:
            report = part.report
            if report.person_id is None or not part.release:
                continue
            n_cols = len(report.col_labels)
            mask: np.ndarray = np.ones(report.shape, dtype=bool)
            if self.safe is not None:
                mask = ~np.asarray(self.safe.suppressed, dtype=bool)
            elif withheld is not None and self.command == "describe":
                # A row's persons are used by any statistic of it that is published.
                mask = np.asarray((~withheld).any(axis=1, keepdims=True))
            elif withheld is not None:
                mask = ~withheld[:, part.first_column : part.first_column + n_cols]
            table_name = f"{name}:{part.release_name}" if part.release_name else name
            out.append(
                ReleasedTable.from_report(
                    report, table_name, released_cells=mask, include_margins=part.margins
                )
            )
        return out

    def audit_cells(
        self, name: str, datasets: Sequence[str], withheld: np.ndarray | None = None
    ) -> list[Any]:
        """The published cells (and derivable margins) as linear statistics for the cumulative
        audit (spe.sdc.audit.NewCell): a count, or a sum or mean of ``dataset.column``. A
        statistic that is not linear (a median, a standard deviation) enters as the count of
        its persons: more than is published, so the audit can only be stricter."""
        from spe.sdc.audit import NewCell

        if self.safe is not None and self.safe.method == "round":
            # A reader of a rounded table knows each count only to within the rounding base
            # (even a count that is a multiple of it): no cell is an exact linear statistic.
            return []
        source = "+".join(sorted(datasets)) or "data"
        cells: list[Any] = []
        parts = [p for p in self.parts if p.report.person_id is not None and p.release]
        for part, table in zip(parts, self.released_tables(name, withheld), strict=True):
            agg = part.report.agg
            kind = agg if agg in ("sum", "mean") else "count"
            variable = f"{source}.{part.report.values}" if kind != "count" else None
            for i in range(len(table)):
                persons = table.cell(i)
                if len(persons):
                    label = describe_label(table.labels[i])
                    cells.append(NewCell(kind, persons, variable, label))
        return cells


def _cell_label(cell: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    names = [*cell.get("index_names", []), *cell.get("column_names", [])]
    values = [*cell.get("index", []), *cell.get("columns", [])]
    return tuple(zip(names, values, strict=False))


# -- one function per command ---------------------------------------------------------------
def compute(
    command: str,
    evidence: pd.DataFrame,
    spec: dict[str, Any],
    rules: Rules,
    released: Sequence[ReleasedTable] = (),
) -> Computed:
    """The output ``command`` computes from ``evidence`` as ``spec`` says, checked by ``rules``."""
    if command not in COMMANDS:
        raise AnalysisError(f"There is no analysis command {command!r}.")
    try:
        if command in ("crosstab", "pivot_table"):
            return _crosstab(command, evidence, spec, rules, released)
        if command == "hist":
            return _hist(evidence, spec, rules, released)
        if command == "describe":
            return _describe(evidence, spec, rules, released)
        if command == "survival":
            return _survival(evidence, spec, rules, released)
        return _model(command, evidence, spec, rules)
    except SDCError as exc:
        raise AnalysisError(exc.message) from None


def _single(
    command: str,
    report: TableReport,
    spec: dict[str, Any],
    rules: Rules,
    *,
    plain: bool = False,
) -> Computed:
    """A one-report table (crosstab, pivot_table, hist), or its safe version."""
    shape = report.shape
    severity = report.cell_severity.reshape(shape).copy()
    margins = report.agg in ("count", "sum")
    part = Part(report, 0, margins=margins)
    table = report.table
    safe = None
    method = spec.get("safe")
    if method:
        safe = safe_version(report, method)
        table = safe_frame(safe)
    if plain:
        table.columns.name = None
    header = {
        "agg": report.agg,
        "values": report.values,
        "index": list(report.index),
        "columns": list(report.columns),
        "person_id": report.person_id,
    }
    return Computed(
        command=command,
        kind="table",
        spec=spec,
        rules=rules,
        table=table,
        severity=severity,
        withholdable=np.zeros(shape, dtype=bool),
        parts=[part],
        table_outcomes=list(report.table_outcomes),
        safe=safe,
        header=header,
    )


def safe_frame(safe: SafeTable) -> pd.DataFrame:
    """A safe version's published table (``SafeTable.table`` leaves out a margin that would
    repeat a single cell in a one-row or one-column table)."""
    return safe.table


def _crosstab(
    command: str,
    evidence: pd.DataFrame,
    spec: dict[str, Any],
    rules: Rules,
    released: Sequence[ReleasedTable],
) -> Computed:
    report = check_table(
        evidence,
        spec["index"],
        spec["columns"],
        values=spec.get("values"),
        agg=spec["agg"],
        person_id=spec.get("person_id"),
        rules=rules,
        released=released,
    )
    return _single(command, report, spec, rules)


def _hist(
    evidence: pd.DataFrame, spec: dict[str, Any], rules: Rules, released: Sequence[ReleasedTable]
) -> Computed:
    column, by = spec["column"], list(spec["by"])
    labels = interval_labels(spec["edges"], closed_last=True)
    frame = evidence.copy()
    raw = frame[column]
    text = raw.astype("object").where(raw.notna(), None)
    unknown = sorted({str(v) for v in text.dropna().unique()} - set(labels))
    if unknown:
        raise AnalysisError(
            f"The evidence holds bins of {column!r} that the edges do not make, such as "
            f"{unknown[0]!r}."
        )
    frame[column] = pd.Categorical(text, categories=labels, ordered=True)
    if by:
        report = check_table(
            frame,
            [column],
            by,
            agg="count",
            person_id=spec.get("person_id"),
            rules=rules,
            released=released,
        )
        return _single("hist", report, spec, rules)
    frame[STATISTIC] = _constant(len(frame), "count")
    report = check_table(
        frame,
        [column],
        [STATISTIC],
        agg="count",
        person_id=spec.get("person_id"),
        rules=rules,
        released=released,
    )
    return _single("hist", report, spec, rules, plain=True)


def _constant(n: int, label: str) -> pd.Categorical:
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=[label])


def _numeric(series: pd.Series, what: str) -> np.ndarray:
    if series.dtype == bool or pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy()
    if not pd.api.types.is_numeric_dtype(series.dtype):
        raise AnalysisError(
            f"The column {series.name!r} is not numeric ({series.dtype}); {what} needs numbers."
        )
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def _describe(
    evidence: pd.DataFrame, spec: dict[str, Any], rules: Rules, released: Sequence[ReleasedTable]
) -> Computed:
    columns, by = list(spec["columns"]), list(spec["by"])
    person = spec.get("person_id")
    n, k = len(evidence), len(columns)
    take = np.tile(np.arange(n), k)
    long = pd.DataFrame(
        {name: evidence[name].take(take).reset_index(drop=True) for name in by}
        | ({person: evidence[person].take(take).reset_index(drop=True)} if person else {})
    )
    long[VARIABLE] = pd.Categorical.from_codes(
        np.repeat(np.arange(k), n), categories=columns, ordered=True
    )
    long["value"] = np.concatenate([_numeric(evidence[c], "describe") for c in columns])
    parts = []
    tables = []
    for position, statistic in enumerate(DESCRIBE_STATISTICS):
        long[STATISTIC] = _constant(len(long), statistic)
        report = check_table(
            long,
            [*by, VARIABLE],
            [STATISTIC],
            values="value",
            agg=statistic,
            person_id=person,
            rules=rules,
            released=released,
        )
        parts.append(
            Part(report, position, label=statistic, margins=False, release=statistic == "count")
        )
        tables.append(report.table)
    table = pd.concat(tables, axis=1)
    table.columns = pd.Index(list(DESCRIBE_STATISTICS))
    severity = np.column_stack([p.report.cell_severity for p in parts])
    outcomes = [o for p in parts for o in p.report.table_outcomes if o.verdict != Verdict.PASS]
    if not outcomes and parts[0].report.table_outcomes:
        outcomes = list(parts[0].report.table_outcomes)
    return Computed(
        command="describe",
        kind="table",
        spec=spec,
        rules=rules,
        table=table,
        severity=severity,
        # describe publishes no totals, so leaving any cell out hides it.
        withholdable=np.ones(severity.shape, dtype=bool),
        auto_withhold=np.broadcast_to(
            np.isin(np.asarray(DESCRIBE_STATISTICS), DESCRIBE_WITHHELD), severity.shape
        ).copy(),
        parts=parts,
        table_outcomes=outcomes,
        notes=[
            "Statistics that fail (a minimum or maximum held by few persons, a median with too "
            "few persons near it, for instance) are left out of the file; the rest is checked "
            "cell by cell."
        ],
        header={
            "agg": "describe",
            "values": columns,
            "index": [*by, VARIABLE],
            "columns": [STATISTIC],
            "person_id": person,
        },
    )


# -- survival: Kaplan-Meier by intervals ----------------------------------------------------
def kaplan_meier(
    duration: np.ndarray, event: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct event times, S just after each, Greenwood sum up to each) for one group.

    S(t) = product over event times t_i <= t of (1 - d_i / n_i), n_i the rows with duration
    >= t_i (censored at t_i count as at risk), d_i the events at t_i.
    """
    d = np.sort(np.asarray(duration, dtype=np.float64))
    event_times = np.sort(np.asarray(duration, dtype=np.float64)[np.asarray(event, dtype=bool)])
    times = np.unique(event_times)
    at_risk = len(d) - np.searchsorted(d, times, side="left")
    deaths = np.searchsorted(event_times, times, "right") - np.searchsorted(event_times, times)
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.cumprod(1.0 - deaths / at_risk)
        greenwood = np.cumsum(deaths / (at_risk * (at_risk - deaths)))
    return times, survival, greenwood


def _survival(
    evidence: pd.DataFrame, spec: dict[str, Any], rules: Rules, released: Sequence[ReleasedTable]
) -> Computed:
    by, edges = list(spec["by"]), [float(e) for e in spec["edges"]]
    person = spec.get("person_id")
    for name in [*by, *([person] if person else [])]:
        if name in (INTERVAL, STATISTIC, *SURVIVAL_COUNTS):
            raise AnalysisError(f"Rename the column {name!r}: survival uses that name itself.")
    duration = _numeric(evidence[spec["duration"]], "survival")
    event_raw = evidence[spec["event"]]
    event_values = _numeric(event_raw, "survival's event column")
    present = ~np.isnan(duration) & ~np.isnan(event_values)
    bad = present & ~np.isin(event_values, (0.0, 1.0))
    if bad.any():
        raise AnalysisError(
            f"The event column {spec['event']!r} must be 1 (the event happened) or 0 (censored); "
            f"it holds {event_values[bad][0]:g}."
        )
    if (present & (duration < 0)).any():
        raise AnalysisError(f"The duration column {spec['duration']!r} has negative values.")
    event = event_values == 1.0
    n_intervals = len(edges) - 1
    # Interval j holds durations in [edges[j], edges[j + 1]); j = n_intervals: past the last.
    j = np.searchsorted(np.asarray(edges), np.nan_to_num(duration, nan=-np.inf), "right") - 1
    keep = present & (j >= 0)
    notes = []
    before = int((present & (j < 0)).sum())
    if before:
        notes.append(
            f"{before} rows with a duration before the first edge {edge_text(edges[0])} are left "
            "out; the survival is conditional on reaching it."
        )
    if (~present).any():
        notes.append(f"{int((~present).sum())} rows with no duration or event are left out.")
    beyond = int((keep & (j >= n_intervals)).sum())
    if beyond:
        notes.append(
            f"{beyond} rows last beyond the last edge {edge_text(edges[-1])}: they are at risk "
            "in every interval and leave none."
        )
    rows = np.flatnonzero(keep)
    last = np.minimum(j[rows], n_intervals - 1)
    reps = last + 1
    expanded_rows = np.repeat(rows, reps)
    starts = np.repeat(np.cumsum(reps) - reps, reps)
    interval = np.arange(len(expanded_rows)) - starts
    exits_here = interval == j[expanded_rows]
    frame = pd.DataFrame(
        {name: evidence[name].take(expanded_rows).reset_index(drop=True) for name in by}
    )
    if person:
        frame[person] = evidence[person].take(expanded_rows).reset_index(drop=True)
    labels = interval_labels(edges, closed_last=False)
    frame[INTERVAL] = pd.Categorical.from_codes(interval, categories=labels, ordered=True)
    exp_event = event[expanded_rows]
    frame["events"] = np.where(exits_here & exp_event, 1.0, np.nan)
    frame["censored"] = np.where(exits_here & ~exp_event, 1.0, np.nan)
    # A single column of counts over time has no class disclosure in a full cell, and an
    # interval without events or censoring is a published fact of every life table: the at-risk
    # count of each interval is what the threshold protects.
    count_rules = dataclasses.replace(rules, full_cells=Verdict.PASS)
    exit_rules = dataclasses.replace(rules, full_cells=Verdict.PASS, zeros=Verdict.PASS)
    parts = []
    tables = []
    for position, statistic in enumerate(SURVIVAL_COUNTS):
        frame[STATISTIC] = _constant(len(frame), statistic)
        report = check_table(
            frame,
            [*by, INTERVAL],
            [STATISTIC],
            values=None if statistic == "at_risk" else statistic,
            agg="count",
            person_id=person,
            rules=count_rules if statistic == "at_risk" else exit_rules,
            released=released,
            # A life table lists the intervals someone is at risk in, nothing after.
            observed=True,
        )
        parts.append(Part(report, position, label=statistic, release_name=statistic, margins=True))
        tables.append(report.table)
    table = pd.concat(tables, axis=1)
    table.columns = pd.Index(list(SURVIVAL_COUNTS))
    survival, std_err = _km_columns(evidence, by, duration, event, keep, edges, parts[0].report)
    table["survival"] = survival
    table["std_err"] = std_err
    severity = np.column_stack(
        [*(p.report.cell_severity for p in parts), np.zeros((len(table), 2), dtype=np.int8)]
    )
    outcomes = [o for p in parts for o in p.report.table_outcomes if o.verdict != Verdict.PASS]
    notes.append(
        "survival is the Kaplan-Meier estimate of lasting to the interval's upper edge (past "
        "every event before it); std_err is Greenwood's. Intervals with nobody at risk are left "
        "out."
    )
    return Computed(
        command="survival",
        kind="survival",
        spec=spec,
        rules=rules,
        table=table,
        severity=severity,
        withholdable=np.zeros(severity.shape, dtype=bool),
        parts=parts,
        table_outcomes=outcomes,
        notes=notes,
        header={
            "agg": "survival",
            "values": [spec["duration"], spec["event"]],
            "index": [*by, INTERVAL],
            "columns": [STATISTIC],
            "person_id": person,
            "edges": edges,
        },
    )


def _km_columns(
    evidence: pd.DataFrame,
    by: list[str],
    duration: np.ndarray,
    event: np.ndarray,
    keep: np.ndarray,
    edges: list[float],
    report: TableReport,
) -> tuple[np.ndarray, np.ndarray]:
    """Per table row (group, interval): KM survival at the interval's upper edge, its std error."""
    if by:
        keys = evidence.loc[keep, by]
        groups = {
            (k if isinstance(k, tuple) else (k,)): np.flatnonzero(keep)[idx]
            for k, idx in keys.groupby(by, sort=True, dropna=True, observed=True).indices.items()
        }
    else:
        groups = {(): np.flatnonzero(keep)}
    curves = {key: kaplan_meier(duration[idx], event[idx]) for key, idx in groups.items()}
    labels = interval_labels(edges, closed_last=False)
    position = {label: k for k, label in enumerate(labels)}
    survival = np.full(len(report.row_labels), np.nan)
    std_err = np.full(len(report.row_labels), np.nan)
    for r, label in enumerate(report.row_labels):
        key, interval = tuple(label[:-1]), label[-1]
        times, surv, greenwood = curves[key]
        upper = edges[position[interval] + 1]
        passed = int(np.searchsorted(times, upper, "left"))  # event times before the upper edge
        if passed == 0:
            survival[r], std_err[r] = 1.0, 0.0
            continue
        s = float(surv[passed - 1])
        survival[r] = s
        variance = float(greenwood[passed - 1])
        std_err[r] = s * math.sqrt(variance) if math.isfinite(variance) and s > 0 else np.nan
    return survival, std_err


# -- models ---------------------------------------------------------------------------------
def _model(command: str, evidence: pd.DataFrame, spec: dict[str, Any], rules: Rules) -> Computed:
    person = spec.get("person_id")
    usable = [str(c) for c in evidence.columns if c != person]
    used = formula_columns(spec["formula"], usable)
    if sorted(used) != sorted(spec["columns"]):
        raise AnalysisError(
            f"The formula uses the columns {', '.join(used)}, but the spec lists "
            f"{', '.join(spec['columns'])}."
        )
    report = check_formula(evidence, spec["formula"], command, rules, person_id=person)
    from scipy import stats

    quantile = (
        float(stats.t.ppf(0.975, report.df_resid))
        if command == "ols" and report.df_resid > 0
        else float(stats.norm.ppf(0.975))
    )
    rows = []
    for term, numbers in (report.coefficients or {}).items():
        estimate = _float(numbers.get("estimate"))
        std_err = _float(numbers.get("std_err"))
        rows.append(
            (
                term,
                estimate,
                std_err,
                _float(numbers.get("p_value")),
                estimate - quantile * std_err,
                estimate + quantile * std_err,
            )
        )
    table = pd.DataFrame(
        [r[1:] for r in rows],
        index=pd.Index([r[0] for r in rows], name="term", dtype=object),
        columns=pd.Index(list(MODEL_COLUMNS)),
    )
    notes = [
        "ci_low and ci_high are the 95 % confidence interval ("
        + ("t" if command == "ols" else "normal")
        + " quantile), as statsmodels' conf_int gives."
    ]
    if person is None:
        notes.append("Without a person column the degrees of freedom count rows, not persons.")
    return Computed(
        command=command,
        kind="model",
        spec=spec,
        rules=rules,
        table=table,
        severity=np.zeros(table.shape, dtype=np.int8),
        withholdable=np.zeros(table.shape, dtype=bool),
        notes=notes,
        model=report,
        rel_tol=MODEL_REL_TOL,
    )


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def check_aggfunc(aggfunc: str) -> str:
    """``aggfunc`` when spe.sdc can check it; pandas' 'size' and 'len' mean count."""
    name = {"size": "count", "len": "count"}.get(aggfunc, aggfunc)
    if name not in AGGS:
        raise AnalysisError(f"aggfunc is {aggfunc!r}; use one of {', '.join(AGGS)}.")
    return name
