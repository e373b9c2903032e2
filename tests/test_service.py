"""The HTTP service, driven over real HTTP: the real server on an ephemeral loopback port, two workers.

Every endpoint and status, tokens and scopes, bad input (RFC 9457 problems,
never a 5xx), idempotent retries, 64 concurrent redeems of one key, revocation,
the access log, a SIGTERM drain, a worker killed under load, and a short
schemathesis run against the served OpenAPI document.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Issued, eventually, issue
from service_support import KEYVAULT, Reply, Server, cli, free_port, make_token, running

from keyvault import Identity, Status, ThrottlePolicy, Vault
from keyvault.formats import bundle

PROBLEM = "urn:keyvault:problem:"


@dataclass
class World:
    """A platform store with imported keys, its tokens, a running server, and a spare manifest."""

    server: Server
    keys: list[str]
    serials: list[str]
    tokens: dict[str, str]  # scope -> token
    spare: Issued  # a batch issued but not yet imported: for /v1/manifests
    supplier: Identity
    root: Path

    def take(self, n: int = 1) -> list[str]:
        """Keys no other test uses."""
        taken, self.keys[:n] = self.keys[:n], []
        assert len(taken) == n, "the world ran out of keys: issue more"
        return taken

    def call(self, method: str, path: str, body: object = None, scope: str | None = "admin", **kw: object) -> Reply:
        """A request with the token of ``scope`` (None: no token)."""
        token = self.tokens[scope] if scope else None
        return self.server.request(method, path, body, token=token, **kw)  # type: ignore[arg-type]


def build_world(root: Path, count: int = 3000) -> tuple[Path, Issued, Issued, Identity]:
    """A supplier issues two batches; a platform store pins it and imports the first."""
    supplier = Identity.generate("Acme Games")
    files = root / "files"
    with Vault.init(root / "supplier") as made:
        first = issue(made, supplier, files, count=count)
        spare = issue(made, supplier, files, count=50, product="POINTS-50")
    store = root / "platform"
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(first.manifest)
    return store, first, spare, supplier


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("service")
    store, first, spare, supplier = build_world(root)
    tokens = {scope: make_token(store, f"{scope}-app", scope) for scope in ("verify", "redeem", "admin")}
    server = Server(store, root / "server.log").start()
    keys = list(first.keys)
    random.Random(7).shuffle(keys)
    try:
        yield World(server, keys, first.serials, tokens, spare, supplier, root)
    finally:
        server.kill()


def problem(reply: Reply, status: int, name: str) -> str:
    """Assert an RFC 9457 answer of ``status`` and type ``name``; its detail."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"] == "application/problem+json"
    doc = reply.json()
    assert doc["type"] == PROBLEM + name and doc["status"] == status and doc["title"]
    assert "Traceback" not in doc["detail"]
    assert doc["request_id"] == reply.headers["x-request-id"] and doc["request_id"]  # every problem names its request
    return str(doc["detail"])


def test_results_body_is_exactly_the_json_of_each_result() -> None:
    from keyvault.results import Result
    from keyvault.formats.answers import results_body

    supplier = ("B1SH-000", "1d1715e71c69a0e3", "Acme \"Games\" 游戏", "POINTS-100")
    results = [Result(Status.VALID, "B1SH-000-00001", *supplier), Result(Status.VALID, "B1SH-000-00002", *supplier),
               Result(Status.UNKNOWN, "B1SH-001-00003", "B1SH-001", None, None, None, message="no such key"),
               Result(Status.UNKNOWN, "B1SH-001-00004"), Result(Status.MALFORMED, group=3, message="group 3"),
               Result(Status.ACCEPTED, "B1SH-000-00005", *supplier, order_id="o-1", redeemed_at="2026"),
               Result(Status.VALID, 'odd"serial', *supplier), Result(Status.THROTTLED, message="wait"),
               Result(Status.UNKNOWN, None), Result(Status.UNKNOWN, "B1SH-001-00007")]
    assert json.loads(results_body(results)) == {"results": [r.to_dict() for r in results]}
    assert results_body(results) == json.dumps({"results": [r.to_dict() for r in results]},
                                                ensure_ascii=False).encode()
    assert results_body([]) == b'{"results": []}'


# -- health, metrics, the document ---------------------------------------------------------------------


def test_metrics_sum_every_worker_file_with_the_live_counts(tmp_path: Path) -> None:
    from keyvault.service.metrics import Metrics
    other = ("from pathlib import Path; from keyvault.service.metrics import Metrics; "
             f"m = Metrics(Path({str(tmp_path)!r})); m.request('/v1/verify', 200, 0.002); "
             "m.request('/v1/verify', 200, 0.002); m.save()")
    subprocess.run([sys.executable, "-I", "-c", other], check=True)  # another worker: its own pid and file
    mine = Metrics(tmp_path)
    mine.request("/v1/verify", 200, 0.0001)  # live, never saved
    text = mine.render()
    assert 'keyvault_http_requests_total{route="/v1/verify",code="200"} 3' in text
    assert 'keyvault_http_request_duration_seconds_bucket{route="/v1/verify",le="0.0005"} 1' in text
    assert 'keyvault_http_request_duration_seconds_bucket{route="/v1/verify",le="0.0025"} 3' in text
    (tmp_path / "torn.json").write_text("{")  # a file being replaced as we read: skipped, not a 500
    assert mine.render() == text


def test_health_metrics_and_openapi(world: World) -> None:
    assert world.call("GET", "/healthz", scope=None).json() == {"status": "ok"}
    world.call("POST", "/v1/verify", {"keys": world.keys[-3:]}, scope="verify")
    scrapes: list[Reply] = []

    def counted() -> bool:  # by the worker that answered, or by the other once it published (every second)
        scrapes.append(world.call("GET", "/metrics", scope=None))
        return 'keyvault_http_requests_total{route="/v1/verify",code="200"}' in scrapes[-1].body.decode()

    eventually(counted, "no /metrics answer counts the verify")
    metrics = scrapes[-1]
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.body.decode()
    assert '# TYPE keyvault_http_requests_total counter' in text
    assert 'keyvault_http_requests_total{route="/v1/verify",code="200"}' in text
    assert 'keyvault_keys_total{op="verify",status="valid"}' in text
    assert 'keyvault_http_request_duration_seconds_bucket{route="/v1/verify",le="+Inf"}' in text
    doc = world.call("GET", "/v1/openapi.json", scope=None).json()  # no token: client generators fetch it
    assert doc["openapi"].startswith("3.1") and "/v1/redeem" in doc["paths"]
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []


def test_metrics_count_every_worker_soon(world: World) -> None:
    """Each worker and the commit process publish every 0.25 s: any scrape catches up within seconds."""
    def total() -> int:
        text = world.call("GET", "/metrics", scope=None).body.decode()
        return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('keyvault_http_requests_total{route="/v1/verify"'))

    before = total()
    for _ in range(20):  # new connections: both workers answer some
        world.call("POST", "/v1/verify", {"keys": []}, scope="verify")
    eventually(lambda: all(total() >= before + 20 for _ in range(4)), "a worker's counts did not show", seconds=5)


# -- tokens and scopes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "needed"), [
    ("POST", "/v1/verify", "verify"), ("POST", "/v1/redeem", "redeem"), ("POST", "/v1/redeem-many", "redeem"),
    ("GET", "/v1/trace/7KQ2-00A-0003F", "redeem"), ("POST", "/v1/void", "admin"), ("POST", "/v1/blacklist", "admin"),
    ("DELETE", "/v1/blacklist", "admin"), ("POST", "/v1/blacklist/lift", "admin"), ("GET", "/v1/stats", "admin"),
    ("POST", "/v1/manifests", "admin"),
])
def test_scopes(world: World, method: str, path: str, needed: str) -> None:
    body = {} if method != "GET" else None
    reply = world.call(method, path, body, scope=None)
    problem(reply, 401, "unauthorized")
    assert reply.headers["www-authenticate"].startswith("Bearer")
    problem(world.server.request(method, path, body, token="kvt_" + "A" * 43), 401, "unauthorized")
    problem(world.server.request(method, path, body, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401,
            "unauthorized")
    scopes = ["verify", "redeem", "admin"]
    for scope in scopes:
        reply = world.call(method, path, body, scope=scope)
        if scopes.index(scope) < scopes.index(needed):
            detail = problem(reply, 403, "forbidden")
            assert f"scope {needed}" in detail and world.tokens[scope] not in detail
        else:
            assert reply.status not in (401, 403), reply.body


def test_an_empty_token_is_missing_and_two_authorization_headers_are_refused(world: World) -> None:
    for header in ("Bearer ", "Bearer", "Bearer    "):
        detail = problem(world.server.request("POST", "/v1/verify", {"keys": []}, headers={"Authorization": header}),
                         401, "unauthorized")
        assert "send the header" in detail and "revoked" not in detail
    unknown = problem(world.server.request("POST", "/v1/verify", {"keys": []}, token="kvt_" + "B" * 43), 401,
                      "unauthorized")
    assert "unknown or was revoked" in unknown
    for tokens in ((world.tokens["verify"], world.tokens["admin"]), (world.tokens["admin"], world.tokens["verify"]),
                   ("kvt_" + "B" * 43, world.tokens["admin"])):
        conn = world.server.connect()
        try:
            conn.putrequest("GET", "/v1/stats")
            for token in tokens:
                conn.putheader("Authorization", f"Bearer {token}")
            conn.endheaders()
            response = conn.getresponse()
            reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()
        detail = problem(reply, 400, "bad-request")
        assert "one Authorization header" in detail and not any(t in detail for t in tokens)


def test_revoked_token_is_refused_by_every_worker_on_its_next_request(world: World) -> None:
    token = make_token(world.server.store, "short-lived", "verify")
    conns = [world.server.connect() for _ in range(8)]  # kept alive: spread over both workers
    try:
        for conn in conns:
            assert world.server.request("POST", "/v1/verify", {"keys": []}, token=token, conn=conn).status == 200
        assert cli(world.server.store, "token", "revoke", "short-lived").returncode == 0
        for conn in conns:
            problem(world.server.request("POST", "/v1/verify", {"keys": []}, token=token, conn=conn), 401,
                    "unauthorized")
    finally:
        for conn in conns:
            conn.close()
    listed = cli(world.server.store, "token", "list", "--json")
    assert "short-lived" not in listed.stdout and token not in listed.stdout


def test_token_cli_stores_only_a_hash(world: World, tmp_path: Path) -> None:
    done = cli(world.server.store, "token", "create", "--name", "printer", "--scope", "verify")
    token = done.stdout.strip()
    assert token.startswith("kvt_") and "only time it is shown" in done.stderr
    assert token.encode() not in (world.server.store / "data.mdb").read_bytes()
    again = cli(world.server.store, "token", "create", "--name", "printer", "--scope", "admin")
    assert again.returncode == 1 and "exists" in again.stderr
    bad = cli(world.server.store, "token", "create", "--name", "no spaces", "--scope", "admin")
    assert bad.returncode == 1 and "token name" in bad.stderr
    assert cli(world.server.store, "token", "revoke", "nobody").returncode == 1


# -- verify ------------------------------------------------------------------------------------------------


def test_verify_answers_in_input_order_and_never_echoes_a_key(world: World) -> None:
    keys = world.take(3)
    typed = [keys[0], "not a key", keys[1].lower().replace("-", " "), "1" * 32, keys[2]]
    reply = world.call("POST", "/v1/verify", {"keys": typed, "client": "till-4"}, scope="verify")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    results = reply.json()["results"]
    assert [r["status"] for r in results] == ["valid", "malformed", "valid", "unknown", "valid"]
    for result in results:
        assert {"status", "serial", "batch", "supplier"} <= set(result)
    for key in keys:
        assert key not in reply.body.decode()
    assert world.call("POST", "/v1/verify", {"keys": []}, scope="verify").json() == {"results": []}


def test_throttling_keys_on_token_name_and_client(world: World) -> None:
    with Vault.open(world.server.store) as vault:
        vault.set_throttle_policy(ThrottlePolicy(3, 60, 300), client="verify-app/guesser")
    wrong = ["1" + "0" * 31] * 2
    for _ in range(3):
        world.call("POST", "/v1/verify", {"keys": wrong, "client": "guesser"}, scope="verify")
    blocked = world.call("POST", "/v1/verify", {"keys": world.keys[-1:], "client": "guesser"}, scope="verify")
    assert blocked.json()["results"][0]["status"] == "throttled"
    other_client = world.call("POST", "/v1/verify", {"keys": world.keys[-1:], "client": "honest"}, scope="verify")
    assert other_client.json()["results"][0]["status"] == "valid"
    other_token = world.call("POST", "/v1/verify", {"keys": world.keys[-1:], "client": "guesser"}, scope="redeem")
    assert other_token.json()["results"][0]["status"] == "valid"
    assert world.call("POST", "/v1/redeem", {"key": world.keys[-1], "order_id": "t-1", "client": "guesser"},
                      scope="verify").status == 403
    assert cli(world.server.store, "throttle", "unblock", "verify-app/guesser").returncode == 0
    again = world.call("POST", "/v1/verify", {"keys": world.keys[-1:], "client": "guesser"}, scope="verify")
    assert again.json()["results"][0]["status"] == "valid"


# -- redeem ------------------------------------------------------------------------------------------------


def test_redeem_retry_and_second_order(world: World) -> None:
    [key] = world.take()
    first = world.call("POST", "/v1/redeem", {"key": key, "order_id": "A-100", "client": "c"}, scope="redeem")
    assert first.status == 200
    doc = first.json()
    assert doc["status"] == "accepted" and doc["order_id"] == "A-100" and doc["redeemed_at"]
    retry = world.call("POST", "/v1/redeem", {"key": key, "order_id": "A-100"}, scope="redeem").json()
    assert retry["status"] == "accepted" and retry["redeemed_at"] == doc["redeemed_at"]
    other = world.call("POST", "/v1/redeem", {"key": key, "order_id": "B-200"}, scope="redeem").json()
    assert other["status"] == "redeemed" and other["order_id"] == "A-100"
    assert key not in json.dumps([doc, retry, other])
    unknown = world.call("POST", "/v1/redeem", {"key": "1" + "0" * 31, "order_id": "C"}, scope="redeem").json()
    assert unknown["status"] in ("malformed", "unknown")


def test_redeem_many_in_input_order(world: World) -> None:
    a, b, c = world.take(3)
    items = [{"key": a, "order_id": "M-1"}, {"key": "junk", "order_id": "M-2"}, {"key": b, "order_id": "M-3"},
             {"key": a, "order_id": "M-4"}, {"key": a, "order_id": "M-1"}, {"key": c, "order_id": "M-5"}]
    reply = world.call("POST", "/v1/redeem-many", {"items": items, "client": "batch"}, scope="redeem")
    results = reply.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "malformed", "accepted", "redeemed", "accepted",
                                              "accepted"]
    assert results[3]["order_id"] == "M-1"
    assert world.call("POST", "/v1/redeem-many", {"items": []}, scope="redeem").json() == {"results": []}


def test_64_concurrent_redeems_of_one_key_accept_exactly_one(world: World) -> None:
    [key] = world.take()
    barrier = threading.Barrier(64)

    def attempt(i: int) -> dict[str, object]:
        conn = world.server.connect()
        conn.connect()
        barrier.wait()
        try:
            return world.call("POST", "/v1/redeem", {"key": key, "order_id": f"race-{i}"}, scope="redeem",
                              conn=conn).json()  # type: ignore[no-any-return]
        finally:
            conn.close()

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(attempt, range(64)))
    statuses = Counter(a["status"] for a in answers)
    assert statuses == {"accepted": 1, "redeemed": 63}, statuses
    [winner] = [a["order_id"] for a in answers if a["status"] == "accepted"]
    assert all(a["order_id"] == winner for a in answers)


# -- void, blacklist, stats, trace, manifests ---------------------------------------------------------------


def test_void(world: World) -> None:
    [key] = world.take()
    void = world.call("POST", "/v1/void", {"key": key, "reason": "refund R-1"}).json()
    assert void["status"] == "void" and void["reason"] == "refund R-1"
    assert world.call("POST", "/v1/verify", {"keys": [key]}, scope="verify").json()["results"][0]["status"] == "void"
    assert world.call("POST", "/v1/void", {"key": void["serial"], "reason": "again"}).json()["status"] == "void"
    problem(world.call("POST", "/v1/void", {"key": key}), 422, "invalid-request")


def test_blacklist_and_lift(world: World) -> None:
    [key] = world.take()
    entry = world.call("POST", "/v1/blacklist", {"level": "key", "target": key, "reason": "stolen"}).json()
    assert entry["level"] == "key" and entry["reason"] == "stolen" and key not in json.dumps(entry)
    refused = world.call("POST", "/v1/verify", {"keys": [key]}, scope="verify").json()["results"][0]
    assert refused["status"] == "blacklisted"
    problem(world.call("DELETE", "/v1/blacklist", {"level": "key", "target": key}), 422, "invalid-request")
    lifted = world.call("DELETE", "/v1/blacklist", {"level": "serial", "target": entry["target"],
                                                     "reason": "found"}).json()
    assert lifted["target"] == entry["target"]
    assert world.call("POST", "/v1/verify", {"keys": [key]}, scope="verify").json()["results"][0]["status"] == "valid"
    problem(world.call("DELETE", "/v1/blacklist", {"level": "serial", "target": entry["target"], "reason": "x"}),
            404, "not-found")
    problem(world.call("POST", "/v1/blacklist", {"level": "galaxy", "target": "x", "reason": "x"}), 422,
            "invalid-request")


def test_a_serial_entry_is_answered_at_level_serial(world: World) -> None:
    [key] = world.take()
    serial = world.call("POST", "/v1/verify", {"keys": [key]}, scope="verify").json()["results"][0]["serial"]
    entry = world.call("POST", "/v1/blacklist", {"level": "serial", "target": serial, "reason": "stolen"}).json()
    assert entry["level"] == "serial" and entry["target"] == serial
    assert world.call("POST", "/v1/verify", {"keys": [key]}, scope="verify").json()["results"][0]["status"] \
        == "blacklisted"
    lifted = world.call("POST", "/v1/blacklist/lift", {"level": "key", "target": key, "reason": "found"}).json()
    assert lifted["level"] == "key" and lifted["target"] == serial  # one entry: the key's


def test_lift_has_one_name_and_delete_stays_its_alias(world: World) -> None:
    [key] = world.take()
    for lift in (("POST", "/v1/blacklist/lift"), ("DELETE", "/v1/blacklist")):
        entry = world.call("POST", "/v1/blacklist", {"level": "key", "target": key, "reason": "stolen"}).json()
        assert world.call("POST", "/v1/verify", {"keys": [key]}, scope="verify").json()["results"][0]["status"] \
            == "blacklisted"
        lifted = world.call(*lift, {"level": "serial", "target": entry["target"], "reason": "found"}).json()
        assert lifted == dict(entry, level="serial", reason="found", at=lifted["at"])  # the level asked
        assert world.call("POST", "/v1/verify", {"keys": [key]}, scope="verify").json()["results"][0]["status"] \
            == "valid"
        problem(world.call(*lift, {"level": "serial", "target": entry["target"], "reason": "x"}), 404, "not-found")


def test_stats_and_trace_with_bundle(world: World, tmp_path: Path) -> None:
    [key] = world.take()
    redeemed = world.call("POST", "/v1/redeem", {"key": key, "order_id": "T-1"}, scope="redeem").json()
    stats = world.call("GET", "/v1/stats").json()
    assert stats["totals"]["redeemed"] >= 1
    serial = redeemed["serial"]
    trace = world.call("GET", f"/v1/trace/{serial}", scope="redeem")
    assert trace.status == 200 and "T-1" in trace.body.decode() and key not in trace.body.decode()
    got = world.call("GET", f"/v1/trace/{serial}?bundle=1", scope="redeem")
    assert got.status == 200
    with Vault.open(world.server.store) as vault:
        engine = vault.engine_identity
    checks = bundle.verify(got.body, [world.supplier.public, engine])
    assert checks and all(c.ok for c in checks), [c.line() for c in checks]
    detail = problem(world.call("GET", f"/v1/trace/{key}", scope="redeem"), 422, "invalid-request")
    assert "serial" in detail
    problem(world.call("GET", "/v1/trace/7KQ2-00A-0003F", scope="redeem"), 404, "not-found")


def test_manifest_upload(world: World) -> None:
    raw = world.spare.manifest.read_bytes()
    octets = {"Content-Type": "application/octet-stream"}
    reply = world.call("POST", "/v1/manifests", raw=raw, headers=octets)
    assert reply.status == 200 and reply.json()["new"] is True
    assert world.call("POST", "/v1/manifests", raw=raw, headers=octets).json()["new"] is False
    spare_key = world.spare.keys[0]
    assert world.call("POST", "/v1/verify", {"keys": [spare_key]}, scope="verify").json()["results"][0]["status"] \
        == "valid"
    flipped = bytearray(raw)
    flipped[len(flipped) // 2] ^= 1
    detail = problem(world.call("POST", "/v1/manifests", raw=bytes(flipped), headers=octets), 422,
                     "rejected-manifest")
    assert "/tmp" not in detail and ".upload" not in detail
    problem(world.call("POST", "/v1/manifests", raw=raw[:100], headers=octets), 422, "rejected-manifest")
    problem(world.call("POST", "/v1/manifests", raw=raw, headers={"Content-Type": "text/plain"}), 415,
            "unsupported-media-type")


def test_manifest_from_an_unpinned_supplier_is_refused(world: World, tmp_path: Path) -> None:
    stranger = Identity.generate("Stranger Cards")
    with Vault.init(tmp_path / "s") as made:
        batch = issue(made, stranger, tmp_path / "f", count=10)
    reply = world.call("POST", "/v1/manifests", raw=batch.manifest.read_bytes(),
                       headers={"Content-Type": "application/octet-stream"})
    problem(reply, 422, "untrusted-signer")
    assert world.call("POST", "/v1/verify", {"keys": batch.keys[:1]}, scope="verify").json()["results"][0][
        "status"] == "unknown"


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "name"), [
    (b"{", 400, "malformed-json"), (b"\xff\xfe", 400, "malformed-json"), (b"[" * 100_000, 400, "malformed-json"),
    (b"[]", 422, "invalid-request"), (b'"keys"', 422, "invalid-request"), (b"{}", 422, "invalid-request"),
    (b'{"keys": "ABC"}', 422, "invalid-request"), (b'{"keys": [1, 2]}', 422, "invalid-request"),
    (b'{"keys": [null]}', 422, "invalid-request"), (b'{"keys": [], "client": 7}', 422, "invalid-request"),
    (b'{"keys": [], "client": "' + b"x" * 64 + b'"}', 422, "invalid-request"),
    (b'{"keys": [], "client": "tab\\there"}', 422, "invalid-request"),
    (b'{"keys": [1e400]}', 422, "invalid-request"),
])
def test_bad_verify_bodies(world: World, body: bytes, status: int, name: str) -> None:
    reply = world.call("POST", "/v1/verify", raw=body, scope="verify", headers={"Content-Type": "application/json"})
    problem(reply, status, name)


@pytest.mark.parametrize(("body", "name"), [
    ({"key": 5, "order_id": "x"}, "invalid-request"), ({"key": "k"}, "invalid-request"),
    ({"key": "k", "order_id": ""}, "invalid-request"), ({"key": "k", "order_id": "x" * 129}, "invalid-request"),
    ({"key": "k", "order_id": "line\nbreak"}, "invalid-request"), ({"order_id": "x"}, "invalid-request"),
])
def test_bad_redeem_bodies(world: World, body: dict[str, object], name: str) -> None:
    problem(world.call("POST", "/v1/redeem", body, scope="redeem"), 422, name)


def test_a_missing_order_id_is_called_missing(world: World) -> None:
    detail = problem(world.call("POST", "/v1/redeem", {"key": "k"}, scope="redeem"), 422, "invalid-request")
    assert "`order_id` is missing" in detail and "must be" not in detail
    detail = problem(world.call("POST", "/v1/redeem-many", {"items": [{"key": "k"}]}, scope="redeem"), 422,
                     "invalid-request")
    assert "`order_id` is missing - at `$.items[0]`" in detail
    for path, body, field in (("/v1/verify", {}, "keys"), ("/v1/redeem", {"order_id": "A"}, "key"),
                              ("/v1/redeem-many", {}, "items"), ("/v1/hold", {"key": "k"}, "order_id"),
                              ("/v1/confirm", {}, "order_id"), ("/v1/release", {}, "order_id"),
                              ("/v1/void", {"reason": "r"}, "key"), ("/v1/blacklist", {"target": "t"}, "level")):
        detail = problem(world.call("POST", path, body), 422, "invalid-request")
        assert f"`{field}` is missing" in detail, (path, detail)


def test_bad_redeem_many_bodies(world: World) -> None:
    for body in ({"items": "x"}, {"items": [5]}, {"items": [{"key": "k"}]}, {}):
        problem(world.call("POST", "/v1/redeem-many", body, scope="redeem"), 422, "invalid-request")
    too_many = {"items": [{"key": "k", "order_id": str(i)} for i in range(10_001)]}
    problem(world.call("POST", "/v1/redeem-many", too_many, scope="redeem"), 422, "batch-too-large")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/verify", {"keys": [], "clinet": "typo"}),
    ("POST", "/v1/redeem", {"key": "k", "order_id": "U-1", "order": "U-1"}),
    ("POST", "/v1/redeem-many", {"items": [{"key": "k", "order_id": "U-2", "qty": 1}]}),
    ("POST", "/v1/void", {"key": "k", "reason": "r", "force": True}),
    ("POST", "/v1/blacklist", {"level": "key", "target": "k", "reason": "r", "until": "never"}),
    ("DELETE", "/v1/blacklist", {"level": "key", "target": "k", "reason": "r", "x": None}),
])
def test_an_unknown_field_is_refused_naming_it(world: World, method: str, path: str, body: dict[str, object]) -> None:
    unknown = next(iter(set(body) - {"keys", "key", "order_id", "reason", "level", "target", "client", "items"}),
                   "qty")
    detail = problem(world.call(method, path, body), 422, "invalid-request")
    assert f"unknown field `{unknown}`" in detail and "openapi" in detail


@pytest.mark.parametrize(("path", "body", "where"), [
    ("/v1/verify", {"keys": ["k", 7]}, "$.keys[1]"), ("/v1/verify", {"keys": {"k": 1}}, "$.keys"),
    ("/v1/verify", {"keys": [], "client": ["a"]}, "$.client"), ("/v1/redeem", {"key": "k", "order_id": 5}, "$.order_id"),
    ("/v1/redeem", {"key": None, "order_id": "W-1"}, "$.key"),
    ("/v1/redeem-many", {"items": [{"key": "k", "order_id": "W-2"}, {"key": "k", "order_id": True}]},
     "$.items[1].order_id"),
    ("/v1/void", {"key": "k", "reason": 1.5}, "$.reason"),
])
def test_a_wrong_type_is_refused_with_where_it_is(world: World, path: str, body: dict[str, object],
                                                  where: str) -> None:
    detail = problem(world.call("POST", path, body), 422, "invalid-request")
    assert f"at `{where}`" in detail


def test_an_unknown_field_named_like_a_key_is_not_echoed(world: World) -> None:
    [key] = world.take()
    for body in ({"keys": [], key: "x"}, {"items": [{"key": "k", "order_id": "E-1", key.lower(): 1}]}):
        path = "/v1/verify" if "keys" in body else "/v1/redeem-many"
        detail = problem(world.call("POST", path, body), 422, "invalid-request")
        assert "unknown field" in detail and key not in detail and key.lower() not in detail
    nested = problem(world.call("POST", "/v1/redeem-many", {"items": [{"key": "k", "order_id": "E-2", "qty": 1}]}),
                     422, "invalid-request")
    assert "unknown field `qty` - at `$.items[0]`" in nested


def test_a_bad_enum_value_is_refused_without_echoing_it(world: World) -> None:
    [key] = world.take()
    detail = problem(world.call("POST", "/v1/blacklist", {"level": key, "target": "x", "reason": "x"}), 422,
                     "invalid-request")
    assert key not in detail and "key, serial, batch, supplier" in detail


def test_free_text_is_checked_after_decoding(world: World) -> None:
    """Within the length the schema gives, keyvault's text rule still applies: stripped, printable, not blank."""
    for order in (" ", "\u00a0\u00a0", "tab\there"):
        problem(world.call("POST", "/v1/redeem", {"key": "k", "order_id": order}, scope="redeem"), 422,
                "invalid-request")
    problem(world.call("POST", "/v1/void", {"key": "k", "reason": "\x00"}), 422, "invalid-request")
    problem(world.call("POST", "/v1/verify", {"keys": [], "client": "   "}, scope="verify"), 422, "invalid-request")
    [key] = world.take()
    padded = world.call("POST", "/v1/redeem", {"key": key, "order_id": "  P-1  "}, scope="redeem").json()
    assert padded["status"] == "accepted" and padded["order_id"] == "P-1"


def test_too_many_keys_or_items_is_batch_too_large(world: World) -> None:
    detail = problem(world.call("POST", "/v1/verify", {"keys": ["k"] * 10_001}, scope="verify"), 422,
                     "batch-too-large")
    assert "10000 keys" in detail
    detail = problem(world.call("POST", "/v1/redeem-many", {"items": [{"key": "k", "order_id": "B"}] * 10_001},
                                scope="redeem"), 422, "batch-too-large")
    assert "10000 items" in detail
    assert world.call("POST", "/v1/verify", {"keys": ["k"] * 10_000}, scope="verify").status == 200
    problem(world.call("POST", "/v1/verify", raw=b'{"keys": ' + b"[" * 50_000, scope="verify",
                       headers={"Content-Type": "application/json"}), 400, "malformed-json")


def test_openapi_request_schemas_are_the_decoders_types(world: World) -> None:
    """The served document's request schemas are generated from the msgspec types the service decodes with."""
    import msgspec

    from keyvault.service import bodies

    doc = world.call("GET", "/v1/openapi.json", scope="verify").json()
    _, generated = msgspec.json.schema_components(bodies.REQUESTS, ref_template="#/components/schemas/{name}")
    served = doc["components"]["schemas"]
    assert {name: served[name] for name in generated} == json.loads(json.dumps(generated))
    assert served["VerifyRequest"]["properties"]["keys"]["maxItems"] == bodies.MAX_KEYS == 10_000
    assert served["RedeemManyRequest"]["properties"]["items"]["maxItems"] == bodies.MAX_ITEMS
    assert served["VerifyRequest"]["additionalProperties"] is False
    bodies_by_path = {(path, method): op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                      for path, ops in doc["paths"].items() for method, op in ops.items()
                      if "application/json" in op.get("requestBody", {}).get("content", {})}
    assert bodies_by_path == {
        ("/v1/verify", "post"): "#/components/schemas/VerifyRequest",
        ("/v1/redeem", "post"): "#/components/schemas/RedeemRequest",
        ("/v1/redeem-many", "post"): "#/components/schemas/RedeemManyRequest",
        ("/v1/hold", "post"): "#/components/schemas/HoldRequest",
        ("/v1/confirm", "post"): "#/components/schemas/OrderRequest",
        ("/v1/release", "post"): "#/components/schemas/OrderRequest",
        ("/v1/void", "post"): "#/components/schemas/VoidRequest",
        ("/v1/blacklist", "post"): "#/components/schemas/BlacklistRequest",
        ("/v1/blacklist", "delete"): "#/components/schemas/BlacklistRequest",
        ("/v1/webhooks", "post"): "#/components/schemas/WebhookRequest",
        ("/v1/webhooks/{endpoint}/replay", "post"): "#/components/schemas/ReplayRequest",
        ("/v1/blacklist/lift", "post"): "#/components/schemas/BlacklistRequest",
    }


def test_limits(world: World) -> None:
    problem(world.call("POST", "/v1/verify", {"keys": ["k"] * 10_001}, scope="verify"), 422, "batch-too-large")
    big = b'{"keys": ["' + b"A" * (5 << 20) + b'"]}'
    problem(world.call("POST", "/v1/verify", raw=big, scope="verify", headers={"Content-Type": "application/json"}),
            413, "body-too-large")
    assert world.call("POST", "/v1/verify", {"keys": world.keys[-10:] * 1000}, scope="verify").status == 200


def test_protocol_errors(world: World) -> None:
    detail = problem(world.call("GET", "/v1/nothing-here"), 404, "not-found")
    assert "openapi" in detail
    problem(world.call("GET", "/", scope=None), 404, "not-found")
    reply = world.call("GET", "/v1/redeem", scope="redeem")
    problem(reply, 405, "method-not-allowed")
    assert reply.headers["allow"] == "POST"
    problem(world.call("POST", "/v1/verify", raw=b'{"keys": []}', scope="verify"), 415, "unsupported-media-type")
    problem(world.call("POST", "/v1/verify", raw=b'{"keys": []}', scope="verify",
                       headers={"Content-Type": "text/plain"}), 415, "unsupported-media-type")
    ok = world.call("POST", "/v1/verify", raw=b'{"keys": []}', scope="verify",
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status == 200


# -- logs ------------------------------------------------------------------------------------------------------


def test_access_log_has_method_route_status_and_time_but_no_secret(world: World) -> None:
    [key] = world.take()
    world.call("POST", "/v1/redeem", {"key": key, "order_id": "LOG-1"}, scope="redeem")
    world.call("GET", f"/v1/trace/{key}", scope="redeem")
    eventually(lambda: " GET /v1/trace/{serial} 422 " in world.server.log.read_text()
               and " POST /v1/redeem 200 " in world.server.log.read_text(), "an access log line is missing")
    log = world.server.log.read_text()
    lines = [line for line in log.splitlines() if "keyvault.access" in line]
    assert any(re.search(r" POST /v1/redeem 200 [0-9]+\.[0-9]{2}ms request_id=[0-9a-f]{16}$", line) for line in lines)
    assert any(" GET /v1/trace/{serial} 422 " in line for line in lines)
    for secret in [key, "LOG-1", *world.tokens.values()]:
        assert secret not in log
    assert "Traceback" not in log


def test_request_ids_are_taken_when_valid_else_made_and_returned_everywhere(world: World) -> None:
    given = "req-" + "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "\\")[:120]  # 124 visible ASCII
    for rid in (given, "a", "x" * 128, 'q"uote\\d'):
        reply = world.call("POST", "/v1/verify", {"keys": world.keys[-1:]}, scope="verify",
                           headers={"X-Request-Id": rid})
        assert reply.status == 200 and reply.headers["x-request-id"] == rid
    refused = world.call("POST", "/v1/verify", {"keys": []}, scope=None, headers={"X-Request-Id": "trace-me-401"})
    assert problem(refused, 401, "unauthorized") and refused.json()["request_id"] == "trace-me-401"
    made = set()
    for bad in (None, "x" * 129, "two words", "", "caf\u00e9".encode().decode("latin-1"), "tab\there"):
        headers = {} if bad is None else {"X-Request-Id": bad}
        reply = world.call("GET", "/v1/nothing-here", headers=headers)
        rid = problem(reply, 404, "not-found") and reply.headers["x-request-id"]
        assert rid != bad and len(rid) == 16 and all(c in "0123456789abcdef" for c in rid)
        made.add(rid)
    assert len(made) == 6  # a new one each time
    log = world.server.log
    eventually(lambda: "request_id=trace-me-401" in log.read_text() and
               all(f"request_id={rid}" in log.read_text() for rid in made), "a request id is not in the access log")
    line = next(line for line in log.read_text().splitlines() if "request_id=trace-me-401" in line)
    assert " POST /v1/verify 401 " in line and "keyvault.access" in line


def test_a_refusal_before_the_app_carries_a_request_id(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: early-1\r\n" +
                     b"".join(b"X-Pad-%d: v\r\n" % i for i in range(200)) + b"\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"\r\nx-request-id: early-1\r\n" in head
    assert json.loads(body)["request_id"] == "early-1"
    with socket.create_connection(("127.0.0.1", world.server.port), timeout=30) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    rid = json.loads(body)["request_id"]
    assert head.startswith(b"HTTP/1.1 400 ") and len(rid) == 16 and b"x-request-id: " + rid.encode() in head


def test_a_card_key_sent_as_request_id_is_replaced(world: World) -> None:
    from keyvault.service.accesslog import request_id

    key = world.keys[-1]
    for given in (key, key.replace("-", ""), key.lower()):
        made = request_id([(b"x-request-id", given.encode())])
        assert made.decode() != given and len(made) == 16
    assert request_id([(b"x-request-id", b"0" * 32)]) == b"0" * 32  # key-shaped but not a key: kept
    assert request_id([(b"x-request-id", b"550e8400-e29b-41d4-a716-446655440000")]) == \
        b"550e8400-e29b-41d4-a716-446655440000"
    assert request_id([(b"other", b"x"), (b"x-request-id", b"first"), (b"x-request-id", b"second")]) == b"first"
    reply = world.call("POST", "/v1/verify", {"keys": [key]}, scope="verify", headers={"X-Request-Id": key})
    assert reply.status == 200 and reply.headers["x-request-id"] != key


def test_json_log_lines_are_one_object_each(tmp_path: Path) -> None:
    import asyncio
    import logging

    from keyvault.service.accesslog import AccessLog
    from keyvault.service.logs import JsonFormatter, log_config

    record = logging.LogRecord("keyvault.service", logging.ERROR, __file__, 1, "worker [%s] died", (42,), None)
    record.request_id = "r-1"
    record.odd = object()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys as _sys
        record.exc_info = _sys.exc_info()
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "ERROR" and doc["logger"] == "keyvault.service" and doc["message"] == "worker [42] died"
    assert doc["request_id"] == "r-1" and doc["odd"].startswith("<object") and "ValueError: boom" in doc["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])
    with pytest.raises(ValueError, match="text, json"):
        log_config("xml")
    read, write = os.pipe()
    try:
        access = AccessLog(fd=write, log_format="json")

        async def answered() -> None:
            access.add("POST", "/v1/verify", 200, 0.00123, b'q"uote\\d')
            access.add("GET", "/v1/trace/{serial}", 422, 0.5, b"plain")
            await asyncio.sleep(0)

        asyncio.run(answered())
        lines = os.read(read, 65536).decode().splitlines()
    finally:
        os.close(read)
        os.close(write)
    docs = [json.loads(line) for line in lines]
    assert [d["request_id"] for d in docs] == ['q"uote\\d', "plain"]
    assert docs[0]["route"] == "/v1/verify" and docs[0]["status"] == 200 and docs[0]["ms"] == 1.23
    assert all(d["logger"] == "keyvault.access" and d["level"] == "INFO" for d in docs)


# -- start, stop, crash --------------------------------------------------------------------------------------


def test_binding_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    store = tmp_path / "empty"
    Vault.init(store).close()
    done = cli(store, "serve", "--bind", f"0.0.0.0:{free_port()}")
    assert done.returncode == 1 and "no token" in done.stderr and "token create" in done.stderr
    bad = cli(store, "serve", "--bind", "nowhere")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    missing = cli(tmp_path / "absent", "serve", "--bind", f"127.0.0.1:{free_port()}")
    assert missing.returncode == 1 and "init" in missing.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    store = tmp_path / "s"
    Vault.init(store).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = cli(store, "serve", "--bind", f"127.0.0.1:{taken.getsockname()[1]}")
    assert done.returncode == 1 and "choose another port" in done.stderr
    assert "serving" not in done.stderr and "Traceback" not in done.stderr


def test_killing_the_supervisor_stops_every_child_and_the_port_is_free(tmp_path: Path) -> None:
    """SIGKILL to `keyvault serve`: its workers and commit process stop on their own; a restart takes the port."""
    store, _, _, _ = build_world(tmp_path, count=20)
    server = Server(store, tmp_path / "log").start()
    children = server.descendants()
    assert len(children) >= 3  # two workers and the commit process (and multiprocessing's tracker)
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    try:
        eventually(lambda: not any(running(pid) for pid in children), "a child outlived its supervisor", seconds=15)
    finally:
        for pid in children:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    again = Server(store, tmp_path / "log2", port=server.port).start()
    try:
        assert again.request("GET", "/healthz").status == 200
    finally:
        assert again.stop() == 0


def test_a_worker_that_cannot_start_stops_the_service(tmp_path: Path) -> None:
    """A worker whose application cannot load would fail again on every restart: serve() stops and says so."""
    script = ("import sys; from pathlib import Path; from keyvault.service.server import serve; "
              f"sys.exit(0 if serve(Path({str(tmp_path)!r}), None, '127.0.0.1', {free_port()}, 2, "
              "app='no_such_module:create_app', commit_process=False) else 1)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "could not start" in done.stderr and "no_such_module" in done.stderr


def _redeem_load(server: Server, token: str, keys: list[str], stop: threading.Event,
                 acknowledged: list[tuple[str, str]], threads: int = 16) -> list[threading.Thread]:
    """Threads that redeem ``keys`` one by one until told to stop, noting every acknowledged acceptance."""
    lock = threading.Lock()
    pending = iter(enumerate(keys))

    def work() -> None:
        conn = server.connect()
        try:
            while not stop.is_set():
                with lock:
                    item = next(pending, None)
                if item is None:
                    return
                i, key = item
                try:
                    reply = server.request("POST", "/v1/redeem", {"key": key, "order_id": f"L-{i}"}, token=token,
                                           conn=conn)
                except (OSError, http.client.HTTPException):  # the worker went away: unanswered, so not counted
                    conn.close()
                    conn = server.connect()
                    continue
                if reply.status == 200 and reply.json()["status"] == "accepted":
                    with lock:
                        acknowledged.append((key, f"L-{i}"))
        finally:
            conn.close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    return workers


def _all_redeemed(store: Path, acknowledged: list[tuple[str, str]]) -> None:
    with Vault.open(store) as vault:
        results = vault.verify_many([key for key, _ in acknowledged])
    for (_, order), result in zip(acknowledged, results):
        assert result.status is Status.REDEEMED and result.order_id == order


@dataclass
class Load:
    """A service of a test's own, under a load of redeems: what the load has seen acknowledged."""

    server: Server
    keys: list[str]
    acknowledged: list[tuple[str, str]]


@contextmanager
def _under_load(tmp_path: Path, count: int) -> Iterator[Load]:
    """Run the block under 16 threads of redeems. After it: the load stops, the server exits 0 on SIGTERM
    (or already did), and every redeem acknowledged to the load is in the store."""
    store, first, _, _ = build_world(tmp_path, count=count)
    token = make_token(store, "shop", "redeem")
    server = Server(store, tmp_path / "log").start()
    stop, acknowledged = threading.Event(), []  # type: ignore[var-annotated]
    threads = _redeem_load(server, token, first.keys, stop, acknowledged)
    try:
        yield Load(server, first.keys, acknowledged)
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join()
        server.kill()
        raise
    stop.set()
    for thread in threads:
        thread.join()
    assert server.stop() == 0
    _all_redeemed(store, acknowledged)


def _recovers(load: Load) -> None:
    """Redeems are acknowledged again, and the load has keys left (else the test proves less than it says)."""
    before = len(load.acknowledged)
    deadline = time.monotonic() + 30  # generous: it bounds a hang, not speed (a busy machine is slow)
    while len(load.acknowledged) <= before + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(load.acknowledged) > before + 20, "redeems did not resume within 30 s"
    assert len(load.acknowledged) < len(load.keys), "the load ran out of keys: the test proves less than it says"


def test_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    with _under_load(tmp_path, count=4000) as load:
        time.sleep(1.0)
        assert load.server.stop() == 0
    assert len(load.acknowledged) > 50
    assert "Application shutdown complete" in load.server.log.read_text()


def test_a_worker_killed_under_load_loses_no_acknowledged_redeem(tmp_path: Path) -> None:
    with _under_load(tmp_path, count=30_000) as load:
        killed: set[int] = set()
        for _ in range(3):
            victim = random.choice(_two_workers(load.server, killed))
            time.sleep(0.5)
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
        _two_workers(load.server, killed)
        _recovers(load)


def _two_workers(server: Server, killed: set[int]) -> list[int]:
    """Wait until two workers that were not killed run (a killed one lingers a moment in /proc)."""
    deadline = time.monotonic() + 30
    while len(alive := [pid for pid in server.worker_pids() if pid not in killed]) < 2:
        assert time.monotonic() < deadline, "the supervisor did not replace a killed worker"
        time.sleep(0.1)
    return alive


def test_the_commit_process_killed_under_load_loses_no_acknowledged_redeem(tmp_path: Path) -> None:
    with _under_load(tmp_path, count=30_000) as load:
        for _ in range(3):
            time.sleep(0.5)
            victim = load.server.commit_pid()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while load.server.commit_pid() == victim and time.monotonic() < deadline:
                time.sleep(0.05)
            assert load.server.commit_pid() != victim, "no new commit process was started"
        _recovers(load)
    assert "died" in load.server.log.read_text()


# -- schemathesis -------------------------------------------------------------------------------------------


def test_schemathesis_finds_no_server_error_and_no_schema_violation(world: World, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(KEYVAULT).parent))
    if st is None:
        pytest.fail("schemathesis is not installed: `make test` installs it from requirements-dev.txt")
    examples = os.environ.get("KEYVAULT_SCHEMATHESIS_EXAMPLES", "15")
    done = subprocess.run(
        [st, "run", f"http://127.0.0.1:{world.server.port}/v1/openapi.json",
         "-H", f"Authorization: Bearer {world.tokens['admin']}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,response_headers_conformance",
         "--max-examples", examples, "--seed", os.environ.get("KEYVAULT_SCHEMATHESIS_SEED", "20261125"),
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
