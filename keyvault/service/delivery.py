"""The webhook delivery worker: posts each endpoint's messages in log order, at least once, signed.

One worker per store (a lock file beside it: a second one waits as a
standby). It runs a thread per active endpoint: the thread reads the next
messages past the endpoint's cursor (``vault.webhooks.due``), posts each one
signed per Standard Webhooks (``webhook-id`` is the event's, the same on
every retry), and moves the cursor once a run of them was answered 2xx. A
failure (a non-2xx status, a timeout, a refused connection) is retried,
the same message first, after an exponential backoff with jitter, capped:
so events reach an endpoint in log order, which is each key's order. A
crash between a delivery and its acknowledgement resends it, with the same
id: receivers de-duplicate on ``webhook-id``. Delivery never touches the
store's writer lock: a slow or dead receiver never slows a redeem. Its threads
read the log in read transactions of their own, a run of up to 100 messages
at a time, and are scheduled below the process (``nice``): on a machine with
no CPU to spare, redeems are served first and delivery runs behind them.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from ..engine import Due, Message
from ..errors import NotFoundError
from ..formats import webhooks as signing
from ..vault import Vault

log = logging.getLogger("keyvault.webhooks")
USER_AGENT = "keyvault-webhooks"
_SIGNED = ("Webhook-Id", "Webhook-Timestamp", "Webhook-Signature")  # the Standard Webhooks headers sent


def lower_priority(nice: int) -> bool:
    """Schedule the calling thread ``nice`` steps below its process (Linux, where a thread has its own niceness;
    elsewhere nothing is done, since it would lower the whole process): whether it was done."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        return False
    return True


class DeliveryFailed(Exception):
    """One attempt failed: the message says how (status, timeout, connection)."""


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after ``attempts`` failures in a row: base doubled each time, capped, with jitter
    (a random point in the upper half, so receivers coming back are not hit by every sender at once)."""
    delay = min(cap, base * 2 ** min(max(attempts, 1) - 1, 62))
    return delay / 2 + random.uniform(0, delay / 2)


class _Poster:
    """One endpoint's HTTP/1.1 connection, kept alive between messages and made again after a failure.

    Each message leaves in one write (request line, headers and body together: no second segment waiting on
    the first's acknowledgement, half the system calls of ``http.client``'s request); the answer is read by
    ``http.client.HTTPResponse`` (status, headers, any body framing)."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        name = self._host if self._host.isascii() else self._host.encode("idna").decode("ascii")
        host = (f"[{name}]" if ":" in name else name) + (f":{parts.port}" if parts.port else "")
        self._head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
                      "Content-Type: application/json\r\n").encode("ascii", "strict")
        self._netloc = parts.netloc
        self._timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return sock

    def post(self, secret: str, message: Message) -> None:
        """Send one message; DeliveryFailed unless the receiver answered 2xx."""
        signed = signing.sign(secret, message.id, int(time.time()), message.body)
        request = b"".join((self._head, *(f"{name}: {signed[name.lower()]}\r\n".encode() for name in _SIGNED),
                            b"Content-Length: %d\r\n\r\n" % len(message.body), message.body))
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.sendall(request)
            response = http.client.HTTPResponse(self._sock, method="POST")
            try:
                response.begin()
                response.read(65536)
                status, close = response.status, response.will_close or not response.isclosed()
            finally:
                response.close()
            if close:  # the receiver closes (or left a body unread): a new connection for the next message
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise DeliveryFailed(f"{what} (posting to {self._netloc})") from None
        if not 200 <= status < 300:
            self.close()
            raise DeliveryFailed(f"the receiver answered HTTP {status}")

    def close(self) -> None:
        """Drop the connection."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Delivery:
    """The delivery worker of one open vault: :meth:`run` until ``stopping`` is set, or :meth:`start` a thread."""

    def __init__(self, vault: Vault, *, timeout: float = 10.0, retry_base: float = 1.0, retry_cap: float = 300.0,
                 poll: float = 0.2, batch: int = 100, nice: int = 10) -> None:
        self.vault = vault
        self.timeout, self.retry_base, self.retry_cap = timeout, retry_base, retry_cap
        self.poll, self.batch = poll, batch
        #: How much lower than the process the endpoint threads are scheduled (Linux: per thread), so that
        #: on a busy machine the CPU goes to redeems first and delivery runs behind them, never ahead.
        self.nice = nice
        self.stopping = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._failures: dict[str, int] = {}  # failed attempts in a row, per endpoint
        self._thread: threading.Thread | None = None

    def start(self) -> Delivery:
        """Run in a background thread; :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.run, name="keyvault-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 15.0) -> None:
        """Stop delivering (a post under way finishes or times out) and wait for the threads."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(wait)

    def run(self) -> None:
        """Deliver until stopped: standby while another worker holds the store's delivery lock."""
        fd = None
        while fd is None:
            fd = self.vault.webhooks.claim()
            if fd is None and self.stopping.wait(1.0):
                return
        try:
            while not self.stopping.is_set():
                try:
                    endpoints = self.vault.webhooks.list()
                except Exception:  # noqa: BLE001 - logged; the worker keeps going
                    log.exception("webhooks: reading the endpoints failed")
                    endpoints = []
                for endpoint in endpoints:
                    running = self._threads.get(endpoint["id"])
                    if not endpoint["paused"] and (running is None or not running.is_alive()):
                        thread = threading.Thread(target=self._endpoint, args=(endpoint["id"],),
                                                  name=f"keyvault-webhook-{endpoint['id']}", daemon=True)
                        self._threads[endpoint["id"]] = thread
                        thread.start()
                self.stopping.wait(self.poll)
            for thread in self._threads.values():
                thread.join(self.timeout + 1)
        finally:
            os.close(fd)

    def _endpoint(self, endpoint: str) -> None:
        lower_priority(self.nice)
        try:
            self._deliver(endpoint)
        except Exception:  # noqa: BLE001 - a damaged record or store: said, and started again by run()
            log.exception("webhooks: delivering to %s failed", endpoint)
            self.stopping.wait(1.0)

    def _deliver(self, endpoint: str) -> None:
        hooks = self.vault.webhooks
        poster: _Poster | None = None
        acked: int | None = None
        try:
            while not self.stopping.is_set():
                due = hooks.due(endpoint, self.batch)
                if due is None:
                    return  # paused or removed: run() starts a thread again when it is resumed
                if poster is None or poster.url != due.url:
                    if poster is not None:
                        poster.close()
                    poster = _Poster(due.url, self.timeout)
                if not due.messages:
                    if due.cursor != acked:  # events of other kinds were passed over
                        hooks.ack(endpoint, due.epoch, due.cursor, 0)
                        acked = due.cursor
                    self.stopping.wait(self.poll)
                    continue
                if self._send(poster, due):
                    hooks.ack(endpoint, due.epoch, due.cursor, len(due.messages))
                    acked = due.cursor
                else:
                    acked = None
        finally:
            if poster is not None:
                poster.close()

    def _send(self, poster: _Poster, due: Due) -> bool:
        """Post every message of ``due`` in order; False when stopped, paused, replayed or removed on the way
        (what was delivered is acknowledged first)."""
        webhooks = self.vault.webhooks
        for i, message in enumerate(due.messages):
            while True:
                try:
                    poster.post(due.secret, message)
                    self._failures.pop(due.endpoint, None)
                    break
                except DeliveryFailed as exc:
                    if i:  # acknowledge what was delivered: from here on, this message is the next
                        webhooks.ack(due.endpoint, due.epoch, message.index, i)
                    failures = self._failures[due.endpoint] = self._failures.get(due.endpoint, 0) + 1
                    delay = backoff(failures, self.retry_base, self.retry_cap)
                    webhooks.fail(due.endpoint, str(exc), int((time.time() + delay) * 1000))
                    log.warning("webhooks: %s (event %d) to %s: %s; retrying in %.1f s", message.id, message.index,
                                due.endpoint, exc, delay)
                    if self.stopping.wait(delay):
                        return False
                    try:
                        record = webhooks.get(due.endpoint)
                    except NotFoundError:
                        return False
                    if record["paused"] or record["epoch"] != due.epoch or i:
                        return False  # again from the acknowledged cursor: the same message first
        return True


def start(store: Path, pepper_file: Path | None) -> Delivery:
    """Open the store and deliver its webhooks in a background thread (``keyvault serve``'s supervisor)."""
    return Delivery(Vault.open(store, pepper_file=pepper_file)).start()
