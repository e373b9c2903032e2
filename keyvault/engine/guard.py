"""Refused attempts: counted by batch, supplier and client, and clients refused too often throttled.

Counts are buffered in memory and written at most every ``flush_every``
seconds (a verify must not write on every call); the throttle state lives in
``throttle.mdb`` beside the store, shared by every process at once.
Throttling fails open: a full disk must not stop checkout.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from ..clock import iso, now_ms
from ..errors import StoreError
from ..fields import MAX_CLIENT, check_text
from ..results import Result, Status
from ..store import Txn
from ..store.throttle import ThrottleStore
from .catalog import Catalog
from .state import State

FLUSH_SECONDS = 1.0  # refused-attempt counters are flushed at most this often (and on close)
_UNHELD = (b"T", b"B:?", b"S:?")  # where refusals of keys naming no batch held here are counted


def counter_scopes(batch_id: str | None, supplier: str | None) -> tuple[bytes, ...]:
    """Where a count goes: the totals, and the batch and supplier when known."""
    if batch_id is None or supplier is None:
        return (b"T",)
    return (b"T", b"B:" + batch_id.encode(), b"S:" + supplier.encode())


def client_id(client: str | None) -> str | None:
    """A caller's client id, checked (None stays None: nothing is throttled)."""
    return None if client is None else check_text(client, "client id", MAX_CLIENT)


class Guard:
    """Counts refusals and throttles the clients they came from, for one open store."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._throttle_store: ThrottleStore | None = None  # opened when a client is first named
        self._pending: Counter[bytes] = Counter()
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

    def throttled(self, client: str | None, n: int) -> list[Result] | None:
        """Throttled answers for a blocked client (the store is not read: nothing about the keys leaks)."""
        if client is None:
            return None
        try:
            until = self.throttle.blocked_until(client.encode("utf-8"))
        except StoreError:
            return None  # throttling fails open: a full disk must not stop checkout (the counts stay pending)
        if until <= now_ms():
            return None
        with self._lock:
            self._pending[b"C:" + client.encode("utf-8") + b"/throttled"] += n
        self._maybe_flush()
        message = f"too many refused attempts from this client: try again after {iso(until)}"
        return [Result(Status.THROTTLED, message=message)] * n

    def note(self, results: list[Result], cat: Catalog, client: str | None = None) -> None:
        """Count refused attempts by batch, supplier and client, and throttle a client refused too often."""
        refused = [r for r in results if r.status is not Status.VALID and r.status is not Status.ACCEPTED]
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
        if client is not None and who is not None:
            policies = self._state.policies  # current: the call just read the catalog
            policy = policies.get(client, policies[""])
            if policy.max_refused is not None:
                try:
                    self.throttle.add(who, len(refused), now_ms(), policy.max_refused,
                                      policy.window_seconds * 1000, policy.block_seconds * 1000)
                except StoreError:
                    pass  # fails open, as above
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        every = self.flush_every
        if every is not None and self._pending and time.monotonic() - self._last_flush >= every:
            try:
                self.flush()
            except StoreError:
                pass  # counts stay pending; a verify never fails for want of a statistics write

    def flush(self) -> None:
        """Write buffered refused-attempt counts to the store."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            self._last_flush = time.monotonic()
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
