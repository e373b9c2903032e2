"""A throwaway PostgreSQL 15 for the authority tests: one server per session, one new database per test.

Skipped, with the reason, when PostgreSQL's binaries are absent, unless KEYVAULT_REQUIRE_POSTGRES=1
(``make test-authority``), which makes their absence a failure. initdb and pg_ctl refuse to run as root:
as root the server runs as the ``postgres`` user (runuser), in a temporary directory it owns.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("KEYVAULT_PG_BIN", "/usr/lib/postgresql/15/bin"))
REQUIRE = os.environ.get("KEYVAULT_REQUIRE_POSTGRES") == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A running PostgreSQL: its directory (also the socket directory), port and data directory."""

    base: Path
    port: int
    data: Path
    as_user: list[str]

    def dsn(self, dbname: str = "postgres", **extra: str) -> str:
        """A key=value DSN for a database on this server (over its unix socket)."""
        words = [f"host={self.base}", f"port={self.port}", f"dbname={dbname}", "user=postgres"]
        return " ".join(words + [f"{k}={v}" for k, v in extra.items()])

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this server's data directory."""
        subprocess.run([*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self) -> None:
        """Start the server (crash recovery first, after a kill) and wait until it takes connections."""
        opts = f"-p {self.port} -k {self.base} -c listen_addresses='' -c fsync=on -c max_connections=200"
        self.pg_ctl("-o", opts, "-l", str(self.base / "log"), "-w", "-t", "60", "start")

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends follow), as a crash would."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # the orphaned backends notice and exit

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple]:
        """Run one statement in autocommit on a fresh connection; its rows."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL 15 server for the session."""
    if not (PG_BIN / "initdb").exists():
        if REQUIRE:
            pytest.fail(f"PostgreSQL binaries not found in {PG_BIN} (KEYVAULT_REQUIRE_POSTGRES=1): "
                        "apt-get install postgresql")
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}: apt-get install postgresql "
                    "(KEYVAULT_REQUIRE_POSTGRES=1 makes this a failure)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if REQUIRE:
            pytest.fail("psycopg is not installed (KEYVAULT_REQUIRE_POSTGRES=1): pip install 'psycopg[binary]'")
        pytest.skip("psycopg is not installed: pip install 'psycopg[binary]'")
    base = Path(tempfile.mkdtemp(prefix="kvpg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)
    server = PgServer(base, _free_port(), data, as_user)
    server.start()
    try:
        yield server
    finally:
        try:
            server.pg_ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(base, ignore_errors=True)


_numbers = itertools.count()


@pytest.fixture
def authority_dsn(pg_server: PgServer) -> str:
    """A DSN naming a new, empty database on the session's server."""
    name = f"kv_{os.getpid()}_{next(_numbers)}"
    pg_server.sql(f"CREATE DATABASE {name}")
    return pg_server.dsn(name)
