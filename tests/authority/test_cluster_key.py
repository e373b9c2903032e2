"""The cluster engine key recorded in a store's binding: checked before it is recorded, used by every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from cli_support import EXIT_ERROR, World, kv, ok, one_json
from keyvault import Identity
from keyvault.engine.authority.sequencer import origin_of

from .conftest import PgServer


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYVAULT_CLUSTER_KEY", raising=False)


def _secret(path: Path) -> str:
    return str(json.loads(path.read_text())["secret_key"])


def _register(dsn: str, key: Identity) -> None:
    """What a sequencer does first: the cluster's key, in keyvault_cluster."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO keyvault_cluster (one, name, public_key, origin) VALUES (true, %s, %s, %s)",
                     (key.name, key.public_key, origin_of(key.public_key)))


def test_cli_records_shows_changes_and_clears_the_cluster_key(world: World, tmp_path: Path, pg_server: PgServer,
                                                              authority_dsn: str) -> None:
    store = world.platform
    key = Identity.generate("cluster engine")
    keyfile = key.save(tmp_path / "cluster.key")
    done = one_json(ok("--store", store, "authority", "set", authority_dsn, "--cluster-key", keyfile, "--json"))
    assert done["cluster_key"] == str(keyfile)
    shown = one_json(ok("--store", store, "authority", "show", "--json"))
    assert shown["can_sequence"] is True
    assert shown["cluster_key"] == {"file": str(keyfile), "from": "binding", "id": key.id,
                                    "origin": origin_of(key.public_key), "problem": None}
    text = ok("--store", store, "authority", "show").output
    assert origin_of(key.public_key) in text and "can sequence:  yes" in text
    assert _secret(keyfile) not in text + json.dumps(shown) + json.dumps(done)
    cleared = one_json(ok("--store", store, "authority", "cluster-key", "--clear", "--json"))
    assert cleared["cluster_key"] is None and cleared["can_sequence"] is False
    assert "does not sequence" in ok("--store", store, "authority", "show").output
    again = one_json(ok("--store", store, "authority", "cluster-key", keyfile, "--json"))
    assert again["cluster_key"]["id"] == key.id and again["can_sequence"] is True
    refused = kv("--store", store, "authority", "cluster-key")
    assert refused.exit_code == EXIT_ERROR and "--clear" in refused.output
    override = Identity.generate("another").save(tmp_path / "other.key")
    named = one_json(ok("--store", store, "authority", "show", "--json", env={"KEYVAULT_CLUSTER_KEY": str(override)}))
    assert named["cluster_key"]["from"] == "KEYVAULT_CLUSTER_KEY" and named["cluster_key"]["file"] == str(override)
    ok("--store", store, "authority", "unset")
    assert one_json(ok("--store", store, "authority", "show", "--json")) == {"bound": False, "authority": None}
    ok("--store", store, "authority", "set", authority_dsn)  # binding again without the key: none recorded
    assert one_json(ok("--store", store, "authority", "show", "--json"))["cluster_key"] is None


def test_a_key_not_the_clusters_is_refused_and_nothing_recorded(world: World, tmp_path: Path, pg_server: PgServer,
                                                                authority_dsn: str) -> None:
    store = world.platform
    ok("--store", store, "authority", "set", authority_dsn)  # creates the schema
    cluster = Identity.generate("cluster engine")
    _register(authority_dsn, cluster)
    wrong = Identity.generate("cluster engine").save(tmp_path / "wrong.key")
    refused = kv("--store", store, "authority", "cluster-key", wrong)
    assert refused.exit_code == EXIT_ERROR and "not the cluster engine key" in refused.output
    assert origin_of(cluster.public_key) in refused.output and "nothing was recorded" in refused.output
    assert one_json(ok("--store", store, "authority", "show", "--json"))["cluster_key"] is None
    ok("--store", store, "authority", "unset")
    refused = kv("--store", store, "authority", "set", authority_dsn, "--cluster-key", wrong)
    assert refused.exit_code == EXIT_ERROR and "not the cluster engine key" in refused.output
    assert one_json(ok("--store", store, "authority", "show", "--json"))["bound"] is False  # not bound either
    right = cluster.save(tmp_path / "cluster.key")
    assert one_json(ok("--store", store, "authority", "set", authority_dsn, "--cluster-key", right,
                       "--json"))["cluster_key"] == str(right)


@pytest.mark.parametrize("damage", ["mode", "public", "missing", "garbage"])
def test_a_key_file_that_is_not_a_private_identity_is_refused(world: World, tmp_path: Path, pg_server: PgServer,
                                                              authority_dsn: str, damage: str) -> None:
    store = world.platform
    key = Identity.generate("cluster engine")
    keyfile = key.save(tmp_path / "cluster.key")
    if damage == "mode":
        keyfile.chmod(0o644)
    elif damage == "public":
        keyfile = key.public.save(tmp_path / "cluster.pub")
    elif damage == "missing":
        keyfile = tmp_path / "absent.key"
    else:
        keyfile.write_bytes(b"\x00not an identity")
    refused = kv("--store", store, "authority", "set", authority_dsn, "--cluster-key", keyfile)
    assert refused.exit_code == EXIT_ERROR and "nothing was recorded" in refused.output
    if damage == "mode":
        assert "chmod 600" in refused.output
    assert one_json(ok("--store", store, "authority", "show", "--json"))["bound"] is False
    ok("--store", store, "authority", "set", authority_dsn)
    refused = kv("--store", store, "authority", "cluster-key", keyfile)
    assert refused.exit_code == EXIT_ERROR
    assert one_json(ok("--store", store, "authority", "show", "--json"))["cluster_key"] is None


def test_a_recorded_key_that_went_bad_is_shown_and_the_node_still_serves(world: World, tmp_path: Path,
                                                                         pg_server: PgServer,
                                                                         authority_dsn: str) -> None:
    store = world.platform
    keyfile = Identity.generate("cluster engine").save(tmp_path / "cluster.key")
    ok("--store", store, "authority", "set", authority_dsn, "--cluster-key", keyfile)
    keyfile.chmod(0o640)
    shown = one_json(ok("--store", store, "authority", "show", "--json"))
    assert shown["can_sequence"] is False and "chmod 600" in shown["cluster_key"]["problem"]
    assert "can sequence:  no" in ok("--store", store, "authority", "show").output
    assert one_json(ok("--store", store, "redeem", world.keys[0], "--order", "o1", "--json"))["status"] == "accepted"


_FRESH = """
import sys, time
from keyvault import Vault
vault = Vault.open(sys.argv[1])  # no KEYVAULT_CLUSTER_KEY: the key comes from the store's binding
deadline = time.monotonic() + 60
while not (vault.engine.follower.sequencer and vault.engine.follower.sequencer.holding):
    assert time.monotonic() < deadline, "never became the sequencer"
    time.sleep(0.05)
vault.redeem(sys.argv[2], "fresh-1")
while vault.authority.check()["cluster_log"]["checkpoint"] != vault.authority.check()["cluster_log"]["size"]:
    assert time.monotonic() < deadline, "never signed a checkpoint of the log"
    time.sleep(0.1)
print(vault.authority.check()["cluster_log"]["origin"], flush=True)
vault.close()
"""


def test_a_fresh_process_uses_the_recorded_key_and_sequences(world: World, tmp_path: Path, pg_server: PgServer,
                                                            authority_dsn: str) -> None:
    store = world.platform
    key = Identity.generate("cluster engine")
    keyfile = key.save(tmp_path / "cluster.key")
    ok("--store", store, "authority", "set", authority_dsn, "--cluster-key", keyfile)
    env = {k: v for k, v in os.environ.items() if k != "KEYVAULT_CLUSTER_KEY"}
    env["KEYVAULT_AUTHORITY_FOLLOW"] = "1"
    run = subprocess.run([sys.executable, "-c", _FRESH, str(store), world.keys[1]], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=180)  # the installed keyvault, not ./keyvault
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == origin_of(key.public_key)
    with psycopg.connect(authority_dsn) as conn:
        registered = bytes(conn.execute("SELECT public_key FROM keyvault_cluster").fetchone()[0])
        signed = conn.execute("SELECT count(*) FROM keyvault_checkpoints").fetchone()[0]
    assert registered == key.public_key and signed >= 1
    doc = one_json(ok("--store", store, "authority", "check", "--json"))
    assert doc["cluster_log"]["problem"] is None and doc["cluster_log"]["origin"] == origin_of(key.public_key)
