"""The service's receipts and list endpoints, against a real server (a small store of its own)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_support import Reply, Server, make_token
from test_service import build_world, problem

from keyvault import PublicIdentity
from keyvault.formats import receipt as fmt
from keyvault.formats.identity import public_part


@dataclass
class Small:
    server: Server
    keys: list[str]
    serials: list[str]
    tokens: dict[str, str]
    engine: PublicIdentity

    def call(self, method: str, path: str, body: object = None, scope: str | None = "admin") -> Reply:
        return self.server.request(method, path, body, token=self.tokens[scope] if scope else None)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Small]:
    root = tmp_path_factory.mktemp("service-receipts")
    store, first, _, _ = build_world(root, count=60)
    engine = public_part(store / "engine.key")
    tokens = {scope: make_token(store, f"{scope}-app", scope) for scope in ("verify", "redeem", "admin")}
    server = Server(store, root / "server.log").start()
    try:
        yield Small(server, list(first.keys), list(first.serials), tokens, engine)
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
