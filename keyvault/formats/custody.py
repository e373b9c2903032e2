"""Chains of custody: signed transfer records, and lots sealed to their recipient.

A transfer moves index ranges of one batch from the current holder to the
next. It is signed by the holder and names the record it spends by id: the
manifest for the supplier's first hop, else the transfer that gave the holder
those keys. Two transfers spending overlapping ranges of the same record are
a double sale.

Transfer file (integers big-endian)::

    "KVTRANSFER1\\n" | signer public key (32) | signature (64) over PAE("keyvault/transfer/v1", record)
    | record length (4) | record (compact JSON, below)

Lot file: the lot's transfer chain and its manifest, sealed (libsodium sealed
box) to the recipient's key, and signed by the sender::

    "KVLOT1\\n" | sender public key (32) | recipient public key (32)
    | signature (64) over PAE("keyvault/lot/v1", recipient public key || sealed) | sealed

The sealed payload is: u32 number of transfers, then each transfer file as
u32 length + bytes (oldest first), then the manifest file's bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import nacl.exceptions
import nacl.public
import nacl.signing

from ..errors import BadSignatureError, CustodyError
from .envelope import open_envelope, pack
from .identity import Identity, verify_signature
from .typed import Hex32, decode

TRANSFER_MAGIC = b"KVTRANSFER1\n"
TRANSFER_TYPE = "keyvault/transfer/v1"
LOT_MAGIC = b"KVLOT1\n"
LOT_TYPE = "keyvault/lot/v1"
_LOT = struct.Struct(">32s32s64s")
_U32 = struct.Struct(">I")
_MAX_RECORD = 1 << 20
_MAX_RANGES = 4096
_AGAIN = "ask the sender for a fresh copy"

#: Index ranges of a batch: [first, end) pairs, sorted and disjoint.
Ranges = tuple[tuple[int, int], ...]


def transfer_id(record: bytes) -> str:
    """A transfer's identity: SHA-256 over its signed record under tag kv1/transfer-id, in hex."""
    return hashlib.sha256(b"kv1/transfer-id" + record).hexdigest()


def overlaps(a: Ranges, b: Ranges) -> bool:
    """True when two range lists share an index."""
    return any(x < y2 and x2 > y for x, x2 in a for y, y2 in b)


def covers(outer: Ranges, inner: Ranges) -> bool:
    """True when every index of ``inner`` is in ``outer``."""
    return all(any(x <= y and y2 <= x2 for x, x2 in outer) for y, y2 in inner)


def contains(ranges: Ranges, index: int) -> bool:
    """True when ``index`` is in one of the ranges."""
    return any(first <= index < end for first, end in ranges)


def parse_ranges(text: str, count: int) -> Ranges:
    """"0-999,5000-5999" (inclusive, indices in the batch) as sorted, disjoint [first, end) ranges."""
    out = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            a, b = int(first), int(last if sep else first)
        except ValueError:
            raise CustodyError(f"cannot read the range {part.strip()!r}: write FIRST-LAST with key indices, "
                               "like 0-999,5000-5999") from None
        out.append((a, b + 1))
    return check_ranges(out, count)


def check_ranges(ranges: Sequence[Sequence[int]], count: int) -> Ranges:
    """Ranges validated against a batch of ``count`` keys: sorted, disjoint, non-empty, inside the batch."""
    if not ranges or len(ranges) > _MAX_RANGES:
        raise CustodyError(f"a lot needs 1 to {_MAX_RANGES} index ranges")
    out = []
    for pair in ranges:
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
            raise CustodyError("a range is a pair of key indices")
        first, end = pair
        if not 0 <= first < end <= count:
            raise CustodyError(f"the range {first}-{end - 1} is not inside the batch (indices 0-{count - 1})")
        out.append((first, end))
    out.sort()
    if any(out[i][1] > out[i + 1][0] for i in range(len(out) - 1)):
        raise CustodyError("the ranges of a lot overlap one another; list each key once")
    return tuple(out)


class Party(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A holder a transfer names: its name and Ed25519 public key (hex)."""

    name: str
    public_key: Hex32


class TransferRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A transfer's signed record (docs/provenance.md), fields in the order the writer sorts them."""

    at: int
    batch: str
    count: Annotated[int, msgspec.Meta(gt=0)]
    format: Literal["keyvault/transfer/v1"]
    sender: Party = msgspec.field(name="from")
    manifest: Hex32
    previous: Hex32
    ranges: Annotated[list[tuple[int, int]], msgspec.Meta(min_length=1, max_length=_MAX_RANGES)]
    to: Party


_RECORD = msgspec.json.Decoder(TransferRecord)


@dataclass(frozen=True)
class Transfer:
    """A verified transfer record: its signature holds over ``record``, which parsed cleanly."""

    data: bytes  # the whole transfer file
    record: bytes
    fields: TransferRecord

    @property
    def doc(self) -> dict[str, Any]:
        """The record as a plain dict, equal to the signed JSON (a fresh copy, keys sorted as signed)."""
        doc: dict[str, Any] = msgspec.to_builtins(self.fields)
        doc["ranges"] = [list(r) for r in self.fields.ranges]  # to_builtins keeps the pairs as tuples
        return doc

    @property
    def id(self) -> str:
        """The transfer id (hex)."""
        return transfer_id(self.record)

    @property
    def sender(self) -> bytes:
        """The holder who signed it."""
        return bytes.fromhex(self.fields.sender.public_key)

    @property
    def recipient(self) -> bytes:
        """The next holder."""
        return bytes.fromhex(self.fields.to.public_key)

    @property
    def previous(self) -> str:
        """The id of the record it spends (a manifest id for a supplier's first hop)."""
        return self.fields.previous

    @property
    def manifest(self) -> str:
        """The manifest id of the batch it moves."""
        return self.fields.manifest

    @property
    def ranges(self) -> Ranges:
        """The index ranges it moves."""
        return tuple(self.fields.ranges)


def make_transfer(sender: Identity, recipient_name: str, recipient: bytes, batch: str, manifest: str, count: int,
                  ranges: Ranges, previous: str, at_ms: int) -> Transfer:
    """Sign a transfer of ``ranges`` of a batch from ``sender`` to ``recipient``."""
    doc = {"format": TRANSFER_TYPE, "batch": batch, "manifest": manifest, "count": count,
           "ranges": [list(r) for r in check_ranges(ranges, count)], "previous": previous, "at": at_ms,
           "from": {"name": sender.name, "public_key": sender.public_key.hex()},
           "to": {"name": recipient_name, "public_key": recipient.hex()}}
    record = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    signature = sender.sign(TRANSFER_TYPE, record)
    return read_transfer(pack(TRANSFER_MAGIC, sender.public_key, signature, record))


def read_transfer(data: bytes, what: str = "transfer") -> Transfer:
    """Verify a transfer file's signature over its exact record bytes, then decode the record strictly."""
    envelope = open_envelope(data, magic=TRANSFER_MAGIC, payload_type=TRANSFER_TYPE, max_body=_MAX_RECORD, what=what,
                             error=CustodyError, fix=_AGAIN)
    fields = decode(_RECORD, envelope.body, what=f"{what} is signed, but its record", error=CustodyError,
                    fix="its sender's keyvault wrote a bad record: ask them for a fresh copy")
    if fields.sender.public_key != envelope.public_key.hex():
        raise CustodyError(f"{what} is signed by a key its record does not name as `from`: a forged transfer; "
                           f"{_AGAIN}")
    try:
        check_ranges(fields.ranges, fields.count)
    except CustodyError as exc:
        raise CustodyError(f"{what} is signed, but its ranges are refused: {exc}; {_AGAIN}") from None
    return Transfer(bytes(data), envelope.body, fields)


def check_chain(supplier: bytes, manifest: str, count: int, chain: Sequence[Transfer],
                batch: str | None = None) -> None:
    """Each hop spends the one before: the first the manifest, signed by its supplier; each next one
    signed by the previous recipient, within the ranges it received, to a key that never held them in
    this chain (no loop); each names the manifest's ``batch`` when it is given. CustodyError names the
    broken hop."""
    held: Ranges = ((0, count),)
    holder, previous = supplier, manifest
    holders = {supplier}
    for n, hop in enumerate(chain, 1):
        if hop.manifest != manifest or hop.fields.count != count or batch not in (None, hop.fields.batch):
            raise CustodyError(f"custody hop {n} moves keys of another batch")
        if hop.previous != previous:
            raise CustodyError(f"custody hop {n} does not spend the record before it: the chain is broken")
        if hop.sender != holder:
            raise CustodyError(f"custody hop {n} is signed by {hop.fields.sender.name!r}, who did not hold "
                               "those keys: a forged transfer")
        if not covers(held, hop.ranges):
            raise CustodyError(f"custody hop {n} moves keys its sender never received")
        if hop.recipient in holders:
            raise CustodyError(f"custody hop {n} gives the keys to {hop.fields.to.name!r}, who held them earlier in "
                               "the chain: a loop (a chain names each holder once)")
        holders.add(hop.recipient)
        holder, previous, held = hop.recipient, hop.id, hop.ranges


def seal_lot(sender: Identity, recipient: bytes, chain: Sequence[Transfer], manifest_file: bytes) -> bytes:
    """A lot file: the chain and manifest sealed to ``recipient``, signed by ``sender``."""
    payload = bytearray(_U32.pack(len(chain)))
    for hop in chain:
        payload += _U32.pack(len(hop.data)) + hop.data
    payload += manifest_file
    box = nacl.public.SealedBox(nacl.signing.VerifyKey(recipient).to_curve25519_public_key())
    sealed = box.encrypt(bytes(payload))
    signature = sender.sign(LOT_TYPE, recipient + sealed)
    return LOT_MAGIC + _LOT.pack(sender.public_key, recipient, signature) + sealed


def open_lot(data: bytes, recipient: Identity, what: str = "lot") -> tuple[bytes, list[Transfer], bytes]:
    """(sender public key, transfer chain, manifest file bytes) of a lot sealed to ``recipient``.

    The sender's signature is checked before anything is decrypted or parsed.
    """
    if not data.startswith(LOT_MAGIC):
        raise CustodyError(f"{what} is not a keyvault lot (a .kvl file written by `keyvault lot send`)")
    if len(data) < len(LOT_MAGIC) + _LOT.size:
        raise CustodyError(f"{what} is truncated")
    sender, to, signature = _LOT.unpack_from(data, len(LOT_MAGIC))
    sealed = data[len(LOT_MAGIC) + _LOT.size:]
    verify_signature(sender, LOT_TYPE, to + sealed, signature, what)
    if to != recipient.public_key:
        raise CustodyError(f"{what} is sealed to another holder (not {recipient.name!r}); it cannot be opened here")
    try:
        box = nacl.public.SealedBox(recipient.signing_key.to_curve25519_private_key())
        payload = box.decrypt(sealed)
    except nacl.exceptions.CryptoError:
        raise BadSignatureError(f"{what} cannot be decrypted with {recipient.name!r}'s key: it is damaged") from None
    try:
        (n,) = _U32.unpack_from(payload)
        offset = _U32.size
        chain = []
        for i in range(n):
            (length,) = _U32.unpack_from(payload, offset)
            offset += _U32.size
            if offset + length > len(payload):
                raise CustodyError(f"{what}: transfer {i + 1} is truncated")
            chain.append(read_transfer(payload[offset:offset + length], f"{what}, transfer {i + 1}"))
            offset += length
    except struct.error:
        raise CustodyError(f"{what} is signed but its contents are truncated") from None
    if not chain:
        raise CustodyError(f"{what} holds no transfer record")
    if chain[-1].sender != sender or chain[-1].recipient != recipient.public_key:
        raise CustodyError(f"{what}: its last transfer is not from its sender to {recipient.name!r}")
    return sender, chain, payload[offset:]
