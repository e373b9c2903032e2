"""Running the real HTTP service for the tests: ``keyvault serve`` on an ephemeral loopback port.

The server is a separate process tree (a supervisor and its workers), started
with the installed ``keyvault`` command, and driven over HTTP with the
standard library's client. Its stderr (the access log) is kept in a file the
tests read.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEYVAULT = str(Path(sys.executable).with_name("keyvault"))


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``keyvault --store STORE ARGS`` in its own process."""
    return subprocess.run([KEYVAULT, "--store", str(store), *args], capture_output=True, text=True, timeout=120)


def make_token(store: Path, name: str, scope: str) -> str:
    """A new token, created through the CLI."""
    done = cli(store, "token", "create", "--name", name, "--scope", scope, "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["token"])


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class Server:
    """A running ``keyvault serve`` process tree."""

    store: Path
    log: Path
    workers: int = 2
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more `keyvault serve` options (limits)

    def start(self) -> Server:
        """Start it and wait until every worker answers /healthz."""
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([KEYVAULT, "--store", str(self.store), "serve", "--bind",
                                      f"127.0.0.1:{self.port}", "--workers", str(self.workers), *self.args],
                                     stdout=out, stderr=out)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited: {self.log.read_text()[-2000:]}"
            if self.log.read_text().count("Application startup complete") >= self.workers:
                try:
                    if self.request("GET", "/healthz").status == 200:
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"the server did not start: {self.log.read_text()[-2000:]}")

    def commit_pid(self) -> int:
        """The current commit process (its start is logged)."""
        started = re.findall(r"commit process \[(\d+)\] started", self.log.read_text())
        assert started, "no commit process was logged"
        return int(started[-1])

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (children of the supervisor but the commit process and a helper)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        commit = self.commit_pid()
        workers = []
        for pid in map(int, children):
            try:  # a child can exit between the listing and this read
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if pid != commit and "multiprocessing.spawn" in cmdline and "resource_tracker" not in cmdline:
                workers.append(pid)
        return workers

    def descendants(self) -> list[int]:
        """Every process below the supervisor (workers, the commit process, multiprocessing's helpers)."""
        assert self.proc is not None
        return descendants(self.proc.pid)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, and the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the workers and the supervisor (a test that failed must not leave them running)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            for pid in self.descendants():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()

    def connect(self) -> http.client.HTTPConnection:
        """A new keep-alive connection."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                headers: dict[str, str] | None = None, raw: bytes | None = None,
                conn: http.client.HTTPConnection | None = None) -> Reply:
        """One request (JSON body unless ``raw``), on ``conn`` or a fresh connection."""
        sent = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        own = conn is None
        conn = conn or self.connect()
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            if own:
                conn.close()


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, children first."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found += map(int, children)
        todo += map(int, children)
    return found


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited process nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")
