#!/usr/bin/env python
"""What keyvault's connection guard (keyvault/service/protocol.py) costs a request, over uvicorn's httptools protocol.

    python benchmarks/service/guard.py

One keep-alive connection over a fake transport, in process (no network and no other process: the
difference is small, and wrk runs on a shared machine move by more than it). Each iteration feeds one
POST (its head and a one-key body in one read) and runs the event loop until the answer is written.
Prints the best of 15 rounds of 20,000 requests for each protocol.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from keyvault.service.protocol import guarded
from keyvault.service.limits import Limits

BODY = b'{"keys": ["17YT-Y000-0000-028V-2CSX-TK01-VCTH-PYY5"]}'
REQUEST = (b"POST /v1/verify HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer kvt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
           b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
ROUNDS, REQUESTS = 15, 20_000


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the body, answer two bytes."""
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class Transport(asyncio.Transport):
    """Counts writes; a connection from 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write_eof(self) -> None:
        pass


async def per_request(protocol: type[asyncio.Protocol]) -> float:
    """Mean CPU microseconds per request through ``protocol``."""
    config = Config(app, http=protocol, lifespan="off", log_level="warning", ws="none")
    config.load()
    conn = protocol(config=config, server_state=ServerState(), app_state={},  # type: ignore[call-arg]
                    _loop=asyncio.get_running_loop())
    transport = Transport()
    conn.connection_made(transport)
    start = time.process_time()
    for _ in range(REQUESTS):
        before = transport.writes
        conn.data_received(REQUEST)
        while transport.writes < before + 2:  # head and body written
            await asyncio.sleep(0)
    return (time.process_time() - start) / REQUESTS * 1e6


def main() -> None:
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, protocol in (("uvicorn httptools", HttpToolsProtocol), ("keyvault guard", guarded(Limits()))):
            best[name] = min(best.get(name, float("inf")), uvloop.run(per_request(protocol)))
    for name, us in best.items():
        print(f"{name:18} {us:6.2f} us/request")
    print(f"the guard costs {best['keyvault guard'] - best['uvicorn httptools']:.2f} us/request")


if __name__ == "__main__":
    main()
