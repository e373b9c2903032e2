"""What every peer shares: the data set, the stored hash, the peer protocol, small helpers."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: Workloads in the order they run (verify before redeem: every verified key is still active).
WORKLOADS = ("load", "verify_one", "verify_many", "redeem_many", "redeem_concurrent")
VERIFY_BATCH = 100_000  # keys per verify_many call (the issue's figure)
REDEEM_BATCH = 1_000  # (key, order) pairs per redeem_many call (the issue's figure)
CALLERS = 32  # concurrent single-redeem callers
REDEEM_MANY_SHARE = 0.7  # of the keys: the rest go to redeem_concurrent; each key is redeemed once
CHECK_KEYS = 200  # kept out of both pools for the untimed exactly-once check
MIN_KEYS = 10_000


class Unavailable(Exception):
    """A peer that cannot be started here; the message says why (shown as 'skipped (...)')."""


RedeemFn = Callable[[str, str], Any]


class Peer(Protocol):
    """What the workloads call. A peer hashes inside every call, as keyvault does."""

    name: str
    #: The keys this peer's store holds (canonical 32-symbol strings), set by load().
    keys: Sequence[str]
    #: A sentence for the report: the settings that matter for the figures.
    settings: str

    def load(self, keys: Sequence[str]) -> None:
        """Bulk-insert every key (hashed) as active."""

    def verify_one(self, key: str) -> Any:
        """One key, one call; returns what is_valid() understands."""

    def verify_many(self, keys: Sequence[str]) -> Sequence[Any]:
        """A batch; results in input order."""

    def redeem_many(self, pairs: Sequence[tuple[str, str]]) -> Sequence[Any]:
        """Redeem (key, order id) pairs durably in one commit; results in input order."""

    def caller(self) -> RedeemFn:
        """A redeem function for one concurrent caller (its own connection where the peer needs one).

        Each call redeems one key in its own durable commit.
        """

    #: "threads" or "processes": how this column's concurrent callers run unless forced.
    concurrency: str

    def caller_spec(self) -> tuple[str, str, tuple[Any, ...]]:
        """(module, function, args): calling module.function(*args) in a caller process gives a
        redeem function there, like caller() does here."""

    # Optional, looked up with getattr: after_load() (untimed settling after the load: keyvault
    # reads back its keys, PostgreSQL VACUUMs, Redis rewrites its AOF) and one_at_a_time() (a
    # context for verify_one: network peers pin client and server to one CPU, see same_cpu).

    def store_size(self) -> tuple[int, str]:
        """(bytes, what was counted) of the loaded store, measured after load. Untimed."""

    def is_valid(self, result: Any) -> bool:
        """Whether a verify result says 'active, may be redeemed'."""

    def is_accepted(self, result: Any) -> bool:
        """Whether a redeem result says 'redeemed now, by this call'."""

    def close(self) -> None:
        """Release connections; servers are stopped by whoever started them."""


def normalize(key: str) -> str:
    """The minimum a hand-written peer does to typed input: fold case, drop group separators.

    keyvault does much more (check symbols, the group at fault, look-alikes); the peers skip it.
    """
    return key.upper().replace("-", "")


def hasher(pepper: bytes) -> Callable[[str], bytes]:
    """The stored form of a key: keyed BLAKE2b-128 of the normalised key, with a 32-byte pepper."""
    blake2b = hashlib.blake2b

    def card_hash(key: str) -> bytes:
        return blake2b(key.upper().replace("-", "").encode(), key=pepper, digest_size=16).digest()

    return card_hash


@contextmanager
def same_cpu(server_pids: Sequence[int]) -> Iterator[str]:
    """Pin this thread and a server's serving process to one CPU for a one-call-at-a-time loop.

    On this machine (a VM) a round trip between two processes on different vCPUs costs ~110 us
    (waking an idle vCPU), against ~27 us on one vCPU; the scheduler picks either, run to run.
    Pinning gives the network peers their best, and a repeatable, figure. Yields a note.
    """
    mine = os.sched_getaffinity(0)
    if len(mine) < 2:
        yield ""
        return
    cpu = min(mine)
    saved: dict[int, set[int]] = {}
    note = f"client and server pinned to CPU {cpu}"
    try:
        for pid in server_pids:
            saved[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, {cpu})
        saved[0] = mine
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        note = f"not pinned ({exc.strerror})"
    try:
        yield note
    finally:
        for pid, cpus in saved.items():
            try:
                os.sched_setaffinity(pid, cpus)
            except OSError:
                pass  # the server may be gone; nothing to restore


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under path (sparse files count what they use)."""
    total = 0
    for item in [path, *path.rglob("*")]:
        try:
            st = item.lstat()
        except OSError:
            continue  # a file removed while we walk (a WAL segment, say)
        total += st.st_blocks * 512
    return total


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def free_port() -> int:
    """A TCP port free on the loopback right now (bound by the server a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Dataset:
    """Fixed, generated data: keys, pepper, and the index orders every column walks.

    The keys are real v1 keys (``keyvault._fast.issue_keys``) with secrets from a seeded RNG, so a
    run is reproducible. keyvault issues its own keys (its only way in); it walks the same index
    orders over them.
    """

    n: int
    seed: int
    keys: list[str]
    pepper: bytes
    read_order: list[int]  # a permutation of range(n): verify_one and verify_many walk it
    redeem_order: list[int] = field(repr=False, default_factory=list)  # another: each key redeemed once

    @property
    def redeem_many_pool(self) -> list[int]:
        return self.redeem_order[: int(self.n * REDEEM_MANY_SHARE)]

    @property
    def concurrent_pool(self) -> list[int]:
        return self.redeem_order[int(self.n * REDEEM_MANY_SHARE):-CHECK_KEYS]

    @property
    def check_pool(self) -> list[int]:
        return self.redeem_order[-CHECK_KEYS:]


def make_dataset(n: int, seed: int = 20261125) -> Dataset:
    from keyvault import _fast

    rng = random.Random(seed)
    pepper = rng.randbytes(32)
    salt = rng.randbytes(16)
    serial_base = 0x1B57 << 45  # any issuer prefix: serials only need to be distinct
    keys: list[str] = []
    chunk = 65_536
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        part, _ = _fast.issue_keys(serial_base + start, count, salt, rng.randbytes(count * _fast.SECRET_BYTES))
        keys.extend(part)
    read_order = list(range(n))
    rng.shuffle(read_order)
    redeem_order = list(range(n))
    rng.shuffle(redeem_order)
    return Dataset(n=n, seed=seed, keys=keys, pepper=pepper, read_order=read_order, redeem_order=redeem_order)


def require_module(name: str, pip_name: str) -> Any:
    """Import a client library, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise Unavailable(f"python package {pip_name} not installed (pip install {pip_name!r})") from None
