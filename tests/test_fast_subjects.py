"""The subject index's checkpoint-time work in both implementations of keyvault._fast, and the links of
redeems and voids (docs/provenance.md, "Complete histories").

``subject_update`` against the from-scratch root (``history.root_of``) and the stored tree's own
rules, ``subject_latest`` against the leaves' links, each twin against the other (``same``: value and
types, or exception type and message); damaged nodes and leaves raise the specification's
StoreCorruptError in both. ``change_links`` (one walk over the key subjects' lists) against a
cursor lookup per key, on a real store.
"""

from __future__ import annotations

import hashlib
import inspect
import random
from pathlib import Path

import pytest
from conftest import compiled_core, same
from hypothesis import given, settings
from hypothesis import strategies as st

from keyvault import Vault, _fast
from keyvault._fast import _pure
from keyvault.errors import StoreCorruptError
from keyvault.engine.subjects import change_links, latest_listed
from keyvault.formats import history
from keyvault.formats.events import NO_LINK, encode_links
from keyvault.store.records import u64


def key_of(n: int) -> bytes:
    return hashlib.sha256(b"subject %d" % n).digest()


def apply_rounds(impl, rounds: list[dict[bytes, int]], keep: int = 0) -> tuple[dict[bytes, bytes], list[bytes]]:
    """Run subject_update over each round on a dict store; the store and each round's root. With ``keep``, the
    records written are kept in an overlay and stored every ``keep`` rounds (as the engine does between
    checkpoints that do not store the tree); the rest are left in the overlay, passed on each round."""
    store: dict[bytes, bytes] = {}
    overlay: dict[bytes, bytes] = {}
    roots = []
    for n, latest in enumerate(rounds):
        root, writes = impl.subject_update(dict(latest), store.get, overlay if keep else None)
        assert writes == sorted(writes)
        (overlay if keep else store).update(writes)
        if keep and (n + 1) % keep == 0:
            store.update(overlay)
            overlay.clear()
        roots.append(root)
    return store, roots


def test_same_signatures() -> None:
    core = compiled_core()
    for name in ("subject_latest", "subject_update"):
        assert inspect.signature(getattr(core, name)) == inspect.signature(getattr(_pure, name)), name
        assert getattr(_fast, name) is getattr(_fast.impl, name) and name in _fast.__all__


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, 400), st.integers(0, (1 << 64) - 2), min_size=1, max_size=40),
                min_size=1, max_size=8))
def test_update_is_the_root_of_everything_set_so_far(rounds: list[dict[int, int]]) -> None:
    """Every round's root is the from-scratch root over all subjects so far, and both twins write the same
    records; a node that already holds two subjects is never replaced by a leaf."""
    as_keys = [{key_of(n): v for n, v in r.items()} for r in rounds]
    core_store, core_roots = apply_rounds(compiled_core(), as_keys)
    pure_store, pure_roots = apply_rounds(_pure, as_keys)
    assert (core_store, core_roots) == (pure_store, pure_roots)
    everything: dict[bytes, int] = {}
    for latest, root in zip(as_keys, core_roots):
        everything.update(latest)
        assert root == history.root_of(everything)
    for keep in (1, 3):  # the newer records in an overlay, read before the store: the same roots
        assert apply_rounds(compiled_core(), as_keys, keep)[1] == apply_rounds(_pure, as_keys, keep)[1] == core_roots


def test_each_round_writes_only_the_changed_paths() -> None:
    """A second update of one subject rewrites its bucket and the inner nodes above it, nothing else."""
    keys = {key_of(n): n for n in range(300)}
    store, _ = apply_rounds(compiled_core(), [keys])
    root, writes = compiled_core().subject_update({key_of(7): 1000}, store.get, None)
    buckets = [w for w in writes if w[1][:1] == b"L"]
    assert len(buckets) == 1 and buckets[0][1] == store[buckets[0][0]].replace(key_of(7) + u64(7),
                                                                             key_of(7) + u64(1000))
    assert [w[0][1:3] for w in writes] == [d.to_bytes(2, "big") for d in range(len(writes))]  # one per depth
    assert all(w[1][:1] == b"N" for w in writes[:-1])
    assert root == history.root_of({**keys, key_of(7): 1000})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3000), min_size=1, max_size=120), min_size=1, max_size=6))
def test_buckets_hold_at_most_sixteen_and_inner_nodes_more(rounds: list[list[int]]) -> None:
    """The layout both twins keep: a subtree of up to _INDEX_BUCKET subjects is one bucket (entries in key order,
    each on its path), a larger one an inner node; nothing is stored below a bucket or an empty side."""
    store, _ = apply_rounds(compiled_core(), [{key_of(n): n for n in r} for r in rounds])
    everything = sorted({key_of(n) for r in rounds for n in r})

    def check(depth: int, prefix: bytes, keys: list[bytes]) -> None:
        record = store.get(b"#" + depth.to_bytes(2, "big") + prefix)
        if not keys:
            assert record is None
            return
        if len(keys) <= _pure._INDEX_BUCKET:
            assert record is not None and record[:1] == b"L" and len(record) == 1 + 40 * len(keys)
            assert [record[at:at + 32] for at in range(1, len(record), 40)] == keys
            return
        assert record is not None and record[:1] == b"N" and len(record) == 65
        right = bytearray(prefix)
        right[depth // 8] |= 0x80 >> depth % 8
        check(depth + 1, prefix, [k for k in keys if not history.bit(k, depth)])
        check(depth + 1, bytes(right), [k for k in keys if history.bit(k, depth)])

    check(0, bytes(32), everything)
    assert len(store) <= len(everything)  # (about one record per six subjects once there are many)


@pytest.mark.parametrize("damage", [b"", b"L", b"N" + bytes(63), b"X" + bytes(64), b"L" + bytes(41),
                                    b"N" + bytes(65), b"L" + bytes(40) * 17, b"off path",
                                    b"L" + b"\x01" * 40 + bytes(40)])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_a_damaged_node_raises_in_both(damage: bytes, depth: int) -> None:
    """A stored node of the wrong tag or length on the path of a changed subject (or the root) is damage."""
    store, _ = apply_rounds(_pure, [{key_of(n): n for n in range(400)}])
    target = key_of(3)
    found = [k for k in store if k[1:3] == depth.to_bytes(2, "big") and _under(k, target, depth)]
    assert found
    if damage == b"off path":  # a bucket whose entry is not under its node (at the root, every key is)
        if not depth:
            return
        damage = b"L" + bytes([target[0] ^ 0x80]) + target[1:] + u64(1)
    store[found[0]] = damage
    expected = same("subject_update", {target: 99}, store.get, None)
    assert expected is None  # both raised, the same StoreCorruptError
    with pytest.raises(StoreCorruptError, match="subject index is damaged"):
        _pure.subject_update({target: 99}, store.get, None)


def _under(node_key: bytes, key: bytes, depth: int) -> bool:
    """Whether the node key at ``depth`` lies on ``key``'s path."""
    prefix = int.from_bytes(node_key[3:], "big")
    return prefix == int.from_bytes(key, "big") >> (256 - depth) << (256 - depth) if depth else True


def test_a_node_read_as_another_type_gives_the_specifications_answer() -> None:
    """A record that is not bytes (a memoryview) goes to _pure in the compiled core: the same answer."""
    store, _ = apply_rounds(_pure, [{key_of(n): n for n in range(20)}])
    views = {k: memoryview(v) for k, v in store.items()}
    assert same("subject_update", {key_of(1): 5}, views.get, None) is not None
    assert same("subject_update", [(key_of(1), 5)], store.get, None) is None  # not a dict: both fail alike
    assert same("subject_update", {key_of(1): 5}, {}.get, views) is not None  # an overlay of views: the same
    assert same("subject_update", {key_of(1): 5}, {}.get, list(store.items())) is None  # not a dict: both fail


def leaf(index: int, subjects: list[bytes], version: int = 2) -> bytes:
    links = encode_links([(s, None) for s in subjects]) if version == 2 else None
    return _pure.event_leaf(index, bytes(32), 6, 1, b"{}", links)


def test_latest_takes_each_subjects_last_event() -> None:
    subjects = [b"K" + u64(1), b"B" + u64(2), b"S" + b"acme", b"O\x00\x00\x00\x03ord"]
    items = [(u64(i), leaf(i, [subjects[i % 4], subjects[(i + 1) % 4]])) for i in range(10, 30)]
    expected = {history.subject_key(s): max(i for i in range(10, 30) if s in (subjects[i % 4], subjects[(i + 1) % 4]))
                for s in subjects}
    assert same("subject_latest", items, 30) == expected
    # Items at or past size are not read.
    assert same("subject_latest", items, 12) == {history.subject_key(subjects[2]): 10,
                                                 history.subject_key(subjects[3]): 11,
                                                 history.subject_key(subjects[0]): 11}
    assert same("subject_latest", [], 5) == {}


def test_latest_of_a_log_with_a_version_1_leaf_is_none() -> None:
    items = [(u64(0), leaf(0, [b"K" + u64(1)])), (u64(1), leaf(1, [], version=1))]
    assert same("subject_latest", items, 2) is None


@pytest.mark.parametrize("cut", [0, 9, 57, 58, 59, 60, 61, 70, 76])
def test_a_damaged_leaf_raises_in_both(cut: int) -> None:
    whole = leaf(0, [b"K" + u64(1)])  # 58-byte header, links section of 19 bytes, then the body
    damaged = whole[:cut] if cut else b"kv9/event" + whole[9:]
    items = [(u64(0), damaged)]
    assert same("subject_latest", items, 1) is None
    with pytest.raises(StoreCorruptError):
        _pure.subject_latest(items, 1)


def test_a_zero_length_subject_is_damage() -> None:
    bad = leaf(0, [b"K" + u64(1)])
    bad = bad[:59] + b"\x00" + bad[60:]
    assert same("subject_latest", [(u64(0), bad)], 1) is None


def test_odd_item_types_get_the_specifications_answer() -> None:
    good = leaf(0, [b"K" + u64(1)])
    for items in ([(u64(0), memoryview(good))], [[u64(0), good]], ((u64(0), good),), [(b"\x00" * 9, good)]):
        same("subject_latest", items, 1)
    same("subject_latest", [(u64(0), good)], -1)
    same("subject_latest", [(u64(0), good)], "1")


# -- change_links on a real store ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_change_links_are_each_keys_newest_listed_event(tmp_path: Path, seed: int) -> None:
    """Key subjects listed at random (with batch and order subjects around them): every link is the newest
    listed event about its key, and a key changed twice in one batch links its second change to its first."""
    rng = random.Random(seed)
    with Vault.init(tmp_path / "store") as vault:
        store = vault.engine.store

        def work(txn):  # type: ignore[no-untyped-def]
            listed = sorted(rng.sample(range(1, 200), rng.choice([0, 1, 3, 40])))
            for serial in listed:
                for _ in range(rng.randint(1, 3)):
                    txn.put("subjects", b"K" + u64(serial) + u64(rng.randint(0, 10 ** 6)), b"")
            for n in range(rng.randint(0, 5)):
                txn.put("subjects", b"B" + u64(rng.randint(0, 300)) + u64(n), b"")
                txn.put("subjects", b"O\x00\x00\x00\x01" + bytes([65 + n]) + u64(n), b"")
            serials = [rng.randint(0, 210) for _ in range(rng.randint(1, 120))]
            if seed % 2:
                serials += serials[:3]  # the same key twice in one batch
            first = txn.head().log_size
            expected, pending = bytearray(), {}
            for n, serial in enumerate(serials):
                before = pending.get(serial)
                if before is None:
                    before = latest_listed(txn, b"K" + u64(serial))
                expected += u64(NO_LINK if before is None else before)
                pending[serial] = first + n
            assert change_links(txn, serials) == bytes(expected)
            raise _Abort

        with pytest.raises(_Abort):
            store.write(work)


class _Abort(Exception):
    """Ends a write transaction without committing it."""
