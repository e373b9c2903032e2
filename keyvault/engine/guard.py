"""Refused attempts: counted by batch, supplier and client; each client's refusals held to its budget.

A throttled client's budget is charged per key, inside every call, in every
process at once: before a chunk of keys is judged, as many slots are reserved
in the shared throttle state (``throttle.mdb`` beside the store) as the chunk
has keys; a refused key uses its slot up, the others are given back. Once the
budget is spent, the call's remaining keys are answered ``throttled`` without
being read or hashed. Imported cards (card number and password) also count
wrong passwords per card, and lock a card after too many.

Counts are buffered in memory and written at most every ``flush_every``
seconds (a verify must not write the store on every call). Throttling fails
open: a full disk must not stop checkout.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..clock import iso, now_ms
from ..errors import StoreError, UsageError
from ..fields import MAX_CLIENT, check_text
from ..formats.keyformat import MAX_IMPORTED, normalize_imported
from ..results import Result, Status
from ..store import Txn
from ..store.throttle import ThrottleStore
from .catalog import Catalog
from .lookup import CardLocks
from .state import State
from .throttling import ThrottlePolicy

FLUSH_SECONDS = 1.0  # refused-attempt counters are flushed at most this often (and on close)
LEASE_SECONDS = 1.0  # a slot a valid key gave back is reused by this process's next calls for this long at most
_UNHELD = (b"T", b"B:?", b"S:?")  # where refusals of keys naming no batch held here are counted


def counter_scopes(batch_id: str | None, supplier: str | None) -> tuple[bytes, ...]:
    """Where a count goes: the totals, and the batch and supplier when known."""
    if batch_id is None or supplier is None:
        return (b"T",)
    return (b"T", b"B:" + batch_id.encode(), b"S:" + supplier.encode())


def client_id(client: str | None) -> str | None:
    """A caller's client id, checked (None stays None: nothing is throttled)."""
    return None if client is None else check_text(client, "client id", MAX_CLIENT)


#: Answers that use no refusal budget: the key let through, or never looked at.
_FREE = frozenset({Status.VALID, Status.ACCEPTED, Status.THROTTLED})
#: A hold's answers that use none: also ``held`` (this order's hold, or a real key another order holds).
HOLD_FREE = _FREE | {Status.HELD}


class Budget:
    """One call's share of one client's refusal budget: slots reserved, slots used up by refusals."""

    __slots__ = ("who", "policy", "taken", "spent", "settled", "answer", "open", "since")

    def __init__(self, who: bytes, policy: ThrottlePolicy) -> None:
        self.who = who
        self.policy = policy
        self.taken = 0  # slots this call holds in the shared state
        self.spent = 0  # of those, used up by refused keys not yet counted as refusals there
        self.settled = 0  # refusals of this call already counted there
        self.answer: Result | None = None  # the throttled answer, once nothing more could be reserved
        self.open = False  # the throttle state could not be written: fail open, judge everything
        self.since = 0.0  # when the slots taken from this process's held ones were first held (monotonic)

    @property
    def held(self) -> int:
        """Slots reserved and not yet used up: how many keys may be judged next."""
        return self.taken - self.spent


class Guard:
    """Counts refusals and throttles the clients they came from, for one open store."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._throttle_store: ThrottleStore | None = None  # opened when a client is first named
        self._pending: Counter[bytes] = Counter()
        #: Reserved slots that single keys let through, held for the client's next calls in this process
        #: for at most LEASE_SECONDS: (slots, since when, monotonic). flush() gives them back.
        self._returns: dict[bytes, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        #: Seconds between automatic writes of refused-attempt counts (None: only flush() and close()).
        self.flush_every: float | None = FLUSH_SECONDS

    @property
    def throttle(self) -> ThrottleStore:
        """The shared throttle state (``throttle.mdb``), opened on first use."""
        with self._lock:
            if self._throttle_store is None:
                self._state.store.check_open()
                self._throttle_store = ThrottleStore(self._state.path / "throttle.mdb")
            return self._throttle_store

    def budget(self, client: str | None, budgets: dict[str, Budget]) -> Budget | None:
        """A call's budget for ``client`` (made on first use), or None when the client is not throttled."""
        if client is None:
            return None
        found = budgets.get(client)
        if found is None:
            policies = self._state.policies  # current: the call has just read the catalog
            policy = policies.get(client, policies[""])
            if policy.max_refused is None:
                return None
            found = budgets[client] = Budget(client.encode("utf-8"), policy)
        return found

    def reserve(self, budget: Budget, want: int) -> bool:
        """Count the refusals used up so far and reserve slots for up to ``want`` more keys: False when
        none could be had (``budget.answer`` is then the throttled answer for the keys left)."""
        if budget.open:
            return True
        policy = budget.policy
        assert policy.max_refused is not None
        cap = max(1, (policy.max_refused + 2) // 2)  # half a budget at most: concurrent calls get their share
        release = budget.taken
        if not budget.taken:  # a fresh call: first the slots that earlier calls let through and still hold
            with self._lock:
                release, since = self._returns.pop(budget.who, (0, 0.0))
            if release and time.monotonic() - since < min(LEASE_SECONDS, policy.window_seconds / 2):
                try:
                    until = self.throttle.blocked_until(budget.who)  # a read: blocked by another process?
                except StoreError:
                    until = 0
                take = 0 if until > now_ms() else min(want, release, cap)
                if release > take:
                    self._hold(budget.who, release - take, since)
                if take:
                    budget.taken, budget.since = take, since
                    return True
                budget.answer = Result(Status.THROTTLED, message="too many refused attempts from this client: "
                                                                 f"try again after {iso(until)}")
                return False
        try:
            charge = self.throttle.charge(budget.who, release=release, refused=budget.spent,
                                          want=min(want, cap), now=now_ms(), limit=policy.max_refused,
                                          window_ms=policy.window_seconds * 1000,
                                          block_ms=policy.block_seconds * 1000)
        except StoreError:
            budget.open = True  # throttling fails open: a full disk must not stop checkout
            return True
        budget.settled += budget.spent
        budget.taken, budget.spent = charge.taken, 0
        if charge.taken:
            return True
        budget.answer = Result(Status.THROTTLED, message="too many refused attempts from this client: try "
                                                         f"again after {iso(charge.retry_at)}")
        return False

    def judge(self, keys: list[str], client: str | None, budgets: dict[str, Budget],
              judge: Callable[[list[str]], list[Result]]) -> list[Result]:
        """Judge one client's keys a chunk at a time, each chunk no larger than the budget it reserved;
        the keys past a spent budget are answered ``throttled``, unread."""
        budget = self.budget(client, budgets)
        if budget is None:
            return judge(keys)
        budget.spent = 0  # a transaction run again: what it judged before is judged anew
        results: list[Result] = []
        done, n = 0, len(keys)
        while done < n:
            if budget.open:
                results += judge(keys[done:])
                break
            if not budget.held and not self.reserve(budget, n - done):
                assert budget.answer is not None
                results += [budget.answer] * (n - done)
                self.count_throttled(budget.who, n - done)
                break
            out = judge(keys[done:done + budget.held])
            done += len(out)
            budget.spent += sum(1 for r in out if r.status not in _FREE)
            results += out
        return results

    def judge_one(self, key: str, client: str | None, budgets: dict[str, Budget], judge: Callable[[str], Result],
                  free: frozenset[Status] = _FREE) -> Result:
        """One key of a call that judges its keys one by one (holds): charged to ``client``'s budget as
        :meth:`judge` charges a chunk, ``throttled`` unread once the budget is spent. The caller zeroes the
        budgets' ``spent`` when its transaction starts over."""
        budget = self.budget(client, budgets)
        if budget is None or budget.open:
            return judge(key)
        if not budget.held and not self.reserve(budget, 1):
            assert budget.answer is not None
            self.count_throttled(budget.who, 1)
            return budget.answer
        result = judge(key)
        if result.status not in free:
            budget.spent += 1
        return result

    def judge_for(self, keys: list[str], clients: list[str | None], budgets: dict[str, Budget],
                  judge: Callable[[list[str]], list[Result]]) -> list[Result]:
        """:meth:`judge` for keys of many clients at once (a server's group commit): in rounds, every
        client's next chunk judged together; each client charged on its own."""
        by_client: dict[str | None, list[int]] = {}
        for i, client in enumerate(clients):
            by_client.setdefault(client, []).append(i)
        results: list[Result | None] = [None] * len(keys)
        todo = {c: (self.budget(c, budgets), where) for c, where in by_client.items()}
        for budget, _ in todo.values():
            if budget is not None:
                budget.spent = 0
        while todo:
            chunk: list[int] = []
            for client, (budget, where) in list(todo.items()):
                if budget is not None and not budget.open and not budget.held and \
                        not self.reserve(budget, len(where)):
                    assert budget.answer is not None
                    for i in where:
                        results[i] = budget.answer
                    self.count_throttled(budget.who, len(where))
                    del todo[client]
                    continue
                if budget is None or budget.open:
                    chunk += where
                    del todo[client]
                    continue
                take = where[:budget.held]
                chunk += take
                todo[client] = (budget, where[len(take):])
                if not todo[client][1]:
                    del todo[client]
            for i, result in zip(chunk, judge([keys[i] for i in chunk]) if chunk else []):
                results[i] = result
                budget = budgets.get(clients[i]) if clients[i] is not None else None  # type: ignore[arg-type]
                if budget is not None and result.status not in _FREE:
                    budget.spent += 1
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def settle(self, budgets: dict[str, Budget], results: list[Result] | None,
               clients: list[str | None] | str | None = None, free: frozenset[Status] = _FREE) -> None:
        """Give back the slots refused keys did not use, and count the refusals (None: the call failed)."""
        for client, budget in budgets.items():
            if budget.open:
                continue
            if results is None:
                refused = budget.spent
            elif isinstance(clients, list):
                refused = sum(1 for c, r in zip(clients, results) if c == client and r.status not in free)
            else:
                refused = sum(1 for r in results if r.status not in free)
            refused = max(0, refused - budget.settled)
            if not refused and budget.taken <= 1:
                if budget.taken:  # a single key let through: its slot is held for the next call, for a while
                    self._hold(budget.who, budget.taken, budget.since or time.monotonic())
                    budget.taken = 0
                continue
            policy = budget.policy
            assert policy.max_refused is not None
            try:
                self.throttle.charge(budget.who, release=budget.taken, refused=refused,
                                     want=0, now=now_ms(), limit=policy.max_refused,
                                     window_ms=policy.window_seconds * 1000, block_ms=policy.block_seconds * 1000)
            except StoreError:
                pass  # fails open, as above
            budget.taken = budget.spent = 0
        self._maybe_flush()

    def let_through(self, budget: Budget) -> None:
        """settle() for one key let through (the hot path of a single verify): its slot is held."""
        if budget.taken and not budget.open:
            self._hold(budget.who, budget.taken, budget.since or time.monotonic())
            budget.taken = 0
        if self.flush_every is not None and time.monotonic() - self._last_flush >= self.flush_every:
            self._maybe_flush()

    def _hold(self, who: bytes, slots: int, since: float) -> None:
        """Keep reserved slots for this client's next calls in this process (given back by flush())."""
        with self._lock:
            held, first = self._returns.get(who, (0, since))
            self._returns[who] = (held + slots, min(first, since))

    def card_locks(self) -> CardLocks | None:
        """Wrong passwords counted per imported card, under the store's policy (None: cards never lock)."""
        limit = self._state.policies[""].card_attempts
        return None if limit is None else _CardLocks(self, limit)

    def unlock_card(self, card_number: str) -> bool:
        """Unlock an imported card and forget its wrong passwords; False when it had none."""
        return self.throttle.unlock_card(_card(card_number))

    def locked_cards(self) -> list[dict[str, Any]]:
        """Every imported card given wrong passwords: its number, how many, and when it was locked."""
        return [{"card_number": card, "wrong_passwords": wrong, "locked_at": iso(locked) if locked else None}
                for card, wrong, locked in self.throttle.locked_cards()]

    def count_throttled(self, who: bytes, n: int) -> None:
        """Count ``n`` keys of a client answered ``throttled`` (``keyvault stats``)."""
        with self._lock:
            self._pending[b"C:" + who + b"/throttled"] += n

    def note(self, results: list[Result], cat: Catalog, client: str | None = None) -> None:
        """Count refused attempts by batch, supplier and client (throttled answers are counted apart)."""
        refused = [r for r in results if r.status not in _FREE]
        if not refused:
            return
        who = client.encode("utf-8") if client is not None else None
        with self._lock:
            for result in refused:
                name = b"/refused/" + result.status.value.encode()
                batch = cat.by_id.get(result.batch) if result.batch else None
                # Keys naming no batch held here are counted under "?" scopes: the same work as any
                # other refusal, so the time of an answer does not tell whether its batch is held.
                for scope in (counter_scopes(batch.id, batch.supplier) if batch else _UNHELD):
                    self._pending[scope + name] += 1
                if who is not None:
                    self._pending[b"C:" + who + name] += 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        every = self.flush_every
        if every is not None and (self._pending or self._returns) and time.monotonic() - self._last_flush >= every:
            try:
                self.flush()
            except StoreError:
                pass  # counts stay pending; a verify never fails for want of a statistics write

    def flush(self) -> None:
        """Write buffered refused-attempt counts to the store."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            returns, self._returns = self._returns, {}
            self._last_flush = time.monotonic()
        for who, (slots, _) in returns.items():
            try:
                self.throttle.release(who, slots, now_ms())
            except StoreError:
                pass  # forgotten once nobody charges the client for a whole window
        if not pending:
            return
        try:
            def add_all(txn: Txn) -> None:
                for key, n in pending.items():
                    txn.add(key, n)

            self._state.store.write(add_all)
        except BaseException:
            with self._lock:
                self._pending.update(pending)
            raise

    def unblock(self, client: str) -> None:
        """Lift a client's block now and restart its count."""
        self.throttle.clear(client.encode("utf-8"))

    def close(self) -> None:
        """Close the throttle state (the counts are flushed by the caller first)."""
        if self._throttle_store is not None:
            self._throttle_store.close()


def _card(card_number: str) -> bytes:
    """An imported card number as its lock is kept: folded as when it was imported."""
    card = normalize_imported(check_text(card_number, "card number", MAX_IMPORTED))
    if not card or not card.isascii():
        raise UsageError("a card number is the ASCII number printed on the card, as imported")
    return card.encode("ascii")


class _CardLocks:
    """Password attempts on imported cards, reserved before the password is hashed (lookup.CardLocks)."""

    def __init__(self, guard: Guard, limit: int) -> None:
        self._guard = guard
        self._limit = limit

    def enter(self, card: bytes) -> Result | None:
        """None to judge the password; a refusal, without looking at it, when the card is locked."""
        try:
            go, locked = self._guard.throttle.card_attempt(card, self._limit, now_ms())
        except StoreError:
            return None  # fails open, as client throttling does
        if go:
            return None
        if locked:
            return Result(Status.THROTTLED, message=f"this card is locked after {self._limit} wrong passwords "
                          f"(since {iso(locked)}): the password was not checked; ask the operator to unlock it "
                          "(`keyvault throttle unlock-card`)")
        return Result(Status.THROTTLED, message="too many password attempts on this card at once: try again")

    def leave(self, card: bytes, right: bool) -> None:
        """Count a wrong password (locking the card at the limit), or give a right one's attempt back."""
        try:
            self._guard.throttle.card_done(card, right, self._limit, now_ms())
        except StoreError:
            pass
