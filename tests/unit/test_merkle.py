"""Tests for spe.audit.merkle against RFC 9162 and the Certificate Transparency test vectors."""

from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spe.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# --- An independent, naive transcription of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 -------------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(entries: list[bytes]) -> bytes:
    """MTH over raw entries, by direct recursion."""
    n = len(entries)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + entries[0])
    k = _split(n)
    return _sha(b"\x01" + ref_mth(entries[:k]) + ref_mth(entries[k:]))


def ref_path(m: int, entries: list[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*ref_path(m, entries[:k]), ref_mth(entries[k:])]
    return [*ref_path(m - k, entries[k:]), ref_mth(entries[:k])]


def ref_subproof(m: int, entries: list[bytes], b: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [ref_mth(entries)]
    k = _split(n)
    if m <= k:
        return [*ref_subproof(m, entries[:k], b), ref_mth(entries[k:])]
    return [*ref_subproof(m - k, entries[k:], False), ref_mth(entries[:k])]


def ref_proof(m: int, entries: list[bytes]) -> list[bytes]:
    return ref_subproof(m, entries, True)


# --- Fixtures -----------------------------------------------------------------------------------

ENTRIES_70 = [bytes([i]) for i in range(70)]
LEAVES_70 = [leaf_hash(e) for e in ENTRIES_70]
TREE_70 = MerkleTree(LEAVES_70)
REF_ROOTS_70 = [ref_mth(ENTRIES_70[:n]) for n in range(71)]

LEAVES_2000 = [leaf_hash(i.to_bytes(4, "big")) for i in range(2000)]
TREE_2000 = MerkleTree(LEAVES_2000)


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# Certificate Transparency reference data (certificate-transparency / transparency-dev/merkle
# testonly vectors): the eight entries, and the roots of the trees over their first 0..8.
CT_ENTRIES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_LEAVES = [leaf_hash(e) for e in CT_ENTRIES]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [  # (leaf index, tree size, audit path)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


# --- Known answers --------------------------------------------------------------------------------


def test_empty_tree_root_is_sha256_of_empty_string() -> None:
    expected = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert hashlib.sha256(b"").hexdigest() == expected
    assert EMPTY_ROOT.hex() == expected
    assert MerkleTree([]).root() == EMPTY_ROOT
    assert TREE_70.root(0) == EMPTY_ROOT
    assert Frontier().root() == EMPTY_ROOT


def test_leaf_and_node_hashes_use_rfc_domain_separation_prefixes() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert node_hash(a, b) != node_hash(b, a)


def test_tree_root_of_every_prefix_0_to_70_equals_naive_rfc_mth() -> None:
    for n in range(71):
        assert TREE_70.root(n) == REF_ROOTS_70[n], n
        assert MerkleTree(LEAVES_70[:n]).root() == REF_ROOTS_70[n], n


def test_frontier_root_after_every_append_0_to_70_equals_naive_rfc_mth() -> None:
    frontier = Frontier()
    assert frontier.root() == REF_ROOTS_70[0]
    for n, leaf in enumerate(LEAVES_70, start=1):
        frontier.append(leaf)
        assert frontier.size == n
        assert len(frontier.hashes) == n.bit_count()
        assert frontier.root() == REF_ROOTS_70[n], n


def test_ct_reference_roots_for_sizes_0_to_8() -> None:
    tree = MerkleTree(CT_LEAVES)
    frontier = Frontier()
    for n, expected in enumerate(CT_ROOTS):
        assert tree.root(n).hex() == expected
        assert ref_mth(CT_ENTRIES[:n]).hex() == expected
        assert frontier.root().hex() == expected
        if n < len(CT_LEAVES):
            frontier.append(CT_LEAVES[n])
    assert tree.root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_reference_inclusion_proofs_are_produced_and_verify(
    index: int, size: int, path: list[str]
) -> None:
    proof = MerkleTree(CT_LEAVES).inclusion_proof(index, size)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(CT_ROOTS[size])
    assert verify_inclusion(CT_LEAVES[index], index, size, proof, root)


@pytest.mark.parametrize(("m", "n", "path"), CT_CONSISTENCY)
def test_ct_reference_consistency_proofs_are_produced_and_verify(
    m: int, n: int, path: list[str]
) -> None:
    proof = MerkleTree(CT_LEAVES).consistency_proof(m, n)
    assert [p.hex() for p in proof] == path
    old_root, new_root = bytes.fromhex(CT_ROOTS[m]), bytes.fromhex(CT_ROOTS[n])
    assert verify_consistency(m, n, old_root, new_root, proof)


# --- Structure ------------------------------------------------------------------------------------


def test_levels_hold_only_full_perfect_subtrees_without_promoting_odd_nodes() -> None:
    tree = MerkleTree(LEAVES_70[:7])
    assert tree.size == 7
    assert [len(level) for level in tree.levels] == [7, 3, 1]
    assert tree.levels[0] == LEAVES_70[:7]
    for k, level in enumerate(tree.levels):
        for i, h in enumerate(level):
            assert h == ref_mth(ENTRIES_70[i << k : (i + 1) << k])


def test_append_in_batches_equals_building_at_once() -> None:
    tree = MerkleTree([])
    for lo, hi in [(0, 1), (1, 2), (2, 5), (5, 5), (5, 33), (33, 70)]:
        tree.append(LEAVES_70[lo:hi])
        assert tree.levels == MerkleTree(LEAVES_70[:hi]).levels
        assert tree.root() == REF_ROOTS_70[hi]


def test_tree_copies_the_callers_leaf_list() -> None:
    leaves = list(LEAVES_70[:4])
    tree = MerkleTree(leaves)
    leaves.append(LEAVES_70[4])
    assert tree.size == 4


# --- Inclusion proofs -----------------------------------------------------------------------------


def test_inclusion_proofs_for_sizes_1_to_40_equal_naive_rfc_path() -> None:
    for n in range(1, 41):
        for i in range(n):
            assert TREE_70.inclusion_proof(i, n) == ref_path(i, ENTRIES_70[:n]), (i, n)


def test_every_inclusion_proof_for_sizes_1_to_40_verifies() -> None:
    for n in range(1, 41):
        root = TREE_70.root(n)
        for i in range(n):
            proof = TREE_70.inclusion_proof(i, n)
            assert verify_inclusion(LEAVES_70[i], i, n, proof, root), (i, n)


def _inclusion_tamperings(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> list[tuple[str, tuple[bytes, int, int, list[bytes], bytes]]]:
    cases: list[tuple[str, tuple[bytes, int, int, list[bytes], bytes]]] = [
        ("other leaf", (leaf_hash(b"not in the tree"), index, size, proof, root)),
        ("flipped leaf", (_flip(leaf), index, size, proof, root)),
        ("index - 1", (leaf, index - 1, size, proof, root)),
        ("index + 1", (leaf, index + 1, size, proof, root)),
        ("index ^ 2", (leaf, index ^ 2, size, proof, root)),
        ("size * 2", (leaf, index, size * 2, proof, root)),
        ("size // 2", (leaf, index, size // 2, proof, root)),
        ("flipped root", (leaf, index, size, proof, _flip(root))),
        ("empty-tree root", (leaf, index, size, proof, EMPTY_ROOT)),
        ("trailing root", (leaf, index, size, [*proof, root], root)),
        ("preceding root", (leaf, index, size, [root, *proof], root)),
        # A path one level too long, ending at a root that really is its hash: the size stops it.
        ("extra level left", (leaf, index, size, [*proof, root], node_hash(root, root))),
        ("extra level", (leaf, index, size, [*proof, EMPTY_ROOT], node_hash(EMPTY_ROOT, root))),
    ]
    if proof:
        cases.append(("dropped last", (leaf, index, size, proof[:-1], root)))
        cases.append(("reversed", (leaf, index, size, proof[::-1], root)))
    for j in range(len(proof)):
        bad = list(proof)
        bad[j] = _flip(bad[j], 3)
        cases.append((f"flipped proof[{j}]", (leaf, index, size, bad, root)))
    # Reversing a one- or palindromic proof changes nothing; keep only genuine changes.
    return [(name, args) for name, args in cases if args != (leaf, index, size, proof, root)]


def test_inclusion_verification_fails_when_leaf_index_size_root_or_proof_changes() -> None:
    for n in range(1, 41):
        root = TREE_70.root(n)
        for i in range(n):
            proof = TREE_70.inclusion_proof(i, n)
            for name, args in _inclusion_tamperings(LEAVES_70[i], i, n, proof, root):
                assert not verify_inclusion(*args), (name, i, n)


def test_inclusion_of_single_leaf_tree_is_empty_path_and_root_is_leaf() -> None:
    tree = MerkleTree([LEAVES_70[0]])
    assert tree.inclusion_proof(0) == []
    assert tree.root() == LEAVES_70[0]
    assert verify_inclusion(LEAVES_70[0], 0, 1, [], LEAVES_70[0])
    assert not verify_inclusion(LEAVES_70[0], 0, 1, [], LEAVES_70[1])


# --- Consistency proofs ---------------------------------------------------------------------------


def test_consistency_proofs_for_all_sizes_up_to_40_equal_naive_rfc_proof() -> None:
    for n in range(1, 41):
        for m in range(1, n + 1):
            assert TREE_70.consistency_proof(m, n) == ref_proof(m, ENTRIES_70[:n]), (m, n)


def test_every_consistency_proof_for_0_lt_m_le_n_le_40_verifies_including_m_eq_n() -> None:
    for n in range(1, 41):
        for m in range(1, n + 1):
            proof = TREE_70.consistency_proof(m, n)
            assert (proof == []) == (m == n)
            assert verify_consistency(m, n, TREE_70.root(m), TREE_70.root(n), proof), (m, n)


def test_consistency_verification_fails_when_roots_sizes_or_proof_change() -> None:
    for n in range(1, 41):
        new_root = TREE_70.root(n)
        for m in range(1, n + 1):
            old_root = TREE_70.root(m)
            proof = TREE_70.consistency_proof(m, n)
            cases: list[tuple[str, tuple[int, int, bytes, bytes, list[bytes]]]] = [
                ("flipped old root", (m, n, _flip(old_root), new_root, proof)),
                ("flipped new root", (m, n, old_root, _flip(new_root), proof)),
                ("trailing element", (m, n, old_root, new_root, [*proof, new_root])),
                ("preceding element", (m, n, old_root, new_root, [old_root, *proof])),
            ]
            if m < n:
                cases += [
                    ("swapped roots", (m, n, new_root, old_root, proof)),
                    ("empty proof", (m, n, old_root, new_root, [])),
                    ("dropped last", (m, n, old_root, new_root, proof[:-1])),
                    ("old size - 1", (m - 1, n, old_root, new_root, proof)),
                    ("old size + 1", (m + 1, n, old_root, new_root, proof)),
                    ("old size ^ 2", (m ^ 2, n, old_root, new_root, proof)),
                    ("new size * 2", (m, n * 2, old_root, new_root, proof)),
                    ("new size // 2", (m, n // 2, old_root, new_root, proof)),
                ]
            else:
                cases.append(("equal sizes, other root", (m, n, TREE_70.root(m + 1), new_root, [])))
            for j in range(len(proof)):
                bad = list(proof)
                bad[j] = _flip(bad[j], 4)
                cases.append((f"flipped proof[{j}]", (m, n, old_root, new_root, bad)))
            for name, args in cases:
                assert not verify_consistency(*args), (name, m, n)


# --- Malformed input ------------------------------------------------------------------------------


def test_verifiers_return_false_on_malformed_input_instead_of_raising() -> None:
    leaf, root = LEAVES_70[0], TREE_70.root(2)
    proof = TREE_70.inclusion_proof(0, 2)
    assert verify_inclusion(leaf, 0, 2, proof, root)
    bad_inclusion: list[tuple[object, ...]] = [
        (leaf, -1, 2, proof, root),
        (leaf, 0, 0, [], root),
        (leaf, 2, 2, proof, root),
        (leaf, "0", 2, proof, root),
        (leaf, 0, 2.0, proof, root),
        (leaf, True, 2, proof, root),
        (leaf[:31], 0, 2, proof, root),
        (leaf, 0, 2, proof, root[:31]),
        (leaf.hex(), 0, 2, proof, root),
        (leaf, 0, 2, [proof[0][:31]], root),
        (leaf, 0, 2, [proof[0].hex()], root),
        (leaf, 0, 2, [None], root),
        (leaf, 0, 2, None, root),
        (leaf, 0, 2, proof[0], root),
    ]
    for args in bad_inclusion:
        assert verify_inclusion(*args) is False, args  # type: ignore[arg-type]

    old, new = TREE_70.root(3), TREE_70.root(7)
    cproof = TREE_70.consistency_proof(3, 7)
    assert verify_consistency(3, 7, old, new, cproof)
    bad_consistency: list[tuple[object, ...]] = [
        (0, 7, EMPTY_ROOT, new, []),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, []),
        (7, 3, new, old, cproof),
        (-1, 7, old, new, cproof),
        (3, 7, old[:31], new, cproof),
        (3, 7, old, new.hex(), cproof),
        (3, 7, old, new, [*cproof[:-1], cproof[-1][:31]]),
        (3, 7, old, new, [*cproof[:-1], None]),
        (3, 7, old, new, None),
        (3.0, 7, old, new, cproof),
    ]
    for args in bad_consistency:
        assert verify_consistency(*args) is False, args  # type: ignore[arg-type]


def test_tree_methods_raise_value_error_for_out_of_range_arguments() -> None:
    tree = MerkleTree(LEAVES_70[:5])
    with pytest.raises(ValueError, match="tree size"):
        tree.root(6)
    with pytest.raises(ValueError, match="tree size"):
        tree.root(-1)
    with pytest.raises(ValueError, match="leaf index"):
        tree.inclusion_proof(5)
    with pytest.raises(ValueError, match="leaf index"):
        tree.inclusion_proof(3, 3)
    with pytest.raises(ValueError, match="leaf index"):
        tree.inclusion_proof(-1)
    with pytest.raises(ValueError, match="leaf index"):
        MerkleTree([]).inclusion_proof(0)
    with pytest.raises(ValueError, match="tree size"):
        tree.inclusion_proof(0, 6)
    with pytest.raises(ValueError, match="old tree size"):
        tree.consistency_proof(0, 5)
    with pytest.raises(ValueError, match="old tree size"):
        tree.consistency_proof(4, 3)
    with pytest.raises(ValueError, match="tree size"):
        tree.consistency_proof(1, 6)
    with pytest.raises(ValueError, match="digest"):
        MerkleTree([b"short"])
    with pytest.raises(TypeError, match="bytes"):
        tree.append([LEAVES_70[0].hex()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="int"):
        tree.root(2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        tree.inclusion_proof(True)
    assert tree.size == 5  # a rejected append leaves the tree unchanged


# --- Frontier -------------------------------------------------------------------------------------


def test_frontier_json_round_trip_preserves_state_and_continues_appending() -> None:
    frontier = Frontier()
    frontier.extend(LEAVES_70[:45])
    obj = frontier.to_json()
    assert obj == {"size": 45, "hashes": [h.hex() for h in frontier.hashes]}
    restored = Frontier.from_json(obj)
    assert restored == frontier
    assert restored.root() == REF_ROOTS_70[45]
    restored.extend(LEAVES_70[45:])
    assert restored.root() == REF_ROOTS_70[70]
    assert Frontier(restored.size, restored.hashes).root() == REF_ROOTS_70[70]


def test_frontier_hashes_are_the_tree_right_edge_perfect_subtrees() -> None:
    frontier = Frontier()
    frontier.extend(LEAVES_70[:13])  # 13 = 8 + 4 + 1
    assert frontier.hashes == [
        ref_mth(ENTRIES_70[0:8]),
        ref_mth(ENTRIES_70[8:12]),
        ref_mth(ENTRIES_70[12:13]),
    ]


def test_frontier_rejects_inconsistent_or_malformed_state() -> None:
    with pytest.raises(ValueError, match="hashes"):
        Frontier(3, [LEAVES_70[0]])
    with pytest.raises(ValueError, match=">= 0"):
        Frontier(-1, [])
    with pytest.raises(ValueError, match="digest"):
        Frontier(1, [b"short"])
    with pytest.raises(ValueError, match="digest"):
        Frontier().append(b"short")
    with pytest.raises(TypeError, match="bytes"):
        Frontier().append(LEAVES_70[0].hex())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        leaf_hash(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        Frontier(1, [LEAVES_70[0].hex()])  # type: ignore[list-item]
    for malformed in [
        {"size": 1, "hashes": ["zz"]},
        {"size": 1, "hashes": [LEAVES_70[0].hex()[:-2]]},
        {"size": 1, "hashes": LEAVES_70[0].hex()},
        {"size": 1, "hashes": [1]},
        {"size": "1", "hashes": [LEAVES_70[0].hex()]},
        {"size": 3, "hashes": [LEAVES_70[0].hex()]},
        {"size": 1},
        {"hashes": []},
        [],
        None,
    ]:
        with pytest.raises(ValueError, match="malformed frontier JSON"):
            Frontier.from_json(malformed)  # type: ignore[arg-type]


# --- Properties -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.integers(min_value=0, max_value=300), max_size=12))
def test_appending_random_chunks_equals_building_at_once(chunks: list[int]) -> None:
    tree = MerkleTree([])
    frontier = Frontier()
    pos = 0
    for c in chunks:
        c = min(c, len(LEAVES_2000) - pos)
        tree.append(LEAVES_2000[pos : pos + c])
        frontier.extend(LEAVES_2000[pos : pos + c])
        pos += c
    built = MerkleTree(LEAVES_2000[:pos])
    assert tree.levels == built.levels
    assert tree.root() == built.root() == frontier.root() == TREE_2000.root(pos)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=2000))
def test_proofs_verify_for_random_sizes_up_to_2000(data: st.DataObject, n: int) -> None:
    index = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    m = data.draw(st.integers(min_value=1, max_value=n), label="m")
    root = TREE_2000.root(n)
    proof = TREE_2000.inclusion_proof(index, n)
    assert verify_inclusion(LEAVES_2000[index], index, n, proof, root)
    assert not verify_inclusion(LEAVES_2000[index], index, n, proof, _flip(root))
    cproof = TREE_2000.consistency_proof(m, n)
    old_root = TREE_2000.root(m)
    assert verify_consistency(m, n, old_root, root, cproof)
    assert not verify_consistency(m, n, _flip(old_root), root, cproof)
    # The prefix tree built on its own gives the same root and proofs.
    prefix = MerkleTree(LEAVES_2000[:n])
    assert prefix.root() == root
    assert prefix.inclusion_proof(index) == proof
    assert prefix.consistency_proof(m) == cproof


# --- Scale ----------------------------------------------------------------------------------------


def test_tree_of_100000_leaves_builds_quickly_and_matches_frontier() -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(100_000)]
    start = time.perf_counter()
    tree = MerkleTree(leaves)
    elapsed = time.perf_counter() - start
    frontier = Frontier()
    frontier.extend(leaves)
    assert tree.size == 100_000
    assert len(tree.levels) == 17  # 2**16 < 100_000 < 2**17
    assert tree.root() == frontier.root()
    index = 99_999
    assert verify_inclusion(
        leaves[index], index, tree.size, tree.inclusion_proof(index), tree.root()
    )
    assert verify_consistency(
        12_345, tree.size, tree.root(12_345), tree.root(), tree.consistency_proof(12_345)
    )
    assert elapsed < 2.0  # ~20x headroom; guards against accidental quadratic behaviour
