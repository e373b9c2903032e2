"""When the cluster tests run: with `make test-cluster`, and only where etcd, Patroni, PostgreSQL and
psycopg are installed (KEYVAULT_REQUIRE_CLUSTER=1 turns their absence into a failure)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from keyvault.cli.cluster_local import ClusterError, find_programs

# Read at import: the suite's autouse fixture clears every KEYVAULT_* variable before each test.
RUN = os.environ.get("KEYVAULT_CLUSTER_TESTS", "").strip() not in ("", "0")
REQUIRE = os.environ.get("KEYVAULT_REQUIRE_CLUSTER", "").strip() not in ("", "0")


def _missing() -> str | None:
    try:
        find_programs()
    except ClusterError as exc:
        return str(exc)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


def need_cluster() -> None:
    """Skip (or fail, under KEYVAULT_REQUIRE_CLUSTER=1) when the cluster cannot run here."""
    if not RUN and not REQUIRE:
        pytest.skip("the cluster tests run with `make test-cluster` (KEYVAULT_CLUSTER_TESTS=1): minutes each")
    missing = _missing()
    if missing:
        if REQUIRE:
            pytest.fail(f"KEYVAULT_REQUIRE_CLUSTER=1 and {missing}")
        pytest.skip(missing)


class Proxy:
    """A TCP relay from a loopback port to ``target``: the network between one node and one PostgreSQL member.

    ``cut()`` severs it: every open connection is closed and each new one is closed as soon as it is
    accepted (what a node sees when the network to PostgreSQL is gone and the kernel says so).
    ``cut(freeze=True)`` instead stops every byte both ways while the sockets stay open (a primary
    that hangs). ``heal()`` closes what is frozen and relays again.
    """

    def __init__(self, target: int) -> None:
        import socket
        import threading

        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = int(self.listener.getsockname()[1])
        self.open = threading.Event()
        self.open.set()
        self.severed = False
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.severed:
                client.close()
                continue
            with self.lock:
                self.sockets.append(client)
            if not self.open.is_set():
                continue  # accepted, never answered: a partition
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: Any, sink: Any) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while not self.open.is_set():  # frozen: hold the bytes, forward nothing
                    if self.closed:
                        return
                    self.open.wait(0.1)
                    if source.fileno() < 0:
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass

    def cut(self, freeze: bool = False) -> None:
        """Sever every connection (or, with ``freeze``, stop every byte both ways)."""
        if freeze:
            self.open.clear()
            return
        self.severed = True
        self._close_all()

    def heal(self) -> None:
        """Close the frozen connections and relay new ones again."""
        self._close_all()
        self.severed = False
        self.open.set()

    def _close_all(self) -> None:
        import socket

        with self.lock:
            frozen, self.sockets = self.sockets, []
        for sock in frozen:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop relaying for good."""
        self.closed = True
        self.open.set()
        self.listener.close()
        self.heal()
