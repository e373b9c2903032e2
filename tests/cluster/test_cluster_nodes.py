"""keyvault nodes bound to the cluster: exactly-once across nodes through HTTP and the library, faults
under that load, and a blacklist or void on one node refusing a redeem on the other at once.

Every run is judged by the one checker (keyvault.cli.cluster_load.check) against what the authority's
table in PostgreSQL holds after the run.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from typing import Any

import pytest

from keyvault import Vault
from keyvault.cli.cluster_load import (
    HttpClient,
    Load,
    Redeem,
    VaultClient,
    authority_holdings,
    check,
    provision,
)
from keyvault.cli.cluster_local import LocalCluster, member_by_role, postmaster_pid

from .cluster_support import need_cluster


def _state(cluster: LocalCluster) -> dict[str, Any]:
    state = cluster.load()
    assert state is not None
    return state


def _post(node: dict[str, Any], path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(node["url"] + path, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {node['admin_token']}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def _wait_accepting(load: Load, since: float, seconds: float = 60) -> float:
    deadline = time.monotonic() + seconds
    while (first := load.first_accepted_after(since)) is None:
        assert time.monotonic() < deadline, f"no redeem accepted {seconds:.0f} s after the fault: {load.errors[-5:]}"
        time.sleep(0.1)
    return first


def _eventually_valid(state: dict[str, Any], keys: dict[str, str], seconds: float = 60) -> None:
    """Wait until every node verifies one of ``keys`` valid (the manifest reached it)."""
    key = keys[sorted(keys)[-1]]
    for node in state["nodes"]:
        deadline = time.monotonic() + seconds
        while _post(node, "/v1/verify", {"keys": [key]})[1]["results"][0]["status"] != "valid":
            assert time.monotonic() < deadline, f"{node['name']} never received the manifest"
            time.sleep(0.1)


def _clients(state: dict[str, Any], keys: dict[str, str], vault: Vault | None) -> Any:
    """Client i: HTTP to node (i % 2) for most, the library on node1's store for every fourth."""
    nodes = state["nodes"]

    def make(i: int) -> Redeem:
        if vault is not None and i % 4 == 3:
            return VaultClient(vault, keys, server=-1)
        node = nodes[i % len(nodes)]
        return HttpClient(node["url"], node["admin_token"], keys)

    return make


def _judge(state: dict[str, Any], answers: list[Any], what: str) -> Any:
    verdict = check(answers, authority_holdings(state["superuser_dsn"]))
    print(f"{what}: {verdict.summary()}")
    assert verdict.ok, (verdict.lost[:5], verdict.doubles[:5], verdict.wrong_refusals[:5], verdict.indefinite[:5])
    return verdict


def test_many_clients_racing_over_three_nodes_redeem_each_key_once(cluster_dir: Any) -> None:
    need_cluster()
    three = LocalCluster(cluster_dir)
    try:
        three.up(nodes=3, node_workers=1)
        _race(three)
    finally:
        three.down()


def _race(cluster: LocalCluster) -> None:
    state = _state(cluster)
    keys = provision(state, 200, nodes=1)  # imported on node1: the others fetch it from the authority
    _eventually_valid(state, keys)
    with Vault.open(state["nodes"][0]["store"]) as vault:
        load = Load(_clients(state, keys, vault), sorted(keys), clients=12, orders_per_serial=3).start()
        time.sleep(10)
        answers = load.stop()
    verdict = _judge(state, answers, "12 clients, three nodes, HTTP and the library")
    assert verdict.acknowledged > 100 and verdict.unknown == 0
    refused = sum(1 for a in answers if a.outcome == "refused")
    retried = len({(a.serial, a.order) for a in answers if a.outcome == "accepted"})
    assert refused > 100, "the clients did not race on the same keys"
    assert retried < sum(1 for a in answers if a.outcome == "accepted"), "no retry of an accepted order was answered"
    assert {a.server for a in answers if a.outcome == "accepted"} >= {-1, *(int(n["url"].rsplit(":", 1)[1])
                                                                          for n in state["nodes"])}


def test_sigkill_of_the_primary_under_node_load(node_cluster: LocalCluster) -> None:
    state = _state(node_cluster)
    keys = provision(state, 20_000)
    load = Load(_clients(state, keys, None), sorted(keys), clients=8, orders_per_serial=2).start()
    try:
        _wait_accepting(load, time.monotonic() - 1)
        time.sleep(3)
        leader = member_by_role(node_cluster, state, "leader")
        assert leader is not None
        pid = postmaster_pid(leader)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(1)  # the old primary's orphaned backends may still answer for a moment
        first = _wait_accepting(load, time.monotonic())
        time.sleep(2)
    finally:
        answers = load.stop()
    verdict = _judge(state, answers, f"SIGKILL of {leader['name']}'s postmaster under two nodes' load "
                                     f"(redeems accepted again {first - killed:.1f} s after the kill)")
    assert verdict.acknowledged > 100
    assert member_by_role(node_cluster, state, "leader")["name"] != leader["name"]


def test_sigkill_of_a_node_under_load(node_cluster: LocalCluster) -> None:
    state = _state(node_cluster)
    keys = provision(state, 5_000)
    load = Load(_clients(state, keys, None), sorted(keys), clients=8, orders_per_serial=3).start()
    victim = next(p for p in state["processes"] if p["kind"] == "node" and p["name"] == "node1")
    try:
        _wait_accepting(load, time.monotonic() - 1)
        time.sleep(2)
        os.killpg(victim["pid"], signal.SIGKILL)  # the supervisor, its workers and its commit process
        killed = time.monotonic()
        time.sleep(3)
        after = load.accepted_since(killed + 0.5)
    finally:
        answers = load.stop()
    verdict = _judge(state, answers, "SIGKILL of node1 under load")
    assert after > 0, "node2 stopped accepting when node1 died"
    port = int(state["nodes"][0]["url"].rsplit(":", 1)[1])
    assert any(a.outcome == "unknown" and a.server == port for a in answers), "node1's clients saw no failure"
    assert verdict.acknowledged > 100


def test_a_blacklist_or_void_on_one_node_refuses_a_redeem_on_the_other_at_once(node_cluster: LocalCluster) -> None:
    state = _state(node_cluster)
    keys = provision(state, 10)
    a, b = state["nodes"]
    serials = sorted(keys)
    status, doc = _post(a, "/v1/void", {"key": keys[serials[0]], "reason": "refunded"})
    assert status == 200 and doc["status"] == "void", doc
    status, doc = _post(b, "/v1/redeem", {"key": keys[serials[0]], "order_id": "o-1"})
    assert status == 200 and doc["status"] == "void", doc
    status, doc = _post(a, "/v1/blacklist", {"level": "key", "target": keys[serials[1]], "reason": "stolen"})
    assert status == 200, doc
    status, doc = _post(b, "/v1/redeem", {"key": keys[serials[1]], "order_id": "o-2"})
    assert status == 200 and doc["status"] == "blacklisted", doc
    status, doc = _post(a, "/v1/blacklist/lift", {"level": "key", "target": keys[serials[1]], "reason": "found"})
    assert status == 200, doc
    status, doc = _post(b, "/v1/redeem", {"key": keys[serials[1]], "order_id": "o-2"})
    assert status == 200 and doc["status"] == "accepted", doc
    status, doc = _post(a, "/v1/redeem", {"key": keys[serials[1]], "order_id": "o-3"})
    assert status == 200 and doc["status"] == "redeemed" and doc["order_id"] == "o-2", doc
    status, doc = _post(a, "/v1/redeem", {"key": keys[serials[1]], "order_id": "o-2"})  # the retry, elsewhere
    assert status == 200 and doc["status"] == "accepted", doc


@pytest.mark.parametrize("freeze", [False, True], ids=["severed", "frozen"])
def test_a_node_cut_off_from_postgresql_answers_unknown_and_recovers(node_cluster: LocalCluster, freeze: bool) -> None:
    """A third node (the library, in this process) reaches the cluster through relays the test severs: while
    cut off it accepts nothing and answers every redeem unknown or unavailable (503); the two other nodes
    go on; healed, it accepts again; the checker finds nothing lost or doubled. Frozen (every byte held while
    the sockets stay open, as from a hung primary), its redeems still end: the authority's deadline closes
    the connection and the call answers unknown, and the next one reconnects."""
    from .cluster_support import Proxy

    state = _state(node_cluster)
    proxies = [Proxy(member["pg_port"]) for member in state["members"]]
    third = node_cluster.root / "nodes" / "node3-cut" / "store"
    third.parent.mkdir(parents=True)
    keys = provision(state, 5_000, also=(str(third),))
    password = state["passwords"]["keyvault"]
    hosts = ",".join(f"127.0.0.1:{p.port}" for p in proxies)
    vault = Vault.open(third)
    try:
        vault.authority.set(f"postgresql://keyvault:{password}@{hosts}/keyvault"
                            "?target_session_attrs=read-write&connect_timeout=3")
        nodes = state["nodes"]

        def make(i: int) -> Redeem:
            if i >= 6:
                return VaultClient(vault, keys, server=-3)
            return HttpClient(nodes[i % 2]["url"], nodes[i % 2]["admin_token"], keys)

        load = Load(make, sorted(keys), clients=8, orders_per_serial=2).start()
        try:
            _wait_accepting(load, time.monotonic() - 1)
            time.sleep(2)
            for proxy in proxies:
                proxy.cut(freeze=freeze)
            cut = time.monotonic()
            time.sleep(45 if freeze else 8)  # frozen: past the deadline (10 s), then connect_timeout per member
            with load._lock:  # noqa: SLF001 - reading the answers so far
                during = [a for a in load.answers if a.sent > cut + 0.5]
            for proxy in proxies:
                proxy.heal()
            healed = time.monotonic()
            deadline = healed + 60
            while not any(a.server == -3 and a.outcome == "accepted" and a.sent > healed for a in list(load.answers)):
                assert time.monotonic() < deadline, f"the cut-off node never recovered: {load.errors[-5:]}"
                time.sleep(0.2)
        finally:
            answers = load.stop()
    finally:
        vault.close()
        for proxy in proxies:
            proxy.close()
    verdict = _judge(state, answers, f"a node cut off from PostgreSQL ({'frozen 45 s' if freeze else 'severed 8 s'})")
    cut_off = [a for a in during if a.server == -3]
    others = [a for a in during if a.server != -3]
    assert cut_off and all(a.outcome == "unknown" for a in cut_off), {a.outcome for a in cut_off}
    assert sum(a.outcome == "accepted" for a in others) > 10, "the other nodes stopped while one was cut off"
    assert verdict.acknowledged > 100


def test_a_stopped_sync_standby_holds_every_node_redeem_and_loses_nothing(node_cluster: LocalCluster) -> None:
    """SIGSTOP of the synchronous standby's WAL receiver under the nodes' load: no redeem is acknowledged
    while it receives nothing (synchronous mode strict), the waiting ones complete after SIGCONT."""
    from keyvault.cli.cluster_local import walreceiver_pid

    state = _state(node_cluster)
    keys = provision(state, 5_000, nodes=1)
    _eventually_valid(state, keys)
    sync = member_by_role(node_cluster, state, "sync_standby")
    assert sync is not None
    receiver = walreceiver_pid(node_cluster, state, sync)
    assert receiver is not None
    load = Load(_clients(state, keys, None), sorted(keys), clients=8, orders_per_serial=2).start()
    try:
        _wait_accepting(load, time.monotonic() - 1)
        time.sleep(2)
        os.kill(receiver, signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(5)
        during = load.accepted_since(stopped + 0.5)
        os.kill(receiver, signal.SIGCONT)
        resumed = time.monotonic()
        _wait_accepting(load, resumed)
        time.sleep(1)
    finally:
        os.kill(receiver, signal.SIGCONT)
        answers = load.stop()
    verdict = _judge(state, answers, f"SIGSTOP of {sync['name']}'s WAL receiver for 5 s under the nodes' load "
                                     f"({during} accepted meanwhile)")
    assert during == 0
    assert verdict.acknowledged > 100
