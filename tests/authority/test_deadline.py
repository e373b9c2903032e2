"""The authority's deadline: a PostgreSQL backend that stops answering (SIGSTOP) while its socket stays open
ends the call after the deadline, with AuthorityError before COMMIT (nothing changed) or OutcomeUnknownError
once COMMIT was sent, and the next call reconnects."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keyvault import Identity, Status, Vault
from keyvault.engine.authority.postgres import DEADLINE, PostgresAuthority
from keyvault.errors import AuthorityError, OutcomeUnknownError, UsageError

from conftest import Issued, issue
from .conftest import PgServer


@pytest.fixture
def batch(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> Issued:
    return issue(supplier_store, supplier, tmp_path / "files", count=20)


@pytest.fixture
def bound(tmp_path: Path, supplier: Identity, batch: Issued, authority_dsn: str,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Vault]:
    monkeypatch.setenv("KEYVAULT_AUTHORITY_FOLLOW", "0")  # no follower sharing the connection under test
    vault = Vault.init(tmp_path / "node")
    vault.trust(supplier.public)
    vault.import_manifest(batch.manifest)
    vault.authority.set(authority_dsn)
    vault.engine.authority.deadline = 1.5
    try:
        yield vault
    finally:
        vault.close()


def _backend_pid(authority: Any) -> int:
    """The pid of the PostgreSQL backend serving ``authority``'s connection."""
    seen: list[int] = []
    authority.before_commit = lambda conn: seen.append(conn.info.backend_pid)
    try:
        authority.check()
    finally:
        authority.before_commit = None
    return seen[0]


def _gone(pg_server: PgServer, dbname: str, pid: int) -> bool:
    return not pg_server.sql(f"SELECT 1 FROM pg_stat_activity WHERE pid = {pid}", dbname)


def _within(seconds: float, call: Callable[[], Any]) -> tuple[float, Any]:
    """``call()`` in a thread: (seconds it took, its result or exception); fails the test past ``seconds``
    (without a deadline the call would wait for ever)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"the call was still waiting after {seconds} s: no deadline ended it"
    return time.monotonic() - started, out[0]


def test_a_stopped_backend_before_commit_is_an_authority_error_and_nothing_changes(
        bound: Vault, batch: Issued, pg_server: PgServer, authority_dsn: str) -> None:
    authority = bound.engine.authority
    dbname = authority_dsn.split("dbname=")[1].split()[0]
    pid = _backend_pid(authority)
    os.kill(pid, signal.SIGSTOP)
    try:
        took, answer = _within(30, lambda: bound.redeem_many([(batch.keys[0], "o1"), (batch.keys[1], "o2")]))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert isinstance(answer, AuthorityError) and not isinstance(answer, OutcomeUnknownError), answer
    assert "did not answer within 1.5 s" in str(answer) and "nothing was changed" in str(answer)
    assert took >= 1.5  # it waited for its deadline, no less
    deadline = time.monotonic() + 30
    while not _gone(pg_server, dbname, pid):  # resumed, it reads the statement, then the closed socket: rollback
        assert time.monotonic() < deadline, "the stopped backend never ended after its socket was shut down"
        time.sleep(0.05)
    assert pg_server.sql("SELECT count(*) FROM keyvault_keys", dbname) == [(0,)]
    # The next call reconnects by itself; the keys were never taken, whatever order asks now.
    again = bound.redeem_many([(batch.keys[0], "o3"), (batch.keys[1], "o4")])
    assert [r.status for r in again] == [Status.ACCEPTED, Status.ACCEPTED]
    assert _backend_pid(authority) != pid


def test_a_stopped_backend_during_commit_is_an_unknown_outcome_and_the_retry_has_the_answer(
        bound: Vault, batch: Issued, pg_server: PgServer, authority_dsn: str) -> None:
    authority = bound.engine.authority
    dbname = authority_dsn.split("dbname=")[1].split()[0]
    stopped: list[int] = []

    def stop(conn: Any) -> None:
        stopped.append(conn.info.backend_pid)
        os.kill(stopped[0], signal.SIGSTOP)

    authority.before_commit = stop
    try:
        took, answer = _within(30, lambda: bound.redeem(batch.keys[0], "o1"))
    finally:
        authority.before_commit = None
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert isinstance(answer, OutcomeUnknownError), answer
    assert "did not answer the COMMIT within 1.5 s" in str(answer) and "retry with the same order id" in str(answer)
    assert took >= 1.5
    assert bound.verify(batch.keys[0]).status is Status.VALID  # nothing was cached from an unknown outcome
    deadline = time.monotonic() + 30
    while not _gone(pg_server, dbname, stopped[0]):  # resumed, it commits what was sent before the shutdown
        assert time.monotonic() < deadline, "the stopped backend never ended after its socket was shut down"
        time.sleep(0.05)
    # Whatever the resumed backend did with the COMMIT, the retry with the same order id is accepted, once.
    assert bound.redeem(batch.keys[0], "o1").status is Status.ACCEPTED
    refused = bound.redeem(batch.keys[0], "o2")
    assert refused.status is Status.REDEEMED and refused.order_id == "o1"
    assert pg_server.sql("SELECT count(*) FROM keyvault_keys", dbname) == [(1,)]


def test_the_deadline_is_configured_in_seconds_and_bad_values_change_nothing(
        authority_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYVAULT_AUTHORITY_DEADLINE", raising=False)
    authority = PostgresAuthority(authority_dsn)
    try:
        assert authority.deadline == DEADLINE == 10.0
    finally:
        authority.close()
    monkeypatch.setenv("KEYVAULT_AUTHORITY_DEADLINE", "2.5")
    authority = PostgresAuthority(authority_dsn + " options='-c statement_timeout=0'")
    try:
        assert authority.deadline == 2.5  # from the environment, whatever the DSN says
        assert authority.check()["reachable"]
    finally:
        authority.close()
    for bad in ("soon", "0", "-3", "nan", "1e9"):
        monkeypatch.setenv("KEYVAULT_AUTHORITY_DEADLINE", bad)
        with pytest.raises(UsageError, match="KEYVAULT_AUTHORITY_DEADLINE"):
            PostgresAuthority(authority_dsn)
    monkeypatch.delenv("KEYVAULT_AUTHORITY_DEADLINE")
    with pytest.raises(UsageError, match="deadline"):
        PostgresAuthority(authority_dsn, deadline=0)


def test_the_deadline_is_per_round_trip_not_per_transaction(authority_dsn: str) -> None:
    authority = PostgresAuthority(authority_dsn, deadline=1.0)
    try:
        def slow_steps(cur: Any) -> int:  # three statements of 0.6 s: 1.8 s in all, each within 1 s
            for _ in range(3):
                cur.execute("SELECT pg_sleep(0.6)")
            return 3

        assert authority._run(slow_steps, decisive=False) == 3  # noqa: SLF001 - a transaction of our own

        def one_slow(cur: Any) -> None:
            cur.execute("SELECT pg_sleep(60)")

        started = time.monotonic()
        with pytest.raises(AuthorityError, match="did not answer within 1 s"):
            authority._run(one_slow, decisive=False)  # noqa: SLF001
        assert time.monotonic() - started < 30  # cut by the deadline, not answered after the 60 s sleep
        assert authority.check()["reachable"]  # and the next call reconnects
    finally:
        authority.close()
