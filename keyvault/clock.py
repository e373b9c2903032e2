"""Time as the store keeps it (milliseconds since the epoch) and as people read it (ISO 8601 UTC)."""

from __future__ import annotations

import datetime as _dt
import time


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC, e.g. 2026-11-25T06:00:00.000Z."""
    if ms is None:
        return None
    moment = _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
