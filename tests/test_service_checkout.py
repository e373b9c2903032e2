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


def test_order_lookup_of_plain_redeems_is_typed(shop: Shop) -> None:
    """GET /v1/orders/{id} names keys redeemed without a hold (one at a time and in a batch), and its answer and
    the receipts route's answer are exactly what the OpenAPI document's generated schemas say."""
    import msgspec

    from keyvault.service.schemas import OrderAnswer, ReceiptAnswer

    one, two, three, held = (shop.keys.pop() for _ in range(4))
    first = shop.call("POST", "/v1/redeem", {"key": one, "order_id": "plain/1"}).json()
    assert first["status"] == "accepted"
    assert shop.call("POST", "/v1/redeem", {"key": one, "order_id": "plain/1"}).json() == first  # a retry
    many = shop.call("POST", "/v1/redeem-many", {"items": [{"key": two, "order_id": "plain/1"},
                                                           {"key": three, "order_id": "plain/1"}]}).json()
    assert [r["status"] for r in many["results"]] == ["accepted", "accepted"]
    shop.call("POST", "/v1/hold", {"key": held, "order_id": "plain/1", "ttl": 900})
    shop.call("POST", "/v1/confirm", {"order_id": "plain/1"})
    shop.call("POST", "/v1/redeem", {"key": shop.limited[1], "order_id": "plain/1"})
    reply = shop.call("GET", "/v1/orders/" + urllib.parse.quote("plain/1", safe=""))
    order = msgspec.convert(reply.json(), OrderAnswer)  # strict: no field undocumented, none missing
    assert len(order.keys) == 5 and {k.state for k in order.keys} == {"redeemed"}
    assert [e.type for e in order.events].count("redeem") == 4  # the limited key's first use is no redeem
    assert {"hold", "confirm", "use"} <= {e.type for e in order.events}
    assert all(k not in reply.body.decode() for k in (one, two, three, held))
    receipt = shop.call("GET", f"/v1/receipts/{first['serial']}")
    assert msgspec.convert(receipt.json(), ReceiptAnswer).receipt.startswith("KVR1.")
    doc = shop.call("GET", "/v1/openapi.json").json()
    ok = {path: doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
          for path in ("/v1/orders/{order_id}", "/v1/receipts/{serial}")}
    assert ok == {"/v1/orders/{order_id}": {"$ref": "#/components/schemas/OrderAnswer"},
                  "/v1/receipts/{serial}": {"$ref": "#/components/schemas/ReceiptAnswer"}}
    schemas = doc["components"]["schemas"]
    assert set(schemas["OrderAnswer"]["required"]) == {"order_id", "keys", "events"}
    assert set(schemas["OrderKey"]["properties"]["state"]["enum"]) == {"held", "redeemed", "released", "expired",
                                                                         "void"}
