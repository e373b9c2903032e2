"""keyvault's own worker supervision: N spawned processes, each running uvicorn's public ``Server`` on one socket.

The supervisor (the ``keyvault serve`` process) binds the listening socket
once and spawns the workers (``multiprocessing`` spawn: a fresh interpreter,
no LMDB environment crosses a fork). Each worker builds a ``uvicorn.Config``
and runs ``uvicorn.Server(config).run(sockets=[sock])``, the API uvicorn
documents for running a server from code, so nothing here depends on
uvicorn's own process supervisor (an internal class whose interface changed
between releases). The supervisor restarts a worker that exits, stops
everything if a worker cannot start (it would fail the same way again), and
on SIGTERM or SIGINT sends every worker SIGTERM (uvicorn then stops
accepting, answers every request in flight within the grace period, runs the
lifespan shutdown) and waits for them.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from ..errors import KeyvaultError
from .limits import Limits

#: A worker's exit code when its server never finished starting (the app, its lifespan or the store failed).
#: Internal to the service (``keyvault serve`` itself exits 1 then); not 3, which keyvault's CLI keeps for
#: "a key was refused".
FAILED_TO_START = 78
PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHAN_POLL_SECONDS = 1.0
RESTART_SECONDS = 1.0  # a worker slot is restarted at most this often (a crash loop does not spin)
POLL_SECONDS = 0.2  # how often the supervisor looks at its workers
KILL_AFTER_SECONDS = 10.0  # past the grace period, a worker still running is killed
ORPHAN_GRACE_SECONDS = 30.0 + KILL_AFTER_SECONDS  # an orphan drains as long (server.GRACE_SECONDS), then dies

log = logging.getLogger("keyvault.service")


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket every worker accepts on, or KeyvaultError saying what to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise KeyvaultError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check the host name") \
            from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)  # connections queue while a worker restarts instead of being refused
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise KeyvaultError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another port") \
            from None
    return sock


def die_with_parent(parent: int) -> None:
    """Stop this process (SIGTERM: it drains, then exits) when ``parent``, its supervisor, dies, even by SIGKILL.

    Linux's parent-death signal covers the common case at once; a thread that looks at ``os.getppid()``
    every second covers the rest: a parent that died before the prctl, a SIGTERM that arrived while the
    process had no handler ready, and systems without prctl.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the thread below still notices

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_SECONDS)
        log.error("process [%d]: the service's supervisor [%d] is gone; stopping", os.getpid(), parent)
        give_up = time.monotonic() + ORPHAN_GRACE_SECONDS
        while time.monotonic() < give_up:  # again each second: one may land before the handler is in place
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(ORPHAN_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)  # what the supervisor would have done past the grace period

    threading.Thread(target=watch, name="keyvault-orphan-watch", daemon=True).start()


def _room_for(connections: int) -> None:
    """Raise this process's open-file limit to fit ``connections`` (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256  # the store, logs, the commit socket, the run directory
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            log.warning("worker [%d]: --max-connections %d needs %d open files, the hard limit is %d: raise it "
                        "(ulimit -n) or lower --max-connections", os.getpid(), connections, wanted, hard)


def _worker(settings: dict[str, Any], sock: socket.socket, parent: int, limits: Limits) -> None:
    """Process entry of one worker: uvicorn's Server on the supervisor's socket until SIGTERM or SIGINT."""
    die_with_parent(parent)
    import uvicorn

    from .protocol import guarded  # uvicorn's protocol: imported where it runs

    settings = dict(settings, http=guarded(limits), timeout_keep_alive=limits.keep_alive, backlog=limits.backlog)
    server = uvicorn.Server(uvicorn.Config(**settings))  # Config sets up the worker's logging
    _room_for(limits.max_connections)  # after: its warning is logged in the service's format
    # uvicorn re-raises the signal that stopped it once it has drained: let that end the process with 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    except (SystemExit, Exception):
        if not server.started:
            raise SystemExit(FAILED_TO_START) from None
        raise
    if not server.started:  # stopped before it started (a signal during startup): nothing was served
        raise SystemExit(0)


class Workers:
    """N worker processes on one socket, kept running until SIGTERM/SIGINT."""

    def __init__(self, settings: dict[str, Any], sock: socket.socket, count: int, limits: Limits) -> None:
        self._settings = settings
        self._limits = limits
        self._socket = sock
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self.failed = False  # a worker could not start: the service stopped

    def _spawn(self) -> BaseProcess:
        process = self._context.Process(target=_worker, args=(self._settings, self._socket, os.getpid(),
                                                              self._limits),
                                        name="keyvault-worker", daemon=False)
        process.start()
        return process

    def stop(self, *_: object) -> None:
        """Ask the supervisor to stop (the SIGTERM and SIGINT handler)."""
        self._stopping.set()

    def run(self) -> bool:
        """Run the workers until SIGTERM/SIGINT, then stop them; False when a worker could not start."""
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        slots: list[tuple[BaseProcess, float]] = []
        try:
            for _ in range(self._count):
                slots.append((self._spawn(), time.monotonic()))
            log.info("supervisor [%d] started %d worker(s): %s", os.getpid(), self._count,
                     ", ".join(str(p.pid) for p, _ in slots))
            while not self._stopping.wait(POLL_SECONDS):
                self._keep_alive(slots)
        finally:
            self._stop_all([process for process, _ in slots])
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return not self.failed

    def _keep_alive(self, slots: list[tuple[BaseProcess, float]]) -> None:
        """Restart each worker that exited; stop the service when one could not start."""
        for i, (process, started) in enumerate(slots):
            if process.is_alive():
                continue
            process.join()
            if process.exitcode == FAILED_TO_START:
                log.error("worker [%s] could not start (its log says why); stopping the service", process.pid)
                self.failed = True
                self._stopping.set()
                return
            if self._stopping.is_set():
                return
            wait = started + RESTART_SECONDS - time.monotonic()
            if wait > 0 and self._stopping.wait(wait):
                return
            log.error("worker [%s] died (exit code %s); starting a new one", process.pid, process.exitcode)
            slots[i] = (self._spawn(), time.monotonic())

    def _stop_all(self, processes: list[BaseProcess]) -> None:
        """SIGTERM every worker, wait for each to drain (its grace period and a margin), kill the rest."""
        for process in processes:
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + float(self._settings.get("timeout_graceful_shutdown") or 0) + \
            KILL_AFTER_SECONDS
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker [%s] did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
        log.info("supervisor [%d]: every worker stopped", os.getpid())
