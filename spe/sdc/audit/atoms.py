"""Atoms: the partition of the person space into persons that lie in exactly the same cells.

Refining a partition by new cells is vectorised: each person's membership in the new cells is
summarised by a 64-bit signature, and a new atom is a (previous atom, signature) class. The
result is then verified exactly (every cell is a union of whole atoms, every atom lies in one
previous atom), so a hash collision is detected, never silently believed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spe.sdc.errors import SDCError

_KEY_SEED = 0x5EC0DE
_PARENT_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Refinement:
    """A partition refined by new cells.

    ``persons`` are the sorted person hashes now known; ``atom_of`` the atom of each;
    ``parent[a]`` the earlier atom that new atom ``a`` was cut from (-1: persons seen for the
    first time); ``cell_offsets``/``cell_atoms`` list the atoms each new cell covers (CSR).
    """

    persons: np.ndarray
    atom_of: np.ndarray
    sizes: np.ndarray
    parent: np.ndarray
    cell_offsets: np.ndarray
    cell_atoms: np.ndarray

    @property
    def n_atoms(self) -> int:
        return len(self.sizes)


def _cell_keys(n: int) -> np.ndarray:
    rng = np.random.default_rng(_KEY_SEED + n)
    return rng.integers(1, np.iinfo(np.int64).max, size=n, dtype=np.int64).astype(np.uint64)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    # sort-based: numpy's hash-based unique is several times slower on a million 64-bit keys
    x = np.sort(x)
    if len(x) < 2:
        return x
    return x[np.concatenate([[True], x[1:] != x[:-1]])]


def _unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct values, index of each element's value, count of each value), sorted."""
    order = np.argsort(x)
    ranked = x[order]
    starts = np.concatenate([[True], ranked[1:] != ranked[:-1]]) if len(x) else np.zeros(0, bool)
    ids = np.cumsum(starts) - 1
    inverse = np.empty(len(x), dtype=np.int64)
    inverse[order] = ids
    first = np.flatnonzero(starts)
    counts = np.diff(np.append(first, len(x)))
    return ranked[first], inverse, counts


def _factorize(x: np.ndarray) -> np.ndarray:
    """Dense ids 0..k-1 of the distinct values of x, numbered in sorted order of the values."""
    codes, _ = pd.factorize(x, sort=True)
    return np.asarray(codes, dtype=np.int64)


def refine(
    persons: np.ndarray, atom_of: np.ndarray, n_atoms: int, cells: Sequence[np.ndarray]
) -> Refinement:
    """The partition of ``persons`` (atoms ``atom_of``) refined by ``cells`` (sorted hashes)."""
    cells = [np.asarray(c, dtype=np.int64) for c in cells]
    lengths = np.array([len(c) for c in cells], dtype=np.int64)
    members = np.concatenate(cells) if cells else np.zeros(0, dtype=np.int64)
    # searching in sorted order touches memory in order: several times faster on 1 M persons
    order = np.argsort(members)
    ranked = members[order]
    if len(ranked) and len(persons):
        at = np.minimum(np.searchsorted(persons, ranked), len(persons) - 1)
        fresh = _sorted_unique(ranked[persons[at] != ranked])
    else:
        fresh = _sorted_unique(ranked)
    if len(fresh):
        merged = np.sort(np.concatenate([persons, fresh]))
        old_parent = np.full(len(merged), n_atoms, dtype=np.int64)  # n_atoms: "new persons"
        old_parent[np.searchsorted(merged, persons)] = atom_of
        at = np.searchsorted(merged, ranked)
    else:
        merged = persons
        old_parent = atom_of.astype(np.int64, copy=False)
    index = np.empty(len(members), dtype=np.int64)
    index[order] = at if len(ranked) else np.zeros(0, dtype=np.int64)
    signature = np.zeros(len(merged), dtype=np.uint64)
    if len(members):
        np.add.at(signature, index, np.repeat(_cell_keys(len(cells)), lengths))
    with np.errstate(over="ignore"):
        code = signature ^ (old_parent.astype(np.uint64) * _PARENT_MIX)
    new_atom = _factorize(code)
    n_new = int(new_atom.max()) + 1 if len(new_atom) else 0
    sizes = np.bincount(new_atom, minlength=n_new).astype(np.int64)
    # Exactness: every new atom inside one earlier atom ...
    lo = np.full(n_new, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n_new, -1, dtype=np.int64)
    np.minimum.at(lo, new_atom, old_parent)
    np.maximum.at(hi, new_atom, old_parent)
    # ... and every cell a union of whole atoms.
    cell_of = np.repeat(np.arange(len(cells), dtype=np.int64), lengths)
    pair = cell_of * max(n_new, 1) + new_atom[index]
    if len(cells) * max(n_new, 1) <= 1 << 26:  # a dense count is cheaper than sorting
        dense = np.bincount(pair, minlength=len(cells) * max(n_new, 1))
        pair_keys = np.flatnonzero(dense)
        pair_counts = dense[pair_keys]
    else:
        pair_keys, _, pair_counts = _unique_inverse(pair)
    pair_atoms = pair_keys % max(n_new, 1)
    if (lo != hi).any() or (pair_counts != sizes[pair_atoms]).any():
        raise SDCError(
            "Two different groups of persons received the same membership signature; run the "
            "check again (the audit refuses to guess)."
        )
    parent = np.where(lo == n_atoms, -1, lo)
    cell_offsets = np.zeros(len(cells) + 1, dtype=np.int64)
    np.cumsum(np.bincount(pair_keys // max(n_new, 1), minlength=len(cells)), out=cell_offsets[1:])
    return Refinement(
        persons=merged,
        atom_of=new_atom.astype(np.int32),
        sizes=sizes,
        parent=parent.astype(np.int64),
        cell_offsets=cell_offsets,
        cell_atoms=pair_atoms.astype(np.int32),
    )
