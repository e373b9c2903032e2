"""PostgreSQL (psycopg 3, binary protocol) against a private cluster started here on the loopback.

The cluster is made with initdb in a temporary directory (as the ``postgres`` user when run as
root, since PostgreSQL refuses to run as root) and started with pg_ctl on a free port; fsync,
synchronous_commit and full_page_writes stay on (the defaults): a commit is durable when it
returns. ``cards(hash bytea PRIMARY KEY, state int2, order_id text, redeemed_at int8)``, loaded
with binary COPY and then indexed. verify is one prepared SELECT; verify_many is one
``SELECT ... WHERE hash = ANY(%b)`` per batch; redeem_many is one ``UPDATE ... FROM unnest(hashes,
orders) ... WHERE state = 0 RETURNING hash`` per 1,000 pairs (one commit); a single redeem is one
autocommitted UPDATE. Concurrent callers share a pool of 16 connections.
"""

from __future__ import annotations

import glob
import os
import pwd
import queue
import shutil
import subprocess
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from .common import RedeemFn, Unavailable, free_port, hasher, now_ms, require_module, same_cpu

NAME = "postgres"
POOL = 16  # connections shared by the concurrent callers (the figure)
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "1GB",  # the whole table and index stay in PostgreSQL's own cache
    "max_wal_size": "4GB",  # no forced checkpoints during the load
    "max_connections": "100",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
_REDEEM_MANY = ("UPDATE cards AS c SET state = 1, order_id = v.order_id, redeemed_at = %b "
                "FROM unnest(%b::bytea[], %b::text[]) AS v(hash, order_id) "
                "WHERE c.hash = v.hash AND c.state = 0 RETURNING c.hash")
_REDEEM_ONE = ("UPDATE cards SET state = 1, order_id = %b, redeemed_at = %b "
               "WHERE hash = %b AND state = 0 RETURNING 1")


def _bindir() -> Path:
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found and Path(os.path.realpath(found)).parent.joinpath("initdb").exists():
            return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    raise Unavailable("PostgreSQL server binaries not installed (apt-get install postgresql)")


class PostgresServer:
    """A private cluster: initdb into a new directory, pg_ctl start on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        self.bindir = _bindir()
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.user: list[str] = []
        self.started = False
        if os.geteuid() == 0:  # PostgreSQL will not run as root: run it as the postgres user
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no postgres user to run the server as") from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise Unavailable("running as root and runuser (util-linux) is missing")
            self.user = [runuser, "-u", "postgres", "--"]
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, owner.pw_uid, owner.pw_gid)
            directory.chmod(0o700)
            reach = subprocess.run([*self.user, "test", "-w", str(directory)], stdin=subprocess.DEVNULL, check=False)
            if reach.returncode != 0:
                raise Unavailable(f"the postgres user cannot reach {directory} (a parent is not searchable "
                                  "by others): choose --workdir elsewhere")
        else:
            directory.mkdir(parents=True, exist_ok=True)

    def _run(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run([*self.user, *args], capture_output=True, text=True, timeout=timeout, check=False,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        if result.returncode != 0:
            raise Unavailable(f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()[-300:]}")

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        options = " ".join(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())
        options += f" -p {self.port} -c unix_socket_directories={self.directory}"
        self.started = True  # from here on, stop() tries pg_ctl stop
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        if not self.started:
            return
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        except Unavailable:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.started = False


class PostgresPeer:
    name = NAME
    concurrency = "threads"  # 32 caller threads share 16 connections; psycopg waits without the GIL

    def __init__(self, server: PostgresServer, pepper: bytes) -> None:
        self.psycopg = require_module("psycopg", "psycopg[binary]")
        self.server = server
        self.conn = self._connect()
        self.hash = hasher(pepper)
        self.pepper = pepper
        self.keys: Sequence[str] = ()
        self._pool: queue.Queue[Any] | None = None
        self._pool_conns: list[Any] = []
        self._lock = threading.Lock()
        version = self.conn.execute("SHOW server_version").fetchone()[0]
        checked = {k: self.conn.execute(f"SHOW {k}").fetchone()[0] for k in ("fsync", "synchronous_commit",
                                                                              "full_page_writes", "wal_sync_method")}
        if checked["fsync"] != "on" or checked["synchronous_commit"] != "on":
            raise Unavailable(f"the server is not durable as configured ({checked})")
        self.settings = (f"PostgreSQL {version}, psycopg {self.psycopg.__version__} ({self.psycopg.pq.__impl__}); "
                         + ", ".join(f"{k}={v}" for k, v in checked.items())
                         + f", shared_buffers={SERVER_SETTINGS['shared_buffers']}; TCP on 127.0.0.1")

    def _connect(self) -> Any:
        return self.psycopg.connect(host="127.0.0.1", port=self.server.port, user="postgres", dbname="postgres",
                                    autocommit=True)

    def load(self, keys: Sequence[str]) -> None:
        h = self.hash
        conn = self.conn
        conn.execute("DROP TABLE IF EXISTS cards")
        conn.execute("CREATE TABLE cards (hash bytea NOT NULL, state int2 NOT NULL DEFAULT 0, order_id text, "
                     "redeemed_at int8)")
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY cards (hash, state) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["bytea", "int2"])
                for key in keys:
                    copy.write_row((h(key), 0))
            cur.execute("ALTER TABLE cards ADD PRIMARY KEY (hash)")
        conn.execute("ANALYZE cards")
        self.keys = keys

    def after_load(self) -> None:
        """Untimed: VACUUM now, as after any bulk load, so autovacuum does not run in a measurement."""
        self.conn.execute("VACUUM cards")

    def one_at_a_time(self) -> AbstractContextManager[str]:
        """verify_one: this thread and the backend serving self.conn on one CPU (see common.same_cpu)."""
        return same_cpu([self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]])

    def verify_one(self, key: str) -> tuple[int] | None:
        return self.conn.execute("SELECT state FROM cards WHERE hash = %b", (self.hash(key),),
                                 binary=True).fetchone()

    def verify_many(self, keys: Sequence[str]) -> list[tuple[int] | None]:
        h = self.hash
        hashes = [h(k) for k in keys]
        rows = self.conn.execute("SELECT hash, state FROM cards WHERE hash = ANY(%b)", (hashes,),
                                 binary=True).fetchall()
        found = dict(rows)
        get = found.get
        return [None if (s := get(x)) is None else (s,) for x in hashes]

    def redeem_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        h = self.hash
        hashes = [h(k) for k, _ in pairs]
        rows = self.conn.execute(_REDEEM_MANY, (now_ms(), hashes, [o for _, o in pairs]), binary=True).fetchall()
        done = {row[0] for row in rows}
        return [x in done for x in hashes]

    def caller(self) -> RedeemFn:
        with self._lock:
            if self._pool is None:
                self._pool = queue.Queue()
                for _ in range(POOL):
                    conn = self._connect()
                    self._pool_conns.append(conn)
                    self._pool.put(conn)
            pool = self._pool
        h = self.hash

        def redeem(key: str, order: str) -> bool:
            conn = pool.get()
            try:
                return conn.execute(_REDEEM_ONE, (order, now_ms(), h(key)), binary=True).fetchone() is not None
            finally:
                pool.put(conn)

        return redeem

    def store_size(self) -> tuple[int, str]:
        size = self.conn.execute("SELECT pg_total_relation_size('cards')").fetchone()[0]
        return int(size), "pg_total_relation_size: table and primary key index, not the WAL"

    def server_pids(self) -> list[int]:
        try:
            return [int((self.server.data / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def caller_spec(self) -> tuple[str, str, tuple[object, ...]]:
        return __name__, "process_caller", (self.server.port, self.pepper)

    @staticmethod
    def is_valid(result: tuple[int] | None) -> bool:
        return result is not None and result[0] == 0

    @staticmethod
    def is_accepted(result: bool) -> bool:
        return result is True

    def close(self) -> None:
        for conn in self._pool_conns:
            conn.close()
        self._pool_conns.clear()
        self.conn.close()


def process_caller(port: int, pepper: bytes) -> RedeemFn:
    """In a caller process: one connection of its own (32 processes: 32 connections, no pool)."""
    psycopg = require_module("psycopg", "psycopg[binary]")
    conn = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True)
    h = hasher(pepper)

    def redeem(key: str, order: str) -> bool:
        return conn.execute(_REDEEM_ONE, (order, now_ms(), h(key)), binary=True).fetchone() is not None

    return redeem


def start(workdir: Path, pepper: bytes, stack: ExitStack) -> PostgresPeer:
    require_module("psycopg", "psycopg[binary]")
    server = PostgresServer(workdir / "postgres")
    stack.callback(server.stop)
    server.start()
    peer = PostgresPeer(server, pepper)
    stack.callback(peer.close)
    return peer
