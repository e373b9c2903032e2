"""Identities: Ed25519 key pairs (pynacl) in 0600 files, and how bytes are signed.

Bytes are signed through DSSE's pre-authentication encoding, which binds a
type string and both lengths, so a signature made for one kind of record can
never be replayed as another.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing

from .errors import BadSignatureError, IdentityError
from .keyformat import PREFIX_SYMBOLS, parse_prefix, prefix_text

_FILE_KIND = "keyvault-identity"
_MAX_NAME = 64


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


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; never overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


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

    @classmethod
    def generate(cls, name: str, prefix: str | None = None) -> Identity:
        """A new identity with a fresh key from the OS CSPRNG."""
        name = name.strip()
        if not name or len(name) > _MAX_NAME or not name.isprintable():
            raise IdentityError(f"a supplier name must be 1-{_MAX_NAME} printable characters")
        key = nacl.signing.SigningKey.generate()
        value = parse_prefix(prefix) if prefix else default_prefix(bytes(key.verify_key))
        return cls(name=name, prefix=value, signing_key=key)

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
            write_private_file(target, (json.dumps(doc, indent=2) + "\n").encode())
        except FileExistsError:
            raise IdentityError(f"{target} already exists; choose another --out (an identity is never overwritten)") from None
        except OSError as exc:
            raise IdentityError(f"cannot write {target}: {exc.strerror}") from None
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read an identity file, refusing it unless it is 0600 and well-formed."""
        source = Path(path)
        try:
            check_private_file(source, "identity file")
            doc = json.loads(source.read_bytes())
        except FileNotFoundError:
            raise IdentityError(f"identity file {source} does not exist; create one with `keyvault supplier init`") from None
        except (OSError, ValueError) as exc:
            raise IdentityError(f"identity file {source} cannot be read ({exc.__class__.__name__}); "
                                "restore it from your backup") from None
        try:
            if doc["kind"] != _FILE_KIND or doc["version"] != 1:
                raise ValueError("not a keyvault identity")
            key = nacl.signing.SigningKey(base64.b64decode(doc["secret_key"], validate=True))
            if bytes(key.verify_key) != base64.b64decode(doc["public_key"], validate=True):
                raise ValueError("public key does not match secret key")
            prefix = str(doc["prefix"])
            if len(prefix) != PREFIX_SYMBOLS:
                raise ValueError("bad prefix")
            return cls(name=str(doc["name"]), prefix=parse_prefix(prefix), signing_key=key)
        except (KeyError, TypeError, ValueError, nacl.exceptions.CryptoError) as exc:
            raise IdentityError(f"identity file {source} is not a valid keyvault identity ({exc}); "
                                "restore it from your backup") from None
