"""Complete histories: the subject index (a sparse Merkle tree) and the rule that a bundle's events are all of them.

Every version 2 event names, for each subject it is about (a key, a batch, a supplier), the
index of the previous event about that subject. Each checkpoint commits, in an extension line,
to a sparse Merkle tree from each subject to the index of its latest event. A bundle carries an
index proof per subject; the verifier walks each subject's chain back from that latest event
through the links and requires every event on it (docs/provenance.md, "Complete histories").

The tree: a subject's key is SHA-256(``kv1/subject`` || subject bytes), 256 bits read from the
most significant bit of the first byte; a leaf is SHA-256(0x00 || key || u64 latest index); an
inner node SHA-256(0x01 || left || right); an empty subtree is 32 zero bytes; a subtree that
holds exactly one leaf *is* that leaf's hash (it sits as high as its key's prefix is unique).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import msgspec

from ..errors import ProofError
from .checkpoint import Checkpoint
from .typed import Hex32, HexBytes, Index

EMPTY = bytes(32)
EXTENSION = "kv1/subject-index "  # the checkpoint's extension line: this, then base64 of the root
MAX_DEPTH = 256
_NONE = 0xFFFF_FFFF_FFFF_FFFF


class IndexProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A subject's latest event index at a checkpoint (or its absence), with the siblings from the root down.

    ``other`` is the one leaf found where the subject would be (a proof of absence); with neither
    ``latest`` nor ``other``, an empty subtree is.
    """

    subject: HexBytes  # hex of the subject bytes
    latest: Index | None
    siblings: Annotated[list[Hex32], msgspec.Meta(max_length=MAX_DEPTH)]  # hex, root level first
    other: tuple[Hex32, Index] | None  # (hex key, its latest index)


def subject_key(subject: bytes) -> bytes:
    """Where a subject sits in the index: SHA-256(kv1/subject || subject)."""
    return hashlib.sha256(b"kv1/subject" + subject).digest()


def leaf_hash(key: bytes, latest: int) -> bytes:
    """The index's leaf for a subject key and its latest event: SHA-256(0x00 || key || u64 latest)."""
    return hashlib.sha256(b"\x00" + key + latest.to_bytes(8, "big")).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An inner node of the index: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def bit(key: bytes, depth: int) -> int:
    """Bit ``depth`` of a key, 0 the most significant bit of its first byte."""
    return key[depth >> 3] >> (7 - (depth & 7)) & 1


def root_of(latest: Mapping[bytes, int]) -> bytes:
    """The index root over {subject key: latest event index}, computed from scratch (the reference)."""
    return _subtree(latest, sorted(latest), 0)


def _subtree(latest: Mapping[bytes, int], keys: list[bytes], depth: int) -> bytes:
    """The hash of the subtree at ``depth`` holding exactly ``keys``."""
    if not keys:
        return EMPTY
    if len(keys) == 1:
        return leaf_hash(keys[0], latest[keys[0]])
    return node_hash(_subtree(latest, [k for k in keys if not bit(k, depth)], depth + 1),
                     _subtree(latest, [k for k in keys if bit(k, depth)], depth + 1))


def prove(latest: Mapping[bytes, int], subject: bytes) -> dict[str, Any]:
    """The index proof of ``subject`` over {subject key: latest event index}, computed from scratch (the
    reference the store's incremental tree must agree with), encoded as a bundle carries it."""
    key = subject_key(subject)
    keys = sorted(latest)
    siblings: list[bytes] = []
    depth = 0
    while len(keys) > 1:
        side = bit(key, depth)
        siblings.append(_subtree(latest, [k for k in keys if bit(k, depth) != side], depth + 1))
        keys = [k for k in keys if bit(k, depth) == side]
        depth += 1
    if not keys:
        return encode_proof(subject, None, siblings, None)
    if keys[0] == key:
        return encode_proof(subject, latest[key], siblings, None)
    return encode_proof(subject, None, siblings, (keys[0], latest[keys[0]]))


def extension_line(root: bytes) -> str:
    """The checkpoint extension line that commits to an index root."""
    return EXTENSION + base64.b64encode(root).decode()


def index_root(checkpoint: Checkpoint) -> bytes | None:
    """The index root a checkpoint commits to, or None when it predates the index."""
    found = [line for line in checkpoint.extensions if line.startswith(EXTENSION)]
    if not found:
        return None
    if len(found) > 1:
        raise ProofError("the checkpoint names two subject index roots")
    try:
        root = base64.b64decode(found[0][len(EXTENSION):], validate=True)
    except ValueError:
        root = b""
    if len(root) != 32 or extension_line(root) != found[0]:
        raise ProofError("the checkpoint's subject index root is not 32 bytes in canonical base64")
    return root


def encode_proof(subject: bytes, latest: int | None, siblings: list[bytes],
                 other: tuple[bytes, int] | None) -> dict[str, Any]:
    """An index proof as a bundle carries it (JSON)."""
    return {"subject": subject.hex(), "latest": latest, "siblings": [s.hex() for s in siblings],
            "other": None if other is None else [other[0].hex(), other[1]]}


def verify_proof(root: bytes, subject: bytes, proof: IndexProof) -> int | None:
    """The latest event index of ``subject`` the proof shows under ``root`` (None: it has none), else ProofError."""
    try:
        siblings = [bytes.fromhex(s) for s in proof.siblings]
        other = None if proof.other is None else (bytes.fromhex(proof.other[0]), proof.other[1])
    except ValueError:
        raise ProofError("an index proof hash is not hex") from None
    if len(siblings) > MAX_DEPTH or any(len(s) != 32 for s in siblings):
        raise ProofError("an index proof has more than 256 siblings or one that is not 32 bytes")
    key = subject_key(subject)
    for value in (proof.latest, None if other is None else other[1]):
        if value is not None and not 0 <= value < _NONE:
            raise ProofError(f"an index proof names event {value}, out of range")
    if proof.latest is not None:
        if other is not None:
            raise ProofError("an index proof both names the subject's latest event and another subject's")
        node = leaf_hash(key, proof.latest)
    elif other is not None:
        other_key, other_latest = other
        if len(other_key) != 32 or other_key == key:
            raise ProofError("a proof of absence must show another subject's leaf")
        if any(bit(other_key, d) != bit(key, d) for d in range(len(siblings))):
            raise ProofError("the leaf a proof of absence shows does not sit where the subject would")
        node = leaf_hash(other_key, other_latest)
    else:
        node = EMPTY
    for depth in range(len(siblings) - 1, -1, -1):
        node = node_hash(siblings[depth], node) if bit(key, depth) else node_hash(node, siblings[depth])
    if node != root:
        raise ProofError("the index proof does not lead to the checkpoint's subject index root")
    return proof.latest


def check_history(checkpoint: Checkpoint, subjects: Iterable[tuple[bytes, str]], proofs: list[IndexProof],
                  events: Mapping[int, tuple[list[tuple[bytes, int | None]] | None, str]],
                  order: list[int]) -> list[tuple[str, bool, str]]:
    """The completeness rules over a bundle's events (already proven included): (rule, held, detail) each.

    ``subjects``: (subject bytes, name) the bundle is about; ``events``: index -> (links, or None for
    a version 1 event; what it is); ``order``: the event indices in the order the bundle lists them.
    """
    out: list[tuple[str, bool, str]] = []
    if any(b <= a for a, b in zip(order, order[1:])):
        out.append(("history-order", False, "the bundle's events are not in strictly increasing log order: "
                                            "they were reordered"))
    else:
        out.append(("history-order", True, f"{len(order)} events in log order"))
    try:
        root = index_root(checkpoint)
    except ProofError as exc:
        return out + [("index-proof", False, str(exc))]
    if root is None:
        return out + [("history-complete", False, "the checkpoint predates the subject index: nothing proves no "
                                                  "event was left out (make the bundle again: a new checkpoint "
                                                  "commits to the index)")]
    subjects = list(subjects)
    listed, wanted_order = [proof.subject for proof in proofs], [subject.hex() for subject, _ in subjects]
    if listed != wanted_order and sorted(listed) == sorted(wanted_order):
        return out + [("index-proof", False, "the index proofs are not listed in the order of their subjects: "
                                             "the key, its batch, its supplier")]
    by_subject: dict[str, IndexProof] = {}
    for proof in proofs:
        if by_subject.setdefault(proof.subject, proof) is not proof:
            return out + [("index-proof", False, f"two index proofs for subject {proof.subject}")]
    on_chain: dict[int, set[bytes]] = {}
    for subject, name in subjects:
        proof = by_subject.pop(subject.hex(), None)
        if proof is None:
            out.append(("index-proof", False, f"the bundle carries no index proof for {name}"))
            continue
        try:
            latest = verify_proof(root, subject, proof)
        except ProofError as exc:
            out.append(("index-proof", False, f"{name}: {exc}"))
            continue
        out.append(("index-proof", True, f"{name}: latest event " + ("none" if latest is None else str(latest))
                    + f" at size {checkpoint.size:,}"))
        if latest is not None and latest >= checkpoint.size:
            out.append(("index-proof", False, f"{name}: the index names event {latest}, past the checkpoint"))
            continue
        out.append(_walk(subject, name, latest, events, on_chain))
    for subject in by_subject:
        out.append(("index-proof", False, f"an index proof for subject {subject}, which this bundle is not about"))
    wanted = {subject for subject, _ in subjects}
    for index, (links, what) in sorted(events.items()):
        if links is None:
            continue  # a version 1 event: judged by the chain it ends
        claimed = {s for s, _ in links} & wanted
        missing = claimed - on_chain.get(index, set())
        if not claimed or missing:
            out.append(("history-complete", False, f"event {index} ({what}) is on no chain of this bundle's "
                                                   "subjects: it was grafted from another history"))
    return out


def _walk(subject: bytes, name: str, latest: int | None,
          events: Mapping[int, tuple[list[tuple[bytes, int | None]] | None, str]],
          on_chain: dict[int, set[bytes]]) -> tuple[str, bool, str]:
    """Follow one subject's links from its latest event back to its first: every one must be in the bundle."""
    cur, seen = latest, 0
    while cur is not None:
        found = events.get(cur)
        if found is None:
            return ("history-complete", False, f"{name}: event {cur} is on its chain but not in the bundle "
                                               "(an event was left out)")
        links, what = found
        if links is None:
            return ("history-complete", True, f"{name}: {seen} linked events back from event "
                                              f"{latest}; from event {cur} back, events predate links (the store "
                                              "began before them) and their completeness is not proven")
        previous = dict(links)
        if subject not in previous:
            return ("history-complete", False, f"{name}: event {cur} ({what}) is not about it: the chain was "
                                               "grafted")
        on_chain.setdefault(cur, set()).add(subject)
        seen += 1
        nxt = previous[subject]
        if nxt is not None and nxt >= cur:
            return ("history-order", False, f"{name}: event {cur} links forward to event {nxt}")
        cur = nxt
    if latest is None:
        for index, (links, what) in events.items():
            if links is not None and any(s == subject for s, _ in links):
                return ("history-complete", False, f"{name}: the index says it has no events, but event {index} "
                                                   f"({what}) is about it")
        return ("history-complete", True, f"{name}: no events, proven absent from the index")
    return ("history-complete", True, f"{name}: all {seen} events, from event {latest} back to its first")
