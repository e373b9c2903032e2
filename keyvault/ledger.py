"""The redemption ledger: state changes appended to a sequential log, folded into card records in bulk.

A redeem that rewrote its card record in place would dirty a random page per
key (about 40 k/s durable on this class of machine); appending to a log keyed
by a growing sequence number touches only the log's last page (400 k/s+). So
redeem and void append ``seq -> serial, state, at, text`` to the ``ledger``
database, in the same transaction that decides them.

Each process keeps an *overlay*: the ledger entries not yet folded, by serial.
Before deciding anything, a transaction brings the overlay up to what it sees
(entries past the last one read; nothing to read when no one wrote), so a
decision inside a write transaction sees every earlier redeem of every
process: exactly once holds. When the ledger holds more than ``FOLD_AT``
entries, the transaction that notices folds it: card states and outcome
records are written in serial order (sequential, cheap), the entries are
deleted, and the store's head records the last folded sequence number so
other processes drop those entries from their overlays. The head (one
24-byte record: configuration generation, ledger tail, fold mark) is what
every check reads first, so keeping current costs one lookup per call.
"""

from __future__ import annotations

import struct
import threading

from .errors import StoreCorruptError
from .store import Head, Txn
from .store.records import from_u64, pack_outcome, u64

FOLD_AT = 100_000  # unfolded entries that trigger a fold: bounds the log and every overlay
_ENTRY = struct.Struct(">QBQ")  # serial, state, at ms; then the order id or reason in UTF-8

#: An overlay entry: (state, at ms, text, sequence number).
Change = tuple[int, int, str, int]


def pack_entry(serial: int, state: int, at_ms: int, text: str) -> bytes:
    """A ledger entry's value."""
    return _ENTRY.pack(serial, state, at_ms) + text.encode("utf-8")


def unpack_entry(data: bytes) -> tuple[int, int, int, str]:
    """(serial, state, at ms, text) of a ledger entry."""
    serial, state, at_ms = _ENTRY.unpack_from(data)
    return serial, state, at_ms, bytes(data[_ENTRY.size :]).decode("utf-8")


class Ledger:
    """One process's view of the ledger: the overlay of unfolded changes, kept current per transaction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._overlay: dict[int, Change] = {}
        self._seen = 0  # highest sequence number merged into the overlay
        self._folded = 0  # highest sequence number known to be folded

    def sync(self, txn: Txn, head: Head) -> dict[int, Change]:
        """The overlay as of ``txn`` (whose head is ``head``): folded entries dropped, newer entries merged."""
        folded, tail = head.ledger_folded, head.ledger_tail
        if tail <= self._seen and folded <= self._folded:
            return self._overlay  # the common case: nothing new, no lock needed
        with self._lock:
            if folded > self._folded:
                self._overlay = {s: c for s, c in self._overlay.items() if c[3] > folded}
                self._folded = folded
                self._seen = max(self._seen, folded)
            if tail > self._seen:
                for key, value in txn.items_from("ledger", u64(self._seen + 1)):
                    seq = from_u64(key)
                    serial, state, at_ms, text = unpack_entry(value)
                    self._overlay[serial] = (state, at_ms, text, seq)
                    self._seen = seq
            return self._overlay

    def learn(self, changes: list[tuple[int, int, int, str]], seqs: list[int]) -> None:
        """Merge this process's own changes after their transaction committed, sparing the next sync
        from reading them back; only when they follow on from what the overlay holds (no gap that
        another process's entries could fill)."""
        with self._lock:
            if not seqs or seqs[0] != self._seen + 1:
                return
            for (serial, state, at_ms, text), seq in zip(changes, seqs):
                self._overlay[serial] = (state, at_ms, text, seq)
            self._seen = seqs[-1]

    def append(self, txn: Txn, changes: list[tuple[int, int, int, str]]) -> list[int]:
        """Append (serial, state, at ms, text) changes in order; their sequence numbers.

        The overlay learns them from the next transaction's sync, never from this one: it may abort.
        """
        head = txn.head()
        seq = head.ledger_tail
        pairs = []
        for serial, state, at_ms, text in changes:
            seq += 1
            pairs.append((u64(seq), pack_entry(serial, state, at_ms, text)))
        if txn.put_sorted("ledger", pairs) != len(pairs):
            raise StoreCorruptError("ledger sequence numbers collided: the store is damaged; restore it from a backup")
        txn.set_head(head._replace(ledger_tail=seq))
        return [from_u64(key) for key, _ in pairs]

    def fold(self, txn: Txn, pending: dict[int, Change]) -> int:
        """Write every unfolded change (``pending``: the overlay plus this transaction's) into card and
        outcome records in serial order, empty the ledger, and record how far it was folded.

        Bulk calls only (one sorted read, two sorted writes, one drop): a fold of 100,000 changes
        is a few hundred milliseconds of page writes, not a Python loop of LMDB calls.
        """
        head = txn.head()
        keys = [u64(serial) for serial in sorted(pending)]
        cards = []
        outcomes = []
        for key, record in txn.get_many("cards", keys):
            state, at_ms, text, _ = pending[from_u64(key)]
            cards.append((key, bytes((state,)) + record[1:]))
            outcomes.append((key, pack_outcome(state, at_ms, text)))
        txn.put_many("cards", cards)
        txn.put_many("outcomes", outcomes)
        txn.clear("ledger")  # every entry is folded: none can be newer than this transaction's own
        txn.set_head(head._replace(ledger_folded=head.ledger_tail))
        return len(cards)

