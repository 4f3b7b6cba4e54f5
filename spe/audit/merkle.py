"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing for the audit log.

Owns leaf/node hashing, the full tree (roots, inclusion and consistency proofs for any prefix),
the compact right-edge frontier a sealer appends to, and the third-party proof verifiers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _check_hashes(hashes: list[bytes], what: str) -> None:
    if not set(map(type, hashes)) <= {bytes}:
        raise TypeError(f"{what} must all be bytes")
    if not set(map(len, hashes)) <= {HASH_SIZE}:
        raise ValueError(f"{what} must all be {HASH_SIZE}-byte SHA-256 digests")


def _check_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def _is_digest(value: object) -> bool:
    return type(value) is bytes and len(value) == HASH_SIZE


class MerkleTree:
    """A Merkle tree over leaf hashes, storing every level of perfect subtrees.

    ``levels[0]`` holds the leaf hashes; ``levels[k][i]`` is the hash of the perfect subtree of
    ``2**k`` leaves starting at leaf ``i * 2**k``. Only full pairs are combined, so the roots of
    any prefix of the tree are derived in O(log n) from the stored nodes.
    """

    __slots__ = ("levels",)

    def __init__(self, leaf_hashes: list[bytes] | None = None) -> None:
        self.levels: list[list[bytes]] = [[]]
        if leaf_hashes:
            self.append(leaf_hashes)

    @property
    def size(self) -> int:
        """Number of leaves in the tree."""
        return len(self.levels[0])

    def append(self, leaf_hashes: list[bytes]) -> None:
        """Append leaf hashes, extending every level incrementally (same result as a rebuild)."""
        new = list(leaf_hashes)
        if not new:
            return
        _check_hashes(new, "leaf hashes")
        sha256 = hashlib.sha256
        one = _NODE_PREFIX
        levels = self.levels
        if levels[0]:
            levels[0].extend(new)
        else:
            levels[0] = new
        k = 0
        while len(levels[k]) >= 2:
            lower = levels[k]
            if k + 1 == len(levels):
                levels.append([])
            start = 2 * len(levels[k + 1])
            if start + 1 < len(lower):
                # Combine only full pairs from `start` on; zip drops an unpaired last node.
                it = iter(lower[start:] if start else lower)
                built = [sha256(one + a + b).digest() for a, b in zip(it, it, strict=False)]
                if start:
                    levels[k + 1].extend(built)
                else:
                    levels[k + 1] = built
            k += 1

    def _resolve_size(self, n: int | None) -> int:
        if n is None:
            return self.size
        n = _check_int(n, "tree size")
        if not 0 <= n <= self.size:
            raise ValueError(f"tree size {n} out of range: the tree has {self.size} leaves")
        return n

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH of leaves [lo, hi); lo must be aligned to a power of two >= hi - lo."""
        levels = self.levels
        nodes: list[bytes] = []
        size = hi - lo
        pos = lo
        k = size.bit_length() - 1
        while k >= 0:
            if size >> k & 1:
                nodes.append(levels[k][pos >> k])
                pos += 1 << k
            k -= 1
        if not nodes:
            return EMPTY_ROOT
        sha256 = hashlib.sha256
        acc = nodes.pop()
        while nodes:
            acc = sha256(_NODE_PREFIX + nodes.pop() + acc).digest()
        return acc

    def root(self, n: int | None = None) -> bytes:
        """Root hash (MTH) of the tree over the first ``n`` leaves (default: all leaves)."""
        return self._range_hash(0, self._resolve_size(n))

    def inclusion_proof(self, index: int, n: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 audit path for leaf ``index`` in the tree of the first ``n`` leaves."""
        n = self._resolve_size(n)
        index = _check_int(index, "leaf index")
        if not 0 <= index < n:
            raise ValueError(f"leaf index {index} out of range for a tree of {n} leaves")
        path: list[bytes] = []
        lo, hi = 0, n
        while hi - lo > 1:
            mid = lo + (1 << (hi - lo - 1).bit_length() - 1)
            if index < mid:
                path.append(self._range_hash(mid, hi))
                hi = mid
            else:
                path.append(self._range_hash(lo, mid))
                lo = mid
        path.reverse()
        return path

    def consistency_proof(self, m: int, n: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 proof that the tree of ``m`` leaves is a prefix of that of ``n``."""
        n = self._resolve_size(n)
        m = _check_int(m, "old tree size")
        if not 0 < m <= n:
            raise ValueError(f"old tree size {m} out of range: need 0 < old size <= {n}")
        proof: list[bytes] = []
        lo, hi = 0, n
        complete = True  # SUBPROOF's b: the current subtree's left edge is the old tree's
        while m != hi:
            mid = lo + (1 << (hi - lo - 1).bit_length() - 1)
            if m <= mid:
                proof.append(self._range_hash(mid, hi))
                hi = mid
            else:
                proof.append(self._range_hash(lo, mid))
                lo = mid
                complete = False
        if not complete:
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof


class Frontier:
    """The compact range of a tree: roots of the perfect subtrees along its right edge.

    ``hashes`` holds one hash per set bit of ``size``, largest (leftmost) subtree first, so a
    sealer can append leaves and compute the new root without holding the leaves themselves.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: list[bytes] | None = None) -> None:
        size = _check_int(size, "frontier size")
        if size < 0:
            raise ValueError(f"frontier size must be >= 0, got {size}")
        hashes = list(hashes or [])
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a frontier of size {size} has {size.bit_count()} hashes, got {len(hashes)}"
            )
        _check_hashes(hashes, "frontier hashes")
        self._size = size
        self._hashes = hashes

    @property
    def size(self) -> int:
        """Number of leaves summarised by the frontier."""
        return self._size

    @property
    def hashes(self) -> list[bytes]:
        """Perfect-subtree roots along the right edge, largest first (a copy)."""
        return list(self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash to the right edge."""
        _check_hashes([leaf_hash], "leaf hash")
        self._push(leaf_hash)

    def _push(self, h: bytes) -> None:
        sha256 = hashlib.sha256
        hashes = self._hashes
        s = self._size
        while s & 1:
            h = sha256(_NODE_PREFIX + hashes.pop() + h).digest()
            s >>= 1
        hashes.append(h)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaf hashes in order."""
        new = list(leaf_hashes)
        _check_hashes(new, "leaf hashes")
        push = self._push
        for h in new:
            push(h)

    def root(self) -> bytes:
        """Root hash of the tree over all appended leaves (MTH)."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        sha256 = hashlib.sha256
        acc = hashes[-1]
        for h in reversed(hashes[:-1]):
            acc = sha256(_NODE_PREFIX + h + acc).digest()
        return acc

    def to_json(self) -> dict[str, Any]:
        """Serialise as ``{"size": int, "hashes": [hex, ...]}``."""
        return {"size": self._size, "hashes": [h.hex() for h in self._hashes]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Frontier:
        """Inverse of :meth:`to_json`; raises ValueError on any malformed input."""
        try:
            size, hexes = obj["size"], obj["hashes"]
            if not isinstance(hexes, list):
                raise TypeError("'hashes' must be a list of hex strings")
            return cls(size, [bytes.fromhex(h) for h in hexes])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed frontier JSON: {exc}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"


def _valid_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: list[bytes], root: bytes
) -> bool:
    """Check an RFC 9162 §2.1.3.2 inclusion proof; False on any mismatch or malformed input."""
    if not (_valid_size(index) and _valid_size(tree_size)) or not 0 <= index < tree_size:
        return False
    if not (_is_digest(leaf_hash) and _is_digest(root) and isinstance(proof, (list, tuple))):
        return False
    if not all(_is_digest(p) for p in proof):
        return False
    sha256 = hashlib.sha256
    fn, sn = index, tree_size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = sha256(_NODE_PREFIX + p + r).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    """Check an RFC 9162 §2.1.4.2 consistency proof; False on any mismatch or malformed input.

    Requires 0 < old_size <= new_size. For equal sizes the proof must be empty and the roots equal.
    """
    if not (_valid_size(old_size) and _valid_size(new_size)) or not 0 < old_size <= new_size:
        return False
    if not (_is_digest(old_root) and _is_digest(new_root) and isinstance(proof, (list, tuple))):
        return False
    if not all(_is_digest(p) for p in proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    sha256 = hashlib.sha256
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = sha256(_NODE_PREFIX + c + fr).digest()
            sr = sha256(_NODE_PREFIX + c + sr).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = sha256(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
