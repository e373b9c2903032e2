"""Checkout across nodes: holds and count-limited keys decided by the PostgreSQL authority, trying to break each
promise with two or three nodes (stores bound to one database) racing in threads and processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyvault import Identity, Status, Vault

from conftest import Issued, issue, read_export
from .test_authority import node


@pytest.fixture
def batch(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    return issue(supplier_store, supplier, tmp_path / "files", count=60)


@pytest.fixture
def limited(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    """20 count-limited keys (5 uses each)."""
    out = tmp_path / "limited"
    out.mkdir()
    info = supplier_store.issue_batch(supplier, "PASS-5", 20, keys_out=out / "keys.csv", manifest_out=out / "b.kvm",
                                      uses=5)
    keys, serials = read_export(out / "keys.csv")
    return Issued(supplier, info, keys, serials, out / "keys.csv", out / "b.kvm")


@pytest.fixture
def nodes(tmp_path: Path, supplier: Identity, batch: Issued, limited: Issued, authority_dsn: str
          ) -> Iterator[tuple[Vault, Vault, Vault]]:
    made = []
    try:
        for name in "abc":
            vault = node(tmp_path / name, supplier, batch, None)
            vault.import_manifest(limited.manifest)
            vault.authority.set(authority_dsn)
            made.append(vault)
        yield tuple(made)  # type: ignore[misc]
    finally:
        for vault in made:
            vault.close()


def test_hold_on_one_node_confirm_on_another(nodes: tuple[Vault, Vault, Vault], batch: Issued) -> None:
    a, b, c = nodes
    key = batch.keys[0]
    held = a.hold(key, "order-1", 900)
    assert held.status is Status.HELD and held.order_id == "order-1" and held.expires_at
    assert b.hold(key, "order-1", 60) == held  # a retry on another node: the same answer, the same expiry
    other = c.hold(key, "order-2", 900)
    assert other.status is Status.HELD and other.order_id is None
    assert c.redeem(key, "order-2").status is Status.HELD
    (done,) = b.confirm("order-1")
    assert done.status is Status.ACCEPTED and done.order_id == "order-1"
    assert c.confirm("order-1") == [done]
    assert c.redeem(key, "order-2").status is Status.REDEEMED
    assert a.redeem(key, "order-1").status is Status.ACCEPTED
    report = c.order("order-1")
    assert [k["state"] for k in report["keys"]] == ["redeemed"]
