"""When the cluster tests run: with `make test-cluster`, and only where etcd, Patroni, PostgreSQL and
psycopg are installed (KEYVAULT_REQUIRE_CLUSTER=1 turns their absence into a failure)."""

from __future__ import annotations

import os

import pytest

from keyvault.cli.cluster_local import ClusterError, find_programs

# Read at import: the suite's autouse fixture clears every KEYVAULT_* variable before each test.
RUN = os.environ.get("KEYVAULT_CLUSTER_TESTS", "").strip() not in ("", "0")
REQUIRE = os.environ.get("KEYVAULT_REQUIRE_CLUSTER", "").strip() not in ("", "0")


def _missing() -> str | None:
    try:
        find_programs()
    except ClusterError as exc:
        return str(exc)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


def need_cluster() -> None:
    """Skip (or fail, under KEYVAULT_REQUIRE_CLUSTER=1) when the cluster cannot run here."""
    if not RUN and not REQUIRE:
        pytest.skip("the cluster tests run with `make test-cluster` (KEYVAULT_CLUSTER_TESTS=1): minutes each")
    missing = _missing()
    if missing:
        if REQUIRE:
            pytest.fail(f"KEYVAULT_REQUIRE_CLUSTER=1 and {missing}")
        pytest.skip(missing)
