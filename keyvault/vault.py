"""The engine: :class:`Vault` opens a store and answers verify, redeem, void and blacklist.

Every state change is one durable LMDB write transaction. Verification
reads batch, supplier and blacklist state from the in-memory
:class:`~keyvault.catalog.Catalog`, kept current through the store's
generation counter.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from . import _fast
from .clock import iso, now_ms
from .engine import issuing, lots, trust
from .engine.catalog import BatchInfo, BlacklistEntry, Catalog, blacklist_target
from .engine.eventlog import EventLog, Policy
from .engine.groupcommit import GroupCommit
from .engine.issuing import Progress
from .engine.ledger import FOLD_AT, Change, Ledger
from .engine.proofs import commitment_proof
from .engine.reports import build_stats, build_trace, key_events
from .engine.throttling import ThrottlePolicy
from .engine.tokens import PREFIX as TOKEN_PREFIX
from .engine.tokens import (
    Grant,
    check_name,
    check_scope,
    listing,
    new_token,
    token_hash,
)
from .engine.tokens import save as save_tokens
from .engine.tokens import stored as stored_tokens
from .errors import (
    ConflictError,
    KeyvaultError,
    MalformedKeyError,
    NotFoundError,
    PepperError,
    StoreError,
    StoreExistsError,
    StoreFullError,
    UsageError,
)
from .fields import MAX_CLIENT, MAX_ORDER_ID, MAX_REASON, check_text
from .formats import bundle
from .formats.custody import parse_ranges
from .formats.events import parse_leaf
from .formats.identity import (
    Identity,
    PublicIdentity,
    Rotation,
    check_private_file,
    write_private_file,
)
from .formats.keyformat import (
    MAX_IMPORTED,
    batch_key,
    batch_text,
    looks_like_serial,
    looks_native,
    malformed,
    normalize_imported,
    parse_batch,
    parse_serial,
    serial_text,
)
from .formats.manifest import read_manifest
from .results import Result, Status
from .store import ACTIVE, REDEEMED, VOIDED, Head, LmdbStore, Txn
from .store.lmdbstore import LMDB_ERRORS
from .store.records import (
    CARD,
    LEVEL_BATCH,
    LEVEL_KEY,
    LEVEL_SUPPLIER,
    dump,
    from_u64,
    load,
    u64,
)
from .store.throttle import ThrottleStore

PEPPER_ENV = "KEYVAULT_PEPPER_FILE"
ENGINE_FILE = "engine.key"  # the store's own Ed25519 key: signs checkpoints (0600, beside the pepper)
ENGINE_NAME = "keyvault-engine"
_PEPPER_CHECK = b"kv1/pepper-check"
_FLUSH_SECONDS = 1.0  # refused-attempt counters are flushed at most this often (and on close)
_DUMMY_SALT = bytes(16)  # hashed for unknown batches, so unknown and wrong keys cost the same


@dataclass(frozen=True, slots=True)
class _Found:
    """A key located in the store and matched against its tag."""

    serial: int
    batch: BatchInfo
    state: int
    tag: bytes


#: Ledger changes a committed transaction wrote, and their sequence numbers.
_Written = tuple[list[tuple[int, int, int, str]], list[int]]


_UNHELD = (b"T", b"B:?", b"S:?")  # where refusals of keys naming no batch held here are counted


def _pair(key: object, order_id: object) -> tuple[str, str]:
    """A (key, order id) to redeem, checked before anything is touched."""
    if not isinstance(key, str):
        raise UsageError("a key must be a string")
    return key, check_text(order_id, "order id", MAX_ORDER_ID)


def _counter_scopes(batch_id: str | None, supplier: str | None) -> tuple[bytes, ...]:
    """Where a count goes: the totals, and the batch and supplier when known."""
    if batch_id is None or supplier is None:
        return (b"T",)
    return (b"T", b"B:" + batch_id.encode(), b"S:" + supplier.encode())


class Vault:
    """A keyvault store, opened. Use as a context manager, or call :meth:`close`."""

    def __init__(self, store: LmdbStore, pepper: bytes, engine: Identity) -> None:
        self._store = store
        self._pepper = pepper
        self._log = EventLog(engine)
        self._throttle_store: ThrottleStore | None = None  # opened when a client is first named
        self._policies: dict[str, ThrottlePolicy] = {"": ThrottlePolicy()}
        self._catalog = Catalog()
        self._pending: Counter[bytes] = Counter()
        self._pending_lock = threading.Lock()
        self._last_flush = time.monotonic()
        #: Seconds between automatic writes of refused-attempt counts (None: only flush_stats() and close()).
        self.flush_every: float | None = _FLUSH_SECONDS
        #: How many folds a full overlay takes. 1: all at once, best for bulk redeems (1 M-key store:
        #: 159 k/s, a 220 ms pause every 100,000); 10: the oldest tenth each time, for tail latency
        #: (100 k/s, an 80 ms pause every 10,000: the service's commit process uses it).
        self.fold_slices = 1
        self._ledger = Ledger(self._log)
        self._group: GroupCommit[tuple[str, str], Result] = GroupCommit(self._redeem_pairs)
        self._cards = store.handle("cards")
        #: (LMDB transaction id, catalog, overlay) as of the last single-key read that checked the head.
        self._fresh: tuple[int, Catalog, dict[int, Change]] = (-1, Catalog(), {})

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str], *, pepper_file: str | os.PathLike[str] | None = None) -> Vault:
        """Create a new store in an empty or new directory, with a new 0600 pepper file."""
        root = Path(path)
        if (root / "data.mdb").exists():
            raise StoreExistsError(f"{root} already holds a keyvault store; open it instead of creating one")
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} is a file; choose a directory for the store")
        if root.is_dir() and any(root.iterdir()):
            raise StoreError(f"{root} is not empty; create the store in a new or empty directory")
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        pepper_path = Path(pepper_file) if pepper_file else root / "pepper"
        made_pepper = not pepper_path.exists()
        try:
            if made_pepper:
                pepper = secrets.token_bytes(32)
                write_private_file(pepper_path, pepper.hex().encode() + b"\n")
            else:
                pepper = _read_pepper(pepper_path)
            engine = Identity.generate(ENGINE_NAME)
            engine.save(root / ENGINE_FILE)
            store = LmdbStore.create(root)
        except BaseException as exc:
            # A store that could not be made leaves nothing behind: the directory is as it was.
            for name in ("data.mdb", "lock.mdb", ENGINE_FILE):
                (root / name).unlink(missing_ok=True)
            if made_pepper:
                pepper_path.unlink(missing_ok=True)
            if isinstance(exc, StoreFullError) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC,
                                                                                                  errno.EDQUOT)):
                raise StoreFullError(f"no room on the disk to create a store at {root}; nothing was left "
                                     "behind: free some space and try again") from None
            if isinstance(exc, OSError) and not isinstance(exc, KeyvaultError):
                raise StoreError(f"cannot create a store at {root}: {exc.strerror}") from None
            raise
        vault = cls(store, pepper, engine)

        def setup(txn: Txn) -> None:
            now = now_ms()
            txn.put("meta", b"pepper_check", _pepper_check(pepper))
            txn.put("meta", b"created_at", u64(now))
            txn.put("meta", b"checkpoint_policy", Policy().to_record())
            vault._log.append(txn, "trust", now, {"action": "engine", "name": engine.name,
                                                  "public_key": engine.public_key.hex()}, [])
            vault._log.maybe_checkpoint(txn, now, force=True)

        store.write(setup)
        return vault

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, pepper_file: str | os.PathLike[str] | None = None,
             create: bool = False) -> Vault:
        """Open the store at ``path`` (created first when ``create`` is set and none is there)."""
        root = Path(path)
        if create and not (root / "data.mdb").exists():
            return cls.init(root, pepper_file=pepper_file)
        store = LmdbStore.open(root)
        try:
            pepper_path = Path(pepper_file or os.environ.get(PEPPER_ENV) or root / "pepper")
            pepper = _read_pepper(pepper_path)
            with store.read() as txn:
                expected = txn.get("meta", b"pepper_check")
            if expected is None or not _fast.tags_equal(expected, _pepper_check(pepper)):
                raise PepperError(f"the pepper file {pepper_path} does not belong to this store (it was made with "
                                  "another one); restore this store's own pepper file from your backup")
            engine = _read_engine(root / ENGINE_FILE)
        except BaseException:
            store.close()
            raise
        return cls(store, pepper, engine)

    @property
    def path(self) -> Path:
        """The store directory."""
        return self._store.path

    def close(self) -> None:
        """Flush pending statistics and close the store."""
        try:
            self.flush_stats()
        except StoreError:
            pass  # closing must not fail because a statistics write could not be made
        finally:
            if self._throttle_store is not None:
                self._throttle_store.close()
            self._store.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Vault {str(self.path)!r}>"

    # -- the catalog ---------------------------------------------------------------------------

    def _current(self, txn: Txn, head: Head | None = None) -> Catalog:
        """The catalog, reloaded if any process changed the configuration since it was read."""
        generation = (head or txn.head()).generation
        if txn.bumped:  # this transaction's own changes: never cached, it may abort and its number be reused
            return Catalog.load(txn, generation)
        catalog = self._catalog
        if catalog.generation != generation:
            catalog = Catalog.load(txn, generation)
            policy = txn.get("meta", b"checkpoint_policy")
            if policy is not None:
                doc = load(policy)
                self._log.policy = Policy(int(doc["every_events"]), int(doc["every_seconds"]))
            throttling = txn.get("meta", b"throttle_policy")
            self._policies = {"": ThrottlePolicy()}
            if throttling is not None:
                self._policies.update({who: ThrottlePolicy.from_dict(d) for who, d in load(throttling).items()})
            self._catalog = catalog
        return catalog

    def catalog(self) -> Catalog:
        """A current snapshot of batches, suppliers and blacklist entries."""
        with self._store.read() as txn:
            return self._current(txn)

    # -- locating keys: the slow paths (imported codes, serials) --------------------------------

    def _locate(self, txn: Txn, cat: Catalog, key: str) -> _Found | Result:
        """Find a typed key's record and check its tag; a Result when it cannot be found."""
        if not isinstance(key, str):
            raise UsageError("a key must be a string")
        outcome, serial, canonical, position = _fast.parse_key(key)
        if outcome == _fast.OK:
            batch = cat.batches.get(batch_key(serial))
            material = canonical
        else:
            # Native-shaped input is a mistyped native key, never an imported code.
            imported = None if looks_native(key) else self._imported_lookup(txn, cat, key)
            if imported is None:
                group, message = malformed(outcome, position, key)
                return Result(Status.MALFORMED, group=group, message=message)
            serial, material = imported  # serial -1: not found, but hashed all the same
            batch = cat.batches.get(batch_key(serial)) if serial >= 0 else None
        expected = _fast.tag(self._pepper, _fast.verifier(batch.salt if batch else _DUMMY_SALT, material))
        record = txn.get("cards", u64(serial)) if batch is not None else None
        if record is None or batch is None:
            return Result(Status.UNKNOWN, serial=serial_text(serial) if serial >= 0 else None,
                          batch=batch.id if batch else None, message="no such key in this store")
        state, tag = CARD.unpack(record)
        if not _fast.tags_equal(tag, expected):
            return Result(Status.UNKNOWN, serial=serial_text(serial), batch=batch.id,
                          message="no such key in this store")
        return _Found(serial, batch, state, tag)

    def _imported_lookup(self, txn: Txn, cat: Catalog, key: str) -> tuple[int, bytes] | None:
        """(serial or -1, verifier material) for an imported code or card:password, if it could be one."""
        if not cat.has_imported or len(key) > 2 * MAX_IMPORTED + 1:
            return None
        if ":" in key:
            card, _, password = key.partition(":")
            card, password = normalize_imported(card), normalize_imported(password)
            if not card or not password or not (card + password).isascii():  # imported cards are ASCII
                return None
            locator, material = _fast.locator(b"card:" + card.encode()), card.encode() + b"\0" + password.encode()
        else:
            code = normalize_imported(key)
            if not code or not code.isascii():
                return None
            locator, material = _fast.locator(b"code:" + code.encode()), code.encode()
        found = txn.get("locators", _fast.store_locator(self._pepper, locator))
        return (from_u64(found) if found else -1), material

    def _judge(self, txn: Txn, cat: Catalog, found: _Found, overlay: dict[int, Change], now: int) -> Result:
        """The status of a located key (the same rules as the batch check: ``_fast.judge``)."""
        change = overlay.get(found.serial)
        outcome = txn.get("outcomes", u64(found.serial)) if change is None and found.state != ACTIVE else None
        result: Result = _fast.judge(found.serial, found.state, cat.rows[found.batch.key], cat.key_rows, change,
                                     outcome, now)
        return result

    def _check(self, txn: Txn, cat: Catalog, overlay: dict[int, Change], keys: list[str], now: int) -> list[Result]:
        """Judge keys in one pass: native keys in the compiled batch check, the rest one by one."""
        try:
            results: list[Result] = _fast.check_keys(keys, self._pepper, cat.rows, cat.key_rows, overlay,
                                                     txn.cursor("cards"), txn.cursor("outcomes"), now)
        except TypeError:
            raise UsageError("a key must be a string") from None
        for i, result in enumerate(results):
            if result is None:
                found = self._locate(txn, cat, keys[i])
                results[i] = found if isinstance(found, Result) else self._judge(txn, cat, found, overlay, now)
        unknown = [r.serial for r in results if r.status is Status.UNKNOWN and r.serial is not None]
        if unknown:
            _as_costly_as_a_refusal(txn, unknown, now)
        return results

    # -- verify, redeem, void ------------------------------------------------------------------

    def verify(self, key: str, *, client: str | None = None) -> Result:
        """Check a key without changing anything: ``valid``, or why it would be refused.

        ``client`` (an account, an IP: whatever the caller uses) is throttled after too many refusals.
        """
        who = None
        if client is not None:
            who = self._client(client)
            throttled = self._throttled(who, 1)
            if throttled is not None:
                return throttled[0]
        # The happy path, in one short read: the key's Result when it is valid now (check_one says None
        # for anything else, and _verify then says why, so every refusal costs the same work).
        store = self._store
        now = now_ms()
        txn = store.begin_read()
        try:
            fresh = self._fresh
            if fresh[0] != txn.id():  # something was committed since: the head may have moved
                fresh = self._refresh(txn)
            cat = fresh[1]
            result: Result | None = _fast.check_one(key, self._pepper, cat.rows, cat.key_rows, fresh[2], txn,
                                                    self._cards, now)
        except LMDB_ERRORS:
            result = None  # the checked path reads again, and reports the store's fault as the store's error
        finally:
            store.end_read(txn)
        return result if result is not None else self._verify([key], who)[0]

    def _refresh(self, raw: Any) -> tuple[int, Catalog, dict[int, Change]]:
        """Catalog and overlay as of a begin_read transaction, remembered with its LMDB transaction id:
        while no write commits, the id stays and the head (generation, log size, fold mark) cannot move."""
        txn = self._store.wrap(raw)
        head = txn.head()
        fresh = (raw.id(), self._current(txn, head), self._ledger.sync(txn, head))
        self._fresh = fresh
        return fresh

    def verify_many(self, keys: Iterable[str], *, client: str | None = None) -> list[Result]:
        """Verify many keys in one read transaction; one Result per key, in input order."""
        batch = keys if isinstance(keys, list) else list(keys)
        who = self._client(client)
        throttled = self._throttled(who, len(batch))
        if throttled is not None:
            return throttled
        return self._verify(batch, who)

    def _verify(self, batch: list[str], who: str | None) -> list[Result]:
        """verify_many past the throttle."""
        now = now_ms()
        with self._store.read() as txn:
            head = txn.head()
            cat = self._current(txn, head)
            results = self._check(txn, cat, self._ledger.sync(txn, head), batch, now)
        self._note(results, cat, who)
        return results

    def redeem(self, key: str, order_id: str, *, client: str | None = None) -> Result:
        """Spend a key for an order, durably: ``accepted`` once; a retry of that order gets the same answer.

        Concurrent calls from many threads share commits (group commit): each returns once its
        redemption is on disk. ``client`` is throttled after too many refusals, as for verify.
        """
        pair = _pair(key, order_id)
        who = self._client(client)
        throttled = self._throttled(who, 1)
        if throttled is not None:
            return throttled[0]
        result = self._group.submit(pair)
        self._note([result], self._catalog, who)
        return result

    def redeem_many(self, items: Iterable[tuple[str, str]], *, client: str | None = None) -> list[Result]:
        """Redeem (key, order id) pairs in one durable transaction; one Result per pair, in input order."""
        pairs = [_pair(key, order) for key, order in items]
        who = self._client(client)
        throttled = self._throttled(who, len(pairs))
        if throttled is not None:
            return throttled
        results = self._redeem_pairs(pairs)
        self._note(results, self._catalog, who)
        return results

    def redeem_for(self, items: Sequence[tuple[str, str, str | None]]) -> list[Result]:
        """Redeem (key, order id, client) triples from many callers in one durable transaction.

        What a server's group commit calls: each client is throttled and counted on its own.
        """
        triples = [(*_pair(key, order), self._client(client)) for key, order, client in items]
        by_client: dict[str | None, list[int]] = {}
        for i, (_, _, client) in enumerate(triples):
            by_client.setdefault(client, []).append(i)
        results: list[Result] = [Result(Status.THROTTLED)] * len(triples)
        todo: dict[str | None, list[int]] = {}
        for client, where in by_client.items():
            throttled = self._throttled(client, len(where))
            if throttled is None:
                todo[client] = where
            else:
                for i, result in zip(where, throttled):
                    results[i] = result
        live = sorted(i for where in todo.values() for i in where)
        for i, result in zip(live, self._redeem_pairs([triples[i][:2] for i in live]) if live else []):
            results[i] = result
        for client, where in todo.items():
            self._note([results[i] for i in where], self._catalog, client)
        return results

    def _redeem_pairs(self, pairs: list[tuple[str, str]], before_wait: Callable[[], None] | None = None
                      ) -> list[Result]:
        """Redeem in one durable write; ``before_wait`` is called before it waits on the disk (a fold, the fsync)."""
        results, _, written = self._store.write(lambda txn: self._redeem_in(txn, pairs, before_wait), before_wait)
        self._ledger.learn(*written)  # committed: the overlay may take these without reading them back
        return results

    # -- throttling guessing clients -------------------------------------------------------------

    @property
    def _throttle(self) -> ThrottleStore:
        with self._pending_lock:
            if self._throttle_store is None:
                self._store.check_open()
                self._throttle_store = ThrottleStore(self.path / "throttle.mdb")
            return self._throttle_store

    @staticmethod
    def _client(client: str | None) -> str | None:
        return None if client is None else check_text(client, "client id", MAX_CLIENT)

    def _throttled(self, client: str | None, n: int) -> list[Result] | None:
        """Throttled answers for a blocked client (the store is not read: nothing about the keys leaks)."""
        if client is None:
            return None
        try:
            until = self._throttle.blocked_until(client.encode("utf-8"))
        except StoreError:
            return None  # throttling fails open: a full disk must not stop checkout (the counts stay pending)
        if until <= now_ms():
            return None
        with self._pending_lock:
            self._pending[b"C:" + client.encode("utf-8") + b"/throttled"] += n
        self._maybe_flush()
        message = f"too many refused attempts from this client: try again after {iso(until)}"
        return [Result(Status.THROTTLED, message=message)] * n

    def throttle_policy(self, client: str | None = None) -> ThrottlePolicy:
        """The policy that applies to ``client`` (its own, or the store's default)."""
        self.catalog()  # policies are reloaded with the catalog
        return self._policies.get(client or "", self._policies[""])

    def set_throttle_policy(self, policy: ThrottlePolicy, client: str | None = None) -> None:
        """Set the store's default policy, or one client's own (``ThrottlePolicy(None)``: never throttled)."""
        who = self._client(client) or ""

        def work(txn: Txn) -> None:
            value = txn.get("meta", b"throttle_policy")
            doc = load(value) if value else {}
            doc[who] = policy.to_dict()
            txn.put("meta", b"throttle_policy", dump(doc))
            txn.bump_generation()

        self._store.write(work)

    def unblock(self, client: str) -> None:
        """Lift a client's block now and restart its count (a support action)."""
        who = self._client(client)
        assert who is not None
        self._throttle.clear(who.encode("utf-8"))

    def _redeem_in(self, txn: Txn, pairs: list[tuple[str, str]], before_fold: Callable[[], None] | None = None
                   ) -> tuple[list[Result], Catalog, _Written]:
        head = txn.head()
        cat = self._current(txn, head)
        overlay = self._ledger.sync(txn, head)
        now = now_ms()
        when = iso(now)
        results = self._check(txn, cat, overlay, [key for key, _ in pairs], now)
        changes, counts = _fast.accept_redeems(results, [order for _, order in pairs], now, str(when))
        return results, cat, self._record(txn, overlay, changes, counts, b"redeemed", before_fold)

    def _record(self, txn: Txn, overlay: dict[int, Change], changes: list[tuple[int, int, int, str]],
                counts: dict[tuple[str, str], int], name: bytes,
                before_fold: Callable[[], None] | None = None) -> _Written:
        """Append state changes to the ledger, count them, and fold the ledger when it is due.

        Returns what the overlay may learn once the transaction has committed (nothing after a fold).
        """
        if not changes:
            return [], []
        seqs = self._ledger.append(txn, changes)
        for (batch, supplier), n in counts.items():
            for scope in _counter_scopes(batch, supplier):
                txn.add(scope + b"/" + name, n)
        if len(overlay) + len(changes) >= FOLD_AT:
            pending = dict(overlay)
            for (serial, state, at, text), seq in zip(changes, seqs):
                pending[serial] = (state, at, text, seq)
            keep = FOLD_AT - max(1, FOLD_AT // self.fold_slices)  # unfolded after: the next fold a slice away
            if before_fold is not None:
                before_fold()
            self._ledger.fold(txn, pending, len(pending) - keep)
            return [], []
        return changes, seqs

    def void(self, key_or_serial: str, reason: str) -> Result:
        """Withdraw an unused key (refund, recall): ``void`` when done; a redeemed key is refused."""
        why = check_text(reason, "reason", MAX_REASON)

        def work(txn: Txn) -> Result:
            head = txn.head()
            cat = self._current(txn, head)
            overlay = self._ledger.sync(txn, head)
            now = now_ms()
            found = self._find(txn, cat, key_or_serial)
            if isinstance(found, Result):
                return found
            change = overlay.get(found.serial)
            if (change[0] if change else found.state) != ACTIVE:
                return self._judge(txn, cat, found, overlay, now)
            self._record(txn, overlay, [(found.serial, VOIDED, now, why)],
                         Counter({(found.batch.id, found.batch.supplier): 1}), b"void")  # next sync reads it
            done = (VOIDED, now, why, 0)
            result: Result = _fast.judge(found.serial, VOIDED, cat.rows[found.batch.key], cat.key_rows, done, None, now)
            return result

        return self._store.write(work)

    def _find(self, txn: Txn, cat: Catalog, key_or_serial: str) -> _Found | Result:
        """Locate by key (tag checked) or by public serial (for support staff, who hold no keys)."""
        if not isinstance(key_or_serial, str):
            raise UsageError("a key or serial must be a string")
        if looks_like_serial(key_or_serial):
            serial = parse_serial(key_or_serial)
            batch = cat.batches.get(batch_key(serial))
            record = txn.get("cards", u64(serial)) if batch else None
            if record is None or batch is None:
                return Result(Status.UNKNOWN, serial=serial_text(serial), message="no such serial in this store")
            state, tag = CARD.unpack(record)
            return _Found(serial, batch, state, tag)
        return self._locate(txn, cat, key_or_serial)

    # -- blacklist -----------------------------------------------------------------------------

    def blacklist(self, level: str, target: str, reason: str) -> BlacklistEntry:
        """Refuse a key, serial, batch or supplier from the next verify on, in every process."""
        why = check_text(reason, "reason", MAX_REASON)

        def work(txn: Txn) -> BlacklistEntry:
            cat = self._current(txn)
            raw, batch = self._blacklist_key(txn, cat, level, target)
            now = now_ms()
            if txn.get("blacklist", raw) is None and batch is not None:
                self._count_change(txn, batch, b"blacklisted")
            txn.put("blacklist", raw, dump({"reason": why, "at": now}))
            txn.bump_generation()
            name, shown = blacklist_target(raw)
            self._log.append(txn, "blacklist", now, {"level": name, "target": shown, "reason": why}, [raw])
            return BlacklistEntry(name, shown, why, iso(now))

        return self._store.write(work)

    def lift(self, level: str, target: str, reason: str) -> BlacklistEntry:
        """Remove a blacklist entry; lifting needs a reason too."""
        why = check_text(reason, "reason", MAX_REASON)

        def work(txn: Txn) -> BlacklistEntry:
            cat = self._current(txn)
            raw, batch = self._blacklist_key(txn, cat, level, target)
            name, shown = blacklist_target(raw)
            if not txn.delete("blacklist", raw):
                raise NotFoundError(f"{name} {shown} is not blacklisted; `keyvault blacklist list` shows what is")
            if batch is not None:
                self._count_change(txn, batch, b"blacklisted", -1)
            txn.bump_generation()
            now = now_ms()
            self._log.append(txn, "lift", now, {"level": name, "target": shown, "reason": why}, [raw])
            return BlacklistEntry(name, shown, why, iso(now))

        return self._store.write(work)

    def blacklist_entries(self) -> list[BlacklistEntry]:
        """Every blacklist entry: suppliers, then batches, then keys."""
        cat = self.catalog()
        return [*cat.suppliers_blocked.values(), *cat.batches_blocked.values(), *cat.keys_blocked.values()]

    def _blacklist_key(self, txn: Txn, cat: Catalog, level: str, target: str) -> tuple[bytes, BatchInfo | None]:
        """The stored key for a blacklist target, and its batch when the level is a key."""
        if level in ("key", "serial"):
            if level == "serial" and not looks_like_serial(target):
                raise MalformedKeyError("that serial is not valid: a serial has 12 symbols, like 7KQ2-00A-0003F")
            found = self._find(txn, cat, target)
            if isinstance(found, Result):
                what = "serial" if level == "serial" else "key"
                raise NotFoundError(f"that {what} is not in this store ({found.status.value}); nothing was changed")
            return LEVEL_KEY + u64(found.serial), found.batch
        if level == "batch":
            key = parse_batch(target)
            if key not in cat.batches:
                raise NotFoundError(f"batch {batch_text(key)} is not in this store; `keyvault stats` lists batches")
            return LEVEL_BATCH + u64(key), None
        if level == "supplier":
            sid = cat.supplier_by_ref(target)
            if sid is None:
                raise NotFoundError("no such supplier in this store (give its id or issuer prefix); "
                                    "`keyvault stats` lists suppliers")
            return LEVEL_SUPPLIER + sid.encode("ascii"), None
        raise UsageError("unknown blacklist level: use key, serial, batch or supplier")  # never echo input

    # -- service tokens -------------------------------------------------------------------------

    def create_token(self, name: str, scope: str) -> str:
        """Make a service token for ``name`` with ``scope``; returns it (only its hash is kept: show it once)."""
        who, what = check_name(name), check_scope(scope)
        token = new_token()

        def work(txn: Txn) -> None:
            doc = stored_tokens(txn)
            if who in doc:
                raise ConflictError(f"a token named {who} exists: revoke it first, or choose another name")
            doc[who] = {"hash": token_hash(token).hex(), "scope": what, "created": now_ms()}
            save_tokens(txn, doc)

        self._store.write(work)
        return token

    def revoke_token(self, name: str) -> None:
        """Revoke a token: every server process refuses it from its next request on."""
        who = check_name(name)

        def work(txn: Txn) -> None:
            doc = stored_tokens(txn)
            if doc.pop(who, None) is None:
                raise NotFoundError(f"no token named {who}; `keyvault token list` shows the tokens")
            save_tokens(txn, doc)

        self._store.write(work)

    def tokens(self) -> list[dict[str, Any]]:
        """Each token's name, scope and creation time (never the token or its hash)."""
        with self._store.read() as txn:
            return listing(stored_tokens(txn))

    def authorize(self, token: str) -> Grant | None:
        """The grant a presented token carries, or None when it is unknown or revoked."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        store = self._store
        txn = store.begin_read()
        try:
            fresh = self._fresh
            if fresh[0] != txn.id():  # a commit since the last look: the grants may have changed
                fresh = self._refresh(txn)
        finally:
            store.end_read(txn)
        return fresh[1].grants.get(token_hash(token))

    # -- statistics ----------------------------------------------------------------------------

    def _count_change(self, txn: Txn, batch: BatchInfo, name: bytes, delta: int = 1) -> None:
        for scope in _counter_scopes(batch.id, batch.supplier):
            txn.add(scope + b"/" + name, delta)

    def _note(self, results: list[Result], cat: Catalog, client: str | None = None) -> None:
        """Count refused attempts by batch, supplier and client (buffered: verify must not write on every
        call), and throttle a client that was refused too often (shared by every process at once)."""
        refused = [r for r in results if r.status is not Status.VALID and r.status is not Status.ACCEPTED]
        if not refused:
            return
        who = client.encode("utf-8") if client is not None else None
        with self._pending_lock:
            for result in refused:
                name = b"/refused/" + result.status.value.encode()
                batch = cat.by_id.get(result.batch) if result.batch else None
                # Keys naming no batch held here are counted under "?" scopes: the same work as any
                # other refusal, so the time of an answer does not tell whether its batch is held.
                for scope in (_counter_scopes(batch.id, batch.supplier) if batch else _UNHELD):
                    self._pending[scope + name] += 1
                if who is not None:
                    self._pending[b"C:" + who + name] += 1
        if client is not None and who is not None:
            policy = self._policies.get(client, self._policies[""])  # current: the call just read the catalog
            if policy.max_refused is not None:
                try:
                    self._throttle.add(who, len(refused), now_ms(), policy.max_refused,
                                       policy.window_seconds * 1000, policy.block_seconds * 1000)
                except StoreError:
                    pass  # fails open, as above
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        every = self.flush_every
        if every is not None and self._pending and time.monotonic() - self._last_flush >= every:
            try:
                self.flush_stats()
            except StoreError:
                pass  # counts stay pending; a verify never fails for want of a statistics write

    def flush_stats(self) -> None:
        """Write buffered refused-attempt counts to the store."""
        with self._pending_lock:
            pending, self._pending = self._pending, Counter()
            self._last_flush = time.monotonic()
        if not pending:
            return
        try:
            def add_all(txn: Txn) -> None:
                for key, n in pending.items():
                    txn.add(key, n)

            self._store.write(add_all)
        except BaseException:
            with self._pending_lock:
                self._pending.update(pending)
            raise

    def stats(self) -> dict[str, Any]:
        """Per-supplier and per-batch counts: issued, imported, redeemed, void, blacklisted, refused."""
        self.flush_stats()
        with self._store.read() as txn:
            return build_stats(txn, self._current(txn))

    def _story(self, txn: Txn, key_or_serial: str) -> tuple[Catalog, _Found, Result, list[int]]:
        """A key located for its trace: the catalog, the key, its status, and its events' indices."""
        cat = self._current(txn)
        found = self._find(txn, cat, key_or_serial)
        if isinstance(found, Result):
            what = "serial" if looks_like_serial(str(key_or_serial)) else "key"
            raise NotFoundError(f"that {what} is not in this store ({found.status.value})")
        overlay = self._ledger.sync(txn, txn.head())
        status = self._judge(txn, cat, found, overlay, now_ms())
        return cat, found, status, key_events(txn, found.serial, found.batch, overlay.get(found.serial))

    def trace(self, key_or_serial: str) -> dict[str, Any]:
        """Where a key came from and what happened to it: supplier, batch, product, history."""
        with self._store.read() as txn:
            cat, found, status, indices = self._story(txn, key_or_serial)
            events = [parse_leaf(self._log.leaf(txn, i)) for i in indices]
            return build_trace(txn, cat, found.serial, found.batch, status, events)

    # -- provenance: the event log, trust, lots, bundles ---------------------------------------------

    @property
    def engine_identity(self) -> PublicIdentity:
        """This store's engine key (it signs the checkpoints): give its public file to bundle verifiers."""
        return self._log.engine.public

    def checkpoint(self) -> str:
        """Sign a checkpoint of the event log now (or return the newest if it covers every event): the note."""
        note = self._store.write(lambda txn: self._log.maybe_checkpoint(txn, now_ms(), force=True))
        assert note is not None
        return note.decode("utf-8")

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every checkpoint the engine signed, oldest first."""
        with self._store.read() as txn:
            return self._log.checkpoints(txn)

    @property
    def checkpoint_policy(self) -> Policy:
        """When checkpoints are signed by themselves."""
        self.catalog()  # the policy is reloaded with the catalog
        return self._log.policy

    def check_since(self, old_note: str) -> bundle.Check:
        """Is this store's log an extension of the one ``old_note`` (a checkpoint it signed earlier) saw?

        Fails when the store was rolled back (restored from an old backup and written to since) or
        forked: the RFC 9162 consistency proof from the old size to now does not reach both roots.
        """
        new_note = self.checkpoint().encode()
        with self._store.read() as txn:
            def proof(old_size: int, new_size: int) -> list[bytes]:
                if old_size > self._log.size(txn):
                    return []  # the log is shorter than it was: nothing can prove it grew
                return self._log.consistency(txn, old_size, new_size)

            return bundle.check_consistent(old_note.encode(), new_note, proof, [self.engine_identity])

    def set_checkpoint_policy(self, every_events: int, every_seconds: int) -> None:
        """Sign checkpoints by themselves after this many events or seconds, whichever comes first."""
        if every_events < 1 or every_seconds < 1:
            raise UsageError("a checkpoint cadence needs at least 1 event and 1 second")

        def work(txn: Txn) -> None:
            txn.put("meta", b"checkpoint_policy", Policy(every_events, every_seconds).to_record())
            txn.bump_generation()

        self._store.write(work)

    def verify_log(self) -> int:
        """Walk the event log: chain, tree and checkpoints; how many events. StoreCorruptError if altered."""
        with self._store.read() as txn:
            return self._log.verify(txn)

    def trust(self, identity: PublicIdentity, role: str = "supplier") -> dict[str, Any]:
        """Pin a public identity: manifests, transfers and lots it signs are accepted from now on."""
        if role not in trust.ROLES:
            raise UsageError(f"a role is one of {', '.join(trust.ROLES)}")
        return self._store.write(lambda txn: trust.pin(self, txn, self._current(txn), identity.name, identity.prefix,
                                                       identity.public_key, role, now_ms()))

    def untrust(self, identity: PublicIdentity) -> dict[str, Any]:
        """Unpin a public identity (what it signed before stays; nothing new is accepted)."""
        return self._store.write(lambda txn: trust.unpin(self, txn, self._current(txn), identity.public_key,
                                                         now_ms()))

    def trusted(self) -> list[dict[str, Any]]:
        """Every pinned identity."""
        return trust.entries(self.catalog())

    def rotate_trust(self, rotation: Rotation) -> dict[str, Any]:
        """Accept a key rotation signed by a pinned key and its successor."""
        return self._store.write(lambda txn: trust.rotate(self, txn, self._current(txn), rotation, now_ms()))

    def send_lot(self, sender: Identity, batch: str, recipient: PublicIdentity, *,
                 manifest: str | os.PathLike[str], out: str | os.PathLike[str],
                 ranges: str | None = None) -> dict[str, Any]:
        """Transfer (part of) a batch you hold to ``recipient``: a signed record, and a lot sealed to them."""
        info = self.catalog().batches.get(parse_batch(batch))
        parsed = parse_ranges(ranges, info.count) if ranges and info else None
        hop, info = lots.send(self, sender, batch, parsed, recipient, Path(manifest), Path(out))
        return {"transfer": hop.id, "batch": info.id, "to": recipient.name, "to_fingerprint": recipient.fingerprint,
                "ranges": [f"{a}-{b - 1}" for a, b in hop.ranges], "keys": sum(b - a for a, b in hop.ranges),
                "lot": str(out)}

    def receive_lot(self, lot: str | os.PathLike[str], recipient: Identity, *,
                    manifest_out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Open a lot sealed to you: check every signature and hop, record custody, import its batch."""
        info, chain = lots.receive(self, Path(lot), recipient, Path(manifest_out) if manifest_out else None)
        return {"batch": info.id, "count": info.count, "supplier": info.supplier_name,
                "hops": [{"from": h.doc["from"]["name"], "to": h.doc["to"]["name"], "transfer": h.id,
                          "ranges": [f"{a}-{b - 1}" for a, b in h.ranges]} for h in chain]}

    def audit(self) -> dict[str, Any]:
        """Double sales (with both signed records), withheld or forked manifests, and the event log's check."""
        return lots.audit(self)

    def trace_bundle(self, key_or_serial: str) -> dict[str, Any]:
        """A self-contained proof of a key's story, checkable offline (``keyvault verify-bundle``)."""
        for _ in range(5):
            self.checkpoint()  # a signed checkpoint covering every event so far
            with self._store.read() as txn:
                _, found, status, indices = self._story(txn, key_or_serial)
                last = txn.last_key("checkpoints")
                assert last is not None
                size = from_u64(last)
                if indices and indices[-1] >= size:
                    continue  # another process changed this key after the checkpoint: sign again
                events = [(i, self._log.leaf(txn, i), self._log.inclusion(txn, i, size)) for i in indices]
                return bundle.build(**commitment_proof(txn, self._pepper, found.batch, found.serial,
                                                       not looks_like_serial(key_or_serial)),
                                    custody=lots.custody_of(txn, found.batch.key, found.serial),
                                    checkpoint=self._log.note_at(txn, size), events=events, status=status.to_dict(),
                                    generated_at=str(iso(now_ms())))
        raise StoreError("this key kept changing while its bundle was made; try again")

    # -- issuing and importing (the work is in issuing.py) ----------------------------------------

    def issue_batch(self, identity: Identity, product: str, count: int, *, keys_out: str | os.PathLike[str],
                    manifest_out: str | os.PathLike[str], valid_from: int | None = None,
                    valid_until: int | None = None, progress: Progress | None = None) -> BatchInfo:
        """Issue ``count`` new keys: printable export (0600, once), signed manifest, records in this store."""
        return issuing.issue_batch(self, identity, product, count, Path(keys_out), Path(manifest_out),
                           valid_from, valid_until, progress)

    def import_cards(self, identity: Identity, product: str, cards_csv: str | os.PathLike[str], *,
                     manifest_out: str | os.PathLike[str], valid_from: int | None = None,
                     valid_until: int | None = None, progress: Progress | None = None) -> BatchInfo:
        """Make a batch of upstream cards (a CSV of codes, or card numbers and passwords)."""
        return issuing.import_cards(self, identity, product, Path(cards_csv), Path(manifest_out), valid_from,
                            valid_until, progress)

    def import_manifest(self, path: str | os.PathLike[str], *,
                        progress: Progress | None = None) -> tuple[BatchInfo, bool]:
        """Import a supplier's signed manifest: (batch, True if it was new, False if already here)."""
        return issuing.import_manifest(self, read_manifest(path), "manifest", progress)


_PAD_ROW = (bytes(16), None, None, None, "0000-000", "0" * 16, "-", "-")
_PAD_OUTCOME = bytes((REDEEMED,)) + bytes(16) + b"padding"


def _as_costly_as_a_refusal(txn: Txn, serials: list[str], now: int) -> None:
    """Spend on each ``unknown`` answer what refusing a spent key costs (read its outcome record, judge it),
    so the time of an answer tells no more than its status (docs/reliability.md, Guessing)."""
    numbers = sorted(_fast.parse_serial(s) for s in serials)
    txn.get_many("outcomes", [u64(n) for n in numbers])
    for number in numbers:
        _fast.judge(number, REDEEMED, _PAD_ROW, {}, None, _PAD_OUTCOME, now)


def _read_engine(path: Path) -> Identity:
    if not path.exists():
        raise StoreError(f"the store's engine key {path} is missing; it signs the store's checkpoints: restore it "
                         "from your backup")
    return Identity.load(path)


def _pepper_check(pepper: bytes) -> bytes:
    return hashlib.blake2b(_PEPPER_CHECK, key=pepper, digest_size=16).digest()


def _read_pepper(path: Path) -> bytes:
    try:
        check_private_file(path, "pepper file")
        text = path.read_text("ascii").strip()
        pepper = bytes.fromhex(text)
    except FileNotFoundError:
        raise PepperError(f"the pepper file {path} is missing; the store cannot check keys without it: restore it "
                          f"from your backup (or point {PEPPER_ENV} at it)") from None
    except (ValueError, UnicodeDecodeError):
        raise PepperError(f"the pepper file {path} is damaged; restore it from your backup") from None
    except PermissionError:
        raise PepperError(f"the pepper file {path} cannot be read: permission denied") from None
    except Exception as exc:  # IdentityError from check_private_file: re-raise as a pepper problem
        if isinstance(exc, OSError):
            raise PepperError(f"the pepper file {path} cannot be read: {exc.strerror}") from None
        raise PepperError(str(exc)) from None
    if len(pepper) != 32:
        raise PepperError(f"the pepper file {path} is damaged (wrong length); restore it from your backup")
    return pepper

