"""``keyvault serve`` on a bound node: redeems decided by the authority through the service's commit process,
and a hostile database cutting its connections: never a lost ``accepted``, every failure a 503 to retry."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from keyvault import Identity, Status, Vault

from conftest import eventually, issue
from service_support import Server, make_token

from .conftest import PgServer
from .test_authority import node

PROBLEM = "urn:keyvault:problem:"


def test_the_service_redeems_through_the_authority_and_answers_cuts_with_503(
        tmp_path: Path, supplier: Identity, supplier_store: Vault, authority_dsn: str, pg_server: PgServer) -> None:
    batch = issue(supplier_store, supplier, tmp_path / "files", count=600)
    node(tmp_path / "a", supplier, batch, authority_dsn).close()
    other = node(tmp_path / "b", supplier, batch, authority_dsn)
    token = make_token(tmp_path / "a", "shop", "redeem")
    server = Server(tmp_path / "a", tmp_path / "server.log").start()
    dbname = authority_dsn.split("dbname=")[1].split()[0]
    try:
        reply = server.request("POST", "/v1/redeem", {"key": batch.keys[0], "order_id": "web-1"}, token=token)
        assert reply.status == 200 and reply.json()["status"] == "accepted"
        assert other.redeem(batch.keys[0], "web-1").status is Status.ACCEPTED  # the same answer on node B
        eventually(lambda: other.verify(batch.keys[0]).status is Status.REDEEMED, "B never learned it", 15)
        other.blacklist.add("key", batch.keys[1], "stolen")
        reply = server.request("POST", "/v1/redeem", {"key": batch.keys[1], "order_id": "web-2"}, token=token)
        assert reply.json()["status"] == "blacklisted"  # decided on node B, refused on node A at once
        # Hostile: another session cuts every keyvault connection, again and again, while redeems arrive.
        stop = threading.Event()

        def cutter() -> None:
            import psycopg

            with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:  # one session, cutting fast
                while not stop.is_set():
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                 f"'{dbname}' AND application_name = 'keyvault' AND pid <> pg_backend_pid()")
                    time.sleep(0.002)

        cut = threading.Thread(target=cutter)
        cut.start()
        accepted: dict[str, str] = {}
        problems: list[str] = []
        try:
            # Until the cuts have reached redeems a few times (a quiet machine answers most redeems between two
            # cuts: a dead connection found before a statement is simply replaced), at most every key.
            done = 2
            for n in range(2, len(batch.keys)):
                if len(problems) >= 3 and n >= 200:
                    break
                done = n + 1
                items = [{"key": batch.keys[n], "order_id": f"web-{n}"}]
                reply = server.request("POST", "/v1/redeem-many", {"items": items}, token=token)
                if reply.status == 200:
                    status = reply.json()["results"][0]["status"]
                    assert status == "accepted", reply.json()
                    accepted[batch.keys[n]] = f"web-{n}"
                else:
                    doc = reply.json()
                    assert reply.status == 503 and "retry" in doc["detail"], doc
                    assert doc["type"] in (PROBLEM + "outcome-unknown", PROBLEM + "store-unavailable"), doc
                    problems.append(doc["type"])
        finally:
            stop.set()
            cut.join()
        assert problems, "no cut reached a redeem: the hostile session did nothing"
        held = {text for (text,) in pg_server.sql("SELECT text FROM keyvault_keys", dbname)}
        assert set(accepted.values()) <= held, "an accepted redeem is missing from the authority"
        # Every call answered 503 is settled by its retry with the same order id, on either node.
        for n in range(2, done):
            if batch.keys[n] not in accepted:
                assert other.redeem(batch.keys[n], f"web-{n}").status is Status.ACCEPTED
    finally:
        other.close()
        assert server.stop() == 0
