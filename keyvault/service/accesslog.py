"""The access log: one line per request (method, route, status, time), written once per event-loop turn.

Python's logging costs about 15 us a line here, a third of a one-key verify;
so the lines of every request answered in one turn of the loop are joined
and written to stderr with one ``write``. The format matches the server's
other log lines. A line never holds a key, a token, a query string or a body:
the route is the template (``/v1/trace/{serial}``), not the raw path.
"""

from __future__ import annotations

import asyncio
import os
import time


class AccessLog:
    """Buffers this turn's access lines and writes them at its end."""

    def __init__(self, fd: int = 2, enabled: bool = True) -> None:
        self.enabled = enabled
        self._fd = fd
        self._lines: list[str] = []
        self._tag = f" INFO keyvault.access[{os.getpid()}] "

    def add(self, method: str, route: str, status: int, seconds: float) -> None:
        """Note one answered request."""
        if not self.enabled:
            return
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.append(f"{method} {route} {status} {seconds * 1000:.2f}ms\n")

    def flush(self) -> None:
        """Write the buffered lines, stamped with the current time."""
        lines, self._lines = self._lines, []
        if not lines:
            return
        now = time.time()
        prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now * 1000) % 1000:03d}" + self._tag
        try:
            os.write(self._fd, "".join(prefix + line for line in lines).encode())
        except OSError:
            pass  # a closed or full stderr must not fail requests
