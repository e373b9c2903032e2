"""Identities beyond signing: fingerprints, public identity files, key rotation, and ``keyvault identity``.

A public identity file is refused whenever anything in it is off (its fingerprint is a hint
for people, but one that does not match the key means the file was edited). A rotation is
refused unless the old key and the new key both signed its exact record bytes, checked before
the record is read.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from keyvault import BadSignatureError, Identity, IdentityError, Vault
from keyvault.formats.identity import (
    ROTATION_FORMAT,
    PublicIdentity,
    Rotation,
    fingerprint,
    public_part,
    supplier_id,
    verify_signature,
)

from cli_support import EXIT_ERROR, EXIT_USAGE, kv, ok, one_json

FINGERPRINT = re.compile(r"^[0-9a-f]{4}(:[0-9a-f]{4}){7}$")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secret_b64(identity_file: Path) -> str:
    """The base64 secret key inside a secret identity file (what must never be printed)."""
    secret: str = json.loads(identity_file.read_text())["secret_key"]
    return secret


@pytest.fixture
def acme() -> Identity:
    return Identity.generate("Acme Games")


# -- fingerprints -------------------------------------------------------------------------------


def test_fingerprint_is_16_bytes_of_tagged_sha256_in_groups_of_4() -> None:
    # Pinned values: a change here breaks every fingerprint people have already compared.
    assert fingerprint(bytes(32)) == "0b10:82d7:ed98:67f7:eb6e:477e:6eca:d581"
    assert fingerprint(bytes(range(32))) == "1eed:f460:a559:fd2a:9125:9233:f265:236a"


def test_fingerprint_format_and_stability(acme: Identity) -> None:
    fp = acme.fingerprint
    assert FINGERPRINT.match(fp)
    assert fp == fingerprint(acme.public_key) == acme.public.fingerprint
    assert fp == PublicIdentity("renamed", 0, acme.public_key).fingerprint  # the key alone decides
    assert fp != Identity.generate("Acme Games").fingerprint
    assert fp.replace(":", "") != acme.id  # not the supplier id: another tag
    assert acme.public.id == acme.id == supplier_id(acme.public_key)


def test_fingerprint_survives_save_and_load(tmp_path: Path, acme: Identity) -> None:
    acme.save(tmp_path / "acme.key")
    assert Identity.load(tmp_path / "acme.key").fingerprint == acme.fingerprint


# -- public identity files ----------------------------------------------------------------------


def test_public_part_of_an_identity(acme: Identity) -> None:
    pub = acme.public
    assert (pub.name, pub.prefix, pub.public_key) == (acme.name, acme.prefix, acme.public_key)
    assert pub.prefix_text == acme.prefix_text
    assert not hasattr(pub, "signing_key")


def test_public_file_round_trip(tmp_path: Path, acme: Identity) -> None:
    path = acme.public.save(tmp_path / "acme.pub")
    assert mode(path) == 0o644
    assert path.read_bytes() == acme.public.to_bytes()
    doc = json.loads(path.read_text())
    assert doc == {"kind": "keyvault-public-identity", "version": 1, "name": "Acme Games",
                   "prefix": acme.prefix_text, "public_key": base64.b64encode(acme.public_key).decode(),
                   "fingerprint": acme.fingerprint}
    assert PublicIdentity.load(path) == acme.public
    assert PublicIdentity.from_bytes(acme.public.to_bytes()) == acme.public
    assert public_part(path) == acme.public


def test_public_file_is_0644_whatever_the_umask(tmp_path: Path, acme: Identity) -> None:
    old = os.umask(0o077)
    try:
        path = acme.public.save(tmp_path / "acme.pub")
    finally:
        os.umask(old)
    assert mode(path) == 0o644


def test_public_file_is_never_overwritten(tmp_path: Path, acme: Identity) -> None:
    path = tmp_path / "acme.pub"
    path.write_bytes(b"precious")
    with pytest.raises(IdentityError, match="already exists"):
        acme.public.save(path)
    assert path.read_bytes() == b"precious"


def test_unicode_name_round_trips(tmp_path: Path) -> None:
    who = Identity.generate("Société Générale des Jeux")
    assert PublicIdentity.load(who.public.save(tmp_path / "sg.pub")) == who.public


def _mutations() -> Iterator[tuple[str, Callable[[dict[str, Any], Identity], Any]]]:
    """(case, change the document in place) for every way a field can be wrong."""
    other = Identity.generate("Other")

    def set_(key: str, value: Any) -> Callable[[dict[str, Any], Identity], Any]:
        return lambda doc, who: doc.__setitem__(key, value)

    def drop(key: str) -> Callable[[dict[str, Any], Identity], Any]:
        return lambda doc, who: doc.pop(key)

    for key in ("kind", "version", "name", "prefix", "public_key", "fingerprint"):
        yield f"missing {key}", drop(key)
    yield "extra field", set_("comment", "hello")
    yield "wrong kind", set_("kind", "keyvault-identity-public")
    yield "rotation kind", set_("kind", "keyvault-rotation")
    yield "kind not a string", set_("kind", 1)
    yield "version 2", set_("version", 2)
    yield "version 0", set_("version", 0)
    yield "version as text", set_("version", "1")
    yield "version true", set_("version", True)
    yield "version 1.0", set_("version", 1.0)
    yield "empty name", set_("name", "")
    yield "blank name", set_("name", "   ")
    yield "name with spaces around", set_("name", " Acme ")
    yield "name not a string", set_("name", ["Acme"])
    yield "name too long", set_("name", "A" * 65)
    yield "name with a control character", set_("name", "Acme\nGames")
    yield "prefix too short", set_("prefix", "7KQ")
    yield "prefix too long", set_("prefix", "7KQ2X")
    yield "prefix bad symbol", set_("prefix", "7KQ!")
    yield "prefix as a number", set_("prefix", 1234)
    yield "prefix not canonical (lower case)", set_("prefix", "7kq2")
    def key_of_size(size: int) -> Callable[[dict[str, Any], Identity], Any]:
        def change(doc: dict[str, Any], who: Identity) -> None:
            key = (who.public_key * 2)[:size]
            doc.update(public_key=base64.b64encode(key).decode(), fingerprint=fingerprint(key))
        return change

    yield "public key 31 bytes", key_of_size(31)
    yield "public key 33 bytes", key_of_size(33)
    yield "public key empty", set_("public_key", "")
    yield "public key not base64", set_("public_key", "not base64 at all!")
    yield "public key hex", lambda doc, who: doc.__setitem__("public_key", who.public_key.hex())
    yield "public key unpadded", lambda doc, who: doc.__setitem__("public_key", doc["public_key"].rstrip("="))
    yield "public key url-safe alphabet", lambda doc, who: doc.__setitem__(
        "public_key", base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode())
    yield "public key not a string", lambda doc, who: doc.__setitem__("public_key", list(who.public_key))
    yield "fingerprint of another key", set_("fingerprint", other.fingerprint)
    yield "fingerprint upper case", lambda doc, who: doc.__setitem__("fingerprint", doc["fingerprint"].upper())
    yield "fingerprint without colons", lambda doc, who: doc.__setitem__(
        "fingerprint", doc["fingerprint"].replace(":", ""))
    yield "fingerprint empty", set_("fingerprint", "")
    yield "fingerprint not a string", set_("fingerprint", None)
    yield "key swapped, fingerprint kept", set_("public_key", base64.b64encode(other.public_key).decode())


MUTATIONS = list(_mutations())


@pytest.mark.parametrize("change", [m[1] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_every_malformed_public_file_is_refused(tmp_path: Path, acme: Identity,
                                                change: Callable[[dict[str, Any], Identity], Any]) -> None:
    doc = json.loads(acme.public.to_bytes())
    change(doc, acme)
    path = tmp_path / "bad.pub"
    path.write_text(json.dumps(doc))
    with pytest.raises(IdentityError) as caught:
        PublicIdentity.load(path)
    assert str(path) in str(caught.value)
    with pytest.raises(IdentityError):
        public_part(path)


def test_mismatched_fingerprint_says_the_file_was_edited(tmp_path: Path, acme: Identity) -> None:
    doc = json.loads(acme.public.to_bytes())
    doc["fingerprint"] = Identity.generate("x").fingerprint
    with pytest.raises(IdentityError, match="fingerprint does not match its public key, so the file was edited"):
        PublicIdentity.from_bytes(json.dumps(doc).encode(), "acme.pub")


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'"text"', b"null", b"\xff\xfe{}", b"[" * 100_000,
                                  b"{}", b'{"kind": "keyvault-public-identity"}'],
                         ids=["empty", "brace", "list", "string", "null", "not utf-8", "too big", "empty object",
                              "kind only"])
def test_non_public_identity_bytes_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.pub"
    path.write_bytes(data)
    with pytest.raises(IdentityError):
        PublicIdentity.load(path)
    with pytest.raises(IdentityError):
        public_part(path)


def test_truncated_public_file_is_refused_at_every_length(acme: Identity) -> None:
    data = acme.public.to_bytes().rstrip(b"\n")
    for n in range(len(data)):
        with pytest.raises(IdentityError):
            PublicIdentity.from_bytes(data[:n], "acme.pub")


def test_a_missing_public_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        PublicIdentity.load(tmp_path / "nope.pub")
    with pytest.raises(IdentityError, match="is a directory"):
        PublicIdentity.load(tmp_path)


def test_public_load_refuses_a_secret_identity_file(tmp_path: Path, acme: Identity) -> None:
    path = acme.save(tmp_path / "acme.key")
    with pytest.raises(IdentityError, match=r"this is a secret identity file|is a secret identity file") as caught:
        PublicIdentity.load(path)
    message = str(caught.value)
    assert "keyvault identity show --public" in message
    assert secret_b64(path) not in message
    # also when someone relabels the secret file as public
    doc = json.loads(path.read_text())
    doc["kind"] = "keyvault-public-identity"
    with pytest.raises(IdentityError, match="secret identity file"):
        PublicIdentity.from_bytes(json.dumps(doc).encode(), "relabelled")


def test_public_part_reads_a_secret_identity_only_when_it_is_0600(tmp_path: Path, acme: Identity) -> None:
    path = acme.save(tmp_path / "acme.key")
    assert public_part(path) == acme.public
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        public_part(path)


def test_identity_load_refuses_a_public_file_clearly(tmp_path: Path, acme: Identity) -> None:
    path = acme.public.save(tmp_path / "acme.pub")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="public identity file, which cannot sign"):
        Identity.load(path)


def test_secret_key_is_in_no_repr(tmp_path: Path, acme: Identity) -> None:
    secret = secret_b64(acme.save(tmp_path / "acme.key"))
    raw = base64.b64decode(secret)
    _, rotation = acme.rotate()
    for text in (repr(acme), str(acme), repr(acme.public), repr(rotation)):
        assert secret not in text and raw.hex() not in text and repr(raw) not in text


# -- rotation -----------------------------------------------------------------------------------


def test_rotation_round_trip(tmp_path: Path, acme: Identity) -> None:
    new, rotation = acme.rotate()
    assert (new.name, new.prefix) == (acme.name, acme.prefix)
    assert new.public_key != acme.public_key
    assert rotation.old == acme.public and rotation.new == new.public
    record = json.loads(rotation.record)
    assert record == {"format": "keyvault/rotation/v1", "name": "Acme Games", "prefix": acme.prefix_text,
                      "old_public_key": base64.b64encode(acme.public_key).decode(),
                      "new_public_key": base64.b64encode(new.public_key).decode(), "at": rotation.at}
    assert rotation.record == json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    verify_signature(acme.public_key, ROTATION_FORMAT, rotation.record, rotation.old_signature, "old")
    verify_signature(new.public_key, ROTATION_FORMAT, rotation.record, rotation.new_signature, "new")

    path = rotation.save(tmp_path / "acme.rot")
    assert mode(path) == 0o644
    assert path.read_bytes() == rotation.to_bytes()
    assert set(json.loads(path.read_text())) == {"kind", "record", "old_signature", "new_signature"}
    assert json.loads(path.read_text())["kind"] == "keyvault-rotation"
    assert Rotation.load(path) == rotation
    with pytest.raises(IdentityError, match="already exists"):
        rotation.save(path)

    # the new identity signs, and can rotate again
    new.save(tmp_path / "acme2.key")
    newer, again = Identity.load(tmp_path / "acme2.key").rotate()
    assert again.old == new.public and newer.prefix == acme.prefix


def test_rotation_with_a_new_name(acme: Identity) -> None:
    new, rotation = acme.rotate("Acme Interactive")
    assert new.name == "Acme Interactive" and new.prefix == acme.prefix
    assert rotation.new.name == rotation.old.name == "Acme Interactive"
    with pytest.raises(IdentityError, match="printable"):
        acme.rotate("")


def test_rotation_keeps_a_custom_prefix() -> None:
    who = Identity.generate("Acme", prefix="7KQ2")
    new, rotation = who.rotate()
    assert new.prefix_text == rotation.new.prefix_text == rotation.old.prefix_text == "7KQ2"


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def test_a_flipped_byte_anywhere_in_the_record_is_a_bad_signature(acme: Identity) -> None:
    _, rotation = acme.rotate()
    for i in range(len(rotation.record)):
        data = Rotation.envelope(_flip(rotation.record, i), rotation.old_signature, rotation.new_signature)
        with pytest.raises(BadSignatureError):
            Rotation.from_bytes(data, "acme.rot")


@pytest.mark.parametrize("which", ["old", "new"])
def test_a_flipped_byte_anywhere_in_either_signature_is_a_bad_signature(acme: Identity, which: str) -> None:
    _, rotation = acme.rotate()
    for i in range(64):
        old_sig = _flip(rotation.old_signature, i) if which == "old" else rotation.old_signature
        new_sig = _flip(rotation.new_signature, i) if which == "new" else rotation.new_signature
        with pytest.raises(BadSignatureError, match=f"the {which.upper()} key's signature"):
            Rotation.from_bytes(Rotation.envelope(rotation.record, old_sig, new_sig), "acme.rot")


def test_swapped_signatures_are_refused(acme: Identity) -> None:
    _, rotation = acme.rotate()
    with pytest.raises(BadSignatureError, match="OLD"):
        Rotation.from_bytes(Rotation.envelope(rotation.record, rotation.new_signature, rotation.old_signature))


def test_a_rotation_signed_only_by_the_old_key_is_refused(acme: Identity) -> None:
    """Whoever holds the old key cannot move it to a key they do not hold (the new key must sign too)."""
    new, rotation = acme.rotate()
    mallory = Identity.generate("Mallory")
    forged = Rotation.envelope(rotation.record, rotation.old_signature, mallory.sign(ROTATION_FORMAT, rotation.record))
    with pytest.raises(BadSignatureError, match="NEW key's signature"):
        Rotation.from_bytes(forged, "forged.rot")


def test_a_rotation_signed_only_by_the_new_key_is_refused(acme: Identity) -> None:
    """Nobody takes over a pinned key by signing a rotation with a key of their own."""
    mallory = Identity.generate("Mallory")
    record = json.dumps({"format": ROTATION_FORMAT, "name": acme.name, "prefix": acme.prefix_text,
                         "old_public_key": base64.b64encode(acme.public_key).decode(),
                         "new_public_key": base64.b64encode(mallory.public_key).decode(), "at": 1},
                        sort_keys=True, separators=(",", ":")).encode()
    forged = Rotation.envelope(record, mallory.sign(ROTATION_FORMAT, record), mallory.sign(ROTATION_FORMAT, record))
    with pytest.raises(BadSignatureError, match="OLD key's signature"):
        Rotation.from_bytes(forged, "forged.rot")


def test_a_signature_for_another_kind_of_record_is_refused(acme: Identity) -> None:
    new, rotation = acme.rotate()
    data = Rotation.envelope(rotation.record, acme.sign("keyvault/transfer/v1", rotation.record),
                             new.sign("keyvault/transfer/v1", rotation.record))
    with pytest.raises(BadSignatureError):
        Rotation.from_bytes(data)


def _signed(old: Identity, new: Identity, **changes: Any) -> bytes:
    """A rotation file whose record (changed as asked) both keys really sign."""
    body: dict[str, Any] = {"format": ROTATION_FORMAT, "name": new.name, "prefix": new.prefix_text,
                            "old_public_key": base64.b64encode(old.public_key).decode(),
                            "new_public_key": base64.b64encode(new.public_key).decode(), "at": 1_795_000_000_000}
    raw = changes.pop("raw", None)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    record = raw if raw is not None else json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return Rotation.envelope(record, old.sign(ROTATION_FORMAT, record), new.sign(ROTATION_FORMAT, record))


def test_the_signing_helper_makes_a_valid_rotation(acme: Identity) -> None:
    new = Identity(acme.name, acme.prefix, nacl.signing.SigningKey.generate())
    rotation = Rotation.from_bytes(_signed(acme, new))
    assert rotation.old == acme.public and rotation.new == new.public and rotation.at == 1_795_000_000_000


@pytest.mark.parametrize("changes, why", [
    ({"format": "keyvault/rotation/v2"}, "format"),
    ({"format": ...}, "missing required field `format`"),
    ({"name": ...}, "missing required field `name`"),
    ({"prefix": ...}, "missing required field `prefix`"),
    ({"at": ...}, "missing required field `at`"),
    ({"comment": "x"}, "unknown field `comment`"),
    ({"old_prefix": "7KQ2"}, "unknown field `old_prefix`"),
    ({"name": ""}, "name"),
    ({"name": 7}, "name"),
    ({"prefix": "7KQ"}, "prefix"),
    ({"prefix": "7KQ!"}, "prefix"),
    ({"prefix": 7}, "prefix"),
    ({"at": -1}, "at"),
    ({"at": 1.5}, "at"),
    ({"at": "1795000000000"}, "at"),
    ({"at": True}, "at"),
    ({"at": None}, "at"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_signed_but_malformed_record_is_refused(acme: Identity, changes: dict[str, Any], why: str) -> None:
    new = Identity(acme.name, acme.prefix, nacl.signing.SigningKey.generate())
    with pytest.raises(IdentityError, match=why):
        Rotation.from_bytes(_signed(acme, new, **changes), "acme.rot")


def test_a_signed_record_that_is_not_compact_sorted_json_is_refused(acme: Identity) -> None:
    new = Identity(acme.name, acme.prefix, nacl.signing.SigningKey.generate())
    body = json.loads(acme.rotate()[1].record)
    body["old_public_key"] = base64.b64encode(acme.public_key).decode()
    body["new_public_key"] = base64.b64encode(new.public_key).decode()
    for raw in (json.dumps(body, sort_keys=True).encode(),  # spaces
                json.dumps(body, separators=(",", ":")).encode() if list(body) != sorted(body) else
                json.dumps(dict(reversed(list(body.items()))), separators=(",", ":")).encode(),
                json.dumps(body, sort_keys=True, separators=(",", ":")).encode()[:-1]
                + b',"name":"Mallory"}'):  # duplicate key: the last one would win
        with pytest.raises(IdentityError, match="compact sorted JSON"):
            Rotation.from_bytes(_signed(acme, new, raw=raw), "acme.rot")


def test_a_rotation_to_the_same_key_is_refused(acme: Identity) -> None:
    with pytest.raises(IdentityError, match="same key"):
        Rotation.from_bytes(_signed(acme, acme), "acme.rot")


def test_a_record_that_names_no_keys_is_a_bad_signature(acme: Identity) -> None:
    new = Identity(acme.name, acme.prefix, nacl.signing.SigningKey.generate())
    for changes in ({"old_public_key": ...}, {"new_public_key": "AAAA"}, {"raw": b"not json"}, {"raw": b"[1]"}):
        with pytest.raises(BadSignatureError, match="does not name two keys"):
            Rotation.from_bytes(_signed(acme, new, **changes), "acme.rot")


@pytest.mark.parametrize("change", [
    lambda doc: doc.__setitem__("kind", "keyvault-public-identity"),
    lambda doc: doc.pop("kind"),
    lambda doc: doc.pop("record"),
    lambda doc: doc.pop("old_signature"),
    lambda doc: doc.pop("new_signature"),
    lambda doc: doc.__setitem__("extra", 1),
    lambda doc: doc.__setitem__("record", ""),
    lambda doc: doc.__setitem__("record", 5),
    lambda doc: doc.__setitem__("record", "%%%"),
    lambda doc: doc.__setitem__("record", doc["record"].rstrip("=") + "A"),
    lambda doc: doc.__setitem__("old_signature", doc["old_signature"][:-4]),
    lambda doc: doc.__setitem__("new_signature", base64.b64encode(b"\0" * 65).decode()),
    lambda doc: doc.__setitem__("new_signature", None),
], ids=["wrong kind", "no kind", "no record", "no old signature", "no new signature", "extra field",
        "empty record", "record not a string", "record not base64", "record not canonical base64",
        "old signature short", "new signature long", "new signature null"])
def test_a_malformed_rotation_file_is_refused(tmp_path: Path, acme: Identity, change: Callable[[dict[str, Any]], Any]
                                              ) -> None:
    _, rotation = acme.rotate()
    doc = json.loads(rotation.to_bytes())
    change(doc)
    path = tmp_path / "bad.rot"
    path.write_text(json.dumps(doc))
    with pytest.raises(IdentityError, match="bad.rot"):
        Rotation.load(path)


def test_a_truncated_rotation_file_is_refused(acme: Identity) -> None:
    data = acme.rotate()[1].to_bytes().rstrip(b"\n")
    for n in range(0, len(data), 7):
        with pytest.raises((IdentityError, BadSignatureError)):
            Rotation.from_bytes(data[:n], "acme.rot")


def test_other_files_are_not_rotations(tmp_path: Path, acme: Identity) -> None:
    with pytest.raises(IdentityError, match="not a keyvault rotation"):
        Rotation.from_bytes(acme.public.to_bytes(), "acme.pub")
    with pytest.raises(IdentityError, match="does not exist"):
        Rotation.load(tmp_path / "nope.rot")
    rot = acme.rotate()[1].save(tmp_path / "acme.rot")
    with pytest.raises(IdentityError):
        PublicIdentity.load(rot)


# -- the CLI: keyvault identity show / rotate ----------------------------------------------------


@pytest.fixture
def acme_file(tmp_path: Path) -> Path:
    path = tmp_path / "acme.key"
    ok("supplier", "init", "--name", "Acme Games", "--out", path)
    return path


def all_output(result: Any) -> str:
    return result.output + (result.stderr or "")


def test_cli_show_human(acme_file: Path) -> None:
    who = Identity.load(acme_file)
    result = ok("identity", "show", acme_file)
    out = result.output
    for value in (who.name, who.id, who.prefix_text, who.fingerprint, who.public_key.hex()):
        assert value in out
    assert "fingerprint" in out and "supplier id" in out and "issuer prefix" in out
    assert secret_b64(acme_file) not in all_output(result)


def test_cli_show_json(acme_file: Path) -> None:
    who = Identity.load(acme_file)
    result = ok("identity", "show", acme_file, "--json")
    assert one_json(result) == {"name": "Acme Games", "id": who.id, "prefix": who.prefix_text,
                                "fingerprint": who.fingerprint,
                                "public_key": who.public_key.hex(), "roles": []}  # hex, as everywhere in the CLI
    assert secret_b64(acme_file) not in all_output(result)


def test_cli_show_public_writes_a_public_file_to_stdout(tmp_path: Path, acme_file: Path) -> None:
    result = ok("identity", "show", "--public", acme_file)
    assert secret_b64(acme_file) not in all_output(result)
    assert not result.stderr
    pub = tmp_path / "acme.pub"
    pub.write_bytes(result.stdout_bytes)  # as `keyvault identity show --public acme.key > acme.pub`
    assert PublicIdentity.load(pub) == Identity.load(acme_file).public
    assert result.stdout_bytes == Identity.load(acme_file).public.to_bytes()
    # and a public file shows the same as its secret file, and hands itself out unchanged
    assert ok("identity", "show", pub, "--json").stdout == ok("identity", "show", acme_file, "--json").stdout
    assert ok("identity", "show", "--public", pub).stdout_bytes == pub.read_bytes()


def test_cli_show_public_and_json_together_is_a_usage_error(acme_file: Path) -> None:
    assert kv("identity", "show", "--public", "--json", acme_file).exit_code == EXIT_USAGE


def test_cli_show_refuses_an_unsafe_secret_file(acme_file: Path) -> None:
    acme_file.chmod(0o644)
    result = kv("identity", "show", acme_file)
    assert result.exit_code == EXIT_ERROR
    assert "chmod 600" in result.output
    assert secret_b64(acme_file) not in all_output(result)
    assert kv("identity", "show", "--public", acme_file).stdout == ""


def test_cli_show_refuses_an_edited_public_file(tmp_path: Path, acme_file: Path) -> None:
    pub = tmp_path / "acme.pub"
    pub.write_bytes(ok("identity", "show", "--public", acme_file).stdout_bytes)
    doc = json.loads(pub.read_text())
    doc["public_key"] = base64.b64encode(Identity.generate("x").public_key).decode()
    pub.write_text(json.dumps(doc))
    result = kv("identity", "show", pub)
    assert result.exit_code == EXIT_ERROR and "edited" in result.output


def test_cli_show_missing_file_and_no_store(tmp_path: Path) -> None:
    result = kv("identity", "show", tmp_path / "nope.key")
    assert result.exit_code == EXIT_ERROR and "does not exist" in result.output
    result = kv("identity", "show")
    assert result.exit_code == EXIT_USAGE and "IDENTITY_FILE" in result.output


@pytest.mark.skipif(not hasattr(Vault, "engine_identity"), reason="engine key arrives with the event log")
def test_cli_show_the_store_engine_key(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ok("--store", store, "init")
    shown = one_json(ok("--store", store, "identity", "show", "--json"))
    assert FINGERPRINT.match(shown["fingerprint"])
    assert one_json(ok("--store", store, "identity", "show", "--json")) == shown  # the same key every time
    result = ok("--store", store, "identity", "show", "--public")
    pub = tmp_path / "engine.pub"
    pub.write_bytes(result.stdout_bytes)
    engine = PublicIdentity.load(pub)
    assert (engine.fingerprint, engine.id) == (shown["fingerprint"], shown["id"])
    for secret_file in store.rglob("*"):  # no part of any store file is printed as a secret
        if secret_file.is_file() and secret_file.stat().st_size < 4096:
            try:
                doc = json.loads(secret_file.read_text())
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(doc, dict) and "secret_key" in doc:
                assert doc["secret_key"] not in all_output(result)


def test_cli_rotate(tmp_path: Path, acme_file: Path) -> None:
    old = Identity.load(acme_file)
    new_file, rot_file = tmp_path / "acme2.key", tmp_path / "acme.rot"
    result = ok("identity", "rotate", acme_file, "--out", new_file, "--rotation-out", rot_file)
    assert mode(new_file) == 0o600 and mode(rot_file) == 0o644
    new = Identity.load(new_file)
    rotation = Rotation.load(rot_file)
    assert rotation.old == old.public and rotation.new == new.public
    assert new.prefix == old.prefix and new.name == old.name
    out = result.output
    assert old.fingerprint in out and new.fingerprint in out
    assert f"send {rot_file} to every platform that pins the old key" in out
    assert f"keyvault trust rotate {rot_file}" in out
    for secret in (secret_b64(acme_file), secret_b64(new_file)):
        assert secret not in all_output(result)
    assert Identity.load(acme_file).public == old.public  # the old file is left as it was


def test_cli_rotate_json_and_new_name(tmp_path: Path, acme_file: Path) -> None:
    new_file, rot_file = tmp_path / "acme2.key", tmp_path / "acme.rot"
    result = ok("identity", "rotate", acme_file, "--out", new_file, "--rotation-out", rot_file,
                "--name", "Acme Interactive", "--json")
    doc = one_json(result)
    old, new = Identity.load(acme_file), Identity.load(new_file)
    assert doc["name"] == new.name == "Acme Interactive"
    assert (doc["old_fingerprint"], doc["new_fingerprint"]) == (old.fingerprint, new.fingerprint)
    assert (doc["old_id"], doc["new_id"]) == (old.id, new.id)
    assert doc["prefix"] == old.prefix_text == new.prefix_text
    assert (doc["identity_file"], doc["rotation_file"]) == (str(new_file), str(rot_file))
    assert secret_b64(new_file) not in all_output(result) and secret_b64(acme_file) not in all_output(result)


def test_cli_rotate_never_overwrites_and_leaves_nothing_half_done(tmp_path: Path, acme_file: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_bytes(b"precious")
    new_file, rot_file = tmp_path / "acme2.key", tmp_path / "acme.rot"
    for args in (("--out", taken, "--rotation-out", rot_file), ("--out", new_file, "--rotation-out", taken),
                 ("--out", acme_file, "--rotation-out", rot_file)):
        result = kv("identity", "rotate", acme_file, *args)
        assert result.exit_code == EXIT_ERROR and "already exists" in result.output
        assert not new_file.exists() and not rot_file.exists()
    assert taken.read_bytes() == b"precious"
    assert kv("identity", "rotate", acme_file, "--out", new_file, "--rotation-out", new_file).exit_code == EXIT_USAGE
    assert not new_file.exists()


def test_cli_rotate_refuses_an_unsafe_or_public_old_identity(tmp_path: Path, acme_file: Path) -> None:
    pub = tmp_path / "acme.pub"
    pub.write_bytes(ok("identity", "show", "--public", acme_file).stdout_bytes)
    pub.chmod(0o600)
    result = kv("identity", "rotate", pub, "--out", tmp_path / "n.key", "--rotation-out", tmp_path / "n.rot")
    assert result.exit_code == EXIT_ERROR and "cannot sign" in result.output
    acme_file.chmod(0o640)
    result = kv("identity", "rotate", acme_file, "--out", tmp_path / "n.key", "--rotation-out", tmp_path / "n.rot")
    assert result.exit_code == EXIT_ERROR and "chmod 600" in result.output
    assert not (tmp_path / "n.key").exists() and not (tmp_path / "n.rot").exists()
