"""Read-only reports over a store: statistics and a key's trace."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from ..clock import iso
from ..formats.custody import read_transfer
from ..formats.keyformat import batch_key, serial_index, serial_text
from ..results import Result
from ..store import ACTIVE, Txn
from ..store.records import (
    LEVEL_BATCH,
    LEVEL_KEY,
    LEVEL_SUPPLIER,
    OUTCOME,
    from_u64,
    u64,
)
from .answers import BatchView, Stats, Trace, TraceSupplier
from .catalog import BatchInfo, Catalog
from .ledger import Change

_COUNTS = ("redeemed", "void")
_RECEIVED = b"R"  # the value of a custody batch index entry for a lot received here (lots.RECEIVED)


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


def _refused(counts: dict[str, int]) -> dict[str, Any]:
    refused = {name.split("/", 1)[1]: n for name, n in sorted(counts.items()) if name.startswith("refused/")}
    return {"refused": refused, "refused_total": sum(refused.values())}


def _received(txn: Txn, batch: int) -> list[tuple[int, int]] | None:
    """The merged index ranges of the lots of ``batch`` received here, or None when none was."""
    prefix = b"H" + u64(batch)
    ranges: list[tuple[int, int]] = []
    for key, value in txn.items("custody", prefix):
        if bytes(value) == _RECEIVED:
            data = txn.get("custody", b"T" + bytes(key[len(prefix):]))
            if data is not None:
                ranges += read_transfer(bytes(data), "a stored transfer").ranges
    if not ranges:
        return None
    merged: list[tuple[int, int]] = []
    for first, end in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((first, end))
    return merged


def _unspent(txn: Txn, serial: int, overlay: dict[int, Change]) -> bool:
    """True when a key is neither redeemed nor void (its unfolded change first, else its card record)."""
    change = overlay.get(serial)
    if change is not None:
        return change[0] == ACTIVE
    record = txn.get("cards", u64(serial))
    return record is not None and len(record) > 0 and record[0] == ACTIVE  # the state byte leads a card record


def _batch_figures(txn: Txn, cat: Catalog, info: BatchInfo, counts: dict[str, int],
                   overlay: dict[int, Change]) -> dict[str, Any]:
    """One batch's counts: held (all its keys, or only those received here in lots), redeemed, void,
    blacklisted (unspent keys under a key, batch or supplier entry) and active (the rest, still spendable)."""
    received = _received(txn, info.key)
    held = info.count if received is None else sum(end - first for first, end in received)
    row: dict[str, Any] = {name: counts.get(name, 0) for name in _COUNTS}
    if info.key in cat.batches_blocked or info.supplier in cat.suppliers_blocked:
        row["blacklisted"] = max(0, held - row["redeemed"] - row["void"])
    else:
        row["blacklisted"] = sum(
            1 for serial in cat.keys_blocked
            if batch_key(serial) == info.key and _unspent(txn, serial, overlay)
            and (received is None or any(a <= serial_index(serial) < b for a, b in received)))
    row["active"] = max(0, held - row["redeemed"] - row["void"] - row["blacklisted"])
    row["held"] = held
    row["received_ranges"] = None if received is None else [f"{a}-{b - 1}" for a, b in received]
    return row


def _sum(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {name: sum(r[name] for r in rows) for name in ("redeemed", "void", "blacklisted", "active")}


def build_stats(txn: Txn, cat: Catalog, overlay: dict[int, Change] | None = None) -> Stats:
    """Totals, then one row per supplier and per batch.

    Every key held is counted once: ``active + redeemed + void + blacklisted == keys``. A batch that
    came in lots counts only the keys received here (``received_ranges``).
    """
    overlay = overlay or {}
    counters = _counters(txn)
    batches = []
    per_supplier: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for info in sorted(cat.batches.values(), key=lambda b: b.key):
        row = info.to_dict()
        figures = _batch_figures(txn, cat, info, counters.get("B:" + info.id, {}), overlay)
        row["count"] = figures.pop("held")
        row.update(figures)
        row.update(_refused(counters.get("B:" + info.id, {})))
        row["batch_blacklisted"] = info.key in cat.batches_blocked
        batches.append(row)
        per_supplier[info.supplier].append(row)
    suppliers = []
    for sid, doc in sorted(cat.suppliers.items(), key=lambda item: item[1]["prefix"]):
        own = per_supplier.get(sid, [])
        row = {"supplier": sid, "name": doc["name"], "prefix": doc["prefix"], "batches": len(own),
               "issued": sum(b["count"] for b in own if b["origin"] != "manifest"),
               "imported": sum(b["count"] for b in own if b["origin"] == "manifest"),
               "keys": sum(b["count"] for b in own)}
        row.update(_sum(own))
        row.update(_refused(counters.get("S:" + sid, {})))
        row["supplier_blacklisted"] = sid in cat.suppliers_blocked
        suppliers.append(row)
    totals: dict[str, Any] = {
        "suppliers": len(cat.suppliers), "batches": len(cat.batches), "keys": sum(b["count"] for b in batches),
        "issued": sum(b["count"] for b in batches if b["origin"] != "manifest"),
        "imported": sum(b["count"] for b in batches if b["origin"] == "manifest")}
    totals.update(_sum(batches))
    totals.update(_refused(counters.get("T", {})))
    totals["blacklist_entries"] = len(cat.keys_blocked) + len(cat.batches_blocked) + len(cat.suppliers_blocked)
    clients: list[dict[str, Any]] = []
    for scope, counts in counters.items():
        if scope.startswith("C:"):
            clients.append({"client": scope[2:], **_refused(counts), "throttled": counts.get("throttled", 0)})
    clients.sort(key=lambda c: (-c["refused_total"] - c["throttled"], c["client"]))
    return msgspec.convert({"totals": totals, "suppliers": suppliers, "batches": batches, "clients": clients}, Stats)


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
                events: list[dict[str, Any]]) -> Trace:
    """Supplier, batch, product, current status and the history of one key, oldest event first."""
    sid = batch.supplier
    supplier = cat.suppliers.get(sid, {})
    for event in events:
        event["at"] = iso(int(event.pop("at_ms")))
        if isinstance(event.get("expires_at"), int):  # a hold's end (checkout events)
            event["expires_at"] = iso(event["expires_at"])
    card = txn.get("upstream", u64(serial))
    blocks = [b for b in (cat.suppliers_blocked.get(sid), cat.batches_blocked.get(batch.key),
                          cat.keys_blocked.get(serial)) if b is not None]
    return Trace(serial=serial_text(serial), index=serial_index(serial), card_number=card.decode() if card else None,
                 status=status,
                 supplier=TraceSupplier(id=sid, name=supplier.get("name"), prefix=supplier.get("prefix"),
                                        public_key=supplier.get("public_key"),
                                        first_seen=iso(supplier.get("first_seen"))),
                 batch=BatchView.of(batch), blacklist=blocks, events=events)
