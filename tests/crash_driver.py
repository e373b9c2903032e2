"""The child side of tests/test_crash.py: work on a store until the parent kills it with SIGKILL.

Run as a script with the installed package (``python tests/crash_driver.py MODE ...``); it prints
``ready`` on stdout just before the work the parent means to interrupt, and ``done`` if it gets to
the end. Modes:

``redeem STORE WORK ACKS``
    A redeem storm: a few threads take keys from the work file (JSON, written by the parent) and
    spend them with ``redeem_many`` batches of random size, single ``redeem`` calls (group commit)
    and occasional ``void`` calls, retry pairs already accepted, and try known keys with new
    orders. After each call has *returned*, every answer is appended to ACKS, one line each, and
    flushed: ``A idx order redeemed_at asked`` (accepted), ``R idx order redeemed_at asked``
    (already redeemed by that order), ``V idx reason voided_at asked``, and ``X idx status - asked``
    for an answer a spendable key never gets (``asked``: the order id or void reason sent). Lines
    are tab-separated; a line cut by the kill has no newline and the parent ignores it. Once its
    fresh keys are spent, the storm keeps retrying until it is killed or its retry budget is used up.

``issue STORE IDENTITY COUNT KEYS_OUT MANIFEST_OUT``
    ``issue_batch`` of COUNT keys.

``import STORE MANIFEST``
    ``import_manifest`` of a prepared manifest.

``bystander STORE``
    Holds the store open across the kills and redeems or checks on request (see ``bystander``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def _die(what: str) -> None:
    """An unexpected error: tell the parent (stderr, exit status 3) without waiting for other threads."""
    sys.stderr.write(what)
    sys.stderr.flush()
    os._exit(3)


class _Acks:
    """The acknowledgement file: lines appended only after the call they report has returned."""

    def __init__(self, path: str) -> None:
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        text = "".join(line + "\n" for line in lines)
        with self._lock:
            self._fh.write(text)
            self._fh.flush()  # into the kernel: a SIGKILL cannot take it back (no fsync needed)


def _line(idx: int, asked: str, result: Any) -> str:
    """One answer as an ack line: kind, key index, order or reason, time, and what was asked."""
    status = result.status.value
    if status == "accepted":
        return f"A\t{idx}\t{result.order_id}\t{result.redeemed_at}\t{asked}"
    if status == "redeemed":
        return f"R\t{idx}\t{result.order_id}\t{result.redeemed_at}\t{asked}"
    if status == "void":
        return f"V\t{idx}\t{result.reason}\t{result.voided_at}\t{asked}"
    return f"X\t{idx}\t{status}\t-\t{asked}"


def redeem_storm(store: str, work_path: str, acks_path: str) -> None:
    import keyvault.engine.ledger
    from keyvault import Vault

    with open(work_path, encoding="utf-8") as fh:
        work = json.load(fh)
    keyvault.engine.ledger.FOLD_AT = int(work["fold_at"])  # fold often: folds must survive a kill too
    it = int(work["iteration"])
    fresh: deque[tuple[int, str]] = deque((int(i), k) for i, k in work["fresh"])
    old = [(int(i), k, kind, text) for i, k, kind, text in work["old"]]
    pause = float(work["pause"])
    retries_left = [int(work["retry_budget"])]
    lock = threading.Lock()
    acks = _Acks(acks_path)
    vault = Vault.open(store)
    vault.fold_slices = int(work.get("fold_slices", 1))  # whole folds, or the oldest slice (as the service)
    _say("ready")

    def take(rng: random.Random) -> tuple[int, str] | None:
        with lock:
            if not fresh:
                return None
            item = fresh.popleft()
            if rng.random() < 0.12:  # contested: another thread will try it with another order
                fresh.insert(rng.randrange(len(fresh) + 1), item)
            return item

    def storm(tid: int) -> None:
        rng = random.Random(int(work["seed"]) * 100 + tid)
        mine: list[tuple[int, str, str]] = []  # pairs this thread saw accepted: retried later
        n = 0

        def order(idx: int) -> str:
            nonlocal n
            n += 1
            return f"i{it}-k{idx}-t{tid}-{n}"

        try:
            while True:
                r = rng.random()
                with lock:
                    spent = not fresh
                    if spent and (retries_left[0] <= 0 or not (mine or old)):
                        return
                if (spent or r < 0.15) and (mine or old):  # a retry, or a known key with a new order
                    with lock:
                        retries_left[0] -= 1
                    if mine and (not old or rng.random() < 0.6):
                        idx, key, asked = rng.choice(mine)
                    else:
                        idx, key, kind, text = rng.choice(old)
                        asked = text if kind == "A" and rng.random() < 0.5 else order(idx)
                    acks.write([_line(idx, asked, vault.redeem(key, asked))])
                elif r < 0.55:  # redeem_many: a batch of random size, sometimes with known keys in it
                    items = [item for item in (take(rng) for _ in range(rng.randint(1, 16))) if item]
                    if not items:
                        continue
                    pairs = [(idx, key, order(idx)) for idx, key in items]
                    if old and rng.random() < 0.3:
                        idx, key, _, _ = rng.choice(old)
                        pairs.insert(rng.randrange(len(pairs) + 1), (idx, key, order(idx)))
                    results = vault.redeem_many([(key, o) for _, key, o in pairs])
                    acks.write([_line(idx, o, res) for (idx, _, o), res in zip(pairs, results)])
                    mine.extend((idx, key, o) for (idx, key, o), res in zip(pairs, results)
                                if res.status.value == "accepted")
                elif r < 0.93:  # a single redeem: group commit with the other threads
                    item = take(rng)
                    if item is None:
                        continue
                    idx, key = item
                    asked = order(idx)
                    result = vault.redeem(key, asked)
                    acks.write([_line(idx, asked, result)])
                    if result.status.value == "accepted":
                        mine.append((idx, key, asked))
                else:  # a void
                    item = take(rng)
                    if item is None:
                        continue
                    idx, key = item
                    reason = f"void-i{it}-k{idx}-t{tid}"
                    acks.write([_line(idx, reason, vault.void(key, reason))])
                if pause:
                    time.sleep(rng.uniform(0, pause))
        except BaseException:
            _die(f"storm thread {tid} failed:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=storm, args=(tid,)) for tid in range(int(work["threads"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    vault.close()
    _say("done")


def issue(store: str, identity_path: str, count: str, keys_out: str, manifest_out: str) -> None:
    from keyvault import Identity, Vault

    identity = Identity.load(identity_path)
    vault = Vault.open(store)
    _say("ready")
    info = vault.issue_batch(identity, "CRASH-ISSUE", int(count), keys_out=keys_out, manifest_out=manifest_out)
    vault.close()
    _say(f"done {info.id}")


def import_manifest(store: str, manifest: str) -> None:
    from keyvault import Vault

    vault = Vault.open(store)
    _say("ready")
    info, new = vault.import_manifest(manifest)
    vault.close()
    _say(f"done {info.id} {new}")


def bystander(store: str) -> None:
    """Keep the store open across the kills (as a long-lived server process would) and act on request.

    While it holds the environment, the next opener does not reset LMDB's lock file: a child killed
    holding the writer lock leaves it to be recovered (robust mutex), and its reader slot stays
    until ``reader_check``. Requests are JSON lines on stdin, each answered by one JSON line:
    ``{"op": "redeem", "key": K, "order": O}``, ``{"op": "batch", "batch": B}`` (a checkpoint signed,
    a write, then: is the batch in the catalog), ``{"op": "quit"}``.

    The write comes first on purpose. A writer killed after writing its meta page but before
    publishing the new transaction id in the lock file has committed, yet readers in processes that
    kept the environment open go on reading the previous snapshot until the next writer recovers the
    dead writer's mutex (LMDB then republishes the newest meta). keyvault takes every decision in a
    write transaction, so this lag can never admit a second redemption; a read alone may lag.
    """
    from keyvault import Vault

    vault = Vault.open(store)
    _say("ready")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        if request["op"] == "redeem":
            result = vault.redeem(request["key"], request["order"])
            answer = {"status": result.status.value, "order_id": result.order_id, "redeemed_at": result.redeemed_at}
        else:
            vault.checkpoint()
            info = vault.catalog().batches.get(int(request["batch"]))
            answer = {"present": info is not None, "count": info.count if info else 0}
        _say(json.dumps(answer))
    vault.close()
    _say("done")


def main(argv: list[str]) -> None:
    modes: dict[str, tuple[Callable[..., None], int]] = {"redeem": (redeem_storm, 3), "issue": (issue, 5),
                                                         "import": (import_manifest, 2), "bystander": (bystander, 1)}
    if not argv or argv[0] not in modes or len(argv) - 1 != modes[argv[0]][1]:
        sys.exit(__doc__)
    try:
        modes[argv[0]][0](*argv[1:])
    except BaseException:
        _die(traceback.format_exc())


if __name__ == "__main__":
    main(sys.argv[1:])
