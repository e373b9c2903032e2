"""Merkle trees as RFC 9162 section 2.1: hashes, roots, inclusion and consistency proofs.

This module is the readable reference for docs/provenance.md. Leaves are always passed as
leaf *hashes* (``leaf_hash(data)``); the 0x00 / 0x01 prefixes keep a leaf from ever passing as
an inner node. A tree held elsewhere (a store, a file) is read through a :data:`Perfect`
callback, so proofs cost O(log n) reads whatever the size of the tree.

Verifiers follow RFC 9162 2.1.3.2 and 2.1.4.2 step by step and refuse, with a message that
says what is wrong, anything the algorithm would not consume exactly. Every failure raises
:class:`~keyvault.errors.ProofError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from ..errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

# perfect(level, index) is the root of the aligned perfect subtree over leaves
# [index << level, (index + 1) << level); perfect(0, i) is leaf hash i.
Perfect = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """The hash of a leaf: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k, the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_root(perfect: Perfect, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for any 0 <= start <= end inside the tree, splitting as the RFC does.

    An aligned power-of-two range is one call to ``perfect``; any other range is split at
    start + k (k the largest power of two < end - start). For a range starting on a
    multiple of a large power of two (a whole tree, a right edge) that is O(log n) calls.
    """
    if not 0 <= start <= end:
        raise ProofError(f"[{start}, {end}) is not a range of leaves")
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return perfect(n.bit_length() - 1, start // n)
    k = _split(n)
    return node_hash(range_root(perfect, start, start + k), range_root(perfect, start + k, end))


def perfect_from_leaves(leaf_hashes: Sequence[bytes]) -> Perfect:
    """A :data:`Perfect` over an in-memory list of leaf hashes (computes every level once)."""
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])

    def perfect(level: int, index: int) -> bytes:
        if not (0 <= level < len(levels) and 0 <= index < len(levels[level])):
            raise ProofError(f"no perfect subtree at level {level}, index {index} in a tree of "
                             f"{len(leaf_hashes)} leaves")
        return levels[level][index]

    return perfect


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves; EMPTY_ROOT for no leaves."""
    return range_root(perfect_from_leaves(leaf_hashes), 0, len(leaf_hashes))


def frontier_root(frontier: Sequence[bytes]) -> bytes:
    """The root of a tree from its right-edge frontier (perfect subtree roots, largest first)."""
    if not frontier:
        return EMPTY_ROOT
    result = frontier[-1]
    for subtree in reversed(frontier[:-1]):
        result = node_hash(subtree, result)
    return result


def inclusion_proof(index: int, size: int, perfect: Perfect) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(index, D[size]): the sibling hashes from the leaf up to the root."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:  # walk down from the root, collecting siblings top first
        k = _split(end - start)
        if index < start + k:
            proof.append(range_root(perfect, start + k, end))
            end = start + k
        else:
            proof.append(range_root(perfect, start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(old_size: int, new_size: int, perfect: Perfect) -> list[bytes]:
    """RFC 9162 2.1.4.1 PROOF(old_size, D[new_size]); [] when the sizes are equal or old_size is 0."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"a tree of {old_size} leaves cannot be a prefix of one of {new_size}")
    if old_size == 0:
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True  # SUBPROOF(m, D[start:end], complete)
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(range_root(perfect, start + k, end))
            end = start + k
        else:
            proof.append(range_root(perfect, start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        proof.append(range_root(perfect, start, end))
    proof.reverse()
    return proof


def _check_hash(value: bytes, what: str) -> None:
    """Refuse anything but a 32-byte hash."""
    if not isinstance(value, (bytes, bytearray)):
        raise ProofError(f"{what} is a {type(value).__name__}, not bytes")
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes; every hash is {HASH_SIZE} bytes")


def _path_length(index: int, size: int) -> int:
    """How many hashes RFC 9162 2.1.3.2 consumes for leaf ``index`` of a tree of ``size``."""
    inner = (index ^ (size - 1)).bit_length()  # levels where the leaf's subtree has a full sibling
    return inner + bin(index >> inner).count("1")  # plus the right-edge levels with a left sibling


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless ``proof`` shows leaf hash ``leaf`` at ``index`` under ``root`` (RFC 9162 2.1.3.2)."""
    if size <= 0:
        raise ProofError(f"a tree of {size} leaves holds no leaf to prove")
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    _check_hash(leaf, "the leaf hash")
    _check_hash(root, "the root")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}")
    need = _path_length(index, size)
    if len(proof) != need:
        raise ProofError(f"the proof has {len(proof)} hashes; a tree of {size} leaves needs {need} "
                         f"for index {index}")
    # RFC 9162 2.1.3.2 from here on; its own length checks stay, though the one above answers first.
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"the proof for leaf {index} has more hashes than a tree of {size} leaves uses")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the proof for leaf {index} ends below the root of a tree of {size} leaves")
    if r != root:
        raise ProofError(f"the proof for leaf {index} does not lead to the root of the tree of {size} leaves")


def _consistency_length(old_size: int, new_size: int) -> int:
    """How many hashes RFC 9162 2.1.4.2 consumes to prove ``old_size`` is a prefix of ``new_size``."""
    shift = (old_size & -old_size).bit_length() - 1  # the old tree's last perfect subtree: 2**shift leaves
    seed = 0 if old_size == 1 << shift else 1  # its root is in the proof unless it is the whole old tree
    return seed + _path_length((old_size - 1) >> shift, ((new_size - 1) >> shift) + 1)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Raise ProofError unless ``proof`` shows the tree ``old_root`` is a prefix of ``new_root`` (RFC 9162 2.1.4.2).

    Equal sizes need an empty proof and equal roots. An empty old tree is a prefix of every
    tree: the RFC has nothing to prove, so only an empty proof and ``old_root == EMPTY_ROOT``
    are accepted.
    """
    if old_size < 0 or old_size > new_size:
        raise ProofError(f"a tree of {old_size} leaves cannot be a prefix of one of {new_size}")
    _check_hash(old_root, "the old root")
    _check_hash(new_root, "the new root")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofError(f"the proof has {len(proof)} hashes; from {old_size} to {new_size} leaves "
                             "there is nothing to prove, so it must be empty")
        want = EMPTY_ROOT if old_size == 0 else new_root
        if old_root != want:
            raise ProofError(f"the old root is not the root of the tree of {old_size} leaves")
        return
    need = _consistency_length(old_size, new_size)
    if len(proof) != need:
        raise ProofError(f"the proof has {len(proof)} hashes; from {old_size} to {new_size} leaves it needs {need}")
    # RFC 9162 2.1.4.2 from here on.
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a perfect subtree: its root starts the fold
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"the proof has more hashes than a tree of {new_size} leaves uses")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the proof ends below the root of the tree of {new_size} leaves")
    if fr != old_root:
        raise ProofError(f"the proof does not lead to the old root (tree of {old_size} leaves)")
    if sr != new_root:
        raise ProofError(f"the proof does not lead to the new root (tree of {new_size} leaves)")
