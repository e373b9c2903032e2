"""Group commit: concurrent single calls share one durable transaction.

The first caller to arrive leads: it takes everything queued, runs it as one
batch (one commit, one fsync), hands each caller its own answer, and stops
leading once its own answer is in. Callers that arrived during that commit
are batched together by the next leader. A lone caller pays one commit, as
before; 32 concurrent callers pay about one commit per round instead of 32.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("item", "done", "value", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.value: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Run ``run(items) -> results`` over whatever concurrent callers have queued."""

    def __init__(self, run: Callable[[list[T]], list[R]]) -> None:
        self._run = run
        self._cond = threading.Condition()
        self._queue: list[_Slot[T, R]] = []
        self._leading = False

    def submit(self, item: T) -> R:
        """Queue ``item``, wait for (or lead) the commit that carries it, and return its result."""
        slot: _Slot[T, R] = _Slot(item)
        with self._cond:
            self._queue.append(slot)
            while not slot.done and self._leading:
                self._cond.wait()
            if not slot.done:
                self._leading = True
        if not slot.done:
            try:
                while not slot.done:
                    with self._cond:
                        batch, self._queue = self._queue, []
                    self._commit(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[return-value]

    def _commit(self, batch: list[_Slot[T, R]]) -> None:
        try:
            values = self._run([slot.item for slot in batch])
        except BaseException as exc:  # every caller in the batch learns why its commit failed
            for slot in batch:
                slot.error = exc
        else:
            for slot, value in zip(batch, values):
                slot.value = value
        with self._cond:
            for slot in batch:
                slot.done = True
            self._cond.notify_all()
