"""Write the bundle tampering vectors: ``python tests/vectors/make_vectors.py [OUT_DIR]``.

Every vector is a trace bundle (``NAME.bundle``, the exact bytes a verifier reads)
and a spec (``NAME.json``): what it shows, the ``keyvault verify-bundle`` options
it is checked with (public identity files under ``keys/``), and ``expect``:
``pass``, or ``fail`` with the ``rule`` whose FAIL line must come first.

The bundles are built here from docs/provenance.md (not by a store), from keys
derived from fixed seeds and fixed times, so every byte is the same on every
run (Ed25519 signatures are deterministic): ``tests/test_vectors.py`` checks
that the files in the repository are exactly what this script writes, and runs
the CLI on each. A vector whose expected outcome depends on the clock is dated
far enough in the past or future to keep it for centuries.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing

from keyvault.formats import merkle
from keyvault.formats import cosignature, history
from keyvault.formats.events import encode_links
from keyvault.formats.checkpoint import Checkpoint, sign, split_note
from keyvault.formats.custody import TRANSFER_MAGIC, TRANSFER_TYPE, Transfer, make_transfer, read_transfer
from keyvault.formats.envelope import pack
from keyvault.formats.identity import Identity, default_prefix, supplier_id
from keyvault.formats.keyformat import batch_text, key_material, make_batch, prefix_text, serial_text
from keyvault.formats.manifest import MAGIC, PAYLOAD_TYPE, manifest_id

HERE = Path(__file__).resolve().parent / "bundles"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: when the vectors' store did everything
FUTURE = 7_258_118_400_000  # 2200-01-01T00:00:00Z
COUNT = 16
KINDS = {"supplier": 1, "issue": 2, "import": 3, "redeem": 4, "void": 5, "blacklist": 6, "lift": 7, "transfer": 8,
         "trust": 9}


def identity(label: str, name: str, prefix: int | None = None) -> Identity:
    """An identity whose key derives from a fixed seed (never use such keys outside tests)."""
    key = nacl.signing.SigningKey(hashlib.sha256(b"keyvault test vectors/" + label.encode()).digest())
    return Identity(name=name, prefix=default_prefix(bytes(key.verify_key)) if prefix is None else prefix,
                    signing_key=key)


ACME = identity("acme", "Acme Games")
EVIL = identity("evil", "Evil Corp")
DIST = identity("dist", "Dist Co")
PLAT = identity("plat", "Plat Co")
ENGINE = identity("engine", "keyvault-engine")
ENGINE2 = identity("engine2", "keyvault-engine")
WITNESS = identity("witness", "witness.example")
MALLORY = identity("mallory", "Mallory")

#: keys/NAME.pub: (identity, roles it declares, signed by its key; () declares none).
PUBLIC = {
    "acme": (ACME, ()), "acme-supplier": (ACME, ("supplier",)), "evil": (EVIL, ("supplier",)),
    "dist": (DIST, ("distributor",)), "engine": (ENGINE, ("engine",)), "engine2": (ENGINE2, ("engine",)),
    "witness": (WITNESS, ("witness",)), "acme-as-engine": (ACME, ("engine",)),
}


def code(index: int) -> str:
    """Key ``index`` of the vectors' batch: an imported code."""
    return f"GCVECTOR{index:04d}QWERTY"


def origin(engine: Identity) -> str:
    return f"keyvault/{engine.id}"


def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def jdump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Story:
    """What happened to the batch in the vectors' store; :meth:`bundle` tells it for one key."""

    index: int = 2
    signer: Identity = ACME  # who signs the manifest
    supplier_name: str = "Acme Games"  # the name the header gives
    prefix: int = ACME.prefix
    valid_until: int | None = None
    redeem: str | None = None  # the order that redeemed the key
    void: str | None = None
    blacklist: list[tuple[str, str]] = field(default_factory=list)  # ("blacklist" | "lift", level)
    hops: int = 0  # custody hops: Acme -> Dist (0-7), Dist -> Plat (0-3)
    engine: Identity = ENGINE
    checkpoint_signer: Identity | None = None  # default: the engine
    checkpoint_origin: str | None = None  # default: the engine's
    signature_name: str | None = None  # default: the origin of the checkpoint's signer
    every_event: bool = False  # put the redeem of another key in the bundle too
    time_lines: tuple[str, ...] | None = None  # default: ("time T0+1h",)
    with_salt: bool = False
    witness: bool = False

    def header(self) -> tuple[bytes, list[bytes], list[bytes]]:
        """The signed header bytes, the salts and the commitments."""
        number = 0
        first = make_batch(self.prefix, number) << 25
        salts = [hashlib.sha256(b"salt" + u64(i)).digest()[:16] for i in range(COUNT)]
        commitments = [merkle.leaf_hash(b"kv1/commit" + u64(first + i) + salts[i] + key_material(code(i)))
                       for i in range(COUNT)]
        fields = {
            "format": PAYLOAD_TYPE, "supplier": {"id": supplier_id(self.signer.public_key), "name": self.supplier_name,
                                                 "public_key": self.signer.public_key.hex()},
            "batch": batch_text(make_batch(self.prefix, number)), "batch_number": number,
            "prefix": prefix_text(self.prefix), "prefix_value": self.prefix, "product": "Game Card 50", "kind": "code",
            "count": COUNT, "valid_from": None, "valid_until": self.valid_until, "created_at": T0,
            "salt": "5a" * 16, "merkle_root": merkle.root(commitments).hex(), "previous": None,
            "body_length": 32 + COUNT * 64, "body_sha256": hashlib.sha256(b"the secret body").hexdigest(),
        }
        return jdump(fields), salts, commitments

    def bundle(self) -> dict[str, Any]:
        """The bundle a store that lived this story would write."""
        header, salts, commitments = self.header()
        signed = pack(MAGIC, self.signer.public_key, self.signer.sign(PAYLOAD_TYPE, header), header)
        mid = manifest_id(header)
        batch = json.loads(header)["batch"]
        serial = ((self.prefix << 15) << 25) | self.index
        sid = supplier_id(self.signer.public_key)
        chain: list[Transfer] = []
        if self.hops >= 1:
            chain.append(make_transfer(self.signer, DIST.name, DIST.public_key, batch, mid, COUNT, ((0, 8),), mid,
                                       T0 + 20_000))
        if self.hops >= 2:
            chain.append(make_transfer(DIST, PLAT.name, PLAT.public_key, batch, mid, COUNT, ((0, 4),), chain[0].id,
                                       T0 + 30_000))
        # The log: events about this key, its batch and its supplier, and others' events between them.
        log: list[tuple[str, int, bytes, bool, list[bytes]]] = []  # kind, at, body, in the bundle, subjects
        key_s, batch_s, supplier_s = b"K" + u64(serial), b"B" + u64(self.prefix << 15), b"S" + sid.encode()

        def event(kind: str, at: int, body: bytes, ours: bool = True, subjects: list[bytes] | None = None) -> None:
            log.append((kind, at, body, ours, subjects or []))

        event("trust", T0, jdump({"action": "pin", "name": self.supplier_name, "role": "supplier",
                                  "roles": ["supplier"], "public_key": self.signer.public_key.hex(),
                                  "fingerprint": self.signer.fingerprint}), subjects=[supplier_s])
        event("supplier", T0 + 1, jdump({"supplier": sid, "name": self.supplier_name,
                                         "prefix": prefix_text(self.prefix), "public_key": self.signer.public_key.hex()}), subjects=[supplier_s])
        event("trust", T0 + 2, jdump({"action": "pin", "name": "Someone Else", "role": "supplier",
                                      "roles": ["supplier"], "public_key": "00" * 32, "fingerprint": "0"}), False,
              [b"S" + supplier_id(bytes(32)).encode()])
        event("import", T0 + 3, jdump({"batch": batch, "supplier": sid, "supplier_name": self.supplier_name,
                                       "product": "Game Card 50", "count": COUNT, "kind": "code", "origin": "manifest",
                                       "manifest": mid, "merkle_root": json.loads(header)["merkle_root"],
                                       "previous": None}), subjects=[batch_s, supplier_s])
        for n, hop in enumerate(chain):
            event("transfer", T0 + 20_000 + n, jdump({"transfer": hop.id, "batch": batch, "previous": hop.previous,
                                                      "from": hop.doc["from"], "to": hop.doc["to"],
                                                      "ranges": [list(r) for r in hop.ranges]}),
                  subjects=[batch_s])
        event("redeem", T0 + 40_000, u64(serial + 1) + b"ORDER-OTHER", False, [b"K" + u64(serial + 1)])
        if self.redeem is not None:
            event("redeem", T0 + 50_000, u64(serial) + self.redeem.encode(), subjects=[key_s])
        if self.void is not None:
            event("void", T0 + 50_000, u64(serial) + self.void.encode(), subjects=[key_s])
        targets = {"key": serial_text(serial), "batch": batch, "supplier": sid}
        for n, (kind, level) in enumerate(self.blacklist):
            event(kind, T0 + 60_000 + n, jdump({"level": level, "target": targets[level], "reason": "vector"}),
                  subjects=[{"key": key_s, "batch": batch_s, "supplier": supplier_s}[level]])
        # Version 2 leaves: each names the previous event about each of its subjects (docs: Complete histories).
        leaves, previous, latest = [], bytes(32), {}
        for i, (kind, at, body, _, subjects) in enumerate(log):
            links = encode_links([(subject, latest.get(subject)) for subject in subjects])
            leaf = b"kv2/event" + u64(i) + previous + bytes([KINDS[kind]]) + u64(at) + links + body
            leaves.append(leaf)
            previous = merkle.leaf_hash(leaf)
            latest.update((subject, i) for subject in subjects)
        index = {history.subject_key(subject): i for subject, i in latest.items()}
        hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
        perfect = merkle.perfect_from_leaves(hashes)
        lines = (f"time {T0 + 3_600_000}",) if self.time_lines is None else self.time_lines
        lines = (*lines, history.extension_line(history.root_of(index)))
        name = origin(self.engine)
        signer = self.checkpoint_signer or self.engine
        checkpoint = Checkpoint(self.checkpoint_origin or name, len(leaves), merkle.root(hashes), lines)
        note = sign(checkpoint, self.signature_name or origin(signer), signer.signing_key)
        if self.witness:
            text, _ = split_note(note)
            note += cosignature.line(text, WITNESS.name, WITNESS.signing_key, (T0 + 3_600_000) // 1000)
        status = ("redeemed" if self.redeem is not None else "void" if self.void is not None
                  else "blacklisted" if self.blacklist and self.blacklist[-1][0] == "blacklist"
                  else "expired" if self.valid_until is not None and T0 + 3_600_000 >= self.valid_until else "valid")
        return {
            "format": "keyvault/bundle/v2",
            "serial": serial_text(serial),
            "index": self.index,
            "status": {"status": status, "order_id": self.redeem},
            "manifest": b64(signed),
            "commitment": commitments[self.index].hex(),
            "salt": salts[self.index].hex() if self.with_salt else None,
            "manifest_proof": [h.hex() for h in merkle.inclusion_proof(self.index, COUNT,
                                                                       merkle.perfect_from_leaves(commitments))],
            "custody": [b64(hop.data) for hop in chain],
            "checkpoint": note.decode(),
            "events": [{"index": i, "leaf": b64(leaves[i]), "proof": [h.hex() for h in
                                                                      merkle.inclusion_proof(i, len(leaves), perfect)]}
                       for i, (kind, _, _, ours, _) in enumerate(log) if ours or (self.every_event and kind == "redeem")],
            "index_proofs": [history.prove(index, subject) for subject in (key_s, batch_s, supplier_s)],
        }


BASE = ["--supplier", "keys/acme.pub", "--engine", "keys/engine.pub"]


@dataclass
class Vector:
    name: str
    description: str
    data: bytes
    args: list[str] = field(default_factory=lambda: list(BASE))
    rule: str | None = None  # None: expect pass

    def spec(self) -> dict[str, Any]:
        return {"description": self.description, "bundle": f"{self.name}.bundle", "args": self.args,
                "expect": "pass" if self.rule is None else "fail", "rule": self.rule}


def raw(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1) + "\n").encode()


def edited(story: Story, edit: Callable[[dict[str, Any]], None]) -> bytes:
    doc = copy.deepcopy(story.bundle())
    edit(doc)
    return raw(doc)


def flip_b64(text: str, pos: int) -> str:
    data = bytearray(base64.b64decode(text))
    data[pos] ^= 1
    return b64(bytes(data))


def resigned_manifest(doc: dict[str, Any], change: Callable[[dict[str, Any]], None], signer: Identity,
                      sign_original: bool = False) -> None:
    """Replace the bundle's manifest header by a changed one: signed by ``signer`` over the changed bytes,
    or (``sign_original``) carrying the signature of the original bytes."""
    signed = base64.b64decode(doc["manifest"])
    header = signed[len(MAGIC) + 32 + 64 + 4:]
    fields = json.loads(header)
    change(fields)
    new = jdump(fields)
    signature = signer.sign(PAYLOAD_TYPE, header if sign_original else new)
    doc["manifest"] = b64(pack(MAGIC, signer.public_key, signature, new))


def vectors() -> list[Vector]:
    plain, redeemed = Story(), Story(redeem="ORDER-1")
    out = [
        Vector("pass-valid", "A key never used, traced by its serial.", raw(plain.bundle())),
        Vector("pass-redeemed", "A redeemed key: the redeem event replays to the status and its order.",
               raw(redeemed.bundle())),
        Vector("pass-by-key", "A bundle made from the key carries its salt: checked with --key.",
               raw(Story(with_salt=True).bundle()), BASE + ["--key", code(2)]),
        Vector("pass-custody", "Two custody hops, Acme -> Dist Co -> Plat Co, each transfer event in the log.",
               raw(Story(hops=2).bundle())),
        Vector("pass-trust-roles", "Keys given with --trust, in the roles their files declare (signed).",
               raw(redeemed.bundle()), ["--trust", "keys/acme-supplier.pub", "--trust", "keys/engine.pub"]),
        Vector("pass-max-age", "A --max-age longer than the checkpoint's age.", raw(plain.bundle()),
               BASE + ["--max-age", "100000d"]),
        Vector("pass-witness", "A checkpoint cosigned by the witness required with --witness.",
               raw(Story(witness=True).bundle()), BASE + ["--witness", "keys/witness.pub"]),
        Vector("pass-expired", "A key whose batch ended before the checkpoint's time is expired.",
               raw(Story(valid_until=T0 + 1000).bundle())),
        Vector("pass-blacklist-lifted", "A batch blacklisted, then lifted: valid again.",
               raw(Story(blacklist=[("blacklist", "batch"), ("lift", "batch")]).bundle())),
        Vector("pass-blacklisted", "A supplier blacklisted: every key of it is blacklisted.",
               raw(Story(blacklist=[("blacklist", "supplier")]).bundle())),
    ]

    def fail(name: str, rule: str, description: str, data: bytes, args: list[str] | None = None) -> None:
        out.append(Vector(name, description, data, list(BASE) if args is None else args, rule))

    # -- any trusted key signing the log --------------------------------------------------------
    forged_log = Story(void="refund", checkpoint_signer=ACME, checkpoint_origin=origin(ENGINE),
                       signature_name=origin(ENGINE))
    fail("supplier-signs-log", "checkpoint signature",
         "The redeem turned into a void in a forged log, signed by the trusted supplier's key under the real "
         "engine's origin.", raw(forged_log.bundle()))
    fail("untrusted-signs-log", "checkpoint signature", "A checkpoint signed by a key nobody trusts.",
         raw(Story(checkpoint_signer=MALLORY, checkpoint_origin=origin(ENGINE), signature_name=origin(ENGINE)).bundle()))
    fail("engine-signs-other-origin", "checkpoint origin",
         "A second trusted engine signs, under its own name, a checkpoint naming the first engine's log.",
         raw(Story(checkpoint_signer=ENGINE2, checkpoint_origin=origin(ENGINE)).bundle()),
         BASE + ["--engine", "keys/engine2.pub"])
    fail("engine-key-as-supplier", "checkpoint signature",
         "The engine's key given only as a supplier: it may not vouch for a log.", raw(plain.bundle()),
         ["--supplier", "keys/acme.pub", "--supplier", "keys/engine.pub"])
    fail("supplier-key-as-engine", "manifest signer",
         "The supplier's key given only as an engine (a file declaring engine): it may not sign manifests.",
         raw(plain.bundle()), ["--trust", "keys/acme-as-engine.pub", "--engine", "keys/engine.pub"])
    fail("origin-line-swapped", "checkpoint signature",
         "The checkpoint's origin line changed after signing.",
         edited(plain, lambda d: d.__setitem__("checkpoint", d["checkpoint"].replace(
             origin(ENGINE), origin(ENGINE2), 1))))
    # -- stale evidence --------------------------------------------------------------------------
    fail("stale-checkpoint", "checkpoint age", "A genuine checkpoint older than --max-age allows.",
         raw(plain.bundle()), BASE + ["--max-age", "1d"])
    fail("future-checkpoint", "checkpoint age", "A checkpoint dated in the year 2200.",
         raw(Story(time_lines=(f"time {FUTURE}",)).bundle()))
    fail("checkpoint-without-time", "checkpoint age", "A checkpoint with no signed time line.",
         raw(Story(time_lines=()).bundle()))
    fail("checkpoint-two-times", "checkpoint age", "A checkpoint with two time lines.",
         raw(Story(time_lines=(f"time {T0}", f"time {FUTURE}")).bundle()))
    fail("checkpoint-time-leading-zero", "checkpoint age", "A time line that is not canonical decimal.",
         raw(Story(time_lines=(f"time 0{T0}",)).bundle()))
    # -- unbound fields: anything not signed, proven or recomputed is not in a bundle ---------------
    for name, where, value in [("generated-at", None, "not a date"), ("status-product", "product", "Other Game"),
                               ("status-redeemed-at", "redeemed_at", "2020-01-01T00:00:00.000Z"),
                               ("status-message", "message", "all good"), ("status-serial", "serial", "AAAA-000-00000"),
                               ("status-batch", "batch", "AAAA-000"), ("status-supplier", "supplier", "0" * 16),
                               ("status-supplier-name", "supplier_name", "Evil Corp")]:
        fail(f"unbound-{name}", "bundle", f"An unbound field ({where or 'generated_at'}) rides along.",
             edited(redeemed, lambda d, w=where, v=value: (d["status"] if w else d).__setitem__(w or "generated_at", v)))
    fail("expired-without-end", "status replayed from events", "'expired' claimed for a batch with no end date.",
         edited(plain, lambda d: d["status"].__setitem__("status", "expired")))
    fail("valid-claimed-after-expiry", "status replayed from events", "'valid' claimed for an expired batch.",
         edited(Story(valid_until=T0 + 1000), lambda d: d["status"].__setitem__("status", "valid")))
    fail("status-void-for-redeemed", "status replayed from events", "A redeemed key claimed void.",
         edited(redeemed, lambda d: d["status"].update(status="void", order_id=None)))
    fail("status-other-order", "status replayed from events", "The redeeming order changed.",
         edited(redeemed, lambda d: d["status"].__setitem__("order_id", "ORDER-2")))
    fail("status-unknown-word", "status replayed from events", "A status no replay can give.",
         edited(redeemed, lambda d: d["status"].__setitem__("status", "accepted")))
    fail("status-valid-blacklisted", "status replayed from events", "A blacklisted key claimed valid.",
         edited(Story(blacklist=[("blacklist", "key")]), lambda d: d["status"].__setitem__("status", "valid")))
    # -- manifests: prefixes, roles, names ---------------------------------------------------------
    fail("prefix-squatting", "manifest signer",
         "A trusted supplier (Evil Corp) issues a batch under Acme's prefix.",
         raw(Story(signer=EVIL, supplier_name="Evil Corp").bundle()),
         ["--supplier", "keys/acme.pub", "--supplier", "keys/evil.pub", "--engine", "keys/engine.pub"])
    fail("distributor-resigns-manifest", "manifest signer",
         "A key trusted only as a distributor re-signs Acme's manifest under Acme's name and prefix.",
         raw(Story(signer=DIST).bundle()), BASE + ["--trust", "keys/dist.pub"])
    fail("lookalike-supplier-name", "manifest signer",
         "Acme's key signs a header naming 'Acme Gam\u0435s' (a Cyrillic e).",
         raw(Story(supplier_name="Acme Gam\u0435s").bundle()))
    fail("manifest-signature-other-body", "manifest signature",
         "The header's product changed; the signature is over the original bytes.",
         edited(plain, lambda d: resigned_manifest(d, lambda f: f.__setitem__("product", "Other Game"), ACME, True)))
    fail("manifest-signed-by-untrusted", "manifest signer", "A manifest signed by an untrusted key (Mallory).",
         edited(plain, lambda d: resigned_manifest(d, lambda f: f["supplier"].update(
             id=MALLORY.id, public_key=MALLORY.public_key.hex()), MALLORY)))
    fail("manifest-truncated", "manifest signature", "The signed manifest cut short inside the public key.",
         edited(plain, lambda d: d.__setitem__("manifest", b64(base64.b64decode(d["manifest"])[:len(MAGIC) + 31]))))
    fail("manifest-bit-flip", "manifest signature", "One bit of the signed header flipped.",
         edited(plain, lambda d: d.__setitem__("manifest", flip_b64(d["manifest"], 150))))
    fail("manifest-not-canonical-base64", "manifest signature", "The manifest's base64 has non-zero padding bits.",
         edited(plain, lambda d: d.__setitem__("manifest", _not_canonical(d["manifest"]))))
    # -- the document itself -----------------------------------------------------------------------
    good = raw(redeemed.bundle())
    fail("duplicate-json-key", "bundle", "The status given twice; readers disagree on which one counts.",
         good.replace(b'"status": {', b'"status": {"status": "valid", "order_id": null},\n "status": {', 1))
    fail("unknown-field", "bundle", "An extra field.", edited(plain, lambda d: d.__setitem__("note", "trust me")))
    fail("old-format", "bundle", "A bundle of format v1.",
         edited(plain, lambda d: d.__setitem__("format", "keyvault/bundle/v1")))
    fail("uppercase-hex", "bundle", "The commitment in upper-case hex.",
         edited(plain, lambda d: d.__setitem__("commitment", d["commitment"].upper())))
    fail("short-proof-hash", "bundle", "A manifest proof hash of 31 bytes.",
         edited(plain, lambda d: d["manifest_proof"].__setitem__(0, d["manifest_proof"][0][:62])))
    fail("short-salt", "bundle", "A salt of 15 bytes.",
         edited(Story(with_salt=True), lambda d: d.__setitem__("salt", d["salt"][:30])))
    fail("negative-index", "bundle", "Index -1.", edited(plain, lambda d: d.__setitem__("index", -1)))
    fail("huge-index", "bundle", "Index 2**64.", edited(plain, lambda d: d.__setitem__("index", 2**64)))
    fail("float-index", "bundle", "Index 2.0.", edited(plain, lambda d: d.__setitem__("index", 2.0)))
    fail("index-as-text", "bundle", "Index \"2\".", edited(plain, lambda d: d.__setitem__("index", "2")))
    fail("truncated-json", "bundle", "The bundle cut in half.", good[:len(good) // 2])
    fail("not-utf8", "bundle", "A byte that is not UTF-8 in the serial.", good.replace(b"ORDER-1", b"ORDER-\xff", 1))
    fail("missing-field", "bundle", "No events field.", edited(plain, lambda d: d.pop("events")))
    # -- the key in its manifest -------------------------------------------------------------------
    fail("index-out-of-range", "key in manifest", "Index equal to the batch size.",
         edited(plain, lambda d: d.__setitem__("index", COUNT)))
    fail("serial-of-another-key", "key in manifest", "The serial of the next key.",
         edited(plain, lambda d: d.__setitem__("serial", serial_text(((ACME.prefix << 15) << 25) | 3))))
    fail("proof-one-short", "key in manifest", "The manifest proof without its last hash.",
         edited(plain, lambda d: d["manifest_proof"].pop()))
    fail("proof-empty", "key in manifest", "No manifest proof at all.",
         edited(plain, lambda d: d.__setitem__("manifest_proof", [])))
    fail("other-commitment", "key in manifest", "Another leaf's commitment.",
         edited(plain, lambda d: d.__setitem__("commitment", "11" * 32)))
    # -- salts and keys ----------------------------------------------------------------------------
    fail("wrong-key", "key opens commitment", "--key names another key.", raw(Story(with_salt=True).bundle()),
         BASE + ["--key", code(3)])
    fail("salt-without-key", "key opens commitment", "A salt nobody checks: the bundle was made from the key, "
         "and no --key was given.", raw(Story(with_salt=True).bundle()))
    # -- custody ----------------------------------------------------------------------------------
    two_hops = Story(hops=2)

    def forged_hop(d: dict[str, Any]) -> None:
        first = base64.b64decode(d["custody"][0])
        hop1 = read_transfer(first)
        forged = make_transfer(PLAT, PLAT.name, PLAT.public_key, hop1.fields.batch, hop1.manifest, COUNT,
                               ((0, 4),), hop1.id, T0 + 30_000)
        d["custody"][1] = b64(forged.data)

    fail("hop-by-non-holder", "custody", "Hop 2 signed by Plat Co, who did not hold the keys.",
         edited(two_hops, forged_hop))
    fail("hop-dropped", "events", "The log records a transfer of this key that the custody chain leaves out.",
         edited(two_hops, lambda d: d["custody"].pop()))
    fail("hop-bit-flip", "custody", "One bit of a transfer's record flipped.",
         edited(two_hops, lambda d: d["custody"].__setitem__(0, flip_b64(d["custody"][0], 140))))
    # -- events ------------------------------------------------------------------------------------
    fail("event-index-out-of-range", "events", "An event index beyond the checkpoint's tree size.",
         edited(redeemed, lambda d: d["events"][-1].__setitem__("index", 1000)))
    fail("events-out-of-order", "events", "Events listed out of log order.",
         edited(redeemed, lambda d: d["events"].reverse()))
    fail("event-twice", "events", "One event listed twice.",
         edited(redeemed, lambda d: d["events"].append(d["events"][-1])))
    fail("event-leaf-bit-flip", "events", "One bit of an event leaf flipped.",
         edited(redeemed, lambda d: d["events"][-1].__setitem__("leaf", flip_b64(d["events"][-1]["leaf"], 60))))
    fail("event-leaf-not-base64", "events", "An event leaf that is not base64.",
         edited(redeemed, lambda d: d["events"][-1].__setitem__("leaf", "%%%")))
    fail("import-event-dropped", "events", "Without its import event, the log never vouched for the batch.",
         edited(plain, lambda d: d["events"].pop(2)))
    batch_blocked = Story(blacklist=[("blacklist", "batch")])

    def unblocked(d: dict[str, Any]) -> None:
        d["events"].pop()
        d["status"].update(status="valid")

    def unredeemed(d: dict[str, Any]) -> None:
        d["events"].pop()
        d["status"].update(status="valid", order_id=None)

    fail("redeem-event-dropped", "history-complete", "The redeem event left out of a redeemed key's bundle, its "
         "status set back to valid: the key's index entry names it.",
         edited(redeemed, unredeemed))
    fail("batch-blacklist-dropped", "history-complete", "A batch blacklist left out, the key claimed valid: the "
         "batch's index entry names it.",
         edited(batch_blocked, unblocked))
    fail("index-proof-of-another-subject", "index-proof", "The key's index proof swapped for the batch's.",
         edited(redeemed, lambda d: d["index_proofs"].__setitem__(0, d["index_proofs"][1])))
    fail("index-proof-latest-moved", "index-proof", "The key's index proof claims an earlier latest event.",
         edited(redeemed, lambda d: d["index_proofs"][0].__setitem__("latest", 0)))

    fail("event-about-another-key", "events", "The redeem of another key, included under the same checkpoint.",
         raw(Story(redeem="ORDER-1", every_event=True).bundle()))
    fail("tree-size-zero", "events", "A genuine engine signs a checkpoint of an empty log.",
         edited(redeemed, lambda d: d.__setitem__("checkpoint", sign(Checkpoint(
             origin(ENGINE), 0, hashlib.sha256(b"").digest(), (f"time {T0}",)), origin(ENGINE),
             ENGINE.signing_key).decode())))
    fail("witness-missing", "witness cosignatures", "--witness required, but the checkpoint is not cosigned.",
         raw(plain.bundle()), BASE + ["--witness", "keys/witness.pub"])
    fail("checkpoint-char-changed", "checkpoint signature", "One character of the checkpoint's root changed.",
         edited(plain, lambda d: d.__setitem__("checkpoint", _change_root(d["checkpoint"]))))
    # -- found by the tampering suite (tests/test_tamper_suite.py) ------------------------------------
    fail("hex-trailing-newline", "bundle", "The commitment's hex followed by a newline (a lenient hex reader "
         "skips it).", edited(plain, lambda d: d.__setitem__("commitment", d["commitment"] + "\n")))
    fail("sibling-uppercase", "bundle", "An index proof's sibling in upper-case hex.",
         edited(plain, lambda d: _first_sibling(d, str.upper)))
    fail("sibling-with-space", "bundle", "An index proof's sibling with a space inside.",
         edited(plain, lambda d: _first_sibling(d, lambda h: h[:2] + " " + h[2:])))
    fail("index-proof-without-other", "bundle", "An index proof without its `other` field (it must be present, "
         "null or not).", edited(plain, lambda d: d["index_proofs"][0].pop("other")))
    fail("index-proofs-reordered", "index-proof", "The index proofs listed supplier, batch, key.",
         edited(redeemed, lambda d: d["index_proofs"].reverse()))
    fail("engine-signature-twice", "checkpoint signature", "The engine's signature line given twice: a key signs "
         "a note once.",
         edited(plain, lambda d: d.__setitem__("checkpoint", d["checkpoint"] + d["checkpoint"].split("\n\n")[1])))
    fail("signature-lines-101", "checkpoint signature", "A note with 101 signature lines.",
         edited(plain, lambda d: d.__setitem__("checkpoint", d["checkpoint"] + (
             "\u2014 someone " + b64(bytes(68)) + "\n") * 100)))
    fail("witness-cosignature-twice", "witness cosignatures", "The witness's cosignature line given twice.",
         edited(Story(witness=True), lambda d: d.__setitem__("checkpoint", d["checkpoint"] + d["checkpoint"].split(
             "\n\n")[1].split("\n")[1] + "\n")), BASE + ["--witness", "keys/witness.pub"])
    fail("witness-also-supplier", "witness cosignatures", "The witness's key also given as a supplier: whoever "
         "signs the story cannot witness it.", raw(Story(witness=True).bundle()),
         BASE + ["--witness", "keys/witness.pub", "--supplier", "keys/witness.pub"])
    fail("custody-loop", "custody", "A third hop gives the keys back to Dist Co, who held them before.",
         edited(two_hops, _loop))
    fail("hop-names-other-batch", "custody", "Acme's transfer names this manifest's id but another batch.",
         edited(Story(hops=1), _other_batch))
    fail("manifest-field-twice", "manifest signature", "The supplier signed a header naming `prefix` twice "
         "(readers disagree on which counts).", edited(plain, _header_twice))
    fail("transfer-field-twice", "custody", "Acme signed a transfer record naming `to` twice.",
         edited(Story(hops=1), _transfer_twice))
    fail("trusted-key-role-added", "trusted keys", "The engine's public file with the role supplier added by "
         "editing it (its roles signature no longer verifies).", raw(plain.bundle()),
         ["--supplier", "keys/acme.pub", "--trust", "keys/engine-role-added.pub"])
    return out


def _first_sibling(doc: dict[str, Any], change: Callable[[str], str]) -> None:
    proof = next(p for p in doc["index_proofs"] if any(c.isalpha() for s in p["siblings"] for c in s))
    n = next(i for i, s in enumerate(proof["siblings"]) if change(s) != s)
    proof["siblings"][n] = change(proof["siblings"][n])


def _loop(doc: dict[str, Any]) -> None:
    second = read_transfer(base64.b64decode(doc["custody"][1]))
    back = make_transfer(PLAT, DIST.name, DIST.public_key, second.fields.batch, second.manifest, COUNT, ((0, 4),),
                         second.id, T0 + 35_000)
    doc["custody"].append(b64(back.data))


def _other_batch(doc: dict[str, Any]) -> None:
    hop = read_transfer(base64.b64decode(doc["custody"][0]))
    renamed = make_transfer(ACME, DIST.name, DIST.public_key, "AAAA-000", hop.manifest, COUNT, hop.ranges,
                            hop.previous, hop.fields.at)
    doc["custody"][0] = b64(renamed.data)


def _header_twice(doc: dict[str, Any]) -> None:
    signed = base64.b64decode(doc["manifest"])
    header = signed[len(MAGIC) + 32 + 64 + 4:]
    twice = header.replace(b"{", b'{"prefix":"ZZZZ",', 1)
    doc["manifest"] = b64(pack(MAGIC, ACME.public_key, ACME.sign(PAYLOAD_TYPE, twice), twice))


def _transfer_twice(doc: dict[str, Any]) -> None:
    hop = read_transfer(base64.b64decode(doc["custody"][0]))
    twice = hop.record.replace(b"{", b'{"to":{"name":"Mallory","public_key":"' + MALLORY.public_key.hex().encode()
                               + b'"},', 1)
    doc["custody"][0] = b64(pack(TRANSFER_MAGIC, ACME.public_key, ACME.sign(TRANSFER_TYPE, twice), twice))


def _not_canonical(text: str) -> str:
    """The same bytes in base64 with padding bits set (a lenient decoder reads it; a strict one refuses it)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = text.rstrip("=")
    pad = len(text) - len(body)
    if pad == 0:
        return text[:-4] + " " + text[-4:]  # no padding to abuse: a space inside instead
    last = alphabet.index(body[-1]) | (0b1111 if pad == 2 else 0b11)
    return body[:-1] + alphabet[last] + "=" * pad


def _change_root(note: str) -> str:
    lines = note.split("\n")
    lines[2] = ("B" if lines[2][0] != "B" else "C") + lines[2][1:]
    return "\n".join(lines)


def write(target: Path) -> list[Path]:
    """Write every vector and the public identity files under ``target``; the paths written."""
    written = []
    (target / "keys").mkdir(parents=True, exist_ok=True)
    for name, (who, roles) in PUBLIC.items():
        public = who.public_with_roles(roles) if roles else who.public
        path = target / "keys" / f"{name}.pub"
        path.write_bytes(public.to_bytes())
        written.append(path)
    # The engine's file with a role added by editing it: its roles signature no longer verifies.
    doc = json.loads(ENGINE.public_with_roles(("engine",)).to_bytes())
    doc["roles"] = ["engine", "supplier"]
    path = target / "keys" / "engine-role-added.pub"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    written.append(path)
    for vector in vectors():
        (target / f"{vector.name}.bundle").write_bytes(vector.data)
        (target / f"{vector.name}.json").write_text(json.dumps(vector.spec(), indent=1, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
        written += [target / f"{vector.name}.bundle", target / f"{vector.name}.json"]
    return written


if __name__ == "__main__":
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    paths = write(out_dir)
    print(f"wrote {len(paths)} files to {out_dir}")
