"""``keyvault witness serve``'s HTTP server: POST /add-checkpoint (C2SP tlog-witness) behind the service's guard.

One process, one uvicorn server on a socket bound first (a port in use is a
clear error before anything says "listening"), with the connection guard of
protocol.py and its limits: the request head's size, header lines and target,
the head, body and idle timeouts, and the connections held at once. So a
witness, which serves the open internet with no token, is as hard to starve
as the service: oversized heads get 431, slow heads and bodies 408, and
a flood of idle connections is closed to make room for real requests. A
request with two ``Authorization`` headers is refused (400), as the service
does; the witness itself needs none. Cosigning (file I/O and an fsync) runs
in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..engine import LogWitness
from ..errors import KeyvaultError
from .limits import Limits
from .workers import bind

log = logging.getLogger("keyvault.witness")
ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


def witness_app(witness: LogWitness) -> Callable[[dict[str, Any], ASGIReceive, ASGISend], Awaitable[None]]:
    """The ASGI application answering add-checkpoint with ``witness``."""

    async def answer(send: ASGISend, status: int, body: bytes, kind: str = "text/plain; charset=utf-8",
                     close: bool = False) -> None:
        headers = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store")]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        names = [name.lower() for name, _ in scope["headers"]]
        if names.count(b"authorization") > 1:
            await answer(send, 400, b"send one Authorization header, not several\n", close=True)
            return
        if scope["path"] != "/add-checkpoint":
            await answer(send, 404, b"not found: POST /add-checkpoint\n")
            return
        if scope["method"] != "POST":
            await answer(send, 405, b"use POST /add-checkpoint\n")
            return
        lengths = [value for name, value in scope["headers"] if name.lower() == b"content-length"]
        if len(lengths) != 1 or not lengths[0].isdigit():
            await answer(send, 411, b"send one Content-Length\n", close=True)
            return
        if int(lengths[0]) > witness.max_request:
            await answer(send, 413, f"a request is at most {witness.max_request} bytes\n".encode(), close=True)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > witness.max_request:  # the length said was a lie
                await answer(send, 413, f"a request is at most {witness.max_request} bytes\n".encode(), close=True)
                return
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, witness.add_checkpoint, bytes(body))
        except KeyvaultError as exc:  # a damaged state file: nothing is cosigned until it is restored
            log.error("add-checkpoint refused: %s", exc)
            await answer(send, 503, f"{exc}\n".encode())
            return
        await answer(send, result.status, result.body, result.content_type)

    return app


def serve_witness(witness: LogWitness, host: str, port: int, limits: Limits = Limits(),
                  ready: Callable[[int], None] | None = None) -> None:
    """Serve ``witness`` until SIGTERM or SIGINT; ``ready(port)`` once the socket is bound (KeyvaultError if not)."""
    try:
        import uvicorn

        from .protocol import guarded
    except ImportError:
        raise KeyvaultError("the witness server needs uvicorn and httptools: pip install 'keyvault[service]'") from None
    sock = bind(host, port, limits.backlog)
    try:
        if ready is not None:
            ready(int(sock.getsockname()[1]))
        config = uvicorn.Config(witness_app(witness), http=guarded(limits), timeout_keep_alive=limits.keep_alive,
                                backlog=limits.backlog, lifespan="off", ws="none", interface="asgi3",
                                access_log=False, server_header=False, log_config=None)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
