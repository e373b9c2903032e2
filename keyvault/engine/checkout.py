"""Checkout: holds, count-limited keys and the order index (docs/service.md, Checkout).

A hold reserves a key for an order until a stored expiry: no sweeper is needed, since
every read judges a hold against the clock (an ended hold is ignored at once, and removed,
with an ``expire`` event, by the next change that reads it). A count-limited key (a batch
issued with ``uses`` above 1) may be redeemed once per order, up to ``uses`` orders; its last
use is also an ordinary redeem in the ledger, so the hot path answers it spent.

The rules are plain functions over a :class:`Slot` (what the store says of one key: its judged
status, its holds, its uses): ``decide_hold``, ``decide_redeem``, ``decide_confirm`` and
``decide_release`` return the answer and what to write, and :class:`Desk` writes it inside the
caller's write transaction. Every hold, confirm, release, expiry and use is an event of the log,
indexed under the key and under the order (the ``subjects`` database: ``O`` + u16 length +
order id, then the event index), so ``order`` and ``trace`` read them back. Every redeem, held or not, is
also listed under its order (the ``checkout`` database: ``R`` + u16 length + order id + event index,
written with the redeem by :func:`index_redeems`), so an order's report names every key it got. A store
whose redeems predate that listing gets them listed once, from the event log, when it is first opened by
this version (:func:`list_old_redeems`; the meta record ``orders_listed`` says how far that got).
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from .. import _fast
from ..clock import iso
from ..errors import NotFoundError, StoreCorruptError, StoreError, UsageError
from ..formats.events import KIND_NAMES, LEAF, change_of, split_leaf
from ..formats.keyformat import serial_text
from ..results import Result, Status
from ..store import REDEEMED, LmdbStore, Txn
from ..store.lmdbstore import LMDB_ERRORS
from ..store.records import (
    CHECKOUT_MARK,
    CHECKOUT_MARKED,
    LEVEL_KEY,
    Hold,
    checkout_mark,
    checkout_record,
    checkout_sound,
    delete_checkout,
    from_u64,
    hold_key,
    order_redeem_key,
    pack_holds,
    pack_spent,
    pack_use,
    put_checkout,
    roster_differs,
    spent_key,
    u64,
    unpack_holds,
    unpack_spent,
    unpack_use,
    use_key,
)
from .catalog import Catalog
from .eventlog import EventLog
from .ledger import Change
from .subjects import folded_change

_LEN = struct.Struct(">H")
log = logging.getLogger("keyvault")
#: meta key: how far the event log's redeems are listed under their orders: absent (from event 0: a store
#: made before redeems were listed), a u64 event index (listed up to there), or LISTED_ALL.
ORDERS_LISTED = b"orders_listed"
LISTED_ALL = b"all"
LIST_CHUNK = 20_000  # events read per transaction while listing old redeems
MAX_TTL_MS = 7 * 24 * 3600 * 1000  # a hold lasts at most a week
MIN_TTL_MS = 1000


def order_subject(order_id: str) -> bytes:
    """The subjects prefix of an order's events (length-prefixed: no order's prefix is another's)."""
    raw = order_id.encode("utf-8")
    return b"O" + _LEN.pack(len(raw)) + raw


@dataclass
class Slot:
    """What a decision reads of one key: its judged status, limit, uses, and holds."""

    serial: int
    base: Result  # the batch check's answer (valid, redeemed, void, blacklisted, ...)
    limit: int  # uses: 1 for a single-use key
    spent: int  # uses spent (single-use: 1 once redeemed)
    used: dict[str, tuple[str, int | None]]  # order id -> (when (ISO), uses left after it), orders asked about
    holds: dict[str, Hold]  # order id -> (at, expires, event index): live holds only
    ended: dict[str, int] = field(default_factory=dict)  # order id -> expiry, of holds found ended here

    def live(self, now: int) -> dict[str, Hold]:
        """The holds that have not ended at ``now``."""
        return {order: hold for order, hold in self.holds.items() if hold[1] > now}

    def uses_left(self) -> int | None:
        """Uses not yet spent (None for a single-use key: its answers stay as they were)."""
        return self.limit - self.spent if self.limit != 1 else None


def _with(base: Result, status: Status, **fields: Any) -> Result:
    return Result(status, *base[1:6], **fields)


def _accepted(slot: Slot, order: str) -> Result:
    when, left = slot.used[order]
    return _with(slot.base, Status.ACCEPTED, order_id=order, redeemed_at=when, uses_left=left)


def _spent(slot: Slot) -> Result:
    """The refusal of a key with no use left."""
    if slot.limit == 1:
        if slot.base.status is Status.REDEEMED:
            return slot.base
        order, (when, _) = next(iter(slot.used.items()))
        return _with(slot.base, Status.REDEEMED, order_id=order, redeemed_at=when,
                     message=f"already redeemed by order {order} at {when}")
    return _with(slot.base, Status.EXHAUSTED, uses_left=0, message=f"all {slot.limit} uses of this key are spent")


def _held(slot: Slot, live: dict[str, Hold], order: str | None = None) -> Result:
    """``order``'s own hold, or (order None) the refusal of a key other orders hold: no order named."""
    if order is not None:
        return _with(slot.base, Status.HELD, order_id=order, uses_left=slot.uses_left(),
                     expires_at=iso(live[order][1]))
    soonest = min(hold[1] for hold in live.values())
    return _with(slot.base, Status.HELD, uses_left=slot.uses_left(), expires_at=iso(soonest),
                 message=f"held for another order until {iso(soonest)}")


def _released(slot: Slot, order: str) -> Result:
    return _with(slot.base, Status.RELEASED, order_id=order, uses_left=slot.uses_left(),
                 message="this order released its hold: hold the key again to buy it")


def _closed(slot: Slot) -> Result | None:
    """The refusal of a key that takes no order at all (its own status, or every use spent); else None."""
    if slot.base.status not in (Status.VALID, Status.REDEEMED):
        return slot.base
    if slot.spent >= slot.limit:
        return _spent(slot)
    return None


def judge_slot(slot: Slot, now: int) -> Result:
    """A key's verify answer: ``held`` while holds take every use left, ``exhausted``, or its status."""
    if (closed := _closed(slot)) is not None:
        return closed
    live = slot.live(now)
    if live and slot.spent + len(live) >= slot.limit:
        return _held(slot, live)
    return slot.base._replace(uses_left=slot.uses_left())


def decide_hold(slot: Slot, order: str, now: int) -> tuple[Result, bool]:
    """(answer, whether to make a new hold) for ``order`` asking to hold the key."""
    if order in slot.used:
        return _accepted(slot, order), False
    if (closed := _closed(slot)) is not None:
        return closed, False
    live = slot.live(now)
    if order in live:
        return _held(slot, live, order), False  # a retry: the same answer
    if slot.spent + len(live) >= slot.limit:
        return _held(slot, live), False
    return slot.base, True


def decide_redeem(slot: Slot, order: str, now: int) -> tuple[Result, bool]:
    """(answer, whether to spend a use) for ``order`` redeeming the key (its own hold, if any, is consumed)."""
    if order in slot.used:
        return _accepted(slot, order), False
    if (closed := _closed(slot)) is not None:
        return closed, False
    live = slot.live(now)
    if order not in live and slot.spent + len(live) >= slot.limit:
        return _held(slot, live), False
    return slot.base, True


def decide_confirm(slot: Slot, order: str, now: int, last: dict[str, Any] | None) -> tuple[Result, bool]:
    """(answer, whether to spend a use) for ``order`` confirming its hold; ``last``: the order's last event
    on the key (hold, release, expire, ...). A hold that ended is refused even if no one took the key."""
    if order in slot.used:
        return _accepted(slot, order), False
    hold = slot.holds.get(order)
    ended = slot.ended.get(order)
    if hold is not None and hold[1] <= now:
        ended = hold[1]
    if ended is None and hold is None and last is not None and last["type"] in ("expire", "hold"):
        ended = int(last["expires_at"])
        if last["type"] == "hold" and ended > now:  # the log says held, but the hold record is gone
            return damaged(slot.base), False
    if ended is not None:
        return _with(slot.base, Status.EXPIRED_HOLD, order_id=order, expires_at=iso(ended), uses_left=slot.uses_left(),
                     message="the hold ended before it was confirmed: hold the key again"), False
    if hold is None:
        return _released(slot, order), False
    if slot.base.status not in (Status.VALID, Status.REDEEMED) or slot.spent >= slot.limit:
        return (slot.base if slot.base.status not in (Status.VALID, Status.REDEEMED) else _spent(slot)), False
    return slot.base, True


class Desk:
    """The checkout work of one write transaction: slots read once, holds and uses written at the end."""

    def __init__(self, log: EventLog, pepper: bytes, txn: Txn, cat: Catalog, now: int,
                 overlay: dict[int, Change]) -> None:
        self.log, self.pepper, self.txn, self.cat, self.now = log, pepper, txn, cat, now
        #: The ledger overlay as of this transaction's start: the redeems and voids this transaction's
        #: events link to (its own are appended last). Reading its own events into the shared overlay
        #: instead would outlive an abort, and a redeem committed later at those indices would be missed.
        self.overlay = overlay
        self.when = str(iso(now))
        self.slots: dict[int, Slot] = {}
        self.dirty: set[int] = set()
        #: Ledger redeems to append: (serial, REDEEMED, at, order id).
        self.changes: list[tuple[int, int, int, str]] = []
        #: Accepted redeems by (batch id, supplier id), for the counters.
        self.counts: dict[tuple[str, str], int] = {}
        self.marked = False  # the table's mark is known to be written
        #: Events decided and numbered but not yet appended (one append for them all: :meth:`write_events`),
        #: from log index ``first``, and the orders they name.
        self.events: list[tuple[str, int, dict[str, Any], list[bytes]]] = []
        self.first = 0
        self.orders: set[str] = set()

    def slot(self, serial: int, base: Result) -> Slot:
        """The key's slot; ended holds are removed (each an ``expire`` event) as it is first read."""
        slot = self.slots.get(serial)
        if slot is not None:
            return slot
        try:
            slot = read_slot(self.txn, self.pepper, self.cat, serial, base)
        except StoreCorruptError:  # refused, never believed: nothing is decided or written for this key
            slot = self.slots[serial] = Slot(serial, damaged(base), 1, 0, {}, {})
            return slot
        if slot.limit == 1 and slot.spent:
            slot.used[base.order_id or ""] = (base.redeemed_at or "", None)
        holds = slot.holds
        for order, hold in list(holds.items()):
            if hold[1] <= self.now:
                del slot.holds[order]
                slot.ended[order] = hold[1]
                self._event("expire", serial, order, expires_at=hold[1])
                self.dirty.add(serial)
        self.slots[serial] = slot
        return slot

    def know_use(self, slot: Slot, order: str) -> None:
        """Learn whether ``order`` used this count-limited key already (single-use keys know it from the ledger)."""
        if slot.limit != 1 and order not in slot.used:
            try:
                use = unpack_use(self.pepper, slot.serial, order, checkout_record(self.txn,
                                                                                  use_key(slot.serial, order)))
            except StoreCorruptError:
                slot.base, slot.limit, slot.holds = damaged(slot.base), 1, {}
                self.dirty.discard(slot.serial)
                return
            if use is not None:
                slot.used[order] = (str(iso(use[0])), use[2])

    def _event(self, kind: str, serial: int, order: str, **more: Any) -> int:
        """Decide an event about a key and an order: its log index (appended by :meth:`write_events`)."""
        if not self.events:
            self.first = self.log.size(self.txn)
        doc = {"serial": serial_text(serial), "order_id": order, **more}
        self.events.append((kind, self.now, doc, [LEVEL_KEY + u64(serial), order_subject(order)]))
        self.orders.add(order)
        return self.first + len(self.events) - 1

    def write_events(self, order: str | None = None) -> None:
        """Append the events decided so far, all at once (with ``order``: only if one names it, before its
        events are read back)."""
        if self.events and (order is None or order in self.orders):
            self.log.append_many(self.txn, self.first, self.events, self._key_change)
            self.events, self.orders = [], set()

    def _key_change(self, txn: Txn, serial: int) -> int | None:
        """The event index of a key's committed redeem or void (the overlay's, or its folded outcome's)."""
        change = self.overlay.get(serial)
        return change[3] if change is not None else folded_change(txn, serial)

    def hold(self, slot: Slot, order: str, ttl_ms: int) -> Result:
        """Make ``order``'s hold: its answer."""
        expires = self.now + ttl_ms
        index = self._event("hold", slot.serial, order, expires_at=expires)
        slot.holds[order] = (self.now, expires, index)
        self.dirty.add(slot.serial)
        return _held(slot, slot.holds, order)

    def use(self, slot: Slot, order: str) -> Result:
        """Spend one use of the key for ``order`` (its hold, if any, confirmed): ``accepted``."""
        serial = slot.serial
        if slot.holds.pop(order, None) is not None:
            self.dirty.add(serial)
            self._event("confirm", serial, order)
        slot.spent += 1
        slot.used[order] = (self.when, slot.uses_left())
        if slot.limit != 1:
            self._mark()
            left = slot.limit - slot.spent
            index = self._event("use", serial, order, uses_left=left)
            put_checkout(self.txn, use_key(serial, order), pack_use(self.pepper, serial, order, self.now, index, left))
            put_checkout(self.txn, spent_key(serial), pack_spent(self.pepper, serial, slot.spent, slot.limit))
        if slot.spent >= slot.limit:  # the last use: an ordinary redeem, which the hot path sees (and counts)
            self.changes.append((serial, REDEEMED, self.now, order))
            scope = (slot.base.batch or "", slot.base.supplier or "")
            self.counts[scope] = self.counts.get(scope, 0) + 1
        return _accepted(slot, order)

    def release(self, slot: Slot, order: str, last: dict[str, Any] | None) -> Result:
        """Give ``order``'s hold up: ``released``; a hold that ended or was confirmed answers as confirm would."""
        if slot.holds.pop(order, None) is not None:
            self.dirty.add(slot.serial)
            self._event("release", slot.serial, order)
            return _released(slot, order)
        return decide_confirm(slot, order, self.now, last)[0]

    def _mark(self) -> None:
        """Give the checkout table its mark with its first record (meta says it has one)."""
        if not self.marked:
            self.marked = True
            if self.txn.get("meta", CHECKOUT_MARKED) is None:  # (a lost mark is never written again: damage)
                self.txn.put("checkout", CHECKOUT_MARK, checkout_mark(self.pepper))
                self.txn.put("meta", CHECKOUT_MARKED, b"1")

    def flush(self) -> None:
        """Append the events and write the hold records changed."""
        self.write_events()
        for serial in sorted(self.dirty):
            holds = self.slots[serial].holds
            if holds:
                self._mark()
                put_checkout(self.txn, hold_key(serial), pack_holds(self.pepper, serial, holds))
            else:
                delete_checkout(self.txn, hold_key(serial))


def any_holds(txn: Txn, pepper: bytes | None = None) -> bool:
    """Whether the store holds any hold record (one cursor step); True also when the roster lists one the
    checkout table lost (each key's own read then finds the damage). (``pepper``: unused, kept for callers.)"""
    cursor = txn.cursor("checkout")
    if cursor.set_range(b"H") and bytes(cursor.key()[:1]) == b"H":
        return True
    roster = txn.cursor("roster")
    return bool(roster.set_range(b"H")) and bytes(roster.key()[:1]) == b"H"


def annotate(txn: Txn, pepper: bytes, cat: Catalog, results: list[Result], now: int,
             holds: bool | None = None) -> None:
    """Verify answers, in place: ``held`` and ``uses_left`` for held and count-limited keys (nothing is written).

    ``holds``: whether any hold record exists, when the caller knows; the common case (no holds, no
    count-limited batch) costs one cursor step.
    """
    if holds is None:
        holds = any_holds(txn, pepper)
    if not holds and not cat.uses:
        return
    index = hold_index(txn, pepper) if holds and len(results) >= 16 else None
    for i, result in enumerate(results):
        if result.status not in (Status.VALID, Status.REDEEMED) or result.serial is None:
            continue
        limit = cat.uses.get(result.batch or "", 1)
        if limit == 1 and (not holds or result.status is Status.REDEEMED):
            continue
        serial = _fast.parse_serial(result.serial)
        try:
            slot = read_slot(txn, pepper, cat, serial, result, index)
        except StoreCorruptError:
            results[i] = damaged(result)
            continue
        results[i] = judge_slot(slot, now)


def damaged(base: Result) -> Result:
    """The answer for a key whose hold or use record is damaged: refused, saying what to do."""
    return Result(Status.DAMAGED, base.serial, base.batch,
                  message="this key's hold or use record is damaged: refused; restore the store from a backup "
                          "(`keyvault check` finds every damaged record)")


def hold_index(txn: Txn, pepper: bytes, most: int = 256) -> dict[int, bytes] | None:
    """Every hold record by serial, read once for a call of many keys: each sound under its own key, and
    exactly the holds the roster lists, so a key missing here has no hold. None when there are more than
    ``most`` holds, or damage: then each key's own lookup decides (and finds the damage)."""
    index: dict[int, bytes] = {}
    keys: list[bytes] = []
    for key, value in txn.items("checkout", b"H"):
        key = bytes(key)
        if len(index) >= most or not checkout_sound(pepper, key, value):
            return None
        index[from_u64(key[1:9])] = bytes(value)
        keys.append(key)
    return None if roster_differs(txn, b"H", keys) else index


def read_slot(txn: Txn, pepper: bytes, cat: Catalog, serial: int, base: Result,
              index: dict[int, bytes] | None = None) -> Slot:
    """A key's slot as stored (ended holds kept: judge against the clock); StoreCorruptError when damaged.
    ``index``: the call's :func:`hold_index`, if it has one."""
    limit = cat.uses.get(base.batch or "", 1)
    raw = index.get(serial) if index is not None else checkout_record(txn, hold_key(serial))
    holds = unpack_holds(pepper, serial, raw)
    if limit == 1:
        spent = 1 if base.status is Status.REDEEMED else 0
    else:
        # Once used, the sealed uses record says the limit (the batch record is not sealed); a key the
        # ledger says redeemed has spent its last use, whatever any count says.
        stored = unpack_spent(pepper, serial, checkout_record(txn, spent_key(serial)))
        spent, limit = stored if stored is not None else (0, limit)
        if base.status is Status.REDEEMED:
            spent = max(spent, limit)
    return Slot(serial, base, limit, spent, {}, holds)


def index_redeems(txn: Txn, changes: list[tuple[int, int, int, str]], indices: list[int]) -> None:
    """List each redeem just appended (``changes`` and their event ``indices``) under its order, in the same
    transaction: every redeem, held or not, is found by its order (one sorted write for the batch)."""
    txn.put_many("checkout", sorted((order_redeem_key(order, index), b"")
                                    for (_, state, _, order), index in zip(changes, indices) if state == REDEEMED))


def list_old_redeems(store: LmdbStore, chunk: int | None = None) -> int:
    """List under their orders the redeems of a store made before redeems were listed (once per store):
    the event log read in write transactions of ``chunk`` events, each recording how far it got, so a crash
    loses nothing and the next open goes on from there. How many redeems were listed; 0 when done before."""
    try:
        with store.read() as txn:
            mark = txn.get("meta", ORDERS_LISTED)
    except (StoreError, *LMDB_ERRORS):
        return 0  # a store too damaged to read its meta: opening says so, or `keyvault check` does
    if mark is not None and len(mark) != 8:  # done (or a damaged mark: never taken for a place to start from)
        return 0
    chunk = chunk or LIST_CHUNK

    def step(txn: Txn) -> tuple[int, bool]:
        mark = txn.get("meta", ORDERS_LISTED)
        if mark is not None and len(mark) != 8:
            return 0, True
        start = from_u64(mark) if mark is not None else 0
        size = txn.head().log_size
        stop = min(size, start + chunk)
        listed = []
        for key, leaf in txn.items_from("events", u64(start)):
            index = from_u64(key)
            if index >= stop:
                break
            try:
                change = change_of(bytes(leaf))
            except (IndexError, ValueError, struct.error):  # a damaged event: `keyvault audit` names it
                change = None
            if change is not None and change[1] == REDEEMED:
                key = order_redeem_key(change[3], index)
                if txn.get("checkout", key) is None:  # (already listed by its redeem: left as it is)
                    listed.append((key, b""))
        txn.put_many("checkout", sorted(listed))
        txn.put("meta", ORDERS_LISTED, LISTED_ALL if stop >= size else u64(stop))
        return len(listed), stop >= size

    total, done = 0, False
    while not done:
        try:
            listed, done = store.write(step)
        except (StoreError, *LMDB_ERRORS) as exc:  # damage, a full disk: the store opens as it is; the next open
            # goes on
            log.warning("listing old redeems under their orders stopped: %s", exc)
            break
        total += listed
    return total


def order_events(txn: Txn, log: EventLog, order: str) -> list[dict[str, Any]]:
    """The order's events, oldest first (holds, confirms, releases, expiries, uses and redeems): index, type,
    at (ms) and the body's fields."""
    subject = order_subject(order)
    found: list[tuple[int, bool]] = [(from_u64(key[-8:]), False) for key, _ in txn.items("subjects", subject)
                                     if len(key) == len(subject) + 8]
    listed = b"R" + subject[1:]
    found += [(from_u64(key[-8:]), True) for key, _ in txn.items("checkout", listed) if len(key) == len(listed) + 8]
    out = []
    for index, redeem in sorted(found):
        leaf = log.leaf(txn, index)
        at_ms = int.from_bytes(leaf[LEAF.size - 8:LEAF.size], "big")
        if redeem:
            change = change_of(leaf)
            if change is None or change[1] != REDEEMED or change[3] != order:
                raise StoreCorruptError(f"event {index} is listed as a redeem of order {order!r} but is not one: the "
                                        "store is damaged; run `keyvault check`")
            out.append({"index": index, "type": "redeem", "at_ms": at_ms, "serial": serial_text(change[0]),
                        "order_id": order})
            continue
        kind = leaf[LEAF.size - 9]
        try:
            doc = json.loads(bytes(leaf[split_leaf(bytes(leaf))[2]:]))
        except ValueError:
            raise StoreCorruptError(f"event {index} of order {order!r} does not parse: the event log is damaged; "
                                    "run `keyvault check`") from None
        if not isinstance(doc, dict) or doc.get("order_id") != order:
            raise StoreCorruptError(f"event {index} is indexed under order {order!r} but does not name it: the "
                                    "store is damaged; run `keyvault check`")
        out.append({"index": index, "type": KIND_NAMES.get(kind, "?"), "at_ms": at_ms, **doc})
    return out


def last_events(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each serial's last checkout event for the order (its plain redeems are no holds: left out)."""
    return {event["serial"]: event for event in events if event["type"] != "redeem"}


def order_report(order: str, events: list[dict[str, Any]], now: int) -> dict[str, Any]:
    """What an order redeemed, holds or held: every key (serial, never the key) with its state and times, and the
    events."""
    if not events:
        raise NotFoundError(f"order {order!r} has redeemed, held or used no key in this store; check the order id")
    keys: dict[str, dict[str, Any]] = {}
    ends: dict[str, int] = {}  # serial -> its hold's end (ms), while the order's last event is the hold
    for event in events:
        entry = keys.setdefault(event["serial"], {"serial": event["serial"], "state": None, "held_at": None,
                                                   "expires_at": None, "redeemed_at": None, "released_at": None,
                                                   "expired_at": None})
        at, kind = iso(event["at_ms"]), event["type"]
        ends.pop(event["serial"], None)
        if kind == "hold":
            entry.update(state="held", held_at=at, expires_at=iso(event["expires_at"]), released_at=None,
                         expired_at=None)
            ends[event["serial"]] = int(event["expires_at"])
        elif kind in ("confirm", "use", "redeem"):
            entry.update(state="redeemed", redeemed_at=at)
            if "uses_left" in event:
                entry["uses_left"] = event["uses_left"]
        elif kind == "release":
            entry.update(state="released", released_at=at)
        elif kind == "expire":
            entry.update(state="expired", expired_at=iso(event["expires_at"]))
    for serial, end in ends.items():
        if end <= now:  # ended, not yet swept: judged at read time
            keys[serial].update(state="expired", expired_at=iso(end))
    shown = [{**{k: v for k, v in e.items() if k != "at_ms"}, "at": iso(e["at_ms"])} for e in events]
    for e in shown:
        if "expires_at" in e:
            e["expires_at"] = iso(e["expires_at"])
    return {"order_id": order, "keys": list(keys.values()), "events": shown}


def check_ttl(ttl: object) -> int:
    """A hold's length in ms from seconds (int or float); UsageError unless 1 s to 7 days."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl != ttl:
        raise UsageError("a hold's ttl is a number of seconds (1 to 604800)")
    ms = int(ttl * 1000)
    if not MIN_TTL_MS <= ms <= MAX_TTL_MS:
        raise UsageError("a hold lasts 1 second to 7 days: give a ttl of 1 to 604800 seconds")
    return ms


def redeem_checkout(log: EventLog, pepper: bytes, txn: Txn, cat: Catalog, results: list[Result],
                    orders: list[str], now: int, overlay: dict[int, Change]) -> Desk | None:
    """Decide, in place, the redeems of held and count-limited keys; the caller appends the Desk's
    changes with the rest. None (nothing to do) costs one cursor step when no key is held or limited."""
    holds = any_holds(txn, pepper)
    if not holds and not cat.uses:
        return None
    index = hold_index(txn, pepper) if holds and len(results) >= 16 else None
    desk: Desk | None = None
    for i, (result, order) in enumerate(zip(results, orders)):
        if result.status not in (Status.VALID, Status.REDEEMED) or result.serial is None:
            continue
        limit = cat.uses.get(result.batch or "", 1)
        serial = _fast.parse_serial(result.serial)
        if limit == 1 and (desk is None or serial not in desk.slots):
            if not holds or result.status is Status.REDEEMED:
                continue  # an ordinary single-use key: accept_redeems decides it
            try:
                if (index.get(serial) if index is not None else checkout_record(txn, hold_key(serial))) is None:
                    continue
            except StoreCorruptError:
                results[i] = damaged(result)
                continue
        if desk is None:
            desk = Desk(log, pepper, txn, cat, now, overlay)
        slot = desk.slot(serial, result)
        desk.know_use(slot, order)
        answer, spend = decide_redeem(slot, order, now)
        results[i] = desk.use(slot, order) if spend else answer
    if desk is not None:
        desk.flush()
    return desk
