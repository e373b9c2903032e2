"""Group commit: concurrent single calls share one durable transaction.

The first caller to arrive leads: it takes everything queued, runs it as one
batch (one commit, one fsync) and, once its own answer is in, hands the lead
to the first caller still queued. Callers that arrived during a commit form
the next batch. A lone caller pays one commit, as before; 32 concurrent
callers pay about one commit per round instead of 32.

Each caller waits on its own lock, so a commit wakes only the callers it
answered (and the next leader), never all of them. The callers a commit
answered are woken when the next batch starts to wait on the disk, or at once
when no batch follows: their Python then runs during that fsync, instead of
taking the GIL from the next batch's checks (docs/benchmarks.md). Their
answers are durable either way; they learn them a little later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("item", "done", "lead", "value", "error", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False  # the answer (value or error) is in
        self.lead = False  # woken to lead the next batch
        self.value: R | None = None
        self.error: BaseException | None = None
        self.wake = threading.Lock()  # held until the answer or the lead is handed over: one futex, no Condition
        self.wake.acquire()


class GroupCommit(Generic[T, R]):
    """Run ``run(items, before_wait) -> results`` over whatever concurrent callers have queued.

    ``run`` calls ``before_wait()`` before it waits on the disk (it may call it more than once).
    """

    def __init__(self, run: Callable[[list[T], Callable[[], None]], list[R]]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._queue: list[_Slot[T, R]] = []
        self._leading = False
        self._answered: list[_Slot[T, R]] = []  # durable answers whose callers are not woken yet

    @property
    def waiting(self) -> int:
        """How many callers are queued for the next commit (for tools and tests that time a race)."""
        with self._lock:
            return len(self._queue)

    def submit(self, item: T) -> R:
        """Queue ``item``, wait for (or lead) the commit that carries it, and return its result."""
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.wake.acquire()
        if not slot.done:  # leading: either first to arrive, or handed the lead
            self._lead(slot)
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[return-value]

    def _lead(self, own: _Slot[T, R]) -> None:
        try:
            while not own.done:
                with self._lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        finally:
            with self._lock:
                if self._queue:  # hand over: the first caller still waiting leads next
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.wake.release()
                else:
                    self._leading = False
                    self._wake_answered()

    def _commit(self, batch: list[_Slot[T, R]]) -> None:
        try:
            values = self._run([slot.item for slot in batch], self._wake_answered)
        except BaseException as exc:  # every caller in the batch learns why its commit failed
            for slot in batch:
                slot.error = exc
        else:
            for slot, value in zip(batch, values):
                slot.value = value
        finally:
            self._wake_answered()
        for slot in batch:
            slot.done = True
        self._answered = batch

    def _wake_answered(self) -> None:
        """Wake the callers of the last commit (their answers are durable); only the leader calls this."""
        answered, self._answered = self._answered, []
        for slot in answered:
            slot.wake.release()
