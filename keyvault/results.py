"""What checks answer: a :class:`Status` and a small immutable :class:`Result`."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


class Status(str, enum.Enum):
    """The outcome of a verify, redeem or void; the value is the JSON/CLI name."""

    VALID = "valid"  # verify: the key would redeem now
    ACCEPTED = "accepted"  # redeem: this order holds the key (also the answer to its retries)
    MALFORMED = "malformed"  # not a key: `group` names the group at fault when it can
    UNKNOWN = "unknown"  # well-formed, but no such key in this store
    REDEEMED = "redeemed"  # already redeemed, by `order_id` at `redeemed_at`
    VOID = "void"  # withdrawn (refund, recall); `reason` says why
    BLACKLISTED = "blacklisted"  # refused by a blacklist entry at `level`, with `reason`
    EXPIRED = "expired"  # the batch's validity window has ended
    NOT_YET_VALID = "not_yet_valid"  # the batch's validity window has not begun
    DAMAGED = "damaged"  # the key's record in the store is damaged: refused until the store is restored
    THROTTLED = "throttled"  # the client was refused too often: the key was not looked at
    HELD = "held"  # hold: this order holds the key until `expires_at`; elsewhere: another order holds it
    EXPIRED_HOLD = "expired_hold"  # confirm: the order's hold ended at `expires_at` before it was confirmed
    RELEASED = "released"  # release: the order's hold is given up (also the answer to a confirm after it)
    EXHAUSTED = "exhausted"  # a count-limited key has no use left

    def __str__(self) -> str:
        return self.value


_ALWAYS = frozenset({"serial", "batch", "supplier"})

#: Statuses that let a key through (the CLI exits 0 only if every key has one).
OK_STATUSES = frozenset({Status.VALID, Status.ACCEPTED})


class Result(NamedTuple):
    """One key's answer (immutable; a tuple, so the compiled core builds it cheaply).

    Never holds the key itself: only its public serial.
    """

    status: Status
    serial: str | None = None
    batch: str | None = None
    supplier: str | None = None
    supplier_name: str | None = None
    product: str | None = None
    order_id: str | None = None
    redeemed_at: str | None = None
    voided_at: str | None = None
    reason: str | None = None
    level: str | None = None
    group: int | None = None
    message: str | None = None
    uses_left: int | None = None  # count-limited keys: uses not yet spent
    expires_at: str | None = None  # a hold's end

    @property
    def ok(self) -> bool:
        """True for ``valid`` and ``accepted``."""
        return self.status in OK_STATUSES

    def holds_for(self, order_id: str) -> bool:
        """True when this is ``order_id``'s own hold (``held`` naming it), not a refusal by another's."""
        return self.status is Status.HELD and self.order_id == order_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields: status, serial, batch and supplier always (null when unknown), others when set."""
        out: dict[str, Any] = {"status": self.status.value}
        for name, value in zip(self._fields[1:], self[1:]):
            if value is not None or name in _ALWAYS:
                out[name] = value
        return out
