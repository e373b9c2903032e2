"""Checkout across nodes: holds and count-limited keys decided by the PostgreSQL authority, trying to break each
promise with two or three nodes (stores bound to one database) racing in threads and processes."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

import test_checkout as single
from keyvault import Identity, NotFoundError, Status, Vault
from keyvault.engine.authority.postgres import Checkout
from keyvault.errors import AuthorityError, OutcomeUnknownError
from keyvault.formats.keyformat import parse_serial as _parse_serial

from conftest import Issued, eventually, issue, read_export
from .conftest import PgServer
from .test_authority import node


# The single store's checkout tests, run as they are against a store bound to the authority (``platform`` below):
# the same answers, bound or not. Left out: those that move the store's clock (holds end by PostgreSQL's clock
# here: the expiry tests below wait instead), damage the store's own checkout records (a bound node's are a
# cache, the authority decides), count the store's commits, or read a key's own event log (a bound node's log
# records its redeems; the cluster log records the checkout events). The race of void, blacklist and confirm is
# run across nodes below (test_confirm_against_void_and_blacklist_one_wins).
SHARED = ["test_redeem_by_the_holding_order_confirms_it", "test_release_frees_the_key",
          "test_void_and_blacklist_during_a_hold_refuse_confirm", "test_bad_input_changes_nothing",
          "test_count_limited_redeem_many_in_one_batch", "test_count_limited_keys_survive_manifest_import_and_old_"
          "manifests_mean_one", "test_async_vault_checkout", "test_twenty_processes_race_for_one_held_key",
          "test_twenty_processes_race_for_five_uses", "test_order_lookup_names_every_redeem"]
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


# -- races between nodes ---------------------------------------------------------------------------------


def _race(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls at once, one thread each; their answers (or the exception each raised), in order."""
    barrier = threading.Barrier(len(calls))
    out: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def _rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_hold_against_hold_across_nodes_one_order_wins(nodes: tuple[Vault, Vault, Vault], batch: Issued) -> None:
    for round_ in range(4):
        key = batch.keys[10 + round_]
        answers = _race([lambda n=n, o=o: n.hold(key, f"r{round_}-{o}", 900)  # type: ignore[misc]
                         for o, n in enumerate(nodes * 3)])
        assert not [a for a in answers if isinstance(a, Exception)], answers
        winners = [a for a in answers if a.order_id is not None]  # type: ignore[union-attr]
        assert len(winners) == 1 and winners[0].status is Status.HELD, answers  # type: ignore[union-attr]
        assert all(a.status is Status.HELD and a.order_id is None for a in answers if a is not winners[0])  # type: ignore[union-attr]
        order = winners[0].order_id  # type: ignore[union-attr]
        for n in nodes:  # a retry on any node: the same answer, the same expiry
            assert n.hold(key, order, 60) == winners[0]
            eventually(lambda n=n: n.verify(key).status is Status.HELD, "a node's cache never saw the hold", 15)


def test_confirm_against_expiry_an_ended_hold_never_confirms(nodes: tuple[Vault, Vault, Vault],
                                                             batch: Issued) -> None:
    a, b, c = nodes
    key = batch.keys[20]
    held = a.hold(key, "slow", 1)
    time.sleep(1.2)  # the hold ends by PostgreSQL's clock: no sweeper, the next decision judges it
    (late,) = b.confirm("slow")
    assert late.status is Status.EXPIRED_HOLD and late.expires_at == held.expires_at
    assert c.confirm("slow") == [late]
    assert c.order("slow")["keys"][0]["state"] == "expired"
    assert c.hold(key, "fast", 900).holds_for("fast")
    assert a.confirm("fast")[0].status is Status.ACCEPTED
    assert b.confirm("slow") == [late]
    # At the boundary: confirms on B race holds of other orders on C as a 1 s hold made on A ends. Never both;
    # a confirm accepted was decided before the hold's end (both times are PostgreSQL's).
    both = 0
    for round_ in range(6):
        key = batch.keys[21 + round_]
        held = a.hold(key, f"edge-{round_}", 1)
        time.sleep(0.85 + 0.05 * round_)
        confirmed, other = _race([lambda: b.confirm(f"edge-{round_}")[0],
                                  lambda: c.hold(key, f"thief-{round_}", 900)])
        assert not isinstance(confirmed, Exception) and not isinstance(other, Exception)
        took = other.holds_for(f"thief-{round_}")  # type: ignore[union-attr]
        if confirmed.status is Status.ACCEPTED:  # type: ignore[union-attr]
            assert not took and confirmed.redeemed_at < held.expires_at  # type: ignore[union-attr]
        else:
            assert confirmed.status is Status.EXPIRED_HOLD  # type: ignore[union-attr]
        both += took and confirmed.status is Status.ACCEPTED  # type: ignore[union-attr]
    assert both == 0


def test_confirm_against_void_and_blacklist_one_wins(nodes: tuple[Vault, Vault, Vault], batch: Issued) -> None:
    a, b, c = nodes
    for round_ in range(6):
        key = batch.keys[30 + round_]
        assert a.hold(key, f"v{round_}", 900).holds_for(f"v{round_}")
        confirmed, voided, _ = _race([lambda: b.confirm(f"v{round_}")[0], lambda: c.void(key, "refund"),
                                      lambda: a.blacklist.add("key", key, "fraud")])
        assert not isinstance(confirmed, Exception) and not isinstance(voided, Exception)
        if voided.status is Status.VOID:  # type: ignore[union-attr]  # the void won: nothing confirmed
            assert confirmed.status in (Status.VOID, Status.BLACKLISTED)  # type: ignore[union-attr]
        else:  # the confirm won: the void is refused as redeemed
            assert voided.status is Status.REDEEMED and confirmed.status is Status.ACCEPTED  # type: ignore[union-attr]
        a.blacklist.lift("key", key, "test over")
        final = a.redeem(key, f"v{round_}")  # the same answer again, on a third node
        assert final.status is (Status.ACCEPTED if voided.status is Status.REDEEMED else Status.VOID)  # type: ignore[union-attr]
        eventually(lambda: a.verify(key).status is final.status if final.status is Status.VOID
                   else a.verify(key).status is Status.REDEEMED, "A's cache never learned the outcome", 15)


def test_release_against_confirm_one_answer(nodes: tuple[Vault, Vault, Vault], batch: Issued) -> None:
    a, b, c = nodes
    for round_ in range(6):
        key = batch.keys[40 + round_]
        a.hold(key, f"rc{round_}", 900)
        released, confirmed = _race([lambda: b.release(f"rc{round_}")[0], lambda: c.confirm(f"rc{round_}")[0]])
        assert not isinstance(released, Exception) and not isinstance(confirmed, Exception)
        # Whichever came first, both answer what it did: released (the key free again), or accepted (sold).
        assert released.status is confirmed.status  # type: ignore[union-attr]
        assert confirmed.status in (Status.RELEASED, Status.ACCEPTED)  # type: ignore[union-attr]
        expected = Status.VALID if confirmed.status is Status.RELEASED else Status.REDEEMED  # type: ignore[union-attr]
        eventually(lambda: a.verify(key).status is expected, "A's cache disagrees with the authority", 15)
        assert a.confirm(f"rc{round_}") == [confirmed]


def test_five_uses_twelve_orders_racing_on_three_nodes(nodes: tuple[Vault, Vault, Vault], passes: Issued) -> None:
    key = passes.keys[0]
    calls = [lambda i=i: nodes[i % 3].redeem(key, f"buyer-{i}") for i in range(12)]
    first = _race(calls)
    again = _race(calls)  # every order retried, on the same node, racing the others' retries
    assert not [a for a in first + again if isinstance(a, Exception)], first + again
    accepted = [a for a in first if a.status is Status.ACCEPTED]  # type: ignore[union-attr]
    assert len(accepted) == 5 and sorted(a.uses_left for a in accepted) == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    assert len({a.order_id for a in accepted}) == 5  # type: ignore[union-attr]
    assert all(a.status is Status.EXHAUSTED for a in first if a.status is not Status.ACCEPTED)  # type: ignore[union-attr]
    assert again == first  # a retry answers the same, uses left and time included
    on_other = nodes[1].redeem(key, accepted[0].order_id)  # type: ignore[union-attr, arg-type]
    assert on_other == accepted[0]  # once per (key, order), on any node
    for n in nodes:
        eventually(lambda n=n: n.verify(key).status is Status.EXHAUSTED, "a node never learned the last use", 15)
    report = nodes[2].order(accepted[1].order_id)  # type: ignore[union-attr, arg-type]
    assert report["keys"][0]["state"] == "redeemed" and report["keys"][0]["uses_left"] == accepted[1].uses_left  # type: ignore[union-attr]


def test_a_count_limited_key_held_on_one_node_is_held_on_another(nodes: tuple[Vault, Vault, Vault],
                                                                   passes: Issued) -> None:
    a, b, c = nodes
    key = passes.keys[1]
    for i in range(4):
        assert a.redeem(key, f"u{i}").status is Status.ACCEPTED
    assert b.hold(key, "h", 900).holds_for("h")
    refused = c.redeem(key, "late")
    assert refused.status is Status.HELD and refused.uses_left == 1
    eventually(lambda: a.verify(key).status is Status.HELD and a.verify(key).uses_left == 1,
               "A's cache never saw the hold of the last use", 15)
    (done,) = a.confirm("h")
    assert done.status is Status.ACCEPTED and done.uses_left == 0
    assert c.redeem(key, "late").status is Status.EXHAUSTED
    assert {k["state"] for k in c.order("h")["keys"]} == {"redeemed"}
    for n in nodes:
        eventually(lambda n=n: n.check()["ok"], "a node's store check failed with the cluster's records", 15)


# -- PostgreSQL failing mid-transaction ----------------------------------------------------------------------


def test_a_failure_mid_transaction_changes_nothing(nodes: tuple[Vault, Vault, Vault], batch: Issued,
                                                    authority_dsn: str, pg_server: PgServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = nodes
    key, serial = batch.keys[50], batch.serials[50]
    real = Checkout.write
    cuts = [0]

    def cut(self: Checkout, *args: object) -> list[int]:
        numbers = real(self, *args)  # type: ignore[arg-type]
        cuts[0] += 1  # the decisions are written; the connection dies before COMMIT
        pg_server.sql(f"SELECT pg_terminate_backend({self.cur.connection.info.backend_pid})")
        self.cur.execute("SELECT 1")
        return numbers

    monkeypatch.setattr(Checkout, "write", cut)
    with pytest.raises(AuthorityError, match="nothing was changed"):
        a.hold(key, "cut", 900)
    assert cuts[0] == 2  # tried on a new connection once, cut again
    monkeypatch.setattr(Checkout, "write", real)
    number = _parse_serial(serial)
    signed = number - (1 << 64) if number >= 1 << 63 else number
    assert _rows(authority_dsn, f"SELECT count(*) FROM keyvault_holds WHERE serial = {signed}") == [(0,)]
    assert _rows(authority_dsn, f"SELECT count(*) FROM keyvault_keys WHERE serial = {signed}") == [(0,)]
    assert _rows(authority_dsn, "SELECT count(*) FROM keyvault_changes WHERE text = 'cut'") == [(0,)]
    assert a.verify(key).status is Status.VALID
    with pytest.raises(NotFoundError):
        b.confirm("cut")
    # Cut once: the second connection decides, and only its decision is there.
    cuts[0] = 0

    def once(self: Checkout, *args: object) -> list[int]:
        if cuts[0]:
            return real(self, *args)  # type: ignore[arg-type]
        return cut(self, *args)

    monkeypatch.setattr(Checkout, "write", once)
    held = a.hold(key, "cut", 900)
    monkeypatch.setattr(Checkout, "write", real)
    assert held.holds_for("cut") and cuts[0] == 1
    assert _rows(authority_dsn, "SELECT kind FROM keyvault_changes WHERE text = 'cut'") == [("hold",)]
    # A COMMIT cut: the outcome is unknown, never "accepted"; the retry, on another node, has the one answer.
    authority = b.engine.authority

    def lost(conn: object) -> None:
        pg_server.sql(f"SELECT pg_terminate_backend({conn.info.backend_pid})")  # type: ignore[attr-defined]

    authority.before_commit = lost  # type: ignore[attr-defined]
    with pytest.raises(OutcomeUnknownError, match="retry"):
        b.confirm("cut")
    authority.before_commit = None  # type: ignore[attr-defined]
    (done,) = c.confirm("cut")
    assert done.status is Status.ACCEPTED
    assert b.confirm("cut") == [done] and a.redeem(key, "other").status is Status.REDEEMED


def test_binding_refuses_a_store_with_holds_or_uses_of_its_own(tmp_path: Path, supplier: Identity, batch: Issued,
                                                                 passes: Issued, authority_dsn: str) -> None:
    from keyvault.errors import ConflictError

    vault = node(tmp_path / "own", supplier, batch, None)
    try:
        vault.import_manifest(passes.manifest)
        assert vault.redeem(passes.keys[0], "mine").uses_left == 4
        with pytest.raises(ConflictError, match="holds or uses"):
            vault.authority.set(authority_dsn, migrate=True)
        assert not vault.authority.show()["bound"]
        assert _rows(authority_dsn, "SELECT count(*) FROM keyvault_keys") == [(0,)]
    finally:
        vault.close()


def test_checkout_changes_are_in_the_cluster_log_and_a_held_keys_bundle_verifies(
        tmp_path: Path, supplier: Identity, batch: Issued, passes: Issued, authority_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import json

    from keyvault.engine.authority.sequencer import Sequencer
    from keyvault.formats import bundle
    from keyvault.formats.events import parse_leaf

    monkeypatch.setenv("KEYVAULT_AUTHORITY_FOLLOW", "0")  # the test drives the sequencer and the catch-ups
    cluster_key = Identity.generate("cluster engine")
    a, b = Vault.init(tmp_path / "a"), Vault.init(tmp_path / "b")
    try:
        for v in (a, b):
            v.trust(supplier.public)
            v.authority.set(authority_dsn)
        a.import_manifest(batch.manifest)  # bound: its import event is in the cluster log
        a.import_manifest(passes.manifest)
        b.authority.catch_up()
        k0, k1, k2 = batch.keys[:3]
        assert a.hold(k0, "o1", 900).holds_for("o1")
        assert b.confirm("o1")[0].status is Status.ACCEPTED
        assert b.hold(k1, "o2", 900).holds_for("o2")
        assert a.release("o2")[0].status is Status.RELEASED
        assert a.hold(k2, "o3", 900).holds_for("o3")
        assert b.redeem(passes.keys[0], "u1").uses_left == 4
        seq = Sequencer(a.engine.authority, cluster_key, every_seconds=0)
        while seq.step():
            pass
        seq.maybe_sign(force=True)
        seq.release()
        logged = [parse_leaf(leaf) for _, _, leaf, _ in a.engine.authority.log_since(0)]
        story = [(e["type"], e.get("serial"), e.get("order_id")) for e in logged if e["type"] != "import"]
        assert story == [("hold", batch.serials[0], "o1"), ("confirm", batch.serials[0], "o1"),
                         ("redeem", batch.serials[0], "o1"), ("hold", batch.serials[1], "o2"),
                         ("release", batch.serials[1], "o2"), ("hold", batch.serials[2], "o3"),
                         ("use", passes.serials[0], "u1")]
        assert [e["expires_at"] for e in logged if e["type"] == "hold"][0] > 0
        assert [e["uses_left"] for e in logged if e["type"] == "use"] == [4]
        trusted = [supplier.public, cluster_key.public_with_roles(["engine"])]
        for n, status in ((0, "redeemed"), (1, "valid"), (2, "held")):  # made on B, whichever node decided
            doc = b.trace_bundle(batch.serials[n])
            checks = bundle.verify(json.dumps(doc).encode(), trusted)
            assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]
            assert doc["status"]["status"] == status
            kinds = [parse_leaf(base64.b64decode(e["leaf"]))["type"] for e in doc["events"]]
            assert kinds[0] == "import" and "hold" in kinds
    finally:
        a.close()
        b.close()


def test_a_version_2_database_is_brought_to_the_current_version_by_the_first_node(
        tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str) -> None:
    from keyvault.engine.authority.postgres import PostgresAuthority
    from keyvault.engine.authority.schema import SCHEMA_VERSION

    a = node(tmp_path / "a", supplier, batch, authority_dsn)
    try:
        assert a.redeem(batch.keys[0], "before").status is Status.ACCEPTED
    finally:
        a.close()
    with psycopg.connect(authority_dsn) as conn:  # as the database of the version before checkout across nodes
        conn.execute("DROP TABLE keyvault_holds, keyvault_uses")
        conn.execute("DROP INDEX keyvault_changes_text")
        conn.execute("ALTER TABLE keyvault_changes DROP COLUMN detail")
        conn.execute("DROP TABLE keyvault_witnesses")
        conn.execute("ALTER TABLE keyvault_checkpoints DROP COLUMN signer")
        conn.execute("DELETE FROM keyvault_schema")
        conn.execute("INSERT INTO keyvault_schema (version) VALUES (2)")
    for _ in range(2):  # the first connection migrates; the next finds nothing to do
        upgraded = PostgresAuthority(authority_dsn)
        try:
            assert upgraded.check()["schema_version"] == SCHEMA_VERSION == 4
        finally:
            upgraded.close()
    with Vault.open(tmp_path / "a") as again:
        assert again.redeem(batch.keys[0], "before").status is Status.ACCEPTED  # what it decided is kept
        assert again.hold(batch.keys[1], "after", 900).holds_for("after")
        assert again.order("after")["keys"][0]["state"] == "held"
    assert _rows(authority_dsn, "SELECT version FROM keyvault_schema ORDER BY version") == [(2,), (4,)]


def test_the_command_line_holds_on_one_node_and_confirms_on_another(tmp_path: Path, supplier: Identity,
                                                                     batch: Issued, authority_dsn: str) -> None:
    from cli_support import EXIT_REFUSED, kv, ok, one_json

    for name in "abc":  # closed: the commands open them (in this process, as the tests run the CLI)
        node(tmp_path / name, supplier, batch, authority_dsn).close()
    a, b, c = (SimpleNamespace(path=tmp_path / name) for name in "abc")
    key = batch.keys[55]
    held = one_json(ok("--store", a.path, "hold", key, "--order", "cli-1", "--ttl", "15m", "--json"))
    assert held["status"] == "held" and held["order_id"] == "cli-1"
    other = kv("--store", c.path, "hold", key, "--order", "cli-2", "--json")
    assert other.exit_code == EXIT_REFUSED and one_json(other)["status"] == "held"
    done = one_json(ok("--store", b.path, "confirm", "cli-1", "--json"))
    assert done["status"] == "accepted" and done["order_id"] == "cli-1"
    doc = one_json(ok("--store", c.path, "trace", "--order", "cli-1", "--json"))
    assert [k["state"] for k in doc["keys"]] == ["redeemed"] and key not in str(doc)
    assert [e["type"] for e in doc["events"]] == ["hold", "confirm", "redeem"]
    text = ok("--store", a.path, "trace", "--order", "cli-1").output
    assert "1 key(s)" in text and "redeemed" in text
