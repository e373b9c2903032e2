"""How values are packed in the store's named databases (all integers big-endian).

| database    | key                          | value                                   |
|-------------|------------------------------|-----------------------------------------|
| meta        | name                         | format, pepper check, head (+ checksum), log tail, checkpoint policy, blacklist and batches digests, subject index |
| cards       | serial (u64)                 | state (u8), tag (16 bytes), seal (16)   |
| outcomes    | serial (u64)                 | state (u8), at ms, event index (u64 each), order id/reason, seal (16) |
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
| subjects    | subject + index (u64)        | empty: the events of a key/batch/supplier (not redeems, voids) |
|             | "#" + u16 depth + key prefix | a node of the subject index (engine/subjects.py) |
| counters    | scope + "/" + name           | u64                                     |
| checkout    | H + serial (u64)             | the key's holds: order id, at, expires, event index each; seal |
|             | N + serial (u64)             | uses spent, and the limit, of a count-limited key (u32 each); seal |
|             | U + serial (u64) + order id  | one use: at ms, event index (u64 each), uses left (u32), the order id; seal |
|             | R + u16 length + order id + index (u64) | empty: a redeem event of the order (every redeem, held or not) |
|             | NUL + "mark"                 | the table's mark (a seal), written with its first record; meta/checkout says so |
| roster      | the key of each H, N and U record of checkout | empty: which hold and use records exist (below) |

A card's, an outcome's and a checkout record's seal is BLAKE2b-128 keyed with the pepper (personalisation ``kv1/seal``) over
a kind byte (``c``, ``o``; ``h``, ``n``, ``u`` for checkout records), the serial (u64) and the record before the seal (``_fast.seal``): damage,
or a record moved to another serial, is refused, and it cannot be forged without the pepper. A seal cannot
vouch for a record that is simply gone (a page's node count lowered, a branch page that hides a subtree,
a key damaged so that the record sorts elsewhere): so every hold, uses and use record is also listed in
``roster``, written and deleted with it in the same transaction, and a record is taken to be absent only
when both tables say so (:func:`checkout_record`). One damaged page is in one table: it can hide a
record, or its listing, never both. The head
ends with an 8-byte BLAKE2b checksum of its three numbers (personalisation ``kv1/head``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from collections.abc import Iterable
from typing import Any

from .. import _fast
from ..errors import StoreCorruptError
from ..vocabulary import Level

ACTIVE = 0
REDEEMED = 1
VOIDED = 2

U64 = struct.Struct(">Q")
SEAL_SIZE = 16  # the keyed checksum ending every card and outcome record
CARD = struct.Struct(">B16s16s")  # state, tag, seal
OUTCOME = struct.Struct(">BQQ")  # state, at ms, event index: then the order id or reason (UTF-8), then the seal


class _Head:
    """meta/head: generation, log size, fold mark (u64 each), then an 8-byte checksum of the three.

    Read like a struct.Struct: ``unpack`` raises StoreCorruptError for a head whose checksum fails.
    """

    _NUMBERS = struct.Struct(">QQQ")
    size = _NUMBERS.size + 8

    def pack(self, generation: int, log_size: int, folded: int) -> bytes:
        """The stored head."""
        numbers = self._NUMBERS.pack(generation, log_size, folded)
        return numbers + _head_sum(numbers)

    def unpack(self, value: bytes) -> tuple[int, int, int]:
        """(generation, log size, fold mark) of a stored head; StoreCorruptError when it is damaged."""
        value = bytes(value)
        if len(value) != self.size or _head_sum(value[:-8]) != value[-8:]:
            raise StoreCorruptError("the store's head record (log size and fold mark) is damaged: nothing was "
                                    "decided; run `keyvault check` and restore the store from a backup")
        generation, log_size, folded = self._NUMBERS.unpack(value[:-8])
        return generation, log_size, folded


def _head_sum(numbers: bytes) -> bytes:
    return hashlib.blake2b(numbers, digest_size=8, person=b"kv1/head").digest()


HEAD = _Head()
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
    """The integer of an 8-byte big-endian key; StoreCorruptError when it is not 8 bytes (damaged)."""
    if len(data) != 8:
        raise StoreCorruptError(f"a record's serial or index is {len(data)} bytes, not 8: the store is damaged; run "
                                "`keyvault check` and restore the store from a backup")
    return int.from_bytes(data, "big")


BLACKLIST_DIGEST = b"blacklist"  # meta key: the blacklist table's digest
BATCHES_DIGEST = b"batches"  # meta key: the batches table's digest (absent in stores made before it)


def _table_digest(person: bytes, digest: bytes | None, key: bytes, removed: bytes | None,
                  added: bytes | None) -> bytes:
    out = int.from_bytes(digest or bytes(32), "big")
    for value in (removed, added):
        if value is not None:
            mark = hashlib.blake2b(bytes((len(key),)) + bytes(key) + bytes(value), digest_size=32,
                                   person=person).digest()
            out ^= int.from_bytes(mark, "big")
    return out.to_bytes(32, "big")


def blacklist_digest(digest: bytes | None, key: bytes, removed: bytes | None, added: bytes | None) -> bytes:
    """The blacklist table's digest (meta/blacklist, 32 zero bytes for an empty table) after the entry under
    ``key`` changed from ``removed`` to ``added`` (None: no entry): the XOR of BLAKE2b-256 of each entry's key
    and value. A lost, moved or altered entry no longer adds up: the catalog refuses it."""
    return _table_digest(b"kv1/blacklist", digest, key, removed, added)


def batches_digest(digest: bytes | None, key: bytes, removed: bytes | None, added: bytes | None) -> bytes:
    """The batches table's digest (meta/batches), as :func:`blacklist_digest`: a batch record's supplier,
    uses, validity window and salt decide every verify of its keys, so a lost, moved or altered batch record
    no longer adds up and the catalog refuses it."""
    return _table_digest(b"kv1/batches", digest, key, removed, added)


def batches_digest_of(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The digest of every (key, value) of the batches table."""
    digest = bytes(32)
    for key, value in pairs:
        digest = batches_digest(digest, key, None, value)
    return digest


def pack_card(pepper: bytes, serial: int, state: int, tag: bytes) -> bytes:
    """A card record: its state, its pepper-keyed tag, and their seal."""
    body = bytes((state,)) + tag
    return body + _fast.seal(pepper, b"c", serial, body)


def unpack_card(pepper: bytes, serial: int, value: bytes) -> tuple[int, bytes] | None:
    """(state, tag) of a card record; None when it is damaged (its seal does not vouch for it)."""
    if not _fast.card_sound(pepper, serial, value):
        return None
    state, tag, _ = CARD.unpack(bytes(value))
    return state, tag


def pack_outcome(pepper: bytes, serial: int, state: int, at_ms: int, index: int, text: str) -> bytes:
    """What became of a key: state, when, its event's index in the log, the order id or reason, and the seal."""
    body = OUTCOME.pack(state, at_ms, index) + text.encode("utf-8")
    return body + _fast.seal(pepper, b"o", serial, body)


def dump(doc: dict[str, Any]) -> bytes:
    """Compact JSON for a record."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def load(data: bytes) -> dict[str, Any]:
    """A JSON record; StoreCorruptError when it is not one (damaged)."""
    try:
        result = json.loads(bytes(data))
    except ValueError:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        result = None
    if not isinstance(result, dict):
        raise StoreCorruptError("a JSON record of the store is damaged: nothing was decided; run `keyvault check` "
                                "to find it and restore the store from a backup")
    return result


# -- checkout: holds and count-limited uses (engine/checkout.py) ------------------------------------------

HOLD_ENTRY = struct.Struct(">HQQQ")  # order id length, at ms, expires at ms, event index: then the order id
USE = struct.Struct(">QQI")  # at ms, event index, uses left after it: then the order id
USES_SPENT = struct.Struct(">II")  # uses spent, the key's limit (sealed here: a batch record is not)
MAX_USES = 1_000_000  # a count-limited key's uses, at most


def hold_key(serial: int) -> bytes:
    """checkout key of a serial's holds."""
    return b"H" + u64(serial)


def spent_key(serial: int) -> bytes:
    """checkout key of a count-limited serial's count of uses spent."""
    return b"N" + u64(serial)


def use_key(serial: int, order_id: str) -> bytes:
    """checkout key of one use of a count-limited serial by an order."""
    return b"U" + u64(serial) + order_id.encode("utf-8")


def order_redeem_key(order_id: str, index: int) -> bytes:
    """checkout key listing redeem event ``index`` under its order (length-prefixed: no order's prefix is another's)."""
    raw = order_id.encode("utf-8")
    return b"R" + len(raw).to_bytes(2, "big") + raw + u64(index)


#: A hold: (at ms, expires at ms, event index).
Hold = tuple[int, int, int]


def _sealed(pepper: bytes, kind: bytes, serial: int, body: bytes) -> bytes:
    return body + _fast.seal(pepper, kind, serial, body)


def _opened(pepper: bytes, kind: bytes, serial: int, value: bytes, what: str) -> bytes:
    value = bytes(value)
    body = value[:-SEAL_SIZE]
    if len(value) < SEAL_SIZE or not _fast.tags_equal(value[-SEAL_SIZE:], _fast.seal(pepper, kind, serial, body)):
        raise StoreCorruptError(f"the {what} record of serial {serial:#x} is damaged: nothing was decided for it; "
                                "run `keyvault check` and restore the store from a backup")
    return body


def pack_holds(pepper: bytes, serial: int, holds: dict[str, Hold]) -> bytes:
    """A serial's holds, sealed."""
    body = b"".join(HOLD_ENTRY.pack(len(o := order.encode("utf-8")), *hold) + o for order, hold in holds.items())
    return _sealed(pepper, b"h", serial, body)


def unpack_holds(pepper: bytes, serial: int, value: bytes | None) -> dict[str, Hold]:
    """A serial's holds by order id; StoreCorruptError when the record is damaged."""
    if value is None:
        return {}
    body = _opened(pepper, b"h", serial, value, "hold")
    holds: dict[str, Hold] = {}
    at = 0
    try:
        while at < len(body):
            size, made, expires, index = HOLD_ENTRY.unpack_from(body, at)
            at += HOLD_ENTRY.size + size
            if at > len(body):
                raise ValueError
            holds[body[at - size:at].decode("utf-8")] = (made, expires, index)
    except (struct.error, ValueError):
        raise StoreCorruptError(f"the hold record of serial {serial:#x} is malformed under a sound seal: restore "
                                "the store from a backup") from None
    return holds


def pack_spent(pepper: bytes, serial: int, spent: int, limit: int) -> bytes:
    """How many uses of a count-limited serial are spent, and of how many, sealed."""
    return _sealed(pepper, b"n", serial, USES_SPENT.pack(spent, limit))


def unpack_spent(pepper: bytes, serial: int, value: bytes | None) -> tuple[int, int] | None:
    """(uses spent, limit), None when there is no record; StoreCorruptError when the record is damaged."""
    if value is None:
        return None
    body = _opened(pepper, b"n", serial, value, "uses")
    if len(body) != USES_SPENT.size:
        raise StoreCorruptError(f"the uses record of serial {serial:#x} is malformed: restore the store from a backup")
    spent, limit = USES_SPENT.unpack(body)
    return int(spent), int(limit)


def pack_use(pepper: bytes, serial: int, order_id: str, at_ms: int, index: int, left: int) -> bytes:
    """One use of a count-limited serial by an order, sealed (the order id is in the sealed body too)."""
    return _sealed(pepper, b"u", serial, USE.pack(at_ms, index, left) + order_id.encode("utf-8"))


def unpack_use(pepper: bytes, serial: int, order_id: str, value: bytes | None) -> tuple[int, int, int] | None:
    """(at ms, event index, uses left after it) of an order's use of a serial, None when it has none;
    StoreCorruptError when damaged (including a record moved under another order's key)."""
    if value is None:
        return None
    body = _opened(pepper, b"u", serial, value, "use")
    if len(body) < USE.size or body[USE.size:] != order_id.encode("utf-8"):
        raise StoreCorruptError(f"the use record of serial {serial:#x} does not name its order: restore the store "
                                "from a backup")
    at_ms, index, left = USE.unpack_from(body)
    return at_ms, index, left


CHECKOUT_MARK = b"\0mark"  # checkout key of the table's mark; meta key CHECKOUT_MARKED says it was written
CHECKOUT_MARKED = b"checkout"


@functools.lru_cache(maxsize=8)
def checkout_mark(pepper: bytes) -> bytes:
    """The checkout table's mark: a record LMDB would lose with the whole table (a damaged table root), which
    cannot be told from a store that never held a key without it."""
    return _sealed(pepper, b"m", 0, b"checkout")


def checkout_sound(pepper: bytes, key: bytes, value: bytes) -> bool:
    """Whether a checkout record is sound under its own key (a record whose key was damaged is not)."""
    key = bytes(key)
    try:
        kind = key[:1]
        serial = from_u64(key[1:9]) if kind != b"\0" else 0
        if kind == b"H":
            unpack_holds(pepper, serial, value)
        elif kind == b"N":
            unpack_spent(pepper, serial, value)
        elif kind == b"U":
            unpack_use(pepper, serial, key[9:].decode("utf-8"), value)
        elif kind == b"R":  # an order's listing of a redeem: on no decision path; `keyvault check` reads its event
            return len(key) == 3 + int.from_bytes(key[1:3], "big") + 8 and not value
        else:
            return key == CHECKOUT_MARK and _fast.tags_equal(bytes(value), checkout_mark(pepper))
    except (StoreCorruptError, UnicodeDecodeError):
        return False
    return True


ROSTERED = (b"H", b"N", b"U")  # the checkout records listed in ``roster``: every one a decision reads


def put_checkout(txn: Any, key: bytes, value: bytes) -> None:
    """Write a hold, uses or use record (``key``: H, N or U), listed in the roster, in the caller's write
    transaction."""
    txn.put("checkout", key, value)
    txn.put("roster", key, b"", overwrite=False)  # (already listed: LMDB leaves the roster's page untouched)


def delete_checkout(txn: Any, key: bytes) -> None:
    """Delete a hold, uses or use record, and its listing in the roster."""
    txn.delete("checkout", key)
    txn.delete("roster", key)


def checkout_record(txn: Any, key: bytes) -> bytes | None:
    """A hold, uses or use record; None only when neither ``checkout`` nor ``roster`` has it. StoreCorruptError
    when the roster lists a record the checkout table lost (a damaged page hid it, or its key)."""
    value = txn.get("checkout", key)
    if value is None and txn.get("roster", key) is not None:
        raise StoreCorruptError(f"the {_KINDS.get(bytes(key[:1]), 'checkout')} record of serial "
                                f"{int.from_bytes(bytes(key[1:9]), 'big'):#x} is listed in the roster but missing from the "
                                "checkout table (a damaged page hid it): nothing was decided for it; run `keyvault check` "
                                "and restore the store from a backup")
    return value


_KINDS = {b"H": "hold", b"N": "uses", b"U": "use"}


def roster_differs(txn: Any, kind: bytes, keys: list[bytes]) -> bool:
    """Whether the roster's keys of ``kind`` (H, N or U) are not exactly ``keys``, in key order."""
    return [bytes(key) for key, _ in txn.items("roster", kind)] != keys
