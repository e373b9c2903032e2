"""Checkout: holds, count-limited keys and order lookup, trying to break each promise.

Holds must never oversell (one order at a time, across processes), expire by themselves (judged
against the clock at read time), refuse a confirm after they ended, lose or win atomically against
void and blacklist, and be retried safely. Count-limited keys must be spent at most ``uses`` times,
once per order, whatever races. Damaged checkout records must be refused, never believed.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from conftest import Issued
from keyvault import Identity, NotFoundError, Status, UsageError, Vault
from keyvault.store.records import hold_key, spent_key

T0 = 1_900_000_000_000  # a fixed clock (ms) for the tests that move time


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The store's clock, frozen at T0: move it with ``clock[0] += ms`` (keyvault.clock reads time.time_ns)."""
    now = [T0]
    monkeypatch.setattr(time, "time_ns", lambda: now[0] * 1_000_000)
    return now


@pytest.fixture
def limited(tmp_path: Path, supplier: Identity, supplier_store: Vault, platform: Vault) -> Issued:
    """20 count-limited keys (5 uses each), imported by the platform from their signed manifest."""
    out = tmp_path / "limited"
    out.mkdir()
    info = supplier_store.issue_batch(supplier, "PASS-5", 20, keys_out=out / "keys.csv", manifest_out=out / "b.kvm",
                                      uses=5)
    from conftest import read_export

    keys, serials = read_export(out / "keys.csv")
    platform.import_manifest(out / "b.kvm")
    return Issued(supplier, info, keys, serials, out / "keys.csv", out / "b.kvm")


def test_hold_confirm_and_retries(platform: Vault, issued: Issued) -> None:
    key = issued.keys[0]
    held = platform.hold(key, "order-1", 900)
    assert held.status is Status.HELD and held.order_id == "order-1" and held.expires_at
    assert held.holds_for("order-1")
    assert platform.hold(key, "order-1", 60) == held  # a retry: the same answer, the same expiry
    other = platform.hold(key, "order-2", 900)
    assert other.status is Status.HELD and other.order_id is None and not other.holds_for("order-2")
    assert "order-1" not in repr(other)  # never says which order holds it
    assert platform.redeem(key, "order-2").status is Status.HELD
    assert platform.verify(key).status is Status.HELD
    assert platform.verify_many([key])[0].status is Status.HELD
    (done,) = platform.confirm("order-1")
    assert done.status is Status.ACCEPTED and done.order_id == "order-1"
    assert platform.confirm("order-1") == [done]  # a retry: the same answer, the original time
    assert platform.hold(key, "order-1", 900) == done
    assert platform.redeem(key, "order-2").status is Status.REDEEMED
    assert platform.redeem(key, "order-1") .status is Status.ACCEPTED
    assert platform.verify(key).status is Status.REDEEMED
    kinds = [e["type"] for e in platform.trace(key)["events"]]
    assert kinds[-3:] == ["hold", "confirm", "redeem"]




def _checkout_agent(path: str, inbox: multiprocessing.Queue, outbox: multiprocessing.Queue) -> None:
    """Another process on the store: runs ("hold", key, order) and ("release", order) until told None."""
    with Vault.open(path) as vault:
        while (job := inbox.get()) is not None:
            if job[0] == "hold":
                outbox.put(vault.hold(job[1], job[2], 900).status.value)
            else:
                outbox.put([r.status.value for r in vault.release(job[1])])


def test_single_verify_sees_holds_made_by_another_process(platform: Vault, issued: Issued) -> None:
    """The one-key verify remembers "no key is held" per committed transaction: a hold, a release or a
    hold of another key committed by another process must change its next answer."""
    key, other = issued.keys[20], issued.keys[21]
    assert platform.verify(key).status is Status.VALID  # remembered: nothing held
    ctx = multiprocessing.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    agent = ctx.Process(target=_checkout_agent, args=(str(platform.path), inbox, outbox))
    agent.start()
    try:
        def ask(*job: str) -> object:
            inbox.put(job)
            return outbox.get(timeout=60)

        assert ask("hold", key, "order-x") == "held"
        assert platform.verify(key).status is Status.HELD
        assert ask("release", "order-x") == ["released"]
        assert platform.verify(key).status is Status.VALID
        assert ask("hold", other, "order-y") == "held"  # a hold of another key: this one stays valid
        assert platform.verify(key).status is Status.VALID and platform.verify(other).status is Status.HELD
        assert ask("release", "order-y") == ["released"]
        assert platform.verify(other).status is Status.VALID
    finally:
        inbox.put(None)
        agent.join(60)
    assert agent.exitcode == 0

def test_redeem_by_the_holding_order_confirms_it(platform: Vault, issued: Issued) -> None:
    key = issued.keys[1]
    platform.hold(key, "o", 900)
    assert platform.redeem(key, "o").status is Status.ACCEPTED
    assert platform.confirm("o")[0].status is Status.ACCEPTED
    assert platform.order("o")["keys"][0]["state"] == "redeemed"


def test_release_frees_the_key(platform: Vault, issued: Issued) -> None:
    key = issued.keys[2]
    platform.hold(key, "a", 900)
    (released,) = platform.release("a")
    assert released.status is Status.RELEASED
    assert platform.release("a") == [released]
    assert platform.verify(key).status is Status.VALID
    assert platform.confirm("a")[0].status is Status.RELEASED  # nothing to confirm: it was given up
    assert platform.hold(key, "b", 900).holds_for("b")
    report = platform.order("a")
    assert [k["state"] for k in report["keys"]] == ["released"]
    assert key not in str(report) and report["keys"][0]["serial"] == issued.serials[2]


def test_holds_expire_by_themselves(platform: Vault, issued: Issued, clock: list[int]) -> None:
    key = issued.keys[3]
    held = platform.hold(key, "slow", 60)
    clock[0] += 59_999
    assert platform.verify(key).status is Status.HELD
    clock[0] += 1  # the hold ends: no sweeper, the next read judges it
    assert platform.verify(key).status is Status.VALID
    assert platform.order("slow")["keys"][0]["state"] == "expired"
    (late,) = platform.confirm("slow")  # even though nobody else took the key
    assert late.status is Status.EXPIRED_HOLD and late.expires_at == held.expires_at
    assert platform.confirm("slow") == [late]
    assert platform.verify(key).status is Status.VALID
    assert platform.hold(key, "fast", 60).holds_for("fast")
    assert platform.confirm("fast")[0].status is Status.ACCEPTED
    kinds = [e["type"] for e in platform.trace(key)["events"]]
    assert kinds[-5:] == ["hold", "expire", "hold", "confirm", "redeem"]


def test_expired_hold_can_be_taken_by_another_order(platform: Vault, issued: Issued, clock: list[int]) -> None:
    key = issued.keys[4]
    platform.hold(key, "first", 10)
    clock[0] += 10_000
    assert platform.redeem(key, "second").status is Status.ACCEPTED
    assert platform.confirm("first")[0].status is Status.EXPIRED_HOLD
    assert platform.verify(key).order_id == "second"


def test_void_and_blacklist_during_a_hold_refuse_confirm(platform: Vault, issued: Issued) -> None:
    voided, listed = issued.keys[5], issued.keys[6]
    platform.hold(voided, "v", 900)
    assert platform.void(voided, "refund").status is Status.VOID
    assert platform.confirm("v")[0].status is Status.VOID
    platform.hold(listed, "b", 900)
    platform.blacklist.add("key", listed, "stolen")
    assert platform.confirm("b")[0].status is Status.BLACKLISTED
    platform.blacklist.lift("key", listed, "found")
    assert platform.confirm("b")[0].status is Status.ACCEPTED
    assert platform.void(listed, "too late").status is Status.REDEEMED


def test_bad_input_changes_nothing(platform: Vault, issued: Issued) -> None:
    for ttl in (0, -5, 10**9, float("nan"), "15", True):
        with pytest.raises(UsageError):
            platform.hold(issued.keys[7], "o", ttl)  # type: ignore[arg-type]
    for order in ("", " ", "x" * 129, "a\nb"):
        with pytest.raises(UsageError):
            platform.hold(issued.keys[7], order, 60)
    with pytest.raises(NotFoundError):
        platform.confirm("never-held")
    with pytest.raises(NotFoundError):
        platform.order("never-held")
    assert platform.hold("not-a-key", "o", 60).status is Status.MALFORMED
    assert platform.verify(issued.keys[7]).status is Status.VALID


def test_count_limited_keys(platform: Vault, limited: Issued) -> None:
    key = limited.keys[0]
    first = platform.verify(key)
    assert first.status is Status.VALID and first.uses_left == 5
    answers = [platform.redeem(key, f"order-{i}") for i in range(5)]
    assert [a.uses_left for a in answers] == [4, 3, 2, 1, 0]
    assert all(a.status is Status.ACCEPTED for a in answers)
    assert platform.redeem(key, "order-1") == answers[1]  # once per order: a retry answers the same
    sixth = platform.redeem(key, "order-5")
    assert sixth.status is Status.EXHAUSTED and sixth.uses_left == 0
    assert platform.verify(key).status is Status.EXHAUSTED
    assert platform.verify_many([key, limited.keys[1]])[1].uses_left == 5
    uses = [e for e in platform.trace(key)["events"] if e["type"] == "use"]
    assert [e["order_id"] for e in uses] == [f"order-{i}" for i in range(5)]
    assert platform.order("order-3")["keys"][0]["state"] == "redeemed"


def test_count_limited_redeem_many_in_one_batch(platform: Vault, limited: Issued) -> None:
    key = limited.keys[1]
    pairs = [(key, f"o{i % 7}") for i in range(14)]
    results = platform.redeem_many(pairs)
    accepted = {r.order_id for r in results if r.status is Status.ACCEPTED}
    assert accepted == {"o0", "o1", "o2", "o3", "o4"}
    assert [r.status for r in results[5:7]] == [Status.EXHAUSTED] * 2
    assert results[7] == results[0]
    assert platform.check()["ok"]  # the redeemed counters count the key once, when its last use is spent
    assert platform.stats()["totals"]["redeemed"] == 1


def test_holds_on_count_limited_keys(platform: Vault, limited: Issued, clock: list[int]) -> None:
    key = limited.keys[2]
    for i in range(4):
        assert platform.redeem(key, f"u{i}").status is Status.ACCEPTED
    assert platform.hold(key, "h", 60).holds_for("h")
    refused = platform.redeem(key, "late")
    assert refused.status is Status.HELD and refused.uses_left == 1
    assert platform.hold(key, "late", 60).status is Status.HELD
    clock[0] += 60_000
    assert platform.verify(key).uses_left == 1
    assert platform.redeem(key, "late").uses_left == 0
    assert platform.confirm("h")[0].status is Status.EXPIRED_HOLD


def test_count_limited_keys_survive_manifest_import_and_old_manifests_mean_one(platform: Vault, limited: Issued,
                                                                             issued: Issued) -> None:
    assert platform.catalog().by_id[limited.batch.id].uses == 5
    assert platform.catalog().by_id[issued.batch.id].uses == 1
    assert platform.verify(issued.keys[0]).uses_left is None


def test_damaged_hold_and_uses_records_are_refused(platform: Vault, issued: Issued, limited: Issued) -> None:
    from keyvault.formats.keyformat import parse_serial

    platform.hold(issued.keys[8], "d", 900)
    platform.redeem(limited.keys[3], "x")
    engine = platform.engine
    for key, raw in ((issued.keys[8], hold_key(parse_serial(issued.serials[8]))),
                     (limited.keys[3], spent_key(parse_serial(limited.serials[3])))):
        def damage(txn: object) -> None:
            value = bytearray(txn.get("checkout", raw))  # type: ignore[attr-defined]
            value[0] ^= 1
            txn.put("checkout", raw, bytes(value))  # type: ignore[attr-defined]

        engine.store.write(damage)
        assert platform.verify(key).status is Status.DAMAGED
        assert platform.redeem(key, "y").status is Status.DAMAGED
        assert platform.hold(key, "y", 60).status is Status.DAMAGED
    assert platform.verify(issued.keys[9]).status is Status.VALID
    report = platform.check()
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["checkout"]
    assert issued.serials[8] in failed[0]["detail"] and limited.serials[3] in failed[0]["detail"]


# -- races across processes --------------------------------------------------------------------------------


def _race_hold(path: str, key: str, order: str, start: float, out: multiprocessing.Queue) -> None:
    with Vault.open(path) as vault:
        while time.time() < start:
            pass
        held = vault.hold(key, order, 900)
        confirmed = vault.confirm(order) if held.holds_for(order) else []
        out.put((order, held.holds_for(order), [r.status.value for r in confirmed]))


def _race_use(path: str, key: str, order: str, start: float, out: multiprocessing.Queue) -> None:
    with Vault.open(path) as vault:
        while time.time() < start:
            pass
        first = vault.redeem(key, order)
        again = vault.redeem(key, order)
        out.put((order, first.status.value, first.uses_left, again == first))


def _run(target: object, path: Path, key: str, n: int) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 3
    procs = [ctx.Process(target=target, args=(str(path), key, f"order-{i}", start, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return results


def test_twenty_processes_race_for_one_held_key(platform: Vault, issued: Issued) -> None:
    key = issued.keys[10]
    results = _run(_race_hold, platform.path, key, 20)
    winners = [r for r in results if r[1]]
    assert len(winners) == 1 and winners[0][2] == ["accepted"]
    assert platform.verify(key).order_id == winners[0][0]


def test_twenty_processes_race_for_five_uses(platform: Vault, limited: Issued) -> None:
    key = limited.keys[4]
    results = _run(_race_use, platform.path, key, 20)
    accepted = [r for r in results if r[1] == "accepted"]
    assert len(accepted) == 5 and sorted(r[2] for r in accepted) == [0, 1, 2, 3, 4]
    assert all(r[1] == "exhausted" for r in results if r[1] != "accepted")
    assert all(r[3] for r in results)  # every retry answered the same
    assert platform.verify(key).status is Status.EXHAUSTED


def test_async_vault_checkout(platform: Vault, issued: Issued) -> None:
    import asyncio

    from keyvault.aio import AsyncVault

    key = issued.keys[11]

    async def run() -> None:
        async with AsyncVault(platform) as vault:
            assert (await vault.hold(key, "async", 60)).holds_for("async")
            assert (await vault.confirm("async"))[0].status is Status.ACCEPTED
            assert (await vault.order("async"))["keys"][0]["state"] == "redeemed"
            answers = await vault.checkout_for([("confirm", "async"), ("release", "nobody"), ("hold", key, "", 5)])
            assert answers[0][0].status is Status.ACCEPTED  # type: ignore[index]
            assert isinstance(answers[1], NotFoundError) and isinstance(answers[2], UsageError)

    asyncio.run(run())


# -- SIGKILL mid-confirm ------------------------------------------------------------------------------------

_CONFIRMER = r"""
import json, sys
from keyvault import Vault, Status
store, work, acks, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
keys = json.load(open(work))
with Vault.open(store) as vault, open(acks, "a") as out:
    print("ready", flush=True)
    for i in range(start, len(keys), 2):
        order = f"kill-{i}"
        pair = [keys[i], keys[i + 1]]
        for key in pair:
            vault.hold(key, order, 900)
        answers = vault.confirm(order)
        out.write(json.dumps([order, [[a.status.value, a.serial, a.redeemed_at] for a in answers]]) + "\n")
        out.flush()
"""


def test_sigkill_mid_confirm_loses_no_acknowledged_confirm(tmp_path: Path, platform: Vault, issued: Issued) -> None:
    import json
    import random
    import signal
    import subprocess
    import sys

    keys = issued.keys[100:200]
    work = tmp_path / "work.json"
    work.write_text(json.dumps(keys))
    acks = tmp_path / "acks.jsonl"
    rng = random.Random(11)
    start = 0
    for _ in range(4):
        with subprocess.Popen([sys.executable, "-c", _CONFIRMER, str(platform.path), str(work), str(acks),
                               str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=tmp_path) as child:  # not the source tree: the installed package
            assert child.stdout is not None
            ready = child.stdout.readline()
            if ready != b"ready\n":
                child.kill()
                raise AssertionError(f"the child did not start: {child.communicate()[1].decode()[-2000:]}")
            time.sleep(rng.uniform(0.05, 0.4))
            child.send_signal(signal.SIGKILL)
            _, err = child.communicate()  # closes its pipes
            assert child.returncode in (0, -signal.SIGKILL), err.decode()  # 0: it finished its keys first
        lines = [line for line in acks.read_text().splitlines() if line.endswith("]")]
        start = (int(json.loads(lines[-1])[0].split("-")[1]) + 2) if lines else start
        start += 2  # the pair in flight may be half held: leave it
        if start >= len(keys) - 2:
            break
    acked = [json.loads(line) for line in acks.read_text().splitlines() if line.endswith("]")]
    assert acked, "the child acknowledged no confirm before it was killed: give it longer"
    for order, answers in acked:
        assert [a[0] for a in answers] == ["accepted", "accepted"]
        assert platform.confirm(order) == platform.confirm(order)
        again = platform.confirm(order)
        assert [(r.status.value, r.serial, r.redeemed_at) for r in again] == [tuple(a) for a in answers]
        for status, serial, when in answers:
            assert platform.trace(serial)["status"]["order_id"] == order
    assert platform.check()["ok"]


def _race_void(path: str, key: str, order: str, start: float, out: multiprocessing.Queue) -> None:
    with Vault.open(path) as vault:
        while time.time() < start:
            pass
        if order == "order-0":
            out.put((order, "void", vault.void(key, "refund").status.value))
        elif order == "order-1":
            out.put((order, "blacklist", vault.blacklist.add("key", key, "fraud").reason))
        else:
            held = vault.hold(key, order, 900)
            answer = vault.confirm(order)[0].status.value if held.holds_for(order) else held.status.value
            out.put((order, "checkout", answer))


def test_void_and_blacklist_race_holds_and_confirms(platform: Vault, issued: Issued) -> None:
    for round_ in range(3):
        key = issued.keys[20 + round_]
        results = _run(_race_void, platform.path, key, 12)
        confirmed = [r for r in results if r[1] == "checkout" and r[2] == "accepted"]
        voided = [r for r in results if r[1] == "void"][0][2]
        final = platform.verify(key).status
        assert len(confirmed) <= 1
        if voided == "void":  # the void won: nothing was confirmed before it, nothing after
            assert not confirmed and final is Status.VOID
        else:  # a confirm won: the void is refused as redeemed
            assert voided == "redeemed" and len(confirmed) == 1
            assert platform.trace(key)["status"]["order_id"] == confirmed[0][0]
        platform.blacklist.lift("key", key, "test over")


def _race_after_expiry(path: str, key: str, order: str, start: float, out: multiprocessing.Queue) -> None:
    later = time.time_ns() + 120 * 1_000_000_000  # two minutes on: the hold made before has ended
    offset = later - time.time_ns()
    real = time.time_ns
    time.time_ns = lambda: real() + offset  # type: ignore[assignment]
    with Vault.open(path) as vault:
        while real() / 1e9 < start:
            pass
        if order == "order-0":
            out.put((order, vault.confirm("early")[0].status.value))
        else:
            out.put((order, vault.redeem(key, order).status.value))


def test_no_expired_hold_confirms_while_others_race(platform: Vault, issued: Issued) -> None:
    key = issued.keys[30]
    assert platform.hold(key, "early", 60).holds_for("early")
    results = dict(_run(_race_after_expiry, platform.path, key, 10))
    assert results.pop("order-0") == "expired_hold"
    assert sorted(results.values()).count("accepted") == 1
    assert set(results.values()) == {"accepted", "redeemed"}
    assert platform.confirm("early")[0].status is Status.EXPIRED_HOLD


def test_order_lookup_names_every_redeem(platform: Vault, issued: Issued, limited: Issued,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain redeems, batches, retries, a refused void, a released hold and count-limited uses of one order, all
    in its report; across a fold; a plain redeem of another order stays out of it."""
    from keyvault.engine import ledger

    monkeypatch.setattr(ledger, "FOLD_AT", 3)  # the redeems below fold the ledger more than once
    keys, serials = issued.keys, issued.serials
    assert platform.redeem(keys[0], "shop-1").status is Status.ACCEPTED  # a plain single-use redeem
    assert platform.redeem(keys[0], "shop-1").status is Status.ACCEPTED  # its retry: no second event
    many = platform.redeem_many([(keys[1], "shop-1"), (keys[2], "shop-1"), (keys[3], "other")])
    assert [r.status for r in many] == [Status.ACCEPTED] * 3
    assert platform.void(keys[1], "refund").status is Status.REDEEMED  # a redeemed key cannot be voided
    platform.hold(keys[4], "shop-1", 900)
    platform.release("shop-1")
    platform.hold(keys[5], "shop-1", 900)
    platform.redeem(keys[6], "someone")  # refused to shop-1 below: not its key
    assert platform.redeem(keys[6], "shop-1").status is Status.REDEEMED
    confirmed = {r.serial: r.status for r in platform.confirm("shop-1")}  # every key the order ever held
    assert confirmed == {serials[4]: Status.RELEASED, serials[5]: Status.ACCEPTED}
    assert platform.redeem(limited.keys[0], "shop-1").uses_left == 4
    report = platform.order("shop-1")
    states = {k["serial"]: k["state"] for k in report["keys"]}
    assert states == {serials[0]: "redeemed", serials[1]: "redeemed", serials[2]: "redeemed",
                      serials[4]: "released", serials[5]: "redeemed", limited.serials[0]: "redeemed"}
    by_serial = {k["serial"]: k for k in report["keys"]}
    assert all(by_serial[s]["redeemed_at"] for s in (serials[0], serials[1], serials[2], serials[5]))
    redeems = [e["serial"] for e in report["events"] if e["type"] == "redeem"]
    assert redeems == [serials[0], serials[1], serials[2], serials[5]]  # one event each, retries add none
    assert [e["index"] for e in report["events"]] == sorted(e["index"] for e in report["events"])
    assert all(key not in repr(report) for key in keys)  # serials, never keys
    assert {k["serial"] for k in platform.order("other")["keys"]} == {serials[3]}
    with pytest.raises(NotFoundError):
        platform.order("shop-2")
    with pytest.raises(NotFoundError):  # plain redeems are no holds: nothing to confirm
        platform.confirm("other")
    assert platform.check()["ok"]


def test_order_lookup_refuses_a_damaged_listing(platform: Vault, issued: Issued) -> None:
    from keyvault.store.records import order_redeem_key

    platform.redeem(issued.keys[0], "o-1")
    platform.redeem(issued.keys[1], "o-2")
    report = platform.order("o-2")
    index = report["events"][0]["index"]
    platform.engine.store.write(lambda txn: txn.put("checkout", order_redeem_key("o-1", index), b""))
    from keyvault.errors import StoreCorruptError

    with pytest.raises(StoreCorruptError, match="is not one"):
        platform.order("o-1")
    checked = platform.check()
    assert not checked["ok"] and "redeem record" in str(checked)


def test_concurrent_holds_and_confirms_share_commits(platform: Vault, issued: Issued) -> None:
    """Holds and confirms from many threads are committed together (group commit), each caller still getting its
    own answer, its own refusal, or its own error; nothing is acknowledged before its commit."""
    import threading

    store = platform.engine.store
    real_write = store.write
    commits: list[int] = []
    gate = threading.Event()

    def write(work, before_commit=None):  # type: ignore[no-untyped-def]
        commits.append(1)
        if len(commits) == 1:
            gate.wait(5)  # the first commit lingers: every other caller queues behind it
        return real_write(work, before_commit)

    store.write = write  # type: ignore[method-assign]
    keys = issued.keys[:16]
    answers: dict[int, object] = {}
    barrier = threading.Barrier(len(keys) + 1)

    def shopper(i: int) -> None:
        barrier.wait()
        try:
            if i == 3:
                answers[i] = platform.hold(keys[i], f"cart-{i}", 0)  # bad input: this caller alone is refused
            else:
                answers[i] = platform.hold(keys[i], f"cart-{i}", 900)
        except UsageError as exc:
            answers[i] = exc

    threads = [threading.Thread(target=shopper, args=(i,)) for i in range(len(keys))]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join()
    store.write = real_write  # type: ignore[method-assign]
    assert len(commits) <= 3, f"{len(keys)} concurrent holds took {len(commits)} commits"
    assert isinstance(answers.pop(3), UsageError)
    assert all(a.status is Status.HELD and a.order_id == f"cart-{i}" for i, a in answers.items())  # type: ignore[attr-defined]
    confirmed: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: confirmed.__setitem__(i, platform.confirm(f"cart-{i}")))
               for i in answers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c[0].status is Status.ACCEPTED and c[0].order_id == f"cart-{i}" for i, c in confirmed.items())
    assert platform.verify(keys[3]).status is Status.VALID


@pytest.mark.parametrize("ops", ["holds", "confirm"])
def test_a_checkout_transaction_that_fails_leaves_no_trace(platform: Vault, issued: Issued,
                                                           monkeypatch: pytest.MonkeyPatch, ops: str) -> None:
    """A checkout transaction that appends several events and then fails (a full disk, a damaged record) must
    leave this process's view of the ledger as it was: a key redeemed afterwards is never accepted twice."""
    from keyvault.engine import checkout
    from keyvault.errors import StoreFullError

    keys = issued.keys
    if ops == "confirm":
        platform.checkout_for([("hold", keys[0], "two", 900), ("hold", keys[1], "two", 900)])
        batch: list[tuple] = [("confirm", "two")]
    else:
        batch = [("hold", keys[i], f"o-{i}", 900) for i in range(3)]
    real = checkout.Desk.flush

    def full(self: checkout.Desk) -> None:
        raise StoreFullError("the disk is full (injected after the events were appended)")

    monkeypatch.setattr(checkout.Desk, "flush", full)
    with pytest.raises(StoreFullError):
        platform.checkout_for(batch)
    monkeypatch.setattr(checkout.Desk, "flush", real)
    for key in keys[5:8]:
        assert platform.redeem(key, "first").status is Status.ACCEPTED
        assert platform.redeem(key, "second").status is Status.REDEEMED  # never twice
    assert platform.verify(keys[0]).status is (Status.HELD if ops == "confirm" else Status.VALID)
    assert platform.check()["ok"]


def test_cli_trace_order_names_plain_redeems(world: object) -> None:
    from cli_support import ok, one_json

    keys = world.keys  # type: ignore[attr-defined]
    ok("--store", world.platform, "redeem", keys[0], "--order", "cli-1")  # type: ignore[attr-defined]
    ok("--store", world.platform, "redeem", "-", "--order", "cli-1", input=keys[1] + "\n")  # type: ignore[attr-defined]
    text = ok("--store", world.platform, "trace", "--order", "cli-1").output  # type: ignore[attr-defined]
    assert "2 key(s)" in text and text.count("redeemed") >= 2 and keys[0] not in text
    doc = one_json(ok("--store", world.platform, "trace", "--order", "cli-1", "--json"))  # type: ignore[attr-defined]
    assert [e["type"] for e in doc["events"]] == ["redeem", "redeem"] and "at_ms" not in doc["events"][0]


def _make_old(vault: Vault) -> list[bytes]:
    """Make ``vault``'s store look as if its redeems were made before they were listed by order: its redeem
    listings and the mark saying how far they were listed deleted. The listings deleted."""
    from keyvault.engine import checkout

    def work(txn) -> list[bytes]:  # type: ignore[no-untyped-def]
        gone = [bytes(key) for key, _ in txn.items("checkout", b"R")]
        for key in gone:
            txn.delete("checkout", key)
        txn.delete("meta", checkout.ORDERS_LISTED)
        return gone

    return vault.engine.store.write(work)


def _sales(vault: Vault, keys: list[str]) -> None:
    """Plain, batch, held and count-free redeems of orders shop-1 and shop-2 (a refused redeem in between)."""
    assert vault.redeem(keys[0], "shop-1").status is Status.ACCEPTED
    assert [r.status for r in vault.redeem_many([(keys[1], "shop-1"), (keys[2], "shop-2"), (keys[3], "shop-1")])
            ] == [Status.ACCEPTED] * 3
    assert vault.redeem(keys[0], "shop-2").status is Status.REDEEMED  # refused: lists nothing
    vault.hold(keys[4], "shop-2", 900)
    assert vault.confirm("shop-2")[0].status is Status.ACCEPTED


def test_old_redeems_are_listed_by_order_once_the_store_is_opened(platform: Vault, issued: Issued) -> None:
    """A store whose redeems were made before they were listed under their orders lists them after it is
    opened by this version, exactly as if they had been listed when made; it is done once."""
    from keyvault.engine import checkout

    _sales(platform, issued.keys)
    before = {o: platform.order(o).to_dict() for o in ("shop-1", "shop-2")}
    gone = _make_old(platform)
    assert len(gone) == 5
    with pytest.raises(NotFoundError):  # the old store: plain redeems are not found by their order
        platform.order("shop-1")
    assert [e["type"] for e in platform.order("shop-2")["events"]] == ["hold", "confirm"]
    path = platform.path
    platform.close()
    with Vault.open(path) as vault:
        assert {o: vault.order(o).to_dict() for o in ("shop-1", "shop-2")} == before
        with vault.engine.store.read() as txn:
            assert txn.get("meta", checkout.ORDERS_LISTED) == checkout.LISTED_ALL
            assert sorted(bytes(k) for k, _ in txn.items("checkout", b"R")) == sorted(gone)
        assert checkout.list_old_redeems(vault.engine.store) == 0  # once: the next open reads one record
        assert vault.check()["ok"]


def test_listing_old_redeems_resumes_after_a_failed_step(platform: Vault, issued: Issued,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing old redeems goes a few events per transaction, each recording how far it got: a step that fails
    (a full disk, here) leaves the steps before it done and the store opening as it is, and the next open goes on
    from there; nothing is listed twice, and a redeem made meanwhile is listed."""
    from keyvault.engine import checkout
    from keyvault.errors import StoreFullError
    from keyvault.store.records import from_u64

    _sales(platform, issued.keys)
    step = platform.order("shop-1")["events"][0]["index"] + 2  # the first step lists the first two redeems
    gone = _make_old(platform)
    path = platform.path
    platform.close()
    monkeypatch.setattr(checkout, "LIST_CHUNK", step)
    real, seen = checkout.change_of, []

    def failing(leaf: bytes):  # type: ignore[no-untyped-def]
        seen.append(leaf)
        if len(seen) > step + 1:  # the second step fails after reading one event
            raise StoreFullError("no room on the disk (injected)")
        return real(leaf)

    monkeypatch.setattr(checkout, "change_of", failing)
    with Vault.open(path) as vault:  # opens all the same
        with vault.engine.store.read() as txn:
            assert from_u64(txn.get("meta", checkout.ORDERS_LISTED)) == step  # the first step, nothing after
            partial = [bytes(k) for k, _ in txn.items("checkout", b"R")]
        assert len(partial) == 2 and set(partial) < set(gone)
        monkeypatch.setattr(checkout, "change_of", real)
        assert vault.redeem(issued.keys[9], "shop-3").status is Status.ACCEPTED  # listed by the redeem itself
    with Vault.open(path) as vault:
        with vault.engine.store.read() as txn:
            assert txn.get("meta", checkout.ORDERS_LISTED) == checkout.LISTED_ALL
            listed = [bytes(k) for k, _ in txn.items("checkout", b"R")]
        assert len(listed) == len(set(listed)) == len(gone) + 1
        assert [k["serial"] for k in vault.order("shop-3")["keys"]] == [issued.serials[9]]
        assert {k["serial"] for k in vault.order("shop-1")["keys"]} == {issued.serials[i] for i in (0, 1, 3)}
        assert vault.check()["ok"]


def test_a_transactions_checkout_events_link_as_if_appended_one_by_one(platform: Vault, issued: Issued,
                                                                        clock: list[int]) -> None:
    """The events of one checkout transaction are appended together: each must still link to the event before it
    about its key and about its order, the ones of the same transaction included (an expiry and a new hold of one
    key, a hold released and held again, an order's holds confirmed after them), and the log must audit clean."""
    keys = issued.keys
    platform.set_checkpoint_policy(3, 3600)  # checkpoints (and the subject index) inside the batch too
    assert platform.hold(keys[3], "D", 1).status is Status.HELD
    clock[0] += 2000  # D's hold ended: the next transaction that reads it records its expiry
    answers = platform.checkout_for([("hold", keys[0], "A", 900), ("hold", keys[1], "A", 900), ("confirm", "A"),
                                     ("hold", keys[2], "B", 900), ("release", "B"), ("hold", keys[2], "C", 900),
                                     ("hold", keys[3], "E", 900), ("hold", keys[1], "F", 900)])
    assert [a.status if not isinstance(a, list) else [r.status for r in a] for a in answers] == [
        Status.HELD, Status.HELD, [Status.ACCEPTED, Status.ACCEPTED], Status.HELD, [Status.RELEASED], Status.HELD,
        Status.HELD, Status.REDEEMED]
    events = {e["index"]: e for k in keys[:4] for e in platform.trace(k)["events"] if e["type"] in
              ("hold", "confirm", "release", "expire", "redeem")}  # every event about these keys and their orders
    newest: dict[str, int] = {}  # subject -> its newest event so far
    for index in sorted(events):
        for link in events[index]["links"]:
            assert link["previous"] == newest.get(link["subject"]), events[index]
            newest[link["subject"]] = index
    assert sum(1 for s in newest if s.startswith("key ")) == 4 and sum(1 for s in newest if s.startswith("subject"))\
        == 5  # A to E: F was refused
    kinds = {k: [e["type"] for e in platform.trace(keys[k])["events"] if e["type"] in
                 ("hold", "confirm", "release", "expire", "redeem")] for k in range(4)}
    assert kinds == {0: ["hold", "confirm", "redeem"], 1: ["hold", "confirm", "redeem"],
                     2: ["hold", "release", "hold"], 3: ["hold", "expire", "hold"]}
    assert [e["type"] for e in platform.order("A")["events"]] == ["hold", "hold", "confirm", "confirm", "redeem",
                                                                 "redeem"]
    assert [e["type"] for e in platform.order("D")["events"]] == ["hold", "expire"]
    audit = platform.audit()
    assert audit.clean and audit.event_log.ok
    assert platform.check()["ok"]


def test_listing_old_redeems_killed_midway_goes_on_at_the_next_open(platform: Vault, issued: Issued) -> None:
    """A process killed (SIGKILL) while it lists old redeems, between or inside its transactions, leaves a store that
    opens, and the next open lists every redeem once."""
    import signal
    import subprocess
    import sys

    from keyvault.engine import checkout

    _sales(platform, issued.keys)
    for i in range(10, 40):
        assert platform.redeem(issued.keys[i], f"bulk-{i % 3}").status is Status.ACCEPTED
    gone = _make_old(platform)
    path = platform.path
    platform.close()
    child = subprocess.Popen([sys.executable, "-c", """
import sys, time
from keyvault.engine import checkout
from keyvault import Vault
checkout.LIST_CHUNK = 1  # one event a transaction
real = checkout.change_of
def slow(leaf):
    print("read", flush=True)
    time.sleep(0.01)
    return real(leaf)
checkout.change_of = slow
Vault.open(sys.argv[1])
print("done", flush=True)
""", str(path)], stdout=subprocess.PIPE, text=True, cwd=path.parent)  # (not the source tree: the installed keyvault)
    assert child.stdout is not None
    try:
        for _ in range(20):  # well inside the listing: the log holds about 45 events
            assert child.stdout.readline() == "read\n"
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL  # killed before it was done
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    with Vault.open(path) as vault:
        with vault.engine.store.read() as txn:
            assert txn.get("meta", checkout.ORDERS_LISTED) == checkout.LISTED_ALL
            listed = [bytes(k) for k, _ in txn.items("checkout", b"R")]
        assert sorted(listed) == sorted(gone)
        assert len({k["serial"] for o in ("bulk-0", "bulk-1", "bulk-2") for k in vault.order(o)["keys"]}) == 30
        assert vault.check()["ok"]


def test_a_damaged_listing_mark_is_never_a_place_to_start_listing_from(platform: Vault, issued: Issued) -> None:
    """A mark of how far old redeems were listed that is neither "all" nor an event index is damage: opening the
    store lists nothing from it and writes nothing, and the store opens."""
    from keyvault.engine import checkout

    _sales(platform, issued.keys)
    _make_old(platform)
    platform.engine.store.write(lambda txn: txn.put("meta", checkout.ORDERS_LISTED, b"al\x01"))
    path = platform.path
    platform.close()
    with Vault.open(path) as vault:
        with vault.engine.store.read() as txn:
            assert txn.get("meta", checkout.ORDERS_LISTED) == b"al\x01"
            assert not list(txn.items("checkout", b"R"))
        assert vault.verify(issued.keys[5]).status is Status.VALID
