"""Who decides redeems, voids and blacklist entries: the node's own store, or a shared PostgreSQL authority.

Without an authority (the default) every decision is the store's own LMDB
transaction (``local.py``: today's path, unchanged). A store *bound* to an
authority (``keyvault authority set DSN``) judges format, check symbols, tag
and validity window locally with the compiled hot path and asks PostgreSQL
(``postgres.py``) for the decision on what many nodes share: one statement per
batch, which re-checks void and blacklist itself, answered only once its
COMMIT has returned. psycopg is imported only when a store is bound.
"""

from __future__ import annotations

from typing import Any, Protocol

from .local import LocalAuthority

#: A candidate for a redeem decision: (serial, order id, key, batch and supplier blacklist targets, eligible).
Candidate = tuple[int, str, bytes, bytes, bytes, bool]

#: What the authority holds for one serial: (state, text, at ms) or None, and each level's (reason, at ms) or None.
Standing = tuple[tuple[int, str, int] | None, tuple[str, int] | None, tuple[str, int] | None,
                 tuple[str, int] | None]

#: Meta key holding the DSN of the authority a store is bound to.
META_KEY = b"authority"


class Authority(Protocol):
    """The decisions a node does not take alone."""

    remote: bool

    def close(self) -> None:
        """Release the connection (nothing else changes)."""


class RemoteAuthority(Authority, Protocol):
    """An authority many nodes share (PostgreSQL)."""

    def redeem(self, candidates: list[Candidate], now: int) -> dict[int, Standing]:
        """Decide redeems in one transaction; every candidate's standing after COMMIT returned."""

    def void(self, serial: int, reason: str, now: int) -> tuple[int, str, int]:
        """Void an unused key; the key's (state, text, at ms) afterwards."""

    def blacklist(self, target: bytes, level: str, shown: str, reason: str, now: int) -> None:
        """Add or replace a blacklist entry."""

    def lift(self, target: bytes, level: str, shown: str, reason: str, now: int) -> bool:
        """Remove a blacklist entry; False when there was none."""

    def check(self) -> dict[str, Any]:
        """Reachability, schema version, replication state and the newest change number."""


__all__ = ["META_KEY", "Authority", "Candidate", "LocalAuthority", "RemoteAuthority", "Standing"]
