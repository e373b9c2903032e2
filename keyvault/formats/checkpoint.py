"""Checkpoints: a log's signed tree head, as a C2SP signed note (tlog-checkpoint) with Ed25519.

A checkpoint note reads::

    example.com/keyvault/events      <- origin: which log
    1234                             <- tree size, decimal, no leading zeros
    Z2hvc3RzIGluIHRoZSBtYWNoaW5lISE= <- base64 of the 32-byte RFC 9162 root
                                     <- (optional extension lines, then) one blank line
    — engine-name <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>
    — witness-name <...>             <- any number of further signatures (cosigners)

Each signature is over the note text: every byte up to and including the body's last
newline, without the blank line. The key id of an Ed25519 key is
SHA-256(name || 0x0A || 0x01 || public key)[:4]; it is only a hint for finding the pinned key.
:func:`open_note` checks the signatures first and parses the body only once enough of them
verify; every refusal is a :class:`~keyvault.errors.ProofError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from ..errors import ProofError

MAX_NOTE_BYTES = 64 * 1024
MAX_TREE_SIZE = 2**63 - 1
MAX_SIGNATURES = 100  # signature lines a note may carry (as Go's note.Open)
_ED25519 = b"\x01"  # the signed-note signature type of a plain Ed25519 signature
_SIG_PREFIX = "\u2014 "  # em dash, space
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")  # decimal, no leading zeros, at most 19 digits
TIME_LINE = "time "  # the extension line a keyvault engine signs its checkpoint's time in: "time <ms>"
_TIME = re.compile(r"time (0|[1-9][0-9]{0,15})")  # ms since the epoch, no leading zeros, below 10**16


def _short(text: str) -> str:
    """``text`` quoted for an error message, cut to a readable length."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _check_name(name: str) -> None:
    """Refuse a key name the signed-note format cannot carry."""
    if not isinstance(name, str) or not name or any(c.isspace() or c == "+" or c < " " for c in name):
        raise ProofError(f"key name {_short(str(name))} is not usable in a note: it must be non-empty, "
                         "without spaces or '+'")


def _check_line(text: str, what: str) -> None:
    """Refuse a body line that is empty or would break the note's line structure."""
    if not isinstance(text, str) or not text or any(c < " " for c in text):
        raise ProofError(f"the {what} {_short(str(text))} must be a non-empty line without control characters")


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (with padding, canonical), else ProofError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProofError(f"the {what} is not valid base64") from None
    if base64.b64encode(raw).decode() != text:
        raise ProofError(f"the {what} is not in canonical base64")
    return raw


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: which log, how many leaves, and the RFC 9162 root over them (checked when made)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise ProofError(f"a tree size must be an integer from 0 to 2**63 - 1, not {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise ProofError("a checkpoint root must be 32 bytes")
        for line in self.extensions:
            _check_line(line, "extension line")

    @property
    def time(self) -> int | None:
        """When the engine signed it (ms since the epoch: its one ``time <ms>`` extension line), or None."""
        times = [line for line in self.extensions if line.startswith(TIME_LINE)]
        if not times:
            return None
        if len(times) > 1 or not _TIME.fullmatch(times[0]):
            raise ProofError("the checkpoint's time line is not one 'time <ms since the epoch>' in decimal")
        return int(times[0][len(TIME_LINE):])

    def body(self) -> bytes:
        """The note text that is signed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines).encode("utf-8")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte id of an Ed25519 note key: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    _check_name(name)
    if len(public_key) != 32:
        raise ProofError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + _ED25519 + public_key).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A pinned public key and the name it signs notes under."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        key_id(self.name, self.public_key)  # validates both

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id that signature lines by this key carry."""
        return key_id(self.name, self.public_key)

    def verifies(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``text``."""
        try:
            nacl.signing.VerifyKey(self.public_key).verify(text, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True


def signature_line(text: bytes, name: str, signing_key: nacl.signing.SigningKey) -> bytes:
    """The signature line ``— name base64(key id || signature)`` of ``text``."""
    signature = signing_key.sign(text).signature
    blob = key_id(name, bytes(signing_key.verify_key)) + signature
    return f"{_SIG_PREFIX}{name} {base64.b64encode(blob).decode()}\n".encode("utf-8")


def _sized(note: bytes) -> bytes:
    """``note``, unless it is larger than :func:`open_note` accepts."""
    if len(note) > MAX_NOTE_BYTES:
        raise ProofError(f"the note would be {len(note)} bytes; a checkpoint note is at most {MAX_NOTE_BYTES}")
    return note


@dataclass(frozen=True)
class _Signature:
    name: str
    key_id: bytes
    signature: bytes


def split_note(note: bytes) -> tuple[bytes, list[_Signature]]:
    """The signed text and the parsed signature lines of a note; only the framing is checked."""
    if not isinstance(note, bytes):
        raise ProofError(f"a note is bytes, not {type(note).__name__}")
    if len(note) > MAX_NOTE_BYTES:
        raise ProofError(f"the note is {len(note)} bytes; a checkpoint note is at most {MAX_NOTE_BYTES}")
    try:
        whole = note.decode("utf-8")
    except UnicodeDecodeError:
        raise ProofError("the note is not valid UTF-8") from None
    if any(c < " " and c != "\n" for c in whole):
        raise ProofError("the note contains a control character (a carriage return?); "
                         "notes use bare \\n line ends and no other control characters")
    cut = note.rfind(b"\n\n")
    if cut < 0:
        raise ProofError("the note has no blank line between its text and its signatures")
    text, block = note[: cut + 1], note[cut + 2:].decode("utf-8")
    if not block:
        raise ProofError("the note has no signature lines")
    if not block.endswith("\n"):
        raise ProofError("the note's last signature line does not end with a newline (truncated?)")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ProofError(f"the note has {len(lines)} signature lines; a note carries at most {MAX_SIGNATURES}")
    signatures = []
    for number, line in enumerate(lines, 1):
        name, space, encoded = line[len(_SIG_PREFIX):].partition(" ")
        if not line.startswith(_SIG_PREFIX) or not space:
            raise ProofError(f"signature line {number} is not '\u2014 <name> <base64 signature>'")
        _check_name(name)
        blob = _b64decode(encoded, f"signature by {_short(name)}")
        if len(blob) < 5:
            raise ProofError(f"the signature by {_short(name)} is too short to hold a key id and a signature")
        signatures.append(_Signature(name, blob[:4], blob[4:]))
    return text, signatures


def _parse_body(text: bytes) -> Checkpoint:
    """The checkpoint a (signature-checked) note text holds."""
    lines = text.decode("utf-8")[:-1].split("\n")
    if len(lines) < 3:
        raise ProofError(f"the checkpoint has {len(lines)} lines; it needs an origin, a tree size and a root")
    origin, size, root, *extensions = lines
    if not _SIZE.fullmatch(size):
        raise ProofError(f"the tree size {_short(size)} is not a decimal number without leading zeros below 2**63")
    if int(size) > MAX_TREE_SIZE:
        raise ProofError(f"the tree size {size} is 2**63 or more")
    raw_root = _b64decode(root, "root")
    if len(raw_root) != 32:
        raise ProofError(f"the root is {len(raw_root)} bytes; a SHA-256 root is 32")
    return Checkpoint(origin, int(size), raw_root, tuple(extensions))


def sign(checkpoint: Checkpoint, name: str, signing_key: nacl.signing.SigningKey) -> bytes:
    """The whole signed note: ``checkpoint``'s body, a blank line, and its signature under ``name``."""
    body = checkpoint.body()
    return _sized(body + b"\n" + signature_line(body, name, signing_key))


def add_signature(note: bytes, name: str, signing_key: nacl.signing.SigningKey) -> bytes:
    """``note`` with one more signature line (a witness's cosignature) over the same text.

    This checks the note's form, not its signatures: open it with :func:`open_note` first.
    """
    text, _ = split_note(note)
    _parse_body(text)
    return _sized(note + signature_line(text, name, signing_key))


def open_note(note: bytes, origin: str | None, verifiers: Sequence[Verifier], required: int = 1) -> Checkpoint:
    """The checkpoint in ``note`` once ``required`` distinct ``verifiers`` signed it, else ProofError.

    Signatures by keys not among ``verifiers`` are ignored; a signature by a known key that
    does not verify, or a second line by a known key, refuses the whole note. ``origin``, when given, must match.
    """
    if required < 1:
        raise ProofError("at least one signature must be required to open a note")
    known: dict[tuple[str, bytes], Verifier] = {}
    for verifier in verifiers:
        other = known.setdefault((verifier.name, verifier.key_id), verifier)
        if other.public_key != verifier.public_key:
            raise ProofError(f"two pinned keys named {_short(verifier.name)} share a key id; rename one")
    text, signatures = split_note(note)
    verified: set[Verifier] = set()
    for sig in signatures:
        signer = known.get((sig.name, sig.key_id))
        if signer is None:
            continue  # key ids are hints: an unknown key is ignored, never trusted
        if not signer.verifies(text, sig.signature):
            raise ProofError(f"signature by {_short(sig.name)} does not verify")
        if signer in verified:
            raise ProofError(f"the note carries two signature lines by {_short(sig.name)}: a key signs a note once")
        verified.add(signer)
    if len(verified) < required:
        raise ProofError(f"{len(verified)} of the pinned keys signed this note; {required} needed")
    checkpoint = _parse_body(text)
    if origin is not None and checkpoint.origin != origin:
        raise ProofError(f"the checkpoint is for log {_short(checkpoint.origin)}, not {_short(origin)}")
    return checkpoint
