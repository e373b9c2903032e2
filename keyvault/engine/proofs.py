"""A key's place in its manifest's Merkle tree, proven from what the store kept at import.

The commitments database holds, per batch: the commitments in values of 127
(``batch || "C" || u32``), the roots of each 65,536-key slice (``batch ||
"R" || u32``: the tree's top, so a proof never rehashes a whole large batch),
and the commit seed wrapped with the pepper (``batch || "S"``).
"""

from __future__ import annotations

from typing import Any

from .. import _fast
from ..errors import StoreCorruptError
from ..formats import merkle
from ..formats.keyformat import serial_index
from ..formats.manifest import CHUNK
from ..store import Txn
from ..store.records import u64
from .catalog import BatchInfo
from .issuing import COMMIT_VALUES, unwrap_seed

_SLICE_LEVEL = CHUNK.bit_length() - 1  # 16: slices of 65,536 keys are perfect subtrees at this level


def _get(txn: Txn, key: bytes, batch: BatchInfo) -> bytes:
    value = txn.get("commitments", key)
    if value is None:
        raise StoreCorruptError(f"the commitments of batch {batch.id} are incomplete: the store is damaged; "
                                "import its manifest into a fresh store or restore a backup")
    return bytes(value)


def commitments(txn: Txn, batch: BatchInfo, start: int, end: int) -> bytes:
    """The commitments of keys [start, end) of a batch, concatenated."""
    prefix = u64(batch.key) + b"C"
    first, last = start // COMMIT_VALUES, (end - 1) // COMMIT_VALUES
    data = b"".join(_get(txn, prefix + n.to_bytes(4, "big"), batch) for n in range(first, last + 1))
    offset = (start - first * COMMIT_VALUES) * 32
    return data[offset:offset + (end - start) * 32]


def perfect(txn: Txn, batch: BatchInfo) -> merkle.Perfect:
    """The batch tree's perfect subtrees: slice roots from the store above level 16, hashed below."""
    prefix = u64(batch.key) + b"R"

    def subtree(level: int, index: int) -> bytes:
        if level == _SLICE_LEVEL:
            return _get(txn, prefix + index.to_bytes(4, "big"), batch)
        if level > _SLICE_LEVEL:
            return merkle.node_hash(subtree(level - 1, 2 * index), subtree(level - 1, 2 * index + 1))
        return _fast.merkle_root(commitments(txn, batch, index << level, (index + 1) << level))

    return subtree


def commitment_proof(txn: Txn, pepper: bytes, batch: BatchInfo, serial: int, with_salt: bool) -> dict[str, Any]:
    """The bundle's key part: serial, index, signed manifest, commitment, salt (if asked), inclusion proof."""
    index = serial_index(serial)
    signed = txn.get("manifests", bytes.fromhex(batch.manifest))
    if signed is None:
        raise StoreCorruptError(f"the signed manifest of batch {batch.id} is missing: the store is damaged")
    salt = None
    if with_salt:
        seed = unwrap_seed(pepper, batch.key, _get(txn, u64(batch.key) + b"S", batch))
        salt = _fast.key_salt(seed, serial)
    return {"serial": serial, "index": index, "manifest_signed": bytes(signed),
            "commitment": commitments(txn, batch, index, index + 1), "salt": salt,
            "manifest_proof": merkle.inclusion_proof(index, batch.count, perfect(txn, batch))}
