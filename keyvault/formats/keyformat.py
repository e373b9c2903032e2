"""The key format's public face: display forms, serials, batches and typo messages.

The format itself (docs/format.md) is implemented in ``keyvault._fast``;
this module turns its integers into the strings people read and type.
"""

from __future__ import annotations

import re
import unicodedata

from .. import _fast
from .._fast import COMPILED, SEPARATORS
from ..errors import MalformedKeyError

PREFIX_SYMBOLS = 4
BATCH_SYMBOLS = 3
INDEX_SYMBOLS = 5
INDEX_BITS = 5 * INDEX_SYMBOLS  # 25: up to 33,554,432 keys per batch
BATCH_BITS = 5 * BATCH_SYMBOLS  # 15: up to 32,768 batches per issuer prefix
MAX_BATCH_SIZE = 1 << INDEX_BITS
MAX_BATCHES = 1 << BATCH_BITS
#: Longest imported code, card number or password accepted (characters).
MAX_IMPORTED = 128

# Exactly the separators the parser drops (one definition: _fast.SEPARATORS).
_SEPARATOR_SET = "[" + re.escape(SEPARATORS) + "]"
_GROUPS = re.compile("[^" + _SEPARATOR_SET[1:-1] + "]+")
_SEPARATORS = re.compile(_SEPARATOR_SET + "+")


def display_key(canonical: str) -> str:
    """A canonical 32-symbol key in its printed form: 8 groups of 4 joined by '-'."""
    size = _fast.GROUP_SIZE
    return "-".join(canonical[i : i + size] for i in range(0, len(canonical), size))


def batch_key(serial: int) -> int:
    """The batch part (prefix and batch number) of a 60-bit serial."""
    return serial >> INDEX_BITS


def serial_index(serial: int) -> int:
    """The index of a key within its batch."""
    return serial & (MAX_BATCH_SIZE - 1)


def make_serial(batch: int, index: int) -> int:
    """The serial of key ``index`` in batch ``batch``."""
    return (batch << INDEX_BITS) | index


def make_batch(prefix: int, number: int) -> int:
    """The batch key of batch ``number`` under issuer ``prefix``."""
    return (prefix << BATCH_BITS) | number


def prefix_of(batch: int) -> int:
    """The issuer prefix of a batch key."""
    return batch >> BATCH_BITS


def serial_text(serial: int) -> str:
    """A serial as printed: PPPP-BBB-IIIII."""
    return _fast.format_serial_text(serial)


def batch_text(batch: int) -> str:
    """A batch id as printed: PPPP-BBB."""
    s = _fast.format_serial(batch << INDEX_BITS)
    return f"{s[:4]}-{s[4:7]}"


def prefix_text(prefix: int) -> str:
    """An issuer prefix as printed: 4 symbols."""
    return _fast.format_serial(prefix << (BATCH_BITS + INDEX_BITS))[:4]


def _number(text: str, symbols: int, what: str, example: str) -> int:
    folded = _fast.normalize(text) if len(text) <= _fast.MAX_INPUT else ""
    if len(folded) != symbols or any(c not in _fast.ALPHABET for c in folded):
        # The input is never echoed: a key passed where a serial belongs would leak.
        raise MalformedKeyError(f"that {what} is not valid: expected {symbols} symbols such as {example}")
    value = 0
    for c in folded:
        value = (value << 5) | _fast.ALPHABET.index(c)
    return value


def parse_serial(text: str) -> int:
    """A serial from its printed form (separators and case ignored)."""
    serial = _fast.parse_serial(text)
    if serial < 0:
        raise MalformedKeyError("that serial is not valid: a serial has 12 symbols, like 7KQ2-00A-0003F")
    return serial


def parse_batch(text: str) -> int:
    """A batch key from its printed form PPPP-BBB."""
    return _number(text, PREFIX_SYMBOLS + BATCH_SYMBOLS, "batch id", "7KQ2-00A")


def parse_prefix(text: str) -> int:
    """An issuer prefix from its 4 printed symbols."""
    return _number(text, PREFIX_SYMBOLS, "issuer prefix", "7KQ2")


def looks_like_serial(text: str) -> bool:
    """True when ``text`` is a serial (12 symbols), not a key."""
    return _fast.parse_serial(text) >= 0


def looks_native(text: str) -> bool:
    """True when ``text`` is shaped like a native key (32 symbols, starting with the version)."""
    if len(text) > _fast.MAX_INPUT:
        return False
    folded = _fast.normalize(text)
    return len(folded) == _fast.KEY_SYMBOLS and folded[:1] == _fast.ALPHABET[1]


#: How many symbols a mistyped native key may be short or long by (one whole group).
NEAR_NATIVE = 4


def mistyped_native(text: str) -> bool:
    """True when ``text`` can only be a mistyped native key: nothing but key-alphabet symbols (look-alikes
    and case folded) and separators, within ``NEAR_NATIVE`` symbols of a key's length, or a key's shape
    with one symbol wrong. Imported codes of that shape are still found first (``engine.lookup``)."""
    if len(text) > _fast.MAX_INPUT:
        return False
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    folded = _fast.normalize(text)
    return abs(len(folded) - _fast.KEY_SYMBOLS) <= NEAR_NATIVE and all(c in _fast.ALPHABET for c in folded)


def importable(text: str) -> bool:
    """True when ``text`` could be an imported code or card:password (each part 1..MAX_IMPORTED printable
    ASCII once folded): anything else is not a key at all."""
    parts = text.partition(":")[::2] if ":" in text else (text,)
    for part in parts:
        folded = normalize_imported(part)
        if not folded or len(folded) > MAX_IMPORTED or not folded.isascii() or not folded.isprintable():
            return False
    return True


def _group(position: int) -> int:
    return position // _fast.GROUP_SIZE + 1


def malformed(outcome: int, position: int, text: str) -> tuple[int | None, str]:
    """The group at fault (1-based, or None) and a message, for a failed parse."""
    if outcome == _fast.BAD_LENGTH:
        return _length_problem(text)
    if outcome == _fast.BAD_SYMBOL:
        group = _group(position)
        return group, f"group {group} holds a character that is not in the key alphabet; check it"
    if outcome == _fast.BAD_VERSION:
        return 1, "this key's format version is not one this keyvault reads; check group 1 or upgrade keyvault"
    if outcome == _fast.CHECK_SUBSTITUTION:
        group = _group(position)
        return group, f"group {group} looks mistyped: check its characters"
    if outcome == _fast.CHECK_TRANSPOSITION:
        first, second = _group(position), _group(position + 1)
        where = f"group {first}" if first == second else f"groups {first} and {second}"
        return first, f"two neighbouring characters in {where} look swapped"
    return None, "more than one character is mistyped; check the whole key"


def _length_problem(text: str) -> tuple[int | None, str]:
    size = _fast.GROUP_SIZE
    expected = f"a key has {_fast.KEY_SYMBOLS} characters in {_fast.KEY_SYMBOLS // size} groups of {size}"
    if len(text) > _fast.MAX_INPUT:
        return None, f"the input is far too long for a key; {expected}"
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    count = len(_fast.normalize(text))
    if count == 0:
        return None, f"the key is empty; {expected}"
    groups = _GROUPS.findall(text)
    if _SEPARATORS.search(text.strip()) and len(groups) == _fast.KEY_SYMBOLS // size:
        for i, g in enumerate(groups, start=1):
            if len(g) != size:
                return i, f"group {i} has {len(g)} characters; {expected}"
    return None, f"the key has {count} characters; {expected}"


def normalize_imported(text: str) -> str:
    """Fold an upstream code, card number or password: NFKC, spaces and dashes dropped, upper case."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return _SEPARATORS.sub("", text).upper()


def key_material(key: str) -> bytes:
    """What a key's commitment hashes: a native key's canonical form, or an imported code's folded bytes.

    A card and password (``CARD:PASSWORD``) are folded each on its own and joined by a NUL byte.
    MalformedKeyError for text that is a serial or a mistyped native key.
    """
    outcome, _, canonical, _ = _fast.parse_key(key)
    if outcome == _fast.OK:
        return bytes(canonical)
    if looks_like_serial(key) or looks_native(key):
        raise MalformedKeyError("that is not a valid key (give the key itself, not its serial)")
    card, sep, password = key.partition(":")
    if sep:
        return normalize_imported(card).encode() + b"\0" + normalize_imported(password).encode()
    return normalize_imported(key).encode()


def compiled() -> bool:
    """True when keys are parsed and hashed by the compiled core (False: its pure-Python twin)."""
    return COMPILED

