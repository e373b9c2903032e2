"""The compiled core against its specification: _core must answer exactly as _pure.

Both modules are imported directly (whatever keyvault._fast selected) and every
public function is run on the same input through both (``same``, tests/conftest.py);
results must be equal and of the same types, and exceptions of the same type with
the same args. Hashes are also checked against hashlib.blake2b itself, and the
batch check's answers against the rule book and against judge.

Without a built _core what needs it is skipped, with the reason, unless
KEYVAULT_REQUIRE_EXTENSIONS is set: then it fails (tests/conftest.py, compiled_core).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
from pathlib import Path

import pytest
from conftest import compiled_core, run, same, typed
from hypothesis import example, given, settings
from hypothesis import strategies as st

from keyvault._fast import _pure, env_flag

# Literal copies: the strategies are written from the format, not from the code under test.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ASCII_SEPARATORS = " \t\r\n\v\f-_"
UNICODE_SEPARATORS = "\u00a0\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u3000\ufe63\uff0d"
LOOKALIKES = {"1": "IiLl", "0": "Oo"}
# Fullwidth forms (U+FF10..): NFKC folds them to ASCII.
FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in ALPHABET + "IiLlOo"}
# NFKC / upper() corner cases, a combining mark, lone surrogates, controls, latin-1.
TRICKY = ("\u00df\u0131\u0130\u017f\u00b5\u00aa\u00ba\u00b2\u00b9\u00bd\u212a\u2160\u3371\ufdfa\u0301"
          "\ud800\udfff\x00\x1f\x7f\x80\xff\u2009\u200b\u1680\U0001d7ce\U0001f600uU!.")
KEYISH = ALPHABET + "".join(LOOKALIKES.values()) + ASCII_SEPARATORS + UNICODE_SEPARATORS + \
    "".join(FULLWIDTH.values()) + TRICKY + ALPHABET.lower()

serials = st.integers(min_value=0, max_value=(1 << 60) - 1)
any_ints = st.one_of(st.integers(), st.integers(min_value=-(1 << 130), max_value=1 << 130))
keyish_text = st.text(alphabet=st.sampled_from(KEYISH), max_size=64)
symbol_strings = st.text(alphabet=st.sampled_from(ALPHABET), min_size=31, max_size=33)
surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
                     min_size=1, max_size=4)


def _key(serial: int, entropy: bytes) -> str:
    return _pure.issue_keys(serial, 1, b"", entropy)[0][0]


keys = st.builds(_key, serials, st.binary(min_size=10, max_size=10))


def _grouped(key: str, sep: str = "-") -> str:
    return sep.join(key[i:i + 4] for i in range(0, len(key), 4))


# ---------------------------------------------------------------------------
# The module itself


def test_compiled_core_is_built():
    """With KEYVAULT_REQUIRE_EXTENSIONS=1 a missing or broken _core is a failure, never a skip."""
    assert compiled_core().__file__.endswith((".so", ".pyd")), compiled_core().__file__


def test_package_selects_compiled_core():
    """The package runs the compiled core whenever it is built and not refused; whenever it is required."""
    import keyvault._fast as fast

    if env_flag("KEYVAULT_REQUIRE_EXTENSIONS"):
        assert fast.COMPILED and fast.impl is compiled_core()
    if env_flag("KEYVAULT_NO_EXTENSIONS"):
        assert fast.impl is _pure and not fast.COMPILED
        return
    assert fast.impl is compiled_core()
    assert fast.COMPILED
    assert fast.parse_key is compiled_core().parse_key


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("0", False), ("false", False),
                                             (" No ", False), ("FALSE", False), ("1", True), ("yes", True),
                                             ("true", True), ("2", True), (" on ", True)])
def test_env_flag(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("KEYVAULT_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("KEYVAULT_TEST_FLAG", value)
    assert env_flag("KEYVAULT_TEST_FLAG") is expected


def _pure_functions() -> dict:
    return {name: f for name, f in vars(_pure).items()
            if not name.startswith("_") and inspect.isfunction(f) and f.__module__ == _pure.__name__}


TWINS = ["normalize", "check_symbols", "parse_key", "parse_serial", "format_serial", "encode_key", "verifier",
         "tag", "locator", "store_locator", "tags_equal", "issue_keys", "format_serial_text", "check_keys",
         "check_one", "accept_redeems", "fold_records", "export_rows", "card_records", "results_json"]


def test_same_public_functions():
    public = {name for name in dir(compiled_core()) if not name.startswith("_")}
    assert public == set(_pure_functions())
    assert public >= set(TWINS)


@pytest.mark.parametrize("name", sorted(TWINS))
def test_same_signature(name):
    assert inspect.signature(getattr(compiled_core(), name)) == inspect.signature(getattr(_pure, name))


def test_stub_matches_pure():
    stub = Path(compiled_core().__file__).with_name("_core.pyi")
    if not stub.exists():  # installed without package data: check the source tree's
        stub = Path(__file__).resolve().parents[1] / "keyvault" / "_fast" / "_core.pyi"
    tree = ast.parse(stub.read_text(encoding="utf-8"))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    pure = _pure_functions()
    assert set(functions) == set(pure)
    for name, node in functions.items():
        signature = inspect.signature(pure[name])  # annotations are strings (from __future__ import annotations)
        assert [a.arg for a in node.args.args] == list(signature.parameters), name
        assert [ast.unparse(a.annotation) for a in node.args.args] == \
            [p.annotation for p in signature.parameters.values()], name
        assert ast.unparse(node.returns) == signature.return_annotation, name
        assert not (node.args.defaults or node.args.kwonlyargs or node.args.vararg or node.args.kwarg), name


def test_same_constants():
    constants = compiled_core()._constants()
    separators = constants.pop("ASCII_SEPARATORS")
    assert separators == "".join(c for c in _pure.SEPARATORS if c.isascii())
    for name, value in constants.items():
        assert value == getattr(_pure, name), name
    assert constants["LOCATORS"] == _pure.LOCATORS


def test_keyword_arguments():
    key = _key(7, bytes(10))
    assert compiled_core().parse_key(text=key) == _pure.parse_key(text=key)
    assert compiled_core().issue_keys(serial_base=1, count=1, salt=b"s", entropy=bytes(10)) == \
        _pure.issue_keys(serial_base=1, count=1, salt=b"s", entropy=bytes(10))
    assert compiled_core().tag(pepper=b"p", verifier_=b"v") == _pure.tag(pepper=b"p", verifier_=b"v")


# ---------------------------------------------------------------------------
# BLAKE2b against hashlib


@pytest.mark.parametrize("key_size", [0, 1, 17, 63, 64])
def test_blake2b_every_length(key_size):
    key = bytes(range(100, 100 + key_size))
    data = bytes((i * 7 + 3) & 0xFF for i in range(300))
    for person in (b"", b"kv1/tag", b"0123456789abcdef"):
        for size in (1, 16, 64):
            for n in range(301):
                expected = hashlib.blake2b(data[:n], key=key, digest_size=size, person=person).digest()
                assert compiled_core()._blake2b(data[:n], key, size, person) == expected, (n, key_size, person, size)


@given(data=st.binary(max_size=300), key=st.binary(max_size=64), person=st.binary(max_size=16),
       size=st.integers(1, 64), chunk=st.integers(0, 300))
@example(data=b"", key=b"", person=b"", size=64, chunk=0)
@example(data=b"", key=b"k", person=b"", size=64, chunk=0)
@example(data=bytes(128), key=bytes(64), person=bytes(16), size=64, chunk=128)
@example(data=bytes(129), key=b"", person=b"p", size=16, chunk=1)
def test_blake2b_matches_hashlib(data, key, person, size, chunk):
    expected = hashlib.blake2b(data, key=key, digest_size=size, person=person).digest()
    assert compiled_core()._blake2b(data, key, size, person, chunk) == expected


@given(key=st.sampled_from([b"", bytes(range(32)), bytes(range(64))]), person=st.binary(max_size=16),
       size=st.integers(min_value=1, max_value=64), message=st.binary(min_size=1, max_size=128))
@settings(max_examples=200, deadline=None)
def test_blake2b_one_block_matches_hashlib(key, person, size, message):
    """The single-key hashes' one compression (unrolled where lanes are built): hashlib's digest."""
    expected = hashlib.blake2b(message, key=key, digest_size=size, person=person).digest()
    assert compiled_core()._blake2b_one_block(key, person, size, message) == expected


def test_blake2b_one_block_every_length():
    key = bytes(range(32))
    for n in range(1, 129):
        message = bytes((7 * i + n) & 0xFF for i in range(n))
        for size in (1, 16, 17, 32, 64):
            assert compiled_core()._blake2b_one_block(key, b"kv1/seal", size, message) == \
                hashlib.blake2b(message, key=key, digest_size=size, person=b"kv1/seal").digest(), (n, size)


@given(key=st.binary(max_size=64), person=st.binary(max_size=16), size=st.integers(1, 64),
       messages=st.lists(st.binary(max_size=300), max_size=8))
@example(key=b"pepper", person=b"kv1/tag", size=16, messages=[b"", bytes(16), b"", bytes(128), bytes(129)])
def test_blake2b_forked_state_matches_hashlib(key, person, size, messages):
    """One blake2b_init_keyed state, copied for each message (the hot path's pattern)."""
    expected = [hashlib.blake2b(m, key=key, digest_size=size, person=person).digest() for m in messages]
    assert compiled_core()._blake2b_forked(key, person, size, messages) == expected


@pytest.mark.parametrize("size, key, person", [(0, b"", b""), (65, b"", b""), (16, bytes(65), b""),
                                               (16, b"", bytes(17))])
def test_blake2b_refuses_bad_parameters(size, key, person):
    with pytest.raises(ValueError):
        compiled_core()._blake2b(b"x", key, size, person)


@given(salt=st.binary(max_size=300), material=st.binary(max_size=300), pepper=st.binary(max_size=64))
@example(salt=b"", material=b"", pepper=b"")
def test_hashes(salt, material, pepper):
    v = same("verifier", salt, material)
    assert v == hashlib.blake2b(salt + material, digest_size=16, person=b"kv1/verifier").digest()
    t = same("tag", pepper, v)
    assert t == hashlib.blake2b(v, key=pepper, digest_size=16, person=b"kv1/tag").digest()
    assert same("tag", pepper, material) == \
        hashlib.blake2b(material, key=pepper, digest_size=16, person=b"kv1/tag").digest()
    loc = same("locator", material)
    assert loc == hashlib.blake2b(material, digest_size=16, person=b"kv1/locate").digest()
    assert same("store_locator", pepper, loc) == \
        hashlib.blake2b(loc, key=pepper, digest_size=16, person=b"kv1/slocate").digest()
    same("store_locator", pepper, material)


ODD_BINARY = [bytearray(b"ab"), memoryview(b"ab"), "ab", "\u00e9", None, 3, b"x" * 64, b"x" * 65, b""]


@pytest.mark.parametrize("a", ODD_BINARY + [b"ab"], ids=repr)
@pytest.mark.parametrize("b", ODD_BINARY + [b"ab"], ids=repr)
def test_hashes_on_other_types(a, b):
    same("verifier", a, b)
    same("tag", a, b)
    same("locator", a)
    same("store_locator", a, b)
    same("tags_equal", a, b)


@given(a=st.binary(max_size=40), b=st.binary(max_size=40))
def test_tags_equal(a, b):
    same("tags_equal", a, b)
    same("tags_equal", a, a)
    same("tags_equal", a, bytes(a))
    same("tags_equal", a, a + b"\x00")
    if a:
        same("tags_equal", a, a[:-1] + bytes([a[-1] ^ 1]))


# ---------------------------------------------------------------------------
# Keys


@given(key=keys)
def test_valid_keys(key):
    result = same("parse_key", key)
    assert result[0] == _pure.OK and result[2] == key.encode()
    same("parse_key", key.lower())
    same("parse_key", _grouped(key))
    same("parse_key", _grouped(key, " "))
    same("parse_key", "  " + _grouped(key.lower(), "\u2013") + "\n")
    same("parse_key", "".join(FULLWIDTH[c] if c in FULLWIDTH else c for c in key))
    same("parse_key", key + "-")
    same("parse_key", key[:-1])
    same("parse_key", key + "0")
    same("normalize", key)
    same("normalize", _grouped(key.lower()))


@settings(max_examples=20, deadline=None)
@given(key=keys)
def test_every_substitution(key):
    for position in range(32):
        for symbol in ALPHABET + "U!":
            if symbol != key[position]:
                result = same("parse_key", key[:position] + symbol + key[position + 1:])
                if symbol in ALPHABET:  # one wrong symbol is always located
                    assert result[0] == _pure.CHECK_SUBSTITUTION and result[3] == position


@settings(deadline=None)
@given(key=keys)
def test_every_adjacent_swap(key):
    for k in range(31):
        swapped = key[:k] + key[k + 1] + key[k] + key[k + 2:]
        result = same("parse_key", swapped)
        if key[k] != key[k + 1]:  # an adjacent swap is always located
            assert result[:2] == (_pure.CHECK_TRANSPOSITION, 0) and result[3] == k


@given(key=keys, data=st.data())
def test_two_errors(key, data):
    i, j = sorted(data.draw(st.lists(st.integers(0, 31), min_size=2, max_size=2, unique=True)))
    a, b = data.draw(st.sampled_from(ALPHABET)), data.draw(st.sampled_from(ALPHABET))
    same("parse_key", key[:i] + a + key[i + 1:j] + b + key[j + 1:])
    same("parse_key", key[:i] + key[j] + key[i + 1:j] + key[i] + key[j + 1:])  # a swap at any distance


@given(key=keys, data=st.data())
def test_typed_keys(key, data):
    """The key as a customer might type it: any case, look-alikes, fullwidth, separators anywhere."""
    out = []
    for c in key:
        forms = [c, c.lower(), FULLWIDTH[c]] + list(LOOKALIKES.get(c, ""))
        out.append(data.draw(st.sampled_from(forms)))
        if data.draw(st.integers(0, 5)) == 0:
            out.append(data.draw(st.text(st.sampled_from(ASCII_SEPARATORS + UNICODE_SEPARATORS), max_size=3)))
    text = "".join(out)
    result = same("parse_key", text)
    assert result[0] == _pure.OK and result[2] == key.encode()
    same("normalize", text)


@given(key=keys, data=st.data())
def test_keys_with_odd_characters(key, data):
    position = data.draw(st.integers(0, 32))
    inserted = data.draw(st.text(st.sampled_from(TRICKY + UNICODE_SEPARATORS), min_size=1, max_size=3))
    replace = data.draw(st.booleans())
    text = key[:position] + inserted + key[position + replace:]
    same("parse_key", text)
    same("parse_key", text.lower())
    same("normalize", text)


@given(data=symbol_strings, version=st.sampled_from(ALPHABET))
def test_random_symbols(data, version):
    same("parse_key", data)
    body = version + data[1:29]
    checked = same("check_symbols", body)
    same("parse_key", body + checked)  # valid checks: OK or BAD_VERSION


@given(text=st.one_of(st.text(), keyish_text, surrogates, st.text(st.characters(max_codepoint=127))))
@example(text="")
@example(text="\ud800" * 32)
@example(text="-" * 300)
@example(text="1" * 32)
def test_any_text(text):
    for name in ("normalize", "parse_key", "parse_serial", "check_symbols"):
        same(name, text)


@pytest.mark.parametrize("length", [255, 256, 257, 1000, 100_000])
@pytest.mark.parametrize("unit", ["0", "-", "\u00e9", "\uff10", "A-", "\ud800"])
def test_huge_text(length, unit):
    text = (unit * length)[:length]
    for name in ("normalize", "parse_key", "parse_serial"):
        same(name, text)
    key = _key(1, bytes(10))
    padded = key + " " * (length - 32) if length >= 32 else key
    same("parse_key", padded)  # 32 symbols, but too long to be read


def test_every_ascii_character_at_every_position():
    key = _key(123456789, bytes(range(10)))
    for position in range(33):
        for code in range(128):
            text = key[:position] + chr(code) + key[position + 1:]
            same("parse_key", text)
            same("parse_serial", text[:12])
    for code in range(128):
        same("normalize", chr(code) * 3)


@pytest.mark.slow
def test_every_code_point():
    key = _key(987654321, bytes(range(10, 20)))
    every = [chr(c) for c in range(0x110000)]
    assert [compiled_core().normalize(c) for c in every] == [_pure.normalize(c) for c in every]
    texts = [key[:7] + c + key[8:] for c in every]
    assert [compiled_core().parse_key(t) for t in texts] == [_pure.parse_key(t) for t in texts]


class _Str(str):
    pass


@pytest.mark.parametrize("value", [None, 1, b"1000", bytearray(b"x"), ["1", "0"], _Str("ab1"), ("A",) * 29],
                         ids=repr)
def test_text_functions_on_other_types(value):
    for name in ("normalize", "parse_key", "parse_serial", "check_symbols"):
        same(name, value)


# ---------------------------------------------------------------------------
# Serials, encoding, check symbols


@given(serial=any_ints)
@example(serial=0)
@example(serial=(1 << 60) - 1)
@example(serial=1 << 60)
@example(serial=-1)
@example(serial=(1 << 64) + 5)
def test_serials(serial):
    text = same("format_serial", serial)
    same("parse_serial", text)
    same("parse_serial", text.lower())
    same("parse_serial", text[:4] + "-" + text[4:])
    same("parse_serial", text + "0")


@given(text=keyish_text)
def test_parse_serial_text(text):
    same("parse_serial", text)


@given(serial=any_ints, secret=any_ints)
@example(serial=-1, secret=-1)
@example(serial=1 << 60, secret=(1 << 85) - 1)
@example(serial=0, secret=1 << 80)
def test_encode_key(serial, secret):
    key = same("encode_key", serial, secret)
    same("parse_key", key)


@pytest.mark.parametrize("value", [None, 1.0, True, "1", b"\x01", 2**200, -(2**200)], ids=repr)
def test_numbers_of_other_types(value):
    same("format_serial", value)
    same("encode_key", value, 1)
    same("encode_key", 1, value)


@given(data=st.text(alphabet=st.sampled_from(ALPHABET), max_size=40))
def test_check_symbols(data):
    same("check_symbols", data)
    same("check_symbols", data.lower())
    same("check_symbols", data + "\u00e9")


def test_check_symbols_every_length():
    """29 symbols is the use; other lengths still answer as _pure does (up to 32, then IndexError)."""
    for n in range(41):
        data = (ALPHABET[::-1] * 2)[:n]
        same("check_symbols", data)
        same("check_symbols", data + "u")  # KeyError before any IndexError


# ---------------------------------------------------------------------------
# Issuing


@settings(deadline=None)
@given(serial_base=st.one_of(serials, any_ints), count=st.integers(0, 40), salt=st.binary(max_size=300),
       data=st.data())
@example(serial_base=(1 << 60) - 2, count=4, salt=b"", data=None)  # serials wrap past 2**60
@example(serial_base=-3, count=5, salt=bytes(97), data=None)
def test_issue_keys(serial_base, count, salt, data):
    if data is None:
        entropy = bytes(range(count * 10))
    else:
        entropy = data.draw(st.binary(min_size=count * 10, max_size=count * 10))
    keys_, verifiers = same("issue_keys", serial_base, count, salt, entropy)
    assert len(keys_) == count and len(verifiers) == 16 * count
    for i, key in enumerate(keys_):
        expected = hashlib.blake2b(salt + key.encode(), digest_size=16, person=b"kv1/verifier").digest()
        assert verifiers[16 * i:16 * i + 16] == expected
    same("issue_keys", serial_base, count, bytearray(salt), bytearray(entropy))
    same("issue_keys", serial_base, count, salt, entropy + b"\x00")
    same("issue_keys", serial_base, count, salt, entropy[:-1])


@pytest.mark.parametrize("args", [
    (0, -1, b"", b""),
    (0, 1, b"", b""),
    (0, 10**30, b"", bytes(10)),
    (0, 1.0, b"", bytes(10)),
    (0, True, b"", bytes(10)),
    (0.0, 1, b"", bytes(10)),
    (0, 1, "salt", bytes(10)),
    (0, 1, memoryview(b"salt"), bytes(10)),
    (0, 1, b"salt", memoryview(bytes(10))),
    (0, 1, b"salt", "0123456789"),
    (None, 0, None, b""),
], ids=repr)
def test_issue_keys_odd_arguments(args):
    same("issue_keys", *args)


# ---------------------------------------------------------------------------
# The batch check: format_serial_text, judge, check_keys

import lmdb  # noqa: E402

NOW = 1_780_000_000_000  # ms since the epoch
HOUR = 3_600_000
PEPPER = bytes(range(100, 132))
ACTIVE, REDEEMED, VOIDED = 0, 1, 2


def _batch_key(prefix: int, batch: int) -> int:
    return (prefix << 15) | batch


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


class _Store:
    """A tiny LMDB environment with the cards and outcomes databases as the store packs them,
    plus the in-memory catalog check_keys reads (batch rows, key blocks, the ledger overlay)."""

    def __init__(self, path: Path, pepper: bytes = PEPPER) -> None:
        self.env = lmdb.open(str(path), max_dbs=4, map_size=64 << 20)
        self.cards_db = self.env.open_db(b"cards")
        self.outcomes_db = self.env.open_db(b"outcomes")
        self.pepper = pepper
        self.batches: dict = {}
        self.key_blocks: dict = {}
        self.overlay: dict = {}

    def batch(self, key: int, count: int, *, salt: bytes | bytearray | None = None, valid_from=None,
              valid_until=None, block=None, listed: bool = True, first: int = 0) -> list[str]:
        """Issue count keys of batch key (serials key << 25 | first..), write their cards, list the row."""
        salt = hashlib.sha256(b"salt%d" % key).digest()[:16] if salt is None else salt
        entropy = hashlib.shake_256(b"entropy%d/%d" % (key, first)).digest(count * 10)
        keys_, verifiers = _pure.issue_keys((key << 25) + first, count, bytes(salt), entropy)
        with self.env.begin(write=True) as txn:
            for i in range(count):
                tag = _pure.tag(self.pepper, verifiers[16 * i:16 * i + 16])
                txn.put(_u64((key << 25) + first + i), self.card((key << 25) + first + i, ACTIVE, tag), db=self.cards_db)
        if listed:
            self.batches[key] = (salt, valid_from, valid_until, block, f"BATCH-{key}", f"sup{key >> 15}",
                                 f"Supplier {key >> 15}", f"product {key}")
        return keys_

    def card(self, serial: int, state: int, tag: bytes) -> bytes:
        """A sealed card record, as the store writes it."""
        body = bytes([state]) + tag
        return body + _pure.seal(self.pepper, b"c", serial, body)

    def outcome(self, serial: int, body: bytes) -> bytes:
        """A sealed outcome record, as the store writes it."""
        return body + _pure.seal(self.pepper, b"o", serial, body)

    def state(self, serial: int, state: int, at: int | None = None, text: str = "") -> None:
        """Set a card's state (sealed); with at, also write its outcome record."""
        with self.env.begin(write=True) as txn:
            record = txn.get(_u64(serial), db=self.cards_db)
            txn.put(_u64(serial), self.card(serial, state, record[1:17]), db=self.cards_db)
            if at is not None:
                body = bytes([state]) + at.to_bytes(8, "big") + (7).to_bytes(8, "big") + text.encode()
                txn.put(_u64(serial), self.outcome(serial, body), db=self.outcomes_db)

    def raw(self, db, serial: int, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(_u64(serial), value, db=db)

    def check(self, keys, *, now=NOW, buffers: bool = False, pepper=None, batches=None, key_blocks=None,
              overlay=None, wrap=None):
        """check_keys through both twins in one read transaction; _pure's answer (or None if both raised)."""
        with self.env.begin(buffers=buffers) as txn:
            cards = txn.cursor(db=self.cards_db)
            outcomes = txn.cursor(db=self.outcomes_db)
            if wrap is not None:
                cards, outcomes = wrap(cards), wrap(outcomes)
            return same("check_keys", keys, self.pepper if pepper is None else pepper,
                        self.batches if batches is None else batches,
                        self.key_blocks if key_blocks is None else key_blocks,
                        self.overlay if overlay is None else overlay, cards, outcomes, now)

    def check_one(self, keys, *, now=NOW, buffers: bool = False, pepper=None, batches=None, key_blocks=None,
                  overlay=None):
        """check_one through both twins, key by key; an answer must be check_keys' valid one, or None (or both
        raise alike). _pure's answers."""
        args = (self.pepper if pepper is None else pepper, self.batches if batches is None else batches,
                self.key_blocks if key_blocks is None else key_blocks, self.overlay if overlay is None else overlay)
        answers = []
        with self.env.begin(buffers=buffers) as txn:
            for key in keys:
                one = same("check_one", key, *args, txn, self.cards_db, now)
                whole = run(_pure.check_keys, [key], *args, txn.cursor(db=self.cards_db),
                             txn.cursor(db=self.outcomes_db), now)
                if one is not None:  # a valid key with an unfolded ledger change may still get None
                    assert whole[0] == "returned" and one == whole[1][0] and one.status.value == "valid"
                answers.append(one)
        return answers

    def close(self) -> None:
        self.env.close()


def _statuses(results) -> list:
    return [None if r is None else r.status.value for r in results]


@pytest.fixture
def store(tmp_path):
    s = _Store(tmp_path / "env")
    yield s
    s.close()


def _fullwidth(key: str) -> str:
    return "".join(FULLWIDTH[c] for c in key)


@pytest.fixture
def scene(store):
    """A store with a key in every state check_keys can report, and the statuses they must get."""
    live = store.batch(_batch_key(1, 1), 40)
    later = store.batch(_batch_key(1, 2), 3, valid_from=NOW + HOUR)
    ended = store.batch(_batch_key(1, 3), 3, valid_until=NOW - HOUR)
    edges = store.batch(_batch_key(1, 4), 2, valid_from=NOW, valid_until=NOW + 1)
    closed = store.batch(_batch_key(1, 5), 1, valid_from=NOW - HOUR, valid_until=NOW)
    by_supplier = store.batch(_batch_key(2, 1), 3, block=("supplier", "fraud"))
    by_batch = store.batch(_batch_key(2, 2), 3, block=("batch", "recalled"), valid_until=NOW - HOUR)
    unlisted = store.batch(_batch_key(3, 1), 2, listed=False)  # cards, but no batch row
    base = _batch_key(1, 1) << 25
    at = NOW - 5 * HOUR
    store.state(base + 1, REDEEMED, at, "order-1")
    store.state(base + 2, VOIDED, at + 1, "refund: damaged box")
    store.state(base + 3, REDEEMED)  # no outcome record: a damaged record, refused
    store.overlay[base + 4] = (REDEEMED, at + 2, "order-4", 11)
    store.overlay[base + 5] = (VOIDED, at + 3, "chargeback", 12)
    store.state(base + 6, REDEEMED, at, "order-6")
    store.overlay[base + 6] = (ACTIVE, at + 4, "", 13)  # unfolded un-redeem: the overlay wins
    store.state(base + 7, VOIDED, at, "old reason")
    store.overlay[base + 7] = (REDEEMED, at + 5, "order-7 \u00e9\u4e2d", 14)
    store.key_blocks[base + 8] = ("key", "stolen")
    store.key_blocks[base + 3] = ("key", "redeemed wins")
    store.state(base + 9, 7)  # a damaged state byte vouches for nothing: refused as unknown
    store.state(base + 10, REDEEMED, at, "")
    store.key_blocks[(_batch_key(2, 1) << 25) + 0] = ("key", "supplier wins")
    store.state(base + 12, VOIDED, at, "\u00e9" * 40)  # outcome text longer than a card record
    keys_ = [
        (live[0], "valid"), (live[1], "redeemed"), (live[2], "void"), (live[3], "damaged"),  # redeemed without an outcome record
        (live[4], "redeemed"), (live[5], "void"), (live[6], "valid"), (live[7], "redeemed"),
        (live[8], "blacklisted"), (live[9], "damaged"), (live[10], "redeemed"), (live[12], "void"),
        (later[0], "not_yet_valid"), (ended[1], "expired"), (edges[0], "valid"), (edges[1], "valid"),
        (closed[0], "expired"),
        (by_supplier[0], "blacklisted"), (by_supplier[1], "blacklisted"), (by_batch[2], "blacklisted"),
        (unlisted[0], "unknown"),
        (_pure.encode_key(base + 11, 12345), "unknown"),  # wrong secret
        (_pure.encode_key(base + 1000, 1), "unknown"),  # no card
        (_pure.encode_key(_batch_key(9, 9) << 25, 5), "unknown"),  # unknown batch
        ("", None), ("hello", None), (live[13][:-1], None), (live[14][:5] + "U" + live[14][6:], None),
        (live[15][:3] + live[15][4] + live[15][3] + live[15][5:], None),
        ("2" + live[16][1:], None), ("x" * 300, None), (live[17] + " " * 300, None),
        ("0000-0000", None), ("\ud800" * 32, None),
        (live[18].lower(), "valid"), (_grouped(live[19]), "valid"), (_fullwidth(live[20]), "valid"),
        ("  " + _grouped(live[21].lower(), "\u2013") + "\n", "valid"),
        (live[22].replace("1", "l").replace("0", "o"), "valid"),
        (live[0], "valid"), (live[1], "redeemed"), (live[4], "redeemed"),  # duplicates
        (_pure.encode_key(base + 11, 12345), "unknown"), (live[0], "valid"),
    ]
    return store, [k for k, _ in keys_], [s for _, s in keys_]


def test_check_keys_every_status(scene):
    store, keys_, expected = scene
    results = store.check(keys_)
    assert _statuses(results) == expected
    assert store.check(tuple(keys_)) == results
    assert {s for s in expected} == {None, "valid", "unknown", "redeemed", "void", "blacklisted", "expired",
                                     "not_yet_valid", "damaged"}
    for shuffled in (keys_[::-1], keys_[1::2] + keys_[::2]):  # input order is kept, whatever it is
        assert _statuses(store.check(shuffled)) == [expected[keys_.index(k)] for k in shuffled]


def test_check_keys_results_in_detail(scene):
    store, keys_, _ = scene
    base = _batch_key(1, 1) << 25
    r = store.check(keys_)
    Result = type(r[0])
    row = store.batches[_batch_key(1, 1)]
    assert r[0] == Result(r[0].status, _pure.format_serial_text(base), *row[4:])
    assert r[0].message is None and r[0].ok
    assert r[1].order_id == "order-1" and r[1].message.startswith("already redeemed by order order-1 at ")
    assert r[2].reason == "refund: damaged box" and r[2].voided_at.endswith("Z")
    assert r[3].status.value == "damaged" and r[3].redeemed_at is None and "damaged" in r[3].message  # no outcome
    assert r[7].order_id == "order-7 \u00e9\u4e2d"
    assert (r[8].level, r[8].reason) == ("key", "stolen")
    assert (r[17].level, r[17].reason) == ("supplier", "fraud")
    assert r[12].message.startswith("valid from ") and r[13].message.startswith("expired at ")
    assert r[20] == Result(r[20].status, _pure.format_serial_text(_batch_key(3, 1) << 25),
                           message="no such key in this store")
    assert r[21].batch == row[4] and r[21].supplier is None and r[21].message == "no such key in this store"


@pytest.mark.parametrize("buffers", [False, True])
def test_check_keys_each_key_alone(scene, buffers):
    store, keys_, expected = scene
    for key, status in zip(keys_, expected):
        assert _statuses(store.check([key], buffers=buffers)) == [status]
    store.check(keys_, buffers=buffers)


def test_check_keys_empty_and_all_malformed(store):
    store.batch(_batch_key(1, 1), 3)
    assert store.check([]) == []
    assert store.check(()) == []
    assert store.check(["", "nope", "2" * 32]) == [None, None, None]
    assert _statuses(store.check(["1" * 32])) == ["unknown"]  # (every symbol alike: the checks hold)


@pytest.mark.parametrize("now", [NOW - 2 * HOUR, NOW - 1, NOW, NOW + 1, NOW + 2 * HOUR, 0, -1, 2**63 - 1, 2**63,
                                 -(2**63) - 1, 10**30, 1.5, NOW + 0.5, True, None], ids=repr)
def test_check_keys_at_any_time(scene, now):
    store, keys_, _ = scene
    store.check(keys_, now=now)


def test_check_keys_non_str_key(scene):
    store, keys_, _ = scene
    for bad in (None, b"key", 1, ["k"], bytearray(b"x")):
        for at in (0, 5, len(keys_)):
            with pytest.raises(TypeError):
                compiled_core().check_keys(keys_[:at] + [bad] + keys_[at:], store.pepper, store.batches, {}, {}, None, None, NOW)
            store.check(keys_[:at] + [bad] + keys_[at:])
    store.check(["", bad])


class _Text(str):
    pass


class _Shouting(str):
    def upper(self):
        return "Z" * 32


def test_check_keys_str_subclasses(scene):
    store, keys_, expected = scene
    results = store.check([_Text(k) for k in keys_])
    assert _statuses(results) == expected
    store.check([_Shouting(k.lower()) for k in keys_[:5]])


@pytest.mark.parametrize("salt", [b"", bytes(1), bytes(80), bytes(96), bytes(97), bytes(200), bytearray(b"s" * 16)],
                         ids=lambda s: f"{type(s).__name__}{len(s)}")
@pytest.mark.parametrize("pepper", [b"", b"p", bytes(64), bytearray(b"q" * 32)],
                         ids=lambda p: f"{type(p).__name__}{len(p)}")
def test_check_keys_salts_and_peppers(tmp_path, salt, pepper):
    s = _Store(tmp_path / "env", pepper=pepper)
    try:
        keys_ = s.batch(_batch_key(4, 4), 5, salt=salt)
        keys_ += s.batch(_batch_key(4, 5), 5)
        assert _statuses(s.check(keys_ + [_pure.encode_key(1, 1)])) == ["valid"] * 10 + ["unknown"]
    finally:
        s.close()


def test_check_keys_odd_arguments(scene):
    """Types the compiled core does not read in C answer as the specification does."""
    store, keys_, _ = scene
    rows_as_lists = {k: list(v) for k, v in store.batches.items()}
    store.check(keys_, batches=rows_as_lists)
    store.check(keys_, batches={k: v[:5] for k, v in store.batches.items()})
    store.check(keys_, batches={k: v[:3] for k, v in store.batches.items()})
    store.check(keys_, batches={k: ("salt",) + v[1:] for k, v in store.batches.items()})
    store.check(keys_, batches={k: (memoryview(v[0]),) + v[1:] for k, v in store.batches.items()})
    store.check(keys_, batches={k: v + ("extra",) for k, v in store.batches.items()})
    store.check(keys_, batches={k: ("",) * 8 for k in store.batches})
    store.check(keys_, batches={k: None for k in store.batches})
    store.check(keys_, batches={})
    store.check(keys_, batches={k: v[:1] + (NOW + 1.5, None) + v[3:] for k, v in store.batches.items()})
    store.check(keys_, batches={k: v[:1] + (None, 10**40) + v[3:] for k, v in store.batches.items()})
    store.check(keys_, batches={k: v[:1] + (10**40, None) + v[3:] for k, v in store.batches.items()})
    store.check(keys_, batches={k: v[:3] + ((),) + v[4:] for k, v in store.batches.items()})
    store.check(keys_, batches={k: v[:3] + (0,) + v[4:] for k, v in store.batches.items()})
    store.check(keys_, batches={k: v[:3] + ("xy",) + v[4:] for k, v in store.batches.items()})
    store.check(keys_, key_blocks={k: None for k in store.key_blocks})
    store.check(keys_, key_blocks={k: ("key",) for k in store.key_blocks})
    store.check(keys_, overlay={k: None for k in store.overlay})
    store.check(keys_, overlay={k: (REDEEMED, "not ms", "x", 1) for k in store.overlay})
    store.check(keys_, overlay={k: (9, NOW, "x", 1) for k in store.overlay})
    store.check(keys_, pepper="pepper")
    store.check(keys_, pepper=bytes(65))  # hashlib's ValueError (keys to hash)
    store.check(["", "nope"], pepper=bytes(65))  # no key to hash: no error
    store.check(keys_, pepper=memoryview(PEPPER))
    store.check(iter(keys_))
    store.check(keys_, batches=_Rows(store.batches))
    store.check(keys_, overlay=_Rows(store.overlay))
    store.check(keys_, key_blocks=_Rows(store.key_blocks))


class _Rows(dict):
    def get(self, key, default=None):
        return super().get(key, default)


class _Cursor:
    """A stand-in cursor whose getmulti answers in odd shapes."""

    def __init__(self, cursor, shape: str) -> None:
        self.cursor = cursor
        self.shape = shape

    def getmulti(self, keys):
        pairs = self.cursor.getmulti(keys)
        if self.shape == "reversed":
            return pairs[::-1]
        if self.shape == "iterator":
            return iter(pairs)
        if self.shape == "lists":
            return [list(p) for p in pairs]
        if self.shape == "bytearray":
            return [(k, bytearray(v)) for k, v in pairs]
        if self.shape == "memoryview":
            return [(memoryview(k), memoryview(v)) for k, v in pairs]
        if self.shape == "extra":  # keys nobody asked for, and a short record
            return [(b"\x00" * 8, b"\x00" * 17), (b"xyz", b"")] + pairs + [(b"\xff" * 8, b"")]
        if self.shape == "duplicates":  # a key answered twice: the last answer counts
            return [p for p in pairs for _ in (0, 1)] + pairs[:1]
        if self.shape == "none":
            return [(k, None) for k, _ in pairs]
        if self.shape == "str":
            return [(k, v.decode("latin-1")) for k, v in pairs]
        if self.shape == "triples":
            return [(k, v, v) for k, v in pairs]
        if self.shape == "empty":
            return []
        raise AssertionError(self.shape)


@pytest.mark.parametrize("shape", ["reversed", "iterator", "lists", "bytearray", "memoryview", "extra",
                                   "duplicates", "none", "str", "triples", "empty"])
def test_check_keys_odd_cursor_answers(scene, shape):
    store, keys_, _ = scene
    store.check(keys_, wrap=lambda cursor: _Cursor(cursor, shape))


def test_check_keys_odd_records(store):
    keys_ = store.batch(_batch_key(5, 5), 8)
    base = _batch_key(5, 5) << 25
    with store.env.begin() as txn:
        tag = txn.get(_u64(base), db=store.cards_db)[1:17]
    store.raw(store.cards_db, base + 0, b"")  # empty
    store.raw(store.cards_db, base + 1, b"\x00" + tag[:-1])  # one byte short
    store.raw(store.cards_db, base + 2, b"\x00" + tag + b"trailing")  # longer: damaged
    store.raw(store.cards_db, base + 3, b"\x01" + tag)  # redeemed, no outcome record
    store.raw(store.outcomes_db, base + 3, b"\x01\x00")  # ... an outcome record too short
    store.raw(store.cards_db, base + 4, b"\x02" + tag)
    store.raw(store.outcomes_db, base + 4, b"\x02" + bytes(8) + b"\xff\xfe")  # not UTF-8: UnicodeDecodeError
    store.raw(store.cards_db, base + 5, b"\xff" + tag)
    store.raw(store.outcomes_db, base + 5, b"\x01" + (2**63).to_bytes(8, "big") + b"x")
    store.raw(store.cards_db, base + 6, b"\x01" + tag)
    store.raw(store.outcomes_db, base + 6, b"\x01" + (2**62).to_bytes(8, "big") + b"x")  # a year iso refuses
    for i in range(8):
        store.check([keys_[i]])
    store.check(keys_[:3] + keys_[5:6] + keys_[7:])
    store.check(keys_)


# check_one: the single-key hot path (valid now, or None)


@pytest.mark.parametrize("buffers", [False, True])
def test_check_one_every_status(scene, buffers):
    store, keys_, expected = scene
    answers = store.check_one(keys_, buffers=buffers)
    assert [None if a is None else a.status.value for a in answers] == \
        ["valid" if e == "valid" and k != keys_[6] else None for k, e in zip(keys_, expected)]  # 6: in the overlay


@pytest.mark.parametrize("now", [NOW - 2 * HOUR, NOW, NOW + 1, 2**63, 1.5, None], ids=repr)
def test_check_one_at_any_time(scene, now):
    store, keys_, _ = scene
    store.check_one(keys_, now=now)


def test_check_one_odd_arguments(scene):
    store, keys_, _ = scene
    store.check_one(keys_, batches={k: list(v) for k, v in store.batches.items()})
    store.check_one(keys_, batches={k: v[:5] for k, v in store.batches.items()})
    store.check_one(keys_, batches={k: (memoryview(v[0]),) + v[1:] for k, v in store.batches.items()})
    store.check_one(keys_, batches={k: (bytearray(v[0]),) + v[1:] for k, v in store.batches.items()})
    store.check_one(keys_, batches={k: v[:1] + (NOW + 1.5, None) + v[3:] for k, v in store.batches.items()})
    store.check_one(keys_, batches={k: v[:3] + ((),) + v[4:] for k, v in store.batches.items()})
    store.check_one(keys_, key_blocks={k: None for k in store.key_blocks})
    store.check_one(keys_, overlay={k: None for k in store.overlay})
    store.check_one(keys_, pepper=bytearray(PEPPER))
    store.check_one(keys_, pepper=bytes(65))
    store.check_one(keys_, batches=_Rows(store.batches))
    for bad in (None, b"key", 1, _Text(keys_[0])):
        store.check_one([bad])
    # a second pepper between two calls: each is hashed with its own
    store.check_one(keys_[:3], pepper=bytes(32))
    store.check_one(keys_[:3])


@pytest.mark.parametrize("salt", [b"", bytes(96), bytes(97), bytes(200)], ids=len)
def test_check_one_salts(tmp_path, salt):
    s = _Store(tmp_path / "env")
    try:
        keys_ = s.batch(_batch_key(4, 4), 3, salt=salt)
        assert [a.status.value for a in s.check_one(keys_)] == ["valid"] * 3
    finally:
        s.close()


def test_check_one_odd_records(store):
    keys_ = store.batch(_batch_key(5, 5), 4)
    base = _batch_key(5, 5) << 25
    with store.env.begin() as txn:
        tags = [txn.get(_u64(base + i), db=store.cards_db)[1:17] for i in range(4)]
    store.raw(store.cards_db, base + 0, b"")
    store.raw(store.cards_db, base + 1, b"\x00" + tags[1][:-1])
    store.raw(store.cards_db, base + 2, b"\x00" + tags[2] + b"trailing")  # longer: its seal cannot vouch for it
    store.raw(store.cards_db, base + 3, b"\xff" + tags[3])
    assert [a is not None for a in store.check_one(keys_)] == [False, False, False, False]
    assert _statuses(store.check(keys_)) == ["unknown", "unknown", "damaged", "damaged"]


# accept_redeems: check_keys' answers made redeem answers, in place


def _accepted_alike(results, orders, now=NOW, when="2026-05-28T20:26:40.000Z"):
    """accept_redeems through both twins, each on its own copy of results; the same answers and lists."""
    mine, theirs = list(results), list(results)
    expected = run(_pure.accept_redeems, mine, orders, now, when)
    actual = run(compiled_core().accept_redeems, theirs, orders, now, when)
    assert typed(actual) == typed(expected)
    assert typed(theirs) == typed(mine)
    return mine, expected


def test_accept_redeems_every_case(scene):
    store, keys_, expected = scene
    results = store.check(keys_)
    answered = [r for r in results if r is not None]
    orders = [f"order-{i % 5}" for i in range(len(answered))]
    orders[1] = "order-1"  # answered[1]'s key was redeemed by order-1: its retry is accepted again
    out, (_, (changes, counts)) = _accepted_alike(answered, orders)
    statuses = [r.status.value for r in out]
    assert statuses.count("accepted") > 0 and statuses[1] == "accepted" and out[1].message is None
    assert len(changes) == len({r.serial for r, o in zip(answered, orders) if r.status.value == "valid"})
    assert sum(counts.values()) == len(changes)
    # the same key twice: the same order gets the same answer, another order is refused
    twice = [answered[0], answered[0], answered[0]]
    out, (_, (changes, _)) = _accepted_alike(twice, ["A", "A", "B"])
    assert [r.status.value for r in out] == ["accepted", "accepted", "redeemed"] and len(changes) == 1
    assert out[2].order_id == "A" and out[2].message.startswith("already redeemed by order A at ")
    _accepted_alike([], [])
    _accepted_alike(answered, orders[:3])  # fewer orders: only those pairs
    _accepted_alike(answered, [1] * len(answered))  # odd orders: the specification answers
    _accepted_alike(tuple(answered), orders)
    _accepted_alike(answered[:2] + [None], ["A", "B", "C"])
    _accepted_alike(answered, orders, now="not a time", when=None)


# fold_records: the card and outcome records a ledger fold writes


def _folded_alike(pending, cards, pepper=PEPPER):
    return same("fold_records", pending, cards, pepper)


def test_fold_records_every_shape():
    base = _batch_key(1, 1) << 25
    tag = bytes(range(16))
    pending = {base: (REDEEMED, NOW, "order-1", 7), base + 1: (VOIDED, NOW + 1, "refund \u00e9\u4e2d", 2**63),
               base + 2: (REDEEMED, 0, "", 0), base + 3: (REDEEMED, 2**64 - 1, "x" * 300, 2**64 - 1)}
    def card(serial, state):
        return bytes([state]) + tag + _pure.seal(PEPPER, b"c", serial, bytes([state]) + tag)

    cards = [(_u64(base + i), card(base + i, ACTIVE)) for i in range(4)]
    new_cards, outcomes = _folded_alike(pending, cards)
    assert new_cards[1] == (_u64(base + 1), card(base + 1, VOIDED))
    body = bytes([VOIDED]) + (NOW + 1).to_bytes(8, "big") + (2**63).to_bytes(8, "big") + "refund \u00e9\u4e2d".encode()
    assert outcomes[1] == (_u64(base + 1), body + _pure.seal(PEPPER, b"o", base + 1, body))
    assert _pure.open_outcome(PEPPER, base + 1, outcomes[1][1]) == body
    assert _pure.open_outcome(PEPPER, base + 2, outcomes[1][1]) is None  # bound to its serial
    # A damaged card is written back as it was, never sealed again: it stays refused.
    flipped = (_u64(base), b"\x01" + cards[0][1][1:])
    assert _folded_alike(pending, [flipped])[0] == [flipped]
    moved = (_u64(base + 1), cards[0][1])  # a sound record under another serial
    assert _folded_alike(pending, [moved])[0] == [moved]
    _folded_alike(pending, cards, bytearray(PEPPER))
    _folded_alike(pending, cards, b"p" * 65)
    _folded_alike(pending, cards, b"")
    _folded_alike({}, [])
    _folded_alike(pending, cards[::-1])
    _folded_alike(pending, [(_u64(base), b""), (_u64(base + 1), b"\x00"), (_u64(base + 2), b"\x00" + tag + b"++")])
    _folded_alike(pending, cards + [(_u64(base + 9), bytes(17))])  # no change for it: KeyError
    for odd in ((256, NOW, "o", 1), (-1, NOW, "o", 1), (REDEEMED, -1, "o", 1), (REDEEMED, 2**64, "o", 1),
                (REDEEMED, NOW, "o", -1), (REDEEMED, NOW, b"o", 1), (REDEEMED, NOW, "\ud800", 1),
                (REDEEMED, NOW, "o"), (True, NOW, "o", 1), (REDEEMED, 1.5, "o", 1), None):
        _folded_alike({**pending, base + 2: odd}, cards)
    _folded_alike(pending, [tuple(c) for c in cards] + [[_u64(base), bytes(17)]])
    _folded_alike(pending, [(memoryview(_u64(base)), bytes(17))])
    _folded_alike(pending, [(_u64(base), bytearray(17))])
    _folded_alike(pending, [(b"\x00" * 7, bytes(17))])
    _folded_alike(pending, tuple(cards))
    _folded_alike(_Rows(pending), cards)


def test_check_keys_many_batches_and_duplicates(store):
    """Enough keys for the radix sort, serials differing in every field, shuffled, repeated."""
    import random

    rnd = random.Random(7)
    keys_ = []
    for prefix in (1, 77, 4097, (1 << 20) - 1):
        for batch in (0, 1, 600, (1 << 15) - 1):
            keys_ += store.batch(_batch_key(prefix, batch), 40, first=rnd.randrange(1 << 24))
    wrong = [_pure.encode_key(rnd.randrange(1 << 60), rnd.randrange(1 << 80)) for _ in range(300)]
    del store.batches[_batch_key(77, 600)]
    mixed = keys_ + wrong + rnd.sample(keys_, 500) + ["", "junk"] * 20
    rnd.shuffle(mixed)
    for serial in rnd.sample([int(_pure.parse_key(k)[1]) for k in keys_], 60):
        choice = rnd.randrange(3)
        if choice == 0:
            store.overlay[serial] = (rnd.choice([0, 1, 2]), NOW - rnd.randrange(10**9), "o%d" % serial, serial)
        elif choice == 1:
            store.key_blocks[serial] = ("key", "k%d" % serial)
        else:
            store.state(serial, rnd.choice([1, 2]), NOW - rnd.randrange(10**9), "s%d" % serial)
    results = store.check(mixed)
    assert len(results) == len(mixed)
    counts = {s: _statuses(results).count(s) for s in set(_statuses(results))}
    assert counts["valid"] > 800 and counts["unknown"] >= 300 + 40 and counts[None] == 40
    for i, key in enumerate(mixed):  # each answer is the one the key gets alone
        if i % 97 == 0:
            assert store.check([key]) == [results[i]]


@pytest.fixture(scope="module")
def shared_scene(tmp_path_factory):
    s = _Store(tmp_path_factory.mktemp("twins") / "env")
    live = s.batch(_batch_key(1, 1), 60)
    other = s.batch(_batch_key(1, 2), 20, valid_from=NOW - HOUR, valid_until=NOW + HOUR)
    blocked = s.batch(_batch_key(6, 3), 10, block=("batch", "recall"))
    base = _batch_key(1, 1) << 25
    for i in range(0, 60, 7):
        s.state(base + i, REDEEMED if i % 2 else VOIDED, NOW - i * HOUR, f"text {i}")
    yield s, live + other + blocked, base
    s.close()


@settings(deadline=None, max_examples=60)
@given(data=st.data(), now=st.one_of(st.just(NOW), st.integers(NOW - 2 * HOUR, NOW + 2 * HOUR)))
def test_check_keys_random_mixes(shared_scene, data, now):
    s, pool, base = shared_scene
    picked = data.draw(st.lists(st.one_of(
        st.sampled_from(pool),
        st.sampled_from(pool).map(str.lower),
        st.sampled_from(pool).map(_grouped),
        keys,  # random well-formed keys: unknown
        keyish_text,
    ), max_size=40))
    overlay = data.draw(st.dictionaries(st.integers(base, base + 59), st.tuples(
        st.sampled_from([0, 1, 2]), st.integers(0, NOW), st.text(max_size=8), st.integers(0, 99)), max_size=6))
    key_blocks = data.draw(st.dictionaries(st.integers(base, base + 59), st.tuples(
        st.just("key"), st.text(max_size=8)), max_size=6))
    results = s.check(picked, now=now, overlay=overlay, key_blocks=key_blocks)
    assert len(results) == len(picked)


@given(serial=any_ints)
@example(serial=0)
@example(serial=(1 << 60) - 1)
@example(serial=-1)
def test_format_serial_text(serial):
    text = same("format_serial_text", serial)
    assert len(text) == 14 and text[4] == text[8] == "-"


@pytest.mark.parametrize("value", [None, 1.0, True, "1", b"\x01", 2**200, -(2**200)], ids=repr)
def test_format_serial_text_other_types(value):
    same("format_serial_text", value)


# judge: the rule book. The compiled core has no judge of its own: it is _pure.judge (pinned below),
# which check_keys and check_one call for every status but the two they decide in C (valid,
# unknown). So judge is held to the rules as the specification states them, and the compiled
# check_keys and check_one are held to judge's answers.

SERIAL = (_batch_key(1, 1) << 25) + 3
AT = NOW - 5 * HOUR
_ROW = _pure.BatchRow(bytes(16), None, None, None, "BATCH", "sup", "Supplier", "product")
_DAMAGED = ("this key's record is damaged: refused; restore the store from a backup "
            "(`keyvault check` finds every damaged record)")


def _outcome(state: int, at: int, text: str | bytes) -> bytes:
    """An outcome record: state, at ms, event index (7), then the text."""
    return bytes([state]) + at.to_bytes(8, "big") + (7).to_bytes(8, "big") + \
        (text.encode() if isinstance(text, str) else text)


def _rule_book() -> list:
    """(case, judge's arguments besides serial and now, the Result the rules give), from judge's documented
    precedence: damaged, redeemed, void, blacklisted (row before key), not yet valid, expired, valid."""
    from keyvault.clock import iso
    from keyvault.results import Result, Status

    def result(status: str, **fields: object) -> object:
        return Result(Status(status), _pure.format_serial_text(SERIAL), "BATCH", "sup", "Supplier", "product",
                      **fields)

    damaged = Result(Status.DAMAGED, _pure.format_serial_text(SERIAL), "BATCH", message=_DAMAGED)
    w = _ROW._replace
    fraud = _pure.KeyBlock("supplier", "fraud")
    blacklisted = result("blacklisted", level="supplier", reason="fraud", message="blacklisted (supplier): fraud")
    redeemed = result("redeemed", order_id="order-1", redeemed_at=iso(AT),
                      message=f"already redeemed by order order-1 at {iso(AT)}")
    not_yet = result("not_yet_valid", message=f"valid from {iso(NOW + 1)}")
    return [
        ("active", dict(state=ACTIVE), result("valid")),
        ("window from now, until now + 1", dict(state=ACTIVE, row=w(valid_from=NOW, valid_until=NOW + 1)),
         result("valid")),
        ("not yet valid", dict(state=ACTIVE, row=w(valid_from=NOW + 1)), not_yet),
        ("expired at now", dict(state=ACTIVE, row=w(valid_until=NOW)),
         result("expired", message=f"expired at {iso(NOW)}")),
        ("not yet valid before expired", dict(state=ACTIVE, row=w(valid_from=NOW + 1, valid_until=NOW - 1)), not_yet),
        ("supplier blacklisted", dict(state=ACTIVE, row=w(block=fraud)), blacklisted),
        ("batch blacklisted, a plain pair", dict(state=ACTIVE, row=w(block=("batch", "recall"))),
         result("blacklisted", level="batch", reason="recall", message="blacklisted (batch): recall")),
        ("key blacklisted", dict(state=ACTIVE, key_blocks={SERIAL: ("key", "stolen")}),
         result("blacklisted", level="key", reason="stolen", message="blacklisted (key): stolen")),
        ("another key blacklisted", dict(state=ACTIVE, key_blocks={SERIAL + 1: ("key", "stolen")}), result("valid")),
        ("the row's block before the key's", dict(state=ACTIVE, row=w(block=fraud),
                                                  key_blocks={SERIAL: ("key", "stolen")}), blacklisted),
        ("blacklisted before the window", dict(state=ACTIVE, row=w(block=fraud, valid_until=NOW - 1)), blacklisted),
        ("redeemed", dict(state=REDEEMED, outcome=_outcome(REDEEMED, AT, "order-1")), redeemed),
        ("redeemed before blacklisted and expired",
         dict(state=REDEEMED, outcome=_outcome(REDEEMED, AT, "order-1"), row=w(block=fraud, valid_until=NOW - 1)),
         redeemed),
        ("voided", dict(state=VOIDED, outcome=_outcome(VOIDED, AT, "refund \u00e9")),
         result("void", voided_at=iso(AT), reason="refund \u00e9", message=f"voided at {iso(AT)}: refund \u00e9")),
        ("redeemed, no outcome record", dict(state=REDEEMED), damaged),
        ("an outcome record of another state", dict(state=REDEEMED, outcome=_outcome(VOIDED, AT, "x")), damaged),
        ("an outcome record too short", dict(state=VOIDED, outcome=_outcome(VOIDED, AT, "")[:16]), damaged),
        ("outcome text not UTF-8", dict(state=VOIDED, outcome=_outcome(VOIDED, AT, b"\xff")), damaged),
        ("a damaged state byte", dict(state=7, outcome=_outcome(7, AT, "x")), damaged),
        ("change: redeemed, over an active card", dict(state=ACTIVE, change=_pure.Change(REDEEMED, AT, "order-1", 11)),
         redeemed),
        ("change: active again, over a redeemed card", dict(state=REDEEMED, change=(ACTIVE, AT, "", 12)),
         result("valid")),
        ("change: voided, before the outcome record",
         dict(state=REDEEMED, outcome=_outcome(REDEEMED, AT, "order-1"), change=(VOIDED, AT + 1, "chargeback", 13)),
         result("void", voided_at=iso(AT + 1), reason="chargeback", message=f"voided at {iso(AT + 1)}: chargeback")),
        ("change: a damaged state", dict(state=ACTIVE, change=(9, AT, "", 14)), damaged),
    ]


def test_core_judge_is_the_specification():
    """One definition of the rules: the compiled module's judge is _pure's own function (as are event_leaf
    and node_key), so comparing the two would compare a function with itself."""
    core = compiled_core()
    assert core.judge is _pure.judge
    assert core.event_leaf is _pure.event_leaf and core.node_key is _pure.node_key


@pytest.mark.parametrize("case, args, expected", _rule_book(), ids=[case for case, _, _ in _rule_book()])
def test_judge_rule_book(case, args, expected):
    args = {"row": _ROW, "key_blocks": {}, "change": None, "outcome": None, **args}
    assert _pure.judge(SERIAL, now=NOW, **args) == expected
    # Plain tuples (as keyvault.engine.catalog used to build) answer as the named rows do.
    plain = {**args, "row": tuple(args["row"]), "change": None if args["change"] is None else tuple(args["change"])}
    assert _pure.judge(SERIAL, now=NOW, **plain) == expected
    assert _pure.judge(serial=SERIAL, now=NOW, **plain) == expected


def test_judge_odd_rows_and_changes():
    """Rows and changes are read by position: lists, and longer tuples (the extra fields ignored), too."""
    expected = _pure.judge(SERIAL, ACTIVE, _ROW, {}, None, None, NOW)
    assert _pure.judge(SERIAL, ACTIVE, list(_ROW), {}, None, None, NOW) == expected
    assert _pure.judge(SERIAL, ACTIVE, tuple(_ROW) + ("extra",), {}, None, None, NOW) == expected
    assert _pure.judge(SERIAL, ACTIVE, _ROW, {}, (ACTIVE, AT, "", 1, "extra"), None, NOW) == expected
    for row in (_ROW[:4], None):
        with pytest.raises(TypeError):
            _pure.judge(SERIAL, ACTIVE, row, {}, None, None, NOW)
    with pytest.raises(TypeError):
        _pure.judge(SERIAL, ACTIVE, _ROW, {}, (REDEEMED, AT), None, NOW)


@pytest.fixture(scope="module")
def judged_scene(tmp_path_factory):
    """Six keys of one batch, their cards active, redeemed, voided, redeemed without an outcome record, of a
    damaged state byte, voided with an outcome text that is not UTF-8; with each card's state and outcome."""
    s = _Store(tmp_path_factory.mktemp("judged") / "env")
    key = _batch_key(2, 7)
    keys_ = s.batch(key, 6)
    base = key << 25
    s.state(base + 1, REDEEMED, AT, "order-1")
    s.state(base + 2, VOIDED, AT, "refund \u00e9")
    s.state(base + 3, REDEEMED)
    s.state(base + 4, 7)
    s.state(base + 5, VOIDED)
    s.raw(s.outcomes_db, base + 5, _outcome(VOIDED, AT, b"\xff"))
    with s.env.begin() as txn:
        cards = [(txn.get(_u64(base + i), db=s.cards_db)[0],  # and the outcome record as judge reads it: opened
                  _pure.open_outcome(s.pepper, base + i, txn.get(_u64(base + i), db=s.outcomes_db))) for i in range(6)]
    yield s, keys_, key, cards
    s.close()


_CHANGES = st.tuples(st.sampled_from([ACTIVE, REDEEMED, VOIDED, 9]), st.integers(0, NOW), st.text(max_size=6),
                     st.integers(0, 99))


@settings(deadline=None, max_examples=200)
@given(data=st.data())
def test_check_keys_and_check_one_answer_as_judge(judged_scene, impl, data):
    """Each implementation's check_keys (compiled: valid decided in C) gives judge's answer for a located key,
    whatever its card, row, blacklists, change and the time; check_one gives the same when it is valid, from
    an active card with no change, else None."""
    s, keys_, batch_key, cards = judged_scene
    i = data.draw(st.integers(0, 5), label="card")
    serial = (batch_key << 25) + i
    row = (s.batches[batch_key][0], data.draw(st.one_of(st.none(), st.integers(NOW - 2, NOW + 2))),
           data.draw(st.one_of(st.none(), st.integers(NOW - 2, NOW + 2))),
           data.draw(st.sampled_from([None, _pure.KeyBlock("supplier", "fraud"), ("batch", "recall")])),
           *s.batches[batch_key][4:])
    if data.draw(st.booleans(), label="named row"):
        row = _pure.BatchRow(*row)
    key_blocks = data.draw(st.sampled_from([{}, {serial: ("key", "stolen")}, {serial + 1: ("key", "other")}]))
    change = data.draw(st.one_of(st.none(), _CHANGES, _CHANGES.map(lambda c: _pure.Change(*c))), label="change")
    overlay = {} if change is None else {serial: change}
    now = data.draw(st.integers(NOW - 3, NOW + 3), label="now")
    key = data.draw(st.sampled_from([keys_[i], keys_[i].lower(), _grouped(keys_[i])]), label="key")
    state, outcome = cards[i]
    expected = _pure.judge(serial, state, row, key_blocks, change, outcome, now)
    batches = {batch_key: row}
    with s.env.begin() as txn:
        answers = impl.check_keys([key], s.pepper, batches, key_blocks, overlay, txn.cursor(db=s.cards_db),
                                  txn.cursor(db=s.outcomes_db), now)
        one = impl.check_one(key, s.pepper, batches, key_blocks, overlay, txn, s.cards_db, now)
    assert answers == [expected]
    hot = state == ACTIVE and change is None and expected.status.value == "valid"
    assert one == (expected if hot else None)


def test_named_rows_are_read_in_c(scene, core):
    """BatchRow rows (check_keys, check_one) and Change items (fold_records) take the compiled path, as plain
    tuples do: none of them is handed to _pure."""
    import gc
    import time

    store, keys_, expected = scene
    named = {k: _pure.BatchRow(*v) for k, v in store.batches.items()}
    assert store.check(keys_, batches=named) == store.check(keys_)
    store.check_one(keys_, batches=named)
    try:
        core._profile_check_keys(time.perf_counter_ns)
        with store.env.begin() as txn:
            core.check_keys(keys_[:7], store.pepper, named, store.key_blocks, store.overlay,
                            txn.cursor(db=store.cards_db), txn.cursor(db=store.outcomes_db), NOW)
        assert core._check_keys_profile()["keys"] == 7  # recorded only by the compiled path
    finally:
        core._profile_check_keys(None)
    with store.env.begin() as txn:
        one = core.check_one(keys_[0], store.pepper, named, {}, {}, txn, store.cards_db, NOW)
    assert one.status.value == "valid" and not gc.is_tracked(one)  # made in C (_pure's Results are tracked)
    base = _batch_key(1, 1) << 25
    pending = {base: _pure.Change(REDEEMED, NOW, "order-1", 7), base + 1: _pure.Change(VOIDED, NOW, "why", 8)}
    cards = [(_u64(base + i), bytes(33)) for i in range(2)]
    new_cards, outcomes = same("fold_records", pending, cards, PEPPER)
    assert same("fold_records", {k: tuple(v) for k, v in pending.items()}, cards, PEPPER) == (new_cards, outcomes)
    folded, _ = core.fold_records(pending, cards, PEPPER)
    assert not gc.is_tracked(folded[0])  # a pair made in C


# ---------------------------------------------------------------------------
# check_keys' SIMD lanes (each implementation this machine runs) and hooks


def _lane_choices() -> list:
    """The lanes implementations this build and CPU run: 0 (none) and what _select_lanes accepts."""
    choices = [w for w in (0, 1, 2, 3) if compiled_core()._select_lanes(w) >= 0]
    compiled_core()._select_lanes(-1)
    return choices


@pytest.fixture
def each_lanes():
    def run(check):
        try:
            for which in _lane_choices():
                compiled_core()._select_lanes(which)
                check(which)
        finally:
            compiled_core()._select_lanes(-1)
    return run


def test_lanes_available():
    assert 0 in _lane_choices()
    assert compiled_core()._select_lanes(99) == -1
    assert compiled_core()._select_lanes(-1) in (0, 4, 8)


@settings(deadline=None, max_examples=30)
@given(key=st.binary(max_size=64), person=st.binary(max_size=16), data=st.data())
@example(key=b"", person=b"kv1/verifier", data=None)
@example(key=bytes(range(32)), person=b"kv1/tag", data=None)
def test_blake2b_lanes_match_hashlib(key, person, data):
    try:
        for which in _lane_choices():
            lanes = compiled_core()._select_lanes(which)
            if lanes == 0:
                with pytest.raises(ValueError):
                    compiled_core()._blake2b_lanes(key, person, [b"x"])
                continue
            if data is None:
                messages = [bytes([i]) * (1 + (i * 41) % 128) for i in range(lanes)]
            else:
                messages = data.draw(st.lists(st.binary(min_size=1, max_size=128), min_size=lanes, max_size=lanes))
            assert compiled_core()._blake2b_lanes(key, person, messages) == \
                [hashlib.blake2b(m, key=key, digest_size=16, person=person).digest() for m in messages]
    finally:
        compiled_core()._select_lanes(-1)


def test_check_keys_every_lane_implementation(scene, each_lanes, tmp_path):
    store, keys_, expected = scene
    more = _Store(tmp_path / "more")  # salts of every length around one block, many keys
    try:
        mixed = []
        for size in (0, 1, 16, 95, 96, 97, 128):
            mixed += more.batch(_batch_key(7, size), 13, salt=bytes(range(size)))
        mixed += [_pure.encode_key(i << 25, i) for i in range(9)]

        def check(which):
            assert _statuses(store.check(keys_)) == expected, which
            for i in range(len(keys_)):
                store.check(keys_[i:i + 1 + i % 9])  # every group size and leftover
            assert _statuses(more.check(mixed)) == ["valid"] * (7 * 13) + ["unknown"] * 9, which
            more.check(mixed[::-1])
        each_lanes(check)
    finally:
        more.close()


def test_hot_results_are_not_tracked_by_the_cycle_collector(scene):
    """Results made in C (valid, unknown: str, None and a Status) are left untracked."""
    import gc

    store, keys_, expected = scene
    with store.env.begin() as txn:
        results = compiled_core().check_keys(keys_, store.pepper, store.batches, store.key_blocks, store.overlay,
                                   txn.cursor(db=store.cards_db), txn.cursor(db=store.outcomes_db), NOW)
    assert _statuses(results) == expected
    assert not gc.is_tracked(results[0])  # valid, decided in C (keys judged through judge are Python's)
    for result, status in zip(results, expected):
        if status == "unknown" and "damaged" not in (result.message or ""):  # a damaged record is judge's
            assert not gc.is_tracked(result), result


def test_profile_hook(scene):
    import time

    store, keys_, _ = scene
    try:
        compiled_core()._profile_check_keys(time.perf_counter_ns)
        store.check(keys_)
        profile = compiled_core()._check_keys_profile()
    finally:
        compiled_core()._profile_check_keys(None)
    assert profile["keys"] == len(keys_) and 0 < profile["found"] < len(keys_)
    assert profile["total_ns"] == sum(v for k, v in profile.items() if k.endswith("_ns") and k != "total_ns")


# -- issuance in bulk: export_rows and card_records -------------------------------------------------


@given(first=st.integers(min_value=0, max_value=(1 << 60) - 1000), n=st.integers(min_value=0, max_value=40),
       suffix=st.text(max_size=30), seed=st.binary(min_size=16, max_size=16))
@settings(max_examples=60, deadline=None)
def test_export_rows_twins(first: int, n: int, suffix: str, seed: bytes) -> None:
    keys, _ = _pure.issue_keys(first, n, seed, os.urandom(n * 10))
    assert compiled_core().export_rows(first, keys, suffix) == _pure.export_rows(first, keys, suffix)


def test_export_rows_odd_input_takes_the_specification_path() -> None:
    for keys in (["short"], ["1" * 32, 5], ["é" * 32]):
        try:
            expected: object = _pure.export_rows(7, keys, "x")
        except Exception as exc:  # noqa: BLE001 - the twin must fail the same way
            with pytest.raises(type(exc)):
                compiled_core().export_rows(7, keys, "x")
        else:
            assert compiled_core().export_rows(7, keys, "x") == expected


@given(first=st.integers(min_value=0, max_value=(1 << 63)), size=st.sampled_from([16, 32, 48]),
       n=st.integers(min_value=0, max_value=50), pepper=st.binary(min_size=0, max_size=64))
@settings(max_examples=60, deadline=None)
def test_card_records_twins(first: int, size: int, n: int, pepper: bytes) -> None:
    body = os.urandom(size * n + 3)  # a ragged tail is ignored by both
    assert compiled_core().card_records(first, body, size, pepper) == _pure.card_records(first, body, size, pepper)



def test_card_records_twins_in_every_lanes(each_lanes) -> None:
    """Lane-sized groups, their leftovers and chunks hashed without the GIL: the specification's records."""
    pepper = os.urandom(32)

    def check(which: int) -> None:
        for n in (1, 3, 4, 5, 7, 8, 9, 17, 1023, 1024, 1031):
            for size in (16, 32):
                body = os.urandom(size * n)
                first = (0x7A5 << 25) + n
                assert compiled_core().card_records(first, body, size, pepper) == \
                    _pure.card_records(first, body, size, pepper), (which, n, size)

    each_lanes(check)

# -- results_json: a template per result shape, the serial set in --------------------------------------

_STATUSES = ["valid", "accepted", "malformed", "unknown", "redeemed", "void", "blacklisted", "expired"]
_texts = st.one_of(st.none(), st.sampled_from(["7KQ2-00A", "Acme \"Games\" 游戏", "POINTS-100", "o-1", "\\\\"]),
                   st.text(max_size=6))
_serials = st.one_of(st.none(), st.sampled_from(["7KQ2-00A-0003F", "7KQ2-00A-0003G", "B1SH-000-00000"]),
                     st.text(max_size=14))


@st.composite
def _result_lists(draw):  # type: ignore[no-untyped-def]
    from keyvault.results import Result, Status

    shared = (draw(st.sampled_from(_STATUSES)), draw(_texts), draw(_texts), draw(_texts), draw(_texts))
    out = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):  # the same field objects as others: the compiled twin's identity shortcut
            status, batch, supplier, name, product = shared
            out.append(Result(Status(status), draw(_serials), batch, supplier, name, product))
        else:
            out.append(Result(Status(draw(st.sampled_from(_STATUSES))), draw(_serials), draw(_texts), draw(_texts),
                              draw(_texts), draw(_texts), draw(_texts), draw(_texts), None, draw(_texts),
                              None, draw(st.one_of(st.none(), st.integers(1, 8))), draw(_texts)))
    return out


def _render(result, serial):  # type: ignore[no-untyped-def]
    import json

    return json.dumps((result if serial is None else result._replace(serial=serial)).to_dict(), ensure_ascii=False)


@given(_result_lists(), _result_lists())
@settings(max_examples=300, deadline=None)
def test_results_json_twins_agree_and_equal_json_dumps(first, second) -> None:  # type: ignore[no-untyped-def]
    import json

    pure_templates: dict = {}
    core_templates: dict = {}
    for results in (first, second, first + second):  # templates carried from call to call
        expected = ", ".join(json.dumps(r.to_dict(), ensure_ascii=False) for r in results)
        assert _pure.results_json(results, pure_templates, _render) == expected
        assert compiled_core().results_json(results, core_templates, _render) == expected
