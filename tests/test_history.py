"""Complete histories: every event links to the previous event about each of its subjects, every checkpoint
commits to the subject index, and a bundle's verifier refuses a history with an event dropped, reordered or
grafted (docs/provenance.md, "Complete histories").

Each tampering test starts from a bundle that passes and changes one thing; each was accepted by the
verifier before links and the index existed.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Issued, issue
from keyvault import Identity, Vault, _fast
from keyvault._fast import _pure
from keyvault.errors import ProofError, StoreCorruptError, StoreError
from keyvault.formats import bundle, history
from keyvault.formats.checkpoint import Checkpoint, Verifier, open_note, sign
from keyvault.formats.events import NO_LINK, encode_links, parse_leaf, split_leaf
from keyvault.formats.identity import PublicIdentity
from keyvault.formats.keyformat import parse_serial
from keyvault.store.records import from_u64, u64

HISTORY_RULES = {"history-complete", "history-order", "index-proof"}


# -- helpers ---------------------------------------------------------------------------------------


def check(doc: dict[str, Any], trusted: list[PublicIdentity]) -> list[bundle.Check]:
    return bundle.verify(json.dumps(doc).encode(), trusted)


def lines(checks: list[bundle.Check]) -> list[str]:
    return [c.line() for c in checks]


def passed(checks: list[bundle.Check]) -> bool:
    return bool(checks) and all(c.ok for c in checks)


def failed_rules(checks: list[bundle.Check]) -> set[str]:
    return {c.name for c in checks if not c.ok}


def kinds(doc: dict[str, Any]) -> list[str]:
    return [parse_leaf(base64.b64decode(e["leaf"]))["type"] for e in doc["events"]]


def without(doc: dict[str, Any], kind: str, **status: Any) -> dict[str, Any]:
    """The bundle with every event of ``kind`` left out (and its status made to match, if given)."""
    events = [e for e in doc["events"] if parse_leaf(base64.b64decode(e["leaf"]))["type"] != kind]
    assert len(events) < len(doc["events"])
    return dict(doc, events=events, **({"status": dict(doc["status"], **status)} if status else {}))


@pytest.fixture
def story(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Iterator[tuple[Vault, Issued, list[Any]]]:
    """A store that issued 20 keys; the trusted keys to verify its bundles with."""
    b = issue(supplier_store, supplier, tmp_path / "files", 20)
    yield supplier_store, b, [supplier.public, supplier_store.engine_identity]


# -- the leaf format ------------------------------------------------------------------------------------


def test_version_2_leaves_carry_links_and_both_versions_parse() -> None:
    links = encode_links([(b"B" + u64(7), 3), (b"S" + b"0123456789abcdef", None)])
    leaf = _fast.event_leaf(9, bytes(32), _fast.KIND_ISSUE, 5, b'{"batch":"x"}', links)
    assert leaf[:9] == b"kv2/event"
    version, parsed, at = split_leaf(leaf)
    assert (version, parsed, leaf[at:]) == (2, [(b"B" + u64(7), 3), (b"S0123456789abcdef", None)], b'{"batch":"x"}')
    event = parse_leaf(leaf)
    assert event["links"][0]["previous"] == 3 and event["links"][1] == {"subject": "supplier 0123456789abcdef",
                                                                       "previous": None}
    old = _fast.event_leaf(9, bytes(32), _fast.KIND_ISSUE, 5, b'{"batch":"x"}', None)
    assert split_leaf(old) == (1, None, 58) and "links" not in parse_leaf(old)
    for cut in range(59, len(leaf) - len(b'{"batch":"x"}')):
        with pytest.raises(StoreCorruptError):
            split_leaf(leaf[:cut])


@pytest.mark.parametrize("count", [0, 1, 3, 50])
def test_change_leaves_with_links_are_the_same_in_the_core_and_the_specification(count: int) -> None:
    rng = random.Random(count)
    changes = [(rng.randrange(1 << 60), rng.choice((1, 2)), rng.randrange(1 << 44), f"ORD-{i}-é" * (i % 3))
               for i in range(count)]
    links = b"".join(u64(rng.choice((NO_LINK, rng.randrange(1000)))) for _ in changes)
    pure = _pure.ledger_leaves(1000, bytes(range(32)), changes, links)
    assert _fast.ledger_leaves(1000, bytes(range(32)), changes, links) == pure
    for (key, leaf), (serial, _, _, text), i in zip(pure[0], changes, range(count)):
        version, parsed, at = split_leaf(leaf)
        link = int.from_bytes(links[8 * i:8 * i + 8], "big")
        assert version == 2 and parsed == [(b"K" + u64(serial), None if link == NO_LINK else link)]
        assert leaf[at:] == u64(serial) + text.encode()
    with pytest.raises(ValueError):
        _fast.ledger_leaves(0, bytes(32), changes + [(1, 1, 0, "x")], links)


# -- the index --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 1000)), max_size=60),
       st.lists(st.integers(0, 45), max_size=10))
def test_index_proofs_of_presence_and_absence(updates: list[tuple[int, int]], asked: list[int]) -> None:
    latest = {history.subject_key(b"K" + u64(s)): v for s, v in updates}
    root = history.root_of(latest)
    for s in asked + [s for s, _ in updates[:5]]:
        subject = b"K" + u64(s)
        proof = history.IndexProof(**history.prove(latest, subject))
        assert history.verify_proof(root, subject, proof) == latest.get(history.subject_key(subject))
        # A leaf proves nothing about any other subject, and no other answer verifies.
        if proof.latest is not None:
            with pytest.raises(ProofError):
                history.verify_proof(root, b"K" + u64(s + 1000), proof)
        forged = history.IndexProof(proof.subject, None if proof.latest is not None else 7, proof.siblings, None)
        with pytest.raises(ProofError):
            history.verify_proof(root, subject, forged)
        if proof.siblings:
            bent = list(proof.siblings)
            bent[-1] = bytes(32).hex() if bent[-1] != bytes(32).hex() else "11" * 32
            with pytest.raises(ProofError):
                history.verify_proof(root, subject, history.IndexProof(proof.subject, proof.latest, bent,
                                                                       proof.other))


def test_a_faked_absence_is_refused() -> None:
    latest = {history.subject_key(b"K" + u64(s)): s + 10 for s in range(30)}
    root = history.root_of(latest)
    subject = b"K" + u64(4)
    real = history.IndexProof(**history.prove(latest, subject))
    assert real.latest == 14
    # Absent by an empty subtree, or by another subject's leaf: neither leads to the root.
    for other in [None, *[(k.hex(), v) for k, v in list(latest.items())[:10] if k != history.subject_key(subject)]]:
        with pytest.raises(ProofError):
            history.verify_proof(root, subject, history.IndexProof(real.subject, None, real.siblings, other))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["redeem", "void", "block key", "lift key", "block batch",
                                           "lift batch", "checkpoint"]), st.integers(0, 7)), max_size=25))
def test_the_stored_index_is_the_one_the_log_implies(tmp_path_factory: pytest.TempPathFactory,
                                                     ops: list[tuple[str, int]]) -> None:
    """Random event sequences: after each checkpoint the stored root equals the root recomputed from the log,
    every stored node hashes its children, and every subject's proof verifies under the signed checkpoint."""
    base = tmp_path_factory.mktemp("index")
    supplier = Identity.generate("Acme Games")
    with Vault.init(base / "store") as vault:
        b = issue(vault, supplier, base / "files", 8)
        blocked: set[tuple[str, str]] = set()
        for op, n in ops:
            key, serial = b.keys[n], b.serials[n]
            if op in ("redeem", "void"):
                try:
                    vault.redeem(key, f"ORD-{n}") if op == "redeem" else vault.void(key, "refund")
                except Exception:
                    pass
            elif op == "checkpoint":
                vault.checkpoint()
            else:
                verb, level = op.split()
                target = serial if level == "key" else b.batch.id
                if verb == "block" and (level, target) not in blocked:
                    vault.blacklist.add(level, target, "lost")
                    blocked.add((level, target))
                elif verb == "lift" and (level, target) in blocked:
                    vault.blacklist.lift(level, target, "found")
                    blocked.discard((level, target))
        note = vault.checkpoint().encode()
        engine = vault.engine
        with engine.store.read() as txn:
            origin = bundle.engine_origin(vault.engine_identity.public_key)
            checkpoint = open_note(note, origin, [Verifier(origin, vault.engine_identity.public_key)])
            size = checkpoint.size
            root = engine.log.index.root_at(txn, size)
            assert root == history.root_of(engine.log.index.scan(txn, size)) == history.index_root(checkpoint)
            stored, stored_root = engine.log.index.state(txn)
            assert stored <= size and stored_root == history.root_of(engine.log.index.scan(txn, stored))
            engine.log.index.verify(txn)
            for serial in b.serials:
                subject = b"K" + u64(parse_serial(serial))
                proof = history.IndexProof(**history.encode_proof(subject,
                                                                  *engine.log.index.proof(txn, subject, size)))
                assert history.verify_proof(root, subject, proof) == engine.log.index.scan(txn, size).get(
                    history.subject_key(subject))
        for n in range(8):
            doc = vault.trace_bundle(b.serials[n])
            checks = check(doc, [supplier.public, vault.engine_identity])
            assert passed(checks), lines(checks)


# -- bundles: what the verifier now refuses ----------------------------------------------------------------


def test_a_full_history_passes_and_says_so(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.blacklist.add("batch", b.batch.id, "audit")
    vault.blacklist.lift("batch", b.batch.id, "audit done")
    vault.redeem(b.keys[0], "ORD-0")
    checks = check(vault.trace_bundle(b.serials[0]), trusted)
    assert passed(checks), lines(checks)
    complete = [c.detail for c in checks if c.name == "history-complete"]
    assert len(complete) == 3 and any("all 3 events" in d for d in complete), complete


def test_a_dropped_redeem_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.redeem(b.keys[0], "ORD-0")
    doc = vault.trace_bundle(b.serials[0])
    checks = check(without(doc, "redeem", status="valid", order_id=None), trusted)
    assert "history-complete" in failed_rules(checks), lines(checks)
    assert failed_rules(checks) <= HISTORY_RULES  # every event left is real: only completeness catches it


def test_a_dropped_void_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.void(b.keys[3], "refund")
    checks = check(without(vault.trace_bundle(b.serials[3]), "void", status="valid"), trusted)
    assert failed_rules(checks) == {"history-complete"}, lines(checks)


def test_a_dropped_batch_blacklist_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.blacklist.add("batch", b.batch.id, "stolen")
    checks = check(without(vault.trace_bundle(b.serials[1]), "blacklist", status="valid"), trusted)
    assert failed_rules(checks) == {"history-complete"}, lines(checks)
    assert any("batch" in c.detail for c in checks if not c.ok)


def test_a_dropped_supplier_blacklist_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.blacklist.add("supplier", b.batch.supplier, "fraud")
    checks = check(without(vault.trace_bundle(b.serials[1]), "blacklist", status="valid"), trusted)
    assert failed_rules(checks) == {"history-complete"}, lines(checks)


def test_a_dropped_custody_hop_and_its_transfer_are_refused(tmp_path: Path,
                                                            story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    dist = Identity.generate("Dist Co")
    vault.send_lot(b.supplier, b.batch.id, dist.public, manifest=b.manifest, out=tmp_path / "lot.kvl",
                   ranges="0-9")
    doc = vault.trace_bundle(b.serials[2])
    assert len(doc["custody"]) == 1 and "transfer" in kinds(doc)
    assert passed(check(doc, trusted))
    checks = check(dict(without(doc, "transfer"), custody=[]), trusted)
    assert failed_rules(checks) == {"history-complete"}, lines(checks)


def test_a_blacklist_and_its_lift_reordered_are_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.blacklist.add("key", b.serials[4], "lost")
    vault.blacklist.lift("key", b.serials[4], "found")
    doc = vault.trace_bundle(b.serials[4])
    events = doc["events"]
    assert kinds(doc)[-2:] == ["blacklist", "lift"]
    swapped = dict(doc, events=events[:-2] + [events[-1], events[-2]], status=dict(doc["status"], status="blacklisted"))
    checks = check(swapped, trusted)
    # The events rule refuses a list out of log order before the history rules run (either names the reorder).
    assert failed_rules(checks) & {"history-order", "events"}, lines(checks)


def test_an_event_grafted_from_another_keys_chain_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.redeem(b.keys[5], "ORD-5")
    vault.redeem(b.keys[6], "ORD-6")
    vault.checkpoint()
    mine, theirs = vault.trace_bundle(b.serials[5]), vault.trace_bundle(b.serials[6])
    assert mine["checkpoint"] == theirs["checkpoint"]
    mine_redeem = [e for e in mine["events"] if e not in theirs["events"]]
    graft = [e for e in theirs["events"] if e not in mine["events"]]
    assert len(mine_redeem) == len(graft) == 1
    # Their redeem instead of mine (and my status made to read like theirs): a real event, proven included.
    events = sorted([e for e in mine["events"] if e not in mine_redeem] + graft, key=lambda e: e["index"])
    checks = check(dict(mine, events=events, status=dict(mine["status"], order_id="ORD-6")), trusted)
    # Refused as an event about another key (the events rule) or as a chain with a hole (history-complete).
    assert failed_rules(checks) & {"history-complete", "events"}, lines(checks)
    assert any(w in c.detail for c in checks if not c.ok for w in ("grafted", "left out", "another key"))


def test_an_event_from_another_store_is_refused(tmp_path: Path, supplier: Identity,
                                                story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    with Vault.init(tmp_path / "other") as other:
        other.trust(supplier.public)
        other.import_manifest(b.manifest)
        other.redeem(b.keys[0], "ORD-X")
        foreign = [e for e in other.trace_bundle(b.serials[0])["events"]
                   if parse_leaf(base64.b64decode(e["leaf"]))["type"] == "redeem"]
    doc = vault.trace_bundle(b.serials[0])
    events = sorted(doc["events"] + foreign, key=lambda e: e["index"])
    checks = check(dict(doc, events=events, status=dict(doc["status"], status="redeemed", order_id="ORD-X")), trusted)
    assert not passed(checks), lines(checks)


def test_an_index_proof_for_another_subject_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.redeem(b.keys[0], "ORD-0")
    doc, other = vault.trace_bundle(b.serials[0]), vault.trace_bundle(b.serials[1])
    assert doc["checkpoint"] == other["checkpoint"]
    key_proof = other["index_proofs"][0]  # key 1 has no events: a true proof of its absence
    swapped = dict(doc, index_proofs=[dict(key_proof, subject=doc["index_proofs"][0]["subject"]),
                                      *doc["index_proofs"][1:]])
    checks = check(without(swapped, "redeem", status="valid", order_id=None), trusted)
    assert "index-proof" in failed_rules(checks), lines(checks)
    # Carried under its own subject, it is a proof the bundle has no use for, and the key's is missing.
    checks = check(dict(doc, index_proofs=[key_proof, *doc["index_proofs"][1:]]), trusted)
    assert "index-proof" in failed_rules(checks), lines(checks)


def test_a_forged_index_root_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.redeem(b.keys[0], "ORD-0")
    doc = vault.trace_bundle(b.serials[0])
    forged = without(doc, "redeem", status="valid", order_id=None)
    # An index with the redeem left out, put into the note in place of the signed root: the signature breaks.
    note = doc["checkpoint"]
    line = next(x for x in note.split("\n") if x.startswith(history.EXTENSION))
    latest = {history.subject_key(bytes.fromhex(p["subject"])): p["latest"] for p in doc["index_proofs"]
              if p["latest"] is not None}
    latest.pop(history.subject_key(bytes.fromhex(doc["index_proofs"][0]["subject"])))
    fake = history.extension_line(history.root_of(latest))
    checks = check(dict(forged, checkpoint=note.replace(line, fake)), trusted)
    assert "checkpoint signature" in failed_rules(checks), lines(checks)
    # A note with the index line taken out: the signature breaks too.
    checks = check(dict(forged, checkpoint=note.replace(line + "\n", "")), trusted)
    assert "checkpoint signature" in failed_rules(checks), lines(checks)
    # Signed by a key that is not the engine's: refused whatever it commits to.
    mallory = Identity.generate("Mallory")
    origin = bundle.engine_origin(mallory.public_key)
    opened = Checkpoint(origin, int(note.split("\n")[1]), base64.b64decode(note.split("\n")[2]), (fake,))
    checks = check(dict(forged, checkpoint=sign(opened, origin, mallory.signing_key).decode()), trusted)
    assert "checkpoint signature" in failed_rules(checks), lines(checks)


def test_a_chain_that_ends_before_the_indexs_latest_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.blacklist.add("key", b.serials[2], "lost")
    before = vault.trace_bundle(b.serials[2])
    vault.blacklist.lift("key", b.serials[2], "found")
    after = vault.trace_bundle(b.serials[2])
    # The new checkpoint, the old story (without the lift) and the old index proofs: the proofs are for another
    # root, and the new ones show the lift.
    stale = dict(after, events=[e for e in after["events"] if e["index"] in {x["index"] for x in before["events"]}],
                 index_proofs=before["index_proofs"], status=dict(after["status"], status="blacklisted"))
    checks = check(stale, trusted)
    assert "index-proof" in failed_rules(checks), lines(checks)
    checks = check(dict(stale, index_proofs=after["index_proofs"]), trusted)
    assert "history-complete" in failed_rules(checks), lines(checks)


def test_a_faked_absence_in_a_bundle_is_refused(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.void(b.keys[0], "refund")
    doc = vault.trace_bundle(b.serials[0])
    real = doc["index_proofs"][0]
    faked = dict(real, latest=None)
    checks = check(dict(without(doc, "void", status="valid"), index_proofs=[faked, *doc["index_proofs"][1:]]), trusted)
    assert "index-proof" in failed_rules(checks), lines(checks)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_single_removal_or_swap_is_refused(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    base = tmp_path_factory.mktemp("drop")
    supplier = Identity.generate("Acme Games")
    with Vault.init(base / "store") as vault:
        b = issue(vault, supplier, base / "files", 4)
        for op in data.draw(st.lists(st.sampled_from(["block key", "lift key", "block batch", "lift batch"]),
                                     max_size=6)):
            verb, level = op.split()
            target = b.serials[0] if level == "key" else b.batch.id
            try:
                (vault.blacklist.add if verb == "block" else vault.blacklist.lift)(level, target, "why")
            except Exception:
                pass
        if data.draw(st.booleans()):
            vault.redeem(b.keys[0], "ORD")
        doc = vault.trace_bundle(b.serials[0])
        trusted = [supplier.public, vault.engine_identity]
        assert passed(check(doc, trusted))
    events = doc["events"]
    n = data.draw(st.integers(0, len(events) - 1))
    if data.draw(st.booleans()) or len(events) < 2:
        changed = events[:n] + events[n + 1:]
    else:
        m = data.draw(st.integers(0, len(events) - 1).filter(lambda m: m != n))
        changed = list(events)
        changed[n], changed[m] = changed[m], changed[n]
    for status in ("valid", "blacklisted", "redeemed", doc["status"]["status"]):
        checks = check(dict(doc, events=changed, status=dict(doc["status"], status=status)), trusted)
        # Refused by the history rules, or first by the events rule (log order; the import event missing).
        assert failed_rules(checks) & (HISTORY_RULES | {"events"}), lines(checks)


# -- a store that began before links ------------------------------------------------------------------


def test_a_store_that_began_before_links_is_judged_from_its_first_linked_event(
        tmp_path: Path, supplier: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    from keyvault.engine import eventlog

    with monkeypatch.context() as old:  # what keyvault wrote before links: version 1 leaves, no index
        old.setattr(eventlog, "encode_links", lambda links: None)
        old.setattr(eventlog, "change_links", lambda txn, serials: None)
        old.setattr(eventlog.EventLog, "extensions", lambda self, txn, size: ())
        with Vault.init(tmp_path / "store") as vault:
            b = issue(vault, supplier, tmp_path / "files", 10)
            vault.redeem(b.keys[0], "ORD-0")
            vault.blacklist.add("key", b.serials[1], "lost")
            vault.checkpoint()
    with Vault.open(tmp_path / "store") as vault:
        trusted = [supplier.public, vault.engine_identity]
        with vault.engine.store.read() as txn:
            assert vault.engine.log.index.state(txn) is None
        # The first bundle after the upgrade: a marker event lets a checkpoint commit to the index.
        doc = vault.trace_bundle(b.serials[0])
        checks = check(doc, trusted)
        assert passed(checks), lines(checks)
        assert any("predate links" in c.detail for c in checks if c.name == "history-complete")
        vault.blacklist.lift("key", b.serials[1], "found")
        doc = vault.trace_bundle(b.serials[1])
        checks = check(doc, trusted)
        assert passed(checks), lines(checks)
        lift = parse_leaf(base64.b64decode(doc["events"][-1]["leaf"]))
        assert lift["type"] == "lift" and lift["links"][0]["previous"] == doc["events"][-2]["index"]
        assert any("predate links" in c.detail for c in checks if c.name == "history-complete")
        # Dropping the old, unlinked blacklist is caught: the lift links to it.
        checks = check(without(doc, "blacklist"), trusted)
        assert "history-complete" in failed_rules(checks), lines(checks)
        report = vault.check()
        assert report["ok"], report
        with vault.engine.store.read() as txn:
            size, root = vault.engine.log.index.state(txn)
            assert root == history.root_of(vault.engine.log.index.scan(txn, size))


def test_a_bundle_over_a_checkpoint_without_the_index_says_completeness_is_unproven(
        story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    doc = vault.trace_bundle(b.serials[0])
    engine = vault.engine.log.engine
    note = doc["checkpoint"]
    head = note.split("\n")
    origin = head[0]
    time_line = next(line for line in head if line.startswith("time "))
    bare = sign(Checkpoint(origin, int(head[1]), base64.b64decode(head[2]), (time_line,)), origin,
                engine.signing_key).decode()
    checks = check(dict(doc, checkpoint=bare), trusted)
    assert failed_rules(checks) == {"history-complete"}, lines(checks)
    assert "predates the subject index" in next(c.detail for c in checks if not c.ok)


@pytest.mark.parametrize("since", [False, True])
@pytest.mark.parametrize("how", ["short inner", "flipped inner", "flipped bucket", "cut bucket", "bucket swapped"])
def test_the_store_check_finds_a_damaged_index_node(story: tuple[Vault, Issued, list[Any]], how: str, since: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Damage to the stored tree is found, also when newer checkpoints were signed from it and the events since
    (``since``: the check then also replays them to the newest checkpoint's root)."""
    vault, b, trusted = story
    monkeypatch.setattr(vault.engine.log.index, "PERSIST_EVENTS", 1)  # (every checkpoint stores the tree)
    vault.redeem_many([(k, f"ORD-{n}") for n, k in enumerate(b.keys[:40])])  # (more subjects than one bucket holds)
    vault.checkpoint()
    monkeypatch.setattr(vault.engine.log.index, "PERSIST_EVENTS", 10_000)
    if since:
        vault.blacklist.add("batch", b.batch.id, "lost")
        vault.checkpoint()
        with vault.engine.store.read() as txn:
            assert vault.engine.log.index.state(txn)[0] < from_u64(txn.last_key("checkpoints"))
    assert vault.check()["ok"]
    engine = vault.engine

    def damage(txn: Any) -> None:
        tag = b"N" if "inner" in how else b"L"
        key, value = next((k, bytes(v)) for k, v in txn.items("subjects", b"#") if v[:1] == tag and len(v) > 41)
        if how == "short inner":
            value = b"N" + bytes(32)
        elif how.startswith("flipped"):
            value = value[:-1] + bytes([value[-1] ^ 1])
        elif how == "cut bucket":
            value = value[:-40]
        else:  # two entries in the wrong order: the same hash pairs, read otherwise
            value = value[:1] + value[41:81] + value[1:41] + value[81:]
        txn.put("subjects", key, value)

    engine.store.write(damage)
    report = vault.check()
    assert not report["ok"] and any("subject index" in c["detail"] for c in report["checks"] if not c["ok"])


def test_the_store_check_finds_an_event_listed_under_the_wrong_subject(story: tuple[Vault, Issued, list[Any]]) -> None:
    vault, b, trusted = story
    vault.blacklist.add("key", b.serials[0], "lost")
    vault.checkpoint()
    assert vault.check()["ok"]

    def move(txn: Any) -> None:
        key = next(k for k, _ in txn.items("subjects", b"K"))
        txn.delete("subjects", key)
        txn.put("subjects", b"K" + u64(parse_serial(b.serials[1])) + key[-8:], b"")

    vault.engine.store.write(move)
    report = vault.check()
    assert not report["ok"]
    assert any("link" in c["detail"] for c in report["checks"] if not c["ok"]), report


# -- the stored tree, what each process keeps in memory, and the layout of older stores --------------------


def _old_layout(latest: dict[bytes, int], depth: int = 0, prefix: bytes = bytes(32),
                out: dict[bytes, bytes] | None = None) -> dict[bytes, bytes]:
    """The records keyvault kept before buckets: one per node (``L`` || key || u64 for a lone subject)."""
    out = {} if out is None else out
    where = b"#" + depth.to_bytes(2, "big") + prefix
    if len(latest) == 1:
        [(key, value)] = latest.items()
        out[where] = b"L" + key + u64(value)
        return out
    right = bytearray(prefix)
    right[depth // 8] |= 0x80 >> depth % 8
    hashes = []
    for side, at in ((0, prefix), (1, bytes(right))):
        half = {k: v for k, v in latest.items() if history.bit(k, depth) == side}
        if half:
            _old_layout(half, depth + 1, at, out)
        record = out.get(b"#" + (depth + 1).to_bytes(2, "big") + at)
        hashes.append(history.EMPTY if not half else history.leaf_hash(record[1:33], from_u64(record[33:]))
                      if record[:1] == b"L" else history.node_hash(record[1:33], record[33:]))
    out[where] = b"N" + hashes[0] + hashes[1]
    return out


def _index_records(vault: Vault) -> dict[bytes, bytes]:
    with vault.engine.store.read() as txn:
        return {bytes(k): bytes(v) for k, v in txn.items("subjects", b"#")} | \
            {b"meta": bytes(txn.get("meta", b"index") or b"")}


def test_an_index_kept_one_record_per_node_is_read_then_rebuilt_in_buckets(
        story: tuple[Vault, Issued, list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose index predates buckets: checked, proven from and signed over as it is; its next checkpoint
    rebuilds it in buckets in that checkpoint's transaction (one that aborts leaves the old index whole)."""
    vault, b, trusted = story
    engine = vault.engine
    monkeypatch.setattr(engine.log.index, "PERSIST_EVENTS", 1)
    vault.redeem_many([(k, f"ORD-{n}") for n, k in enumerate(b.keys[:18])])
    vault.checkpoint()

    def downgrade(txn: Any) -> None:
        size, root = engine.log.index.state(txn)
        latest = engine.log.index.scan(txn, size)
        for key, _ in list(txn.items("subjects", b"#")):
            txn.delete("subjects", key)
        txn.put_many("subjects", sorted(_old_layout(latest).items()))
        txn.put("meta", b"index", u64(size) + root)

    engine.store.write(downgrade)
    engine.log.index._keep(None)  # (what this process remembers is of the new layout: a new process)
    old = _index_records(vault)
    assert len(old[b"meta"]) == 40 and sum(v[:1] == b"N" for v in old.values()) > 10
    report = vault.check()
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    doc = vault.trace_bundle(b.serials[3])
    assert passed(check(doc, trusted))

    def aborted(txn: Any) -> None:
        engine.log.index.catch_up(txn, txn.head().log_size)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        engine.store.write(aborted)
    assert _index_records(vault) == old
    vault.blacklist.add("key", b.serials[19], "lost")
    vault.checkpoint()
    new = _index_records(vault)
    assert len(new[b"meta"]) == 41 and len(new) < len(old)
    with engine.store.read() as txn:
        size, root = engine.log.index.state(txn)
        assert size == txn.head().log_size and root == history.root_of(engine.log.index.scan(txn, size))
    assert all(len(v) == 65 or (len(v) - 1) % 40 == 0 and len(v) <= 1 + 16 * 40 for k, v in new.items() if k != b"meta")
    assert vault.check()["ok"]
    assert passed(check(vault.trace_bundle(b.serials[19]), trusted))


def test_every_process_computes_the_signed_root_and_forgets_what_an_aborted_checkpoint_left(
        story: tuple[Vault, Issued, list[Any]]) -> None:
    """Checkpoints between stores of the tree: another process (a fresh SubjectIndex) replays the same roots; a
    checkpoint whose transaction aborted leaves this process remembering events that never were, which it
    must not use once different events take their place."""
    from keyvault.engine.subjects import SubjectIndex

    vault, b, trusted = story
    engine = vault.engine
    index = engine.log.index
    for n in range(3):
        vault.redeem_many([(k, f"ORD-{n}-{i}") for i, k in enumerate(b.keys[n * 5:n * 5 + 5])])
        note = vault.checkpoint().encode()
        with engine.store.read() as txn:
            size = from_u64(txn.last_key("checkpoints"))
            stored, _ = index.state(txn)
            assert stored < size  # (the tree is not stored at every checkpoint)
            signed = history.index_root(open_note(note, bundle.engine_origin(vault.engine_identity.public_key),
                                                  [Verifier(bundle.engine_origin(vault.engine_identity.public_key),
                                                            vault.engine_identity.public_key)]))
            assert SubjectIndex().root_at(txn, size) == index.root_at(txn, size) == signed == \
                history.root_of(index.scan(txn, size))

    def aborted(txn: Any) -> None:
        engine.log.append(txn, "blacklist", 1, {"level": "key"}, [b"K" + u64(parse_serial(b.serials[17]))])
        engine.log.maybe_checkpoint(txn, 2, force=True)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        engine.store.write(aborted)
    with engine.store.read() as txn:
        assert index._pending is not None and index._pending.size == txn.head().log_size + 1  # (what it left)
    vault.blacklist.add("key", b.serials[18], "lost")
    vault.checkpoint()
    with engine.store.read() as txn:
        size = txn.head().log_size
        latest = index.scan(txn, size)
        assert history.subject_key(b"K" + u64(parse_serial(b.serials[17]))) not in latest
        assert index.root_at(txn, size) == SubjectIndex().root_at(txn, size) == history.root_of(latest)
    assert vault.check()["ok"]
    assert passed(check(vault.trace_bundle(b.serials[18]), trusted))
    with engine.store.read() as txn, pytest.raises(StoreError, match="sign a checkpoint"):
        index.root_at(txn, index.state(txn)[0] - 1)  # (before the stored tree: not computable from it)


def test_a_process_that_replayed_many_events_stores_the_tree(story: tuple[Vault, Issued, list[Any]],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The events since the stored tree are replayed by each process that starts: one that replayed more than a
    quarter of PERSIST_EVENTS stores the tree at its checkpoint; one that followed them itself waits."""
    from keyvault.engine.subjects import SubjectIndex

    vault, b, trusted = story
    log = vault.engine.log
    monkeypatch.setattr(SubjectIndex, "PERSIST_EVENTS", 40)

    def stored_and_size() -> tuple[int, int]:
        with vault.engine.store.read() as txn:
            return log.index.state(txn)[0], txn.head().log_size

    vault.checkpoint()
    vault.redeem_many([(k, f"ORD-{n}") for n, k in enumerate(b.keys[:12])])
    vault.checkpoint()
    stored, size = stored_and_size()
    assert size - stored >= 12  # (this process followed them: under 40, nothing stored)
    monkeypatch.setattr(log, "index", SubjectIndex())  # a process that starts now
    vault.blacklist.add("key", b.serials[15], "lost")
    vault.checkpoint()
    stored, size = stored_and_size()
    assert stored == size
    assert vault.check()["ok"]
