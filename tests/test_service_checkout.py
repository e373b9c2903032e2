"""Checkout over HTTP: POST /v1/hold, /v1/confirm, /v1/release and GET /v1/orders/{id} against a real
``keyvault serve`` (two workers and the commit process), raced across connections."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from service_support import Reply, Server, make_token

from conftest import issue
from keyvault import Identity, Vault

PROBLEM = "urn:keyvault:problem:"


@dataclass
class Shop:
    server: Server
    keys: list[str]
    limited: list[str]
    token: str
    verify_token: str

    def call(self, method: str, path: str, body: object = None, token: str | None = None) -> Reply:
        return self.server.request(method, path, body, token=token or self.token)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("checkout")
    supplier = Identity.generate("Acme Games")
    with Vault.init(root / "supplier") as made:
        single = issue(made, supplier, root / "files", count=40)
        out = root / "limited"
        out.mkdir()
        made.issue_batch(supplier, "PASS-5", 5, keys_out=out / "k.csv", manifest_out=out / "b.kvm", uses=5)
    from conftest import read_export

    limited, _ = read_export(out / "k.csv")
    store = root / "platform"
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(single.manifest)
        platform.import_manifest(out / "b.kvm")
    token = make_token(store, "shop", "redeem")
    reader = make_token(store, "reader", "verify")
    server = Server(store, root / "server.log").start()
    try:
        yield Shop(server, list(single.keys), limited, token, reader)
    finally:
        server.kill()


def test_hold_confirm_release_and_order_lookup(shop: Shop) -> None:
    key, other = shop.keys.pop(), shop.keys.pop()
    held = shop.call("POST", "/v1/hold", {"key": key, "order_id": "web/1", "ttl": 900}).json()
    assert held["status"] == "held" and held["order_id"] == "web/1" and held["expires_at"]
    assert shop.call("POST", "/v1/hold", {"key": key, "order_id": "web/1", "ttl": 60}).json() == held
    refused = shop.call("POST", "/v1/hold", {"key": key, "order_id": "web/2", "ttl": 900}).json()
    assert refused["status"] == "held" and "order_id" not in refused
    assert shop.call("POST", "/v1/redeem", {"key": key, "order_id": "web/2"}).json()["status"] == "held"
    verified = shop.call("POST", "/v1/verify", {"keys": [key]}, token=shop.verify_token).json()
    assert verified["results"][0]["status"] == "held"
    shop.call("POST", "/v1/hold", {"key": other, "order_id": "web/1", "ttl": 900})
    confirmed = shop.call("POST", "/v1/confirm", {"order_id": "web/1"}).json()["results"]
    assert [r["status"] for r in confirmed] == ["accepted", "accepted"]
    assert shop.call("POST", "/v1/confirm", {"order_id": "web/1"}).json()["results"] == confirmed
    order = shop.call("GET", "/v1/orders/" + urllib.parse.quote("web/1", safe="")).json()
    assert {k["state"] for k in order["keys"]} == {"redeemed"} and len(order["keys"]) == 2
    assert key not in json.dumps(order) and other not in json.dumps(order)
    third = shop.keys.pop()
    shop.call("POST", "/v1/hold", {"key": third, "order_id": "web/3", "ttl": 900})
    released = shop.call("POST", "/v1/release", {"order_id": "web/3"}).json()["results"]
    assert [r["status"] for r in released] == ["released"]
    assert shop.call("GET", "/v1/orders/web/3").json()["keys"][0]["state"] == "released"


def test_problems(shop: Shop) -> None:
    key = shop.keys.pop()
    for body in ({"key": key, "order_id": "x", "ttl": 0}, {"key": key, "order_id": "x"},
                 {"key": key, "order_id": "", "ttl": 5}, {"key": key, "order_id": "x", "ttl": 5, "more": 1}):
        reply = shop.call("POST", "/v1/hold", body)
        assert reply.status == 422 and reply.headers["content-type"] == "application/problem+json", reply.body
        assert key not in reply.body.decode()
    missing = shop.call("POST", "/v1/confirm", {"order_id": "nobody"})
    assert missing.status == 404 and missing.json()["type"] == PROBLEM + "not-found"
    assert shop.call("GET", "/v1/orders/nobody").status == 404
    assert shop.call("POST", "/v1/hold", {"key": key, "order_id": "x", "ttl": 5}, token=shop.verify_token).status == 403
    assert shop.call("GET", "/v1/orders/x", token=shop.verify_token).status == 403
    assert shop.call("POST", "/v1/verify", {"keys": [key]}, token=shop.verify_token).json()["results"][0]["status"] \
        == "valid"


def test_twenty_connections_race_for_one_key(shop: Shop) -> None:
    key = shop.keys.pop()

    def attempt(i: int) -> tuple[str, dict, list]:
        order = f"race-{i}"
        held = shop.call("POST", "/v1/hold", {"key": key, "order_id": order, "ttl": 900}).json()
        if held.get("order_id") != order:
            return order, held, []
        return order, held, shop.call("POST", "/v1/confirm", {"order_id": order}).json()["results"]

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    winners = [o for o in outcomes if o[2]]
    assert len(winners) == 1 and winners[0][2][0]["status"] == "accepted"
    assert all(o[1]["status"] in ("held", "redeemed") for o in outcomes)  # after the confirm: redeemed


def test_five_uses_raced_by_twenty_connections(shop: Shop) -> None:
    key = shop.limited[0]

    def use(i: int) -> dict:
        first = shop.call("POST", "/v1/redeem", {"key": key, "order_id": f"use-{i}"}).json()
        again = shop.call("POST", "/v1/redeem", {"key": key, "order_id": f"use-{i}"}).json()
        assert again == first
        return first

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(use, range(20)))
    accepted = [a for a in answers if a["status"] == "accepted"]
    assert len(accepted) == 5 and sorted(a["uses_left"] for a in accepted) == [0, 1, 2, 3, 4]
    assert {a["status"] for a in answers} == {"accepted", "exhausted"}


def test_openapi_documents_checkout(shop: Shop) -> None:
    doc = shop.call("GET", "/v1/openapi.json").json()
    for path in ("/v1/hold", "/v1/confirm", "/v1/release", "/v1/orders/{order_id}"):
        assert path in doc["paths"]
    assert {"HoldRequest", "OrderRequest"} <= doc["components"]["schemas"].keys()
    assert {"held", "expired_hold", "released", "exhausted"} <= set(
        doc["components"]["schemas"]["Result"]["properties"]["status"]["enum"])
