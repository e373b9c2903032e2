"""Hostile-input targets: shared by the property tests (tests/test_hostile_input.py) and the atheris
harnesses (fuzz/run.py).

Each target is a function ``check(data: bytes) -> None`` that feeds ``data`` to one of keyvault's
parsers and asserts what must hold for *any* input: it returns, or it raises one of the target's
classified exceptions (subclasses of :class:`keyvault.KeyvaultError`), it never changes a store
when it refuses, and the compiled core and its pure twin agree. Anything else escaping ``check``
is a finding: an unclassified exception, or an AssertionError naming the broken property.

The first byte of ``data`` selects a *mode* for most targets, the rest is the payload:

* raw: the payload is the file or argument as received;
* signed: the payload is the part a signature covers (a manifest header, a transfer record, a
  lot's sealed payload, a checkpoint note's text, a rotation record, the manifest header inside
  a bundle) and the harness signs it with a fixture key, so that hostile input from a holder of a
  key (a forger with their own key, a buggy or hostile supplier) reaches the code behind the
  signature check, which random bytes never would;
* patch: the payload is a JSON object of fields to set on a real record (and, under "-", a list of
  fields to delete), then signed: a few hostile fields reach the deepest checks with the rest of
  the record (its Merkle root, its keys) intact, and a crash stays a few bytes long.

Modes by target: key and verify decode the bytes to text (:func:`as_text`); manifest raw / signed
header / patched header; transfer raw / signed record / patched record; lot raw / sealed payload;
bundle raw / signed header / patched header / patched bundle; checkpoint raw / signed text;
identity public file / rotation file / signed rotation record / patched rotation record; csv raw.
The fixtures' keys are fixed, so an input found behind a signature replays in a fresh process.

Regression files (fuzz/regressions/<target>/<name>) hold ``data`` exactly, so a crash found by
the fuzzer replays through :func:`check` with nothing else. Known bugs (:data:`KNOWN_BUGS`) are
recognised by where they are raised: the fuzzer and the property tests count them and go on
looking for new ones, and the replay test keeps each one's regression file as a strict xfail
until the library is fixed.

Fixtures (small stores, a real manifest, lot, transfer, bundle, checkpoint note, identity and
rotation files) are built once per process in a temporary directory: :func:`fixtures`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing

import keyvault._fast as fast
from keyvault import Identity, Status, ThrottlePolicy, Vault
from keyvault.formats import bundle as kv_bundle
from keyvault.formats import checkpoint as kv_checkpoint
from keyvault.formats import custody as kv_custody
from keyvault.formats import envelope as kv_envelope
from keyvault.formats import manifest as kv_manifest
from keyvault.errors import (
    BadSignatureError,
    CustodyError,
    IdentityError,
    ImportFileError,
    KeyvaultError,
    ManifestError,
    ProofError,
)
from keyvault.formats.identity import ROTATION_FORMAT, PublicIdentity, Rotation, default_prefix
from keyvault.engine.issuing import read_cards_csv
from keyvault.results import Result

from keyvault._fast import _pure, env_flag  # _pure: always there


#: Why the compiled core is not run here (None when it is).
CORE_MISSING: str | None = None
_core: Any = None
if env_flag("KEYVAULT_NO_EXTENSIONS"):
    CORE_MISSING = "KEYVAULT_NO_EXTENSIONS is set: the pure path only"
else:
    try:
        from keyvault._fast import _core
    except ImportError as exc:  # not built (a pure-only install): the twin comparisons are skipped
        CORE_MISSING = f"compiled core not built ({exc})"

#: The implementations of keyvault._fast that can be run here, by name.
IMPLS: dict[str, Any] = {"_pure": _pure, **({"_core": _core} if _core is not None else {})}

#: A single call taking longer than this is a hang.
HANG_SECONDS = 10.0


# -- known bugs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    """A reported, unfixed bug: an exception of one of ``exc`` types whose deepest keyvault frame is one
    of ``where`` (file name, function)."""

    id: str
    exc: tuple[type[BaseException], ...]
    where: tuple[tuple[str, str], ...]
    what: str
    #: regression files (target/name under fuzz/regressions) that show it
    files: tuple[str, ...] = ()

    def matches(self, error: BaseException) -> bool:
        if not isinstance(error, self.exc):
            return False
        frames = [(Path(f.filename).name, f.name) for f in traceback.extract_tb(error.__traceback__)
                  if "keyvault" in Path(f.filename).parts]
        return bool(frames) and frames[-1] in self.where


KNOWN_BUGS: list[KnownBug] = []  # the five the first runs found are fixed; their inputs replay as regressions


def known_bug(error: BaseException) -> KnownBug | None:
    """The known bug ``error`` is an instance of, if any."""
    return next((bug for bug in KNOWN_BUGS if bug.matches(error)), None)


#: Known-bug hits in this process, by bug id (the harness reports them).
KNOWN_HITS: dict[str, int] = {}


def guard(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args)``, with a known bug counted and swallowed; anything else propagates."""
    try:
        return func(*args, **kwargs)
    except Exception as error:
        bug = known_bug(error)
        if bug is None:
            raise
        KNOWN_HITS[bug.id] = KNOWN_HITS.get(bug.id, 0) + 1
        return None


# -- helpers ------------------------------------------------------------------------------------


def _classified(call: Callable[[], Any], allowed: tuple[type[BaseException], ...]) -> tuple[bool, Any]:
    """(True, value) if ``call`` returned, (False, exc) if it raised an ``allowed`` exception.

    Any other exception propagates: it is the finding. A call that takes longer than HANG_SECONDS
    fails too (a hang that does end).
    """
    start = time.monotonic()
    try:
        value = call()
    except allowed as exc:
        outcome: tuple[bool, Any] = (False, exc)
    else:
        outcome = (True, value)
    elapsed = time.monotonic() - start
    assert elapsed < HANG_SECONDS, f"one call took {elapsed:.1f} s (a hang?)"
    return outcome


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def split_mode(data: bytes, modes: int) -> tuple[int, bytes]:
    """(mode, payload): the first byte picks a mode; empty input is mode 0 with an empty payload."""
    if not data:
        return 0, b""
    return data[0] % modes, data[1:]


def as_text(data: bytes) -> str:
    """Any str from bytes, deterministically (the first byte picks how): Latin-1, UTF-8 with
    replacement, UTF-8 with surrogateescape (lone surrogates), or UTF-16 (any code point)."""
    mode, payload = split_mode(data, 4)
    if mode == 0:
        return payload.decode("latin-1")
    if mode == 1:
        return payload.decode("utf-8", "replace")
    if mode == 2:
        return payload.decode("utf-8", "surrogateescape")
    if len(payload) % 2:
        payload = payload[:-1]
    return payload.decode("utf-16-le", "surrogatepass")


def from_text(text: str) -> bytes:
    """Bytes that :func:`as_text` maps back to ``text`` (UTF-16 mode)."""
    return b"\x03" + text.encode("utf-16-le", "surrogatepass")


_SWAPPED = [name for name in fast.__all__ if callable(getattr(fast, name, None)) and name != "impl"]


@contextlib.contextmanager
def use_impl(module: Any) -> Iterator[None]:
    """Run keyvault on ``module`` (keyvault._fast._pure or ._core) whichever the package selected.

    Every caller reads ``_fast.<name>`` at call time, so swapping the package's attributes swaps
    the implementation everywhere at once.
    """
    saved = {name: getattr(fast, name) for name in _SWAPPED}
    try:
        for name in _SWAPPED:
            if hasattr(module, name):
                setattr(fast, name, getattr(module, name))
        yield
    finally:
        for name, value in saved.items():
            setattr(fast, name, value)


def _typed(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value), [_typed(v) for v in value]
    return type(value), value


def _run(func: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    try:
        return "returned", _typed(func(*args))
    except Exception as exc:  # the exception is part of the answer
        return "raised", type(exc), exc.args


# -- fixtures -----------------------------------------------------------------------------------


_UPSTREAM_CODES = b"code\nSTEAM-AAAA-BBBB\nSTEAM-CCCC-DDDD\nxbox 1234 5678\n"
_UPSTREAM_PAIRS = b"card_number,password\n1000200030004000,s3cret-1\n1000200030004001,s3cret-2\n"


def _head(vault: Vault) -> tuple[int, int]:
    with vault.engine.store.read() as txn:
        head = txn.head()
    return head.generation, head.log_size


_COUNTER_FIELDS = frozenset({"refused", "refused_total", "throttled", "clients"})


def _without_counters(value: Any) -> Any:
    """A stats() document less the refused-attempt and throttling counters (verify may count those)."""
    if isinstance(value, dict):
        return {k: _without_counters(v) for k, v in value.items() if k not in _COUNTER_FIELDS}
    if isinstance(value, list):
        return [_without_counters(v) for v in value]
    return value


@dataclass
class State:
    """What must not change when a store refuses something: its head and its stats less counters."""

    head: tuple[int, int]
    stats: Any | None

    @classmethod
    def of(cls, vault: Vault, full: bool = True) -> State:
        return cls(_head(vault), _without_counters(vault.stats().to_dict()) if full else None)


@dataclass
class Fixtures:
    """Real inputs of every kind, and the stores they came from, in ``root``."""

    root: Path
    acme: Identity
    east: Identity
    supplier: Vault
    platform: Vault
    importer: Vault
    receiver: Vault
    keys: list[str]
    manifest: bytes
    manifests: dict[str, bytes]
    lot: bytes
    lot_payload: bytes
    transfer: bytes
    bundle: bytes
    bundle_key: str
    trusted: list[PublicIdentity]
    note: bytes
    note_origin: str
    note_verifiers: list[kv_checkpoint.Verifier]
    note_key: nacl.signing.SigningKey
    public_identity: bytes
    rotation: bytes
    rotation_new: Identity
    csv_files: dict[str, bytes]
    valid_native: str
    valid_code: str
    _scratch: int = 0
    _closed: bool = field(default=False)

    @classmethod
    def build(cls, root: Path) -> Fixtures:
        root.mkdir(parents=True, exist_ok=True)
        files = root / "files"
        files.mkdir()
        # Fixed keys: a crash found behind a signature (a signed mode) replays with fresh fixtures too.
        acme, east = fixed_identity("Acme Games", 1), fixed_identity("East Agency", 2)
        supplier = Vault.init(root / "supplier")
        keys_csv, native = files / "keys.csv", files / "native.kvm"
        supplier.issue_batch(acme, "POINTS-500", 16, keys_out=keys_csv, manifest_out=native)
        keys = [line.split(",")[1] for line in keys_csv.read_text().splitlines()[1:]]
        (files / "codes.csv").write_bytes(_UPSTREAM_CODES)
        (files / "pairs.csv").write_bytes(_UPSTREAM_PAIRS)
        supplier.import_cards(acme, "STEAM-50", files / "codes.csv", manifest_out=files / "codes.kvm")
        supplier.import_cards(acme, "GIFT-10", files / "pairs.csv", manifest_out=files / "pairs.kvm")
        batch = kv_manifest.read_manifest(native).header["batch"]
        supplier.send_lot(acme, batch, east.public, manifest=native, out=files / "east.kvl", ranges="0-7")

        # The platform: verify runs here (native and imported batches, one key redeemed, one void).
        platform = Vault.init(root / "platform")
        # No card lock here: the verify target compares verify_many with verify one key at a time, and a lock
        # that wrong passwords close between the two calls is state, not a difference (tests/test_guessing.py).
        platform.set_throttle_policy(ThrottlePolicy(card_attempts=None))
        platform.trust(acme.public)
        for name in ("native", "codes", "pairs"):
            platform.import_manifest(files / f"{name}.kvm")
        platform.redeem(keys[0], "ORDER-1")
        platform.void(keys[1], "refund")

        # A store for manifest imports (signed-mode manifests may import new batches there).
        importer = Vault.init(root / "importer")
        importer.trust(acme.public)
        importer.import_manifest(native)

        # The lot's recipient: received, one key redeemed, its trace bundle has a custody hop.
        receiver = Vault.init(root / "receiver")
        receiver.trust(acme.public)
        lot = (files / "east.kvl").read_bytes()
        receiver.receive_lot(files / "east.kvl", east)
        receiver.redeem(keys[2], "ORDER-2")
        bundle = json.dumps(receiver.trace_bundle(keys[2])).encode()
        trusted = [acme.public, receiver.engine_identity]
        sender, chain, manifest_bytes = kv_custody.open_lot(lot, east)
        payload = kv_custody._U32.pack(len(chain))
        for hop in chain:
            payload += kv_custody._U32.pack(len(hop.data)) + hop.data
        payload += manifest_bytes

        note = platform.checkpoint().encode("utf-8")
        engine = platform.engine_identity.public_key
        origin = kv_bundle.engine_origin(engine)
        note_key = nacl.signing.SigningKey(b"\x07" * 32)
        verifiers = [kv_checkpoint.Verifier(origin, engine),
                     kv_checkpoint.Verifier("fuzz.example/log", bytes(note_key.verify_key))]

        new, rotation = _rotation(acme)
        fx = cls(root=root, acme=acme, east=east, supplier=supplier, platform=platform, importer=importer,
                 receiver=receiver, keys=keys, manifest=native.read_bytes(),
                 manifests={n: (files / f"{n}.kvm").read_bytes() for n in ("native", "codes", "pairs")},
                 lot=lot, lot_payload=bytes(payload), transfer=chain[-1].data, bundle=bundle, bundle_key=keys[2],
                 trusted=trusted, note=note, note_origin=origin, note_verifiers=verifiers, note_key=note_key,
                 public_identity=acme.public.to_bytes(), rotation=rotation.to_bytes(), rotation_new=new,
                 csv_files={"codes": _UPSTREAM_CODES, "pairs": _UPSTREAM_PAIRS, "keys": keys_csv.read_bytes()},
                 valid_native=keys[3], valid_code="steam-aaaa-bbbb")
        assert platform.verify(fx.valid_native).status is Status.VALID
        assert platform.verify(fx.valid_code).status is Status.VALID
        return fx

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for vault in (self.supplier, self.platform, self.importer, self.receiver):
                vault.close()

    def scratch(self, suffix: str) -> Path:
        """A fresh file name in the fixture directory (written files are removed by the caller)."""
        self._scratch += 1
        return self.root / f"scratch-{os.getpid()}-{self._scratch}{suffix}"

    # Parts of the real files, for the signed modes.
    @property
    def manifest_parts(self) -> tuple[bytes, bytes]:
        """(header bytes, body bytes) of the real native manifest."""
        start = len(kv_manifest.MAGIC) + kv_envelope.FIXED.size
        _, _, length = kv_envelope.FIXED.unpack_from(self.manifest, len(kv_manifest.MAGIC))
        return self.manifest[start:start + length], self.manifest[start + length:]

    @property
    def transfer_record(self) -> bytes:
        return self.transfer[len(kv_custody.TRANSFER_MAGIC) + kv_envelope.FIXED.size:]

    @property
    def note_text(self) -> bytes:
        return self.note[: self.note.rfind(b"\n\n") + 1]

    @property
    def rotation_record(self) -> bytes:
        return base64.b64decode(json.loads(self.rotation)["record"])

    @property
    def key_material(self) -> bytes:
        return bytes(_pure.parse_key(self.bundle_key)[2])


def fixed_identity(name: str, seed: int) -> Identity:
    """An identity whose key is fixed by ``seed`` (fixtures only: never for real keys)."""
    key = nacl.signing.SigningKey(bytes([seed]) * 32)
    return Identity(name=name, prefix=default_prefix(bytes(key.verify_key)), signing_key=key)


def _rotation(old: Identity) -> tuple[Identity, Rotation]:
    """As Identity.rotate, with a fixed new key and time."""
    new = fixed_identity(old.name, 3)
    new = Identity(name=old.name, prefix=old.prefix, signing_key=new.signing_key)
    record = json.dumps({"format": ROTATION_FORMAT, "name": new.name, "prefix": new.prefix_text,
                         "old_public_key": _b64(old.public_key), "new_public_key": _b64(new.public_key),
                         "at": 1_700_000_000_000}, sort_keys=True, separators=(",", ":")).encode()
    rotation = Rotation.from_bytes(Rotation.envelope(record, old.sign(ROTATION_FORMAT, record),
                                                     new.sign(ROTATION_FORMAT, record)))
    return new, rotation


_FIXTURES: Fixtures | None = None


def fixtures(root: Path | None = None) -> Fixtures:
    """The process's fixtures, built on first use (in ``root``, else a temporary directory)."""
    global _FIXTURES
    if _FIXTURES is None:
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="keyvault-fuzz-"))
            import atexit

            atexit.register(shutil.rmtree, root, True)
        _FIXTURES = Fixtures.build(root)
    return _FIXTURES


def reset_fixtures() -> None:
    global _FIXTURES
    if _FIXTURES is not None:
        _FIXTURES.close()
    _FIXTURES = None


# -- signed-mode builders -------------------------------------------------------------------------


def patched(real: bytes, payload: bytes) -> bytes:
    """The JSON object ``real`` with the fields of the JSON object ``payload`` set, and the fields it names
    in a list under the key "-" deleted (compact, sorted keys); ``payload`` itself when it is not a JSON
    object. Patch modes keep the rest of a real record intact (its Merkle root, its keys), so a few
    hostile fields reach the checks behind them, and a crash replays with fresh fixtures."""
    try:
        patch = json.loads(payload)
    except (ValueError, RecursionError):
        return payload
    if not isinstance(patch, dict):
        return payload
    doc = json.loads(real)
    deleted = patch.pop("-", [])
    doc.update(patch)
    for name in deleted if isinstance(deleted, list) else []:
        if isinstance(name, str):
            doc.pop(name, None)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def signed_manifest(fx: Fixtures, header: bytes, body: bytes | None = None) -> bytes:
    """A manifest file whose header is ``header``, signed by the fixture supplier (Acme), and the real body."""
    if body is None:
        body = fx.manifest_parts[1]
    signature = fx.acme.sign(kv_manifest.PAYLOAD_TYPE, header)
    return kv_envelope.pack(kv_manifest.MAGIC, fx.acme.public_key, signature, header) + body


def signed_transfer(signer: Identity, record: bytes) -> bytes:
    """A transfer file around ``record``, signed by ``signer`` (whose key the file carries)."""
    signature = signer.sign(kv_custody.TRANSFER_TYPE, record)
    return kv_envelope.pack(kv_custody.TRANSFER_MAGIC, signer.public_key, signature, record)


def sealed_lot(fx: Fixtures, payload: bytes) -> bytes:
    """A lot whose sealed payload is ``payload``, sealed to East and signed by Acme."""
    box = nacl.public.SealedBox(nacl.signing.VerifyKey(fx.east.public_key).to_curve25519_public_key())
    sealed = box.encrypt(payload)
    signature = fx.acme.sign(kv_custody.LOT_TYPE, fx.east.public_key + sealed)
    return kv_custody.LOT_MAGIC + kv_custody._LOT.pack(fx.acme.public_key, fx.east.public_key, signature) + sealed


def signed_note(fx: Fixtures, text: bytes) -> bytes:
    """A note whose text is ``text``, signed under the name 'fuzz.example/log' by a pinned fixture key."""
    return text + b"\n" + kv_checkpoint.signature_line(text, "fuzz.example/log", fx.note_key)


def signed_rotation(fx: Fixtures, record: bytes) -> bytes:
    """A rotation file around ``record``, signed by Acme's old and new keys."""
    return Rotation.envelope(record, fx.acme.sign(ROTATION_FORMAT, record),
                             fx.rotation_new.sign(ROTATION_FORMAT, record))


def bundle_with_header(fx: Fixtures, header: bytes) -> bytes:
    """The real bundle with its manifest header replaced by ``header``, signed by Acme (a pinned key)."""
    doc = json.loads(fx.bundle)
    signature = fx.acme.sign(kv_manifest.PAYLOAD_TYPE, header)
    doc["manifest"] = _b64(kv_envelope.pack(kv_manifest.MAGIC, fx.acme.public_key, signature, header))
    return json.dumps(doc).encode()


# -- the key parser and verify --------------------------------------------------------------------


_OUTCOMES = {fast.OK, fast.BAD_LENGTH, fast.BAD_SYMBOL, fast.BAD_VERSION, fast.CHECK_FAILED,
             fast.CHECK_SUBSTITUTION, fast.CHECK_TRANSPOSITION}


def key_text(text: str) -> None:
    """parse_key and normalize on any str: never raise; both twins give the same answer."""
    answer = _pure.parse_key(text)
    assert type(answer) is tuple and len(answer) == 4, answer
    outcome, serial, canonical, position = answer
    assert outcome in _OUTCOMES, answer
    assert -1 <= position < fast.KEY_SYMBOLS, answer
    if outcome == fast.OK:
        assert 0 <= serial < 1 << 60 and len(canonical) == fast.KEY_SYMBOLS, answer
        assert _pure.normalize(text) == canonical.decode("ascii")
        assert _pure.encode_key(serial, _secret(canonical)) == canonical.decode("ascii")
    else:
        assert serial == 0 and canonical == b"", answer
    folded = _run(_pure.normalize, text)
    assert folded[0] == "returned", folded
    if _core is not None:
        twin = _run(_core.parse_key, text)
        assert twin == ("returned", _typed(answer)), f"parse_key({text!r}): _core {twin!r} != _pure {answer!r}"
        twin_folded = _run(_core.normalize, text)
        assert twin_folded == folded, f"normalize({text!r}): _core {twin_folded!r} != _pure {folded!r}"


def _secret(canonical: bytes) -> int:
    """The 80-bit secret of a canonical key, for the encode round trip (docs/format.md: 29 data
    symbols are the version (5 bits), the serial (60) and the secret (80), then 3 check symbols)."""
    value = 0
    for ch in canonical.decode("ascii")[:29]:
        value = (value << 5) | fast.ALPHABET.index(ch)
    return value & ((1 << 80) - 1)


def check_key(data: bytes) -> None:
    key_text(as_text(data))


_STATUSES = set(Status)


def _result_ok(result: Any) -> dict[str, Any]:
    assert isinstance(result, Result), result
    assert result.status in _STATUSES, result
    doc = result.to_dict()
    json.dumps(doc)  # JSON-ready
    return doc


def verify_texts(fx: Fixtures, texts: Sequence[str], impls: Sequence[str] | None = None,
                 full: bool = True) -> None:
    """Vault.verify and verify_many on the platform store, on each implementation: a Result for every
    str, valid keys around hostile ones still valid, the twins' answers equal, the store unchanged."""
    vault = fx.platform
    before = State.of(vault, full)
    batch = [fx.valid_native, *texts, fx.valid_code]
    answers = {}
    for name in impls or list(IMPLS):
        with use_impl(IMPLS[name]):
            singles = [_result_ok(vault.verify(t)) for t in texts]
            many = [_result_ok(r) for r in vault.verify_many(batch)]
        assert len(many) == len(batch)
        assert many[0]["status"] == "valid" and many[-1]["status"] == "valid", (many[0], many[-1])
        assert many[1:-1] == singles, "verify_many answered differently from verify"
        answers[name] = many
    first, *others = answers.items()
    for name, many in others:
        assert many == first[1], f"{name} answered {many!r}, {first[0]} answered {first[1]!r}"
    after = State.of(vault, full)
    assert after == before, f"verify changed the store: {before} -> {after}"


def check_verify(data: bytes, impls: Sequence[str] | None = None, full: bool = False) -> None:
    text = as_text(data)
    texts = text.split("\n")[:8] if "\n" in text else [text]
    verify_texts(fixtures(), texts, impls, full)


# -- the CSV importer ---------------------------------------------------------------------------


def csv_bytes(fx: Fixtures, data: bytes, impls: Sequence[str] | None = None) -> None:
    """read_cards_csv returns clean rows or raises ImportFileError; a refused file imports nothing."""
    path = fx.scratch(".csv")
    out = fx.scratch(".kvm")
    try:
        path.write_bytes(data)
        for name in impls or list(IMPLS):
            with use_impl(IMPLS[name]):
                accepted, value = _classified(lambda: read_cards_csv(path), (ImportFileError,))
                if accepted:
                    kind, rows = value
                    assert kind in ("code", "pair"), kind
                    assert rows and isinstance(rows, list)
                    for row in rows:
                        assert type(row) is tuple and len(row) == 2, row
                        for value_ in row[: 2 if kind == "pair" else 1]:
                            assert value_ and value_.isascii() and value_.isprintable() and ":" not in value_
                    assert len({r[0] for r in rows}) == len(rows), "a repeated card passed"
                else:
                    before = State.of(fx.supplier, full=False)
                    refused, exc = _classified(
                        lambda: fx.supplier.import_cards(fx.acme, "FUZZ", path, manifest_out=out), (KeyvaultError,))
                    assert not refused, "import_cards accepted a file read_cards_csv refused"
                    assert isinstance(exc, ImportFileError), f"import_cards refused with {exc!r}"
                    assert not out.exists(), "a refused import left a manifest behind"
                    assert State.of(fx.supplier, full=False) == before, "a refused import changed the store"
    finally:
        path.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def check_csv(data: bytes, impls: Sequence[str] | None = None) -> None:
    csv_bytes(fixtures(), data, impls)


# -- manifests ----------------------------------------------------------------------------------


def manifest_bytes(fx: Fixtures, data: bytes, impls: Sequence[str] | None = None, forged: bool = True,
                   full: bool = False) -> bool:
    """read_manifest returns or raises ManifestError; import_manifest refuses the same files and changes
    nothing when it does. ``forged``: ``data`` was not signed by us, so only a real manifest may pass.
    Returns whether the file was read."""
    path = fx.scratch(".kvm")
    read = False
    try:
        path.write_bytes(data)
        for name in impls or list(IMPLS):
            with use_impl(IMPLS[name]):
                read, value = _classified(lambda: kv_manifest.read_manifest(path), (ManifestError,))
                if read and forged:
                    assert data in fx.manifests.values(), "a forged or altered manifest was read as valid"
                before = State.of(fx.importer, full)
                imported, exc = _classified(lambda: fx.importer.import_manifest(path), (KeyvaultError,))
                if not read:
                    assert not imported, "import_manifest accepted a manifest read_manifest refused"
                    assert isinstance(exc, ManifestError), f"import_manifest refused with {exc!r}"
                if not imported:
                    after = State.of(fx.importer, full)
                    assert after == before, f"a refused import changed the store: {before} -> {after}"
    finally:
        path.unlink(missing_ok=True)
    return read


def check_manifest(data: bytes, impls: Sequence[str] | None = None, full: bool = False) -> None:
    fx = fixtures()
    mode, payload = split_mode(data, 3)
    if mode == 0:
        manifest_bytes(fx, payload, impls, forged=True, full=full)
    elif mode == 1:
        manifest_bytes(fx, signed_manifest(fx, payload), impls, forged=False, full=full)
    else:
        manifest_bytes(fx, signed_manifest(fx, patched(fx.manifest_parts[0], payload)), impls, forged=False, full=full)


# -- transfers and lots -------------------------------------------------------------------------


def transfer_bytes(data: bytes, forged: bool = True, fx: Fixtures | None = None) -> None:
    """read_transfer returns a Transfer or raises CustodyError/BadSignatureError."""
    read, value = _classified(lambda: kv_custody.read_transfer(data), (CustodyError, BadSignatureError))
    if read:
        assert isinstance(value, kv_custody.Transfer)
        assert len(value.sender) == 32 and len(value.recipient) == 32 and value.ranges, value
        if forged and fx is not None:
            assert data == fx.transfer, "an altered transfer was read as valid"


def check_transfer(data: bytes) -> None:
    fx = fixtures()
    mode, payload = split_mode(data, 3)
    if mode == 0:
        transfer_bytes(payload, True, fx)
    elif mode == 1:
        transfer_bytes(signed_transfer(fx.east, payload), False, fx)
    else:
        transfer_bytes(signed_transfer(fx.east, patched(fx.transfer_record, payload)), False, fx)


def lot_bytes(fx: Fixtures, data: bytes, forged: bool = True, full: bool = False) -> None:
    """open_lot returns or raises CustodyError/BadSignatureError; receive_lot refuses the same lots and
    changes nothing when it does (a double sale is refused but kept as evidence: not this fixture)."""
    opened, value = _classified(lambda: kv_custody.open_lot(data, fx.east), (CustodyError, BadSignatureError))
    if opened:
        sender, chain, manifest = value
        assert sender == fx.acme.public_key and chain, value
        if forged:
            assert data == fx.lot, "an altered lot was opened"
    path = fx.scratch(".kvl")
    try:
        path.write_bytes(data)
        before = State.of(fx.receiver, full)
        received, exc = _classified(lambda: fx.receiver.receive_lot(path, fx.east), (KeyvaultError,))
        if not opened:
            assert not received, "receive_lot accepted a lot open_lot refused"
            assert isinstance(exc, (CustodyError, BadSignatureError)), f"receive_lot refused with {exc!r}"
        if not received and "double sale" not in str(exc):
            after = State.of(fx.receiver, full)
            assert after == before, f"a refused lot changed the store: {before} -> {after}"
    finally:
        path.unlink(missing_ok=True)


def check_lot(data: bytes, full: bool = False) -> None:
    fx = fixtures()
    mode, payload = split_mode(data, 2)
    if mode == 0:
        lot_bytes(fx, payload, True, full)
    else:
        lot_bytes(fx, sealed_lot(fx, payload), False, full)


# -- bundles ------------------------------------------------------------------------------------


def bundle_checks(fx: Fixtures, data: bytes, impls: Sequence[str] | None = None,
                  key_material: bool = True) -> list[kv_bundle.Check]:
    """bundle.verify never raises: it returns Check lines, for any bytes. Returns the last answer."""
    checks: list[kv_bundle.Check] = []
    for name in impls or list(IMPLS):
        with use_impl(IMPLS[name]):
            for material in ((None, fx.key_material) if key_material else (None,)):
                start = time.monotonic()
                checks = kv_bundle.verify(data, fx.trusted, material)
                assert time.monotonic() - start < HANG_SECONDS, "bundle.verify hung"
                assert isinstance(checks, list) and checks, checks
                for check in checks:
                    assert isinstance(check, kv_bundle.Check), check
                    assert type(check.ok) is bool and isinstance(check.name, str) and isinstance(check.detail, str)
                    check.line()
    return checks


def check_bundle(data: bytes, impls: Sequence[str] | None = None) -> None:
    fx = fixtures()
    mode, payload = split_mode(data, 4)
    if mode == 0:
        bundle_checks(fx, payload, impls)
    elif mode == 1:
        bundle_checks(fx, bundle_with_header(fx, payload), impls)
    elif mode == 2:
        bundle_checks(fx, bundle_with_header(fx, patched(fx.manifest_parts[0], payload)), impls)
    else:
        bundle_checks(fx, patched(fx.bundle, payload), impls)


# -- checkpoint notes -----------------------------------------------------------------------------


def note_bytes(fx: Fixtures, data: bytes, forged: bool = True) -> None:
    """open_note returns a Checkpoint or raises ProofError; an altered real note never opens as
    another checkpoint (unknown extra signature lines are ignored by design)."""
    for origin in (None, fx.note_origin):
        opened, value = _classified(lambda: kv_checkpoint.open_note(data, origin, fx.note_verifiers),
                                    (ProofError,))
        if opened:
            assert isinstance(value, kv_checkpoint.Checkpoint)
            assert 0 <= value.size < 2**63 and len(value.root) == 32 and isinstance(value.origin, str)
            if forged:
                real = kv_checkpoint.open_note(fx.note, None, fx.note_verifiers)
                assert value == real, f"an altered note opened as {value}, not {real}"


def check_checkpoint(data: bytes) -> None:
    fx = fixtures()
    mode, payload = split_mode(data, 2)
    if mode == 0:
        note_bytes(fx, payload, True)
    else:
        note_bytes(fx, signed_note(fx, payload), False)


# -- identity and rotation files ----------------------------------------------------------------


def public_identity_bytes(data: bytes) -> None:
    ok, value = _classified(lambda: PublicIdentity.from_bytes(data), (IdentityError, BadSignatureError))
    if ok:
        assert isinstance(value, PublicIdentity) and len(value.public_key) == 32


def rotation_bytes(fx: Fixtures, data: bytes, forged: bool = True) -> None:
    ok, value = _classified(lambda: Rotation.from_bytes(data), (IdentityError, BadSignatureError))
    if ok:
        assert isinstance(value, Rotation)
        if forged:
            real = Rotation.from_bytes(fx.rotation)
            assert (value.old, value.new, value.at, value.record) == (real.old, real.new, real.at, real.record), \
                "an altered rotation file was read as another rotation"


def check_identity(data: bytes) -> None:
    fx = fixtures()
    mode, payload = split_mode(data, 4)
    if mode == 0:
        public_identity_bytes(payload)
    elif mode == 1:
        rotation_bytes(fx, payload, True)
    elif mode == 2:
        rotation_bytes(fx, signed_rotation(fx, payload), False)
    else:
        rotation_bytes(fx, signed_rotation(fx, patched(fx.rotation_record, payload)), False)


# -- the targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    check: Callable[[bytes], None]
    seeds: Callable[[Fixtures], list[bytes]]
    what: str


def _key_seeds(fx: Fixtures) -> list[bytes]:
    keys = fx.keys[:4]
    return ([b"\x00" + k.encode() for k in keys] + [from_text(k.lower().replace("-", " ")) for k in keys]
            + [b"\x00" + keys[0].replace("-", "").encode(), from_text("\uff11VSX-\u2014" + keys[3][5:]), b"\x00"])


def _verify_seeds(fx: Fixtures) -> list[bytes]:
    return (_key_seeds(fx) + [b"\x00" + "\n".join(fx.keys[:5]).encode(), b"\x00steam-aaaa-bbbb\nxbox12345678",
                              b"\x001000200030004000:s3cret-1\n1000200030004001:S3CRET-2"])


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("key", check_key, _key_seeds,
           "keyvault._fast.parse_key and normalize: _pure and _core agree exactly on every str"),
    Target("verify", check_verify, _verify_seeds,
           "Vault.verify / verify_many on a small store, on both implementations: a status for every str, "
           "no change to the store"),
    Target("csv", check_csv,
           lambda fx: list(fx.csv_files.values()) + [b"code\r\n\"a,b\"\r\nx\r\n", b"\xef\xbb\xbfcode\nA\n"],
           "keyvault.engine.issuing.read_cards_csv (and Vault.import_cards when it refuses)"),
    Target("manifest", check_manifest,
           lambda fx: [b"\x00" + m for m in fx.manifests.values()] + [b"\x01" + fx.manifest_parts[0],
                                                                         b'\x02{"count":3}'],
           "keyvault.formats.manifest.read_manifest and Vault.import_manifest (raw files; headers signed by a pinned "
           "supplier)"),
    Target("transfer", check_transfer,
           lambda fx: [b"\x00" + fx.transfer, b"\x01" + fx.transfer_record, b'\x02{"ranges":[[0,2]]}'],
           "keyvault.formats.custody.read_transfer (raw files; records signed by their own key)"),
    Target("lot", check_lot,
           lambda fx: [b"\x00" + fx.lot, b"\x01" + fx.lot_payload],
           "keyvault.formats.custody.open_lot and Vault.receive_lot (raw lots; payloads sealed and signed by a real "
           "sender)"),
    Target("bundle", check_bundle,
           lambda fx: [b"\x00" + fx.bundle, b"\x01" + fx.manifest_parts[0], b'\x02{"batch_number":1}',
                       b'\x03{"index":1}'],
           "keyvault.formats.bundle.verify never raises (raw bundles; the real bundle with a manifest header signed by "
           "a pinned supplier)"),
    Target("checkpoint", check_checkpoint,
           lambda fx: [b"\x00" + fx.note, b"\x01" + fx.note_text],
           "keyvault.formats.checkpoint.open_note (raw notes; note texts signed by a pinned key)"),
    Target("identity", check_identity,
           lambda fx: [b"\x00" + fx.public_identity, b"\x01" + fx.rotation, b"\x02" + fx.rotation_record,
                       b'\x03{"at":1}'],
           "PublicIdentity.from_bytes and Rotation.from_bytes (raw files; records signed by both keys)"),
]}

REGRESSIONS = Path(__file__).resolve().parent / "regressions"


def regression_files() -> list[tuple[str, Path]]:
    """(target, file) for every kept regression input."""
    out = []
    if REGRESSIONS.is_dir():
        for folder in sorted(p for p in REGRESSIONS.iterdir() if p.is_dir()):
            out += [(folder.name, f) for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    return out


__all__ = ["HANG_SECONDS", "IMPLS", "KNOWN_BUGS", "KNOWN_HITS", "REGRESSIONS", "TARGETS", "Fixtures", "KnownBug",
           "Target", "as_text", "fixtures", "from_text", "guard", "known_bug", "regression_files", "use_impl"]
