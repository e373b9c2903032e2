"""Plain py-lmdb + hashlib: what a platform writes without keyvault.

One record per key: keyed BLAKE2b-128 of the key -> a state byte (0 active), and on redeem the
state 1, the time and the order id. One ``txn.get`` per key; a redeem is get + put in a write
transaction with LMDB's default durability (sync and metasync on), batched 1,000 per transaction
for redeem_many and one transaction per redeem for single calls. The environment is opened with
the settings keyvault uses (readahead off, no writemap); writes are serialised by a lock, as
LMDB needs within one process.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from .common import RedeemFn, disk_usage, hasher, now_ms, require_module

NAME = "plain"
ACTIVE = b"\x00"
REDEEMED = 1
_WHEN = struct.Struct(">Q")


class PlainLmdb:
    name = NAME
    concurrency = "threads"  # an in-process library: concurrent callers are threads

    def __init__(self, path: Path, pepper: bytes) -> None:
        lmdb = require_module("lmdb", "lmdb")
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.pepper = pepper
        self.env = lmdb.open(str(path), map_size=8 << 30, subdir=True, readahead=False, max_readers=1024)
        self.hash = hasher(pepper)
        self.write_lock = threading.Lock()
        self.keys: Sequence[str] = ()
        lmdb_version = ".".join(map(str, lmdb.version()))
        self.settings = (f"py-lmdb {lmdb.__version__}, LMDB {lmdb_version}; sync and metasync on (the defaults); "
                         "readahead off")

    def load(self, keys: Sequence[str]) -> None:
        h = self.hash
        with self.write_lock, self.env.begin(write=True) as txn:
            put = txn.put
            for key in keys:
                if not put(h(key), ACTIVE, overwrite=False):
                    raise ValueError("duplicate key in the data set")
        self.keys = keys

    def verify_one(self, key: str) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(self.hash(key))

    def verify_many(self, keys: Sequence[str]) -> list[bytes | None]:
        h = self.hash
        with self.env.begin() as txn:
            get = txn.get
            return [get(h(key)) for key in keys]

    def _redeem(self, txn: object, key: str, order: str, when: bytes) -> bool:
        h = self.hash(key)
        value = txn.get(h)  # type: ignore[attr-defined]
        if value != ACTIVE:
            return False  # unknown, or already redeemed
        txn.put(h, bytes((REDEEMED,)) + when + order.encode())  # type: ignore[attr-defined]
        return True

    def redeem_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        when = _WHEN.pack(now_ms())
        with self.write_lock, self.env.begin(write=True) as txn:
            return [self._redeem(txn, key, order, when) for key, order in pairs]

    def redeem(self, key: str, order: str) -> bool:
        with self.write_lock, self.env.begin(write=True) as txn:
            return self._redeem(txn, key, order, _WHEN.pack(now_ms()))

    def caller(self) -> RedeemFn:
        return self.redeem

    def caller_spec(self) -> tuple[str, str, tuple[object, ...]]:
        return __name__, "process_caller", (str(self.path), self.pepper)

    def store_size(self) -> tuple[int, str]:
        return disk_usage(self.path), "data.mdb and lock.mdb on disk"

    @staticmethod
    def is_valid(result: bytes | None) -> bool:
        return result == ACTIVE

    @staticmethod
    def is_accepted(result: bool) -> bool:
        return result is True

    def close(self) -> None:
        self.env.close()


def process_caller(path: str, pepper: bytes) -> RedeemFn:
    """In a caller process: its own environment handle (LMDB's lock file serialises writers)."""
    return PlainLmdb(Path(path), pepper).redeem


def start(workdir: Path, pepper: bytes, stack: ExitStack) -> PlainLmdb:
    peer = PlainLmdb(workdir / "plain-lmdb", pepper)
    stack.callback(peer.close)
    return peer
