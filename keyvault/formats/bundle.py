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
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BadSignatureError, CustodyError, ProofError
from . import merkle
from .checkpoint import Verifier, open_note
from .custody import Transfer, check_chain, contains, read_transfer
from .events import parse_leaf
from .identity import PublicIdentity, fingerprint, supplier_id, verify_signature
from .keyformat import serial_text
from .manifest import manifest_id

FORMAT = "keyvault/bundle/v1"
MANIFEST_TYPE = "keyvault/manifest/v2"
_MANIFEST_MAGIC = b"KVMANIFEST2\n"
_FIXED = struct.Struct(">32s64sI")


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
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return fail("bundle", "not a keyvault trace bundle (keyvault trace --bundle writes one)")
        serial_name, index = str(doc["serial"]), doc["index"]
        signed = base64.b64decode(doc["manifest"], validate=True)
        commitment = bytes.fromhex(doc["commitment"])
        manifest_proof = [bytes.fromhex(h) for h in doc["manifest_proof"]]
        custody_files = [base64.b64decode(h, validate=True) for h in doc["custody"]]
        note = str(doc["checkpoint"]).encode("utf-8")
        events = [(e["index"], base64.b64decode(e["leaf"], validate=True), [bytes.fromhex(h) for h in e["proof"]])
                  for e in doc["events"]]
        status = doc["status"]["status"]
        salt = bytes.fromhex(doc["salt"]) if doc.get("salt") is not None else None
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(status, str):
            raise TypeError("index or status")
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        return fail("bundle", f"cannot be read ({exc.__class__.__name__}): it is damaged or not a bundle")
    pinned = {p.public_key: p for p in trusted}

    # 1. The manifest: signed by a pinned supplier, over the exact header bytes.
    header: dict[str, Any]
    try:
        if not signed.startswith(_MANIFEST_MAGIC) or len(signed) < len(_MANIFEST_MAGIC) + _FIXED.size:
            raise ProofError("not a signed manifest header")
        public_key, signature, length = _FIXED.unpack_from(signed, len(_MANIFEST_MAGIC))
        header_bytes = signed[len(_MANIFEST_MAGIC) + _FIXED.size:]
        if len(header_bytes) != length:
            raise ProofError("the header length does not match")
        verify_signature(public_key, MANIFEST_TYPE, header_bytes, signature, "the manifest")
        header = json.loads(header_bytes)
        count, root = header["count"], bytes.fromhex(header["merkle_root"])
        numbers = ((count, 1 << 25), (header["prefix_value"], 1 << 20), (header["batch_number"], 1 << 15))
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= top for n, top in numbers) or \
                not isinstance(header["batch"], str) or not isinstance(header["supplier"]["id"], str):
            raise ProofError("the signed manifest header is malformed")
    except (ProofError, BadSignatureError, ValueError, KeyError, TypeError, AttributeError, OverflowError,
            RecursionError) as exc:
        return fail("manifest signature", str(exc) or exc.__class__.__name__)
    supplier = pinned.get(public_key)
    if supplier is None:
        return fail("manifest signature", f"signed by {header.get('supplier', {}).get('name')!r} (fingerprint "
                                          f"{fingerprint(public_key)}), who is not among the trusted keys given")
    checks.append(Check("manifest signature", True, f"batch {header['batch']} signed by {supplier.name!r} "
                                                    f"(fingerprint {supplier.fingerprint})"))

    # 2. The key's commitment is leaf `index` of the manifest's tree, and (given the key) opens to it.
    try:
        merkle.verify_inclusion(commitment, index, count, manifest_proof, root)
        expected = serial_text((int(header["prefix_value"]) << 15 | int(header["batch_number"])) << 25 | index)
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
    for n, raw in enumerate(custody_files, 1):
        try:
            hop = read_transfer(raw, f"custody hop {n}")
            chain.append(hop)
            check_chain(public_key, manifest_id(header_bytes), count, chain)
            if not contains(hop.ranges, index):
                raise CustodyError(f"custody hop {n} does not move this key")
            checks.append(Check(f"custody hop {n}", True, f"{hop.doc['from']['name']!r} -> {hop.doc['to']['name']!r} "
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
    checks.append(replayed.check(status, doc["status"]))
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


def _opens(salt: bytes | None, header: dict[str, Any], index: int, commitment: bytes, material: bytes) -> Check:
    """The key opens the commitment: SHA-256(0x00 || kv1/commit || serial || salt || key)."""
    if salt is None:
        return Check("key opens commitment", False, "the bundle carries no salt (it was made from a serial); "
                                                    "make it with `keyvault trace KEY --bundle`")
    serial = (int(header["prefix_value"]) << 15 | int(header["batch_number"])) << 25 | index
    if not 0 <= serial < 1 << 64:
        return Check("key opens commitment", False, "the manifest names a serial out of range")
    leaf = b"kv1/commit" + serial.to_bytes(8, "big") + salt + material
    ok = merkle.leaf_hash(leaf) == commitment
    return Check("key opens commitment", ok, "the key given is the one committed to" if ok else
                 "the key given is not the one this manifest committed to")


class _Replay:
    """The key's status replayed from the events in the bundle."""

    def __init__(self, serial: str, header: dict[str, Any], index: int, hops: set[str]) -> None:
        self.serial = serial
        self.index = index
        self.hops = hops
        self.batch = header["batch"]
        self.supplier = header["supplier"]["id"]
        self.state = "active"
        self.order: str | None = None
        self.blocks: set[tuple[str, str]] = set()

    def add(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("redeem", "void"):
            if event["serial"] != self.serial:
                raise ProofError(f"a {kind} event about another key ({event['serial']})")
            if self.state != "active":
                raise ProofError(f"a second state change of this key ({kind} after {self.state}): exactly-once broken")
            self.state = "redeemed" if kind == "redeem" else "void"
            self.order = event.get("order_id")
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

    def check(self, status: str, claimed: dict[str, Any]) -> Check:
        if self.state == "redeemed":
            expected = {"redeemed", "accepted"}
        elif self.state == "void":
            expected = {"void"}
        elif self.blocks:
            expected = {"blacklisted"}
        else:
            expected = {"valid", "expired", "not_yet_valid"}
        ok = status in expected and (self.state != "redeemed" or claimed.get("order_id") == self.order)
        told = self.state + (f" by order {self.order}" if self.order else "") + (" and blacklisted" if self.blocks else "")
        return Check("status replayed from events", ok, f"events say {told}; the bundle says {status}")
