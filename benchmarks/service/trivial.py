#!/usr/bin/env python
"""The server's own ceiling: a trivial ASGI app run through keyvault's ``serve()`` with the same settings.

    python benchmarks/service/trivial.py --bind 127.0.0.1:PORT --workers N [--no-access-log]

It answers any POST that carries ``Authorization: Bearer ...`` with a fixed JSON document shaped
like a one-key /v1/verify answer, after reading the whole body; GET /healthz answers for readiness.
No store, no token check, no JSON parsing: what is left is uvicorn, uvloop, httptools, the worker
processes and, when on, one access-log line per request written the way the service writes it
(keyvault.service.accesslog). Stops on SIGTERM like the service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

APP = "trivial:create_app"
ANSWER = json.dumps({"results": [{"status": "valid", "serial": "B1SH-000-00000", "batch": "B1SH-000",
                                  "supplier": "1d1715e71c69a0e3", "supplier_name": "Benchmark Supplier",
                                  "product": "BENCH"}]}).encode()
HEALTHY = b'{"status": "ok"}'
UNAUTHORIZED = b'{"type": "urn:keyvault:problem:unauthorized", "status": 401}'

from keyvault.service.accesslog import AccessLog  # noqa: E402


class Trivial:
    """A fixed answer to any POST with a bearer token."""

    def __init__(self) -> None:
        self.access = AccessLog(enabled=os.environ.get("KEYVAULT_SERVICE_ACCESS_LOG", "1") == "1")

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        more = True
        while more:  # the whole body, as the service reads it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        if scope["method"] == "GET" and scope["path"] == "/healthz":
            status, body = 200, HEALTHY
        elif scope["method"] == "POST" and _has_bearer(scope):
            status, body = 200, ANSWER
        else:
            status, body = 401, UNAUTHORIZED
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})
        seconds = time.perf_counter() - start
        self.access.add(scope["method"], scope["path"], status, seconds)


def _has_bearer(scope: dict[str, Any]) -> bool:
    """Whether the request carries an Authorization: Bearer header (its value is not checked)."""
    return any(name == b"authorization" and value[:7].lower() == b"bearer " for name, value in scope["headers"])


def create_app() -> Trivial:
    """The application factory ``serve()`` imports in each worker."""
    return Trivial()


def main(argv: list[str] | None = None) -> int:
    """Parse the options and serve until SIGTERM (exit 0), 1 when a worker could not start."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    ap.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                    help="one log line per request, as the service (default: on)")
    args = ap.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    from keyvault.service.server import serve

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import APP from here
    with tempfile.TemporaryDirectory(prefix="kv-trivial-") as unused_store:  # serve() wants one; unopened
        ok = serve(Path(unused_store), None, host, int(port), args.workers, access_log=args.access_log, app=APP,
                   commit_process=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
