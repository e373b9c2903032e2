"""Refusal budgets per client and wrong passwords per card, shared by every process on a store.

A second, small LMDB environment (``throttle.mdb`` in the store directory,
made when a client is first named) holds one record per client that was
refused lately: the start of its counting window, the refusals in it, the
slots of its budget that calls in flight have reserved, and until when it is
blocked. A call reserves budget in one write transaction before it judges a
chunk of keys no larger than what it reserved, so concurrent calls in any
number of processes never judge more refusals than the budget holds. Beside
the clients (under keys no client id can take: they start with a NUL byte)
are the imported cards that were given wrong passwords. It is written
without fsync: throttling state protects against guessing, it does not need
to survive a power cut, and a refused verify must not cost a disk flush. All
use in a process goes through one lock, so a map resize never races a
reader (py-lmdb #97).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from ..errors import ClosedError, StoreError
from .lmdbstore import MAX_READERS, allocate_lock_file, unusable_after_fork

T = TypeVar("T")
_RECORD = struct.Struct(">QIIQ")  # window start (ms), refusals in it, slots reserved in flight, blocked until (ms)
_OLD_RECORD = struct.Struct(">QIQ")  # the record of earlier releases: no reservations
_CARD = struct.Struct(">IIQ")  # wrong passwords on a card, attempts on it in flight, when it was locked (ms; 0: not)
CARD_PREFIX = b"\0card:"  # a card's record: this, then its folded card number (client ids are printable)
_INITIAL_MAP = 16 << 20  # about 150,000 clients at a time; doubles when full


def _client(value: bytes | None, now: int) -> list[int]:
    """A client's record as [start, refused, reserved, until] (a fresh one when absent or unreadable)."""
    if value is not None and len(value) == _RECORD.size:
        return list(_RECORD.unpack(value))
    if value is not None and len(value) == _OLD_RECORD.size:
        start, refused, until = _OLD_RECORD.unpack(value)
        return [start, refused, 0, until]
    return [now, 0, 0, 0]  # holds nothing durable: a damaged record starts afresh


@dataclass(frozen=True, slots=True)
class Charge:
    """What one reservation transaction did: slots taken, the window they belong to, when to try again."""

    taken: int
    window: int  # the window's start (ms): give the slots back under it
    retry_at: int  # until when the client is blocked, or when its window ends (when nothing was taken)
    blocked: bool


class ThrottleStore:
    """One process's handle on a store's throttle environment."""

    def __init__(self, path: Path) -> None:
        allocate_lock_file(path.with_name(path.name + "-lock"))  # a sparse lock file can SIGBUS on a full disk
        try:
            self._env = lmdb.open(str(path), map_size=_INITIAL_MAP, subdir=False, sync=False, metasync=False,
                                  max_readers=MAX_READERS, readahead=False, mode=0o600)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the throttle state {path}: {exc}; it holds nothing durable: "
                             f"remove {path} and {path}-lock and try again") from None
        self._env.reader_check()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._usable = True  # False in a child after fork()
        unusable_after_fork(self)

    def _check(self) -> None:
        if self._closed or not self._usable:
            raise ClosedError("this vault is closed (or was opened before fork()); open it again")

    def _write(self, work: Callable[[Any], T], now: int, window_ms: int = 0) -> T:
        """Run ``work`` in one write transaction (lock held), growing the map when it is full."""
        self._check()
        with self._lock:
            for _ in range(8):
                try:
                    with self._env.begin(write=True) as txn:
                        return work(txn)
                except lmdb.MapFullError:  # full: first forget clients that are done with, then grow
                    if not self._forget(now, window_ms):
                        self._env.set_mapsize(self._env.info()["map_size"] * 2)
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)
                except lmdb.Error as exc:  # a full disk, most likely
                    raise StoreError(f"could not write the throttle state ({exc}); check free disk space") from None
        raise StoreError("could not write the throttle state; check free disk space")

    def charge(self, client: bytes, *, window: int, release: int, refused: int, want: int, now: int,
               limit: int, window_ms: int, block_ms: int) -> Charge:
        """Settle and reserve in one transaction: give back ``release`` slots reserved in ``window``, count
        ``refused`` refusals (blocking the client once more than ``limit`` fall in one window), then
        reserve up to ``want`` slots of what is left of the window's ``limit + 1``.
        """

        def work(txn: Any) -> Charge:
            start, count, reserved, until = _client(txn.get(client), now)
            if until <= now and (until or now - start >= window_ms):
                start, count, reserved, until = now, 0, 0, 0  # a new window: what was reserved before is void
            elif start == window:
                reserved = max(0, reserved - release)
            count = min(count + refused, 0xFFFFFFFF)
            if refused and count > limit:
                until = max(until, now + block_ms)
            taken = max(0, min(want, limit + 1 - count - reserved)) if until <= now else 0
            reserved += taken
            txn.put(client, _RECORD.pack(start, count, reserved, until))
            blocked = until > now
            return Charge(taken, start, until if blocked else start + window_ms, blocked)

        return self._write(work, now, window_ms)

    def release(self, client: bytes, window: int, slots: int) -> None:
        """Give back ``slots`` reserved in ``window`` that judged no refused key."""

        def work(txn: Any) -> None:
            value = txn.get(client)
            if value is not None and len(value) == _RECORD.size:
                start, count, reserved, until = _RECORD.unpack(value)
                if start == window and reserved:
                    txn.put(client, _RECORD.pack(start, count, max(0, reserved - slots), until))

        self._write(work, 0)

    def card_attempt(self, card: bytes, limit: int, now: int) -> tuple[bool, int]:
        """Reserve one password attempt on an imported card: (True, 0) to go on; (False, when it was
        locked), or (False, 0) while attempts in flight could use up what is left of ``limit``."""

        def work(txn: Any) -> tuple[bool, int]:
            key = CARD_PREFIX + card
            value = txn.get(key)
            wrong, flying, locked = _CARD.unpack(value) if value is not None and len(value) == _CARD.size else (0, 0, 0)
            if locked or wrong + flying >= limit:
                return False, locked
            txn.put(key, _CARD.pack(wrong, flying + 1, 0))
            return True, 0

        return self._write(work, now)

    def card_done(self, card: bytes, right: bool, limit: int, now: int) -> None:
        """Settle an attempt: a wrong password is counted, and the card locked once ``limit`` were wrong."""

        def work(txn: Any) -> None:
            key = CARD_PREFIX + card
            value = txn.get(key)
            wrong, flying, locked = _CARD.unpack(value) if value is not None and len(value) == _CARD.size else (0, 1, 0)
            flying, wrong = max(0, flying - 1), wrong + (not right)
            if wrong >= limit and not locked:
                locked = now
            if wrong or flying or locked:
                txn.put(key, _CARD.pack(wrong, flying, locked))
            else:
                txn.delete(key)

        self._write(work, now)

    def locked_cards(self) -> list[tuple[str, int, int]]:
        """(card number, wrong passwords, locked at ms or 0) of every card given wrong passwords."""
        self._check()
        with self._lock, self._env.begin() as txn:
            cursor = txn.cursor()
            out = []
            if cursor.set_range(CARD_PREFIX):
                for key, value in cursor:
                    if not bytes(key).startswith(CARD_PREFIX):
                        break
                    if len(value) == _CARD.size:
                        wrong, _, locked = _CARD.unpack(value)
                        out.append((bytes(key)[len(CARD_PREFIX):].decode("ascii", "replace"), wrong, locked))
            return out

    def unlock_card(self, card: bytes) -> bool:
        """Unlock a card and forget its wrong passwords; False when it had none."""
        return self._write(lambda txn: bool(txn.delete(CARD_PREFIX + card)), 0)

    def clear(self, client: bytes) -> None:
        """Forget a client: unblocked, its count restarted."""
        self._write(lambda txn: txn.delete(client), 0)

    def _forget(self, now: int, window_ms: int) -> int:
        """Drop clients neither blocked nor counted within the last window (lock held); how many."""
        with self._env.begin(write=True) as txn:
            stale = []
            for key, value in txn.cursor():
                if bytes(key).startswith(CARD_PREFIX):
                    continue  # a card's wrong passwords are kept until an operator unlocks it
                start, _, _, until = _client(bytes(value), now)
                if now - start >= max(window_ms, 1) and until <= now:
                    stale.append(bytes(key))
            for key in stale:
                txn.delete(key)
            return len(stale)

    def close(self) -> None:
        """Close the environment."""
        if not self._closed:
            self._closed = True
            if os.getpid() == self._pid:
                self._env.close()
