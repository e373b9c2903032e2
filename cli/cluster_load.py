"""Load and judgement for the local cluster: many clients redeeming the same keys, faults injected, and
one checker comparing every acknowledged answer with what PostgreSQL holds (docs/cluster.md).

The workload here is the bare form of a redeem: ``INSERT … ON CONFLICT DO NOTHING`` on a table of
serials, each client on its own connection over the cluster's multi-host DSN
(``target_session_attrs=read-write``), with its own deadline per request. An answer is definite
(accepted for this order, or refused naming the order that holds the key) or *unknown* (the
connection failed or the deadline passed: the HTTP service answers 503 here); an unknown redeem is
retried later with the same order id, as a platform would.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from keyvault import KeyvaultError

ACCEPTED, REFUSED, UNKNOWN = "accepted", "refused", "unknown"
TABLE = "cluster_redeems"


class LoadError(KeyvaultError):
    """The load cannot run; the message says what to do."""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise LoadError("the cluster load needs psycopg: `pip install 'psycopg[binary]'` "
                        "(`make test-cluster` installs it)") from None
    return psycopg


@dataclass(frozen=True)
class Answer:
    """One redeem's answer as the client saw it."""

    serial: str
    order: str
    outcome: str  # accepted, refused, unknown
    holder: str | None  # the order that holds the key, for accepted and refused
    at: float  # time.monotonic() when the answer arrived
    client: int
    sent: float = 0.0  # time.monotonic() when the request was sent
    server: int = 0  # the PostgreSQL port that answered (0: none)


@dataclass
class Verdict:
    """What the checker found: the promise holds when ``ok``."""

    answers: int = 0
    acknowledged: int = 0  # distinct (serial, order) pairs accepted
    stored: int = 0  # rows PostgreSQL holds
    unknown: int = 0  # answers that were neither accepted nor refused (503)
    lost: list[str] = field(default_factory=list)  # acknowledged, and PostgreSQL does not hold it for that order
    doubles: list[str] = field(default_factory=list)  # a serial accepted for two orders
    wrong_refusals: list[str] = field(default_factory=list)  # refused naming an order that does not hold it
    indefinite: list[str] = field(default_factory=list)  # an answer that is none of the three

    @property
    def ok(self) -> bool:
        """0 acknowledged redeems lost, 0 keys accepted for two orders, every answer definite or 503."""
        return not (self.lost or self.doubles or self.wrong_refusals or self.indefinite)

    def summary(self) -> str:
        """One line for people."""
        return (f"{self.answers} answers: {self.acknowledged} acknowledged, {self.stored} stored, "
                f"{len(self.lost)} lost, {len(self.doubles)} doubles, {len(self.wrong_refusals)} wrong refusals, "
                f"{len(self.indefinite)} indefinite, {self.unknown} unknown (503)")


def check(answers: list[Answer], holdings: dict[str, str]) -> Verdict:
    """Judge every answer against ``holdings`` (serial -> order, read from PostgreSQL after the run)."""
    verdict = Verdict(answers=len(answers), stored=len(holdings))
    accepted: dict[str, set[str]] = {}
    for answer in answers:
        if answer.outcome == ACCEPTED:
            accepted.setdefault(answer.serial, set()).add(answer.order)
        elif answer.outcome == REFUSED:
            # a refusal names the holder it saw; a definite answer must agree with what is stored
            if answer.holder is None or answer.holder == answer.order or holdings.get(answer.serial) != answer.holder:
                verdict.wrong_refusals.append(f"{answer.serial}: refused naming {answer.holder}, "
                                              f"PostgreSQL holds {holdings.get(answer.serial)}")
        elif answer.outcome == UNKNOWN:
            verdict.unknown += 1
        else:
            verdict.indefinite.append(f"{answer.serial}: {answer.outcome}")
    for serial, orders in accepted.items():
        verdict.acknowledged += len(orders)
        if len(orders) > 1:
            verdict.doubles.append(f"{serial}: accepted for {sorted(orders)}")
        for order in orders:
            if holdings.get(serial) != order:
                verdict.lost.append(f"{serial}: acknowledged for {order}, PostgreSQL holds {holdings.get(serial)}")
    return verdict


def prepare(dsn: str) -> None:
    """Create the redeem table (empty) on the primary."""
    psycopg = _psycopg()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (serial text PRIMARY KEY, order_id text NOT NULL, "
                     "at timestamptz NOT NULL DEFAULT clock_timestamp())")


def holdings(dsn: str, timeout: float = 60.0) -> dict[str, str]:
    """serial -> order as the primary holds it (retrying until a primary answers)."""
    psycopg = _psycopg()
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return {serial: order for serial, order in conn.execute(f"SELECT serial, order_id FROM {TABLE}")}
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextmanager
def deadline(conn: Any, seconds: float) -> Iterator[None]:
    """Break ``conn``'s socket if the block is still running after ``seconds``.

    Not a query cancel: a commit waiting for its synchronous standby that is cancelled is reported
    *committed* by PostgreSQL (with a warning), which would turn an unreplicated commit into an
    acknowledged one. Shutting the socket makes the answer unknown instead.
    """
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        try:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


#: One client's redeem: (serial, order) -> (outcome, holder, server that answered).
Redeem = Callable[[str, str], tuple[str, "str | None", int]]


class Load:
    """``clients`` threads redeeming serials from a shared pool, each with its own client, until stopped.

    ``client(i)`` makes client i's redeem function: it answers (outcome, holder, server) or raises
    ``Unknown`` (the answer is unknown: retried later with the same order).
    """

    def __init__(self, client: Callable[[int], Redeem], serials: list[str], clients: int = 8,
                 orders_per_serial: int = 3, seed: int | None = None) -> None:
        """A load of ``clients`` clients made by ``client`` over ``serials``."""
        self.client = client
        self.serials = serials
        self.clients = clients
        self.orders_per_serial = orders_per_serial
        self.seed = random.randrange(1 << 30) if seed is None else seed
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self) -> Load:
        """Start the clients."""
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"load-{i}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 60.0) -> list[Answer]:
        """Stop the clients, wait for them, and return every answer."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            return list(self.answers)

    def accepted_since(self, moment: float) -> int:
        """How many redeems were accepted after ``moment`` (time.monotonic())."""
        with self._lock:
            return sum(1 for a in self.answers if a.outcome == ACCEPTED and a.at > moment)

    def first_accepted_after(self, moment: float, not_on: int = 0) -> float | None:
        """When the first redeem sent after ``moment`` and accepted (by a server other than ``not_on``) arrived."""
        with self._lock:
            return min((a.at for a in self.answers if a.outcome == ACCEPTED and a.sent > moment
                        and a.server != not_on), default=None)

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        redeem = self.client(index)
        pending: list[tuple[str, str]] = []  # unknown answers, retried with the same order
        while not self._stop.is_set():
            if pending and rng.random() < 0.5:
                serial, order = pending.pop(0)
            else:
                serial = rng.choice(self.serials)
                order = f"order-{serial}-{rng.randrange(self.orders_per_serial)}"
            sent = time.monotonic()
            try:
                outcome, holder, server = redeem(serial, order)
            except Unknown as exc:
                outcome, holder, server = UNKNOWN, None, exc.server
                pending.append((serial, order))
                if len(self.errors) < 50:
                    self.errors.append(str(exc)[:300])
                time.sleep(0.05)
            except Exception as exc:  # noqa: BLE001 - an answer that is neither definite nor unknown: judged
                outcome, holder, server = f"exception {type(exc).__name__}: {exc}"[:300], None, 0
            with self._lock:
                self.answers.append(Answer(serial, order, outcome, holder, time.monotonic(), index, sent, server))
        close = getattr(redeem, "close", None)
        if close is not None:
            close()


class Unknown(Exception):
    """The redeem's outcome is not known (503, a cut connection, a deadline passed)."""

    def __init__(self, message: str, server: int = 0) -> None:
        """``server``: the port that was asked, when known."""
        super().__init__(message)
        self.server = server


class SqlClient:
    """The bare redeem: INSERT … ON CONFLICT DO NOTHING on the primary, then a read for the losers."""

    def __init__(self, dsn: str, request_deadline: float = 8.0) -> None:
        """A client on its own connection over ``dsn``."""
        self.psycopg = _psycopg()
        self.dsn = dsn
        self.request_deadline = request_deadline
        self.conn: Any = None

    def __call__(self, serial: str, order: str) -> tuple[str, str | None, int]:
        """Redeem ``serial`` for ``order``."""
        psycopg = self.psycopg
        server = 0
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
            server = int(self.conn.info.port)
            with deadline(self.conn, self.request_deadline):
                row = self.conn.execute(f"INSERT INTO {TABLE} (serial, order_id) VALUES (%s, %s) "
                                        "ON CONFLICT (serial) DO NOTHING RETURNING order_id", (serial, order)).fetchone()
                if row is None:
                    row = self.conn.execute(f"SELECT order_id FROM {TABLE} WHERE serial = %s", (serial,)).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise Unknown(f"{type(exc).__name__}: {str(exc).strip()}", server) from None
        if row is None:  # inserted by nobody and held by nobody: impossible with a primary key
            return "no row", None, server
        holder = str(row[0])
        return (ACCEPTED if holder == order else REFUSED), holder, server

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            try:
                self.conn.close()
            except self.psycopg.Error:
                pass
        self.conn = None


class HttpClient:
    """A redeem through a keyvault node's ``POST /v1/redeem``, one key a request, on a kept-alive connection."""

    def __init__(self, url: str, token: str, keys: dict[str, str], timeout: float = 15.0) -> None:
        """A client of the node at ``url``; ``keys`` maps each serial to its key."""
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", int(parsed.port or 80)
        self.token, self.keys, self.timeout = token, keys, timeout
        self.conn: http.client.HTTPConnection | None = None

    def __call__(self, serial: str, order: str) -> tuple[str, str | None, int]:
        """Redeem ``serial``'s key for ``order``."""
        body = json.dumps({"key": self.keys[serial], "order_id": order}).encode()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request("POST", "/v1/redeem", body, {"Authorization": f"Bearer {self.token}",
                                                          "Content-Type": "application/json"})
            reply = self.conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Unknown(f"node {self.port}: {type(exc).__name__}: {exc}", self.port) from None
        if reply.status == 503:
            raise Unknown(f"node {self.port}: 503 {data[:200]!r}", self.port)
        if reply.status != 200:
            return f"HTTP {reply.status}", None, self.port
        doc = json.loads(data)
        return judge(doc.get("status"), doc.get("order_id"), order), doc.get("order_id"), self.port

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            self.conn.close()
        self.conn = None


class VaultClient:
    """A redeem through the library: ``Vault.redeem`` on a node's store opened in this process."""

    def __init__(self, vault: Any, keys: dict[str, str], server: int = 0) -> None:
        """A client of ``vault`` (shared by threads); ``server`` labels its answers."""
        self.vault, self.keys, self.server = vault, keys, server

    def __call__(self, serial: str, order: str) -> tuple[str, str | None, int]:
        """Redeem ``serial``'s key for ``order``."""
        from keyvault import AuthorityError

        try:
            result = self.vault.redeem(self.keys[serial], order)
        except AuthorityError as exc:  # OutcomeUnknownError among them: the service answers 503
            raise Unknown(f"library: {type(exc).__name__}: {exc}", self.server) from None
        return judge(result.status.value, result.order_id, order), result.order_id, self.server


def judge(status: str | None, holder: str | None, order: str) -> str:
    """A keyvault answer as the checker's outcome: accepted, refused (naming the holder), or what it was."""
    if status == "accepted" and holder in (None, order):
        return ACCEPTED
    if status == "redeemed" and holder:
        return REFUSED
    return f"status {status}"


def longest_gap(answers: list[Answer], start: float, end: float) -> float:
    """The longest time between accepted redeems sent within [start, end] (seconds without a writable primary)."""
    times = sorted(a.at for a in answers if a.outcome == ACCEPTED and start <= a.sent and a.at <= end)
    if not times:
        return end - start
    points = [start, *times, end]
    return max((b - a for a, b in zip(points, points[1:])), default=0.0)


def provision(state: dict[str, Any], count: int, product: str = "POINTS-100",
              also: tuple[str, ...] = (), nodes: int | None = None) -> dict[str, str]:
    """Issue ``count`` keys from a supplier store in the cluster's directory and import them on every node
    (or the first ``nodes``: bound nodes pass manifests on to each other) and into the stores in ``also``.

    Returns serial -> key (kept in memory only: the keys file is removed once read).
    """
    import csv
    from pathlib import Path

    from keyvault import Identity, Vault

    base = Path(state["dir"]) / "supplier"
    base.mkdir(mode=0o700, exist_ok=True)
    identity = Identity.generate("Cluster Supplier")
    n = len(list(base.glob("batch*.kvm")))
    keys_csv, manifest = base / f"keys{n}.csv", base / f"batch{n}.kvm"
    identity.public.save(base / f"supplier{n}.pub")  # for whoever verifies these keys' bundles
    store = base / "store"
    with (Vault.open(store) if store.exists() else Vault.init(store)) as supplier:
        supplier.issue_batch(identity, product, count, keys_out=keys_csv, manifest_out=manifest)
    with open(keys_csv, newline="") as fh:
        keys = {row["serial"]: row["key"] for row in csv.DictReader(fh)}
    keys_csv.unlink()
    for path in [node["store"] for node in state["nodes"][:nodes]] + list(also):
        with (Vault.open(path) if Path(path).exists() else Vault.init(path)) as vault:
            vault.trust(identity.public)
            vault.import_manifest(manifest)
    return keys


def authority_holdings(dsn: str, timeout: float = 60.0) -> dict[str, str]:
    """serial -> order (or void reason) as the authority in PostgreSQL holds it, read from the primary."""
    from keyvault.formats.keyformat import serial_text

    psycopg = _psycopg()
    deadline_at = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                rows = conn.execute("SELECT serial, text FROM keyvault_keys WHERE state <> 0").fetchall()  # 0: held
            return {serial_text(serial % (1 << 64)): str(text) for serial, text in rows}
        except psycopg.OperationalError:
            if time.monotonic() > deadline_at:
                raise
            time.sleep(0.5)
