"""Batch manifests: what a supplier hands a platform instead of keys.

File layout (all integers big-endian)::

    "KVMANIFEST2\\n"      12 bytes, magic
    public key            32 bytes, the signer's Ed25519 key
    signature             64 bytes, over PAE("keyvault/manifest/v2", header)
    header length         4 bytes
    header                UTF-8 JSON (fields below): the part that may be published
    body                  commit seed (32) | count records | count commitments (32 each) | card numbers

:func:`open_signed_header` is the one function that opens the signed part (magic,
key, signature, length, header): every reader goes through it, and it checks the
signature before any header field is read, then decodes the header strictly
(:class:`ManifestHeader`). The body is hashed
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
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import msgspec

from .. import _fast
from ..errors import ManifestError
from . import merkle
from .envelope import FIXED, open_envelope, pack
from .identity import Identity, supplier_id
from .keyformat import (
    MAX_BATCH_SIZE,
    MAX_IMPORTED,
    batch_text,
    make_batch,
    parse_batch,
    prefix_text,
)
from .typed import Hex16, Hex32, decode

MAGIC = b"KVMANIFEST2\n"
OLD_MAGIC = b"KVMANIFEST1\n"
PAYLOAD_TYPE = "keyvault/manifest/v2"
KINDS = ("native", "code", "pair")
CHUNK = 1 << 16  # keys per step when writing or reading a body: bounds memory, and aligns with the Merkle tree
SEED_BYTES = 32
MAX_HEADER = 1 << 20  # a header is a few hundred bytes; refuse absurd lengths before reading them
_IO = 1 << 20


_AGAIN = "copy it from the supplier again"
_REISSUE = "the supplier's keyvault wrote a bad file: ask them to re-issue it"


class ManifestSupplier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The signer a header names: its supplier id, name and public key (hex)."""

    id: str
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    public_key: Hex32


class ManifestHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A manifest's signed header (docs/provenance.md), fields in the order the writer sorts them."""

    batch: str
    batch_number: Annotated[int, msgspec.Meta(ge=0)]
    body_length: Annotated[int, msgspec.Meta(ge=0)]
    body_sha256: Hex32
    count: Annotated[int, msgspec.Meta(gt=0, le=MAX_BATCH_SIZE)]
    created_at: int
    format: Literal["keyvault/manifest/v2"]
    kind: Literal["native", "code", "pair"]
    merkle_root: Hex32
    prefix: str
    prefix_value: Annotated[int, msgspec.Meta(ge=0)]
    previous: Hex32 | None
    product: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IMPORTED)]
    salt: Hex16
    supplier: ManifestSupplier
    valid_from: int | None
    valid_until: int | None
    #: How many orders may each redeem a key once (count-limited keys); written only when above 1, so a
    #: manifest without it (every manifest before count-limited keys) means single-use keys.
    uses: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1


_HEADER = msgspec.json.Decoder(ManifestHeader)


@dataclass(frozen=True)
class SignedHeader:
    """A manifest's signed part, its signature verified and its header decoded."""

    public_key: bytes
    signature: bytes
    header_bytes: bytes
    header: ManifestHeader

    @property
    def id(self) -> str:
        """The manifest id (hex)."""
        return manifest_id(self.header_bytes)

    @property
    def signed(self) -> bytes:
        """The exact bytes opened: magic, public key, signature, header length and header."""
        return pack(MAGIC, self.public_key, self.signature, self.header_bytes)


def open_signed_header(signed: bytes, *, where: str) -> SignedHeader:
    """Open a manifest's signed part (``where`` names it in errors): magic and lengths, then the
    Ed25519 signature over the exact header bytes, and only then the header, decoded strictly.

    Raises BadSignatureError for a signature that does not verify, ManifestError for anything else.
    """
    if signed.startswith(OLD_MAGIC):
        raise ManifestError(f"{where} was written by an older keyvault (format 1, without a Merkle root); "
                            "ask the supplier to issue it again with this version")
    if not signed.startswith(MAGIC) and not (len(signed) < len(MAGIC) and MAGIC.startswith(signed)):
        raise ManifestError(f"{where} is not a keyvault manifest (a .kvm file written by `keyvault batch issue`)")
    envelope = open_envelope(signed, magic=MAGIC, payload_type=PAYLOAD_TYPE, max_body=MAX_HEADER, what=where,
                             error=ManifestError, fix=_AGAIN)
    header = decode(_HEADER, envelope.body, what=f"{where}: its signed header", error=ManifestError,
                    fix=_REISSUE)
    _check_header(where, header, envelope.public_key)
    return SignedHeader(envelope.public_key, envelope.signature, envelope.body, header)


def _check_header(where: str, header: ManifestHeader, public_key: bytes) -> None:
    """The checks across fields (the types and ranges are the struct's); a supplier bug must not become a store bug."""
    wrong = []
    if header.supplier.public_key != public_key.hex() or header.supplier.id != supplier_id(public_key):
        wrong.append("supplier (it does not name the key that signed it)")
    try:
        if header.batch != batch_text(make_batch(header.prefix_value, header.batch_number)):
            wrong.append("batch (it does not match prefix_value and batch_number)")
        if header.prefix != prefix_text(header.prefix_value):
            wrong.append("prefix (it does not match prefix_value)")
    except ValueError:  # UsageError: a prefix or batch number out of range
        wrong.append("prefix_value or batch_number (out of range)")
    if header.body_length < SEED_BYTES + header.count * (record_size(header.kind) + 32):
        wrong.append("body_length (too short for its count)")
    if wrong:
        raise ManifestError(f"{where} is signed but malformed: {'; '.join(wrong)}; {_REISSUE}")


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
    fields: ManifestHeader
    header_bytes: bytes
    public_key: bytes
    signature: bytes
    body_offset: int
    chunk_roots: tuple[bytes, ...]  # Merkle roots of each CHUNK of commitments (the tree's top, precomputed)

    @property
    def header(self) -> dict[str, Any]:
        """The header as a plain dict (a fresh copy, keys sorted as signed)."""
        return msgspec.to_builtins(self.fields)  # type: ignore[no-any-return]

    @property
    def id(self) -> str:
        """The manifest id (hex): what transfers and the supplier's next manifest name."""
        return manifest_id(self.header_bytes)

    @property
    def batch(self) -> int:
        """The batch key (prefix and batch number)."""
        return parse_batch(self.fields.batch)

    @property
    def count(self) -> int:
        """How many keys the batch holds."""
        return self.fields.count

    @property
    def kind(self) -> str:
        """native, code (single opaque codes) or pair (card number + password)."""
        return self.fields.kind

    @property
    def salt(self) -> bytes:
        """The batch salt that goes into every verifier."""
        return bytes.fromhex(self.fields.salt)

    @property
    def signed(self) -> bytes:
        """The published part: magic, public key, signature, header length and header, exactly as signed."""
        return pack(MAGIC, self.public_key, self.signature, self.header_bytes)

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
        """For a "pair" batch, each card's public card number, in index order (checked when it was read)."""
        with open(self.path, "rb") as fh:
            fh.seek(self.body_offset + SEED_BYTES + self.count * (record_size(self.kind) + 32))
            for _ in range(self.count):
                n = self._exact(fh, 1)[0]
                yield self._exact(fh, n).decode("utf-8", "replace")

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


def _check_trailer(source: Path, fh: IO[bytes], header: ManifestHeader, body_offset: int) -> None:
    """What follows the commitments, up to the end of the file: for a "pair" batch, ``count`` card numbers
    (u8 length, then 1 to MAX_IMPORTED bytes of UTF-8) and nothing after them; for the other kinds, nothing."""
    fh.seek(body_offset + SEED_BYTES + header.count * (record_size(header.kind) + 32))
    for _ in range(header.count if header.kind == "pair" else 0):
        size = fh.read(1)
        number = fh.read(size[0]) if size else b""
        try:
            if not size or not 0 < size[0] <= MAX_IMPORTED or len(number) != size[0]:
                raise ValueError
            number.decode("utf-8")
        except ValueError:
            raise ManifestError(f"manifest {source} is signed, but its card numbers are cut short or not UTF-8: "
                                f"{_REISSUE}") from None
    if fh.read(1):
        raise ManifestError(f"manifest {source} is signed, but holds bytes after its last "
                            f"{'card number' if header.kind == 'pair' else 'commitment'}: {_REISSUE}")


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
            out.write(pack(MAGIC, identity.public_key, signature, header_bytes) + seed)
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
    # Decoded through the same strict reader as any other manifest, so what is written is what is read.
    opened = open_signed_header(pack(MAGIC, identity.public_key, signature, header_bytes), where=f"manifest {path}")
    return Manifest(path, opened.header, header_bytes, identity.public_key, signature,
                    len(MAGIC) + FIXED.size + len(header_bytes), tuple(roots))


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
        raise ManifestError(f"manifest {source} is empty; {_AGAIN}")
    start = fh.read(len(MAGIC) + FIXED.size)
    header_bytes = b""
    if start.startswith(MAGIC) and len(start) == len(MAGIC) + FIXED.size:
        (header_length,) = FIXED.unpack_from(start, len(MAGIC))[2:]
        if header_length <= MAX_HEADER:  # else open_signed_header says the file is damaged
            header_bytes = fh.read(header_length)
    opened = open_signed_header(start + header_bytes, where=f"manifest {source}")
    header = opened.header
    body_offset = len(start) + len(header_bytes)
    if size - body_offset != header.body_length:
        state = "truncated" if size - body_offset < header.body_length else "has extra bytes at its end"
        raise ManifestError(f"manifest {source} is {state}; {_AGAIN}")
    body = hashlib.sha256()
    while block := fh.read(_IO):
        body.update(block)
    if body.hexdigest() != header.body_sha256:
        raise ManifestError(f"manifest {source} is damaged: its records do not match the signed hash; "
                            "ask the supplier for a fresh copy")
    manifest = Manifest(source, header, header_bytes, opened.public_key, opened.signature, body_offset, ())
    _check_trailer(source, fh, header, body_offset)
    roots = tuple(_fast.merkle_root(part) for part in manifest.commitments())
    if tree_root(roots).hex() != header.merkle_root:
        raise ManifestError(f"manifest {source} is signed, but its key commitments do not match its signed Merkle "
                            "root: the supplier's keyvault wrote a bad file; ask them to re-issue it")
    return Manifest(source, header, header_bytes, opened.public_key, opened.signature, body_offset, roots)
