"""The row space of the cell x atom incidence matrix: which groups of atoms released cells fix.

A reduced row-echelon basis is kept modulo a prime P (< 2^20, so that products of residues and
their sums over 4,096 terms are exact in float64 and BLAS does the work) and extended row by row
as tables are released. Null vectors are lifted to rationals and checked against the integer
incidence matrix (Freivalds' test), which proves the rank over the rationals equals the rank
modulo P; only then are determinations believed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

P = 1_048_573  # the largest prime below 2^20
_CHUNK = 4096
_BOUND = math.isqrt(P // 2)


def mulmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a @ b) mod P for float64 matrices of residues, exact."""
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.float64)
    for start in range(0, a.shape[1], _CHUNK):
        out += np.fmod(a[:, start : start + _CHUNK] @ b[start : start + _CHUNK], P)
        np.fmod(out, P, out=out)
    return out


@dataclass
class ModBasis:
    """A reduced basis mod P: row i has a 1 in column ``pivots[i]``, every other row a 0 there."""

    pivots: np.ndarray  # int64, one column per row
    rows: np.ndarray  # float64 (r, m), residues in [0, P)

    @classmethod
    def empty(cls, m: int = 0) -> ModBasis:
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, m), dtype=np.float64))

    @property
    def rank(self) -> int:
        return len(self.pivots)

    @property
    def width(self) -> int:
        return int(self.rows.shape[1])

    def expand(self, parent: np.ndarray) -> ModBasis:
        """The same row space over refined atoms: new column j copies old column parent[j]."""
        m_old = self.width
        big = np.iinfo(np.int64).max
        first = np.full(m_old, big, dtype=np.int64)
        valid = np.flatnonzero(parent >= 0)
        np.minimum.at(first, parent[valid], valid)  # the first piece of an atom keeps its pivot
        if self.rank and (first[self.pivots] == big).any():
            raise ValueError("an atom vanished while refining")
        rows = np.zeros((self.rank, len(parent)), dtype=np.float64)
        if self.rank and len(valid):
            rows[:, valid] = self.rows[:, parent[valid]]
        return ModBasis(first[self.pivots] if self.rank else self.pivots.copy(), rows)

    def reduce(self, x: np.ndarray) -> np.ndarray:
        """x minus its projection on the basis (mod P): zero exactly when x is in the row space."""
        x = np.fmod(np.asarray(x, dtype=np.float64), P)
        if self.rank == 0:
            return x
        return np.fmod(x - mulmod(x[:, self.pivots], self.rows) + P, P)

    def extended(self, x: np.ndarray) -> tuple[ModBasis, np.ndarray]:
        """The basis with rows ``x`` added, and x reduced against the old basis."""
        reduced = self.reduce(x)
        work = reduced.copy()
        new_pivots: list[int] = []
        new_rows: list[int] = []
        for i in range(len(work)):
            nz = np.flatnonzero(work[i])
            if not len(nz):
                continue
            c = int(nz[0])
            inv = pow(int(work[i, c]), P - 2, P)
            work[i] = np.fmod(work[i] * inv, P)
            hit = np.flatnonzero(work[:, c])
            hit = hit[hit != i]
            if len(hit):
                f = work[hit, c]
                work[hit] = np.fmod(work[hit] - np.fmod(np.outer(f, work[i]), P) + P, P)
            new_pivots.append(c)
            new_rows.append(i)
        if not new_pivots:
            return ModBasis(self.pivots.copy(), self.rows.copy()), reduced
        fresh = work[new_rows]
        cols = np.asarray(new_pivots, dtype=np.int64)
        rows = self.rows
        if self.rank:
            rows = np.fmod(rows - mulmod(rows[:, cols], fresh) + P, P)
        return ModBasis(np.concatenate([self.pivots, cols]), np.vstack([rows, fresh])), reduced

    def free_columns(self) -> np.ndarray:
        mask = np.ones(self.width, dtype=bool)
        mask[self.pivots] = False
        return np.flatnonzero(mask)

    def determined_columns(self) -> np.ndarray:
        """Columns j with e_j in the row space (mod P): rows equal to a unit vector."""
        if self.rank == 0:
            return np.zeros(0, dtype=np.int64)
        return self.pivots[np.count_nonzero(self.rows, axis=1) == 1]

    # -- storage ------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        r, c = np.nonzero(self.rows)
        return {
            "basis_pivots": self.pivots.astype(np.int64),
            "basis_shape": np.array(self.rows.shape, dtype=np.int64),
            "basis_r": r.astype(np.int32),
            "basis_c": c.astype(np.int32),
            "basis_v": self.rows[r, c].astype(np.int32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ModBasis:
        shape = tuple(int(x) for x in arrays["basis_shape"])
        rows = np.zeros(shape, dtype=np.float64)
        rows[arrays["basis_r"], arrays["basis_c"]] = arrays["basis_v"]
        return cls(arrays["basis_pivots"].astype(np.int64), rows)


def rational_lift(residues: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(numerators, denominators, ok): n/d = residue mod P with |n|, d <= sqrt(P/2)."""
    a = residues.astype(np.int64)
    num = np.where(a > P // 2, a - P, a)
    den = np.ones_like(a)
    hard = np.flatnonzero(np.abs(num) > 1)
    if not len(hard):
        return num, den, True
    r0 = np.full(len(hard), P, dtype=np.int64)
    r1 = a[hard].copy()
    t0 = np.zeros(len(hard), dtype=np.int64)
    t1 = np.ones(len(hard), dtype=np.int64)
    while True:
        active = r1 > _BOUND
        if not active.any():
            break
        q = np.where(active, r0 // np.where(r1 == 0, 1, r1), 0)
        r0, r1 = np.where(active, r1, r0), np.where(active, r0 - q * r1, r1)
        t0, t1 = np.where(active, t1, t0), np.where(active, t0 - q * t1, t1)
    sign = np.where(t1 < 0, -1, 1)
    n, d = r1 * sign, t1 * sign
    ok = bool(((d > 0) & (d <= _BOUND)).all())
    num[hard], den[hard] = n, d
    return num, den, ok


@dataclass(frozen=True)
class NullSpace:
    """An integer basis of the null space: column f of ``vectors`` (atoms x free columns)."""

    free: np.ndarray
    vectors: sp.csc_matrix  # int64 entries
    verified: bool


def null_space(basis: ModBasis) -> NullSpace:
    """The null vectors v_f = e_f - sum_i R[i, f] e_pivot(i), lifted to integers (scaled)."""
    m = basis.width
    free = basis.free_columns()
    if not len(free):
        return NullSpace(free, sp.csc_matrix((m, 0), dtype=np.int64), True)
    block = basis.rows[:, free]  # (r, |F|)
    rr, ff = np.nonzero(block)
    num, den, ok = rational_lift((P - block[rr, ff]) % P)  # -R[i, f]
    # scale each column f by the lcm of its denominators
    scale = np.ones(len(free), dtype=np.int64)
    if len(den) and (den > 1).any():
        for f in np.unique(ff[den > 1]):
            scale[f] = math.lcm(*(int(d) for d in den[ff == f]))
    values = num * (scale[ff] // den)
    rows = np.concatenate([basis.pivots[rr], free])
    cols = np.concatenate([ff, np.arange(len(free))])
    vals = np.concatenate([values, scale])
    vectors = sp.csc_matrix((vals, (rows, cols)), shape=(m, len(free)), dtype=np.int64)
    return NullSpace(free, vectors, ok)


def freivalds_zero(
    product: Callable[[np.ndarray], np.ndarray],
    vectors: sp.csc_matrix,
    rounds: int = 3,
    seed: int = 0,
) -> bool:
    """True when product(vectors @ w) == 0 for random integer w in every round.

    If M = A @ vectors is not zero, a random w in [1, 2^15]^k gives M @ w == 0 with probability at
    most 2^-15 per round. Integers stay well inside int64 (checked); otherwise the test refuses.
    """
    if vectors.shape[1] == 0:
        return True
    rng = np.random.default_rng(seed)
    max_abs = int(abs(vectors).sum(axis=1).max()) if vectors.nnz else 0
    for _ in range(rounds):
        w = rng.integers(1, 1 << 15, size=vectors.shape[1], dtype=np.int64)
        if max_abs * (1 << 15) * max(vectors.shape[0], 1) >= 1 << 62:
            return False
        x = vectors @ w
        if np.any(product(x) != 0):
            return False
    return True
