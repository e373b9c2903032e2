"""The integrity attacks, reproduced as they were seen, and their kind against the newer records.

Each test damages a copy of a store the way an attack (or a failing disk) would, then asks every decision
about the keys it holds: no damage may make a spent, void, blacklisted, held or exhausted key ``valid``,
``accepted`` or ``held`` for a new order, and no damage may surface as a raw ``struct.error``, ``KeyError``,
``IndexError`` or ``lmdb.Error``: a damaged record answers ``damaged`` for its key, or StoreCorruptError
saying to run ``keyvault check`` and restore the store from a backup.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lmdb
import pytest

from conftest import issue
from keyvault import Identity, KeyvaultError, Status, StoreCorruptError, Vault
from keyvault import _fast
from keyvault.formats.events import split_leaf
from keyvault.store.records import from_u64, u64
from test_integrity import Small, _build, _damage

EVERYTHING = os.environ.get("KEYVAULT_CORRUPTION_SWEEP") == "all"
NEVER = (Status.VALID, Status.ACCEPTED)


@dataclass(frozen=True)
class Hundred:
    """A platform store with 100 keys redeemed one at a time (nothing folded) and 20 active."""

    root: Path
    spent: list[str]
    active: list[str]


@pytest.fixture(scope="module")
def hundred(tmp_path_factory: pytest.TempPathFactory) -> Hundred:
    root = tmp_path_factory.mktemp("hundred")
    supplier = Identity.generate("Acme Games")
    with Vault.init(root / "supplier") as sup:
        batch = issue(sup, supplier, root / "files", count=120)
    with Vault.init(root / "platform") as plat:
        plat.trust(supplier.public)
        plat.import_manifest(batch.manifest)
        for i, key in enumerate(batch.keys[:100]):
            assert plat.redeem(key, f"order-{i}").status is Status.ACCEPTED
        with plat.engine.store.read() as txn:
            head = txn.head()
        assert head.folded < head.log_size - 100  # every redeem is in the log only
    return Hundred(root / "platform", batch.keys[:100], batch.keys[100:])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    """The small store of test_integrity (keys in every state), compacted: each record is stored once in the
    file, where a flipped bit on the disk would hit it."""
    built = _build(tmp_path_factory.mktemp("small"))
    into = built.root.parent / "compacted"
    into.mkdir()
    with lmdb.open(str(built.root), max_dbs=64, readonly=True, lock=False) as env:
        env.copy(str(into), compact=True)
    for name in ("pepper", "engine.key"):
        shutil.copy2(built.root / name, into / name)
    return Small(into, built.spent, built.active, built.held, built.partly)


def _copy(src: Path, into: Path) -> Path:
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(src, into)
    (into / "lock.mdb").unlink(missing_ok=True)
    return into


def _flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _redeem_events(env: lmdb.Environment, txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
    events = env.open_db(b"events", txn=txn)
    return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=events) if v[49] == 4]


def _refused_or_raised(ask: Callable[[], list]) -> list[Status] | None:  # type: ignore[type-arg]
    """The statuses of ``ask()``, or None when it raised StoreCorruptError naming `keyvault check`."""
    try:
        return [r.status for r in ask()]
    except StoreCorruptError as exc:
        assert "keyvault check" in str(exc), exc
        return None


def _nothing_spent_passes(store: Path, spent: list[str]) -> None:
    """verify_many, verify and redeem (new orders) of every spent key: none valid, none accepted."""
    with Vault.open(store) as vault:
        for ask in (lambda: vault.verify_many(spent), lambda: [vault.verify(k) for k in spent],
                    lambda: vault.redeem_many([(k, f"again-{i}") for i, k in enumerate(spent)]),
                    lambda: [vault.redeem(spent[0], "again-one")]):
            statuses = _refused_or_raised(ask)
            assert statuses is None or not set(statuses) & set(NEVER), statuses


# -- as seen: the event log -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bit", [0, 1, 2, 5, 7, 12, 30, 45, 63])
def test_one_flipped_bit_in_one_events_index_lets_none_of_100_spent_keys_through(
        tmp_path: Path, hundred: Hundred, bit: int) -> None:
    """Seen: one bit of one event's index flipped, 80 of 100 redeemed keys accepted again. Both the index in
    the leaf and the LMDB key it is stored under, of an event in the middle of the run."""
    for where in ("leaf", "key"):
        store = _copy(hundred.root, tmp_path / where)

        def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
            events = env.open_db(b"events", txn=txn)
            key, leaf = _redeem_events(env, txn)[50]
            if where == "key":
                txn.delete(key, db=events)
                txn.put(u64(from_u64(key) ^ (1 << bit)), leaf, db=events)
            else:
                txn.put(key, _flip(leaf, (9 + 7 - bit // 8) * 8 + bit % 8), db=events)

        _damage(store, work)
        _nothing_spent_passes(store, hundred.spent)


def test_no_bit_of_a_redeem_events_serial_or_kind_makes_its_key_valid(tmp_path: Path, hundred: Hundred) -> None:
    """Seen: one bit of a redeem event's serial or kind flipped, that key valid, then accepted for a second
    order. Every bit of the kind and of the serial, of a redeem event in the middle of the run."""
    with lmdb.open(str(hundred.root), max_dbs=64, readonly=True, lock=False) as env, env.begin() as txn:
        key, leaf = _redeem_events(env, txn)[50]
    body = split_leaf(leaf)[2]
    serial = from_u64(leaf[body:body + 8])
    target = next(k for k in hundred.spent if _fast.parse_key(k)[1] == serial)
    bits = [49 * 8 + b for b in range(8)] + [body * 8 + b for b in range(64)]
    for bit in bits if EVERYTHING else random.Random(7).sample(bits, 24):
        store = _copy(hundred.root, tmp_path / "store")
        _damage(store, lambda env, txn: txn.put(key, _flip(leaf, bit), db=env.open_db(b"events", txn=txn)))
        with Vault.open(store) as vault:
            for ask in (lambda: [vault.verify(target)], lambda: vault.verify_many([target]),
                        lambda: [vault.redeem(target, "second-order")], lambda: [vault.hold(target, "third", 60)]):
                statuses = _refused_or_raised(ask)
                assert statuses is None or statuses[0] not in (*NEVER, Status.HELD), (bit, statuses)


def test_a_folded_cards_state_byte_set_to_active_is_refused_after_a_fold(tmp_path: Path) -> None:
    """Seen: after redeems and a fold, one card's state byte flipped from redeemed to active: valid, then
    accepted for a second order. Here 300 redeems with a fold every 100."""
    supplier = Identity.generate("Acme Games")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("keyvault.engine.ledger.FOLD_AT", 100)
        with Vault.init(tmp_path / "supplier") as sup:
            batch = issue(sup, supplier, tmp_path / "files", count=300)
        with Vault.init(tmp_path / "platform") as plat:
            plat.trust(supplier.public)
            plat.import_manifest(batch.manifest)
            for i in range(0, 300, 10):
                plat.redeem_many([(k, f"o-{i + j}") for j, k in enumerate(batch.keys[i:i + 10])])
            with plat.engine.store.read() as txn:
                assert txn.head().folded >= 200
    serials = [_fast.parse_key(k)[1] for k in batch.keys[:3]]

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        cards = env.open_db(b"cards", txn=txn)
        for serial in serials:
            record = txn.get(u64(serial), db=cards)
            assert record[0] == 1  # folded: redeemed
            txn.put(u64(serial), b"\x00" + record[1:], db=cards)

    _damage(tmp_path / "platform", work)
    with Vault.open(tmp_path / "platform") as vault:
        for key in batch.keys[:3]:
            for result in (vault.verify(key), vault.verify_many([key])[0], vault.redeem(key, "second-order"),
                           vault.hold(key, "third-order", 60)):
                assert result.status is Status.DAMAGED and "keyvault check" in (result.message or ""), result
        assert vault.verify(batch.keys[3]).status is Status.REDEEMED


# -- as seen: raw errors, for every record on the decision path ------------------------------------------------


def _records(small: Small) -> dict[str, tuple[bytes, bytes, str]]:
    """(database, LMDB key, a key it decides) of one record of each kind on the decision path."""
    def serial(key: str) -> bytes:
        return u64(_fast.parse_key(key)[1])

    return {
        "card": (b"cards", serial(small.spent[0]), small.spent[0]),
        "outcome": (b"outcomes", serial(small.spent[0]), small.spent[0]),
        "hold": (b"checkout", b"H" + serial(small.held), small.held),
        "uses": (b"checkout", b"N" + serial(small.partly), small.partly),
        "use": (b"checkout", b"U" + serial(small.partly) + b"use-0", small.partly),
        "head": (b"meta", b"head", small.spent[0]),
        "blacklist digest": (b"meta", b"blacklist", small.spent[11]),
        "batches digest": (b"meta", b"batches", small.spent[0]),
        "checkout mark": (b"checkout", b"\0mark", small.held),
    }


_ASKS: dict[str, Callable[[Vault, str], object]] = {
    "verify": lambda v, k: v.verify(k),
    "verify_many": lambda v, k: v.verify_many([k]),
    "redeem": lambda v, k: v.redeem(k, "new-order"),
    "redeem_many": lambda v, k: v.redeem_many([(k, "new-order")]),
    "hold": lambda v, k: v.hold(k, "new-order", 60),
    "confirm": lambda v, k: v.confirm("holding-order"),
    "release": lambda v, k: v.release("holding-order"),
    "order": lambda v, k: v.order("use-0"),
}


@pytest.mark.parametrize("how", ["truncated", "emptied", "lengthened"])
def test_a_short_or_long_record_is_a_store_error_never_a_raw_one(tmp_path: Path, small: Small, how: str) -> None:
    """Seen: some damage crashed every verify and redeem with a raw struct.error. Each record on the decision
    path cut short, emptied or lengthened: every entry point answers a Result or a KeyvaultError."""
    for name, (db, key, target) in _records(small).items():
        store = _copy(small.root, tmp_path / "store")

        def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
            handle = env.open_db(db, txn=txn)
            value = bytes(txn.get(key, db=handle))
            damaged = {"truncated": value[:len(value) // 2], "emptied": b"", "lengthened": value + b"\0"}[how]
            txn.put(key, damaged, db=handle)

        _damage(store, work)
        try:
            vault = Vault.open(store)
        except KeyvaultError as exc:
            assert "keyvault check" in str(exc) or "backup" in str(exc), (name, exc)
            continue
        with vault:
            for ask, call in _ASKS.items():
                try:
                    answer = call(vault, target)
                except KeyvaultError:
                    continue
                except Exception as exc:  # struct.error, KeyError, IndexError, lmdb.Error: a defect
                    pytest.fail(f"{name} {how}: {ask} raised {type(exc).__name__}: {exc}")
                results = answer if isinstance(answer, list) else [answer] if not isinstance(answer, dict) else []
                for result in results if ask not in ("confirm", "release", "order") else []:  # (the holder's own)
                    if target in small.spent or target == small.held:
                        assert result.status not in NEVER, (name, how, ask, result)
                        assert ask != "hold" or result.order_id != "new-order", (name, how, ask, result)


# -- the newer records: holds, uses, the checkout table --------------------------------------------------------


def _closed_answers(store: Path, small: Small) -> list[str]:
    """Every closed key (and the held one) asked for new orders; the partly used key twice; its own use
    retried. Returns what passed that must not (empty: nothing), or raises StoreCorruptError."""
    closed = small.spent + [small.held]
    through = []
    with Vault.open(store) as vault:
        for result in vault.verify_many(closed) + [vault.verify(k) for k in closed] + \
                vault.redeem_many([(k, f"again-{i}") for i, k in enumerate(closed)]):
            if result.status in NEVER:
                through.append(f"{result.serial} {result.status.value}")
        for i, key in enumerate(closed):
            result = vault.hold(key, f"grab-{i}", 60)
            if result.status is Status.HELD and result.order_id == f"grab-{i}":
                through.append(f"{result.serial} held for a new order")
        retry = vault.redeem(small.partly, "use-0")
        if retry.status is Status.ACCEPTED and retry.uses_left != 1:
            through.append(f"{retry.serial}: its order's use spent again")
        fresh = [vault.redeem(small.partly, f"new-{i}").status for i in range(2)]
        if fresh.count(Status.ACCEPTED) > (0 if retry.status is Status.ACCEPTED and retry.uses_left != 1 else 1):
            through.append(f"{retry.serial}: more uses than its limit")
    return through


def _sweep_record(tmp_path: Path, small: Small, db: bytes, key: bytes, part: str) -> dict[str, int]:
    """Flip bits of one record's ``part`` (its LMDB key or its value) one at a time, each in a fresh copy
    (every bit under KEYVAULT_CORRUPTION_SWEEP=all, else 24 of them): counts of refused / detected / harmless."""
    with lmdb.open(str(small.root), max_dbs=64, readonly=True, lock=False) as env, env.begin() as txn:
        value = bytes(txn.get(key, db=env.open_db(db, txn=txn)))
    size = len(key if part == "key" else value) * 8
    bits = list(range(size)) if EVERYTHING or size <= 80 else random.Random(size).sample(range(size), 24)
    counts = {"refused": 0, "detected": 0, "harmless": 0}
    for bit in bits:
        store = _copy(small.root, tmp_path / "store")

        def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
            txn.put(key, _flip(value, bit), db=env.open_db(db, txn=txn))

        if part == "key":  # in place in the file: LMDB keeps the record where the key sorted before
            data = (store / "data.mdb").read_bytes()
            assert data.count(key + value) == 1  # (the roster lists the key too: flip the record's own)
            at = data.index(key + value) + bit // 8
            with open(store / "data.mdb", "r+b") as fh:
                fh.seek(at)
                fh.write(bytes([data[at] ^ (1 << (bit % 8))]))
        else:
            _damage(store, work)
        try:
            through = _closed_answers(store, small)
        except StoreCorruptError as exc:
            assert "keyvault check" in str(exc), exc
            counts["refused"] += 1
            continue
        assert not through, f"{db.decode()} {part} bit {bit}: {through}"
        with Vault.open(store) as vault:
            asked = [vault.verify(small.held), vault.verify(small.partly), vault.redeem(small.partly, "use-0"),
                     vault.redeem(small.spent[13], "use-1")]
            damaged = any(r.status is Status.DAMAGED for r in asked)
        counts["detected" if damaged else "harmless"] += 1
    return counts


@pytest.mark.parametrize("record", ["hold", "uses", "use of the partly used key", "use of the exhausted key",
                                    "mark"])
@pytest.mark.parametrize("part", ["key", "value"])
def test_no_flipped_bit_of_a_checkout_record_reopens_a_key(tmp_path: Path, small: Small, record: str,
                                                           part: str) -> None:
    """A hold, a count of uses, a use and the table's mark, their LMDB keys and values flipped bit by bit: a
    held key never becomes holdable or redeemable by another order, a partly used key never gets more uses
    than its limit nor spends its order's use twice, an exhausted key stays exhausted. (A flipped LMDB key
    moves the record: the lookup must not take its absence for no record.)"""
    def serial(key: str) -> bytes:
        return u64(_fast.parse_key(key)[1])

    exhausted = small.spent[13]
    key = {"hold": b"H" + serial(small.held), "uses": b"N" + serial(small.partly),
           "use of the partly used key": b"U" + serial(small.partly) + b"use-0",
           "use of the exhausted key": b"U" + serial(exhausted) + b"use-1", "mark": b"\0mark"}[record]
    counts = _sweep_record(tmp_path, small, b"checkout", key, part)
    print(f"\n{record} {part}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert sum(counts.values()) > 0


def test_the_checkout_table_lost_whole_is_refused(tmp_path: Path, small: Small) -> None:
    """A damaged table root loses every hold and use at once (LMDB then sees an empty table): the table's
    mark is gone with them, and the held and partly used keys are refused as damaged, never sold again."""
    store = _copy(small.root, tmp_path / "store")

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        txn.drop(env.open_db(b"checkout", txn=txn), delete=False)

    _damage(store, work)
    assert _closed_answers(store, small) == []
    with Vault.open(store) as vault:
        assert vault.verify(small.held).status is Status.DAMAGED
        assert vault.redeem(small.partly, "new-order").status is Status.DAMAGED
        failed = [c["check"] for c in vault.check()["checks"] if not c["ok"]]
    assert "checkout" in failed


def test_a_damaged_batch_record_is_refused(tmp_path: Path, small: Small) -> None:
    """A batch record's supplier, uses or window decide its keys: the batch whose supplier is blacklisted,
    its supplier id flipped, is refused as damaged (the batches' digest), never valid."""
    store = _copy(small.root, tmp_path / "store")
    outlawed = small.spent[-1]
    with Vault.open(store) as vault:
        before = vault.verify(outlawed)
    assert before.status is Status.BLACKLISTED and before.supplier
    supplier = before.supplier.encode()

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        batches = env.open_db(b"batches", txn=txn)
        key, value = next((bytes(k), bytes(v)) for k, v in txn.cursor(db=batches) if supplier in bytes(v))
        at = value.index(supplier)
        txn.put(key, value[:at] + bytes([value[at] ^ 0x01]) + value[at + 1:], db=batches)

    _damage(store, work)
    with pytest.raises(StoreCorruptError, match="batch records.*keyvault check"):
        with Vault.open(store) as vault:
            vault.verify(outlawed)
