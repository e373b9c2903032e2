"""The cluster's one event log across a failover: SIGKILL of the primary's postmaster under load, the
sequencer going on on the promoted standby, and the checkpoints before and after proven consistent."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from keyvault import Identity, Status, Vault
from keyvault.cli.cluster_local import LocalCluster, member_by_role, postmaster_pid
from keyvault.engine.authority.sequencer import Mirror, Sequencer, origin_of
from keyvault.errors import KeyvaultError
from keyvault.formats import merkle
from keyvault.formats.checkpoint import Verifier, open_note
from keyvault.formats.events import parse_leaf

from conftest import eventually, issue


def test_the_log_stays_consistent_across_a_failover(cluster: LocalCluster, tmp_path: Path, supplier: Identity,
                                                    supplier_store: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_AUTHORITY_FOLLOW", "0")  # the test drives the sequencer itself
    state = cluster.load()
    assert state is not None
    batch = issue(supplier_store, supplier, tmp_path / "files", count=3000)
    node = Vault.init(tmp_path / "node")
    node.trust(supplier.public)
    node.authority.set(state["dsn"])
    node.import_manifest(batch.manifest)
    key = Identity.generate("cluster engine")
    seq = Sequencer(node.engine.authority, key, interval=0.05, every_seconds=0.5)
    acknowledged: dict[str, str] = {}
    stop = threading.Event()

    def load() -> None:
        for i, k in enumerate(batch.keys):
            if stop.is_set():
                return
            for _ in range(600):  # an unknown outcome is retried with the same order id
                try:
                    if node.redeem(k, f"o{i}").status is Status.ACCEPTED:
                        acknowledged[k] = f"o{i}"
                    break
                except KeyvaultError:
                    time.sleep(0.1)

    worker = threading.Thread(target=load)
    try:
        seq.start()
        worker.start()
        eventually(lambda: len(acknowledged) >= 200, "no load before the fault", 120, 0.1)
        eventually(lambda: seq.holding and seq.tree.size >= 100, "the sequencer logged nothing", 60, 0.1)
        before = seq.maybe_sign(force=True)
        leader = member_by_role(cluster, state, "leader")
        assert leader is not None and before is not None
        os.kill(postmaster_pid(leader), signal.SIGKILL)
        killed = len(acknowledged)
        eventually(lambda: len(acknowledged) >= killed + 200, "no redeem accepted after the failover", 120, 0.1)
        stop.set()
        worker.join()

        def caught_up() -> bool:
            with psycopg.connect(state["dsn"]) as conn:
                return bool(conn.execute("SELECT (SELECT count(*) FROM keyvault_log) = (SELECT count(*) FROM "
                                         "keyvault_changes WHERE kind IN ('redeem', 'manifest'))").fetchone()[0])

        eventually(caught_up, "the sequencer did not log every change after the failover", 120, 0.2)
        for _ in range(100):
            try:
                after = seq.maybe_sign(force=True)
                break
            except KeyvaultError:
                time.sleep(0.2)
    finally:
        stop.set()
        if worker.is_alive():
            worker.join()
        seq.stop()
    origin = origin_of(key.public_key)
    verifier = [Verifier(origin, key.public_key)]
    old, new = open_note(before, origin, verifier), open_note(after, origin, verifier)
    copy = Mirror()
    while copy.step(node.engine.authority):
        pass
    assert new.size == copy.tree.size > old.size
    merkle.verify_consistency(old.size, new.size, old.root, new.root, copy.tree.consistency(old.size, new.size))
    logged = [parse_leaf(leaf) for leaf in copy.leaves]
    orders = [e["order_id"] for e in logged if e["type"] == "redeem"]
    assert len(orders) == len(set(orders))  # every redeem once
    assert set(acknowledged.values()) <= set(orders)  # nothing acknowledged is missing from the log
    assert [e["index"] for e in logged] == list(range(len(logged)))
    print(f"failover: {len(acknowledged)} acknowledged, log {old.size} -> {new.size}, consistent")
    node.close()
