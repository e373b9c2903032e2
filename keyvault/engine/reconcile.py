"""Reports a supplier can reconcile with: activity in a time window (daily buckets), a batch key by key,
and pages of the store's lists (batches, manifests, blacklist entries, tokens).

Everything here streams or reads the in-memory catalog: a report of a million keys is written row by
row from one read transaction, never gathered into a list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from .. import _fast
from ..clock import iso
from ..errors import NotFoundError, UsageError
from ..formats.events import change_of
from ..formats.keyformat import batch_key, make_serial, parse_batch, serial_text
from ..store import ACTIVE, REDEEMED, VOIDED
from ..store.records import OUTCOME, u64, unpack_card
from .answers import Activity, BatchView, ManifestEntry, Page
from .state import State
from .tokens import listing
from .tokens import stored as stored_tokens

_DAY_MS = 86_400_000
_STATES = {ACTIVE: "active", REDEEMED: "redeemed", VOIDED: "void"}
#: The lists that can be paged, and the most items one page holds.
LISTS = ("batches", "manifests", "blacklist", "tokens")
MAX_PAGE = 1000


def activity(state: State, since: int | None, until: int | None, daily: bool = False) -> Activity:
    """Redeems and voids whose events fall in [since, until) (ms; None: open), per supplier and batch,
    and with ``daily`` per UTC day: read from the event log, one event at a time."""
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be before --until")
    low, high = since if since is not None else -1, until if until is not None else 1 << 64
    batches: dict[int, dict[str, int]] = defaultdict(lambda: {"redeemed": 0, "void": 0})
    days: dict[int, dict[str, Any]] = {}
    with state.store.read() as txn:
        cat = state.current(txn)
        for _, leaf in txn.items("events"):
            change = change_of(bytes(leaf))
            if change is None or not low <= change[2] < high:
                continue
            serial, kind, at_ms, _ = change
            name = "redeemed" if kind == REDEEMED else "void"
            batches[batch_key(serial)][name] += 1
            if daily:
                day = days.setdefault(at_ms // _DAY_MS, {"redeemed": 0, "void": 0, "batches": {}})
                day[name] += 1
                counts = day["batches"].setdefault(batch_key(serial), {"redeemed": 0, "void": 0})
                counts[name] += 1
    rows, suppliers = [], defaultdict(lambda: {"redeemed": 0, "void": 0})
    for key in sorted(batches):
        info = cat.batches.get(key)
        row = {"batch": info.id if info else None, "supplier": info.supplier if info else None,
               "product": info.product if info else None, **batches[key]}
        rows.append(row)
        if info is not None:
            for name in ("redeemed", "void"):
                suppliers[info.supplier][name] += row[name]
    doc: dict[str, Any] = {
        "since": iso(since), "until": iso(until),
        "totals": {name: sum(r[name] for r in rows) for name in ("redeemed", "void")},
        "suppliers": [{"supplier": sid, "name": cat.suppliers.get(sid, {}).get("name"),
                       "prefix": cat.suppliers.get(sid, {}).get("prefix"), **counts}
                      for sid, counts in sorted(suppliers.items())],
        "batches": rows}
    if daily:
        doc["days"] = [{"day": str(iso(day * _DAY_MS))[:10], "redeemed": d["redeemed"], "void": d["void"],
                        "batches": [{"batch": cat.batches[b].id if b in cat.batches else None, **c}
                                    for b, c in sorted(d["batches"].items())]}
                       for day, d in sorted(days.items())]
    return msgspec.convert(doc, Activity)


def key_report(state: State, batch: str) -> Iterator[dict[str, Any]]:
    """One row per key of a batch held here, in serial order: serial, state, order id, time, void reason,
    and whether a blacklist entry refuses it. Never the key. Streams from one read transaction."""
    number = parse_batch(batch)
    with state.store.read() as txn:
        head = txn.head()
        cat = state.current(txn, head)
        info = cat.batches.get(number)
        if info is None:
            raise NotFoundError(f"batch {batch} is not in this store; `keyvault list batches` lists them")
        overlay = state.ledger.sync(txn, head)
        whole = number in cat.batches_blocked or info.supplier in cat.suppliers_blocked
        first, end = make_serial(number, 0), make_serial(number, info.count)
        for key, value in txn.items_from("cards", u64(first)):
            serial = int.from_bytes(key, "big")
            if serial >= end:
                break
            yield _row(state.pepper, txn, serial, bytes(value), overlay.get(serial),
                       whole or serial in cat.keys_blocked)


def _row(pepper: bytes, txn: Any, serial: int, value: bytes, change: tuple[int, int, str, int] | None,
         blocked: bool) -> dict[str, Any]:
    """One key's report row, from its unfolded change or else its sealed card and outcome records."""
    row: dict[str, Any] = {"serial": serial_text(serial), "state": "active", "order_id": None, "at": None,
                           "reason": None, "blacklisted": blocked}
    if change is not None:
        kind, at_ms, text = change[0], change[1], change[2]
    else:
        card = unpack_card(pepper, serial, value)
        if card is None:
            row["state"] = "damaged"
            return row
        kind, at_ms, text = card[0], None, None
        if kind != ACTIVE:
            body = _fast.open_outcome(pepper, serial, txn.get("outcomes", u64(serial)))
            if body is None or len(body) < OUTCOME.size:
                row["state"] = "damaged"
                return row
            at_ms = OUTCOME.unpack_from(body)[1]
            text = bytes(body[OUTCOME.size:]).decode("utf-8", "replace")
    row["state"] = _STATES.get(kind, "damaged")
    if kind != ACTIVE:
        row["at"] = iso(at_ms)
        row["order_id" if kind == REDEEMED else "reason"] = text
    return row


def _everything(state: State, what: str) -> tuple[list[Any], Callable[[Any], str]]:
    """Every item of a list, and the cursor of an item (the order of the list)."""
    if what == "tokens":
        with state.store.read() as txn:
            return listing(stored_tokens(txn)), lambda t: str(t["name"])
    cat = state.catalog()
    if what == "batches":
        return [BatchView.of(b) for b in cat.batches.values()], lambda b: b.batch
    if what == "manifests":
        return ([ManifestEntry(manifest=b.manifest, batch=b.id, supplier=b.supplier, supplier_name=b.supplier_name,
                               count=b.count, created_at=iso(b.created_at), added_at=iso(b.added_at))
                 for b in cat.batches.values()], lambda m: m.manifest)
    if what == "blacklist":
        entries = [*cat.suppliers_blocked.values(), *cat.batches_blocked.values(), *cat.keys_blocked.values()]
        return entries, lambda e: f"{e.level}:{e.target}"
    raise UsageError(f"there is no list named {what!r}; the lists are {', '.join(LISTS)}")


def page(state: State, what: str, after: str | None = None, limit: int = 100) -> Page:
    """One page of a list: ``items`` after the cursor ``after`` (in the list's order), at most ``limit``,
    and ``next``, the cursor of the next page (None on the last)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise UsageError(f"a page holds 1 to {MAX_PAGE} items; give a limit in that range")
    if after is not None and (not isinstance(after, str) or not after or len(after) > 200):
        raise UsageError("the cursor (after) must be the `next` of the previous page")
    items, cursor = _everything(state, what)
    items.sort(key=cursor)
    chosen = [item for item in items if after is None or cursor(item) > after][:limit + 1]
    more = len(chosen) > limit
    chosen = chosen[:limit]
    return Page(what=what, items=chosen, next=cursor(chosen[-1]) if more and chosen else None)
