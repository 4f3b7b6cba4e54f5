"""The CSV form of every recorded output ("SPE table CSV, version 1"), and reading it back.

One writer serves the workspace and the replay, so the replay compares a file with the same
rendering of the table it recomputed: labels as text, values as numbers within a tolerance.

Format: UTF-8 (a BOM is accepted, none is written), ``,`` separated, lines ending ``\\n``, a field
quoted only when it holds ``,``, ``"`` or a line break (RFC 4180, ``"`` doubled). Two layouts:

- plain (the column axis has no name: describe, hist without ``by``, survival, model
  coefficients): one header line, the row dimension names then the column names;
- named (column dimensions C1..Cn: crosstab, pivot_table, hist with ``by``): n header lines, line
  k holding Ck's name, m-1 empty fields (m row dimensions) and the k-th part of every column
  label; then one line with the m row dimension names and empty fields (pandas' ``to_csv`` of a
  frame with MultiIndex columns).

Then one line per table row: its m labels, then its values. A missing or suppressed value is an
empty field. A number with no fractional part (below 10^15) is written as an integer (``12``),
any other as Python's shortest round-trip form (``0.1``, ``1e-05``). Labels are text as is,
numbers as above, booleans ``True``/``False``, dates ISO 8601. A safe version's margins are a row
and/or a column labelled ``Total`` (other row dimensions of the Total row are empty).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spe.analysis.errors import AnalysisError

TABLE_REL_TOL = 1e-9
MODEL_REL_TOL = 1e-6  # iterative fits (logit, probit) agree to about 1e-8 across machines
ABS_TOL = 1e-12


class CSVParseError(AnalysisError):
    """The file is not a CSV table: wrong encoding, broken quoting or ragged lines."""


def format_number(x: Any) -> str:
    """A number as the CSV writes it: integers plain, other floats in shortest round-trip form."""
    if isinstance(x, bool | np.bool_):
        return "1" if x else "0"
    if isinstance(x, int | np.integer):
        return str(int(x))
    value = float(x)
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def format_label(x: Any) -> str:
    """A row or column label as text."""
    if _missing(x):
        return ""
    if isinstance(x, bool | np.bool_):
        return "True" if x else "False"
    if isinstance(x, int | float | np.integer | np.floating):
        return format_number(x)
    if hasattr(x, "isoformat"):
        return str(x.isoformat())
    return str(x)


def format_value(x: Any) -> str:
    """A cell value as text: empty when missing or suppressed."""
    if _missing(x):
        return ""
    if isinstance(x, bool | int | float | np.bool_ | np.integer | np.floating):
        return format_number(x)
    return str(x)


def _names(axis: pd.Index) -> list[str]:
    return ["" if n is None else str(n) for n in axis.names]


def _tuples(axis: pd.Index) -> list[tuple[Any, ...]]:
    if isinstance(axis, pd.MultiIndex):
        return list(axis)
    return [(v,) for v in axis]


def is_named_layout(table: pd.DataFrame) -> bool:
    """True when the column axis has named dimensions (the named layout)."""
    return all(n is not None for n in table.columns.names)


@dataclass
class Rendered:
    """A table as CSV fields, with where its header ends and its labels end on each line."""

    rows: list[list[str]]
    header_lines: int
    label_fields: int
    row_labels: list[str] = field(default_factory=list)  # "sex=F, region=North" per data line
    column_labels: list[str] = field(default_factory=list)


def render(table: pd.DataFrame) -> Rendered:
    """The CSV fields of ``table`` in SPE table CSV v1."""
    row_names = _names(table.index)
    m = len(row_names)
    col_tuples = _tuples(table.columns)
    rows: list[list[str]] = []
    if is_named_layout(table):
        col_names = _names(table.columns)
        for k, name in enumerate(col_names):
            rows.append([name, *([""] * (m - 1)), *(format_label(t[k]) for t in col_tuples)])
        rows.append([*row_names, *([""] * len(col_tuples))])
    else:
        rows.append([*row_names, *(format_label(t[0]) for t in col_tuples)])
    header_lines = len(rows)
    values = table.to_numpy(dtype=object)
    row_tuples = _tuples(table.index)
    row_labels = []
    for label, line in zip(row_tuples, values, strict=True):
        rows.append([*(format_label(v) for v in label), *(format_value(v) for v in line)])
        row_labels.append(
            ", ".join(f"{n}={format_label(v)}" for n, v in zip(row_names, label, strict=True))
        )
    column_labels = ["/".join(format_label(v) for v in t) for t in col_tuples]
    return Rendered(rows, header_lines, m, row_labels, column_labels)


def table_csv(table: pd.DataFrame) -> str:
    """``table`` as SPE table CSV v1 text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows(render(table).rows)
    return buffer.getvalue()


def parse_csv(data: bytes) -> list[list[str]]:
    """The fields of a CSV file; raises CSVParseError when it is not a rectangular CSV table."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CSVParseError(f"it is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise CSVParseError(f"its CSV is broken ({exc})") from None
    while rows and not rows[-1]:
        rows.pop()
    if not rows:
        raise CSVParseError("it is empty")
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise CSVParseError(
                f"line {number} has {len(row)} fields where the first line has {width}"
            )
    return rows


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _close(a: float, b: float, rel_tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=ABS_TOL)


@dataclass
class Comparison:
    """How a file compares with the recomputed table."""

    problems: list[str]
    withheld: np.ndarray  # per table cell: the file leaves out a value it may leave out
    differing_cells: int = 0


def compare(
    expected: pd.DataFrame,
    data: bytes,
    *,
    withholdable: np.ndarray | None = None,
    rel_tol: float = TABLE_REL_TOL,
) -> Comparison:
    """Compare a CSV file with ``expected`` rendered as CSV (raises CSVParseError first).

    Header and label fields must be equal as text; values equal as text or as numbers within
    ``rel_tol``. Where ``withholdable`` is True the file may leave a value out (not published).
    """
    found = parse_csv(data)
    want = render(expected)
    shape = expected.shape
    withheld = np.zeros(shape, dtype=bool)
    width = len(want.rows[0])
    if len(found[0]) != width or len(found) != len(want.rows):
        return Comparison(
            [
                f"the file has {len(found)} lines of {len(found[0])} fields, the recomputed "
                f"table {len(want.rows)} lines of {width} fields"
            ],
            withheld,
        )
    problems: list[str] = []
    for line in range(want.header_lines):
        if found[line] != want.rows[line]:
            problems.append(
                f"header line {line + 1} reads {','.join(found[line])!r} where the recomputed "
                f"table has {','.join(want.rows[line])!r}"
            )
    m = want.label_fields
    differing = 0
    for r in range(shape[0]):
        line = want.header_lines + r
        got, exp = found[line], want.rows[line]
        if got[:m] != exp[:m]:
            problems.append(
                f"line {line + 1} is labelled {','.join(got[:m])!r} where the recomputed table "
                f"has {','.join(exp[:m])!r}"
            )
            continue
        for c in range(shape[1]):
            a, b = got[m + c], exp[m + c]
            if a == b:
                continue
            if a == "" and withholdable is not None and withholdable[r, c]:
                withheld[r, c] = True  # left out: not published
                continue
            x, y = _number(a), _number(b)
            if x is not None and y is not None and _close(x, y, rel_tol):
                continue
            differing += 1
            if differing <= 3:
                shown_a = a or "nothing"
                shown_b = b or "nothing"
                problems.append(
                    f"the cell {want.row_labels[r]}, column {want.column_labels[c]} holds "
                    f"{shown_a} where the recomputed value is {shown_b}"
                )
    if differing > 3:
        problems.append(f"{differing - 3} more cells differ")
    return Comparison(problems, withheld, differing)
