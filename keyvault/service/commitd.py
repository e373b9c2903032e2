"""The commit process: the one writer of every worker's redeems, so workers share commits too.

With each worker committing on its own, two workers take turns on LMDB's
writer lock and each commit carries only that worker's requests. Instead,
``serve`` starts one commit process beside the workers. Workers send it their
redeems over a Unix socket in the run directory (private to the service);
it reads everything that arrived, redeems it all in one durable transaction
(``Vault.redeem_for``), answers each worker, and reads again: what arrived
during a commit is the next commit. One thread, no lock to share, and the
batch grows with the load across all workers.

An answer leaves the commit process only after its commit returned, and a
worker answers HTTP only after that: nothing is acknowledged before it is on
disk. If the commit process dies, the workers fail the requests it had not
answered with a 503 (a retry of the same order then gets the first answer),
and the parent starts a new one.

Frames are a 4-byte little-endian length and a pickle: between processes of
one service, through a socket in a directory only the service's user can
enter. Worker to commit process: ``[(batch id, [(key, order id, client), ...]), ...]``;
back: ``[(batch id, results or the exception), ...]``. Checkout (hold, confirm, release) travels
the same way as an :class:`Op` item: each commit runs the redeems that arrived in one transaction
(``Vault.redeem_for``) and the checkout ops in the next (``Vault.checkout_for``), before answering
anyone; an op's answer is its Result, its list of Results, or the error that refused it alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import logging.config
import os
import pickle
import selectors
import signal
import socket
import struct
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import StoreError
from ..results import Result
from .metrics import METRICS_SECONDS, Metrics

_LENGTH = struct.Struct("<I")
_SEND_SECONDS = 10.0  # a worker that does not read its answers for this long is disconnected
_IDLE_SECONDS = 1.0  # statistics are flushed at most this often
FOLD_SLICES = 10  # shorter fold pauses for checkout's tail latency (redeem p99 26 ms, not 70 ms, at 14 k/s)

Item = tuple[str, str, "str | None"]


class Op(NamedTuple):
    """A checkout item: ("hold", key, order id, ttl seconds, client), or ("confirm"/"release", None, order id,
    None)."""

    action: str
    key: str | None
    order_id: str
    ttl: float | None
    client: str | None = None  # a hold's client, held to its refusal budget

    def as_call(self) -> tuple[Any, ...]:
        """The op as ``Vault.checkout_for`` takes it."""
        return (self.action, self.key, self.order_id, self.ttl, self.client) if self.action == "hold" else \
            (self.action, self.order_id)


def commit(vault: Any, flat: list[Any]) -> list[Any]:
    """Redeems in one durable transaction, then checkout ops in one more: an answer per item, in order."""
    answers: list[Any] = [None] * len(flat)
    redeems = [i for i, item in enumerate(flat) if type(item) is not Op]
    ops = [i for i, item in enumerate(flat) if type(item) is Op]
    if redeems:
        for i, result in zip(redeems, vault.redeem_for([flat[i] for i in redeems])):
            answers[i] = result
    if ops:
        for i, answer in zip(ops, vault.checkout_for([flat[i].as_call() for i in ops])):
            answers[i] = answer
    return answers


def _frame(payload: Any) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


# -- the commit process ------------------------------------------------------------------------------------


def run(store: str, pepper_file: str | None, path: str, run_dir: str | None, ready: Connection,
        parent: int | None = None) -> None:
    """Process entry: open the store, listen on ``path``, commit what workers send until SIGTERM.

    With ``parent`` (the supervisor's pid), it also stops when the supervisor dies.
    """
    from ..vault import (
        Vault,  # imported here: the module is also imported by workers that never run this
    )
    from .logs import log_config
    from .workers import die_with_parent

    logging.config.dictConfig(log_config(os.environ.get("KEYVAULT_SERVICE_LOG_FORMAT", "text")))  # as the others
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the workers first; the parent then stops this
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    if parent is not None:
        die_with_parent(parent)
    try:
        vault = Vault.open(store, pepper_file=pepper_file)
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        ready.send(str(exc))
        return
    vault.flush_every = None  # flushed below, between commits
    vault.fold_slices = FOLD_SLICES
    metrics = Metrics(Path(run_dir) if run_dir else None)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(path).unlink(missing_ok=True)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}
    commits = items = 0
    last_idle = last_metrics = time.monotonic()
    published = (0, 0)
    ready.send("ready")
    try:
        while not stopping or buffers:
            work: list[tuple[socket.socket, list[tuple[int, list[Item]]]]] = []
            for key, _ in selector.select(timeout=METRICS_SECONDS if not stopping else 0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is listener:
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    selector.register(conn, selectors.EVENT_READ)
                    buffers[conn] = bytearray()
                    continue
                frames = _receive(sock, buffers[sock])
                if frames is None:
                    selector.unregister(sock)
                    del buffers[sock]
                    sock.close()
                    continue
                work.extend((sock, frame) for frame in frames)
            if stopping and not work:
                break  # the workers have stopped: everything they sent is answered
            if work:
                flat = [item for _, frame in work for _, batch in frame for item in batch]
                try:
                    results: list[Result] | BaseException = commit(vault, flat)
                    commits += 1
                    items += len(flat)
                except Exception as exc:  # noqa: BLE001 - every request of the commit learns why it failed
                    results = exc
                _answer(work, results, buffers, selector)
            now = time.monotonic()
            if now - last_metrics >= METRICS_SECONDS and (commits, items) != published:
                last_metrics, published = now, (commits, items)
                metrics.set_commits(commits, items)
                try:
                    metrics.save()
                except OSError:
                    pass  # the next turn tries again
            if now - last_idle >= _IDLE_SECONDS or (stopping and not work):
                last_idle = now
                try:
                    vault.flush_stats()
                except StoreError:
                    pass  # the next second tries again
    finally:
        metrics.set_commits(commits, items)
        try:
            metrics.save()
        except OSError:
            pass
        for sock in list(buffers):
            sock.close()
        listener.close()
        Path(path).unlink(missing_ok=True)
        vault.close()


def _receive(sock: socket.socket, buffer: bytearray) -> list[list[tuple[int, list[Item]]]] | None:
    """Complete frames read from a worker (None when it closed its end)."""
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return None
            buffer += chunk
            if len(chunk) < 1 << 20:
                break
    except BlockingIOError:
        pass
    except OSError:
        return None
    frames = []
    while len(buffer) >= _LENGTH.size:
        (size,) = _LENGTH.unpack_from(buffer)
        if len(buffer) < _LENGTH.size + size:
            break
        frames.append(pickle.loads(bytes(buffer[_LENGTH.size:_LENGTH.size + size])))
        del buffer[:_LENGTH.size + size]
    return frames


def _answer(work: list[tuple[socket.socket, list[tuple[int, list[Item]]]]], results: list[Result] | BaseException,
            buffers: dict[socket.socket, bytearray], selector: selectors.BaseSelector) -> None:
    """Send each worker the answers to its batches, in one frame per worker."""
    replies: dict[socket.socket, list[tuple[int, Any]]] = {}
    start = 0
    for sock, frame in work:
        for batch_id, batch in frame:
            answer = results if isinstance(results, BaseException) else results[start:start + len(batch)]
            start += len(batch)
            replies.setdefault(sock, []).append((batch_id, answer))
    for sock, reply in replies.items():
        if sock not in buffers:
            continue
        try:
            sock.settimeout(_SEND_SECONDS)
            sock.sendall(_frame(reply))
            sock.setblocking(False)
        except OSError:  # the worker is gone or stuck: it fails its own waiting requests
            selector.unregister(sock)
            del buffers[sock]
            sock.close()


# -- a worker's end -------------------------------------------------------------------------------------------


class RemoteCommitter:
    """A worker's client of the commit process: ``await submit(items)`` answers once they are durable."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[list[Result]]] = {}
        self._outbox: list[tuple[int, list[Item]]] = []
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Lock | None = None

    async def submit(self, items: list[Item]) -> list[Result]:
        """Send one request's items (joined with this loop turn's others) and wait for their commit."""
        if self._writer is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        batch_id = next(self._ids)
        future: asyncio.Future[list[Result]] = loop.create_future()
        self._pending[batch_id] = future
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append((batch_id, items))
        return await future

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return
            for _ in range(50):  # the commit process may be restarting: wait up to 5 s for it
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self._path))
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            else:
                raise StoreError("the service's commit process is not running; retry in a moment")
            self._writer = writer
            asyncio.get_running_loop().create_task(self._read(reader, writer))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if not outbox:
            return
        if self._writer is None:
            self._fail([batch_id for batch_id, _ in outbox])
            return
        self._writer.write(_frame(outbox))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(_LENGTH.size)
                (size,) = _LENGTH.unpack(head)
                for batch_id, answer in pickle.loads(await reader.readexactly(size)):
                    future = self._pending.pop(batch_id, None)
                    if future is None or future.done():
                        continue
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        except (OSError, EOFError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            self._fail(list(self._pending))

    def _fail(self, batch_ids: list[int]) -> None:
        """The commit process went away before answering: these requests were not acknowledged."""
        for batch_id in batch_ids:
            future = self._pending.pop(batch_id, None)
            if future is not None and not future.done():
                future.set_exception(StoreError("the service's commit process stopped before answering; retry "
                                                "with the same order id (it is safe: a committed redeem answers "
                                                "as before)"))

    def stop(self) -> None:
        """Close the connection (after the server answered every request in flight)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
