"""A data holder's release history in one linear space (counts, or sums of one variable).

The history keeps the atoms of the person space (persons in exactly the same released cells),
the cells as unions of atoms, and a reduced basis of their row space; adding a release refines
the atoms and extends the basis without going back to earlier releases' persons.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from spe.sdc.audit.atoms import Refinement, refine
from spe.sdc.audit.rowspace import ModBasis
from spe.sdc.errors import SDCError, SDCInputError

CELL_KINDS = ("count", "sum", "mean")
COUNT_SPACE = "count"


def sum_space(variable: str) -> str:
    return f"sum:{variable}"


@dataclass(frozen=True)
class NewCell:
    """A cell about to be released: a count, a sum of ``variable`` (dataset.column), or a mean
    (its sum and its count). ``persons`` are the sorted int64 hashes of the persons behind it,
    in the holder-wide person space. ``values`` (sums and means of a server-computed output
    only): each person's contribution to the cell, aligned with ``persons``; NaN where the
    server cannot say it (never shown: the audit's p % rule reads it)."""

    kind: str
    persons: np.ndarray
    variable: str | None = None
    label: str = ""
    values: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in CELL_KINDS:
            raise SDCInputError(
                f"A released cell is a count, a sum or a mean, not {self.kind!r}; give one of "
                "those."
            )
        if self.kind != "count" and not self.variable:
            raise SDCInputError(
                f"A {self.kind} cell needs the variable it sums (dataset.column); give variable."
            )
        persons = np.asarray(self.persons, dtype=np.int64)
        values = None if self.values is None else np.asarray(self.values, dtype=np.float64)
        if values is not None and len(values) != len(persons):
            raise SDCInputError(
                f"A cell has {len(persons)} persons but {len(values)} values; give one value "
                "per person."
            )
        if len(persons) > 1 and not (np.diff(persons) > 0).all():
            raw = persons
            persons, first = np.unique(raw, return_index=True)
            if values is not None:  # a person listed twice: their value is not one number
                counts = np.bincount(np.searchsorted(persons, raw), minlength=len(first))
                values = np.where(counts > 1, np.nan, values[first])
        object.__setattr__(self, "persons", persons)
        object.__setattr__(self, "values", values)

    @property
    def spaces(self) -> tuple[str, ...]:
        """The linear spaces this cell is a statistic in."""
        if self.kind == "count":
            return (COUNT_SPACE,)
        assert self.variable is not None
        if self.kind == "sum":
            return (sum_space(self.variable),)
        return (COUNT_SPACE, sum_space(self.variable))


@dataclass(frozen=True)
class ReleaseInfo:
    """What the audit may say about an earlier release: its title and date (and, internally,
    whose it was)."""

    release_id: str
    project: str
    title: str
    released_at: dt.datetime
    output_name: str

    def to_json(self) -> dict[str, str]:
        return {
            "release_id": self.release_id,
            "project": self.project,
            "title": self.title,
            "released_at": self.released_at.isoformat(),
            "output_name": self.output_name,
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> ReleaseInfo:
        return cls(
            data["release_id"],
            data["project"],
            data["title"],
            dt.datetime.fromisoformat(data["released_at"]),
            data["output_name"],
        )

    @property
    def phrase(self) -> str:
        return f"{self.title!r} (released {self.released_at.date().isoformat()})"


@dataclass(frozen=True)
class Merge:
    """The history with new cells added: refined atoms, and the row space before and after."""

    refinement: Refinement
    old_basis: ModBasis  # the history's basis over the refined atoms
    basis: ModBasis  # with the new cells' rows
    reduced: np.ndarray  # the new rows reduced against the history (mod P)
    new_rows: sp.csr_matrix  # new cells x refined atoms (0/1)


@dataclass
class History:
    """Released cells of one holder in one space, as unions of atoms of the person space."""

    holder: str
    space: str
    releases: list[ReleaseInfo]
    persons: np.ndarray  # sorted int64 person hashes
    atom_of: np.ndarray  # int32 atom of each person
    sizes: np.ndarray  # int64 persons per atom
    cell_offsets: np.ndarray  # CSR: cell i covers atoms cell_atoms[off[i]:off[i + 1]]
    cell_atoms: np.ndarray
    cell_release: np.ndarray  # int32 index into releases
    basis: ModBasis = field(default_factory=ModBasis.empty)

    @classmethod
    def empty(cls, holder: str, space: str = COUNT_SPACE) -> History:
        return cls(
            holder=holder,
            space=space,
            releases=[],
            persons=np.zeros(0, dtype=np.int64),
            atom_of=np.zeros(0, dtype=np.int32),
            sizes=np.zeros(0, dtype=np.int64),
            cell_offsets=np.zeros(1, dtype=np.int64),
            cell_atoms=np.zeros(0, dtype=np.int32),
            cell_release=np.zeros(0, dtype=np.int32),
        )

    @property
    def n_atoms(self) -> int:
        return len(self.sizes)

    @property
    def n_cells(self) -> int:
        return len(self.cell_offsets) - 1

    def incidence(self) -> sp.csr_matrix:
        """Cells x atoms, 0/1 (int64)."""
        data = np.ones(len(self.cell_atoms), dtype=np.int64)
        return sp.csr_matrix(
            (data, self.cell_atoms, self.cell_offsets), shape=(self.n_cells, self.n_atoms)
        )

    def cells_in_space(self, cells: Sequence[NewCell]) -> list[int]:
        return [i for i, c in enumerate(cells) if self.space in c.spaces and len(c.persons)]

    # -- adding cells -----------------------------------------------------------------------
    def merge(self, person_sets: Sequence[np.ndarray]) -> Merge:
        """The history together with new cells (which are not recorded)."""
        ref = refine(self.persons, self.atom_of, self.n_atoms, person_sets)
        old_basis = self.basis.expand(ref.parent)
        data = np.ones(len(ref.cell_atoms), dtype=np.float64)
        new_rows = sp.csr_matrix(
            (data, ref.cell_atoms, ref.cell_offsets), shape=(len(person_sets), ref.n_atoms)
        )
        basis, reduced = old_basis.extended(new_rows.toarray())
        return Merge(ref, old_basis, basis, reduced, new_rows)

    def expanded_cells(self, parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The history's cells over refined atoms (each old atom replaced by its pieces)."""
        valid = np.flatnonzero(parent >= 0)
        order = valid[np.argsort(parent[valid], kind="stable")]
        counts = np.bincount(parent[valid], minlength=self.n_atoms)
        starts = np.zeros(self.n_atoms + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        per_entry = counts[self.cell_atoms]
        total = int(per_entry.sum())
        entry_start = np.repeat(starts[self.cell_atoms], per_entry)
        within = np.arange(total, dtype=np.int64) - np.repeat(
            np.cumsum(per_entry) - per_entry, per_entry
        )
        atoms = order[entry_start + within]
        cell_of_entry = np.repeat(np.arange(self.n_cells), np.diff(self.cell_offsets))
        per_cell = np.bincount(cell_of_entry, weights=per_entry, minlength=self.n_cells)
        offsets = np.zeros(self.n_cells + 1, dtype=np.int64)
        np.cumsum(per_cell.astype(np.int64), out=offsets[1:])
        return offsets, atoms.astype(np.int32)

    def extended(self, release: ReleaseInfo, cells: Sequence[NewCell]) -> History:
        """This history with a release's cells (those of this space) added."""
        chosen = [c.persons for c in cells if self.space in c.spaces and len(c.persons)]
        if not chosen:
            return self
        merged = self.merge(chosen)
        ref = merged.refinement
        offsets, atoms = self.expanded_cells(ref.parent)
        return History(
            holder=self.holder,
            space=self.space,
            releases=[*self.releases, release],
            persons=ref.persons,
            atom_of=ref.atom_of,
            sizes=ref.sizes,
            cell_offsets=np.concatenate([offsets, ref.cell_offsets[1:] + offsets[-1]]),
            cell_atoms=np.concatenate([atoms, ref.cell_atoms]).astype(np.int32),
            cell_release=np.concatenate(
                [self.cell_release, np.full(len(chosen), len(self.releases), dtype=np.int32)]
            ),
            basis=merged.basis,
        )

    # -- storage (the compact form cached per holder and space) -------------------------------
    def to_bytes(self) -> bytes:
        meta = {
            "holder": self.holder,
            "space": self.space,
            "releases": [r.to_json() for r in self.releases],
        }
        buffer = io.BytesIO()
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "persons": self.persons,
            "atom_of": self.atom_of,
            "sizes": self.sizes,
            "cell_offsets": self.cell_offsets,
            "cell_atoms": self.cell_atoms,
            "cell_release": self.cell_release,
            **self.basis.to_arrays(),
        }
        # person hashes are random bits: compressing them costs time and saves nothing
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> History:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            raise SDCError(
                f"The stored release history cannot be read ({exc}); rebuild it from the "
                "recorded releases."
            ) from None
        return cls(
            holder=meta["holder"],
            space=meta["space"],
            releases=[ReleaseInfo.from_json(r) for r in meta["releases"]],
            persons=arrays["persons"],
            atom_of=arrays["atom_of"],
            sizes=arrays["sizes"],
            cell_offsets=arrays["cell_offsets"],
            cell_atoms=arrays["cell_atoms"],
            cell_release=arrays["cell_release"],
            basis=ModBasis.from_arrays(arrays),
        )
