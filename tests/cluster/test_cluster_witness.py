"""Nodes witness each other on a real cluster: `cluster local up` gives each node a witness identity, the
sequencer submits every cluster checkpoint to the other nodes' `/v1/witness/add-checkpoint`, and a bundle made
on any node verifies with `verify-bundle --witness nodeX.pub --witness nodeY.pub --min-witnesses 2`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from keyvault.cli.cluster_demo import _post
from keyvault.cli.cluster_load import provision
from keyvault.cli.cluster_local import LocalCluster, find_programs
from keyvault.formats import cosignature
from keyvault.formats.identity import PublicIdentity

from .cluster_support import need_cluster


def _newest(dsn: str) -> tuple[int, int, bytes, bytes | None]:
    """(log size, newest checkpoint's size, its note, the witness key of the node that signed it)."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        head = conn.execute("SELECT size FROM keyvault_log_head").fetchone()[0]
        row = conn.execute("SELECT size, note, signer FROM keyvault_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    if row is None:
        return int(head), 0, b"", None
    return int(head), int(row[0]), bytes(row[1]), None if row[2] is None else bytes(row[2])


def _verify(node: dict[str, Any], key: str, root: Path, witnesses: list[str], required: int) -> list[str]:
    """A bundle of ``key`` made on ``node``, checked offline with the given witnesses: the failed checks."""
    keyvault = find_programs().keyvault
    path = root / f"bundle-{node['name']}-{len(list(root.glob('bundle-*.json')))}.json"
    made = subprocess.run([keyvault, "--store", node["store"], "trace", "-", "--bundle", str(path), "--json"],
                          input=key, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    argv = [keyvault, "verify-bundle", str(path), "--engine", str(root / "cluster.pub"), "--key", "-", "--json",
            "--min-witnesses", str(required)]
    for pub in sorted((root / "supplier").glob("supplier*.pub")):
        argv += ["--supplier", str(pub)]
    for pub in witnesses:
        argv += ["--witness", pub]
    checked = subprocess.run(argv, input=key, capture_output=True, text=True, timeout=120)
    checks = json.loads(checked.stdout)["checks"]
    return [f"{c['check']}: {c['detail']}" for c in checks if not c["ok"]]


def test_a_bundle_from_any_node_carries_the_other_nodes_cosignatures(cluster_dir: Path) -> None:
    need_cluster()
    local = LocalCluster(cluster_dir)
    try:
        local.up(nodes=3, node_workers=1)
        state = local.load()
        assert state is not None and state["authority_command"]
        nodes = state["nodes"]
        witnesses = {n["name"]: PublicIdentity.load(n["witness_pub"]) for n in nodes}
        keys = provision(state, 20, nodes=1)
        serial = sorted(keys)[0]
        deadline = time.monotonic() + 60
        while (answer := _post(nodes[0], "/v1/redeem", {"key": keys[serial], "order_id": "order-w"}))["status"] \
                != "accepted" and time.monotonic() < deadline:
            time.sleep(0.2)  # the batch reaches the authority's registry first
        assert answer["status"] == "accepted", answer
        listed = json.loads(subprocess.run([find_programs().keyvault, "--store", nodes[2]["store"], "witness", "list",
                                            "--json"], capture_output=True, text=True, timeout=60).stdout)
        assert sorted(w["name"] for w in listed["witnesses"]) == sorted(w.name for w in witnesses.values())

        def cosigned() -> tuple[bytes | None, list[str]]:
            head, size, note, signer = _newest(state["dsn"])
            if size == 0 or size < head:
                return None, []
            keys_ = [cosignature.Witness(w.name, w.public_key) for w in witnesses.values()]
            return signer, [w.name for w in cosignature.cosigners(note, keys_)]

        deadline = time.monotonic() + 120
        signer, names = cosigned()
        while not (signer is not None and len(names) == 2) and time.monotonic() < deadline:
            time.sleep(0.5)
            signer, names = cosigned()
        assert signer is not None and len(names) == 2, (signer, names)
        signing = next(n for n in nodes if witnesses[n["name"]].public_key == signer)
        others = [n for n in nodes if n is not signing]
        assert witnesses[signing["name"]].name not in names  # a node never witnesses its own checkpoint
        root = Path(state["dir"])
        for node in nodes:  # from any node: the two witnesses that did not sign
            failed = _verify(node, keys[serial], root, [n["witness_pub"] for n in others], 2)
            assert failed == [], (node["name"], failed)
        failed = _verify(nodes[1], keys[serial], root, [signing["witness_pub"], others[0]["witness_pub"]], 2)
        assert failed and any("witness" in line for line in failed)
    finally:
        local.down()
