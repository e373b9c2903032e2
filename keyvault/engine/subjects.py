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
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from .. import _fast
from ..errors import StoreCorruptError
from ..formats import history
from ..formats.events import NO_LINK, change_of, split_leaf
from ..store import Txn
from ..store.records import OUTCOME, from_u64, u64

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


class SubjectIndex:
    """The sparse Merkle tree from subject key to latest event index, kept in the store."""

    def state(self, txn: Txn) -> tuple[int, bytes] | None:
        """(events covered, root), or None when the store has never built its index."""
        value = txn.get("meta", _META)
        if value is None:
            return None
        if len(value) not in (40, 41) or value[40:] not in (b"", bytes([_LAYOUT])):
            raise StoreCorruptError("the subject index's record is damaged: run `keyvault check`")
        return from_u64(value[:8]), bytes(value[8:40])

    def catch_up(self, txn: Txn, size: int) -> bytes:
        """Bring the index up to the first ``size`` events (in the transaction signing a checkpoint); its root."""
        state = self.state(txn)
        current = state is not None and len(txn.get("meta", _META) or b"") == 41  # (else: one record per node)
        if state is not None and state[0] == size and current:
            return state[1]
        start = 0 if state is None else state[0]
        found = _fast.subject_latest(list(islice(txn.items_from("events", u64(start)), max(0, size - start))), size)
        # (None: an event written before links) the whole log is read once; so is it to bring an index kept one
        # record per node to buckets
        rebuild = state is None or found is None or not current
        latest = {} if found is None else found
        if rebuild:
            latest = self.scan(txn, size)
            for key, _ in list(txn.items("subjects", _NODE)):
                txn.delete("subjects", key)
        root = self._update(txn, latest) if latest else (history.EMPTY if rebuild else state[1])  # type: ignore[index]
        txn.put("meta", _META, u64(size) + root + bytes([_LAYOUT]))
        return root

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
        root, writes = _fast.subject_update(latest, txn.cursor("subjects").get)
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
        if leaves != self.scan(txn, size, check_links=True):
            raise StoreCorruptError("the subject index does not name each subject's latest event in the log")
        return f"subject index: {len(leaves):,} subjects, each at its latest event of the first {size:,}"

    def proof(self, txn: Txn, subject: bytes) -> tuple[int | None, list[bytes], tuple[bytes, int] | None]:
        """(latest index or None, siblings root level first, the other leaf found for an absence)."""
        key = history.subject_key(subject)
        siblings: list[bytes] = []
        depth = 0
        while True:
            record = txn.get("subjects", _node_key(depth, key))
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


def _with_bit(key: bytes, depth: int, value: int) -> bytes:
    """``key`` with bit ``depth`` set to ``value`` (bits past it are ignored by node keys)."""
    out = bytearray(key)
    mask = 1 << (7 - depth % 8)
    out[depth // 8] = (out[depth // 8] | mask) if value else (out[depth // 8] & ~mask & 0xFF)
    return bytes(out)
