"""The connection guard: the limits uvicorn's httptools protocol does not enforce, enforced before the app runs.

uvicorn's ``HttpToolsProtocol`` bounds neither a request head's size (a
300 MiB header grew a worker from 39 MB to 594 MB) nor the time a head or a
body may take to arrive (slowloris), and it times out only connections that
have already answered a request, so connections that never send a byte stay
open. ``GuardedProtocol`` subclasses it (``uvicorn.Config(http=...)``
accepts a class) and adds, per connection, before any ASGI code runs and
without a token:

- the request head (request line and headers) in bytes: counted on the raw
  bytes as they arrive, so a head over the limit is refused (431) before more
  than one read's worth of it is buffered; its header lines (431) and its
  request target (414), checked once the head is parsed (both bounded by
  the bytes meanwhile);
- a deadline for the head, from its first byte (408), and for the body, from
  the end of the head, growing with every byte received (a body that keeps
  coming at ``BODY_RATE`` or faster is never cut; one that trickles is): 408;
- the keep-alive idle timeout from the moment a connection opens, not only
  after its first answer: an idle connection is closed silently;
- a cap on each worker's connections: past it, the connection idle longest
  (or still sending its head) is closed to make room, so a flood of idle
  or half-open connections cannot lock legitimate clients out; with every
  connection busy in a request, the new one gets 503 ``overloaded``.

Refusals are problem documents (problems.py) written straight to the
transport, followed by a lingering close (our side shut, the rest of what the
client sends read and dropped for ``LINGER_SECONDS``, up to ``LINGER_BYTES``),
so a client still sending the rest of its request sees the answer instead of
a reset, and one streaming without end is cut off.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .accesslog import request_id
from .problems import Problem
from .limits import BODY_RATE, Limits

LINGER_SECONDS = 1.0  # after a refusal, what the client still sends is read and dropped this long,
LINGER_BYTES = 256 * 1024  # up to this much: a client that sends on regardless is cut off


class _Refused(Exception):
    """Raised from a parser callback to stop parsing: the connection was refused."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with keyvault's limits (a subclass per worker: ``guarded(limits)``)."""

    limits: ClassVar[Limits] = Limits()
    #: This worker's connections that no request of theirs is being answered on, the longest idle first.
    evictable: ClassVar[dict[GuardedProtocol, None]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head = False  # a request head is arriving
        self._body = False  # a request body is arriving
        self._head_raw = 0  # bytes received since the head began (an upper bound: counted per chunk)
        self._started = 0.0  # when the head, or the body, began (loop time)
        self._body_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._dropped = 0  # bytes read and dropped since the refusal
        self._refusal: tuple[str, str] | None = None  # set by a callback before it raises _Refused

    # -- connections ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            if self.evictable:
                oldest = next(iter(self.evictable))
                del self.evictable[oldest]
                oldest.transport.close()  # idle, or still sending its head: it can retry
            else:
                self._refuse("overloaded", f"this worker has {self.limits.max_connections} connections, every "
                             "one with a request in progress; retry in a moment")
                return
        self.evictable[self] = None
        # uvicorn arms the keep-alive timeout only after a response: a connection that never sends would stay.
        self.timeout_keep_alive_task = self.loop.call_later(self.limits.keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self.evictable.pop(self, None)
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering: read and dropped, up to LINGER_BYTES
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self._body:
            self._body_bytes += len(data)
        elif not self._head:  # the first bytes of a request
            self._head = True
            self._head_raw = 0
            self._started = self.loop.time()
        if self._head:
            self._head_raw += len(data)  # an upper bound of the head's size: the chunk may hold a body too
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no WebSocket here: the request was handed to the application as a plain request
        except httptools.HttpParserError:
            name, detail = self._refusal or ("bad-request", "that is not a valid HTTP/1.1 request")
            self._refuse(name, detail)
            return
        if self._head:
            if self._head_raw > self.limits.max_header_bytes:
                self._refuse(*self._head_too_large())
            elif self._timer is None:
                self._timer = self.loop.call_at(self._started + self.limits.header_timeout, self._head_late)
        elif self._body and self._timer is None:
            self._started = self.loop.time()
            self._timer = self.loop.call_at(self._started + self.limits.body_timeout, self._body_late)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle again (nothing pipelined): evictable, newest
            self.evictable[self] = None

    # -- parser callbacks (only these two: each override costs every request) ----------------------------

    def on_headers_complete(self) -> None:
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            self._stop("headers-too-large", f"send at most {limits.max_headers} header lines")
        if len(self.url) > limits.max_request_line:
            self._stop("uri-too-long", f"the request target is at most {limits.max_request_line} bytes")
        if self._head_raw > limits.max_header_bytes and \
                len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > limits.max_header_bytes:
            self._stop(*self._head_too_large())
        self._head = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.evictable.pop(self, None)  # a request is in progress on it
        self._body = True
        self._body_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().on_message_complete()

    # -- refusals -----------------------------------------------------------------------------------------

    def _head_too_large(self) -> tuple[str, str]:
        return "headers-too-large", f"the request line and headers are at most {self.limits.max_header_bytes} bytes"

    def _stop(self, name: str, detail: str) -> None:
        self._refusal = (name, detail)
        raise _Refused(detail)

    def _head_late(self) -> None:
        self._timer = None
        if self._head and not self._refused:
            self._refuse("request-timeout", f"send the request line and headers within "
                         f"{self.limits.header_timeout:g} s of the first byte")

    def _body_late(self) -> None:
        self._timer = None
        if not self._body or self._refused:
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the application has not read what came: not the client's delay
            self._started, self._body_bytes = now, 0
        due = self._started + self.limits.body_timeout + self._body_bytes / BODY_RATE
        if now < due:
            self._timer = self.loop.call_at(due, self._body_late)
            return
        self._refuse("request-timeout", f"send the body within {self.limits.body_timeout:g} s, plus a second "
                     f"for each {BODY_RATE // 1024} KiB")

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, name: str, detail: str) -> None:
        """Answer ``name`` (when no other answer is under way on this connection) and close it, lingering."""
        self._refused = True
        self._cancel()
        self._unset_keepalive_if_required()
        self.evictable.pop(self, None)
        cycle = self.cycle
        if self._body:  # the body of the current request: answer it unless the application already did
            answer = cycle is not None and not cycle.response_started
        else:  # a head: answer unless an earlier (pipelined) request's answer is pending
            answer = cycle is None or cycle.response_complete
        transport = self.transport
        if transport.is_closing():
            return
        if answer:
            problem = Problem(name, detail)
            rid = request_id(getattr(self, "headers", None) or [])  # the client's, if its head was parsed
            body = problem.body(rid)
            transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\n"
                            b"cache-control: no-store\r\nx-request-id: %s\r\nconnection: close\r\n\r\n%s"
                            % (problem.status, HTTPStatus(problem.status).phrase.encode(), len(body), rid, body))
            if cycle is not None:
                cycle.keep_alive = False
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            transport.close()
            return
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own 400 (plain text): a problem document instead."""
        self._refuse("bad-request", "that is not a valid HTTP/1.1 request")


def guarded(limits: Limits) -> type[GuardedProtocol]:
    """The protocol class for one worker's ``uvicorn.Config(http=...)``, with ``limits``."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits, "evictable": {}})
