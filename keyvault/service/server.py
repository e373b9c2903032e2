"""Starting the service: checks first, then N worker processes, each a uvicorn server (uvloop, httptools).

A supervisor process (workers.py, keyvault's own) binds the socket, starts
the commit process (the one writer of every worker's redeems,
service/commitd.py) and the workers, and delivers webhooks itself in a
thread (service/delivery.py); each opens the store itself once it
runs (spawned, never forked with an open environment). The supervisor
restarts a worker or the commit process that dies, and on SIGTERM or SIGINT
stops the workers: each stops accepting, answers every request in flight
(redeems included: each is durable before it is answered), flushes and
closes; then the commit process stops.
"""

from __future__ import annotations

import ipaddress
import logging
import logging.config
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import KeyvaultError, UsageError
from ..vault import Vault
from . import commitd, delivery, logs, witnessd
from .limits import Limits
from .workers import Workers, bind

APP = "keyvault.service.app:create_app"
GRACE_SECONDS = 30  # how long a stopping worker waits for requests in flight


def log_config(log_format: str = "text") -> dict[str, Any]:
    """Logging for the service's processes: their lines on stderr as text or JSON (the access log writes itself)."""
    return logs.log_config(log_format)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check(store: Path, pepper_file: Path | None, host: str) -> int:
    """Open the store once before starting (clear errors now, not in every worker); its token count."""
    with Vault.open(store, pepper_file=pepper_file) as vault:
        count = len(vault.tokens())
    if count == 0 and not is_loopback(host):
        raise UsageError(f"refusing to listen on {host} with no token: create one first with "
                         f"`keyvault --store {store} token create --name NAME --scope verify|redeem|admin`, "
                         "or bind 127.0.0.1")
    return count


def serve(store: Path, pepper_file: Path | None, host: str, port: int, workers: int, *,
          access_log: bool = True, app: str = APP, commit_process: bool = True, limits: Limits = Limits(),
          ready: Callable[[], None] | None = None, log_format: str = "text") -> bool:
    """Run the service until SIGTERM/SIGINT; False when a worker could not start.

    ``log_format`` (text or json) is every process's, the access log's included. ``ready`` is called once
    the socket is bound and the commit process listens, before the workers start (a port in use is a
    KeyvaultError before it). ``app`` and ``commit_process`` are for the benchmark's
    trivial application, which has no store.
    """
    try:
        import httptools  # noqa: F401
        import msgspec  # noqa: F401
        import uvicorn  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError:
        raise KeyvaultError("the service needs uvicorn, uvloop, httptools and msgspec: "
                            "pip install 'keyvault[service]'") from None
    try:
        config = log_config(log_format)
    except ValueError as exc:
        raise UsageError(f"{exc}: pass --log-format text or json") from None
    logging.config.dictConfig(config)  # the supervisor's own lines (workers, the commit process)
    run_dir = Path(tempfile.mkdtemp(prefix="keyvault-service-"))  # 0700: the commit socket lives here
    commits = CommitProcess(store, pepper_file, run_dir) if commit_process else None
    os.environ.update(KEYVAULT_SERVICE_STORE=str(store.resolve()), KEYVAULT_SERVICE_RUN_DIR=str(run_dir),
                      KEYVAULT_SERVICE_ACCESS_LOG="1" if access_log else "0", KEYVAULT_SERVICE_LOG_FORMAT=log_format)
    if commits is not None:
        os.environ["KEYVAULT_SERVICE_COMMIT_SOCKET"] = str(commits.socket)
    if pepper_file is not None:
        os.environ["KEYVAULT_SERVICE_PEPPER_FILE"] = str(pepper_file.resolve())
    # uvicorn.Config's keyword arguments for each worker (its public API; built in the worker).
    settings = dict(app=app, factory=True, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
                    access_log=False, log_config=config, server_header=False,
                    timeout_graceful_shutdown=GRACE_SECONDS, ws="none", interface="asgi3")
    try:
        sock = bind(host, port, limits.backlog)
        try:
            if commits is not None:
                commits.start()
            hooks = delivery.start(store, pepper_file) if commit_process else None  # webhooks, in this process
            submits = witnessd.Submitter(hooks.vault).start() if hooks is not None else None  # checkpoints
            try:
                if ready is not None:
                    ready()
                return Workers(settings, sock, workers, limits).run()  # one worker too: restarted if it dies
            finally:
                if submits is not None:
                    submits.stop()
                if hooks is not None:
                    hooks.stop()
                    hooks.vault.close()
                if commits is not None:
                    commits.stop()  # after the workers: they have answered every request in flight
        finally:
            sock.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


class CommitProcess:
    """The commit process (service/commitd.py), started before the workers and restarted if it dies."""

    def __init__(self, store: Path, pepper_file: Path | None, run_dir: Path) -> None:
        self.socket = run_dir / "commit.sock"
        self._args = (str(store.resolve()), str(pepper_file.resolve()) if pepper_file else None, str(self.socket),
                      str(run_dir))
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._keep_alive, name="keyvault-commit-watch", daemon=True)

    def start(self) -> None:
        """Start it, wait until it listens, and watch it."""
        self._spawn()
        self._watch.start()

    def _spawn(self) -> None:
        ours, theirs = self._context.Pipe(duplex=False)
        process = self._context.Process(target=commitd.run, args=(*self._args, theirs, os.getpid()),
                                        name="keyvault-commit",
                                        daemon=False)
        process.start()
        theirs.close()
        try:
            said = ours.recv() if ours.poll(60) else "it did not start within 60 s"
        except EOFError:
            said = f"it exited with code {process.exitcode}"
        finally:
            ours.close()
        self._process = process
        if said == "ready":
            logging.getLogger("keyvault.service").info("commit process [%s] started", process.pid)
        else:
            process.join(5)
            raise KeyvaultError(f"the service's commit process could not start: {said}")

    def _keep_alive(self) -> None:
        while not self._stopping.wait(0.2):
            process = self._process
            if process is not None and not process.is_alive():
                logging.getLogger("keyvault.service").error(
                    "the commit process [%s] died (exit code %s); starting a new one", process.pid, process.exitcode)
                try:
                    self._spawn()
                except KeyvaultError as exc:
                    logging.getLogger("keyvault.service").error("%s; trying again", exc)
                    time.sleep(1.0)

    def stop(self) -> None:
        """SIGTERM it once the workers are gone: it answers what it holds, flushes and closes."""
        self._stopping.set()
        if self._watch.is_alive():
            self._watch.join()
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(GRACE_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
