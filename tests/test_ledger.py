"""The redemption ledger, redeem_many and group commit: exactly once, in order, folded without loss."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keyvault import Status, UsageError, Vault
from keyvault.engine.groupcommit import GroupCommit

from conftest import Issued, eventually


def test_redeem_many_answers_each_pair_in_order(platform: Vault, issued: Issued) -> None:
    keys = issued.keys
    platform.redeem(keys[3], "earlier")
    platform.void(keys[4], "refund")
    forged = keys[5][:-1] + ("0" if keys[5][-1] != "0" else "1")
    results = platform.redeem_many([
        (keys[0], "A"), (keys[1], "B"), (keys[0], "A"), (keys[0], "C"), (keys[3], "earlier"), (keys[3], "D"),
        (keys[4], "E"), ("not a key", "F"), (forged, "G"),
    ])
    assert [r.status for r in results] == [
        Status.ACCEPTED, Status.ACCEPTED, Status.ACCEPTED, Status.REDEEMED, Status.ACCEPTED, Status.REDEEMED,
        Status.VOID, Status.MALFORMED, Status.MALFORMED,
    ]
    assert results[0] == results[2]  # the same pair twice: the same answer
    assert results[3].order_id == "A" and results[5].order_id == "earlier"
    assert results[4] == platform.redeem(keys[3], "earlier")
    assert [r.serial for r in results[:2]] == issued.serials[:2]
    assert platform.verify(keys[1]).order_id == "B"
    assert platform.redeem_many([]) == []


def test_redeem_many_refuses_bad_arguments_before_touching_anything(platform: Vault, issued: Issued) -> None:
    with pytest.raises(UsageError):
        platform.redeem_many([(issued.keys[0], "A"), (issued.keys[1], "")])
    with pytest.raises(UsageError):
        platform.redeem_many([(issued.keys[0], "A"), (42, "B")])  # type: ignore[list-item]
    assert platform.verify(issued.keys[0]).status is Status.VALID


def test_ledger_folds_without_losing_a_change(tmp_path: Path, platform: Vault, issued: Issued,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("keyvault.engine.ledger.FOLD_AT", 7)
    keys = issued.keys
    first = {i: platform.redeem(keys[i], f"order-{i}") for i in range(0, 40, 2)}
    for i in range(1, 12, 2):
        platform.void(keys[i], f"refund {i}")
    with platform.engine.store.read() as txn:
        head = txn.head()
    assert head.log_size - head.folded < 7  # folded along the way: every overlay stays bounded
    assert platform.verify_log() == head.log_size  # the events stay, chained and signed
    for vault in (platform, None):
        if vault is None:
            platform.close()
            vault = Vault.open(tmp_path / "platform-store")
        for i, answer in first.items():
            assert vault.redeem(keys[i], f"order-{i}") == answer
            assert vault.verify(keys[i]).order_id == f"order-{i}"
        for i in range(1, 12, 2):
            assert vault.verify(keys[i]).reason == f"refund {i}"
        assert vault.verify(keys[13]).status is Status.VALID
    stats = vault.stats()["totals"]
    assert (stats["redeemed"], stats["void"]) == (20, 6)
    vault.close()


def _redeem_range(path: str, keys: list[str], tag: str, fold_at: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    ledger_module = __import__("keyvault.engine.ledger", fromlist=["FOLD_AT"])
    ledger_module.FOLD_AT = fold_at
    with Vault.open(path) as vault:
        queue.put([(r.serial, r.status.value, r.order_id) for r in
                   (vault.redeem(key, f"{tag}-{i}") for i, key in enumerate(keys))])


def test_processes_folding_under_each_other_keep_exactly_once(tmp_path: Path, platform: Vault,
                                                               issued: Issued) -> None:
    """Two processes redeem the same keys while folding every few entries: one winner per key."""
    keys = issued.keys[:60]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_redeem_range, args=(str(tmp_path / "platform-store"), keys, tag, 5, queue))
             for tag in ("p", "q")]
    for p in procs:
        p.start()
    answers = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for i, key in enumerate(keys):
        winners = {a[i][2] for a in answers if a[i][1] == "accepted"}
        assert len(winners) == 1, (i, answers[0][i], answers[1][i])
        (winner,) = winners
        assert all(a[i][2] == winner for a in answers)  # the loser was told who won
        assert platform.verify(key).order_id == winner


def test_concurrent_redeems_of_one_key_accept_exactly_one(platform: Vault, issued: Issued) -> None:
    start = threading.Barrier(32)
    answers: dict[int, object] = {}

    def race(i: int) -> None:
        start.wait()
        answers[i] = platform.redeem(issued.keys[9], f"order-{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [a for a in answers.values() if a.status is Status.ACCEPTED]  # type: ignore[attr-defined]
    assert len(accepted) == 1
    winner = accepted[0].order_id  # type: ignore[attr-defined]
    assert all(a.order_id == winner for a in answers.values())  # type: ignore[attr-defined]


def test_group_commit_batches_the_callers_that_queue_during_a_commit() -> None:
    batches: list[list[int]] = []
    release = threading.Event()

    def run(items: list[int], before_wait: Callable[[], None]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(30)  # the first commit is slow: everyone else queues behind it
        return [item * 10 for item in items]

    group: GroupCommit[int, int] = GroupCommit(run)
    results: dict[int, int] = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, group.submit(0)))
    first.start()
    while not batches:
        threading.Event().wait(0.001)
    others = [threading.Thread(target=lambda i=i: results.__setitem__(i, group.submit(i))) for i in range(1, 32)]
    for t in others:
        t.start()
    while group.waiting < 31:
        threading.Event().wait(0.001)
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert results == {i: i * 10 for i in range(32)}
    assert [len(b) for b in batches] == [1, 31]


def test_group_commit_hands_the_lead_over_many_times_and_answers_every_caller_its_own() -> None:
    batches: list[int] = []

    def run(items: list[int], before_wait: Callable[[], None]) -> list[int]:
        batches.append(len(items))
        time.sleep(0.0002)  # a commit takes time: callers queue, leaders hand over
        if len(batches) % 7 == 0:
            raise OSError(f"failed commit {len(batches)}")
        return [-item for item in items]

    group: GroupCommit[int, int] = GroupCommit(run)
    answers: dict[int, int | str] = {}

    def caller(first: int) -> None:
        for item in range(first, first + 300):
            try:
                answers[item] = group.submit(item)
            except OSError as exc:
                answers[item] = str(exc)

    threads = [threading.Thread(target=caller, args=(1000 * t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 16 * 300 and sum(batches) == 16 * 300
    assert max(batches) > 1 and len(batches) < 16 * 300  # shared commits
    failed = [a for a in answers.values() if isinstance(a, str)]
    assert failed and all(a.startswith("failed commit") for a in failed)
    assert all(a == -item for item, a in answers.items() if not isinstance(a, str))


def test_group_commit_wakes_the_callers_of_a_commit_once_the_next_batch_waits_on_the_disk() -> None:
    gates = {1: threading.Event(), 2: threading.Event(), 3: threading.Event()}
    batches: list[list[int]] = []
    returned: set[int] = set()

    def run(items: list[int], before_wait: Callable[[], None]) -> list[int]:
        batches.append(list(items))
        gates[len(batches)].wait(30)  # each commit waits for the test
        before_wait()
        return [item * 10 for item in items]

    group: GroupCommit[int, int] = GroupCommit(run)

    def caller(item: int) -> None:
        assert group.submit(item) == item * 10
        returned.add(item)

    def start(items: range, queued: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=caller, args=(i,)) for i in items]
        for t in threads:
            t.start()
        eventually(lambda: group.waiting >= queued, "the callers did not queue", step=0.001)
        return threads

    threads = start(range(0, 1), 0)  # batch 1: [0]
    eventually(lambda: len(batches) == 1, "batch 1 did not start", step=0.001)
    threads += start(range(1, 4), 3)  # batch 2: [1, 2, 3], queued behind it
    gates[1].set()
    eventually(lambda: len(batches) == 2, "batch 2 did not start", step=0.001)
    threads += start(range(4, 6), 2)  # batch 3: [4, 5]
    gates[2].set()
    eventually(lambda: len(batches) == 3 and 1 in returned, "batch 3 did not start", step=0.001)  # 1 led batch 2
    time.sleep(0.05)
    assert not returned & {2, 3}  # answered, durable, and still asleep: batch 3 has not reached the disk
    gates[3].set()
    for t in threads:
        t.join(30)
    assert batches == [[0], [1, 2, 3], [4, 5]]
    assert returned == set(range(6))  # 2 and 3 woken by batch 3's before_wait; 5 with no batch after it


def test_group_commit_failure_reaches_every_caller_in_the_batch() -> None:
    def run(items: list[int], before_wait: Callable[[], None]) -> list[int]:
        raise OSError("disk full")

    group: GroupCommit[int, int] = GroupCommit(run)
    with pytest.raises(OSError, match="disk full"):
        group.submit(1)
    with pytest.raises(OSError):  # the group is usable again: the next caller leads
        group.submit(2)


def test_redeem_and_void_events_round_trip() -> None:
    from keyvault import _fast
    from keyvault.formats.events import change_of, parse_leaf

    (_, leaf), = _fast.ledger_leaves(41, bytes(32), [(123456789, 1, 1_700_000_000_000, "ORDER-é")], None)[0]
    assert change_of(leaf) == (123456789, 1, 1_700_000_000_000, "ORDER-é")
    event = parse_leaf(leaf)
    assert (event["index"], event["type"], event["order_id"], event["at_ms"]) == (41, "redeem", "ORDER-é",
                                                                               1_700_000_000_000)
    (_, leaf), = _fast.ledger_leaves(0, bytes(32), [(5, 2, 7, "refund")], None)[0]
    assert change_of(leaf) == (5, 2, 7, "refund") and parse_leaf(leaf)["reason"] == "refund"


def test_folds_take_the_oldest_slice_and_keep_every_answer(platform: Vault, issued: Issued,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Past FOLD_AT unfolded changes, a fold in slices writes the oldest ones and leaves FOLD_AT - FOLD_AT // slices:
    every earlier change is then in the card records, every later one in the log, and both answer alike."""
    from keyvault.store.records import OUTCOME, u64

    monkeypatch.setattr("keyvault.engine.ledger.FOLD_AT", 10)
    platform.fold_slices = 5
    keys = issued.keys[:60]
    for i in range(0, 39, 3):  # batches of 3, so a fold sometimes takes more than one slice
        platform.redeem_many([(key, f"o-{i + j}") for j, key in enumerate(keys[i:i + 3])])
        with platform.engine.store.read() as txn:
            folded = sum(1 for _ in txn.items("outcomes"))
        redeemed = i + 3
        assert redeemed - folded < 10, "a fold left FOLD_AT or more changes unfolded"
        if redeemed >= 10:
            assert redeemed - folded >= 8, "a fold took more than the oldest slice"
    platform.void(keys[45], "recall")
    with platform.engine.store.read() as txn:
        folded = txn.head().folded
        for key in keys[:39]:  # each folded change holds its event's index below the mark
            record = txn.get("outcomes", u64(_serial(key)))
            if record is not None:
                assert OUTCOME.unpack_from(record)[2] < folded
    results = platform.verify_many(keys[:46])
    assert [r.order_id for r in results[:39]] == [f"o-{i}" for i in range(39)]
    assert all(r.status is Status.REDEEMED for r in results[:39]) and results[45].status is Status.VOID
    assert all(r.status is Status.VALID for r in results[39:45])
    retry = platform.redeem_many([(keys[0], "o-0"), (keys[1], "other")])
    assert [r.status for r in retry] == [Status.ACCEPTED, Status.REDEEMED]


def test_oldest_slice_falls_back_to_sorting_when_the_overlay_is_out_of_log_order() -> None:
    from keyvault.engine.ledger import _oldest

    ordered = {serial: (2, 0, "", index) for index, serial in enumerate([50, 10, 40, 20, 30])}
    assert _oldest(ordered, 2) == ({50: (2, 0, "", 0), 10: (2, 0, "", 1)}, 2)
    shuffled = {40: (2, 0, "", 2), 10: (2, 0, "", 1), 20: (2, 0, "", 3), 50: (2, 0, "", 0)}
    chosen, left = _oldest(shuffled, 2)
    assert set(chosen) == {50, 10} and left == 2


def _serial(key: str) -> int:
    from keyvault import _fast

    return int(_fast.parse_key(key)[1])
