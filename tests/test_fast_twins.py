"""The compiled core against its specification: _core must answer exactly as _pure.

Both modules are imported directly (whatever keyvault._fast selected) and every
public function is run on the same input through both; results must be equal
and of the same types, and exceptions of the same type with the same args.
Hashes are also checked against hashlib.blake2b itself.

Without a built _core the module is skipped, unless KEYVAULT_REQUIRE_EXTENSIONS
is set: then test_compiled_core_is_built fails (and so do the comparisons).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st


def _flag(name: str) -> bool:  # as keyvault._fast reads its environment
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


REQUIRE = _flag("KEYVAULT_REQUIRE_EXTENSIONS")

_pure = _core = None
IMPORT_ERROR: ImportError | None = None
try:
    # (Under KEYVAULT_REQUIRE_EXTENSIONS the package itself refuses to import
    # without its core, so _pure is imported inside the same try.)
    from keyvault._fast import _pure
    from keyvault._fast import _core
except ImportError as exc:
    IMPORT_ERROR = exc

if _core is None and not REQUIRE:
    pytest.skip(f"compiled core not built ({IMPORT_ERROR}); set KEYVAULT_REQUIRE_EXTENSIONS=1 to make this fail",
                allow_module_level=True)

# Literal copies, so that strategies can be built even when the import above failed.
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


# ---------------------------------------------------------------------------
# Comparison helpers


def _run(func, *args):
    try:
        return "returned", func(*args)
    except Exception as exc:  # the exception is part of the answer
        return "raised", type(exc), exc.args


def _typed(value):
    """value with the type of everything in it made explicit (True != 1, list != tuple)."""
    if isinstance(value, (tuple, list)):
        return type(value), [_typed(v) for v in value]
    return type(value), value


def same(name: str, *args):
    """Call _pure.name and _core.name on args; require the same answer. Returns _pure's."""
    expected = _run(getattr(_pure, name), *args)
    actual = _run(getattr(_core, name), *args)
    assert _typed(actual) == _typed(expected), f"{name}{_short(args)}: _core {actual!r} != _pure {expected!r}"
    return expected[1] if expected[0] == "returned" else None


def _short(args) -> str:
    text = repr(args)
    return text if len(text) < 300 else text[:300] + "...)"


def _grouped(key: str, sep: str = "-") -> str:
    return sep.join(key[i:i + 4] for i in range(0, len(key), 4))


# ---------------------------------------------------------------------------
# The module itself


def test_compiled_core_is_built():
    """With KEYVAULT_REQUIRE_EXTENSIONS=1 a missing or broken _core is a failure, never a skip."""
    assert _core is not None, f"keyvault._fast._core did not import: {IMPORT_ERROR!r}"


def test_package_selects_compiled_core():
    if _flag("KEYVAULT_NO_EXTENSIONS"):
        pytest.skip("KEYVAULT_NO_EXTENSIONS selects the pure module")
    import keyvault._fast as fast

    assert fast.impl is _core
    assert fast.COMPILED
    assert fast.parse_key is _core.parse_key


def _pure_functions() -> dict:
    return {name: f for name, f in vars(_pure).items()
            if not name.startswith("_") and inspect.isfunction(f) and f.__module__ == _pure.__name__}


def test_same_public_functions():
    public = {name for name in dir(_core) if not name.startswith("_")}
    assert public == set(_pure_functions())
    assert len(public) == 12


@pytest.mark.parametrize("name", sorted(
    ["normalize", "check_symbols", "parse_key", "parse_serial", "format_serial", "encode_key", "verifier",
     "tag", "locator", "store_locator", "tags_equal", "issue_keys"]))
def test_same_signature(name):
    assert inspect.signature(getattr(_core, name)) == inspect.signature(getattr(_pure, name))


def test_stub_matches_pure():
    stub = Path(_core.__file__).with_name("_core.pyi")
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
    constants = _core._constants()
    separators = constants.pop("ASCII_SEPARATORS")
    assert separators == "".join(c for c in _pure._SEPARATORS if c.isascii())
    for name, value in constants.items():
        assert value == getattr(_pure, name), name
    assert constants["LOCATORS"] == _pure.LOCATORS


def test_keyword_arguments():
    key = _key(7, bytes(10))
    assert _core.parse_key(text=key) == _pure.parse_key(text=key)
    assert _core.issue_keys(serial_base=1, count=1, salt=b"s", entropy=bytes(10)) == \
        _pure.issue_keys(serial_base=1, count=1, salt=b"s", entropy=bytes(10))
    assert _core.tag(pepper=b"p", verifier_=b"v") == _pure.tag(pepper=b"p", verifier_=b"v")


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
                assert _core._blake2b(data[:n], key, size, person) == expected, (n, key_size, person, size)


@given(data=st.binary(max_size=300), key=st.binary(max_size=64), person=st.binary(max_size=16),
       size=st.integers(1, 64), chunk=st.integers(0, 300))
@example(data=b"", key=b"", person=b"", size=64, chunk=0)
@example(data=b"", key=b"k", person=b"", size=64, chunk=0)
@example(data=bytes(128), key=bytes(64), person=bytes(16), size=64, chunk=128)
@example(data=bytes(129), key=b"", person=b"p", size=16, chunk=1)
def test_blake2b_matches_hashlib(data, key, person, size, chunk):
    expected = hashlib.blake2b(data, key=key, digest_size=size, person=person).digest()
    assert _core._blake2b(data, key, size, person, chunk) == expected


@given(key=st.binary(max_size=64), person=st.binary(max_size=16), size=st.integers(1, 64),
       messages=st.lists(st.binary(max_size=300), max_size=8))
@example(key=b"pepper", person=b"kv1/tag", size=16, messages=[b"", bytes(16), b"", bytes(128), bytes(129)])
def test_blake2b_forked_state_matches_hashlib(key, person, size, messages):
    """One blake2b_init_keyed state, copied for each message (the hot path's pattern)."""
    expected = [hashlib.blake2b(m, key=key, digest_size=size, person=person).digest() for m in messages]
    assert _core._blake2b_forked(key, person, size, messages) == expected


@pytest.mark.parametrize("size, key, person", [(0, b"", b""), (65, b"", b""), (16, bytes(65), b""),
                                               (16, b"", bytes(17))])
def test_blake2b_refuses_bad_parameters(size, key, person):
    with pytest.raises(ValueError):
        _core._blake2b(b"x", key, size, person)


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
    assert [_core.normalize(c) for c in every] == [_pure.normalize(c) for c in every]
    texts = [key[:7] + c + key[8:] for c in every]
    assert [_core.parse_key(t) for t in texts] == [_pure.parse_key(t) for t in texts]


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
