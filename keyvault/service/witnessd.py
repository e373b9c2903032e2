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
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..engine import LogWitness, list_witnesses, newest_checkpoint, submit_all
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


class Submitter:
    """``keyvault serve``'s witness submissions for a single store: each new checkpoint goes to every witness the
    store names (`keyvault witness add`), in a background thread, each request with a deadline; a round with a
    failure is tried again after an exponential backoff (logged), a newer checkpoint waits for it too. A store
    bound to a cluster names none of its own: the cluster's sequencer submits the cluster's checkpoints."""

    def __init__(self, vault: Any, interval: float = 1.0, timeout: float = 10.0, max_backoff: float = 300.0) -> None:
        self.vault = vault
        self.interval = interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.done = 0  # the newest size every named witness cosigned
        self.failures = 0
        self.retry_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> list[dict[str, Any]] | None:
        """One look: submit the newest checkpoint when it is new and no backoff runs; the outcomes, or None."""
        named = list_witnesses(self.vault.engine, store_only=True)  # a cluster's sequencer submits the cluster's
        if not named or time.monotonic() < self.retry_at:
            return None
        size, _ = newest_checkpoint(self.vault.engine)
        if size <= self.done:
            return None
        outcomes = submit_all(self.vault.engine, timeout=self.timeout)
        if all(o["ok"] for o in outcomes):
            self.done, self.failures, self.retry_at = size, 0, 0.0
        else:
            self.failures += 1
            pause = min(self.max_backoff, self.interval * 2 ** min(self.failures, 20))
            self.retry_at = time.monotonic() + pause
            log.warning("checkpoint %s: %d of %d witnesses did not cosign; next try in %.0f s", size,
                        sum(not o["ok"] for o in outcomes), len(outcomes), pause)
        return outcomes

    def start(self) -> Submitter:
        """Run in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="keyvault-witness-submit", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
            except KeyvaultError as exc:  # no checkpoint yet, a busy store: the next look
                log.debug("witness submission: %s", exc)
            except Exception:  # noqa: BLE001 - never stops the service; logged for the operator
                log.exception("witness submission failed")

    def stop(self) -> None:
        """Stop the thread (a request under way ends at its deadline)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
