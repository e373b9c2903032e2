"""keyvault.formats.merkle against RFC 9162 section 2.1.

(a) the Certificate Transparency known vectors (RFC 6962 test data of certificate-transparency-go,
    Trillian and transparency-dev/merkle): roots of sizes 0..8, inclusion and consistency proofs;
(b) roots against a naive MTH written here, every proof of small trees verifying, and every way a
    proof can be broken (a flipped byte, a hash dropped or added, a wrong index or size, a wrong
    root) refused;
(c) each verifier rule by name, the messages, and the prefix separation of leaves and nodes;
(d) proofs cost O(log n) reads of a tree held elsewhere; range_root and frontier_root;
(e) hypothesis properties over trees up to 2000 leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyvault.formats import merkle
from keyvault.errors import ProofError
from keyvault.formats.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    frontier_root,
    inclusion_proof,
    leaf_hash,
    node_hash,
    perfect_from_leaves,
    range_root,
    root,
    verify_consistency,
    verify_inclusion,
)

# -- (a) known vectors ---------------------------------------------------------------------------

CT_LEAVES = [
    b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [  # MTH of the first n leaves, n = 0..8
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
CT_INCLUSION = [  # (index, size, path), indices from 0
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_HASHES = [leaf_hash(d) for d in CT_LEAVES]
CT_TREE = perfect_from_leaves(CT_HASHES)


def test_hashes_are_rfc_9162() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT == frontier_root([])
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()


@pytest.mark.parametrize("size", range(9))
def test_ct_roots(size: int) -> None:
    assert root(CT_HASHES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    proof = inclusion_proof(index, size, CT_TREE)
    assert [h.hex() for h in proof] == path
    verify_inclusion(CT_HASHES[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_ct_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    proof = consistency_proof(old, new, CT_TREE)
    assert [h.hex() for h in proof] == path
    verify_consistency(old, new, bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new]), proof)


# -- (b) small trees, exhaustively ---------------------------------------------------------------

def naive_mth(data: Sequence[bytes]) -> bytes:
    """MTH as RFC 9162 2.1.1 writes it, over leaf data."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < len(data):
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(data[:k]) + naive_mth(data[k:])).digest()


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def path_sides(m: int, n: int) -> list[bool]:
    """For PATH(m, D[n]), leaf to root: is each sibling on the right? Equal sides, equal fold."""
    if n == 1:
        return []
    k = split(n)
    return path_sides(m, k) + [True] if m < k else path_sides(m - k, n - k) + [False]


def proof_sides(m: int, n: int, complete: bool = True) -> list[str]:
    """The same for PROOF(m, D[n]) (SUBPROOF of RFC 9162 2.1.4.1)."""
    if m == n:
        return [] if complete else ["seed"]
    k = split(n)
    return proof_sides(m, k, complete) + ["right"] if m <= k else proof_sides(m - k, n - k, False) + ["left"]


DATA = [b"%d" % i for i in range(70)]
HASHES = [leaf_hash(d) for d in DATA]
TREE = perfect_from_leaves(HASHES)
ROOTS = [naive_mth(DATA[:n]) for n in range(71)]


def flip(h: bytes, at: int) -> bytes:
    return h[:at] + bytes([h[at] ^ 0x01]) + h[at + 1:]


def refused(call: object, *args: object) -> bool:
    try:
        call(*args)  # type: ignore[operator]
    except ProofError:
        return True
    return False


def test_roots_match_the_naive_definition() -> None:
    for n in range(71):
        assert root(HASHES[:n]) == ROOTS[n]
        assert range_root(TREE, 0, n) == ROOTS[n]


def test_every_inclusion_proof_verifies_and_every_alteration_is_refused() -> None:
    for size in range(1, 71):
        top = ROOTS[size]
        for index in range(size):
            proof = inclusion_proof(index, size, TREE)
            leaf = HASHES[index]
            verify_inclusion(leaf, index, size, proof, top)
            assert refused(verify_inclusion, HASHES[(index + 1) % size] if size > 1 else b"\0" * 32,
                           index, size, proof, top)
            assert refused(verify_inclusion, leaf, index, size, proof, ROOTS[size - 1])
            for i, h in enumerate(proof):
                broken = proof[:i] + [flip(h, (index + i) % 32)] + proof[i + 1:]
                assert refused(verify_inclusion, leaf, index, size, broken, top)
            if proof:
                assert refused(verify_inclusion, leaf, index, size, proof[1:], top)
                assert refused(verify_inclusion, leaf, index, size, proof[:-1], top)
            assert refused(verify_inclusion, leaf, index, size, proof + [top], top)
            assert refused(verify_inclusion, leaf, index, size, [leaf] + proof, top)
            assert refused(verify_inclusion, leaf, index + 1, size, proof, top)
            # Another size folds the same hashes differently, unless its path has the very same
            # shape: then the proof is the same statement, and only the signed checkpoint binds
            # the root to its size. Check that the verifier tells exactly those cases apart.
            for other in (size - 1, size + 1):
                same_shape = index < other and path_sides(index, other) == path_sides(index, size)
                assert refused(verify_inclusion, leaf, index, other, proof, top) != same_shape


def test_every_byte_of_every_small_inclusion_proof_matters() -> None:
    for size in range(1, 10):
        for index in range(size):
            proof = inclusion_proof(index, size, TREE)
            for i, h in enumerate(proof):
                for at in range(32):
                    broken = proof[:i] + [flip(h, at)] + proof[i + 1:]
                    assert refused(verify_inclusion, HASHES[index], index, size, broken, ROOTS[size])


def test_every_consistency_proof_verifies_and_every_alteration_is_refused() -> None:
    for new in range(1, 41):
        for old in range(1, new + 1):
            proof = consistency_proof(old, new, TREE)
            a, b = ROOTS[old], ROOTS[new]
            verify_consistency(old, new, a, b, proof)
            assert refused(verify_consistency, old, new, flip(a, old % 32), b, proof)
            assert refused(verify_consistency, old, new, a, flip(b, new % 32), proof)
            for i, h in enumerate(proof):
                broken = proof[:i] + [flip(h, (old + i) % 32)] + proof[i + 1:]
                assert refused(verify_consistency, old, new, a, b, broken)
            if proof:
                assert refused(verify_consistency, old, new, a, b, proof[1:])
                assert refused(verify_consistency, old, new, a, b, proof[:-1])
            assert refused(verify_consistency, old, new, a, b, proof + [a])
            assert refused(verify_consistency, old, new, a, b, [a] + proof)
            if old < new:
                assert refused(verify_consistency, old, new, b, a, proof)
            for m, n in ((old - 1, new), (old + 1, new), (old, new - 1), (old, new + 1)):
                if 1 <= m <= n and (m, n) != (old, new):
                    same_shape = proof_sides(m, n) == proof_sides(old, new)
                    assert refused(verify_consistency, m, n, a, b, proof) != same_shape


def test_a_rewritten_history_is_not_consistent() -> None:
    forked = HASHES[:40]
    forked[3] = leaf_hash(b"rewritten")
    for old in range(4, 40):
        proof = consistency_proof(old, 40, perfect_from_leaves(forked))
        assert refused(verify_consistency, old, 40, ROOTS[old], root(forked), proof)


# -- (c) the verifier rules, one by one ----------------------------------------------------------

def test_index_at_or_beyond_the_size_is_refused() -> None:
    proof = inclusion_proof(3, 4, TREE)
    with pytest.raises(ProofError, match="leaf 4 is not in a tree of 4 leaves"):
        verify_inclusion(HASHES[4], 4, 4, proof, ROOTS[4])
    with pytest.raises(ProofError, match="leaf -1 is not in"):
        verify_inclusion(HASHES[0], -1, 4, proof, ROOTS[4])
    with pytest.raises(ProofError, match="not in a tree of 4 leaves"):
        inclusion_proof(4, 4, TREE)


def test_an_empty_tree_has_no_inclusion() -> None:
    with pytest.raises(ProofError, match="a tree of 0 leaves holds no leaf"):
        verify_inclusion(EMPTY_ROOT, 0, 0, [], EMPTY_ROOT)


def test_an_empty_proof_only_proves_the_single_leaf_of_a_tree_of_one() -> None:
    verify_inclusion(HASHES[0], 0, 1, [], ROOTS[1])
    with pytest.raises(ProofError, match="does not lead to the root"):
        verify_inclusion(HASHES[1], 0, 1, [], ROOTS[1])
    for size in (2, 3, 1000):
        with pytest.raises(ProofError, match="the proof has 0 hashes"):
            verify_inclusion(ROOTS[2], 0, size, [], ROOTS[2])
    with pytest.raises(ProofError, match="the proof has 0 hashes; from 3 to 5 leaves it needs 4"):
        verify_consistency(3, 5, ROOTS[3], ROOTS[5], [])


def test_the_length_message_says_what_is_wrong_without_the_data() -> None:
    with pytest.raises(ProofError) as info:
        verify_inclusion(HASHES[7], 7, 1000, [HASHES[0]] * 5, ROOTS[1])
    assert str(info.value) == "the proof has 5 hashes; a tree of 1000 leaves needs 10 for index 7"
    with pytest.raises(ProofError) as info:
        verify_inclusion(HASHES[7], 7, 1000, [HASHES[0]] * 100_000, ROOTS[1])
    assert len(str(info.value)) < 100 and HASHES[0].hex() not in str(info.value)


@pytest.mark.parametrize("bad", [b"", b"\0" * 31, b"\0" * 33, "0" * 32])
def test_every_hash_is_32_bytes(bad: bytes) -> None:
    proof = inclusion_proof(2, 5, TREE)
    with pytest.raises(ProofError, match="proof hash 1 is"):
        verify_inclusion(HASHES[2], 2, 5, [proof[0], bad, proof[2]], ROOTS[5])
    with pytest.raises(ProofError, match="the leaf hash is"):
        verify_inclusion(bad, 2, 5, proof, ROOTS[5])
    with pytest.raises(ProofError, match="the root is"):
        verify_inclusion(HASHES[2], 2, 5, proof, bad)
    cproof = consistency_proof(3, 5, TREE)
    with pytest.raises(ProofError, match="proof hash 0 is"):
        verify_consistency(3, 5, ROOTS[3], ROOTS[5], [bad, cproof[1]])
    with pytest.raises(ProofError, match="the old root is"):
        verify_consistency(3, 5, bad, ROOTS[5], cproof)
    with pytest.raises(ProofError, match="the new root is"):
        verify_consistency(3, 5, ROOTS[3], bad, cproof)


def test_consistency_sizes() -> None:
    with pytest.raises(ProofError, match="a tree of 6 leaves cannot be a prefix of one of 5"):
        verify_consistency(6, 5, ROOTS[6], ROOTS[5], consistency_proof(5, 6, TREE))
    with pytest.raises(ProofError, match="cannot be a prefix"):
        consistency_proof(6, 5, TREE)
    with pytest.raises(ProofError, match="cannot be a prefix"):
        verify_consistency(-1, 5, EMPTY_ROOT, ROOTS[5], [])
    # Equal sizes: nothing to prove; the proof must be empty and the roots equal.
    assert consistency_proof(5, 5, TREE) == []
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])
    with pytest.raises(ProofError, match="not the root"):
        verify_consistency(5, 5, ROOTS[4], ROOTS[5], [])
    with pytest.raises(ProofError, match="the proof has 1 hashes; from 5 to 5 leaves there is nothing to prove"):
        verify_consistency(5, 5, ROOTS[5], ROOTS[5], [ROOTS[5]])


def test_an_empty_old_tree_is_a_prefix_of_any_tree_with_an_empty_proof_only() -> None:
    """RFC 9162 has nothing to prove from size 0; we accept exactly [] and the empty-tree root."""
    assert consistency_proof(0, 7, TREE) == []
    verify_consistency(0, 7, EMPTY_ROOT, ROOTS[7], [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(0, 7, EMPTY_ROOT, ROOTS[7], [ROOTS[7]])
    with pytest.raises(ProofError, match="the old root is not the root of the tree of 0 leaves"):
        verify_consistency(0, 7, ROOTS[1], ROOTS[7], [])


def test_a_node_cannot_pass_as_a_leaf() -> None:
    """Second preimages: the 0x00/0x01 prefixes keep an inner node from passing as a leaf.

    The attacker takes the inner node over leaves 0 and 1 of a signed 4-leaf tree and claims its
    two children, concatenated, are one leaf: leaf 0 of a tree of 2 whose other half is the node
    over leaves 2 and 3. Without the prefixes the fold would land on the signed root.
    """
    l0, l1, l2, l3 = HASHES[:4]
    signed_root = ROOTS[4]
    forged_leaf = l0 + l1
    sibling = node_hash(l2, l3)
    with pytest.raises(ProofError, match="does not lead to the root"):
        verify_inclusion(leaf_hash(forged_leaf), 0, 2, [sibling], signed_root)
    # The same forgery works on an unprefixed tree: this is what the prefixes prevent.
    def plain(b: bytes) -> bytes:
        return hashlib.sha256(b).digest()

    p0, p1, p2, p3 = (plain(d) for d in DATA[:4])
    plain_root = plain(plain(p0 + p1) + plain(p2 + p3))
    assert plain(plain(p0 + p1) + plain(p2 + p3)) == plain_root  # the forged leaf p0 + p1 folds to it
    # And the node itself, handed over as a leaf hash at the signed size, does not fit the tree.
    with pytest.raises(ProofError, match="the proof has 1 hashes; a tree of 4 leaves needs 2"):
        verify_inclusion(node_hash(l0, l1), 0, 4, [sibling], signed_root)
    for index in range(4):
        with pytest.raises(ProofError):
            verify_inclusion(node_hash(l0, l1), index, 4, inclusion_proof(index, 4, TREE), signed_root)


# -- (d) trees held elsewhere ---------------------------------------------------------------------

class CountingTree:
    """A Perfect over an imaginary tree of any size: subtree roots are made up, reads counted."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, level: int, index: int) -> bytes:
        self.calls += 1
        return hashlib.sha256(b"%d/%d" % (level, index)).digest()


@pytest.mark.parametrize("size", [2**40, 2**40 + 1, 2**40 - 1, 3 * 2**38 + 12345, 10**12 + 7])
def test_proofs_read_o_log_n_subtrees(size: int) -> None:
    bound = 2 * size.bit_length() + 2
    for index in (0, 1, size // 3, size - 2, size - 1):
        tree = CountingTree()
        assert len(inclusion_proof(index, size, tree)) <= size.bit_length() + 1
        assert tree.calls <= bound
    for old in (1, 2, 3, size // 2, size // 3 + 1, size - 1, size):
        tree = CountingTree()
        consistency_proof(old, size, tree)
        assert tree.calls <= bound
    tree = CountingTree()
    range_root(tree, 0, size)
    assert tree.calls == bin(size).count("1")


def test_range_root_of_any_range() -> None:
    for start in range(70):
        for end in range(start, 71):
            assert range_root(TREE, start, end) == naive_mth(DATA[start:end])
    with pytest.raises(ProofError, match="not a range"):
        range_root(TREE, 5, 4)
    with pytest.raises(ProofError, match="no perfect subtree"):
        range_root(TREE, 64, 72)


def test_frontier_root() -> None:
    for size in range(71):
        frontier, start = [], 0
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                frontier.append(TREE(level, start >> level))
                start += 1 << level
        assert frontier_root(frontier) == ROOTS[size]


def test_the_module_says_what_it_holds() -> None:
    assert merkle.__doc__ and "RFC 9162" in merkle.__doc__
    for name in ("leaf_hash", "node_hash", "root", "range_root", "inclusion_proof", "consistency_proof",
                 "verify_inclusion", "verify_consistency", "perfect_from_leaves", "frontier_root"):
        assert getattr(merkle, name).__doc__


# -- (e) properties -------------------------------------------------------------------------------

BIG = [leaf_hash(b"%d" % i) for i in range(2000)]
BIG_TREE = perfect_from_leaves(BIG)  # also serves every prefix: its perfect subtrees are theirs
PROPERTY = settings(max_examples=150, deadline=None, database=None)


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, 2000))
    return size, draw(st.integers(0, size - 1))


@PROPERTY
@given(size_and_index(), st.data())
def test_random_inclusion(case: tuple[int, int], data: st.DataObject) -> None:
    size, index = case
    top = range_root(BIG_TREE, 0, size)
    proof = inclusion_proof(index, size, BIG_TREE)
    verify_inclusion(BIG[index], index, size, proof, top)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        at = data.draw(st.integers(0, 31))
        with pytest.raises(ProofError):
            verify_inclusion(BIG[index], index, size, proof[:i] + [flip(proof[i], at)] + proof[i + 1:], top)
        with pytest.raises(ProofError):
            verify_inclusion(BIG[index], index, size, proof[:i] + proof[i + 1:], top)
    other = data.draw(st.integers(0, size - 1).filter(lambda j: j != index)) if size > 1 else None
    if other is not None:
        with pytest.raises(ProofError):
            verify_inclusion(BIG[other], index, size, proof, top)
        with pytest.raises(ProofError):
            verify_inclusion(BIG[index], other, size, proof, top)


@PROPERTY
@given(size_and_index(), st.data())
def test_random_consistency(case: tuple[int, int], data: st.DataObject) -> None:
    new, old = case[0], case[1] + 1
    a, b = range_root(BIG_TREE, 0, old), range_root(BIG_TREE, 0, new)
    proof = consistency_proof(old, new, BIG_TREE)
    verify_consistency(old, new, a, b, proof)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        with pytest.raises(ProofError):
            verify_consistency(old, new, a, b, proof[:i] + [flip(proof[i], data.draw(st.integers(0, 31)))]
                               + proof[i + 1:])
        with pytest.raises(ProofError):
            verify_consistency(old, new, a, b, proof + [proof[i]])


@PROPERTY
@given(st.integers(0, 2000).flatmap(lambda end: st.tuples(st.integers(0, end), st.just(end))))
def test_random_range_root(bounds: tuple[int, int]) -> None:
    start, end = bounds
    assert range_root(BIG_TREE, start, end) == root(BIG[start:end])
