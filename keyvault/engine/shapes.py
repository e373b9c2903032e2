"""The shapes of the small JSON-ready documents the engine answers with (``--json`` prints them as they are).

They are ``TypedDict``s: plain dicts at run time, so the CLI and the service
write them unchanged, and typed for callers and type checkers. The reports
are the typed values of :mod:`keyvault.engine.answers`.
"""

from __future__ import annotations

from typing import TypedDict


class _Rotated(TypedDict, total=False):
    rotated_at: int  # ms since the epoch, once rotated


class TrustRecord(_Rotated):
    """A pinned identity as stored: what ``trust.add`` and ``trust.remove`` answer."""

    name: str
    prefix: str
    role: str  # the first of its roles (what earlier versions stored alone)
    roles: list[str]  # supplier, distributor, engine, witness
    pinned_at: int  # ms since the epoch
    fingerprint: str
    rotated_from: str | None  # hex public key of the key this one replaced
    rotated_to: str | None  # hex public key of the key that replaced this one


class TrustEntry(TypedDict):
    """A pinned identity as ``trust.list`` shows it."""

    name: str
    role: str  # the first of its roles
    roles: list[str]
    prefix: str
    fingerprint: str
    public_key: str  # hex
    supplier: str  # the supplier id derived from the key
    pinned_at: str | None  # ISO 8601
    rotated_to: str | None
    rotated_from: str | None


class TokenEntry(TypedDict):
    """A service token as ``tokens.list`` shows it (never the token or its hash)."""

    name: str
    scope: str
    created_at: str | None  # ISO 8601


class CheckpointEntry(TypedDict):
    """A checkpoint the engine signed."""

    size: int  # events covered
    at: str | None  # ISO 8601
    root: str  # hex
    note: str  # the signed note (C2SP tlog-checkpoint)


class LotSent(TypedDict):
    """What ``send_lot`` answers."""

    transfer: str
    batch: str
    to: str
    to_fingerprint: str
    ranges: list[str]  # "first-last" key indices
    keys: int
    lot: str  # the sealed lot's path


class Hop(TypedDict("Hop", {"from": str})):
    """One transfer of a lot's chain of custody."""

    to: str
    transfer: str
    ranges: list[str]


class LotReceived(TypedDict):
    """What ``receive_lot`` answers."""

    batch: str
    count: int
    supplier: str
    hops: list[Hop]
