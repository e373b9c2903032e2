"""Checkout across nodes: holds and count-limited keys decided by the PostgreSQL authority, trying to break each
promise with two or three nodes (stores bound to one database) racing in threads and processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import test_checkout as single
from keyvault import Identity, Status, Vault

from conftest import Issued, issue, read_export
from .test_authority import node


# The single store's checkout tests, run as they are against a store bound to the authority (``platform`` below):
# the same answers, bound or not. Left out: those that move the store's clock (holds end by PostgreSQL's clock
# here: the expiry tests below wait instead), damage the store's own checkout records (a bound node's are a
# cache, the authority decides), count the store's commits, or read a key's own event log (a bound node's log
# records its redeems; the cluster log records the checkout events).
SHARED = ["test_redeem_by_the_holding_order_confirms_it", "test_release_frees_the_key",
          "test_void_and_blacklist_during_a_hold_refuse_confirm", "test_bad_input_changes_nothing",
          "test_count_limited_redeem_many_in_one_batch", "test_count_limited_keys_survive_manifest_import_and_old_"
          "manifests_mean_one", "test_async_vault_checkout", "test_twenty_processes_race_for_one_held_key",
          "test_twenty_processes_race_for_five_uses", "test_void_and_blacklist_race_holds_and_confirms",
          "test_order_lookup_names_every_redeem"]
globals().update({name: getattr(single, name) for name in SHARED})
limited = single.limited


@pytest.fixture
def platform(tmp_path: Path, supplier: Identity, authority_dsn: str) -> Iterator[Vault]:
    """The single store's tests' platform, bound to the authority before it imports anything."""
    with Vault.init(tmp_path / "platform-store") as vault:
        vault.trust(supplier.public)
        vault.authority.set(authority_dsn)
        yield vault


@pytest.fixture
def batch(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    return issue(supplier_store, supplier, tmp_path / "files", count=60)


@pytest.fixture
def passes(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    """20 count-limited keys (5 uses each), for the nodes."""
    out = tmp_path / "passes"
    out.mkdir()
    info = supplier_store.issue_batch(supplier, "PASS-5", 20, keys_out=out / "keys.csv", manifest_out=out / "b.kvm",
                                      uses=5)
    keys, serials = read_export(out / "keys.csv")
    return Issued(supplier, info, keys, serials, out / "keys.csv", out / "b.kvm")


@pytest.fixture
def nodes(tmp_path: Path, supplier: Identity, batch: Issued, passes: Issued, authority_dsn: str
          ) -> Iterator[tuple[Vault, Vault, Vault]]:
    made = []
    try:
        for name in "abc":
            vault = node(tmp_path / name, supplier, batch, None)
            vault.import_manifest(passes.manifest)
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
