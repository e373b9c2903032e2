"""The HTTP service against hostile clients, on the loopback: none of these attacks needs a token.

Each attack runs against a real `keyvault serve` (two workers) with short timeouts given by its flags,
while a legitimate client verifies keys: every legitimate request must succeed (within a generous
bound: timings are never asserted tightly), and every attacking connection must be closed by the server
within the documented timeout plus slack. Counts and durations are bounded: the suite takes well under
a minute.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import issue
from service_support import Server, make_token, rss

from keyvault import Identity, Vault

TIMEOUT = 2.0  # --header-timeout, --body-timeout and --keep-alive of the servers here
SLACK = 8.0  # how much later than its timeout a connection may be closed (a busy 2-vCPU machine)
LEGIT_SECONDS = 30.0  # a legitimate request must be answered within this (generous) bound
FLAGS = ("--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT), "--keep-alive", str(TIMEOUT))


@dataclass
class Site:
    """A running service, a verify token and keys to verify."""

    server: Server
    token: str
    keys: list[str]

    def head(self, method: str = "POST", path: str = "/v1/verify", length: int | None = None,
             token: bool = True) -> bytes:
        """A request head (and no body)."""
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        if token:
            lines.append(f"Authorization: Bearer {self.token}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def make_site(root: Path, *flags: str) -> Site:
    """A platform store with 20 keys, a verify token, and a server started with ``flags``."""
    supplier = Identity.generate("Acme Games")
    with Vault.init(root / "supplier") as made:
        batch = issue(made, supplier, root / "files", count=20)
    store = root / "platform"
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(batch.manifest)
    token = make_token(store, "shop", "verify")
    server = Server(store, root / "server.log", args=flags).start()
    return Site(server, token, batch.keys)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    made = make_site(tmp_path_factory.mktemp("hostile"), *FLAGS)
    try:
        yield made
    finally:
        made.server.kill()


@dataclass
class Legit:
    """A legitimate client verifying a key again and again, each time on a new connection."""

    site: Site
    answers: list[float] = field(default_factory=list)  # seconds each request took
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        key = self.site.keys[0]
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                conn = self.site.server.connect()
                conn.timeout = LEGIT_SECONDS
                reply = self.site.server.request("POST", "/v1/verify", {"keys": [key]}, token=self.site.token,
                                                 conn=conn)
                conn.close()
                if reply.status != 200 or reply.json()["results"][0]["status"] != "valid":
                    self.failures.append(f"{reply.status} {reply.body[:200]!r}")
            except OSError as exc:
                self.failures.append(repr(exc))
            self.answers.append(time.monotonic() - start)
            self.stop.wait(0.2)


def while_legit(site: Site, attack: Callable[[], None], at_least: int = 3) -> Legit:
    """Run ``attack`` while a legitimate client verifies; every one of its requests must have succeeded."""
    legit = Legit(site)
    thread = threading.Thread(target=legit.run)
    thread.start()
    try:
        attack()
        while len(legit.answers) < at_least and thread.is_alive():
            time.sleep(0.05)
    finally:
        legit.stop.set()
        thread.join()
    assert not legit.failures, legit.failures[:5]
    assert len(legit.answers) >= at_least
    assert max(legit.answers) < LEGIT_SECONDS
    return legit


def opened(site: Site, count: int, first: bytes = b"") -> list[socket.socket]:
    """``count`` connections to the service, each having sent ``first``."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", site.server.port), timeout=30)
        if first:
            sock.sendall(first)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def closed_by_server(socks: list[socket.socket], seconds: float,
                     trickle: Callable[[socket.socket], None] | None = None) -> list[bytes]:
    """Wait until the server closed every one of ``socks`` (EOF or reset), at most ``seconds``; what each got.

    ``trickle`` is called on each still-open socket about every 0.3 s (a slow client sending a byte).
    """
    selector = selectors.DefaultSelector()
    got: dict[socket.socket, bytearray] = {}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
        got[sock] = bytearray()
    open_ = set(socks)
    deadline = time.monotonic() + seconds
    next_trickle = time.monotonic()
    while open_ and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:  # reset: closed too
                data = b""
            if data:
                got[sock] += data
            else:
                selector.unregister(sock)
                open_.discard(sock)
        if trickle is not None and time.monotonic() >= next_trickle:
            next_trickle = time.monotonic() + 0.3
            for sock in list(open_):
                try:
                    trickle(sock)
                except OSError:
                    selector.unregister(sock)
                    open_.discard(sock)
    for sock in socks:
        sock.close()
    assert not open_, f"{len(open_)} of {len(socks)} connections still open after {seconds:g} s"
    return [bytes(got[sock]) for sock in socks]


def answer(raw: bytes) -> tuple[int, dict[str, object]]:
    """The status and problem document of a raw HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/problem+json" in head.lower(), head
    return status, json.loads(body)


def exchange(site: Site, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=30) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# -- the head ------------------------------------------------------------------------------------------------


def test_an_oversized_header_is_431_and_the_connection_closed(site: Site) -> None:
    raw = exchange(site, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    status, doc = answer(raw)
    assert status == 431 and doc["type"] == "urn:keyvault:problem:headers-too-large"
    assert "16384 bytes" in str(doc["detail"])
    just_under = site.server.request("GET", "/healthz", headers={"X-Big": "a" * 15_000})
    assert just_under.status == 200


def test_thousands_of_header_lines_are_431(site: Site) -> None:
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(5000))  # beyond the bytes too
    status, doc = answer(exchange(site, b"GET /healthz HTTP/1.1\r\n" + lines + b"\r\n"))
    assert status == 431 and doc["type"] == "urn:keyvault:problem:headers-too-large"
    few = b"".join(b"a: b\r\n" for _ in range(150))  # 900 bytes: over the count, not the bytes
    status, doc = answer(exchange(site, b"GET /healthz HTTP/1.1\r\n" + few + b"\r\n"))
    assert status == 431 and "100 header lines" in str(doc["detail"])


def test_a_long_request_target_is_414(site: Site) -> None:
    status, doc = answer(exchange(site, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 414 and doc["type"] == "urn:keyvault:problem:uri-too-long"


def test_garbage_is_a_400_problem_document(site: Site) -> None:
    status, doc = answer(exchange(site, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n"))
    assert status == 400 and doc["type"] == "urn:keyvault:problem:bad-request"


def test_a_300_mib_header_stream_is_cut_and_worker_memory_stays_bounded(site: Site) -> None:
    """Four connections each stream a header line without end (up to 300 MiB): each is cut near the limit."""
    workers = site.server.worker_pids()
    before = {pid: rss(pid) for pid in workers}
    sent: list[int] = []

    def stream() -> None:
        total = 0
        chunk = b"a" * 65536
        with socket.create_connection(("127.0.0.1", site.server.port), timeout=30) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
                while total < 300 << 20:
                    sock.sendall(chunk)
                    total += len(chunk)
            except OSError:  # the server closed it
                pass
        sent.append(total)

    def attack() -> None:
        threads = [threading.Thread(target=stream) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    while_legit(site, attack)
    # Cut after the limit, what the sockets' buffers hold and the 256 KiB read after the answer: far from 300 MiB.
    assert len(sent) == 4 and max(sent) < 32 << 20, sent
    grown = {pid: rss(pid) - before[pid] for pid in workers}
    assert max(grown.values()) < 32 << 20, grown


def test_slowloris_on_headers_is_closed_with_408(site: Site) -> None:
    """50 connections trickle a header byte every 0.3 s: each is answered 408 and closed."""

    def attack() -> None:
        socks = opened(site, 50, b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        got = closed_by_server(socks, TIMEOUT + SLACK, trickle=lambda sock: sock.send(b"a"))
        statuses = [answer(raw)[0] for raw in got if raw]
        assert statuses and set(statuses) == {408}, statuses

    while_legit(site, attack)


def test_a_slow_body_is_closed_with_408(site: Site) -> None:
    """Bodies trickled a byte every 0.3 s, with a token (the application waits for it) and without."""

    def attack() -> None:
        socks = opened(site, 20, site.head(length=1000) + b'{"keys": [')
        socks += opened(site, 20, site.head(length=1000, token=False) + b'{"keys": [')
        got = closed_by_server(socks, TIMEOUT + SLACK, trickle=lambda sock: sock.send(b" "))
        with_token, without = got[:20], got[20:]
        assert {answer(raw)[0] for raw in with_token if raw} == {408}
        assert all(raw.startswith(b"HTTP/1.1 401 ") for raw in without)  # answered at once, then cut

    while_legit(site, attack)


def test_a_body_that_keeps_coming_is_not_cut(site: Site) -> None:
    """A body slower than its timeout but arriving steadily (64 KiB/s and more) is received whole."""
    body = json.dumps({"keys": site.keys[:1] * 6000}).encode()  # ~200 KB: at ~100 KiB/s about 2 s
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=30) as sock:
        sock.sendall(site.head(length=len(body)))
        for i in range(0, len(body), 10_000):
            sock.sendall(body[i:i + 10_000])
            time.sleep(0.1)
        sock.settimeout(30)
        raw = b""
        while b"\r\n\r\n" not in raw and (chunk := sock.recv(65536)):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:300]


# -- many connections ----------------------------------------------------------------------------------------


def test_1500_idle_connections_do_not_lock_out_a_client_and_are_closed(site: Site) -> None:
    def attack() -> None:
        socks = opened(site, 1500)
        closed_by_server(socks, TIMEOUT + SLACK)

    while_legit(site, attack)


def test_2000_half_open_connections_are_closed(site: Site) -> None:
    """Half-open: 1000 stop inside the request line, 500 close their sending side, 500 send a head and stop."""

    def attack() -> None:
        socks = opened(site, 1000, b"GET /hea")
        shut = opened(site, 500)
        for sock in shut:
            sock.shutdown(socket.SHUT_WR)
        socks += shut + opened(site, 500, site.head(length=10, token=False))
        closed_by_server(socks, TIMEOUT + SLACK)

    while_legit(site, attack)


def test_past_max_connections_the_longest_idle_is_closed_for_a_new_client(tmp_path: Path) -> None:
    """With a keep-alive timeout far away, only closing idle connections can make room for the client."""
    crowded = make_site(tmp_path, "--max-connections", "200", "--keep-alive", "120")
    try:
        socks: list[socket.socket] = []

        def attack() -> None:
            socks.extend(opened(crowded, 1000))  # 2 workers x 200: most are closed as they arrive

        while_legit(crowded, attack)
        alive = 0
        for sock in socks:
            try:
                sock.recv(1)  # b"": closed by the server
            except BlockingIOError:
                alive += 1  # still open: nothing to read
            except OSError:
                pass
            sock.close()
        assert alive <= 2 * 200, alive
    finally:
        crowded.server.kill()


# -- the witness server (`keyvault witness serve`): the same attacks -----------------------------------------


@dataclass
class WitnessServer:
    """`keyvault witness serve` with the short timeouts of FLAGS, on a free port (``port``), and a valid request."""

    proc: Any
    port: int
    body: bytes  # a request it cosigns again and again (the checkpoint it already holds)

    def connect(self) -> Any:
        import http.client

        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=LEGIT_SECONDS)

    def cosign(self) -> int:
        conn = self.connect()
        try:
            conn.request("POST", "/add-checkpoint", body=self.body)
            reply = conn.getresponse()
            reply.read()
            return reply.status
        finally:
            conn.close()


@pytest.fixture(scope="module")
def witness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WitnessServer]:
    import subprocess

    from service_support import KEYVAULT
    from test_witness import request

    from keyvault.engine import newest_checkpoint

    root = tmp_path_factory.mktemp("witness")
    supplier = Identity.generate("Acme Games")
    with Vault.init(root / "store") as vault:
        issue(vault, supplier, root / "files", count=5)
        vault.checkpoint()
        size, note = newest_checkpoint(vault.engine)
        vault.engine_identity.save(root / "engine.pub")
    Identity.generate("witness.example/w1").save(root / "w1.json")
    log = root / "witness.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KEYVAULT, "witness", "serve", "--identity", str(root / "w1.json"), "--state",
                                 str(root / "ws"), "--log", str(root / "engine.pub"), "--port", "0", *FLAGS],
                                stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while "listening on " not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        port = int(log.read_text().split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1].split("/")[0])
        served = WitnessServer(proc, port, request(size, [], note))
        first = WitnessServer(proc, port, request(0, [], note))
        assert first.cosign() == 200
        assert served.cosign() == 200  # the same checkpoint again: cosigned again
        yield served
    finally:
        proc.kill()
        proc.wait()


def witness_legit(witness: WitnessServer, attack: Callable[[], None], at_least: int = 3) -> None:
    """Run ``attack`` while a legitimate client has checkpoints cosigned; every one must have succeeded."""
    answers: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                status = witness.cosign()
                if status != 200:
                    failures.append(str(status))
            except OSError as exc:
                failures.append(repr(exc))
            answers.append(time.monotonic() - start)
            stop.wait(0.2)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        attack()
        while len(answers) < at_least and thread.is_alive():
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:5]
    assert len(answers) >= at_least and max(answers) < LEGIT_SECONDS


def _witness_site(witness: WitnessServer) -> Site:
    """The helpers above take a Site: only its server's port is used."""
    return Site(server=type("S", (), {"port": witness.port})(), token="", keys=[])  # type: ignore[arg-type]


def test_the_witness_refuses_an_oversized_head_and_many_header_lines(witness: WitnessServer) -> None:
    site = _witness_site(witness)
    big = b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    many = b"POST /add-checkpoint HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(5000)) + b"\r\n"
    long_target = b"POST /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    for data, status in ((big, 431), (many, 431), (long_target, 414), (b"\x16\x03\x01junk\r\n\r\n", 400)):
        got = exchange(site, data)
        assert got and answer(got)[0] == status, got[:200]
    assert witness.cosign() == 200


def test_the_witness_refuses_two_authorization_headers(witness: WitnessServer) -> None:
    got = exchange(_witness_site(witness), b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
                   b"Authorization: Bearer b\r\nContent-Length: " + str(len(witness.body)).encode() +
                   b"\r\nConnection: close\r\n\r\n" + witness.body)
    assert got.startswith(b"HTTP/1.1 400"), got[:200]


def test_the_witness_closes_slowloris_heads_and_bodies_and_idle_connections(witness: WitnessServer) -> None:
    site = _witness_site(witness)
    socks: list[socket.socket] = []

    def attack() -> None:
        heads = opened(site, 50, b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        bodies = opened(site, 50, b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nold")
        idle = opened(site, 500)  # never a byte
        socks.extend(heads + bodies + idle)
        got = closed_by_server(heads + bodies, TIMEOUT + SLACK, trickle=lambda s: s.send(b"a"))
        assert all(g.startswith(b"HTTP/1.1 408") for g in got), {g[:40] for g in got}
        closed_by_server(idle, TIMEOUT + SLACK)

    witness_legit(witness, attack)


def test_past_max_connections_the_witness_still_serves(tmp_path: Path, witness: WitnessServer) -> None:
    """The fixture's server holds at most 1,000 connections: 1,500 idle ones cannot lock a client out."""
    site = _witness_site(witness)
    socks: list[socket.socket] = []
    witness_legit(witness, lambda: socks.extend(opened(site, 1500)))
    for sock in socks:
        sock.close()
