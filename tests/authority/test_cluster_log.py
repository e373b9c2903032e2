"""The cluster's one event log: numbered by the holder of the log lock, checked by every node's mirror."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from keyvault import Identity, Vault
from keyvault.engine.authority import remote
from keyvault.engine.authority.postgres import PostgresAuthority
from keyvault.engine.authority.schema import SCHEMA_VERSION
from keyvault.engine.authority.sequencer import LOG_LOCK, Mirror, Sequencer, change_numbers, origin_of, verify_log
from keyvault.errors import AuthorityError, ProofError, StoreCorruptError
from keyvault.formats import bundle, merkle
from keyvault.formats.checkpoint import Verifier, open_note
from keyvault.formats.events import parse_leaf

from conftest import Issued, eventually, issue
from .conftest import PgServer
from .test_authority import node


@pytest.fixture
def batch(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    return issue(supplier_store, supplier, tmp_path / "files", count=120)


@pytest.fixture
def cluster_key() -> Identity:
    return Identity.generate("cluster engine")


@pytest.fixture
def nodes(tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Vault, Vault]]:
    monkeypatch.setenv("KEYVAULT_AUTHORITY_FOLLOW", "0")  # the tests drive sequencers and mirrors themselves
    a = node(tmp_path / "a", supplier, batch, authority_dsn)
    b = node(tmp_path / "b", supplier, batch, authority_dsn)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _changes(dsn: str) -> list[tuple[int, str, int | None]]:
    """Every loggable change the authority decided: (change, kind, serial)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT change, kind, serial FROM keyvault_changes "
                            "WHERE kind IN ('redeem', 'void', 'blacklist', 'lift', 'manifest') ORDER BY change").fetchall()
    return [(r[0], r[1], None if r[2] is None else r[2] + (1 << 64) if r[2] < 0 else r[2]) for r in rows]


def _logged(dsn: str) -> list[tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT idx, change FROM keyvault_log ORDER BY idx")]


def _signed(dsn: str) -> list[int]:
    """The sizes of the signed checkpoints."""
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT size FROM keyvault_checkpoints ORDER BY size")]


def _drain(seq: Sequencer) -> None:
    while seq.step():
        pass


def _work(vault: Vault, batch: Issued, keys: range, tag: str) -> None:
    for i in keys:
        key = batch.keys[i]
        if i % 7 == 0:
            vault.void(key, f"refund {tag}")
        elif i % 11 == 0:
            vault.blacklist.add("key", batch.serials[i], f"stolen {tag}")
            vault.blacklist.lift("key", batch.serials[i], f"found {tag}")
        else:
            vault.redeem(key, f"order-{tag}-{i}")
        # the same key raced from the other side too: one of them wins, both are logged once
        vault.redeem(batch.keys[(i + 1) % len(batch.keys)], f"race-{tag}-{i}")


def test_two_nodes_make_one_log_every_change_once_in_change_order(nodes: tuple[Vault, Vault], batch: Issued,
                                                                  authority_dsn: str, cluster_key: Identity) -> None:
    a, b = nodes
    seq = Sequencer(a.engine.authority, cluster_key, every_events=20, every_seconds=0).start()
    try:
        workers = [threading.Thread(target=_work, args=(a, batch, range(0, 60), "a")),
                   threading.Thread(target=_work, args=(b, batch, range(60, 120), "b"))]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        changes = _changes(authority_dsn)
        eventually(lambda: len(_logged(authority_dsn)) == len(changes), "the sequencer never logged every change",
                   30, 0.05)
    finally:
        seq.stop()
    logged = _logged(authority_dsn)
    assert [i for i, _ in logged] == list(range(len(changes)))  # no gap, no duplicate index
    assert [c for _, c in logged] == [c for c, _, _ in changes]  # every change once, in change-number order
    assert len(changes) > 100
    seq2 = Sequencer(b.engine.authority, cluster_key)
    seq2.acquire()
    seq2.maybe_sign(force=True)
    seq2.release()
    mirrors = [Mirror(), Mirror()]
    for m, v in zip(mirrors, (a, b)):
        while m.step(v.engine.authority):
            pass
    assert mirrors[0].tree.root() == mirrors[1].tree.root() and mirrors[0].tree.size == len(changes)
    kinds = [k for k, _ in change_numbers(mirrors[1].leaves)]
    assert kinds == ["import" if k == "manifest" else k for _, k, _ in changes]
    serials = [s for _, s in change_numbers(mirrors[1].leaves)]
    assert serials == [s if k in ("redeem", "void") else None for _, k, s in changes]
    summary = verify_log(b.engine.authority)
    assert summary["size"] == len(changes) and summary["checkpoints"] >= 2
    assert summary["origin"] == origin_of(cluster_key.public_key)


def test_a_key_redeemed_on_a_is_proven_in_the_log_on_b(nodes: tuple[Vault, Vault], batch: Issued,
                                                        cluster_key: Identity) -> None:
    a, b = nodes
    b.blacklist.add("key", batch.serials[5], "suspicious")
    b.blacklist.lift("key", batch.serials[5], "cleared")
    assert a.redeem(batch.keys[5], "order-5").status.value == "accepted"
    seq = Sequencer(a.engine.authority, cluster_key)
    _drain(seq)
    seq.maybe_sign(force=True)
    copy = Mirror()
    while copy.step(b.engine.authority):
        pass
    size, checkpoint = copy.latest()
    found = [i for i, leaf in enumerate(copy.leaves) if parse_leaf(leaf).get("order_id") == "order-5"]
    assert len(found) == 1
    leaf = copy.leaves[found[0]]
    event = parse_leaf(leaf)
    assert event["type"] == "redeem" and event["serial"] == batch.serials[5]
    # Checked the way verify-bundle checks one: the cluster key's signature, then inclusion under that root.
    note = copy.checkpoints[size]
    opened = open_note(note, origin_of(cluster_key.public_key),
                       [Verifier(origin_of(cluster_key.public_key), cluster_key.public_key)])
    merkle.verify_inclusion(merkle.leaf_hash(leaf), found[0], opened.size, copy.tree.inclusion(found[0], opened.size), opened.root)
    # The redeem links back to the blacklist add and lift of the same key, made on the other node.
    history = [parse_leaf(copy.leaves[i])["type"] for i in copy.find(_serial(leaf))]
    assert history == ["blacklist", "lift", "redeem"]
    assert event["links"][0]["previous"] == copy.find(_serial(leaf))[1]
    seq.release()
    with pytest.raises(ProofError):
        open_note(note, origin_of(cluster_key.public_key),
                  [Verifier(origin_of(cluster_key.public_key), Identity.generate("other").public_key)])


def _serial(leaf: bytes) -> int:
    from keyvault.formats.events import CHANGE_BODY, body_at

    return CHANGE_BODY.unpack_from(leaf, body_at(leaf))[0]


_HOLDER = """
import sys, time
from keyvault import Vault
vault = Vault.open(sys.argv[1])  # a bound node: its follower runs a sequencer (KEYVAULT_CLUSTER_KEY is set)
while not vault.engine.follower.sequencer.holding:
    time.sleep(0.05)
print("holding", flush=True)
while True:
    time.sleep(1)
"""


def test_a_killed_sequencer_is_replaced_without_gap_or_duplicate(nodes: tuple[Vault, Vault], batch: Issued,
                                                                 authority_dsn: str, cluster_key: Identity,
                                                                 tmp_path: Path) -> None:
    a, b = nodes
    keyfile = cluster_key.save(tmp_path / "cluster.key")
    env = {**os.environ, "KEYVAULT_CLUSTER_KEY": str(keyfile), "KEYVAULT_AUTHORITY_FOLLOW": "1"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(b.path)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True, env=env, cwd=tmp_path)  # the installed keyvault, not ./keyvault
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        standby = Sequencer(b.engine.authority, cluster_key, interval=0.05)
        assert not standby.acquire()  # the lock is held: one sequencer at a time
        standby.release()
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set() and i < 100:
                a.redeem(batch.keys[i], f"o{i}")
                i += 1

        worker = threading.Thread(target=load)
        worker.start()
        eventually(lambda: len(_logged(authority_dsn)) >= 10 and _signed(authority_dsn),
                   "the first sequencer logged and signed nothing", 30, 0.02)
        os.killpg(holder.pid, signal.SIGKILL)  # mid-load: the node dies, its session ends, its lock goes
        holder.wait()
        standby.start()
        eventually(lambda: standby.holding, "no other sequencer took the lock within 10 s", 10, 0.05)
        worker.join()
        for i in range(100, 110):  # and changes made after the takeover, whatever the kill interrupted
            b.redeem(batch.keys[i], f"o{i}")
        eventually(lambda: len(_logged(authority_dsn)) == len(_changes(authority_dsn)) == 110
                   and max(_signed(authority_dsn)) == 110, "the new sequencer did not log and sign every change",
                   60, 0.05)
        standby.stop()
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    logged = _logged(authority_dsn)
    assert [i for i, _ in logged] == list(range(110))
    assert [c for _, c in logged] == [c for c, _, _ in _changes(authority_dsn)]
    summary = verify_log(a.engine.authority)  # every checkpoint extends the one before (consistency proofs)
    assert summary["size"] == 110 and summary["checkpoints"] >= 2  # one signed before the kill, one after


def test_two_sequencers_racing_without_the_lock_cannot_corrupt_the_log(nodes: tuple[Vault, Vault], batch: Issued,
                                                                       authority_dsn: str,
                                                                       cluster_key: Identity) -> None:
    a, b = nodes
    for i in range(10):
        a.redeem(batch.keys[i], f"o{i}")
    one = Sequencer(a.engine.authority, cluster_key, take_lock=False)
    two = Sequencer(b.engine.authority, cluster_key, take_lock=False)
    one.acquire()
    two.acquire()  # both loaded the same (empty) head
    results: list[int] = []
    racing = threading.Thread(target=lambda: results.append(two.step()))

    def collide() -> None:  # inside one's batch: two runs its own batch from the same head now
        racing.start()
        time.sleep(0.5)

    one.before_fence = collide
    assert one.step() == 10
    racing.join()
    assert results == [0]  # the fence refused two's batch: nothing of it was written
    assert _logged(authority_dsn) == [(i, c) for i, (c, _, _) in enumerate(_changes(authority_dsn))]
    for i in range(10, 15):
        b.redeem(batch.keys[i], f"o{i}")
    assert two.step() == 5  # two reloaded what one wrote and goes on from there
    assert [i for i, _ in _logged(authority_dsn)] == list(range(15))
    assert one.step() == 0  # one is now the stale one: refused, then reloaded
    one.release()
    two.release()
    with psycopg.connect(authority_dsn) as conn:  # and a writer going around the code meets the table's keys
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO keyvault_log SELECT 3, 999999, leaf, hash FROM keyvault_log WHERE idx = 3")
        conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO keyvault_log SELECT 20, change, leaf, hash FROM keyvault_log WHERE idx = 3")
    verify_log(a.engine.authority)


def test_a_tampered_log_row_is_found_and_reported_not_believed(nodes: tuple[Vault, Vault], batch: Issued,
                                                                authority_dsn: str, cluster_key: Identity) -> None:
    a, b = nodes
    for i in range(6):
        a.redeem(batch.keys[i], f"o{i}")
    seq = Sequencer(a.engine.authority, cluster_key)
    _drain(seq)
    seq.maybe_sign(force=True)
    seq.release()
    assert remote.cluster_log(b.engine)["problem"] is None
    with psycopg.connect(authority_dsn) as conn:
        leaf = bytes(conn.execute("SELECT leaf FROM keyvault_log WHERE idx = 3").fetchone()[0])
        forged = leaf.replace(b"o3", b"o9")  # another order, and its hash recomputed to match
        conn.execute("UPDATE keyvault_log SET leaf = %s, hash = %s WHERE idx = 3", (forged, merkle.leaf_hash(forged)))
    fresh = Mirror()
    with pytest.raises(StoreCorruptError, match="entry 4 does not name the hash of entry 3"):
        fresh.step(b.engine.authority)
    assert fresh.tree.size == 0  # nothing of the batch believed
    with pytest.raises(StoreCorruptError):
        verify_log(b.engine.authority)
    with pytest.raises(StoreCorruptError):
        Sequencer(b.engine.authority, cluster_key).acquire()  # a new sequencer refuses to extend it
    with psycopg.connect(authority_dsn) as conn:  # the hash left as it was: the leaf does not hash to it
        conn.execute("UPDATE keyvault_log SET hash = %s WHERE idx = 3", (merkle.leaf_hash(leaf),))
    with pytest.raises(StoreCorruptError, match="entry 3 does not hash to its recorded hash"):
        Mirror().step(b.engine.authority)
    with psycopg.connect(authority_dsn) as conn:  # the last leaf altered: only the signed checkpoint catches it
        conn.execute("UPDATE keyvault_log SET leaf = %s WHERE idx = 3", (leaf,))
        last = bytes(conn.execute("SELECT leaf FROM keyvault_log WHERE idx = 5").fetchone()[0])
        forged = last.replace(b"o5", b"o8")
        conn.execute("UPDATE keyvault_log SET leaf = %s, hash = %s WHERE idx = 5", (forged, merkle.leaf_hash(forged)))
    report = remote.cluster_log(a.engine)
    assert report["problem"] and "checkpoint at size 6" in report["problem"]
    assert report["size"] == 0
    with psycopg.connect(authority_dsn) as conn:  # the rows put back, the cluster key swapped for another
        conn.execute("UPDATE keyvault_log SET leaf = %s, hash = %s WHERE idx = 5", (last, merkle.leaf_hash(last)))
        conn.execute("UPDATE keyvault_cluster SET public_key = %s", (Identity.generate("forger").public_key,))
    b.close()
    with Vault.open(b.path) as reopened:  # the store recorded the key it first checked the log with
        report = remote.cluster_log(reopened.engine)
        assert report["problem"] and "another cluster engine key" in report["problem"]


def test_the_log_survives_a_postgres_crash_and_the_next_checkpoint_extends_the_last(
        nodes: tuple[Vault, Vault], batch: Issued, authority_dsn: str, cluster_key: Identity,
        pg_server: PgServer) -> None:
    a, b = nodes
    for i in range(20):
        a.redeem(batch.keys[i], f"o{i}")
    seq = Sequencer(b.engine.authority, cluster_key, interval=0.05)
    _drain(seq)
    before = seq.maybe_sign(force=True)
    assert before is not None
    pg_server.kill()
    pg_server.start()
    seq.start()  # its session died with the server: it takes the lock again on a new one and reloads
    acknowledged = []
    for i in range(20, 40):
        for _ in range(50):
            try:
                a.redeem(batch.keys[i], f"o{i}")
                acknowledged.append(i)
                break
            except Exception:  # noqa: BLE001 - the node reconnects on the next call
                time.sleep(0.1)
    eventually(lambda: len(_logged(authority_dsn)) == len(_changes(authority_dsn)), "the log did not catch up", 30,
               0.05)
    seq.stop()
    again = Sequencer(b.engine.authority, cluster_key)
    after = again.maybe_sign(force=True)
    again.release()
    origin = origin_of(cluster_key.public_key)
    verifier = [Verifier(origin, cluster_key.public_key)]
    old, new = open_note(before, origin, verifier), open_note(after, origin, verifier)
    assert old.size == 20 and new.size == 40 and len(acknowledged) == 20
    copy = Mirror()
    while copy.step(a.engine.authority):
        pass
    merkle.verify_consistency(old.size, new.size, old.root, new.root, copy.tree.consistency(old.size, new.size))
    orders = {parse_leaf(leaf)["order_id"] for leaf in copy.leaves}
    assert orders == {f"o{i}" for i in range(40)}  # nothing acknowledged is missing from the log


def test_the_log_lock_is_one_session_at_a_time(authority_dsn: str, cluster_key: Identity) -> None:
    authority = PostgresAuthority(authority_dsn)
    try:
        first, second = Sequencer(authority, cluster_key), Sequencer(authority, cluster_key)
        assert first.acquire() and not second.acquire()
        with psycopg.connect(authority_dsn) as conn:
            held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                                "AND granted", (LOG_LOCK,)).fetchone()[0]
        assert held == 1
        first.release()
        assert second.acquire()
        second.release()
        other = Sequencer(authority, Identity.generate("not the cluster's"))
        with pytest.raises(AuthorityError, match="same key file"):
            other.acquire()
    finally:
        authority.close()


def test_a_bundle_made_on_b_for_a_key_redeemed_on_a_verifies_with_the_cluster_key(
        tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str, cluster_key: Identity,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_AUTHORITY_FOLLOW", "0")
    a, b = Vault.init(tmp_path / "a"), Vault.init(tmp_path / "b")
    try:
        for v in (a, b):
            v.trust(supplier.public)
            v.authority.set(authority_dsn)
        a.import_manifest(batch.manifest)  # bound: in the registry, and the batch's import event in the cluster log
        b.authority.catch_up()
        b.blacklist.add("batch", batch.batch.id, "audit")
        b.blacklist.lift("batch", batch.batch.id, "audit over")
        assert a.redeem(batch.keys[3], "order-3").status.value == "accepted"
        a.void(batch.keys[4], "refund")
        seq = Sequencer(a.engine.authority, cluster_key, every_seconds=0)
        _drain(seq)
        seq.maybe_sign(force=True)
        seq.release()
        trusted = [supplier.public, cluster_key.public_with_roles(["engine"])]
        for n, status, order in ((3, "redeemed", "order-3"), (4, "void", None), (5, "valid", None)):
            doc = b.trace_bundle(batch.serials[n])
            checks = bundle.verify(json.dumps(doc).encode(), trusted)
            assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]
            assert doc["status"] == {"status": status, "order_id": order}
            kinds = [parse_leaf(base64.b64decode(e["leaf"]))["type"] for e in doc["events"]]
            assert kinds[:3] == ["import", "blacklist", "lift"]
        same = a.trace_bundle(batch.serials[3])  # the same log, the same origin, on either node
        assert same["checkpoint"] == b.trace_bundle(batch.serials[3])["checkpoint"]
        # A node's own engine key does not vouch for the cluster's log; a bundle with an event left out fails.
        own = bundle.verify(json.dumps(doc).encode(), [supplier.public, a.engine_identity])
        assert not all(c.ok for c in own)
        doc = b.trace_bundle(batch.serials[3])
        doc["events"] = [e for e in doc["events"] if parse_leaf(base64.b64decode(e["leaf"]))["type"] != "lift"]
        assert {c.name for c in bundle.verify(json.dumps(doc).encode(), trusted) if not c.ok} >= {"history-complete"}
    finally:
        a.close()
        b.close()


def test_nodes_given_the_cluster_key_sequence_by_themselves_one_at_a_time(
        tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str, cluster_key: Identity,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_CLUSTER_KEY", str(cluster_key.save(tmp_path / "cluster.key")))
    a, b = Vault.init(tmp_path / "a"), Vault.init(tmp_path / "b")
    try:
        for v in (a, b):
            v.trust(supplier.public)
            v.authority.set(authority_dsn)  # binding starts the follower, and with the key, a sequencer
        a.import_manifest(batch.manifest)
        eventually(lambda: b.verify(batch.keys[0]).status.value == "valid", "b never fetched the manifest", 30, 0.05)
        for i in range(10):
            (a if i % 2 else b).redeem(batch.keys[i], f"o{i}")
        holders = [v.engine.follower.sequencer for v in (a, b)]
        eventually(lambda: sum(s.holding for s in holders) == 1, "not exactly one node holds the log", 30, 0.05)

        def settled() -> bool:
            report = b.authority.check()["cluster_log"]
            return report["size"] == 11 and report["checkpoint"] == 11 and report["problem"] is None

        eventually(settled, "the nodes did not log and sign the changes by themselves", 30, 0.1)
        doc = b.trace_bundle(batch.serials[3])
        checks = bundle.verify(json.dumps(doc).encode(), [supplier.public, cluster_key.public_with_roles(["engine"])])
        assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]
        holder = next(v for v, s in zip((a, b), holders) if s.holding)
        other = b if holder is a else a
        holder.close()  # its sequencer stops and gives the lock up: the other node's takes it
        eventually(lambda: other.engine.follower.sequencer.holding, "the other node never took over", 30, 0.05)
        other.redeem(batch.keys[20], "o20")
        eventually(lambda: other.authority.check()["cluster_log"]["checkpoint"] == 12, "no checkpoint after", 30,
                   0.1)
    finally:
        a.close()
        b.close()


def test_a_version_1_database_is_upgraded_and_its_changes_logged(nodes: tuple[Vault, Vault], batch: Issued,
                                                                  authority_dsn: str, cluster_key: Identity) -> None:
    a, _ = nodes
    for i in range(5):
        a.redeem(batch.keys[i], f"o{i}")
    with psycopg.connect(authority_dsn) as conn:  # as a database of the version before the log
        conn.execute("DROP TABLE keyvault_log, keyvault_log_head, keyvault_log_subjects, keyvault_checkpoints, "
                     "keyvault_cluster")
        conn.execute("DELETE FROM keyvault_schema")
        conn.execute("INSERT INTO keyvault_schema (version) VALUES (1)")
    upgraded = PostgresAuthority(authority_dsn)
    try:
        assert upgraded.check()["schema_version"] == SCHEMA_VERSION
        seq = Sequencer(upgraded, cluster_key)
        _drain(seq)
        seq.maybe_sign(force=True)
        seq.release()
        assert [c for _, c in _logged(authority_dsn)] == [c for c, _, _ in _changes(authority_dsn)]
        assert verify_log(upgraded)["size"] == 5
    finally:
        upgraded.close()
