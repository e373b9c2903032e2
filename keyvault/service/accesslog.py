"""The access log: one line per request (method, route, status, time, request id), written once per loop turn.

Python's logging costs about 15 us a line here, a third of a one-key verify;
so the lines of every request answered in one turn of the loop are joined
and written to stderr with one ``write``. The format matches the server's
other log lines (logs.py), text or JSON. A line never holds a key, a token, a
query string or a body: the route is the template (``/v1/trace/{serial}``),
not the raw path.

Every request has an id: the client's ``X-Request-Id`` when it is 1 to 128
visible ASCII characters, else a new random one (:func:`request_id`); an id
that is a valid card key is replaced too, so a client's mistake never puts a
key in the log (about one random 32-character id in a million parses as
one). The
service returns it in the ``X-Request-Id`` header, in problem documents and in
the access line, so one failed call can be found in the operator's log.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time

from ..errors import MalformedKeyError
from ..formats.keyformat import key_material, looks_native
from .logs import utc_stamp

MAX_REQUEST_ID = 128
KEY_SYMBOLS = 32  # a native key has this many symbols: a shorter id cannot be one
_VALID_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID).fullmatch


def _j(text: str) -> str:
    """``text`` as the inside of a JSON string: visible ASCII here (ids, methods), so only " and \\ need escaping."""
    return text.replace("\\", "\\\\").replace('"', '\\"') if '"' in text or "\\" in text else text


def request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request's id: its first ``X-Request-Id`` if 1-128 visible ASCII characters and not a card key, else
    a new one (16 hex)."""
    for name, value in headers:
        if name == b"x-request-id":
            if _VALID_ID(value) and not (len(value) >= KEY_SYMBOLS and _is_key(value.decode("ascii"))):
                return value
            break
    return secrets.token_hex(8).encode()


def _is_key(text: str) -> bool:
    """True when ``text`` is a valid native card key (a client's mistake the log must not keep)."""
    if not looks_native(text):
        return False
    try:
        key_material(text)  # a native key's shape that fails its checks raises
    except MalformedKeyError:
        return False
    return True


class AccessLog:
    """Buffers this turn's access lines and writes them at its end."""

    def __init__(self, fd: int = 2, enabled: bool = True, log_format: str = "text") -> None:
        self.enabled = enabled
        self._fd = fd
        self._json = log_format == "json"
        self._lines: list[tuple[str, str, int, float, bytes]] = []
        self._pid = os.getpid()
        self._tag = f" INFO keyvault.access[{self._pid}] "

    def add(self, method: str, route: str, status: int, seconds: float, request: bytes = b"-") -> None:
        """Note one answered request (``request``: its id)."""
        if not self.enabled:
            return
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.append((method, route, status, seconds, request))

    def flush(self) -> None:
        """Write the buffered lines, stamped with the current time."""
        lines, self._lines = self._lines, []
        if not lines:
            return
        now = time.time()
        if self._json:  # written out, not encoded: twice as fast; every value is escaped where it needs it
            head = f'{{"time":"{utc_stamp(now)}","level":"INFO","logger":"keyvault.access","pid":{self._pid},'
            data = "".join(
                f'{head}"message":"{_j(method)} {route} {status} {seconds * 1000:.2f}ms","method":"{_j(method)}",'
                f'"route":"{route}","status":{status},"ms":{seconds * 1000:.3f},"request_id":"{_j(request.decode())}"}}\n'
                for method, route, status, seconds, request in lines).encode()
        else:
            prefix = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now * 1000) % 1000:03d}"
                      + self._tag)
            data = "".join(f"{prefix}{method} {route} {status} {seconds * 1000:.2f}ms request_id="
                           f"{request.decode('ascii')}\n"
                           for method, route, status, seconds, request in lines).encode()
        try:
            os.write(self._fd, data)
        except OSError:
            pass  # a closed or full stderr must not fail requests
