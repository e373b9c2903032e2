"""Hostile input: property tests over every parser a stranger's bytes reach.

The targets and what must hold for each are in fuzz/targets.py, shared with the atheris
harnesses (fuzz/run.py, `make stress`): for any input a parser returns or raises one of its
classified KeyvaultErrors (never anything else, never a hang), a refused input changes no store,
the compiled core and its pure twin agree, and a forged or altered file is never accepted.

Inputs are arbitrary bytes and text (unicode, lone surrogates included) and mutations of real
files made by a small store: byte flips, truncations, insertions, deletions, and JSON field
swaps (hostile values, deleted and added fields, deep nesting) in records signed with a fixture
key, so that the code behind each signature check is reached too.

Tests that touch keyvault._fast run on each implementation in turn (keyvault._fast's functions are
swapped for _pure's or _core's); the _core case is skipped, with the reason, when the compiled
core is not built, and fails under KEYVAULT_REQUIRE_EXTENSIONS=1 (as in test_fast_twins.py).

Known, reported bugs (fuzz/targets.py KNOWN_BUGS) are tolerated by the property tests, so that
they keep looking for new ones; each is pinned by a regression file in fuzz/regressions/ that
test_regression_replays runs as a strict xfail: when the library is fixed it XPASSes, and the
bug's entry must then be removed from KNOWN_BUGS.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from keyvault._fast import env_flag

REQUIRE = env_flag("KEYVAULT_REQUIRE_EXTENSIONS")
FUZZ = Path(__file__).resolve().parents[1] / "fuzz"


def _load_targets():
    """fuzz/targets.py by path: putting the repository on sys.path would import the source tree's keyvault
    instead of the installed one."""
    name = "keyvault_fuzz_targets"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FUZZ / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


T = _load_targets()

from keyvault import Status  # noqa: E402
from keyvault.formats import bundle as kv_bundle  # noqa: E402
from keyvault.formats import checkpoint as kv_checkpoint  # noqa: E402
from keyvault.formats import custody as kv_custody  # noqa: E402
from keyvault.formats import manifest as kv_manifest  # noqa: E402
from keyvault.formats.identity import PublicIdentity, Rotation  # noqa: E402


def _impl(name: str) -> str:
    if name == "_core" and "_core" not in T.IMPLS:
        if REQUIRE:
            pytest.fail(f"keyvault._fast._core is not run ({T.CORE_MISSING}), and KEYVAULT_REQUIRE_EXTENSIONS is set")
        pytest.skip(T.CORE_MISSING)
    return name


IMPL_NAMES = ["_pure", "_core"]


@pytest.fixture(params=IMPL_NAMES)
def impl(request: pytest.FixtureRequest) -> str:
    """Each implementation of keyvault._fast in turn (by name, for targets.use_impl)."""
    return _impl(request.param)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory):
    """Small stores and real files of every kind (fuzz/targets.py Fixtures), built once."""
    T.reset_fixtures()
    fixtures = T.fixtures(tmp_path_factory.mktemp("hostile"))
    yield fixtures
    T.reset_fixtures()


def run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A target check; a known, reported bug is counted and tolerated (replayed strictly below)."""
    return T.guard(func, *args, **kwargs)


def budget(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])


# -- strategies ---------------------------------------------------------------------------------

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
KEYISH = (ALPHABET + ALPHABET.lower() + "IiLlOoUu -_\t\r\n\u00a0\u2010\u2014\u2212\u3000\uff0d"
          + "".join(chr(ord(c) + 0xFEE0) for c in ALPHABET) + "\u00df\u0131\u0130\u017f\u212a\u2160\u0301"
          + "\ud800\udfff\udcff\x00\x7f\x80\xff\u200b\U0001d7ce\U0001f600:,")

any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=80)  # lone surrogates included
keyish = st.text(alphabet=st.sampled_from(KEYISH), max_size=48)
texts = st.one_of(any_text, keyish, st.text(max_size=40))

#: values a hostile JSON field may take
HOSTILE = [None, True, False, 0, -1, 1, 2**31, 2**63, 2**64, -(2**63), 10**30, 0.5, -0.0, float("inf"),
           float("-inf"), float("nan"), "", "0", "-1", "x" * 300, "\ud800", "\u00e9", "\x00", "zz", "00" * 31,
           "00" * 33, "AAAA", "====", [], {}, [0], [[0, 1]], [[1, 0]], [[0, 2**64]], {"a": 1}, ["x"]]
DEEP = "@@deep@@"
DEPTH = 20000


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _at(doc: Any, path: tuple) -> tuple[Any, Any]:
    for step in path[:-1]:
        doc = doc[step]
    return doc, path[-1]


@st.composite
def json_swapped(draw: st.DrawFn, real: bytes, compact: bool = True) -> bytes:
    """A real JSON record with one or two fields changed: a hostile value, deleted, a field added, two
    values swapped, a value wrapped, or deep nesting."""
    doc = copy.deepcopy(json.loads(real))
    paths = _paths(doc)
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(paths))
        parent, step = _at(doc, path)
        op = draw(st.sampled_from(["value", "value", "delete", "add", "swap", "wrap", "deep"]))
        try:
            if op == "value":
                parent[step] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
            elif op == "delete":
                del parent[step]
            elif op == "add" and isinstance(parent, dict):
                parent[draw(st.sampled_from(["extra", "format", "\ud800", ""]))] = \
                    copy.deepcopy(draw(st.sampled_from(HOSTILE)))
            elif op == "swap":
                other_parent, other_step = _at(doc, draw(st.sampled_from(paths)))
                parent[step], other_parent[other_step] = other_parent[other_step], parent[step]
            elif op == "wrap":
                parent[step] = [parent[step]]
            elif op == "deep":
                parent[step] = DEEP
        except (KeyError, IndexError, TypeError):
            pass  # the path went away with an earlier change
        paths = _paths(doc) or [()]
        if paths == [()]:
            break
    text = json.dumps(doc, sort_keys=compact, separators=(",", ":") if compact else None, allow_nan=True)
    return text.replace(json.dumps(DEEP), "[" * DEPTH + "]" * DEPTH).encode()


INTERESTING = [b"\x00", b"\xff", b"\n", b"\r\n", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
               b'"', b"\\", b"{", b"[", b",", b"=", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xe2\x80\x94 "]


@st.composite
def mutated(draw: st.DrawFn, real: bytes, edits: int = 3) -> bytes:
    """``real`` after 1..``edits`` byte-level edits: flips, truncations, insertions, deletions, copies."""
    data = bytearray(real)
    for _ in range(draw(st.integers(1, edits))):
        op = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete", "copy", "interesting"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "copy" and data:
            n = draw(st.integers(1, 64))
            data[at:at] = data[draw(st.integers(0, len(data) - 1)):][:n]
        elif op == "interesting":
            n = draw(st.integers(0, 4))
            data[at:at + n] = draw(st.sampled_from(INTERESTING))
    return bytes(data)


def _typos(fx) -> st.SearchStrategy[str]:
    return st.builds(lambda key, edit: edit(key), st.sampled_from(fx.keys[:4]), st.sampled_from([
        str.lower, lambda k: k.replace("-", " "), lambda k: k.replace("-", ""), lambda k: k[:-1], lambda k: k + "0",
        lambda k: k[:7] + k[8] + k[7] + k[9:], lambda k: k[:10] + "Z" + k[11:], lambda k: "\uff11" + k[1:],
        lambda k: k.replace("1", "I").replace("0", "O"), lambda k: k[:5] + "\ud800" + k[6:],
        lambda k: " " + k + "\n", lambda k: k * 2, lambda k: k + ":x"]))


# -- the key parser -------------------------------------------------------------------------------


@budget(1000)
@given(texts)
@example("")
@example("\ud800" * 40)
@example("1" * 10_000)
def test_parse_key_any_text(text: str) -> None:
    """parse_key and normalize never raise for a str, and the twins agree exactly."""
    T.key_text(text)


def test_parse_key_typos(fx) -> None:
    @budget(500)
    @given(_typos(fx))
    def prop(text: str) -> None:
        T.key_text(text)

    prop()


@budget(500)
@given(st.binary(max_size=200))
def test_parse_key_bytes(data: bytes) -> None:
    """The fuzz target's byte-to-text decodings (Latin-1, UTF-8, surrogateescape, UTF-16)."""
    T.check_key(data)


# -- verify ---------------------------------------------------------------------------------------


def test_verify_any_text(fx, impl: str) -> None:
    """Vault.verify and verify_many: a Result for every str, valid keys around it still valid, no change
    to the store (its head, and its stats less refused counters)."""

    @budget(500)
    @given(st.lists(st.one_of(texts, _typos(fx)), min_size=1, max_size=4))
    def prop(batch: list[str]) -> None:
        run(T.verify_texts, fx, batch, [impl], full=True)

    prop()


def test_verify_twins_agree(fx) -> None:
    """The same store answers every str the same on _pure and _core."""
    _impl("_core")

    @budget(400)
    @given(st.lists(st.one_of(texts, _typos(fx)), min_size=1, max_size=4))
    def prop(batch: list[str]) -> None:
        run(T.verify_texts, fx, batch, ["_pure", "_core"], full=False)

    prop()


# -- the CSV importer -------------------------------------------------------------------------------

CSV_TEXT = st.text(alphabet=st.sampled_from('code,card_number,password\r\n"\' \t;x1-\u00e9\ufeff\x00:STEAM-AAAA'),
                   max_size=120)


def test_csv_importer(fx, impl: str) -> None:
    """read_cards_csv returns printable, unique cards or raises ImportFileError; import_cards refuses
    the same files and leaves the store and the output file as they were."""
    real = list(fx.csv_files.values())

    @budget(400)
    @given(st.one_of(st.binary(max_size=200), CSV_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.sampled_from(real).flatmap(mutated)))
    def prop(data: bytes) -> None:
        run(T.csv_bytes, fx, data, [impl])

    prop()


# -- manifests ----------------------------------------------------------------------------------------


def test_manifest_bytes_and_mutations(fx, impl: str) -> None:
    """Arbitrary bytes and altered real manifests: ManifestError, nothing imported, store unchanged."""
    real = list(fx.manifests.values())

    @budget(300)
    @given(st.one_of(st.binary(max_size=300), st.sampled_from(real).flatmap(mutated)))
    def prop(data: bytes) -> None:
        if data in real:
            return
        read = run(T.manifest_bytes, fx, data, [impl], forged=True)
        assert not read, "an altered manifest was read"

    prop()


def test_manifest_signed_headers(fx, impl: str) -> None:
    """Headers with hostile fields, validly signed by a pinned supplier: read, imported or refused with a
    ManifestError/KeyvaultError; a refused import changes nothing."""
    header, _ = fx.manifest_parts

    @budget(300)
    @given(json_swapped(header))
    def prop(new_header: bytes) -> None:
        run(T.manifest_bytes, fx, T.signed_manifest(fx, new_header), [impl], forged=False, full=True)

    prop()


# -- transfers and lots -------------------------------------------------------------------------------


def test_transfer_bytes_and_mutations(fx) -> None:
    """read_transfer on bytes and altered real transfers: CustodyError/BadSignatureError, never read."""

    @budget(400)
    @given(st.one_of(st.binary(max_size=300), mutated(fx.transfer)))
    def prop(data: bytes) -> None:
        assume(data != fx.transfer)
        run(T.transfer_bytes, data, True, fx)

    prop()


def test_transfer_signed_records(fx) -> None:
    """Records with hostile fields, signed by their own key (anyone can): Transfer or CustodyError."""

    @budget(400)
    @given(json_swapped(fx.transfer_record))
    def prop(record: bytes) -> None:
        run(T.transfer_bytes, T.signed_transfer(fx.east, record), False)

    prop()


def test_lot_bytes_and_mutations(fx) -> None:
    """open_lot and receive_lot on arbitrary bytes and altered real lots: refused, store unchanged."""

    @budget(200)
    @given(st.one_of(st.binary(max_size=300), mutated(fx.lot)))
    def prop(data: bytes) -> None:
        assume(data != fx.lot)
        run(T.lot_bytes, fx, data, True, full=True)

    prop()


def _lot_payload(hops: list[bytes], manifest: bytes) -> bytes:
    out = kv_custody._U32.pack(len(hops))
    for hop in hops:
        out += kv_custody._U32.pack(len(hop)) + hop
    return out + manifest


def test_lot_signed_payloads(fx) -> None:
    """Lots sealed and signed by a real sender around hostile payloads: bad framing, altered or hostile
    transfers (signed by their own key), altered manifests."""
    forged_hop = json_swapped(fx.transfer_record).map(lambda r: T.signed_transfer(fx.east, r))
    payloads = st.one_of(
        mutated(fx.lot_payload),
        st.binary(max_size=200),
        st.builds(lambda hops, manifest: _lot_payload(hops, manifest),
                  st.lists(st.one_of(st.just(fx.transfer), forged_hop, mutated(fx.transfer)), max_size=3),
                  st.one_of(st.just(fx.manifest), mutated(fx.manifest))),
    )

    @budget(200)
    @given(payloads)
    def prop(payload: bytes) -> None:
        run(T.lot_bytes, fx, T.sealed_lot(fx, payload), False)

    prop()


# -- bundles ------------------------------------------------------------------------------------------


def test_bundle_any_bytes(fx) -> None:
    """bundle.verify never raises: arbitrary bytes, altered bundles, hostile JSON fields."""

    @budget(400)
    @given(st.one_of(st.binary(max_size=300), mutated(fx.bundle), json_swapped(fx.bundle, compact=False)))
    def prop(data: bytes) -> None:
        run(T.bundle_checks, fx, data, ["_pure"])

    prop()


def test_bundle_signed_headers(fx, impl: str) -> None:
    """A bundle whose manifest header (hostile fields) is signed by a pinned supplier: never raises."""
    header, _ = fx.manifest_parts

    @budget(300)
    @given(json_swapped(header))
    def prop(new_header: bytes) -> None:
        run(T.bundle_checks, fx, T.bundle_with_header(fx, new_header), [impl])

    prop()


_HEX = "0123456789abcdef"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _encoded_fields(doc: dict) -> list[tuple[tuple, str]]:
    """(path, 'hex' | 'b64' | 'note') of every encoded value in a bundle."""
    out: list[tuple[tuple, str]] = [(("manifest",), "b64"), (("commitment",), "hex"), (("checkpoint",), "note")]
    if doc.get("salt") is not None:
        out.append((("salt",), "hex"))
    out += [(("manifest_proof", i), "hex") for i in range(len(doc["manifest_proof"]))]
    out += [(("custody", i), "b64") for i in range(len(doc["custody"]))]
    for i, event in enumerate(doc["events"]):
        out.append((("events", i, "leaf"), "b64"))
        out += [(("events", i, "proof", j), "hex") for j in range(len(event["proof"]))]
    return out


def _decoded(kind: str, text: str) -> bytes | str | None:
    try:
        if kind == "hex":
            return bytes.fromhex(text)
        if kind == "b64":
            return base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return text


def test_bundle_flipped_values_never_pass(fx) -> None:
    """A real bundle with one character of an encoded value changed (so that the value itself changes)
    never passes every check: the manifest, commitment, salt, proofs, custody hops, events and the
    checkpoint note are all bound by signatures or hashes."""
    doc = json.loads(fx.bundle)
    fields = _encoded_fields(doc)
    checks = T.bundle_checks(fx, fx.bundle, ["_pure"])
    assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]

    @budget(600)
    @given(st.sampled_from(fields), st.integers(min_value=0), st.integers(min_value=0))
    def prop(where: tuple[tuple, str], position: int, choice: int) -> None:
        path, kind = where
        altered = copy.deepcopy(doc)
        parent, step = _at(altered, path)
        value: str = parent[step]
        at = position % len(value)
        alphabet = {"hex": _HEX, "b64": _B64}.get(kind) or (_B64 if value[at] in _B64 else _HEX + "\n -")
        replacement = alphabet[choice % len(alphabet)]
        assume(replacement != value[at])
        parent[step] = value[:at] + replacement + value[at + 1:]
        assume(_decoded(kind, parent[step]) != _decoded(kind, value))
        checks = run(T.bundle_checks, fx, json.dumps(altered).encode(), ["_pure"])
        if checks is not None:
            assert not all(c.ok for c in checks), f"{path}[{at}] -> {replacement!r} still passes"

    prop()


# -- checkpoint notes ---------------------------------------------------------------------------------


def test_checkpoint_notes(fx) -> None:
    """open_note on bytes and altered real notes: ProofError, or the real checkpoint itself."""

    @budget(500)
    @given(st.one_of(st.binary(max_size=300), mutated(fx.note),
                     st.text(alphabet=st.characters(exclude_categories=()), max_size=200)
                     .map(lambda t: t.encode("utf-8", "surrogatepass"))))
    def prop(data: bytes) -> None:
        run(T.note_bytes, fx, data, True)

    prop()


def test_checkpoint_signed_texts(fx) -> None:
    """Note texts with hostile bodies, validly signed by a pinned key: a Checkpoint or ProofError."""
    text = fx.note_text
    lines = st.sampled_from([b"", b"0", b"01", b"-1", b"9" * 20, b"9223372036854775807", b"9223372036854775808",
                             b"AAAA", b"=", b"\xe2\x80\x94 x", b"\xff", b"\r", b"\x00", text.split(b"\n")[2]])

    @budget(400)
    @given(st.one_of(mutated(text), st.lists(lines, max_size=5).map(lambda ls: b"\n".join(ls) + b"\n"),
                     st.binary(max_size=100)))
    def prop(body: bytes) -> None:
        run(T.note_bytes, fx, T.signed_note(fx, body), False)

    prop()


# -- identity and rotation files ----------------------------------------------------------------------


def test_public_identity_files(fx) -> None:
    @budget(400)
    @given(st.one_of(st.binary(max_size=200), mutated(fx.public_identity),
                     json_swapped(fx.public_identity, compact=False)))
    def prop(data: bytes) -> None:
        run(T.public_identity_bytes, data)

    prop()


def test_rotation_files(fx) -> None:
    @budget(400)
    @given(st.one_of(st.binary(max_size=200), mutated(fx.rotation), json_swapped(fx.rotation, compact=False)))
    def prop(data: bytes) -> None:
        run(T.rotation_bytes, fx, data, True)

    prop()


def test_rotation_signed_records(fx) -> None:
    """Rotation records with hostile fields, signed by both keys: IdentityError/BadSignatureError or read."""

    @budget(400)
    @given(json_swapped(fx.rotation_record))
    def prop(record: bytes) -> None:
        run(T.rotation_bytes, fx, T.signed_rotation(fx, record), False)

    prop()


# -- the real inputs are real -------------------------------------------------------------------------


def test_fixtures_are_valid(fx) -> None:
    """The seeds the mutations start from pass every check (else the tests above would prove little)."""
    for data in fx.manifests.values():
        path = fx.scratch(".kvm")
        path.write_bytes(data)
        assert kv_manifest.read_manifest(path).count > 0
        path.unlink()
    assert kv_custody.read_transfer(fx.transfer).recipient == fx.east.public_key
    assert kv_custody.open_lot(fx.lot, fx.east)[0] == fx.acme.public_key
    assert all(c.ok for c in kv_bundle.verify(fx.bundle, fx.trusted, fx.key_material))
    assert kv_checkpoint.open_note(fx.note, fx.note_origin, fx.note_verifiers).size > 0
    assert PublicIdentity.from_bytes(fx.public_identity).public_key == fx.acme.public_key
    assert Rotation.from_bytes(fx.rotation).new.public_key == fx.rotation_new.public_key
    assert fx.platform.verify(fx.valid_native).status is Status.VALID
    for name, target in T.TARGETS.items():
        for seed in target.seeds(fx):
            target.check(seed)


# -- kept crashing inputs -------------------------------------------------------------------------------


KNOWN = {path: bug for bug in T.KNOWN_BUGS for path in bug.files}


def _replays() -> list[Any]:
    params = []
    for target, path in T.regression_files():
        rel = f"{target}/{path.name}"
        bug = KNOWN.get(rel)
        marks = [pytest.mark.xfail(strict=True, raises=bug.exc, reason=f"known bug {bug.id} (fuzz/targets.py)")] \
            if bug else []
        params.append(pytest.param(target, path, id=rel, marks=marks))
    return params


@pytest.mark.parametrize(("target", "path"), _replays())
def test_regression_replays(fx, target: str, path: Path) -> None:
    """Every input the fuzzer (or a property test) ever crashed on, through its target, strictly."""
    assert target in T.TARGETS, f"fuzz/regressions/{target}/ names no target of fuzz/targets.py"
    T.TARGETS[target].check(path.read_bytes())


def test_known_bugs_have_their_regression_files() -> None:
    kept = {f"{target}/{path.name}" for target, path in T.regression_files()}
    for bug in T.KNOWN_BUGS:
        assert bug.files, f"known bug {bug.id} has no regression file"
        missing = set(bug.files) - kept
        assert not missing, f"known bug {bug.id}: {sorted(missing)} missing from fuzz/regressions/"
