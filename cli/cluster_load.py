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

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
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


class Load:
    """``clients`` threads redeeming serials from a shared pool, each on its own connection, until stopped."""

    def __init__(self, dsns: list[str], serials: int = 2000, clients: int = 8, orders_per_serial: int = 3,
                 request_deadline: float = 8.0, seed: int | None = None) -> None:
        """A load over ``dsns`` (client i uses dsns[i % len]); keys drawn from ``serials`` serials."""
        self.dsns = dsns
        self.serials = [f"S{n:07d}" for n in range(serials)]
        self.clients = clients
        self.orders_per_serial = orders_per_serial
        self.request_deadline = request_deadline
        self.seed = random.randrange(1 << 30) if seed is None else seed
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self) -> Load:
        """Start the clients."""
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i,), daemon=True, name=f"load-{i}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Answer]:
        """Stop the clients, wait for them, and return every answer."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.request_deadline + 10)
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

    def _client(self, index: int) -> None:
        psycopg = _psycopg()
        rng = random.Random(self.seed * 1000 + index)
        dsn = self.dsns[index % len(self.dsns)]
        conn = None
        pending: list[tuple[str, str]] = []  # unknown answers, retried with the same order
        while not self._stop.is_set():
            if pending and rng.random() < 0.5:
                serial, order = pending.pop(0)
            else:
                serial = rng.choice(self.serials)
                order = f"order-{serial}-{rng.randrange(self.orders_per_serial)}"
            sent = time.monotonic()
            server = 0
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
                server = int(conn.info.port)
                with deadline(conn, self.request_deadline):
                    row = conn.execute(f"INSERT INTO {TABLE} (serial, order_id) VALUES (%s, %s) "
                                       "ON CONFLICT (serial) DO NOTHING RETURNING order_id", (serial, order)).fetchone()
                    if row is None:
                        row = conn.execute(f"SELECT order_id FROM {TABLE} WHERE serial = %s", (serial,)).fetchone()
                if row is None:  # inserted by nobody and held by nobody: cannot happen with a primary key
                    outcome, holder = "no row", None
                else:
                    holder = str(row[0])
                    outcome = ACCEPTED if holder == order else REFUSED
            except psycopg.Error as exc:
                outcome, holder = UNKNOWN, None
                pending.append((serial, order))
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                conn = None
                if len(self.errors) < 50:
                    self.errors.append(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
                time.sleep(0.05)
            with self._lock:
                self.answers.append(Answer(serial, order, outcome, holder, time.monotonic(), index, sent, server))
        if conn is not None:
            conn.close()


def longest_gap(answers: list[Answer], start: float, end: float) -> float:
    """The longest time between accepted redeems sent within [start, end] (seconds without a writable primary)."""
    times = sorted(a.at for a in answers if a.outcome == ACCEPTED and start <= a.sent and a.at <= end)
    if not times:
        return end - start
    points = [start, *times, end]
    return max((b - a for a, b in zip(points, points[1:])), default=0.0)
