"""Long-form keys: a native key with its supplier's signature over its public fields, for QR codes and links.

A long form is one URL-safe line (docs/provenance.md)::

    KVL1.<base64url, no padding, of: fields || salt (16) || key (32 ASCII symbols) || Ed25519 signature (64)>

    fields = u8 version (1) | u64 serial | u64 valid from (ms, 0: none) | u64 valid until (ms, 0: none)
             | u8 length | product (UTF-8)

The supplier signs PAE(``keyvault/longform/v1``, fields || commitment), where the commitment is the
key's manifest leaf, SHA-256(0x00 || ``kv1/commit`` || u64 serial || salt || key): public fields and a
hiding commitment only, so the signature says nothing about the key, yet it binds the key (a verifier
recomputes the commitment from the salt and key the long form carries). The key inside is the secret, as printable as the short key itself: a long
form is never logged or stored. Whoever holds the supplier's public identity checks the signature
offline (:func:`open_long_form`); nobody offline can know whether the key was already redeemed.

A store redeems a long form as its inner key (:func:`inner_key`): the signature is not checked there
(the store's own records decide, so a forged signature around a genuine key gains nothing that the
key alone would not), but the inner key's serial must be the one the long form names.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing

from .. import _fast
from ..clock import iso
from ..errors import BadSignatureError, MalformedKeyError
from . import merkle
from .identity import pae
from .keyformat import batch_key, batch_text, serial_text
from .typed import unb64url

PAYLOAD_TYPE = "keyvault/longform/v1"
PREFIX = "KVL1."
VERSION = 1
KEY_SYMBOLS = 32
CANNOT_KNOW = ("a long form proves who issued the key, not whether it is still unused: only the platform "
               "that redeems it can say whether it was already redeemed")
_FIXED = struct.Struct(">BQQQ")  # version, serial, valid from, valid until
_SIGNATURE = 64
_SALT = 16
_MAX_RAW = _FIXED.size + 1 + 255 + _SALT + KEY_SYMBOLS + _SIGNATURE
_FIX = "copy the whole long form again, or type the short key instead"


@dataclass(frozen=True)
class LongForm:
    """A long form's public fields (its key is never kept here, nor in its repr)."""

    serial: int
    valid_from: int | None
    valid_until: int | None
    product: str

    @property
    def batch(self) -> str:
        """The batch id (part of the serial)."""
        return batch_text(batch_key(self.serial))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready public fields."""
        return {"serial": serial_text(self.serial), "batch": self.batch, "product": self.product,
                "valid_from": iso(self.valid_from), "valid_until": iso(self.valid_until)}


def commitment(serial: int, salt: bytes, canonical_key: str) -> bytes:
    """A native key's commitment (its manifest leaf): hiding, since the salt is secret until handed out."""
    return merkle.leaf_hash(b"kv1/commit" + serial.to_bytes(8, "big") + salt + canonical_key.encode("ascii"))


def _fields(fields: LongForm) -> bytes:
    """The public fields' bytes: version, serial, validity and product."""
    product = fields.product.encode("utf-8")
    if len(product) > 255:
        raise MalformedKeyError("a product name over 255 bytes cannot be put in a long form")
    return _FIXED.pack(VERSION, fields.serial, fields.valid_from or 0, fields.valid_until or 0) + \
        bytes((len(product),)) + product


def make(fields: LongForm, salt: bytes, canonical_key: str, signing_key: nacl.signing.SigningKey) -> str:
    """The long form of a canonical native key, signed by its supplier over public fields and commitment."""
    key = canonical_key.encode("ascii")
    if len(key) != KEY_SYMBOLS or len(salt) != _SALT:
        raise MalformedKeyError("a long form holds a native key in its canonical 32 symbols and its 16-byte salt")
    head = _fields(fields)
    sig = signing_key.sign(pae(PAYLOAD_TYPE, head + commitment(fields.serial, salt, canonical_key))).signature
    return PREFIX + base64.urlsafe_b64encode(head + salt + key + sig).rstrip(b"=").decode("ascii")


def looks_long(text: object) -> bool:
    """Whether ``text`` is meant as a long form (it starts ``KVL1.``, in any case)."""
    return isinstance(text, str) and text[:len(PREFIX)].upper() == PREFIX


def _split(text: str) -> tuple[bytes, str, bytes, LongForm]:
    """(signed bytes, inner key, signature, fields) of a long form; only its framing and inner key are checked."""
    if not isinstance(text, str):
        raise MalformedKeyError("a long form is text starting KVL1.")
    text = text.strip()
    if not looks_long(text):
        raise MalformedKeyError(f"this is not a long-form key (those start {PREFIX}); {_FIX}")
    encoded = text[len(PREFIX):]
    try:
        raw = unb64url(encoded, max_bytes=_MAX_RAW)
    except ValueError as exc:
        raise MalformedKeyError(f"the long form {exc}; {_FIX}") from None
    if len(raw) < _FIXED.size + 1 + _SALT + KEY_SYMBOLS + _SIGNATURE:
        raise MalformedKeyError(f"the long form is truncated; {_FIX}")
    version, serial, valid_from, valid_until = _FIXED.unpack_from(raw)
    if version != VERSION:
        raise MalformedKeyError(f"the long form is of version {version}; this keyvault reads version {VERSION}")
    end = _FIXED.size + 1 + raw[_FIXED.size]
    if len(raw) != end + _SALT + KEY_SYMBOLS + _SIGNATURE:
        raise MalformedKeyError(f"the long form is truncated or has extra bytes; {_FIX}")
    try:
        product = raw[_FIXED.size + 1:end].decode("utf-8")
        key = raw[end + _SALT:end + _SALT + KEY_SYMBOLS].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedKeyError(f"the long form is damaged; {_FIX}") from None
    outcome, key_serial, _, _ = _fast.parse_key(key)
    if outcome != _fast.OK or key_serial != serial:
        raise MalformedKeyError(f"the long form's key does not match its serial: it was altered; {_FIX}")
    fields = LongForm(serial, valid_from or None, valid_until or None, product)
    signed = raw[:end] + commitment(serial, raw[end:end + _SALT], key)
    return signed, key, raw[-_SIGNATURE:], fields


def inner_key(text: str) -> str:
    """The key a long form carries (its serial checked against the long form's; the signature is not)."""
    return _split(text)[1]


def open_long_form(text: str, supplier_key: bytes) -> LongForm:
    """The public fields of a long form once ``supplier_key`` is found to have signed them and its key's commitment.

    MalformedKeyError for a damaged or truncated one; BadSignatureError when the signature does not
    verify (a field was altered, or another supplier signed it).
    """
    signed, _, sig, fields = _split(text)
    try:
        nacl.signing.VerifyKey(supplier_key).verify(pae(PAYLOAD_TYPE, signed), sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        raise BadSignatureError("the long form's signature does not verify with this supplier's key: a field was "
                                "altered, or another supplier issued it; do not accept it as this "
                                "supplier's key") from None
    return fields
