"""Identities: Ed25519 key pairs (pynacl) in 0600 files, their public parts, rotations, and how bytes are signed.

Bytes are signed through DSSE's pre-authentication encoding, which binds a
type string and both lengths, so a signature made for one kind of record can
never be replayed as another.

Three files (docs/provenance.md):

* a secret identity (kind ``keyvault-identity``, mode 0600): name, prefix, public and secret key;
* a public identity (kind ``keyvault-public-identity``, 0644): name, prefix, public key and its
  fingerprint, which is a hint for people comparing keys by phone; a fingerprint that does not
  match the key means the file was edited, and the file is refused;
* a rotation (kind ``keyvault-rotation``, 0644): a record naming an old and a new key of the same
  issuer prefix, signed by both keys over PAE(``keyvault/rotation/v1``, record bytes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import nacl.exceptions
import nacl.signing

from ..clock import now_ms
from ..errors import BadSignatureError, IdentityError, StoreFullError
from ..files import write_new
from .keyformat import PREFIX_SYMBOLS, parse_prefix, prefix_text
from .typed import decode

_FILE_KIND = "keyvault-identity"
_PUBLIC_KIND = "keyvault-public-identity"
_ROTATION_KIND = "keyvault-rotation"
ROTATION_FORMAT = "keyvault/rotation/v1"  # the record's format field and the PAE type both keys sign under
ROLES_FORMAT = "keyvault/roles/v1"  # the PAE type of an identity's signature over the roles it declares
ROLE_NAMES = ("supplier", "distributor", "engine", "witness")  # keyvault.vocabulary.Role's values
_MAX_NAME = 64
_MAX_FILE = 64 * 1024  # a public identity or rotation is well under 1 KiB; refuse anything huge unread
_PUBLIC_KEY_BYTES = 32
_SIGNATURE_BYTES = 64


# -- the documents, as msgspec structs (decoded strictly: exact types, no unknown field) ---------------


class _Head(msgspec.Struct, frozen=True):
    """What any of the three files says it is (read first, so a wrong file gets the right advice)."""

    kind: Any = None
    version: Any = None
    secret_key: Any = msgspec.UNSET


class SecretIdentityFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A secret identity file (0600). Its repr never shows the secret key."""

    kind: str
    version: int
    name: str
    prefix: str
    public_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"SecretIdentityFile(name={self.name!r}, prefix={self.prefix!r})"


class PublicIdentityFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A public identity file: what a platform pins (roles, when declared, signed by the key itself)."""

    kind: str
    version: int
    name: str
    prefix: str
    public_key: str
    fingerprint: str
    roles: list[str] | msgspec.UnsetType = msgspec.UNSET
    roles_signature: str | msgspec.UnsetType = msgspec.UNSET


class RotationFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rotation file: the signed record (base64) and the old and new keys' signatures over it."""

    kind: str
    record: Annotated[str, msgspec.Meta(min_length=1)]
    old_signature: str
    new_signature: str


class RotationRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rotation's signed record, fields in the order the writer sorts them."""

    at: Annotated[int, msgspec.Meta(ge=0)]
    format: str
    name: str
    new_public_key: str
    old_public_key: str
    prefix: str


class _RotationKeys(msgspec.Struct, frozen=True):
    """The two keys a rotation record names: all that is read before its signatures are checked."""

    old_public_key: str
    new_public_key: str


_HEAD = msgspec.json.Decoder(_Head)
_SECRET_FILE = msgspec.json.Decoder(SecretIdentityFile)
_PUBLIC_FILE = msgspec.json.Decoder(PublicIdentityFile)
_ROTATION_FILE = msgspec.json.Decoder(RotationFile)
_ROTATION_RECORD = msgspec.json.Decoder(RotationRecord)
_ROTATION_KEYS = msgspec.json.Decoder(_RotationKeys)


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding of ``body`` under ``payload_type``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def verify_signature(public_key: bytes, payload_type: str, body: bytes, signature: bytes, what: str) -> None:
    """Raise BadSignatureError unless ``signature`` signs ``body`` under ``payload_type``."""
    try:
        nacl.signing.VerifyKey(public_key).verify(pae(payload_type, body), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError) as exc:
        raise BadSignatureError(
            f"{what}: the signature does not verify, so the file was altered or not signed by the supplier "
            "it names; ask the sender for a fresh copy"
        ) from exc


def supplier_id(public_key: bytes) -> str:
    """A supplier's short id: 16 hex digits of SHA-256 over its public key (tag kv1/supplier-id)."""
    return hashlib.sha256(b"kv1/supplier-id" + public_key).hexdigest()[:16]


def fingerprint(public_key: bytes) -> str:
    """A public key's fingerprint: SHA-256(kv1/fingerprint || key), first 16 bytes, hex in groups of 4."""
    digest = hashlib.sha256(b"kv1/fingerprint" + public_key).hexdigest()[:32]
    return ":".join(digest[i:i + 4] for i in range(0, 32, 4))


def default_prefix(public_key: bytes) -> int:
    """The issuer prefix derived from a public key: its first 20 bits under tag kv1/prefix."""
    return int.from_bytes(hashlib.sha256(b"kv1/prefix" + public_key).digest()[:3], "big") >> 4


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret-holding file that anyone but its owner may read or write."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"{what} {path} has mode {mode:04o} but holds a secret; "
            f"run `chmod 600 {path}` (and check nobody else copied it)"
        )


def _save_public(target: Path, data: bytes) -> Path:
    """Write a new 0644 file of public data, with keyvault's errors."""
    try:
        write_new(target, data, mode=0o644)
    except FileExistsError:
        raise IdentityError(f"{target} already exists; choose another path (a file is never overwritten)") from None
    except StoreFullError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot write {target}: {exc.strerror}") from None
    return target


def _check_name(name: str) -> str:
    """``name`` stripped, or IdentityError unless it is 1-64 printable characters."""
    name = name.strip()
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        raise IdentityError(f"a supplier name must be 1-{_MAX_NAME} printable characters")
    return name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str, size: int) -> bytes:
    """Strict base64 (standard alphabet, padded, canonical) of exactly ``size`` bytes, or ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError(f"{what} is not valid base64") from None
    if _b64(raw) != value:
        raise ValueError(f"{what} is not canonical base64")
    if len(raw) != size:
        raise ValueError(f"{what} is {len(raw)} bytes, not {size}")
    return raw


def _strict_name(value: object) -> str:
    if not isinstance(value, str) or value != value.strip() or not value:
        raise ValueError("name is not a non-empty string without surrounding spaces")
    if len(value) > _MAX_NAME or not value.isprintable():
        raise ValueError(f"name is not 1-{_MAX_NAME} printable characters")
    return value


def _strict_prefix(value: object) -> int:
    if not isinstance(value, str) or len(value) != PREFIX_SYMBOLS:
        raise ValueError(f"prefix is not {PREFIX_SYMBOLS} symbols")
    number = parse_prefix(value)  # raises UsageError (a ValueError) on a bad symbol
    if prefix_text(number) != value:
        raise ValueError("prefix is not written in its canonical form")
    return number


def _read_small(path: Path, what: str) -> bytes:
    """The bytes of ``path`` (at most 64 KiB), or IdentityError saying what to do."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_FILE + 1)
    except FileNotFoundError:
        raise IdentityError(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise IdentityError(f"{what} {path} is a directory; give the file itself") from None
    except OSError as exc:
        raise IdentityError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if len(data) > _MAX_FILE:
        raise IdentityError(f"{what} {path} is over {_MAX_FILE // 1024} KiB, so it is not a {what}; check the path")
    return data


def _strict(decoder: msgspec.json.Decoder[Any], data: bytes, source: str, what: str, fix: str) -> Any:
    """``data`` decoded strictly, or IdentityError naming ``source``, msgspec's reason (which field) and ``fix``."""
    return decode(decoder, data, what=f"{what} {source}", error=IdentityError, fix=fix)


def _head(data: bytes, source: str, what: str, fix: str) -> _Head:
    """What a file says it is (kind, version, whether it holds a secret key), read leniently."""
    return _strict(_HEAD, data, source, what, fix)  # type: ignore[no-any-return]


_SECRET_GIVEN = ("{source} is a secret identity file; give its public file "
                 "(keyvault identity show --public {source} > NAME.pub), and never send the secret one")


def roles_statement(name: str, prefix: int, public_key: bytes, roles: tuple[str, ...]) -> bytes:
    """The bytes an identity signs to declare its roles: compact sorted JSON of name, prefix, key and roles."""
    return json.dumps({"name": name, "prefix": prefix_text(prefix), "public_key": _b64(public_key),
                       "roles": sorted(roles)}, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _strict_roles(value: list[str]) -> tuple[str, ...]:
    if not value or len(set(value)) != len(value) or any(r not in ROLE_NAMES for r in value):
        raise ValueError(f"roles is not a non-empty list of distinct names from {', '.join(ROLE_NAMES)}")
    return tuple(sorted(value))


@dataclass(frozen=True)
class PublicIdentity:
    """The public part of an identity: what a platform pins and what a supplier may hand out.

    ``roles`` are the roles the identity declares for itself (signed by its key: ``roles_signature``);
    empty when its file declares none. Two public identities are equal when name, prefix and key are.
    """

    name: str
    prefix: int
    public_key: bytes
    roles: tuple[str, ...] = field(default=(), compare=False)
    roles_signature: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        """The short supplier id derived from the public key."""
        return supplier_id(self.public_key)

    @property
    def fingerprint(self) -> str:
        """The public key's fingerprint, for people to compare (e.g. 1a2b:3c4d:...)."""
        return fingerprint(self.public_key)

    @property
    def prefix_text(self) -> str:
        """The issuer prefix as printed."""
        return prefix_text(self.prefix)

    def to_dict(self) -> dict[str, Any]:
        """The public identity file's fields (public key in base64)."""
        return {
            "kind": _PUBLIC_KIND,
            "version": 1,
            "name": self.name,
            "prefix": self.prefix_text,
            "public_key": _b64(self.public_key),
            "fingerprint": self.fingerprint,
            **({"roles": list(self.roles), "roles_signature": _b64(self.roles_signature)}
               if self.roles and self.roles_signature is not None else {}),
        }

    def to_bytes(self) -> bytes:
        """The public identity file's exact bytes (what ``save`` writes), e.g. for stdout."""
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this public identity to a new 0644 file (never overwriting one)."""
        return _save_public(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicIdentity:
        """Read a public identity file, refusing a secret one or anything malformed."""
        source = Path(path)
        return cls.from_bytes(_read_small(source, "public identity file"), str(source))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> PublicIdentity:
        """Parse a public identity file's bytes strictly; ``source`` names it in errors."""
        fix = "ask its owner for a fresh copy (keyvault identity show --public)"
        head = _head(data, source, "public identity file", fix)
        if head.kind == _FILE_KIND or head.secret_key is not msgspec.UNSET:
            raise IdentityError(_SECRET_GIVEN.format(source=source))
        try:
            if head.kind != _PUBLIC_KIND:
                raise ValueError("it is not a keyvault public identity (kind is not keyvault-public-identity)")
            version = head.version
            if type(version) is not int or version != 1:
                newer = type(version) is int and version > 1
                raise ValueError("version is not 1" + (" (written by a newer keyvault? upgrade)" if newer else ""))
        except ValueError as exc:
            raise IdentityError(f"public identity file {source} is not valid: {exc}; {fix}") from None
        doc: PublicIdentityFile = _strict(_PUBLIC_FILE, data, source, "public identity file", fix)
        try:
            name = _strict_name(doc.name)
            prefix = _strict_prefix(doc.prefix)
            key = _unb64(doc.public_key, "public_key", _PUBLIC_KEY_BYTES)
            nacl.signing.VerifyKey(key)
            if (doc.roles is msgspec.UNSET) != (doc.roles_signature is msgspec.UNSET):
                raise ValueError("roles and roles_signature come together (the key signs the roles it declares)")
            roles = () if doc.roles is msgspec.UNSET else _strict_roles(doc.roles)
            if doc.roles is not msgspec.UNSET and list(roles) != doc.roles:
                raise ValueError("roles are not in sorted order")
            roles_sig = (None if doc.roles_signature is msgspec.UNSET
                         else _unb64(doc.roles_signature, "roles_signature", _SIGNATURE_BYTES))
        except (TypeError, ValueError, nacl.exceptions.CryptoError) as exc:
            raise IdentityError(f"public identity file {source} is not valid: {exc}; {fix}") from None
        if doc.fingerprint != fingerprint(key):
            raise IdentityError(f"public identity file {source}: its fingerprint does not match its public key, "
                                "so the file was edited; do not trust it: ask its owner for a fresh copy and "
                                "compare the fingerprint with them")
        if roles_sig is not None:
            verify_signature(key, ROLES_FORMAT, roles_statement(name, prefix, key, roles), roles_sig,
                             f"public identity file {source}: the roles it declares")
        return cls(name=name, prefix=prefix, public_key=key, roles=roles, roles_signature=roles_sig)


def public_part(path: str | os.PathLike[str]) -> PublicIdentity:
    """The public identity in ``path``: a public identity file, or a (0600) secret one's public part."""
    source = Path(path)
    data = _read_small(source, "identity file")
    try:
        kind = _HEAD.decode(data).kind
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        kind = None  # from_bytes says what is wrong
    if kind == _FILE_KIND:
        return Identity.load(source).public  # enforces 0600 and checks the key pair
    return PublicIdentity.from_bytes(data, str(source))


@dataclass(frozen=True)
class Identity:
    """A named Ed25519 key pair with its issuer prefix. The secret key is never in the repr."""

    name: str
    prefix: int
    signing_key: nacl.signing.SigningKey = field(repr=False, compare=False)

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key: the identity itself."""
        return bytes(self.signing_key.verify_key)

    @property
    def id(self) -> str:
        """The short supplier id derived from the public key."""
        return supplier_id(self.public_key)

    @property
    def prefix_text(self) -> str:
        """The issuer prefix as printed."""
        return prefix_text(self.prefix)

    @property
    def fingerprint(self) -> str:
        """The public key's fingerprint, for people to compare (e.g. 1a2b:3c4d:...)."""
        return fingerprint(self.public_key)

    @property
    def public(self) -> PublicIdentity:
        """The public part of this identity (safe to hand out)."""
        return PublicIdentity(name=self.name, prefix=self.prefix, public_key=self.public_key)

    @classmethod
    def generate(cls, name: str, prefix: str | None = None) -> Identity:
        """A new identity with a fresh key from the OS CSPRNG."""
        name = _check_name(name)
        key = nacl.signing.SigningKey.generate()
        value = parse_prefix(prefix) if prefix else default_prefix(bytes(key.verify_key))
        return cls(name=name, prefix=value, signing_key=key)

    def public_with_roles(self, roles: list[str] | tuple[str, ...]) -> PublicIdentity:
        """The public part declaring ``roles`` (supplier, distributor, engine, witness), signed by this key."""
        try:
            declared = _strict_roles(list(roles))
        except ValueError as exc:
            raise IdentityError(f"{exc}; name each role once") from None
        signature = self.sign(ROLES_FORMAT, roles_statement(self.name, self.prefix, self.public_key, declared))
        return PublicIdentity(self.name, self.prefix, self.public_key, declared, signature)

    def sign(self, payload_type: str, body: bytes) -> bytes:
        """The Ed25519 signature of ``body`` under ``payload_type``."""
        return self.signing_key.sign(pae(payload_type, body)).signature

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this identity to a new 0600 file."""
        target = Path(path)
        doc = {
            "kind": _FILE_KIND,
            "version": 1,
            "name": self.name,
            "prefix": self.prefix_text,
            "public_key": base64.b64encode(self.public_key).decode(),
            "secret_key": base64.b64encode(bytes(self.signing_key)).decode(),
        }
        try:
            write_new(target, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o600)
        except FileExistsError:
            raise IdentityError(f"{target} already exists; choose another --out (an identity is never overwritten)") from None
        except StoreFullError:
            raise  # (and no file: never a half-written secret)
        except OSError as exc:
            raise IdentityError(f"cannot write {target}: {exc.strerror}") from None
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read an identity file, refusing it unless it is 0600 and well-formed."""
        source = Path(path)
        fix = "restore it from your backup"
        try:
            check_private_file(source, "identity file")
            data = source.read_bytes()
        except FileNotFoundError:
            raise IdentityError(f"identity file {source} does not exist; create one with `keyvault supplier init`") from None
        except OSError as exc:
            raise IdentityError(f"identity file {source} cannot be read ({exc.__class__.__name__}); {fix}") from None
        try:
            head = _HEAD.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise IdentityError(f"identity file {source} cannot be read (not valid JSON: {exc}); {fix}") from None
        except msgspec.ValidationError as exc:
            raise IdentityError(f"identity file {source} is not a valid keyvault identity ({exc}); {fix}") from None
        if head.kind in (_PUBLIC_KIND, _ROTATION_KIND):
            raise IdentityError(f"{source} is a {head.kind[9:].replace('-', ' ')} file, which cannot sign; "
                                "give the secret identity file (from `keyvault supplier init`)")
        try:
            doc = _SECRET_FILE.decode(data)
        except msgspec.ValidationError as exc:  # the message names the field, never its value
            raise IdentityError(f"identity file {source} is not a valid keyvault identity ({exc}); {fix}") from None
        try:
            if doc.kind != _FILE_KIND or doc.version != 1:
                raise ValueError("not a keyvault identity")
            key = nacl.signing.SigningKey(base64.b64decode(doc.secret_key, validate=True))
            if bytes(key.verify_key) != base64.b64decode(doc.public_key, validate=True):
                raise ValueError("public key does not match secret key")
            if len(doc.prefix) != PREFIX_SYMBOLS:
                raise ValueError("bad prefix")
            return cls(name=doc.name, prefix=parse_prefix(doc.prefix), signing_key=key)
        except (TypeError, ValueError, nacl.exceptions.CryptoError) as exc:
            raise IdentityError(f"identity file {source} is not a valid keyvault identity ({exc}); {fix}") from None

    def rotate(self, new_name: str | None = None) -> tuple[Identity, Rotation]:
        """A fresh key pair with the same prefix (and name unless given), and the rotation both keys sign."""
        new = Identity(name=_check_name(new_name) if new_name is not None else self.name, prefix=self.prefix,
                       signing_key=nacl.signing.SigningKey.generate())
        record = json.dumps({
            "format": ROTATION_FORMAT,
            "name": new.name,
            "prefix": new.prefix_text,
            "old_public_key": _b64(self.public_key),
            "new_public_key": _b64(new.public_key),
            "at": now_ms(),
        }, sort_keys=True, separators=(",", ":")).encode("utf-8")
        rotation = Rotation.from_bytes(Rotation.envelope(record, self.sign(ROTATION_FORMAT, record),
                                                         new.sign(ROTATION_FORMAT, record)), "<new rotation>")
        return new, rotation


@dataclass(frozen=True)
class Rotation:
    """An identity's move to a new key of the same issuer prefix, signed by the old key and by the new key.

    The record carries one name: the one the identity goes by after the rotation (also set on ``old``).
    """

    old: PublicIdentity
    new: PublicIdentity
    at: int
    record: bytes
    old_signature: bytes
    new_signature: bytes

    @staticmethod
    def envelope(record: bytes, old_signature: bytes, new_signature: bytes) -> bytes:
        """A rotation file's bytes around an exact signed ``record``."""
        doc = {
            "kind": _ROTATION_KIND,
            "record": _b64(record),
            "old_signature": _b64(old_signature),
            "new_signature": _b64(new_signature),
        }
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    def to_bytes(self) -> bytes:
        """The rotation file's exact bytes (what ``save`` writes)."""
        return self.envelope(self.record, self.old_signature, self.new_signature)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this rotation to a new 0644 file (never overwriting one)."""
        return _save_public(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Rotation:
        """Read a rotation file: both signatures checked over the exact record, then the record parsed strictly."""
        source = Path(path)
        return cls.from_bytes(_read_small(source, "rotation file"), str(source))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Rotation:
        """Parse a rotation file's bytes: verify both signatures (old key, then new), then the record."""
        fix = "ask the sender for a fresh copy"
        head = _head(data, source, "rotation file", fix)
        if head.kind != _ROTATION_KIND:
            raise IdentityError(f"rotation file {source} is not valid: it is not a keyvault rotation (kind is not "
                                f"keyvault-rotation); {fix}")
        doc: RotationFile = _strict(_ROTATION_FILE, data, source, "rotation file", fix)
        try:
            record = base64.b64decode(doc.record, validate=True)
            if _b64(record) != doc.record or not record:
                raise ValueError("record is not canonical base64")
            old_sig = _unb64(doc.old_signature, "old_signature", _SIGNATURE_BYTES)
            new_sig = _unb64(doc.new_signature, "new_signature", _SIGNATURE_BYTES)
        except (TypeError, ValueError) as exc:
            raise IdentityError(f"rotation file {source} is not valid: {exc}; {fix}") from None
        old_key, new_key = cls._signers(record, source)
        verify_signature(old_key, ROTATION_FORMAT, record, old_sig,
                         f"rotation file {source}: the OLD key's signature ({fingerprint(old_key)})")
        verify_signature(new_key, ROTATION_FORMAT, record, new_sig,
                         f"rotation file {source}: the NEW key's signature ({fingerprint(new_key)})")
        # Both keys signed exactly these bytes: only now is the record read for what it says.
        refused = (f"rotation file {source} is signed by both keys but refused: {{}}; "
                   "ask the supplier to run `keyvault identity rotate` again")
        try:
            body = _ROTATION_RECORD.decode(record)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            raise IdentityError(refused.format(f"the record is not valid ({exc})")) from None
        try:
            # The writer's exact bytes: compact, sorted, ASCII-escaped JSON (no duplicate or reordered key).
            if json.dumps(msgspec.to_builtins(body), sort_keys=True, separators=(",", ":")).encode("utf-8") != record:
                raise ValueError("the record is not compact sorted JSON")
            if body.format != ROTATION_FORMAT:
                raise ValueError(f"the record's format is not {ROTATION_FORMAT}")
            name = _strict_name(body.name)
            prefix = _strict_prefix(body.prefix)
            at = body.at
            if old_key == new_key:
                raise ValueError("the old and new keys are the same key, so nothing rotates")
        except (TypeError, ValueError) as exc:
            raise IdentityError(refused.format(exc)) from None
        return cls(old=PublicIdentity(name, prefix, old_key), new=PublicIdentity(name, prefix, new_key), at=at,
                   record=record, old_signature=old_sig, new_signature=new_sig)

    @staticmethod
    def _signers(record: bytes, source: str) -> tuple[bytes, bytes]:
        """The two keys a record names (read only to check the signatures); BadSignatureError if it names none."""
        try:
            keys = _ROTATION_KEYS.decode(record)
            return (_unb64(keys.old_public_key, "old_public_key", _PUBLIC_KEY_BYTES),
                    _unb64(keys.new_public_key, "new_public_key", _PUBLIC_KEY_BYTES))
        except (ValueError, msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            raise BadSignatureError(
                f"rotation file {source}: the signed record does not name two keys, so its signatures cannot "
                "verify: the file was altered or damaged; ask the supplier for a fresh copy") from None
