"""keyvault for asyncio programs: :class:`AsyncVault`, the :class:`~keyvault.Vault` with awaitable methods.

    async with await AsyncVault.open("shop-store") as vault:
        result = await vault.verify(key)
        result = await vault.redeem(key, order_id)

Every call that touches the store runs in a thread pool the AsyncVault owns,
never on the event loop: reads (verify, trace, stats, ...) in one pool, writes
(redeem, void, blacklist, ...) in another, so a verify never queues behind
redeems waiting for the disk. Redeems from many coroutines run in several
threads at once and so share group commits, as concurrent ``Vault.redeem``
calls from threads do (one fsync for many redeems).

Cancelling an ``await vault.redeem(...)`` does not stop a redeem that a thread
has begun: it may still complete, durably. Retry with the same order id to
learn the answer: the order that holds a key gets ``accepted`` again.

The compiled core holds the GIL while it checks a batch, so ``verify_many``
and ``redeem_many`` with very large batches still pause the loop for their
length (1,000 keys: about 1 ms; 10,000: about 40 ms): pass batches of a
few thousand keys at most.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from .engine import BatchInfo, BlacklistEntry, Catalog, Grant, Policy, Progress, ThrottlePolicy
from .engine.answers import (Activity, Audit, Backup, CheckReport, CheckRow, LockedCard, Order, Page, ReceiptProof,
                              Restore, Stats, Trace)
from .engine.shapes import CheckpointEntry, LotReceived, LotSent, TokenEntry, TrustEntry, TrustRecord
from .errors import ClosedError, KeyvaultError
from .formats.bundle import Check
from .formats.identity import Identity, PublicIdentity, Rotation
from .results import Result
from .vault import Vault
from .vocabulary import Level, Role

__all__ = ["AsyncVault", "READ_THREADS", "WRITE_THREADS"]

P = ParamSpec("P")
T = TypeVar("T")

#: Threads for reads (verify, trace, stats, ...): the checks run in C under the GIL, so more than a few
#: only contend for it.
READ_THREADS = 4
#: Threads for writes: concurrent redeems wait in these threads for the commit that carries them, so this
#: bounds how many share one group commit (one fsync).
WRITE_THREADS = 16


class _Offload:
    """The AsyncVault's two thread pools, and whether it is closed."""

    def __init__(self, read_threads: int, write_threads: int) -> None:
        if read_threads < 1 or write_threads < 1:
            raise ValueError("read_threads and write_threads must be at least 1")
        self.reads = ThreadPoolExecutor(read_threads, thread_name_prefix="keyvault-read")
        self.writes = ThreadPoolExecutor(write_threads, thread_name_prefix="keyvault-write")
        self.read_threads, self.write_threads = read_threads, write_threads
        self.closed = False

    def read(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        """Run a read in the read pool."""
        return self._run(self.reads, functools.partial(fn, *args, **kwargs))

    def write(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        """Run a write in the write pool."""
        return self._run(self.writes, functools.partial(fn, *args, **kwargs))

    def _run(self, pool: Executor, call: Callable[[], T]) -> Awaitable[T]:
        if self.closed:
            raise ClosedError("this AsyncVault is closed; open it again with await AsyncVault.open()")
        loop = asyncio.get_running_loop()
        try:
            return loop.run_in_executor(pool, call)
        except RuntimeError:  # the pools were shut down under a call from another thread
            raise ClosedError("this AsyncVault is closed; open it again with await AsyncVault.open()") from None

    def start_threads(self) -> None:
        """Start every thread now, from a write thread (the one calling): a thread started by a call would
        hold up the loop submitting it until the new thread runs, which on a busy machine takes milliseconds.
        If they do not all start within a few seconds, the rest start as calls need them."""
        for pool, others in ((self.reads, self.read_threads), (self.writes, self.write_threads - 1)):
            started = threading.Barrier(others + 1)
            try:
                for _ in range(others):
                    pool.submit(_wait, started)
            except RuntimeError:  # shut down meanwhile (an abandoned open): nothing to start
                started.abort()
                return
            _wait(started)

    def shutdown(self) -> None:
        """Wait for every call already running or queued, then stop the threads (blocking)."""
        self.reads.shutdown(wait=True)
        self.writes.shutdown(wait=True)


def _wait(barrier: threading.Barrier) -> None:
    """Wait at ``barrier``, a few seconds at most."""
    try:
        barrier.wait(5)
    except threading.BrokenBarrierError:
        pass


def _close_opened(opening: Future[Vault]) -> None:
    """Close the Vault an abandoned open made (nothing when it failed or never ran)."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class AsyncBlacklist:
    """``vault.blacklist``: refuse keys, serials, batches or suppliers, and lift the refusals."""

    def __init__(self, vault: Vault, io: _Offload) -> None:
        self._vault = vault
        self._io = io

    async def add(self, level: Level | str, target: str, reason: str) -> BlacklistEntry:
        """Refuse a key, serial, batch or supplier from the next verify on, in every process."""
        return await self._io.write(self._vault.blacklist.add, level, target, reason)

    async def lift(self, level: Level | str, target: str, reason: str) -> BlacklistEntry:
        """Remove a blacklist entry; lifting needs a reason too."""
        return await self._io.write(self._vault.blacklist.lift, level, target, reason)

    async def entries(self) -> list[BlacklistEntry]:
        """Every blacklist entry: suppliers, then batches, then keys."""
        return await self._io.read(self._vault.blacklist.entries)


class AsyncTrust:
    """``vault.trust``: the identities whose manifests, transfers and lots this store accepts."""

    def __init__(self, vault: Vault, io: _Offload) -> None:
        self._vault = vault
        self._io = io

    async def add(self, identity: PublicIdentity,
                  role: Role | str | Sequence[Role | str] | None = None) -> TrustRecord:
        """Pin a public identity in a role or several (default: the roles its file declares, else supplier)."""
        return await self._io.write(self._vault.trust.add, identity, role)

    async def remove(self, identity: PublicIdentity) -> TrustRecord:
        """Unpin a public identity (what it signed before stays; nothing new is accepted)."""
        return await self._io.write(self._vault.trust.remove, identity)

    async def list(self) -> list[TrustEntry]:
        """Every pinned identity."""
        return await self._io.read(self._vault.trust.list)

    async def rotate(self, rotation: Rotation) -> TrustRecord:
        """Accept a key rotation signed by a pinned key and its successor."""
        return await self._io.write(self._vault.trust.rotate, rotation)


class AsyncTokens:
    """``vault.tokens``: the bearer tokens of the HTTP service."""

    def __init__(self, vault: Vault, io: _Offload) -> None:
        self._vault = vault
        self._io = io

    async def create(self, name: str, scope: str) -> str:
        """Make a token for ``name`` with ``scope``; returns it (only its hash is kept: show it once)."""
        return await self._io.write(self._vault.tokens.create, name, scope)

    async def revoke(self, name: str) -> None:
        """Revoke a token: every server process refuses it from its next request on."""
        await self._io.write(self._vault.tokens.revoke, name)

    async def list(self) -> list[TokenEntry]:
        """Each token's name, scope and creation time (never the token or its hash)."""
        return await self._io.read(self._vault.tokens.list)

    async def authorize(self, token: str) -> Grant | None:
        """The grant a presented token carries, or None when it is unknown or revoked."""
        return await self._io.read(self._vault.tokens.authorize, token)


class AsyncVault:
    """A keyvault store, opened, for asyncio: :class:`~keyvault.Vault`'s methods, awaitable.

    Make one with ``await AsyncVault.open(path)``, which starts its threads too, or ``AsyncVault(vault)``
    around a Vault it then owns (its threads start as calls need them); use ``async with``, or ``await
    close()``. Callbacks (``progress``, ``on_check``) run in a worker thread.
    """

    def __init__(self, vault: Vault, *, read_threads: int = READ_THREADS, write_threads: int = WRITE_THREADS
                 ) -> None:
        self._setup(vault, _Offload(read_threads, write_threads))

    def _setup(self, vault: Vault, io: _Offload) -> None:
        self._io = io
        #: The synchronous Vault behind this one (closed with it): for tools and tests.
        self.vault = vault
        self.blacklist = AsyncBlacklist(vault, io)
        self.trust = AsyncTrust(vault, io)
        self.tokens = AsyncTokens(vault, io)
        self._closing: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, pepper_file: str | os.PathLike[str] | None = None,
                   create: bool = False, read_threads: int = READ_THREADS,
                   write_threads: int = WRITE_THREADS) -> AsyncVault:
        """Open the store at ``path`` (created first when ``create`` is set and none is there)."""
        opener = functools.partial(Vault.open, path, pepper_file=pepper_file, create=create)
        return await cls._opened(opener, _Offload(read_threads, write_threads))

    @classmethod
    async def init(cls, path: str | os.PathLike[str], *, pepper_file: str | os.PathLike[str] | None = None,
                   read_threads: int = READ_THREADS, write_threads: int = WRITE_THREADS) -> AsyncVault:
        """Create a new store in an empty or new directory, with a new 0600 pepper file."""
        opener = functools.partial(Vault.init, path, pepper_file=pepper_file)
        return await cls._opened(opener, _Offload(read_threads, write_threads))

    @classmethod
    async def _opened(cls, opener: Callable[[], Vault], io: _Offload) -> AsyncVault:
        """Open in the write pool; if the await is cancelled, a store that still opens is closed again."""

        def open_and_start() -> Vault:
            vault = opener()
            try:
                io.start_threads()
            except BaseException:
                vault.close()
                raise
            return vault

        running = io.writes.submit(open_and_start)
        try:
            vault = await asyncio.wrap_future(running)
        except BaseException:
            io.closed = True
            # Cancelled while the thread opens it: close what it opens (a store left open would hold its
            # LMDB environment, and opening it again in this process would break LMDB's locks).
            running.add_done_callback(_close_opened)
            io.reads.shutdown(wait=False)
            io.writes.shutdown(wait=False)
            raise
        made = cls.__new__(cls)
        made._setup(vault, io)
        return made

    @property
    def path(self) -> Path:
        """The store directory."""
        return self.vault.path

    async def close(self) -> None:
        """Refuse new calls, wait for those under way (a redeem begun still commits), then close the store."""
        if self._closing is None:
            self._io.closed = True
            self._closing = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, self._close))
        # Shielded: a cancelled close() still closes, in its thread; another close() waits for the same one.
        await asyncio.shield(self._closing)

    def _close(self) -> None:
        self._io.shutdown()
        self.vault.close()

    async def __aenter__(self) -> AsyncVault:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncVault {str(self.path)!r}>"

    # -- settings (in memory: no store access) ---------------------------------------------------

    @property
    def flush_every(self) -> float | None:
        """Seconds between automatic writes of refused-attempt counts (None: only flush_stats() and close())."""
        return self.vault.flush_every

    @flush_every.setter
    def flush_every(self, seconds: float | None) -> None:
        self.vault.flush_every = seconds

    @property
    def fold_slices(self) -> int:
        """How many folds a full overlay takes: 1 for bulk redeems, 10 for shorter pauses."""
        return self.vault.fold_slices

    @fold_slices.setter
    def fold_slices(self, slices: int) -> None:
        self.vault.fold_slices = slices

    @property
    def engine_identity(self) -> PublicIdentity:
        """This store's engine key (it signs the checkpoints): give its public file to bundle verifiers."""
        return self.vault.engine_identity

    # -- checks ------------------------------------------------------------------------------------

    async def verify(self, key: str, *, client: str | None = None) -> Result:
        """Check a key without changing anything: ``valid``, or why it would be refused."""
        return await self._io.read(self.vault.verify, key, client=client)

    async def verify_many(self, keys: Iterable[str], *, client: str | None = None) -> list[Result]:
        """Verify many keys in one read transaction; one Result per key, in input order."""
        return await self._io.read(self.vault.verify_many, list(keys), client=client)

    async def redeem(self, key: str, order_id: str, *, client: str | None = None) -> Result:
        """Spend a key for an order, durably: ``accepted`` once; a retry of that order gets the same answer.

        If the await is cancelled, the redeem may still complete: retry with the same order id to learn it.
        """
        return await self._io.write(self.vault.redeem, key, order_id, client=client)

    async def redeem_many(self, items: Iterable[tuple[str, str]], *, client: str | None = None) -> list[Result]:
        """Redeem (key, order id) pairs in one durable transaction; one Result per pair, in input order."""
        return await self._io.write(self.vault.redeem_many, list(items), client=client)

    async def redeem_for(self, items: Sequence[tuple[str, str, str | None]]) -> list[Result]:
        """Redeem (key, order id, client) triples from many callers in one durable transaction."""
        return await self._io.write(self.vault.redeem_for, list(items))

    async def hold(self, key: str, order_id: str, ttl: float, *, client: str | None = None) -> Result:
        """Hold a key for an order for ``ttl`` seconds: ``held`` with ``expires_at`` (a retry: the same answer);
        ``client``'s refusal budget is charged as a verify's is."""
        return await self._io.write(self.vault.hold, key, order_id, ttl, client=client)

    async def confirm(self, order_id: str) -> list[Result]:
        """Turn every hold of an order into a redeem: ``accepted`` per key; an ended hold is ``expired_hold``."""
        return await self._io.write(self.vault.confirm, order_id)

    async def release(self, order_id: str) -> list[Result]:
        """Give up every hold of an order: ``released`` per key."""
        return await self._io.write(self.vault.release, order_id)

    async def checkout_for(self, ops: Sequence[tuple[Any, ...]]) -> list[Result | list[Result] | KeyvaultError]:
        """Holds, confirms and releases from many callers in one durable transaction; an answer per op."""
        return await self._io.write(self.vault.checkout_for, list(ops))

    async def order(self, order_id: str) -> Order:
        """Every key an order holds or held (serials, never keys), with its state and times, and the events."""
        return await self._io.read(self.vault.order, order_id)

    async def void(self, key_or_serial: str, reason: str) -> Result:
        """Withdraw an unused key (refund, recall): ``void`` when done; a redeemed key is refused."""
        return await self._io.write(self.vault.void, key_or_serial, reason)

    async def catalog(self) -> Catalog:
        """A current snapshot of batches, suppliers and blacklist entries."""
        return await self._io.read(self.vault.catalog)

    async def authorize(self, token: str) -> Grant | None:
        """The grant a presented token carries, or None (``vault.tokens.authorize``)."""
        return await self._io.read(self.vault.authorize, token)

    # -- issuing and importing -------------------------------------------------------------------

    async def issue_batch(self, identity: Identity, product: str, count: int, *,
                          keys_out: str | os.PathLike[str], manifest_out: str | os.PathLike[str],
                          valid_from: int | None = None, valid_until: int | None = None,
                          progress: Progress | None = None, long_form: bool = False) -> BatchInfo:
        """Issue ``count`` new keys: printable export (0600, once), signed manifest, records in this store."""
        return await self._io.write(self.vault.issue_batch, identity, product, count, keys_out=keys_out,
                                    manifest_out=manifest_out, valid_from=valid_from, valid_until=valid_until,
                                    progress=progress, long_form=long_form)

    async def import_cards(self, identity: Identity, product: str, cards_csv: str | os.PathLike[str], *,
                           manifest_out: str | os.PathLike[str], valid_from: int | None = None,
                           valid_until: int | None = None, progress: Progress | None = None) -> BatchInfo:
        """Make a batch of upstream cards (a CSV of codes, or card numbers and passwords)."""
        return await self._io.write(self.vault.import_cards, identity, product, cards_csv,
                                    manifest_out=manifest_out, valid_from=valid_from, valid_until=valid_until,
                                    progress=progress)

    async def import_manifest(self, path: str | os.PathLike[str], *,
                              progress: Progress | None = None) -> tuple[BatchInfo, bool]:
        """Import a supplier's signed manifest: (batch, True if it was new, False if already here)."""
        return await self._io.write(self.vault.import_manifest, path, progress=progress)

    # -- throttling ------------------------------------------------------------------------------

    async def throttle_policy(self, client: str | None = None) -> ThrottlePolicy:
        """The policy that applies to ``client`` (its own, or the store's default)."""
        return await self._io.read(self.vault.throttle_policy, client)

    async def set_throttle_policy(self, policy: ThrottlePolicy, client: str | None = None) -> None:
        """Set the store's default policy, or one client's own (``ThrottlePolicy(None)``: never throttled)."""
        await self._io.write(self.vault.set_throttle_policy, policy, client)

    async def unblock(self, client: str) -> None:
        """Lift a client's block now and restart its count (a support action)."""
        await self._io.write(self.vault.unblock, client)

    async def unlock_card(self, card_number: str) -> bool:
        """Unlock an imported card locked after too many wrong passwords; False when it had no lock."""
        return await self._io.write(self.vault.unlock_card, card_number)

    async def locked_cards(self) -> list[LockedCard]:
        """Imported cards given wrong passwords: number, how many, and when they locked (None: not yet)."""
        return await self._io.read(self.vault.locked_cards)

    async def backup(self, dest: str | os.PathLike[str], *, with_pepper: bool = False) -> Backup:
        """Copy the store, while it serves, into the new or empty directory ``dest``, checked: its manifest."""
        return await self._io.read(self.vault.backup, dest, with_pepper=with_pepper)

    @staticmethod
    async def restore(src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                      since: str | Sequence[str] | None = None,
                      pepper_file: str | os.PathLike[str] | None = None) -> Restore:
        """Restore a backup into the new store directory ``dest``, checked (in a worker thread)."""
        return await asyncio.to_thread(Vault.restore, src, dest, since=since, pepper_file=pepper_file)

    # -- reports ---------------------------------------------------------------------------------

    async def flush_stats(self) -> None:
        """Write buffered refused-attempt counts to the store."""
        await self._io.write(self.vault.flush_stats)

    async def stats(self) -> Stats:
        """Per-supplier and per-batch counts: issued, imported, redeemed, void, blacklisted, refused."""
        return await self._io.read(self.vault.stats)

    async def trace(self, key_or_serial: str) -> Trace:
        """Where a key came from and what happened to it: supplier, batch, product, history."""
        return await self._io.read(self.vault.trace, key_or_serial)

    async def activity(self, since: int | None = None, until: int | None = None, *,
                       daily: bool = False) -> Activity:
        """Redeems and voids in [since, until) (ms; None: open), per supplier and batch, and per UTC day."""
        return await self._io.read(self.vault.activity, since, until, daily=daily)

    async def key_report(self, batch: str) -> AsyncIterator[dict[str, Any]]:
        """Each key of a batch, streamed (``async for row in await vault.key_report(batch)``): one read thread
        walks the batch and hands rows over 1,000 at a time, at most 4 chunks ahead of the reader."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[dict[str, Any]] | BaseException | None] = asyncio.Queue(maxsize=4)
        stop = threading.Event()

        def put(item: list[dict[str, Any]] | BaseException | None) -> bool:
            handed = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            while True:
                try:
                    handed.result(timeout=0.2)
                    return True
                except TimeoutError:
                    if stop.is_set() or self._io.closed or loop.is_closed():
                        handed.cancel()
                        return False  # the reader left (or the vault closes): stop walking

        def produce() -> None:
            try:
                rows = self.vault.key_report(batch)
                try:
                    chunk: list[dict[str, Any]] = []
                    for row in rows:
                        chunk.append(row)
                        if len(chunk) == 1000:
                            if stop.is_set() or not put(chunk):
                                return
                            chunk = []
                    if chunk and not put(chunk):
                        return
                finally:
                    rows.close()
                put(None)
            except Exception as exc:  # handed to the reader, raised where it iterates
                put(exc)

        self._io.read(produce)

        async def rows() -> AsyncIterator[dict[str, Any]]:
            try:
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    for row in item:
                        yield row
            finally:
                stop.set()

        return rows()

    async def page(self, what: str, *, after: str | None = None, limit: int = 100) -> Page:
        """One page of ``batches``, ``manifests``, ``blacklist`` or ``tokens`` after the cursor ``after``."""
        return await self._io.read(self.vault.page, what, after=after, limit=limit)

    async def check(self, on_check: Callable[[CheckRow], None] | None = None) -> CheckReport:
        """Verify every part of the store and report check by check (``keyvault check``); never raises."""
        return await self._io.read(self.vault.check, on_check)

    # -- provenance --------------------------------------------------------------------------------

    async def checkpoint(self) -> str:
        """Sign a checkpoint of the event log now (or return the newest if it covers every event): the note."""
        return await self._io.write(self.vault.checkpoint)

    async def checkpoints(self) -> list[CheckpointEntry]:
        """Every checkpoint the engine signed, oldest first."""
        return await self._io.read(self.vault.checkpoints)

    async def checkpoint_policy(self) -> Policy:
        """When checkpoints are signed by themselves (a method here: it reads the store)."""
        return await self._io.read(lambda: self.vault.checkpoint_policy)

    async def set_checkpoint_policy(self, every_events: int, every_seconds: int) -> None:
        """Sign checkpoints by themselves after this many events or seconds, whichever comes first."""
        await self._io.write(self.vault.set_checkpoint_policy, every_events, every_seconds)

    async def check_since(self, old_note: str) -> Check:
        """Is this store's log an extension of the one ``old_note`` (a checkpoint it signed earlier) saw?"""
        return await self._io.read(self.vault.check_since, old_note)

    async def verify_log(self) -> int:
        """Walk the event log: chain, tree and checkpoints; how many events. StoreCorruptError if altered."""
        return await self._io.read(self.vault.verify_log)

    async def send_lot(self, sender: Identity, batch: str, recipient: PublicIdentity, *,
                       manifest: str | os.PathLike[str], out: str | os.PathLike[str],
                       ranges: str | None = None) -> LotSent:
        """Transfer (part of) a batch you hold to ``recipient``: a signed record, and a lot sealed to them."""
        return await self._io.write(self.vault.send_lot, sender, batch, recipient, manifest=manifest, out=out,
                                    ranges=ranges)

    async def receive_lot(self, lot: str | os.PathLike[str], recipient: Identity, *,
                          manifest_out: str | os.PathLike[str] | None = None) -> LotReceived:
        """Open a lot sealed to you: check every signature and hop, record custody, import its batch."""
        return await self._io.write(self.vault.receive_lot, lot, recipient, manifest_out=manifest_out)

    async def audit(self) -> Audit:
        """Double sales (with both signed records), withheld or forked manifests, and the event log's check."""
        return await self._io.read(self.vault.audit)

    async def receipt(self, key_or_serial: str) -> str:
        """The engine-signed receipt of a key's redeem (by key or serial): one line, ``KVR1.`` and base64url."""
        return await self._io.read(self.vault.receipt, key_or_serial)

    async def upgrade_receipt(self, receipt: str) -> ReceiptProof:
        """A receipt of this store with its event's inclusion proof under a signed checkpoint (JSON)."""
        return await self._io.write(self.vault.upgrade_receipt, receipt)

    async def trace_bundle(self, key_or_serial: str) -> dict[str, Any]:
        """A self-contained proof of a key's story, checkable offline (``keyvault verify-bundle``)."""
        return await self._io.read(self.vault.trace_bundle, key_or_serial)
