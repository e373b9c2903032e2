"""Pure-Python twin of ``keyvault._fast._core``: the readable specification.

Every function here has a compiled twin with the same name, arguments and
results; ``tests/test_fast_twins.py`` runs both over the same inputs and
requires identical answers. ``docs/format.md`` explains the key format these
functions implement.

A native v1 key is 32 symbols of Crockford base32 (shown in 8 groups of 4)::

    position  0      1-4      5-7     8-12     13-28    29-31
              version prefix  batch   index    secret   check
              (1)     (20 b)  (15 b)  (25 b)   (80 b)   (3 symbols)

Symbols 1-12 read as one big-endian number are the 60-bit *serial*. Each
position i has a distinct locator x_i in GF(32); the three check symbols make
sum(v_i) = sum(v_i*x_i) = sum(v_i*x_i**3) = 0. Any two columns (1, x, x**3)
are independent, so every one or two substitutions (hence every transposition,
adjacent or not) are detected. A single substitution is located by
x_j = S1/S0. A swap of positions k, k+1 gives S0 = 0 and S3/S1 =
x_k**2 + x_k*x_k+1 + x_k+1**2, and the locators are ordered so that this value
differs for every adjacent pair: the swap is located too.
"""

from __future__ import annotations

import hashlib
import hmac
import operator
import struct
import unicodedata
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, NamedTuple

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
KEY_SYMBOLS = 32  # symbols in a v1 key
DATA_SYMBOLS = 29  # symbols before the three check symbols
GROUP_SIZE = 4  # symbols per printed group
VERSION = 1  # value of symbol 0 in a v1 key
SERIAL_SYMBOLS = 12  # prefix (4) + batch (3) + index (5)
SECRET_SYMBOLS = 16  # 80 bits
SECRET_BYTES = 10  # random bytes drawn per key (80 bits)
MAX_INPUT = 256  # longer input is refused before any normalisation work
DIGEST_SIZE = 16  # bytes of every verifier, tag and locator

# Parse outcomes, shared by both implementations (ints, so Cython can return
# them without building Python objects).
OK = 0
BAD_LENGTH = 1  # not 32 symbols after normalisation
BAD_SYMBOL = 2  # a character outside the alphabet; position says where
BAD_VERSION = 3  # symbol 0 is not a version this code reads
CHECK_SUBSTITUTION = 4  # one symbol is wrong; position says which
CHECK_TRANSPOSITION = 5  # symbols at position and position + 1 are swapped
CHECK_FAILED = 6  # two or more errors that cannot be located

# Characters a customer may type between groups: ignored.
SEPARATORS = " \t\r\n\v\f-_\u00a0\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u3000\ufe63\uff0d"
# Upper-case and fold the look-alikes: I and L read as 1, O reads as 0.
_FOLD = str.maketrans({"I": "1", "L": "1", "O": "0"} | {c: None for c in SEPARATORS})

_VALUE = {c: i for i, c in enumerate(ALPHABET)}

# GF(32) with the primitive polynomial x^5 + x^2 + 1 (0b100101).
_POLY = 0b100101
_EXP = [0] * 62
_LOG = [0] * 32
_x = 1
for _i in range(31):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 32:
        _x ^= _POLY
for _i in range(31, 62):
    _EXP[_i] = _EXP[_i - 31]

# The locator of each position: a permutation of GF(32) in which
# x_k**2 + x_k*x_k+1 + x_k+1**2 differs for all 31 adjacent pairs (found by a
# seeded search; tests/test_keyformat.py checks the property).
LOCATORS = (3, 26, 22, 15, 31, 25, 9, 19, 4, 24, 30, 10, 13, 6, 28, 5,
            12, 20, 7, 0, 29, 14, 17, 23, 8, 16, 21, 2, 11, 27, 18, 1)


def _mul(a: int, b: int) -> int:
    """Multiply two GF(32) elements."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    """Divide a by a non-zero b in GF(32)."""
    if a == 0:
        return 0
    return _EXP[_LOG[a] - _LOG[b] + 31]


def _cube(a: int) -> int:
    return _mul(a, _mul(a, a))


def _swap_value(a: int, b: int) -> int:
    return _mul(a, a) ^ _mul(a, b) ^ _mul(b, b)


_CUBES = tuple(_cube(x) for x in LOCATORS)
_POSITION_OF = {x: i for i, x in enumerate(LOCATORS)}
_SWAP_AT = {_swap_value(LOCATORS[k], LOCATORS[k + 1]): k for k in range(31)}


def _solve_checks() -> tuple[tuple[int, ...], ...]:
    """Inverse of the 3x3 matrix of the check positions' columns (1, x, x**3)."""
    m = [[1, 1, 1], [LOCATORS[29], LOCATORS[30], LOCATORS[31]], [_CUBES[29], _CUBES[30], _CUBES[31]]]
    inv = [[int(i == j) for j in range(3)] for i in range(3)]
    for col in range(3):  # Gauss-Jordan; addition is XOR in GF(2^5)
        pivot = next(r for r in range(col, 3) if m[r][col])
        m[col], m[pivot] = m[pivot], m[col]
        inv[col], inv[pivot] = inv[pivot], inv[col]
        f = m[col][col]
        m[col] = [_div(v, f) for v in m[col]]
        inv[col] = [_div(v, f) for v in inv[col]]
        for r in range(3):
            if r != col and m[r][col]:
                g = m[r][col]
                m[r] = [a ^ _mul(g, b) for a, b in zip(m[r], m[col])]
                inv[r] = [a ^ _mul(g, b) for a, b in zip(inv[r], inv[col])]
    return tuple(tuple(row) for row in inv)


_CHECK_INVERSE = _solve_checks()


def _syndromes(values: list[int]) -> tuple[int, int, int]:
    s0 = s1 = s3 = 0
    for i, v in enumerate(values):
        s0 ^= v
        s1 ^= _mul(v, LOCATORS[i])
        s3 ^= _mul(v, _CUBES[i])
    return s0, s1, s3


def normalize(text: str) -> str:
    """Fold typed input to symbols: NFKC, upper case, separators dropped, I/L->1, O->0."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text.upper().translate(_FOLD)


def check_symbols(data: str) -> str:
    """The three check symbols for 29 data symbols (already valid alphabet characters)."""
    d = _syndromes([_VALUE[ch] for ch in data])
    out = ""
    for row in _CHECK_INVERSE:
        out += ALPHABET[_mul(row[0], d[0]) ^ _mul(row[1], d[1]) ^ _mul(row[2], d[2])]
    return out


def parse_key(text: str) -> tuple[int, int, bytes, int]:
    """Parse typed input as a v1 key: (outcome, serial, canonical bytes, position).

    On OK, serial is the 60-bit serial and canonical the 32 ASCII symbols; on
    any other outcome they are 0 and b"", and position is the 0-based symbol
    position at fault (-1 when no single position can be named).
    """
    if len(text) > MAX_INPUT:
        return BAD_LENGTH, 0, b"", -1
    symbols = normalize(text)
    if len(symbols) != KEY_SYMBOLS:
        return BAD_LENGTH, 0, b"", -1
    values = []
    for i, ch in enumerate(symbols):
        v = _VALUE.get(ch, -1)
        if v < 0:
            return BAD_SYMBOL, 0, b"", i
        values.append(v)
    s0, s1, s3 = _syndromes(values)
    if s0 or s1 or s3:
        if s0:
            # One substitution of size s0 where the locator is s1/s0, if s3 agrees.
            j = _POSITION_OF[_div(s1, s0)]
            if _mul(s0, _CUBES[j]) == s3:
                return CHECK_SUBSTITUTION, 0, b"", j
        elif s1:
            # Two equal-sized errors (a swap gives those): S3/S1 names the pair.
            k = _SWAP_AT.get(_div(s3, s1), -1)
            if k >= 0 and values[k] ^ values[k + 1] == _div(s1, LOCATORS[k] ^ LOCATORS[k + 1]):
                return CHECK_TRANSPOSITION, 0, b"", k
        return CHECK_FAILED, 0, b"", -1
    if values[0] != VERSION:
        return BAD_VERSION, 0, b"", 0
    serial = 0
    for v in values[1 : 1 + SERIAL_SYMBOLS]:
        serial = (serial << 5) | v
    return OK, serial, symbols.encode("ascii"), -1


def parse_serial(text: str) -> int:
    """The 60-bit serial from typed serial text (12 symbols), or -1 if it is not one."""
    if len(text) > MAX_INPUT:
        return -1
    symbols = normalize(text)
    if len(symbols) != SERIAL_SYMBOLS:
        return -1
    serial = 0
    for ch in symbols:
        v = _VALUE.get(ch, -1)
        if v < 0:
            return -1
        serial = (serial << 5) | v
    return serial


def _symbols(number: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(ALPHABET[number & 31])
        number >>= 5
    return "".join(reversed(out))


def format_serial(serial: int) -> str:
    """The 12 serial symbols of a 60-bit serial, without separators."""
    return _symbols(serial, SERIAL_SYMBOLS)


def encode_key(serial: int, secret: int) -> str:
    """The canonical 32-symbol key for a 60-bit serial and an 80-bit secret (higher bits are dropped).

    Callers keep serials in range: batches and indices are bounded where batches are made.
    """
    data = ALPHABET[VERSION] + _symbols(serial, SERIAL_SYMBOLS) + _symbols(secret, SECRET_SYMBOLS)
    return data + check_symbols(data)


def verifier(salt: bytes, material: bytes) -> bytes:
    """What a manifest carries per key: BLAKE2b-128 of salt || key material, tag kv1/verifier."""
    return hashlib.blake2b(salt + material, digest_size=DIGEST_SIZE, person=b"kv1/verifier").digest()


def tag(pepper: bytes, verifier_: bytes) -> bytes:
    """What the store keeps per key: the verifier re-keyed with the store's pepper."""
    return hashlib.blake2b(verifier_, key=pepper, digest_size=DIGEST_SIZE, person=b"kv1/tag").digest()


def locator(material: bytes) -> bytes:
    """Unkeyed hash that finds an imported code's record (computable by its supplier)."""
    return hashlib.blake2b(material, digest_size=DIGEST_SIZE, person=b"kv1/locate").digest()


def store_locator(pepper: bytes, locator_: bytes) -> bytes:
    """The store's key for an imported code: the locator re-keyed with the pepper."""
    return hashlib.blake2b(locator_, key=pepper, digest_size=DIGEST_SIZE, person=b"kv1/slocate").digest()


def tags_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two tags."""
    return hmac.compare_digest(a, b)


def issue_keys(serial_base: int, count: int, salt: bytes, entropy: bytes) -> tuple[list[str], bytes]:
    """Make count keys with serials serial_base.. and secrets from entropy (10 bytes each).

    Returns the canonical keys and their verifiers concatenated (16 bytes each).
    """
    if len(entropy) != count * SECRET_BYTES:
        raise ValueError(f"need {count * SECRET_BYTES} bytes of entropy, got {len(entropy)}")
    keys = []
    verifiers = bytearray()
    for i in range(count):
        chunk = entropy[i * SECRET_BYTES : (i + 1) * SECRET_BYTES]
        secret = int.from_bytes(chunk, "big")  # 10 bytes: exactly the 80-bit secret
        key = encode_key(serial_base + i, secret)
        keys.append(key)
        verifiers += verifier(salt, key.encode("ascii"))
    return keys, bytes(verifiers)


# -- the batch check: verify, verify_many and redeem all judge keys here --------------------------

ACTIVE, REDEEMED, VOIDED = 0, 1, 2  # card states (as keyvault.store.records)
INDEX_BITS = 25  # serial >> INDEX_BITS is the batch key
SEAL_SIZE = 16  # bytes of the keyed checksum that ends every card and outcome record
_CARD_BODY = 17  # state (1 byte) + tag (16 bytes): what a card record's seal covers
_CARD_SIZE = 33  # the body, then its seal
_OUTCOME_HEAD = 17  # state (1 byte), at ms and event index (8 bytes each), then the order id or reason in UTF-8
SEAL_CARD = b"c"  # what a seal covers first: the kind of record...
SEAL_OUTCOME = b"o"
_DAMAGED = ("this key's record is damaged: refused; restore the store from a backup "
            "(`keyvault check` finds every damaged record)")


def seal(pepper: bytes, kind: bytes, serial: int, body: bytes) -> bytes:
    """The keyed checksum a card or outcome record ends with: BLAKE2b-128 keyed with the pepper, tag kv1/seal,
    of kind (SEAL_CARD or SEAL_OUTCOME) || serial (u64) || the record's body; binds the record to its serial."""
    return hashlib.blake2b(kind + serial.to_bytes(8, "big") + body, key=pepper, digest_size=DIGEST_SIZE,
                           person=b"kv1/seal").digest()


def card_sound(pepper: bytes, serial: int, record: bytes) -> bool:
    """Whether a card record is whole: 33 bytes whose seal vouches for its state and tag at this serial."""
    record = bytes(record)
    return len(record) == _CARD_SIZE and tags_equal(record[_CARD_BODY:], seal(pepper, SEAL_CARD, serial,
                                                                             record[:_CARD_BODY]))


def open_outcome(pepper: bytes, serial: int, record: bytes | None) -> bytes | None:
    """An outcome record without its seal, when the seal vouches for it at this serial; None when it is
    missing or damaged (judge then refuses the key as damaged)."""
    if record is None:
        return None
    record = bytes(record)
    if len(record) < _OUTCOME_HEAD + SEAL_SIZE:
        return None
    body = record[:-SEAL_SIZE]
    return body if tags_equal(record[-SEAL_SIZE:], seal(pepper, SEAL_OUTCOME, serial, body)) else None


def damaged(serial: int, row: tuple) -> object:
    """The Result for a key whose card or outcome record is damaged: refused, saying what to do."""
    from ..results import Result, Status

    return Result(Status.DAMAGED, format_serial_text(serial), _batch_row(row).batch, message=_DAMAGED)


class KeyBlock(NamedTuple):
    """A blacklist entry as the batch check reads it: a batch row's block, or a value of key_blocks."""

    level: str  # "supplier", "batch" or "key": what the entry blacklists
    reason: str


class BatchRow(NamedTuple):
    """What the batch check knows of one batch: the value of ``batches[serial >> INDEX_BITS]``.

    A plain tuple of the same eight fields, in this order, is read the same way (the compiled
    core reads both by position).
    """

    salt: bytes  # the batch's verifier salt
    valid_from: int | None  # ms since the epoch; None: no start
    valid_until: int | None  # ms since the epoch, exclusive; None: no end
    block: KeyBlock | None  # the supplier's or the batch's blacklist entry, if any (any (level, reason) pair)
    batch: str  # the batch id
    supplier: str  # the supplier id
    supplier_name: str
    product: str


class Change(NamedTuple):
    """An unfolded ledger change of one serial: an overlay entry, or an item of a fold's ``pending``.

    A plain tuple of the same four fields, in this order, is read the same way.
    """

    state: int  # REDEEMED or VOIDED: the card's state from now on
    at_ms: int  # when, in ms since the epoch
    text: str  # the order id (redeemed) or the reason (voided)
    index: int  # its event's index in the log


# Plain tuples (or lists) of the fields are read by position, and fields past the last are ignored:
# the compiled core reads them so.
def _batch_row(row: tuple) -> BatchRow:
    return row if type(row) is BatchRow else BatchRow._make(row[:8])  # type: ignore[return-value]


def _key_block(block: tuple) -> KeyBlock:
    return block if type(block) is KeyBlock else KeyBlock._make(block[:2])  # type: ignore[return-value]


def _change(change: tuple) -> Change:
    return change if type(change) is Change else Change._make(change[:4])  # type: ignore[return-value]


def format_serial_text(serial: int) -> str:
    """A serial as printed: PPPP-BBB-IIIII."""
    s = format_serial(serial)
    return f"{s[:4]}-{s[4:7]}-{s[7:]}"


def judge(serial: int, state: int, row: tuple, key_blocks: dict, change: tuple | None, outcome: bytes | None,
          now: int) -> object:
    """The Result for a located key whose tag matched.

    ``row`` is the key's BatchRow; ``state`` the card record's; ``change`` its unfolded Change, which
    overrides that state; ``outcome`` the outcome record as ``open_outcome`` gives it (its seal checked
    and removed), read when the state is not active and no change says why. Precedence: damaged (no
    sound outcome record, or a state byte that is none of the three), redeemed, void, blacklisted
    (supplier, batch, key), not yet valid, expired, valid.
    """
    from ..clock import iso
    from ..results import Result, Status

    row = _batch_row(row)
    base = (format_serial_text(serial), row.batch, row.supplier, row.supplier_name, row.product)
    damaged = Result(Status.DAMAGED, base[0], row.batch, message=_DAMAGED)
    at, text = 0, ""
    if change is not None:
        change = _change(change)
        state, at, text = change.state, change.at_ms, change.text
    elif state != ACTIVE:  # the outcome record says when and why; without a sound one, nothing is vouched for
        if outcome is None or len(outcome) < _OUTCOME_HEAD or outcome[0] != state:
            return damaged
        try:
            at, text = int.from_bytes(outcome[1:9], "big"), bytes(outcome[_OUTCOME_HEAD:]).decode("utf-8")
        except UnicodeDecodeError:
            return damaged
    if state != ACTIVE and state != REDEEMED and state != VOIDED:  # a damaged record vouches for nothing
        return damaged
    if state == REDEEMED:
        when = iso(at)
        return Result(Status.REDEEMED, *base, order_id=text, redeemed_at=when,
                      message=f"already redeemed by order {text} at {when}")
    if state == VOIDED:
        when = iso(at)
        return Result(Status.VOID, *base, voided_at=when, reason=text, message=f"voided at {when}: {text}")
    block = row.block or key_blocks.get(serial)
    if block is not None:
        block = _key_block(block)
        return Result(Status.BLACKLISTED, *base, level=block.level, reason=block.reason,
                      message=f"blacklisted ({block.level}): {block.reason}")
    if row.valid_from is not None and now < row.valid_from:
        return Result(Status.NOT_YET_VALID, *base, message=f"valid from {iso(row.valid_from)}")
    if row.valid_until is not None and now >= row.valid_until:
        return Result(Status.EXPIRED, *base, message=f"expired at {iso(row.valid_until)}")
    return Result(Status.VALID, *base)


def check_keys(keys: list, pepper: bytes, batches: dict, key_blocks: dict, overlay: dict, cards: object,
               outcomes: object, now: int) -> list:
    """Judge many typed keys at once: one Result per key, in input order; None for non-native input.

    batches maps a batch key to its BatchRow (salt, valid_from, valid_until, block, batch id,
    supplier id, supplier name, product), block being the KeyBlock (level, reason) of a supplier
    or batch blacklist entry, or None; key_blocks maps a serial to its KeyBlock; overlay maps a
    serial to its unfolded ledger Change (state, at ms, text, event index). cards and outcomes are py-lmdb
    cursors, each read with one getmulti over the sorted serials. A key whose batch is unknown
    is still hashed, so unknown and wrong keys cost the same. TypeError for a non-str key.
    """
    from ..results import Result, Status

    out: list = [None] * len(keys)
    found = []  # (serial, index, expected tag, batch row)
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise TypeError("a key must be a string")
        outcome, serial, canonical, _ = parse_key(key)
        if outcome != OK:
            continue
        row = batches.get(serial >> INDEX_BITS)
        if row is not None:
            row = _batch_row(row)
        expected = tag(pepper, verifier(row.salt if row is not None else bytes(16), canonical))
        found.append((serial, i, expected, row))
    found.sort(key=lambda item: item[0])
    records = dict(cards.getmulti([item[0].to_bytes(8, "big") for item in found]))  # type: ignore[attr-defined]
    pending = []  # (serial, index, state, row): the outcome record says why the key is not active
    for serial, i, expected, row in found:
        record = records.get(serial.to_bytes(8, "big")) if row is not None else None
        if record is None or not tags_equal(bytes(record[1:_CARD_BODY]), expected):
            out[i] = Result(Status.UNKNOWN, format_serial_text(serial), row.batch if row is not None else None,
                            message="no such key in this store")
            continue
        if not card_sound(pepper, serial, record):  # the right key, but its record vouches for nothing
            out[i] = damaged(serial, row)
            continue
        change = overlay.get(serial)
        if record[0] != ACTIVE and change is None:
            pending.append((serial, i, record[0], row))
        else:
            out[i] = judge(serial, record[0], row, key_blocks, change, None, now)
    if pending:
        details = dict(outcomes.getmulti([item[0].to_bytes(8, "big") for item in pending]))  # type: ignore[attr-defined]
        for serial, i, state, row in pending:
            outcome = open_outcome(pepper, serial, details.get(serial.to_bytes(8, "big")))
            out[i] = judge(serial, state, row, key_blocks, None, outcome, now)
    return out


def check_one(key: str, pepper: bytes, batches: dict, key_blocks: dict, overlay: dict, txn: object, db: object,
              now: int) -> object:
    """One typed key's Result when its card says active and it is valid now, as check_keys gives it; else None.

    The single-key hot path: the card record is read with ``txn.get(serial key, None, db)``. A None
    says only "not for this path" (not a native key, not valid, or an unfolded ledger change for it):
    check_keys then says what it is, so every refusal costs the same work whatever its cause.
    """
    if not isinstance(key, str):
        return None
    outcome, serial, canonical, _ = parse_key(key)
    if outcome != OK:
        return None
    row = batches.get(serial >> INDEX_BITS)
    if row is None:
        return None
    row = _batch_row(row)
    expected = tag(pepper, verifier(row.salt, canonical))
    record = txn.get(serial.to_bytes(8, "big"), None, db)  # type: ignore[attr-defined]
    if record is None or len(record) < _CARD_BODY:
        return None
    matched = tags_equal(bytes(record[1:_CARD_BODY]), expected)
    if not matched or record[0] != ACTIVE or overlay.get(serial) is not None:
        return None
    if not card_sound(pepper, serial, record):
        return None
    from ..results import Status

    result = judge(serial, ACTIVE, row, key_blocks, None, None, now)
    return result if result.status is Status.VALID else None  # type: ignore[attr-defined]


def accept_redeems(results: list, orders: list, now: int, when: str) -> tuple[list, dict]:
    """Turn check_keys' answers for keys to redeem into redeem answers, in place: (changes, counts).

    ``orders[i]`` is the order id for ``results[i]``; ``when`` is ``now`` as ISO text. A valid key is
    accepted for its order (once per serial: a later pair with the same order gets the same answer,
    one with another order is refused as redeemed by the first); a key redeemed by the same order
    before answers accepted again (a retry). changes are the ledger's (serial, REDEEMED, now, order)
    for each key accepted here, counts the accepted keys by (batch id, supplier id).
    """
    from ..results import Status

    taken: dict = {}  # serial text -> (order, time) accepted in this call
    changes = []
    counts: dict = {}
    accepted, redeemed = Status.ACCEPTED, Status.REDEEMED
    for i, (order, result) in enumerate(zip(orders, results)):
        status = result.status
        if status is Status.VALID:
            serial, batch, supplier, name, product = result[1:6]
            first = taken.get(serial)
            if first is None:
                taken[serial] = (order, when)
                changes.append((parse_serial(serial or ""), REDEEMED, now, order))
                scope = (batch or "", supplier or "")
                counts[scope] = counts.get(scope, 0) + 1
                results[i] = type(result)(accepted, serial, batch, supplier, name, product, order, when)
            elif first[0] == order:  # the same pair twice in one call: the same answer
                results[i] = type(result)(accepted, serial, batch, supplier, name, product, order, first[1])
            else:
                results[i] = type(result)(redeemed, serial, batch, supplier, name, product, first[0], first[1],
                                          message=f"already redeemed by order {first[0]} at {first[1]}")
        elif status is redeemed and result.order_id == order:  # a retry: the first answer again
            results[i] = result._replace(status=accepted, message=None)
    return changes, counts


_OUTCOME = struct.Struct(">BQQ")  # an outcome record's head: state, at ms, event index (then the text, UTF-8)


def fold_records(pending: dict, cards: list, pepper: bytes) -> tuple[list, list]:
    """What a ledger fold writes: (card pairs, outcome pairs), one of each per item of ``cards``, in its order.

    ``cards`` holds (serial key, card record) pairs as a sorted read returns them; ``pending`` maps each
    serial to its unfolded Change (state, at ms, text, event index). A sound card keeps its tag, takes
    the change's state and is sealed again; a damaged one is written back as it was (never re-sealed:
    it stays refused). The outcome record is the state, the time and the event index (big-endian u8,
    u64, u64), then the text in UTF-8, then its seal.
    """
    new_cards = []
    outcomes = []
    for key, record in cards:
        serial = int.from_bytes(key, "big")
        state, at_ms, text, index = pending[serial]
        body = bytes((state,)) + bytes(record[1:_CARD_BODY])
        if card_sound(pepper, serial, record):
            record = body + seal(pepper, SEAL_CARD, serial, body)
        new_cards.append((key, bytes(record)))
        body = _OUTCOME.pack(state, at_ms, index) + text.encode("utf-8")
        outcomes.append((key, body + seal(pepper, SEAL_OUTCOME, serial, body)))
    return new_cards, outcomes


# -- issuance in bulk: the printable export and the card records, a chunk at a time ----------------


def export_rows(first_serial: int, keys: list[str], suffix: str) -> str:
    """CSV lines ``serial,key,suffix`` (CRLF-terminated, as the csv module writes) for consecutive serials.

    Keys are canonical (32 symbols) and printed in groups of 4; ``suffix`` is the already
    CSV-encoded rest of every row.
    """
    lines = []
    for i, key in enumerate(keys):
        shown = "-".join(key[j : j + GROUP_SIZE] for j in range(0, KEY_SYMBOLS, GROUP_SIZE))
        lines.append(f"{format_serial_text(first_serial + i)},{shown},{suffix}\r\n")
    return "".join(lines)


def card_records(first_serial: int, records: bytes, size: int, pepper: bytes) -> list[tuple[bytes, bytes]]:
    """(serial key, active card record) pairs for consecutive serials from a manifest body chunk.

    Each record is ``size`` bytes ending with the 16-byte verifier; the card record is the
    active state byte, the verifier re-keyed with the pepper, and their seal.
    """
    out = []
    for i in range(len(records) // size):
        verifier_ = bytes(records[(i + 1) * size - DIGEST_SIZE : (i + 1) * size])
        body = bytes([ACTIVE]) + tag(pepper, verifier_)
        out.append(((first_serial + i).to_bytes(8, "big"), body + seal(pepper, SEAL_CARD, first_serial + i, body)))
    return out


# -- provenance (docs/provenance.md): key commitments, event leaves, the RFC 9162 Merkle tree -------

HASH_SIZE = 32  # bytes of a SHA-256 digest: every commitment, leaf hash and node
SEED_SIZE = 32  # bytes of a batch's commit seed
SALT_SIZE = 16  # bytes of a key salt (BLAKE2b-128)

# Event kinds: the u8 after the at-ms field of an event leaf.
KIND_SUPPLIER = 1
KIND_ISSUE = 2
KIND_IMPORT = 3
KIND_REDEEM = 4
KIND_VOID = 5
KIND_BLACKLIST = 6
KIND_LIFT = 7
KIND_TRANSFER = 8
KIND_TRUST = 9

_LEAF_PREFIX = b"\x00"  # RFC 9162 domain separation: SHA-256(0x00 || leaf) is a leaf hash...
_NODE_PREFIX = b"\x01"  # ...and SHA-256(0x01 || left || right) an interior node
_SALT_PERSON = b"kv1/salt"
_COMMIT_TAG = b"kv1/commit"
_EVENT_TAG = b"kv1/event"
_EVENT_TAG_V2 = b"kv2/event"  # a leaf with a links section (complete histories)
_CHANGE_KINDS = {REDEEMED: KIND_REDEEM, VOIDED: KIND_VOID}  # a ledger change's state -> its event kind


def _u64(value: int) -> bytes:
    """u64(value): 8 bytes big-endian. TypeError for a non-integer, ValueError outside 0..2**64-1."""
    value = operator.index(value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{value} does not fit an unsigned 64-bit integer")
    return value.to_bytes(8, "big")


def _check_bytes(value: object, what: str, size: int | None = None) -> None:
    """TypeError unless value is bytes or a bytearray; ValueError unless it is size bytes long (if given)."""
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    if size is not None and len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(value)}")


def _hashes(data: bytes, what: str) -> list[bytes]:
    """Concatenated 32-byte hashes, one by one."""
    _check_bytes(data, what)
    if len(data) % HASH_SIZE:
        raise ValueError(f"{what} must be a multiple of {HASH_SIZE} bytes, not {len(data)}")
    return [bytes(data[i : i + HASH_SIZE]) for i in range(0, len(data), HASH_SIZE)]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    """An RFC 9162 interior node: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right)


def key_salt(seed: bytes, serial: int) -> bytes:
    """A key's salt: BLAKE2b-128 of u64(serial), keyed with the batch's 32-byte commit seed, tag kv1/salt."""
    _check_bytes(seed, "a commit seed", SEED_SIZE)
    return hashlib.blake2b(_u64(serial), key=seed, digest_size=SALT_SIZE, person=_SALT_PERSON).digest()


def commitments(first_serial: int, seed: bytes, materials: list) -> bytes:
    """The manifest's commitment to each key, for serials first_serial, first_serial + 1, ...: concatenated.

    A commitment is the RFC 9162 leaf hash of the commitment preimage:
    SHA-256(0x00 || kv1/commit || u64(serial) || key_salt(seed, serial) || material), the material
    being bytes or an ASCII str (a native key's 32 symbols).
    """
    _check_bytes(seed, "a commit seed", SEED_SIZE)
    _u64(first_serial)
    out = bytearray()
    for i, material in enumerate(materials):
        if isinstance(material, str):
            material = material.encode("ascii")
        else:
            _check_bytes(material, "a key material")
        serial = first_serial + i
        out += _sha256(_LEAF_PREFIX + _COMMIT_TAG + _u64(serial) + key_salt(seed, serial) + material)
    return bytes(out)


def merkle_root(leaf_hashes: bytes) -> bytes:
    """RFC 9162 MTH of n = len(leaf_hashes) // 32 leaf hashes given concatenated.

    No leaves: SHA-256(""); one: that leaf hash; n > 1: node(MTH(first k), MTH(the rest)) for k the
    largest power of two below n.
    """
    leaves = _hashes(leaf_hashes, "leaf hashes")

    def mth(start: int, end: int) -> bytes:
        n = end - start
        if n == 1:
            return leaves[start]
        k = 1 << ((n - 1).bit_length() - 1)
        return _node(mth(start, start + k), mth(start + k, end))

    return mth(0, len(leaves)) if leaves else _sha256(b"")


def event_leaf(index: int, prev: bytes, kind: int, at_ms: int, body: bytes, links: bytes | None) -> bytes:
    """An event's leaf bytes: kv1/event || u64(index) || previous leaf hash (32) || u8(kind) || u64(at ms) || body
    (``links`` None: version 1, as written before links).

    With ``links`` (the encoded links section, docs/provenance.md "Complete histories"), a version 2
    leaf: kv2/event || the same header || links || body.
    """
    _check_bytes(prev, "the previous leaf hash", HASH_SIZE)
    _check_bytes(body, "an event body")
    kind = operator.index(kind)
    if not 0 <= kind <= 255:
        raise ValueError(f"an event kind is one byte, not {kind}")
    if links is None:
        return _EVENT_TAG + _u64(index) + bytes(prev) + bytes([kind]) + _u64(at_ms) + bytes(body)
    _check_bytes(links, "an event's links section")
    return _EVENT_TAG_V2 + _u64(index) + bytes(prev) + bytes([kind]) + _u64(at_ms) + bytes(links) + bytes(body)


_NO_LINK = 0xFFFF_FFFF_FFFF_FFFF  # a link that names no earlier event


def ledger_leaves(first_index: int, prev: bytes, changes: list,
                  links: bytes | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The event leaves of redeems and voids, (serial, state, at ms, text) each, from index first_index.

    State 1 (redeemed) is a KIND_REDEEM event, 2 (voided) a KIND_VOID one; the body is
    u64(serial) || text in UTF-8. Each leaf names the leaf hash (SHA-256(0x00 || leaf)) of the one
    before; the first names ``prev``. With ``links`` None, version 1 leaves (as written before links); else (u64 each: the index of the previous event about
    the change's key, 2**64 - 1 for none), version 2 leaves whose links section is
    u8(1) || u8(9) || "K" || u64(serial) || that u64. Returns [(u64(index), leaf), ...] and the leaf
    hashes concatenated (32 bytes each).
    """
    _check_bytes(prev, "the previous leaf hash", HASH_SIZE)
    _u64(first_index)
    if links is not None:
        _check_bytes(links, "the links")
        if len(links) != 8 * len(changes):
            raise ValueError(f"{len(changes)} changes need {8 * len(changes)} bytes of links, not {len(links)}")
    pairs = []
    hashes = bytearray()
    for i, (serial, state, at_ms, text) in enumerate(changes):
        kind = _CHANGE_KINDS.get(operator.index(state))
        if kind is None:
            raise ValueError(f"a change's state is {REDEEMED} (redeemed) or {VOIDED} (voided), not {state!r}")
        if not isinstance(text, str):
            raise TypeError(f"a change's text must be a str, not {type(text).__name__}")
        section = None if links is None else b"\x01\x09K" + _u64(serial) + bytes(links[8 * i:8 * i + 8])
        leaf = event_leaf(first_index + i, prev, kind, at_ms, _u64(serial) + text.encode("utf-8"), section)
        prev = _sha256(_LEAF_PREFIX + leaf)
        pairs.append((_u64(first_index + i), leaf))
        hashes += prev
    return pairs, bytes(hashes)


def node_key(level: int, index: int) -> int:
    """Where the tree keeps internal node (level >= 1, index): its position among internal nodes in post-order.

    With m = (index + 1) << level leaves up to the node's right end: (m - 1) - popcount(m - 1) +
    (level - 1). A tree of k leaves has k - popcount(k) internal nodes, keyed 0, 1, 2, ... in the
    order appends complete them.
    """
    level, index = operator.index(level), operator.index(index)
    if level < 1 or index < 0:
        raise ValueError(f"no internal node at level {level}, index {index}")
    m = (index + 1) << level
    return (m - 1) - (m - 1).bit_count() + (level - 1)


def tree_append(size: int, frontier: bytes, leaf_hashes: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Append leaves to an append-only RFC 9162 tree of ``size`` leaves.

    The tree is stored as its internal nodes, keyed by node_key, and its frontier: the roots of
    the perfect subtrees that make up ``size`` (its binary decomposition), largest first,
    concatenated. Returns the internal nodes the new leaves (their hashes concatenated) complete,
    as [(u64(node_key), hash), ...] in increasing key order, and the new frontier.
    """
    size = operator.index(size)
    stack = _hashes(frontier, "a frontier")
    leaves = _hashes(leaf_hashes, "leaf hashes")
    if size < 0 or size + len(leaves) >= 1 << 64:
        raise ValueError(f"a tree of {size} + {len(leaves)} leaves is out of range")
    if len(stack) != size.bit_count():
        raise ValueError(f"a tree of {size} leaves has a frontier of {size.bit_count()} hashes, not {len(stack)}")
    nodes = []
    for node in leaves:
        # The new leaf is a perfect subtree (level 0, index size); while it is a right child, the
        # frontier's last subtree is its sibling: the two make their parent.
        level, index = 0, size
        while index & 1:
            node = _node(stack.pop(), node)
            level, index = level + 1, index >> 1
            nodes.append((_u64(node_key(level, index)), node))
        stack.append(node)
        size += 1
    return nodes, b"".join(stack)


# -- the subject index (docs/provenance.md, "Complete histories"): its update when a checkpoint is signed --

_SUBJECT_TAG = b"kv1/subject"  # a subject's key in the index: SHA-256(kv1/subject || subject)
_INDEX_NODE = b"#"  # a stored node's key: # || u16 depth || the subject key's first depth bits (32 bytes)
_INDEX_MAX_DEPTH = 256
_INDEX_ENTRY = 40  # one subject in a stored bucket: subject key || u64 latest event index
_INDEX_BUCKET = 16  # a subtree of up to this many subjects is stored as one bucket: L || entries, in key order
_INDEX_INNER = 65  # a stored inner node (a subtree of more subjects): N || left hash || right hash


def _not_a_leaf() -> Exception:
    from ..errors import StoreCorruptError

    return StoreCorruptError("an event is not an event leaf: the event log is damaged; run `keyvault audit`")


def subject_latest(items: list, size: int) -> dict | None:
    """{subject key: index of its latest event} over ``items``, (u64 index, leaf) pairs in log order, up to
    event ``size`` (items past it are ignored); None when one is a version 1 leaf (it has no links).

    Each subject of a version 2 leaf's links section counts, keyed SHA-256(kv1/subject || subject).
    StoreCorruptError for a leaf that is not one, or whose links section is cut short.
    """
    latest: dict = {}
    for key, leaf in items:
        index = int.from_bytes(key, "big")
        if index >= size:
            break
        if len(leaf) < 58 or bytes(leaf[:9]) not in (_EVENT_TAG, _EVENT_TAG_V2):
            raise _not_a_leaf()
        if leaf[:9] == _EVENT_TAG:
            return None
        at = 58
        if at >= len(leaf):
            raise _cut_short()
        count = leaf[at]
        at += 1
        for _ in range(count):
            length = leaf[at] if at < len(leaf) else 0
            if not length or at + 1 + length + 8 > len(leaf):
                raise _cut_short()
            latest[_sha256(_SUBJECT_TAG + bytes(leaf[at + 1:at + 1 + length]))] = index
            at += 1 + length + 8
    return latest


def _cut_short() -> Exception:
    from ..errors import StoreCorruptError

    return StoreCorruptError("an event's links section is cut short: the event log is damaged; run `keyvault audit`")


def _index_damaged() -> Exception:
    from ..errors import StoreCorruptError

    return StoreCorruptError("a node of the subject index is damaged: run `keyvault check` and restore the store "
                             "from a backup")


def _index_leaf_hash(key: bytes, latest: int) -> bytes:
    return _sha256(_LEAF_PREFIX + key + latest.to_bytes(8, "big"))


def _index_bucket(record: Any, depth: int, prefix: int) -> list[tuple[int, int]]:
    """The (key, latest) entries of a stored bucket at ``depth`` under ``prefix`` (the subtree's first ``depth``
    bits, as a 256-bit integer); StoreCorruptError unless it holds 1 to _INDEX_BUCKET entries, in strictly
    increasing key order, each on the bucket's path."""
    count, rest = divmod(len(record) - 1, _INDEX_ENTRY)
    if record[:1] != b"L" or rest or not 1 <= count <= _INDEX_BUCKET:
        raise _index_damaged()
    entries = [(int.from_bytes(record[at:at + 32], "big"), int.from_bytes(record[at + 32:at + 40], "big"))
               for at in range(1, len(record), _INDEX_ENTRY)]
    shift = 256 - depth
    if any(key >> shift << shift != prefix for key, _ in entries if depth) or \
            any(b[0] <= a[0] for a, b in zip(entries, entries[1:])):
        raise _index_damaged()
    return entries


def _index_sparse(depth: int, entries: list[tuple[int, int]]) -> bytes:
    """The hash of the subtree at ``depth`` holding exactly ``entries`` (sorted): empty, one leaf, or an inner
    node over its two halves."""
    if not entries:
        return bytes(HASH_SIZE)
    if len(entries) == 1:
        return _index_leaf_hash(entries[0][0].to_bytes(32, "big"), entries[0][1])
    shift = 255 - depth
    mid = next((i for i, (key, _) in enumerate(entries) if key >> shift & 1), len(entries))
    return _node(_index_sparse(depth + 1, entries[:mid]), _index_sparse(depth + 1, entries[mid:]))


def _index_record(entries: list[tuple[int, int]]) -> bytes:
    return b"L" + b"".join(key.to_bytes(32, "big") + _u64(value) for key, value in entries)


def subject_update(latest: dict, get: Callable[[bytes], Any],
                   overlay: dict | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Set each subject key's latest event index ({32-byte key: index}) in the stored sparse Merkle tree:
    (the new root, the node records to write, sorted by key). ``get(node key)`` reads a stored node record;
    ``overlay`` ({node key: record}), when given, holds newer records, read before ``get``.

    A subtree of up to _INDEX_BUCKET subjects is stored as one bucket record at its node (its hashes
    are computed when read); a larger one as an inner node keeping both children's hashes, so a side
    nothing changed under is not read again. Only the paths to changed subjects are read and
    written. Keys are handled as 256-bit integers, sorted: the keys under a node are a slice of
    them, split at the node's midpoint by bisection. A bucket met on the way down is merged with the
    changes under it and stored again, or split into an inner node and new buckets when it outgrows
    _INDEX_BUCKET; nothing is stored below a bucket or an empty subtree. StoreCorruptError for a
    damaged node record.
    """
    items = sorted((int.from_bytes(k, "big"), v) for k, v in latest.items())
    ints = [k for k, _ in items]
    writes: list[tuple[bytes, bytes]] = []

    def where(depth: int, prefix: int) -> bytes:
        return _INDEX_NODE + depth.to_bytes(2, "big") + prefix.to_bytes(32, "big")

    def build(depth: int, prefix: int, entries: list[tuple[int, int]]) -> bytes:
        """Store ``entries`` (sorted, at least one) as the subtree at ``depth``: one bucket, or an inner node."""
        if len(entries) <= _INDEX_BUCKET:
            writes.append((where(depth, prefix), _index_record(entries)))
            return _index_sparse(depth, entries)
        shift = 255 - depth
        right_prefix = prefix | 1 << shift
        mid = bisect_left(entries, (right_prefix, -1))
        left = build(depth + 1, prefix, entries[:mid]) if mid else bytes(HASH_SIZE)
        right = build(depth + 1, right_prefix, entries[mid:]) if mid < len(entries) else bytes(HASH_SIZE)
        writes.append((where(depth, prefix), b"N" + left + right))
        return _node(left, right)

    def go(depth: int, prefix: int, lo: int, hi: int) -> bytes:
        """The new hash of the stored subtree at ``depth`` with the changes items[lo:hi] under it."""
        record = overlay.get(where(depth, prefix)) if overlay is not None else None
        if record is None:
            record = get(where(depth, prefix))
        if record is not None and record[:1] == b"N" and len(record) == _INDEX_INNER:
            if lo == hi:
                return _node(bytes(record[1:33]), bytes(record[33:65]))
            right_prefix = prefix | 1 << (255 - depth)
            mid = bisect_left(ints, right_prefix, lo, hi)
            left = go(depth + 1, prefix, lo, mid) if lo < mid else bytes(record[1:33])
            right = go(depth + 1, right_prefix, mid, hi) if mid < hi else bytes(record[33:65])
            writes.append((where(depth, prefix), b"N" + left + right))
            return _node(left, right)
        merged = dict(_index_bucket(record, depth, prefix)) if record is not None else {}
        if lo == hi:
            return _index_sparse(depth, sorted(merged.items()))
        merged.update(items[lo:hi])
        return build(depth, prefix, sorted(merged.items()))

    root = go(0, 0, 0, len(ints))
    writes.sort()
    return root, writes


def results_json(results: list, templates: dict, render: Callable[[Any, str | None], str]) -> str:
    """The JSON texts of ``results`` joined with ", ", each exactly ``render(result, None)``.

    ``render(result, serial)`` is a result's JSON with its serial replaced by ``serial`` when given.
    Most results differ from another one only in their serial: the text of each shape (every field
    but the serial, item 1) is rendered once with a marker, kept in ``templates``, and the serial set
    in. Only canonical serials (ASCII letters, digits and '-') go through a template; anything else
    is rendered whole.
    """
    parts = []
    for result in results:
        serial = result[1]
        if type(serial) is not str or not serial.isascii() or not serial.replace("-", "").isalnum():
            parts.append(render(result, None))
            continue
        shape = result[:1] + result[2:]
        template = templates.get(shape)
        if template is None:
            head, _, tail = render(result, _MARK).partition(_MARK_JSON)
            template = templates[shape] = (head + '"', '"' + tail)
        parts.append(template[0] + serial + template[1])
    return ", ".join(parts)


_MARK = "\x00"  # stands for the serial while a template is rendered (no serial holds it)
_MARK_JSON = '"\\u0000"'  # how json.dumps writes it
