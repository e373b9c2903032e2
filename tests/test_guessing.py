"""No loophole through batches: a client's refusal budget is charged key by key, and imported cards lock.

Every test here fails on a throttle checked once per call (all of a call's keys then judged).
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from keyvault import Identity, KeyvaultError, Status, ThrottlePolicy, UsageError, Vault

from cli_support import json_lines, kv, ok
from conftest import Issued

BUDGET = 21  # ThrottlePolicy(max_refused=20): 20 refusals, and the one that blocks


def _forged(key: str, n: int) -> str:
    """A well-formed key of the same batch and serial that does not exist (its secret replaced)."""
    from keyvault import _fast

    _, serial, _, _ = _fast.parse_key(key)
    return _fast.encode_key(serial, 1_000_003 + n)


def _forgeries(issued: Issued, count: int) -> list[str]:
    return [_forged(issued.keys[i % len(issued.keys)], i) for i in range(count)]


def _refused(vault: Vault, client: str) -> tuple[int, int]:
    """(refused keys judged, keys answered throttled) for a client, from the store's statistics."""
    for row in vault.stats()["clients"]:
        if row["client"] == client:
            return row["refused_total"], row["throttled"]
    return 0, 0


def test_one_call_of_10000_forged_keys_judges_at_most_the_budget(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=20))
    answers = platform.verify_many(_forgeries(issued, 10_000), client="bot")
    statuses = [a.status for a in answers]
    assert statuses[:BUDGET] == [Status.UNKNOWN] * BUDGET
    assert statuses[BUDGET:] == [Status.THROTTLED] * (10_000 - BUDGET)
    assert all(a.serial is None and a.batch is None for a in answers[BUDGET:])  # nothing about them leaks
    assert _refused(platform, "bot") == (BUDGET, 10_000 - BUDGET)
    batch = next(b for b in platform.stats()["batches"] if b["batch"] == issued.batch.id)
    assert batch["refused"] == {"unknown": BUDGET}  # the throttled keys were not looked at
    assert platform.verify(issued.keys[0], client="bot").status is Status.THROTTLED  # and it is blocked


def test_valid_keys_use_no_budget(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=2))
    keys = issued.keys * 20  # 4,000 valid keys, the budget 3: each chunk's slots are given back
    mixed = keys[:100] + [_forged(issued.keys[0], 1), _forged(issued.keys[1], 2)] + keys[100:]
    statuses = [r.status for r in platform.verify_many(mixed, client="shop")]
    assert statuses.count(Status.VALID) == len(keys) and statuses.count(Status.UNKNOWN) == 2
    for _ in range(50):  # single calls give their slot back too
        assert platform.verify(issued.keys[3], client="shop").status is Status.VALID
    assert platform.verify(_forged(issued.keys[0], 3), client="shop").status is Status.UNKNOWN  # the third: blocks
    assert platform.verify(issued.keys[3], client="shop").status is Status.THROTTLED


def test_concurrent_calls_from_one_client_share_one_budget(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=20))
    forged = _forgeries(issued, 10_000)
    answers: list[list[Status]] = []
    start = threading.Barrier(8)

    def guess() -> None:
        start.wait()
        answers.append([r.status for r in platform.verify_many(forged, client="ip-1")])

    threads = [threading.Thread(target=guess) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    judged = sum(s.count(Status.UNKNOWN) for s in answers)
    assert judged <= BUDGET
    assert sum(s.count(Status.THROTTLED) for s in answers) == 80_000 - judged
    assert _refused(platform, "ip-1")[0] == judged


def _guess_in_a_process(path: str, keys: list[str], queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Vault.open(path) as vault:
        queue.put(sum(r.status is Status.UNKNOWN for r in vault.verify_many(keys, client="ip-2")))


def test_concurrent_processes_share_one_budget(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=20))
    forged = _forgeries(issued, 3_000)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    children = [ctx.Process(target=_guess_in_a_process, args=(str(platform.path), forged, queue)) for _ in range(4)]
    for child in children:
        child.start()
    judged = sum(queue.get(timeout=120) for _ in children)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert 0 < judged <= BUDGET
    assert _refused(platform, "ip-2") == (judged, 12_000 - judged)


def _block_in_a_process(path: str, key: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Vault.open(path) as vault:
        queue.put([vault.verify(_forged(key, n), client="ip-3").status.value for n in range(4)])


def test_a_slot_held_for_the_next_call_does_not_outlive_a_block(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=2))
    platform.flush_every = None  # the slot a valid key let through stays held in this process
    assert platform.verify(issued.keys[0], client="ip-3").status is Status.VALID
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_block_in_a_process, args=(str(platform.path), issued.keys[1], queue))
    child.start()
    # The budget is 3 refusals; this process holds a slot, so the third guess finds none left: throttled.
    assert queue.get(timeout=60) == ["unknown", "unknown", "throttled", "throttled"]
    child.join(timeout=60)
    assert child.exitcode == 0
    platform.flush_stats()  # gives the held slot back: the child's call can now block the client
    assert platform.verify(_forged(issued.keys[2], 9), client="ip-3").status is Status.UNKNOWN
    assert platform.verify(issued.keys[0], client="ip-3").status is Status.THROTTLED


def test_redeem_many_stops_at_the_budget_and_spends_nothing_past_it(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=4))
    pairs = [(k, f"O-{i}") for i, k in enumerate(_forgeries(issued, 50))] + [(issued.keys[0], "REAL")]
    answers = platform.redeem_many(pairs, client="bot")
    assert [a.status for a in answers] == [Status.UNKNOWN] * 5 + [Status.THROTTLED] * 46
    assert platform.verify(issued.keys[0]).status is Status.VALID  # the real key behind them was not spent


def test_redeem_for_holds_each_client_to_its_own_budget(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=3))
    forged = _forgeries(issued, 30)
    triples: list[tuple[str, str, str | None]] = []
    for i in range(30):  # an attacker's guesses interleaved with an honest shop's redeems
        triples.append((forged[i], f"G-{i}", "attacker"))
        triples.append((issued.keys[i], f"S-{i}", "shop"))
    answers = platform.redeem_for(triples)
    attacker = [a.status for a, t in zip(answers, triples) if t[2] == "attacker"]
    shop = [a.status for a, t in zip(answers, triples) if t[2] == "shop"]
    assert attacker == [Status.UNKNOWN] * 4 + [Status.THROTTLED] * 26
    assert shop == [Status.ACCEPTED] * 30
    assert platform.redeem(issued.keys[40], "S-40", client="shop").status is Status.ACCEPTED  # group commit path
    assert platform.redeem(issued.keys[41], "G-41", client="attacker").status is Status.THROTTLED


# -- imported cards with short passwords --------------------------------------------------------------


@pytest.fixture
def cards(tmp_path: Path, platform: Vault) -> list[tuple[str, str]]:
    """Three imported cards with public numbers and 4-digit passwords."""
    shop = Identity.generate("Upstream Shop")
    rows = [("8800-0001", "4821"), ("8800-0002", "0937"), ("8800-0003", "7716")]
    path = tmp_path / "cards.csv"
    path.write_text("card_number,password\n" + "".join(f"{c},{p}\n" for c, p in rows))
    platform.import_cards(shop, "GIFT-20", path, manifest_out=tmp_path / "cards.kvm")
    return rows


def _all_passwords(card: str) -> list[str]:
    return [f"{card}:{n:04d}" for n in range(10_000)]


def test_guessing_a_4_digit_password_finds_nothing_and_spends_nothing(platform: Vault,
                                                                        cards: list[tuple[str, str]]) -> None:
    (card1, pw1), (card2, pw2), (card3, pw3) = cards
    assert platform.verify(f"{card3}:{pw3}").status is Status.VALID
    # With a client: its budget stops the call long before the card's password.
    platform.set_throttle_policy(ThrottlePolicy(max_refused=20))
    found = [r for r in platform.verify_many(_all_passwords(card1), client="bot") if r.ok]
    assert found == []
    # Without one (or from a million clients): the card locks after 5 wrong passwords.
    answers = platform.redeem_many([(k, f"O-{i}") for i, k in enumerate(_all_passwords(card2))])
    assert not any(a.ok for a in answers)
    statuses = [a.status for a in answers]
    assert statuses.count(Status.UNKNOWN) == 5 and statuses.count(Status.THROTTLED) == 9_995
    locked = platform.verify(f"{card2}:{pw2}")  # the right password: a clear refusal, not "unknown"
    assert locked.status is Status.THROTTLED and "locked" in (locked.message or "")
    assert locked == platform.verify(f"{card2}:0000")  # the same answer for a wrong one
    assert pw2 not in repr(locked)
    assert {c["card_number"]: c["wrong_passwords"] for c in platform.locked_cards()}["88000002"] == 5
    assert platform.unlock_card(card2) is True
    assert platform.verify(f"{card2}:{pw2}").status is Status.VALID  # nothing was spent
    assert platform.redeem(f"{card2}:{pw2}", "OWNER").status is Status.ACCEPTED
    assert platform.verify(f"{card3}:{pw3}").status is Status.VALID  # other cards are not affected


def test_a_card_locks_at_the_limit_and_a_right_password_does_not_count(platform: Vault,
                                                                        cards: list[tuple[str, str]]) -> None:
    (card, pw), _, _ = cards
    platform.set_throttle_policy(ThrottlePolicy(card_attempts=3))
    assert platform.throttle_policy().card_attempts == 3
    for n in range(2):
        assert platform.verify(f"{card}:000{n}").status is Status.UNKNOWN
    for _ in range(5):
        assert platform.verify(f"{card}:{pw}").status is Status.VALID  # the owner: no attempt counted
    assert platform.verify(f"{card}:0002").status is Status.UNKNOWN  # the third wrong one locks
    assert platform.verify(f"{card}:{pw}").status is Status.THROTTLED
    assert platform.unlock_card(card) is True and platform.unlock_card(card) is False
    assert platform.locked_cards() == []
    with pytest.raises(UsageError):
        platform.unlock_card("")
    with pytest.raises(UsageError):
        ThrottlePolicy(card_attempts=0)


def _lock_in_a_process(path: str, card: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Vault.open(path) as vault:
        queue.put([vault.verify(f"{card}:{n:04d}").status.value for n in range(6)])


def test_the_card_lock_holds_across_processes(platform: Vault, cards: list[tuple[str, str]]) -> None:
    (card, pw), _, _ = cards
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_lock_in_a_process, args=(str(platform.path), card, queue))
    child.start()
    assert queue.get(timeout=60) == ["unknown"] * 5 + ["throttled"]
    child.join(timeout=60)
    assert child.exitcode == 0
    assert platform.verify(f"{card}:{pw}").status is Status.THROTTLED


def test_cli_unlocks_a_card_and_sets_the_limit(tmp_path: Path) -> None:
    from cli_support import make_world

    world = make_world(tmp_path / "w", count=5)
    store = world.platform
    cards_csv = tmp_path / "cards.csv"
    cards_csv.write_text("card_number,password\n" + "".join(f"7700{i:04d},{i % 10000:04d}\n" for i in range(50)))
    shop = tmp_path / "shop.id"
    ok("supplier", "init", "--name", "Card Shop", "--out", shop)
    result = ok("--store", store, "batch", "import", "--supplier", shop, "--product", "GIFT", cards_csv,
                "--manifest-out", tmp_path / "cards.kvm")
    assert "entropy" in result.output and "per day" in result.output  # 4 digits: about 13 bits
    ok("--store", store, "throttle", "set", "--max-refused", "20", "--card-attempts", "2")
    assert json_lines(ok("--store", store, "throttle", "show", "--json"))[0]["card_attempts"] == 2
    for guess in ("9998", "9999", "0001"):
        kv("--store", store, "verify", f"77000001:{guess}")
    assert "locked" in kv("--store", store, "verify", "77000001:0001").output
    listed = json_lines(ok("--store", store, "throttle", "locked", "--json"))
    assert [row["card_number"] for row in listed] == ["77000001"]
    ok("--store", store, "throttle", "unlock-card", "7700-0001")
    assert kv("--store", store, "verify", "77000001:0001").exit_code == 0


def _rewrite_throttle(path: Path, work: str) -> None:
    """Run ``work`` (Python, with ``txn`` a write transaction on throttle.mdb and ``flip(key, bit)``) in another
    process: LMDB opens an environment once per process."""
    import subprocess
    import sys

    script = ("import lmdb, struct, sys\n"
              "env = lmdb.open(sys.argv[1], subdir=False)\n"
              "with env.begin(write=True) as txn:\n"
              "    def flip(key, bit):\n"
              "        value = bytearray(txn.get(key))\n"
              "        value[bit // 8] ^= 1 << (bit % 8)\n"
              "        txn.put(key, bytes(value))\n"
              + "".join(f"    {line}\n" for line in work.splitlines()))
    subprocess.run([sys.executable, "-c", script, str(path / "throttle.mdb")], check=True, timeout=60)


def test_damaged_throttle_records_fail_closed_and_old_ones_are_read(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=2))
    platform.verify(_forged(issued.keys[0], 1), client="ip-4")  # makes throttle.mdb and the client's record
    _rewrite_throttle(platform.path, "txn.put(b'ip-4', b'\\xff' * 7)\n"  # damaged
                                     "txn.put(b'ip-5', struct.pack('>QIQ', 1, 9, 0))")  # an earlier release's, over
    assert platform.verify(issued.keys[0], client="ip-4").status is Status.THROTTLED  # never a fresh budget
    platform.unblock("ip-4")  # the support action lifts it
    assert platform.verify(issued.keys[0], client="ip-4").status is Status.VALID
    assert [platform.verify(_forged(issued.keys[0], n), client="ip-4").status for n in range(4)] == \
        [Status.UNKNOWN] * 3 + [Status.THROTTLED]
    assert platform.verify(issued.keys[0], client="ip-5").status is Status.VALID  # a window long over


def test_no_flipped_bit_of_a_blocked_clients_record_lifts_its_block(platform: Vault, issued: Issued) -> None:
    """Every bit of a blocked client's record (40 bytes: window, refusals, reservations, block, last charge,
    checksum) flipped in turn: the client stays throttled, its budget never restarts."""
    platform.set_throttle_policy(ThrottlePolicy(max_refused=2, block_seconds=3600))
    assert [platform.verify(_forged(issued.keys[0], n), client="ip-6").status for n in range(4)] == \
        [Status.UNKNOWN] * 3 + [Status.THROTTLED]
    platform.flush_stats()
    with platform.engine.guard.throttle._env.begin() as txn:  # noqa: SLF001 - the record as stored
        pristine = bytes(txn.get(b"ip-6"))
    assert len(pristine) == 40
    for bit in range(len(pristine) * 8):
        _rewrite_throttle(platform.path, f"txn.put(b'ip-6', {pristine!r})\nflip(b'ip-6', {bit})")
        answer = platform.verify(_forged(issued.keys[0], 100 + bit), client="ip-6")
        assert answer.status is Status.THROTTLED, f"bit {bit}: {answer}"


def test_no_flipped_bit_of_a_locked_cards_record_unlocks_it(platform: Vault, cards: list[tuple[str, str]]) -> None:
    """Every bit of a locked card's record (wrong passwords, attempts in flight, locked at, checksum) and of
    a card's record one wrong password from the lock, flipped in turn: the right password never gets
    through a locked card, and the wrong ones never get more tries."""
    (card, pw), (card2, _), _ = cards
    platform.set_throttle_policy(ThrottlePolicy(card_attempts=3))
    for n in range(3):
        assert platform.verify(f"{card}:000{n}").status is Status.UNKNOWN
    assert platform.verify(f"{card2}:0000").status is Status.UNKNOWN
    assert platform.verify(f"{card2}:0001").status is Status.UNKNOWN  # one more locks it
    with platform.engine.guard.throttle._env.begin() as txn:  # noqa: SLF001 - the records as stored
        locked, near = (bytes(txn.get(b"\0card:" + c.replace("-", "").encode())) for c in (card, card2))
    key1, key2 = (b"\0card:" + c.replace("-", "").encode() for c in (card, card2))
    for bit in range(len(locked) * 8):
        _rewrite_throttle(platform.path, f"txn.put({key1!r}, {locked!r})\nflip({key1!r}, {bit})\n"
                                         f"txn.put({key2!r}, {near!r})\nflip({key2!r}, {bit})")
        assert platform.verify(f"{card}:{pw}").status is Status.THROTTLED, f"bit {bit}"
        first = platform.verify(f"{card2}:0002").status  # a wrong one: the third, or a lock
        assert first in (Status.UNKNOWN, Status.THROTTLED), f"bit {bit}"
        assert platform.verify(f"{card2}:0003").status is Status.THROTTLED, f"bit {bit}: a fourth try"
    assert {c["card_number"] for c in platform.locked_cards()} >= {"88000001", "88000002"}
    assert platform.unlock_card(card) is True
    assert platform.verify(f"{card}:{pw}").status is Status.VALID


def test_import_warns_only_for_guessable_codes(tmp_path: Path) -> None:
    from keyvault.cli.batch import entropy_bits

    assert 13 < entropy_bits(["0001", "4821", "12345"]) < 14  # the shortest: 4 digits
    assert entropy_bits(["ab-cd-ef-gh", "QWERTYUI"]) == pytest.approx(8 * 4.7004, rel=1e-3)  # case folded
    assert entropy_bits(["K7Q2M9X4P1R8T3V6"]) > 80
    assert entropy_bits(["0000", "0000"]) > 13  # the alphabet is the class, not the symbols seen
    store, shop = tmp_path / "store", tmp_path / "shop.id"
    ok("--store", store, "init")
    ok("supplier", "init", "--name", "Code Shop", "--out", shop)
    strong = tmp_path / "strong.csv"
    strong.write_text("code\n" + "".join(f"K7Q2M9X4P1R8T{i:03d}\n" for i in range(20)))
    result = ok("--store", store, "batch", "import", "--supplier", shop, "--product", "G", strong,
                "--manifest-out", tmp_path / "strong.kvm")
    assert "warning" not in result.output
    weak = tmp_path / "weak.csv"
    weak.write_text("code\n" + "".join(f"{i:06d}\n" for i in range(20)))
    result = ok("--store", store, "batch", "import", "--supplier", shop, "--product", "G", weak,
                "--manifest-out", tmp_path / "weak.kvm", "--json")
    assert "about 20 bits" in result.output and "28,800 guesses per day" in result.output


# -- every entry point that judges a key ----------------------------------------------------------------


def test_holds_are_charged_to_the_clients_budget_key_by_key(platform: Vault, issued: Issued) -> None:
    """A hold judges a key (a forged one is unknown, a real one held): 200 holds of forged keys from one
    client in one group commit judge the budget's worth and answer the rest throttled, unread; a real key is
    then throttled too, and never held for that client."""
    platform.set_throttle_policy(ThrottlePolicy(max_refused=20))
    ops = [("hold", key, f"guess-{i}", 60, "bot") for i, key in enumerate(_forgeries(issued, 200))]
    statuses = [r.status for r in platform.engine.checkout_for(ops)]  # type: ignore[union-attr]
    assert statuses == [Status.UNKNOWN] * BUDGET + [Status.THROTTLED] * (200 - BUDGET)
    assert platform.hold(issued.keys[0], "real", 60, client="bot").status is Status.THROTTLED
    assert platform.verify(issued.keys[0]).status is Status.VALID  # it was not held
    assert _refused(platform, "bot") == (BUDGET, 200 - BUDGET + 1)
    held = platform.hold(issued.keys[1], "shop-1", 60, client="shop")  # another client: its own budget
    assert held.status is Status.HELD and held.order_id == "shop-1"
    assert platform.hold(issued.keys[1], "shop-2", 60, client="shop").status is Status.HELD  # a real key: free
    for n in range(50):  # holds that succeed use no budget
        assert platform.hold(issued.keys[2 + n], f"shop-o{n}", 60, client="shop").status is Status.HELD
    assert _refused(platform, "shop") == (0, 0)


def test_a_card_locks_through_holds(platform: Vault, cards: list[tuple[str, str]]) -> None:
    (card, pw), _, _ = cards
    ops = [("hold", f"{card}:{n:04d}", f"h-{n}", 60) for n in range(100)]  # no client: only the card lock
    answers = [r.status for r in platform.checkout_for(ops)]  # type: ignore[union-attr]
    assert answers.count(Status.UNKNOWN) == 5 and answers.count(Status.THROTTLED) == 95
    assert Status.HELD not in answers
    assert platform.hold(f"{card}:{pw}", "owner", 60).status is Status.THROTTLED  # locked: nothing held


def _forged_long_forms(form: str, count: int) -> list[str]:
    """Long forms of the same batch and serial as ``form`` whose inner key was replaced by a forged one (the
    signature is not checked on this path: they are judged as their inner key)."""
    import base64

    from keyvault import _fast
    from keyvault.formats.longform import PREFIX, inner_key

    inner = inner_key(form).replace("-", "")
    raw = base64.urlsafe_b64decode(form[len(PREFIX):] + "=" * (-len(form[len(PREFIX):]) % 4))
    at = raw.index(inner.encode())
    serial = _fast.parse_key(inner)[1]
    out = []
    for n in range(count):
        fake = _fast.encode_key(serial, 2_000_003 + n).replace("-", "").encode()
        out.append(PREFIX + base64.urlsafe_b64encode(raw[:at] + fake + raw[at + len(fake):]).rstrip(b"=").decode())
    return out


def test_forged_long_forms_are_charged_key_by_key(tmp_path: Path, supplier: Identity, supplier_store: Vault,
                                                  platform: Vault) -> None:
    import csv

    supplier_store.issue_batch(supplier, "GOLD-500", 3, keys_out=tmp_path / "long.csv",
                               manifest_out=tmp_path / "long.kvm", valid_from=1_700_000_000_000,
                               valid_until=4_000_000_000_000, long_form=True)
    platform.import_manifest(tmp_path / "long.kvm")
    with open(tmp_path / "long.csv", newline="") as fh:
        form = next(csv.DictReader(fh))["long_form"]
    assert platform.verify(form).status is Status.VALID
    forged = _forged_long_forms(form, 500)
    platform.set_throttle_policy(ThrottlePolicy(max_refused=20))
    statuses = [r.status for r in platform.verify_many(forged, client="long")]
    assert statuses == [Status.UNKNOWN] * BUDGET + [Status.THROTTLED] * (500 - BUDGET)
    redeemed = [r.status for r in platform.redeem_many([(k, f"o-{i}") for i, k in enumerate(forged)],
                                                       client="long2")]
    assert redeemed == [Status.UNKNOWN] * BUDGET + [Status.THROTTLED] * (500 - BUDGET)
    assert platform.verify(form, client="long").status is Status.THROTTLED


def test_order_and_receipt_lookups_judge_no_key(platform: Vault, issued: Issued) -> None:
    """An order id and a serial are not secrets: looking them up reveals no key and judges none. An order
    never made and a serial never redeemed answer the same as any other unknown one."""
    from keyvault import NotFoundError

    assert platform.redeem(issued.keys[0], "paid-1").status is Status.ACCEPTED
    with pytest.raises(NotFoundError) as never_made:
        platform.order("no-such-order")
    with pytest.raises(NotFoundError) as other:
        platform.order("another-order")
    assert str(never_made.value).replace("no-such-order", "X") == str(other.value).replace("another-order", "X")
    receipt = platform.receipt(issued.serials[0])
    assert issued.keys[0] not in receipt
    with pytest.raises(KeyvaultError):
        platform.receipt(issued.serials[1])  # not redeemed: nothing to sign
