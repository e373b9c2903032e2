"""Checkout across the nodes of a real cluster (Patroni, synchronous standby): a storefront behind a load
balancer holds a key on node1, the payment webhook confirms it on node2, another buyer is refused on both."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from keyvault.cli.cluster_load import provision
from keyvault.cli.cluster_local import LocalCluster

from .test_cluster_nodes import _eventually_valid, _post


def _get(node: dict[str, Any], path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(node["url"] + path, headers={"Authorization": f"Bearer {node['admin_token']}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def test_a_key_held_on_one_node_is_confirmed_on_another(node_cluster: LocalCluster) -> None:
    state = node_cluster.load()
    assert state is not None
    keys = provision(state, 10, nodes=1)  # imported on node1: node2 fetches it from the authority
    _eventually_valid(state, keys)
    one, two = state["nodes"]
    key = keys[sorted(keys)[0]]
    status, held = _post(one, "/v1/hold", {"key": key, "order_id": "shop-1", "ttl": 900})
    assert status == 200 and held["status"] == "held" and held["order_id"] == "shop-1", held
    status, again = _post(two, "/v1/hold", {"key": key, "order_id": "shop-1", "ttl": 60})
    assert status == 200 and again == held  # the storefront's retry reached the other node: the same answer
    status, other = _post(two, "/v1/hold", {"key": key, "order_id": "shop-2", "ttl": 900})
    assert status == 200 and other["status"] == "held" and other.get("order_id") is None, other
    status, taken = _post(two, "/v1/redeem", {"key": key, "order_id": "shop-2"})
    assert status == 200 and taken["status"] == "held", taken
    deadline = time.monotonic() + 30
    while _post(two, "/v1/verify", {"keys": [key]})[1]["results"][0]["status"] != "held":
        assert time.monotonic() < deadline, "node2's cache never showed the hold made on node1"
        time.sleep(0.1)
    status, confirmed = _post(two, "/v1/confirm", {"order_id": "shop-1"})  # the payment webhook, on node2
    assert status == 200 and [r["status"] for r in confirmed["results"]] == ["accepted"], confirmed
    status, retried = _post(one, "/v1/confirm", {"order_id": "shop-1"})
    assert status == 200 and retried == confirmed
    status, late = _post(one, "/v1/redeem", {"key": key, "order_id": "shop-2"})
    assert status == 200 and late["status"] == "redeemed" and late["order_id"] == "shop-1", late
    for node in (one, two):
        status, order = _get(node, "/v1/orders/shop-1")
        assert status == 200 and [k["state"] for k in order["keys"]] == ["redeemed"], order
        assert [e["type"] for e in order["events"]] == ["hold", "confirm", "redeem"], order
