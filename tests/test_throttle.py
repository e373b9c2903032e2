"""Guessing clients are throttled, in every process at once, and a throttled answer tells nothing."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from keyvault import Status, ThrottlePolicy, UsageError, Vault

from cli_support import EXIT_OK, EXIT_REFUSED, json_lines, kv, ok
from conftest import Issued


def _forged(key: str) -> str:
    """A well-formed key of the same batch that does not exist (its secret changed, checks recomputed)."""
    from keyvault import _fast

    _, serial, _, _ = _fast.parse_key(key)
    return _fast.encode_key(serial, 12345)


def test_a_client_is_throttled_after_too_many_refusals(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=3, window_seconds=60, block_seconds=60))
    good, bad = issued.keys[0], _forged(issued.keys[1])
    answers = [platform.verify(bad, client="acct-7").status for _ in range(4)]
    assert answers == [Status.UNKNOWN] * 4  # the fourth refusal is counted, then the client is blocked
    blocked = platform.verify(good, client="acct-7")
    assert blocked.status is Status.THROTTLED and "try again after" in (blocked.message or "")
    # Nothing about the key leaks: a real key and a forged one get the same answer.
    assert platform.verify(bad, client="acct-7") == blocked
    assert blocked.serial is None and blocked.batch is None and blocked.supplier is None
    # Other clients, and callers that name no client, are not affected.
    assert platform.verify(good, client="acct-8").status is Status.VALID
    assert platform.verify(good).status is Status.VALID


def test_throttled_redeems_spend_nothing(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=1))
    bad = _forged(issued.keys[5])
    platform.redeem_many([(bad, "g-1"), (bad, "g-2")], client="bot")
    events = platform.verify_log()
    assert platform.redeem(issued.keys[0], "ORDER-1", client="bot").status is Status.THROTTLED
    many = platform.redeem_many([(issued.keys[1], "ORDER-2"), (issued.keys[2], "ORDER-3")], client="bot")
    assert [r.status for r in many] == [Status.THROTTLED] * 2
    assert [platform.verify(k).status for k in issued.keys[:3]] == [Status.VALID] * 3
    assert platform.verify_log() == events  # no event was written for a throttled call
    platform.unblock("bot")
    assert platform.redeem(issued.keys[0], "ORDER-1", client="bot").status is Status.ACCEPTED


def test_the_window_and_the_block_expire(platform: Vault, issued: Issued, monkeypatch: pytest.MonkeyPatch) -> None:
    import keyvault.engine.engine as engine_module
    import keyvault.engine.guard as guard_module

    clock = [engine_module.now_ms()]
    for module in (engine_module, guard_module):  # the engine's clock, and the throttle's
        monkeypatch.setattr(module, "now_ms", lambda: clock[0])
    platform.set_throttle_policy(ThrottlePolicy(max_refused=2, window_seconds=10, block_seconds=30))
    bad = _forged(issued.keys[0])
    platform.verify_many([bad, bad], client="ip")
    clock[0] += 11_000  # a new window: the two refusals no longer count
    platform.verify_many([bad, bad], client="ip")
    assert platform.verify(issued.keys[1], client="ip").status is Status.VALID
    platform.verify(bad, client="ip")  # the third in this window: blocked
    assert platform.verify(issued.keys[1], client="ip").status is Status.THROTTLED
    clock[0] += 29_000
    assert platform.verify(issued.keys[1], client="ip").status is Status.THROTTLED
    clock[0] += 2_000  # the block is over
    assert platform.verify(issued.keys[1], client="ip").status is Status.VALID


def test_policies_per_client(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=1))
    platform.set_throttle_policy(ThrottlePolicy(max_refused=None), client="back-office")
    assert platform.throttle_policy("back-office").max_refused is None
    assert platform.throttle_policy("anyone").max_refused == 1
    bad = _forged(issued.keys[0])
    assert {r.status for r in platform.verify_many([bad] * 50, client="back-office")} == {Status.UNKNOWN}
    assert platform.verify(issued.keys[0], client="back-office").status is Status.VALID
    with pytest.raises(UsageError):
        ThrottlePolicy(max_refused=-1)
    with pytest.raises(UsageError):
        platform.verify(issued.keys[0], client="")


def _guess_from_another_process(path: str, key: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Vault.open(path) as vault:
        queue.put([vault.verify(key, client="shared-ip").status.value for _ in range(3)])


def test_throttling_holds_across_processes(tmp_path: Path, platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=2))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_guess_from_another_process,
                        args=(str(platform.path), _forged(issued.keys[0]), queue))
    child.start()
    assert queue.get(timeout=60) == ["unknown", "unknown", "unknown"]
    child.join(timeout=60)
    assert child.exitcode == 0
    # This process never refused that client, yet sees it blocked.
    assert platform.verify(issued.keys[1], client="shared-ip").status is Status.THROTTLED


def test_statistics_count_refusals_per_client_batch_and_supplier(platform: Vault, issued: Issued) -> None:
    platform.set_throttle_policy(ThrottlePolicy(max_refused=3))
    bad = _forged(issued.keys[0])
    platform.verify_many([bad, bad, issued.keys[0] + "X"], client="user/42")  # '/' in a client id is fine
    platform.verify(bad, client="user/42")
    platform.verify(issued.keys[1], client="user/42")  # throttled
    platform.verify(bad, client="other")
    stats = platform.stats()
    clients = {c["client"]: c for c in stats["clients"]}
    assert clients["user/42"]["refused"] == {"malformed": 1, "unknown": 3}
    assert clients["user/42"]["throttled"] == 1
    assert clients["other"]["refused_total"] == 1
    assert stats["clients"][0]["client"] == "user/42"  # most refused first
    batch = next(b for b in stats["batches"] if b["batch"] == issued.batch.id)
    assert batch["refused"]["unknown"] == 4  # the forged keys name this batch's serials


def test_cli_client_option_and_policy_commands(tmp_path: Path) -> None:
    from cli_support import make_world, read_keys

    world = make_world(tmp_path / "w", count=10)
    keys, _ = read_keys(world.keys_csv)
    store = world.platform
    ok("--store", store, "throttle", "set", "--max-refused", "1", "--window", "60", "--block", "120")
    shown = json_lines(ok("--store", store, "throttle", "show", "--json"))[0]
    assert shown["max_refused"] == 1 and shown["block_seconds"] == 120
    forged = _forged(keys[0])
    for _ in range(2):
        assert kv("--store", store, "verify", "--client", "ip-9", forged).exit_code == EXIT_REFUSED
    result = kv("--store", store, "verify", "--client", "ip-9", "--json", keys[0])
    assert result.exit_code == EXIT_REFUSED and json_lines(result)[0]["status"] == "throttled"
    result = kv("--store", store, "redeem", "--client", "ip-9", "--order", "O-1", keys[0])
    assert result.exit_code == EXIT_REFUSED and "throttled" in result.stdout
    ok("--store", store, "throttle", "unblock", "ip-9")
    assert kv("--store", store, "verify", "--client", "ip-9", keys[0]).exit_code == EXIT_OK
    assert kv("--store", store, "throttle", "set").exit_code == 2  # needs --max-refused or --unlimited
    assert "ip-9" in ok("--store", store, "stats").stdout
