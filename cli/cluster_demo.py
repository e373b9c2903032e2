"""``keyvault cluster local demo`` (``make cluster-demo``): the cluster's story on the loopback, start to end.

Two nodes on a three-member Patroni cluster; a supplier batch imported; a key verified and redeemed
across nodes (refused for a second order naming the first, a retry answered the same elsewhere); the
primary's postmaster killed with SIGKILL under load; Patroni promotes; redeems resume; the checker's
summary; the cluster stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cluster_load import HttpClient, Load, authority_holdings, check, longest_gap, provision
from .cluster_local import ClusterError, LocalCluster, member_by_role, postmaster_pid


def _post(node: dict[str, Any], path: str, doc: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(node["url"] + path, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {node['admin_token']}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        return {"http_status": exc.code, **json.loads(exc.read() or b"{}")}


def run_demo(root: Path | None, say: Callable[[str], None], keep: bool = False, seconds: float = 4.0) -> bool:
    """Run the story in ``root`` (a new directory under /var/tmp when None); True when the checker found 0 lost
    and 0 doubles."""
    made = None
    if root is None:
        made = base = Path(tempfile.mkdtemp(prefix="keyvault-cluster-demo-", dir="/var/tmp" if os.path.isdir("/var/tmp")
                                     else None))
        os.chmod(base, 0o711)
        root = base / "cluster"
    cluster = LocalCluster(root)
    say(f"1. starting the cluster in {root}: three etcd, three PostgreSQL under Patroni (synchronous), two nodes")
    started = time.monotonic()
    doc = cluster.up(nodes=2, say=lambda line: say("   " + line), node_workers=2)
    state = cluster.load()
    assert state is not None
    if not state.get("authority_command"):
        raise ClusterError("this keyvault has no `authority` command: its nodes cannot share the cluster")
    say(f"   up in {time.monotonic() - started:.1f} s; leader {doc['leader']}, sync standby "
        f"{', '.join(doc['sync_standby'])}; synchronous_standby_names = {doc['synchronous_standby_names']}")
    a, b = state["nodes"]
    try:
        say("2. a supplier issues 5,000 keys; node1 pins the supplier and imports the signed manifest")
        keys = provision(state, 5000, nodes=1)
        imported = time.monotonic()
        serials = sorted(keys)
        first = serials[0]
        while True:  # node2 fetches the manifest from the authority's registry on its own
            answer = _post(b, "/v1/verify", {"keys": [keys[first]]})["results"][0]
            if answer["status"] == "valid" or time.monotonic() > imported + 60:
                break
            time.sleep(0.1)
        say(f"   verify {first} on node2: {answer['status']} ({time.monotonic() - imported:.1f} s after the import "
            "on node1)")
        answer = _post(a, "/v1/redeem", {"key": keys[first], "order_id": "order-A"})
        say(f"3. redeem {first} for order-A on node1: {answer['status']} at {answer.get('redeemed_at')}")
        answer = _post(b, "/v1/redeem", {"key": keys[first], "order_id": "order-B"})
        say(f"   the same key for order-B on node2: {answer['status']} ({answer.get('message')})")
        answer = _post(b, "/v1/redeem", {"key": keys[first], "order_id": "order-A"})
        say(f"   order-A's retry on node2: {answer['status']} at {answer.get('redeemed_at')} (the first answer)")
        say("4. 8 clients redeem over both nodes' HTTP services, racing on the same keys with retries")
        load = Load(lambda i: HttpClient(state["nodes"][i % 2]["url"], state["nodes"][i % 2]["admin_token"], keys),
                    serials[1:], clients=8, orders_per_serial=2).start()
        try:
            time.sleep(seconds)
            leader = member_by_role(cluster, state, "leader")
            pid = postmaster_pid(leader) if leader else None
            if leader is None or pid is None:
                raise ClusterError("no primary to kill: see `keyvault cluster local status`")
            before = load.accepted_since(0)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            say(f"5. SIGKILL of the primary's postmaster ({leader['name']}, pid {pid}) after {before} accepted redeems")
            new = None
            deadline = killed + 90
            while time.monotonic() < deadline:
                new = member_by_role(cluster, state, "leader")
                if new is not None and new["name"] != leader["name"]:
                    break
                time.sleep(0.2)
            say(f"   Patroni promoted {new['name'] if new else 'nobody'} "
                f"{time.monotonic() - killed:.1f} s after the kill")
            resumed = None
            while time.monotonic() < deadline and resumed is None:
                resumed = load.first_accepted_after(killed + 1.0)
                time.sleep(0.1)
            say("   redeems resumed" + (f" {resumed - killed:.1f} s after the kill" if resumed else ": NOT within 90 s"))
            time.sleep(seconds)
        finally:
            answers = load.stop()
        verdict = check(answers, authority_holdings(state["superuser_dsn"]))
        gap = longest_gap(answers, killed, resumed or time.monotonic())
        say("6. summary, every answer compared with what PostgreSQL holds:")
        say(f"   acknowledged {verdict.acknowledged}, stored {verdict.stored}, lost {len(verdict.lost)}, "
            f"doubles {len(verdict.doubles)}, unknown (503, retried) {verdict.unknown}, "
            f"seconds without a writable primary {gap:.1f}")
        return verdict.ok
    finally:
        if keep:
            say(f"7. left running: `keyvault cluster local down --dir {root}` stops it")
        else:
            stopped = cluster.down()
            say(f"7. cluster down: {len(stopped)} processes stopped")
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
