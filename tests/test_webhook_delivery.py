"""Webhooks from the event log: every committed change delivered at least once, in order, signed per Standard
Webhooks (checked by the reference `standardwebhooks` package), through failing receivers, pauses, replays and
a SIGKILLed delivery worker; never one for a change that did not commit, never a card key in a payload."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from cli_support import kv, ok, one_json
from conftest import Issued, eventually
from keyvault import Vault
from keyvault.errors import NotFoundError, UsageError
from keyvault.formats import webhooks as signing
from keyvault.service.delivery import Delivery, backoff

SECRET = signing.make_secret()


class Receiver:
    """A local webhook receiver: verifies every delivery with `standardwebhooks`, or fails as told."""

    def __init__(self, port: int = 0, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.attempts: list[str] = []  # webhook-id of every request, failed ones included
        self.got: list[tuple[str, dict[str, Any]]] = []  # (id, payload) of every accepted delivery
        self.fail_with: list[str] = []  # what the next requests get: "500", "slow"
        self.delay = 0.0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner.lock:
                    owner.attempts.append(headers.get("webhook-id", ""))
                    mode = owner.fail_with.pop(0) if owner.fail_with else ""
                if mode == "slow":
                    time.sleep(1.5)  # past the worker's timeout
                elif owner.delay:
                    time.sleep(owner.delay)
                if mode == "500":
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                payload = owner.verifier.verify(body, headers)  # raises on a bad signature: no 2xx then
                with owner.lock:
                    owner.got.append((headers["webhook-id"], payload))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        with self.lock:
            return [i for i, _ in self.got]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def delivery(platform: Vault) -> Iterator[Delivery]:
    d = Delivery(platform, timeout=0.5, retry_base=0.02, retry_cap=0.2, poll=0.02)
    yield d
    d.stop()


def _events(r: Receiver) -> list[dict[str, Any]]:
    with r.lock:
        return [p for _, p in r.got]


def _first_occurrences(r: Receiver) -> list[int]:
    seen: dict[str, int] = {}
    for i, p in r.got:
        seen.setdefault(i, p["data"]["event"])
    return list(seen.values())


def test_every_committed_change_is_delivered_signed_in_order_without_a_key(
        platform: Vault, issued: Issued, receiver: Receiver, delivery: Delivery) -> None:
    endpoint = platform.webhooks.add(receiver.url, "redeem,void,blacklist,lift", SECRET)
    for i, key in enumerate(issued.keys[:20]):
        assert platform.redeem(key, f"order-{i}").ok
    platform.void(issued.serials[30], "lost in the post")
    platform.blacklist("serial", issued.serials[31], "fraud")
    platform.blacklist.lift("serial", issued.serials[31], "cleared")
    delivery.start()
    eventually(lambda: len(receiver.got) == 23, "all 23 events delivered")
    events = _events(receiver)
    assert [e["type"] for e in events] == ["redeem"] * 20 + ["void", "blacklist", "lift"]
    indices = [e["data"]["event"] for e in events]
    assert indices == sorted(indices) and len(set(indices)) == 23
    assert [e["data"]["serial"] for e in events[:20]] == issued.serials[:20]
    assert events[0]["data"]["order_id"] == "order-0" and events[0]["data"]["status"] == "redeemed"
    assert events[0]["data"]["batch"] == issued.batch.id
    assert events[20]["data"] == {**events[20]["data"], "reason": "lost in the post", "status": "voided"}
    assert events[21]["data"]["target"] == issued.serials[31]
    everything = json.dumps(events) + "".join(receiver.ids())
    assert not any(key in everything for key in issued.keys)
    eventually(lambda: platform.webhooks.stats()[0]["pending"] == 0, "acknowledged")
    stats = platform.webhooks.stats()[0]
    assert stats["id"] == endpoint["id"] and stats["delivered"] == 23 and not stats["failing"]


def test_only_subscribed_kinds_and_only_from_when_added(platform: Vault, issued: Issued, receiver: Receiver,
                                                         delivery: Delivery) -> None:
    platform.redeem(issued.keys[0], "before")  # before the endpoint: not sent (replay sends it)
    platform.webhooks.add(receiver.url, ["void"], SECRET)
    platform.redeem(issued.keys[1], "o1")
    platform.void(issued.serials[2], "damaged")
    delivery.start()
    eventually(lambda: len(receiver.got) == 1, "the void delivered")
    time.sleep(0.2)
    assert [e["type"] for e in _events(receiver)] == ["void"]


def test_refused_or_uncommitted_changes_send_nothing(platform: Vault, issued: Issued, receiver: Receiver,
                                                     delivery: Delivery) -> None:
    platform.webhooks.add(receiver.url, "redeem,void,blacklist", SECRET)
    assert platform.redeem(issued.keys[0], "A").ok
    assert not platform.redeem(issued.keys[0], "B").ok  # already redeemed: refused, no event
    assert not platform.redeem("NOT-A-KEY", "C").ok

    def crash(txn: Any) -> None:  # an event appended, then the transaction dies before its commit
        platform.engine.log.append(txn, "blacklist", 1, {"level": "serial", "target": "x", "reason": "y"}, [])
        raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        platform.engine.store.write(crash)
    platform.void(issued.serials[1], "last")
    delivery.start()
    eventually(lambda: len(receiver.got) == 2, "both committed changes delivered")
    time.sleep(0.3)
    assert [(e["type"], e["data"]["serial"]) for e in _events(receiver)] == [
        ("redeem", issued.serials[0]), ("void", issued.serials[1])]


def test_failing_receiver_then_recovering_gets_everything_in_order_with_stable_ids(
        platform: Vault, issued: Issued, receiver: Receiver, delivery: Delivery) -> None:
    platform.webhooks.add(receiver.url, "redeem", SECRET)
    receiver.fail_with = ["500"] * 4 + ["slow"] * 2 + ["500"] * 2
    for i, key in enumerate(issued.keys[:30]):
        platform.redeem(key, f"o{i}")
    delivery.start()
    eventually(lambda: len(set(receiver.ids())) == 30, "every redeem delivered once the receiver recovered")
    # The first message was tried again and again with the same id; nothing was skipped or reordered.
    assert receiver.attempts[:9].count(receiver.attempts[0]) >= 5
    assert _first_occurrences(receiver) == sorted(_first_occurrences(receiver))
    assert [p["data"]["serial"] for _, p in receiver.got if True][:1] == [issued.serials[0]]
    assert len({p["data"]["event"] for _, p in receiver.got}) == 30


def test_connection_refused_is_failing_in_stats_then_recovers(platform: Vault, issued: Issued,
                                                               delivery: Delivery) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    endpoint = platform.webhooks.add(f"http://127.0.0.1:{port}/hooks", "redeem", SECRET)
    for i, key in enumerate(issued.keys[:5]):
        platform.redeem(key, f"o{i}")
    delivery.start()
    eventually(lambda: platform.webhooks.stats()[0]["failing"], "the endpoint reported failing")
    stats = platform.webhooks.stats()[0]
    assert stats["pending"] == 5 and stats["delivered"] == 0 and "Refused" in stats["last_error"]
    late = Receiver(port)
    try:
        eventually(lambda: len(set(late.ids())) == 5, "delivered once the receiver listens")
        eventually(lambda: not platform.webhooks.stats()[0]["failing"], "no longer failing")
        assert platform.webhooks.get(endpoint["id"])["last_error"]  # the last error stays for the operator
    finally:
        late.close()


def test_a_redeem_never_waits_for_a_dead_receiver(platform: Vault, issued: Issued, receiver: Receiver,
                                                  delivery: Delivery) -> None:
    platform.webhooks.add(receiver.url, "redeem", SECRET)
    receiver.fail_with = ["slow"] * 1000
    delivery.start()
    platform.redeem(issued.keys[0], "first")
    eventually(lambda: len(receiver.attempts) >= 1, "the worker is stuck on a slow receiver")
    results = [platform.redeem(key, f"o{i}") for i, key in enumerate(issued.keys[1:50])]
    assert all(r.ok for r in results)  # redeems committed while the worker waits on the receiver


def test_paused_endpoint_accumulates_and_resumes(platform: Vault, issued: Issued, receiver: Receiver,
                                                 delivery: Delivery) -> None:
    endpoint = platform.webhooks.add(receiver.url, "redeem", SECRET)
    platform.webhooks.pause(endpoint["id"])
    delivery.start()
    for i, key in enumerate(issued.keys[:10]):
        platform.redeem(key, f"o{i}")
    time.sleep(0.4)
    assert receiver.got == [] and platform.webhooks.stats()[0]["pending"] == 10
    platform.webhooks.resume(endpoint["id"])
    eventually(lambda: len(receiver.got) == 10, "the paused events delivered on resume")
    assert _first_occurrences(receiver) == sorted(_first_occurrences(receiver))


def test_replay_sends_again_with_the_same_ids(platform: Vault, issued: Issued, receiver: Receiver,
                                              delivery: Delivery) -> None:
    start = int(time.time() * 1000) - 1000
    platform.redeem(issued.keys[0], "early")  # before the endpoint existed
    endpoint = platform.webhooks.add(receiver.url, "redeem", SECRET)
    for i, key in enumerate(issued.keys[1:4]):
        platform.redeem(key, f"o{i}")
    delivery.start()
    eventually(lambda: len(receiver.got) == 3, "three delivered")
    first = receiver.ids()
    platform.webhooks.replay(endpoint["id"], start)
    eventually(lambda: len(receiver.got) == 7, "four more replayed (the one from before the endpoint too)")
    again = receiver.ids()[3:]
    assert again[1:] == first and again[0] not in first
    platform.webhooks.replay(endpoint["id"], int(time.time() * 1000) + 60_000)  # nothing that late
    time.sleep(0.3)
    assert len(receiver.got) == 7


def test_bad_endpoints_are_refused_and_change_nothing(platform: Vault) -> None:
    for url in ("ftp://x/y", "not a url", "http:///nohost", "https://user:pw@host/x"):
        with pytest.raises(UsageError):
            platform.webhooks.add(url, "redeem", SECRET)
    with pytest.raises(UsageError, match="unknown webhook event"):
        platform.webhooks.add("https://h/x", "redeem,refund", SECRET)
    with pytest.raises(UsageError):
        platform.webhooks.add("https://h/x", "redeem", "plaintext-password")
    with pytest.raises(NotFoundError):
        platform.webhooks.pause("ep_nope")
    assert platform.webhooks.list() == []
    made = platform.webhooks.add("https://h/x", "redeem")
    assert made["secret"].startswith("whsec_") and "secret" not in platform.webhooks.list()[0]
    assert "secret" not in repr(platform.webhooks.list())


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    for attempts in range(1, 40):
        delay = backoff(attempts, 1.0, 300.0)
        ceiling = min(300.0, 2.0 ** (attempts - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len({backoff(5, 1.0, 300.0) for _ in range(20)}) > 1


def test_cli_webhook_commands(tmp_path: Path, world: Any, receiver: Receiver) -> None:
    store = str(world.platform)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    added = one_json(ok("--store", store, "webhook", "add", receiver.url, "--events", "redeem,void",
                        "--secret-file", secret_file, "--json"))
    assert "secret" not in added and added["events"] == ["redeem", "void"]
    made = one_json(ok("--store", store, "webhook", "add", "https://h/x", "--events", "void", "--generate-secret",
                       "--json"))
    assert made["secret"].startswith("whsec_")
    listed = one_json(ok("--store", store, "webhook", "list", "--json"))
    assert {e["id"] for e in listed} == {added["id"], made["id"]} and "secret" not in json.dumps(listed)
    assert one_json(ok("--store", store, "webhook", "pause", made["id"], "--json"))["paused"] is True
    assert one_json(ok("--store", store, "webhook", "resume", made["id"], "--json"))["paused"] is False
    ok("--store", store, "webhook", "remove", made["id"])
    bad = kv("--store", store, "webhook", "add", "https://h/x", "--events", "refund", "--generate-secret")
    assert bad.exit_code != 0 and "unknown webhook event" in bad.output
    bad = kv("--store", store, "webhook", "add", "https://h/x", "--events", "void")
    assert bad.exit_code == 2
    assert kv("--store", store, "webhook", "remove", "ep_nope").exit_code == 1
    ok("--store", store, "redeem", world.keys[0], "--order", "cli-1")
    ok("--store", store, "webhook", "replay", added["id"], "--since", "2000-01-01")
    rows = one_json(ok("--store", store, "webhook", "stats", "--json"))
    assert [(r["id"], r["pending"]) for r in rows] == [(added["id"], 1)]


def _worker(store: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()}
    return subprocess.Popen([sys.executable, "-I", "-c", "from keyvault.cli.main import main; main()", "--store", str(store), "webhook", "run",
                             "--timeout", "2", "--retry-base", "0.05", "--retry-cap", "0.5"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkilled_worker_resumes_and_loses_nothing(platform: Vault, issued: Issued, receiver: Receiver) -> None:
    platform.webhooks.add(receiver.url, "redeem", SECRET)
    for i, key in enumerate(issued.keys[:150]):
        platform.redeem(key, f"o{i}")
    receiver.delay = 0.005
    store = platform.path
    worker = _worker(store)
    try:
        eventually(lambda: len(receiver.got) >= 40, "the first worker delivered some", seconds=60)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        got = len(set(receiver.ids()))
        assert got < 150, "the worker was killed mid-delivery"
        worker = _worker(store)
        eventually(lambda: len(set(receiver.ids())) == 150, "the restarted worker delivered the rest", seconds=60)
    finally:
        worker.kill()
        worker.wait()
    assert _first_occurrences(receiver) == sorted(_first_occurrences(receiver))
    by_id: dict[str, dict[str, Any]] = {}
    for i, p in receiver.got:  # a duplicate is the same message: same id, same payload
        assert by_id.setdefault(i, p) == p


def test_serve_delivers_webhooks_of_http_redeems(tmp_path: Path, world: Any, receiver: Receiver) -> None:
    from service_support import Server, make_token

    with Vault.open(world.platform) as vault:
        vault.webhooks.add(receiver.url, "redeem", SECRET)
    token = make_token(world.platform, "shop", "redeem")
    server = Server(world.platform, tmp_path / "serve.log", workers=1).start()
    try:
        for i, key in enumerate(world.keys[:5]):
            reply = server.request("POST", "/v1/redeem", {"key": key, "order_id": f"web-{i}"}, token=token)
            assert reply.status == 200, reply.body
        eventually(lambda: len(set(receiver.ids())) == 5, "the service's supervisor delivered every redeem")
        assert [p["data"]["order_id"] for p in _events(receiver)][:5] == [f"web-{i}" for i in range(5)]
    finally:
        assert server.stop() == 0


def test_first_use_from_many_threads_opens_the_endpoints_once(platform: Vault) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        try:
            platform.webhooks.list()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_webhook_admin_routes_over_http(tmp_path: Path, world: Any, receiver: Receiver) -> None:
    """/v1/webhooks: list, add (a made secret answered once), pause, resume, replay, stats, remove, over real HTTP;
    bad input refused with a problem that changes nothing; a redeem-scope token or none refused."""
    import msgspec
    from service_support import Server, make_token

    from keyvault.service.schemas import WebhookEndpoint, WebhookEndpoints, WebhookStatsList

    admin = make_token(world.platform, "ops", "admin")
    shop = make_token(world.platform, "shop", "redeem")
    server = Server(world.platform, tmp_path / "serve.log", workers=1).start()

    def call(method: str, path: str, body: object = None, token: str | None = admin) -> Any:
        return server.request(method, path, body, token=token)

    try:
        assert call("GET", "/v1/webhooks").json() == {"endpoints": []}
        made = call("POST", "/v1/webhooks", {"url": receiver.url, "events": ["redeem"]})
        assert made.status == 200, made.body
        added = msgspec.convert(made.json(), WebhookEndpoint)
        assert added.secret and added.secret.startswith("whsec_") and added.events == ["redeem"]
        receiver.verifier = Webhook(added.secret)  # the receiver is given the secret made
        hook = added.id
        listed = call("GET", "/v1/webhooks")
        assert added.secret not in listed.body.decode() and "secret" not in listed.json()["endpoints"][0]
        assert [e.id for e in msgspec.convert(listed.json(), WebhookEndpoints).endpoints] == [hook]
        for i, key in enumerate(world.keys[:2]):
            assert call("POST", "/v1/redeem", {"key": key, "order_id": f"h-{i}"}, token=shop).status == 200
        eventually(lambda: len(set(receiver.ids())) == 2, "an endpoint added over HTTP is delivered to")

        assert call("POST", f"/v1/webhooks/{hook}/pause").json()["paused"] is True
        call("POST", "/v1/redeem", {"key": world.keys[2], "order_id": "h-2"}, token=shop)
        time.sleep(0.5)
        stats = msgspec.convert(call("GET", "/v1/webhooks/stats").json(), WebhookStatsList).endpoints
        assert stats[0].paused and stats[0].pending == 1 and stats[0].delivered == 2
        assert len(set(receiver.ids())) == 2  # paused: the third waits
        assert call("POST", f"/v1/webhooks/{hook}/resume").json()["paused"] is False
        eventually(lambda: len(set(receiver.ids())) == 3, "a resumed endpoint gets what waited")

        first = receiver.ids()[0]
        replayed = call("POST", f"/v1/webhooks/{hook}/replay", {"since": "2000-01-01"})
        assert replayed.status == 200 and replayed.json()["cursor"] == 0 and replayed.json()["epoch"] == 1
        eventually(lambda: receiver.ids().count(first) == 2, "a replay sends the first event again, same id")

        given = call("POST", "/v1/webhooks", {"url": receiver.url + "/2", "events": ["void", "redeem"],
                                              "secret": SECRET})
        assert given.status == 200 and "secret" not in given.json() and SECRET not in given.body.decode()
        second = given.json()["id"]

        def settings() -> list[dict[str, object]]:  # what a request could change: not the replay's delivery progress
            return [{k: v for k, v in endpoint.items() if k in ("id", "url", "events", "paused", "epoch", "created_at")}
                    for endpoint in call("GET", "/v1/webhooks").json()["endpoints"]]

        before = settings()
        bad: list[tuple[str, str, object, int]] = [
            ("POST", "/v1/webhooks", {"url": "ftp://example.com/x", "events": ["redeem"]}, 422),
            ("POST", "/v1/webhooks", {"url": "https://user:pw@example.com/x", "events": ["redeem"]}, 422),
            ("POST", "/v1/webhooks", {"url": receiver.url, "events": ["KV2F-Q7RM-2KTC-XA9B-5HJN"]}, 422),
            ("POST", "/v1/webhooks", {"url": receiver.url, "events": []}, 422),
            ("POST", "/v1/webhooks", {"url": receiver.url}, 422),
            ("POST", "/v1/webhooks", {"url": receiver.url, "events": ["redeem"], "secret": "hunter2"}, 422),
            ("POST", "/v1/webhooks", {"url": receiver.url, "events": ["redeem"], "more": 1}, 422),
            ("POST", "/v1/webhooks", "[1, 2", 400),
            ("POST", f"/v1/webhooks/{hook}/replay", {"since": "yesterday"}, 422),
            ("POST", f"/v1/webhooks/{hook}/replay", {}, 422),
            ("POST", "/v1/webhooks/ep_0123456789abcdef/pause", None, 404),
            ("DELETE", "/v1/webhooks/ep_0123456789abcdef", None, 404),
            ("POST", "/v1/webhooks/KV2F-Q7RM-2KTC-XA9B-5HJN/pause", None, 404),
            ("POST", f"/v1/webhooks/{hook}/explode", None, 404),
            ("GET", f"/v1/webhooks/{hook}", None, 405),
            ("PUT", "/v1/webhooks", None, 405),
        ]
        for method, path, body, status in bad:
            if isinstance(body, str):
                reply = server.request(method, path, None, token=admin, raw=body.encode(),
                                       headers={"Content-Type": "application/json"})
            else:
                reply = call(method, path, body)
            assert reply.status == status, (method, path, body, reply.body)
            assert reply.headers["content-type"] == "application/problem+json", reply.body
            assert "KV2F-Q7RM" not in reply.body.decode() and "hunter2" not in reply.body.decode()
        assert settings() == before  # nothing changed

        for method, path, body in [("GET", "/v1/webhooks", None), ("GET", "/v1/webhooks/stats", None),
                                   ("POST", "/v1/webhooks", {"url": receiver.url, "events": ["redeem"]}),
                                   ("POST", f"/v1/webhooks/{hook}/pause", None),
                                   ("DELETE", f"/v1/webhooks/{hook}", None)]:
            assert call(method, path, body, token=shop).status == 403
            assert server.request(method, path, body).status == 401
        assert settings() == before

        removed = call("DELETE", f"/v1/webhooks/{second}")
        assert removed.status == 200 and removed.json()["id"] == second and "secret" not in removed.json()
        assert call("DELETE", f"/v1/webhooks/{second}").status == 404
        assert [e["id"] for e in call("GET", "/v1/webhooks").json()["endpoints"]] == [hook]
        doc = call("GET", "/v1/openapi.json").json()
        assert {"/v1/webhooks", "/v1/webhooks/stats", "/v1/webhooks/{endpoint}", "/v1/webhooks/{endpoint}/pause",
                "/v1/webhooks/{endpoint}/resume", "/v1/webhooks/{endpoint}/replay"} <= doc["paths"].keys()
        schemas = doc["components"]["schemas"]
        assert set(schemas["WebhookRequest"]["properties"]["events"]["items"]["enum"]) >= {"redeem", "void"}
        assert schemas["WebhookEndpoint"]["properties"].keys() >= {"id", "url", "paused", "cursor", "secret"}
    finally:
        assert server.stop() == 0
    with Vault.open(world.platform) as vault:  # the CLI sees what HTTP did
        assert [e["id"] for e in vault.webhooks.list()] == [hook]


def test_each_way_a_receiver_may_frame_its_answer_is_read_and_the_connection_kept_or_made_again(
        platform: Vault, issued: Issued, delivery: Delivery) -> None:
    """The worker writes each message at once and reads the answer as HTTP/1.1 allows it to come: a body by
    length, a chunked body, no body, a body too long to read (the connection is then dropped), a receiver that
    closes after answering. Every message arrives once, in order, signed, and none is sent twice."""
    verifier = Webhook(SECRET)
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
               b"HTTP/1.1 204 No Content\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200000,
               b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"]
    got: list[str] = []
    connections = [0]
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            connections[0] += 1
            with conn, conn.makefile("rb") as reader:
                while True:
                    try:
                        line = reader.readline()
                    except ConnectionError:  # the worker dropped the connection (a body it did not read)
                        break
                    if not line:
                        break
                    headers = {}
                    while (header := reader.readline()) not in (b"\r\n", b""):
                        name, _, value = header.decode().partition(":")
                        headers[name.strip().lower()] = value.strip()
                    body = reader.read(int(headers["content-length"]))
                    verifier.verify(body, headers)
                    answer = answers[len(got) % len(answers)]
                    got.append(headers["webhook-id"])
                    conn.sendall(answer)
                    if b"close" in answer:
                        break  # (after the long body the connection stays: reading on would be wrong)

    threading.Thread(target=serve, daemon=True).start()
    try:
        platform.webhooks.add(f"http://127.0.0.1:{server.getsockname()[1]}/hooks", "redeem", SECRET)
        for i, key in enumerate(issued.keys[:12]):
            assert platform.redeem(key, f"order-{i}").ok
        delivery.start()
        eventually(lambda: len(got) >= 12, "12 messages delivered")
        time.sleep(0.2)
        assert len(got) == len(set(got)) == 12  # once each: every answer was read as the 2xx it was
        assert [int(i.rsplit("_", 1)[1]) for i in got] == sorted(int(i.rsplit("_", 1)[1]) for i in got)
        assert connections[0] >= 4  # dropped after the long body and after "close", kept otherwise
        assert connections[0] < 12
    finally:
        server.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own niceness on Linux")
def test_delivery_threads_run_below_the_process(platform: Vault, receiver: Receiver, delivery: Delivery) -> None:
    """On a machine with no CPU to spare, redeems come first: each endpoint's thread is scheduled ``nice`` steps
    below the process, and the process itself (its redeeming threads) is left as it was."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    endpoint = platform.webhooks.add(receiver.url, "redeem", SECRET)
    delivery.start()
    eventually(lambda: any(t.name == f"keyvault-webhook-{endpoint['id']}" and t.native_id is not None
                           for t in threading.enumerate()), "the endpoint's thread running")
    thread = next(t for t in threading.enumerate() if t.name == f"keyvault-webhook-{endpoint['id']}")
    eventually(lambda: os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(19, before + 10),  # type: ignore[arg-type]
               "the endpoint's thread lowered")
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
