"""Throttling policy: how many refused attempts a client may make before it is answered ``throttled``.

A client is whatever the caller names (an account, an IP, a token's name with
the platform's own client id): keyvault counts the keys refused to it,
in every process sharing the store (``store/throttle.py``), and blocks it for
a while once more than ``max_refused`` fall within ``window_seconds``. The
budget is charged key by key, inside every call: a client judges at most
``max_refused + 1`` refused keys per window (the last one blocks it), however
it splits them into calls and processes. A blocked client's keys are not
looked at: the answer says nothing about them.

Imported cards (a public card number and a password, often short) have a
limit of their own, store-wide: the default policy's ``card_attempts``. A
card given that many wrong passwords is locked, whoever tried, until an
operator unlocks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

#: Wrong passwords that lock an imported card, by default.
CARD_ATTEMPTS = 5


@dataclass(frozen=True)
class ThrottlePolicy:
    """At most ``max_refused`` refusals per ``window_seconds``, else blocked for ``block_seconds``.

    ``max_refused=None`` never throttles (for a trusted back office, say). ``card_attempts`` (read
    from the store's default policy only) is how many wrong passwords lock an imported card (None: never).
    """

    max_refused: int | None = 20
    window_seconds: int = 60
    block_seconds: int = 300
    card_attempts: int | None = CARD_ATTEMPTS

    def __post_init__(self) -> None:
        if self.max_refused is not None and (not isinstance(self.max_refused, int) or self.max_refused < 0):
            raise UsageError("max_refused is a count of refused attempts (0 or more), or None for no limit")
        if not (isinstance(self.window_seconds, int) and isinstance(self.block_seconds, int)) or \
                not 0 < self.window_seconds <= 86_400 * 30 or not 0 < self.block_seconds <= 86_400 * 30:
            raise UsageError("the window and the block last 1 second to 30 days")
        if self.card_attempts is not None and (not isinstance(self.card_attempts, int) or
                                               not 1 <= self.card_attempts <= 1_000_000):
            raise UsageError("card_attempts is a count of wrong passwords (1 to 1,000,000), or None for no lock")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"max_refused": self.max_refused, "window_seconds": self.window_seconds,
                "block_seconds": self.block_seconds, "card_attempts": self.card_attempts}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ThrottlePolicy:
        """The stored form back."""
        return cls(doc["max_refused"], int(doc["window_seconds"]), int(doc["block_seconds"]),
                   doc.get("card_attempts", CARD_ATTEMPTS))

    def guesses_per_day(self) -> int | None:
        """How many refused keys one client may have judged in a day under this policy (None: no limit)."""
        if self.max_refused is None:
            return None
        staying_under = self.max_refused * -(-86_400 // self.window_seconds)
        blocked_each_time = (self.max_refused + 1) * -(-86_400 // self.block_seconds)
        return max(staying_under, blocked_each_time)
