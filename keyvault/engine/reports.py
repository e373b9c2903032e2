"""Read-only reports over a store: statistics and a key's trace."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..clock import iso
from ..formats.keyformat import serial_index, serial_text
from ..results import Result
from ..store import Txn
from ..store.records import (
    LEVEL_BATCH,
    LEVEL_KEY,
    LEVEL_SUPPLIER,
    OUTCOME,
    from_u64,
    u64,
)
from .catalog import BatchInfo, Catalog

_COUNTS = ("redeemed", "void", "blacklisted")


def _counters(txn: Txn) -> dict[str, dict[str, int]]:
    """Every counter, grouped by scope (T, B:batch, S:supplier)."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for key, value in txn.items("counters"):
        text = key.decode("utf-8")
        if text.startswith("C:"):  # a client id may hold "/": split from the right
            if text.endswith("/throttled"):
                scope, name = text[:-len("/throttled")], "throttled"
            else:
                scope, _, status = text.rpartition("/refused/")
                name = "refused/" + status
        else:
            scope, _, name = text.partition("/")
        out[scope][name] = from_u64(value)
    return out


def _figures(counts: dict[str, int], keys: int) -> dict[str, Any]:
    refused = {name.split("/", 1)[1]: n for name, n in sorted(counts.items()) if name.startswith("refused/")}
    row: dict[str, Any] = {name: counts.get(name, 0) for name in _COUNTS}
    row["active"] = keys - row["redeemed"] - row["void"]
    row["refused"] = refused
    row["refused_total"] = sum(refused.values())
    return row


def build_stats(txn: Txn, cat: Catalog) -> dict[str, Any]:
    """Totals, then one row per supplier and per batch."""
    counters = _counters(txn)
    batches = []
    per_supplier: dict[str, list[BatchInfo]] = defaultdict(list)
    for info in sorted(cat.batches.values(), key=lambda b: b.key):
        per_supplier[info.supplier].append(info)
        row = info.to_dict()
        row.update(_figures(counters.get("B:" + info.id, {}), info.count))
        row["batch_blacklisted"] = info.key in cat.batches_blocked
        batches.append(row)
    suppliers = []
    for sid, doc in sorted(cat.suppliers.items(), key=lambda item: item[1]["prefix"]):
        own = per_supplier.get(sid, [])
        keys = sum(b.count for b in own)
        row = {"supplier": sid, "name": doc["name"], "prefix": doc["prefix"], "batches": len(own),
               "issued": sum(b.count for b in own if b.origin != "manifest"),
               "imported": sum(b.count for b in own if b.origin == "manifest"), "keys": keys}
        row.update(_figures(counters.get("S:" + sid, {}), keys))
        row["supplier_blacklisted"] = sid in cat.suppliers_blocked
        suppliers.append(row)
    keys = sum(b.count for b in cat.batches.values())
    totals = {"suppliers": len(cat.suppliers), "batches": len(cat.batches), "keys": keys,
              "issued": sum(b.count for b in cat.batches.values() if b.origin != "manifest"),
              "imported": sum(b.count for b in cat.batches.values() if b.origin == "manifest")}
    totals.update(_figures(counters.get("T", {}), keys))
    totals["blacklist_entries"] = len(cat.keys_blocked) + len(cat.batches_blocked) + len(cat.suppliers_blocked)
    clients: list[dict[str, Any]] = []
    for scope, counts in counters.items():
        if scope.startswith("C:"):
            refused = {name.split("/", 1)[1]: n for name, n in sorted(counts.items()) if name.startswith("refused/")}
            clients.append({"client": scope[2:], "refused": refused, "refused_total": sum(refused.values()),
                            "throttled": counts.get("throttled", 0)})
    clients.sort(key=lambda c: (-c["refused_total"] - c["throttled"], c["client"]))
    return {"totals": totals, "suppliers": suppliers, "batches": batches, "clients": clients}


def key_events(txn: Txn, serial: int, batch: BatchInfo, change: tuple[int, int, str, int] | None) -> list[int]:
    """Indices of the events that tell a key's story: its supplier's, its batch's and its own, oldest first.

    A redeem or void is found through the key's unfolded change (``change``, an overlay entry) or, once
    folded, through its outcome record, which names the event.
    """
    subjects = (LEVEL_KEY + u64(serial), LEVEL_BATCH + u64(batch.key), LEVEL_SUPPLIER + batch.supplier.encode())
    indices = {from_u64(key[-8:]) for subject in subjects for key, _ in txn.items("subjects", subject)
               if len(key) == len(subject) + 8}
    if change is not None:
        indices.add(change[3])
    else:
        outcome = txn.get("outcomes", u64(serial))
        if outcome is not None and len(outcome) >= OUTCOME.size:
            indices.add(OUTCOME.unpack_from(outcome)[2])
    return sorted(indices)


def build_trace(txn: Txn, cat: Catalog, serial: int, batch: BatchInfo, status: Result,
                events: list[dict[str, Any]]) -> dict[str, Any]:
    """Supplier, batch, product, current status and the history of one key, oldest event first."""
    sid = batch.supplier
    supplier = cat.suppliers.get(sid, {})
    for event in events:
        event["at"] = iso(int(event.pop("at_ms")))
    card = txn.get("upstream", u64(serial))
    blocks = [b.to_dict() for b in (cat.suppliers_blocked.get(sid), cat.batches_blocked.get(batch.key),
                                    cat.keys_blocked.get(serial)) if b is not None]
    return {
        "serial": serial_text(serial),
        "index": serial_index(serial),
        "card_number": card.decode() if card else None,
        "status": status.to_dict(),
        "supplier": {"id": sid, "name": supplier.get("name"), "prefix": supplier.get("prefix"),
                     "public_key": supplier.get("public_key"), "first_seen": iso(supplier.get("first_seen"))},
        "batch": batch.to_dict(),
        "blacklist": blocks,
        "events": events,
    }
