"""Batch manifests: what a supplier hands a platform instead of keys.

File layout (all integers big-endian)::

    "KVMANIFEST2\\n"      12 bytes, magic
    public key            32 bytes, the signer's Ed25519 key
    signature             64 bytes, over PAE("keyvault/manifest/v2", header)
    header length         4 bytes
    header                UTF-8 JSON (fields below): the part that may be published
    body                  commit seed (32) | count records | count commitments (32 each) | card numbers

The signature is checked before the header is parsed, and the body is hashed
and compared, and the Merkle root of the commitments recomputed, before any
record is read. A record is a 16-byte verifier (BLAKE2b of the batch salt and
the key), after a 16-byte locator for imported cards. A commitment is an
RFC 9162 leaf hash of ``kv1/commit || serial || salt || key`` with a per-key
salt derived from the seed (docs/provenance.md): the header's ``merkle_root``
commits to every key, yet lets nobody who sees only the header test a guess.
The body does let anyone test guesses against the verifiers, so it travels
sealed (``keyvault lot send``) and is never published. The header names the
supplier's previous manifest, so a withheld batch shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .. import _fast
from ..errors import ManifestError
from . import merkle
from .identity import Identity, supplier_id, verify_signature
from .keyformat import (
    MAX_BATCH_SIZE,
    MAX_IMPORTED,
    batch_text,
    make_batch,
    parse_batch,
    prefix_text,
)

MAGIC = b"KVMANIFEST2\n"
OLD_MAGIC = b"KVMANIFEST1\n"
PAYLOAD_TYPE = "keyvault/manifest/v2"
KINDS = ("native", "code", "pair")
CHUNK = 1 << 16  # keys per step when writing or reading a body: bounds memory, and aligns with the Merkle tree
SEED_BYTES = 32
_FIXED = struct.Struct(">32s64sI")  # public key, signature, header length
_MAX_HEADER = 1 << 20  # a header is a few hundred bytes; refuse absurd lengths before reading them
_IO = 1 << 20


def record_size(kind: str) -> int:
    """Bytes per key in a manifest's records: a verifier, after a locator for imported cards."""
    return 16 if kind == "native" else 32


def manifest_id(header_bytes: bytes) -> str:
    """A manifest's identity: SHA-256 over its signed header under tag kv1/manifest-id, in hex."""
    return hashlib.sha256(b"kv1/manifest-id" + header_bytes).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A manifest whose signature, body hash and Merkle root have been verified."""

    path: Path
    header: dict[str, Any]
    header_bytes: bytes
    public_key: bytes
    signature: bytes
    body_offset: int
    chunk_roots: tuple[bytes, ...]  # Merkle roots of each CHUNK of commitments (the tree's top, precomputed)

    @property
    def id(self) -> str:
        """The manifest id (hex): what transfers and the supplier's next manifest name."""
        return manifest_id(self.header_bytes)

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

    @property
    def signed(self) -> bytes:
        """The published part: magic, public key, signature, header length and header, exactly as signed."""
        return MAGIC + _FIXED.pack(self.public_key, self.signature, len(self.header_bytes)) + self.header_bytes

    def seed(self) -> bytes:
        """The commit seed from which every key's salt is derived (secret: it lets guesses be tested)."""
        with open(self.path, "rb") as fh:
            fh.seek(self.body_offset)
            return self._exact(fh, SEED_BYTES)

    def records(self) -> Iterator[bytes]:
        """The fixed-size records, CHUNK keys at a time."""
        yield from self._column(self.body_offset + SEED_BYTES, record_size(self.kind))

    def commitments(self) -> Iterator[bytes]:
        """The key commitments (32 bytes each), CHUNK keys at a time."""
        yield from self._column(self.body_offset + SEED_BYTES + self.count * record_size(self.kind), 32)

    def card_numbers(self) -> Iterator[str]:
        """For a "pair" batch, each card's public card number, in index order."""
        with open(self.path, "rb") as fh:
            fh.seek(self.body_offset + SEED_BYTES + self.count * (record_size(self.kind) + 32))
            for _ in range(self.count):
                n = self._exact(fh, 1)[0]
                yield self._exact(fh, n).decode("utf-8")

    def _column(self, offset: int, size: int) -> Iterator[bytes]:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            left = self.count
            while left:
                n = min(left, CHUNK)
                yield self._exact(fh, n * size)
                left -= n

    def _exact(self, fh: IO[bytes], n: int) -> bytes:
        data = fh.read(n)
        if len(data) != n:  # the file changed under us since it was verified
            raise ManifestError(f"manifest {self.path} changed while being read; import it again")
        return data


def tree_root(chunk_roots: Iterable[bytes]) -> bytes:
    """The Merkle root over all commitments, from the roots of their CHUNK-key slices.

    CHUNK is a power of two, so every full slice is a node of the RFC 9162 tree and the tree over
    the slice roots (the last one partial) is the top of the tree over the keys.
    """
    return merkle.root(list(chunk_roots))


def write_manifest(path: Path, identity: Identity, fields: dict[str, Any], seed: bytes,
                   body: Iterable[tuple[bytes, ...]], trailer: Iterable[bytes] = ()) -> Manifest:
    """Sign and write a manifest atomically. ``body`` yields (records, commitments) for each CHUNK of keys,
    in order, or (records, commitments, root) with root ``_fast.merkle_root(commitments)`` already
    computed; ``trailer`` yields what follows the commitments (card numbers). If this fails, ``body``
    is closed (when it can be), so a generator's clean-up runs now."""
    if path.exists():
        raise ManifestError(f"{path} already exists; choose another --manifest-out")
    tmp = path.with_name(path.name + ".part")
    roots = []
    try:
        # The header names the body's hash and the tree's root, so the columns are spooled first.
        with tempfile.TemporaryFile(dir=path.parent) as records, \
                tempfile.TemporaryFile(dir=path.parent) as commits, \
                tempfile.TemporaryFile(dir=path.parent) as tail, open(tmp, "wb") as out:
            for chunk in body:
                part, commitments = chunk[0], chunk[1]
                records.write(part)
                commits.write(commitments)
                roots.append(chunk[2] if len(chunk) > 2 else _fast.merkle_root(commitments))
            for part in trailer:
                tail.write(part)
            digest = hashlib.sha256(seed)
            length = len(seed)
            for spool in (records, commits, tail):
                spool.seek(0)
                while block := spool.read(_IO):
                    digest.update(block)
                    length += len(block)
            header = dict(fields, merkle_root=tree_root(roots).hex(), body_length=length,
                          body_sha256=digest.hexdigest())
            header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
            signature = identity.sign(PAYLOAD_TYPE, header_bytes)
            out.write(MAGIC + _FIXED.pack(identity.public_key, signature, len(header_bytes)) + header_bytes + seed)
            for spool in (records, commits, tail):
                spool.seek(0)
                while block := spool.read(_IO):
                    out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        close = getattr(body, "close", None)
        if close is not None:
            close()
        raise
    finally:
        tmp.unlink(missing_ok=True)
    # Verified as it was made (from the spools just hashed): reading it back would hash it all again.
    return Manifest(path, header, header_bytes, identity.public_key, signature,
                    len(MAGIC) + _FIXED.size + len(header_bytes), tuple(roots))


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Open and verify a manifest: signature first, then header, then the body's hash and Merkle root."""
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
    if start.startswith(OLD_MAGIC):
        raise ManifestError(f"manifest {source} was written by an older keyvault (format 1, without a Merkle root); "
                            "ask the supplier to issue it again with this version")
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
    body = hashlib.sha256()
    while block := fh.read(_IO):
        body.update(block)
    if body.hexdigest() != header["body_sha256"]:
        raise ManifestError(f"manifest {source} is damaged: its records do not match the signed hash; "
                            "ask the supplier for a fresh copy")
    manifest = Manifest(source, header, header_bytes, public_key, signature, body_offset, ())
    roots = tuple(_fast.merkle_root(part) for part in manifest.commitments())
    if tree_root(roots).hex() != header["merkle_root"]:
        raise ManifestError(f"manifest {source} is signed, but its key commitments do not match its signed Merkle "
                            "root: the supplier's keyvault wrote a bad file; ask them to re-issue it")
    return Manifest(source, header, header_bytes, public_key, signature, body_offset, roots)


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
            isinstance(header["body_length"], int)
            and header["body_length"] >= SEED_BYTES + count * (record_size(kind) + 32),
            len(bytes.fromhex(header["merkle_root"])) == 32,
            isinstance(header["body_sha256"], str) and len(bytes.fromhex(header["body_sha256"])) == 32,
            isinstance(header["prefix_value"], int) and isinstance(header["batch_number"], int),
            header["previous"] is None or len(bytes.fromhex(header["previous"])) == 32,
            header["valid_from"] is None or isinstance(header["valid_from"], int),
            header["valid_until"] is None or isinstance(header["valid_until"], int),
            isinstance(header["created_at"], int),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise ManifestError(f"manifest {source} is signed but malformed ({exc.__class__.__name__}); "
                            "the supplier's keyvault wrote a bad file: ask them to re-issue it") from None
    if not all(checks):
        raise ManifestError(f"manifest {source} is signed but malformed (field check {checks.index(False) + 1} failed); "
                            "ask the supplier to re-issue it")
    return header
