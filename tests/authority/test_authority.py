"""The PostgreSQL authority: decisions shared by nodes (stores bound to one database), and the binding itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyvault import Identity, Status, Vault
from keyvault.errors import AuthorityError, ConflictError, NotFoundError, OutcomeUnknownError
from keyvault.engine.authority.schema import SCHEMA_VERSION

from conftest import Issued, eventually, issue
from .conftest import PgServer


def node(path: Path, supplier: Identity, batch: Issued, dsn: str | None) -> Vault:
    """A platform store that imported ``batch``, bound to ``dsn`` when given."""
    vault = Vault.init(path)
    vault.trust(supplier.public)
    vault.import_manifest(batch.manifest)
    if dsn is not None:
        vault.authority.set(dsn)
    return vault


@pytest.fixture
def batch(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    return issue(supplier_store, supplier, tmp_path / "files", count=100)


@pytest.fixture
def nodes(tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str) -> Iterator[tuple[Vault, Vault]]:
    a = node(tmp_path / "a", supplier, batch, authority_dsn)
    b = node(tmp_path / "b", supplier, batch, authority_dsn)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_redeem_on_one_node_is_decided_for_all(nodes: tuple[Vault, Vault], batch: Issued) -> None:
    a, b = nodes
    key = batch.keys[0]
    first = a.redeem(key, "order-1")
    assert first.status is Status.ACCEPTED
    again = b.redeem(key, "order-1")  # the retry lands on another node: the first answer again
    assert again.status is Status.ACCEPTED and again.redeemed_at == first.redeemed_at
    other = b.redeem(key, "order-2")
    assert other.status is Status.REDEEMED and other.order_id == "order-1"
    assert "order-1" in (other.message or "")
    assert a.verify(key).status is Status.REDEEMED  # the deciding node's cache holds it at once
    assert b.verify(key).status is Status.REDEEMED  # B learned it from the authority's answer
    c_key = batch.keys[1]
    assert b.verify(c_key).status is Status.VALID
    assert a.redeem(c_key, "order-3").status is Status.ACCEPTED
    eventually(lambda: b.verify(c_key).status is Status.REDEEMED, "B's follower never learned A's redeem", 15)
    assert b.redeem_many([(c_key, "order-3"), (c_key, "order-4")]) == [
        b.verify(c_key)._replace(status=Status.ACCEPTED, message=None), b.verify(c_key)]


def test_batches_answer_each_key_in_order(nodes: tuple[Vault, Vault], batch: Issued) -> None:
    a, b = nodes
    keys = batch.keys[:20]
    out = a.redeem_many([(k, f"o{i}") for i, k in enumerate(keys)] + [("not a key", "x"), (keys[0], "o0"),
                                                                      (keys[1], "zzz")])
    assert [r.status for r in out[:20]] == [Status.ACCEPTED] * 20
    assert out[20].status is Status.MALFORMED
    assert out[21].status is Status.ACCEPTED and out[21].redeemed_at == out[0].redeemed_at
    assert out[22].status is Status.REDEEMED and out[22].order_id == "o1"
    back = b.redeem_many([(k, f"o{i}") for i, k in enumerate(keys)])
    assert [(r.status, r.redeemed_at) for r in back] == [(Status.ACCEPTED, r.redeemed_at) for r in out[:20]]


def test_void_and_blacklist_on_one_node_refuse_on_the_other_at_once(nodes: tuple[Vault, Vault],
                                                                     batch: Issued) -> None:
    a, b = nodes
    k0, k1, k2 = batch.keys[:3]
    assert a.void(k0, "refund").status is Status.VOID
    r = b.redeem(k0, "o")
    assert r.status is Status.VOID and r.reason == "refund"
    assert b.void(k0, "again").status is Status.VOID  # voiding twice: the first void stands
    a.blacklist.add("key", k1, "stolen")
    r = b.redeem(k1, "o")
    assert r.status is Status.BLACKLISTED and r.reason == "stolen" and r.level == "key"
    a.blacklist.add("batch", batch.batch.id, "recall")
    r = b.redeem(k2, "o")
    assert r.status is Status.BLACKLISTED and r.level == "batch"
    a.blacklist.lift("batch", batch.batch.id, "recall over")
    assert b.redeem(k2, "o").status is Status.ACCEPTED
    a.blacklist.add("supplier", batch.batch.supplier, "fraud")
    assert b.redeem(batch.keys[3], "o").status is Status.BLACKLISTED
    with pytest.raises(NotFoundError):
        b.blacklist.lift("batch", batch.batch.id, "not there")
    b.blacklist.lift("supplier", batch.batch.supplier, "cleared")  # lifted on the node that never cached it
    assert a.redeem(batch.keys[3], "o").status is Status.ACCEPTED
    assert a.void(k2, "late").status is Status.REDEEMED  # redeemed on B: a void is refused
    eventually(lambda: b.verify(k1).status is Status.BLACKLISTED, "B never learned A's blacklist entry", 15)
    a.blacklist.lift("key", k1, "found")
    eventually(lambda: b.verify(k1).status is Status.VALID, "B never learned the lift", 15)
    a.void(batch.keys[10], "recall")
    eventually(lambda: b.verify(batch.keys[10]).status is Status.VOID, "B never learned A's void", 15)


def test_a_cut_commit_is_never_accepted(nodes: tuple[Vault, Vault], batch: Issued, pg_server: PgServer) -> None:
    a, b = nodes
    authority = a.engine.authority

    def cut(conn: object) -> None:
        pid = conn.info.backend_pid  # type: ignore[attr-defined]
        pg_server.sql(f"SELECT pg_terminate_backend({pid})")

    authority.before_commit = cut  # type: ignore[attr-defined]
    with pytest.raises(OutcomeUnknownError, match="retry with the same order id"):
        a.redeem_many([(batch.keys[0], "o1"), (batch.keys[1], "o2")])
    authority.before_commit = None  # type: ignore[attr-defined]
    # The retry with the same order ids has one answer, whatever the cut commit did.
    again = b.redeem_many([(batch.keys[0], "o1"), (batch.keys[1], "o2")])
    assert [r.status for r in again] == [Status.ACCEPTED, Status.ACCEPTED]
    assert a.redeem(batch.keys[0], "o1").status is Status.ACCEPTED  # a reconnects by itself


def test_the_service_answers_an_unknown_outcome_as_503() -> None:
    from keyvault.service.problems import from_error

    problem = from_error(OutcomeUnknownError("the outcome is unknown; retry with the same order id"))
    assert problem.status == 503 and "retry with the same order id" in problem.detail


def test_binding_refuses_a_store_with_decisions_of_its_own_unless_migrated(
        tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str, pg_server: PgServer) -> None:
    with node(tmp_path / "old", supplier, batch, None) as old:
        assert old.redeem(batch.keys[0], "o1").status is Status.ACCEPTED
        assert old.void(batch.keys[1], "refund").status is Status.VOID
        old.blacklist.add("key", batch.keys[2], "stolen")
        with pytest.raises(ConflictError, match="--migrate"):
            old.authority.set(authority_dsn)
        assert old.authority.show().to_dict() == {"bound": False, "authority": None}
        assert pg_server.sql("SELECT count(*) FROM keyvault_keys", authority_dsn.split("dbname=")[1].split()[0]) \
            == [(0,)]
        done = old.authority.set(authority_dsn, migrate=True)
        assert done["moved_keys"] == 2 and done["moved_blacklist"] == 1
    with node(tmp_path / "new", supplier, batch, authority_dsn) as new:
        assert new.redeem(batch.keys[0], "o1").status is Status.ACCEPTED
        assert new.redeem(batch.keys[0], "o2").status is Status.REDEEMED
        assert new.redeem(batch.keys[1], "o").status is Status.VOID
        assert new.redeem(batch.keys[2], "o").status is Status.BLACKLISTED
        new.authority.catch_up()
        assert new.verify(batch.keys[2]).status is Status.BLACKLISTED
        assert new.verify(batch.keys[0]).status is Status.REDEEMED
    # A store whose decisions contradict the authority's moves nothing.
    with node(tmp_path / "fork", supplier, batch, None) as fork:
        assert fork.redeem(batch.keys[0], "someone-else").status is Status.ACCEPTED
        with pytest.raises(ConflictError, match="nothing was moved"):
            fork.authority.set(authority_dsn, migrate=True)
        assert fork.authority.show()["bound"] is False


def test_a_bound_store_reopens_bound_and_unset_unbinds(tmp_path: Path, supplier: Identity, batch: Issued,
                                                        authority_dsn: str) -> None:
    path = tmp_path / "n"
    node(path, supplier, batch, authority_dsn).close()
    with Vault.open(path) as vault:
        assert vault.authority.show()["bound"] is True
        doc = vault.authority.check()
        assert doc["reachable"] and doc["schema_version"] == SCHEMA_VERSION and doc["in_recovery"] is False
        assert vault.redeem(batch.keys[0], "o").status is Status.ACCEPTED
        eventually(lambda: vault.authority.check()["cache_lag"] == 0, "the follower never caught up", 15)
        vault.authority.unset()
        assert vault.authority.show()["bound"] is False
        with pytest.raises(NotFoundError):
            vault.authority.check()
    with Vault.open(path) as vault:
        assert vault.engine.authority.remote is False
        assert vault.redeem(batch.keys[0], "o").status is Status.ACCEPTED  # the cache remembers the redeem


def test_an_unreachable_authority_is_a_clear_error_and_the_password_never_shows(
        tmp_path: Path, supplier: Identity, batch: Issued, pg_server: PgServer) -> None:
    dead = "host=127.0.0.1 port=1 dbname=x user=u password=hunter2-secret connect_timeout=2"
    with node(tmp_path / "n", supplier, batch, None) as vault:
        with pytest.raises(AuthorityError) as caught:
            vault.authority.set(dead)
        assert "hunter2" not in str(caught.value) and "cannot reach" in str(caught.value)
        assert vault.authority.show()["bound"] is False
    url = f"postgresql://postgres:hunter2-secret@/{'postgres'}?host={pg_server.base}&port={pg_server.port}"
    with node(tmp_path / "m", supplier, batch, url) as vault:
        shown = vault.authority.show()["authority"]
        assert "hunter2" not in shown and "***" in shown
        assert "hunter2" not in repr(vault.engine.authority)
        assert "hunter2" not in str(vault.authority.check())


def test_a_canceled_wait_for_the_synchronous_standby_is_never_accepted(
        nodes: tuple[Vault, Vault], batch: Issued, pg_server: PgServer) -> None:
    """PostgreSQL commits locally, then waits for a standby that never answers; canceling the wait makes it
    return with only a WARNING: the redeem may be lost in a failover, so it is not `accepted`."""
    import threading
    import time

    a, b = nodes
    pg_server.sql("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
    pg_server.sql("SELECT pg_reload_conf()")
    canceled = threading.Event()

    def cancel_the_wait() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not canceled.is_set():
            rows = pg_server.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            if rows:
                canceled.set()
            time.sleep(0.05)

    helper = threading.Thread(target=cancel_the_wait)
    try:
        time.sleep(0.3)  # the reload reaches every backend
        helper.start()
        with pytest.raises(OutcomeUnknownError, match="retry with the same order id"):
            a.redeem(batch.keys[5], "sync-1")
    finally:
        canceled.set()
        helper.join()
        pg_server.sql("ALTER SYSTEM RESET synchronous_standby_names")
        pg_server.sql("SELECT pg_reload_conf()")
    time.sleep(0.3)
    assert b.redeem(batch.keys[5], "sync-1").status is Status.ACCEPTED  # it was committed locally after all
    assert b.redeem(batch.keys[5], "sync-2").status is Status.REDEEMED


def test_a_manifest_imported_on_one_node_travels_to_the_others(
        tmp_path: Path, supplier: Identity, supplier_store: Vault, batch: Issued, authority_dsn: str,
        pg_server: PgServer) -> None:
    a = node(tmp_path / "a", supplier, batch, authority_dsn)
    b = node(tmp_path / "b", supplier, batch, authority_dsn)
    try:
        fresh = issue(supplier_store, supplier, tmp_path / "more", count=10, product="POINTS-50")
        a.import_manifest(fresh.manifest)
        eventually(lambda: b.verify(fresh.keys[0]).status is Status.VALID, "B never imported the manifest", 15)
        assert b.redeem(fresh.keys[1], "m-1").status is Status.ACCEPTED
        assert a.redeem(fresh.keys[1], "m-2").status is Status.REDEEMED
        assert b.authority.check()["manifests_not_imported"] == {}
        # A registry copy altered in the database is refused by every node that fetches it.
        dbname = authority_dsn.split("dbname=")[1].split()[0]
        late = issue(supplier_store, supplier, tmp_path / "late", count=5, product="POINTS-20")
        a.import_manifest(late.manifest)
        pg_server.sql("UPDATE keyvault_manifests SET body = overlay(body placing '\\x00'::bytea from 200 for 1) "
                      "WHERE change = (SELECT max(change) FROM keyvault_manifests)", dbname)
        fresh_node = node(tmp_path / "d", supplier, batch, authority_dsn)
        try:
            fresh_node.authority.catch_up()
            assert fresh_node.verify(fresh.keys[1]).status is Status.REDEEMED  # the sound one came, with its redeem
            assert fresh_node.verify(fresh.keys[2]).status is Status.VALID
            assert fresh_node.verify(late.keys[0]).status is Status.UNKNOWN
            why = fresh_node.authority.check()["manifests_not_imported"]
            assert any("altered" in text for text in why.values())
        finally:
            fresh_node.close()
    finally:
        a.close()
        b.close()


def _python(code: str, cwd: Path) -> str:
    """Run ``code`` in a new interpreter (outside the source tree, so the installed keyvault is imported)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_psycopg_is_imported_only_by_a_bound_store(tmp_path: Path, supplier: Identity, batch: Issued,
                                                     authority_dsn: str) -> None:
    node(tmp_path / "free", supplier, batch, None).close()
    node(tmp_path / "bound", supplier, batch, authority_dsn).close()
    probe = ("import sys; from keyvault import Vault; v = Vault.open({!r}); v.verify('x'); "
             "print('psycopg' in sys.modules); v.close()")
    assert _python(probe.format(str(tmp_path / "free")), tmp_path) == "False"
    assert _python(probe.format(str(tmp_path / "bound")), tmp_path) == "True"
    # Without psycopg, opening a bound store says what to do; opening it detached still works.
    missing = ("import sys; sys.modules['psycopg'] = None; from keyvault import Vault, AuthorityError\n"
               "try:\n    Vault.open({path!r})\nexcept AuthorityError as exc:\n    print(exc)\n"
               "v = Vault.open({path!r}, authority=False); print(v.authority.show()['bound']); v.close()")
    out = _python(missing.format(path=str(tmp_path / "bound")), tmp_path)
    assert "pip install 'psycopg[binary]'" in out and out.endswith("True")


def test_tokens_are_every_nodes(nodes: tuple[Vault, Vault]) -> None:
    a, b = nodes
    token = a.tokens.create("shop", "redeem")
    assert a.authorize(token) is not None
    eventually(lambda: b.authorize(token) is not None, "B never learned the token", 15)
    with pytest.raises(ConflictError):
        b.tokens.create("shop", "verify")  # the name is taken on the other node
    b.tokens.revoke("shop")
    assert b.authorize(token) is None
    eventually(lambda: a.authorize(token) is None, "A never learned the revocation", 15)
    with pytest.raises(NotFoundError):
        a.tokens.revoke("shop")


def test_trust_pins_are_every_nodes(tmp_path: Path, supplier: Identity, supplier_store: Vault, batch: Issued,
                                    authority_dsn: str) -> None:
    a = node(tmp_path / "a", supplier, batch, authority_dsn)  # pins the supplier: the authority now does too
    bare = Vault.init(tmp_path / "b")
    bare.authority.set(authority_dsn)
    other = Identity.generate("Other Supplier")
    try:
        assert [e["fingerprint"] for e in bare.trust.list()] == [supplier.public.fingerprint]
        a.trust.add(other.public)
        eventually(lambda: len(bare.trust.list()) == 2, "B never pinned the new identity", 15)
        fresh = issue(supplier_store, supplier, tmp_path / "x", count=5, product="P-5")
        a.import_manifest(fresh.manifest)
        eventually(lambda: bare.verify(fresh.keys[0]).status is Status.VALID, "B never imported the manifest", 15)
        bare.trust.remove(other.public)
        eventually(lambda: len(a.trust.list()) == 1, "A never unpinned it", 15)
    finally:
        a.close()
        bare.close()


def test_a_retry_after_the_window_closed_is_answered_as_the_first_time(
        tmp_path: Path, supplier: Identity, supplier_store: Vault, authority_dsn: str) -> None:
    import time

    from keyvault.clock import now_ms

    short = issue(supplier_store, supplier, tmp_path / "short", count=3, valid_until=now_ms() + 1500)
    os_env = __import__("os").environ
    os_env["KEYVAULT_AUTHORITY_FOLLOW"] = "0"  # B must not learn A's redeem before the window closes
    try:
        a = node(tmp_path / "a", supplier, short, authority_dsn)
        b = node(tmp_path / "b", supplier, short, authority_dsn)
    finally:
        del os_env["KEYVAULT_AUTHORITY_FOLLOW"]
    try:
        first = a.redeem(short.keys[0], "late-1")
        assert first.status is Status.ACCEPTED
        time.sleep(max(0, (short.batch.valid_until or 0) - now_ms()) / 1000 + 0.1)
        assert b.verify(short.keys[0]).status is Status.EXPIRED  # B's cache has not heard of the redeem
        again = b.redeem(short.keys[0], "late-1")
        assert again.status is Status.ACCEPTED and again.redeemed_at == first.redeemed_at
        assert b.redeem(short.keys[0], "late-2").status is Status.REDEEMED
        assert b.redeem(short.keys[1], "late-3").status is Status.EXPIRED
    finally:
        a.close()
        b.close()
