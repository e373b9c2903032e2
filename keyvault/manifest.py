"""Batch manifests: what a supplier hands a platform instead of keys.

File layout (all integers big-endian)::

    "KVMANIFEST1\\n"      12 bytes, magic
    public key            32 bytes, the signer's Ed25519 key
    signature             64 bytes, over PAE("keyvault/manifest/v1", header)
    header length         4 bytes
    header                UTF-8 JSON (fields below); names body_length and body_sha256
    body                  count records of record_size bytes (+ card numbers for "pair")

The signature is checked before the header is parsed, and the body is hashed
and compared before any record is read. The body holds, per key, a 16-byte
verifier (BLAKE2b of the batch salt and the key); imported cards also carry a
16-byte locator. Nothing in it lets anyone recover a native key.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import ManifestError
from .identity import Identity, supplier_id, verify_signature
from .keyformat import MAX_BATCH_SIZE, MAX_IMPORTED, batch_text, make_batch, parse_batch, prefix_text

MAGIC = b"KVMANIFEST1\n"
PAYLOAD_TYPE = "keyvault/manifest/v1"
KINDS = ("native", "code", "pair")
_FIXED = struct.Struct(">32s64sI")  # public key, signature, header length
_MAX_HEADER = 1 << 20  # a header is a few hundred bytes; refuse absurd lengths before reading them
_CHUNK = 1 << 20


def record_size(kind: str) -> int:
    """Bytes per key in a manifest body: a verifier, plus a locator for imported cards."""
    return 16 if kind == "native" else 32


@dataclass(frozen=True)
class Manifest:
    """A manifest whose signature and body hash have been verified."""

    path: Path
    header: dict[str, Any]
    header_bytes: bytes
    body_offset: int
    digest: str  # SHA-256 of the whole file: the manifest's identity

    @property
    def batch(self) -> int:
        """The batch key (prefix and batch number)."""
        return parse_batch(self.header["batch"])

    @property
    def count(self) -> int:
        """How many keys the batch holds."""
        return int(self.header["count"])

    @property
    def kind(self) -> str:
        """native, code (single opaque codes) or pair (card number + password)."""
        return str(self.header["kind"])

    @property
    def salt(self) -> bytes:
        """The batch salt that goes into every verifier."""
        return bytes.fromhex(self.header["salt"])

    def records(self, chunk_keys: int = 65536) -> Iterator[bytes]:
        """The fixed-size records, in chunks of up to ``chunk_keys`` keys."""
        size = record_size(self.kind)
        with open(self.path, "rb") as fh:
            fh.seek(self.body_offset)
            left = self.count
            while left:
                n = min(left, chunk_keys)
                data = fh.read(n * size)
                if len(data) != n * size:  # the file changed under us since it was verified
                    raise ManifestError(f"manifest {self.path} changed while being read; import it again")
                yield data
                left -= n

    def card_numbers(self) -> Iterator[str]:
        """For a "pair" batch, each card's public card number, in index order."""
        with open(self.path, "rb") as fh:
            fh.seek(self.body_offset + self.count * record_size(self.kind))
            for _ in range(self.count):
                n = fh.read(1)[0]
                yield fh.read(n).decode("utf-8")


def write_manifest(path: Path, identity: Identity, fields: dict[str, Any], body: Iterable[bytes]) -> Manifest:
    """Sign and write a manifest atomically; ``body`` yields its bytes in order."""
    if path.exists():
        raise ManifestError(f"{path} already exists; choose another --manifest-out")
    body_tmp = path.with_name(path.name + ".body")
    tmp = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    length = 0
    try:
        # The header names the body's hash, so the body is spooled first.
        with open(body_tmp, "w+b") as spool, open(tmp, "wb") as out:
            for part in body:
                spool.write(part)
                digest.update(part)
                length += len(part)
            header = dict(fields, body_length=length, body_sha256=digest.hexdigest())
            header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
            signature = identity.sign(PAYLOAD_TYPE, header_bytes)
            out.write(MAGIC + _FIXED.pack(identity.public_key, signature, len(header_bytes)) + header_bytes)
            spool.seek(0)
            while block := spool.read(_CHUNK):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        body_tmp.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return read_manifest(path)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Open and verify a manifest: signature first, then header, then the body's hash."""
    source = Path(path)
    try:
        with open(source, "rb") as fh:
            return _read(source, fh)
    except FileNotFoundError:
        raise ManifestError(f"manifest {source} does not exist") from None
    except IsADirectoryError:
        raise ManifestError(f"{source} is a directory, not a manifest file") from None
    except PermissionError:
        raise ManifestError(f"manifest {source} cannot be read: permission denied") from None


def _read(source: Path, fh: IO[bytes]) -> Manifest:
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        raise ManifestError(f"manifest {source} is empty; copy it from the supplier again")
    start = fh.read(len(MAGIC) + _FIXED.size)
    if not start.startswith(MAGIC):
        if len(start) < len(MAGIC) and MAGIC.startswith(start):
            raise ManifestError(f"manifest {source} is truncated; copy it from the supplier again")
        raise ManifestError(f"{source} is not a keyvault manifest (a .kvm file written by `keyvault batch issue`)")
    if len(start) < len(MAGIC) + _FIXED.size:
        raise ManifestError(f"manifest {source} is truncated; copy it from the supplier again")
    public_key, signature, header_length = _FIXED.unpack(start[len(MAGIC):])
    if header_length > _MAX_HEADER:
        raise ManifestError(f"manifest {source} is damaged (header length {header_length}); ask the supplier for a fresh copy")
    header_bytes = fh.read(header_length)
    if len(header_bytes) != header_length:
        raise ManifestError(f"manifest {source} is truncated; copy it from the supplier again")
    verify_signature(public_key, PAYLOAD_TYPE, header_bytes, signature, f"manifest {source}")
    header = _parse_header(source, header_bytes, public_key)
    body_offset = len(MAGIC) + _FIXED.size + header_length
    if size - body_offset != header["body_length"]:
        state = "truncated" if size - body_offset < header["body_length"] else "has extra bytes at its end"
        raise ManifestError(f"manifest {source} is {state}; copy it from the supplier again")
    whole = hashlib.sha256(start + header_bytes)
    body = hashlib.sha256()
    while block := fh.read(_CHUNK):
        body.update(block)
        whole.update(block)
    if body.hexdigest() != header["body_sha256"]:
        raise ManifestError(f"manifest {source} is damaged: its records do not match the signed hash; "
                            "ask the supplier for a fresh copy")
    return Manifest(source, header, header_bytes, body_offset, whole.hexdigest())


def _parse_header(source: Path, header_bytes: bytes, public_key: bytes) -> dict[str, Any]:
    """Check every field a signed header must have; a supplier bug must not become a store bug."""
    try:
        header: dict[str, Any] = json.loads(header_bytes)
        supplier = header["supplier"]
        kind = header["kind"]
        count = header["count"]
        checks = (
            header["format"] == PAYLOAD_TYPE,
            kind in KINDS,
            isinstance(count, int) and 0 < count <= MAX_BATCH_SIZE,
            isinstance(header["product"], str) and 0 < len(header["product"]) <= MAX_IMPORTED,
            supplier["public_key"] == public_key.hex(),
            supplier["id"] == supplier_id(public_key),
            isinstance(supplier["name"], str) and 0 < len(supplier["name"]) <= 64,
            len(bytes.fromhex(header["salt"])) == 16,
            header["batch"] == batch_text(make_batch(int(header["prefix_value"]), int(header["batch_number"]))),
            header["prefix"] == prefix_text(int(header["prefix_value"])),
            isinstance(header["body_length"], int) and header["body_length"] >= count * record_size(kind),
            header["valid_from"] is None or isinstance(header["valid_from"], int),
            header["valid_until"] is None or isinstance(header["valid_until"], int),
            isinstance(header["created_at"], int),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"manifest {source} is signed but malformed ({exc.__class__.__name__}); "
                            "the supplier's keyvault wrote a bad file: ask them to re-issue it") from None
    if not all(checks):
        raise ManifestError(f"manifest {source} is signed but malformed (field check {checks.index(False) + 1} failed); "
                            "ask the supplier to re-issue it")
    return header
