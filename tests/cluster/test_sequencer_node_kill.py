"""SIGKILL of the keyvault node whose process holds the cluster log's lock, under redeems on the local
Patroni cluster: another node takes the lock and goes on, no index skipped or taken twice, every change
logged once, and the checkpoint signed before the kill extended by the one after."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from keyvault.cli.cluster_demo import consistent, newest_checkpoint, wait_for_checkpoint
from keyvault.cli.cluster_load import HttpClient, Load, authority_holdings, check, provision
from keyvault.cli.cluster_local import LocalCluster, start_time
from keyvault.engine.authority.sequencer import LOG_LOCK, LOGGED

from conftest import eventually

from .cluster_support import need_cluster


def _sql(dsn: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    for _ in range(60):
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                return conn.execute(statement, args or None).fetchall()
        except psycopg.OperationalError:
            time.sleep(0.5)
    raise AssertionError("PostgreSQL's primary did not answer for 30 s")


def _holder(state: dict[str, Any]) -> dict[str, Any] | None:
    """The keyvault node one of whose processes holds the log's advisory lock (found by its TCP port)."""
    rows = _sql(state["superuser_dsn"],
                "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.granted "
                "AND l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
                LOG_LOCK >> 32, LOG_LOCK & 0xFFFFFFFF)
    if not rows or rows[0][0] is None:
        return None
    port, sockets = int(rows[0][0]), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    sockets.add(f"socket:[{fields[9]}]")
    for proc in (p for p in state["processes"] if p["kind"] == "node" and start_time(p["pid"]) is not None):
        for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
            try:
                if os.getpgid(pid) != proc["pid"]:
                    continue
                if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in os.listdir(f"/proc/{pid}/fd")):
                    return next(n for n in state["nodes"] if n["name"] == proc["name"])
            except OSError:  # a process that ended meanwhile
                continue
    return None


def _size(dsn: str) -> int:
    return int(_sql(dsn, "SELECT size FROM keyvault_log_head")[0][0])


def _loggable(dsn: str) -> list[int]:
    return [int(r[0]) for r in _sql(dsn, "SELECT change FROM keyvault_changes WHERE kind = ANY(%s) ORDER BY change",
                                    list(LOGGED))]


def _valid(node: dict[str, Any], key: str) -> bool:
    request = urllib.request.Request(node["url"] + "/v1/verify", data=json.dumps({"keys": [key]}).encode(),
                                     headers={"Authorization": f"Bearer {node['admin_token']}",
                                              "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return bool(json.loads(reply.read())["results"][0]["status"] == "valid")


def test_killing_the_node_that_sequences_hands_the_log_over_without_gap_or_duplicate(
        node_cluster: LocalCluster) -> None:
    need_cluster()
    state = node_cluster.load()
    assert state is not None
    dsn = state["superuser_dsn"]
    keys = provision(state, 3000, nodes=1)
    eventually(lambda: _holder(state) is not None, "no node's process holds the cluster log's lock", 120, 0.2)
    victim = _holder(state)
    assert victim is not None
    survivor = next(n for n in state["nodes"] if n["name"] != victim["name"])
    eventually(lambda: _valid(survivor, keys[min(keys)]), "the survivor never fetched the manifest", 60, 0.2)
    pid = next(p["pid"] for p in state["processes"] if p["kind"] == "node" and p["name"] == victim["name"])
    load = Load(lambda i: HttpClient(survivor["url"], survivor["admin_token"], keys), sorted(keys), clients=4,
                orders_per_serial=2).start()
    try:
        start = _size(dsn)
        before = wait_for_checkpoint(dsn, start + 20, timeout=120, whole=False)  # signed by the victim, under load
        assert before is not None, "the first sequencer signed no checkpoint of the load"
        os.killpg(pid, signal.SIGKILL)  # the node, every process of it: its session ends, the lock with it
        eventually(lambda: start_time(pid) is None, "the killed node did not die", 30, 0.05)
        eventually(lambda: (h := _holder(state)) is not None and h["name"] == survivor["name"],
                   "no other node took the cluster log's lock within 60 s", 60, 0.2)
        taken = _size(dsn)
        eventually(lambda: _size(dsn) > taken + 20, "the log did not grow after the takeover", 120, 0.2)
    finally:
        answers = load.stop()
    eventually(lambda: _size(dsn) == len(_loggable(dsn)), "the new sequencer did not log every change", 120, 0.5)
    after = wait_for_checkpoint(dsn, before[0], timeout=120)
    assert after is not None, "no checkpoint of the whole log after the takeover"
    rows = _sql(dsn, "SELECT idx, change FROM keyvault_log ORDER BY idx")
    assert [int(r[0]) for r in rows] == list(range(len(rows)))  # no gap, no index twice
    assert [int(r[1]) for r in rows] == _loggable(dsn)  # every change once, in change-number order
    assert consistent(dsn, Path(state["cluster_pub"]), before, after) is None
    assert newest_checkpoint(dsn) == after
    verdict = check(answers, authority_holdings(dsn))
    print(f"sequencer node killed: {verdict.summary()}; log {before[0]} -> {after[0]}")
    assert verdict.ok and verdict.acknowledged > 20, verdict.summary()


def test_the_demo_counts_the_kinds_of_change_the_log_holds() -> None:
    from keyvault.cli.cluster_demo import LOGGED_KINDS

    assert LOGGED_KINDS == list(LOGGED)
