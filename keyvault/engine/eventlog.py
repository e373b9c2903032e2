"""The event log: every state change of a store, hash-chained, in an append-only RFC 9162 Merkle tree.

Each event is one leaf (docs/provenance.md): ``kv1/event || u64 index ||
previous leaf hash || kind || u64 at ms || body``, stored verbatim under its
index in ``events`` by the same transaction as the change it records. The
tree's internal nodes go to ``tree`` under their post-order position, so
appends are sequential; ``meta/log`` holds the last leaf hash and the tree's
right-edge frontier, and the head holds the size. The engine signs
checkpoints (C2SP tlog-checkpoint) at the store's cadence and on demand, in
the transaction that decides to, after checking the new tree still holds the
last signed root: it never signs two inconsistent checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _fast
from ..clock import iso
from ..errors import ProofError, StoreCorruptError, UsageError
from ..formats import merkle
from ..formats.checkpoint import TIME_LINE, Checkpoint, Verifier, open_note, sign
from ..formats.cosignature import cosignatures
from ..formats.events import KINDS, LEAF, encode_links
from ..formats.history import extension_line, index_root
from ..formats.identity import Identity
from ..store import Txn
from ..store.records import CHECKPOINT, dump, from_u64, u64
from .subjects import SubjectIndex, change_links, folded_change, latest_listed

_ZERO = bytes(32)


@dataclass(frozen=True)
class Policy:
    """When the engine signs a checkpoint by itself: after this many events or seconds, whichever first."""

    every_events: int = 10_000
    every_seconds: int = 10

    def to_record(self) -> bytes:
        """The stored form (meta/checkpoint_policy)."""
        return dump({"every_events": self.every_events, "every_seconds": self.every_seconds})


class EventLog:
    """Appends events and signs checkpoints for one store, with its engine key."""

    def __init__(self, engine: Identity) -> None:
        self.engine = engine
        self.origin = f"keyvault/{engine.id}"
        self.policy = Policy()
        self.index = SubjectIndex()
        #: The event index of a key's redeem or void, if it has one (the state sets one that reads the overlay).
        self.key_change: Callable[[Txn, int], int | None] = folded_change

    # -- appending -------------------------------------------------------------------------------

    def append(self, txn: Txn, kind: str, at_ms: int, doc: dict[str, Any], subjects: list[bytes],
               key_change: Callable[[Txn, int], int | None] | None = None) -> int:
        """Append one event (``doc`` is its body, as JSON) indexed under ``subjects``; its index.

        ``key_change`` replaces :attr:`key_change` for a transaction that appends several events: it must not
        read this transaction's own events into a shared overlay (the transaction may still abort).
        """
        head = txn.head()
        index = head.log_size
        prev, frontier = self._tail(txn, index)
        links = encode_links([(subject, self._latest(txn, subject, key_change)) for subject in subjects])
        leaf = _fast.event_leaf(index, prev, KINDS[kind], at_ms, dump(doc), links)
        self._store(txn, index, [(u64(index), leaf)], merkle.leaf_hash(leaf), frontier)
        for subject in subjects:
            txn.put("subjects", subject + u64(index), b"")
        self.maybe_checkpoint(txn, at_ms)
        return index

    def append_many(self, txn: Txn, first: int, events: list[tuple[str, int, dict[str, Any], list[bytes]]],
                    key_change: Callable[[Txn, int], int | None] | None = None) -> None:
        """Append events decided together, ``(kind, at ms, doc, subjects)`` each, numbered ``first`` on (the log's
        size, which the caller read): one chain, tree and checkpoint step for them all, as :meth:`append` each."""
        if txn.head().log_size != first:
            raise StoreCorruptError(f"the event log grew past event {first} while events were being numbered from "
                                    "it: nothing was written; try again")
        prev, frontier = self._tail(txn, first)
        latest: dict[bytes, int] = {}  # subject -> its newest event of these (newer than any stored)
        pairs, hashes, listed = [], [], []
        for i, (kind, at_ms, doc, subjects) in enumerate(events):
            index = first + i
            links = encode_links([(s, latest[s] if s in latest else self._latest(txn, s, key_change))
                                  for s in subjects])
            leaf = _fast.event_leaf(index, prev, KINDS[kind], at_ms, dump(doc), links)
            prev = merkle.leaf_hash(leaf)
            pairs.append((u64(index), leaf))
            hashes.append(prev)
            for subject in subjects:
                latest[subject] = index
                listed.append((subject + u64(index), b""))
        self._store(txn, first, pairs, b"".join(hashes), frontier)
        txn.put_many("subjects", sorted(listed))
        self.maybe_checkpoint(txn, events[-1][1])

    def append_changes(self, txn: Txn, changes: list[tuple[int, int, int, str]]) -> list[int]:
        """Append redeems and voids, (serial, state, at ms, text) each, in one bulk step; their indices."""
        head = txn.head()
        first = head.log_size
        prev, frontier = self._tail(txn, first)
        pairs, hashes = _fast.ledger_leaves(first, prev, changes, change_links(txn, [c[0] for c in changes]))
        self._store(txn, first, pairs, hashes, frontier)
        self.maybe_checkpoint(txn, changes[-1][2])
        return list(range(first, first + len(changes)))

    def _latest(self, txn: Txn, subject: bytes, key_change: Callable[[Txn, int], int | None] | None = None
                ) -> int | None:
        """The index of the newest event about ``subject`` (a key's redeem or void included)."""
        latest = latest_listed(txn, subject)
        if subject[:1] == b"K" and len(subject) == 9:
            change = (key_change or self.key_change)(txn, from_u64(subject[1:]))
            if change is not None and (latest is None or change > latest):
                latest = change
        return latest

    def _tail(self, txn: Txn, size: int) -> tuple[bytes, bytes]:
        value = txn.get("meta", b"log")
        if value is None:
            if size:
                raise StoreCorruptError("the event log has lost its tail record: the store is damaged; run "
                                        "`keyvault audit` and restore it from a backup")
            return _ZERO, b""
        if len(value) != 32 + 32 * size.bit_count():  # the last leaf's hash, then one hash per perfect subtree
            raise StoreCorruptError("the event log's tail record is damaged (its frontier does not fit a log of "
                                    f"{size} events): nothing was written; run `keyvault check` and restore the store "
                                    "from a backup")
        return bytes(value[:32]), bytes(value[32:])

    def _store(self, txn: Txn, first: int, pairs: list[tuple[bytes, bytes]], hashes: bytes, frontier: bytes) -> None:
        if txn.put_sorted("events", pairs) != len(pairs):
            raise StoreCorruptError(f"event {first} already exists: the event log is damaged; run `keyvault audit`")
        nodes, frontier = _fast.tree_append(first, frontier, hashes)
        if nodes and txn.put_sorted("tree", nodes) != len(nodes):
            raise StoreCorruptError("the event log's tree already holds a node being added: the store is damaged; "
                                    "run `keyvault audit`")
        txn.put("meta", b"log", hashes[-32:] + frontier)
        head = txn.head()
        txn.set_head(head._replace(log_size=first + len(pairs)))

    # -- reading ---------------------------------------------------------------------------------

    def size(self, txn: Txn) -> int:
        """How many events the log holds."""
        return txn.head().log_size

    @staticmethod
    def leaf(txn: Txn, index: int) -> bytes:
        """The stored bytes of event ``index``."""
        value = txn.get("events", u64(index))
        if value is None:
            raise StoreCorruptError(f"event {index} is missing from the event log: the store is damaged; "
                                    "run `keyvault audit`")
        return bytes(value)

    def perfect(self, txn: Txn) -> merkle.Perfect:
        """The tree's perfect subtrees, read from the store (leaves hashed from their events)."""

        def subtree(level: int, index: int) -> bytes:
            if level == 0:
                return merkle.leaf_hash(self.leaf(txn, index))
            value = txn.get("tree", u64(_fast.node_key(level, index)))
            if value is None:
                raise StoreCorruptError(f"a node of the event log's tree is missing (level {level}, index {index}): "
                                        "the store is damaged; run `keyvault audit`")
            return bytes(value)

        return subtree

    def root(self, txn: Txn, size: int | None = None) -> bytes:
        """The tree's root at ``size`` events (now, by default)."""
        now = self.size(txn)
        size = now if size is None else size
        if size > now:
            raise UsageError(f"the event log holds {now} events, not {size}")
        if size == 0:
            return merkle.EMPTY_ROOT
        if size == now:
            return merkle.frontier_root([bytes(f) for f in _chunks(self._tail(txn, now)[1])])
        return merkle.range_root(self.perfect(txn), 0, size)

    def inclusion(self, txn: Txn, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of event ``index`` in the tree of ``size`` events."""
        return merkle.inclusion_proof(index, size, self.perfect(txn))

    def consistency(self, txn: Txn, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two sizes of the log."""
        return merkle.consistency_proof(old_size, new_size, self.perfect(txn))

    # -- checkpoints -----------------------------------------------------------------------------

    def maybe_checkpoint(self, txn: Txn, now_ms: int, *, force: bool = False) -> bytes | None:
        """Sign a checkpoint of the log as it stands if the policy says it is due (or ``force``): its note.

        With ``force``, the newest checkpoint is returned when it already covers every event and was
        signed less than a second ago; an older one is signed again, with the same size and root and the
        time of now (each note carries its time, so that verifiers can bound the age of evidence).
        """
        size = self.size(txn)
        last = txn.last_key("checkpoints")
        last_size = from_u64(last) if last is not None else 0
        stored = txn.get("checkpoints", last) if last is not None else None
        if stored is not None and len(stored) < CHECKPOINT.size:
            raise StoreCorruptError(f"the checkpoint of log size {last_size} is cut short: the store is damaged; run "
                                    "`keyvault check` and restore the store from a backup")
        at, signed_root = CHECKPOINT.unpack_from(stored or bytes(CHECKPOINT.size))
        if last is not None and last_size == size and not (force and now_ms - at >= 1000
                                                           and not cosignatures(bytes(stored[CHECKPOINT.size:]))[1]):
            # A cosigned checkpoint is kept rather than signed again: a new time would shed its cosignatures
            # (submit the log to its witnesses again for fresher witnessed evidence).
            return self.note_at(txn, last_size) if force else None
        if not force:
            due = size - last_size >= self.policy.every_events or now_ms - at >= self.policy.every_seconds * 1000
            if not due:
                return None
        root = self.root(txn, size)
        if last is not None:
            # The tree's nodes were hashed as events were appended: this proves the log has only grown.
            if self.root(txn, last_size) != signed_root:
                raise StoreCorruptError(f"the event log no longer matches its checkpoint at size {last_size}: it was "
                                        "altered; nothing more will be signed. Run `keyvault audit` and restore "
                                        "the store from a backup")
        note = sign(Checkpoint(self.origin, size, root, (f"{TIME_LINE}{now_ms}", *self.extensions(txn, size))),
                    self.origin,
                    self.engine.signing_key)
        txn.put("checkpoints", u64(size), CHECKPOINT.pack(now_ms, root) + note)
        return note

    def extensions(self, txn: Txn, size: int) -> tuple[str, ...]:
        """The extension lines of the checkpoint at ``size``: the subject index root, brought up to date."""
        return (extension_line(self.index.catch_up(txn, size)),)

    def lacks_index(self, txn: Txn) -> bool:
        """Whether the newest checkpoint covers every event but was signed before the store kept a subject index
        (only a store that began before links; a new event lets the next checkpoint commit to the index)."""
        last = txn.last_key("checkpoints")
        return last is not None and from_u64(last) == self.size(txn) and self.index.state(txn) is None

    @staticmethod
    def note_at(txn: Txn, size: int) -> bytes:
        """The signed note of the checkpoint at ``size``."""
        stored = txn.get("checkpoints", u64(size))
        if stored is None:
            raise UsageError(f"no checkpoint was signed at size {size}")
        return bytes(stored[CHECKPOINT.size:])

    def checkpoints(self, txn: Txn) -> list[dict[str, Any]]:
        """Every checkpoint signed, oldest first: size, when, root (hex), and the note."""
        out = []
        for key, value in txn.items("checkpoints"):
            at, root = CHECKPOINT.unpack_from(value)
            out.append({"size": from_u64(key), "at": iso(at), "root": root.hex(),
                        "note": bytes(value[CHECKPOINT.size:]).decode("utf-8")})
        return out

    def verify(self, txn: Txn) -> int:
        """Walk the whole log: every event chained to the one before, the stored tree, and every checkpoint's
        signature and root; how many events. StoreCorruptError names the first thing wrong."""
        size = self.size(txn)
        engine = Verifier(self.origin, self.engine.public_key)
        signed: dict[int, bytes] = {}
        index = self.index.state(txn)
        for key, value in txn.items("checkpoints"):
            at_size = from_u64(key)
            try:
                checkpoint = open_note(bytes(value[CHECKPOINT.size:]), self.origin, [engine])
            except ProofError as exc:
                raise StoreCorruptError(f"the checkpoint at size {at_size} does not verify: {exc}") from None
            if (checkpoint.size, checkpoint.root) != (at_size, CHECKPOINT.unpack_from(value)[1]) or at_size > size:
                raise StoreCorruptError(f"the checkpoint at size {at_size} does not match its record")
            signed[at_size] = checkpoint.root
            if index is not None and index[0] == at_size and index_root(checkpoint) != index[1]:
                raise StoreCorruptError(f"the checkpoint at size {at_size} does not commit to the subject index's "
                                        "root: the index or the checkpoint was altered")
        prev = _ZERO
        frontier: list[tuple[int, bytes]] = []  # (level, root) of the perfect subtrees so far
        count = 0
        for key, leaf in txn.items("events"):
            if from_u64(key) != count or LEAF.unpack_from(leaf)[1] != count:
                raise StoreCorruptError(f"event {count} is missing or out of place in the event log")
            if bytes(leaf[17:49]) != prev:
                raise StoreCorruptError(f"event {count} does not name the hash of event {count - 1}: "
                                        "the chain is broken")
            prev = merkle.leaf_hash(bytes(leaf))
            frontier.append((0, prev))
            while len(frontier) > 1 and frontier[-2][0] == frontier[-1][0]:
                (level, left), (_, right) = frontier[-2], frontier.pop()
                frontier[-1] = (level + 1, merkle.node_hash(left, right))
            count += 1
            if count in signed and merkle.frontier_root([h for _, h in frontier]) != signed[count]:
                raise StoreCorruptError(f"the events do not match the checkpoint signed at size {count}: "
                                        "the log was altered")
        if count != size:
            raise StoreCorruptError(f"the event log holds {count} events but its head says {size}")
        if size and self.root(txn, size) != merkle.frontier_root([h for _, h in frontier]):
            raise StoreCorruptError("the event log's stored tree does not match its events")
        return size

    def covering(self, txn: Txn, index: int) -> tuple[int, bytes] | None:
        """The oldest checkpoint that covers event ``index``: (size, note), or None."""
        for key, value in txn.items_from("checkpoints", u64(index + 1)):
            return from_u64(key), bytes(value[CHECKPOINT.size:])
        return None


def _chunks(data: bytes) -> list[bytes]:
    return [data[i:i + 32] for i in range(0, len(data), 32)]

