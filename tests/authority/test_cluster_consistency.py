"""The local cluster demo's check that a newer cluster checkpoint extends an older one, as anyone holding the
cluster's public key does it: it passes on the log as written and fails on every alteration tried."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from keyvault import Identity, Vault
from keyvault.cli.cluster_demo import consistent
from keyvault.engine.authority.sequencer import Sequencer

from conftest import Issued, eventually, issue
from .test_authority import node


@pytest.fixture
def batch(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    return issue(supplier_store, supplier, tmp_path / "files", count=20)


def test_the_consistency_check_passes_on_the_log_and_fails_on_alterations(
        tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_AUTHORITY_FOLLOW", "0")  # the test drives the sequencer itself
    vault = node(tmp_path / "a", supplier, batch, authority_dsn)
    key = Identity.generate("cluster engine")
    public = key.public.save(tmp_path / "cluster.pub")
    seq = Sequencer(vault.engine.authority, key)
    checkpoints = []
    try:
        assert seq.acquire()
        for first, last in ((0, 5), (5, 12)):
            for i in range(first, last):
                vault.redeem(batch.keys[i], f"o{i}")
            eventually(lambda: seq.step() >= 0 and seq.tree.size == last, "the sequencer did not log the redeems", 30)
            note = seq.maybe_sign(force=True)
            assert note is not None
            checkpoints.append((last, note))
    finally:
        seq.release()
        vault.close()
    old, new = checkpoints
    assert consistent(authority_dsn, public, old, new) is None
    stranger = Identity.generate("cluster engine").public.save(tmp_path / "stranger.pub")
    assert consistent(authority_dsn, stranger, old, new) is not None  # not signed by the key given
    assert consistent(authority_dsn, public, old, (new[0], new[1].replace(b"\n", b"\n ", 1))) is not None
    with psycopg.connect(authority_dsn, autocommit=True) as conn:
        leaf = bytes(conn.execute("SELECT leaf FROM keyvault_log WHERE idx = 2").fetchone()[0])
        conn.execute("UPDATE keyvault_log SET leaf = %s WHERE idx = 2", (leaf[:-1] + bytes([leaf[-1] ^ 1]),))
        assert "not the root" in str(consistent(authority_dsn, public, old, new))
        conn.execute("UPDATE keyvault_log SET leaf = %s WHERE idx = 2", (leaf,))
        assert consistent(authority_dsn, public, old, new) is None
        conn.execute("DELETE FROM keyvault_log WHERE idx = 7")
        assert "without gap" in str(consistent(authority_dsn, public, old, new))
