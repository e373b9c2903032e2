"""``keyvault authority set|show|check|unset`` against a throwaway PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from keyvault.engine.authority.schema import SCHEMA_VERSION

from cli_support import EXIT_ERROR, World, kv, ok, one_json

from .conftest import PgServer


def test_set_show_check_unset(world: World, pg_server: PgServer, authority_dsn: str) -> None:
    store = world.platform
    secret_dsn = authority_dsn + " password=hunter2-not-shown"
    assert one_json(ok("--store", store, "authority", "show", "--json")) == {"bound": False, "authority": None}
    done = one_json(ok("--store", store, "authority", "set", secret_dsn, "--json"))
    assert done["moved_keys"] == 0 and "hunter2" not in json.dumps(done)
    shown = ok("--store", store, "authority", "show")
    assert "hunter2" not in shown.output and "password=***" in shown.output
    doc = one_json(ok("--store", store, "authority", "check", "--json"))
    assert doc["reachable"] is True and doc["schema_version"] == SCHEMA_VERSION and doc["cache_lag"] == 0
    assert "hunter2" not in json.dumps(doc)
    text = ok("--store", store, "authority", "check").output
    assert "the primary" in text and "hunter2" not in text
    redeemed = one_json(ok("--store", store, "redeem", world.keys[0], "--order", "o1", "--json"))
    assert redeemed["status"] == "accepted"
    refused = kv("--store", store, "authority", "set", secret_dsn)
    assert refused.exit_code == EXIT_ERROR and "already" in refused.output and "hunter2" not in refused.output
    ok("--store", store, "authority", "unset")
    assert one_json(ok("--store", store, "authority", "show", "--json"))["bound"] is False
    refused = kv("--store", store, "authority", "set", authority_dsn)  # it now holds a redeem of its own
    assert refused.exit_code == EXIT_ERROR and "--migrate" in refused.output
    moved = one_json(ok("--store", store, "authority", "set", authority_dsn, "--migrate", "--json"))
    assert moved["moved_keys"] == 1  # the redeem it decided while bound was in the authority already: counted


def test_show_and_unset_work_while_the_authority_is_down(world: World, tmp_path: Path, pg_server: PgServer,
                                                          authority_dsn: str) -> None:
    store = world.platform
    ok("--store", store, "authority", "set", authority_dsn)
    dbname = authority_dsn.split("dbname=")[1].split()[0]
    pg_server.sql(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
    try:
        down = kv("--store", store, "redeem", world.keys[0], "--order", "o1", "--json")
        assert down.exit_code == EXIT_ERROR and "AuthorityError" in down.output
        assert "cannot reach" in down.output
        assert one_json(ok("--store", store, "authority", "show", "--json"))["bound"] is True
        ok("--store", store, "authority", "unset")
    finally:
        pg_server.sql(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
    assert one_json(ok("--store", store, "redeem", world.keys[0], "--order", "o1", "--json"))["status"] == "accepted"
