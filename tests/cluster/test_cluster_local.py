"""`keyvault cluster local up|status|down` through the installed command: what it starts, what it
reports, and that it stops exactly what it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from .cluster_support import need_cluster

from keyvault.cli.cluster_local import alive, start_time

KEYVAULT = str(Path(sys.executable).with_name("keyvault"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYVAULT, "cluster", "local", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_a_missing_program_is_named_with_its_package_and_nothing_starts(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent), KEYVAULT_PG_BIN=str(tmp_path / "no-postgres"))
    target = tmp_path / "cluster"
    done = run("up", "--dir", str(target), "--json", env=env)
    assert done.returncode == 1 and done.stdout == ""
    error = json.loads(done.stderr.strip().splitlines()[-1])
    assert error["error"] == "ClusterError"
    for package in ("etcd-server", "patroni", "postgresql", "apt-get install"):
        assert package in error["message"]
    assert not target.exists(), "nothing may be created when a program is missing"


def test_status_and_down_of_a_directory_with_no_cluster(tmp_path: Path) -> None:
    done = run("status", "--dir", str(tmp_path))
    assert done.returncode == 1 and "no cluster in" in done.stderr and "cluster local up" in done.stderr
    done = run("down", "--dir", str(tmp_path))
    assert done.returncode == 0 and "nothing was running" in done.stdout


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_up_status_down(cluster_dir: Path) -> None:
    need_cluster()
    done = run("up", "--dir", str(cluster_dir), "--nodes", "2", "--json")
    try:
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        kinds = sorted(p["kind"] for p in doc["processes"])
        assert kinds == ["etcd"] * 3 + ["node"] * 2 + ["patroni"] * 3 + ["postgres"] * 3
        assert all(p["alive"] and start_time(p["pid"]) is not None for p in doc["processes"])
        roles = sorted(p["role"] for p in doc["processes"] if p["kind"] == "patroni")
        assert roles == ["leader", "replica", "sync_standby"]
        assert doc["leader"] and len(doc["sync_standby"]) == 1
        # Patroni 3.0.2 names one synchronous standby (no quorum commit): the sync standby itself
        assert doc["synchronous_standby_names"].strip('"') == doc["sync_standby"][0]
        assert doc["dsn"].count("127.0.0.1:") == 3 and "target_session_attrs=read-write" in doc["dsn"]
        assert (cluster_dir / "cluster.json").stat().st_mode & 0o077 == 0, "the state file holds passwords"
        assert doc["cluster_key"] == str(cluster_dir / "cluster.key") and doc["cluster_pub"] == str(
            cluster_dir / "cluster.pub")
        assert (cluster_dir / "cluster.key").stat().st_mode & 0o777 == 0o600
        public = json.loads((cluster_dir / "cluster.pub").read_text())
        assert "secret_key" not in public and "engine" in public.get("roles", [])
        for node in doc["nodes"]:  # every node bound with the cluster key, able to sequence
            shown = subprocess.run([KEYVAULT, "--store", node["store"], "authority", "show", "--json"],
                                   capture_output=True, text=True, timeout=120)
            shown_doc = json.loads(shown.stdout)
            assert shown_doc["can_sequence"] is True and shown_doc["cluster_key"]["file"] == doc["cluster_key"]
        for node in doc["nodes"]:
            assert _get(node["url"] + "/healthz") == 200
            assert _get(node["url"] + "/v1/stats", node["admin_token"]) == 200
            assert _get(node["url"] + "/v1/stats", "kvt_wrong") == 401
        again = run("up", "--dir", str(cluster_dir))
        assert again.returncode == 1 and "already running" in again.stderr
        status = json.loads(run("status", "--dir", str(cluster_dir), "--json").stdout)
        assert status["leader"] == doc["leader"] and status["running"]
        text = run("status", "--dir", str(cluster_dir)).stdout
        assert "leader" in text and "sync_standby" in text and "NOT RUNNING" not in text
        assert str(cluster_dir / "cluster.pub") in text
    finally:
        down = run("down", "--dir", str(cluster_dir), "--json")
    assert down.returncode == 0, down.stderr
    stopped = json.loads(down.stdout)["stopped"]
    # Patroni stops its own PostgreSQL; down stops a postmaster itself only when it outlived its Patroni
    assert {p["kind"] for p in stopped} >= {"node", "patroni", "etcd"} and len(stopped) >= 8
    state = json.loads((cluster_dir / "cluster.json").read_text())
    assert not any(alive(p) for p in state["processes"])
    assert all(start_time(p["pid"]) is None for p in doc["processes"])
    status = json.loads(run("status", "--dir", str(cluster_dir), "--json").stdout)
    assert not status["running"] and all(not p["alive"] for p in status["processes"])
    assert "nothing was running" in run("down", "--dir", str(cluster_dir)).stdout
    refused = run("up", "--dir", str(cluster_dir))
    assert refused.returncode == 1 and "not empty" in refused.stderr
