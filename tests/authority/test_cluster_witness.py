"""Nodes witness the cluster log: the sequencer's cosigner submits each cluster checkpoint to the other nodes'
witnesses over HTTP and keeps their cosignatures in PostgreSQL; bundles from any node carry them; a rolled-back
or forked database, a replayed checkpoint, a forged cosignature and a witness that is down are each tried."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from keyvault import Identity, Vault
from keyvault.engine import LogWitness, add_witness, list_witnesses, remove_witness
from keyvault.engine.authority.sequencer import Sequencer
from keyvault.engine.witness import WitnessRefused, ask_witness
from keyvault.errors import ProofError, UsageError
from keyvault.formats import bundle, cosignature
from keyvault.formats.identity import PublicIdentity

from conftest import Issued, eventually, issue
from .conftest import PG_BIN, PgServer


class WitnessServer:
    """A node's witness over real HTTP (the add-checkpoint exchange), which a test can stop, slow or corrupt."""

    def __init__(self, witness: LogWitness) -> None:
        self.witness = witness
        self.gate = threading.Event()  # cleared: requests wait (a witness that hangs)
        self.gate.set()
        self.forge: str | None = None  # "other-key": answer a line by another key; "other-text": over another note
        self.requests = 0
        self.answered = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                owner.requests += 1
                body = self.rfile.read(int(self.headers["content-length"]))
                owner.gate.wait(60)
                answer = owner.witness.add_checkpoint(body)
                owner.answered += 1
                data = answer.body
                if answer.status == 200 and owner.forge:
                    data = owner.forged(body)
                self.send_response(answer.status)
                self.send_header("content-type", answer.content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/witness"
        self.thread: threading.Thread | None = None
        self.start()

    def forged(self, body: bytes) -> bytes:
        note = body.partition(b"\n\n")[2]
        text = note[:note.index(b"\n\n") + 1]
        if self.forge == "other-key":  # the witness's name, another key
            other = Identity.generate(self.witness.identity.name)
            return cosignature.line(text, other.name, other.signing_key, int(time.time()))
        return cosignature.line(text.replace(b"\n", b"\nx", 1), self.witness.identity.name,
                                self.witness.identity.signing_key, int(time.time()))

    def start(self) -> None:
        if self.thread is None:
            self.httpd = self.httpd if self.httpd.socket.fileno() >= 0 else self._rebind()
            self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
            self.thread.start()

    def _rebind(self) -> http.server.ThreadingHTTPServer:
        handler = self.httpd.RequestHandlerClass
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        httpd.daemon_threads = True
        return httpd

    def stop(self) -> None:
        """Down: the port refuses connections."""
        if self.thread is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread = None


def node(path: Path, supplier: Identity, batch: Issued, dsn: str) -> Vault:
    """A node bound to ``dsn`` before the batch is imported (its import event is in the cluster log)."""
    vault = Vault.init(path)
    vault.trust(supplier.public)
    vault.authority.set(dsn)
    vault.import_manifest(batch.manifest)
    return vault


@pytest.fixture
def batch(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    return issue(supplier_store, supplier, tmp_path / "files", count=60)


@pytest.fixture
def cluster_key() -> Identity:
    return Identity.generate("cluster engine")


@pytest.fixture
def world(tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str, cluster_key: Identity,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Vault, Vault, list[WitnessServer], list[PublicIdentity]]]:
    """Two nodes on one authority and three node witnesses (node1..node3) named to the cluster."""
    monkeypatch.setenv("KEYVAULT_AUTHORITY_FOLLOW", "0")  # the tests drive the sequencers themselves
    a = node(tmp_path / "a", supplier, batch, authority_dsn)
    b = node(tmp_path / "b", supplier, batch, authority_dsn)
    servers, pubs = [], []
    for n in (1, 2, 3):
        who = Identity.generate(f"keyvault-test/node{n}")
        servers.append(WitnessServer(LogWitness(who, tmp_path / f"w{n}", [cluster_key.public])))
        pubs.append(who.public)
        add_witness(a.engine, servers[-1].url, who.public)
    try:
        yield a, b, servers, pubs
    finally:
        for server in servers:
            server.stop()
        a.close()
        b.close()


def _sequence(vault: Vault, key: Identity, own: PublicIdentity | None) -> Sequencer:
    seq = Sequencer(vault.engine.authority, key, every_seconds=0, own_witness=None if own is None else own.public_key)
    seq.cosigner.max_backoff = 0.2
    seq.cosigner.timeout = 1.0
    return seq


def _sign(seq: Sequencer) -> None:
    while seq.step():
        pass
    seq.maybe_sign(force=True)


def _note(dsn: str) -> bytes:
    with psycopg.connect(dsn) as conn:
        return bytes(conn.execute("SELECT note FROM keyvault_checkpoints ORDER BY size DESC LIMIT 1").fetchone()[0])


def _check(vault: Vault, serial: str, supplier: Identity, key: Identity, witnesses: list[PublicIdentity],
           required: int) -> list[str]:
    """The failed checks of a bundle of ``serial`` made on ``vault`` (empty: it verifies)."""
    doc = vault.trace_bundle(serial)
    trusted = bundle.Trusted((supplier.public,), (), (key.public_with_roles(["engine"]),), tuple(witnesses))
    checks = bundle.verify(json.dumps(doc).encode(), trusted, min_witnesses=required)
    return [c.line() for c in checks if not c.ok]


def test_each_node_cosigns_the_others_checkpoints_and_every_bundle_carries_them(
        world: tuple[Vault, Vault, list[WitnessServer], list[PublicIdentity]], batch: Issued, supplier: Identity,
        cluster_key: Identity, authority_dsn: str) -> None:
    a, b, servers, (w1, w2, w3) = world
    assert [w["name"] for w in list_witnesses(b.engine)] == [w1.name, w2.name, w3.name]  # the cluster's list
    for i in range(3):
        a.redeem(batch.keys[i], f"o{i}")
    seq = _sequence(a, cluster_key, w1)  # node1 sequences: it signs, nodes 2 and 3 witness
    try:
        _sign(seq)
        outcome = seq.cosigner.round(wait=True)
        assert outcome[w1.name] == "signer" and servers[0].requests == 0  # never its own witness
        note = _note(authority_dsn)
        assert {w.name for w in cosignature.cosigners(note, [cosignature.Witness(p.name, p.public_key)
                                                             for p in (w1, w2, w3)])} == {w2.name, w3.name}
        size = seq.tree.size
        for vault in (a, b):  # a bundle from either node carries both cosignatures
            assert _check(vault, batch.serials[1], supplier, cluster_key, [w2, w3], 2) == []
        failed = _check(b, batch.serials[1], supplier, cluster_key, [w1, w2], 2)
        assert failed and "witness" in " ".join(failed)  # node1 signed it: it never counts as its witness
        assert seq.cosigner.round(wait=True)[w2.name] == f"cosigned {size}"  # nothing asked twice
        asked = servers[1].requests
        # The log grows: each witness checks the growth from the size it cosigned, and cosigns again.
        for i in range(3, 6):
            b.redeem(batch.keys[i], f"o{i}")
        _sign(seq)
        seq.cosigner.round(wait=True)
        assert servers[1].requests == asked + 1 and seq.tree.size > size
        assert _check(b, batch.serials[4], supplier, cluster_key, [w2, w3], 2) == []
        assert {s: v for s, v in servers[1].witness.state().items()}[seq.origin][0] == seq.tree.size
    finally:
        seq.stop()
        seq.release()
    # Another node takes over: the newest checkpoint is node1's, so node1's witness is still not asked.
    took = _sequence(b, cluster_key, w2)
    try:
        assert took.acquire()
        assert took.cosigner.round(wait=True)[w1.name] == "signer"
        assert servers[0].requests == 0
        b.redeem(batch.keys[10], "o10")
        _sign(took)  # node2 signs: now node1 witnesses and node2 does not
        outcome = took.cosigner.round(wait=True)
        assert outcome[w2.name] == "signer" and outcome[w1.name].startswith("cosigned")
        assert _check(a, batch.serials[10], supplier, cluster_key, [w1, w3], 2) == []
    finally:
        took.stop()
        took.release()


def test_a_witness_down_or_slow_never_blocks_redeems_and_is_retried(
        world: tuple[Vault, Vault, list[WitnessServer], list[PublicIdentity]], batch: Issued,
        cluster_key: Identity, authority_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    a, b, servers, (w1, w2, w3) = world
    servers[1].stop()  # node2's witness is down
    servers[2].gate.clear()  # node3's witness hangs: it answers after the cosigner's deadline
    a.redeem(batch.keys[0], "o0")
    seq = _sequence(a, cluster_key, w1)
    try:
        _sign(seq)
        seq.cosigner.round()  # asynchronous: returns while node3's witness still holds the request
        eventually(lambda: servers[2].requests == 1, "node3's witness was not asked", 10)
        for i in range(1, 6):  # redeems go on while the witnesses are asked
            assert b.redeem(batch.keys[i], f"o{i}").status.value == "accepted"
        assert servers[2].answered == 0  # the redeems were answered while node3's witness still held its request
        eventually(lambda: w3.name in seq.cosigner.outcome and w2.name in seq.cosigner.outcome,
                   "no outcome after the deadline", 10)
        assert seq.cosigner.outcome[w2.name].startswith("failed: cannot reach the witness")
        assert seq.cosigner.outcome[w3.name].startswith("failed: cannot reach the witness")  # timed out
        assert seq.cosigner.failures[w2.public_key] >= 1
        assert "did not cosign the checkpoint" in caplog.text
        assert cosignature.cosignatures(_note(authority_dsn))[1] == []
        servers[1].start()  # back: the next round after the backoff cosigns
        servers[2].gate.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            outcome = seq.cosigner.round(wait=True)
            if outcome[w2.name].startswith("cosigned") and outcome[w3.name].startswith("cosigned"):
                break
            time.sleep(0.1)
        assert len(cosignature.cosignatures(_note(authority_dsn))[1]) == 2
    finally:
        seq.stop()
        seq.release()


def test_a_forged_cosignature_is_never_kept(world: tuple[Vault, Vault, list[WitnessServer], list[PublicIdentity]],
                                            batch: Issued, supplier: Identity, cluster_key: Identity,
                                            authority_dsn: str) -> None:
    a, b, servers, (w1, w2, w3) = world
    servers[1].forge = "other-key"  # a line in node2's name by another key
    servers[2].forge = "other-text"  # node3's key over another checkpoint
    a.redeem(batch.keys[0], "o0")
    seq = _sequence(a, cluster_key, w1)
    try:
        _sign(seq)
        outcome = seq.cosigner.round(wait=True)
        assert outcome[w2.name].startswith("failed") and outcome[w3.name].startswith("failed")
        assert cosignature.cosignatures(_note(authority_dsn))[1] == []
        failed = _check(b, batch.serials[0], supplier, cluster_key, [w2, w3], 1)
        assert failed
    finally:
        seq.stop()
        seq.release()
    # A line forged into the database's note is refused by the verifier, never counted.
    note = _note(authority_dsn)
    text = note[:note.index(b"\n\n") + 1]
    other = Identity.generate(w2.name)
    forged = note + cosignature.line(text + b"x", w2.name, other.signing_key, int(time.time()))
    with psycopg.connect(authority_dsn) as conn:
        conn.execute("UPDATE keyvault_checkpoints SET note = %s WHERE note = %s", (forged, note))
    assert _check(b, batch.serials[0], supplier, cluster_key, [w2], 1)


def test_a_replayed_old_checkpoint_is_refused(world: tuple[Vault, Vault, list[WitnessServer], list[PublicIdentity]],
                                              batch: Issued, cluster_key: Identity, authority_dsn: str) -> None:
    a, b, servers, (w1, w2, w3) = world
    a.redeem(batch.keys[0], "o0")
    seq = _sequence(a, cluster_key, w1)
    try:
        _sign(seq)
        old_size, old_note = seq.tree.size, _note(authority_dsn)
        for i in range(1, 4):
            a.redeem(batch.keys[i], f"o{i}")
        _sign(seq)
        seq.cosigner.round(wait=True)
        size = seq.tree.size
        assert servers[1].witness.state()[seq.origin][0] == size
        # The old checkpoint again (a rolled-back database, or an attacker replaying it): refused, nothing changes.
        with pytest.raises(WitnessRefused, match="rolled back"):
            ask_witness(servers[1].url, old_size, old_note, lambda o: seq.tree.consistency(o, old_size), old=size)
        with pytest.raises(WitnessRefused, match="rolled back"):
            ask_witness(servers[1].url, old_size, old_note, lambda o: [], old=0)
        answer = servers[1].witness.add_checkpoint(f"old {old_size}\n\n".encode() + old_note)
        assert answer.status == 409 and answer.body == f"{size}\n".encode()
        assert servers[1].witness.state()[seq.origin][0] == size
    finally:
        seq.stop()
        seq.release()


def _dump(pg: PgServer, dsn: str, where: Path) -> None:
    subprocess.run([*pg.as_user, str(PG_BIN / "pg_dump"), "-d", dsn, "-f", str(where)], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)


def _restore(pg: PgServer, name: str, dump: Path) -> str:
    pg.sql(f"CREATE DATABASE {name}")
    subprocess.run([*pg.as_user, str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.dsn(name), "-f",
                    str(dump)], check=True, timeout=120, stdout=subprocess.DEVNULL)
    return pg.dsn(name)


def test_a_database_restored_from_an_older_dump_cannot_collect_cosignatures(
        world: tuple[Vault, Vault, list[WitnessServer], list[PublicIdentity]], batch: Issued, supplier: Identity,
        cluster_key: Identity, authority_dsn: str, pg_server: PgServer, tmp_path: Path) -> None:
    a, b, servers, (w1, w2, w3) = world
    for i in range(3):
        a.redeem(batch.keys[i], f"o{i}")
    seq = _sequence(a, cluster_key, w1)
    try:
        _sign(seq)
        seq.cosigner.round(wait=True)
        dump = pg_server.base / f"older-{tmp_path.name}.sql"
        _dump(pg_server, authority_dsn, dump)  # the backup
        for i in range(3, 9):  # the original log grows on, witnessed
            a.redeem(batch.keys[i], f"o{i}")
        _sign(seq)
        assert seq.cosigner.round(wait=True)[w2.name] == f"cosigned {seq.tree.size}"
        original = seq.tree.size
    finally:
        seq.stop()
        seq.release()
    # The database is restored from the older dump, and the cluster goes on: the log regrows differently.
    restored = _restore(pg_server, f"restored_{abs(hash(tmp_path)) % 10**8}", dump)
    c = node(tmp_path / "c", supplier, batch, restored)
    fork = _sequence(c, cluster_key, w1)
    try:
        c.redeem(batch.keys[20], "other-20")  # shorter than what the witnesses saw
        _sign(fork)
        assert fork.tree.size < original
        outcome = fork.cosigner.round(wait=True)
        assert "rolled back or is a fork" in outcome[w2.name] and "rolled back or is a fork" in outcome[w3.name]
        for i in range(21, 30):  # longer than what they saw, but not its extension
            c.redeem(batch.keys[i], f"other-{i}")
        _sign(fork)
        assert fork.tree.size > original
        fork.cosigner.retry_at.clear()
        outcome = fork.cosigner.round(wait=True)
        assert "not a consistent extension" in outcome[w2.name], outcome
        assert "not a consistent extension" in outcome[w3.name], outcome
        assert cosignature.cosignatures(_note(restored))[1] == []
        assert servers[1].witness.state()[fork.origin][0] == original  # the witnesses kept what they saw
        failed = _check(c, batch.serials[25], supplier, cluster_key, [w2, w3], 2)
        assert failed and "witness" in " ".join(failed)
        assert _check(c, batch.serials[25], supplier, cluster_key, [], 0) == []  # the fork is otherwise well made
    finally:
        fork.stop()
        fork.release()
        c.close()


def test_the_cluster_names_its_witnesses_once_and_refuses_bad_ones(
        world: tuple[Vault, Vault, list[WitnessServer], list[PublicIdentity]]) -> None:
    a, b, servers, (w1, w2, w3) = world
    add_witness(b.engine, "http://127.0.0.1:9/v1/witness", w1)  # the same key: its URL moves, one entry
    rows = list_witnesses(a.engine)
    assert len(rows) == 3 and {r["scope"] for r in rows} == {"cluster"}
    assert next(r for r in rows if r["name"] == w1.name)["url"] == "http://127.0.0.1:9/v1/witness"
    with pytest.raises(UsageError, match="http"):
        add_witness(a.engine, "ftp://x", w1)
    bad = PublicIdentity("has space", 0, w1.public_key)
    with pytest.raises(ProofError):
        add_witness(a.engine, "http://x", bad)
    assert remove_witness(a.engine, w3.name) == {"removed": [w3.name]}
    with pytest.raises(UsageError, match="no witness"):
        remove_witness(a.engine, w3.name)
    assert [r["name"] for r in list_witnesses(b.engine)] == [w1.name, w2.name]
