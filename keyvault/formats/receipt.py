"""Redeem receipts: a store's engine key vouching that a key was redeemed for an order (docs/provenance.md).

A receipt is one line of text, small enough for a QR code::

    KVR1.<base64url, no padding, of: payload || Ed25519 signature (64)>

    payload = u8 version (1) | u64 serial | u64 at ms | u64 event index | supplier id (8)
              | u8 length | supplier name (UTF-8) | u8 length | order id (UTF-8)

The signature is the engine key's, over DSSE PAE(``keyvault/receipt/v1``, payload): the same
pre-authentication encoding as every other signed record, under a type nothing but a store's
engine signs. The batch and the supplier's issuer prefix are parts of the serial. The signature is
checked before a byte of the payload is read.

An *upgraded* receipt (``keyvault receipt upgrade``) is JSON: the receipt, the redeem's event leaf,
its RFC 9162 inclusion proof and the signed checkpoint it is proven under, so a verifier can also
confirm the event in the store's log is that very redeem.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import msgspec
import nacl.exceptions
import nacl.signing

from ..clock import iso
from ..errors import BadSignatureError, ProofError
from . import merkle
from .checkpoint import Verifier, open_note
from .events import LEAF, TAGS, change_of
from .identity import pae, supplier_id
from .keyformat import batch_key, batch_text, prefix_of, prefix_text, serial_text
from .typed import decode, unb64url

PAYLOAD_TYPE = "keyvault/receipt/v1"
PROOF_FORMAT = "keyvault/receipt-proof/v1"
PREFIX = "KVR1."
VERSION = 1
_FIXED = struct.Struct(">BQQQ8s")  # version, serial, at ms, event index, supplier id
_SIGNATURE = 64
_MAX_RAW = _FIXED.size + 2 + 255 * 2 + _SIGNATURE
_REDEEMED = 1  # the state change_of gives a redeem
_FIX = "ask the platform that redeemed the key for the receipt again"


@dataclass(frozen=True)
class Receipt:
    """What a receipt says, once its signature verified: which key was redeemed, for which order, when."""

    serial: int
    at_ms: int
    index: int
    supplier_id: str
    supplier_name: str
    order_id: str

    @property
    def batch(self) -> str:
        """The batch id (part of the serial)."""
        return batch_text(batch_key(self.serial))

    @property
    def supplier_prefix(self) -> str:
        """The supplier's issuer prefix (part of the serial)."""
        return prefix_text(prefix_of(batch_key(self.serial)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"serial": serial_text(self.serial), "batch": self.batch,
                "supplier": {"id": self.supplier_id, "prefix": self.supplier_prefix, "name": self.supplier_name},
                "order_id": self.order_id, "redeemed_at": iso(self.at_ms), "event_index": self.index}


def _field(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ProofError(f"the {what} is {len(raw)} bytes in UTF-8; a receipt holds at most 255")
    return bytes((len(raw),)) + raw


def payload(receipt: Receipt) -> bytes:
    """The signed bytes of a receipt."""
    return (_FIXED.pack(VERSION, receipt.serial, receipt.at_ms, receipt.index, bytes.fromhex(receipt.supplier_id))
            + _field(receipt.supplier_name, "supplier name") + _field(receipt.order_id, "order id"))


def encode(body: bytes, signature: bytes) -> str:
    """The receipt's text: ``KVR1.`` and base64url (unpadded) of payload and signature."""
    return PREFIX + base64.urlsafe_b64encode(body + signature).rstrip(b"=").decode("ascii")


def make(receipt: Receipt, signing_key: nacl.signing.SigningKey) -> str:
    """A receipt's text, signed by ``signing_key`` (a store's engine key)."""
    body = payload(receipt)
    return encode(body, signing_key.sign(pae(PAYLOAD_TYPE, body)).signature)


def split(text: str) -> tuple[bytes, bytes]:
    """(payload, signature) of a receipt's text; only the framing is checked (ProofError)."""
    if not isinstance(text, str):
        raise ProofError("a receipt is text starting KVR1.")
    text = text.strip()
    if not text.startswith(PREFIX):
        if PREFIX.startswith(text):
            raise ProofError(f"the receipt is truncated; {_FIX}")
        raise ProofError(f"this is not a keyvault receipt (a receipt starts {PREFIX}); {_FIX}")
    encoded = text[len(PREFIX):]
    try:
        raw = unb64url(encoded, max_bytes=_MAX_RAW)
    except ValueError as exc:
        raise ProofError(f"the receipt {exc}; copy it whole, or {_FIX}") from None
    if len(raw) < _FIXED.size + 2 + _SIGNATURE:
        raise ProofError(f"the receipt is truncated; {_FIX}")
    return raw[:-_SIGNATURE], raw[-_SIGNATURE:]


def _parse(body: bytes) -> Receipt:
    """The fields of a payload whose signature verified."""
    version, serial, at_ms, index, sid = _FIXED.unpack_from(body)
    if version != VERSION:
        raise ProofError(f"the receipt is of version {version}; this keyvault reads version {VERSION}: upgrade it")
    rest = body[_FIXED.size:]
    texts = []
    for what in ("supplier name", "order id"):
        if not rest or len(rest) < 1 + rest[0]:
            raise ProofError(f"the receipt's {what} is cut short; {_FIX}")
        raw, rest = rest[1:1 + rest[0]], rest[1 + rest[0]:]
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProofError(f"the receipt's {what} is not UTF-8; {_FIX}") from None
    if rest:
        raise ProofError(f"the receipt has extra bytes after its order id; {_FIX}")
    return Receipt(serial, at_ms, index, sid.hex(), texts[0], texts[1])


def open_receipt(text: str, engine_key: bytes) -> Receipt:
    """The receipt in ``text`` once the engine key ``engine_key`` is found to have signed it.

    Framing problems raise ProofError; a signature that does not verify (altered, or signed by another
    key: a supplier's key never makes a receipt) raises BadSignatureError.
    """
    body, signature = split(text)
    try:
        nacl.signing.VerifyKey(engine_key).verify(pae(PAYLOAD_TYPE, body), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        raise BadSignatureError("the receipt's signature does not verify with the engine key given: it was "
                                "altered, or it was not made by the store whose engine key you gave; check you "
                                "have that store's engine.pub") from None
    return _parse(body)


# -- upgraded receipts: the receipt with the inclusion proof of its event under a signed checkpoint -----


class ReceiptProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An upgraded receipt (JSON): the receipt, its event's leaf (base64), the proof (hex), the checkpoint note."""

    format: str
    receipt: str
    leaf: str
    proof: list[str]
    checkpoint: str


_PROOF = msgspec.json.Decoder(ReceiptProof)


def build_proof(receipt: str, leaf: bytes, proof: list[bytes], note: bytes) -> dict[str, Any]:
    """An upgraded receipt's JSON document from its parts (the store gathers them)."""
    return {"format": PROOF_FORMAT, "receipt": receipt, "leaf": base64.b64encode(leaf).decode("ascii"),
            "proof": [h.hex() for h in proof], "checkpoint": note.decode("utf-8")}


def encode_proof(doc: dict[str, Any]) -> bytes:
    """An upgraded receipt's file bytes (indented JSON, one newline at the end)."""
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def engine_origin(public_key: bytes) -> str:
    """The checkpoint origin (and signer name) of the store whose engine key this is."""
    return f"keyvault/{supplier_id(public_key)}"


def open_proof(data: bytes, engine_key: bytes) -> tuple[Receipt, int]:
    """An upgraded receipt checked whole: (the receipt, the size of the checkpoint that proves it).

    The receipt's signature, the checkpoint's signature (by the same engine key), the event's inclusion
    under the checkpoint, and that the event is this redeem: serial, order id, time and index.
    ProofError (or BadSignatureError) says what failed.
    """
    doc: ReceiptProof = decode(_PROOF, data, what="the upgraded receipt", error=ProofError,
                               fix="make it again with `keyvault receipt upgrade`")
    if doc.format != PROOF_FORMAT:
        raise ProofError(f"the upgraded receipt's format is not {PROOF_FORMAT}")
    receipt = open_receipt(doc.receipt, engine_key)
    origin = engine_origin(engine_key)
    checkpoint = open_note(doc.checkpoint.encode("utf-8"), origin, [Verifier(origin, engine_key)])
    try:
        leaf = base64.b64decode(doc.leaf, validate=True)
        proof = [bytes.fromhex(h) for h in doc.proof]
    except (binascii.Error, ValueError):
        raise ProofError("the upgraded receipt's leaf or proof is not valid base64 or hex; "
                         "make it again with `keyvault receipt upgrade`") from None
    merkle.verify_inclusion(merkle.leaf_hash(leaf), receipt.index, checkpoint.size, proof, checkpoint.root)
    if len(leaf) < LEAF.size + 8:
        raise ProofError("the proven event is too short to be a redeem")
    tag, index = LEAF.unpack_from(leaf)[:2]
    change = change_of(leaf)
    if tag not in TAGS or index != receipt.index or change is None or change[1] != _REDEEMED:
        raise ProofError(f"event {receipt.index} of the log is not a redeem: the proof is for another event")
    serial, _, at_ms, order_id = change
    if (serial, at_ms, order_id) != (receipt.serial, receipt.at_ms, receipt.order_id):
        raise ProofError(f"event {receipt.index} of the log redeems {serial_text(serial)} for another order or "
                         "at another time than the receipt says: the proof is for another redeem")
    return receipt, checkpoint.size

