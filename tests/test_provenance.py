"""Provenance end to end: trust and rotation, the event log and its checkpoints, trace bundles
(every field of one tampered with), chains of custody (forged hops, double sales) and the CLI.

Every store here is a real LMDB store on a temporary directory; bundles are checked with
:func:`keyvault.formats.bundle.verify` exactly as ``keyvault verify-bundle`` does, with public keys only.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import Issued, issue
from cli_support import EXIT_OK, EXIT_REFUSED, kv, make_world, ok, one_json
from keyvault import Identity, Vault, _fast
from keyvault.formats import bundle, custody, history, merkle
from keyvault.formats.checkpoint import Checkpoint, Verifier, open_note, sign
from keyvault.clock import now_ms
from keyvault.errors import (
    BadSignatureError,
    CustodyError,
    NotFoundError,
    ProofError,
    StoreCorruptError,
    TrustError,
)
from keyvault.formats.events import parse_leaf, split_leaf
from keyvault.formats.identity import PublicIdentity
from keyvault.formats.keyformat import make_serial, parse_serial, serial_text
from keyvault.formats.manifest import read_manifest
from keyvault.store.records import u64


# -- helpers ---------------------------------------------------------------------------------------


def material(key: str) -> bytes:
    """A native key's canonical form: what its commitment hashes."""
    outcome, _, canonical, _ = _fast.parse_key(key)
    assert outcome == _fast.OK
    return bytes(canonical)


def check(doc: dict[str, Any] | bytes, trusted: list[PublicIdentity], key: bytes | None = None) -> list[bundle.Check]:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return bundle.verify(data, trusted, key)


def passed(checks: list[bundle.Check]) -> bool:
    return bool(checks) and all(c.ok for c in checks)


def named(checks: list[bundle.Check], name: str) -> bundle.Check:
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, [c.line() for c in checks]
    return found[0]


def spread(length: int, n: int) -> list[int]:
    """About ``n`` positions spread over ``range(length)``, first and last included."""
    if length <= n:
        return list(range(length))
    return sorted({round(i * (length - 1) / (n - 1)) for i in range(n)})


def flip_b64(text: str, pos: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[pos] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def flip_hex(text: str, pos: int) -> str:
    raw = bytearray(bytes.fromhex(text))
    raw[pos] ^= 0x01
    return raw.hex()


def snapshot(vault: Vault) -> tuple[int, str, int, list[str]]:
    """What a refused operation must leave as it was: the log, the statistics, checkpoints and custody."""
    with vault.engine.store.read() as txn:
        custody_rows = sum(1 for _ in txn.items("custody"))
    return (vault.verify_log(), json.dumps(vault.stats().to_dict(), sort_keys=True), custody_rows,
            sorted(b.id for b in vault.catalog().batches.values()))


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[[str], Vault]]:
    """Make more stores under tmp_path; all closed at the end."""
    with ExitStack() as stack:
        def make(name: str) -> Vault:
            return stack.enter_context(Vault.init(tmp_path / name))
        yield make


# -- 1. trust and rotation -----------------------------------------------------------------------


def test_unpinned_supplier_is_refused_and_store_unchanged(tmp_path: Path, supplier: Identity, supplier_store: Vault,
                                                         stores: Callable[[str], Vault]) -> None:
    batch = issue(supplier_store, supplier, tmp_path / "files", 20)
    fresh = stores("fresh")
    before = snapshot(fresh)
    with pytest.raises(TrustError, match="does not trust"):
        fresh.import_manifest(batch.manifest)
    assert snapshot(fresh) == before
    assert fresh.verify(batch.keys[0]).status.value == "unknown"
    fresh.trust(supplier.public)
    assert [t["fingerprint"] for t in fresh.trusted()] == [supplier.fingerprint]
    info, new = fresh.import_manifest(batch.manifest)
    assert new and info.id == batch.batch.id
    assert fresh.verify(batch.keys[0]).status.value == "valid"
    # Unpinning stops new imports, keeps what was imported.
    other = issue(supplier_store, supplier, tmp_path / "files", 5)
    fresh.untrust(supplier.public)
    with pytest.raises(TrustError):
        fresh.import_manifest(other.manifest)
    assert fresh.verify(batch.keys[0]).status.value == "valid"


def test_rotation_moves_trust_to_the_new_key(tmp_path: Path, supplier: Identity, supplier_store: Vault,
                                             platform: Vault, stores: Callable[[str], Vault]) -> None:
    first = issue(supplier_store, supplier, tmp_path / "files", 20)
    signed_before = issue(supplier_store, supplier, tmp_path / "files", 20)  # old key, not yet imported
    platform.import_manifest(first.manifest)
    new_identity, rotation = supplier.rotate()
    assert rotation.old.public_key == supplier.public_key and rotation.new.public_key == new_identity.public_key
    assert new_identity.prefix == supplier.prefix

    platform.rotate_trust(rotation)
    supplier_store.rotate_trust(rotation)  # the supplier's own store pinned the old key when it issued
    pins = {t["public_key"]: t for t in platform.trusted()}
    assert pins[supplier.public_key.hex()]["rotated_to"] == new_identity.public_key.hex()
    assert pins[new_identity.public_key.hex()]["rotated_from"] == supplier.public_key.hex()

    # Whatever the old key signs is refused from now on: a manifest from before the rotation...
    before = snapshot(platform)
    with pytest.raises(TrustError, match="rotated away"):
        platform.import_manifest(signed_before.manifest)
    # ... and one it signed afterwards.
    late = issue(stores("rogue"), supplier, tmp_path / "rogue-files", 5)
    with pytest.raises(TrustError):
        platform.import_manifest(late.manifest)
    assert snapshot(platform) == before
    # The old key cannot be pinned again.
    with pytest.raises(TrustError):
        platform.trust(supplier.public)

    # What the old key signed before stays valid; the new key issues under the same prefix.
    assert platform.verify(first.keys[3]).status.value == "valid"
    renewed = issue(supplier_store, new_identity, tmp_path / "files", 20)
    assert renewed.batch.id.split("-")[0] == first.batch.id.split("-")[0]
    info, new = platform.import_manifest(renewed.manifest)
    assert new and info.id == renewed.batch.id
    assert platform.verify(renewed.keys[0]).status.value == "valid"
    assert platform.redeem(renewed.keys[1], "ORD-R").status.value == "accepted"
    doc = platform.trace_bundle(renewed.keys[1])
    assert passed(check(doc, [new_identity.public, platform.engine_identity], material(renewed.keys[1])))
    assert not passed(check(doc, [supplier.public, platform.engine_identity]))
    # A rotation cannot be applied twice.
    with pytest.raises(TrustError):
        platform.rotate_trust(rotation)


def test_rotation_of_an_unpinned_key_is_refused(supplier: Identity, stores: Callable[[str], Vault]) -> None:
    fresh = stores("fresh")
    _, rotation = supplier.rotate()
    before = snapshot(fresh)
    with pytest.raises(TrustError):
        fresh.rotate_trust(rotation)
    assert snapshot(fresh) == before
    assert fresh.trusted() == []


# -- 2. the event log and checkpoints --------------------------------------------------------------


def test_every_change_is_one_logged_event(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    # engine key, own pin, supplier registered, batch issued
    assert supplier_store.verify_log() == 4
    steps: list[Callable[[], object]] = [
        lambda: supplier_store.redeem(b.keys[0], "ORD-1"),
        lambda: supplier_store.void(b.keys[1], "refund"),
        lambda: supplier_store.blacklist("key", b.keys[2], "stolen"),
        lambda: supplier_store.lift("key", b.keys[2], "found"),
    ]
    for n, step in enumerate(steps, 5):
        step()
        assert supplier_store.verify_log() == n
    # A refused change writes no event.
    assert supplier_store.redeem(b.keys[0], "ORD-2").status.value == "redeemed"
    assert supplier_store.verify_log() == 8

    types = lambda key: [e["type"] for e in supplier_store.trace(key)["events"]]  # noqa: E731
    assert {"trust", "supplier", "issue", "redeem"} <= set(types(b.keys[0]))
    assert "void" in types(b.keys[1])
    assert {"blacklist", "lift"} <= set(types(b.keys[2]))
    assert {"redeem", "void", "blacklist", "lift"}.isdisjoint(types(b.keys[3]))
    assert supplier_store.audit()["clean"] is True


def test_checkpoints_grow_and_are_consistent(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    supplier_store.checkpoint()
    first = supplier_store.checkpoints()
    assert first[-1]["size"] == supplier_store.verify_log()
    for i in range(5):
        supplier_store.redeem(b.keys[i], f"ORD-{i}")
    note = supplier_store.checkpoint()
    assert note.startswith(supplier_store.engine.log.origin + "\n")
    assert supplier_store.checkpoint() == note  # nothing new: the newest is returned, not re-signed
    later = supplier_store.checkpoints()
    assert len(later) == len(first) + 1 and later[-1]["size"] == first[-1]["size"] + 5

    engine = Verifier(bundle.engine_origin(supplier_store.engine_identity.public_key),
                      supplier_store.engine_identity.public_key)
    signed = [open_note(c["note"].encode(), None, [engine]) for c in later]
    assert [(s.size, s.root.hex()) for s in signed] == [(c["size"], c["root"]) for c in later]
    with supplier_store.engine.store.read() as txn:
        pairs = [(a, z) for a in signed for z in signed if a.size <= z.size]
        proofs = {(a.size, z.size): supplier_store.engine.log.consistency(txn, a.size, z.size) for a, z in pairs}
    for a, z in pairs:
        merkle.verify_consistency(a.size, z.size, a.root, z.root, proofs[(a.size, z.size)])
    old, new = signed[-2], signed[-1]
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(old.size, new.size, bytes(32), new.root, proofs[(old.size, new.size)])

    # The cadence: after every 2 events a checkpoint is signed by itself.
    supplier_store.set_checkpoint_policy(2, 3600)
    count = len(later)
    for i in range(5, 9):
        supplier_store.redeem(b.keys[i], f"ORD-{i}")
    assert len(supplier_store.checkpoints()) == count + 2
    assert supplier_store.verify_log() == later[-1]["size"] + 4


def _alter(vault: Vault, index: int) -> None:
    with vault.engine.store.read() as txn:
        leaf = bytearray(vault.engine.log.leaf(txn, index))
    leaf[-1] ^= 0x01  # the body's last byte: the event still parses as an event leaf
    vault.engine.store.write(lambda txn: txn.put("events", u64(index), bytes(leaf)))


@pytest.mark.parametrize("where", ["last", "middle", "first"])
def test_an_altered_event_is_detected_and_can_never_be_proven(tmp_path: Path, supplier: Identity,
                                                              supplier_store: Vault, where: str) -> None:
    """What the engine signed cannot be changed: the tree's nodes were hashed when each event was appended.

    Altering a stored event afterwards is found by verify_log and audit. The engine may still sign later
    checkpoints (it does not rehash the whole log on every signature), but only over the tree it built,
    so they stay consistent with every earlier checkpoint and the altered event fails its own proof.
    (Altering the newest event is caught even at signing time: it is not yet under a stored node.)
    """
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    for i in range(7):
        supplier_store.redeem(b.keys[i], f"ORD-{i}")
    supplier_store.checkpoint()
    size = supplier_store.verify_log()
    assert size == 11
    index = {"last": size - 1, "middle": size // 2, "first": 0}[where]
    _alter(supplier_store, index)
    with pytest.raises(StoreCorruptError):
        supplier_store.verify_log()
    report = supplier_store.audit()
    assert report["event_log"]["ok"] is False and report["clean"] is False
    signed = supplier_store.checkpoints()
    supplier_store.redeem(b.keys[10], "ORD-after")  # a new event: a new checkpoint would be due
    if where == "last":
        with pytest.raises(StoreCorruptError):
            supplier_store.checkpoint()
        assert len(supplier_store.checkpoints()) == len(signed)
        return
    supplier_store.checkpoint()
    after = supplier_store.checkpoints()[-1]
    with supplier_store.engine.store.read() as txn:
        for old in signed:
            proof = supplier_store.engine.log.consistency(txn, old["size"], after["size"])
            merkle.verify_consistency(old["size"], after["size"], bytes.fromhex(old["root"]),
                                      bytes.fromhex(after["root"]), proof)
        leaf = supplier_store.engine.log.leaf(txn, index)
        proof = supplier_store.engine.log.inclusion(txn, index, after["size"])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(merkle.leaf_hash(leaf), index, after["size"], proof, bytes.fromhex(after["root"]))


def test_a_deleted_event_is_detected(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    supplier_store.redeem(b.keys[0], "ORD-0")
    supplier_store.checkpoint()
    last = supplier_store.verify_log() - 1
    supplier_store.engine.store.write(lambda txn: txn.delete("events", u64(last)))
    with pytest.raises(StoreCorruptError):
        supplier_store.verify_log()
    supplier_store.redeem(b.keys[1], "ORD-1")
    with pytest.raises(StoreCorruptError):
        supplier_store.checkpoint()


def test_an_old_bundle_still_verifies_and_a_forged_checkpoint_does_not(tmp_path: Path, supplier: Identity,
                                                                       supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    supplier_store.redeem(b.keys[0], "ORD-0")
    trusted = [supplier.public, supplier_store.engine_identity]
    old = supplier_store.trace_bundle(b.keys[0])
    old_size = int(old["checkpoint"].split("\n")[1])
    for i in range(1, 6):
        supplier_store.redeem(b.keys[i], f"ORD-{i}")
    supplier_store.blacklist("batch", b.batch.id, "audit")
    supplier_store.checkpoint()
    assert supplier_store.checkpoints()[-1]["size"] > old_size
    assert passed(check(old, trusted, material(b.keys[0])))  # checked against its own, older, checkpoint
    fresh = supplier_store.trace_bundle(b.keys[0])
    assert fresh["checkpoint"] != old["checkpoint"]
    assert passed(check(fresh, trusted, material(b.keys[0])))

    # A note for the same size with another root, signed under the engine's origin by another key.
    origin = bundle.engine_origin(supplier_store.engine_identity.public_key)
    mallory = Identity.generate("Mallory")
    forged = sign(Checkpoint(origin, old_size, bytes(32), (f"time {now_ms()}",)), origin, mallory.signing_key).decode()
    doc = dict(old, checkpoint=forged)
    checks = check(doc, trusted)
    assert not named(checks, "checkpoint signature").ok
    # Even if the forger is trusted as something else, its key is not the engine key of that origin.
    assert not passed(check(doc, [*trusted, mallory.public]))


def test_the_supplier_key_cannot_sign_a_checkpoint(tmp_path: Path, supplier: Identity,
                                                   supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    supplier_store.redeem(b.keys[0], "ORD-0")
    doc = supplier_store.trace_bundle(b.keys[0])
    trusted = [supplier.public, supplier_store.engine_identity]
    # A fabricated log: the key's events without its redeem, at their own indices, filler elsewhere.
    leaves = {e["index"]: base64.b64decode(e["leaf"]) for e in doc["events"]}
    kept = {i: leaf for i, leaf in leaves.items() if parse_leaf(leaf)["type"] != "redeem"}
    assert len(kept) == len(leaves) - 1
    size = max(leaves) + 1
    hashes = [merkle.leaf_hash(kept[i]) if i in kept else merkle.leaf_hash(b"filler %d" % i) for i in range(size)]
    perfect = merkle.perfect_from_leaves(hashes)
    events = [{"index": i, "leaf": base64.b64encode(kept[i]).decode(),
               "proof": [h.hex() for h in merkle.inclusion_proof(i, size, perfect)]} for i in sorted(kept)]

    # The forger also commits to a subject index of its own making, over the events it kept.
    latest = {history.subject_key(subject): i for i in sorted(kept) for subject, _ in split_leaf(kept[i])[1]}
    index_line = history.extension_line(history.root_of(latest))
    proofs = [history.prove(latest, bytes.fromhex(p["subject"])) for p in doc["index_proofs"]]

    def forged(signer: Identity) -> dict[str, Any]:
        origin = bundle.engine_origin(signer.public_key)
        note = sign(Checkpoint(origin, size, merkle.root(hashes), (f"time {now_ms()}", index_line)), origin,
                    signer.signing_key).decode()
        return dict(doc, checkpoint=note, events=events, status=dict(doc["status"], status="valid", order_id=None),
                    index_proofs=proofs)

    # Controls: signed by the real engine key the fabrication passes (so only the signer matters) ...
    assert passed(check(forged(supplier_store.engine.log.engine), trusted, material(b.keys[0])))
    # ... and signed by an untrusted key it fails.
    assert not named(check(forged(Identity.generate("Mallory")), trusted), "checkpoint signature").ok
    # The supplier's key signs manifests; it is no engine key.
    checks = check(forged(supplier), trusted, material(b.keys[0]))
    assert not named(checks, "checkpoint signature").ok, [c.line() for c in checks]


# -- 5. custody (the fixture the bundle tests use too) -------------------------------------------


@dataclass
class Chain:
    supplier: Identity
    batch: Issued
    dist_id: Identity
    dist: Vault
    plat_id: Identity
    platform: Vault
    manifest: Path  # the distributor's copy, written by receive_lot
    files: Path


@pytest.fixture
def chain(tmp_path: Path, supplier: Identity, supplier_store: Vault, platform: Vault) -> Iterator[Chain]:
    """Acme issues 200 keys, sends 0-99 to Dist Co (own store), who sends 0-49 to Plat Co (the platform store)."""
    files = tmp_path / "files"
    b = issue(supplier_store, supplier, files, 200)
    dist_id, plat_id = Identity.generate("Dist Co"), Identity.generate("Plat Co")
    with Vault.init(tmp_path / "dist-store") as dist:
        dist.trust(supplier.public)
        sent = supplier_store.send_lot(supplier, b.batch.id, dist_id.public, manifest=b.manifest,
                                       out=files / "to-dist.kvl", ranges="0-99")
        assert sent["keys"] == 100 and sent["ranges"] == ["0-99"]
        got = dist.receive_lot(files / "to-dist.kvl", dist_id, manifest_out=files / "dist.kvm")
        assert [h["transfer"] for h in got["hops"]] == [sent["transfer"]]
        dist.send_lot(dist_id, b.batch.id, plat_id.public, manifest=files / "dist.kvm", out=files / "to-plat.kvl",
                      ranges="0-49")
        got = platform.receive_lot(files / "to-plat.kvl", plat_id)
        assert [(h["from"], h["to"], h["ranges"]) for h in got["hops"]] == [
            ("Acme Games", "Dist Co", ["0-99"]), ("Dist Co", "Plat Co", ["0-49"])]
        yield Chain(supplier, b, dist_id, dist, plat_id, platform, files / "dist.kvm", files)


def test_two_hops_of_custody_verify(chain: Chain) -> None:
    key = chain.batch.keys[7]
    doc = chain.platform.trace_bundle(key)
    checks = check(doc, [chain.supplier.public, chain.platform.engine_identity], material(key))
    assert passed(checks), [c.line() for c in checks]
    hops = [c for c in checks if c.name == "custody"]
    assert [c.detail.split(":")[0] for c in hops] == ["hop 1", "hop 2"]
    assert "'Dist Co' -> 'Plat Co'" in hops[1].detail
    types = [e["type"] for e in chain.platform.trace(key)["events"]]
    assert types.count("transfer") == 2 and "import" in types
    assert chain.platform.audit()["clean"] is True
    # A key the distributor kept: the platform knows of only the first hop.
    kept = chain.platform.trace_bundle(chain.batch.keys[70])
    assert len(kept["custody"]) == 1
    assert passed(check(kept, [chain.supplier.public, chain.platform.engine_identity], material(chain.batch.keys[70])))


def _lot(sender: Identity, recipient: Identity, chain: list[custody.Transfer], manifest: Path) -> bytes:
    return custody.seal_lot(sender, recipient.public_key, chain, manifest.read_bytes())


def test_a_forged_hop_is_refused(chain: Chain, stores: Callable[[str], Vault]) -> None:
    m = read_manifest(chain.batch.manifest)
    mallory = Identity.generate("Mallory")
    victim_id = Identity.generate("Victim")
    victim = stores("victim")
    victim.trust(chain.supplier.public)
    before = snapshot(victim)
    # First hop signed by someone who never held the batch.
    hop = custody.make_transfer(mallory, "Victim", victim_id.public_key, chain.batch.batch.id, m.id, m.count, ((0, 10),), m.id, now_ms())
    lot = chain.files / "forged1.kvl"
    lot.write_bytes(_lot(mallory, victim_id, [hop], chain.batch.manifest))
    with pytest.raises(CustodyError, match="forged"):
        victim.receive_lot(lot, victim_id)
    # Second hop signed by Mallory, spending Dist Co's genuine hop.
    with chain.dist.engine.store.read() as txn:
        from keyvault.engine.lots import batch_transfers
        genuine = batch_transfers(txn, chain.batch.batch.key)
    first = next(h for h in genuine if h.sender == chain.supplier.public_key)
    hop2 = custody.make_transfer(mallory, "Victim", victim_id.public_key, chain.batch.batch.id, m.id, m.count,
                                 ((0, 10),), first.id, now_ms())
    lot2 = chain.files / "forged2.kvl"
    lot2.write_bytes(_lot(mallory, victim_id, [first, hop2], chain.batch.manifest))
    with pytest.raises(CustodyError, match="forged"):
        victim.receive_lot(lot2, victim_id)
    # Dist Co moving keys it never received (100-149).
    hop3 = custody.make_transfer(chain.dist_id, "Victim", victim_id.public_key, chain.batch.batch.id, m.id, m.count,
                                 ((100, 150),), first.id, now_ms())
    lot3 = chain.files / "forged3.kvl"
    lot3.write_bytes(_lot(chain.dist_id, victim_id, [first, hop3], chain.batch.manifest))
    with pytest.raises(CustodyError, match="never received"):
        victim.receive_lot(lot3, victim_id)
    assert snapshot(victim) == before
    with pytest.raises(NotFoundError):
        victim.trace(chain.batch.keys[0])


def test_a_double_sale_is_refused_and_audited(chain: Chain) -> None:
    m = read_manifest(chain.batch.manifest)
    # The lot Plat Co received: [Acme -> Dist (0-99), Dist -> Plat (0-49)].
    _, hops, _ = custody.open_lot((chain.files / "to-plat.kvl").read_bytes(), chain.plat_id)
    first, sold = hops
    # Dist Co sells 25-74 again, spending the same record, bypassing its own store's refusal.
    again = custody.make_transfer(chain.dist_id, "Plat Co", chain.plat_id.public_key, chain.batch.batch.id, m.id,
                                  m.count, ((25, 75),), first.id, now_ms())
    lot = chain.files / "again.kvl"
    lot.write_bytes(_lot(chain.dist_id, chain.plat_id, [first, again], chain.manifest))
    log_before = chain.platform.verify_log()
    with pytest.raises(CustodyError, match="double sale"):
        chain.platform.receive_lot(lot, chain.plat_id)
    assert chain.platform.verify_log() == log_before  # no event, no custody for 50-74
    report = chain.platform.audit()
    assert report["clean"] is False
    assert len(report["double_sales"]) == 1
    sale = report["double_sales"][0]
    assert {sale["first"]["transfer"], sale["second"]["transfer"]} == {sold.id, again.id}
    assert sale["second"]["transfer"] == again.id and sale["spent_record"] == first.id
    assert sale["second"]["ranges"] == ["25-74"] and sale["first"]["ranges"] == ["0-49"]
    # Both signed records are kept, verbatim.
    assert custody.read_transfer(bytes.fromhex(sale["second"]["record"])).id == again.id
    assert len(chain.platform.trace_bundle(chain.batch.keys[60])["custody"]) == 1


def _double_sale_lot(chain: Chain) -> Path:
    m = read_manifest(chain.batch.manifest)
    _, (first, _), _ = custody.open_lot((chain.files / "to-plat.kvl").read_bytes(), chain.plat_id)
    again = custody.make_transfer(chain.dist_id, "Plat Co", chain.plat_id.public_key, chain.batch.batch.id, m.id,
                                  m.count, ((25, 75),), first.id, now_ms())
    lot = chain.files / "again.kvl"
    lot.write_bytes(_lot(chain.dist_id, chain.plat_id, [first, again], chain.manifest))
    return lot


def test_a_refused_double_sale_stays_refused(chain: Chain) -> None:
    lot = _double_sale_lot(chain)
    with pytest.raises(CustodyError, match="double sale"):
        chain.platform.receive_lot(lot, chain.plat_id)
    log_before = chain.platform.verify_log()
    with pytest.raises(CustodyError, match="double sale"):
        chain.platform.receive_lot(lot, chain.plat_id)
    assert chain.platform.verify_log() == log_before
    assert len(chain.platform.audit()["double_sales"]) == 1


def test_the_sender_refuses_its_own_double_sale(chain: Chain) -> None:
    other = Identity.generate("Other Platform")
    before, before_log = snapshot(chain.dist), chain.dist.verify_log()
    out = chain.files / "overlap.kvl"
    with pytest.raises(CustodyError, match="double sale"):
        chain.dist.send_lot(chain.dist_id, chain.batch.batch.id, other.public, manifest=chain.manifest, out=out,
                            ranges="25-74")
    assert not out.exists()
    # The refusal is kept as custody evidence (no event, no spend), and audit reports it.
    assert chain.dist.verify_log() == before_log
    sales = chain.dist.audit()["double_sales"]
    assert len(sales) == 1 and sales[0]["refused_at"] == "send" and sales[0]["second"]["ranges"] == ["25-74"]
    assert snapshot(chain.dist) != before
    before = snapshot(chain.dist)
    # Keys it never received cannot be sent either.
    with pytest.raises(CustodyError):
        chain.dist.send_lot(chain.dist_id, chain.batch.batch.id, other.public, manifest=chain.manifest, out=out,
                            ranges="100-120")
    assert not out.exists()
    assert snapshot(chain.dist) == before  # not a double sale: nothing kept
    # The rest of what it holds can.
    done = chain.dist.send_lot(chain.dist_id, chain.batch.batch.id, other.public, manifest=chain.manifest,
                               out=out, ranges="50-99")
    assert done["keys"] == 50 and out.exists()


def test_a_lot_for_someone_else_or_damaged_is_refused(tmp_path: Path, supplier: Identity, supplier_store: Vault,
                                                      stores: Callable[[str], Vault]) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    dist_id, thief_id = Identity.generate("Dist Co"), Identity.generate("Thief")
    lot = tmp_path / "files" / "lot.kvl"
    supplier_store.send_lot(supplier, b.batch.id, dist_id.public, manifest=b.manifest, out=lot)
    store = stores("dist")
    store.trust(supplier.public)
    before = snapshot(store)
    with pytest.raises(CustodyError, match="another holder"):
        store.receive_lot(lot, thief_id)
    data = lot.read_bytes()
    for pos in spread(len(data), 25):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        path = tmp_path / "files" / f"bad-{pos}.kvl"
        path.write_bytes(bytes(bad))
        with pytest.raises((BadSignatureError, CustodyError)):
            store.receive_lot(path, dist_id)
    for cut in (0, 5, 40, len(data) // 2, len(data) - 1):
        path = tmp_path / "files" / f"cut-{cut}.kvl"
        path.write_bytes(data[:cut])
        with pytest.raises((BadSignatureError, CustodyError)):
            store.receive_lot(path, dist_id)
    assert snapshot(store) == before
    assert store.verify(b.keys[0]).status.value == "unknown"
    store.receive_lot(lot, dist_id)
    assert store.verify(b.keys[0]).status.value == "valid"


# -- 3. bundles: every field counts --------------------------------------------------------------


def test_a_bundle_by_key_and_by_serial(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 200)
    key, serial = b.keys[77], b.serials[77]
    supplier_store.redeem(key, "ORD-77")
    trusted = [supplier.public, supplier_store.engine_identity]
    doc = supplier_store.trace_bundle(key)
    assert doc["serial"] == serial and doc["index"] == 77 and doc["salt"] is not None
    checks = check(doc, trusted, material(key))
    assert passed(checks), [c.line() for c in checks]
    assert named(checks, "key opens commitment").ok
    assert named(checks, "status replayed from events").ok
    # Another key's material does not open it.
    assert not named(check(doc, trusted, material(b.keys[78])), "key opens commitment").ok
    # Without the engine key, the checkpoint cannot be trusted.
    alone = check(doc, [supplier.public], material(key))
    assert not named(alone, "checkpoint signature").ok and not passed(alone)
    # Without the supplier key, the manifest cannot (it is signed, but by nobody trusted to sign manifests).
    assert not named(check(doc, [supplier_store.engine_identity]), "manifest signer").ok
    # A bundle made from the key carries its salt, which only the key can check.
    assert not named(check(doc, trusted), "key opens commitment").ok
    # By serial: no salt (nobody may test guesses), and it still verifies without the key.
    by_serial = supplier_store.trace_bundle(serial)
    assert by_serial["salt"] is None and by_serial["commitment"] == doc["commitment"]
    assert passed(check(by_serial, trusted))
    assert not named(check(by_serial, trusted, material(key)), "key opens commitment").ok


def _mutations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """One changed copy of ``doc`` per field, element and sampled byte."""
    def changed(label: str, edit: Callable[[dict[str, Any]], None]) -> tuple[str, dict[str, Any]]:
        d = copy.deepcopy(doc)
        edit(d)
        return label, d

    raw = base64.b64decode(doc["manifest"])
    for pos in spread(len(raw), 50):
        yield changed(f"manifest byte {pos}", lambda d, p=pos: d.__setitem__("manifest", flip_b64(d["manifest"], p)))
    for pos in range(32):
        yield changed(f"commitment byte {pos}",
                      lambda d, p=pos: d.__setitem__("commitment", flip_hex(d["commitment"], p)))
    for pos in range(16):
        yield changed(f"salt byte {pos}", lambda d, p=pos: d.__setitem__("salt", flip_hex(d["salt"], p)))
    for n in range(len(doc["manifest_proof"])):
        for pos in (0, 13, 31):
            yield changed(f"manifest_proof[{n}] byte {pos}",
                          lambda d, n=n, p=pos: d["manifest_proof"].__setitem__(n, flip_hex(d["manifest_proof"][n], p)))
    for n, hop in enumerate(doc["custody"]):
        for pos in spread(len(base64.b64decode(hop)), 30):
            yield changed(f"custody[{n}] byte {pos}",
                          lambda d, n=n, p=pos: d["custody"].__setitem__(n, flip_b64(d["custody"][n], p)))
    note = doc["checkpoint"]
    for pos in spread(len(note), 40):
        new = "A" if note[pos] != "A" else "B"
        yield changed(f"checkpoint char {pos} ({note[pos]!r})",
                      lambda d, p=pos, c=new: d.__setitem__("checkpoint", d["checkpoint"][:p] + c + d["checkpoint"][p + 1:]))
    for n, event in enumerate(doc["events"]):
        for pos in spread(len(base64.b64decode(event["leaf"])), 20):
            yield changed(f"events[{n}].leaf byte {pos}",
                          lambda d, n=n, p=pos: d["events"][n].__setitem__("leaf", flip_b64(d["events"][n]["leaf"], p)))
        for k in range(len(event["proof"])):
            yield changed(f"events[{n}].proof[{k}]",
                          lambda d, n=n, k=k: d["events"][n]["proof"].__setitem__(k, flip_hex(d["events"][n]["proof"][k], 5)))
        yield changed(f"events[{n}].index + 1", lambda d, n=n: d["events"][n].__setitem__("index", d["events"][n]["index"] + 1))
    yield changed("index + 1", lambda d: d.__setitem__("index", d["index"] + 1))
    yield changed("index - 1", lambda d: d.__setitem__("index", d["index"] - 1))
    yield changed("index as text", lambda d: d.__setitem__("index", str(d["index"])))
    yield changed("index true", lambda d: d.__setitem__("index", True))
    serial = parse_serial(doc["serial"])
    for delta in (1, -1):
        yield changed(f"serial {delta:+}", lambda d, x=delta: d.__setitem__("serial", serial_text(serial + x)))
    for status in ("valid", "void", "blacklisted", "unknown", "expired", "not_yet_valid"):
        if status != doc["status"]["status"]:
            yield changed(f"status {status}", lambda d, s=status: d["status"].__setitem__("status", s))
    yield changed("format", lambda d: d.__setitem__("format", "keyvault/bundle/v0"))
    yield changed("events dropped", lambda d: d.__setitem__("events", []))
    for field in ("format", "serial", "index", "status", "manifest", "commitment", "manifest_proof", "custody",
                  "checkpoint", "events"):
        for junk in (None, 0, "", [], {}):
            if field == "custody" and junk in ("", [], {}):
                continue  # no custody at all is a bundle of a key never transferred (see the report)
            yield changed(f"{field} = {junk!r}", lambda d, f=field, j=junk: d.__setitem__(f, j))
        yield changed(f"{field} missing", lambda d, f=field: d.pop(f))


def test_every_field_of_a_bundle_is_checked(chain: Chain) -> None:
    key = chain.batch.keys[7]
    chain.platform.redeem(key, "ORD-7")
    chain.platform.blacklist("key", key, "checking")
    chain.platform.lift("key", key, "checked")
    doc = chain.platform.trace_bundle(key)
    trusted = [chain.supplier.public, chain.platform.engine_identity]
    keyed = material(key)
    assert passed(check(doc, trusted, keyed))
    assert len(doc["custody"]) == 2 and doc["salt"] is not None
    types = [parse_leaf(base64.b64decode(e["leaf"]))["type"] for e in doc["events"]]
    assert {"transfer", "import", "redeem", "blacklist", "lift"} <= set(types)
    assert doc["status"]["status"] == "redeemed"
    survived, count = [], 0
    for label, mutated in _mutations(doc):
        count += 1
        checks = check(mutated, trusted, keyed)  # must never raise
        if passed(checks):
            survived.append(label)
    assert count > 400
    assert survived == []
    # The order id the status claims is checked too.
    assert not passed(check(dict(doc, status=dict(doc["status"], order_id="ORD-other")), trusted, keyed))


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"null", b"[]", b"{}", b'{"format": "keyvault/bundle/v1"}',
                                  b"{" * 50, b'"' + b"x" * 100 + b'"'])
def test_garbage_is_a_failed_check(data: bytes, supplier: Identity) -> None:
    checks = bundle.verify(data, [supplier.public])
    assert checks and not passed(checks)


def test_deeply_nested_garbage_is_a_failed_check(supplier: Identity) -> None:
    checks = bundle.verify(b"[" * 100_000, [supplier.public])
    assert checks and not passed(checks)


# -- 4. broken-verifier cases through bundle.verify ------------------------------------------------


def test_broken_manifest_proofs_fail(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 200)
    trusted = [supplier.public, supplier_store.engine_identity]
    index = 77
    doc = supplier_store.trace_bundle(b.serials[index])
    assert passed(check(doc, trusted))
    proof = doc["manifest_proof"]
    assert len(proof) == 8  # 200 leaves, index in the first 128: 7 + 1

    def in_manifest(**changes: Any) -> bool:
        found = [c for c in check(dict(doc, **changes), trusted) if c.name == "key in manifest"]
        return bool(found) and all(c.ok for c in found)

    assert in_manifest()
    assert not in_manifest(manifest_proof=[])
    assert not in_manifest(index=200, serial=serial_text(parse_serial(doc["serial"]) + 200 - index))
    assert not in_manifest(index=10**12)
    assert not in_manifest(index=-1)
    assert not in_manifest(manifest_proof=proof + [proof[0]])
    assert not in_manifest(manifest_proof=proof + ["00" * 32])
    assert not in_manifest(manifest_proof=proof[:-1])
    assert not in_manifest(manifest_proof=proof[1:])
    assert not in_manifest(manifest_proof=[proof[1], proof[0], *proof[2:]])
    assert not in_manifest(manifest_proof=[h[:-2] for h in proof])  # 31-byte hashes
    # An inner node passed as the leaf: the level-1 node over leaves 76 and 77, as "leaf 38".
    sibling, commitment = bytes.fromhex(proof[0]), bytes.fromhex(doc["commitment"])
    inner = merkle.node_hash(sibling, commitment)  # 77 is a right child
    first = parse_serial(doc["serial"]) - index
    assert not in_manifest(commitment=inner.hex(), index=38, serial=serial_text(first + 38), manifest_proof=proof[1:])
    assert not in_manifest(commitment=inner.hex(), manifest_proof=proof[1:])
    # The same proof, honest, through the reference verifier: it was the change that failed.
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(inner, 38, 200, [bytes.fromhex(h) for h in proof[1:]], _root(doc))
    merkle.verify_inclusion(commitment, index, 200, [bytes.fromhex(h) for h in proof], _root(doc))


def _root(doc: dict[str, Any]) -> bytes:
    signed = base64.b64decode(doc["manifest"])
    header = json.loads(signed[len(b"KVMANIFEST2\n") + 32 + 64 + 4:])
    return bytes.fromhex(header["merkle_root"])


# -- 6. proof size for a batch of a million keys ------------------------------------------------------


@pytest.mark.slow
def test_a_million_key_bundle_is_small(tmp_path: Path, supplier: Identity, supplier_store: Vault,
                                       record_property: Callable[[str, object], None]) -> None:
    count = 1_000_000
    keys_csv, manifest = tmp_path / "keys.csv", tmp_path / "batch.kvm"
    info = supplier_store.issue_batch(supplier, "POINTS-1", count, keys_out=keys_csv, manifest_out=manifest)
    assert info.count == count
    wanted = {123_456: None, count - 1: None}
    with open(keys_csv) as fh:
        next(fh)
        for i, line in enumerate(fh):
            if i in wanted:
                wanted[i] = line.split(",")
            if i >= count - 1:
                break
    trusted = [supplier.public, supplier_store.engine_identity]
    row = wanted[123_456]
    assert row is not None
    key = next(c for c in row if c.count("-") >= 4)
    doc = supplier_store.trace_bundle(key)
    assert doc["index"] == 123_456
    assert len(doc["manifest_proof"]) == math.ceil(math.log2(count)) == 20
    data = json.dumps(doc).encode()
    record_property("bundle_bytes_1m", len(data))
    print(f"bundle for key 123456 of 1,000,000: {len(data):,} bytes")
    assert len(data) < 20_000
    assert passed(check(data, trusted, material(key)))
    last = supplier_store.trace_bundle(serial_text(make_serial(info.key, count - 1)))
    assert last["index"] == count - 1 and len(last["manifest_proof"]) <= 20
    assert passed(check(last, trusted))


# -- 7. the CLI ------------------------------------------------------------------------------------


def test_cli_trust_trace_bundle_verify_audit_checkpoint(tmp_path: Path) -> None:
    w = make_world(tmp_path / "w", count=30)  # identity show --public > acme.pub; trust add acme.pub
    acme_pub = w.root / "acme.pub"
    pins = one_json(ok("--store", w.platform, "trust", "list", "--json"))
    assert [p["name"] for p in pins] == ["Acme Games"]
    assert PublicIdentity.load(acme_pub).fingerprint == pins[0]["fingerprint"]

    engine_pub = tmp_path / "engine.pub"
    engine_pub.write_bytes(ok("--store", w.supplier_store, "identity", "show", "--public").stdout_bytes)
    key = w.keys[5]
    out = tmp_path / "out.json"
    ok("--store", w.supplier_store, "trace", w.serials[5], "--bundle", out)
    assert out.exists()
    result = kv("verify-bundle", out, "--supplier", acme_pub, "--engine", engine_pub)
    assert result.exit_code == EXIT_OK, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == "ALL CHECKS PASSED"
    assert lines[:-1] and all(line.startswith("PASS ") for line in lines[:-1]), lines
    by_key = tmp_path / "by-key.json"
    ok("--store", w.supplier_store, "trace", key, "--bundle", by_key)
    keyed = kv("verify-bundle", by_key, "--trust", acme_pub, "--trust", engine_pub, "--key", key)
    assert keyed.exit_code == EXIT_OK and "PASS key opens commitment" in keyed.output
    # Its salt is checked only with the key.
    assert kv("verify-bundle", by_key, "--supplier", acme_pub, "--engine", engine_pub).exit_code == EXIT_REFUSED

    # Without the engine key: exit 3.
    assert kv("verify-bundle", out, "--supplier", acme_pub).exit_code == EXIT_REFUSED
    # The engine key given as a supplier (or the supplier's as an engine): exit 3, each outside its role.
    swapped = kv("verify-bundle", out, "--supplier", engine_pub, "--engine", acme_pub)
    assert swapped.exit_code == EXIT_REFUSED and "FAIL manifest signer" in swapped.output
    # A flipped byte: exit 3 and a FAIL line.
    doc = json.loads(out.read_text())
    doc["commitment"] = flip_hex(doc["commitment"], 3)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    result = kv("verify-bundle", bad, "--supplier", acme_pub, "--engine", engine_pub)
    assert result.exit_code == EXIT_REFUSED
    assert any(line.startswith("FAIL ") for line in result.output.splitlines())
    assert "ALL CHECKS PASSED" not in result.output

    audit = kv("--store", w.platform, "audit")
    assert audit.exit_code == EXIT_OK and "no double sale" in audit.output
    note = ok("--store", w.supplier_store, "checkpoint").output
    assert note.splitlines()[0].startswith("keyvault/")
    assert note.splitlines()[1].isdigit()


def test_cli_lot_round_trip(tmp_path: Path) -> None:
    w = make_world(tmp_path / "w", count=30)
    dist_identity = tmp_path / "dist.identity"
    ok("supplier", "init", "--name", "Dist Co", "--out", dist_identity, "--json")
    dist_pub = tmp_path / "dist.pub"
    dist_pub.write_bytes(ok("identity", "show", "--public", dist_identity).stdout_bytes)
    dist = tmp_path / "dist-store"
    ok("--store", dist, "init")
    ok("--store", dist, "trust", "add", w.root / "acme.pub")
    lot = tmp_path / "lot.kvl"
    sent = one_json(ok("--store", w.supplier_store, "lot", "send", "--batch", w.batch, "--range", "0-9",
                       "--to", dist_pub, "--identity", w.identity, "--manifest", w.manifest, "--out", lot, "--json"))
    assert sent["keys"] == 10 and lot.exists()
    # Sending overlapping keys again is refused, and writes nothing.
    again = tmp_path / "again.kvl"
    refused = kv("--store", w.supplier_store, "lot", "send", "--batch", w.batch, "--range", "5-14", "--to", dist_pub,
                 "--identity", w.identity, "--manifest", w.manifest, "--out", again)
    assert refused.exit_code != EXIT_OK and not again.exists()
    got = one_json(ok("--store", dist, "lot", "receive", lot, "--identity", dist_identity, "--json"))
    assert got["batch"] == w.batch and [h["transfer"] for h in got["hops"]] == [sent["transfer"]]
    traced = one_json(ok("--store", dist, "trace", w.keys[3], "--json"))
    assert traced["verification"]["ok"] is True
    assert any(line.startswith("PASS custody: hop 1") for line in traced["verification"]["checks"])
    assert kv("--store", dist, "audit").exit_code == EXIT_OK
    # The lot cannot be opened with another identity.
    other = tmp_path / "other.identity"
    ok("supplier", "init", "--name", "Other", "--out", other, "--json")
    other_store = tmp_path / "other-store"
    ok("--store", other_store, "init")
    ok("--store", other_store, "trust", "add", w.root / "acme.pub")
    assert kv("--store", other_store, "lot", "receive", lot, "--identity", other).exit_code != EXIT_OK


def test_a_rolled_back_store_is_caught_by_an_earlier_checkpoint(tmp_path: Path, supplier: Identity) -> None:
    """A witness keeps a checkpoint; the store is restored from an older backup and written to again:
    the next checkpoint cannot be proven to extend the one the witness kept."""
    import shutil

    store = tmp_path / "store"
    with Vault.init(store) as vault:
        batch = issue(vault, supplier, tmp_path / "files", 10)
        vault.redeem(batch.keys[0], "ORD-0")
    shutil.copytree(store, tmp_path / "backup")
    with Vault.open(store) as vault:
        vault.redeem(batch.keys[1], "ORD-1")
        vault.redeem(batch.keys[2], "ORD-2")
        kept = vault.checkpoint()  # what a witness or a customer saw
        assert vault.check_since(kept).ok
        vault.redeem(batch.keys[3], "ORD-3")
        assert vault.check_since(kept).ok  # grown since: consistent
    shutil.rmtree(store)
    shutil.copytree(tmp_path / "backup", store)
    with Vault.open(store) as vault:
        check = vault.check_since(kept)  # fewer events than were signed: rolled back
        assert not check.ok and "rolled back" in check.detail
        for i in range(4, 9):
            vault.redeem(batch.keys[i], f"ORD-{i}")  # now longer than before, but another history
        check = vault.check_since(kept)
        assert not check.ok, check.detail
    note = tmp_path / "kept.note"
    note.write_text(kept)
    result = kv("--store", store, "checkpoint", "--since", note)
    assert result.exit_code == EXIT_REFUSED and result.stdout.startswith("FAIL")


# -- 8. strict documents: every JSON document is decoded into a typed struct -------------------------
#
# For each document type: an unknown field, a mistyped field, a missing field, a truncated file and a
# flipped signature byte are refused with the documented error class, naming the field, and change
# nothing; a signed manifest header altered after signing is refused before any of its fields is read.

from keyvault.errors import IdentityError, ManifestError  # noqa: E402
from keyvault.formats import envelope  # noqa: E402
from keyvault.formats import manifest as kv_manifest  # noqa: E402
from keyvault.formats.identity import Rotation  # noqa: E402

_BREAKS = [
    ("unknown field", lambda d: d.__setitem__("comment", "x"), "unknown field `comment`"),
    ("mistyped field", lambda d: d.__setitem__("count", str(d["count"])), "Expected `int`, got `str` - at `$.count`"),
    ("missing field", lambda d: d.pop("previous"), "missing required field `previous`"),
]


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _parts(data: bytes, magic: bytes) -> tuple[bytes, bytes, bytes]:
    """(public key, signature, body and what follows) of an envelope."""
    key, sig, _ = envelope.FIXED.unpack_from(data, len(magic))
    return key, sig, data[len(magic) + envelope.FIXED.size:]


@pytest.mark.parametrize("what, change, words", _BREAKS, ids=[b[0] for b in _BREAKS])
def test_a_signed_manifest_header_with_a_broken_field_is_refused(tmp_path: Path, supplier: Identity,
                                                                 supplier_store: Vault, platform: Vault,
                                                                 what: str, change: Callable[[dict[str, Any]], Any],
                                                                 words: str) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    data = b.manifest.read_bytes()
    key, _, rest = _parts(data, kv_manifest.MAGIC)
    real = read_manifest(b.manifest)
    doc = json.loads(real.header_bytes)
    change(doc)
    header = _canonical(doc)
    bad = tmp_path / "bad.kvm"
    bad.write_bytes(envelope.pack(kv_manifest.MAGIC, key, supplier.sign(kv_manifest.PAYLOAD_TYPE, header), header)
                    + rest[len(real.header_bytes):])
    with pytest.raises(ManifestError, match=re.escape(words)) as caught:
        read_manifest(bad)
    assert str(bad) in str(caught.value) and "re-issue" in str(caught.value)
    before = platform.stats()
    with pytest.raises(ManifestError, match=re.escape(words)):
        platform.import_manifest(bad)
    assert platform.stats() == before


def test_a_truncated_or_resigned_manifest_is_refused(tmp_path: Path, supplier: Identity, supplier_store: Vault,
                                                     platform: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    data = b.manifest.read_bytes()
    bad = tmp_path / "bad.kvm"
    before = platform.stats()
    for n in (5, len(kv_manifest.MAGIC) + 50, len(kv_manifest.MAGIC) + envelope.FIXED.size + 10, len(data) - 1):
        bad.write_bytes(data[:n])
        with pytest.raises(ManifestError, match="truncated"):
            read_manifest(bad)
        bad.unlink()
    flipped = bytearray(data)
    flipped[len(kv_manifest.MAGIC) + 32 + 5] ^= 0x01  # a signature byte
    bad.write_bytes(bytes(flipped))
    with pytest.raises(BadSignatureError):
        read_manifest(bad)
    with pytest.raises(BadSignatureError):
        platform.import_manifest(bad)
    assert platform.stats() == before


class _NeverDecode:
    """Stands in for a module's decoder: the test fails if anything is decoded."""

    def decode(self, data: bytes) -> Any:
        raise AssertionError("a header field was read before its signature was checked")


def _altered_header(signed: bytes) -> bytes:
    """``signed`` with one byte of its header changed (a digit of the count), not signed again."""
    at = signed.index(b'"count":') + len(b'"count":')
    return signed[:at] + bytes([signed[at] ^ 0x01]) + signed[at + 1:]


def test_an_altered_header_is_refused_before_any_field_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               supplier: Identity, supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    data = b.manifest.read_bytes()
    signed = read_manifest(b.manifest).signed
    monkeypatch.setattr(kv_manifest, "_HEADER", _NeverDecode())
    with pytest.raises(BadSignatureError):
        kv_manifest.open_signed_header(_altered_header(signed), where="test")
    bad = tmp_path / "bad.kvm"
    bad.write_bytes(_altered_header(data))
    with pytest.raises(BadSignatureError):
        read_manifest(bad)
    # the bundle path
    doc = supplier_store.trace_bundle(b.keys[3])
    doc["manifest"] = base64.b64encode(_altered_header(base64.b64decode(doc["manifest"]))).decode()
    checks = check(doc, [supplier.public, supplier_store.engine_identity])
    assert checks[-1].name == "manifest signature" and not checks[-1].ok
    assert "signature does not verify" in checks[-1].detail


def test_a_stored_header_altered_after_signing_is_refused_by_audit_and_check(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    issue(supplier_store, supplier, tmp_path / "files", 20)

    def alter(txn: Any) -> None:
        key, value = next(iter(txn.items("manifests")))
        txn.put("manifests", bytes(key), _altered_header(bytes(value)))

    supplier_store.engine.store.write(alter)
    monkeypatch.setattr(kv_manifest, "_HEADER", _NeverDecode())
    with pytest.raises(StoreCorruptError, match="signature does not verify.*keyvault check"):
        supplier_store.audit()
    report = supplier_store.check()
    manifests = next(c for c in report["checks"] if c["check"] == "batches and manifests")
    assert not manifests["ok"] and "signature of its stored manifest does not verify" in manifests["detail"]


@pytest.mark.parametrize("what, change, words", [
    ("unknown field", lambda d: d.__setitem__("note", "x"), "unknown field `note`"),
    ("mistyped field", lambda d: d.__setitem__("at", str(d["at"])), "Expected `int`, got `str` - at `$.at`"),
    ("missing field", lambda d: d.pop("manifest"), "missing required field `manifest`"),
    ("mistyped nested field", lambda d: d["to"].__setitem__("public_key", 5),
     "Expected `str`, got `int` - at `$.to.public_key`"),
    ("a range of three numbers", lambda d: d.__setitem__("ranges", [[0, 1, 2]]), "at `$.ranges[0]`"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_a_signed_transfer_with_a_broken_field_is_refused(chain: Chain, what: str,
                                                          change: Callable[[dict[str, Any]], Any], words: str) -> None:
    hop = custody.read_transfer(_a_transfer(chain))
    doc = json.loads(hop.record)
    change(doc)
    record = _canonical(doc)
    data = envelope.pack(custody.TRANSFER_MAGIC, chain.dist_id.public_key,
                         chain.dist_id.sign(custody.TRANSFER_TYPE, record), record)
    with pytest.raises(CustodyError, match=re.escape(words)):
        custody.read_transfer(data, "custody hop 2")


def _a_transfer(chain: Chain) -> bytes:
    with chain.platform.engine.store.read() as txn:
        return bytes(next(v for k, v in txn.items("custody", b"T")))


def test_a_truncated_or_resigned_transfer_is_refused(chain: Chain) -> None:
    data = _a_transfer(chain)
    for n in (3, len(custody.TRANSFER_MAGIC) + 40, len(data) - 1):
        with pytest.raises(CustodyError, match="truncated"):
            custody.read_transfer(data[:n])
    with pytest.raises(CustodyError, match="extra bytes"):
        custody.read_transfer(data + b" ")
    flipped = bytearray(data)
    flipped[len(custody.TRANSFER_MAGIC) + 32 + 9] ^= 0x01
    with pytest.raises(BadSignatureError):
        custody.read_transfer(bytes(flipped))


@pytest.mark.parametrize("what, change, words", [
    ("unknown field", lambda d: d.__setitem__("note", "x"), "unknown field `note`"),
    ("mistyped field", lambda d: d.__setitem__("index", str(d["index"])), "Expected `int`, got `str` - at `$.index`"),
    ("missing field", lambda d: d.pop("checkpoint"), "missing required field `checkpoint`"),
    ("mistyped event", lambda d: d["events"][0].__setitem__("leaf", 7), "at `$.events[0].leaf`"),
    ("hash not lower-case hex", lambda d: d.__setitem__("commitment", d["commitment"].upper()), "at `$.commitment`"),
    ("duplicate field", None, "names field 'index' twice"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_a_bundle_with_a_broken_field_is_refused(tmp_path: Path, supplier: Identity, supplier_store: Vault,
                                                 what: str, change: Callable[[dict[str, Any]], Any],
                                                 words: str) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    doc = supplier_store.trace_bundle(b.keys[2])
    if change is None:  # a second "index" (JSON readers differ on which one wins)
        data = json.dumps(doc).replace('"index": 2,', '"index": 2, "index": 3,', 1).encode()
    else:
        change(doc)
        data = json.dumps(doc).encode()
    with pytest.raises(ProofError, match=re.escape(words)):
        bundle.read_bundle(data)
    checks = check(data, [supplier.public, supplier_store.engine_identity])
    assert [(c.name, c.ok) for c in checks] == [("bundle", False)] and words in checks[0].detail


@pytest.mark.parametrize("field_name, value", [("manifest", "%%%"), ("manifest", "S1ZNQU5JRkVTVDIK="),
                                               ("custody", ["%%%"])])
def test_a_bundle_value_not_in_canonical_base64_is_refused(tmp_path: Path, supplier: Identity, chain: Chain,
                                                           field_name: str, value: Any) -> None:
    doc = chain.platform.trace_bundle(chain.batch.serials[3])
    checks = check(dict(doc, **{field_name: value}), [supplier.public, chain.platform.engine_identity])
    failed = [c for c in checks if not c.ok]
    assert failed and "base64" in failed[0].detail and failed[0].name in ("manifest signature", "custody")


def test_a_truncated_bundle_is_refused(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    data = json.dumps(supplier_store.trace_bundle(b.keys[2])).encode()
    for n in spread(len(data), 12):
        with pytest.raises(ProofError):
            bundle.read_bundle(data[:n])
        assert not passed(check(data[:n], [supplier.public, supplier_store.engine_identity]))


@pytest.mark.parametrize("what, change, words", [
    ("unknown field", lambda d: d.__setitem__("email", "x@example.com"), "unknown field `email`"),
    ("mistyped field", lambda d: d.__setitem__("name", 5), "Expected `str`, got `int` - at `$.name`"),
    ("missing field", lambda d: d.pop("fingerprint"), "missing required field `fingerprint`"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_a_public_identity_with_a_broken_field_is_refused(supplier: Identity, what: str,
                                                          change: Callable[[dict[str, Any]], Any], words: str) -> None:
    doc = json.loads(supplier.public.to_bytes())
    change(doc)
    with pytest.raises(IdentityError, match=re.escape(words)):
        PublicIdentity.from_bytes(json.dumps(doc).encode(), "acme.pub")


def test_a_secret_identity_with_a_broken_field_is_refused_without_its_secret(tmp_path: Path,
                                                                             supplier: Identity) -> None:
    path = supplier.save(tmp_path / "acme.key")
    good = json.loads(path.read_text())
    for change, words in ((lambda d: d.__setitem__("extra", 1), "unknown field `extra`"),
                          (lambda d: d.__setitem__("version", "1"), "at `$.version`"),
                          (lambda d: d.pop("secret_key"), "missing required field `secret_key`")):
        doc = dict(good)
        change(doc)
        bad = tmp_path / "bad.key"
        bad.unlink(missing_ok=True)
        bad.write_text(json.dumps(doc))
        bad.chmod(0o600)
        with pytest.raises(IdentityError, match=re.escape(words)) as caught:
            Identity.load(bad)
        assert good["secret_key"] not in str(caught.value)
    bad.unlink()
    bad.write_text(path.read_text()[:-30])
    bad.chmod(0o600)
    with pytest.raises(IdentityError, match="cannot be read") as caught:
        Identity.load(bad)
    assert good["secret_key"] not in str(caught.value)


def test_a_rotation_with_a_broken_field_or_signature_is_refused(supplier: Identity) -> None:
    _, rotation = supplier.rotate()
    doc = json.loads(rotation.to_bytes())
    for change, words in ((lambda d: d.__setitem__("extra", 1), "unknown field `extra`"),
                          (lambda d: d.__setitem__("record", 5), "Expected `str`, got `int` - at `$.record`"),
                          (lambda d: d.pop("new_signature"), "missing required field `new_signature`")):
        bad = dict(doc)
        change(bad)
        with pytest.raises(IdentityError, match=re.escape(words)):
            Rotation.from_bytes(json.dumps(bad).encode(), "acme.rot")
    with pytest.raises(IdentityError, match="truncated"):
        Rotation.from_bytes(rotation.to_bytes()[:-20], "acme.rot")
    bad = dict(doc, old_signature=flip_b64(doc["old_signature"], 3))
    with pytest.raises(BadSignatureError, match="OLD key's signature"):
        Rotation.from_bytes(json.dumps(bad).encode(), "acme.rot")


def test_writers_bytes_read_back_identically(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    """What the writers produce decodes, and the dict views equal what json.loads gives (same keys, order, values)."""
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    m = read_manifest(b.manifest)
    assert m.header == json.loads(m.header_bytes) and list(m.header) == list(json.loads(m.header_bytes))
    hop = custody.make_transfer(supplier, "Dist Co", Identity.generate("Dist Co").public_key, b.batch.id, m.id,
                                m.count, ((0, 10),), m.id, now_ms())
    assert hop.doc == json.loads(hop.record) and list(hop.doc) == list(json.loads(hop.record))
    assert _canonical(hop.doc) == hop.record
