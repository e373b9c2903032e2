"""The webhook endpoints and their delivery cursors: a small LMDB environment beside the store.

The event log is the outbox (engine/webhooks.py): every change is already an
event, appended in the transaction that decides it, so a notification can
neither be lost nor sent for a change that did not commit. What is kept here
is only where each endpoint stands: ``webhooks.mdb`` in the store directory
holds one JSON record per endpoint (its URL, the event kinds it wants, its
secret, whether it is paused) and its cursor (the index of the first event
not yet acknowledged) with its delivery counts and last error. It is a
separate environment so that a delivery worker acknowledging never takes the
store's writer lock from a redeem. A change of an endpoint (added, removed,
paused, resumed, replayed) is durable when the call returns: its commit
flushes the data and the meta page. A delivery acknowledgement flushes the
data only (LMDB's ``metasync=False``: the environment stays intact, and a
power cut may undo the last acknowledgement, which only resends those
messages with the same ``webhook-id``), so acknowledging costs one fsync
instead of two next to the store's redeems.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from ..errors import ClosedError, StoreCorruptError, StoreError
from .lmdbstore import MAX_READERS, allocate_lock_file, unusable_after_fork

FILE = "webhooks.mdb"
LOCK = "webhooks.deliver.lock"  # held by the one delivery worker of a store
_INITIAL_MAP = 8 << 20  # thousands of endpoints; doubles when full


class OutboxStore:
    """One process's handle on a store's webhook endpoints and cursors."""

    def __init__(self, directory: Path) -> None:
        path = directory / FILE
        allocate_lock_file(path.with_name(path.name + "-lock"))
        try:
            self._env = lmdb.open(str(path), map_size=_INITIAL_MAP, subdir=False, max_readers=MAX_READERS,
                                  readahead=False, mode=0o600, metasync=False)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the webhook endpoints {path}: {exc}; check the store directory's "
                             "permissions and free space") from None
        self._env.reader_check()
        self._lock = threading.Lock()
        self._closed = False
        self._usable = True  # False in a child after fork()
        self.directory = directory
        unusable_after_fork(self)

    def _check(self) -> None:
        if self._closed or not self._usable:
            raise ClosedError("the webhook endpoints are closed (or this is a forked child): open the vault again")

    def get(self, endpoint: str) -> dict[str, Any] | None:
        """An endpoint's record, or None."""
        with self._lock:
            self._check()
            with self._env.begin() as txn:
                value = txn.get(endpoint.encode())
        return None if value is None else _load(value)

    def all(self) -> list[dict[str, Any]]:
        """Every endpoint's record, in id order."""
        with self._lock:
            self._check()
            with self._env.begin() as txn:
                return [_load(value) for _, value in txn.cursor()]

    def update(self, endpoint: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None], *,
               durable: bool = True) -> Any:
        """Replace an endpoint's record by ``change(record)`` in one transaction (None deletes it), durable when
        it returns unless ``durable`` is False (acknowledgements: the last one may be undone by a power cut)."""
        with self._lock:
            self._check()
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        old = txn.get(endpoint.encode())
                        new = change(None if old is None else _load(old))
                        if new is None:
                            txn.delete(endpoint.encode())
                        else:
                            txn.put(endpoint.encode(), json.dumps(new, sort_keys=True).encode())
                    if durable:
                        self._env.sync(True)  # the meta page too: this change survives a power cut
                    return new
                except lmdb.MapFullError:
                    self._env.set_mapsize(self._env.info()["map_size"] * 2)
                except lmdb.Error as exc:
                    raise StoreError(f"writing the webhook endpoints failed ({exc}); nothing was changed: check "
                                     "the disk and try again") from None

    def close(self) -> None:
        """Close the environment (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._usable:
                    self._env.close()

    def claim(self) -> int | None:
        """Take the store's delivery lock (one delivery worker per store); its descriptor, or None when held."""
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd


def _load(value: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(value))
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise StoreCorruptError(f"a webhook endpoint record in {FILE} is damaged: remove that endpoint "
                                "(`keyvault webhook remove ID`) and add it again")
    return doc
