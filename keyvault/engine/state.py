"""What every operation of the engine works on: the store, the pepper, the event log, the overlay and the catalog.

:class:`State` is the engine's base: the operation modules (issuing, lots,
trust, the store check) take a ``State`` and never reach past it, and
:class:`~keyvault.engine.engine.Engine` adds the operations on top.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import StoreCorruptError
from ..formats.identity import Identity
from ..store import Head, LmdbStore, Txn
from ..store.records import load
from .catalog import Catalog
from .eventlog import EventLog, Policy
from .subjects import folded_change
from .ledger import Ledger
from .throttling import ThrottlePolicy


class State:
    """An open store with its pepper and engine key, and the in-memory views kept current across processes."""

    def __init__(self, store: LmdbStore, pepper: bytes, engine: Identity) -> None:
        #: The LMDB store (every read and write goes through it).
        self.store = store
        #: The secret that keys every stored hash (never written into the store).
        self.pepper = pepper
        #: The signed event log: every state change, appended in the transaction that decides it.
        self.log = EventLog(engine)
        #: The overlay of redeems and voids not yet folded into the card records.
        self.ledger = Ledger(self.log, pepper)
        self.log.key_change = self._key_change
        #: Throttle policies by client ("" is the store's default), reloaded with the catalog.
        self.policies: dict[str, ThrottlePolicy] = {"": ThrottlePolicy()}
        self._catalog = Catalog()

    def _key_change(self, txn: Txn, serial: int) -> int | None:
        """The event index of a key's redeem or void: unfolded (the overlay) or folded (its outcome)."""
        change = self.ledger.sync(txn, txn.head()).get(serial)
        return change[3] if change is not None else folded_change(txn, serial)

    @property
    def path(self) -> Path:
        """The store directory."""
        return self.store.path

    def current(self, txn: Txn, head: Head | None = None) -> Catalog:
        """The catalog, reloaded if any process changed the configuration since it was read."""
        generation = (head or txn.head()).generation
        if txn.bumped:  # this transaction's own changes: never cached, it may abort and its number be reused
            return Catalog.load(txn, generation)
        catalog = self._catalog
        if catalog.generation != generation:
            catalog = Catalog.load(txn, generation)
            policy = txn.get("meta", b"checkpoint_policy")
            throttling = txn.get("meta", b"throttle_policy")
            policies = {"": ThrottlePolicy()}
            try:
                if policy is not None:
                    doc = load(policy)
                    self.log.policy = Policy(int(doc["every_events"]), int(doc["every_seconds"]))
                if throttling is not None:
                    policies.update({who: ThrottlePolicy.from_dict(d) for who, d in load(throttling).items()})
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # (StoreCorruptError is none of these)
                raise StoreCorruptError(f"the store's checkpoint or throttle policy record is damaged "
                                        f"({type(exc).__name__}): run `keyvault check` and restore the store from "
                                        "a backup") from None
            self.policies = policies
            self._catalog = catalog
        return catalog

    @property
    def cached(self) -> Catalog:
        """The catalog as last read (current as of this process's last transaction)."""
        return self._catalog

    def catalog(self) -> Catalog:
        """A current snapshot of batches, suppliers, blacklist entries, trust and tokens."""
        with self.store.read() as txn:
            return self.current(txn)
