"""The identities a store trusts: pinned public keys, and rotations signed by the old key and the new.

A manifest, transfer or lot is accepted only when its signer is pinned here.
Pinning is a deliberate act (``keyvault trust add SUPPLIER.pub`` after the
fingerprint was checked by another channel); a store's own issuing identity is
pinned when it first issues. A rotation moves the trust (and the issuer
prefix) from the old key to the new one; the old key is kept, marked rotated,
so what it signed before stays explainable and nothing new it signs is taken.
Every change is an event in the log.
"""

from __future__ import annotations

from typing import cast

from ..clock import iso
from ..errors import NotFoundError, TrustError
from ..formats.identity import PublicIdentity, Rotation, fingerprint, supplier_id
from ..formats.keyformat import parse_prefix, prefix_text
from ..store import Txn
from ..store.records import LEVEL_SUPPLIER, dump, u64
from ..vocabulary import Role
from .catalog import Catalog
from .shapes import TrustEntry, TrustRecord
from .state import State

ROLES = tuple(Role.names())


def pin(state: State, txn: Txn, cat: Catalog, name: str, prefix: int, public_key: bytes, role: str,
        now: int, rotated_from: bytes | None = None) -> TrustRecord:
    """Pin a public key (idempotent); its trust record."""
    doc = cat.trusted.get(public_key)
    if doc is not None and not doc.get("rotated_to"):
        return cast(TrustRecord, doc)
    if doc is not None:
        raise TrustError(f"{name!r} (fingerprint {fingerprint(public_key)}) was rotated away on "
                         f"{iso(doc['rotated_at'])}; it cannot be pinned again")
    doc = {"name": name, "prefix": prefix_text(prefix), "role": role, "pinned_at": now,
           "fingerprint": fingerprint(public_key), "rotated_from": rotated_from.hex() if rotated_from else None,
           "rotated_to": None}
    txn.put("trust", public_key, dump(doc))
    txn.bump_generation()
    state.log.append(txn, "trust", now, {"action": "pin", "name": name, "role": role, "public_key": public_key.hex(),
                                          "fingerprint": doc["fingerprint"]},
                      [LEVEL_SUPPLIER + supplier_id(public_key).encode()])
    return cast(TrustRecord, doc)


def unpin(state: State, txn: Txn, cat: Catalog, public_key: bytes, now: int) -> TrustRecord:
    """Stop trusting a key: nothing it signs is accepted from now on (what it signed before stays)."""
    doc = cat.trusted.get(public_key)
    if doc is None:
        raise NotFoundError("that identity is not pinned in this store; `keyvault trust list` shows what is")
    txn.delete("trust", public_key)
    txn.bump_generation()
    state.log.append(txn, "trust", now, {"action": "remove", "name": doc["name"], "public_key": public_key.hex(),
                                          "fingerprint": doc["fingerprint"]},
                      [LEVEL_SUPPLIER + supplier_id(public_key).encode()])
    return cast(TrustRecord, doc)


def rotate(state: State, txn: Txn, cat: Catalog, rotation: Rotation, now: int) -> TrustRecord:
    """Accept a rotation (both signatures already verified): the new key inherits trust and issuer prefix."""
    old, new = rotation.old, rotation.new
    doc = cat.trusted.get(old.public_key)
    if doc is None or doc.get("rotated_to"):
        raise TrustError(f"the rotation replaces a key of {old.name!r} (fingerprint {old.fingerprint}) that this "
                         "store does not trust (or that was already rotated): pin the current key instead")
    new_doc = pin(state, txn, cat, new.name, new.prefix, new.public_key, doc["role"], now, old.public_key)
    doc = dict(doc, rotated_to=new.public_key.hex(), rotated_at=now)
    txn.put("trust", old.public_key, dump(doc))
    old_sid, new_sid = supplier_id(old.public_key), supplier_id(new.public_key)
    supplier = cat.suppliers.get(old_sid)
    if supplier is not None:  # the prefix and batch numbering pass to the new key
        moved = dict(supplier, public_key=new.public_key.hex(), first_seen=now, rotated_from=old_sid)
        txn.put("suppliers", new_sid.encode(), dump(moved))
        txn.put("prefixes", u64(old.prefix), new_sid.encode())
    txn.bump_generation()
    state.log.append(txn, "trust", now, {"action": "rotate", "name": new.name, "old_public_key": old.public_key.hex(),
                                          "new_public_key": new.public_key.hex(), "record": rotation.record.hex()},
                      [LEVEL_SUPPLIER + old_sid.encode(), LEVEL_SUPPLIER + new_sid.encode()])
    return new_doc


def entries(cat: Catalog) -> list[TrustEntry]:
    """Every pinned identity, JSON-ready."""
    out: list[TrustEntry] = []
    for key, doc in sorted(cat.trusted.items(), key=lambda item: (item[1]["name"], item[1]["pinned_at"])):
        out.append({"name": doc["name"], "role": doc["role"], "prefix": doc["prefix"],
                    "fingerprint": doc["fingerprint"], "public_key": key.hex(), "supplier": supplier_id(key),
                    "pinned_at": iso(doc["pinned_at"]), "rotated_to": doc.get("rotated_to"),
                    "rotated_from": doc.get("rotated_from")})
    return out


def public_identity(cat: Catalog, public_key: bytes) -> PublicIdentity | None:
    """A pinned key as a public identity."""
    doc = cat.trusted.get(public_key)
    if doc is None:
        return None
    return PublicIdentity(name=doc["name"], prefix=parse_prefix(doc["prefix"]), public_key=public_key)

