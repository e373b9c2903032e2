"""Witness cosignatures: C2SP tlog-cosignature ``cosignature/v1`` (timestamped Ed25519) on checkpoint notes.

A cosignature is one more signature line on a checkpoint note::

    — <witness name> base64(key id (4) || u64 timestamp (8) || Ed25519 signature (64))

The key id is SHA-256(name || 0x0A || 0x04 || public key)[:4] (signature type 0x04, not the
checkpoint's 0x01), and the signature is over::

    cosignature/v1
    time <timestamp, decimal seconds>
    <the checkpoint's note text: origin, size, root, extension lines>

By it a witness says: as of that time, this is the largest tree it has seen of that log, and
it saw every earlier one grow into it (docs/provenance.md). Every refusal is a ProofError.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from ..clock import now_ms
from ..errors import ProofError
from .checkpoint import split_note
from .identity import PublicIdentity

COSIGNATURE_V1 = 0x04  # the signed-note signature type of a cosignature/v1
MAX_TIMESTAMP = 2**63 - 1
FUTURE_SLACK_SECONDS = 600  # a cosignature dated further ahead of this machine's clock is refused
_PREFIX = "\u2014 "


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() or c == "+" or c < " " for c in name):
        raise ProofError(f"witness name {name!r} is not usable in a note: it must be non-empty, without spaces or '+'")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id of a cosignature/v1 key: SHA-256(name || 0x0A || 0x04 || public key)[:4]."""
    _check_name(name)
    if len(public_key) != 32:
        raise ProofError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([COSIGNATURE_V1]) + public_key).digest()[:4]


def signed_message(text: bytes, timestamp: int) -> bytes:
    """What a cosignature signs: ``cosignature/v1\\ntime <timestamp>\\n`` then the checkpoint's note text."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ProofError(f"a cosignature timestamp is 0 to 2**63 - 1 seconds, not {timestamp!r}")
    return b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + text


@dataclass(frozen=True)
class Witness:
    """A witness's cosigning key: the name its lines carry and its Ed25519 public key."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        key_id(self.name, self.public_key)  # validates both

    @property
    def key_id(self) -> bytes:
        """The key id its cosignature lines carry."""
        return key_id(self.name, self.public_key)

    def vkey(self) -> str:
        """The C2SP verifier key: ``name+hex key id+base64(0x04 || public key)``."""
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([COSIGNATURE_V1]) + self.public_key).decode()}"

    @classmethod
    def from_vkey(cls, text: str) -> Witness:
        """The witness a verifier key string names (refused unless type 0x04 and its key id matches)."""
        name, _, rest = text.strip().partition("+")
        hint, _, encoded = rest.partition("+")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise ProofError("the witness verifier key is not name+keyid+base64(key)") from None
        if len(raw) != 33 or raw[0] != COSIGNATURE_V1:
            raise ProofError("the witness verifier key is not a cosignature/v1 (type 0x04) Ed25519 key")
        witness = cls(name, raw[1:])
        if witness.key_id.hex() != hint:
            raise ProofError("the witness verifier key's key id does not match its name and key")
        return witness


@dataclass(frozen=True)
class Cosignature:
    """One parsed cosignature line (not yet verified)."""

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes


def line(text: bytes, name: str, signing_key: nacl.signing.SigningKey, timestamp: int) -> bytes:
    """The cosignature line of note text ``text`` by ``signing_key`` under ``name``, dated ``timestamp``."""
    signature = signing_key.sign(signed_message(text, timestamp)).signature
    blob = key_id(name, bytes(signing_key.verify_key)) + timestamp.to_bytes(8, "big") + signature
    return f"{_PREFIX}{name} {base64.b64encode(blob).decode()}\n".encode("utf-8")


def cosignatures(note: bytes) -> tuple[bytes, list[Cosignature]]:
    """The note's text and every signature line shaped like a cosignature/v1 (76 bytes); others are skipped."""
    text, signatures = split_note(note)
    found = []
    for sig in signatures:
        if len(sig.signature) == 8 + 64:
            found.append(Cosignature(sig.name, sig.key_id, int.from_bytes(sig.signature[:8], "big"),
                                     sig.signature[8:]))
    return text, found


def verify(note: bytes, witnesses: Sequence[Witness], required: int, *,
           now_seconds: int | None = None) -> list[tuple[Witness, int]]:
    """The given witnesses that cosigned ``note`` and when, once ``required`` distinct ones did, else ProofError.

    Lines by keys not among ``witnesses`` are ignored; a line by a given witness that does not
    verify over this note's text (a cosignature of another checkpoint), or is dated in the
    future, refuses the note, and so does a second line by a given witness.
    """
    if required < 0:
        raise ProofError("the number of witnesses required cannot be negative")
    by_key: dict[bytes, Witness] = {}
    for witness in witnesses:
        by_key.setdefault(witness.public_key, witness)
    if required > len(by_key):
        raise ProofError(f"{required} witnesses are required but only {len(by_key)} distinct witness keys were "
                         "given; give more --witness files or lower --min-witnesses")
    known = {(w.name, w.key_id): w for w in by_key.values()}
    now = now_ms() // 1000 if now_seconds is None else now_seconds
    text, lines = cosignatures(note)
    seen: dict[bytes, tuple[Witness, int]] = {}
    for cosig in lines:
        witness = known.get((cosig.name, cosig.key_id))
        if witness is None:
            continue  # a key id is a hint: a line by any other key is ignored, never counted
        if witness.public_key in seen:
            raise ProofError(f"the checkpoint carries two cosignatures by witness {witness.name!r}: a witness's "
                             "newest cosignature replaces its older one, so a note has one line per witness")
        try:
            nacl.signing.VerifyKey(witness.public_key).verify(signed_message(text, cosig.timestamp), cosig.signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise ProofError(f"the cosignature by witness {witness.name!r} does not verify over this checkpoint "
                             "(it cosigned another checkpoint, or the line was altered)") from None
        if cosig.timestamp > now + FUTURE_SLACK_SECONDS:
            raise ProofError(f"the cosignature by witness {witness.name!r} is dated {cosig.timestamp}, in the future; "
                             "check the witness's clock and this machine's")
        seen[witness.public_key] = (witness, cosig.timestamp)
    if len(seen) < required:
        names = ", ".join(repr(w.name) for w, _ in seen.values()) or "none"
        raise ProofError(f"{len(seen)} of the {len(by_key)} given witnesses cosigned this checkpoint ({names}); "
                         f"{required} needed")
    return list(seen.values())


def witnessed(note: bytes, witnesses: Sequence[PublicIdentity], required: int,
              parties: Collection[bytes] = ()) -> tuple[bool, str]:
    """(ok, detail) of the rule "``required`` distinct given witnesses cosigned this checkpoint".

    A witness key that is also one of the ``parties`` (a trusted supplier or engine key, a custody
    holder) is refused: whoever signed the story cannot also be its witness.
    """
    doubled = [w.name for w in witnesses if w.public_key in parties]
    if doubled:
        return False, (f"witness {doubled[0]!r} is also a trusted supplier, engine or custody key; a witness must "
                       "be independent of the log and of the keys' holders")
    try:
        keys = [Witness(w.name, w.public_key) for w in witnesses]
        seen = verify(note, keys, required)
    except ProofError as exc:
        return False, str(exc)
    names = ", ".join(f"{w.name!r} at {t}" for w, t in sorted(seen, key=lambda s: s[0].name))
    return True, f"{len(seen)} distinct witnesses cosigned this checkpoint ({required} required): {names or 'none'}"


def by(line: bytes, witness: Witness) -> bool:
    """Whether one signature line of a note is a cosignature/v1 line of ``witness`` (its name and key id)."""
    try:
        _, found = cosignatures(b"x\n\n" + line + b"\n")
    except ProofError:
        return False
    return any((c.name, c.key_id) == (witness.name, witness.key_id) for c in found)


def merge(note: bytes, lines: bytes, witness: Witness, max_bytes: int) -> bytes:
    """``note`` with ``witness``'s answer ``lines`` checked over its text and kept as that witness's one line.

    ProofError when the answer does not verify over this very checkpoint, or the note would exceed
    ``max_bytes``. An older line by the same witness is replaced; other signature lines are kept.
    """
    text, _ = split_note(note)
    verify(text + b"\n" + lines, [witness], 1)
    mine = [one for one in lines.split(b"\n") if one and by(one, witness)]
    theirs = [one for one in note[len(text) + 1:].split(b"\n") if one and not by(one, witness)]
    combined = text + b"\n" + b"".join(one + b"\n" for one in theirs + mine[-1:])
    if len(combined) > max_bytes:
        raise ProofError("the checkpoint note would be too large with this cosignature")
    return combined


def cosigners(note: bytes, witnesses: Sequence[Witness]) -> list[Witness]:
    """The ``witnesses`` with a cosignature line on ``note`` that verifies (others, and bad lines, not counted)."""
    out = []
    for witness in witnesses:
        try:
            verify(note, [witness], 1)
        except ProofError:
            continue
        out.append(witness)
    return out
