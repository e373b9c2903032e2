"""The per-connection limits of the service's workers: their defaults and `keyvault serve` flags (docs/service.md)."""

from __future__ import annotations

from dataclasses import dataclass

BODY_RATE = 64 * 1024  # bytes a second: each byte of a body received moves its deadline by 1/BODY_RATE s


@dataclass(frozen=True)
class Limits:
    """Per-connection limits of one worker (docs/service.md, `keyvault serve --help`)."""

    max_header_bytes: int = 16 * 1024  # request line and header lines, bytes
    max_headers: int = 100  # header lines
    max_request_line: int = 8 * 1024  # the request target (path and query), bytes
    header_timeout: float = 10.0  # seconds from a request's first byte to the end of its head
    body_timeout: float = 30.0  # seconds for a body, plus one per BODY_RATE bytes received
    keep_alive: float = 5.0  # seconds a connection may stay idle (also before its first request)
    max_connections: int = 1000  # open connections per worker
    backlog: int = 4096  # connections the kernel queues for the workers to accept
