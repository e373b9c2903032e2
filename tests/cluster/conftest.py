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

from keyvault.cli.cluster_local import LocalCluster

from .cluster_support import need_cluster


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


@pytest.fixture
def node_cluster(cluster_dir: Path) -> Iterator[LocalCluster]:
    """A running cluster with two keyvault nodes bound to it, stopped after the test."""
    need_cluster()
    local = LocalCluster(cluster_dir)
    try:
        local.up(nodes=2, node_workers=2)
        state = local.load()
        assert state is not None and state["authority_command"], "this keyvault has no `authority` command"
        yield local
    finally:
        local.down()
