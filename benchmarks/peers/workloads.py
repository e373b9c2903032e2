"""The timed workloads, written once and run on every column (keyvault and each peer).

Every workload is measured over a fixed amount of work, chosen before the clock starts:

1. a short probe (it also warms caches and prepared statements) estimates the rate;
2. the amount of work is set so one run takes about ``target`` seconds, within what the data
   set allows (redeems use each key once, so their pools bound the work);
3. ``repeats`` runs of exactly that work; the figure is the median of their rates.

Inputs are built before the clock starts; outputs are checked after it stops: every verified
key must come back valid and every redeem of a fresh key accepted, or the workload is reported
as an error. A workload never asserts a time.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .common import CALLERS, REDEEM_BATCH, VERIFY_BATCH, Dataset, Peer

PROBE_SECONDS = 0.25  # a probe grows until it takes at least this long


class WorkloadError(Exception):
    """A workload whose results were wrong (a peer that lost or invented state)."""


class NotImplementedYet(Exception):
    """keyvault lacks the API this workload calls."""


@dataclass
class Settings:
    target: float = 3.0  # seconds per measured run
    repeats: int = 3
    callers: int = CALLERS
    concurrency: str = "auto"  # redeem_concurrent callers: "auto" (the column's choice), "threads", "processes"


@dataclass
class Measurement:
    workload: str
    status: str  # "ok", "not implemented yet", "error"
    rate: float | None = None  # median ops/s over the runs
    runs: list[dict[str, float]] = field(default_factory=list)  # each: ops, seconds, rate
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _median(runs: list[tuple[int, float]]) -> float:
    return statistics.median(ops / seconds for ops, seconds in runs)


def _finish(workload: str, runs: list[tuple[int, float]], note: str = "") -> Measurement:
    return Measurement(workload, "ok", _median(runs),
                       [{"ops": ops, "seconds": round(sec, 6), "rate": ops / sec} for ops, sec in runs], note)


def _probe(run: Callable[[int], tuple[int, float]], first: int, limit: int) -> float:
    """Run growing amounts of work (first, 4x, 16x, ...) until one takes PROBE_SECONDS; its rate."""
    count = max(1, min(first, limit))
    while True:
        ops, seconds = run(count)
        if seconds >= PROBE_SECONDS or count >= limit:
            return ops / max(seconds, 1e-9)
        count = min(count * 4, limit)


def _amount(rate: float, target: float, unit: int, lo: int, hi: int) -> int:
    """Work for one run of about ``target`` seconds, in whole units, within [lo, hi]."""
    want = int(rate * target) // unit * unit
    return max(lo, min(hi, max(unit, want)))


def _check(results: Sequence[Any], good: Callable[[Any], bool], what: str) -> None:
    bad = sum(1 for r in results if not good(r))
    if bad:
        sample = next(r for r in results if not good(r))
        raise WorkloadError(f"{bad:,} of {len(results):,} {what} (first: {sample!r:.120})")


# -- load ----------------------------------------------------------------------------------

def load(peer: Peer, data: Dataset, settings: Settings) -> Measurement:
    """Bulk insert every key of the data set, once (a store is loaded once: one run)."""
    t0 = time.perf_counter()
    peer.load(data.keys)
    seconds = time.perf_counter() - t0
    after = getattr(peer, "after_load", None)
    if after is not None:  # untimed: keyvault reads back its keys; servers settle (VACUUM, AOF rewrite)
        after()
    if len(peer.keys) != data.n:
        raise WorkloadError(f"store holds {len(peer.keys):,} keys, expected {data.n:,}")
    size, what = peer.store_size()
    return _finish("load", [(data.n, seconds)],
                   f"one run; store after load: {size / data.n:.0f} bytes/key ({what})")


# -- verify ---------------------------------------------------------------------------------

def verify_one(peer: Peer, data: Dataset, settings: Settings) -> Measurement:
    """One call per key, keys in random order."""
    keys, order, n = peer.keys, data.read_order, data.n
    f, is_valid = peer.verify_one, peer.is_valid
    cursor = [0]

    def run(count: int) -> tuple[int, float]:
        start = cursor[0]
        batch = [keys[order[(start + i) % n]] for i in range(count)]
        cursor[0] = (start + count) % n
        t0 = time.perf_counter()
        out = [f(k) for k in batch]
        seconds = time.perf_counter() - t0
        _check(out, is_valid, "verified keys not valid")
        return count, seconds

    # Network peers pin client and server to one CPU here (see common.same_cpu); others do nothing.
    pinned = getattr(peer, "one_at_a_time", None)
    with pinned() if pinned is not None else contextlib.nullcontext("") as note:
        rate = _probe(run, 1_000, n)
        amount = _amount(rate, settings.target, 1_000, 1_000, max(1_000, n))
        runs = [run(amount) for _ in range(settings.repeats)]
    return _finish("verify_one", runs, note)


def verify_many(peer: Peer, data: Dataset, settings: Settings) -> Measurement:
    """Batches of VERIFY_BATCH random keys, one call per batch."""
    keys, order, n = peer.keys, data.read_order, data.n
    size = min(VERIFY_BATCH, n)
    f, is_valid = peer.verify_many, peer.is_valid
    cursor = [0]

    def run(count: int) -> tuple[int, float]:
        batches = []
        for _ in range(count // size):
            start = cursor[0]
            batches.append([keys[order[(start + i) % n]] for i in range(size)])
            cursor[0] = (start + size) % n
        t0 = time.perf_counter()
        outs = [f(batch) for batch in batches]
        seconds = time.perf_counter() - t0
        for batch, out in zip(batches, outs):
            if len(out) != len(batch):
                raise WorkloadError(f"verify_many returned {len(out):,} results for {len(batch):,} keys")
            _check(out, is_valid, "verified keys not valid")
        return count // size * size, seconds

    rate = _probe(run, size, size)  # one batch: the unit of this workload
    amount = _amount(rate, settings.target, size, size, 50 * size)
    return _finish("verify_many", [run(amount) for _ in range(settings.repeats)],
                   f"batches of {size:,}")


# -- redeem ---------------------------------------------------------------------------------

class _Pool:
    """Keys not yet redeemed, handed out in order; every (key, order id) pair is used once."""

    def __init__(self, keys: Sequence[str], indices: list[int]) -> None:
        self.keys, self.indices, self.next = keys, indices, 0

    @property
    def left(self) -> int:
        return len(self.indices) - self.next

    def take(self, count: int) -> list[tuple[str, str]]:
        if count > self.left:
            raise WorkloadError(f"key pool exhausted ({count:,} wanted, {self.left:,} left): use more --keys")
        part = self.indices[self.next:self.next + count]
        self.next += count
        return [(self.keys[i], f"ORDER-{i}") for i in part]


def redeem_many(peer: Peer, data: Dataset, settings: Settings) -> Measurement:
    """Durable batches of REDEEM_BATCH fresh (key, order) pairs, one call (one commit) per batch."""
    pool = _Pool(peer.keys, data.redeem_many_pool)
    f, accepted = peer.redeem_many, peer.is_accepted

    def run(count: int) -> tuple[int, float]:
        pairs = pool.take(count)
        batches = [pairs[i:i + REDEEM_BATCH] for i in range(0, len(pairs), REDEEM_BATCH)]
        t0 = time.perf_counter()
        outs = [f(batch) for batch in batches]
        seconds = time.perf_counter() - t0
        for batch, out in zip(batches, outs):
            if len(out) != len(batch):
                raise WorkloadError(f"redeem_many returned {len(out):,} results for {len(batch):,} pairs")
            _check(out, accepted, "redeems of fresh keys not accepted")
        return len(pairs), seconds

    unit = REDEEM_BATCH
    # Probe with at most a fifth of the pool, so the measured runs keep the rest.
    rate = _probe(run, unit, max(unit, pool.left // 5 // unit * unit))
    hi = pool.left // settings.repeats // unit * unit
    if hi < unit:
        raise WorkloadError("too few keys left for redeem_many: use more --keys")
    amount = _amount(rate, settings.target, unit, unit, hi)
    return _finish("redeem_many", [run(amount) for _ in range(settings.repeats)],
                   f"batches of {REDEEM_BATCH:,}, one durable commit each")


class _Threads:
    """Callers as threads of this process, each with its own peer.caller()."""

    mode = "threads"

    def __init__(self, peer: Peer, n: int) -> None:
        self.callers = [peer.caller() for _ in range(n)]

    def run(self, work: list[list[tuple[str, str]]]) -> tuple[list[Any], float]:
        n = len(self.callers)
        results: list[list[Any]] = [[] for _ in range(n)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(n + 1)

        def caller(i: int) -> None:
            fn, pairs, out = self.callers[i], work[i], results[i]
            barrier.wait()
            try:
                for key, order in pairs:
                    out.append(fn(key, order))
            except BaseException as exc:  # reported below, in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise WorkloadError(f"a caller failed: {errors[0]!r}") from errors[0]
        return [r for out in results for r in out], seconds

    def close(self) -> None:
        pass


def _caller_process(spec: tuple[str, str, tuple[Any, ...]], inbox: Any, outbox: Any, barrier: Any) -> None:
    """One caller process: build its redeem function from spec, then redeem what it is sent."""
    module, function, args = spec
    try:
        fn = getattr(importlib.import_module(module), function)(*args)
    except BaseException as exc:
        outbox.put(("error", f"caller process could not start: {exc!r}"))
        return
    outbox.put(("ready", None))
    while True:
        pairs = inbox.get()
        if pairs is None:
            return
        barrier.wait()
        try:
            outbox.put(("ok", [fn(key, order) for key, order in pairs]))
        except BaseException as exc:
            outbox.put(("error", repr(exc)))


class _Processes:
    """Callers as separate processes (spawned), for peers whose client library holds the GIL.

    Each builds its redeem function from the peer's caller_spec(): its own connection or store
    handle. The processes live for the whole workload; the clock runs from the moment all of
    them are released together until the last result is back.
    """

    mode = "processes"

    def __init__(self, peer: Peer, n: int) -> None:
        spec = getattr(peer, "caller_spec", None)
        if spec is None:
            raise WorkloadError(f"{peer.name} cannot run its callers as processes")
        ctx = mp.get_context("spawn")
        self.barrier = ctx.Barrier(n + 1)
        self.inboxes = [ctx.Queue() for _ in range(n)]
        self.outbox = ctx.Queue()
        self.procs = [ctx.Process(target=_caller_process, args=(spec(), q, self.outbox, self.barrier), daemon=True)
                      for q in self.inboxes]
        try:
            for proc in self.procs:
                proc.start()
            for _ in self.procs:
                status, detail = self.outbox.get(timeout=180)
                if status != "ready":
                    raise WorkloadError(detail)
        except BaseException:
            self.close()
            raise

    def run(self, work: list[list[tuple[str, str]]]) -> tuple[list[Any], float]:
        for inbox, pairs in zip(self.inboxes, work):
            inbox.put(pairs)
        self.barrier.wait(timeout=180)
        t0 = time.perf_counter()
        replies = [self.outbox.get(timeout=600) for _ in self.procs]
        seconds = time.perf_counter() - t0
        errors = [detail for status, detail in replies if status != "ok"]
        if errors:
            raise WorkloadError(f"a caller failed: {errors[0]}")
        return [r for _, out in replies for r in out], seconds

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def redeem_concurrent(peer: Peer, data: Dataset, settings: Settings) -> Measurement:
    """``callers`` concurrent callers, each redeeming single fresh keys, each durable when it returns.

    Callers are threads, or processes where the column asks for them (``concurrency``), or as
    ``settings.concurrency`` forces.
    """
    pool = _Pool(peer.keys, data.concurrent_pool)
    ncallers = settings.callers
    mode = settings.concurrency if settings.concurrency != "auto" else getattr(peer, "concurrency", "threads")
    callers = _Processes(peer, ncallers) if mode == "processes" else _Threads(peer, ncallers)
    accepted = peer.is_accepted

    def run(per_caller: int) -> tuple[int, float]:
        work = [pool.take(per_caller) for _ in range(ncallers)]
        flat, seconds = callers.run(work)
        if len(flat) != per_caller * ncallers:
            raise WorkloadError(f"{len(flat):,} results for {per_caller * ncallers:,} redeems")
        _check(flat, accepted, "redeems of fresh keys not accepted")
        return len(flat), seconds

    try:
        per_caller_left = pool.left // ncallers
        rate = _probe(run, 4, max(1, per_caller_left // 5))
        hi = pool.left // ncallers // settings.repeats
        if hi < 1:
            raise WorkloadError("too few keys left for redeem_concurrent: use more --keys")
        amount = _amount(rate / ncallers, settings.target, 1, 1, hi)
        runs = [run(amount) for _ in range(settings.repeats)]
    finally:
        callers.close()
    return _finish("redeem_concurrent", runs, f"{ncallers} {callers.mode}, {amount:,} single redeems each per run")


# -- after the clock: exactly-once ----------------------------------------------------------

def check_exactly_once(peer: Peer, data: Dataset) -> str:
    """Untimed: fresh keys redeemed once, then refused by every redeem path and invalid on verify."""
    pairs = [(peer.keys[i], f"ORDER-{i}") for i in data.check_pool]
    first, second = pairs[: len(pairs) // 2], pairs[len(pairs) // 2:]
    fn = peer.caller()
    _check([fn(k, o) for k, o in first], peer.is_accepted, "first redeems of fresh keys refused")
    try:
        _check(peer.redeem_many(second), peer.is_accepted, "first redeems of fresh keys refused")
        paths = "redeem_many and single redeem"
    except NotImplementedYet:
        _check([fn(k, o) for k, o in second], peer.is_accepted, "first redeems of fresh keys refused")
        paths = "single redeem"
    others = [(k, "OTHER-ORDER") for k, _ in pairs]
    if any(peer.is_accepted(fn(k, o)) for k, o in others):
        raise WorkloadError("a single redeem accepted a key already redeemed")
    try:
        if any(peer.is_accepted(r) for r in peer.redeem_many(others)):
            raise WorkloadError("redeem_many accepted a key already redeemed")
    except NotImplementedYet:
        pass
    if any(peer.is_valid(r) for r in peer.verify_many([k for k, _ in pairs])):
        raise WorkloadError("verify_many calls a redeemed key valid")
    if any(peer.is_valid(peer.verify_one(k)) for k, _ in pairs):
        raise WorkloadError("verify calls a redeemed key valid")
    return f"ok: {len(pairs)} keys redeemed once ({paths}), then refused by every redeem path, not valid on verify"


RUNNERS: dict[str, Callable[[Peer, Dataset, Settings], Measurement]] = {
    "load": load,
    "verify_one": verify_one,
    "verify_many": verify_many,
    "redeem_many": redeem_many,
    "redeem_concurrent": redeem_concurrent,
}
