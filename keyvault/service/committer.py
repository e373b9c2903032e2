"""Group commit for an event loop: redeems from every request of a worker share durable commits.

Requests hand their items to :meth:`Committer.submit` and await the answer.
One thread takes everything queued, runs it as one call (one LMDB write
transaction, one fsync), and answers every request in it at once. Requests
that arrive during a commit form the next one, so the batch grows with the
load and a lone request pays one commit, as before. The event loop never
waits on a commit, and the loop is woken once per commit, not once per request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Committer(Generic[T, R]):
    """Runs ``run(items) -> results`` on its own thread over the items every request queued."""

    def __init__(self, run: Callable[[list[T]], list[R]], idle: Callable[[], None] | None = None,
                 idle_seconds: float = 1.0) -> None:
        self._run = run
        self._idle = idle  # called at least every idle_seconds between commits (statistics flushes)
        self._idle_seconds = idle_seconds
        self._queue: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="keyvault-committer", daemon=True)
        self.commits = 0  # commits made and items carried: the service's metrics read them
        self.items = 0

    def start(self) -> None:
        """Start the commit thread."""
        self._thread.start()

    async def submit(self, items: list[T]) -> list[R]:
        """Queue one request's items and wait until the commit that carries them is durable."""
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("the committer is stopped")
            self._queue.append((items, future))
            self._wake.notify()
        return await future

    def stop(self) -> None:
        """Commit what is queued, then stop the thread (after the server stopped taking requests)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _serve(self) -> None:
        last_idle = time.monotonic()
        while True:
            with self._wake:
                if not self._queue and not self._stopping:
                    self._wake.wait(self._idle_seconds)
                batch, self._queue = self._queue, []
                stopping = self._stopping
            if batch:
                self._commit(batch)
            if self._idle is not None and (stopping or time.monotonic() - last_idle >= self._idle_seconds):
                last_idle = time.monotonic()
                try:
                    self._idle()
                except Exception:  # noqa: BLE001 - statistics must never stop redeems
                    pass
            if stopping and not batch:
                return

    def _commit(self, batch: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        flat = [item for items, _ in batch for item in items]
        answers: list[tuple[asyncio.Future[list[R]], list[R] | None, BaseException | None]] = []
        try:
            results = self._run(flat)
        except BaseException as exc:  # every request in the commit learns why it failed
            answers = [(future, None, exc) for _, future in batch]
        else:
            self.commits += 1
            self.items += len(flat)
            start = 0
            for items, future in batch:
                answers.append((future, results[start:start + len(items)], None))
                start += len(items)
        loop = batch[0][1].get_loop()
        try:
            loop.call_soon_threadsafe(_answer, answers)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _answer(answers: list[tuple[asyncio.Future[list[R]], list[R] | None, BaseException | None]]) -> None:
    """Set each request's answer (on the loop; a request that went away is skipped)."""
    for future, results, error in answers:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(results)  # type: ignore[arg-type]
