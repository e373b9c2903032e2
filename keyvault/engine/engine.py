"""The engine: an open store and every operation on it (verify, redeem, void, blacklist, trust, lots, reports).

Every state change is one durable LMDB write transaction. Verification reads
batches, suppliers and blacklist entries from the in-memory catalog, kept
current through the store's generation counter (``state.py``); keys are
found and judged in ``lookup.py``; refusals are counted and clients throttled
in ``guard.py``; issuing, importing, lots and trust have modules of their own.
:class:`~keyvault.vault.Vault` is the typed facade users call.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec

from .. import _fast
from .. import clock
from ..clock import iso, now_ms
from ..errors import (
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
from ..files import write_new
from ..fields import MAX_ORDER_ID, MAX_REASON, check_text
from ..formats import bundle
from ..formats.checkpoint import Verifier, open_note
from ..formats.custody import parse_ranges
from ..formats.events import parse_leaf
from ..formats.history import encode_proof
from ..formats.identity import Identity, PublicIdentity, Rotation
from ..formats.keyformat import batch_text, looks_like_serial, parse_batch
from ..formats.manifest import read_manifest
from ..results import Result, Status
from ..store import ACTIVE, VOIDED, LmdbStore, Txn
from ..store.lmdbstore import LMDB_ERRORS
from ..store.records import (
    BLACKLIST_DIGEST,
    LEVEL_BATCH,
    LEVEL_KEY,
    LEVEL_SUPPLIER,
    blacklist_digest,
    dump,
    from_u64,
    load,
    u64,
)
from ..vocabulary import Level, Role
from . import checkout, issuing, ledger, lots, trust
from .answers import (
    Audit,
    AuthorityBound,
    AuthorityShown,
    AuthorityStatus,
    AuthorityUnbound,
    Backup,
    CheckReport,
    CheckRow,
    LockedCard,
    Order,
    Restore,
    Stats,
    Trace,
)
from .authority import META_KEY, Authority, LocalAuthority
from .catalog import BatchInfo, BlacklistEntry, Catalog, blacklist_target
from .checkup import check_store
from .eventlog import Policy
from .groupcommit import GroupCommit
from .guard import HOLD_FREE, Budget, Guard, client_id, counter_scopes
from .issuing import Progress
from .keyfiles import (
    ENGINE_FILE,
    ENGINE_NAME,
    PEPPER_BYTES,
    PEPPER_ENV,
    pepper_check,
    read_engine_key,
    read_pepper,
)
from .ledger import Change
from .lookup import Found, check, find, judge
from .proofs import commitment_proof
from .reports import build_stats, build_trace, key_events
from .shapes import (
    CheckpointEntry,
    LotReceived,
    LotSent,
    TokenEntry,
    TrustEntry,
    TrustRecord,
)
from .state import State
from .throttling import ThrottlePolicy
from .tokens import PREFIX as TOKEN_PREFIX
from .tokens import Grant, check_name, check_scope, listing, new_token, token_hash
from .tokens import save as save_tokens
from .tokens import stored as stored_tokens

#: Ledger changes a committed transaction wrote, and their sequence numbers.
_Written = tuple[list[tuple[int, int, int, str]], list[int]]


def _pair(key: object, order_id: object) -> tuple[str, str]:
    """A (key, order id) to redeem, checked before anything is touched."""
    if not isinstance(key, str):
        raise UsageError("a key must be a string")
    return key, check_text(order_id, "order id", MAX_ORDER_ID)


def _checkout_op(op: tuple[Any, ...]) -> tuple[str, str, str, int, str | None]:
    """A checkout op checked before anything is touched: (action, key, order id, ttl ms, client)."""
    if not isinstance(op, tuple) or not op or op[0] not in ("hold", "confirm", "release"):
        raise UsageError("a checkout op is (\"hold\", key, order id, ttl[, client]), (\"confirm\", order id) or "
                         "(\"release\", order id)")
    if op[0] == "hold":
        if len(op) not in (4, 5):
            raise UsageError("a hold is (\"hold\", key, order id, ttl seconds), or with a client id after the ttl")
        key, order = _pair(op[1], op[2])
        return "hold", key, order, checkout.check_ttl(op[3]), client_id(op[4]) if len(op) == 5 else None
    if len(op) != 2:
        raise UsageError(f"a {op[0]} is (\"{op[0]}\", order id)")
    return op[0], "", check_text(op[1], "order id", MAX_ORDER_ID), 0, None


class Engine(State):
    """A keyvault store, opened, with every operation on it. Close it with :meth:`close`."""

    def __init__(self, store: LmdbStore, pepper: bytes, engine: Identity) -> None:
        super().__init__(store, pepper, engine)
        #: Refused attempts counted, clients throttled.
        self.guard = Guard(self)
        #: How many folds a full overlay takes. 1: all at once, best for bulk redeems (1 M-key store:
        #: 159 k/s, a 220 ms pause every 100,000); 10: the oldest tenth each time, for tail latency
        #: (100 k/s, an 80 ms pause every 10,000: the service's commit process uses it).
        self.fold_slices = 1
        self._group: GroupCommit[tuple[str, str, str | None], Result] = GroupCommit(self._redeem_triples)
        #: Concurrent holds, confirms and releases share commits too (one fsync per round, not per call).
        self._holds: GroupCommit[tuple[Any, ...], Result | list[Result] | KeyvaultError] = \
            GroupCommit(self.checkout_for)
        self._cards = store.handle("cards")
        #: (LMDB transaction id, catalog, overlay, whether any hold record exists) as of the last
        #: single-key read that checked the head.
        self._fresh: tuple[int, Catalog, dict[int, Change], bool] = (-1, Catalog(), {}, False)
        #: Who decides redeems, voids and blacklist entries: this store (the default) or a bound PostgreSQL.
        self.authority: Authority = LocalAuthority()
        #: The thread keeping this process's cache of a bound authority current (None when unbound).
        self.follower: Any = None

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str], *, pepper_file: str | os.PathLike[str] | None = None) -> Engine:
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
                pepper = secrets.token_bytes(PEPPER_BYTES)
                write_new(pepper_path, pepper.hex().encode() + b"\n", mode=0o600)
            else:
                pepper = read_pepper(pepper_path)
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
        made = cls(store, pepper, engine)

        def setup(txn: Txn) -> None:
            now = now_ms()
            txn.put("meta", b"pepper_check", pepper_check(pepper))
            txn.put("meta", b"created_at", u64(now))
            txn.put("meta", b"checkpoint_policy", Policy().to_record())
            txn.put("meta", checkout.ORDERS_LISTED, checkout.LISTED_ALL)  # a new store lists every redeem
            made.log.append(txn, "trust", now, {"action": "engine", "name": engine.name,
                                                "public_key": engine.public_key.hex()}, [])
            made.log.maybe_checkpoint(txn, now, force=True)

        store.write(setup)
        return made

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, pepper_file: str | os.PathLike[str] | None = None,
             create: bool = False, authority: bool = True) -> Engine:
        """Open the store at ``path`` (created first when ``create`` is set and none is there).

        A store bound to a PostgreSQL authority connects to it; ``authority=False`` does not (the binding can
        then be shown or unset, and verify answers from the cache, but nothing can be decided).
        """
        root = Path(path)
        if create and not (root / "data.mdb").exists():
            return cls.init(root, pepper_file=pepper_file)
        store = LmdbStore.open(root)
        try:
            pepper_path = Path(pepper_file or os.environ.get(PEPPER_ENV) or root / "pepper")
            pepper = read_pepper(pepper_path)
            with store.read() as txn:
                expected = txn.get("meta", b"pepper_check")
            if expected is None or not _fast.tags_equal(expected, pepper_check(pepper)):
                raise PepperError(f"the pepper file {pepper_path} does not belong to this store (it was made with "
                                  "another one); restore this store's own pepper file from your backup")
            engine = read_engine_key(root / ENGINE_FILE)
            with store.read() as txn:
                bound = txn.get("meta", META_KEY)
            made = cls(store, pepper, engine)
            checkout.list_old_redeems(store)  # once per store: redeems made before they were listed by order
            if bound is not None:
                from .authority.remote import connect, follow

                made.authority = connect(bytes(bound).decode("utf-8"), authority)
                follow(made)
        except BaseException:
            store.close()
            raise
        return made

    def close(self) -> None:
        """Flush pending statistics and close the store."""
        try:
            self.guard.flush()
        except (StoreError, *LMDB_ERRORS):
            pass  # closing must not fail because a statistics write could not be made (a damaged store: its error
            # was raised by the call that met the damage)
        finally:
            self.guard.close()
            if self.follower is not None:
                self.follower.stop()
            self.authority.close()
            self.store.close()

    def __repr__(self) -> str:
        return f"<Engine {str(self.path)!r}>"

    # -- verify, redeem, void ------------------------------------------------------------------

    def verify(self, key: str, *, client: str | None = None) -> Result:
        """Check a key without changing anything: ``valid``, or why it would be refused.

        ``client`` (an account, an IP: whatever the caller uses) is held to its refusal budget: the key is
        judged only once a slot of the budget is reserved for it, and answered ``throttled`` when none is left.
        """
        who = None if client is None else client_id(client)
        budgets: dict[str, Budget] = {}
        # The happy path, in one short read: the key's Result when it is valid now (check_one says None
        # for anything else, and _verify then says why, so every refusal costs the same work).
        store = self.store
        now = now_ms()
        txn = store.begin_read()
        try:
            fresh = self._fresh
            if fresh[0] != txn.id():  # something was committed since: the head may have moved
                fresh = self._refresh(txn)
            # The policies are current: the catalog was just read.
            budget = None if who is None else self.guard.budget(who, budgets)
            if budget is not None and not self.guard.reserve(budget, 1):
                assert budget.answer is not None
                self.guard.count_throttled(budget.who, 1)
                self.guard.settle(budgets, [budget.answer])
                return budget.answer
            cat = fresh[1]
            result: Result | None = _fast.check_one(key, self.pepper, cat.rows, cat.key_rows, fresh[2], txn,
                                                    self._cards, now)
            if result is not None and (fresh[3] or result.batch in cat.uses):
                result = None  # a hold or a use count may change the answer: the checked path reads them
        except LMDB_ERRORS:
            result = None  # the checked path reads again, and reports the store's fault as the store's error
        finally:
            store.end_read(txn)
        if result is None:
            return self._verify([key], who, budgets)[0]
        if budget is not None:
            self.guard.let_through(budget)
        return result

    def _refresh(self, raw: Any) -> tuple[int, Catalog, dict[int, Change], bool]:
        """Catalog, overlay and whether any key is held (one cursor step) as of a begin_read transaction,
        remembered with its LMDB transaction id: while no write commits, the id stays and the head
        (generation, log size, fold mark) cannot move, nor can a hold be made."""
        txn = self.store.wrap(raw)
        head = txn.head()
        fresh = (raw.id(), self.current(txn, head), self.ledger.sync(txn, head),
                 checkout.any_holds(txn, self.pepper))
        self._fresh = fresh
        return fresh

    def verify_many(self, keys: Iterable[str], *, client: str | None = None) -> list[Result]:
        """Verify many keys in one read transaction; one Result per key, in input order.

        ``client``'s refusal budget is charged key by key: once it is spent, the keys left are answered
        ``throttled`` without being looked at.
        """
        batch = keys if isinstance(keys, list) else list(keys)
        return self._verify(batch, client_id(client))

    def _verify(self, batch: list[str], who: str | None, budgets: dict[str, Budget] | None = None) -> list[Result]:
        """verify_many for one client (its budget reserved already when ``budgets`` holds it)."""
        budgets = {} if budgets is None else budgets
        results: list[Result] | None = None
        try:
            now = now_ms()
            with self.store.read() as txn:
                head = txn.head()
                cat = self.current(txn, head)
                overlay = self.ledger.sync(txn, head)
                locks = self.guard.card_locks()
                results = self.guard.judge(batch, who, budgets,
                                           lambda keys: check(txn, cat, self.pepper, overlay, keys, now, locks))
                checkout.annotate(txn, self.pepper, cat, results, now)
        finally:
            self.guard.settle(budgets, results)
        assert results is not None
        self.guard.note(results, cat, who)
        return results

    def redeem(self, key: str, order_id: str, *, client: str | None = None) -> Result:
        """Spend a key for an order, durably: ``accepted`` once; a retry of that order gets the same answer.

        Concurrent calls from many threads share commits (group commit): each returns once its
        redemption is on disk. ``client`` is held to its refusal budget, as for verify.
        """
        who = client_id(client)
        result = self._group.submit((*_pair(key, order_id), who))
        self.guard.note([result], self.cached, who)
        return result

    def redeem_many(self, items: Iterable[tuple[str, str]], *, client: str | None = None) -> list[Result]:
        """Redeem (key, order id) pairs in one durable transaction; one Result per pair, in input order.

        ``client``'s refusal budget is charged key by key, as for verify_many: the pairs past it are
        answered ``throttled`` and nothing is spent for them.
        """
        pairs = [_pair(key, order) for key, order in items]
        who = client_id(client)
        budgets: dict[str, Budget] = {}
        results: list[Result] | None = None
        try:
            results = self._redeem_pairs(pairs, clients=who, budgets=budgets)
        finally:
            self.guard.settle(budgets, results)
        assert results is not None
        self.guard.note(results, self.cached, who)
        return results

    def redeem_for(self, items: Sequence[tuple[str, str, str | None]]) -> list[Result]:
        """Redeem (key, order id, client) triples from many callers in one durable transaction.

        What a server's group commit calls: each client is held to its own refusal budget.
        """
        triples = [(*_pair(key, order), client_id(client)) for key, order, client in items]
        results = self._redeem_triples(triples)
        clients = [client for _, _, client in triples]
        for client in set(clients):
            self.guard.note([r for r, c in zip(results, clients) if c == client], self.cached, client)
        return results

    def _redeem_triples(self, triples: list[tuple[str, str, str | None]],
                        before_wait: Callable[[], None] | None = None) -> list[Result]:
        """Checked (key, order id, client) triples redeemed in one durable write, each client on its budget."""
        clients = [client for _, _, client in triples]
        budgets: dict[str, Budget] = {}
        results: list[Result] | None = None
        try:
            results = self._redeem_pairs([(key, order) for key, order, _ in triples], before_wait,
                                         clients=clients if any(clients) else None, budgets=budgets)
        finally:
            self.guard.settle(budgets, results, clients)
        assert results is not None
        return results

    def _redeem_pairs(self, pairs: list[tuple[str, str]], before_wait: Callable[[], None] | None = None, *,
                      clients: list[str | None] | str | None = None, budgets: dict[str, Budget] | None = None
                      ) -> list[Result]:
        """Redeem in one durable write; ``before_wait`` is called before it waits on the disk (a fold, the fsync).

        ``clients`` (one for all pairs, or one per pair) are held to their refusal budgets in ``budgets``.
        """
        if self.authority.remote:
            from .authority.remote import redeem

            return redeem(self, pairs, before_wait, clients, {} if budgets is None else budgets)
        results, _, written = self.store.write(
            lambda txn: self._redeem_in(txn, pairs, before_wait, clients, {} if budgets is None else budgets),
            before_wait)
        self.ledger.learn(*written)  # committed: the overlay may take these without reading them back
        return results

    # -- throttling guessing clients -------------------------------------------------------------

    def throttle_policy(self, client: str | None = None) -> ThrottlePolicy:
        """The policy that applies to ``client`` (its own, or the store's default)."""
        self.catalog()  # policies are reloaded with the catalog
        return self.policies.get(client or "", self.policies[""])

    def set_throttle_policy(self, policy: ThrottlePolicy, client: str | None = None) -> None:
        """Set the store's default policy, or one client's own (``ThrottlePolicy(None)``: never throttled)."""
        who = client_id(client) or ""

        def work(txn: Txn) -> None:
            value = txn.get("meta", b"throttle_policy")
            doc = load(value) if value else {}
            doc[who] = policy.to_dict()
            txn.put("meta", b"throttle_policy", dump(doc))
            txn.bump_generation()

        self.store.write(work)

    def unblock(self, client: str) -> None:
        """Lift a client's block now and restart its count (a support action)."""
        who = client_id(client)
        assert who is not None
        self.guard.unblock(who)

    def unlock_card(self, card_number: str) -> bool:
        """Unlock an imported card locked after too many wrong passwords; False when it had none."""
        return self.guard.unlock_card(card_number)

    def locked_cards(self) -> list[LockedCard]:
        """Imported cards given wrong passwords: number, how many, and when they locked (None: not yet)."""
        return msgspec.convert(self.guard.locked_cards(), list[LockedCard])

    def _redeem_in(self, txn: Txn, pairs: list[tuple[str, str]], before_fold: Callable[[], None] | None = None,
                   clients: list[str | None] | str | None = None, budgets: dict[str, Budget] | None = None
                   ) -> tuple[list[Result], Catalog, _Written]:
        head = txn.head()
        cat = self.current(txn, head)
        overlay = self.ledger.sync(txn, head)
        now = now_ms()
        when = iso(now)
        keys = [key for key, _ in pairs]
        locks = self.guard.card_locks()

        def judge(chunk: list[str]) -> list[Result]:
            return check(txn, cat, self.pepper, overlay, chunk, now, locks)

        budgets = {} if budgets is None else budgets
        results = self.guard.judge_for(keys, clients, budgets, judge) if isinstance(clients, list) else \
            self.guard.judge(keys, clients, budgets, judge)
        orders = [order for _, order in pairs]
        desk = checkout.redeem_checkout(self.log, self.pepper, txn, cat, results, orders, now,
                                        overlay)  # held, count-limited
        changes, counts = _fast.accept_redeems(results, orders, now, str(when))
        if desk is not None:
            changes += desk.changes
            counts = Counter(counts) + Counter(desk.counts)
        return results, cat, self._record(txn, overlay, changes, counts, b"redeemed", before_fold)

    def _record(self, txn: Txn, overlay: dict[int, Change], changes: list[tuple[int, int, int, str]],
                counts: dict[tuple[str, str], int], name: bytes,
                before_fold: Callable[[], None] | None = None) -> _Written:
        """Append state changes to the ledger, count them, and fold the ledger when it is due.

        Returns what the overlay may learn once the transaction has committed (nothing after a fold).
        """
        if not changes:
            return [], []
        seqs = self.ledger.append(txn, changes)
        if name == b"redeemed":
            checkout.index_redeems(txn, changes, seqs)  # every redeem found by its order
        for (batch, supplier), n in counts.items():
            for scope in counter_scopes(batch, supplier):
                txn.add(scope + b"/" + name, n)
        fold_at = ledger.FOLD_AT  # read at each call: tests lower it to fold often
        if len(overlay) + len(changes) >= fold_at:
            pending = dict(overlay)
            for (serial, state, at, text), seq in zip(changes, seqs):
                pending[serial] = (state, at, text, seq)
            keep = fold_at - max(1, fold_at // self.fold_slices)  # unfolded after: the next fold a slice away
            if before_fold is not None:
                before_fold()
            self.ledger.fold(txn, pending, len(pending) - keep)
            return [], []
        return changes, seqs

    def void(self, key_or_serial: str, reason: str) -> Result:
        """Withdraw an unused key (refund, recall): ``void`` when done; a redeemed key is refused."""
        why = check_text(reason, "reason", MAX_REASON)
        if self.authority.remote:
            return self._void_remote(key_or_serial, why)

        def work(txn: Txn) -> Result:
            head = txn.head()
            cat = self.current(txn, head)
            overlay = self.ledger.sync(txn, head)
            now = now_ms()
            found = find(txn, cat, self.pepper, key_or_serial)
            if isinstance(found, Result):
                return found
            change = overlay.get(found.serial)
            if (change[0] if change else found.state) != ACTIVE:
                return judge(txn, cat, found, overlay, now)
            self._record(txn, overlay, [(found.serial, VOIDED, now, why)],
                         Counter({(found.batch.id, found.batch.supplier): 1}), b"void")  # next sync reads it
            done = (VOIDED, now, why, 0)
            result: Result = _fast.judge(found.serial, VOIDED, cat.rows[found.batch.key], cat.key_rows, done, None, now)
            return result

        return self.store.write(work)

    # -- checkout: holds, count-limited keys, orders (the rules are in checkout.py) ---------------

    def _checkout(self, work: Callable[[Txn, checkout.Desk, dict[int, Change]], list[Result]],
                  before_wait: Callable[[], None] | None = None) -> list[Result]:
        """Run checkout work in one durable write transaction: its holds, uses and ledger redeems."""

        def run(txn: Txn) -> tuple[list[Result], _Written]:
            head = txn.head()
            cat = self.current(txn, head)
            overlay = self.ledger.sync(txn, head)
            desk = checkout.Desk(self.log, self.pepper, txn, cat, clock.now_ms(), overlay)
            results = work(txn, desk, overlay)
            desk.flush()
            return results, self._record(txn, overlay, desk.changes, Counter(desk.counts), b"redeemed")

        results, written = self.store.write(run, before_wait)
        self.ledger.learn(*written)
        return results

    def hold(self, key: str, order_id: str, ttl: float, *, client: str | None = None) -> Result:
        """Hold a key for an order for ``ttl`` seconds: ``held`` with ``expires_at`` (a retry: the same answer).

        While held, every other order is refused (``held``) for hold and redeem; :meth:`confirm` turns the
        hold into a redeem, :meth:`release` or the end of ``ttl`` frees the key. ``client``'s refusal budget
        is charged as a verify's is.
        """
        op = ("hold", key, order_id, ttl) if client is None else ("hold", key, order_id, ttl, client)
        answer = self._holds.submit(op)
        if isinstance(answer, BaseException):
            raise answer
        return cast(Result, answer)

    def confirm(self, order_id: str) -> list[Result]:
        """Turn every hold of an order into a redeem: ``accepted`` per key (a retry: the same answers).

        A hold that ended is refused (``expired_hold``) even if no other order took the key; a key voided
        or blacklisted since it was held is refused with that status.
        """
        answer = self._holds.submit(("confirm", order_id))
        if isinstance(answer, BaseException):
            raise answer
        return cast(list[Result], answer)

    def release(self, order_id: str) -> list[Result]:
        """Give up every hold of an order: ``released`` per key (a retry: the same answers)."""
        answer = self._holds.submit(("release", order_id))
        if isinstance(answer, BaseException):
            raise answer
        return cast(list[Result], answer)

    def checkout_for(self, ops: Sequence[tuple[Any, ...]], before_wait: Callable[[], None] | None = None
                     ) -> list[Result | list[Result] | KeyvaultError]:
        """Holds, confirms and releases from many callers in one durable transaction, in order.

        Each op is ``("hold", key, order id, ttl seconds)``, ``("confirm", order id)`` or ``("release",
        order id)``; its answer is a Result (hold), a list of Results, or the KeyvaultError that refused
        it (bad input, an order that holds nothing): one op's error changes nothing and fails no other.
        """
        checked: list[tuple[str, str, str, int, str | None] | KeyvaultError] = []
        for op in ops:
            try:
                checked.append(_checkout_op(op))
            except KeyvaultError as exc:
                checked.append(exc)
        locks = self.guard.card_locks()
        budgets: dict[str, Budget] = {}

        def work(txn: Txn, desk: checkout.Desk, overlay: dict[int, Change]) -> list[Any]:
            out: list[Any] = []
            for budget in budgets.values():  # a transaction run again: what it judged before is judged anew
                budget.spent = 0
            for op in checked:
                if isinstance(op, KeyvaultError):
                    out.append(op)
                    continue
                action, key, order, ttl_ms, client = op
                if action == "hold":  # a client's hold is charged to its refusal budget, as a verify is
                    out.append(self.guard.judge_one(
                        key, client, budgets, lambda k: self._hold_in(txn, desk, overlay, k, order, ttl_ms, locks),
                        HOLD_FREE))
                    continue
                try:
                    slots = self._order_keys(txn, desk, overlay, order)
                except NotFoundError as exc:
                    out.append(exc)
                    continue
                if action == "confirm":
                    answers = []
                    for slot, last in slots:
                        answer, spend = checkout.decide_confirm(slot, order, desk.now, last)
                        answers.append(desk.use(slot, order) if spend else answer)
                    out.append(answers)
                else:
                    out.append([desk.release(slot, order, last) for slot, last in slots])
            return out

        answers: list[Any] | None = None
        holds = [i for i, op in enumerate(checked) if not isinstance(op, KeyvaultError) and op[0] == "hold"]
        try:
            if self.authority.remote:  # decided by the authority, for every node, with the same rules
                from .authority.remote import checkout_ops

                answers = checkout_ops(self, checked, locks, budgets, before_wait)
            else:
                answers = self._checkout(work, before_wait)
        finally:
            self.guard.settle(budgets, None if answers is None else [answers[i] for i in holds],
                              [checked[i][4] for i in holds], HOLD_FREE)  # type: ignore[index]
        for client in {checked[i][4] for i in holds}:  # type: ignore[index]
            refused = [answers[i] for i in holds if checked[i][4] == client  # type: ignore[index]
                       and answers[i].status is not Status.HELD]
            if refused:
                self.guard.note(refused, self.cached, client)
        return answers

    def _hold_in(self, txn: Txn, desk: checkout.Desk, overlay: dict[int, Change], key: str, order: str,
                 ttl_ms: int, locks: Any) -> Result:
        base = check(txn, desk.cat, self.pepper, overlay, [key], desk.now, locks)[0]
        if base.status not in (Status.VALID, Status.REDEEMED) or base.serial is None:
            return base
        slot = desk.slot(_fast.parse_serial(base.serial), base)
        desk.know_use(slot, order)
        answer, make = checkout.decide_hold(slot, order, desk.now)
        return desk.hold(slot, order, ttl_ms) if make else answer

    def _order_keys(self, txn: Txn, desk: checkout.Desk, overlay: dict[int, Change], order: str
                    ) -> list[tuple[checkout.Slot, dict[str, Any]]]:
        """Every key ``order`` ever held or used, as slots, with the order's last event on each."""
        desk.write_events(order)  # an event of this order decided in this transaction is read back
        last = checkout.last_events(checkout.order_events(txn, self.log, order))
        slots = []
        for serial, event in last.items():
            found = find(txn, desk.cat, self.pepper, serial)
            base = found if isinstance(found, Result) else judge(txn, desk.cat, found, overlay, desk.now)
            number = _fast.parse_serial(serial)
            slot = desk.slot(number, base) if isinstance(found, Found) else checkout.Slot(number, base, 1, 0, {}, {})
            desk.know_use(slot, order)
            slots.append((slot, event))
        if not slots:
            raise NotFoundError(f"order {order!r} holds no key in this store: hold its keys first")
        return slots

    def order(self, order_id: str) -> Order:
        """Every key an order holds or held (serials, never keys): held, redeemed, released, expired or void (voided
        while held), with times."""
        order = check_text(order_id, "order id", MAX_ORDER_ID)
        if self.authority.remote:  # every node's holds, uses and redeems of the order, as the authority holds them
            from .authority.remote import order_events

            return msgspec.convert(checkout.order_report(order, order_events(self, order), clock.now_ms()), Order)
        with self.store.read() as txn:
            now = clock.now_ms()
            report = checkout.order_report(order, checkout.order_events(txn, self.log, order), now)
            pending = [entry for entry in report["keys"] if entry["state"] in ("held", "expired")]
            if pending:  # a key voided while the order held it can never be confirmed: say so
                cat, overlay = self.current(txn), self.ledger.sync(txn, txn.head())
                for entry in pending:
                    found = find(txn, cat, self.pepper, entry["serial"])
                    voided = judge(txn, cat, found, overlay, now).voided_at if isinstance(found, Found) else None
                    if voided is not None and entry["held_at"] <= voided <= (entry["expired_at"] or voided):
                        entry.update(state="void", voided_at=voided)
        return msgspec.convert(report, Order)

    # -- blacklist -----------------------------------------------------------------------------

    def blacklist(self, level: str, target: str, reason: str) -> BlacklistEntry:
        """Refuse a key, serial, batch or supplier from the next verify on, in every process."""
        why = check_text(reason, "reason", MAX_REASON)
        if self.authority.remote:  # decided by the authority first; this store then holds it for verify
            with self.store.read() as txn:
                raw, _ = self._blacklist_key(txn, self.current(txn), level, target)
            self.authority.blacklist(raw, *blacklist_target(raw), why, now_ms())

        def work(txn: Txn) -> BlacklistEntry:
            cat = self.current(txn)
            raw, batch = self._blacklist_key(txn, cat, level, target)
            now = now_ms()
            old = txn.get("blacklist", raw)
            if old is None and batch is not None:
                self._count_change(txn, batch, b"blacklisted")
            value = dump({"reason": why, "at": now})
            txn.put("blacklist", raw, value)
            txn.put("meta", BLACKLIST_DIGEST, blacklist_digest(txn.get("meta", BLACKLIST_DIGEST), raw, old, value))
            txn.bump_generation()
            name, shown = blacklist_target(raw)
            self.log.append(txn, "blacklist", now, {"level": name, "target": shown, "reason": why}, [raw])
            return BlacklistEntry(name, shown, why, iso(now))

        return self.store.write(work)

    def lift(self, level: str, target: str, reason: str) -> BlacklistEntry:
        """Remove a blacklist entry; lifting needs a reason too."""
        why = check_text(reason, "reason", MAX_REASON)
        lifted = False
        if self.authority.remote:  # decided by the authority first; then this store's copy goes too
            with self.store.read() as txn:
                raw, _ = self._blacklist_key(txn, self.current(txn), level, target)
            name, shown = blacklist_target(raw)
            lifted = self.authority.lift(raw, name, shown, why, now_ms())
            if not lifted:
                raise NotFoundError(f"{name} {shown} is not blacklisted; `keyvault blacklist list` shows what is")

        def work(txn: Txn) -> BlacklistEntry:
            cat = self.current(txn)
            raw, batch = self._blacklist_key(txn, cat, level, target)
            name, shown = blacklist_target(raw)
            old = txn.get("blacklist", raw)
            if old is None and lifted:  # this node had not heard of the entry yet: nothing of it to remove here
                return BlacklistEntry(name, shown, why, iso(now_ms()))
            if old is None or not txn.delete("blacklist", raw):
                raise NotFoundError(f"{name} {shown} is not blacklisted; `keyvault blacklist list` shows what is")
            txn.put("meta", BLACKLIST_DIGEST, blacklist_digest(txn.get("meta", BLACKLIST_DIGEST), raw, old, None))
            if batch is not None:
                self._count_change(txn, batch, b"blacklisted", -1)
            txn.bump_generation()
            now = now_ms()
            self.log.append(txn, "lift", now, {"level": name, "target": shown, "reason": why}, [raw])
            return BlacklistEntry(name, shown, why, iso(now))

        return self.store.write(work)

    def _void_remote(self, key_or_serial: str, why: str) -> Result:
        """void, decided by the bound authority."""
        from .authority import remote

        with self.store.read() as txn:
            head = txn.head()
            cat = self.current(txn, head)
            found = find(txn, cat, self.pepper, key_or_serial)
            if isinstance(found, Result):
                return found
        state, text, at = remote.void(self, found.serial, why)
        now = now_ms()
        result: Result = _fast.judge(found.serial, state, cat.rows[found.batch.key], cat.key_rows,
                                     (state, at, text, 0), None, now)
        return result

    # -- the authority ----------------------------------------------------------------------------

    def bind_authority(self, dsn: str, *, migrate: bool = False,
                       cluster_key: str | os.PathLike[str] | None = None) -> AuthorityBound:
        """Bind this store to a PostgreSQL authority; ``migrate`` moves its own redeems, voids and blacklist in;
        ``cluster_key`` names the cluster engine key file this node sequences the cluster log with."""
        from .authority import remote

        return msgspec.convert(remote.bind(self, remote.check_dsn(dsn), migrate, cluster_key), AuthorityBound)

    def set_cluster_key(self, path: str | os.PathLike[str] | None) -> AuthorityShown:
        """Record (None: clear) the cluster engine key file in this store's binding, checked first."""
        from .authority import remote

        return msgspec.convert(remote.set_cluster_key(self, path), AuthorityShown)

    def unbind_authority(self) -> AuthorityUnbound:
        """Unbind this store: it decides alone again."""
        from .authority import remote

        return msgspec.convert(remote.unbind(self), AuthorityUnbound)

    def authority_info(self) -> AuthorityShown:
        """Whether the store is bound, and to which DSN (its password masked)."""
        from .authority import remote

        return msgspec.convert(remote.show(self), AuthorityShown)

    def authority_check(self) -> AuthorityStatus:
        """The authority reached: schema version, replication state, and this node's cache lag."""
        from .authority import remote

        return msgspec.convert(remote.status(self), AuthorityStatus)

    def catch_up(self) -> int:
        """Bring this node's cache up to the authority's changes (redeems, voids, blacklist); how many were read."""
        from .authority import remote

        return remote.catch_up(self)

    def blacklist_entries(self) -> list[BlacklistEntry]:
        """Every blacklist entry: suppliers, then batches, then keys."""
        cat = self.catalog()
        return [*cat.suppliers_blocked.values(), *cat.batches_blocked.values(), *cat.keys_blocked.values()]

    def _blacklist_key(self, txn: Txn, cat: Catalog, level: str, target: str) -> tuple[bytes, BatchInfo | None]:
        """The stored key for a blacklist target, and its batch when the level is a key."""
        level = Level.parse(level)
        if level in (Level.KEY, Level.SERIAL):
            if level is Level.SERIAL and not looks_like_serial(target):
                raise MalformedKeyError("that serial is not valid: a serial has 12 symbols, like 7KQ2-00A-0003F")
            found = find(txn, cat, self.pepper, target)
            if isinstance(found, Result):
                what = "serial" if level is Level.SERIAL else "key"
                raise NotFoundError(f"that {what} is not in this store ({found.status.value}); nothing was changed")
            return LEVEL_KEY + u64(found.serial), found.batch
        if level is Level.BATCH:
            key = parse_batch(target)
            if key not in cat.batches:
                raise NotFoundError(f"batch {batch_text(key)} is not in this store; `keyvault stats` lists batches")
            return LEVEL_BATCH + u64(key), None
        if level is Level.SUPPLIER:
            sid = cat.supplier_by_ref(target)
            if sid is None:
                raise NotFoundError("no such supplier in this store (give its id or issuer prefix); "
                                    "`keyvault stats` lists suppliers")
            return LEVEL_SUPPLIER + sid.encode("ascii"), None
        raise AssertionError(level)  # Level.parse admits only the four levels above

    # -- service tokens -------------------------------------------------------------------------

    def create_token(self, name: str, scope: str) -> str:
        """Make a service token for ``name`` with ``scope``; returns it (only its hash is kept: show it once)."""
        who, what = check_name(name), check_scope(scope)
        token = new_token()
        if self.authority.remote:  # every node's token: decided by the authority
            from .authority import remote

            remote.create_token(self, who, {"hash": token_hash(token).hex(), "scope": what, "created": now_ms()})
            return token

        def work(txn: Txn) -> None:
            doc = stored_tokens(txn)
            if who in doc:
                raise ConflictError(f"a token named {who} exists: revoke it first, or choose another name")
            doc[who] = {"hash": token_hash(token).hex(), "scope": what, "created": now_ms()}
            save_tokens(txn, doc)

        self.store.write(work)
        return token

    def revoke_token(self, name: str) -> None:
        """Revoke a token: every server process refuses it from its next request on."""
        who = check_name(name)
        if self.authority.remote:
            from .authority import remote

            remote.revoke_token(self, who)
            return

        def work(txn: Txn) -> None:
            doc = stored_tokens(txn)
            if doc.pop(who, None) is None:
                raise NotFoundError(f"no token named {who}; `keyvault token list` shows the tokens")
            save_tokens(txn, doc)

        self.store.write(work)

    def tokens(self) -> list[TokenEntry]:
        """Each token's name, scope and creation time (never the token or its hash)."""
        with self.store.read() as txn:
            return listing(stored_tokens(txn))

    def authorize(self, token: str) -> Grant | None:
        """The grant a presented token carries, or None when it is unknown or revoked."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        store = self.store
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
        for scope in counter_scopes(batch.id, batch.supplier):
            txn.add(scope + b"/" + name, delta)

    def flush_stats(self) -> None:
        """Write buffered refused-attempt counts to the store."""
        self.guard.flush()

    def stats(self) -> Stats:
        """Per-supplier and per-batch counts: issued, imported, redeemed, void, blacklisted, refused."""
        self.guard.flush()
        with self.store.read() as txn:
            return build_stats(txn, self.current(txn), self.ledger.sync(txn, txn.head()))

    def _story(self, txn: Txn, key_or_serial: str, at: int | None = None) -> tuple[Catalog, Found, Result, list[int]]:
        """A key located for its trace: the catalog, the key, its status (now, or at ``at`` ms), and its events'
        indices."""
        cat = self.current(txn)
        found = find(txn, cat, self.pepper, key_or_serial)
        if isinstance(found, Result):
            what = "serial" if looks_like_serial(str(key_or_serial)) else "key"
            raise NotFoundError(f"that {what} is not in this store ({found.status.value})")
        overlay = self.ledger.sync(txn, txn.head())
        now = now_ms() if at is None else at
        statuses = [judge(txn, cat, found, overlay, now)]
        checkout.annotate(txn, self.pepper, cat, statuses, now)
        return cat, found, statuses[0], key_events(txn, found.serial, found.batch, overlay.get(found.serial))

    def trace(self, key_or_serial: str) -> Trace:
        """Where a key came from and what happened to it: supplier, batch, product, history."""
        with self.store.read() as txn:
            cat, found, status, indices = self._story(txn, key_or_serial)
            events = [parse_leaf(self.log.leaf(txn, i)) for i in indices]
            return build_trace(txn, cat, found.serial, found.batch, status, events)

    # -- provenance: the event log, trust, lots, bundles ---------------------------------------------

    @property
    def engine_identity(self) -> PublicIdentity:
        """This store's engine key (it signs the checkpoints): give its public file to bundle verifiers."""
        return self.log.engine.public_with_roles(["engine"])

    def checkpoint(self) -> str:
        """Sign a checkpoint of the event log now (or return the newest if it covers every event): the note."""
        def work(txn: Txn) -> bytes | None:
            now = now_ms()
            if self.log.lacks_index(txn):  # once, in a store that began before links: a checkpoint commits to it
                self.log.append(txn, "trust", now, {"action": "subject-index", "name": self.log.engine.name}, [])
            return self.log.maybe_checkpoint(txn, now, force=True)

        note = self.store.write(work)
        assert note is not None
        return note.decode("utf-8")

    def checkpoints(self) -> list[CheckpointEntry]:
        """Every checkpoint the engine signed, oldest first."""
        with self.store.read() as txn:
            return cast(list[CheckpointEntry], self.log.checkpoints(txn))

    @property
    def checkpoint_policy(self) -> Policy:
        """When checkpoints are signed by themselves."""
        self.catalog()  # the policy is reloaded with the catalog
        return self.log.policy

    def check_since(self, old_note: str) -> bundle.Check:
        """Is this store's log an extension of the one ``old_note`` (a checkpoint it signed earlier) saw?

        Fails when the store was rolled back (restored from an old backup and written to since) or
        forked: the RFC 9162 consistency proof from the old size to now does not reach both roots.
        """
        new_note = self.checkpoint().encode()
        with self.store.read() as txn:
            def proof(old_size: int, new_size: int) -> list[bytes]:
                if old_size > self.log.size(txn):
                    return []  # the log is shorter than it was: nothing can prove it grew
                return self.log.consistency(txn, old_size, new_size)

            return bundle.check_consistent(old_note.encode(), new_note, proof, [self.engine_identity])

    def set_checkpoint_policy(self, every_events: int, every_seconds: int) -> None:
        """Sign checkpoints by themselves after this many events or seconds, whichever comes first."""
        if every_events < 1 or every_seconds < 1:
            raise UsageError("a checkpoint cadence needs at least 1 event and 1 second")

        def work(txn: Txn) -> None:
            txn.put("meta", b"checkpoint_policy", Policy(every_events, every_seconds).to_record())
            txn.bump_generation()

        self.store.write(work)

    def check(self, on_check: Callable[[CheckRow], None] | None = None) -> CheckReport:
        """Verify every part of the store and report check by check; never raises for what it finds."""
        tell = None if on_check is None else (lambda row: on_check(msgspec.convert(row, CheckRow)))
        return msgspec.convert(check_store(self, tell), CheckReport)

    def verify_log(self) -> int:
        """Walk the event log: chain, tree and checkpoints; how many events. StoreCorruptError if altered."""
        with self.store.read() as txn:
            return self.log.verify(txn)

    def trust(self, identity: PublicIdentity, roles: Sequence[str] = ("supplier",)) -> TrustRecord:
        """Pin a public identity in ``roles``: what each role lets it sign is accepted from now on."""
        names = [Role.parse(role).value for role in roles]
        done = self.store.write(lambda txn: trust.pin(self, txn, self.current(txn), identity.name, identity.prefix,
                                                       identity.public_key, names, now_ms()))
        if self.authority.remote:  # every node's pin (the roles as one comma-separated column)
            self.authority.put_trust([(identity.public_key, identity.name, identity.prefix, ",".join(names), True)],
                                     now_ms())
        return done

    def untrust(self, identity: PublicIdentity) -> TrustRecord:
        """Unpin a public identity (what it signed before stays; nothing new is accepted)."""
        done = self.store.write(lambda txn: trust.unpin(self, txn, self.current(txn), identity.public_key,
                                                         now_ms()))
        if self.authority.remote:  # unpinned on every node
            self.authority.put_trust([(identity.public_key, identity.name, identity.prefix, done["role"], False)],
                                     now_ms())
        return done

    def trusted(self) -> list[TrustEntry]:
        """Every pinned identity."""
        return trust.entries(self.catalog())

    def rotate_trust(self, rotation: Rotation) -> TrustRecord:
        """Accept a key rotation signed by a pinned key and its successor."""
        return self.store.write(lambda txn: trust.rotate(self, txn, self.current(txn), rotation, now_ms()))

    def send_lot(self, sender: Identity, batch: str, recipient: PublicIdentity, *,
                 manifest: str | os.PathLike[str], out: str | os.PathLike[str],
                 ranges: str | None = None) -> LotSent:
        """Transfer (part of) a batch you hold to ``recipient``: a signed record, and a lot sealed to them."""
        info = self.catalog().batches.get(parse_batch(batch))
        parsed = parse_ranges(ranges, info.count) if ranges and info else None
        hop, info = lots.send(self, sender, batch, parsed, recipient, Path(manifest), Path(out))
        return {"transfer": hop.id, "batch": info.id, "to": recipient.name, "to_fingerprint": recipient.fingerprint,
                "ranges": [f"{a}-{b - 1}" for a, b in hop.ranges], "keys": sum(b - a for a, b in hop.ranges),
                "lot": str(out)}

    def receive_lot(self, lot: str | os.PathLike[str], recipient: Identity, *,
                    manifest_out: str | os.PathLike[str] | None = None) -> LotReceived:
        """Open a lot sealed to you: check every signature and hop, record custody, import its batch."""
        info, chain = lots.receive(self, Path(lot), recipient, Path(manifest_out) if manifest_out else None)
        return {"batch": info.id, "count": info.count, "supplier": info.supplier_name,
                "hops": [{"from": h.doc["from"]["name"], "to": h.doc["to"]["name"], "transfer": h.id,
                          "ranges": [f"{a}-{b - 1}" for a, b in h.ranges]} for h in chain]}

    def audit(self) -> Audit:
        """Double sales (with both signed records), withheld or forked manifests, and the event log's check."""
        return msgspec.convert(lots.audit(self), Audit)

    def trace_bundle(self, key_or_serial: str) -> dict[str, Any]:
        """A self-contained proof of a key's story, checkable offline (``keyvault verify-bundle``)."""
        if self.authority.remote:  # a bound node proves it from the cluster's one log, when the cluster keeps one
            from .authority.remote import cluster_bundle

            made = cluster_bundle(self, key_or_serial)
            if made is not None:
                return made
        for _ in range(5):
            self.checkpoint()  # a signed checkpoint covering every event so far
            with self.store.read() as txn:
                last = txn.last_key("checkpoints")
                assert last is not None
                size = from_u64(last)
                note = self.log.note_at(txn, size)
                signed = open_note(note, self.log.origin, [Verifier(self.log.origin, self.log.engine.public_key)])
                # The status as of the checkpoint's signed time: what a verifier replays from the events.
                _, found, status, indices = self._story(txn, key_or_serial, signed.time)
                if indices and indices[-1] >= size:
                    continue  # another process changed this key after the checkpoint: sign again
                if (self.log.index.state(txn) or (size + 1, b""))[0] > size:
                    continue  # (the index is stored at or before a checkpoint; its root there is computed from it)
                events = [(i, self.log.leaf(txn, i), self.log.inclusion(txn, i, size)) for i in indices]
                serial, batch = found.serial, found.batch
                index_proofs = [encode_proof(subject, *self.log.index.proof(txn, subject, size))
                                for subject in (LEVEL_KEY + u64(serial), LEVEL_BATCH + u64(batch.key),
                                                LEVEL_SUPPLIER + batch.supplier.encode())]
                return bundle.build(**commitment_proof(txn, self.pepper, found.batch, found.serial,
                                                       not looks_like_serial(key_or_serial)),
                                    custody=lots.custody_of(txn, found.batch.key, found.serial),
                                    checkpoint=note, events=events, status=status.to_dict(),
                                    index_proofs=index_proofs)
        raise StoreError("this key kept changing while its bundle was made; try again")

    # -- issuing and importing (the work is in issuing.py) ----------------------------------------

    def issue_batch(self, identity: Identity, product: str, count: int, *, keys_out: str | os.PathLike[str],
                    manifest_out: str | os.PathLike[str], valid_from: int | None = None,
                    valid_until: int | None = None, progress: Progress | None = None, uses: int = 1,
                    long_form: bool = False) -> BatchInfo:
        """Issue ``count`` new keys: printable export (0600, once), signed manifest, records in this store.

        ``uses`` above 1 makes count-limited keys: each may be redeemed by up to ``uses`` orders, once each.
        """
        return issuing.issue_batch(self, identity, product, count, Path(keys_out), Path(manifest_out),
                           valid_from, valid_until, progress, uses, long_form)

    def import_cards(self, identity: Identity, product: str, cards_csv: str | os.PathLike[str], *,
                     manifest_out: str | os.PathLike[str], valid_from: int | None = None,
                     valid_until: int | None = None, progress: Progress | None = None) -> BatchInfo:
        """Make a batch of upstream cards (a CSV of codes, or card numbers and passwords)."""
        return issuing.import_cards(self, identity, product, Path(cards_csv), Path(manifest_out), valid_from,
                            valid_until, progress)

    def import_manifest(self, path: str | os.PathLike[str], *, progress: Progress | None = None,
                        register: bool = True) -> tuple[BatchInfo, bool]:
        """Import a supplier's signed manifest: (batch, True if it was new, False if already here).

        On a node bound to an authority the file also goes into the authority's registry (``register``), and
        every other node imports it on its next catch-up.
        """
        done = issuing.import_manifest(self, read_manifest(path), "manifest", progress)
        if register and self.authority.remote:
            from .authority import remote

            remote.register_manifest(self, Path(path))
        return done

    # -- backup and restore (the work is in backup.py) -----------------------------------------

    def backup(self, dest: str | os.PathLike[str], *, with_pepper: bool = False) -> Backup:
        """Copy the store, while it serves, into the new or empty directory ``dest``, checked: its manifest."""
        from .backup import take

        return take(self, Path(dest), with_pepper)

    @classmethod
    def restore(cls, src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                since: str | Sequence[str] | None = None,
                pepper_file: str | os.PathLike[str] | None = None) -> Restore:
        """Restore a backup into the new store directory ``dest``; refused if its log does not extend ``since``."""
        from .backup import restore

        return restore(src, dest, lambda root, pepper: cls.open(root, pepper_file=pepper), since=since,
                       pepper_file=pepper_file)
