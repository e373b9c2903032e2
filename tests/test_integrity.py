"""Damage is refused, never believed: a spent, void or blacklisted key never verifies valid nor is accepted
again, whatever byte of the store was damaged.

Part one damages the records on the decision path one way at a time (a card's state byte, an event's
index, serial or kind, the head's fold mark, a truncated event, hold and use records that vanished with
their page's tail or a hidden subtree) and shows each is refused. Part two
flips bits of the store file itself, in a worker process that opens the damaged copy as a fresh
process would and asks verify, verify_many and redeem about every spent, void, blacklisted and active
key: the sampled form runs always, every bit of every page when ``KEYVAULT_CORRUPTION_SWEEP=all``, every
bit of some pages or bytes when it names them (see ``SWEEP``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lmdb
import pytest

from conftest import issue
from keyvault import Identity, Status, StoreCorruptError, StoreVersionError, Vault
from keyvault import _fast
from keyvault.store.records import from_u64, u64

#: Read at import: the suite's fixtures clear KEYVAULT_* variables before each test runs. ``all``: every bit;
#: else a comma-separated focus, every bit of it: page numbers (``12``), byte ranges (``49152-49200``) or
#: databases (``checkout``: the pages holding its records), to iterate on a few bytes in seconds.
SWEEP = os.environ.get("KEYVAULT_CORRUPTION_SWEEP", "")
EVERYTHING = SWEEP == "all"

PAGE = 4096
FOLD_AT = 7  # most changes of the small store are folded into card and outcome records, the last few are not


@dataclass(frozen=True)
class Small:
    """A closed platform store with keys in every state, and which key is in which."""

    root: Path
    spent: list[str]  # redeemed (folded and not), voided, blacklisted (every level), exhausted: none may ever pass
    active: list[str]
    held: str  # held for a week by "holding-order": no other order may hold or redeem it, verify says held
    partly: str  # a count-limited key with one use of two left (used by order "use-0")


def _build(root: Path) -> Small:
    files = root / "files"
    files.mkdir(parents=True)
    supplier, banned = Identity.generate("Acme Games"), Identity.generate("Banned Games")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("keyvault.engine.ledger.FOLD_AT", FOLD_AT)
        with Vault.init(root / "supplier") as sup:
            batch = issue(sup, supplier, files, count=24)
            sup.issue_batch(supplier, "PASS-2", 4, keys_out=files / "limited.csv", manifest_out=files / "limited.kvm",
                            uses=2)
            recalled = issue(sup, supplier, files, count=2)  # blacklisted as a batch
            outlawed = issue(sup, banned, files, count=2)  # its supplier blacklisted
        from conftest import read_export

        limited, _ = read_export(files / "limited.csv")
        with Vault.init(root / "platform") as plat:
            plat.trust(supplier.public)
            plat.import_manifest(batch.manifest)
            keys = batch.keys
            for i in range(9):  # one at a time: folds at 6, the rest stay in the log only
                assert plat.redeem(keys[i], f"order-{i}").status is Status.ACCEPTED
            for i in (9, 10):
                assert plat.void(batch.serials[i], "refund").status is Status.VOID
            plat.blacklist("serial", batch.serials[11], "reported stolen")
            plat.blacklist("key", keys[12], "reported stolen")
            plat.trust(banned.public)
            for other in (recalled, outlawed):
                plat.import_manifest(other.manifest)
            plat.blacklist("batch", recalled.batch.id, "recalled")
            plat.blacklist("supplier", banned.id, "lifetime ban")
            # Checkout records: a key held for a week, a count-limited key with both uses spent (its use and
            # uses-spent records), and one with one use left (active: it may still be used).
            assert plat.hold(keys[13], "holding-order", 7 * 24 * 3600).status is Status.HELD
            plat.import_manifest(files / "limited.kvm")
            for i in range(2):
                assert plat.redeem(limited[0], f"use-{i}").status is Status.ACCEPTED
            assert plat.redeem(limited[1], "use-0").uses_left == 1
            with plat.engine.store.read() as txn:
                head = txn.head()
            assert 0 < head.folded < head.log_size  # folded changes and unfolded ones
    return Small(root / "platform", keys[:13] + limited[:1] + recalled.keys + outlawed.keys, keys[14:] + limited[1:],
                 keys[13], limited[1])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    return _build(tmp_path_factory.mktemp("small"))


@pytest.fixture
def copy(tmp_path: Path, small: Small) -> Path:
    into = tmp_path / "store"
    shutil.copytree(small.root, into)
    (into / "lock.mdb").unlink(missing_ok=True)
    return into


def _answers(store: Path, small: Small) -> list[Status]:
    """Every spent key asked by verify, verify_many and redeem (a new order), from a fresh process's view."""
    with Vault.open(store) as vault:
        many = vault.verify_many(small.spent + small.active)
        ones = [vault.verify(k) for k in small.spent]
        again = vault.redeem_many([(k, f"again-{i}") for i, k in enumerate(small.spent)])
    for result in many[:len(small.spent)] + ones + again:
        assert result.status not in (Status.VALID, Status.ACCEPTED), result
    return [r.status for r in many + ones + again]


def _serial_of(key: str) -> int:
    return _fast.parse_key(key)[1]


def _damage(store: Path, work) -> None:  # type: ignore[no-untyped-def]
    env = lmdb.open(str(store), max_dbs=64, subdir=True)
    try:
        with env.begin(write=True) as txn:
            work(env, txn)
    finally:
        env.close()


def _events(env: lmdb.Environment, txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
    return list(txn.cursor(db=env.open_db(b"events", txn=txn)))


def _redeems(env: lmdb.Environment, txn: lmdb.Transaction, folded: int) -> list[tuple[bytes, bytes]]:
    """The unfolded redeem events."""
    return [(k, v) for k, v in _events(env, txn) if v[49] == 4 and from_u64(k) >= folded]


def _folded(store: Path) -> int:
    with Vault.open(store) as vault, vault.engine.store.read() as txn:
        return txn.head().folded


# -- part one: each record on the decision path ----------------------------------------------------


def test_the_small_store_answers_as_built(copy: Path, small: Small) -> None:
    statuses = _answers(copy, small)
    n = len(small.spent)
    assert statuses[:n] == [Status.REDEEMED] * 9 + [Status.VOID] * 2 + [Status.BLACKLISTED] * 2 + [Status.EXHAUSTED] + \
        [Status.BLACKLISTED] * 4
    assert statuses[n:n + len(small.active)] == [Status.VALID] * len(small.active)
    with Vault.open(copy) as vault:
        assert vault.verify(small.held).status is Status.HELD


def test_a_lost_hold_record_is_found_by_confirm_and_check(copy: Path, small: Small) -> None:
    """A hold record moved off its key (a flipped LMDB key): the holding order's confirm answers damaged, and
    `keyvault check` names the stray record."""
    serial = _serial_of(small.held)

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        checkout = env.open_db(b"checkout", txn=txn)
        value = txn.get(b"H" + u64(serial), db=checkout)
        txn.delete(b"H" + u64(serial), db=checkout)
        txn.put(b"H" + u64(serial ^ 1), value, db=checkout)

    _damage(copy, work)
    with Vault.open(copy) as vault:
        assert vault.confirm("holding-order")[0].status is Status.DAMAGED
        failed = [c["check"] for c in vault.check()["checks"] if not c["ok"]]
        assert failed == ["checkout"]


def _leaf_cut(store: Path, db: bytes, key: bytes) -> int:
    """Lower the node count of the leaf page that holds ``key`` in ``db`` (in place in the file, as a flipped
    bit of the page header would) so that ``key`` and every record after it on that page vanish from LMDB's
    view. Returns how many records vanished."""
    with lmdb.open(str(store), max_dbs=64, readonly=True, lock=False) as env, env.begin() as txn:
        value = bytes(txn.get(key, db=env.open_db(db, txn=txn)))
    node = struct.pack("<HHHH", len(value) & 0xFFFF, len(value) >> 16, 0, len(key)) + key + value
    data = bytearray((store / "data.mdb").read_bytes())
    assert data.count(node) == 1  # (a compacted store: no stale copy on a free page)
    at = data.index(node)
    base = at - at % PAGE
    lower = struct.unpack_from("<H", data, base + 12)[0]
    pointers = [struct.unpack_from("<H", data, base + 16 + 2 * i)[0] for i in range((lower - 16) // 2)]
    cut = pointers.index(at - base)
    struct.pack_into("<H", data, base + 12, 16 + 2 * cut)
    (store / "data.mdb").write_bytes(bytes(data))
    return len(pointers) - cut


def _branch_cut(store: Path, db: bytes, children: int) -> int:
    """Lower the node count of ``db``'s root (a branch page) by ``children``: its last subtrees vanish.
    Returns how many records vanished."""
    with lmdb.open(str(store), max_dbs=64, readonly=True, lock=False) as env, env.begin() as txn:
        handle = env.open_db(db, txn=txn)
        stat = txn.stat(handle)
        keys = [bytes(k) for k in txn.cursor(db=handle).iternext(values=False)]
    assert stat["depth"] == 2, stat
    data = bytearray((store / "data.mdb").read_bytes())
    # the root: the only branch page whose children are the db's leaves (found by a child's first key)
    roots = []
    for page in range(2, len(data) // PAGE):
        base = page * PAGE
        flags, lower = struct.unpack_from("<HH", data, base + 10)
        if flags & 0x01:  # P_BRANCH
            last = struct.unpack_from("<H", data, base + lower - 2 * children)[0]
            ksize = struct.unpack_from("<H", data, base + last + 6)[0]
            first_key = bytes(data[base + last + 8:base + last + 8 + ksize])
            if first_key in keys:
                roots.append((base, lower, first_key))
    assert len(roots) == 1, roots
    base, lower, first_key = roots[0]
    struct.pack_into("<H", data, base + 12, lower - 2 * children)
    (store / "data.mdb").write_bytes(bytes(data))
    return len(keys) - keys.index(first_key)


@pytest.fixture
def compacted(tmp_path: Path, small: Small) -> Path:
    return _compacted(small.root, tmp_path / "compacted")


def _serial_key(kind: bytes, key: str, order: str = "") -> bytes:
    return kind + u64(_serial_of(key)) + order.encode()


def test_a_hold_record_vanished_with_its_page_tail_is_refused(compacted: Path, small: Small) -> None:
    """The checkout page's node count lowered (one flipped bit of its header): the hold record and every
    record after it vanish from LMDB's view, with no seal to fail. The roster still lists them: the held key
    is refused as damaged, never free for another order; `keyvault check` names the lost records."""
    assert _leaf_cut(compacted, b"checkout", _serial_key(b"H", small.held)) > 1
    with Vault.open(compacted) as vault:
        for result in (vault.verify(small.held), vault.verify_many([small.held] + small.active[:20])[0],
                       vault.hold(small.held, "grab", 60), vault.redeem(small.held, "grab"),
                       vault.redeem_many([(small.held, "grab")])[0]):
            assert result.status is Status.DAMAGED and "keyvault check" in (result.message or ""), result
        assert vault.verify(small.active[0]).status is Status.VALID  # not held: the rest is unharmed
        report = vault.check()
    failed = {c["check"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert "listed in the roster but missing from the checkout table" in failed["checkout"], failed


def test_a_use_record_vanished_with_its_page_tail_is_not_spent_twice(compacted: Path, small: Small) -> None:
    """The page's tail from the partly used key's use by ``use-0``: a retry of that order is refused as
    damaged, never a second use."""
    _leaf_cut(compacted, b"checkout", _serial_key(b"U", small.partly, "use-0"))
    with Vault.open(compacted) as vault:
        retry = vault.redeem(small.partly, "use-0")
        assert retry.status is Status.DAMAGED, retry
        assert vault.redeem_many([(small.partly, "use-0")])[0].status is Status.DAMAGED
        assert not vault.check()["ok"]


@pytest.mark.parametrize("record", ["hold", "uses", "use"])
def test_a_deleted_checkout_record_is_refused(copy: Path, small: Small, record: str) -> None:
    """Each hold, uses and use record deleted outright (its roster listing kept): refused, never believed."""
    key = {"hold": _serial_key(b"H", small.held), "uses": _serial_key(b"N", small.partly),
           "use": _serial_key(b"U", small.partly, "use-0")}[record]
    _damage(copy, lambda env, txn: txn.delete(key, db=env.open_db(b"checkout", txn=txn)))
    with Vault.open(copy) as vault:
        if record == "hold":
            asked = [vault.verify(small.held), vault.hold(small.held, "grab", 60), vault.redeem(small.held, "grab")]
        elif record == "uses":
            asked = [vault.redeem(small.partly, "use-0"), vault.verify(small.partly),
                     vault.redeem(small.partly, "new-order")]
        else:  # (verify reads no use record: the count of uses spent answers it)
            asked = [vault.redeem(small.partly, "use-0"), vault.redeem_many([(small.partly, "use-0")])[0]]
        for result in asked:
            assert result.status is Status.DAMAGED, result


def test_a_hidden_subtree_of_holds_is_refused(tmp_path: Path) -> None:
    """A checkout table of many holds (a branch page over several leaves), its branch page's count lowered:
    the last leaf's holds vanish together. Every held key stays held or is refused; none is free."""
    supplier = Identity.generate("Acme Games")
    with Vault.init(tmp_path / "supplier") as sup:
        batch = issue(sup, supplier, tmp_path / "files", count=160)
    with Vault.init(tmp_path / "platform") as plat:
        plat.trust(supplier.public)
        plat.import_manifest(batch.manifest)
        for i, key in enumerate(batch.keys[:150]):
            assert plat.hold(key, f"order-{i:03d}-" + "x" * 110, 3600).status is Status.HELD
    store = _compacted(tmp_path / "platform", tmp_path / "compacted")
    assert _branch_cut(store, b"checkout", 2) > 5
    with Vault.open(store) as vault:
        held = batch.keys[:150]
        answers = vault.verify_many(held) + [vault.verify(k) for k in held] + \
            vault.redeem_many([(k, f"grab-{i}") for i, k in enumerate(held)])
        assert not [r for r in answers if r.status in (Status.VALID, Status.ACCEPTED)]
        assert {r.status for r in answers} == {Status.HELD, Status.DAMAGED}
        grabs = [vault.hold(k, f"grab-{i}", 60) for i, k in enumerate(held)]
        assert not [r for r in grabs if r.status is Status.HELD and r.order_id is not None]
        assert not vault.check()["ok"]


def test_a_lost_roster_listing_is_found_by_check_and_changes_no_answer(compacted: Path, small: Small) -> None:
    """The roster's page tail lost instead: every record is still found where it is; `keyvault check` reports
    the records the roster no longer lists."""
    _leaf_cut(compacted, b"roster", _serial_key(b"H", small.held))
    with Vault.open(compacted) as vault:
        assert vault.verify(small.held).status is Status.HELD
        assert vault.redeem(small.partly, "use-0").uses_left == 1  # its own use, answered again
        failed = {c["check"]: c["detail"] for c in vault.check()["checks"] if not c["ok"]}
    assert "is not listed in the roster" in failed["checkout"], failed


def test_a_store_without_a_roster_gets_one_listing_its_records(copy: Path, small: Small) -> None:
    """A store written before the roster: opened for writing, its roster is made listing every hold and use
    record already there (so their loss is found from then on); opened read-only, it is refused unchanged."""
    _damage(copy, lambda env, txn: txn.drop(env.open_db(b"roster", txn=txn), delete=True))
    with Vault.open(copy) as vault:
        assert vault.check()["ok"]
        with vault.engine.store.read() as txn:
            listed = [bytes(k) for k, _ in txn.items("roster")]
    assert _serial_key(b"H", small.held) in listed and _serial_key(b"U", small.partly, "use-0") in listed
    assert len(listed) == 6  # the hold, two uses-spent records, three uses


def test_a_folded_cards_state_byte_flipped_to_active_is_refused_as_damaged(copy: Path, small: Small) -> None:
    serial = _serial_of(small.spent[0])

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        cards = env.open_db(b"cards", txn=txn)
        record = txn.get(u64(serial), db=cards)
        assert record[0] == 1  # folded: the card says redeemed
        txn.put(u64(serial), b"\x00" + record[1:], db=cards)

    _damage(copy, work)
    with Vault.open(copy) as vault:
        for result in (vault.verify(small.spent[0]), vault.verify_many([small.spent[0]])[0],
                       vault.redeem(small.spent[0], "second-order")):
            assert result.status is Status.DAMAGED and "keyvault check" in (result.message or "")
        assert vault.verify(small.active[0]).status is Status.VALID  # the rest is unharmed
        report = vault.check()
    assert not report["ok"]
    assert any("damaged" in c["detail"] and c["check"] == "cards" for c in report["checks"] if not c["ok"])


def test_a_card_record_moved_to_another_serial_is_refused(copy: Path, small: Small) -> None:
    """A seal binds the record to its serial: an active card's record copied over a redeemed one is damage."""
    spent, active = _serial_of(small.spent[0]), _serial_of(small.active[0])

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        cards = env.open_db(b"cards", txn=txn)
        txn.put(u64(spent), txn.get(u64(active), db=cards), db=cards)

    _damage(copy, work)
    with Vault.open(copy) as vault:
        assert vault.verify(small.spent[0]).status is Status.UNKNOWN  # another key's tag: not this key
        assert vault.verify(small.active[0]).status is Status.VALID


@pytest.mark.parametrize("where", ["stored key", "leaf index", "serial", "kind", "previous hash", "order id"])
def test_one_bit_of_an_unfolded_redeem_event_is_refused(copy: Path, small: Small, where: str) -> None:
    folded = _folded(copy)

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        events = env.open_db(b"events", txn=txn)
        key, leaf = _redeems(env, txn, folded)[0]
        at = {"leaf index": 16, "serial": 58 + 7, "kind": 49, "previous hash": 20, "order id": len(leaf) - 1}
        if where == "stored key":
            txn.delete(key, db=events)
            txn.put(u64(from_u64(key) ^ (1 << 40)), leaf, db=events)
        else:
            flipped = bytearray(leaf)
            flipped[at[where]] ^= 0x01
            txn.put(key, bytes(flipped), db=events)

    _damage(copy, work)
    with Vault.open(copy) as vault:
        for ask in (lambda: vault.verify(small.spent[8]), lambda: vault.verify_many(small.spent),
                    lambda: vault.redeem(small.spent[8], "second-order")):
            with pytest.raises(StoreCorruptError, match=r"event \d+ .*keyvault check"):
                ask()
        assert not vault.check()["ok"]


def test_the_head_fold_mark_moved_forward_is_refused(copy: Path, small: Small) -> None:
    """A fold mark flipped up would drop unfolded redeems from every overlay: its checksum refuses it."""

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        meta = env.open_db(b"meta", txn=txn)
        head = bytearray(txn.get(b"head", db=meta))
        head[23] ^= 0x02  # the fold mark's low byte
        txn.put(b"head", bytes(head), db=meta)

    _damage(copy, work)
    with pytest.raises(StoreCorruptError, match="head record"):
        with Vault.open(copy) as vault:
            vault.verify(small.spent[8])


def test_a_truncated_redeem_event_is_a_store_error_not_a_struct_error(copy: Path, small: Small) -> None:
    folded = _folded(copy)

    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        key, leaf = _redeems(env, txn, folded)[-1]
        txn.put(key, leaf[:60], db=env.open_db(b"events", txn=txn))

    _damage(copy, work)
    with Vault.open(copy) as vault:
        with pytest.raises(StoreCorruptError, match="event"):
            vault.verify(small.spent[0])
    proc = subprocess.run([sys.executable, "-I", "-c", "from keyvault.cli.main import main; main()", "--store", str(copy),
                           "verify", small.spent[0]], capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in proc.stderr and "keyvault check" in proc.stderr, proc.stderr


def test_a_folded_redeem_event_cut_inside_its_serial_is_a_store_error(copy: Path, small: Small) -> None:
    """Found by the full sweep: a receipt read a redeem event cut short inside its serial with a raw
    struct.error. It is a StoreCorruptError saying to run `keyvault check`."""
    from keyvault.formats.events import CHANGE_BODY, body_at

    with Vault.open(copy) as vault, vault.engine.store.read() as txn:
        index = vault.engine.log.size(txn) - 1
        while True:
            leaf = bytes(vault.engine.log.leaf(txn, index))
            if leaf[49] == 4 and int.from_bytes(leaf[body_at(leaf):body_at(leaf) + 8], "big") == \
                    _serial_of(small.spent[0]):
                break
            index -= 1
    _damage(copy, lambda env, txn: txn.put(u64(index), leaf[:body_at(leaf) + CHANGE_BODY.size - 1],
                                           db=env.open_db(b"events", txn=txn)))
    with Vault.open(copy) as vault:
        with pytest.raises(StoreCorruptError, match="keyvault check"):
            vault.receipt(small.spent[0])


def test_a_checkpoint_cut_short_is_a_store_error(copy: Path, small: Small) -> None:
    """Found by the full sweep: the next event's checkpoint policy read the last checkpoint cut short with a
    raw struct.error. A redeem is refused with a StoreCorruptError saying to run `keyvault check`."""
    def work(env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        db = env.open_db(b"checkpoints", txn=txn)
        cursor = txn.cursor(db=db)
        assert cursor.last()
        txn.put(cursor.key(), bytes(cursor.value())[:33], db=db)

    _damage(copy, work)
    with Vault.open(copy) as vault:
        with pytest.raises(StoreCorruptError, match="keyvault check"):
            vault.redeem(small.active[0], "new-order")


def test_a_store_of_the_previous_format_is_refused_with_a_version_error(copy: Path) -> None:
    _damage(copy, lambda env, txn: txn.put(b"format", b"keyvault-store/2", db=env.open_db(b"meta", txn=txn)))
    with pytest.raises(StoreVersionError, match="keyvault-store/2"):
        Vault.open(copy)


# -- part two: bits of the file ---------------------------------------------------------------------

_WORKER = r"""
import json, os, sys, traceback
from keyvault import KeyvaultError, Status, Vault

store, plan = sys.argv[1], json.load(open(sys.argv[2]))
spent, active, held, partly = plan["spent"], plan["active"], plan["held"], plan["partly"]
data = os.path.join(store, "data.mdb")
pristine = open(data, "rb").read()
NEVER = (Status.VALID, Status.ACCEPTED)

def answers():
    # Every closed key (spent, void, blacklisted, exhausted, held by another order) asked by verify,
    # verify_many, redeem and hold for new orders; the partly used key redeemed by its own order again and by
    # two new ones; then the orders and a receipt read (their errors are counted, never masking the rest).
    closed = spent + [held]
    with Vault.open(store) as vault:
        many = vault.verify_many(closed + active)
        ones = [vault.verify(k) for k in closed]
        again = vault.redeem_many([(k, "again-%d" % i) for i, k in enumerate(closed)])
        grabs = [vault.hold(k, "grab-%d" % i, 3600) for i, k in enumerate(closed)]
        retry = vault.redeem(partly, "use-0")
        fresh = [vault.redeem(partly, "new-%d" % i) for i in range(2)]
        lookups = []
        for read in (lambda: vault.order("holding-order"), lambda: vault.order("use-0"),
                     lambda: vault.receipt(spent[0])):
            try:
                read()
                lookups.append("read")
            except KeyvaultError as exc:
                lookups.append(type(exc).__name__)
    n = len(closed)
    through = [r.serial for r in many[:n] + ones + again if r.status in NEVER]
    through += [r.serial for r in grabs if r.status is Status.HELD and r.order_id is not None]
    if retry.status is Status.ACCEPTED and retry.uses_left != 1:  # the order's own use spent again
        through.append("retry:" + str(retry.serial))
    if sum(r.status is Status.ACCEPTED for r in fresh) + (retry.status is Status.ACCEPTED and retry.uses_left != 1) > 1:
        through.append("overused:" + str(retry.serial))
    statuses = [r.status.value for r in many + ones + again + grabs + [retry] + fresh] + lookups
    return through, statuses

def restore():
    with open(data, "r+b") as fh:
        fh.write(pristine)
        fh.truncate(len(pristine))

_, baseline = answers()
print(json.dumps(["baseline", baseline]), flush=True)
for n, (offset, bit) in enumerate(plan["flips"]):
    restore()
    with open(data, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))
    try:
        through, statuses = answers()
    except KeyvaultError as exc:
        print(json.dumps([n, "refused", type(exc).__name__ + ": " + str(exc)[:160]]), flush=True)
        continue
    except Exception as exc:
        print(json.dumps([n, "raised", "".join(traceback.format_exception(exc))[-1500:]]), flush=True)
        continue
    if through:
        kind = "THROUGH"
    elif statuses == baseline:
        kind = "harmless"
    else:
        kind = "detected" if "damaged" in statuses else "refused-as-other"
    print(json.dumps([n, kind, ",".join(through) or ""]), flush=True)
restore()
"""


def _compacted(store: Path, into: Path) -> Path:
    """``store`` rewritten by LMDB without free pages: every page of the copy is one LMDB reads."""
    into.mkdir()
    env = lmdb.open(str(store), max_dbs=64, readonly=True, lock=False)
    try:
        env.copy(str(into), compact=True)
    finally:
        env.close()
    for name in ("pepper", "engine.key"):
        shutil.copy2(store / name, into / name)
    return into


def _read_bytes(data: bytes) -> list[int]:
    """Offsets of the bytes LMDB reads: the meta pages' headers, and in every other page all but the free gap
    between its node pointers (``lower``) and its nodes (``upper``); overflow pages whole."""
    offsets: list[int] = []
    for page in range(len(data) // PAGE):
        base = page * PAGE
        if page < 2:
            offsets.extend(range(base, base + 160))  # header and the meta record (MDB_meta is 136 bytes)
            continue
        _, _, flags, lower, upper = struct.unpack_from("<QHHHH", data, base)
        if flags & 0x04 or not (16 <= lower <= upper <= PAGE):  # overflow (or unparsed): every byte
            offsets.extend(range(base, base + PAGE))
        else:
            offsets.extend(range(base, base + lower))
            offsets.extend(range(base + upper, base + PAGE))
    return offsets


def _sweep(tmp_path: Path, store: Path, small: Small, flips: list[tuple[int, int]], workers: int = 2
           ) -> dict[str, list[str]]:
    """Run each flip in a worker process (LMDB may die of a signal on a damaged page pointer: the worker is
    restarted after that flip); the flips of each kind."""
    chunks = [flips[i::workers] for i in range(workers)]
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(lambda w: _run_worker(tmp_path, store, small, w, chunks[w]), range(workers)):
            results.append(part)
    baselines = {json.dumps(baseline) for baseline, _ in results if baseline is not None}
    assert len(baselines) <= 1  # every worker saw the same undamaged answers
    tally: dict[str, list[str]] = {}
    for _, part in results:
        for kind, lines in part.items():
            tally.setdefault(kind, []).extend(lines)
    return tally


def _run_worker(tmp_path: Path, store: Path, small: Small, w: int, chunk: list[tuple[int, int]]
                ) -> tuple[list[str] | None, dict[str, list[str]]]:
    tally: dict[str, list[str]] = {}
    baseline: list[str] | None = None
    pending = list(chunk)
    while pending:
        into = tmp_path / f"worker-{w}"
        shutil.rmtree(into, ignore_errors=True)
        shutil.copytree(store, into)
        (into / "lock.mdb").unlink(missing_ok=True)
        plan = tmp_path / f"plan-{w}.json"
        plan.write_text(json.dumps({"spent": small.spent, "active": small.active, "held": small.held,
                                    "partly": small.partly, "flips": pending}))
        proc = subprocess.run([sys.executable, "-I", "-c", _WORKER, str(into), str(plan)], capture_output=True,
                              text=True, timeout=6 * 3600, check=False)
        done = 0
        for line in proc.stdout.splitlines():
            if not line.startswith("["):
                continue
            item = json.loads(line)
            if item[0] == "baseline":
                assert baseline is None or baseline == item[1]
                baseline = item[1]
                continue
            n, kind, detail = item
            offset, bit = pending[n]
            tally.setdefault(kind, []).append(f"byte {offset} (page {offset // PAGE}) bit {bit}: {detail}")
            done = n + 1
        if proc.returncode != 0:
            assert baseline is not None, proc.stderr[-3000:]
            assert proc.returncode < 0 and "Traceback" not in proc.stderr, \
                f"the worker failed (exit {proc.returncode}): {proc.stderr[-3000:]}"
            offset, bit = pending[done]  # LMDB died of a signal on this flip
            tally.setdefault(f"lmdb crashed (signal {-proc.returncode})", []).append(
                f"byte {offset} (page {offset // PAGE}) bit {bit}")
            done += 1
        pending = pending[done:]
    return baseline, tally


def _report(tally: dict[str, list[str]], total: int, seconds: float) -> None:
    print(f"\n{total} flips in {seconds:.0f} s: " + ", ".join(f"{kind} {len(v)}" for kind, v in sorted(tally.items())))
    for kind in ("raised", "THROUGH"):
        for line in tally.get(kind, [])[:5]:
            print(f"  {kind}: {line[:200]!r}\n    {line[-700:]!r}")


def _assert_safe(tally: dict[str, list[str]], total: int) -> None:
    assert sum(len(v) for v in tally.values()) == total
    assert not tally.get("THROUGH"), tally.get("THROUGH")  # no spent, void or blacklisted key passed
    assert not tally.get("raised"), tally.get("raised")  # only Results and KeyvaultErrors
    assert tally.get("detected") and tally.get("refused")  # damage was seen, not merely survived


def test_flipped_bits_never_let_a_spent_key_through(tmp_path: Path, small: Small) -> None:
    """Sampled: every bit of the card and outcome records and of the unfolded events' pages, and a seeded
    sample of the rest of the bytes LMDB reads. ``KEYVAULT_CORRUPTION_SWEEP=all`` runs every bit of every
    byte LMDB reads (the free gap inside a page is never read: flips there are counted, not run)."""
    store = _compacted(small.root, tmp_path / "compacted")
    data = (store / "data.mdb").read_bytes()
    read = _read_bytes(data)
    everything = EVERYTHING
    if everything:
        flips = [(offset, bit) for offset in read for bit in range(8)]
    elif SWEEP:
        focus = set(_focus(store, data, SWEEP))
        flips = [(offset, bit) for offset in read if offset in focus for bit in range(8)]
    else:
        rng = random.Random(20261203)
        targets = _record_bytes(store, small)
        flips = [(offset, rng.randrange(8)) for offset in targets]
        flips += [(offset, rng.randrange(8)) for offset in rng.sample(read, 1200)]
        # every bit of the node counts of the checkout and roster leaves (a count lowered hides records)
        flips += [(page * PAGE + at, bit) for name in ("checkout", "roster") for page in _leaves(store, data, name)
                  for at in (12, 13) for bit in range(8)]
        flips = sorted(set(flips))
    started = time.monotonic()
    tally = _sweep(tmp_path / "sweep", store, small, flips)
    _report(tally, len(flips), time.monotonic() - started)
    if everything:
        print(f"{(len(data) - len(read)) * 8} bits in free gaps inside pages, never read by LMDB: not run")
    _assert_safe(tally, len(flips))


def _focus(store: Path, data: bytes, spec: str) -> list[int]:
    """The offsets a KEYVAULT_CORRUPTION_SWEEP focus names: pages, byte ranges (end excluded), databases."""
    offsets: list[int] = []
    for item in spec.split(","):
        if item.isdigit():
            offsets += range(int(item) * PAGE, (int(item) + 1) * PAGE)
        elif "-" in item and item.replace("-", "").isdigit():
            start, end = map(int, item.split("-"))
            offsets += range(start, end)
        else:
            for page in _leaves(store, data, item):
                print(f"focus {item}: page {page}")
                offsets += range(page * PAGE, (page + 1) * PAGE)
    return offsets


def _leaves(store: Path, data: bytes, name: str) -> list[int]:
    """The leaf pages of database ``name`` in a compacted store's ``data`` (where each record's node lies)."""
    with lmdb.open(str(store), max_dbs=64, readonly=True, lock=False) as env, env.begin() as txn:
        nodes = [struct.pack("<HHHH", len(v) & 0xFFFF, len(v) >> 16, 0, len(k)) + bytes(k) + bytes(v)
                 for k, v in txn.cursor(db=env.open_db(name.encode(), txn=txn, create=False))]
    return sorted({data.find(node) // PAGE for node in nodes} - {-1})


def _record_bytes(store: Path, small: Small) -> list[int]:
    """Offsets in data.mdb of the spent keys' card and outcome records, the unfolded events, the head, and the
    blacklist and batch records (keys and values)."""
    data = (store / "data.mdb").read_bytes()
    wanted: list[bytes] = []
    env = lmdb.open(str(store), max_dbs=64, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            folded = from_u64(txn.get(b"head", db=env.open_db(b"meta", txn=txn))[16:24])
            for name in (b"cards", b"outcomes"):
                db = env.open_db(name, txn=txn)
                wanted += [txn.get(u64(_serial_of(k)), db=db) or b"" for k in small.spent]
            wanted += [v for k, v in txn.cursor(db=env.open_db(b"events", txn=txn)) if from_u64(k) >= folded]
            wanted.append(txn.get(b"head", db=env.open_db(b"meta", txn=txn)))
            for name in (b"blacklist", b"batches", b"checkout"):  # keys and values
                for key, value in txn.cursor(db=env.open_db(name, txn=txn)):
                    wanted += [key, value]
            for key, _ in txn.cursor(db=env.open_db(b"roster", txn=txn)):  # its nodes (the keys are checkout's too)
                wanted.append(struct.pack("<HHHH", 0, 0, 0, len(key)) + bytes(key))
    finally:
        env.close()
    offsets: set[int] = set()
    for value in wanted:
        at = data.find(value) if value else -1
        if at >= 0:
            offsets.update(range(at, at + len(value)))
    assert len(offsets) > 500
    return sorted(offsets)
