"""The default authority: the node's own LMDB store decides, in the transaction that records the change."""

from __future__ import annotations


class LocalAuthority:
    """Every decision is the store's own durable write transaction (the engine's embedded path, unchanged)."""

    #: False: nothing leaves the node; the engine decides in its LMDB write transaction.
    remote = False

    def close(self) -> None:
        """Nothing to release: the store is the engine's."""

    def __repr__(self) -> str:
        return "<LocalAuthority>"
