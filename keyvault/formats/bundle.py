"""Trace bundles: everything needed to check one key's story offline, and the checker.

A bundle (JSON, format ``keyvault/bundle/v1``) holds the key's commitment
and its inclusion proof under the manifest's signed Merkle root, the signed
manifest header, each custody hop, and each event about the key with its
inclusion proof under a checkpoint signed by the store's engine key. The salt
is included only when the bundle was made from the key itself (whoever holds
the key may see its salt; a trace by serial must not help anyone test
guesses). :func:`verify` checks it with nothing but pinned public keys.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ..errors import BadSignatureError, CustodyError, KeyvaultError, ProofError
from . import merkle
from .checkpoint import Verifier, open_note
from .custody import Transfer, check_chain, contains, read_transfer
from .events import parse_leaf
from .identity import PublicIdentity, fingerprint, supplier_id
from .keyformat import serial_text
from .manifest import ManifestHeader, open_signed_header
from .typed import decode

FORMAT = "keyvault/bundle/v1"


class BundleStatus(msgspec.Struct, frozen=True):
    """The key's status as the store saw it (a ``--json`` result: other result fields are allowed)."""

    status: str
    order_id: str | None = None


class BundleEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event about the key: its index in the log, its leaf bytes, its inclusion proof."""

    index: int
    leaf: bytes  # base64 in the file
    proof: list[str]  # hex hashes


class Bundle(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A trace bundle as written by :func:`build` (``salt`` may be null or absent)."""

    format: Literal["keyvault/bundle/v1"]
    serial: str
    index: int
    generated_at: str
    status: BundleStatus
    manifest: bytes  # base64 of the signed manifest header
    commitment: str  # hex; the hex strings are read by bytes.fromhex, which checks them as it converts
    salt: str | None = None
    manifest_proof: list[str]
    custody: list[bytes]  # base64 of each transfer file
    checkpoint: str
    events: list[BundleEvent]


_BUNDLE = msgspec.json.Decoder(Bundle)


def read_bundle(data: bytes) -> Bundle:
    """A bundle's JSON decoded strictly (nothing verified yet), or ProofError saying what is wrong."""
    return decode(_BUNDLE, data, what="the trace bundle", error=ProofError,
                  fix="make it again with `keyvault trace KEY --bundle`")


@dataclass(frozen=True)
class Check:
    """One line of a bundle's verification: what was checked, whether it held, and in plain words."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``PASS name: detail`` or ``FAIL name: detail``."""
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def engine_origin(public_key: bytes) -> str:
    """The checkpoint origin (and signer name) of the store whose engine key this is."""
    return f"keyvault/{supplier_id(public_key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build(*, serial: int, index: int, manifest_signed: bytes, commitment: bytes, salt: bytes | None,
          manifest_proof: list[bytes], custody: list[Transfer], checkpoint: bytes, events: list[tuple[int, bytes,
          list[bytes]]], status: dict[str, Any], generated_at: str) -> dict[str, Any]:
    """A bundle from its parts (the store gathers them: Vault.trace_bundle)."""
    return {
        "format": FORMAT,
        "serial": serial_text(serial),
        "index": index,
        "generated_at": generated_at,
        "status": status,
        "manifest": _b64(manifest_signed),
        "commitment": commitment.hex(),
        "salt": salt.hex() if salt is not None else None,
        "manifest_proof": [h.hex() for h in manifest_proof],
        "custody": [_b64(hop.data) for hop in custody],
        "checkpoint": checkpoint.decode("utf-8"),
        "events": [{"index": i, "leaf": _b64(leaf), "proof": [h.hex() for h in proof]} for i, leaf, proof in events],
    }


def verify(data: bytes, trusted: Sequence[PublicIdentity], key_material: bytes | None = None) -> list[Check]:
    """Check a bundle with pinned public keys only; one Check per step, failures included (never raises
    for a bad bundle). ``key_material`` (a key's canonical form) also checks that the key opens the commitment."""
    checks: list[Check] = []

    def fail(name: str, detail: str) -> list[Check]:
        checks.append(Check(name, False, detail))
        return checks

    try:
        doc = read_bundle(data)
    except ProofError as exc:
        if "$.format" in str(exc) or "field `format`" in str(exc) or "Expected `object`" in str(exc):
            return fail("bundle", "not a keyvault trace bundle (keyvault trace --bundle writes one)")
        return fail("bundle", f"cannot be read: {exc}")
    serial_name, index, status = doc.serial, doc.index, doc.status.status
    try:
        commitment = bytes.fromhex(doc.commitment)
        manifest_proof = [bytes.fromhex(h) for h in doc.manifest_proof]
        events = [(e.index, e.leaf, [bytes.fromhex(h) for h in e.proof]) for e in doc.events]
        salt = bytes.fromhex(doc.salt) if doc.salt is not None else None
    except ValueError:
        return fail("bundle", "cannot be read: a hash or salt is not hex; make it again with "
                              "`keyvault trace KEY --bundle`")
    note = doc.checkpoint.encode("utf-8")
    pinned = {p.public_key: p for p in trusted}

    # 1. The manifest: signed by a pinned supplier, over the exact header bytes (checked before any field is read).
    try:
        opened = open_signed_header(doc.manifest, where="the manifest")
    except KeyvaultError as exc:
        return fail("manifest signature", str(exc))
    public_key, header = opened.public_key, opened.header
    count, root = header.count, bytes.fromhex(header.merkle_root)
    supplier = pinned.get(public_key)
    if supplier is None:
        return fail("manifest signature", f"signed by {header.supplier.name!r} (fingerprint "
                                          f"{fingerprint(public_key)}), who is not among the trusted keys given")
    checks.append(Check("manifest signature", True, f"batch {header.batch} signed by {supplier.name!r} "
                                                    f"(fingerprint {supplier.fingerprint})"))

    # 2. The key's commitment is leaf `index` of the manifest's tree, and (given the key) opens to it.
    try:
        merkle.verify_inclusion(commitment, index, count, manifest_proof, root)
        expected = serial_text((header.prefix_value << 15 | header.batch_number) << 25 | index)
        if expected != serial_name:
            raise ProofError(f"the bundle names serial {serial_name}, but leaf {index} of this batch is {expected}")
        checks.append(Check("key in manifest", True, f"serial {serial_name} is key {index} of {count:,} "
                                                     f"({len(manifest_proof)} proof hashes)"))
    except ProofError as exc:
        fail("key in manifest", str(exc))
    if key_material is not None:
        checks.append(_opens(salt, header, index, commitment, key_material))

    # 3. Each custody hop: signed by the holder, spending the hop before, covering this key.
    chain: list[Transfer] = []
    for n, raw in enumerate(doc.custody, 1):
        try:
            hop = read_transfer(raw, f"custody hop {n}")
            chain.append(hop)
            check_chain(public_key, opened.id, count, chain)
            if not contains(hop.ranges, index):
                raise CustodyError(f"custody hop {n} does not move this key")
            checks.append(Check(f"custody hop {n}", True, f"{hop.fields.sender.name!r} -> {hop.fields.to.name!r} "
                                                          f"(fingerprint {fingerprint(hop.recipient)}), signed"))
        except (CustodyError, BadSignatureError) as exc:
            fail(f"custody hop {n}", str(exc))
            break

    # 4. The checkpoint, signed by a pinned engine key; every event included under it. A key that signed
    #    the manifest or a transfer in this bundle is a party to the story, never its log's witness.
    parties = {public_key} | {hop.sender for hop in chain} | {hop.recipient for hop in chain}
    verifiers = [Verifier(engine_origin(k), k) for k in pinned if k not in parties]
    try:
        origin = note.split(b"\n", 1)[0].decode("utf-8", "replace")
        checkpoint = open_note(note, None, verifiers)
        checks.append(Check("checkpoint signature", True, f"{origin}, {checkpoint.size:,} events, signed by a "
                                                          "trusted engine key"))
    except ProofError as exc:
        return fail("checkpoint signature", str(exc))
    replayed = _Replay(serial_name, header, index, {hop.id for hop in chain})
    for event_index, leaf, proof in events:
        name = f"event {event_index}"
        try:
            merkle.verify_inclusion(merkle.leaf_hash(leaf), event_index, checkpoint.size, proof, checkpoint.root)
            event = parse_leaf(leaf)
            if event["index"] != event_index:
                raise ProofError(f"the leaf says it is event {event['index']}")
            replayed.add(event)
            checks.append(Check(name, True, f"{event['type']} included under the checkpoint"))
        except (ProofError, ValueError, KeyError, TypeError) as exc:
            fail(name, str(exc) or exc.__class__.__name__)
    checks.append(replayed.check(status, doc.status))
    return checks


def check_consistent(old_note: bytes, new_note: bytes, prove: Callable[[int, int], list[bytes]],
                     trusted: Sequence[PublicIdentity]) -> Check:
    """Whether a newer checkpoint extends an older one (both signed by a trusted engine key)."""
    verifiers = [Verifier(engine_origin(p.public_key), p.public_key) for p in trusted]
    name = "log consistent with the earlier checkpoint"
    try:
        old = open_note(old_note, None, verifiers)
        new = open_note(new_note, old.origin, verifiers)
        if old.size > new.size:
            raise ProofError(f"the log now holds {new.size:,} events, fewer than the {old.size:,} signed earlier: "
                             "it was rolled back")
        merkle.verify_consistency(old.size, new.size, old.root, new.root, prove(old.size, new.size))
    except ProofError as exc:
        return Check(name, False, f"{exc}; the store was rolled back or forked since that checkpoint")
    return Check(name, True, f"{old.size:,} events then, {new.size:,} now: the log only grew")


def _opens(salt: bytes | None, header: ManifestHeader, index: int, commitment: bytes, material: bytes) -> Check:
    """The key opens the commitment: SHA-256(0x00 || kv1/commit || serial || salt || key)."""
    if salt is None:
        return Check("key opens commitment", False, "the bundle carries no salt (it was made from a serial); "
                                                    "make it with `keyvault trace KEY --bundle`")
    serial = (header.prefix_value << 15 | header.batch_number) << 25 | index
    if not 0 <= serial < 1 << 64:
        return Check("key opens commitment", False, "the manifest names a serial out of range")
    leaf = b"kv1/commit" + serial.to_bytes(8, "big") + salt + material
    ok = merkle.leaf_hash(leaf) == commitment
    return Check("key opens commitment", ok, "the key given is the one committed to" if ok else
                 "the key given is not the one this manifest committed to")


class _Replay:
    """The key's status replayed from the events in the bundle."""

    def __init__(self, serial: str, header: ManifestHeader, index: int, hops: set[str]) -> None:
        self.serial = serial
        self.index = index
        self.hops = hops
        self.batch = header.batch
        self.supplier = header.supplier.id
        self.state = "active"
        self.order: str | None = None
        self.blocks: set[tuple[str, str]] = set()
        self.held = False  # a checkout hold of this key was logged (a verify may then answer held)
        self.uses = 0  # uses of a count-limited key logged

    def add(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("redeem", "void"):
            if event["serial"] != self.serial:
                raise ProofError(f"a {kind} event about another key ({event['serial']})")
            if self.state != "active":
                raise ProofError(f"a second state change of this key ({kind} after {self.state}): exactly-once broken")
            self.state = "redeemed" if kind == "redeem" else "void"
            self.order = event.get("order_id")
        elif kind in ("hold", "confirm", "release", "expire", "use"):
            if event["serial"] != self.serial:
                raise ProofError(f"a {kind} event about another key ({event['serial']})")
            self.held |= kind == "hold"
            self.uses += kind == "use"
        elif kind == "transfer":
            if event["batch"] != self.batch:
                raise ProofError("a transfer event of another batch")
            moved = any(first <= self.index < end for first, end in event["ranges"])
            if moved and event["transfer"] not in self.hops:
                raise ProofError(f"the log records transfer {event['transfer'][:16]} of this key, but the bundle's "
                                 "custody chain leaves it out")
        elif kind in ("blacklist", "lift"):
            target = (event["level"], event["target"])
            if target not in (("key", self.serial), ("batch", self.batch), ("supplier", self.supplier)):
                raise ProofError(f"a {kind} event about another {event['level']}")
            (self.blocks.add if kind == "blacklist" else self.blocks.discard)(target)

    def check(self, status: str, claimed: BundleStatus) -> Check:
        if self.state == "redeemed" and status == "exhausted" and self.uses:
            expected = {"exhausted"}  # the last use of a count-limited key: its redeem event closes it
        elif self.state == "redeemed":
            expected = {"redeemed", "accepted"}
        elif self.state == "void":
            expected = {"void"}
        elif self.blocks:
            expected = {"blacklisted"}
        else:
            expected = {"valid", "expired", "not_yet_valid"} | ({"held"} if self.held else set())
        ok = status in expected and (self.state != "redeemed" or status == "exhausted" or claimed.order_id == self.order)
        told = self.state + (f" by order {self.order}" if self.order else "") + (" and blacklisted" if self.blocks else "")
        return Check("status replayed from events", ok, f"events say {told}; the bundle says {status}")
