"""The local cluster's fixtures: a fresh three-member etcd + Patroni/PostgreSQL cluster per test.

Run by `make test-cluster` (which sets KEYVAULT_CLUSTER_TESTS=1 and installs what is missing); in the
ordinary run these tests are skipped with that reason, as they take minutes. Without etcd, Patroni,
PostgreSQL or psycopg they are skipped naming what to install, unless KEYVAULT_REQUIRE_CLUSTER=1
(CI), which fails them instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyvault.cli.cluster_local import ClusterError, LocalCluster, find_programs

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


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """A directory the postgres user can enter (pytest's own tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="kv-cluster-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    os.chmod(root, 0o711)
    yield root / "cluster"
    import shutil

    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(cluster_dir: Path) -> Iterator[LocalCluster]:
    """A running cluster with no keyvault node (the bare workload), stopped after the test."""
    need_cluster()
    local = LocalCluster(cluster_dir)
    try:
        local.up(nodes=0)
        yield local
    finally:
        local.down()
