"""The engine's side of a PostgreSQL authority: binding a store, redeeming, voiding and blacklisting
through it, and keeping the node's LMDB cache (what verify reads) current.

A bound node judges format, check symbols, tag and validity window itself (the compiled batch check),
asks the authority for everything nodes share, answers only from what the authority committed, and
then records the decided changes in its own store so its verify sees them at once. Other nodes'
changes reach the cache by :func:`catch_up` (LISTEN/NOTIFY-free: a poll by change number).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import _fast
from ...clock import iso, now_ms
from ...errors import AuthorityError, ConflictError, IdentityError, KeyvaultError, ManifestError, NotFoundError, \
    StoreCorruptError, UsageError
from ...formats import bundle
from ...formats.bundle import replayed_status
from ...formats.events import parse_leaf, split_leaf
from ...formats.history import prove, subject_key
from ...formats.identity import Identity
from ...formats.keyformat import INDEX_BITS, batch_key, looks_like_serial, parse_prefix, serial_text
from ...formats.manifest import open_signed_header
from ...results import Result, Status
from ...store import ACTIVE, REDEEMED, VOIDED, Txn
from ...store.records import BLACKLIST_DIGEST, CHECKOUT_MARK, CHECKOUT_MARKED, LEVEL_BATCH, LEVEL_KEY, LEVEL_SUPPLIER, \
    blacklist_digest, checkout_mark, checkout_record, delete_checkout, dump, from_u64, hold_key, load, pack_holds, pack_spent, pack_use, put_checkout, spent_key, \
    u64, unpack_holds, unpack_spent, use_key
from .. import checkout, trust
from ..catalog import blacklist_target
from ..guard import HOLD_FREE, counter_scopes
from ..lookup import check, find, judge
from ..lots import custody_of
from ..proofs import commitment_proof
from ..tokens import save as save_tokens
from ..tokens import stored as stored_tokens
from . import META_KEY
from .postgres import CHECKOUT_KINDS, Checkout, PostgresAuthority, mask
from .sequencer import KEY_ENV, Mirror, Sequencer, origin_of

log = logging.getLogger("keyvault.authority")

#: Meta key: the newest authority change number this node's cache has applied.
CURSOR_KEY = b"authority_change"
#: Change numbers are taken when a transaction runs and become visible when it commits, so a lower number
#: can appear after a higher one: each catch-up reads this far back again (applying is idempotent).
REREAD = 1000

#: Local answers for keys found and matched: the authority has the last word on them (a key out of its
#: window may still have been redeemed, and its retry must be answered `accepted` again).
_DECIDED = (Status.VALID, Status.REDEEMED, Status.VOID, Status.BLACKLISTED, Status.EXPIRED, Status.NOT_YET_VALID)


def connect(dsn: str, reach: bool = True) -> PostgresAuthority | DetachedAuthority:
    """The authority a bound store names, connected (AuthorityError saying what to do when it cannot be);
    with ``reach`` False, a stand-in that refuses every decision (to show or unset the binding offline)."""
    return PostgresAuthority(dsn) if reach else DetachedAuthority(dsn)


#: Meta key prefix: + SHA-256 of a registry manifest this node has imported.
MANIFEST_PREFIX = b"authority_manifest/"
#: Seconds before a registry manifest this node could not import (an unpinned signer) is tried again.
RETRY_MANIFEST = 30.0
#: Per engine: registry manifests it could not import, by hash: (when it last tried, why).
_FAILURES: weakref.WeakKeyDictionary[Any, dict[str, tuple[float, str]]] = weakref.WeakKeyDictionary()


def register_manifest(engine: Any, path: Path) -> bool:
    """After a bound node imported ``path``: put it in the authority's registry, in force for every node."""
    body = path.read_bytes()
    digest = hashlib.sha256(body).digest()
    added = engine.authority.put_manifest(digest, body, now_ms())
    engine.store.write(lambda txn: txn.put("meta", MANIFEST_PREFIX + digest, u64(now_ms())))
    return bool(added)


def sync_tokens(engine: Any) -> None:
    """Make this node's tokens the authority's (a token created or revoked on any node, here too)."""
    held = engine.authority.tokens()

    def work(txn: Txn) -> None:
        if stored_tokens(txn) != held:
            save_tokens(txn, held)

    engine.store.write(work)


def sync_trust(engine: Any) -> None:
    """Pin here what the authority pins, unpin what it unpinned (a key rotated away here stays as it is)."""
    pins = engine.authority.trust_pins()
    now = now_ms()

    def work(txn: Txn) -> None:
        for public_key, name, prefix, role, pinned in pins:
            cat = engine.current(txn)
            doc = cat.trusted.get(public_key)
            if pinned and doc is None:
                trust.pin(engine, txn, cat, name, prefix, public_key, role.split(","), now)
            elif not pinned and doc is not None and cat.trusts(public_key):
                trust.unpin(engine, txn, cat, public_key, now)

    engine.store.write(work)


def pinned_here(engine: Any) -> list[tuple[bytes, str, int, str, bool]]:
    """This node's pins, as the authority records them."""
    cat = engine.catalog()
    return [(key, doc["name"], parse_prefix(doc["prefix"]), ",".join(doc.get("roles") or [doc["role"]]), True)
            for key, doc in cat.trusted.items() if cat.trusts(key)]


def create_token(engine: Any, name: str, entry: dict[str, Any]) -> None:
    """A token made on this node, added for every node (ConflictError when the name is taken)."""
    if not engine.authority.add_tokens({name: entry}, now_ms()):
        raise ConflictError(f"a token named {name} exists: revoke it first, or choose another name")
    sync_tokens(engine)


def revoke_token(engine: Any, name: str) -> None:
    """A token revoked for every node (NotFoundError when there is none of that name)."""
    if not engine.authority.revoke_token(name, now_ms()):
        raise NotFoundError(f"no token named {name}; `keyvault token list` shows the tokens")
    sync_tokens(engine)


def fetch_manifests(engine: Any) -> dict[str, str]:
    """Import the registry's manifests this node does not hold yet (bytes fetched by hash, hash and signature
    checked); the ones it could not import, by hash, with why (retried after RETRY_MANIFEST seconds)."""
    failed = _FAILURES.setdefault(engine, {})
    with engine.store.read() as txn:
        missing = [d for d in engine.authority.manifest_hashes() if txn.get("meta", MANIFEST_PREFIX + d) is None]
    for digest in missing:
        seen = failed.get(digest.hex())
        if seen is not None and time.monotonic() - seen[0] < RETRY_MANIFEST:
            continue
        body = engine.authority.manifest(digest)
        try:
            if body is None or hashlib.sha256(body).digest() != digest:
                raise ManifestError("the registry's copy does not hash to its name: it was altered in the database")
            with tempfile.TemporaryDirectory(dir=engine.path) as scratch:
                copy = Path(scratch) / f"{digest.hex()[:16]}.kvm"
                copy.write_bytes(body)
                engine.import_manifest(copy, register=False)
        except KeyvaultError as exc:
            failed[digest.hex()] = (time.monotonic(), str(exc))
            continue
        failed.pop(digest.hex(), None)
        engine.store.write(lambda txn, d=digest: txn.put("meta", MANIFEST_PREFIX + d, u64(now_ms())))
    return {h: why for h, (_, why) in failed.items()}


class DetachedAuthority:
    """A bound store opened without reaching its authority: verify reads the cache; decisions are refused."""

    remote = True

    def __init__(self, dsn: str) -> None:
        self.shown = mask(dsn)

    def __repr__(self) -> str:
        return f"<DetachedAuthority {self.shown!r}>"

    def _refuse(self, *args: object) -> Any:
        raise AuthorityError(f"this store was opened without connecting to its authority ({self.shown}): "
                             "open it normally to redeem, void or blacklist; nothing was changed")

    redeem = void = blacklist = lift = check = changes_since = put_manifest = manifest_hashes = manifest = _refuse
    checkout = checkout_state = order_changes = _refuse
    add_tokens = revoke_token = tokens = put_trust = trust_pins = _refuse
    cluster_identity = log_since = log_checkpoints = session = _refuse

    def close(self) -> None:
        """Nothing to release."""


def redeem(engine: Any, pairs: list[tuple[str, str]], before_wait: Callable[[], None] | None,
           clients: list[str | None] | str | None, budgets: dict[str, Any]) -> list[Result]:
    """Redeem checked (key, order id) pairs through the authority: local judging, one decision, then the cache."""
    now = now_ms()
    keys = [key for key, _ in pairs]
    with engine.store.read() as txn:
        head = txn.head()
        cat = engine.current(txn, head)
        overlay = engine.ledger.sync(txn, head)
        locks = engine.guard.card_locks()

        def judge(chunk: list[str]) -> list[Result]:
            return check(txn, cat, engine.pepper, overlay, chunk, now, locks)

        results = engine.guard.judge_for(keys, clients, budgets, judge) if isinstance(clients, list) else \
            engine.guard.judge(keys, clients, budgets, judge)
    candidates = []
    limited: set[int] = set()  # count-limited keys: decided by the checkout rules
    where: list[tuple[int, int]] = []  # (index in pairs, serial)
    batches: dict[int, tuple[bytes, bool]] = {}  # batch key -> (its blacklist target, in its window now)
    suppliers: dict[str | None, bytes] = {}  # supplier id -> its blacklist target
    for i, result in enumerate(results):
        if result.status in _DECIDED and result.serial is not None:
            serial = _fast.parse_serial(result.serial)
            key = serial >> INDEX_BITS
            seen = batches.get(key)
            if seen is None:
                row = cat.rows[key]
                seen = batches[key] = (LEVEL_BATCH + u64(key), (row[1] is None or now >= row[1])
                                       and (row[2] is None or now < row[2]))
            by_supplier = suppliers.get(result.supplier)
            if by_supplier is None:
                by_supplier = suppliers[result.supplier] = LEVEL_SUPPLIER + (result.supplier or "").encode("ascii")
            candidates.append((serial, pairs[i][1], LEVEL_KEY + u64(serial), seen[0], by_supplier, seen[1]))
            where.append((i, serial))
            if cat.uses and cat.uses.get(result.batch or "", 1) != 1:
                limited.add(serial)
    if not candidates:
        return results
    if before_wait is not None:
        before_wait()
    ruled: dict[int, Result] = {}  # answers of the keys the checkout rules decided, by index in pairs
    carts: list[_Cart] = []

    def then(co: Checkout, serials: list[int]) -> None:
        """Held and count-limited keys, in the redeem's transaction: the checkout rules, in input order."""
        ruled.clear()
        carts.clear()
        chosen = set(serials)
        wanted: dict[int, Result] = {}
        for i, serial in where:
            if serial in chosen:
                wanted.setdefault(serial, results[i])
        cart = _Cart(co, cat, wanted)
        for i, serial in where:
            if serial in chosen:
                slot = cart.slots[serial]
                answer, spend = checkout.decide_redeem(slot, pairs[i][1], cart.now)
                ruled[i] = cart.use(slot, pairs[i][1]) if spend else answer
        cart.write()
        carts.append(cart)

    standing = engine.authority.redeem(candidates, now, limited, then)
    learned: dict[int, tuple[int, int, str]] = {}
    when = {now: iso(now)}  # every key decided by this call shares one time
    for i, serial in where:
        if i in ruled:
            results[i] = ruled[i]
            continue
        before = results[i]
        state = standing.get(serial)
        decided = None if state is None else state[0]
        if decided is not None and decided[0] == REDEEMED and decided[1] == pairs[i][1]:  # accepted: the most
            at = when.get(decided[2]) or when.setdefault(decided[2], iso(decided[2]))  # common answer, built once
            results[i] = Result(Status.ACCEPTED, *before[1:6], pairs[i][1], at)
        else:
            results[i] = _answer(before, pairs[i][1], state, cat.rows[serial >> INDEX_BITS], now)
        if decided is not None and before.status not in (Status.REDEEMED, Status.VOID):
            learned[serial] = decided  # the cache did not know: record it so this node's verify does
    if learned:
        cache(engine, learned)
    for cart in carts:
        cart.settle(engine)
    return results


def _answer(before: Result, order: str, standing: Any, row: Any, now: int) -> Result:
    """A redeem's answer from what the authority committed for its key."""
    base = tuple(before[1:6])
    if standing is None:  # the authority did not answer for it: never accepted
        return Result(Status.DAMAGED, *base[:2], message="the authority gave no answer for this key; retry")
    decided, by_key, by_batch, by_supplier = standing
    if decided is not None:
        state, text, at = decided
        when = iso(at)
        if state == REDEEMED:
            if text == order:
                return Result(Status.ACCEPTED, *base, order_id=order, redeemed_at=when)
            return Result(Status.REDEEMED, *base, order_id=text, redeemed_at=when,
                          message=f"already redeemed by order {text} at {when}")
        return Result(Status.VOID, *base, voided_at=when, reason=text, message=f"voided at {when}: {text}")
    for level, entry in (("supplier", by_supplier), ("batch", by_batch), ("key", by_key)):
        if entry is not None:
            return Result(Status.BLACKLISTED, *base, level=level, reason=entry[0],
                          message=f"blacklisted ({level}): {entry[0]}")
    if row[1] is not None and now < row[1]:
        return Result(Status.NOT_YET_VALID, *base, message=f"valid from {iso(row[1])}")
    if row[2] is not None and now >= row[2]:
        return Result(Status.EXPIRED, *base, message=f"expired at {iso(row[2])}")
    # Refused by a blacklist entry lifted between the decision and the read: refused, and retrying is safe.
    return Result(Status.BLACKLISTED, *base, message="refused by a blacklist entry lifted just now: retry")


def cache(engine: Any, decided: dict[int, tuple[int, str, int]], also: Callable[[Txn], None] | None = None) -> int:
    """Record redeems and voids the authority decided in this node's store (what verify reads); how many
    were new here. Keys the store already holds as decided are left as they are. ``also`` writes more in the
    same transaction."""
    def work(txn: Txn) -> tuple[list[Any], list[int]]:
        if also is not None:
            also(txn)
        head = txn.head()
        cat = engine.current(txn, head)
        overlay = engine.ledger.sync(txn, head)
        changes = []
        redeemed: Counter[tuple[str, str]] = Counter()
        voided: Counter[tuple[str, str]] = Counter()
        for serial in sorted(decided):
            state, text, at = decided[serial]
            info = cat.batches.get(batch_key(serial))
            if info is None or serial in overlay:
                continue  # not a key of this store, or decided here already
            record = txn.get("cards", u64(serial))
            if record is None or record[0] != ACTIVE:
                continue
            changes.append((serial, state, at, text))
            (redeemed if state == REDEEMED else voided)[(info.id, info.supplier)] += 1
        for (batch, supplier), n in voided.items():
            for scope in counter_scopes(batch, supplier):
                txn.add(scope + b"/void", n)
        return engine._record(txn, overlay, changes, redeemed, b"redeemed")

    engine.ledger.learn(*engine.store.write(work))
    return len(decided)


def void(engine: Any, serial: int, reason: str) -> tuple[int, str, int]:
    """Void through the authority, then in the cache; the key's (state, text, at ms) as decided."""
    decided = engine.authority.void(serial, reason, now_ms())
    cache(engine, {serial: decided})
    return decided


# -- checkout across nodes: holds and count-limited keys (docs/cluster.md) --------------------------------


def _base(before: Result, decided: tuple[int, str, int] | None, listed: tuple[Any, Any, Any], row: Any,
          now: int) -> Result:
    """A locked key's status as the authority holds it (redeemed, void, blacklisted, its window), else valid."""
    if decided is None and not any(listed) and (row[1] is None or now >= row[1]) and (row[2] is None or now < row[2]):
        return Result(Status.VALID, *before[1:6])
    return _answer(before, "", (decided, *listed), row, now)


class _Cart:
    """The checkout decisions of one authority transaction: each key's slot as PostgreSQL holds it (its row
    locked), decided in order by checkout.py's rules against PostgreSQL's clock, and what to write at the end."""

    def __init__(self, co: Checkout, cat: Any, wanted: dict[int, Result]) -> None:
        self.co = co
        rows = co.lock(list(wanted))
        self.now = co.now
        self.when = str(iso(self.now))
        stored = co.read(list(wanted))
        targets = {serial: (LEVEL_KEY + u64(serial), LEVEL_BATCH + u64(serial >> INDEX_BITS),
                            LEVEL_SUPPLIER + (before.supplier or "").encode("ascii"))
                   for serial, before in wanted.items()}
        listed = co.blacklisted([t for three in targets.values() for t in three])
        self.events: list[tuple[str, int, str, int | None]] = []
        self.holds: dict[tuple[int, str], tuple[int, int, int] | None] = {}
        self.uses: list[tuple[int, str, int, int, int]] = []
        self.redeemed: list[tuple[int, str, int]] = []
        #: Each order's last checkout event on each key (its own events included as they are made).
        self.last: dict[str, dict[int, dict[str, Any]]] = {}
        #: Each key's uses: order -> (at, change, uses left, limit); a change not yet numbered is -(position + 1).
        self.use_rows: dict[int, dict[str, tuple[int, int, int, int]]] = {}
        self.slots: dict[int, checkout.Slot] = {}
        for serial, before in sorted(wanted.items()):
            base = _base(before, rows.get(serial), tuple(listed.get(t) for t in targets[serial]),  # type: ignore[arg-type]
                         cat.rows[serial >> INDEX_BITS], self.now)
            holds, uses = stored[serial]
            limit = next(iter(uses.values()))[3] if uses else cat.uses.get(before.batch or "", 1)
            if limit == 1:
                spent = 1 if base.status is Status.REDEEMED else 0
                used = {base.order_id or "": (base.redeemed_at or "", None)} if spent else {}
            else:
                spent = limit if base.status is Status.REDEEMED else len(uses)
                used = {order: (str(iso(u[0])), u[2]) for order, u in uses.items()}
            slot = self.slots[serial] = checkout.Slot(serial, base, limit, spent, used, dict(holds))  # type: ignore[arg-type]
            self.use_rows[serial] = dict(uses)
            for order, hold in list(slot.holds.items()):  # ended: removed, each an expire event
                if hold[1] <= self.now:
                    del slot.holds[order]
                    slot.ended[order] = hold[1]
                    self.holds[(serial, order)] = None
                    self.event("expire", serial, order, hold[1])

    def event(self, kind: str, serial: int, order: str, detail: int | None = None) -> int:
        """Add a change to write; its position."""
        self.events.append((kind, serial, order, detail))
        if kind != "redeem":
            self.last.setdefault(order, {})[serial] = {"type": kind, "expires_at": detail}
        return len(self.events) - 1

    def hold(self, slot: checkout.Slot, order: str, ttl_ms: int) -> Result:
        """Make ``order``'s hold: its answer."""
        expires = self.now + ttl_ms
        at = self.event("hold", slot.serial, order, expires)
        slot.holds[order] = (self.now, expires, -at - 1)
        self.holds[(slot.serial, order)] = (self.now, expires, at)
        return checkout.decide_hold(slot, order, self.now)[0]  # now a retry of it: held, for this order

    def use(self, slot: checkout.Slot, order: str) -> Result:
        """Spend one use of the key for ``order`` (its hold, if any, confirmed): ``accepted``."""
        serial = slot.serial
        if slot.holds.pop(order, None) is not None:
            self.holds[(serial, order)] = None
            self.event("confirm", serial, order)
        slot.spent += 1
        slot.used[order] = (self.when, slot.uses_left())
        if slot.limit != 1:
            left = slot.limit - slot.spent
            at = self.event("use", serial, order, left)
            self.uses.append((serial, order, slot.limit, left, at))
            self.use_rows[serial][order] = (self.now, -at - 1, left, slot.limit)
        if slot.spent >= slot.limit:  # the last use: the key's row becomes its redeem, by this order
            self.redeemed.append((serial, order, self.event("redeem", serial, order)))
        return checkout.decide_redeem(slot, order, self.now)[0]  # the order has used it: accepted

    def release(self, slot: checkout.Slot, order: str, last: dict[str, Any] | None) -> Result:
        """Give ``order``'s hold up: ``released``; a hold that ended or was confirmed answers as confirm would."""
        if slot.holds.pop(order, None) is not None:
            self.holds[(slot.serial, order)] = None
            self.event("release", slot.serial, order)
            return checkout.decide_confirm(slot, order, self.now, {"type": "release"})[0]
        return checkout.decide_confirm(slot, order, self.now, last)[0]

    def write(self) -> None:
        """Write the decisions (the transaction commits after); number this node's copies of them."""
        numbers = self.co.write(self.events, self.holds, self.uses, self.redeemed)
        for slot in self.slots.values():
            slot.holds = {o: (h[0], h[1], numbers[-h[2] - 1] if h[2] < 0 else h[2]) for o, h in slot.holds.items()}
        for uses in self.use_rows.values():
            for order, u in list(uses.items()):
                if u[1] < 0:
                    uses[order] = (u[0], numbers[-u[1] - 1], u[2], u[3])

    def settle(self, engine: Any) -> None:
        """After COMMIT: this node's cache takes the decisions at once (its verify answers from them)."""
        keys = {serial: (slot.holds, self.use_rows[serial], slot.limit) for serial, slot in self.slots.items()}
        if self.redeemed:  # one write: the redeems, and the holds and uses records
            cache(engine, {serial: (REDEEMED, order, self.now) for serial, order, _ in self.redeemed},
                  lambda txn: _put_checkout(engine, txn, _checkout_records(engine, txn, keys)))
        else:
            mirror_checkout(engine, keys)


def checkout_ops(engine: Any, checked: list[Any], locks: Any, budgets: dict[str, Any],
                 before_wait: Callable[[], None] | None) -> list[Any]:
    """Holds, confirms and releases (checked ops, or the error refusing each) decided by the authority in one
    transaction, in order, with the single store's rules; each op's answer as ``Engine.checkout_for`` gives it."""
    now = now_ms()
    out: list[Any] = [op if isinstance(op, KeyvaultError) else None for op in checked]
    holding: dict[int, Result] = {}
    jobs: list[tuple[int, str, str, int, int]] = []  # (op index, action, order, serial, ttl ms)
    with engine.store.read() as txn:
        head = txn.head()
        cat = engine.current(txn, head)
        overlay = engine.ledger.sync(txn, head)

        def judge_key(key: str) -> Result:
            return check(txn, cat, engine.pepper, overlay, [key], now, locks)[0]

        for i, op in enumerate(checked):
            if isinstance(op, KeyvaultError):
                continue
            action, key, order, ttl_ms, client = op
            if action != "hold":
                jobs.append((i, action, order, 0, 0))
                continue
            before = engine.guard.judge_one(key, client, budgets, judge_key, HOLD_FREE)
            if before.status not in _DECIDED or before.serial is None:
                out[i] = before
                continue
            serial = _fast.parse_serial(before.serial)
            holding.setdefault(serial, before)
            jobs.append((i, "hold", order, serial, ttl_ms))
    if not jobs:
        return out
    orders = sorted({order for _, action, order, _, _ in jobs if action != "hold"})
    if before_wait is not None:
        before_wait()

    def work(co: Checkout) -> tuple[list[Any], _Cart | None]:
        answers = list(out)
        wanted = dict(holding)
        plain: dict[int, checkout.Slot] = {}  # keys this node cannot find or judge: answered as they stand here
        if wanted and orders:
            co.lock(list(wanted))
        while True:  # the orders' events are read once every key they name is locked: none can change meanwhile
            last: dict[str, dict[int, dict[str, Any]]] = {}
            for _, kind, order, serial, detail, _ in co.events(orders) if orders else []:
                if kind != "redeem":
                    last.setdefault(order, {})[serial] = {"type": kind, "expires_at": detail}
            named = sorted({serial for keys in last.values() for serial in keys
                            if serial not in wanted and serial not in plain})
            if not named:
                break
            with engine.store.read() as txn:
                head = txn.head()
                here, overlay = engine.current(txn, head), engine.ledger.sync(txn, head)
                for serial in named:
                    found = find(txn, here, engine.pepper, serial_text(serial))
                    before = found if isinstance(found, Result) else judge(txn, here, found, overlay, now)
                    if isinstance(found, Result) or before.status not in _DECIDED:
                        plain[serial] = checkout.Slot(serial, before, 1, 0, {}, {})
                    else:
                        wanted[serial] = before
            co.lock(list(wanted))
        cart = _Cart(co, cat, wanted) if wanted else None
        if cart is not None:
            cart.last = last
        clock = co.now
        for i, action, order, serial, ttl_ms in jobs:
            if action == "hold":
                assert cart is not None
                slot = cart.slots[serial]
                answer, make = checkout.decide_hold(slot, order, clock)
                answers[i] = cart.hold(slot, order, ttl_ms) if make else answer
                continue
            mine = list(last.get(order, {}).items())
            if not mine:
                answers[i] = NotFoundError(f"order {order!r} holds no key in this cluster: hold its keys first")
                continue
            done = []
            for serial, event in mine:
                slot = plain.get(serial) or cart.slots[serial]  # type: ignore[union-attr]
                if serial in plain or cart is None:
                    done.append(checkout.decide_confirm(slot, order, clock, event)[0])
                elif action == "confirm":
                    answer, spend = checkout.decide_confirm(slot, order, clock, event)
                    done.append(cart.use(slot, order) if spend else answer)
                else:
                    done.append(cart.release(slot, order, event))
            answers[i] = done
        if cart is not None:
            cart.write()
        return answers, cart

    answers, cart = engine.authority.checkout(work)
    if cart is not None:
        cart.settle(engine)
    return answers


def mirror_checkout(engine: Any, keys: dict[int, tuple[dict[str, tuple[int, int, int]],
                                                       dict[str, tuple[int, int, int, int]], int]]) -> None:
    """Make this node's hold and use records of these keys what the authority holds (serial -> (holds, uses,
    limit)): what its verify reads for ``held`` and uses left. Written only where they differ."""
    with engine.store.read() as txn:
        if not _checkout_records(engine, txn, keys):
            return
    engine.store.write(lambda txn: _put_checkout(engine, txn, _checkout_records(engine, txn, keys)))


def _checkout_records(engine: Any, txn: Txn, keys: dict[int, tuple[dict[str, tuple[int, int, int]],
                                                                   dict[str, tuple[int, int, int, int]], int]]
                      ) -> list[tuple[bytes, bytes | None]]:
    """The checkout records (key, value or None to delete) that make these keys' holds and uses the authority's."""
    pepper = engine.pepper
    cat = engine.current(txn)
    out: list[tuple[bytes, bytes | None]] = []
    for serial, (holds, uses, limit) in sorted(keys.items()):
        if batch_key(serial) not in cat.batches or txn.get("cards", u64(serial)) is None:
            continue  # not a key of this store
        try:
            raw = checkout_record(txn, hold_key(serial))
            same = unpack_holds(pepper, serial, None if raw is None else bytes(raw)) == holds
        except StoreCorruptError:
            same = False
        if not same:
            out.append((hold_key(serial), pack_holds(pepper, serial, holds) if holds else None))
        if limit == 1 or not uses:
            continue
        for order, (at, change, left, _) in sorted(uses.items()):
            if txn.get("checkout", use_key(serial, order)) is None:  # (a lost one is written again)
                out.append((use_key(serial, order), pack_use(pepper, serial, order, at, change, left)))
        try:
            counted = unpack_spent(pepper, serial, checkout_record(txn, spent_key(serial)))
        except StoreCorruptError:
            counted = None
        if counted != (len(uses), limit):
            out.append((spent_key(serial), pack_spent(pepper, serial, len(uses), limit)))
    return out


def _put_checkout(engine: Any, txn: Txn, records: list[tuple[bytes, bytes | None]]) -> None:
    """Write checkout records (None: delete), the table's mark with its first."""
    for key, value in records:
        if value is None:
            delete_checkout(txn, key)
            continue
        if txn.get("meta", CHECKOUT_MARKED) is None:
            txn.put("checkout", CHECKOUT_MARK, checkout_mark(engine.pepper))
            txn.put("meta", CHECKOUT_MARKED, b"1")
        put_checkout(txn, key, value)  # (listed in the roster, as one store's own are)


def refresh_checkout(engine: Any, serials: set[int]) -> None:
    """Bring this node's hold and use records of these keys to what the authority holds now."""
    state = engine.authority.checkout_state(sorted(serials))
    cat = engine.catalog()
    keys = {}
    for serial, (holds, uses) in state.items():
        info = cat.batches.get(batch_key(serial))
        limit = next(iter(uses.values()))[3] if uses else (info.uses if info is not None else 1)
        keys[serial] = (holds, uses, limit)
    mirror_checkout(engine, keys)


def order_events(engine: Any, order: str) -> list[dict[str, Any]]:
    """An order's events as the authority holds them (every node's), oldest first, as ``checkout.order_report``
    reads them: the change number is the event's index."""
    events = []
    for change, kind, serial, detail, at in engine.authority.order_changes(order):
        event: dict[str, Any] = {"index": change, "type": kind, "at_ms": at, "serial": serial_text(serial),
                                 "order_id": order}
        if kind in ("hold", "expire"):
            event["expires_at"] = detail
        elif kind == "use":
            event["uses_left"] = detail
        events.append(event)
    return events


# -- binding -------------------------------------------------------------------------------------------


def own_state(engine: Any) -> tuple[list[tuple[int, int, str, int]], list[tuple[bytes, str, str, str, int]]]:
    """This store's redeemed and void keys (serial, state, text, at ms) and blacklist entries
    (target, level, shown, reason, at ms): what binding it to an authority would have to move."""
    keys: dict[int, tuple[int, int, str, int]] = {}
    entries = []
    with engine.store.read() as txn:
        overlay = engine.ledger.sync(txn, txn.head())
        for key, record in txn.items("cards"):
            if record[0] == ACTIVE:
                continue
            serial = from_u64(key)
            outcome = _fast.open_outcome(engine.pepper, serial, txn.get("outcomes", key))
            if outcome is None:
                raise ConflictError(f"the outcome record of serial {serial} is damaged: run `keyvault check` and "
                                    "restore the store before binding it to an authority")
            keys[serial] = (serial, outcome[0], bytes(outcome[17:]).decode("utf-8"),
                            int.from_bytes(outcome[1:9], "big"))
        for serial, (state, at, text, _) in overlay.items():
            keys[serial] = (serial, state, text, at)
        for raw, value in txn.items("blacklist"):
            doc = load(value)
            level, shown = blacklist_target(bytes(raw))
            entries.append((bytes(raw), level, shown, str(doc["reason"]), int(doc["at"])))
    return sorted(keys.values()), entries


def bind(engine: Any, dsn: str, migrate: bool, cluster_key: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Bind the store to the authority at ``dsn``; ``migrate`` moves its own decisions in first; ``cluster_key``
    (checked first) is the cluster engine key file this node's processes sequence the cluster log with."""
    if engine.authority.remote:
        raise ConflictError(f"this store is bound to {engine.authority.shown} already: "
                            "`keyvault authority unset` first to bind it elsewhere")
    authority = PostgresAuthority(dsn)
    try:
        key_file = None if cluster_key is None else check_cluster_key(engine, authority, cluster_key)[0]
        keys, entries = own_state(engine)
        with engine.store.read() as txn:
            cursor = txn.cursor("checkout")
            checkouts = [kind for kind in (b"H", b"N", b"U")
                         if cursor.set_range(kind) and bytes(cursor.key()[:1]) == kind]
        if checkouts:
            raise ConflictError("this store holds holds or uses of count-limited keys of its own, which binding does "
                                "not move: bind a store that has held and used nothing (or confirm or release its "
                                "holds and keep its count-limited keys on it); nothing was changed")
        if (keys or entries) and not migrate:
            raise ConflictError(f"this store holds {len(keys)} redeemed or void keys and {len(entries)} blacklist "
                                "entries of its own: bind it with --migrate to move them into the authority (in "
                                "one transaction, counted back), or bind a store that has decided nothing yet")
        moved = authority.migrate(keys, entries) if keys or entries else {"keys": 0, "blacklist": 0}
        with engine.store.read() as txn:
            mine = stored_tokens(txn)
        if mine:  # this node's tokens become every node's (a name taken already keeps the authority's)
            authority.add_tokens(mine, now_ms())
        pins = pinned_here(engine)
        if pins:  # and its pins, every node's (a key the authority knows already keeps its state there)
            authority.put_trust(pins, now_ms(), replace=False)
        cursor = authority.check()["newest_change"]

        def work(txn: Txn) -> None:
            txn.put("meta", META_KEY, dsn.encode("utf-8"))
            txn.put("meta", CURSOR_KEY, u64(0))
            if key_file is not None:
                txn.put("meta", CLUSTER_KEY_FILE, key_file.encode("utf-8"))
            txn.bump_generation()

        engine.store.write(work)
    except BaseException:
        authority.close()
        raise
    engine.authority = authority
    sync_tokens(engine)
    sync_trust(engine)
    catch_up(engine)
    follow(engine)
    return {"authority": authority.shown, "moved_keys": moved["keys"], "moved_blacklist": moved["blacklist"],
            "newest_change": cursor, "cluster_key": key_file}


def unbind(engine: Any) -> dict[str, Any]:
    """Unbind the store: from now on it decides alone again (with what its cache holds)."""
    if not engine.authority.remote:
        raise NotFoundError("this store is not bound to an authority; nothing was changed")

    def work(txn: Txn) -> None:
        txn.delete("meta", META_KEY)
        txn.delete("meta", CURSOR_KEY)
        txn.delete("meta", CLUSTER_KEY_FILE)
        txn.bump_generation()

    shown = engine.authority.shown
    if engine.follower is not None:
        engine.follower.stop()
        engine.follower = None
    if isinstance(engine.authority, PostgresAuthority):  # take every decision the other nodes made along
        while catch_up(engine) >= 10_000:
            pass
    engine.store.write(work)
    engine.authority.close()
    from .local import LocalAuthority

    engine.authority = LocalAuthority()
    return {"authority": None, "was": shown}


def stored_dsn(engine: Any) -> str | None:
    """The DSN the store is bound to, or None."""
    with engine.store.read() as txn:
        value = txn.get("meta", META_KEY)
    return None if value is None else bytes(value).decode("utf-8")


def show(engine: Any) -> dict[str, Any]:
    """The binding, with the DSN's password masked; when bound, the cluster engine key this node sequences with
    (its public id, never the secret) and whether it can."""
    dsn = stored_dsn(engine)
    if dsn is None:
        return {"bound": False, "authority": None}
    key = cluster_key_state(engine)
    return {"bound": True, "authority": mask(dsn), "cluster_key": key,
            "can_sequence": bool(key and key["problem"] is None)}


# -- the cluster engine key (part of the binding) ---------------------------------------------------------

#: Meta key: the path of the cluster engine key's identity file every process of this node sequences with.
CLUSTER_KEY_FILE = b"authority_cluster_key_file"


def key_file(engine: Any) -> tuple[str, str] | None:
    """The cluster engine key file this node's processes use and where it is named: $KEYVAULT_CLUSTER_KEY (an
    override) or the binding; None when neither names one."""
    override = os.environ.get(KEY_ENV)
    if override:
        return override, KEY_ENV
    with engine.store.read() as txn:
        value = txn.get("meta", CLUSTER_KEY_FILE)
    return None if value is None else (bytes(value).decode("utf-8"), "binding")


def check_cluster_key(engine: Any, authority: Any, path: str | os.PathLike[str]) -> tuple[str, Identity]:
    """The cluster engine key at ``path`` (absolute path, identity), refused unless it is a 0600 identity and the
    cluster's (the one registered in the authority, and the one this store checked the cluster log with)."""
    source = Path(path).expanduser().absolute()
    try:
        key = Identity.load(source)
    except IdentityError as exc:
        raise IdentityError(f"the cluster engine key cannot be used: {exc}; nothing was recorded") from None
    registered = authority.cluster_identity() if isinstance(authority, PostgresAuthority) else None
    with engine.store.read() as txn:
        pinned = txn.get("meta", CLUSTER_KEY_META)
    for held, where in ((registered and registered[1], "the cluster registered"),
                        (pinned and bytes(pinned), "this store checked the cluster log with")):
        if held and held != key.public_key:
            raise ConflictError(f"{source} is the key {origin_of(key.public_key)}, not the cluster engine key "
                                f"{where} ({origin_of(held)}): give the key file the cluster's other nodes use; "
                                "nothing was recorded")
    return str(source), key


def set_cluster_key(engine: Any, path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Record (or with None, clear) the cluster engine key file in the binding, checked first; this process's
    follower sequences with it from now on. The binding as :func:`show` gives it."""
    if not engine.authority.remote:
        raise NotFoundError("this store is not bound to an authority: `keyvault authority set DSN --cluster-key "
                            "FILE` binds it with the key; nothing was changed")
    if path is not None and not isinstance(engine.authority, PostgresAuthority):
        raise AuthorityError("the cluster engine key is checked against the one the cluster registered: reach the "
                             "authority to set it; nothing was changed")
    checked = None if path is None else check_cluster_key(engine, engine.authority, path)[0]

    def work(txn: Txn) -> None:
        if checked is None:
            txn.delete("meta", CLUSTER_KEY_FILE)
        else:
            txn.put("meta", CLUSTER_KEY_FILE, checked.encode("utf-8"))

    engine.store.write(work)
    if engine.follower is not None:
        engine.follower.rekey(engine)
    return show(engine)


def node_key(engine: Any) -> tuple[Identity | None, str | None]:
    """This node's cluster engine key (None when it has none) and why it cannot sequence (None when it can)."""
    named = key_file(engine)
    if named is None:
        return None, "no cluster engine key: `keyvault authority cluster-key FILE` gives this node one"
    path, where = named
    try:
        return Identity.load(path), None
    except IdentityError as exc:
        fix = f"unset {KEY_ENV}" if where == KEY_ENV else "`keyvault authority cluster-key --clear`"
        return None, f"the cluster engine key named by {where} cannot be used: {exc} (or {fix})"


def cluster_key_state(engine: Any) -> dict[str, Any] | None:
    """The cluster engine key this node's processes use: file, where it is named, public id and log origin, and
    why it cannot sequence (a file it cannot use, or a key not the cluster's); None when it has none."""
    named = key_file(engine)
    if named is None:
        return None
    key, problem = node_key(engine)
    doc = {"file": named[0], "from": named[1], "id": None if key is None else key.id,
           "origin": None if key is None else origin_of(key.public_key), "problem": problem}
    if key is not None:
        try:
            check_cluster_key(engine, engine.authority, named[0])
        except KeyvaultError as exc:
            doc["problem"] = str(exc).replace("; nothing was recorded", "")
    return doc


def cursor(engine: Any) -> int:
    """The newest authority change number this node's cache has applied."""
    with engine.store.read() as txn:
        value = txn.get("meta", CURSOR_KEY)
    return 0 if value is None else from_u64(value)


def status(engine: Any) -> dict[str, Any]:
    """``keyvault authority check``: reachable, schema, replication, and this node's cache lag."""
    if not engine.authority.remote:
        raise NotFoundError("this store is not bound to an authority: `keyvault authority set DSN` binds it")
    doc = engine.authority.check()
    applied = cursor(engine)
    doc.update(authority=engine.authority.shown, cache_change=applied,
               cache_lag=max(0, doc["newest_change"] - applied), manifests_not_imported=fetch_manifests(engine),
               cluster_log=cluster_log(engine))
    return doc


def cluster_bundle(engine: Any, key_or_serial: str, wait: float = 30.0) -> dict[str, Any] | None:
    """A trace bundle of a key from the cluster's one log, checkpoint signed by the cluster engine key (None when
    the cluster has no log yet: the node's own log serves). It waits up to ``wait`` seconds for a checkpoint that
    covers the key's events this node has read (the sequencer signs one every few seconds while the log grows)."""
    if not isinstance(engine.authority, PostgresAuthority) or engine.authority.cluster_identity() is None:
        return None  # opened without reaching the authority, or no cluster log kept: the node's own log proves it
    copy = mirror(engine)
    with engine.store.read() as txn:
        cat = engine.current(txn)
        found = find(txn, cat, engine.pepper, key_or_serial)
        if isinstance(found, Result):
            raise NotFoundError(f"that key or serial is not in this store ({found.status.value})")
        key_part = commitment_proof(txn, engine.pepper, found.batch, found.serial,
                                    not looks_like_serial(key_or_serial))
        custody = custody_of(txn, found.batch.key, found.serial)
    subjects = [LEVEL_KEY + u64(found.serial), LEVEL_BATCH + u64(found.batch.key),
                LEVEL_SUPPLIER + found.batch.supplier.encode()]
    deadline = time.monotonic() + wait
    while True:
        while step_mirror(engine):
            pass
        about = [i for i, leaf in enumerate(copy.leaves)
                 if any(subject in subjects for subject, _ in split_leaf(leaf)[1] or [])]
        latest_checkpoint = copy.latest(cover=about[-1] if about else -1)  # the most cosigned that covers them
        if latest_checkpoint is not None:
            break
        if time.monotonic() > deadline:
            raise AuthorityError("no cluster checkpoint covers this key's events yet (is a node holding the cluster "
                                 "engine key running? `keyvault authority show` says): try again in a few seconds")
        time.sleep(0.2)
    size, checkpoint = latest_checkpoint
    latest: dict[bytes, int] = {}
    indices = []
    for index, leaf in enumerate(copy.leaves[:size]):
        links = split_leaf(leaf)[1] or []
        for subject, _ in links:
            latest[subject_key(subject)] = index
        if any(subject in subjects for subject, _ in links):
            indices.append(index)
    events = [(i, copy.leaves[i], copy.tree.inclusion(i, size)) for i in indices]
    signed = open_signed_header(key_part["manifest_signed"], where="the key's manifest")
    status, order = replayed_status([parse_leaf(leaf) for _, leaf, _ in events], signed.header,
                                    serial_text(found.serial), checkpoint.time or now_ms())
    return bundle.build(**key_part, custody=custody, checkpoint=copy.checkpoints[size], events=events,
                        status={"status": status, "order_id": order},
                        index_proofs=[prove(latest, subject) for subject in subjects])


#: Per engine: its checked mirror of the cluster event log.
_MIRRORS: weakref.WeakKeyDictionary[Any, Mirror] = weakref.WeakKeyDictionary()


#: Meta key: the cluster engine key this node first checked the cluster log with (a later change is refused).
CLUSTER_KEY_META = b"authority_cluster_key"


def mirror(engine: Any) -> Mirror:
    """This engine's mirror of the cluster event log (checked up to where it has read), with the cluster key
    the store recorded when it first checked the log."""
    copy = _MIRRORS.get(engine)
    if copy is None:
        with engine.store.read() as txn:
            pinned = txn.get("meta", CLUSTER_KEY_META)
        copy = _MIRRORS.setdefault(engine, Mirror(None if pinned is None else bytes(pinned)))
    return copy


def step_mirror(engine: Any) -> int:
    """Check the cluster log's new entries; how many. The cluster key is recorded in the store at first sight."""
    copy = mirror(engine)
    known = copy.public_key
    added = copy.step(engine.authority)
    if known is None and copy.public_key is not None:
        engine.store.write(lambda txn: txn.put("meta", CLUSTER_KEY_META, copy.public_key))
    return added


def cluster_log(engine: Any) -> dict[str, Any]:
    """The cluster event log as this node checked it: size, newest checked checkpoint, and any tampering found
    (a problem is reported, and nothing past it believed)."""
    copy = mirror(engine)
    try:
        while step_mirror(engine):
            pass
    except KeyvaultError:
        pass  # kept in copy.problem
    latest = copy.latest()
    follower = engine.follower
    return {"size": copy.tree.size, "checkpoint": None if latest is None else latest[0],
            "origin": None if latest is None else latest[1].origin, "problem": copy.problem,
            "sequencer": bool(follower is not None and follower.sequencer is not None and follower.sequencer.holding)}


# -- catching up -----------------------------------------------------------------------------------------


def follow(engine: Any) -> None:
    """Start keeping this process's cache current, when the engine reaches a PostgreSQL authority
    (KEYVAULT_AUTHORITY_FOLLOW=0 leaves it to explicit catch-ups)."""
    if engine.follower is None and isinstance(engine.authority, PostgresAuthority) \
            and os.environ.get("KEYVAULT_AUTHORITY_FOLLOW", "1") != "0":
        engine.follower = Follower(engine)


#: In the store directory: held by the one follower of the store (the processes of a node share one cache).
FOLLOWER_LOCK = "authority-follower.lock"


def _claim(directory: Path) -> int | None:
    """Take the store's follower lock; its descriptor, or None when another process holds it. A POSIX lock
    (not flock): a process forked from the follower's does not inherit it."""
    fd = os.open(directory / FOLLOWER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class Follower:
    """A background thread keeping a node's cache current: it applies the authority's changes when a NOTIFY
    says some were committed, and polls by change number every ``interval`` seconds regardless.

    The processes of one node (a service's workers and commit process, a library caller) share one store, so
    one of them follows: the one holding the store's follower lock; the others take it over when it exits.
    """

    def __init__(self, engine: Any, interval: float = 1.0) -> None:
        self._engine = weakref.ref(engine)
        self._directory = Path(engine.path)
        self._interval = interval
        #: This process's sequencer of the cluster log, when it has the cluster engine key (it numbers the log
        #: only while it holds the log's lock).
        self.sequencer: Sequencer | None = None
        self.rekey(engine)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyvault-authority-follower", daemon=True)
        self._thread.start()

    def rekey(self, engine: Any) -> None:
        """(Re)start this process's sequencer with the node's cluster engine key as it stands now (a key it cannot
        use is logged as an error, and the node only follows)."""
        if self.sequencer is not None:
            self.sequencer.stop()
            self.sequencer = None
        key, problem = node_key(engine)
        if key is None and key_file(engine) is not None:
            log.error("cluster log: this node will not sequence: %s", problem)
        elif key is not None:
            self.sequencer = Sequencer(engine.authority, key).start()

    def _run(self) -> None:
        claim: int | None = None
        try:
            while claim is None and not self._stop.is_set() and self._engine() is not None:
                try:
                    claim = _claim(self._directory)
                except OSError:
                    claim = None  # the store directory is gone or unwritable: the store says why elsewhere
                if claim is None:
                    self._stop.wait(self._interval)
            if claim is not None:
                self._follow()
        finally:
            if claim is not None:
                os.close(claim)

    def _follow(self) -> None:
        conn = None
        while not self._stop.is_set():
            engine = self._engine()
            if engine is None or not isinstance(engine.authority, PostgresAuthority):
                break
            try:
                if conn is None:
                    conn = engine.authority.listener()
                while catch_up(engine) >= 10_000:
                    pass
                try:
                    step_mirror(engine)
                except KeyvaultError as exc:  # tampering found: reported by `authority check`, not believed
                    log.error("cluster log: %s", exc)
                del engine
                until = time.monotonic() + self._interval
                while not self._stop.is_set() and time.monotonic() < until:  # short waits: close() is quick
                    if list(conn.notifies(timeout=0.1, stop_after=1)):
                        break
            except Exception:  # noqa: BLE001 - a lost connection or a busy store: try again after a pause
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001 - it is being dropped anyway
                        pass
                conn = None
                self._stop.wait(self._interval)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing at exit
                pass

    def stop(self) -> None:
        """Stop following and wait (briefly) for the thread to end."""
        self._stop.set()
        if self.sequencer is not None:
            self.sequencer.stop()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


def catch_up(engine: Any, limit: int = 10_000) -> int:
    """Apply the authority's changes since this node's cursor to its cache (redeems, voids, blacklist
    entries); how many were read. Idempotent: each change is applied as the authority holds it now."""
    if not engine.authority.remote:
        return 0
    fetch_manifests(engine)  # first: the redeems that follow may be of its keys
    start = cursor(engine)
    changes = engine.authority.changes_since(max(0, start - REREAD), limit)
    if not changes:
        return 0
    decided: dict[int, tuple[int, str, int]] = {}
    targets: dict[bytes, tuple[str | None, str, int]] = {}
    touched = {c[2] for c in changes if c[1] in CHECKOUT_KINDS and c[2] is not None}
    if touched:  # holds and uses: this node's records made what the authority holds now
        refresh_checkout(engine, touched)
    if any(c[1] == "token" for c in changes):
        sync_tokens(engine)
    if any(c[1] == "trust" for c in changes):
        sync_trust(engine)
    for change, kind, serial, target, text, at, now_held in changes:
        if kind in ("redeem", "void") and serial is not None:
            decided.setdefault(serial, (REDEEMED if kind == "redeem" else VOIDED, text, at))
        elif target is not None:  # applied as the authority holds it now (a later lift wins over the add)
            targets[target] = (None, text, at) if now_held is None else now_held
    newest = max(c[0] for c in changes)
    with engine.store.read() as txn:
        overlay = engine.ledger.sync(txn, txn.head())
        decided = {s: d for s, d in decided.items() if s not in overlay
                   and (record := txn.get("cards", u64(s))) is not None and record[0] == ACTIVE}
        targets = {raw: held for raw, held in targets.items()
                   if (old := txn.get("blacklist", raw)) is None and held[0] is not None
                   or old is not None and (held[0] is None or load(old).get("reason") != held[1])}
        stored = txn.get("meta", CURSOR_KEY)
        if not decided and not targets and stored is not None and from_u64(stored) >= newest:
            return len(changes)  # nothing new for this node: no write
    if decided:
        cache(engine, decided)

    def work(txn: Txn) -> None:
        bumped = False
        for raw, (level, text, at) in targets.items():
            old = txn.get("blacklist", raw)
            value = None if level is None else dump({"reason": text, "at": at})
            if value is None and old is not None:
                txn.delete("blacklist", raw)
            elif value is not None and (old is None or load(old).get("reason") != text):
                txn.put("blacklist", raw, value)
            else:
                continue
            txn.put("meta", BLACKLIST_DIGEST, blacklist_digest(txn.get("meta", BLACKLIST_DIGEST), raw, old, value))
            bumped = True
        if bumped:
            txn.bump_generation()
        old_cursor = txn.get("meta", CURSOR_KEY)
        if old_cursor is None or from_u64(old_cursor) < newest:
            txn.put("meta", CURSOR_KEY, u64(newest))

    engine.store.write(work)
    return len(changes)


def check_dsn(dsn: object) -> str:
    """A DSN given on the command line, checked to be text."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise UsageError("give the authority as a PostgreSQL DSN, like 'host=db1,db2 dbname=keyvault user=keyvault'")
    return dsn
