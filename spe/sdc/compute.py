"""The vectorised arithmetic behind a checked table: cells, persons, contributions, statistics.

Everything here works on whole columns with numpy (one group code per row, sorts on integer keys,
bincount and reduceat); nothing loops over rows or cells in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spe.sdc.errors import SDCInputError

AGGS = ("count", "sum", "mean", "median", "std", "min", "max", "mode")
# Statistics whose cells are checked for dominance on per-person contributions: totals and means
# (as in the literature and ACRO), and std, whose value approaches a dominant person's own.
MAGNITUDE_AGGS = ("sum", "mean", "std")
ORDER_AGGS = ("min", "max", "mode")

_DENSE_LIMIT = 1 << 24  # combined codes up to this many possible values are compacted by bincount


@dataclass
class Axis:
    """The observed label tuples of the table's rows (or columns) and each data row's position."""

    names: list[str]
    labels: list[tuple[Any, ...]]
    codes: np.ndarray  # per data row: the position in ``labels``, -1 where a label is missing
    dtypes: list[Any]  # per column: its CategoricalDtype (kept in the table's index), else None


def _dimension(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes (-1 for missing) and the observed labels of one column, in pandas' order."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy()
        categories = series.cat.categories
        present = np.bincount(codes.astype(np.int64) + 1, minlength=len(categories) + 1)[1:] > 0
        if present.all():
            return codes, np.asarray(categories, dtype=object)
        remap = np.full(len(categories) + 1, -1, dtype=np.int64)
        remap[:-1][present] = np.arange(int(present.sum()))
        return remap[codes], np.asarray(categories[present], dtype=object)
    try:
        codes, uniques = pd.factorize(series, sort=True)
    except TypeError:  # labels of mixed types cannot be sorted: keep first-seen order
        codes, uniques = pd.factorize(series, sort=False)
    return codes, np.asarray(uniques, dtype=object)


def _compact(combined: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber non-negative codes below ``total`` to 0..k-1 in order; -1 stays -1."""
    if total <= _DENSE_LIMIT:
        present = np.bincount(combined + 1, minlength=total + 1)[1:] > 0
        observed = np.flatnonzero(present)
        remap = np.full(total + 1, -1, dtype=np.int64)
        remap[:-1][present] = np.arange(len(observed))
        return remap[combined], observed
    valid = combined >= 0
    codes, observed = pd.factorize(combined[valid], sort=True)
    out = np.full(len(combined), -1, dtype=np.int64)
    out[valid] = codes
    return out, np.asarray(observed, dtype=np.int64)


def axis(df: pd.DataFrame, names: list[str]) -> Axis:
    """Combine one or more columns into one code per row (observed combinations only).

    Columns are folded in one at a time and renumbered after each, so the running code never
    exceeds the number of observed combinations, however many labels the columns have.
    """
    parts = [_dimension(df[name]) for name in names]
    dtypes = [
        df[name].dtype if isinstance(df[name].dtype, pd.CategoricalDtype) else None
        for name in names
    ]
    codes, first_labels = parts[0]
    if len(parts) == 1:
        return Axis(names, [(label,) for label in first_labels], codes, dtypes)
    code = codes.astype(np.int64)
    digits = [np.arange(len(first_labels), dtype=np.int64)]  # per observed combination
    for next_codes, next_labels in parts[1:]:
        size = max(len(next_labels), 1)
        combined = code * size + next_codes
        combined[(code < 0) | (next_codes < 0)] = -1
        code, observed = _compact(combined, len(digits[0]) * size)
        previous, digit = np.divmod(observed, size)
        digits = [d[previous] for d in digits] + [digit]
    columns = [labels[d] for (_, labels), d in zip(parts, digits, strict=True)]
    return Axis(names, list(zip(*columns, strict=True)), code, dtypes)


@dataclass
class Persons:
    """Dense per-row person codes and what they stand for (to hash them for differencing)."""

    codes: np.ndarray  # int64, one per data row
    size: int  # codes are in [0, size)
    ids: np.ndarray | None  # ids[code] is the person's id; None: see hashes, else code is the id
    distinct_rows: bool  # True when no two rows share a person (no sort needed)
    hashes: np.ndarray | None = None  # hashes[code] is the person's hash, when known already


def _arrow_fixed_width(series: pd.Series) -> np.ndarray | None:
    """An (n, L) byte matrix of an Arrow-backed string column whose values all have length L."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return None
    arrow = getattr(series.array, "__arrow_array__", None)
    if arrow is None or not pd.api.types.is_string_dtype(series.dtype):
        return None
    data = arrow()
    chunks = data.chunks if isinstance(data, pa.ChunkedArray) else [data]
    if not chunks or data.null_count:
        return None
    parts = []
    width = None
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        low, high = pc.min_max(pc.binary_length(chunk)).values()
        if low.as_py() != high.as_py() or (width is not None and low.as_py() != width):
            return None
        width = int(low.as_py())
        if width == 0:
            return None
        fixed = chunk.cast(pa.binary(width))
        parts.append(
            np.frombuffer(
                fixed.buffers()[1],
                dtype=np.uint8,
                count=len(fixed) * width,
                offset=fixed.offset * width,
            ).reshape(-1, width)
        )
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def persons_of(series: pd.Series) -> Persons:
    """Dense codes for the person column (its distinct values), the fastest way the type allows."""
    missing = int(series.isna().sum())
    if missing:
        raise SDCInputError(
            f"The person column {series.name!r} is empty in {missing} rows; every row must "
            "belong to a person (drop those rows or fix the extract)."
        )
    if series.dtype.kind in "iu" and len(series):
        values = series.to_numpy()
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high < (1 << 40):
            # Small non-negative integers are their own dense-enough codes: no hashing pass.
            return Persons(values.astype(np.int64, copy=False), high + 1, None, False)
    raw = _arrow_fixed_width(series)
    if raw is not None:
        # Pseudonyms all have one length: hash the bytes in place, then factorize integers,
        # several times faster than factorizing the strings.
        from spe.sdc.differencing import hash_fixed_width

        codes, uniques = pd.factorize(hash_fixed_width(raw))
        return Persons(
            np.asarray(codes, dtype=np.int64),
            len(uniques),
            None,
            len(uniques) == len(series),
            hashes=np.asarray(uniques, dtype=np.int64),
        )
    codes, uniques = pd.factorize(series)
    ids = np.asarray(uniques, dtype=object)
    return Persons(np.asarray(codes, dtype=np.int64), len(ids), ids, len(ids) == len(series))


@dataclass
class PairSource:
    """Who is behind each cell, kept cheaply until differencing or a release asks for it.

    Either ``keys`` (sorted unique ``cell << bits | person``) or the per-row ``cell`` and
    ``codes`` of a table where no two rows share a person.
    """

    bits: int  # person codes fit in this many bits
    keys: np.ndarray | None = None
    cell: np.ndarray | None = None
    codes: np.ndarray | None = None

    def sets(self, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, person codes): cell i's persons, sorted, are codes[offsets[i]:offsets[i+1]]."""
        keys = self.keys
        if keys is None:
            assert self.cell is not None and self.codes is not None
            keys = np.sort(_pair_keys(self.cell, self.codes, self.bits))
        counts = np.bincount(keys >> np.int64(self.bits), minlength=n_cells)
        offsets = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return offsets, keys & np.int64((1 << self.bits) - 1)


def _person_bits(size: int) -> int:
    return max(int(size - 1).bit_length(), 1)


def _pair_keys(cell: np.ndarray, codes: np.ndarray, bits: int) -> np.ndarray:
    """cell << bits | person: one sortable integer per (cell, person); shifts, not divisions."""
    keys = cell << np.int64(bits)
    keys |= codes
    return keys


@dataclass
class CellStats:
    """Per cell (flat, row-major over rows x columns) everything the rules need."""

    n_cells: int
    rows: np.ndarray  # data rows in the cell
    n_values: np.ndarray  # rows with a non-missing value (= rows for a plain count)
    persons: np.ndarray  # distinct persons with a non-missing value
    value: np.ndarray  # the statistic released (float64; count tables int64; mode: object)
    top: np.ndarray | None = None  # (n_cells, n_top) largest per-person |contributions|
    total_abs: np.ndarray | None = None  # sum of |contributions|
    negative: np.ndarray | None = None  # bool: a negative value in the cell
    holders: np.ndarray | None = None  # persons holding the released min/max/mode value
    distinct_values: np.ndarray | None = None  # distinct non-missing values (min/max/mode)
    pairs: PairSource | None = None  # the persons behind each cell (None without a person id)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where a new value starts in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.empty(len(sorted_keys), dtype=bool)
    new[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    return np.flatnonzero(new)


def top_contributions(
    pair_cell: np.ndarray, contrib: np.ndarray, n_cells: int, n_top: int
) -> np.ndarray:
    """The ``n_top`` largest (non-negative) contributions per cell, in any row order.

    Each round finds every cell's largest value below the previous round's with one unbuffered
    ``np.maximum.at`` and counts how often it occurs (ties fill several places at once), so the
    work is at most ``n_top`` linear passes, with no sort and no regrouping of the rows.
    """
    out = np.zeros((n_cells, n_top), dtype=np.float64)
    if len(pair_cell) == 0:
        return out
    filled = np.zeros(n_cells, dtype=np.int64)
    work = contrib
    for _ in range(n_top):
        best = np.full(n_cells, -1.0)
        np.maximum.at(best, pair_cell, work)
        at_best = best[pair_cell]
        hits = (work == at_best) & (at_best >= 0)
        times = np.bincount(pair_cell[hits], minlength=n_cells)
        for k in range(n_top):
            put = (times > k) & (filled + k < n_top)
            out[put, (filled + k)[put]] = best[put]
        filled = np.minimum(filled + times, n_top)
        if (filled >= n_top).all() or not (best >= 0).any():
            break
        # Next round: only values below this round's best (-1 marks "used up").
        work = np.where(work < at_best, work, -1.0)
    return out


def cell_stats(
    cell: np.ndarray,
    n_cells: int,
    agg: str,
    values: pd.Series | None,
    persons: Persons | None,
    n_top: int,
) -> CellStats:
    """Compute the statistic and the rule inputs for every cell."""
    rows = np.bincount(cell, minlength=n_cells)
    if values is None:  # a plain frequency table
        stats = CellStats(n_cells, rows, rows, rows, rows.astype(np.int64))
        if persons is None:
            return stats
        _distinct_persons(stats, cell, persons, n_cells)
        return stats

    raw = values
    if agg != "mode" and not (pd.api.types.is_numeric_dtype(values.dtype) or values.dtype == bool):
        raise SDCInputError(
            f"The column {values.name!r} is not numeric ({values.dtype}); {agg} needs numbers. "
            "Convert it first, or use agg='mode' or a count."
        )
    present = values.notna().to_numpy()
    all_present = bool(present.all())
    cell_v = cell if all_present else cell[present]
    n_values = np.bincount(cell_v, minlength=n_cells)

    if agg == "count":
        stats = CellStats(n_cells, rows, n_values, n_values, n_values.astype(np.int64))
        if persons is not None:
            _distinct_persons(stats, cell_v, _subset(persons, present, all_present), n_cells)
        return stats

    if agg == "mode":
        return _mode_stats(
            cell_v,
            n_cells,
            raw[present] if not all_present else raw,
            rows,
            n_values,
            _maybe_subset(persons, present, all_present),
        )

    v = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    if not all_present:
        v = v[present]
    stats = CellStats(n_cells, rows, n_values, n_values, np.full(n_cells, np.nan))
    nonempty = n_values > 0
    sums = np.bincount(cell_v, weights=v, minlength=n_cells)
    if agg == "sum":
        stats.value = np.where(nonempty, sums, np.nan)
    elif agg == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.value = sums / n_values
    elif agg == "std":
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / n_values
            dev = v - mean[cell_v]
            ss = np.bincount(cell_v, weights=dev * dev, minlength=n_cells)
            stats.value = np.where(n_values > 1, np.sqrt(ss / (n_values - 1)), np.nan)
    elif agg == "median":
        # A median is a position, not a total: no contributions, only who is behind the cell.
        med = pd.Series(v).groupby(cell_v, sort=True).median()
        stats.value[med.index.to_numpy()] = med.to_numpy()
        if persons is not None:
            _distinct_persons(stats, cell_v, _subset(persons, present, all_present), n_cells)
        return stats
    elif agg in ("min", "max"):
        low = np.full(n_cells, np.inf)
        np.minimum.at(low, cell_v, v)
        high = np.full(n_cells, -np.inf)
        np.maximum.at(high, cell_v, v)
        stats.value = np.where(nonempty, low if agg == "min" else high, np.nan)
        # 1 distinct value means everyone in the cell has the same one.
        stats.distinct_values = np.where(nonempty, np.where(high > low, 2, 1), 0)
        at_extreme = v == stats.value[cell_v]
        holder_persons = _maybe_subset(persons, present, all_present)
        stats.holders = _count_distinct(
            cell_v[at_extreme],
            None if holder_persons is None else holder_persons.codes[at_extreme],
            None if holder_persons is None else holder_persons.size,
            n_cells,
        )
        if persons is not None and holder_persons is not None:
            _distinct_persons(stats, cell_v, holder_persons, n_cells)
        return stats

    negative = v < 0
    if negative.any():
        stats.negative = np.bincount(cell_v[negative], minlength=n_cells) > 0
    contrib = np.abs(v)
    if persons is None:  # each row is a person: its value is its contribution
        pair_cell, pair_contrib = cell_v, contrib
    else:
        sub = _subset(persons, present, all_present)
        pair_cell, pair_contrib = _person_contributions(stats, cell_v, contrib, sub, n_cells)
    stats.total_abs = np.bincount(pair_cell, weights=pair_contrib, minlength=n_cells)
    stats.top = top_contributions(pair_cell, pair_contrib, n_cells, n_top)
    return stats


def _subset(persons: Persons, present: np.ndarray, all_present: bool) -> Persons:
    if all_present:
        return persons
    return Persons(
        persons.codes[present], persons.size, persons.ids, persons.distinct_rows, persons.hashes
    )


def _maybe_subset(
    persons: Persons | None, present: np.ndarray, all_present: bool
) -> Persons | None:
    return None if persons is None else _subset(persons, present, all_present)


def _count_distinct(
    cell: np.ndarray, codes: np.ndarray | None, size: int | None, n_cells: int
) -> np.ndarray:
    if codes is None or size is None:
        return np.bincount(cell, minlength=n_cells)
    keys = np.sort(cell.astype(np.int64) * size + codes)
    return np.bincount(keys[_run_starts(keys)] // size, minlength=n_cells)


def _distinct_persons(stats: CellStats, cell: np.ndarray, persons: Persons, n_cells: int) -> None:
    """Distinct persons per cell; the (cell, person) pairs are kept for differencing."""
    bits = _person_bits(persons.size)
    if persons.distinct_rows:
        stats.persons = stats.n_values
        stats.pairs = PairSource(bits, cell=cell, codes=persons.codes)
        return
    keys = _pair_keys(cell, persons.codes, bits)
    keys.sort()
    pairs = keys[_run_starts(keys)]
    del keys
    stats.persons = np.bincount(pairs >> np.int64(bits), minlength=n_cells)
    stats.pairs = PairSource(bits, keys=pairs)


def _person_contributions(
    stats: CellStats, cell: np.ndarray, contrib: np.ndarray, persons: Persons, n_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per (cell, person) summed |values|; sets persons and the pair lists."""
    n = len(cell)
    bits = _person_bits(persons.size)
    if persons.distinct_rows:  # one row per person: the values are the contributions
        stats.persons = stats.n_values
        stats.pairs = PairSource(bits, cell=cell, codes=persons.codes)
        return cell, contrib
    keys = _pair_keys(cell, persons.codes, bits)
    key_bits = max(int(n_cells - 1).bit_length(), 1) + bits
    row_bits = max(int(n - 1).bit_length(), 1)
    if key_bits + row_bits <= 63:
        # Sort keys with the row number packed into the low bits: a plain integer sort (much
        # faster than argsort) that also yields the permutation.
        keys <<= np.int64(row_bits)
        keys |= np.arange(n, dtype=np.int64)
        keys.sort()
        order = keys & np.int64((1 << row_bits) - 1)
        keys >>= np.int64(row_bits)
    else:
        order = np.argsort(keys)
        keys = keys[order]
    starts = _run_starts(keys)
    if len(starts) == n:  # no person has two rows in one cell
        pair_contrib = contrib[order]
        pairs = keys
        stats.persons = stats.n_values
    else:
        pair_contrib = np.add.reduceat(contrib[order], starts)
        pairs = keys[starts]
    del order, keys
    pair_cell = pairs >> np.int64(bits)
    if len(starts) != n:
        stats.persons = np.bincount(pair_cell, minlength=n_cells)
    stats.pairs = PairSource(bits, keys=pairs)
    return pair_cell, pair_contrib


def _mode_stats(
    cell: np.ndarray,
    n_cells: int,
    values: pd.Series,
    rows: np.ndarray,
    n_values: np.ndarray,
    persons: Persons | None,
) -> CellStats:
    """The most frequent value per cell (ties: the smallest), its holders, distinct values."""
    try:
        vcodes, uniques = pd.factorize(values, sort=True)
    except TypeError:
        vcodes, uniques = pd.factorize(values, sort=False)
    size = max(len(uniques), 1)
    keys = np.sort(cell.astype(np.int64) * size + vcodes)
    starts = _run_starts(keys)
    run_keys = keys[starts]
    run_len = np.diff(np.append(starts, len(keys)))
    run_cell = run_keys // size
    run_code = run_keys - run_cell * size
    distinct = np.bincount(run_cell, minlength=n_cells)
    cell_starts = _run_starts(run_cell)
    cells = run_cell[cell_starts]
    best = np.maximum.reduceat(run_len, cell_starts) if len(run_len) else run_len
    full = np.zeros(n_cells, dtype=np.int64)
    full[cells] = best
    hit = np.flatnonzero(run_len == full[run_cell])
    first = hit[_run_starts(run_cell[hit])]  # runs are sorted by value: first = smallest value
    mode_code = np.full(n_cells, -1, dtype=np.int64)
    mode_code[run_cell[first]] = run_code[first]
    value = np.full(n_cells, None, dtype=object)
    value[run_cell[first]] = np.asarray(uniques, dtype=object)[run_code[first]]
    stats = CellStats(n_cells, rows, n_values, n_values, value)
    stats.distinct_values = distinct
    holds = vcodes == mode_code[cell]
    stats.holders = _count_distinct(
        cell[holds],
        None if persons is None else persons.codes[holds],
        None if persons is None else persons.size,
        n_cells,
    )
    if persons is not None:
        _distinct_persons(stats, cell, persons, n_cells)
    return stats
