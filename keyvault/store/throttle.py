"""Refused attempts per client, shared by every process on a store: the state behind throttling.

A second, small LMDB environment (``throttle.mdb`` in the store directory,
made when a client is first named) holds
one record per client that was refused lately: the start of its counting
window, the refusals in it, and until when it is blocked. It is written
without fsync: throttling state protects against guessing, it does not need
to survive a power cut, and a refused verify must not cost a disk flush. All
use in a process goes through one lock, so a map resize never races a
reader (py-lmdb #97).
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import lmdb

from ..errors import ClosedError, StoreError
from .lmdbstore import MAX_READERS, allocate_lock_file, unusable_after_fork

_RECORD = struct.Struct(">QIQ")  # window start (ms), refusals in the window, blocked until (ms)
_INITIAL_MAP = 16 << 20  # about 150,000 clients at a time; doubles when full


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
        """Until when (ms) the client is blocked; 0 when it is not."""
        self._check()
        with self._lock:
            for _ in range(4):
                try:
                    with self._env.begin() as txn:
                        value = txn.get(client)
                    return _RECORD.unpack(value)[2] if value else 0
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)
        raise StoreError("the throttle state kept being resized by another process; try again")

    def add(self, client: bytes, refused: int, now: int, limit: int, window_ms: int, block_ms: int) -> int:
        """Count ``refused`` attempts for a client; block it once more than ``limit`` fall in one window.

        Returns until when (ms) the client is blocked (0: not blocked).
        """
        self._check()
        with self._lock:
            for _ in range(8):
                try:
                    with self._env.begin(write=True) as txn:
                        value = txn.get(client)
                        start, count, until = (int(v) for v in _RECORD.unpack(value)) if value else (now, 0, 0)
                        if now - start >= window_ms:
                            start, count = now, 0
                        count = min(count + refused, 0xFFFFFFFF)
                        if count > limit:
                            until = max(until, now + block_ms)
                        txn.put(client, _RECORD.pack(start, count, until))
                        return until
                except lmdb.MapFullError:  # full: first forget clients that are done with, then grow
                    if not self._forget(now, window_ms):
                        self._env.set_mapsize(self._env.info()["map_size"] * 2)
                except lmdb.MapResizedError:
                    self._env.set_mapsize(0)
                except lmdb.Error as exc:  # a full disk, most likely
                    raise StoreError(f"could not record a refused attempt in the throttle state ({exc}); "
                                     "check free disk space") from None
        raise StoreError("could not record a refused attempt in the throttle state; check free disk space")

    def clear(self, client: bytes) -> None:
        """Forget a client: unblocked, its count restarted."""
        self._check()
        with self._lock, self._env.begin(write=True) as txn:
            txn.delete(client)

    def _forget(self, now: int, window_ms: int) -> int:
        """Drop clients neither blocked nor counted within the last window (lock held); how many."""
        with self._env.begin(write=True) as txn:
            stale = []
            for key, value in txn.cursor():
                start, _, until = _RECORD.unpack(value)
                if now - start >= window_ms and until <= now:
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
