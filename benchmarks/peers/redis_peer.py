"""Redis (redis-py) against a redis-server started here on the loopback, AOF with appendfsync always.

Each key is a Redis string: the 16-byte keyed hash -> "0" (active), or "1:<order>:<ms>" once
redeemed. verify is one GET; verify_many sends MGETs of 1,000 keys, all of a batch in one
pipeline (one round trip). A redeem is a Lua script (EVALSHA) that checks and sets atomically;
redeem_many pipelines 1,000 of them per round trip. With appendfsync always, Redis writes and
fsyncs the AOF once per event-loop turn, before it sends the replies of that turn: a reply means
durable, and the commands of one pipeline (or of many clients) share one fsync.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from .common import RedeemFn, Unavailable, disk_usage, free_port, hasher, now_ms, require_module, same_cpu

NAME = "redis"
MGET_KEYS = 1_000
LOAD_CHUNK = 1_000  # pairs per MSET
LOAD_PIPELINE = 20  # MSETs per round trip while loading
REDEEM_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
if v ~= '0' then return 0 end
redis.call('SET', KEYS[1], '1:' .. ARGV[1] .. ':' .. ARGV[2])
return 1
"""


class RedisServer:
    """A private redis-server: its own directory and port, loopback only, stopped by stop()."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server not installed (apt-get install redis-server)")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes",
                "--dir", str(directory), "--logfile", str(directory / "redis.log"),
                "--daemonize", "no", "--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        # Its own session: a Ctrl-C reaches the runner, which then stops the server in order.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                      check=False).stdout.split()[2]

    def wait_ready(self, client: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = (self.directory / "redis.log")
                tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
                raise Unavailable(f"redis-server exited at start ({(err or tail).strip()[-300:]})")
            try:
                if client.ping():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"redis-server did not answer on 127.0.0.1:{self.port} in {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


class RedisPeer:
    name = NAME
    # Callers are processes: redis-py spends ~50 us of Python per command, so 32 threads of one
    # process queue on the GIL (9.5 k/s here) where 32 processes reach ~13-14 k/s.
    concurrency = "processes"

    def __init__(self, server: RedisServer, pepper: bytes) -> None:
        self.redis = require_module("redis", "redis")
        self.server = server
        self.client = self._client()
        server.wait_ready(self.client)
        info = self.client.config_get("append*")
        if info.get("appendonly") != "yes" or info.get("appendfsync") != "always":
            raise Unavailable(f"redis-server did not take appendonly yes / appendfsync always ({info})")
        self.sha = self.client.script_load(REDEEM_LUA)
        self.hash = hasher(pepper)
        self.pepper = pepper
        self.keys: Sequence[str] = ()
        self._clients: list[Any] = [self.client]
        self._lock = threading.Lock()
        self.settings = (f"Redis {server.version}, redis-py {self.redis.__version__}; appendonly yes, "
                         "appendfsync always, no RDB snapshots; TCP on 127.0.0.1")

    def _client(self) -> Any:
        return self.redis.Redis(host="127.0.0.1", port=self.server.port, socket_timeout=120)

    def load(self, keys: Sequence[str]) -> None:
        h = self.hash
        pipe = self.client.pipeline(transaction=False)
        queued = 0
        for start in range(0, len(keys), LOAD_CHUNK):
            pipe.mset({h(k): b"0" for k in keys[start:start + LOAD_CHUNK]})
            queued += 1
            if queued == LOAD_PIPELINE:
                pipe.execute()
                queued = 0
        if queued:
            pipe.execute()
        stored = self.client.dbsize()
        if stored != len(keys):
            raise RuntimeError(f"redis holds {stored:,} keys after loading {len(keys):,}")
        self.keys = keys

    def after_load(self) -> None:
        """Untimed: compact the AOF now, so the automatic rewrite after a bulk load (a forked child
        on a 2-core machine) does not land in a measurement. Later rewrites may still happen."""
        client = self.client
        deadline = time.monotonic() + 300
        while client.info("persistence")["aof_rewrite_in_progress"]:  # one may have started already
            time.sleep(0.1)
        client.bgrewriteaof()
        while True:
            info = client.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the AOF rewrite after loading did not finish in 300 s")
            time.sleep(0.1)
        if info.get("aof_last_bgrewrite_status") != "ok":
            raise RuntimeError(f"the AOF rewrite after loading failed ({info.get('aof_last_bgrewrite_status')})")

    def one_at_a_time(self) -> AbstractContextManager[str]:
        """verify_one: this thread and the server's event loop on one CPU (see common.same_cpu)."""
        return same_cpu([self.server.proc.pid])

    def verify_one(self, key: str) -> bytes | None:
        return self.client.get(self.hash(key))

    def verify_many(self, keys: Sequence[str]) -> list[bytes | None]:
        h = self.hash
        hashes = [h(k) for k in keys]
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(hashes), MGET_KEYS):
            pipe.mget(hashes[start:start + MGET_KEYS])
        return [value for part in pipe.execute() for value in part]

    def redeem_many(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        h, sha, when = self.hash, self.sha, now_ms()
        pipe = self.client.pipeline(transaction=False)
        for key, order in pairs:
            pipe.evalsha(sha, 1, h(key), order, when)
        return pipe.execute()

    def caller(self) -> RedeemFn:
        client = self._client()
        with self._lock:
            self._clients.append(client)
        h, sha = self.hash, self.sha

        def redeem(key: str, order: str) -> int:
            return client.evalsha(sha, 1, h(key), order, now_ms())

        return redeem

    def store_size(self) -> tuple[int, str]:
        ram = int(self.client.info("memory")["used_memory_dataset"])
        aof = disk_usage(self.server.directory)
        return ram, f"used_memory_dataset in RAM; the AOF on disk: {aof / len(self.keys):.0f} bytes/key"

    def server_pids(self) -> list[int]:
        return [self.server.proc.pid]

    def caller_spec(self) -> tuple[str, str, tuple[object, ...]]:
        return __name__, "process_caller", (self.server.port, self.sha, self.pepper)

    @staticmethod
    def is_valid(result: bytes | None) -> bool:
        return result == b"0"

    @staticmethod
    def is_accepted(result: int) -> bool:
        return result == 1

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()


def process_caller(port: int, sha: str, pepper: bytes) -> RedeemFn:
    """In a caller process: its own connection, the same script."""
    redis = require_module("redis", "redis")
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=120)
    h = hasher(pepper)

    def redeem(key: str, order: str) -> int:
        return client.evalsha(sha, 1, h(key), order, now_ms())

    return redeem


def start(workdir: Path, pepper: bytes, stack: ExitStack) -> RedisPeer:
    require_module("redis", "redis")
    server = RedisServer(workdir / "redis")
    stack.callback(server.stop)
    peer = RedisPeer(server, pepper)
    stack.callback(peer.close)
    return peer
