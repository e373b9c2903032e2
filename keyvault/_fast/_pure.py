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
import unicodedata

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
_SEPARATORS = " \t\r\n\v\f-_\u00a0\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u3000\ufe63\uff0d"
# Upper-case and fold the look-alikes: I and L read as 1, O reads as 0.
_FOLD = str.maketrans({"I": "1", "L": "1", "O": "0"} | {c: None for c in _SEPARATORS})

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
_CARD_SIZE = 17  # state (1 byte) + tag (16 bytes)
_OUTCOME_HEAD = 9  # state (1 byte) + at ms (8 bytes big-endian), then the order id or reason in UTF-8


def format_serial_text(serial: int) -> str:
    """A serial as printed: PPPP-BBB-IIIII."""
    s = format_serial(serial)
    return f"{s[:4]}-{s[4:7]}-{s[7:]}"


def judge(serial: int, state: int, row: tuple, key_blocks: dict, change: tuple | None, outcome: bytes | None,
          now: int) -> object:
    """The Result for a located key whose tag matched.

    ``state`` is the card record's; ``change`` an unfolded ledger entry (state, at ms, text, seq)
    that overrides it; ``outcome`` the outcome record, read when the state is not active and no
    change says why. Precedence: damaged (a state byte that is none of the three: unknown),
    redeemed, void, blacklisted (supplier, batch, key), not yet valid, expired, valid.
    """
    from ..clock import iso
    from ..results import Result, Status

    base = (format_serial_text(serial), row[4], row[5], row[6], row[7])
    if change is not None:
        state, at, text = change[0], change[1], change[2]
    elif state != ACTIVE and outcome is not None:
        at, text = int.from_bytes(outcome[1:_OUTCOME_HEAD], "big"), bytes(outcome[_OUTCOME_HEAD:]).decode("utf-8")
    else:
        at, text = 0, ""
    if state != ACTIVE and state != REDEEMED and state != VOIDED:  # a damaged record vouches for nothing
        return Result(Status.UNKNOWN, base[0], base[1], message="this key's record is damaged: refused; "
                      "restore the store from a backup")
    if state == REDEEMED:
        when = iso(at)
        return Result(Status.REDEEMED, *base, order_id=text, redeemed_at=when,
                      message=f"already redeemed by order {text} at {when}")
    if state == VOIDED:
        when = iso(at)
        return Result(Status.VOID, *base, voided_at=when, reason=text, message=f"voided at {when}: {text}")
    block = row[3] or key_blocks.get(serial)
    if block is not None:
        return Result(Status.BLACKLISTED, *base, level=block[0], reason=block[1],
                      message=f"blacklisted ({block[0]}): {block[1]}")
    if row[1] is not None and now < row[1]:
        return Result(Status.NOT_YET_VALID, *base, message=f"valid from {iso(row[1])}")
    if row[2] is not None and now >= row[2]:
        return Result(Status.EXPIRED, *base, message=f"expired at {iso(row[2])}")
    return Result(Status.VALID, *base)


def check_keys(keys: list, pepper: bytes, batches: dict, key_blocks: dict, overlay: dict, cards: object,
               outcomes: object, now: int) -> list:
    """Judge many typed keys at once: one Result per key, in input order; None for non-native input.

    batches maps a batch key to its row (salt, valid_from, valid_until, block, batch id,
    supplier id, supplier name, product), block being the (level, reason) of a supplier or batch
    blacklist entry, or None; key_blocks maps a serial to (level, reason); overlay maps a serial
    to its unfolded ledger change (state, at ms, text, seq). cards and outcomes are py-lmdb
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
        expected = tag(pepper, verifier(row[0] if row is not None else bytes(16), canonical))
        found.append((serial, i, expected, row))
    found.sort(key=lambda item: item[0])
    records = dict(cards.getmulti([item[0].to_bytes(8, "big") for item in found]))  # type: ignore[attr-defined]
    pending = []  # (serial, index, state, row): the outcome record says why the key is not active
    for serial, i, expected, row in found:
        record = records.get(serial.to_bytes(8, "big")) if row is not None else None
        if record is None or not tags_equal(bytes(record[1:_CARD_SIZE]), expected):
            out[i] = Result(Status.UNKNOWN, format_serial_text(serial), row[4] if row is not None else None,
                            message="no such key in this store")
            continue
        change = overlay.get(serial)
        if record[0] != ACTIVE and change is None:
            pending.append((serial, i, record[0], row))
        else:
            out[i] = judge(serial, record[0], row, key_blocks, change, None, now)
    if pending:
        details = dict(outcomes.getmulti([item[0].to_bytes(8, "big") for item in pending]))  # type: ignore[attr-defined]
        for serial, i, state, row in pending:
            out[i] = judge(serial, state, row, key_blocks, None, details.get(serial.to_bytes(8, "big")), now)
    return out


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
    active state byte and the verifier re-keyed with the pepper.
    """
    out = []
    for i in range(len(records) // size):
        verifier_ = bytes(records[(i + 1) * size - DIGEST_SIZE : (i + 1) * size])
        out.append(((first_serial + i).to_bytes(8, "big"), bytes([ACTIVE]) + tag(pepper, verifier_)))
    return out
