"""The vectorised arithmetic behind a checked table: cells, persons, contributions, statistics.

Everything here works on whole columns with numpy (one group code per row, sorts on integer keys,
bincount and reduceat); nothing loops over rows or cells in Python.
"""

from __future__ import annotations

import itertools
import math
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
POSITION_AGGS = ("median",)  # positions: released only where enough persons lie near them

_DENSE_LIMIT = 1 << 24  # combined codes up to this many possible values are compacted by bincount
# A table's cells: the full product of its variables' labels. Beyond this many it is no table a
# person could read or release, and its per-cell arrays would take gigabytes.
MAX_CELLS = 1 << 24
_BLOCK = 1 << 16  # rows per block where a pass over the rows is cheaper in cache-sized pieces


@dataclass
class Axis:
    """The label tuples of the table's rows (or columns)."""

    names: list[str]
    labels: list[tuple[Any, ...]]
    codes: np.ndarray | None  # per data row: the position in ``labels`` (-1: missing), if kept
    dtypes: list[Any]  # per column: its CategoricalDtype (kept in the table's index), else None


@dataclass
class Layout:
    """A table's two axes and, per data row it keeps, the row's flat cell (row-major)."""

    rows: Axis
    columns: Axis
    cell: np.ndarray  # int64, one per kept data row
    kept: np.ndarray | None  # bool per data row: every label present; None when all are
    counts: np.ndarray  # data rows per cell

    @property
    def n_cells(self) -> int:
        return len(self.rows.labels) * len(self.columns.labels)


def _arrow_strings(series: pd.Series) -> Any:
    """The pyarrow ChunkedArray behind an Arrow-backed string column, else None."""
    if not pd.api.types.is_string_dtype(series.dtype):
        return None
    array = series.array
    if not isinstance(array, pd.arrays.ArrowExtensionArray | pd.arrays.ArrowStringArray):
        return None
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return None
    data = array.__arrow_array__()
    return data if isinstance(data, pa.ChunkedArray) else pa.chunked_array([data])


@dataclass
class _Column:
    """One table variable's codes (-1: missing), in chunks as its storage keeps them."""

    chunks: list[np.ndarray]
    labels: np.ndarray  # object, labels[code]
    rank: np.ndarray | None  # rank[code]: the label's place in pandas' order; None: code order
    missing: bool  # some row has no label

    def codes(self) -> np.ndarray:
        """One code per row, numbered in pandas' order."""
        codes = self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
        if self.rank is None:
            return codes
        return np.append(self.rank, -1)[codes]  # a code -1 (missing) stays -1

    def sorted_labels(self) -> np.ndarray:
        if self.rank is None:
            return self.labels
        out = np.empty(len(self.labels), dtype=object)
        out[self.rank] = self.labels
        return out


def _column(series: pd.Series) -> _Column:
    """A table variable's codes and labels.

    A categorical keeps its categories (even those no row has: they are declared levels, and the
    table shows them as empty cells). Text in
    Arrow is dictionary-encoded, its codes left in Arrow's chunks and its first-seen numbering:
    only the few labels are sorted, and the table renumbers its cells once for all variables.
    """
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy()
        labels = np.asarray(series.cat.categories, dtype=object)
        return _Column([codes], labels, None, bool(len(codes)) and int(codes.min()) < 0)
    chunks = _arrow_strings(series)
    if chunks is not None and len(series):
        import pyarrow.compute as pc

        encoded = pc.dictionary_encode(chunks)
        parts = [c for c in encoded.chunks if len(c)]
        if parts:
            dictionary = parts[0].dictionary
            if all(c.dictionary.equals(dictionary) for c in parts[1:]):
                labels = dictionary.to_numpy(zero_copy_only=False)
                try:
                    rank, _ = pd.factorize(labels, sort=True)
                    ranked: np.ndarray | None = np.asarray(rank, dtype=np.int64)
                except TypeError:  # pragma: no cover - text labels always sort
                    ranked = None
                if ranked is not None and (ranked == np.arange(len(ranked))).all():
                    ranked = None  # first seen in order already: nothing to renumber
                return _Column(
                    [
                        (c.indices.fill_null(-1) if c.null_count else c.indices).to_numpy(
                            zero_copy_only=False
                        )
                        for c in parts
                    ],
                    np.asarray(labels, dtype=object),
                    ranked,
                    bool(chunks.null_count),
                )
    try:
        codes, uniques = pd.factorize(series, sort=True)
    except TypeError:  # labels of mixed types cannot be sorted: keep first-seen order
        codes, uniques = pd.factorize(series, sort=False)
    return _Column(
        [codes],
        np.asarray(uniques, dtype=object),
        None,
        bool(len(codes)) and int(codes.min()) < 0,
    )


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


def _observed_axis(variables: list[_Column], names: list[str], dtypes: list[Any]) -> Axis:
    """Combine one or more columns into one code per row (observed combinations only).

    Columns are folded in one at a time and renumbered after each, so the running code never
    exceeds the number of observed combinations, however many labels the columns have.
    """
    parts = [
        _present_levels(col.codes(), col.sorted_labels())
        if dtype is not None
        else (col.codes(), col.sorted_labels())
        for col, dtype in zip(variables, dtypes, strict=True)
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


def _present_levels(codes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the labels no row has (a categorical's unused categories), renumbering the codes."""
    present = np.bincount(codes.astype(np.int64) + 1, minlength=len(labels) + 1)[1:] > 0
    if present.all():
        return codes, labels
    remap = np.full(len(labels) + 1, -1, dtype=np.int64)
    remap[:-1][present] = np.arange(int(present.sum()))
    return remap[codes], labels[present]


def _too_many_cells(sizes: list[int], names: list[str]) -> SDCInputError:
    levels = ", ".join(f"{name} {size:,}" for size, name in zip(sizes, names, strict=True))
    return SDCInputError(
        f"The table would have {math.prod(sizes):,} cells (labels: {levels}), more than "
        f"{MAX_CELLS:,}: every combination of the labels is a cell, the empty ones too. Use "
        "fewer variables, or group labels (bands, regions) first."
    )


def layout(
    df: pd.DataFrame, index: list[str], columns: list[str], *, observed: bool = False
) -> Layout:
    """The table's rows and columns and each data row's cell.

    Rows with a missing label are left out (as pandas.crosstab does). Each axis is the full
    product of its variables' labels among the rows kept, so a combination no row has is a cell
    too: an empty cell the zeros rule judges (leaving it out tells the same zero).
    ``observed=True`` keeps only the combinations some row has (and each axis's labels among
    all rows), for outputs such as a life table whose empty intervals are no cell at all.
    """
    names = [*index, *columns]
    dtypes = [
        df[name].dtype if isinstance(df[name].dtype, pd.CategoricalDtype) else None
        for name in names
    ]
    variables = [_column(df[name]) for name in names]
    k = len(index)
    if observed:
        rows = _observed_axis(variables[:k], index, dtypes[:k])
        cols = _observed_axis(variables[k:], columns, dtypes[k:])
        assert rows.codes is not None and cols.codes is not None
        valid = (rows.codes >= 0) & (cols.codes >= 0)
        cell = rows.codes.astype(np.int64) * len(cols.labels) + cols.codes
        kept = None if valid.all() else valid
        if kept is not None:
            cell = cell[kept]
        counts = np.bincount(cell, minlength=len(rows.labels) * len(cols.labels))
        return Layout(rows, cols, cell, kept, counts)

    sizes = [len(v.labels) for v in variables]
    if math.prod(sizes) > MAX_CELLS:  # unused categories may be what makes it so large
        for i, v in enumerate(variables):
            used_codes, used_labels = _present_levels(v.codes(), v.sorted_labels())
            variables[i] = _Column([used_codes], used_labels, None, v.missing)
        sizes = [len(v.labels) for v in variables]
        if math.prod(sizes) > MAX_CELLS:
            raise _too_many_cells(sizes, names)
    total = math.prod(sizes)
    # Every row's cell in the variables' own numbering, folded in chunk by chunk (cache-sized
    # pieces, no per-variable copy); rows with a missing label get a meaningless code and are
    # dropped after.
    cell = np.empty(len(df), dtype=np.int64)
    kept = np.ones(len(df), dtype=bool) if any(v.missing for v in variables) else None
    for d, (v, size) in enumerate(zip(variables, sizes, strict=True)):
        at = 0
        for chunk in v.chunks:
            piece = cell[at : at + len(chunk)]
            if d == 0:
                piece[...] = chunk
            else:
                piece *= size
                piece += chunk
            if v.missing and kept is not None:
                kept[at : at + len(chunk)] &= chunk >= 0
            at += len(chunk)
    if kept is not None:
        if kept.all():
            kept = None
        else:
            cell = cell[kept]
    counts = np.bincount(cell, minlength=total)
    labels = [v.labels for v in variables]
    if total:
        # Renumber once: labels in pandas' order, and only labels some kept row has (not an
        # unused category, nor a label seen only beside a missing one).
        grid = counts.reshape(sizes)
        present = [
            grid.sum(axis=tuple(a for a in range(len(sizes)) if a != d)) > 0
            for d in range(len(sizes))
        ]
        for d, dtype in enumerate(dtypes):
            if dtype is not None and len(present[d]) == len(dtype.categories):
                # A declared category (a public code list, a grid bin) is a cell even when no
                # row has it: leaving it out would tell the reader it is zero.
                present[d] = np.ones(len(present[d]), dtype=bool)
        if any(v.rank is not None for v in variables) or not all(p.all() for p in present):
            remap = np.zeros(1, dtype=np.int64)
            labels = []
            for v, p in zip(variables, present, strict=True):
                used = np.flatnonzero(p)  # codes some kept row has, then in pandas' order
                if v.rank is not None:
                    used = used[np.argsort(v.rank[used], kind="stable")]
                place = np.zeros(len(v.labels), dtype=np.int64)  # an absent label has no row
                place[used] = np.arange(len(used))
                remap = np.add.outer(remap * len(used), place).ravel()
                labels.append(v.labels[used])
            new_counts = np.zeros(math.prod(len(lab) for lab in labels), dtype=np.int64)
            new_counts[remap[counts > 0]] = counts[counts > 0]
            cell = remap[cell]
            counts = new_counts
    del variables
    row_labels = list(itertools.product(*labels[:k]))
    col_labels = list(itertools.product(*labels[k:]))
    return Layout(
        Axis(index, row_labels, None, dtypes[:k]),
        Axis(columns, col_labels, None, dtypes[k:]),
        cell,
        kept,
        counts,
    )


@dataclass
class Persons:
    """Dense per-row person codes and what they stand for (to hash them for differencing)."""

    codes: np.ndarray  # int64, one per data row
    size: int  # codes are in [0, size)
    ids: np.ndarray | None  # ids[code] is the person's id; None: see hashes, else code is the id
    distinct_rows: bool  # True when no two rows share a person (no sort needed)
    hashes: np.ndarray | None = None  # hashes[code] is the person's hash, when known already


def _arrow_ids(series: pd.Series) -> Any:
    """The pyarrow ChunkedArray behind an Arrow-backed text or bytes column, else None."""
    data = _arrow_strings(series)
    if data is not None or not isinstance(series.array, pd.arrays.ArrowExtensionArray):
        return data
    import pyarrow as pa

    data = series.array.__arrow_array__()
    kind = data.type
    if not (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
    ):
        return None
    return data if isinstance(data, pa.ChunkedArray) else pa.chunked_array([data])


def _arrow_fixed_width(series: pd.Series) -> list[np.ndarray] | None:
    """Per Arrow chunk, an (n, L) byte matrix (a view, not a copy) of a text or bytes column
    whose values all have one length L; None when the column is not such a column.

    A value ending in a zero byte makes it None too: ``hash_person_ids`` hashes such an id
    without its trailing zeros (numpy's bytes type drops them), and both must agree.
    """
    data = _arrow_ids(series)
    if data is None or data.null_count or not len(data):
        return None
    import pyarrow as pa

    parts = []
    width = None
    for chunk in data.chunks:
        n = len(chunk)
        if n == 0:
            continue
        kind = chunk.type
        if pa.types.is_fixed_size_binary(kind):
            step = kind.byte_width
            if width not in (None, step) or step == 0:
                return None
            width = step
            matrix = np.frombuffer(
                chunk.buffers()[1], dtype=np.uint8, count=n * width, offset=chunk.offset * width
            ).reshape(n, width)
        elif kind in (pa.string(), pa.large_string(), pa.binary(), pa.large_binary()):
            # The offsets say every value's length: equal steps mean one width, and the values
            # are then one contiguous byte block.
            offset_type = np.int64 if kind in (pa.large_string(), pa.large_binary()) else np.int32
            _, offsets_buffer, values_buffer = chunk.buffers()
            offsets = np.frombuffer(
                offsets_buffer,
                dtype=offset_type,
                count=n + 1,
                offset=chunk.offset * np.dtype(offset_type).itemsize,
            )
            step = int(offsets[1] - offsets[0])
            if width not in (None, step) or step == 0 or (np.diff(offsets) != step).any():
                return None
            width = step
            matrix = np.frombuffer(
                values_buffer, dtype=np.uint8, count=n * width, offset=int(offsets[0])
            ).reshape(n, width)
        else:
            return None
        if not matrix[:, -1].all():
            return None
        parts.append(matrix)
    return parts or None


def _repeats(values: np.ndarray) -> bool:
    """Whether some value occurs twice (one sort of integers: vectorised, no hash table)."""
    ordered = np.sort(values)
    return bool((ordered[1:] == ordered[:-1]).any())


def _all_distinct(values: np.ndarray, high: int) -> bool:
    """Whether no value occurs twice among non-negative integers up to ``high``."""
    n = len(values)
    if high < 8 * n:
        seen = np.zeros(high + 1, dtype=bool)
        seen[values] = True
        return int(np.count_nonzero(seen)) == n
    return not _repeats(values)


def persons_of(series: pd.Series) -> Persons:
    """Dense codes for the person column (its distinct values), the fastest way the type allows.

    Whether every row is a different person is found here once (a pass over the codes, or one
    sort of 64-bit hashes): then nothing downstream sorts (cell, person) pairs.
    """
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
            codes = values.astype(np.int64, copy=False)
            return Persons(codes, high + 1, None, _all_distinct(codes, high))
        if high < (1 << 63) and not _repeats(values):
            # Large ids, one row each: the row number is the person's code, the id its label
            # (hashed as the same decimal text as the ids a factorize would give).
            n = len(values)
            return Persons(np.arange(n), n, values.astype(np.int64, copy=False), True)
    raw = _arrow_fixed_width(series)
    if raw is not None:
        # Pseudonyms all have one length: hash the bytes where Arrow keeps them, block by
        # block, then look for a repeated hash in one sort of integers.
        from spe.sdc.differencing import hash_fixed_width

        hashed = np.empty(len(series), dtype=np.int64)
        at = 0
        for part in raw:
            for start in range(0, len(part), _BLOCK):
                block = part[start : start + _BLOCK]
                hashed[at : at + len(block)] = hash_fixed_width(block)
                at += len(block)
        if not _repeats(hashed):  # one row per person: the row number is the person's code
            return Persons(np.arange(len(hashed), dtype=np.int64), len(hashed), None, True, hashed)
        codes, uniques = pd.factorize(hashed)
        return Persons(
            np.asarray(codes, dtype=np.int64),
            len(uniques),
            None,
            False,
            hashes=np.asarray(uniques, dtype=np.int64),
        )
    codes, uniques = pd.factorize(series)
    ids = np.asarray(uniques, dtype=object)
    return Persons(np.asarray(codes, dtype=np.int64), len(ids), ids, len(ids) == len(series))


def fit_persons(persons: Persons, n_cells: int) -> Persons:
    """Persons whose codes and a cell fit together in one int64 key (``_pair_keys``).

    Integer ids are their own codes, up to 2^40: with millions of cells the pair would not fit,
    so such ids are numbered densely first.
    """
    cell_bits = max(int(n_cells - 1).bit_length(), 1)
    if persons.ids is not None or persons.hashes is not None:
        return persons  # dense codes already
    if _person_bits(persons.size) + cell_bits <= 62:
        return persons
    codes, uniques = pd.factorize(persons.codes)
    return Persons(
        np.asarray(codes, dtype=np.int64),
        len(uniques),
        np.asarray(uniques, dtype=np.int64),
        persons.distinct_rows,
    )


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
    near: np.ndarray | None = None  # median: persons within the position tolerance of it
    pairs: PairSource | None = None  # the persons behind each cell (None without a person id)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where a new value starts in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.empty(len(sorted_keys), dtype=bool)
    new[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    return np.flatnonzero(new)


def _top_rounds(pair_cell: np.ndarray, contrib: np.ndarray, n_cells: int, n_top: int) -> np.ndarray:
    """The ``n_top`` largest contributions per cell in at most ``n_top`` linear passes.

    Each round finds every cell's largest value below the previous round's with one unbuffered
    ``np.maximum.at`` and counts how often it occurs (ties fill several places at once).
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


def top_contributions(
    pair_cell: np.ndarray, contrib: np.ndarray, n_cells: int, n_top: int
) -> np.ndarray:
    """The ``n_top`` largest (non-negative) contributions per cell, in any row order.

    The rows are dealt round-robin into ``n_top`` hands and each hand's maximum per cell is
    found (one pass in all). Those are ``n_top`` different rows of the cell, so its
    ``n_top``-th largest value is at least the smallest of them: only rows at or above that
    bound can be among the largest, usually a few per cell, and only they are ranked.
    """
    n = len(pair_cell)
    if n < 4 * _BLOCK or n_top < 1:
        return _top_rounds(pair_cell, contrib, n_cells, n_top)
    bound = np.full(n_cells, np.inf)
    for hand in range(n_top):
        best = np.full(n_cells, -1.0)
        np.maximum.at(best, pair_cell[hand::n_top], contrib[hand::n_top])
        np.minimum(bound, best, out=bound)
    # -1 (a hand without a row of the cell) keeps every row of that cell: a small cell.
    candidates = [
        start
        + np.flatnonzero(
            contrib[start : start + _BLOCK] >= bound[pair_cell[start : start + _BLOCK]]
        )
        for start in range(0, n, _BLOCK)
    ]
    rows = np.concatenate(candidates)
    if len(rows) > n // 2:  # cells laid out so the hands miss them: rank every row instead
        return _top_rounds(pair_cell, contrib, n_cells, n_top)
    return _top_rounds(pair_cell[rows], contrib[rows], n_cells, n_top)


def cell_stats(
    cell: np.ndarray,
    n_cells: int,
    agg: str,
    values: pd.Series | None,
    persons: Persons | None,
    n_top: int,
    rows: np.ndarray | None = None,
    *,
    position_tolerance: float = 0.10,
) -> CellStats:
    """Compute the statistic and the rule inputs for every cell (``rows``: rows per cell, when
    already counted; ``position_tolerance``: the share of a median's size within which persons
    count as near it)."""
    if rows is None:
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
        sub = _maybe_subset(persons, present, all_present)
        stats.near = near_position(cell_v, v, stats.value, position_tolerance, sub, n_cells)
        if sub is not None:
            _distinct_persons(stats, cell_v, sub, n_cells)
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


def near_position(
    cell: np.ndarray,
    values: np.ndarray,
    position: np.ndarray,
    tolerance: float,
    persons: Persons | None,
    n_cells: int,
) -> np.ndarray:
    """Distinct persons per cell with a value within ``tolerance`` x |position| of the cell's
    ``position`` (a median or quantile); a position of 0 counts the persons whose value is 0.

    A median of a group picked around one person is that person's value with nobody near it;
    a median that many persons lie close to is no one's value in particular.
    """
    at = position[cell]
    # The relative slack absorbs the rounding of a median that is the mean of two values.
    near = np.abs(values - at) <= (tolerance + 1e-12) * np.abs(at)
    return _count_distinct(
        cell[near],
        None if persons is None else persons.codes[near],
        None if persons is None else persons.size,
        n_cells,
    )


def round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (52345.6 -> 52000.0 with 2); NaN and 0
    stay as they are."""
    v = np.asarray(values, dtype=np.float64)
    out = v.copy()
    finite = np.isfinite(v) & (v != 0)
    if finite.any():
        magnitude = np.floor(np.log10(np.abs(v[finite])))
        scale = 10.0 ** (digits - 1 - magnitude)
        out[finite] = np.round(v[finite] * scale) / scale
    return out


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
