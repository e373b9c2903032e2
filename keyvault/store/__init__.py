"""Storage behind a narrow interface: the engine sees ``LmdbStore`` and ``Txn``, never LMDB itself.

A later backend (the redeem state on a PostgreSQL-protocol database) takes
the same shape, so the hot path's callers need not change.
"""

from .lmdbstore import FORMAT, Head, LmdbStore, Txn
from .records import ACTIVE, REDEEMED, VOIDED

__all__ = ["ACTIVE", "FORMAT", "Head", "REDEEMED", "VOIDED", "LmdbStore", "Txn"]
