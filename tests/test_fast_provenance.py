"""Provenance hashing (docs/provenance.md) in both implementations of keyvault._fast.

SHA-256 in C (the portable compression and SHA-NI) against hashlib; key salts and commitments
against hashlib; merkle_root against a naive recursive MTH; ledger_leaves parsed back field by
field; tree_append against the naive tree after every append. Every test runs on _pure and on
_core (the ``impl`` fixture, tests/conftest.py: ids c and py); the c case is skipped, with the
reason, when the compiled core is not built, and fails under KEYVAULT_REQUIRE_EXTENSIONS=1.
Where both run, their answers (results, or exception types and arguments) must be identical.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import random
from pathlib import Path

import pytest
from conftest import compiled_core, same, typed
from hypothesis import example, given
from hypothesis import strategies as st

from keyvault._fast import _pure

U64_MAX = (1 << 64) - 1
FUNCTIONS = ["key_salt", "commitments", "merkle_root", "event_leaf", "ledger_leaves", "node_key", "tree_append"]
# Compiled twins; event_leaf and node_key are _pure's own functions in the compiled module too.
COMPILED = ["key_salt", "commitments", "merkle_root", "ledger_leaves", "tree_append"]


@pytest.fixture
def core(core):
    """The compiled core; its SHA-256 compression and BLAKE2b lanes are the best again afterwards."""
    yield core
    core._select_sha256(-1)
    core._select_lanes(-1)


@pytest.fixture(params=["portable", "sha-ni"])
def sha_path(request, core):
    """The compiled core with each SHA-256 compression selected in turn."""
    if request.param == "portable":
        assert core._select_sha256(0) == 0
    elif core._select_sha256(1) != 1:
        pytest.skip("this CPU or build has no SHA extensions")
    return core


# ---------------------------------------------------------------------------
# References, from hashlib and the RFC, written plainly


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1, as written."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


class Tree:
    """The naive MTH of every range of a list of leaf hashes, remembered (the same recursion as mth)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.range_root = functools.lru_cache(maxsize=None)(self._range_root)

    def _range_root(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return sha256(b"")
        if n == 1:
            return self.leaves[start]
        k = 1
        while k * 2 < n:
            k *= 2
        return node(self.range_root(start, start + k), self.range_root(start + k, end))


def completion_order(n: int) -> list[tuple[int, int]]:
    """(level, index) of the internal nodes of a tree of n leaves, in the order appends complete them."""
    order = []
    for size in range(1, n + 1):
        level = 0
        while size % (2 << level) == 0:  # size's trailing zero bits: the subtrees its last leaf closes
            level += 1
            order.append((level, (size >> level) - 1))
    return order


def frontier_root(frontier: bytes) -> bytes:
    f = [frontier[i:i + 32] for i in range(0, len(frontier), 32)]
    if not f:
        return sha256(b"")
    r = f[-1]
    for h in reversed(f[:-1]):
        r = node(h, r)
    return r


def salt_of(seed: bytes, serial: int) -> bytes:
    return hashlib.blake2b(u64(serial), key=seed, digest_size=16, person=b"kv1/salt").digest()


def commitment(seed: bytes, serial: int, material: bytes) -> bytes:
    return sha256(b"\x00" + b"kv1/commit" + u64(serial) + salt_of(seed, serial) + material)


def leaf_hashes(count: int, seed: int = 0) -> list[bytes]:
    return [sha256(b"leaf %d %d" % (seed, i)) for i in range(count)]


def same_or_raise(name: str, *args):
    """same(name, *args) (tests/conftest.py: both twins, the same answer), then _pure's value, or its
    exception raised if both raised."""
    same(name, *args)
    return getattr(_pure, name)(*args)


# ---------------------------------------------------------------------------
# The module surface


def test_public_names(impl):
    for name in FUNCTIONS:
        assert callable(getattr(impl, name)), name
    assert (_pure.KIND_SUPPLIER, _pure.KIND_ISSUE, _pure.KIND_IMPORT, _pure.KIND_REDEEM, _pure.KIND_VOID,
            _pure.KIND_BLACKLIST, _pure.KIND_LIFT, _pure.KIND_TRANSFER, _pure.KIND_TRUST) == tuple(range(1, 10))


@pytest.mark.parametrize("name", COMPILED)
def test_same_signature(core, name):
    assert inspect.signature(getattr(core, name)) == inspect.signature(getattr(_pure, name))


def test_package_exports():
    import keyvault._fast as package

    for name in FUNCTIONS:
        assert getattr(package, name) is getattr(package.impl, name), name
        assert name in package.__all__, name
    for name in ("KIND_SUPPLIER", "KIND_ISSUE", "KIND_IMPORT", "KIND_REDEEM", "KIND_VOID", "KIND_BLACKLIST",
                 "KIND_LIFT", "KIND_TRANSFER", "KIND_TRUST", "HASH_SIZE", "SEED_SIZE", "SALT_SIZE",
                 "BatchRow", "Change", "KeyBlock"):
        assert getattr(package, name) is getattr(_pure, name), name
        assert name in package.__all__, name


def test_stub_lists_the_new_functions():
    stub = (Path(__file__).resolve().parents[1] / "keyvault" / "_fast" / "_core.pyi").read_text(encoding="utf-8")
    for name in FUNCTIONS:
        assert f"\ndef {name}(" in stub, name


# ---------------------------------------------------------------------------
# SHA-256 in C against hashlib


def test_sha256_every_length(core):
    data = bytes((i * 151 + 7) & 0xFF for i in range(301))
    for n in range(301):
        expected = sha256(data[:n])
        assert core._sha256(data[:n]) == expected, n
        assert core._sha256(data[:n], True) == expected, n


@pytest.mark.parametrize("chunk", [1, 3, 55, 56, 63, 64, 65, 127, 128, 129])
def test_sha256_in_pieces(core, chunk):
    data = os.urandom(300)
    for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 200, 300):
        expected = sha256(data[:n])
        assert core._sha256(data[:n], False, chunk) == expected, n
        assert core._sha256(data[:n], True, chunk) == expected, n


@pytest.mark.parametrize("n", [1000, 4096, 65536 + 3, 1 << 20])
def test_sha256_many_blocks(core, n):
    data = random.Random(n).randbytes(n)
    expected = sha256(data)
    assert core._sha256(data) == expected
    assert core._sha256(data, True) == expected
    assert core._sha256(data, True, 1000) == expected


@given(data=st.binary(max_size=700), force_portable=st.booleans(), chunk=st.integers(0, 200))
@example(data=b"abc", force_portable=True, chunk=0)
@example(data=b"", force_portable=False, chunk=1)
def test_sha256_matches_hashlib(data, force_portable, chunk):
    core = compiled_core()
    assert core._sha256(data, force_portable, chunk) == sha256(data)


def test_sha256_chooses_sha_ni_when_the_cpu_has_it(core):
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    has_sha = " sha_ni" in flags and " sse4_1" in flags
    assert core._select_sha256(-1) == (1 if has_sha else 0)
    assert core._select_sha256(0) == 0
    assert core._select_sha256(1) == (1 if has_sha else -1)
    assert core._select_sha256(2) == -1


# ---------------------------------------------------------------------------
# Key salts and commitments


SEED = bytes(range(100, 132))


@pytest.mark.parametrize("serial", [0, 1, 255, 256, (1 << 60) - 1, 1 << 63, U64_MAX])
def test_key_salt(impl, serial):
    assert impl.key_salt(SEED, serial) == salt_of(SEED, serial)
    assert impl.key_salt(bytearray(SEED), serial) == salt_of(SEED, serial)
    assert same_or_raise("key_salt", SEED, serial) == salt_of(SEED, serial)


def _materials(rng: random.Random, count: int) -> list:
    """Native keys (32-symbol str), imported materials (bytes of 0..200 bytes), a few bytearrays."""
    keys = _pure.issue_keys(1 << 40, count, b"", rng.randbytes(10 * count))[0]
    out: list = []
    for i, key in enumerate(keys):
        kind = i % 4
        if kind == 0:
            out.append(key)
        elif kind == 1:
            out.append(rng.randbytes(rng.randrange(0, 201)))
        elif kind == 2:
            out.append(key.encode("ascii") + b"\x00" + rng.randbytes(rng.randrange(0, 9)))
        else:
            out.append(bytearray(rng.randbytes(rng.randrange(0, 100))))
    return out


def _expected_commitments(first: int, seed: bytes, materials: list) -> bytes:
    return b"".join(commitment(seed, first + i, m.encode("ascii") if isinstance(m, str) else bytes(m))
                    for i, m in enumerate(materials))


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 37, 200])
def test_commitments(impl, count):
    rng = random.Random(count)
    seed = rng.randbytes(32)
    materials = _materials(rng, count)
    for first in (0, 12345, (1 << 60) - count, U64_MAX - count + 1 if count else U64_MAX):
        out = impl.commitments(first, seed, materials)
        assert type(out) is bytes
        assert out == _expected_commitments(first, seed, materials), first


def test_commitments_of_native_keys(impl):
    keys, _ = _pure.issue_keys(5 << 25, 64, b"salt", bytes(range(256)) * 2 + bytes(128))
    seed = sha256(b"seed")
    out = impl.commitments(5 << 25, seed, keys)
    assert [out[i:i + 32] for i in range(0, len(out), 32)] == \
        [commitment(seed, (5 << 25) + i, k.encode()) for i, k in enumerate(keys)]


def test_commitments_empty(impl):
    assert impl.commitments(0, SEED, []) == b""
    assert impl.commitments(U64_MAX, SEED, []) == b""


@pytest.mark.parametrize("lanes", [0, -1])
def test_commitments_on_every_path(sha_path, lanes):
    """The compiled core with each SHA-256 compression, with and without BLAKE2b lanes, as _pure."""
    assert sha_path._select_lanes(lanes) >= 0
    rng = random.Random(lanes)
    seed = rng.randbytes(32)
    materials = _materials(rng, 45)
    assert sha_path.commitments(99, seed, materials) == _pure.commitments(99, seed, materials) == \
        _expected_commitments(99, seed, materials)


# ---------------------------------------------------------------------------
# merkle_root against the naive MTH


LEAVES = leaf_hashes(300)


def test_merkle_root_small_trees(impl):
    for n in range(301):
        assert impl.merkle_root(b"".join(LEAVES[:n])) == mth(LEAVES[:n]), n


def test_merkle_root_known_values(impl):
    assert impl.merkle_root(b"") == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert impl.merkle_root(LEAVES[0]) == LEAVES[0]
    assert impl.merkle_root(LEAVES[0] + LEAVES[1]) == node(LEAVES[0], LEAVES[1])
    assert impl.merkle_root(bytearray(b"".join(LEAVES[:3]))) == node(node(LEAVES[0], LEAVES[1]), LEAVES[2])


@pytest.mark.parametrize("n", [1023, 1024, 1025, 65536, 100_003])
def test_merkle_root_large_trees(impl, n):
    leaves = leaf_hashes(n, seed=n)
    assert impl.merkle_root(b"".join(leaves)) == mth(leaves)


def test_merkle_root_on_every_path(sha_path):
    for n in list(range(70)) + [1000, 4097]:
        leaves = leaf_hashes(n, seed=7)
        assert sha_path.merkle_root(b"".join(leaves)) == mth(leaves), n


# ---------------------------------------------------------------------------
# Event leaves and ledger_leaves


def parse_leaf(leaf: bytes) -> dict:
    """An event leaf, field by field (docs/provenance.md)."""
    assert leaf[:9] == b"kv1/event"
    return {"index": int.from_bytes(leaf[9:17], "big"), "prev": leaf[17:49], "kind": leaf[49],
            "at_ms": int.from_bytes(leaf[50:58], "big"), "body": leaf[58:]}


def test_event_leaf(impl):
    prev = sha256(b"prev")
    leaf = impl.event_leaf(7, prev, _pure.KIND_ISSUE, 1_700_000_000_123, b'{"batch": 1}', None)
    assert leaf == b"kv1/event" + u64(7) + prev + bytes([2]) + u64(1_700_000_000_123) + b'{"batch": 1}'
    assert parse_leaf(leaf) == {"index": 7, "prev": prev, "kind": 2, "at_ms": 1_700_000_000_123,
                                "body": b'{"batch": 1}'}
    assert impl.event_leaf(U64_MAX, bytearray(32), 255, U64_MAX, b"", None) == \
        b"kv1/event" + b"\xff" * 8 + bytes(32) + b"\xff" + b"\xff" * 8


TEXTS = ["", "order-1", "ORD/2024/000017", "caf\u00e9", "\u65e5\u672c\u8a9e", "\U0001f600 gift", "a\x00b",
         "x" * 500, "reason: " + "\u00e9" * 300]


def _changes(rng: random.Random, count: int) -> list[tuple[int, int, int, str]]:
    return [(rng.randrange(1 << 60), rng.choice((1, 2)), 1_700_000_000_000 + rng.randrange(1 << 30),
             rng.choice(TEXTS)) for _ in range(count)]


@pytest.mark.parametrize("count", [0, 1, 2, 17, 300])
def test_ledger_leaves(impl, count):
    rng = random.Random(count)
    prev = rng.randbytes(32)
    changes = _changes(rng, count)
    first = rng.randrange(1 << 40)
    pairs, hashes = impl.ledger_leaves(first, prev, changes, None)
    assert type(pairs) is list and type(hashes) is bytes
    assert len(pairs) == count and len(hashes) == 32 * count
    expected_prev = prev
    for i, ((key, leaf), (serial, state, at_ms, text)) in enumerate(zip(pairs, changes)):
        assert type(key) is bytes and type(leaf) is bytes
        assert key == u64(first + i)
        fields = parse_leaf(leaf)
        assert fields["index"] == first + i
        assert fields["prev"] == expected_prev  # chained to the one before (the given prev first)
        assert fields["kind"] == (_pure.KIND_REDEEM if state == 1 else _pure.KIND_VOID)
        assert fields["at_ms"] == at_ms
        assert int.from_bytes(fields["body"][:8], "big") == serial
        assert fields["body"][8:].decode("utf-8") == text
        assert leaf == _pure.event_leaf(first + i, expected_prev, fields["kind"], at_ms,
                                        u64(serial) + text.encode("utf-8"), None)
        expected_prev = sha256(b"\x00" + leaf)
        assert hashes[32 * i:32 * (i + 1)] == expected_prev


def test_ledger_leaves_chain_across_calls(impl):
    rng = random.Random(5)
    changes = _changes(rng, 50)
    whole = impl.ledger_leaves(10, bytes(32), changes, None)
    head = impl.ledger_leaves(10, bytes(32), changes[:20], None)
    tail = impl.ledger_leaves(30, head[1][-32:], changes[20:], None)
    assert (head[0] + tail[0], head[1] + tail[1]) == whole


def test_ledger_leaves_on_every_path(sha_path):
    rng = random.Random(11)
    changes = _changes(rng, 100)
    assert sha_path.ledger_leaves(3, bytes(32), changes, None) == _pure.ledger_leaves(3, bytes(32), changes, None)


def test_ledger_leaves_edges():
    prev = bytes(range(32))
    same_or_raise("ledger_leaves", U64_MAX, prev, [(U64_MAX, 2, U64_MAX, "last")], None)
    same_or_raise("ledger_leaves", U64_MAX - 1, bytearray(prev), [(0, 1, 0, ""), (1, 2, 1, "\ud7ff\ue000")], None)
    same_or_raise("ledger_leaves", 0, prev, [[5, 1, 6, "a list, not a tuple"]], None)
    same_or_raise("ledger_leaves", 0, prev, ((5, 1, 6, "a tuple of changes"),), None)
    same_or_raise("ledger_leaves", 0, prev, [(True, True, 6, "bools are ints")], None)
    # With links (version 2 leaves): the same, and a links argument of the wrong size or type is refused alike.
    same_or_raise("ledger_leaves", U64_MAX, prev, [(U64_MAX, 2, U64_MAX, "last")], b"\xff" * 8)
    same_or_raise("ledger_leaves", 0, prev, [(5, 1, 6, "x"), (6, 2, 7, "y")], u64(3) + u64(4))
    same_or_raise("ledger_leaves", 0, prev, [(5, 1, 6, "x")], bytearray(8))
    for links in (b"\x00" * 7, b"\x00" * 9, "12345678"):
        with pytest.raises((ValueError, TypeError)):
            same_or_raise("ledger_leaves", 0, prev, [(5, 1, 6, "x")], links)


# ---------------------------------------------------------------------------
# tree_append against the naive tree


def _check_tree(impl, leaves: list[bytes], chunks: list[int]) -> list[tuple[int, list, bytes]]:
    """Append leaves in chunks of the given sizes: every node and root checked. Returns each call's answer."""
    tree = Tree(leaves)
    order = completion_order(len(leaves))
    size, frontier, keys, answers = 0, b"", [], []
    for chunk in chunks:
        nodes, frontier = impl.tree_append(size, frontier, b"".join(leaves[size:size + chunk]))
        answers.append((size, nodes, frontier))
        size += chunk
        assert type(nodes) is list and type(frontier) is bytes
        assert len(frontier) == 32 * bin(size).count("1")
        for key_bytes, value in nodes:
            assert type(key_bytes) is bytes and len(key_bytes) == 8 and type(value) is bytes
            key = int.from_bytes(key_bytes, "big")
            assert key == len(keys), "keys come in order, with no gaps"
            keys.append(key)
            level, index = order[key]
            assert value == tree.range_root(index << level, (index + 1) << level), (level, index)
            assert impl.node_key(level, index) == key
        assert len(keys) == size - bin(size).count("1")
        assert frontier_root(frontier) == tree.range_root(0, size), size
        # The frontier is the perfect subtrees of size's binary decomposition, largest first.
        start, parts = 0, []
        for bit in reversed(range(64)):
            if size >> bit & 1:
                parts.append(tree.range_root(start, start + (1 << bit)))
                start += 1 << bit
        assert frontier == b"".join(parts)
    assert keys == list(range(size - bin(size).count("1")))
    return answers


def test_tree_append_one_at_a_time(impl):
    _check_tree(impl, leaf_hashes(600, seed=1), [1] * 600)


@pytest.mark.parametrize("seed", range(4))
def test_tree_append_in_random_chunks(impl, seed):
    rng = random.Random(seed)
    chunks, total = [], 0
    while total < 600:
        chunk = min(rng.choice([0, 1, 2, 3, 5, 8, 13, 31, 32, 33, 64, 100]), 600 - total)
        chunks.append(chunk)
        total += chunk
    _check_tree(impl, leaf_hashes(600, seed=seed), chunks)


def test_tree_append_all_at_once(impl):
    _check_tree(impl, leaf_hashes(1000, seed=9), [1000])


@pytest.mark.parametrize("seed", range(3))
def test_tree_append_compiled_as_pure(core, seed):
    """Byte-identical answers from both implementations on the same random appends."""
    rng = random.Random(100 + seed)
    leaves = [rng.randbytes(32) for _ in range(700)]
    chunks, total = [], 0
    while total < 700:
        chunk = min(rng.randrange(0, 40), 700 - total)
        chunks.append(chunk)
        total += chunk
    assert typed(_check_tree(core, leaves, chunks)) == typed(_check_tree(_pure, leaves, chunks))


def test_tree_append_on_every_path(sha_path):
    leaves = leaf_hashes(300, seed=3)
    _check_tree(sha_path, leaves, [1] * 100 + [7] * 20 + [60])


def test_tree_append_near_the_top():
    """Sizes near 2**64: the deepest merges and the largest keys, as the specification computes them."""
    rng = random.Random(64)
    for size, count in [((1 << 63) - 1, 1), ((1 << 63) - 1, 3), (U64_MAX - 1, 1), (U64_MAX - 3, 3), (U64_MAX, 0),
                        ((1 << 62) + (1 << 40) - 1, 2)]:
        frontier = rng.randbytes(32 * bin(size).count("1"))
        nodes, new = same_or_raise("tree_append", size, frontier, rng.randbytes(32 * count))
        assert len(new) == 32 * bin(size + count).count("1")
    nodes, _ = same_or_raise("tree_append", (1 << 63) - 1, bytes(32 * 63), bytes(32))
    assert len(nodes) == 63
    assert int.from_bytes(nodes[-1][0], "big") == (1 << 63) - 1 - 63 + 62  # node_key(63, 0)


def test_node_key_is_the_completion_order(impl):
    for key, (level, index) in enumerate(completion_order(1 << 12)):
        assert impl.node_key(level, index) == key


def test_frontier_and_leaves_may_be_bytearrays():
    leaves = leaf_hashes(10, seed=4)
    nodes, frontier = same_or_raise("tree_append", 0, bytearray(), bytearray(b"".join(leaves[:5])))
    same_or_raise("tree_append", 5, bytearray(frontier), bytearray(b"".join(leaves[5:])))


# ---------------------------------------------------------------------------
# Bad input: the same ValueError or TypeError from both


BAD = [
    ("key_salt", (bytes(31), 1)),
    ("key_salt", (bytes(33), 1)),
    ("key_salt", (b"", 1)),
    ("key_salt", ("x" * 32, 1)),
    ("key_salt", (None, 1)),
    ("key_salt", (SEED, -1)),
    ("key_salt", (SEED, 1 << 64)),
    ("key_salt", (SEED, 1.0)),
    ("key_salt", (SEED, "1")),
    ("commitments", (0, bytes(31), ["A" * 32])),
    ("commitments", (0, bytes(33), [])),
    ("commitments", (0, "s" * 32, [])),
    ("commitments", (0, SEED, ["caf\u00e9"])),
    ("commitments", (0, SEED, ["A" * 32, "\U0001f600"])),
    ("commitments", (0, SEED, [b"ok", 5])),
    ("commitments", (0, SEED, [None])),
    ("commitments", (0, SEED, [memoryview(b"x")])),
    ("commitments", (-1, SEED, [b"x"])),
    ("commitments", (-1, SEED, [])),
    ("commitments", (1.0, SEED, [])),
    ("commitments", (U64_MAX, SEED, [b"x", b"y"])),
    ("commitments", (1 << 64, SEED, [b"x"])),
    ("commitments", (0, SEED, None)),
    ("merkle_root", (bytes(31),)),
    ("merkle_root", (bytes(33),)),
    ("merkle_root", (bytes(32 * 5 + 1),)),
    ("merkle_root", ("x" * 32,)),
    ("merkle_root", (None,)),
    ("event_leaf", (0, bytes(31), 1, 0, b"", None)),
    ("event_leaf", (0, bytes(33), 1, 0, b"", None)),
    ("event_leaf", (0, "p" * 32, 1, 0, b"", None)),
    ("event_leaf", (0, bytes(32), 256, 0, b"", None)),
    ("event_leaf", (0, bytes(32), -1, 0, b"", None)),
    ("event_leaf", (0, bytes(32), 1.0, 0, b"", None)),
    ("event_leaf", (-1, bytes(32), 1, 0, b"", None)),
    ("event_leaf", (0, bytes(32), 1, 1 << 64, b"", None)),
    ("event_leaf", (0, bytes(32), 1, 0, "body", None)),
    ("ledger_leaves", (0, bytes(31), [(1, 1, 0, "x")], None)),
    ("ledger_leaves", (0, bytes(33), [], None)),
    ("ledger_leaves", (0, "p" * 32, [], None)),
    ("ledger_leaves", (0, None, [], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 0, 0, "active is no change")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 3, 0, "x")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1, 0, "x"), (1, -1, 0, "x")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, "1", 0, "x")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1.0, 0, "x")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1, 0, b"bytes")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1, 0, None)], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1, 0, "lone \ud800 surrogate")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1, 0)], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1, 0, "x", 5)], None)),
    ("ledger_leaves", (0, bytes(32), [None], None)),
    ("ledger_leaves", (0, bytes(32), [(-1, 1, 0, "x")], None)),
    ("ledger_leaves", (0, bytes(32), [(1 << 64, 1, 0, "x")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1, -1, "x")], None)),
    ("ledger_leaves", (0, bytes(32), [(1, 1, 1 << 64, "x")], None)),
    ("ledger_leaves", (-1, bytes(32), [], None)),
    ("ledger_leaves", (U64_MAX, bytes(32), [(1, 1, 0, "x"), (2, 1, 0, "y")], None)),
    ("ledger_leaves", (0, bytes(32), None, None)),
    ("node_key", (0, 0)),
    ("node_key", (1, -1)),
    ("node_key", (1.0, 0)),
    ("tree_append", (0, bytes(32), b"")),
    ("tree_append", (1, b"", b"")),
    ("tree_append", (3, bytes(32), bytes(32))),
    ("tree_append", (3, bytes(96), bytes(32))),
    ("tree_append", (3, bytes(63), bytes(32))),
    ("tree_append", (0, b"", bytes(33))),
    ("tree_append", (0, b"", bytes(31))),
    ("tree_append", (-1, b"", b"")),
    ("tree_append", (1.0, bytes(32), b"")),
    ("tree_append", (U64_MAX, bytes(32 * 64), bytes(32))),
    ("tree_append", (U64_MAX - 1, bytes(32 * 63), bytes(64))),
    ("tree_append", (1 << 64, b"", b"")),
    ("tree_append", (0, "", b"")),
    ("tree_append", (0, b"", "x" * 32)),
    ("tree_append", (0, None, b"")),
]


@pytest.mark.parametrize("name, args", BAD, ids=[f"{name}-{i}" for i, (name, _) in enumerate(BAD)])
def test_bad_input(impl, name, args):
    with pytest.raises((ValueError, TypeError)):
        getattr(impl, name)(*args)
    if impl is not _pure and getattr(impl, name) is not getattr(_pure, name):
        with pytest.raises((ValueError, TypeError)):
            same_or_raise(name, *args)  # and the same exception, with the same message, from both


# ---------------------------------------------------------------------------
# Large inputs: the compiled core hashes them without the GIL (from 1,024 items), two SHA-256
# chains at a time, and issue_keys' verifiers in BLAKE2b lanes


@pytest.mark.parametrize("lanes", [0, -1])
def test_large_commitments_on_every_path(sha_path, lanes):
    assert sha_path._select_lanes(lanes) >= 0
    rng = random.Random(1000 + lanes)
    seed = rng.randbytes(32)
    materials = _materials(rng, 3001)  # mixed sizes: pairs that pad alike, and pairs that do not
    keys = _pure.issue_keys(7 << 20, 2051, b"", rng.randbytes(10 * 2051))[0]  # all pairs alike, one left over
    for first, items in ((12345, materials), (7 << 20, keys), (U64_MAX - len(keys) + 1, keys)):
        assert sha_path.commitments(first, seed, items) == _pure.commitments(first, seed, items) == \
            _expected_commitments(first, seed, items)


def test_large_commitments_refuse_a_bad_material_last(core):
    materials = ["A" * 32] * 2000 + [5]
    with pytest.raises(TypeError):
        same_or_raise("commitments", 0, SEED, materials)


def test_large_merkle_roots_on_every_path(sha_path):
    for n in (1024, 1279, 4096 + 255, 65536 + 3):
        leaves = leaf_hashes(n, seed=n)
        joined = b"".join(leaves)
        assert sha_path.merkle_root(joined) == sha_path.merkle_root(bytearray(joined)) == mth(leaves), n


@pytest.mark.parametrize("salt_size", [0, 16, 96, 97, 300])
def test_large_issue_keys_on_every_lanes_path(core, salt_size):
    """Lanes take salt || key when it fits one block (salts up to 96 bytes); the rest one at a time."""
    rng = random.Random(salt_size)
    salt = rng.randbytes(salt_size)
    entropy = rng.randbytes(10 * 1031)  # 1,031 keys: 128 groups of 8 (or 257 of 4) and a few left over
    expected = _pure.issue_keys((1 << 60) - 500, 1031, salt, entropy)
    for which in (0, 1, 2, 3):
        if core._select_lanes(which) < 0:
            continue
        assert core.issue_keys((1 << 60) - 500, 1031, salt, entropy) == expected, which


def _runs_other_threads(call) -> bool:
    """Whether another Python thread ran while call() did, in any of three tries: only if call let go of the GIL."""
    return any(_ran_during(call))


def _ran_during(call) -> list[bool]:
    """For each of three tries, whether another Python thread ran while call() did.

    The switch interval is made long, so this thread is never made to give the GIL up; the other
    one gives it up at every step (sleep(0)), so this one is never kept waiting for it.
    """
    import sys
    import threading
    import time

    started, stop = threading.Event(), threading.Event()
    count = [0]

    def spin() -> None:
        started.set()
        while not stop.is_set():
            count[0] += 1
            time.sleep(0)

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=spin)
    thread.start()
    try:
        started.wait()
        sys.setswitchinterval(30.0)
        ran = []
        for _ in range(3):
            before = count[0]
            call()
            ran.append(count[0] != before)
        return ran
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join()


def test_a_call_that_keeps_the_gil_lets_no_thread_run(core):
    data = bytes(20_000_000)
    # (the test below means something). One try may still see the other thread run once: a GIL hand-over it
    # asked for before the switch interval was made long can happen between reading the count and the call.
    assert not all(_ran_during(lambda: core._sha256(data)))


def test_large_inputs_let_other_threads_run(core):
    keys, _ = core.issue_keys(1 << 40, 50_000, b"salt", bytes(500_000))
    leaves = core.commitments(1 << 40, SEED, keys)
    assert _runs_other_threads(lambda: core.issue_keys(1 << 40, 50_000, b"salt", bytes(500_000)))
    assert _runs_other_threads(lambda: core.commitments(1 << 40, SEED, keys))
    assert _runs_other_threads(lambda: core.merkle_root(leaves))


def test_concurrent_calls_give_the_same_answers(impl):
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(5)
    jobs = []
    for i in range(8):
        entropy = rng.randbytes(10 * 3000)
        materials = _materials(rng, 1500)
        jobs.append((i << 30, entropy, materials))

    def work(job):
        first, entropy, materials = job
        keys, verifiers = impl.issue_keys(first, 3000, b"salt", entropy)
        commitments = impl.commitments(first, SEED, keys) + impl.commitments(first + 3000, SEED, materials)
        return keys, verifiers, commitments, impl.merkle_root(commitments)

    alone = [work(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(work, jobs)) == alone


# ---------------------------------------------------------------------------
# issue_batch's pipeline: commitments and chunk roots on a second thread


def _commit_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("keyvault-commit")]


def test_issue_batch_pipeline_output(tmp_path):
    """Two chunks: the manifest's commitments and chunk roots are those of the exported keys, in order."""
    import csv

    from keyvault import Identity, Vault
    from keyvault import _fast as selected
    from keyvault.formats.keyformat import make_serial
    from keyvault.formats.manifest import CHUNK, read_manifest

    count = CHUNK + 37
    stages: list = []
    with Vault.init(tmp_path / "store") as vault:
        vault.issue_batch(Identity.generate("Acme"), "P", count, keys_out=tmp_path / "k.csv",
                          manifest_out=tmp_path / "b.kvm", progress=lambda stage, n: stages.append((stage, n)))
    assert [s for s in stages if s[0] == "generate"] == [("generate", CHUNK), ("generate", 37)]
    assert not _commit_threads()
    with open(tmp_path / "k.csv", newline="") as fh:
        keys = [_pure.normalize(row["key"]) for row in csv.DictReader(fh)]  # (printed in groups)
    manifest = read_manifest(tmp_path / "b.kvm")  # (checks the body's hash and the Merkle root)
    first = make_serial(manifest.batch, 0)
    commitments = b"".join(manifest.commitments())
    assert commitments == _pure.commitments(first, manifest.seed(), keys)
    assert manifest.chunk_roots == (selected.merkle_root(commitments[:32 * CHUNK]),
                                    selected.merkle_root(commitments[32 * CHUNK:]))
    verifiers = b"".join(manifest.records())
    assert verifiers[-16:] == hashlib.blake2b(manifest.salt + keys[-1].encode(), digest_size=16,
                                              person=b"kv1/verifier").digest()


@pytest.mark.parametrize("where", ["commit thread", "issuing thread"])
def test_issue_batch_pipeline_failure(tmp_path, monkeypatch, where):
    """An error on either thread stops the batch: raised to the caller, no files, no thread left behind."""
    from keyvault import Identity, Vault
    from keyvault.engine import issuing

    monkeypatch.setattr(issuing, "CHUNK", 64)  # many small chunks (nothing of this batch is kept)
    calls = [0]

    def failing(real):
        def call(*args):
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError("boom")
            return real(*args)
        return call

    if where == "commit thread":
        monkeypatch.setattr(issuing, "_commit_chunk", failing(issuing._commit_chunk))
    else:
        monkeypatch.setattr(issuing._fast, "issue_keys", failing(issuing._fast.issue_keys))
    with Vault.init(tmp_path / "store") as vault:
        with pytest.raises(RuntimeError, match="boom"):
            vault.issue_batch(Identity.generate("Acme"), "P", 64 * 6 + 5, keys_out=tmp_path / "k.csv",
                              manifest_out=tmp_path / "b.kvm")
        assert not vault.catalog().batches
    # (The next chunk may have started on the commit thread before its predecessor's error was seen.)
    assert calls[0] in ((3, 4) if where == "commit thread" else (3,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert not _commit_threads()


def test_write_manifest_closes_its_body_when_it_fails(tmp_path):
    from keyvault import Identity
    from keyvault.formats.manifest import write_manifest

    closed = []

    def body():
        try:
            yield b"", b"", sha256(b"")
            yield None, b"", sha256(b"")  # records must be bytes: write_manifest fails here
            yield b"", b"", sha256(b"")
        finally:
            closed.append(True)

    with pytest.raises(TypeError):
        write_manifest(tmp_path / "b.kvm", Identity.generate("Acme"), {}, bytes(32), body())
    assert closed == [True]
    assert not list(tmp_path.iterdir())
