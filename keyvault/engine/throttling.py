"""Throttling policy: how many refused attempts a client may make before it is answered ``throttled``.

A client is whatever the caller names (an account, an IP, a token's name with
the platform's own client id): keyvault counts the keys refused to it,
in every process sharing the store (``store/throttle.py``), and blocks it for
a while once more than ``max_refused`` fall within ``window_seconds``. A
blocked client's keys are not looked at: the answer says nothing about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class ThrottlePolicy:
    """At most ``max_refused`` refusals per ``window_seconds``, else blocked for ``block_seconds``.

    ``max_refused=None`` never throttles (for a trusted back office, say).
    """

    max_refused: int | None = 20
    window_seconds: int = 60
    block_seconds: int = 300

    def __post_init__(self) -> None:
        if self.max_refused is not None and (not isinstance(self.max_refused, int) or self.max_refused < 0):
            raise UsageError("max_refused is a count of refused attempts (0 or more), or None for no limit")
        if not (isinstance(self.window_seconds, int) and isinstance(self.block_seconds, int)) or \
                not 0 < self.window_seconds <= 86_400 * 30 or not 0 < self.block_seconds <= 86_400 * 30:
            raise UsageError("the window and the block last 1 second to 30 days")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"max_refused": self.max_refused, "window_seconds": self.window_seconds,
                "block_seconds": self.block_seconds}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ThrottlePolicy:
        """The stored form back."""
        return cls(doc["max_refused"], int(doc["window_seconds"]), int(doc["block_seconds"]))
