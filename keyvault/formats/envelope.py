"""Signed envelopes: the one layout that manifests and transfers share, and its one opener.

Layout (integers big-endian)::

    magic | signer public key (32) | Ed25519 signature (64) over PAE(type, body) | u32 body length | body

:func:`open_envelope` checks the magic, the lengths and the signature over the exact body bytes
before anything reads the body; a caller decodes the body only from the :class:`Envelope` it returns.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import KeyvaultError
from .identity import verify_signature

#: What follows the magic: the signer's public key, the signature, the body's length.
FIXED = struct.Struct(">32s64sI")


@dataclass(frozen=True)
class Envelope:
    """A body whose signature by ``public_key`` has been verified."""

    public_key: bytes
    signature: bytes
    body: bytes


def pack(magic: bytes, public_key: bytes, signature: bytes, body: bytes) -> bytes:
    """The envelope's bytes: magic, key, signature, length and body."""
    return magic + FIXED.pack(public_key, signature, len(body)) + body


def open_envelope(data: bytes, *, magic: bytes, payload_type: str, max_body: int, what: str,
                  error: type[KeyvaultError], fix: str) -> Envelope:
    """Check ``data`` is exactly one envelope under ``magic`` whose signature verifies over its body.

    Framing problems raise ``error`` (``what`` names the file, ``fix`` says what to do); a bad signature
    raises :class:`~keyvault.errors.BadSignatureError`. Nothing in the body is read.
    """
    head = len(magic) + FIXED.size
    if not data.startswith(magic):
        if len(data) < len(magic) and magic.startswith(data):
            raise error(f"{what} is truncated; {fix}")
        raise error(f"{what} is not a keyvault {payload_type} record; {fix}")
    if len(data) < head:
        raise error(f"{what} is truncated; {fix}")
    public_key, signature, length = FIXED.unpack_from(data, len(magic))
    if length > max_body:
        raise error(f"{what} is damaged (its length field says {length} bytes); {fix}")
    body = bytes(data[head:])
    if len(body) != length:
        state = "truncated" if len(body) < length else "has extra bytes at its end"
        raise error(f"{what} is {state}; {fix}")
    verify_signature(public_key, payload_type, body, signature, what)
    return Envelope(public_key, signature, body)
