"""``keyvault cluster local demo`` (``make cluster-demo``): the cluster's story on the loopback, start to end.

Two nodes on a three-member Patroni cluster; a supplier batch imported; a key verified and redeemed
across nodes (refused for a second order naming the first, a retry answered the same elsewhere); the
primary's postmaster killed with SIGKILL under load; Patroni promotes; redeems resume; the checker's
summary, with the cluster event log's size and whether its newest checkpoint extends the one signed before
the kill; the key redeemed on node1 proven by a bundle made on node2 and verified with the cluster's public
engine key; the cluster stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cluster_load import HttpClient, Load, authority_holdings, check, longest_gap, provision
from .cluster_local import ClusterError, LocalCluster, find_programs, member_by_role, postmaster_pid


def _post(node: dict[str, Any], path: str, doc: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(node["url"] + path, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {node['admin_token']}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        return {"http_status": exc.code, **json.loads(exc.read() or b"{}")}


def _read(dsn: str, work: Callable[[Any], Any], timeout: float = 60.0) -> Any:
    """``work(connection)`` on the primary, retried while there is none (a failover)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                return work(conn)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def newest_checkpoint(dsn: str) -> tuple[int, bytes] | None:
    """The cluster log's newest signed checkpoint in PostgreSQL: (size, signed note), or None."""
    row = _read(dsn, lambda conn: conn.execute(
        "SELECT size, note FROM keyvault_checkpoints ORDER BY size DESC LIMIT 1").fetchone())
    return None if row is None else (int(row[0]), bytes(row[1]))


#: The changes the cluster log holds an event of (docs/cluster.md, "The cluster event log").
LOGGED_KINDS = ["redeem", "void", "blacklist", "lift", "manifest", "hold", "confirm", "release", "expire", "use"]


def wait_for_checkpoint(dsn: str, above: int, timeout: float = 60.0, whole: bool = True) -> tuple[int, bytes] | None:
    """The newest checkpoint once it is past size ``above`` (and with ``whole``, covers every change the authority
    committed: the whole log once the sequencer has caught up); None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        size = _read(dsn, lambda conn: conn.execute("SELECT count(*) FROM keyvault_changes WHERE kind = ANY(%s)",
                                                    (LOGGED_KINDS,)).fetchone()[0])
        newest = newest_checkpoint(dsn)
        if newest is not None and newest[0] > above and (newest[0] == size or not whole):
            return newest
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def consistent(dsn: str, public: Path, old: tuple[int, bytes], new: tuple[int, bytes]) -> str | None:
    """Check, as anyone holding the cluster's public engine key can, that checkpoint ``new`` extends ``old``:
    both signed by the key, both roots of the log's leaves, and an RFC 9162 consistency proof between them
    verified. None when it holds, else what failed."""
    from keyvault import KeyvaultError, PublicIdentity
    from keyvault.formats import merkle
    from keyvault.formats.bundle import engine_origin
    from keyvault.formats.checkpoint import Verifier, open_note

    key = PublicIdentity.load(public).public_key
    origin = engine_origin(key)
    rows = _read(dsn, lambda conn: conn.execute("SELECT idx, leaf FROM keyvault_log WHERE idx < %s ORDER BY idx",
                                                (new[0],)).fetchall())
    if [int(r[0]) for r in rows] != list(range(new[0])):
        return f"the log's entries are not numbered 0..{new[0] - 1} without gap or duplicate"
    hashes = [merkle.leaf_hash(bytes(r[1])) for r in rows]
    try:
        before, after = (open_note(note, origin, [Verifier(origin, key)]) for _, note in (old, new))
        for checkpoint in (before, after):
            if merkle.root(hashes[:checkpoint.size]) != checkpoint.root:
                return f"the checkpoint at size {checkpoint.size} is not the root of the log's entries"
        proof = merkle.consistency_proof(before.size, after.size, merkle.perfect_from_leaves(hashes))
        merkle.verify_consistency(before.size, after.size, before.root, after.root, proof)
    except KeyvaultError as exc:
        return str(exc)
    return None


def prove_from(node: dict[str, Any], key: str, root: Path, public: Path,
               witnesses: Sequence[Path] = (), wait: float = 60.0) -> tuple[int, list[str]]:
    """A trace bundle of ``key`` made on ``node`` (`keyvault trace --bundle`), then checked offline with
    `keyvault verify-bundle --engine` the cluster's public key and the supplier's, and with ``witnesses`` (the
    nodes' witness keys) requiring one cosignature: (checks, failed ones). A checkpoint is cosigned a moment
    after it is signed, so a bundle whose only failure is that rule is made again, for up to ``wait`` seconds."""
    keyvault = find_programs().keyvault
    path = root / "bundle.json"
    deadline = time.monotonic() + wait
    while True:
        path.unlink(missing_ok=True)
        made = subprocess.run([keyvault, "--store", node["store"], "trace", "-", "--bundle", str(path), "--json"],
                              input=key, capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            return 0, [f"trace --bundle on {node['name']}: {made.stderr.strip()}"]
        argv = [keyvault, "verify-bundle", str(path), "--engine", str(public), "--key", "-", "--json"]
        for pub in sorted((root / "supplier").glob("supplier*.pub")):
            argv += ["--supplier", str(pub)]
        for pub in witnesses:
            argv += ["--witness", str(pub)]
        if witnesses:
            argv += ["--min-witnesses", "1"]
        checked = subprocess.run(argv, input=key, capture_output=True, text=True, timeout=120)
        try:
            checks = json.loads(checked.stdout)["checks"]
        except (ValueError, KeyError):
            return 0, [f"verify-bundle: {checked.stderr.strip()}"]
        failed = [c for c in checks if not c["ok"]]
        if not ({c["check"] for c in failed} == {"witness cosignatures"} and time.monotonic() < deadline):
            return len(checks), [f"{c['check']}: {c['detail']}" for c in failed]
        time.sleep(1.0)


def run_demo(root: Path | None, say: Callable[[str], None], keep: bool = False, seconds: float = 4.0) -> bool:
    """Run the story in ``root`` (a new directory under /var/tmp when None); True when the checker found 0 lost
    and 0 doubles, the cluster log stayed consistent across the failover and the bundle checked out."""
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
    public = Path(state["cluster_pub"])
    say(f"   every node bound with the cluster engine key; its public identity: {public}")
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
        logged = _read(state["superuser_dsn"], lambda conn: conn.execute("SELECT size FROM keyvault_log_head")
                       .fetchone()[0])
        load = Load(lambda i: HttpClient(state["nodes"][i % 2]["url"], state["nodes"][i % 2]["admin_token"], keys),
                    serials[1:], clients=8, orders_per_serial=2).start()
        try:
            time.sleep(seconds)
            # a checkpoint of the log with some of this load in it, before the kill (one is signed every 10 s)
            signed = wait_for_checkpoint(state["superuser_dsn"], logged, whole=False)
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
        newest = wait_for_checkpoint(state["superuser_dsn"], signed[0] if signed else 0)
        problem = "no checkpoint before the kill" if signed is None else \
            "no checkpoint of the whole log within 60 s" if newest is None else \
            consistent(state["superuser_dsn"], public, signed, newest)
        say(f"   cluster log {newest[0] if newest else '?'} entries (checkpoint before the kill at "
            f"{signed[0] if signed else '?'}), consistent across the failover: "
            + ("yes" if problem is None else f"no ({problem})"))
        witnesses = [Path(n["witness_pub"]) for n in state["nodes"] if n.get("witness_pub")]
        say(f"7. {first}, redeemed on node1 in step 3: its bundle made on node2 (`keyvault trace --bundle`), "
            f"checked with `keyvault verify-bundle --engine {public.name} --key KEY`"
            + (" --witness for each node's witness key --min-witnesses 1 (the node that did not sign the "
               "checkpoint cosigned it)" if witnesses else ""))
        count, failed = prove_from(b, keys[first], Path(state["dir"]), public, witnesses)
        say(f"   {count} checks, " + ("all pass" if count and not failed else "FAILED: " + "; ".join(failed)))
        return verdict.ok and problem is None and bool(count) and not failed
    finally:
        if keep:
            say(f"8. left running: `keyvault cluster local down --dir {root}` stops it")
        else:
            stopped = cluster.down()
            say(f"8. cluster down: {len(stopped)} processes stopped")
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
