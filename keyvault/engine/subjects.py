"""The subject index: each event's links to the previous event about its subjects, and the sparse Merkle tree
from subject to latest event that every checkpoint commits to (docs/provenance.md, "Complete histories").

Links are found when an event is appended: the ``subjects`` database lists every event but
redeems and voids under ``subject || u64 index``, and a key's redeem or void is found through its
outcome record or the ledger overlay (a key has at most one). The tree is brought up to date only
when a checkpoint is signed, from the links of the events appended since. Its nodes live in the
``subjects`` database under ``#`` || u16 depth || the key's first ``depth`` bits (32 bytes, the rest
zero): a subtree of up to 16 subjects is stored as one bucket, ``L`` || (key || u64 latest) for each
in key order, whose hashes are computed when it is read; a larger one as ``N`` || left hash || right
hash. A changed subject rewrites its bucket and the inner nodes above it: about a third as many
records, and far fewer pages, as one record per node. ``meta/index`` holds the event count the tree
covers, its root and the layout (2: buckets; a store whose record lacks it kept one record per node
and is rebuilt by its next checkpoint, in that checkpoint's transaction).

The tree is not stored at every checkpoint. Each process keeps the records changed since the
stored size in memory (a :class:`_Pending`) and stores them all at once, at a checkpoint, when they
cover PERSIST_EVENTS events (a quarter of that when this process had to replay them all) or number
PERSIST_RECORDS: most of the index's pages are then written once for many thousands of changes
instead of once or more per checkpoint. Any process (service workers, the commit process, the CLI)
computes the same root at any size from the stored tree and the events since, deterministically; a
process that starts, or that finds the stored size moved or the events it remembers changed,
replays them from the stored size. `keyvault check` replays them up
to the newest checkpoint and compares the root with the one it signed.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from itertools import islice
from typing import Any

from .. import _fast
from ..errors import StoreCorruptError, StoreError
from ..formats import history
from ..formats.events import NO_LINK, change_of, split_leaf
from ..store import Txn
from ..store.records import CHECKPOINT, OUTCOME, from_u64, u64

_NODE = b"#"
_META = b"index"
_LAYOUT = 2  # the layout byte of ``meta/index``: buckets of up to _BUCKET subjects
_BUCKET = 16  # the most subjects a bucket holds (keyvault._fast writes them)
_ENTRY = 40  # one subject in a bucket: key || u64 latest


def latest_listed(txn: Txn, subject: bytes, cursor: Any = None) -> int | None:
    """The index of the newest event listed under ``subject`` (every kind but redeems and voids)."""
    cursor = txn.cursor("subjects") if cursor is None else cursor
    found = cursor.prev() if cursor.set_range(subject + b"\xff" * 8) else cursor.last()
    if found:
        key = cursor.key()
        if len(key) == len(subject) + 8 and key.startswith(subject):
            return from_u64(key[-8:])
    return None


def folded_change(txn: Txn, serial: int) -> int | None:
    """The event index of a key's folded redeem or void (its outcome record names it)."""
    outcome = txn.get("outcomes", u64(serial))
    if outcome is not None and len(outcome) >= OUTCOME.size:
        return int(OUTCOME.unpack_from(outcome)[2])
    return None


def change_links(txn: Txn, serials: list[int]) -> bytes:
    """Each change's link (u64 each): the newest listed event about its key, or none.

    A key is redeemed or voided once, while active: no earlier redeem or void can precede it, and
    two changes of one key in one batch link the second to the first.
    """
    listed = _listed_keys(txn, sorted(set(serials)))
    if not listed and len(set(serials)) == len(serials):
        return _NO_LINK * len(serials)  # (no key listed, none twice: what the loop below would give)
    out = bytearray()
    pending: dict[int, int] = {}
    first = txn.head().log_size
    for n, serial in enumerate(serials):
        before = pending.get(serial, listed.get(serial))
        out += u64(NO_LINK if before is None else before)
        pending[serial] = first + n
    return bytes(out)


def _listed_keys(txn: Txn, serials: list[int]) -> dict[int, int]:
    """{serial: newest listed event about its key} for the sorted ``serials`` that have one.

    One walk of the key subjects' lists: a serial below the next listed key subject has none, so a
    store that lists few keys (holds, key blacklist entries) costs a cursor step or two per batch.
    """
    found: dict[int, int] = {}
    cursor = txn.cursor("subjects")
    listed_from = -1  # the serial of the next key subject listed: every serial below it has none
    for serial in serials:
        if serial < listed_from:
            continue
        subject = b"K" + u64(serial)
        if not cursor.set_range(subject) or cursor.key()[:1] != b"K":
            break  # no key subject is listed at or after this one
        key = cursor.key()
        if key.startswith(subject):
            latest = latest_listed(txn, subject, cursor)
            if latest is not None:
                found[serial] = latest
        else:
            listed_from = int.from_bytes(key[1:9], "big")
    return found


_NO_LINK = u64(NO_LINK)


def _node_key(depth: int, key: bytes) -> bytes:
    prefix = bytearray(key[:(depth + 7) // 8])
    if depth % 8:
        prefix[-1] &= 0xFF << (8 - depth % 8) & 0xFF
    return _NODE + depth.to_bytes(2, "big") + bytes(prefix) + bytes(32 - len(prefix))


def _damaged() -> StoreCorruptError:
    return StoreCorruptError("a node of the subject index is damaged: run `keyvault check` and restore the store "
                             "from a backup")


def _entries(record: bytes, depth: int, key: bytes) -> list[tuple[bytes, int]]:
    """The (key, latest) entries of a bucket at ``depth`` on ``key``'s path: 1 to _BUCKET of them, in strictly
    increasing key order, each on that path (else StoreCorruptError)."""
    count, rest = divmod(len(record) - 1, _ENTRY)
    if record[:1] != b"L" or rest or not 1 <= count <= _BUCKET:
        raise _damaged()
    entries = [(bytes(record[at:at + 32]), from_u64(record[at + 32:at + 40])) for at in range(1, len(record), _ENTRY)]
    if any(_node_key(depth, found) != _node_key(depth, key) for found, _ in entries) or \
            any(b[0] <= a[0] for a, b in zip(entries, entries[1:])):
        raise _damaged()
    return entries


def _sparse(depth: int, entries: list[tuple[bytes, int]]) -> bytes:
    """The hash of the subtree at ``depth`` holding exactly ``entries`` (sorted)."""
    if not entries:
        return history.EMPTY
    if len(entries) == 1:
        return history.leaf_hash(*entries[0])
    mid = next((i for i, (key, _) in enumerate(entries) if history.bit(key, depth)), len(entries))
    return history.node_hash(_sparse(depth + 1, entries[:mid]), _sparse(depth + 1, entries[mid:]))


@dataclass(frozen=True)
class _Pending:
    """The tree at ``size`` events: the stored one (``base``, the ``meta/index`` record it was read under) with
    ``nodes``, the records changed since, on top. ``tail`` is event ``size - 1``'s leaf: each leaf names the
    one before it, so the same leaf there means the same events (a transaction that appended them and
    was aborted leaves a different one, or none)."""

    base: bytes
    size: int
    tail: bytes
    root: bytes
    nodes: dict[bytes, bytes]


class SubjectIndex:
    """The sparse Merkle tree from subject key to latest event index, kept in the store."""

    #: Store the changed records at a checkpoint once they cover this many events since the stored size (a
    #: quarter of it when this process had to replay them all: the next one to start need not)...
    PERSIST_EVENTS = 100_000
    #: ... or number this many (the memory they take: about 0.7 kB each).
    PERSIST_RECORDS = 100_000

    def __init__(self) -> None:
        self._pending: _Pending | None = None
        self._lock = threading.Lock()

    def state(self, txn: Txn) -> tuple[int, bytes] | None:
        """(events covered by the stored tree, its root), or None when the store has never built its index."""
        value = txn.get("meta", _META)
        if value is None:
            return None
        if len(value) not in (40, 41) or value[40:] not in (b"", bytes([_LAYOUT])):
            raise StoreCorruptError("the subject index's record is damaged: run `keyvault check`")
        return from_u64(value[:8]), bytes(value[8:40])

    def catch_up(self, txn: Txn, size: int) -> bytes:
        """The root at the first ``size`` events (in the transaction signing a checkpoint there); the changed
        records are stored when they have grown large enough (PERSIST_EVENTS, PERSIST_RECORDS)."""
        state = self.state(txn)
        value = txn.get("meta", _META)
        if state is not None and len(value or b"") == 41 and state[0] <= size:  # (else: one record per node)
            with self._lock:
                kept = self._pending
            replayed = kept is None or kept.base != value  # (from the stored tree: this process knew none of it)
            pending = self._advance(txn, size)
            if pending is not None:
                since = pending.size - state[0]
                if since < (self.PERSIST_EVENTS // 4 if replayed else self.PERSIST_EVENTS) and \
                        len(pending.nodes) < self.PERSIST_RECORDS:
                    self._keep(pending)
                    return pending.root
                txn.put_many("subjects", sorted(pending.nodes.items()))
                return self._stored(txn, size, pending.root)
        # The whole log is read once: a new index, one kept one record per node, or events written before links.
        latest = self.scan(txn, size)
        for key, _ in list(txn.items("subjects", _NODE)):
            txn.delete("subjects", key)
        return self._stored(txn, size, self._update(txn, latest) if latest else history.EMPTY)

    def _stored(self, txn: Txn, size: int, root: bytes) -> bytes:
        """Record the stored tree's size and root (and remember that nothing has changed since); the root."""
        base = u64(size) + root + bytes([_LAYOUT])
        txn.put("meta", _META, base)
        tail = txn.get("events", u64(size - 1)) if size else None
        self._keep(_Pending(base, size, b"" if tail is None else bytes(tail), root, {}))
        return root

    def root_at(self, txn: Txn, size: int) -> bytes:
        """The root at the first ``size`` events (at or past the stored size); StoreError if it cannot be
        computed from this store's index."""
        return self._pending_at(txn, size).root

    def _pending_at(self, txn: Txn, size: int) -> _Pending:
        state = self.state(txn)
        pending = self._advance(txn, size) if state is not None and state[0] <= size else None
        if pending is None:
            raise StoreError(f"the subject index cannot be computed at size {size}: sign a checkpoint first "
                             "(`keyvault checkpoint`)")
        self._keep(pending)
        return pending

    def _keep(self, pending: _Pending | None) -> None:
        """Remember ``pending`` (None: the stored tree is current) unless one further on the same base is kept."""
        with self._lock:
            kept = self._pending
            if pending is None or kept is None or kept.base != pending.base or kept.size <= pending.size:
                self._pending = pending

    def _advance(self, txn: Txn, size: int) -> _Pending | None:
        """The tree at ``size`` from the stored one and the events since (continuing from the one kept, when it
        is on the same stored tree, the same events and not past ``size``); None when an event since was
        written before links."""
        base = bytes(txn.get("meta", _META) or b"")
        stored = self.state(txn)
        assert stored is not None
        with self._lock:
            pending = self._pending
        if pending is None or pending.base != base or pending.size > size or (
                pending.size > stored[0] and txn.get("events", u64(pending.size - 1)) != pending.tail):
            pending = _Pending(base, stored[0], b"", stored[1], {})
        if pending.size == size:
            return pending
        found = _fast.subject_latest(list(islice(txn.items_from("events", u64(pending.size)),
                                                 size - pending.size)), size)
        if found is None:
            return None
        nodes = pending.nodes
        root = pending.root
        if found:
            root, writes = _fast.subject_update(found, txn.cursor("subjects").get, nodes)
            nodes = dict(nodes)  # (a copy: a reader of the kept one keeps its view)
            nodes.update(writes)
        tail = txn.get("events", u64(size - 1))
        return _Pending(base, size, b"" if tail is None else bytes(tail), root, nodes)

    @staticmethod
    def scan(txn: Txn, size: int, *, check_links: bool = False) -> dict[bytes, int]:
        """{subject key: latest event} over the first ``size`` events, from the whole log (the reference).

        With ``check_links``, every version 2 event's links must name the event before it about each
        subject, and its subjects must be the ones the ``subjects`` database lists it under (else
        StoreCorruptError).
        """
        listed: dict[int, set[bytes]] = {}
        for key, _ in txn.items("subjects"):
            if key[:1] != _NODE and len(key) > 8 and from_u64(key[-8:]) < size:
                listed.setdefault(from_u64(key[-8:]), set()).add(bytes(key[:-8]))
        last: dict[bytes, int] = {}
        for key, leaf in txn.items("events"):
            index = from_u64(key)
            if index >= size:
                break
            _, links, _ = split_leaf(bytes(leaf))
            change = change_of(bytes(leaf))
            subjects = [b"K" + u64(change[0])] if change is not None else sorted(listed.pop(index, ()))
            if links is not None and check_links:
                if sorted(s for s, _ in links) != sorted(subjects) or \
                        any(last.get(subject) != previous for subject, previous in links):
                    raise StoreCorruptError(f"event {index} does not link to the previous event about each of its "
                                            "subjects: the log or its subject lists were altered")
            for subject in subjects:
                last[subject] = index
        if listed:
            raise StoreCorruptError(f"the subject lists name event {min(listed)}, which is not in the log")
        return {history.subject_key(subject): index for subject, index in last.items()}

    @staticmethod
    def _update(txn: Txn, latest: dict[bytes, int]) -> bytes:
        """Set each key's latest index (``_fast.subject_update``: only the paths to changed leaves are read and
        written); the new root."""
        root, writes = _fast.subject_update(latest, txn.cursor("subjects").get, None)
        txn.put_many("subjects", writes)
        return root

    def verify(self, txn: Txn) -> str:
        """Every stored node recomputed from the ones below it, and the leaves against the log; what was checked.

        StoreCorruptError names the first thing wrong.
        """
        state = self.state(txn)
        if state is None:
            return "no subject index yet (the store began before links; the next checkpoint builds it)"
        size, root = state
        leaves: dict[bytes, int] = {}

        def walk(depth: int, key: bytes) -> bytes:
            record = txn.get("subjects", _node_key(depth, key))
            if record is None:
                return history.EMPTY
            if record[:1] != b"N" or len(record) != 65:
                entries = _entries(bytes(record), depth, key)
                leaves.update(entries)
                return _sparse(depth, entries)
            count = len(leaves)
            if depth >= history.MAX_DEPTH or record[1:] != walk(depth + 1, _with_bit(key, depth, 0)) + \
                    walk(depth + 1, _with_bit(key, depth, 1)):
                raise StoreCorruptError(f"an inner node of the subject index (depth {depth}) does not hash its "
                                        "children")
            if len(leaves) - count < 2:
                raise StoreCorruptError(f"an inner node of the subject index (depth {depth}) holds fewer than two "
                                        "subjects")
            return history.node_hash(bytes(record[1:33]), bytes(record[33:65]))

        if walk(0, bytes(32)) != root:
            raise StoreCorruptError("the subject index's root record does not match its tree")
        last = txn.last_key("checkpoints")
        signed = None if last is None or from_u64(last) <= size else _signed_root(txn, from_u64(last))
        if signed is not None:
            self.scan(txn, from_u64(last), check_links=True)  # (the links of the checkpointed events past the tree)
        if leaves != self.scan(txn, size, check_links=True):
            raise StoreCorruptError("the subject index does not name each subject's latest event in the log")
        done = f"subject index: {len(leaves):,} subjects, each at its latest event of the first {size:,}"
        if signed is not None:
            with self._lock:
                self._pending = None  # (replayed from the stored tree, not from what this process remembers)
            if self.root_at(txn, from_u64(last)) != signed:
                raise StoreCorruptError(f"the stored subject index and the events since do not give the root the "
                                        f"checkpoint at size {from_u64(last):,} signed: the index or the log was "
                                        "altered")
            done += f"; with the events since, the root the checkpoint at size {from_u64(last):,} signed"
        return done

    def proof(self, txn: Txn, subject: bytes,
              size: int) -> tuple[int | None, list[bytes], tuple[bytes, int] | None]:
        """(latest index or None, siblings root level first, the other leaf found for an absence) at the first
        ``size`` events (at or past the stored size, else StoreError)."""
        nodes = self._pending_at(txn, size).nodes
        key = history.subject_key(subject)
        siblings: list[bytes] = []
        depth = 0
        while True:
            where = _node_key(depth, key)
            record = nodes.get(where) or txn.get("subjects", where)
            if record is None:
                return None, siblings, None
            if record[:1] != b"N" or len(record) != 65:
                break
            side = history.bit(key, depth)
            siblings.append(bytes(record[33:65]) if side == 0 else bytes(record[1:33]))
            depth += 1
        entries = _entries(bytes(record), depth, key)
        while len(entries) > 1:  # down the bucket's own subtree
            mid = next((i for i, (found, _) in enumerate(entries) if history.bit(found, depth)), len(entries))
            mine, other = (entries[:mid], entries[mid:]) if history.bit(key, depth) == 0 else \
                (entries[mid:], entries[:mid])
            siblings.append(_sparse(depth + 1, other))
            entries, depth = mine, depth + 1
        if not entries:
            return None, siblings, None
        found, latest = entries[0]
        return (latest, siblings, None) if found == key else (None, siblings, (found, latest))


def _signed_root(txn: Txn, size: int) -> bytes | None:
    """The index root the checkpoint at ``size`` names (its signature is checked with the log), if any."""
    value = txn.get("checkpoints", u64(size))
    lines = bytes(value or b"")[CHECKPOINT.size:].decode("utf-8", "replace").split("\n")
    found = [line[len(history.EXTENSION):] for line in lines if line.startswith(history.EXTENSION)]
    try:
        return base64.b64decode(found[0], validate=True) if len(found) == 1 else None
    except ValueError:
        return None


def _with_bit(key: bytes, depth: int, value: int) -> bytes:
    """``key`` with bit ``depth`` set to ``value`` (bits past it are ignored by node keys)."""
    out = bytearray(key)
    mask = 1 << (7 - depth % 8)
    out[depth // 8] = (out[depth // 8] | mask) if value else (out[depth // 8] & ~mask & 0xFF)
    return bytes(out)
