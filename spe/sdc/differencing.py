"""Differencing: a new table checked against the tables already released from the same project.

A released table keeps, per cell, the sorted 64-bit hashes of the persons behind it. A new cell C
and a released cell R fail together when one contains the other and 0 < |C Δ R| < threshold:
subtracting them would isolate a small group. Candidate pairs are found by size, then by sampled
membership, and only the survivors are compared in full.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from spe.sdc.errors import SDCError, SDCInputError

if TYPE_CHECKING:
    from spe.sdc.check import TableReport

# A cell label: (column name, value) pairs; a row total has only the index columns, the grand
# total none.
CellLabel = tuple[tuple[str, Any], ...]

_SEED = np.uint64(0xCBF29CE484222325)
_MUL = np.uint64(0x9E3779B97F4A7C15)
_WORD = np.dtype("<u8")


def _absorb(h: np.ndarray, word: np.ndarray, live: np.ndarray | None = None) -> np.ndarray:
    if live is not None:
        mixed = (h ^ word) * _MUL
        mixed ^= mixed >> np.uint64(29)
        return np.where(live, mixed, h)
    h ^= word  # in place: this runs over every row of a large table
    h *= _MUL
    h ^= h >> np.uint64(29)
    return h


def _finish(h: np.ndarray, lengths: np.ndarray | int) -> np.ndarray:
    h ^= np.asarray(lengths).astype(np.uint64) * np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h.view(np.int64)


def hash_fixed_width(raw: np.ndarray) -> np.ndarray:
    """The person hash of n ids given as an (n, L) uint8 matrix of L-byte UTF-8 texts.

    Equal to ``hash_person_ids`` of the same texts; used on Arrow string columns whose ids all
    have one length (pseudonyms do), without materialising Python strings.
    """
    n, width = raw.shape
    h = np.full(n, _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        if width % 8 == 0 and raw.flags.c_contiguous:
            words = raw.view(_WORD)
            for j in range(words.shape[1]):
                h = _absorb(h, words[:, j])
        else:
            for j in range(0, width, 8):
                padded = np.zeros((n, 8), dtype=np.uint8)
                part = raw[:, j : j + 8]
                padded[:, : part.shape[1]] = part
                h = _absorb(h, padded.view(_WORD)[:, 0])
        return _finish(h, width)


def hash_person_ids(ids: Any) -> np.ndarray:
    """A 64-bit hash (int64) of each person id's text: the same for 123 and "123".

    The text's UTF-8 bytes are absorbed eight at a time, then the length, then the splitmix64
    finaliser; vectorised over word positions. Collisions (about one in 10^7 for a million
    persons) could only merge two persons, which makes counts smaller, never larger.
    """
    arr = np.asarray(ids)
    if arr.dtype.kind == "S":
        text = arr
    elif arr.dtype.kind in "iub":
        text = arr.astype(np.int64).astype("S")
    else:
        try:
            text = arr.astype("S")
        except (UnicodeEncodeError, ValueError, TypeError):
            text = np.array([str(x).encode("utf-8") for x in arr.ravel()], dtype="S")
    text = np.ascontiguousarray(text.ravel())
    n = len(text)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    width = -(-max(text.dtype.itemsize, 1) // 8) * 8
    if width != text.dtype.itemsize:
        text = text.astype(f"S{width}")
    words = np.frombuffer(text.tobytes(), dtype=_WORD).reshape(n, width // 8)
    lengths = np.char.str_len(text)
    n_words = (lengths + 7) // 8
    h = np.full(n, _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h = _absorb(h, words[:, j], n_words > j)
        return _finish(h, lengths)


def hashed_sets(
    group: np.ndarray, hashes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, persons): group g's sorted hashes are persons[offsets[g]:offsets[g + 1]]."""
    order = np.argsort(hashes)
    grouped = group[order]
    if n_groups <= 1 << 16:
        grouped = grouped.astype(np.uint16)  # a stable sort of 16-bit keys is a radix sort
    order = order[np.argsort(grouped, kind="stable")]
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(group, minlength=n_groups), out=offsets[1:])
    return offsets, hashes[order]


def describe_label(label: CellLabel) -> str:
    """'sex=F, region=North'; the grand total is 'all persons'."""
    if not label:
        return "all persons"
    return ", ".join(f"{name}={value}" for name, value in label)


def json_scalar(value: Any) -> Any:
    """A JSON-safe form of a label or value (numpy scalars, NaN, timestamps, other objects)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, int):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    try:
        if value != value:  # pandas NA / NaT
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


@dataclass(frozen=True)
class ReleasedTable:
    """A table already released from a project: per cell, the hashed persons behind it.

    Stored compactly as one sorted int64 array per cell, concatenated (``persons``) with
    ``offsets``: cell i holds ``persons[offsets[i]:offsets[i + 1]]``.
    """

    name: str
    labels: tuple[CellLabel, ...]
    offsets: np.ndarray
    persons: np.ndarray

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.labels) + 1:
            raise SDCError(
                f"Released table {self.name!r} is inconsistent: {len(self.labels)} labels but "
                f"{len(self.offsets) - 1} cells of persons."
            )

    def __len__(self) -> int:
        return len(self.labels)

    def cell(self, i: int) -> np.ndarray:
        return self.persons[self.offsets[i] : self.offsets[i + 1]]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_person_sets(
        cls, name: str, cells: Mapping[CellLabel | str, Iterable[Any]]
    ) -> ReleasedTable:
        """From {label: person ids}; a plain-text label becomes (("cell", text),)."""
        labels: list[CellLabel] = []
        arrays = []
        for label, ids in cells.items():
            labels.append((("cell", label),) if isinstance(label, str) else tuple(label))
            hashed = np.unique(hash_person_ids(np.asarray(list(ids), dtype=object)))
            arrays.append(hashed)
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        persons = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls(name, tuple(labels), offsets, persons.astype(np.int64))

    @classmethod
    def from_report(
        cls,
        report: TableReport,
        name: str,
        *,
        released_cells: np.ndarray | None = None,
        include_margins: bool = True,
    ) -> ReleasedTable:
        """The persons behind a checked table's cells (and margins), to check later tables.

        ``released_cells`` (bool, table shape) selects the cells actually published, e.g. not
        those suppressed in a safe version; by default every non-empty cell counts as released.
        """
        sets = report.person_sets(include_margins=include_margins)
        mask = np.ones(len(sets.labels), dtype=bool)
        if released_cells is not None:
            flat = np.asarray(released_cells, dtype=bool).ravel()
            if len(flat) != report.n_cells:
                raise SDCInputError(
                    f"released_cells has {len(flat)} entries but the table has {report.n_cells} "
                    "cells; pass a mask of the table's shape."
                )
            mask[: report.n_cells] = flat
        keep = np.flatnonzero(mask & (np.diff(sets.offsets) > 0))
        labels = tuple(sets.labels[i] for i in keep)
        sizes = np.diff(sets.offsets)[keep]
        offsets = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        if len(keep):
            pieces = [sets.persons[sets.offsets[i] : sets.offsets[i + 1]] for i in keep]
            persons = np.concatenate(pieces)
        else:
            persons = np.zeros(0, dtype=np.int64)
        return cls(name, labels, offsets, persons)

    def to_bytes(self) -> bytes:
        """A compact, self-describing form (npz) to keep in the database or a file."""
        meta = {
            "name": self.name,
            "labels": [[[n, json_scalar(v)] for n, v in label] for label in self.labels],
        }
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            offsets=self.offsets,
            persons=self.persons,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReleasedTable:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(npz["meta"].tobytes().decode())
                offsets = npz["offsets"].astype(np.int64)
                persons = npz["persons"].astype(np.int64)
        except (OSError, ValueError, KeyError) as exc:
            raise SDCError(
                f"The stored released table cannot be read ({exc}); store it again from its report."
            ) from None
        labels = tuple(tuple((str(n), v) for n, v in label) for label in meta["labels"])
        return cls(str(meta["name"]), labels, offsets, persons)


@dataclass(frozen=True)
class PersonSets:
    """The hashed person sets of a new table: its cells first, then its margins."""

    labels: list[CellLabel]
    kinds: list[str]  # "cell", "row total", "column total", "grand total"
    offsets: np.ndarray
    persons: np.ndarray


@dataclass(frozen=True)
class DifferencingPair:
    """A new cell (or margin) and a released cell whose difference isolates few persons."""

    kind: str
    label: CellLabel
    cell_index: int | None  # flat cell position in the new table; None for a margin
    released_table: str
    released_label: CellLabel
    persons: int
    released_persons: int
    difference: int
    threshold: int

    @property
    def sentence(self) -> str:
        if self.kind == "cell":
            subject = "This cell"
        elif self.kind == "grand total":
            subject = "The grand total"
        else:
            subject = f"The {self.kind} for {describe_label(self.label)}"
        relation = "lies inside" if self.released_persons > self.persons else "contains"
        other = (
            f"cell {describe_label(self.released_label)}" if self.released_label else "the total"
        )
        return (
            f"{subject} ({self.persons} persons) {relation} {other} of released table "
            f"{self.released_table!r} ({self.released_persons} persons): subtracting one from the "
            f"other isolates "
            f"{self.difference} persons, fewer than {self.threshold}."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cell": {n: json_scalar(v) for n, v in self.label},
            "released_table": self.released_table,
            "released_cell": {n: json_scalar(v) for n, v in self.released_label},
            "persons": self.persons,
            "released_persons": self.released_persons,
            "difference": self.difference,
            "sentence": self.sentence,
        }


def _in_segments(
    values: np.ndarray, starts: np.ndarray, ends: np.ndarray, x: np.ndarray
) -> np.ndarray:
    """For each i: is x[i] in the sorted slice values[starts[i]:ends[i]]? (vectorised bisection)."""
    lo = starts.astype(np.int64, copy=True)
    hi = ends.astype(np.int64, copy=True)
    if len(values) == 0:
        return np.zeros(len(x), dtype=bool)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        probe = values[np.where(active, mid, 0)]
        right = active & (probe < x)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    inside = lo < ends
    return inside & (values[np.minimum(lo, len(values) - 1)] == x)


def _subset(small: np.ndarray, big: np.ndarray) -> bool:
    if len(small) > len(big):
        return False
    idx = np.searchsorted(big, small)
    if len(idx) and idx[-1] >= len(big):
        return False
    return bool(np.array_equal(big[idx], small))


def find_differencing(
    new: PersonSets, released: Sequence[ReleasedTable], threshold: int
) -> list[DifferencingPair]:
    """Every (new set, released cell) pair where one contains the other and differs by 1..t-1."""
    tables = [t for t in released if len(t)]
    if not tables or threshold <= 1:
        return []
    sizes = np.concatenate([t.sizes for t in tables])
    owner = np.concatenate([np.full(len(t), k, dtype=np.int64) for k, t in enumerate(tables)])
    local = np.concatenate([np.arange(len(t), dtype=np.int64) for t in tables])
    base = np.cumsum([0] + [len(t.persons) for t in tables])[:-1]
    starts = np.concatenate([t.offsets[:-1] + b for t, b in zip(tables, base, strict=True)])
    allp = np.concatenate([t.persons for t in tables])
    by_size = np.argsort(sizes, kind="stable")
    sorted_sizes = sizes[by_size]
    pairs: list[DifferencingPair] = []
    n_cells = sum(1 for k in new.kinds if k == "cell")
    for i in range(len(new.labels)):
        c_set = new.persons[new.offsets[i] : new.offsets[i + 1]]
        c = len(c_set)
        if c == 0:
            continue
        lo = np.searchsorted(sorted_sizes, c - threshold + 1, "left")
        hi = np.searchsorted(sorted_sizes, c + threshold - 1, "right")
        cand = by_size[lo:hi]
        cand = cand[(sizes[cand] != c) & (sizes[cand] > 0)]
        if len(cand) == 0:
            continue
        r_size = sizes[cand]
        r_start = starts[cand]
        r_end = r_start + r_size
        ok = np.ones(len(cand), dtype=bool)
        smaller = r_size < c
        # R inside C: R's first, middle and last persons must all be in C.
        if smaller.any():
            for pos in (r_start, (r_start + r_end - 1) // 2, r_end - 1):
                probe = allp[pos[smaller]]
                idx = np.minimum(np.searchsorted(c_set, probe), c - 1)
                ok[smaller] &= c_set[idx] == probe
        # C inside R: C's first, middle and last persons must all be in R.
        bigger = ~smaller
        if bigger.any():
            for probe in (c_set[0], c_set[(c - 1) // 2], c_set[-1]):
                x = np.full(int(bigger.sum()), probe, dtype=np.int64)
                ok[bigger] &= _in_segments(allp, r_start[bigger], r_end[bigger], x)
        for j in np.flatnonzero(ok):
            r_set = allp[r_start[j] : r_end[j]]
            inside = _subset(r_set, c_set) if smaller[j] else _subset(c_set, r_set)
            if not inside:
                continue
            table = tables[owner[cand[j]]]
            pairs.append(
                DifferencingPair(
                    kind=new.kinds[i],
                    label=new.labels[i],
                    cell_index=i if i < n_cells else None,
                    released_table=table.name,
                    released_label=table.labels[local[cand[j]]],
                    persons=c,
                    released_persons=int(r_size[j]),
                    difference=abs(c - int(r_size[j])),
                    threshold=threshold,
                )
            )
    return pairs
