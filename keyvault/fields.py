"""Checks on the free-text fields callers pass: order ids, reasons, product names."""

from __future__ import annotations

from .errors import UsageError

MAX_ORDER_ID = 128
MAX_REASON = 500
MAX_CLIENT = 128  # a client id: an account, an IP, a token name


def check_text(value: object, what: str, limit: int) -> str:
    """``value`` stripped, or UsageError unless it is 1..limit printable characters."""
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a string")
    text = value.strip()
    if not text:
        raise UsageError(f"{what} must not be empty")
    if len(text) > limit or not text.isprintable():
        raise UsageError(f"{what} must be at most {limit} printable characters")
    return text
