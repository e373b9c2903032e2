"""The identities a store trusts: pinned public keys with their roles, and rotations signed by the old key and the new.

A pin binds a key to its name, its issuer prefix and its roles (supplier,
distributor, engine, witness: ``keyvault.vocabulary.Role``). A manifest is
accepted only from a key pinned as a supplier, under the prefix pinned with
it; no two current suppliers share a prefix (a rotation hands the prefix from
the old key to the new). Records written before roles existed hold one
``role`` (``platform``, ``own``, ...): they are read in today's names
(:func:`roles_of`), so old stores need no migration.
Pinning is a deliberate act (``keyvault trust add SUPPLIER.pub`` after the
fingerprint was checked by another channel); a store's own issuing identity is
pinned when it first issues. A rotation moves the trust (and the issuer
prefix) from the old key to the new one; the old key is kept, marked rotated,
so what it signed before stays explainable and nothing new it signs is taken.
Every change is an event in the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

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


def roles_of(doc: Mapping[str, Any]) -> list[str]:
    """A trust record's roles: its ``roles``, or (a record of an earlier version) its one ``role`` in today's name."""
    roles = doc.get("roles")
    if roles is None:
        return [Role.parse(doc["role"]).value]
    return [Role.parse(r).value for r in roles]


def _prefix_holder(cat: Catalog, prefix: int, public_key: bytes, rotated_from: bytes | None) -> str | None:
    """Who else (name and fingerprint) holds ``prefix`` as a current supplier here, if anyone."""
    for key, doc in cat.trusted.items():
        if (key not in (public_key, rotated_from) and not doc.get("rotated_to") and doc["prefix"] == prefix_text(prefix)
                and Role.SUPPLIER.value in roles_of(doc)):
            return f"{doc['name']!r} (fingerprint {fingerprint(key)})"
    owner = cat.prefix_owner(prefix)
    allowed = {supplier_id(public_key)} | ({supplier_id(rotated_from)} if rotated_from else set())
    if owner is not None and owner not in allowed:
        return f"{cat.suppliers.get(owner, {}).get('name', owner)!r} (supplier id {owner})"
    return None


def pin(state: State, txn: Txn, cat: Catalog, name: str, prefix: int, public_key: bytes, roles: Sequence[str],
        now: int, rotated_from: bytes | None = None) -> TrustRecord:
    """Pin a public key in ``roles`` (pinning again adds roles; idempotent otherwise); its trust record.

    A supplier's prefix must not be held by another current supplier: TrustError names the holder."""
    wanted = sorted({Role.parse(r).value for r in roles}, key=ROLES.index)
    if not wanted:
        raise TrustError("pin an identity in at least one role: " + ", ".join(ROLES))
    doc = cat.trusted.get(public_key)
    if doc is not None and doc.get("rotated_to"):
        raise TrustError(f"{name!r} (fingerprint {fingerprint(public_key)}) was rotated away on "
                         f"{iso(doc['rotated_at'])}; it cannot be pinned again")
    held = roles_of(doc) if doc is not None else []
    if doc is not None and set(wanted) <= set(held):
        return cast(TrustRecord, doc)
    merged = sorted(set(held) | set(wanted), key=ROLES.index)
    if doc is not None:
        name, prefix = doc["name"], parse_prefix(doc["prefix"])  # a pin's name and prefix never change
    if Role.SUPPLIER.value in merged:
        holder = _prefix_holder(cat, prefix, public_key, rotated_from)
        if holder is not None:
            raise TrustError(f"issuer prefix {prefix_text(prefix)} already belongs to {holder} in this store, so "
                             f"{name!r} (fingerprint {fingerprint(public_key)}) cannot be pinned as a supplier "
                             "under it: a supplier issues only under its own prefix. Check with both suppliers "
                             "which of them owns it; nothing was changed")
    if doc is None:
        doc = {"name": name, "prefix": prefix_text(prefix), "pinned_at": now, "fingerprint": fingerprint(public_key),
               "rotated_from": rotated_from.hex() if rotated_from else None, "rotated_to": None}
    doc = dict(doc, role=merged[0], roles=merged)  # `role`: what readers of earlier versions look at
    txn.put("trust", public_key, dump(doc))
    txn.bump_generation()
    state.log.append(txn, "trust", now, {"action": "pin", "name": name, "role": merged[0], "roles": merged,
                                          "public_key": public_key.hex(), "fingerprint": doc["fingerprint"]},
                      [LEVEL_SUPPLIER + supplier_id(public_key).encode()])
    return cast(TrustRecord, doc)


def check_signer(cat: Catalog, public_key: bytes, role: Role, what: str) -> dict[str, Any]:
    """The trust record of ``public_key`` if it is pinned, current and holds ``role``; TrustError saying why not."""
    doc = cat.trusted.get(public_key)
    if doc is None:
        raise TrustError(f"{what} is signed by fingerprint {fingerprint(public_key)}, whom this store does not trust "
                         "yet: get their public identity file, check that fingerprint with them by another channel, "
                         f"then run `keyvault trust add FILE --role {role.value}`")
    if doc.get("rotated_to"):
        raise TrustError(f"{what} is signed by a key of {doc['name']!r} that was rotated away; ask them to sign it "
                         "with their current key")
    roles = roles_of(doc)
    if role.value not in roles:
        raise TrustError(f"{what} is signed by {doc['name']!r} (fingerprint {fingerprint(public_key)}), pinned here "
                         f"only as {' and '.join(roles)}: only a {role.value}'s key may sign it. If they really are a "
                         f"{role.value} too, run `keyvault trust add FILE --role {role.value}`; nothing was changed")
    return dict(doc)


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
    new_doc = pin(state, txn, cat, new.name, new.prefix, new.public_key, roles_of(doc), now, old.public_key)
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
        roles = roles_of(doc)
        out.append({"name": doc["name"], "role": roles[0], "roles": roles, "prefix": doc["prefix"],
                    "fingerprint": doc["fingerprint"], "public_key": key.hex(), "supplier": supplier_id(key),
                    "pinned_at": iso(doc["pinned_at"]), "rotated_to": doc.get("rotated_to"),
                    "rotated_from": doc.get("rotated_from")})
    return out


def public_identity(cat: Catalog, public_key: bytes) -> PublicIdentity | None:
    """A pinned key as a public identity."""
    doc = cat.trusted.get(public_key)
    if doc is None:
        return None
    return PublicIdentity(name=doc["name"], prefix=parse_prefix(doc["prefix"]), public_key=public_key,
                          roles=tuple(sorted(roles_of(doc))))

