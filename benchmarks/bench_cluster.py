"""keyvault nodes on the local cluster, measured (not a test): ``make bench-cluster``.

Starts ``keyvault cluster local up`` with two nodes (three etcd, three PostgreSQL members under Patroni,
synchronous mode strict) in a new directory under /var/tmp, and measures:

* redeem_many in batches of 1,000 through a node (the library on node1's store) against a bare psycopg
  loop doing the same ``INSERT … SELECT … FROM unnest(…) ON CONFLICT DO NOTHING`` per 1,000 rows on the
  same cluster (targets: >= 60 k keys/s and >= 0.8x bare);
* HTTP redeem, one key a request, 64 keep-alive connections spread over both nodes (>= 8 k/s, p99 <= 50 ms);
* verify_many (1,000 keys) and one-key verify on a node against a store with the same batch and no
  authority (>= 0.9x);
* failover: SIGKILL of the primary's postmaster under HTTP load, then the time until the first redeem
  sent after the kill is accepted (<= 10 s), with the checker's lost and doubles (0 and 0).

Prints one JSON document (and the lines as it goes on stderr). Options: --keys N (default 60,000),
--http-seconds, --keep (leave the cluster running).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from keyvault import Vault
from keyvault.cli.cluster_load import HttpClient, Load, Unknown, authority_holdings, check, provision
from keyvault.cli.cluster_local import LocalCluster, member_by_role, postmaster_pid


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def rate(fn: Any, items: list[Any], size: int = 1000) -> float:
    """Items per second through ``fn`` called on chunks of ``size``."""
    start = time.perf_counter()
    for i in range(0, len(items), size):
        fn(items[i:i + size])
    return len(items) / (time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def bench_redeem_many(state: dict[str, Any], keys: dict[str, str], count: int) -> dict[str, float]:
    import psycopg

    serials = sorted(keys)[:count]
    with Vault.open(state["nodes"][0]["store"]) as node:
        node_rate = rate(lambda chunk: node.redeem_many([(keys[s], f"bench-{s}") for s in chunk]), serials)
    with psycopg.connect(state["dsn"], autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bare")
        conn.execute("CREATE TABLE bench_bare (serial bigint PRIMARY KEY, order_id text NOT NULL, at_ms bigint)")
        numbers = list(range(count))

        def bare(chunk: list[int]) -> None:
            with conn.transaction():
                conn.execute("INSERT INTO bench_bare SELECT s, 'order-' || s, 0 FROM unnest(%s::bigint[]) AS s "
                             "ON CONFLICT (serial) DO NOTHING", (chunk,))

        bare_rate = rate(bare, numbers)
    return {"redeem_many_node_keys_per_s": node_rate, "redeem_many_bare_rows_per_s": bare_rate,
            "redeem_many_ratio": node_rate / bare_rate}


def commit_counts(node: dict[str, Any]) -> tuple[float, float]:
    """A node's redeem commits and the items they carried so far, from its /metrics."""
    import urllib.request

    request = urllib.request.Request(node["url"] + "/metrics",
                                     headers={"Authorization": f"Bearer {node['admin_token']}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read().decode()
    found = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line.startswith(("keyvault_redeem_commits_total", "keyvault_redeem_commit_items_total"))}
    return found.get("keyvault_redeem_commits_total", 0.0), found.get("keyvault_redeem_commit_items_total", 0.0)


def bench_http(state: dict[str, Any], keys: dict[str, str], seconds: float, connections: int = 64) -> dict[str, float]:
    """HTTP redeem, one key a request; with each node's commit process turns (commits a second, keys each)."""
    serials = sorted(keys)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    failures = [0] * connections
    stop = threading.Event()
    nodes = state["nodes"]

    def client(i: int) -> None:
        node = nodes[i % len(nodes)]
        http = HttpClient(node["url"], node["admin_token"], keys)
        n = i
        while not stop.is_set() and n < len(serials):
            start = time.perf_counter()
            try:
                outcome, _, _ = http(serials[n], f"http-{serials[n]}")
                if outcome != "accepted":
                    failures[i] += 1
            except Unknown:
                failures[i] += 1
            latencies[i].append(time.perf_counter() - start)
            n += connections
        http.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(connections)]
    before = [commit_counts(node) for node in nodes]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - start
    time.sleep(1)  # the commit processes publish their counts every 0.25 s
    after = [commit_counts(node) for node in nodes]
    commits = sum(a[0] - b[0] for a, b in zip(after, before))
    items = sum(a[1] - b[1] for a, b in zip(after, before))
    flat = [x for row in latencies for x in row]
    return {"http_commits_per_s_per_node": commits / elapsed / len(nodes),
            "http_keys_per_commit": items / commits if commits else float("nan"),
            "http_redeem_per_s": len(flat) / elapsed, "http_redeem_p50_ms": percentile(flat, 0.5) * 1000,
            "http_redeem_p99_ms": percentile(flat, 0.99) * 1000, "http_redeem_requests": len(flat),
            "http_redeem_not_accepted": sum(failures)}


def bench_verify(state: dict[str, Any], keys: dict[str, str], root: Path) -> dict[str, float]:
    sample = [keys[s] for s in sorted(keys)[-20_000:]]
    out: dict[str, float] = {}
    # bound and unbound alternate, best of five each, so a burst of load elsewhere does not favour one side
    with Vault.open(state["nodes"][0]["store"]) as node, Vault.open(root / "unbound-store") as plain:
        for name, vault in (("bound", node), ("unbound", plain)) * 5:
            many = rate(vault.verify_many, sample)
            one = rate(lambda c, v=vault: [v.verify(k) for k in c], sample[:5000])
            out[f"verify_many_{name}_keys_per_s"] = max(out.get(f"verify_many_{name}_keys_per_s", 0.0), many)
            out[f"verify_one_{name}_per_s"] = max(out.get(f"verify_one_{name}_per_s", 0.0), one)
    out["verify_many_ratio"] = out["verify_many_bound_keys_per_s"] / out["verify_many_unbound_keys_per_s"]
    out["verify_one_ratio"] = out["verify_one_bound_per_s"] / out["verify_one_unbound_per_s"]
    return out


def bench_failover(cluster: LocalCluster, state: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    nodes = state["nodes"]
    serials = sorted(keys)
    load = Load(lambda i: HttpClient(nodes[i % 2]["url"], nodes[i % 2]["admin_token"], keys), serials,
                clients=16, orders_per_serial=2).start()
    try:
        time.sleep(3)
        leader = member_by_role(cluster, state, "leader")
        pid = postmaster_pid(leader) if leader else None
        assert leader is not None and pid is not None, "no primary to kill"
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        first = None
        while first is None and time.monotonic() < killed + 90:
            first = load.first_accepted_after(killed + 1.0)  # the old primary's orphaned backends: 1 s
            time.sleep(0.05)
        time.sleep(2)
    finally:
        answers = load.stop()
    verdict = check(answers, authority_holdings(state["superuser_dsn"]))
    return {"failover_first_accepted_s": (first - killed) if first else None, "failover_killed": leader["name"],
            "failover_acknowledged": verdict.acknowledged, "failover_lost": len(verdict.lost),
            "failover_doubles": len(verdict.doubles), "failover_unknown": verdict.unknown,
            "failover_ok": verdict.ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=60_000)
    parser.add_argument("--http-seconds", type=float, default=10.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="keyvault-bench-cluster-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    cluster = LocalCluster(base / "cluster")
    out: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "keys": args.keys}
    try:
        say(f"starting the cluster in {base}")
        cluster.up(nodes=2, say=say, node_workers=2)
        state = cluster.load()
        assert state is not None and state.get("authority_command"), "this keyvault has no `authority` command"
        say(f"issuing {2 * args.keys + 40_000:,} keys and importing them on both nodes")
        keys = provision(state, 2 * args.keys + 40_000, also=(str(cluster.root / "unbound-store"),))
        serials = sorted(keys)
        first = {s: keys[s] for s in serials[:args.keys]}
        second = {s: keys[s] for s in serials[args.keys:2 * args.keys]}
        rest = {s: keys[s] for s in serials[2 * args.keys:]}
        out.update(bench_redeem_many(state, first, args.keys))
        say(json.dumps(out))
        out.update(bench_http(state, second, args.http_seconds))
        say(json.dumps(out))
        out.update(bench_verify(state, rest, cluster.root))
        say(json.dumps(out))
        out.update(bench_failover(cluster, state, rest))
        out["load_average_after"] = os.getloadavg()
    finally:
        if not args.keep:
            cluster.down()
            shutil.rmtree(base, ignore_errors=True)
    targets = {
        "redeem_many >= 60 k/s": out.get("redeem_many_node_keys_per_s", 0) >= 60_000,
        "redeem_many >= 0.8x bare": out.get("redeem_many_ratio", 0) >= 0.8,
        "HTTP redeem >= 8 k/s": out.get("http_redeem_per_s", 0) >= 8_000,
        "HTTP redeem p99 <= 50 ms": out.get("http_redeem_p99_ms", 1e9) <= 50,
        "verify_many >= 0.9x unbound": out.get("verify_many_ratio", 0) >= 0.9,
        "one-key verify >= 0.9x unbound": out.get("verify_one_ratio", 0) >= 0.9,
        "failover <= 10 s": (out.get("failover_first_accepted_s") or 1e9) <= 10,
        "failover 0 lost, 0 doubles": bool(out.get("failover_ok")),
    }
    out["targets"] = targets
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
