"""The service's receipts and list endpoints, against a real server (a small store of its own)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from service_support import Reply, Server, make_token
from test_service import build_world, problem

from keyvault import PublicIdentity, Vault
from keyvault.formats import receipt as fmt
from keyvault.formats.identity import public_part


@dataclass
class Small:
    server: Server
    keys: list[str]
    serials: list[str]
    tokens: dict[str, str]
    engine: PublicIdentity
    long_forms: list[str]
    long_keys: list[str]

    def call(self, method: str, path: str, body: object = None, scope: str | None = "admin") -> Reply:
        return self.server.request(method, path, body, token=self.tokens[scope] if scope else None)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Small]:
    root = tmp_path_factory.mktemp("service-receipts")
    store, first, _, supplier = build_world(root, count=60)
    engine = public_part(store / "engine.key")
    with Vault.open(store) as vault:  # a batch with long forms, issued by the platform's store itself
        vault.issue_batch(supplier, "GOLD", 5, keys_out=root / "long.csv", manifest_out=root / "long.kvm",
                          long_form=True)
    with open(root / "long.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    tokens = {scope: make_token(store, f"{scope}-app", scope) for scope in ("verify", "redeem", "admin")}
    server = Server(store, root / "server.log").start()
    try:
        yield Small(server, list(first.keys), list(first.serials), tokens, engine,
                    [r["long_form"] for r in rows], [r["key"] for r in rows])
    finally:
        server.kill()


def test_redeem_returns_a_receipt_only_when_asked(small: Small) -> None:
    plain = small.call("POST", "/v1/redeem", {"key": small.keys[0], "order_id": "o-0"}, scope="redeem")
    assert plain.status == 200 and "receipt" not in plain.json()
    asked = small.call("POST", "/v1/redeem", {"key": small.keys[1], "order_id": "o-1", "receipt": True},
                       scope="redeem")
    doc = asked.json()
    assert asked.status == 200 and doc["status"] == "accepted"
    got = fmt.open_receipt(doc["receipt"], small.engine.public_key)
    assert (got.order_id, got.to_dict()["serial"]) == ("o-1", small.serials[1])
    # A retry of the same order: the same receipt; another order: refused, and no receipt.
    again = small.call("POST", "/v1/redeem", {"key": small.keys[1], "order_id": "o-1", "receipt": True},
                       scope="redeem").json()
    assert again["receipt"] == doc["receipt"]
    other = small.call("POST", "/v1/redeem", {"key": small.keys[1], "order_id": "o-2", "receipt": True},
                       scope="redeem").json()
    assert other["status"] == "redeemed" and "receipt" not in other
    fetched = small.call("GET", f"/v1/receipts/{small.serials[1]}", scope="redeem")
    assert fetched.status == 200 and fetched.json()["receipt"] == doc["receipt"]


def test_receipt_lookups_refuse_keys_unredeemed_and_bad_bodies(small: Small) -> None:
    problem(small.call("GET", f"/v1/receipts/{small.serials[5]}", scope="redeem"), 404, "not-found")
    detail = problem(small.call("GET", f"/v1/receipts/{small.keys[5]}", scope="redeem"), 422, "invalid-request")
    assert small.keys[5] not in detail
    problem(small.call("GET", f"/v1/receipts/{small.serials[5]}", scope="verify"), 403, "forbidden")
    problem(small.call("POST", "/v1/redeem", {"key": small.keys[6], "order_id": "o", "receipt": "yes"},
                       scope="redeem"), 422, "invalid-request")
    openapi = small.call("GET", "/v1/openapi.json", scope=None).json()
    assert "/v1/receipts/{serial}" in openapi["paths"]
    assert "receipt" in openapi["components"]["schemas"]["RedeemRequest"]["properties"]


def test_lists_are_paged_with_a_cursor(small: Small) -> None:
    seen: list[str] = []
    after = None
    for _ in range(10):
        path = "/v1/tokens?limit=2" + (f"&after={after}" if after else "")
        doc = small.call("GET", path).json()
        seen += [t["name"] for t in doc["tokens"]]
        after = doc["next"]
        if after is None:
            break
    assert seen == ["admin-app", "redeem-app", "verify-app"]
    batches = small.call("GET", "/v1/batches").json()
    assert sorted(b["count"] for b in batches["batches"]) == [5, 60] and batches["next"] is None
    manifests = small.call("GET", "/v1/manifests?limit=1").json()
    assert manifests["manifests"][0]["batch"] in {b["batch"] for b in batches["batches"]}
    rest = small.call("GET", f"/v1/manifests?limit=1&after={manifests['next']}").json()
    assert rest["next"] is None and rest["manifests"][0]["manifest"] > manifests["manifests"][0]["manifest"]
    small.call("POST", "/v1/blacklist", {"level": "serial", "target": small.serials[9], "reason": "lost"})
    small.call("POST", "/v1/blacklist", {"level": "serial", "target": small.serials[8], "reason": "lost"})
    first = small.call("GET", "/v1/blacklist?limit=1").json()
    second = small.call("GET", f"/v1/blacklist?limit=1&after={first['next']}").json()
    assert [e["target"] for e in first["blacklist"] + second["blacklist"]] == [small.serials[8], small.serials[9]]
    assert second["next"] is None
    for bad in ("/v1/batches?limit=0", "/v1/batches?limit=1001", "/v1/batches?limit=x", "/v1/batches?page=2",
                "/v1/batches?limit=1&limit=2"):
        problem(small.call("GET", bad), 422, "invalid-request")
    problem(small.call("GET", "/v1/tokens", scope="redeem"), 403, "forbidden")


def test_stats_of_a_time_window(small: Small) -> None:
    small.call("POST", "/v1/redeem", {"key": small.keys[20], "order_id": "o-20"}, scope="redeem")
    doc = small.call("GET", "/v1/stats?since=2020-01-01&daily=1").json()
    assert doc["totals"]["redeemed"] >= 1 and doc["days"] and doc["since"].startswith("2020-01-01")
    empty = small.call("GET", "/v1/stats?until=2020-01-01").json()
    assert empty["totals"] == {"redeemed": 0, "void": 0} and "days" not in empty
    problem(small.call("GET", "/v1/stats?since=yesterday"), 422, "invalid-request")
    problem(small.call("GET", "/v1/stats?since=2027-01-01&until=2026-01-01"), 422, "invalid-request")
    assert "totals" in small.call("GET", "/v1/stats").json()  # no window: the store's counts, as before


def test_long_forms_verify_and_redeem_over_http(small: Small) -> None:
    forms, keys = small.long_forms, small.long_keys
    answers = small.call("POST", "/v1/verify", {"keys": [forms[0], keys[0], forms[1][:-9]]}, scope="verify")
    results = answers.json()["results"]
    assert [r["status"] for r in results] == ["valid", "valid", "malformed"]
    assert results[0] == results[1]
    assert forms[0] not in answers.body.decode() and keys[0] not in answers.body.decode()
    one = small.call("POST", "/v1/verify", {"keys": [forms[2]]}, scope="verify").json()["results"][0]
    assert one["status"] == "valid"
    spent = small.call("POST", "/v1/redeem", {"key": forms[0], "order_id": "lf-1", "receipt": True},
                       scope="redeem").json()
    assert spent["status"] == "accepted" and spent["receipt"].startswith("KVR1.")
    again = small.call("POST", "/v1/redeem", {"key": keys[0], "order_id": "lf-2"}, scope="redeem").json()
    assert again["status"] == "redeemed" and again["order_id"] == "lf-1"
    many = small.call("POST", "/v1/redeem-many", {"items": [{"key": forms[3], "order_id": "lf-3"},
                                                            {"key": keys[3], "order_id": "lf-4"}]},
                      scope="redeem").json()["results"]
    assert [r["status"] for r in many] == ["accepted", "redeemed"]
