"""What verification reads from memory: batches, suppliers and blacklist entries.

The catalog is reloaded whenever the store's generation counter moves (every
change to these databases bumps it, in any process), so a blacklist entry
takes effect on the next verify everywhere, at the cost of one small read per
call instead of several lookups per key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._fast import BatchRow, KeyBlock
from ..errors import StoreCorruptError
from ..clock import iso
from ..formats.keyformat import batch_text, serial_text
from ..store import Txn
from ..store.records import (
    BATCHES_DIGEST,
    BLACKLIST_DIGEST,
    LEVEL_BATCH,
    LEVEL_KEY,
    LEVEL_NAMES,
    LEVEL_SUPPLIER,
    batches_digest,
    blacklist_digest,
    from_u64,
    load,
)
from .tokens import Grant, grants, stored


@dataclass(frozen=True)
class BatchInfo:
    """One batch as the store knows it. The salt is public (it is in the manifest)."""

    key: int
    supplier: str
    supplier_name: str
    product: str
    kind: str  # native | code | pair
    origin: str  # issued (made here) | upstream (CSV made here) | manifest (imported)
    count: int
    valid_from: int | None  # ms since the epoch
    valid_until: int | None
    created_at: int
    added_at: int
    manifest: str  # the manifest id (SHA-256 over its signed header, tag kv1/manifest-id)
    salt: bytes = field(repr=False)
    uses: int = 1  # how many orders may redeem each key (once each): 1 for single-use keys

    @property
    def id(self) -> str:
        """The batch id as printed: PPPP-BBB."""
        return batch_text(self.key)

    @classmethod
    def from_record(cls, key: int, doc: dict[str, Any]) -> BatchInfo:
        """Rebuild from the JSON kept in the batches database."""
        return cls(key=key, supplier=doc["supplier"], supplier_name=doc["supplier_name"], product=doc["product"],
                   kind=doc["kind"], origin=doc["origin"], count=doc["count"], valid_from=doc["valid_from"],
                   valid_until=doc["valid_until"], created_at=doc["created_at"], added_at=doc["added_at"],
                   manifest=doc["manifest"], salt=bytes.fromhex(doc["salt"]), uses=doc.get("uses", 1))

    def to_record(self) -> dict[str, Any]:
        """The JSON kept in the batches database."""
        doc = {"supplier": self.supplier, "supplier_name": self.supplier_name, "product": self.product,
               "kind": self.kind, "origin": self.origin, "count": self.count, "valid_from": self.valid_from,
               "valid_until": self.valid_until, "created_at": self.created_at, "added_at": self.added_at,
               "manifest": self.manifest, "salt": self.salt.hex()}
        if self.uses != 1:
            doc["uses"] = self.uses
        return doc

    def to_dict(self) -> dict[str, Any]:
        """Public fields for JSON output."""
        return {"batch": self.id, "supplier": self.supplier, "supplier_name": self.supplier_name,
                "product": self.product, "kind": self.kind, "origin": self.origin, "count": self.count,
                "valid_from": iso(self.valid_from), "valid_until": iso(self.valid_until),
                "created_at": iso(self.created_at), "added_at": iso(self.added_at), "manifest": self.manifest,
                "uses": self.uses}


@dataclass(frozen=True)
class BlacklistEntry:
    """A refusal of a key, a batch or a supplier, with its reason."""

    level: str  # key | batch | supplier
    target: str  # serial, batch id or supplier id: never a key
    reason: str
    at: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"level": self.level, "target": self.target, "reason": self.reason, "at": self.at}


def blacklist_target(raw: bytes) -> tuple[str, str]:
    """(level name, printed target) of a stored blacklist key."""
    level, target = raw[:1], raw[1:]
    if level == LEVEL_KEY:
        return LEVEL_NAMES[level], serial_text(from_u64(target))
    if level == LEVEL_BATCH:
        return LEVEL_NAMES[level], batch_text(from_u64(target))
    return LEVEL_NAMES[level], target.decode("ascii")


@dataclass
class Catalog:
    """A snapshot of the store's configuration at one generation."""

    generation: int = -1
    batches: dict[int, BatchInfo] = field(default_factory=dict)
    suppliers: dict[str, dict[str, Any]] = field(default_factory=dict)
    prefixes: dict[int, str] = field(default_factory=dict)
    keys_blocked: dict[int, BlacklistEntry] = field(default_factory=dict)
    batches_blocked: dict[int, BlacklistEntry] = field(default_factory=dict)
    suppliers_blocked: dict[str, BlacklistEntry] = field(default_factory=dict)
    has_imported: bool = False
    #: What the hot path reads per batch (the block is the supplier's or the batch's entry, or None).
    rows: dict[int, BatchRow] = field(default_factory=dict)
    #: Key-level blacklist entries by serial.
    key_rows: dict[int, KeyBlock] = field(default_factory=dict)
    #: Batches by their printed id (how results name them).
    by_id: dict[str, BatchInfo] = field(default_factory=dict)
    #: Pinned identities by public key: name, prefix, role, pinned_at, and rotated_to/rotated_from (hex) if any.
    trusted: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    #: Count-limited batches: their uses, by printed batch id (every other batch is single-use).
    uses: dict[str, int] = field(default_factory=dict)
    #: Service tokens by their hash.
    grants: dict[bytes, Grant] = field(default_factory=dict)

    @classmethod
    def load(cls, txn: Txn, generation: int) -> Catalog:
        """Read the whole configuration in one transaction; StoreCorruptError when a record of it is damaged."""
        try:
            return cls._load(txn, generation)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # (StoreCorruptError is none of these)
            raise StoreCorruptError(f"a configuration record (batch, supplier, trust, blacklist or token) is damaged "
                                    f"({type(exc).__name__}): run `keyvault check` and restore the store from a "
                                    "backup") from None

    @classmethod
    def _load(cls, txn: Txn, generation: int) -> Catalog:
        cat = cls(generation=generation)
        digest = bytes(32)
        for key, value in txn.items("batches"):
            digest = batches_digest(digest, key, None, value)
            info = BatchInfo.from_record(from_u64(key), load(value))
            cat.batches[info.key] = info
            cat.by_id[info.id] = info
            cat.has_imported |= info.kind != "native"
            if info.uses != 1:
                cat.uses[info.id] = info.uses
        summed = txn.get("meta", BATCHES_DIGEST)
        if summed is not None and digest != bytes(summed):
            raise StoreCorruptError("the batch records are damaged (they do not add up to their digest): nothing was "
                                    "decided; run `keyvault check` and restore the store from a backup")
        for key, value in txn.items("suppliers"):
            cat.suppliers[key.decode("ascii")] = load(value)
        for key, value in txn.items("prefixes"):
            cat.prefixes[from_u64(key)] = value.decode("ascii")
        for key, value in txn.items("trust"):
            cat.trusted[bytes(key)] = load(value)
        digest = bytes(32)
        for key, value in txn.items("blacklist"):
            digest = blacklist_digest(digest, key, None, value)
            doc = load(value)
            level, target = blacklist_target(key)
            entry = BlacklistEntry(level, target, doc["reason"], iso(doc["at"]))
            if key[:1] == LEVEL_KEY:
                cat.keys_blocked[from_u64(key[1:])] = entry
            elif key[:1] == LEVEL_BATCH:
                cat.batches_blocked[from_u64(key[1:])] = entry
            elif key[:1] == LEVEL_SUPPLIER:
                cat.suppliers_blocked[key[1:].decode("ascii")] = entry
        if digest != bytes(txn.get("meta", BLACKLIST_DIGEST) or bytes(32)):
            raise StoreCorruptError("the blacklist is damaged (its entries do not add up to its digest): nothing was "
                                    "decided; run `keyvault check` and restore the store from a backup")
        for info in cat.batches.values():
            block = cat.suppliers_blocked.get(info.supplier) or cat.batches_blocked.get(info.key)
            cat.rows[info.key] = BatchRow(info.salt, info.valid_from, info.valid_until,
                                          KeyBlock(block.level, block.reason) if block else None, info.id,
                                          info.supplier, info.supplier_name, info.product)
        cat.key_rows = {serial: KeyBlock(e.level, e.reason) for serial, e in cat.keys_blocked.items()}
        cat.grants = grants(stored(txn))
        return cat

    def block_for(self, serial: int, batch: BatchInfo) -> BlacklistEntry | None:
        """The broadest blacklist entry that refuses this key, if any."""
        return (self.suppliers_blocked.get(batch.supplier) or self.batches_blocked.get(batch.key)
                or self.keys_blocked.get(serial))

    def supplier_by_ref(self, ref: str) -> str | None:
        """A supplier id from an id, an issuer prefix, or a unique name."""
        ref = ref.strip()
        if ref.lower() in self.suppliers:
            return ref.lower()
        for sid, doc in self.suppliers.items():
            if doc["prefix"] == ref.upper():
                return sid
        named = [sid for sid, doc in self.suppliers.items() if doc["name"] == ref]
        return named[0] if len(named) == 1 else None

    def trusts(self, public_key: bytes) -> bool:
        """True when the key is pinned here and has not been rotated away."""
        doc = self.trusted.get(public_key)
        return doc is not None and not doc.get("rotated_to")

    def prefix_owner(self, prefix: int) -> str | None:
        """The supplier id that holds an issuer prefix."""
        return self.prefixes.get(prefix)

