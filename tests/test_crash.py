"""No loss across crashes: a child process works on a store and is killed with SIGKILL at a random moment.

The child is ``tests/crash_driver.py``, run with the installed package. After every kill the parent
reopens the store (``Vault.open`` must succeed: LMDB clears the dead child's reader slot) and checks:

* redeem storm: every acknowledged redemption is there with its order and first ``redeemed_at``,
  every acknowledged void with its reason (after every kill: all of them while there are at most
  20,000, beyond that the recent ones, those handed out again and a random 20,000 of the rest,
  with every one checked after every tenth kill and at the end); no key is ever acknowledged with
  two orders, or with an order and a void; a retry of an accepted order is answered ``accepted``
  again; keys the child tried but never acknowledged are either untouched or hold one of its own
  orders for that key; the counters agree with the keys; the event log's chain, tree and every
  checkpoint verify and ``audit`` is clean;
* issue and import: the batch is either wholly there (count, card records, a sample of its keys
  valid) or wholly absent (no batch, no card record in its serial range, no commitment, no event),
  and the store goes on working.

Iterations: ``KEYVAULT_CRASH_ITERATIONS`` (read when this module is imported; 25 by default, 250 in
``make stress``); the issue and import tests run 4/5 of that many each (20 by default, 200 in
stress). On the pure-Python path (``KEYVAULT_NO_EXTENSIONS=1``) batches are ten times smaller, so
both CI passes stay short: the transactions are the same, only the key counts differ.
"""

from __future__ import annotations

import csv
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keyvault import Identity, Status, Vault, _fast
from keyvault.engine.issuing import next_batch
from keyvault.formats.keyformat import batch_text, make_batch, make_serial
from keyvault.store.records import LEVEL_BATCH, from_u64, u64

ITERATIONS = int(os.environ.get("KEYVAULT_CRASH_ITERATIONS", "25"))
BATCH_ITERATIONS = max(1, round(ITERATIONS * 4 / 5))
DRIVER = Path(__file__).with_name("crash_driver.py")
SCALE = 1 if _fast.COMPILED else 10  # the pure path is about ten times slower: ten times fewer keys

STOCK = 200_000 // SCALE  # keys issued up front for the redeem storm (and again whenever the pool runs low)
BUDGET = 5_000  # fresh keys handed to each storm child (more than it spends before most kills)
BATCH = 300_000 // SCALE  # keys in a batch issued or imported under the kill
FOLD_AT = 500  # the storm child folds its ledger this often (100,000 in production)
CHECK_SAMPLE = 20_000  # known keys checked after a kill once there are more (see check_keys)
FULL_CHECK_EVERY = 10  # and all of them after every tenth kill, and at the end
KILL_WINDOW = 0.6  # seconds after "ready" within which the kill lands (uniformly)
EARLY_KILLS = 0.1  # share of kills aimed at the child's start-up (opening the store) instead


# -- the child ----------------------------------------------------------------------------------------


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    stderr: Path
    started: float
    out: bytes = b""
    ready_at: float | None = None
    alive_at_kill: bool = False

    def lines(self) -> list[str]:
        return self.out.decode("utf-8", "replace").splitlines()

    def read_until(self, word: str, timeout: float) -> bool:
        """Read stdout until a line starting with ``word``; False when the child ended first."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while not any(line.startswith(word) for line in self.lines()):
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"the crash driver said nothing for {timeout:.0f} s:\n{self.stderr_text()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return False
                self.out += chunk
        return True

    def finished(self) -> bool:
        """The child said "done": its call returned before the kill."""
        return any(line.startswith("done") for line in self.lines())

    def stderr_text(self) -> str:
        return self.stderr.read_text("utf-8", "replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL (if still running), reap, and collect the rest of stdout; fail on the child's own errors."""
        self.alive_at_kill = self.proc.poll() is None
        if self.alive_at_kill:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.out += self.proc.stdout.read()  # type: ignore[union-attr]
        self.proc.stdout.close()  # type: ignore[union-attr]
        code = self.proc.returncode
        if code not in (0, -signal.SIGKILL):
            pytest.fail(f"the crash driver failed by itself (exit {code}):\n{self.stderr_text()}")


def spawn(tmp: Path, *args: str) -> Child:
    err = tmp / "driver.stderr"
    with open(err, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(DRIVER), *args], stdout=subprocess.PIPE, stderr=fh,
                                stdin=subprocess.DEVNULL, cwd=tmp)
    return Child(proc, err, time.monotonic())


class Bystander:
    """A second process holding the store open across every kill (``crash_driver.py bystander``).

    It is the first to write after each kill: if the dead child held LMDB's writer lock, the
    bystander's write must recover it rather than hang (a parent that opened the store afresh
    would instead find itself alone and reset the lock file, hiding the problem).
    """

    def __init__(self, tmp: Path, store: Path) -> None:
        self.stderr = tmp / "bystander.stderr"
        with open(self.stderr, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, str(DRIVER), "bystander", str(store)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=fh, cwd=tmp)
        self._buf = b""
        assert self._line(120, "start") == "ready"

    def _line(self, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"the bystander did not answer {what} in {timeout:.0f} s: a write after the kill hung "
                            "(the dead child's writer lock was not recovered?)")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.kill()
                    pytest.fail(f"the bystander died ({what}):\n{self.stderr.read_text('utf-8', 'replace')[-4000:]}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8")

    def ask(self, **request: object) -> dict[str, object]:
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        answer: dict[str, object] = json.loads(self._line(60, repr(request.get("op"))))
        return answer

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.close_pipes()

    def close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def close(self) -> None:
        """Quit cleanly (its Vault closed): the store is no one's but the parent's afterwards."""
        if self.proc.poll() is None:
            self.proc.stdin.write(b'{"op": "quit"}\n')  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            assert self._line(60, "quit") == "done"
            self.proc.wait(30)
        self.close_pipes()
        assert self.proc.returncode == 0, self.stderr.read_text("utf-8", "replace")[-4000:]


@pytest.fixture
def bystanders(tmp_path: Path) -> Iterator[Callable[[Path], Bystander]]:
    """Start bystanders on stores; any still running at the end is killed."""
    made: list[Bystander] = []

    def start(store: Path) -> Bystander:
        made.append(Bystander(tmp_path, store))
        return made[-1]

    yield start
    for b in made:
        b.kill()


def run_and_kill(child: Child, rng: random.Random, window: float, startup: float) -> None:
    """Kill the child at a random moment: mostly within ``window`` s of its "ready", sometimes while starting."""
    if rng.random() < EARLY_KILLS:
        time.sleep(rng.uniform(0, startup))
    elif child.read_until("ready", 120):
        child.ready_at = time.monotonic()
        time.sleep(rng.uniform(0, window))
    child.kill()


def calibrate(tmp: Path, *args: str) -> float:
    """Seconds from the child's "ready" to its "done", for a run left alone: the kills are spread over it."""
    child = spawn(tmp, *args)
    assert child.read_until("ready", 120)
    t0 = time.monotonic()
    assert child.read_until("done", 300), child.stderr_text()
    seconds = time.monotonic() - t0
    child.kill()
    return seconds


def seeded() -> random.Random:
    """The kill timings' random source: KEYVAULT_CRASH_SEED replays a run's choices (printed first)."""
    seed = os.environ.get("KEYVAULT_CRASH_SEED") or os.urandom(8).hex()
    print(f"KEYVAULT_CRASH_SEED={seed}")
    return random.Random(seed)


def report(record_property: Callable[[str, object], None], name: str, figures: Mapping[str, object]) -> None:
    for key, value in figures.items():
        record_property(key, value)
    print(f"\n{name}: " + ", ".join(f"{key}={value}" for key, value in figures.items()))


# -- the redeem storm ---------------------------------------------------------------------------------


def read_acks(path: Path) -> list[list[str]]:
    """The complete ack lines (tab-separated fields); a last line cut by the kill has no newline and is dropped."""
    if not path.exists():
        return []
    pieces = path.read_bytes().split(b"\n")
    rows = []
    for raw in pieces[:-1]:  # pieces[-1] is b"" or a line the kill cut short
        fields = raw.decode("utf-8").split("\t")
        assert len(fields) == 5 and fields[0] in "ARVX" and len(fields[0]) == 1, f"garbled ack line {raw!r}"
        rows.append(fields)
    return rows


@dataclass
class Ledger:
    """What the parent knows for sure about each key, from acks and from what the store showed after a kill."""

    keys: list[str] = field(default_factory=list)
    known: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # idx -> (A|V, order|reason, when)
    pool: list[int] = field(default_factory=list)  # keys still valid, never handed out (or handed back)
    since: dict[int, int] = field(default_factory=dict)  # idx -> the iteration its fact was learned in

    def take(self, rng: random.Random) -> int:
        """A random key from the pool (swapped with the last: O(1))."""
        i = rng.randrange(len(self.pool))
        self.pool[i], self.pool[-1] = self.pool[-1], self.pool[i]
        return self.pool.pop()

    def learn(self, idx: int, kind: str, text: str, when: str, how: str, it: int) -> None:
        """A fact about a key; a second, different fact is a double redemption (or a lost one)."""
        mark = f"-k{idx}-"
        assert mark in text, f"key {idx} is {kind} by {text!r}, which was never asked for that key ({how})"
        seen = self.known.get(idx)
        if seen is None:
            self.known[idx] = (kind, text, when)
            self.since[idx] = it
        else:
            assert seen == (kind, text, when), (
                f"key {idx}: {how} says {(kind, text, when)}, but it was already {seen}: "
                + ("a double redemption" if kind == seen[0] == "A" else "an acknowledged outcome changed"))


def issue_stock(vault: Vault, supplier: Identity, tmp: Path, ledger: Ledger) -> None:
    n = len(list(tmp.glob("stock-*.csv")))
    keys_csv, manifest = tmp / f"stock-{n}.csv", tmp / f"stock-{n}.kvm"
    vault.issue_batch(supplier, "POINTS-100", STOCK, keys_out=keys_csv, manifest_out=manifest)
    with open(keys_csv, newline="") as fh:
        new = [row["key"] for row in csv.DictReader(fh)]
    assert len(new) == STOCK
    start = len(ledger.keys)
    ledger.keys.extend(new)
    ledger.pool.extend(range(start, start + STOCK))
    keys_csv.write_text("")  # keep the name (it numbers the next stock batch), drop the plaintext keys
    manifest.unlink()


def check_keys(vault: Vault, ledger: Ledger, handed: list[int], old: list[int], it: int,
               rng: random.Random) -> tuple[int, int]:
    """Known keys as known; keys handed to the child this time either untouched or holding its own order.

    Every known key is checked while there are at most CHECK_SAMPLE of them, and in every
    FULL_CHECK_EVERY-th iteration; otherwise those learned in this or the last iteration, those
    handed to the child again, and a random CHECK_SAMPLE of the rest (a verify of a spent key costs
    about 10 us: checking 180,000 after each of 250 kills would take most of the stress run).
    Returns how many facts were checked, and how many handed keys were still unspent (the kill came
    before the storm ran out of keys).
    """
    if len(ledger.known) <= CHECK_SAMPLE or it % FULL_CHECK_EVERY == FULL_CHECK_EVERY - 1:
        chosen = list(ledger.known)
    else:
        recent = {idx for idx in ledger.known if ledger.since[idx] >= it - 1} | set(old)
        older = [idx for idx in ledger.known if idx not in recent]
        chosen = [*recent, *rng.sample(older, min(CHECK_SAMPLE, len(older)))]
    known = [(idx, ledger.known[idx]) for idx in chosen]
    results = vault.verify_many([ledger.keys[idx] for idx, _ in known])
    for (idx, (kind, text, when)), result in zip(known, results):
        if kind == "A":
            assert (result.status, result.order_id, result.redeemed_at) == (Status.REDEEMED, text, when), (
                f"acknowledged redemption of key {idx} by {text} at {when} is not in the store after kill "
                f"{it}: {result.to_dict()}")
        else:
            assert (result.status, result.reason, result.voided_at) == (Status.VOID, text, when), (
                f"acknowledged void of key {idx} ({text}) is not in the store after kill {it}: {result.to_dict()}")
    fresh = [idx for idx in handed if idx not in ledger.known]
    unspent = 0
    for idx, result in zip(fresh, vault.verify_many([ledger.keys[idx] for idx in fresh])):
        if result.status is Status.VALID:
            ledger.pool.append(idx)  # never spent: hand it out again
            unspent += 1
        elif result.status is Status.REDEEMED:  # committed, but the kill came before its ack
            assert result.order_id and result.redeemed_at and result.order_id.startswith(f"i{it}-"), result
            ledger.learn(idx, "A", result.order_id, result.redeemed_at, "the store", it)
        elif result.status is Status.VOID:
            assert result.reason and result.voided_at and result.reason.startswith(f"void-i{it}-"), result
            ledger.learn(idx, "V", result.reason, result.voided_at, "the store", it)
        else:
            pytest.fail(f"key {idx} handed to the child in iteration {it} is now {result.to_dict()}")
    return len(known), unspent


def check_store(vault: Vault, ledger: Ledger) -> int:
    """The log verifies, the audit is clean, and the counters agree with the keys; the log's size."""
    events = vault.verify_log()
    audit = vault.audit()
    assert audit["clean"], audit
    totals = vault.stats()["totals"]
    kinds = [kind for kind, _, _ in ledger.known.values()]
    assert (totals["redeemed"], totals["void"]) == (kinds.count("A"), kinds.count("V")), totals
    return events


def test_redeem_storm_killed_at_random_loses_nothing(tmp_path: Path, bystanders: Callable[[Path], Bystander],
                                                     record_property: Callable[[str, object], None]) -> None:
    rng = seeded()
    store = tmp_path / "store"
    supplier = Identity.generate("Acme Games")
    ledger = Ledger()
    with Vault.init(store) as vault:
        vault.set_checkpoint_policy(100, 1)  # checkpoints are signed under the kill too
        issue_stock(vault, supplier, tmp_path, ledger)
    bystander = bystanders(store)
    startup = 0.5
    figures: dict[str, float] = {
        "iterations": 0, "ack_lines": 0, "acked_redemptions": 0, "acked_voids": 0, "facts_checked": 0,
        "kills_mid_storm": 0, "kills_at_startup": 0, "folds": 0, "events": 0}
    folded = 0
    started = time.monotonic()
    for it in range(ITERATIONS):
        handed = [ledger.take(rng) for _ in range(min(BUDGET, len(ledger.pool)))]
        old = rng.sample(sorted(ledger.known), min(150, len(ledger.known)))
        work = {"iteration": it, "seed": rng.randrange(1 << 30), "fold_at": FOLD_AT, "fold_slices": 1 + 4 * (it % 2),
                "threads": 4, "pause": 0.01,
                "retry_budget": 400, "fresh": [[idx, ledger.keys[idx]] for idx in handed],
                "old": [[idx, ledger.keys[idx], *ledger.known[idx][:2]] for idx in old]}
        work_path, acks = tmp_path / f"work-{it}.json", tmp_path / f"acks-{it}"
        work_path.write_text(json.dumps(work))
        child = spawn(tmp_path, "redeem", str(store), str(work_path), str(acks))
        run_and_kill(child, rng, KILL_WINDOW, startup)
        if child.ready_at is not None:
            startup = child.ready_at - child.started
        figures["kills_at_startup"] += child.alive_at_kill and child.ready_at is None
        first: set[int] = set()
        for kind, idx_text, text, when, asked in read_acks(acks):
            idx = int(idx_text)
            assert kind != "X", f"iteration {it}: key {idx} was answered {text!r}, which a spendable key never is"
            if kind == "A":
                assert text == asked, f"key {idx}: asked for order {asked}, told {text} accepted it"
            elif kind == "R":
                assert text != asked, f"key {idx}: a retry of its own order {asked} was refused, not answered again"
            figures["ack_lines"] += 1
            if idx not in ledger.known and kind in "AV":
                first.add(idx)
            ledger.learn(idx, "V" if kind == "V" else "A", text, when, f"an ack of iteration {it}", it)
        figures["acked_redemptions"] += sum(ledger.known[idx][0] == "A" for idx in first)
        figures["acked_voids"] += sum(ledger.known[idx][0] == "V" for idx in first)
        idx = ledger.take(rng)  # the first write after the kill: by the process that kept the store open
        answer = bystander.ask(op="redeem", key=ledger.keys[idx], order=f"by-i{it}-k{idx}-0")
        assert answer["status"] == "accepted", answer
        ledger.learn(idx, "A", f"by-i{it}-k{idx}-0", str(answer["redeemed_at"]), "the bystander", it)
        with Vault.open(store) as vault:  # must open cleanly after every kill
            checked, unspent = check_keys(vault, ledger, handed, old, it, rng)
            figures["facts_checked"] += checked
            # "mid-storm": the child was killed after it started and before it ran out of fresh keys
            figures["kills_mid_storm"] += child.alive_at_kill and child.ready_at is not None and unspent > 0
            figures["events"] = check_store(vault, ledger)
            with vault.engine.store.read() as txn:
                head = txn.head()
            figures["folds"] += head.folded > folded
            folded = head.folded
            if len(ledger.pool) < 2 * BUDGET:
                issue_stock(vault, supplier, tmp_path, ledger)
        work_path.unlink()
        acks.unlink(missing_ok=True)
        figures["iterations"] = it + 1
    with Vault.open(store) as vault:  # at the end, every key ever issued: spent as known, or still valid
        results = vault.verify_many(ledger.keys)
        for idx, result in enumerate(results):
            fact = ledger.known.get(idx)
            expected = Status.VALID if fact is None else Status.REDEEMED if fact[0] == "A" else Status.VOID
            assert result.status is expected, (idx, fact, result.to_dict())
        spare = ledger.pool.pop()
        assert vault.redeem(ledger.keys[spare], "after-the-storm").status is Status.ACCEPTED
    bystander.close()
    figures["seconds"] = round(time.monotonic() - started, 1)
    report(record_property, "redeem storm under SIGKILL", figures)
    assert figures["iterations"] == ITERATIONS
    assert figures["acked_redemptions"] > 0
    assert figures["kills_mid_storm"] >= ITERATIONS // 2, figures  # most kills must land while it works


# -- issue and import ---------------------------------------------------------------------------------


def batch_state(vault: Vault, batch: int, count: int) -> bool:
    """True when the batch is wholly in the store, False when wholly absent; fails on anything between."""
    info = vault.catalog().batches.get(batch)
    first, last = make_serial(batch, 0), make_serial(batch, count - 1)
    with vault.engine.store.read() as txn:
        cards = [from_u64(key) for key, _ in islice(txn.items_from("cards", u64(first)), 2)]
        in_range = [s for s in cards if s <= last]
        commitments = list(islice(txn.items("commitments", u64(batch)), 1))
        events = list(islice(txn.items("subjects", LEVEL_BATCH + u64(batch)), 1))
        ends = (txn.get("cards", u64(first)), txn.get("cards", u64(last)))
        beyond = txn.get("cards", u64(last + 1))
    assert beyond is None, f"batch {batch_text(batch)} has a card record past its last serial"
    if info is None:
        assert ends == (None, None) and not in_range, (
            f"batch {batch_text(batch)} is not in the catalog, but card records of it are: half a batch")
        assert not commitments and not events, f"batch {batch_text(batch)} left commitments or events behind"
        return False
    assert info.count == count
    assert None not in ends and len(in_range) == 2 and commitments and events
    with vault.engine.store.read() as txn:
        n = sum(1 for key, _ in txn.items_from("cards", u64(first)) if from_u64(key) <= last)
    assert n == count, f"batch {batch_text(batch)} holds {n} card records of {count}"
    row = next(b for b in vault.stats()["batches"] if b["batch"] == batch_text(batch))
    assert (row["count"], row["active"]) == (count, count - row["redeemed"] - row["void"]), row
    return True


def sample_keys(path: Path, k: int, rng: random.Random) -> list[str]:
    with open(path, newline="") as fh:
        keys = [row["key"] for row in csv.DictReader(fh)]
    return [keys[0], keys[-1], *rng.sample(keys, min(k, len(keys)))]


def check_batch_store(vault: Vault) -> None:
    vault.verify_log()
    audit = vault.audit()
    assert audit["clean"], audit


def test_killed_issue_leaves_all_or_nothing(tmp_path: Path, bystanders: Callable[[Path], Bystander],
                                            record_property: Callable[[str, object], None]) -> None:
    rng = seeded()
    supplier = Identity.generate("Acme Games")
    identity = tmp_path / "acme.identity"
    supplier.save(identity)
    store = tmp_path / "store"
    Vault.init(store).close()
    Vault.init(tmp_path / "scratch").close()
    window = 1.5 * calibrate(tmp_path, "issue", str(tmp_path / "scratch"), str(identity), str(BATCH),
                             str(tmp_path / "s.csv"), str(tmp_path / "s.kvm"))
    shutil.rmtree(tmp_path / "scratch")
    figures: dict[str, float] = {"iterations": 0, "present": 0, "absent": 0, "kills_mid_issue": 0, "stores": 1,
                                 "issue_seconds": round(window / 1.5, 2)}
    bystander = bystanders(store)
    per_store = 0
    started = time.monotonic()
    for it in range(BATCH_ITERATIONS):
        with Vault.open(store) as vault:
            batch = make_batch(supplier.prefix, next_batch(vault, supplier))
        keys_out, manifest_out = tmp_path / f"keys-{it}.csv", tmp_path / f"batch-{it}.kvm"
        child = spawn(tmp_path, "issue", str(store), str(identity), str(BATCH), str(keys_out), str(manifest_out))
        run_and_kill(child, rng, window, 0.5)
        figures["kills_mid_issue"] += child.alive_at_kill and child.ready_at is not None
        seen = bystander.ask(op="batch", batch=batch)  # the first write after the kill
        with Vault.open(store) as vault:
            present = batch_state(vault, batch, BATCH)
            assert seen == {"present": present, "count": BATCH if present else 0}, seen
            check_batch_store(vault)
            if present:
                # The export is fsynced before the batch is stored: a stored batch has its whole export.
                keys = sample_keys(keys_out, 30, rng)
                assert all(r.status is Status.VALID for r in vault.verify_many(keys))
                assert vault.redeem(keys[0], f"after-kill-{it}").status is Status.ACCEPTED
                per_store += 1
            else:
                assert not child.finished(), "issue_batch returned, but its batch is not in the store"
        figures["present" if present else "absent"] += 1
        keys_out.unlink(missing_ok=True)
        manifest_out.unlink(missing_ok=True)
        if per_store == 4:  # bound the disk used: start again on a new store
            bystander.close()
            shutil.rmtree(store)
            Vault.init(store).close()
            bystander = bystanders(store)
            per_store = 0
            figures["stores"] += 1
        figures["iterations"] = it + 1
    with Vault.open(store) as vault:  # the store still issues and redeems
        vault.issue_batch(supplier, "AFTER", 10, keys_out=tmp_path / "after.csv", manifest_out=tmp_path / "after.kvm")
        key = sample_keys(tmp_path / "after.csv", 1, rng)[0]
        assert vault.redeem(key, "after").status is Status.ACCEPTED
        check_batch_store(vault)
    bystander.close()
    figures["seconds"] = round(time.monotonic() - started, 1)
    report(record_property, "issue_batch under SIGKILL", figures)
    assert figures["kills_mid_issue"] >= BATCH_ITERATIONS // 5, figures  # enough kills land mid-issue


def test_killed_import_leaves_all_or_nothing(tmp_path: Path, bystanders: Callable[[Path], Bystander],
                                             record_property: Callable[[str, object], None]) -> None:
    rng = seeded()
    supplier = Identity.generate("Acme Games")
    pool = []  # (batch key, manifest, sample keys): imported in order, so the manifest chain has no gap
    with Vault.init(tmp_path / "supplier") as source:
        for n in range(3):
            keys_csv, manifest = tmp_path / f"keys-{n}.csv", tmp_path / f"batch-{n}.kvm"
            info = source.issue_batch(supplier, "POINTS-100", BATCH, keys_out=keys_csv, manifest_out=manifest)
            pool.append((info.key, manifest, sample_keys(keys_csv, 30, rng)))
            keys_csv.unlink()
    shutil.rmtree(tmp_path / "supplier")

    def new_store(old: Bystander | None) -> Bystander:
        if old is not None:
            old.close()
        shutil.rmtree(store, ignore_errors=True)
        with Vault.init(store) as vault:
            vault.trust(supplier.public)
        return bystanders(store)

    store = tmp_path / "platform"
    bystander = new_store(None)
    with Vault.init(tmp_path / "scratch") as scratch:
        scratch.trust(supplier.public)
    window = 1.5 * calibrate(tmp_path, "import", str(tmp_path / "scratch"), str(pool[0][1]))
    shutil.rmtree(tmp_path / "scratch")
    figures: dict[str, float] = {"iterations": 0, "present": 0, "absent": 0, "kills_mid_import": 0, "stores": 1,
                                 "import_seconds": round(window / 1.5, 2)}
    nxt = 0
    started = time.monotonic()
    for it in range(BATCH_ITERATIONS):
        batch, manifest, keys = pool[nxt]
        child = spawn(tmp_path, "import", str(store), str(manifest))
        run_and_kill(child, rng, window, 0.5)
        figures["kills_mid_import"] += child.alive_at_kill and child.ready_at is not None
        seen = bystander.ask(op="batch", batch=batch)  # the first write after the kill
        with Vault.open(store) as vault:
            present = batch_state(vault, batch, BATCH)
            assert seen == {"present": present, "count": BATCH if present else 0}, seen
            check_batch_store(vault)
            for earlier, _, earlier_keys in pool[:nxt]:  # batches imported before are untouched
                assert batch_state(vault, earlier, BATCH)
            if present:
                assert all(r.status is Status.VALID for r in vault.verify_many(keys[1:]))
                assert vault.redeem(keys[0], f"after-kill-{it}").status is Status.ACCEPTED
                assert vault.import_manifest(manifest)[1] is False  # a second import changes nothing
                nxt += 1
            else:
                assert not child.finished(), "import_manifest returned, but its batch is not in the store"
                assert all(r.status is Status.UNKNOWN for r in vault.verify_many(keys))
        figures["present" if present else "absent"] += 1
        if nxt == len(pool):
            bystander = new_store(bystander)
            nxt = 0
            figures["stores"] += 1
        figures["iterations"] = it + 1
    with Vault.open(store) as vault:  # the store still imports and redeems
        batch, manifest, keys = pool[nxt]
        assert vault.import_manifest(manifest)[1] is True
        assert vault.redeem(keys[0], "after").status is Status.ACCEPTED
        check_batch_store(vault)
    bystander.close()
    figures["seconds"] = round(time.monotonic() - started, 1)
    report(record_property, "import_manifest under SIGKILL", figures)
    assert figures["kills_mid_import"] >= BATCH_ITERATIONS // 5, figures
