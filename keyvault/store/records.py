"""How values are packed in the store's named databases (all integers big-endian).

| database    | key                          | value                                   |
|-------------|------------------------------|-----------------------------------------|
| meta        | name                         | format, pepper check, head, log tail, checkpoint policy |
| cards       | serial (u64)                 | state (u8), tag (16 bytes)              |
| outcomes    | serial (u64)                 | state (u8), at ms, event index (u64 each), order id/reason |
| locators    | pepper-keyed locator (16)    | serial (u64), for imported cards        |
| upstream    | serial (u64)                 | an imported card's public card number   |
| batches     | batch key (u64)              | JSON                                    |
| commitments | batch key + C/R + u32, or + S | 127 key commitments; a 65,536-key slice root; the wrapped seed |
| manifests   | manifest id (32)             | the signed manifest header              |
| suppliers   | supplier id (ASCII)          | JSON                                    |
| prefixes    | issuer prefix (u64)          | supplier id                             |
| trust       | public key (32)              | JSON: the pinned identity               |
| custody     | T/S/H/E + ids (lots.py)      | transfer records, spends, evidence      |
| blacklist   | level (1) + target           | JSON {reason, at}                       |
| events      | index (u64)                  | the event leaf, verbatim (eventlog.py)  |
| tree        | post-order node key (u64)    | a 32-byte internal node of the log's tree |
| checkpoints | tree size (u64)              | at ms (u64), root (32), the signed note |
| subjects    | subject + index (u64)        | empty: the events of a key/batch/supplier|
| counters    | scope + "/" + name           | u64                                     |
"""

from __future__ import annotations

import json
import struct
from typing import Any

from ..errors import StoreCorruptError
from ..vocabulary import Level

ACTIVE = 0
REDEEMED = 1
VOIDED = 2

U64 = struct.Struct(">Q")
CARD = struct.Struct(">B16s")
OUTCOME = struct.Struct(">BQQ")
HEAD = struct.Struct(">QQQ")  # meta/head: generation, log size, fold mark
CHECKPOINT = struct.Struct(">Q32s")  # checkpoints: signed at (ms), root; then the signed note

# Blacklist levels as stored (one byte in front of the target).
LEVEL_KEY = b"K"  # target: serial (u64)
LEVEL_BATCH = b"B"  # target: batch key (u64)
LEVEL_SUPPLIER = b"S"  # target: supplier id (ASCII)
LEVEL_NAMES = {LEVEL_KEY: Level.KEY.value, LEVEL_BATCH: Level.BATCH.value, LEVEL_SUPPLIER: Level.SUPPLIER.value}


def u64(value: int) -> bytes:
    """An unsigned 64-bit big-endian key."""
    return U64.pack(value)


def from_u64(data: bytes) -> int:
    """The integer of an 8-byte big-endian key."""
    return U64.unpack(data)[0]


def pack_card(state: int, tag: bytes) -> bytes:
    """A card record: its state and its pepper-keyed tag."""
    return CARD.pack(state, tag)


def unpack_card(value: bytes) -> tuple[int, bytes]:
    """(state, tag) of a card record; StoreCorruptError when it is not one."""
    if len(value) != CARD.size:
        raise StoreCorruptError(f"a card record is damaged ({len(value)} bytes, not {CARD.size}): run `keyvault "
                                "check` to find the damage and restore the store from a backup")
    state, tag = CARD.unpack(value)
    return state, tag


def pack_outcome(state: int, at_ms: int, index: int, text: str) -> bytes:
    """What became of a key: state, when, its event's index in the log, and the order id or reason."""
    return OUTCOME.pack(state, at_ms, index) + text.encode("utf-8")


def dump(doc: dict[str, Any]) -> bytes:
    """Compact JSON for a record."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def load(data: bytes) -> dict[str, Any]:
    """A JSON record."""
    result: dict[str, Any] = json.loads(bytes(data))
    return result
