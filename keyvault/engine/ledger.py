"""Redeem and void state: appended to the event log, folded into card records in bulk.

A redeem that rewrote its card record in place would dirty a random page per
key (about 40 k/s durable on this class of machine); appending to a log keyed
by a growing index touches only the log's last pages (400 k/s+). So redeem
and void are events in the store's event log (eventlog.py), written by the
transaction that decides them, and the card records catch up later.

Each process keeps an *overlay*: the redeems and voids not yet folded, by
serial. Before deciding anything, a transaction brings the overlay up to
what it sees (events past the last one read; nothing to read when no one
wrote), so a decision inside a write transaction sees every earlier redeem
of every process: exactly once holds. When more than ``FOLD_AT`` changes are
unfolded, the transaction that notices folds them all, or, when the vault
folds in slices (``Vault.fold_slices``), the oldest of them, leaving
``FOLD_AT - FOLD_AT // fold_slices`` (a shorter pause for every process's
redeems, more often, at a cost in throughput): card states and outcome records are written in serial
order (sequential, cheap), each naming its event in the log (for the key's
trace), and the head records the log index before which every change is
folded, so other processes drop those changes from their overlays. The events stay: the log
is the store's permanent, signed history.

Damage is refused, never believed: the catch-up reads events only in an unbroken run (each under
the next index, naming its own index, naming the hash of the event before it), checks the last
one against the log's tail record, and merges nothing unless the whole run holds; otherwise the
call fails with StoreCorruptError naming the event (a redeem or void it cannot read is a spent key
it cannot see). A fold re-seals only card records whose seal still vouches for them.
"""

from __future__ import annotations

import threading
from itertools import islice

from .. import _fast
from ..errors import StoreCorruptError
from ..formats.events import KIND_NAMES, LEAF, TAGS, body_at, change_of
from ..formats.merkle import leaf_hash
from ..store import Head, Txn
from ..store.records import U64, from_u64, u64
from .eventlog import EventLog

FOLD_AT = 100_000  # unfolded changes that trigger a fold: bounds every overlay

#: An overlay entry: (state, at ms, text, event index).
Change = tuple[int, int, str, int]


class Ledger:
    """One process's view of unfolded redeems and voids, kept current per transaction."""

    def __init__(self, log: EventLog, pepper: bytes) -> None:
        self._log = log
        self._pepper = pepper  # keys the card and outcome records' seals a fold writes
        self._lock = threading.Lock()
        self._overlay: dict[int, Change] = {}
        self._seen = 0  # events read into the overlay (the next index to read)
        self._prev: bytes | None = _ZERO  # the hash of event _seen - 1 (None: read it when needed)
        self._folded = 0  # log size at the last fold this process knows of

    def sync(self, txn: Txn, head: Head) -> dict[int, Change]:
        """The overlay as of ``txn`` (whose head is ``head``): folded changes dropped, newer ones merged."""
        folded, size = head.folded, head.log_size
        if size <= self._seen and folded <= self._folded:
            return self._overlay  # the common case: nothing new, no lock needed
        with self._lock:
            if folded > size:
                raise StoreCorruptError(f"the store's head says {folded} events are folded but the log holds {size}: "
                                        "the head record is damaged; run `keyvault check` and restore the store "
                                        "from a backup")
            if folded > self._folded:
                self._overlay = {s: c for s, c in self._overlay.items() if c[3] >= folded}
                self._folded = folded
                if folded > self._seen:
                    self._seen, self._prev = folded, None
            if size > self._seen:
                self._catch_up(txn, size)
            return self._overlay

    def _catch_up(self, txn: Txn, size: int) -> None:
        """Read events _seen..size-1 into the overlay: all of them, each sound, or none (StoreCorruptError)."""
        index = self._seen
        prev = self._prev
        if prev is None:
            prev = leaf_hash(self._log.leaf(txn, index - 1)) if index else _ZERO
        found: list[tuple[int, Change]] = []
        for key, leaf in txn.items_from("events", u64(index)):
            if index >= size:
                break
            if from_u64(key) != index:
                raise _damaged(index, "is missing (the log skips to the event stored after it)")
            if len(leaf) < LEAF.size or bytes(leaf[:9]) not in TAGS or from_u64(leaf[9:17]) != index \
                    or leaf[49] not in KIND_NAMES:
                raise _damaged(index, "is not an event leaf of its place")
            if bytes(leaf[17:49]) != prev:
                raise _damaged(index, f"does not name the hash of event {index - 1} (one of the two is damaged)")
            if leaf[49] in _CHANGES and len(leaf) < _body_at(leaf, index) + 8:
                raise _damaged(index, "is too short for a redeem or void")
            change = change_of(leaf)
            if change is not None:
                serial, state, at_ms, text = change
                found.append((serial, (state, at_ms, text, index)))
            prev = leaf_hash(bytes(leaf))
            index += 1
        if index < size:
            raise _damaged(index, "is missing (the log ends before its head says)")
        tail = txn.get("meta", b"log")
        if tail is None or bytes(tail[:32]) != prev:
            raise _damaged(size - 1, "does not hash to the log's tail record")
        for serial, change in found:
            self._overlay[serial] = change
        self._seen, self._prev = index, prev

    def learn(self, changes: list[tuple[int, int, int, str]], indices: list[int]) -> None:
        """Merge this process's own changes after their transaction committed, sparing the next sync
        from reading them back; only when they follow on from what the overlay holds (no gap that
        another process's events could fill)."""
        with self._lock:
            if not indices or indices[0] != self._seen:
                return
            for (serial, state, at_ms, text), index in zip(changes, indices):
                self._overlay[serial] = (state, at_ms, text, index)
            self._seen, self._prev = indices[-1] + 1, None

    def append(self, txn: Txn, changes: list[tuple[int, int, int, str]]) -> list[int]:
        """Append (serial, state, at ms, text) changes to the event log, in order; their indices.

        The overlay learns them from the next transaction's sync, never from this one: it may abort.
        """
        return self._log.append_changes(txn, changes)

    def fold(self, txn: Txn, pending: dict[int, Change], at_most: int | None = None) -> int:
        """Write the oldest unfolded changes (at most ``at_most``; ``pending``: the overlay plus this
        transaction's, in log order) into card and outcome records (which name each change's event) in
        serial order, and record how far the log is folded: every change before the first one left.

        Bulk calls only (one sorted read, two sorted writes). A fold of 100,000 changes is a few hundred
        milliseconds of page writes, and every redeem of every process waits for it; folding a slice of
        the oldest at a time keeps each pause short.
        """
        head = txn.head()
        folded = head.log_size
        if at_most is not None and len(pending) > at_most:
            pending, folded = _oldest(pending, at_most)
        keys = list(map(U64.pack, sorted(pending)))  # u64 of each, without a Python call per key
        cards, outcomes = _fast.fold_records(pending, txn.get_many("cards", keys), self._pepper)  # records.pack_outcome's layout
        txn.put_many("cards", cards)
        txn.put_many("outcomes", outcomes)
        txn.set_head(head._replace(folded=folded))
        return len(cards)


def _damaged(index: int, what: str) -> StoreCorruptError:
    return StoreCorruptError(f"event {index} of the event log {what}: the log is damaged, and the redeems and voids "
                             "it records cannot be trusted; nothing was decided. Run `keyvault check` and restore "
                             "the store from a backup")


_ZERO = bytes(32)
_CHANGES = (_fast.KIND_REDEEM, _fast.KIND_VOID)


def _oldest(pending: dict[int, Change], n: int) -> tuple[dict[int, Change], int]:
    """The ``n`` changes earliest in the log, and the log index of the first change left after them.

    The overlay holds its changes in log order (it reads and learns them in that order, one change
    per serial), so they are its first ``n`` items; checked, and sorted when that ever fails to hold.
    """
    items = iter(pending.items())
    oldest = dict(islice(items, n))
    left = min(change[3] for _, change in items)
    if max(change[3] for change in oldest.values()) < left:
        return oldest, left
    by_index = sorted(pending.items(), key=lambda item: item[1][3])
    return dict(by_index[:n]), by_index[n][1][3]


def _body_at(leaf: bytes, index: int) -> int:
    """Where event ``index``'s body starts; StoreCorruptError naming it when its links section is damaged."""
    try:
        return body_at(bytes(leaf))
    except StoreCorruptError:
        raise _damaged(index, "has a damaged links section") from None
