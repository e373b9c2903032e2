"""Guessing through the HTTP service: a client's budget holds across 8 concurrent connections, every batch
route and the hold route; the CLI with a client is held to it as well."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyvault import ThrottlePolicy, Vault
from keyvault import _fast
from service_support import Server, cli, make_token
from test_service import build_world

BUDGET = 21  # ThrottlePolicy(max_refused=20): 20 refusals, and the one that blocks


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str], list[str]]]:
    root = tmp_path_factory.mktemp("guessing-service")
    store, first, _, _ = build_world(root, count=200)
    with Vault.open(store) as vault:
        vault.set_throttle_policy(ThrottlePolicy(max_refused=20, window_seconds=3600, block_seconds=3600))
    tokens = {scope: make_token(store, f"{scope}-app", scope) for scope in ("verify", "redeem")}
    server = Server(store, root / "server.log").start()
    try:
        yield server, tokens, first.keys
    finally:
        server.kill()


def _forged(keys: list[str], count: int, salt: int) -> list[str]:
    return [_fast.encode_key(_fast.parse_key(keys[i % len(keys)])[1], 3_000_000 + salt * 100_000 + i)
            for i in range(count)]


@pytest.mark.parametrize("route", ["/v1/verify", "/v1/redeem-many"])
def test_8_concurrent_connections_of_10000_forged_keys_judge_one_budget(
        served: tuple[Server, dict[str, str], list[str]], route: str) -> None:
    server, tokens, keys = served
    client = "bot-" + route.rsplit("/", 1)[1]
    forged = _forged(keys, 10_000, 1 if route == "/v1/verify" else 2)
    if route == "/v1/verify":
        body: dict[str, object] = {"keys": forged, "client": client}
        token = tokens["verify"]
    else:
        body = {"items": [{"key": k, "order_id": f"g-{i}"} for i, k in enumerate(forged)], "client": client}
        token = tokens["redeem"]
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(8)

    def guess() -> None:
        start.wait()
        reply = server.request("POST", route, body, token=token)
        assert reply.status == 200, reply.body[:300]
        with lock:
            counts.update(r["status"] for r in reply.json()["results"])

    threads = [threading.Thread(target=guess) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert sum(counts.values()) == 80_000
    assert counts["unknown"] <= BUDGET and counts["unknown"] + counts["throttled"] == 80_000, counts
    assert counts["accepted"] == counts["valid"] == 0


def test_holds_through_the_service_are_charged_to_the_client(served: tuple[Server, dict[str, str], list[str]]
                                                            ) -> None:
    server, tokens, keys = served
    forged = _forged(keys, 60, 3)
    statuses = [server.request("POST", "/v1/hold", {"key": k, "order_id": f"h-{i}", "ttl": 60, "client": "holder"},
                               token=tokens["redeem"]).json()["status"] for i, k in enumerate(forged)]
    assert statuses == ["unknown"] * BUDGET + ["throttled"] * (60 - BUDGET)
    real = server.request("POST", "/v1/hold", {"key": keys[-1], "order_id": "real", "ttl": 60, "client": "holder"},
                          token=tokens["redeem"]).json()
    assert real["status"] == "throttled"  # blocked: the real key is not held, nor told apart
    other = server.request("POST", "/v1/hold", {"key": keys[-1], "order_id": "mine", "ttl": 60, "client": "shop"},
                           token=tokens["redeem"]).json()
    assert other["status"] == "held" and other["order_id"] == "mine"


def test_the_cli_with_a_client_is_held_to_its_budget(served: tuple[Server, dict[str, str], list[str]],
                                                     tmp_path: Path) -> None:
    server, _, keys = served
    forged = _forged(keys, 60, 4)
    listing = tmp_path / "guesses.txt"
    listing.write_text("".join(k + "\n" for k in forged))
    proc = cli(server.store, "verify", "--client", "cli-bot", "--json", "--file", str(listing))
    import json

    try:
        docs = json.loads(proc.stdout)
        docs = docs["results"] if isinstance(docs, dict) else docs
    except ValueError:
        docs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    statuses = Counter(doc["status"] for doc in docs)
    assert statuses["unknown"] == BUDGET and statuses["throttled"] == 60 - BUDGET, (statuses, proc.stderr[-500:])
    assert "Traceback" not in proc.stderr


def test_the_cli_hold_with_a_client_is_held_to_its_budget(served: tuple[Server, dict[str, str], list[str]]) -> None:
    server, _, keys = served
    statuses = []
    for i, key in enumerate(_forged(keys, 24, 5)):
        proc = cli(server.store, "hold", "--order", f"c-{i}", "--ttl", "60", "--client", "cli-holder", "--json", key)
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-500:]
        import json

        statuses.append(json.loads(proc.stdout)["status"])
    assert statuses == ["unknown"] * BUDGET + ["throttled"] * (24 - BUDGET)
