"""An independent tampering suite against trace bundles and ``keyvault verify-bundle``.

Genuine bundles come from real stores that lived every kind of event: issue, import (a
supplier's manifest, upstream cards), custody transfers, redeem, void, blacklist entries on
a key, a batch and a supplier and their lifts, holds confirmed, released and pending, and
the uses of a count-limited key. Each genuine bundle must pass; then hundreds of mutations,
generated field by field (removed, duplicated, retyped, re-encoded, look-alike, NUL, huge)
and by attack (a re-signed note, a glued newer checkpoint, another store's events, a loop
in custody...), must each fail with a FAIL line that names a rule of docs/provenance.md,
and never with a traceback or an unexplained "malformed input".
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_support import EXIT_OK, EXIT_REFUSED, kv
from conftest import issue
from keyvault import Identity, Vault
from keyvault.formats import bundle, cosignature, custody
from keyvault.formats.bundle import RULES, Trusted
from keyvault.formats.checkpoint import signature_line, split_note
from keyvault.clock import now_ms
from keyvault.formats.identity import PublicIdentity
from keyvault.formats.keyformat import key_material

#: Every name a FAIL line may carry: the rules, the finer rules of history-complete, and the CLI's key files.
RULE_NAMES = {rule.name for rule in RULES} | {"index-proof", "history-order", "trusted keys"}
T_HOUR = 3_600_000

# -- the world: stores that lived every kind of event -------------------------------------------------


@dataclass
class World:
    root: Path
    acme: Identity
    plat_id: Identity
    supplier: Vault  # the store that issued the batches and sent a lot
    platform: Vault
    other: Vault  # a second store pinning the same supplier, with the same batch
    witness: Identity
    keys: dict[str, str]  # what happened to it -> key
    manifests: dict[str, Path]
    trusted: Trusted
    engine_pub: Path
    acme_pub: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("tamper")
    files = root / "files"
    acme, plat_id = Identity.generate("Acme Games"), Identity.generate("Plat Co")
    witness = Identity.generate("witness.example")
    with Vault.init(root / "supplier") as supplier, Vault.init(root / "platform") as platform, \
            Vault.init(root / "other") as other:
        native = issue(supplier, acme, files, 40)
        limited = issue(supplier, acme, files, 8, uses=3)
        cards = root / "cards.csv"
        cards.write_text("code\nGIFTCODE0001XYZW\nGIFTCODE0002XYZW\nGIFTCODE0003XYZW\n")
        imported = supplier.import_cards(acme, "GIFT-10", cards, manifest_out=files / "cards.kvm")
        supplier.send_lot(acme, native.batch.id, plat_id.public, manifest=native.manifest, out=files / "a.kvl",
                          ranges="0-29")
        platform.trust(acme.public)
        platform.receive_lot(files / "a.kvl", plat_id, manifest_out=files / "plat.kvm")
        platform.import_manifest(limited.manifest)
        platform.import_manifest(files / "cards.kvm")
        other.trust(acme.public)
        other.import_manifest(native.manifest)
        other.redeem(native.keys[0], "OTHER-STORE-ORDER")
        k = native.keys
        platform.redeem(k[0], "ORD-0")
        platform.void(k[1], "refund")
        platform.blacklist("key", k[2], "leaked")
        platform.blacklist("key", k[3], "checking")
        platform.lift("key", k[3], "checked")
        platform.blacklist("batch", native.batch.id, "audit")
        platform.lift("batch", native.batch.id, "audit done")
        platform.blacklist("supplier", acme.id, "dispute")
        platform.lift("supplier", acme.id, "settled")
        platform.hold(k[4], "ORD-H", 3600)
        platform.hold(k[5], "ORD-C", 3600)
        platform.confirm("ORD-C")
        platform.hold(k[6], "ORD-R", 3600)
        platform.release("ORD-R")
        platform.redeem(limited.keys[0], "USE-1")
        platform.redeem(limited.keys[0], "USE-2")
        platform.redeem(limited.keys[1], "USE-A")
        platform.redeem(limited.keys[1], "USE-B")
        platform.redeem(limited.keys[1], "USE-C")
        platform.redeem("GIFTCODE0001XYZW", "ORD-GIFT")
        engine_pub = root / "engine.pub"
        engine_pub.write_bytes(platform.engine_identity.to_bytes())
        acme_pub = root / "acme.pub"
        acme_pub.write_bytes(acme.public.to_bytes())
        keys = {"redeemed": k[0], "void": k[1], "blacklisted": k[2], "lifted": k[3], "held": k[4],
                "confirmed": k[5], "released": k[6], "valid": k[7], "kept-by-supplier": k[35],
                "used": limited.keys[0], "exhausted": limited.keys[1], "imported-code": "GIFTCODE0001XYZW"}
        assert imported.kind == "code"
        yield World(root, acme, plat_id, supplier, platform, other, witness, keys,
                    {"native": native.manifest, "limited": limited.manifest}, Trusted(
                        suppliers=(acme.public,), engines=(platform.engine_identity,)), engine_pub, acme_pub)


def encode(doc: Any) -> bytes:
    return json.dumps(doc, indent=1).encode()


def verify(data: dict[str, Any] | bytes, trusted: Trusted, key: str | None = None, **kw: Any) -> list[bundle.Check]:
    raw = data if isinstance(data, bytes) else encode(data)
    return bundle.verify(raw, trusted, key_material(key) if key else None, **kw)


def passed(checks: list[bundle.Check]) -> bool:
    return bool(checks) and all(c.ok for c in checks)


def refused_by_a_named_rule(checks: list[bundle.Check]) -> bundle.Check:
    """The first FAIL line; it must name a documented rule and say what is wrong."""
    fails = [c for c in checks if not c.ok]
    assert fails, [c.line() for c in checks]
    first = fails[0]
    assert first.name in RULE_NAMES, first.line()
    assert "malformed input" not in first.detail, first.line()
    return first


def fresh_bundle(w: World, what: str, by_serial: bool = False) -> dict[str, Any]:
    key = w.keys[what]
    return w.platform.trace_bundle(w.platform.trace(key)["serial"] if by_serial else key)


def test_every_genuine_bundle_passes(world: World) -> None:
    expected = {"redeemed": "redeemed", "void": "void", "blacklisted": "blacklisted", "lifted": "valid",
                "held": "held", "confirmed": "redeemed", "released": "valid", "valid": "valid",
                "kept-by-supplier": "valid", "used": "valid", "exhausted": "exhausted", "imported-code": "redeemed"}
    kinds: set[str] = set()
    for what, status in expected.items():
        for by_serial in (False, True):
            doc = fresh_bundle(world, what, by_serial)
            checks = verify(doc, world.trusted, None if by_serial else world.keys[what])
            assert passed(checks), (what, [c.line() for c in checks])
            assert doc["status"]["status"] == status, what
            kinds |= {c.detail.split(": ")[1].split(",")[0] for c in checks if c.name == "events"}
    issuer = Trusted((world.acme.public,), (), (world.supplier.engine_identity,))
    for what in ("valid", "kept-by-supplier", "used", "imported-code"):
        key = world.keys[what]
        doc = world.supplier.trace_bundle(key)
        checks = verify(doc, issuer, key)
        assert passed(checks), (what, [c.line() for c in checks])
        kinds |= {c.detail.split(": ")[1].split(",")[0] for c in checks if c.name == "events"}
    assert {"issue", "import", "transfer", "redeem", "void", "blacklist", "lift", "hold", "confirm", "release",
            "use", "trust", "supplier"} <= kinds


# -- field by field: every JSON value changed, removed, duplicated, retyped, re-encoded ---------------

LOOKALIKE = str.maketrans("aceopxyABCEHKMOPTXy", "асеорхуАВСЕНКМОРТХу")
B64_FIELDS = ("manifest", "leaf")  # and custody's items
HEX_FIELDS = ("commitment", "salt", "manifest_proof", "proof", "siblings", "subject", "other")


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every value's path; of each list, its first and last element."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, path + (key,))
    elif isinstance(value, list) and value:
        for i in sorted({0, len(value) - 1}):
            yield from _paths(value[i], path + (i,))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _kind(path: tuple[Any, ...]) -> str:
    names = [p for p in path if isinstance(p, str)]
    last = names[-1] if names else ""
    if last in B64_FIELDS or (last == "custody" and isinstance(path[-1], int)):
        return "b64"
    if last in HEX_FIELDS:
        return "hex"
    return "other"


def _re_encodings(text: str, kind: str) -> Iterator[tuple[str, str]]:
    if kind == "b64":
        yield "url-safe alphabet", text.replace("+", "-").replace("/", "_") if "+" in text or "/" in text \
            else text[:-4] + "-_" + text[-2:]
        yield "padding stripped", text.rstrip("=") if text.endswith("=") else text[:-1]
        yield "extra padding", text + "=="
        yield "a newline inside", text[:8] + "\n" + text[8:]
        yield "a space at the end", text + " "
        yield "non-zero padding bits", _noncanonical(text)
    if kind == "hex":
        yield "upper-case hex", text.upper() if text.upper() != text else "A" + text[1:]
        yield "0x prefix", "0x" + text
        yield "trailing newline", text + "\n"
        yield "a space inside", text[:2] + " " + text[2:]
        yield "odd length", text[:-1]
        yield "base64 instead of hex", base64.b64encode(bytes.fromhex(text)).decode()


def _noncanonical(text: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = text.rstrip("=")
    pad = len(text) - len(body)
    if not pad:
        return text + "A==="
    return body[:-1] + alphabet[alphabet.index(body[-1]) | (0b1111 if pad == 2 else 0b11)] + "=" * pad


def field_mutations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any] | bytes]]:
    """Systematic changes of every field of ``doc``: each yields (label, changed doc or raw bytes)."""
    for path, value in _paths(doc):
        if not path:
            continue
        label = "/".join(map(str, path))

        def changed(what: str, new: Any, p: tuple[Any, ...] = path) -> tuple[str, dict[str, Any]]:
            assert json.dumps(new) != json.dumps(_get(doc, p)), (label, what)  # never a change that changes nothing
            d = copy.deepcopy(doc)
            _set(d, p, new)
            return f"{label}: {what}", d

        if isinstance(path[-1], str):
            d = copy.deepcopy(doc)
            del _get(d, path[:-1])[path[-1]]
            yield f"{label}: removed", d
            yield f"{label}: named twice", duplicated(doc, path)
        if isinstance(value, bool) or value is None:
            yield changed("0 instead", 0)
            yield changed("text instead", "null" if value is None else "true")
        elif isinstance(value, int):
            yield changed("as text", str(value))
            yield changed("as float", float(value))
            yield changed("+0.5", value + 0.5)
            yield changed("negative", -1 - value)
            yield changed("2**63", 2**63)
            yield changed("2**64", 2**64)
            yield changed("10**30", 10**30)
            yield changed("true", True)
            yield changed("+1", value + 1)
        elif isinstance(value, str):
            yield changed("as number", 7)
            yield changed("empty", "")
            yield changed("NUL appended", value + "\x00")
            yield changed("very long", value + "A" * (1 << 20))
            if value.translate(LOOKALIKE) != value:
                yield changed("look-alike letters", value.translate(LOOKALIKE))
            for what, new in _re_encodings(value, _kind(path)):
                if new != value:
                    yield changed(what, new)
        elif isinstance(value, list):
            if value:
                yield changed("empty list", [])
            yield changed("object instead", {})
            if value:
                yield changed("first item twice", [value[0], *value])
                yield changed("last item dropped", value[:-1])
                if len(value) > 1:
                    yield changed("reversed", value[::-1])
        elif isinstance(value, dict):
            yield changed("empty object", {})
            yield changed("list instead", [])
            yield changed("an extra field", dict(value, extra="trust me"))


def duplicated(doc: dict[str, Any], path: tuple[Any, ...]) -> bytes:
    """``doc`` as JSON whose object at ``path[:-1]`` names field ``path[-1]`` twice: first a changed value."""
    target = _get(doc, path[:-1])
    name = path[-1]

    def enc(value: Any) -> str:
        if isinstance(value, dict):
            pairs = list(value.items())
            if value is target:
                decoy = "decoy" if not isinstance(value[name], str) else value[name] + "x"
                pairs.insert(0, (name, decoy))
            return "{" + ",".join(f"{json.dumps(k)}:{enc(v)}" for k, v in pairs) + "}"
        if isinstance(value, list):
            return "[" + ",".join(enc(v) for v in value) + "]"
        return json.dumps(value)

    return enc(doc).encode()


def _first_fail(checks: list[bundle.Check]) -> str:
    return next(c.name for c in checks if not c.ok)


@pytest.mark.parametrize("what", ["lifted", "used", "confirmed"])
def test_every_field_mutation_is_refused_by_a_named_rule(world: World, what: str) -> None:
    doc = fresh_bundle(world, what)
    key = world.keys[what]
    assert passed(verify(doc, world.trusted, key))
    count, survived = 0, []
    for label, mutated in field_mutations(doc):
        count += 1
        checks = verify(mutated, world.trusted, key)  # never raises
        if passed(checks):
            survived.append(label)
            continue
        first = refused_by_a_named_rule(checks)
        if any(word in label for word in ("named twice", "as text", "as float", "+0.5", "2**64", "10**30",
                                          "true", "as number", "object instead", "list instead", "extra field",
                                          "0 instead", "upper-case hex", "0x prefix",
                                          "trailing newline", "a space inside", "odd length", "base64 instead")):
            assert first.name == "bundle", (label, first.line())  # a document read strictly, before any rule
    assert count >= 300, count
    assert survived == [], "\n".join(survived)


# -- the checkpoint note: lines added, reordered, doubled; notes the engine itself signed oddly ------


def _resign(w: World, note: str, lines: list[str] | None = None, *, size: int | None = None,
            root: bytes | None = None, extensions: tuple[str, ...] | None = None) -> str:
    """A note the store's own engine key signed (the engine misbehaving, or its key stolen)."""
    text, _ = split_note(note.encode())
    body = text.decode().split("\n")[:-1]
    if lines is not None:
        body = lines
    else:
        body = [body[0], str(size) if size is not None else body[1],
                base64.b64encode(root).decode() if root is not None else body[2],
                *(extensions if extensions is not None else body[3:])]
    engine = w.platform.engine.log.engine
    origin = w.platform.engine.log.origin
    # Checkpoint() refuses what a verifier must refuse too, so sign the text directly.
    data = "".join(line + "\n" for line in body).encode()
    return (data + b"\n" + signature_line(data, origin, engine.signing_key)).decode()


def note_mutations(w: World, doc: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(label, new note, the rule expected first to fail)."""
    note = doc["checkpoint"]
    text, block = note.split("\n\n")
    body = text.split("\n")
    sig = block.rstrip("\n")
    # Tampered after signing: the signature no longer holds.
    yield "a line added to the body", "\n".join(body + ["extra line"]) + "\n\n" + block, "checkpoint signature"
    yield "size and root swapped", "\n".join([body[0], body[2], body[1], *body[3:]]) + "\n\n" + block, \
        "checkpoint signature"
    yield "time line twice", "\n".join(body + [body[3]]) + "\n\n" + block, "checkpoint signature"
    yield "time line dropped", "\n".join(body[:3] + body[4:]) + "\n\n" + block, "checkpoint signature"
    yield "the engine's signature line twice", text + "\n\n" + sig + "\n" + sig + "\n", "checkpoint signature"
    yield "CRLF line ends", note.replace("\n", "\r\n"), "checkpoint signature"
    yield "a trailing space on the size", note.replace("\n" + body[1] + "\n", "\n" + body[1] + " \n", 1), \
        "checkpoint signature"
    yield "no newline after the signature", note.rstrip("\n"), "checkpoint signature"
    yield "signature line not canonical base64", text + "\n\n" + _noncanonical_sig(sig) + "\n", \
        "checkpoint signature"
    yield "two blank lines", text + "\n\n\n" + block, "checkpoint signature"
    yield "signature name changed", note.replace("\u2014 keyvault/", "\u2014 keyvault-", 1), "checkpoint signature"
    yield "signature lines: 101", note + ("\u2014 someone " + base64.b64encode(bytes(68)).decode() + "\n") * 100, \
        "checkpoint signature"
    # Signed by the genuine engine key: what a verifier must still refuse.
    root = base64.b64decode(body[2])
    yield "signed with its time in the future", _resign(w, note, extensions=(f"time {4 * 10**12}", *body[4:])), \
        "checkpoint age"
    yield "signed with two time lines", _resign(w, note, extensions=(body[3], body[3], *body[4:])), "checkpoint age"
    yield "signed without a time line", _resign(w, note, extensions=tuple(body[4:])), "checkpoint age"
    yield "signed with the index line twice", _resign(w, note, extensions=(body[3], body[4], body[4])), \
        "index-proof"
    yield "signed without the index line", _resign(w, note, extensions=(body[3],)), "history-complete"
    yield "signed at size 2**63", _resign(w, note, size=2**63), "checkpoint signature"
    yield "signed at size 2**63 - 1", _resign(w, note, size=2**63 - 1), "events"
    yield "signed at size 2**64", _resign(w, note, size=2**64), "checkpoint signature"
    yield "signed with size and root swapped", _resign(w, note, [body[0], body[2], body[1], *body[3:]]), \
        "checkpoint signature"
    yield "signed at size 1", _resign(w, note, size=1), "events"
    yield "signed with another root", _resign(w, note, root=bytes(32)), "events"
    yield "signed with a short root", _resign(w, note, root=root[:31]), "checkpoint signature"
    yield "signed with size 007", _resign(w, note, [body[0], "00" + body[1], *body[2:]]), "checkpoint signature"
    yield "signed with an empty extension line", _resign(w, note, [*body[:3], "", *body[3:]]), \
        "checkpoint signature"
    yield "signed for another origin", _resign(w, note, ["keyvault/0000000000000000", *body[1:]]), \
        "checkpoint origin"


def _noncanonical_sig(line: str) -> str:
    head, _, encoded = line.rpartition(" ")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = encoded.rstrip("=")
    pad = len(encoded) - len(body)
    bits = 0b1111 if pad == 2 else 0b11
    return f"{head} {body[:-1]}{alphabet[alphabet.index(body[-1]) | bits]}{'=' * pad}"


def test_checkpoint_note_mutations_are_refused(world: World) -> None:
    doc = fresh_bundle(world, "redeemed", by_serial=True)
    count = 0
    for label, note, rule in note_mutations(world, doc):
        count += 1
        checks = verify(dict(doc, checkpoint=note), world.trusted)
        assert not passed(checks), label
        first = refused_by_a_named_rule(checks)
        assert first.name == rule, (label, first.line())
    assert count >= 25


def test_a_signature_line_by_a_key_nobody_trusts_is_ignored(world: World) -> None:
    """C2SP signed notes: verifiers ignore signatures by unknown keys, so appending one changes nothing."""
    doc = fresh_bundle(world, "valid", by_serial=True)
    stranger = Identity.generate("stranger")
    text, _ = split_note(doc["checkpoint"].encode())
    note = doc["checkpoint"] + signature_line(text, "stranger", stranger.signing_key).decode()
    assert passed(verify(dict(doc, checkpoint=note), world.trusted))


# -- witnesses --------------------------------------------------------------------------------------


def _cosigned(doc: dict[str, Any], witness: Identity, timestamp: int | None = None, name: str | None = None) -> str:
    text, _ = split_note(doc["checkpoint"].encode())
    at = now_ms() // 1000 if timestamp is None else timestamp
    return doc["checkpoint"] + cosignature.line(text, name or witness.name, witness.signing_key, at).decode()


def test_witness_tampering_is_refused(world: World) -> None:
    doc = fresh_bundle(world, "valid", by_serial=True)
    w = world.witness
    with_witness = Trusted(world.trusted.suppliers, (), world.trusted.engines, (w.public,))
    good = _cosigned(doc, w)
    assert passed(verify(dict(doc, checkpoint=good), with_witness))
    line = good[len(doc["checkpoint"]):]
    cases = {
        "not cosigned": doc["checkpoint"],
        "the same cosignature twice": good + line,
        "two cosignatures by one witness, at two times": good + line.replace(line, "") +
        _cosigned(doc, w, now_ms() // 1000 - 5)[len(doc["checkpoint"]):],
        "cosigned in the future": _cosigned(doc, w, now_ms() // 1000 + 86_400),
        "cosignature of another checkpoint": doc["checkpoint"] + _cosigned(
            dict(doc, checkpoint=_resign(world, doc["checkpoint"], size=1)), w)[len(
                _resign(world, doc["checkpoint"], size=1)):],
        "cosigned by another key under the witness's name": _cosigned(doc, Identity.generate("x"), name=w.name),
    }
    for label, note in cases.items():
        checks = verify(dict(doc, checkpoint=note), with_witness)
        first = refused_by_a_named_rule(checks)
        assert first.name == "witness cosignatures", (label, first.line())
    # A witness that is also a party to the story is no witness: given also as a supplier, or the supplier's key
    # itself cosigning as a witness.
    doubled = Trusted(world.trusted.suppliers + (w.public,), (), world.trusted.engines, (w.public,))
    assert _first_fail(verify(dict(doc, checkpoint=good), doubled)) == "witness cosignatures"
    by_supplier = _cosigned(doc, world.acme, name="acme-games")
    acme_witness = PublicIdentity("acme-games", world.acme.prefix, world.acme.public_key)
    as_witness = Trusted(world.trusted.suppliers, (), world.trusted.engines, (acme_witness,))
    assert _first_fail(verify(dict(doc, checkpoint=by_supplier), as_witness)) == "witness cosignatures"
    as_engine = Trusted(world.trusted.suppliers, (), world.trusted.engines,
                        (world.platform.engine_identity,))
    assert _first_fail(verify(dict(doc, checkpoint=good), as_engine)) == "witness cosignatures"


# -- proofs -------------------------------------------------------------------------------------------


def test_proofs_of_the_wrong_length_or_for_another_subject_are_refused(world: World) -> None:
    a, b = fresh_bundle(world, "redeemed"), fresh_bundle(world, "void")
    # No event between them: the same size, root and subject index (the note may be signed again, a second later).
    assert a["checkpoint"].split("\n\n")[0].split("\n")[1:3] == b["checkpoint"].split("\n\n")[0].split("\n")[1:3]
    assert a["checkpoint"].split("\n\n")[0].split("\n")[4] == b["checkpoint"].split("\n\n")[0].split("\n")[4]
    key = world.keys["redeemed"]
    extra = "ab" * 32
    cases: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
        ("manifest proof one hash long", lambda d: d["manifest_proof"].append(extra), "key in manifest"),
        ("manifest proof one hash short", lambda d: d["manifest_proof"].pop(), "key in manifest"),
        ("event proof one hash long", lambda d: d["events"][-1]["proof"].append(extra), "events"),
        ("event proof one hash short", lambda d: d["events"][-1]["proof"].pop(), "events"),
        ("event proof empty", lambda d: d["events"][-1].__setitem__("proof", []), "events"),
        ("index proof one sibling long", lambda d: d["index_proofs"][0]["siblings"].append(extra), "index-proof"),
        ("index proof one sibling short", lambda d: d["index_proofs"][0]["siblings"].pop(), "index-proof"),
        ("index proof of another key", lambda d: d["index_proofs"].__setitem__(0, b["index_proofs"][0]),
         "index-proof"),
        ("index proof of another key, as this key", lambda d: d["index_proofs"][0].update(
            siblings=b["index_proofs"][0]["siblings"], latest=b["index_proofs"][0]["latest"]), "index-proof"),
        ("index proofs reordered", lambda d: d["index_proofs"].reverse(), "index-proof"),
        ("index proof twice", lambda d: d["index_proofs"].append(d["index_proofs"][0]), "index-proof"),
        ("index proof dropped", lambda d: d["index_proofs"].pop(), "index-proof"),
        ("the other key's events and status", lambda d: d.update(events=b["events"], status=b["status"]), "events"),
    ]
    for label, edit, rule in cases:
        d = copy.deepcopy(a)
        edit(d)
        checks = verify(d, world.trusted, key)
        if rule is None:
            assert passed(checks), (label, [c.line() for c in checks])
            continue
        assert refused_by_a_named_rule(checks).name == rule, (label, [c.line() for c in checks])


# -- whole-bundle attacks -------------------------------------------------------------------------------


def test_events_from_a_second_store_with_the_same_supplier_are_refused(world: World) -> None:
    ours = fresh_bundle(world, "redeemed", by_serial=True)
    theirs = world.other.trace_bundle(world.keys["redeemed"])
    other_trusted = Trusted(world.trusted.suppliers, (), (world.other.engine_identity,))
    assert passed(verify(theirs, other_trusted, world.keys["redeemed"]))
    # Their redeem of the same key (another order), spliced into our bundle; then their whole log with ours.
    d = copy.deepcopy(ours)
    d["events"] = sorted(d["events"] + theirs["events"][-1:], key=lambda e: e["index"])
    assert refused_by_a_named_rule(verify(d, world.trusted)).name == "events"
    d = dict(copy.deepcopy(ours), events=theirs["events"], index_proofs=theirs["index_proofs"])
    assert refused_by_a_named_rule(verify(d, world.trusted)).name == "events"
    d = dict(copy.deepcopy(theirs), checkpoint=ours["checkpoint"], salt=None)
    assert refused_by_a_named_rule(verify(d, world.trusted)).name == "events"
    both = Trusted(world.trusted.suppliers, (), (world.platform.engine_identity, world.other.engine_identity))
    assert refused_by_a_named_rule(verify(d, both)).name == "events"


def test_a_bundle_carrying_another_keys_manifest_is_refused(world: World) -> None:
    ours = fresh_bundle(world, "valid", by_serial=True)
    used = fresh_bundle(world, "used", by_serial=True)
    for field in ("manifest", "commitment", "manifest_proof"):
        d = dict(copy.deepcopy(ours), **{field: used[field]})
        assert refused_by_a_named_rule(verify(d, world.trusted)).name in ("key in manifest", "manifest signature")
    d = dict(copy.deepcopy(ours), manifest=used["manifest"], commitment=used["commitment"],
             manifest_proof=used["manifest_proof"], index=used["index"])
    assert refused_by_a_named_rule(verify(d, world.trusted)).name == "key in manifest"
    d["serial"] = used["serial"]
    assert refused_by_a_named_rule(verify(d, world.trusted)).name in ("custody", "events")
    d["custody"] = used["custody"]
    assert refused_by_a_named_rule(verify(d, world.trusted)).name == "events"


def test_an_older_bundle_with_a_newer_checkpoint_glued_on_is_refused(world: World, tmp_path: Path) -> None:
    with Vault.init(tmp_path / "store") as store:
        acme = world.acme
        b = issue(store, acme, tmp_path / "files", 10)
        key = b.keys[3]
        old = store.trace_bundle(key)
        trusted = Trusted((acme.public,), (), (store.engine_identity,))
        assert passed(verify(old, trusted, key)) and old["status"]["status"] == "valid"
        store.redeem(key, "LATER")
        new = store.trace_bundle(key)
        assert passed(verify(new, trusted, key)) and new["status"]["status"] == "redeemed"
        size = int(new["checkpoint"].split("\n")[1])
        with store.engine.store.read() as txn:  # the log is public (tiles): anyone can prove old events anew
            reproved = [dict(e, proof=[h.hex() for h in store.engine.log.inclusion(txn, e["index"], size)])
                        for e in old["events"]]
    glued = dict(copy.deepcopy(old), checkpoint=new["checkpoint"])
    assert refused_by_a_named_rule(verify(glued, trusted, key)).name == "events"
    glued["events"] = reproved
    assert passed([c for c in verify(glued, trusted, key) if c.name == "events"])
    assert refused_by_a_named_rule(verify(glued, trusted, key)).name == "index-proof"
    glued["index_proofs"] = new["index_proofs"]
    assert refused_by_a_named_rule(verify(glued, trusted, key)).name == "history-complete"


def _hop(sender: Identity, to: Identity, previous: custody.Transfer | None, manifest: str, batch: str,
         count: int, ranges: custody.Ranges) -> custody.Transfer:
    return custody.make_transfer(sender, to.name, to.public_key, batch, manifest, count, ranges,
                                 previous.id if previous else manifest, now_ms())


def test_custody_chains_with_a_loop_are_refused(world: World) -> None:
    doc = fresh_bundle(world, "valid", by_serial=True)
    (first,) = [custody.read_transfer(base64.b64decode(h)) for h in doc["custody"]]
    assert first.sender == world.acme.public_key and first.recipient == world.plat_id.public_key
    batch, mid, count = first.fields.batch, first.manifest, first.fields.count
    plat, acme = world.plat_id, world.acme
    back = _hop(plat, acme, first, mid, batch, count, first.ranges)  # Plat -> Acme: the keys come back
    again = _hop(acme, plat, back, mid, batch, count, first.ranges)  # Acme -> Plat once more
    self_hop = _hop(plat, plat, first, mid, batch, count, first.ranges)  # Plat -> Plat
    for label, chain in {"to its own sender": [first, self_hop], "back to a holder": [first, back],
                         "round the loop": [first, back, again], "hop 1 twice": [first, first],
                         "hops reversed": [back, first]}.items():
        d = dict(copy.deepcopy(doc), custody=[base64.b64encode(h.data).decode() for h in chain])
        first_fail = refused_by_a_named_rule(verify(d, world.trusted))
        assert first_fail.name == "custody", (label, first_fail.line())
    renamed = custody.make_transfer(acme, plat.name, plat.public_key, "AAAA-000", mid, count, first.ranges, mid,
                                    now_ms())  # the manifest's id, another batch's name
    d = dict(copy.deepcopy(doc), custody=[base64.b64encode(renamed.data).decode()])
    assert refused_by_a_named_rule(verify(d, world.trusted)).name == "custody"
    with pytest.raises(custody.CustodyError, match="loop"):
        custody.check_chain(acme.public_key, mid, count, [first, back, again])


# -- the command line: exit codes, FAIL lines, key files with edited roles ----------------------------


def test_the_cli_refuses_with_a_fail_line_and_says_what_exit_codes_mean(world: World, tmp_path: Path) -> None:
    doc = fresh_bundle(world, "redeemed", by_serial=True)
    good = tmp_path / "good.json"
    good.write_bytes(encode(doc))
    args = ["--supplier", str(world.acme_pub), "--engine", str(world.engine_pub)]
    result = kv("verify-bundle", good, *args)
    assert result.exit_code == EXIT_OK and result.output.strip().endswith("ALL CHECKS PASSED"), result.output
    # A sample of the mutations, through the command itself.
    samples = list(field_mutations(doc))[::25]
    assert len(samples) >= 10
    for n, (label, mutated) in enumerate(samples):
        path = tmp_path / f"m{n}.json"
        path.write_bytes(mutated if isinstance(mutated, bytes) else encode(mutated))
        result = kv("verify-bundle", path, *args)
        assert result.exit_code == EXIT_REFUSED, (label, result.output)
        fails = [line for line in result.output.splitlines() if line.startswith("FAIL ")]
        assert fails and fails[0].split(":")[0][5:] in RULE_NAMES, (label, result.output)
        assert "Traceback" not in result.output
    # Not a bundle at all: still a FAIL line, exit 3.
    for junk in (b"", b"\x00" * 10, b"\xef\xbb\xbf{}", b"[" * 100_000, "{\"format\": \"\ud800\"}".encode("utf-8",
                                                                                                      "surrogatepass")):
        path = tmp_path / "junk.json"
        path.write_bytes(junk)
        result = kv("verify-bundle", path, *args)
        assert result.exit_code == EXIT_REFUSED and "FAIL bundle: " in result.output, (junk[:10], result.output)
    # The command line itself wrong: exit 2; the bundle file unreadable: exit 1.
    assert kv("verify-bundle", good).exit_code == 2
    assert kv("verify-bundle", good, *args, "--max-age", "soon").exit_code == 2
    assert kv("verify-bundle", tmp_path / "missing.json", *args).exit_code == 1
    assert kv("verify-bundle", tmp_path, *args).exit_code in (1, 2)  # a directory (click says so: 2)


def test_a_key_file_with_an_edited_role_or_name_is_refused_with_a_fail_line(world: World, tmp_path: Path) -> None:
    doc = fresh_bundle(world, "redeemed", by_serial=True)
    path = tmp_path / "b.json"
    path.write_bytes(encode(doc))
    declared = tmp_path / "engine-declared.pub"
    declared.write_bytes(world.platform.engine_identity.to_bytes())
    assert json.loads(declared.read_text())["roles"] == ["engine"]
    acme_declared = tmp_path / "acme-declared.pub"
    acme_declared.write_bytes(world.acme.public_with_roles(("supplier",)).to_bytes())
    assert kv("verify-bundle", path, "--trust", acme_declared, "--trust", declared).exit_code == EXIT_OK

    def edited(source: Path, change: Callable[[dict[str, Any]], None]) -> Path:
        d = json.loads(source.read_text())
        change(d)
        out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}.pub"
        out.write_text(json.dumps(d))
        return out

    cases = {
        "a role added": edited(declared, lambda d: d.__setitem__("roles", ["engine", "supplier"])),
        "a role swapped": edited(acme_declared, lambda d: d.__setitem__("roles", ["engine"])),
        "roles without a signature": edited(acme_declared, lambda d: d.pop("roles_signature")),
        "the name changed": edited(acme_declared, lambda d: d.__setitem__("name", "Acme Gamez")),
        "the fingerprint changed": edited(acme_declared, lambda d: d.__setitem__("fingerprint", "0" * 39)),
        "the roles named twice": _twice(acme_declared, "roles", '["supplier","engine"]'),
    }
    for label, bad in cases.items():
        result = kv("verify-bundle", path, "--trust", bad, "--trust", declared, "--trust", acme_declared)
        assert result.exit_code == EXIT_REFUSED, (label, result.output)
        assert result.output.startswith("FAIL trusted keys: --trust "), (label, result.output)
        assert "Traceback" not in result.output


def _twice(source: Path, field: str, decoy: str) -> Path:
    text = source.read_text()
    out = source.with_name(source.stem + "-twice.pub")
    out.write_text(text.replace("{", "{" + json.dumps(field) + ":" + decoy + ",", 1))
    return out


# -- manifest import: the same tampering at the door -----------------------------------------------


def test_tampered_manifests_are_refused_at_import_and_nothing_changes(world: World, tmp_path: Path) -> None:
    from keyvault.formats.envelope import pack
    from keyvault.formats.manifest import MAGIC, PAYLOAD_TYPE
    from keyvault.errors import KeyvaultError

    source = world.manifests["native"].read_bytes()
    head = len(MAGIC) + 32 + 64
    length = int.from_bytes(source[head:head + 4], "big")
    header, body = source[head + 4:head + 4 + length], source[head + 4 + length:]
    fields = json.loads(header)

    def resigned(new_header: bytes) -> bytes:  # signed by the genuine supplier key: only the encoding differs
        return pack(MAGIC, world.acme.public_key, world.acme.sign(PAYLOAD_TYPE, new_header), new_header) + body

    twice = header.replace(b"{", b'{"prefix":"' + b"ZZZZ" + b'",', 1)

    def with_body(new_body: bytes, source_header: dict[str, Any]) -> bytes:  # the supplier signs a body of its own
        changed = dict(source_header, body_length=len(new_body), body_sha256=hashlib.sha256(new_body).hexdigest())
        return resigned(json.dumps(changed, sort_keys=True, separators=(",", ":")).encode())[:-len(body)] + new_body

    cards = world.root / "pairs.csv"
    cards.write_text("card_number,password\n4000123412341234,secret-pass-1\n4000123412345678,secret-pass-2\n")
    with Vault.init(tmp_path / "pairs-store") as issuer:
        issuer.import_cards(world.acme, "PAIRS", cards, manifest_out=tmp_path / "pairs.kvm")
    pairs = (tmp_path / "pairs.kvm").read_bytes()
    plength = int.from_bytes(pairs[head:head + 4], "big")
    pheader, pbody = json.loads(pairs[head + 4:head + 4 + plength]), pairs[head + 4 + plength:]

    def pair_body(new_body: bytes) -> bytes:
        changed = dict(pheader, body_length=len(new_body), body_sha256=hashlib.sha256(new_body).hexdigest())
        raw = json.dumps(changed, sort_keys=True, separators=(",", ":")).encode()
        return pack(MAGIC, world.acme.public_key, world.acme.sign(PAYLOAD_TYPE, raw), raw) + new_body

    variants = {
        "bytes after the last commitment": with_body(body + b"\x00", fields),
        "a card number that is not UTF-8": pair_body(pbody[:-3] + b"\xff" + pbody[-2:]),
        "a card number cut short": pair_body(pbody[:-1]),
        "bytes after the last card number": pair_body(pbody + b"\x01X"),
        "a field named twice": resigned(twice),
        "merkle root with a trailing newline": resigned(header.replace(
            fields["merkle_root"].encode(), fields["merkle_root"].encode() + b"\\n")),
        "salt in upper case": resigned(header.replace(fields["salt"].encode(), fields["salt"].upper().encode())),
        "an unsigned change": source[:head + 4] + header.replace(b'"count":40', b'"count":41') + body,
        "truncated": source[:-1],
    }
    with Vault.init(tmp_path / "fresh") as fresh:
        fresh.trust(world.acme.public)
        before = fresh.verify_log()
        for label, data in variants.items():
            path = tmp_path / f"{label.replace(' ', '-')}.kvm"
            path.write_bytes(data)
            with pytest.raises(KeyvaultError) as caught:
                fresh.import_manifest(path)
            assert str(caught.value), label
            assert fresh.verify_log() == before, label
            assert not fresh.catalog().batches, label
        # The genuine files import; the pair body re-signed unchanged (the variants' starting point) is that file.
        assert fresh.import_manifest(world.manifests["native"])[1]
    with Vault.init(tmp_path / "fresh-pairs") as fresh:
        fresh.trust(world.acme.public)
        assert fresh.import_manifest(tmp_path / "pairs.kvm")[1]
        again = tmp_path / "pairs-resigned.kvm"
        again.write_bytes(pair_body(pbody))
        assert fresh.import_manifest(again)[1] is False


def test_the_suite_is_large(world: World) -> None:
    doc = fresh_bundle(world, "lifted")
    assert len(list(field_mutations(doc))) + len(list(note_mutations(world, doc))) >= 300
