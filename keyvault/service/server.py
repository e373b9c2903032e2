"""Starting the service: checks first, then uvicorn (uvloop, httptools) with N worker processes.

A supervisor process binds the socket and starts the workers; each worker
opens the store itself once it runs (spawned, never forked with an open
environment). The supervisor restarts a worker that dies, and on SIGTERM or
SIGINT stops them all: each stops accepting, answers every request in flight
(redeems included: each is durable before it is answered), flushes and closes.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import KeyvaultError, UsageError
from ..vault import Vault

APP = "keyvault.service.app:create_app"
GRACE_SECONDS = 30  # how long a stopping worker waits for requests in flight


def log_config() -> dict[str, Any]:
    """Logging for the workers: the server's lines on stderr (the access log writes there itself)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},  # it would log raw paths
            "keyvault": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


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
          access_log: bool = True, app: str = APP) -> bool:
    """Run the service until SIGTERM/SIGINT; False when a worker could not start."""
    try:
        from uvicorn.config import STARTUP_FAILURE, Config
        from uvicorn.supervisors.multiprocess import Multiprocess
    except ImportError:
        raise KeyvaultError("the service needs uvicorn, uvloop and httptools: pip install 'keyvault[service]'") \
            from None
    run_dir = Path(tempfile.mkdtemp(prefix="keyvault-service-"))
    os.environ.update(KEYVAULT_SERVICE_STORE=str(store.resolve()), KEYVAULT_SERVICE_RUN_DIR=str(run_dir),
                      KEYVAULT_SERVICE_ACCESS_LOG="1" if access_log else "0")
    if pepper_file is not None:
        os.environ["KEYVAULT_SERVICE_PEPPER_FILE"] = str(pepper_file.resolve())
    try:
        config = Config(app, factory=True, host=host, port=port, workers=workers, loop="uvloop", http="httptools",
                        lifespan="on", access_log=False, log_config=log_config(), server_header=False,
                        timeout_graceful_shutdown=GRACE_SECONDS, backlog=4096, ws="none", interface="asgi3")
        sock = config.bind_socket()
        supervisor = Multiprocess(config, sockets=[sock])  # also for one worker: restarted if it dies
        supervisor.run()
        return not any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    except OSError as exc:
        raise KeyvaultError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another port") from None
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
