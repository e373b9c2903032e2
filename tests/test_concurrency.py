"""Exactly once under concurrency: 16 processes and 16 threads spend the same keys at once.

Each of the 32 callers redeems every one of the same 200 keys, in its own random order, with its own
order ids, mixing ``redeem_many`` batches and single ``redeem`` calls (group commit in the threads,
which share the parent's Vault; each process opens its own). Some keys are also voided by several
callers, and some are blacklisted by one caller (their owner) for a while and lifted. Every caller
records every answer, with the monotonic time before and after the call (CLOCK_MONOTONIC is one
clock for every process). Then each caller re-sends its own (key, order) pairs. Checked:

* every key ends redeemed by exactly one order or void, and ``stats`` counts them exactly;
* exactly one caller got ``accepted`` for a redeemed key, with that order and the final
  ``redeemed_at``; every ``redeemed`` answer names that order and time; every void call was told so;
* nobody got ``accepted`` for a key that ended void; every answer for it is ``void`` with the
  winning reason (or ``blacklisted``);
* a redeem made wholly while its key was blacklisted is refused ``blacklisted`` (or ``redeemed`` /
  ``void``, which take precedence); a ``blacklisted`` answer only comes while the key was;
* the retries: the owner of the accepted order gets ``accepted`` again with the first
  ``redeemed_at``, everyone else ``redeemed`` naming it, void keys ``void``.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import threading
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from keyvault import Status, Vault

from conftest import Issued

#: ``make stress`` repeats the race (KEYVAULT_CRASH_ITERATIONS / 25 rounds, each on new keys).
ROUNDS = max(1, int(os.environ.get("KEYVAULT_CRASH_ITERATIONS", "25")) // 25)
PROCESSES = 16
THREADS = 16
CALLERS = PROCESSES + THREADS
VOIDERS = 4  # a void key is voided by every 4th caller: 8 voiders racing 32 redeemers


def is_void_key(k: int) -> bool:
    return k % 10 == 3


def is_blacklist_key(k: int) -> bool:
    return k % 10 == 7


def blacklist_owner(k: int) -> int:
    """The one caller that blacklists and lifts key ``k`` (so no one else's lift ends its window)."""
    return (k // 10) % CALLERS


class Answer(NamedTuple):
    caller: int
    phase: int
    key: int
    op: str  # redeem | void | blacklist | lift
    asked: str  # the order id or reason sent
    status: str
    order_id: str | None
    redeemed_at: str | None
    reason: str | None
    level: str | None
    t0: float  # time.monotonic() before the call
    t1: float  # and after it returned


def order_of(caller: int, k: int) -> str:
    return f"c{caller}-k{k}"


def run_caller(vault: Vault, caller: int, keys: list[str], seed: int, barrier: Any, go: Any,
               send: Any) -> None:
    """One caller's two phases; answers go to ``send(caller, phase, answers)``."""
    rng = random.Random(seed * 1000 + caller)
    sequence = list(range(len(keys)))
    rng.shuffle(sequence)
    owned = [k for k in range(len(keys)) if is_blacklist_key(k) and blacklist_owner(k) == caller]
    lift_at = {k: rng.randrange(len(keys) // 4) for k in owned}  # lifted early: the key is still spendable
    answers: list[Answer] = []

    def note(phase: int, k: int, op: str, asked: str, result: Any, t0: float) -> None:
        answers.append(Answer(caller, phase, k, op, asked, result.status.value, result.order_id, result.redeemed_at,
                              result.reason, result.level, t0, time.monotonic()))

    def redeem(phase: int, ks: list[int]) -> None:
        if len(ks) > 1 and rng.random() < 0.5:
            t0 = time.monotonic()
            results = vault.redeem_many([(keys[k], order_of(caller, k)) for k in ks])
            for k, result in zip(ks, results):
                note(phase, k, "redeem", order_of(caller, k), result, t0)
        else:
            for k in ks:
                t0 = time.monotonic()
                note(phase, k, "redeem", order_of(caller, k), vault.redeem(keys[k], order_of(caller, k)), t0)

    def void(k: int) -> None:
        reason = f"refund-c{caller}"
        t0 = time.monotonic()
        note(1, k, "void", reason, vault.void(keys[k], reason), t0)

    def window(k: int, op: str) -> None:
        t0 = time.monotonic()
        entry = (vault.blacklist if op == "blacklist" else vault.lift)("key", keys[k], f"{op} by c{caller}")
        answers.append(Answer(caller, 1, k, op, entry.reason, op, None, None, entry.reason, entry.level, t0,
                              time.monotonic()))

    # Half the void keys (k % 20 == 3) are likely voided as the race starts; the rest are left to chance.
    early = [k for k in range(len(keys)) if is_void_key(k) and k % 20 == 3 and (k + caller) % VOIDERS == 0
             and rng.random() < 0.25]
    barrier.wait()
    for k in owned:
        window(k, "blacklist")
    for k in early:
        void(k)
    done = 0
    while done < len(sequence):
        chunk = sequence[done:done + rng.randint(1, 6)]
        for k in [k for k in owned if done <= lift_at[k] < done + len(chunk)]:
            t0 = time.monotonic()  # the owner's own attempt, wholly inside the window
            note(1, k, "redeem", order_of(caller, k), vault.redeem(keys[k], order_of(caller, k)), t0)
            time.sleep(rng.uniform(0, 0.003))
            window(k, "lift")
        done += len(chunk)
        voids = [k for k in chunk if is_void_key(k) and (k + caller) % VOIDERS == 0 and k not in early]
        before = [k for k in voids if rng.random() < 0.5]
        for k in before:
            void(k)
        redeem(1, chunk)
        for k in voids:
            if k not in before:
                void(k)
    send(caller, 1, answers)
    answers = []
    go.wait()
    rng.shuffle(sequence)
    for at in range(0, len(sequence), 5):
        redeem(2, sequence[at:at + 5])
    send(caller, 2, answers)


def process_caller(path: str, caller: int, keys: list[str], seed: int, barrier: Any, go: Any, results: Any) -> None:
    try:
        with Vault.open(path) as vault:  # opened here, in the process that uses it
            run_caller(vault, caller, keys, seed, barrier, go, lambda c, p, a: results.put((c, p, a)))
    except BaseException:
        results.put((caller, 0, traceback.format_exc()))
        barrier.abort()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_32_callers_spend_each_key_exactly_once(tmp_path: Path, platform: Vault, issued: Issued, round_: int) -> None:
    keys = issued.keys
    assert len(keys) == 200
    seed = random.randrange(1 << 30)
    ctx = multiprocessing.get_context("spawn")
    barrier, go, results = ctx.Barrier(CALLERS, timeout=120), ctx.Event(), ctx.Queue()

    local: queue.Queue[tuple[int, int, Any]] = queue.Queue()  # the threads' answers (the parent never
    # writes to the processes' queue: a process killed while writing to it could leave its lock held)

    def thread_caller(caller: int) -> None:
        try:
            run_caller(platform, caller, keys, seed, barrier, go, lambda c, p, a: local.put((c, p, a)))
        except BaseException:
            local.put((caller, 0, traceback.format_exc()))
            barrier.abort()

    started = time.monotonic()
    procs = [ctx.Process(target=process_caller, args=(str(platform.path), c, keys, seed, barrier, go, results))
             for c in range(PROCESSES)]
    threads = [threading.Thread(target=thread_caller, args=(c,), daemon=True) for c in range(PROCESSES, CALLERS)]
    for worker in [*procs, *threads]:
        worker.start()  # type: ignore[attr-defined]
    passed = False
    try:
        phase1 = collect(results, local, 1)
        answers = [a for batch in phase1.values() for a in batch]
        final = check_phase1(platform, keys, answers, seed)
        assert platform.blacklist_entries() == []  # every owner lifted its keys
        go.set()
        phase2 = collect(results, local, 2)
        check_retries(final, [a for batch in phase2.values() for a in batch], len(keys))
        passed = True
    finally:
        if not passed:
            for p in procs:
                p.kill()
        go.set()
        deadline = time.monotonic() + 60
        for worker in [*threads, *procs]:
            worker.join(max(0.1, deadline - time.monotonic()))  # type: ignore[attr-defined]
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    statuses = Counter(result.status for result in final.values())
    totals = platform.stats()["totals"]
    assert (totals["redeemed"], totals["void"]) == (statuses[Status.REDEEMED], statuses[Status.VOID])
    assert totals["redeemed"] + totals["void"] == len(keys)
    assert platform.verify_log() > 0 and platform.audit()["clean"]
    print(f"\n32 callers x {len(keys)} keys: {statuses[Status.REDEEMED]} redeemed, {statuses[Status.VOID]} void, "
          f"{sum(len(a) for a in phase1.values())} answers then {sum(len(a) for a in phase2.values())} retries "
          f"in {time.monotonic() - started:.1f} s (seed {seed})")


def collect(results: Any, local: queue.Queue[tuple[int, int, Any]], phase: int) -> dict[int, list[Answer]]:
    """Every caller's answers for ``phase``: the processes' from ``results``, the threads' from ``local``."""
    got: dict[int, list[Answer]] = {}
    deadline = time.monotonic() + 180
    while len(got) < CALLERS:
        assert time.monotonic() < deadline, f"only {len(got)} callers of {CALLERS} answered phase {phase}"
        for source in (results, local):
            try:
                caller, p, answers = source.get(timeout=0.05)
            except queue.Empty:
                continue
            assert p != 0, f"caller {caller} failed:\n{answers}"
            assert p == phase and caller not in got
            got[caller] = answers
    return got


def check_phase1(vault: Vault, keys: list[str], answers: list[Answer], seed: int) -> dict[int, Any]:
    by_key: dict[int, list[Answer]] = defaultdict(list)
    for a in answers:
        by_key[a.key].append(a)
    final = dict(enumerate(vault.verify_many(keys)))
    blacklisted = 0
    for k, result in final.items():
        where = f"key {k} (seed {seed})"
        mine = by_key[k]
        redeems = [a for a in mine if a.op == "redeem"]
        voids = [a for a in mine if a.op == "void"]
        # every caller asked once; a blacklist owner once more, inside its window
        assert Counter(a.caller for a in redeems) == Counter(
            {c: 1 + (is_blacklist_key(k) and c == blacklist_owner(k)) for c in range(CALLERS)}), where
        assert {a.status for a in redeems} <= {"accepted", "redeemed", "void", "blacklisted"}, where
        if result.status is Status.REDEEMED:
            winner, when = result.order_id, result.redeemed_at
            accepted = [a for a in redeems if a.status == "accepted"]
            assert len(accepted) == 1, (where, accepted)
            assert (accepted[0].asked, accepted[0].order_id, accepted[0].redeemed_at) == (winner, winner, when), where
            for a in redeems:
                if a.status == "redeemed":
                    assert (a.order_id, a.redeemed_at) == (winner, when), (where, a)
            for a in voids:  # too late: the key was spent
                assert (a.status, a.order_id) == ("redeemed", winner), (where, a)
        else:
            assert result.status is Status.VOID, (where, result)
            assert not is_blacklist_key(k) and is_void_key(k), where
            reason = result.reason
            assert reason in {a.asked for a in voids}, where
            for a in redeems:
                assert a.status in ("void", "blacklisted"), (where, a)
                if a.status == "void":
                    assert a.reason == reason, (where, a)
            for a in voids:
                assert (a.status, a.reason) == ("void", reason), (where, a)
        windows = [(b.t0, b.t1, lift.t0, lift.t1) for b in mine if b.op == "blacklist"
                   for lift in mine if lift.op == "lift"]
        assert len(windows) == is_blacklist_key(k), where
        for a in redeems:
            inside = any(t1 <= a.t0 and a.t1 <= t2 for _, t1, t2, _ in windows)
            touching = any(t0 <= a.t1 and a.t0 <= t3 for t0, _, _, t3 in windows)
            if inside:
                assert a.status in ("blacklisted", "redeemed", "void"), (where, "spent while blacklisted", a)
            if a.status == "blacklisted":
                assert touching and a.level == "key", (where, "blacklisted outside its window", a)
                blacklisted += 1
    assert blacklisted > 0  # the owners' own attempts inside their windows at least
    return final


def check_retries(final: dict[int, Any], retries: list[Answer], n_keys: int) -> None:
    assert len(retries) == CALLERS * n_keys
    for a in retries:
        result = final[a.key]
        if result.status is Status.VOID:
            assert (a.status, a.reason) == ("void", result.reason), a
        elif a.asked == result.order_id:
            assert (a.status, a.order_id, a.redeemed_at) == ("accepted", result.order_id, result.redeemed_at), a
        else:
            assert (a.status, a.order_id, a.redeemed_at) == ("redeemed", result.order_id, result.redeemed_at), a
