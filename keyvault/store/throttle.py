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

Every record ends with an 8-byte BLAKE2b checksum over its key and body, so
damage fails closed: a damaged client record blocks that client for one
block (``keyvault throttle unblock`` lifts it), a damaged card record locks the
card (``keyvault throttle unlock-card``). A flipped bit never unblocks a
client nor unlocks a card.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from ..clock import now_ms
from ..errors import ClosedError, StoreError
from .lmdbstore import MAX_READERS, allocate_lock_file, unusable_after_fork

T = TypeVar("T")
# window start (ms), refusals in it, slots reserved by calls in flight, blocked until (ms), last charged (ms)
_RECORD = struct.Struct(">QIIQQ")
_OLD_RECORD = struct.Struct(">QIQ")  # the record of earlier releases: no reservations
_CARD = struct.Struct(">IIQ")  # wrong passwords on a card, attempts on it in flight, when it was locked (ms; 0: not)
CARD_PREFIX = b"\0card:"  # a card's record: this, then its folded card number (client ids are printable)
_INITIAL_MAP = 16 << 20  # about 150,000 clients at a time; doubles when full
_SUM = 8  # the checksum ending every record
DAMAGED_BLOCK_MS = 60_000  # a client whose record is damaged is blocked this long (at least its policy's block)


def _sum(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(bytes(key) + b"\0" + body, digest_size=_SUM, person=b"kv1/throttle").digest()


def _sealed(key: bytes, body: bytes) -> bytes:
    """A record as stored: its body, then the checksum over its key and body."""
    return body + _sum(key, body)


def _opened(key: bytes, value: bytes | None, layout: struct.Struct) -> tuple[int, ...] | None:
    """The fields of a sealed record; None when it is damaged (wrong size, or a checksum that fails)."""
    if value is None or len(value) != layout.size + _SUM:
        return None
    value = bytes(value)
    if not hmac.compare_digest(value[-_SUM:], _sum(key, value[:-_SUM])):
        return None
    return layout.unpack(value[:-_SUM])


def _client(key: bytes, value: bytes | None, now: int, block_ms: int = DAMAGED_BLOCK_MS) -> list[int]:
    """A client's record as [start, refused, reserved, until, touched]: fresh when absent; blocked for
    ``block_ms`` from ``now`` when damaged (fails closed: a flipped bit never lifts a block)."""
    if value is None:
        return [now, 0, 0, 0, now]
    fields = _opened(key, value, _RECORD)
    if fields is not None:
        return list(fields)
    if len(value) == _RECORD.size:  # an earlier release's record (unsealed)
        return list(_RECORD.unpack(bytes(value)))
    if len(value) == _OLD_RECORD.size:  # an earlier release's record (unsealed, no reservations)
        start, refused, until = _OLD_RECORD.unpack(bytes(value))
        return [start, refused, 0, until, now]
    return [now, 0, 0, now + max(block_ms, DAMAGED_BLOCK_MS), now]


def _card(key: bytes, value: bytes | None, now: int) -> tuple[int, int, int]:
    """A card's (wrong, in flight, locked at ms): (0, 0, 0) when absent; locked now when damaged (fails closed:
    a flipped bit never unlocks a card nor forgets its wrong passwords)."""
    if value is None:
        return 0, 0, 0
    fields = _opened(key, value, _CARD)
    if fields is not None:
        wrong, flying, locked = fields
        return wrong, flying, locked
    if len(value) == _CARD.size:  # an earlier release's record (unsealed)
        wrong, flying, locked = _CARD.unpack(bytes(value))
        return wrong, flying, locked
    return 0, 0, max(now, 1)


@dataclass(frozen=True, slots=True)
class Charge:
    """What one reservation transaction did: slots taken, the window they belong to, when to try again."""

    taken: int
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

    def blocked_until(self, client: bytes) -> int:
        """Until when (ms) the client is blocked; 0 when it is not (one read)."""
        self._check()
        with self._lock:
            for _ in range(4):
                try:
                    with self._env.begin() as txn:
                        value = txn.get(client)
                    return _client(client, value, now_ms())[3] if value else 0
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)
        raise StoreError("the throttle state kept being resized by another process; try again")

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

    def charge(self, client: bytes, *, release: int, refused: int, want: int, now: int, limit: int,
               window_ms: int, block_ms: int) -> Charge:
        """Settle and reserve in one transaction: give back ``release`` slots, count ``refused`` refusals
        (blocking the client once more than ``limit`` fall in one window), then reserve up to ``want``
        slots of what is left of the window's ``limit + 1``.

        Slots reserved by calls in flight outlast the window they were taken in (they are counted in the
        next one): only when nobody charged the client for a whole window are they forgotten (a process
        killed in a call).
        """

        def work(txn: Any) -> Charge:
            start, count, reserved, until, touched = _client(client, txn.get(client), now, block_ms)
            reserved = max(0, reserved - release)
            if until <= now and (until or now - start >= window_ms):  # a block or a window is over
                start, count, until = now, 0, 0
                if now - touched >= window_ms:
                    reserved = 0
            count = min(count + refused, 0xFFFFFFFF)
            if refused and count > limit:
                until = max(until, now + block_ms)
            taken = max(0, min(want, limit + 1 - count - reserved)) if until <= now else 0
            reserved += taken
            txn.put(client, _sealed(client, _RECORD.pack(start, count, reserved, until, now)))
            blocked = until > now
            return Charge(taken, until if blocked else start + window_ms, blocked)

        return self._write(work, now, window_ms)

    def release(self, client: bytes, slots: int, now: int) -> None:
        """Give back ``slots`` that judged no refused key."""

        def work(txn: Any) -> None:
            value = txn.get(client)
            if value is not None:
                start, count, reserved, until, _ = _client(client, value, now)
                txn.put(client, _sealed(client, _RECORD.pack(start, count, max(0, reserved - slots), until, now)))

        self._write(work, now)

    def card_attempt(self, card: bytes, limit: int, now: int) -> tuple[bool, int]:
        """Reserve one password attempt on an imported card: (True, 0) to go on; (False, when it was
        locked), or (False, 0) while attempts in flight could use up what is left of ``limit``."""

        def work(txn: Any) -> tuple[bool, int]:
            key = CARD_PREFIX + card
            value = txn.get(key)
            wrong, flying, locked = _card(key, value, now)
            if locked or wrong + flying >= limit:
                sound = _sealed(key, _CARD.pack(wrong, flying, locked))
                if locked and bytes(value or b"") != sound:  # damaged (or unsealed): the lock is written sound
                    txn.put(key, sound)
                return False, locked
            txn.put(key, _sealed(key, _CARD.pack(wrong, flying + 1, 0)))
            return True, 0

        return self._write(work, now)

    def card_done(self, card: bytes, right: bool, limit: int, now: int) -> None:
        """Settle an attempt: a wrong password is counted, and the card locked once ``limit`` were wrong."""

        def work(txn: Any) -> None:
            key = CARD_PREFIX + card
            value = txn.get(key)
            wrong, flying, locked = _card(key, value, now) if value is not None else (0, 1, 0)
            flying, wrong = max(0, flying - 1), wrong + (not right)
            if wrong >= limit and not locked:
                locked = now
            if wrong or flying or locked:
                txn.put(key, _sealed(key, _CARD.pack(wrong, flying, locked)))
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
                    wrong, _, locked = _card(bytes(key), value, now_ms())
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
                start, _, _, until, _ = _client(bytes(key), bytes(value), now)
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
