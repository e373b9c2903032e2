"""Service tokens: scoped bearer secrets for the HTTP API. The store keeps only their hashes.

A token is 256 random bits, so one SHA-256 (with a domain tag) is enough to
store it: nothing can be guessed from the hash, and no slow KDF is needed. Scopes
nest: ``verify`` < ``redeem`` < ``admin``; a token allows its own scope and
every one below it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from ..clock import iso
from ..errors import UsageError
from ..store import Txn
from ..store.records import dump, load
from ..vocabulary import Scope
from .shapes import TokenEntry

SCOPES = tuple(Scope.names())  # each includes the ones before it
PREFIX = "kvt_"  # so secret scanners and people recognise a keyvault token
_TAG = b"kv1/token\x00"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = b"tokens"  # in the meta database: {name: {"hash": hex, "scope": ..., "created": ms}}


@dataclass(frozen=True, slots=True)
class Grant:
    """Who a token was issued to and what it may do (never the token itself)."""

    name: str
    scope: str

    def allows(self, needed: str) -> bool:
        """True when this grant's scope is ``needed`` or above it."""
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def new_token() -> str:
    """A fresh token: the prefix and 43 URL-safe characters (256 bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """What the store keeps of a token."""
    return hashlib.sha256(_TAG + token.encode("utf-8", "surrogatepass")).digest()


def check_name(name: object) -> str:
    """A valid token name, or UsageError saying what one looks like."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError("a token name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_scope(scope: object) -> str:
    """A valid scope, or UsageError naming the valid ones."""
    return Scope.parse(scope).value


def stored(txn: Txn) -> dict[str, Any]:
    """The token records by name (hash, scope, creation time)."""
    value = txn.get("meta", _KEY)
    return load(value) if value else {}


def save(txn: Txn, doc: dict[str, Any]) -> None:
    """Replace the token records; every process reloads its grants with the catalog."""
    txn.put("meta", _KEY, dump(doc))
    txn.bump_generation()


def grants(doc: dict[str, Any]) -> dict[bytes, Grant]:
    """Grants by token hash, from the stored record."""
    return {bytes.fromhex(entry["hash"]): Grant(name, entry["scope"]) for name, entry in doc.items()}


def listing(doc: dict[str, Any]) -> list[TokenEntry]:
    """Name, scope and creation time of each token, by name (the hashes are not shown)."""
    return [{"name": name, "scope": doc[name]["scope"], "created_at": iso(doc[name]["created"])}
            for name in sorted(doc)]
