"""Signed redeem receipts and long-form keys: made, checked offline, and every way of breaking them refused."""

from __future__ import annotations

import base64
import csv
import json
import struct
from pathlib import Path

import pytest
from cli_support import EXIT_ERROR, EXIT_OK, EXIT_REFUSED, kv, ok, one_json
from conftest import Issued, issue

from keyvault import BadSignatureError, Identity, MalformedKeyError, NotFoundError, ProofError, Status, Vault
from keyvault.engine import ledger
from keyvault.formats import longform
from keyvault.formats import receipt as fmt
from keyvault.formats.identity import pae
from keyvault.formats.keyformat import parse_serial

# -- receipts ----------------------------------------------------------------------------------------


def _raw(text: str) -> bytes:
    body = text.split(".", 1)[1]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _text(prefix: str, raw: bytes) -> str:
    return prefix + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_an_accepted_redeem_gets_a_receipt_that_verifies_offline(platform: Vault, issued: Issued) -> None:
    result = platform.redeem(issued.keys[0], "order-0001")
    assert result.status is Status.ACCEPTED
    text = platform.receipt(issued.keys[0])
    assert text.startswith("KVR1.") and len(text) < 200  # fits a small QR code (measured: 160-170 characters)
    assert text == platform.receipt(issued.serials[0])  # by key or by serial: the same redeem, the same text
    got = fmt.open_receipt(text, platform.engine_identity.public_key)
    assert got.to_dict()["serial"] == issued.serials[0]
    assert (got.order_id, got.supplier_name, got.batch) == ("order-0001", "Acme Games", issued.batch.id)
    assert got.supplier_id == issued.batch.supplier and got.supplier_prefix == issued.serials[0][:4]
    assert got.to_dict()["redeemed_at"] == result.redeemed_at
    assert issued.keys[0] not in text and issued.keys[0].replace("-", "") not in text


def test_a_retried_redeem_of_the_same_order_gets_the_same_receipt(platform: Vault, issued: Issued) -> None:
    platform.redeem(issued.keys[1], "order-A")
    first = platform.receipt(issued.serials[1])
    assert platform.redeem(issued.keys[1], "order-A").status is Status.ACCEPTED
    assert platform.redeem(issued.keys[1], "order-B").status is Status.REDEEMED
    assert platform.receipt(issued.serials[1]) == first


def test_no_receipt_for_a_key_not_redeemed(platform: Vault, issued: Issued) -> None:
    with pytest.raises(NotFoundError, match="not redeemed"):
        platform.receipt(issued.serials[2])
    platform.void(issued.serials[3], "refund")
    with pytest.raises(NotFoundError, match="not redeemed"):
        platform.receipt(issued.serials[3])
    with pytest.raises(NotFoundError, match="not in this store"):
        platform.receipt("ZZZZ-ZZZ-0000A")


def test_a_receipt_survives_a_fold_of_the_ledger(platform: Vault, issued: Issued,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    platform.redeem(issued.keys[4], "order-4")
    before = platform.receipt(issued.serials[4])
    monkeypatch.setattr(ledger, "FOLD_AT", 2)
    platform.redeem_many([(issued.keys[5], "order-5"), (issued.keys[6], "order-6")])  # folds everything
    assert platform.receipt(issued.serials[4]) == before  # now read through the outcome record
    assert fmt.open_receipt(platform.receipt(issued.serials[6]), platform.engine_identity.public_key).order_id \
        == "order-6"


def test_every_altered_byte_of_a_receipt_is_refused(platform: Vault, issued: Issued) -> None:
    platform.redeem(issued.keys[0], "order-0001")
    text = platform.receipt(issued.keys[0])
    raw, key = _raw(text), platform.engine_identity.public_key
    for i in range(len(raw)):
        for flip in (0x01, 0x80):
            altered = raw[:i] + bytes((raw[i] ^ flip,)) + raw[i + 1:]
            with pytest.raises((BadSignatureError, ProofError)):
                fmt.open_receipt(_text("KVR1.", altered), key)


def test_a_changed_order_id_resigned_by_another_key_is_refused(platform: Vault, issued: Issued) -> None:
    platform.redeem(issued.keys[0], "order-0001")
    got = fmt.open_receipt(platform.receipt(issued.keys[0]), platform.engine_identity.public_key)
    forged = fmt.Receipt(got.serial, got.at_ms, got.index, got.supplier_id, got.supplier_name, "order-9999")
    # The supplier's key (or any key but the store's engine key) cannot make a receipt the engine key opens.
    by_supplier = fmt.make(forged, issued.supplier.signing_key)
    with pytest.raises(BadSignatureError):
        fmt.open_receipt(by_supplier, platform.engine_identity.public_key)
    # Receipts are of their own type: a supplier's signature under another type never opens as one.
    body = fmt.payload(forged)
    manifest_typed = issued.supplier.sign("keyvault/manifest/v2", body)
    with pytest.raises(BadSignatureError):
        fmt.open_receipt(fmt.encode(body, manifest_typed), issued.supplier.public_key)
    # And an engine receipt checked against the supplier's identity (the wrong file) is not authentic.
    with pytest.raises(BadSignatureError):
        fmt.open_receipt(platform.receipt(issued.keys[0]), issued.supplier.public_key)


def test_truncated_or_damaged_receipts_are_refused(platform: Vault, issued: Issued) -> None:
    platform.redeem(issued.keys[0], "order-0001")
    text, key = platform.receipt(issued.keys[0]), platform.engine_identity.public_key
    for cut in range(len(text)):
        with pytest.raises((ProofError, BadSignatureError)):
            fmt.open_receipt(text[:cut], key)
    for bad in (text + "A", text.replace("KVR1.", "KVR2."), text[:10] + "+" + text[11:], text[:10] + "/" + text[11:],
                text + "=", text[:20] + " " + text[20:], "", "KVR1.", 42):
        with pytest.raises((ProofError, BadSignatureError)):
            fmt.open_receipt(bad, key)  # type: ignore[arg-type]


def test_a_receipt_stays_evidence_of_the_redeem_after_the_key_is_blacklisted(platform: Vault,
                                                                              issued: Issued) -> None:
    platform.redeem(issued.keys[7], "order-7")
    text = platform.receipt(issued.keys[7])
    assert platform.void(issued.serials[7], "refund").status is Status.REDEEMED  # a redeemed key is not voided
    platform.blacklist("serial", issued.serials[7], "fraud report")
    assert platform.trace(issued.serials[7])["blacklist"]  # the key is refused for good, whatever its status
    # The receipt says what happened at redeem time, and still proves it: it is evidence, not a status.
    assert platform.receipt(issued.serials[7]) == text
    doc = platform.upgrade_receipt(text).to_dict()
    assert fmt.open_proof(fmt.encode_proof(doc), platform.engine_identity.public_key)[0].order_id == "order-7"


def test_an_upgraded_receipt_proves_its_redeem_is_in_the_log(platform: Vault, issued: Issued) -> None:
    platform.redeem(issued.keys[0], "order-0001")
    platform.redeem(issued.keys[1], "order-0002")
    text = platform.receipt(issued.keys[0])
    doc = platform.upgrade_receipt(text).to_dict()
    key = platform.engine_identity.public_key
    got, size = fmt.open_proof(fmt.encode_proof(doc), key)
    assert got.order_id == "order-0001" and size > got.index
    assert platform.upgrade_receipt(text).to_dict() == doc  # the oldest checkpoint covering it: the same proof again
    # Any other event's leaf and proof, under the same checkpoint, is refused: it is not this redeem.
    other = platform.upgrade_receipt(platform.receipt(issued.keys[1])).to_dict()
    swapped = {**doc, "leaf": other["leaf"], "proof": other["proof"]}
    with pytest.raises(ProofError):
        fmt.open_proof(fmt.encode_proof(swapped), key)
    with pytest.raises(ProofError):  # the other receipt with this one's proof
        fmt.open_proof(fmt.encode_proof({**doc, "receipt": other["receipt"]}), key)
    # A proof hash altered, a proof cut short, the checkpoint altered or signed by another key: refused.
    broken = [{**doc, "proof": [("0" * 64)] + doc["proof"][1:]} if doc["proof"] else {**doc, "proof": ["00" * 32]},
              {**doc, "proof": doc["proof"][:-1]} if doc["proof"] else {**doc, "proof": ["00" * 32]},
              {**doc, "checkpoint": doc["checkpoint"].replace("\n", "\n\n", 1)},
              {**doc, "format": "keyvault/receipt-proof/v0"}]
    for bad in broken:
        with pytest.raises((ProofError, BadSignatureError)):
            fmt.open_proof(fmt.encode_proof(bad), key)
    with pytest.raises((ProofError, BadSignatureError)):
        fmt.open_proof(fmt.encode_proof(doc), Identity.generate("other engine").public_key)
    with pytest.raises(ProofError):
        fmt.open_proof(b'{"format": "keyvault/receipt-proof/v1"}', key)


def test_a_receipt_of_another_store_is_not_upgraded(tmp_path: Path, platform: Vault, issued: Issued) -> None:
    platform.redeem(issued.keys[0], "order-0001")
    text = platform.receipt(issued.keys[0])
    with Vault.init(tmp_path / "elsewhere") as other, pytest.raises(BadSignatureError):
        other.upgrade_receipt(text)


def test_a_signed_event_that_is_not_a_redeem_is_refused_as_proof(platform: Vault, issued: Issued) -> None:
    # An engine-signed receipt whose index names a non-redeem event (event 0: the store's engine trust event).
    platform.redeem(issued.keys[0], "order-0001")
    got = fmt.open_receipt(platform.receipt(issued.keys[0]), platform.engine_identity.public_key)
    lying = fmt.make(fmt.Receipt(got.serial, got.at_ms, 0, got.supplier_id, got.supplier_name, got.order_id),
                     platform.engine.log.engine.signing_key)
    with pytest.raises(ProofError, match="not a redeem"):
        platform.upgrade_receipt(lying)


# -- long-form keys ------------------------------------------------------------------------------------


@pytest.fixture
def long_issued(tmp_path: Path, supplier: Identity, supplier_store: Vault, platform: Vault) -> tuple[Issued, list[str]]:
    """20 keys issued with long forms (valid for a while), imported by the platform."""
    out = tmp_path / "long"
    out.mkdir()
    keys_csv, manifest = out / "keys.csv", out / "batch.kvm"
    info = supplier_store.issue_batch(supplier, "GOLD-500", 20, keys_out=keys_csv, manifest_out=manifest,
                                      valid_from=1_700_000_000_000, valid_until=4_000_000_000_000, long_form=True)
    with open(keys_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    platform.import_manifest(manifest)
    batch = Issued(supplier, info, [r["key"] for r in rows], [r["serial"] for r in rows], keys_csv, manifest)
    return batch, [r["long_form"] for r in rows]


def test_long_forms_verify_offline_and_redeem_as_their_key(platform: Vault, long_issued: tuple[Issued, list[str]]
                                                           ) -> None:
    batch, forms = long_issued
    for serial, form in zip(batch.serials, forms):
        assert form.startswith("KVL1.") and len(form) < 220
        got = longform.open_long_form(form, batch.supplier.public_key)
        assert got.to_dict()["serial"] == serial and got.product == "GOLD-500"
        assert (got.valid_from, got.valid_until) == (1_700_000_000_000, 4_000_000_000_000)
    assert platform.verify(forms[0]).status is Status.VALID
    assert platform.verify_many(forms[:3]) == platform.verify_many(batch.keys[:3])
    assert platform.redeem(forms[0], "order-L").status is Status.ACCEPTED
    assert platform.redeem(batch.keys[0], "order-L").status is Status.ACCEPTED  # the same key, the same order
    assert platform.redeem(batch.keys[0], "order-M").status is Status.REDEEMED
    assert platform.redeem(forms[0], "order-M").status is Status.REDEEMED
    assert platform.redeem(forms[1].lower()[:5] + forms[1][5:], "order-N").status is Status.ACCEPTED  # kvl1. too
    assert platform.trace(forms[2])["serial"] == batch.serials[2]


def _fields(form: str) -> tuple[bytes, bytes, bytes]:
    raw = _raw(form)
    end = 25 + 1 + raw[25]
    return raw[:end], raw[end:-64], raw[-64:]


def test_a_long_form_with_any_public_field_altered_is_refused(long_issued: tuple[Issued, list[str]]) -> None:
    batch, forms = long_issued
    head, rest, sig = _fields(forms[0])
    version, serial, start, until = struct.unpack_from(">BQQQ", head)
    product = head[26:]
    altered = [struct.pack(">BQQQ", version, serial, start - 1, until) + head[25:],   # validity from
               struct.pack(">BQQQ", version, serial, start, until + 86_400_000) + head[25:],  # validity until
               struct.pack(">BQQQ", version, serial, 0, 0) + head[25:],  # no window at all
               head[:25] + bytes((len(product),)) + product.replace(b"500", b"900"),  # product
               head[:25] + bytes((len(product) + 1,)) + product + b"0"]
    for new_head in altered:
        with pytest.raises(BadSignatureError):
            longform.open_long_form(_text("KVL1.", new_head + rest + sig), batch.supplier.public_key)
    # Another serial: the key inside names its own serial, so the long form is refused as altered.
    moved = struct.pack(">BQQQ", version, serial + 1, start, until) + head[25:]
    with pytest.raises(MalformedKeyError, match="does not match its serial"):
        longform.open_long_form(_text("KVL1.", moved + rest + sig), batch.supplier.public_key)
    # Every single flipped bit anywhere is refused one way or the other.
    raw = _raw(forms[0])
    for i in range(len(raw)):
        bad = _text("KVL1.", raw[:i] + bytes((raw[i] ^ 0x01,)) + raw[i + 1:])
        with pytest.raises((BadSignatureError, MalformedKeyError)):
            longform.open_long_form(bad, batch.supplier.public_key)


def test_a_long_form_of_another_supplier_is_refused(tmp_path: Path, supplier_store: Vault,
                                                    long_issued: tuple[Issued, list[str]]) -> None:
    batch, forms = long_issued
    other = Identity.generate("Bolt Cards")
    with pytest.raises(BadSignatureError):
        longform.open_long_form(forms[0], other.public_key)
    theirs = issue(supplier_store, other, tmp_path / "bolt", count=2)
    assert theirs.batch.supplier != batch.batch.supplier
    # Supplier B re-signing A's key's public fields (B cannot know A's salt is the one A committed to) opens only
    # with B's key, never as A's.
    head, rest, _ = _fields(forms[0])
    serial = struct.unpack_from(">BQ", head)[1]
    salt, key = rest[:16], rest[16:].decode()
    fields = longform.LongForm(serial, 1_700_000_000_000, 4_000_000_000_000, "GOLD-500")
    by_b = longform.make(fields, salt, key, other.signing_key)
    assert longform.open_long_form(by_b, other.public_key).serial == serial
    with pytest.raises(BadSignatureError):
        longform.open_long_form(by_b, batch.supplier.public_key)


def test_a_long_form_binds_its_key_without_revealing_it(long_issued: tuple[Issued, list[str]]) -> None:
    batch, forms = long_issued
    head, rest, sig = _fields(forms[0])
    # The signature is over public fields and the key's commitment: the same key, the same signature...
    canonical = rest[16:].decode()
    fields = longform.open_long_form(forms[0], batch.supplier.public_key)
    signed = head + longform.commitment(fields.serial, rest[:16], canonical)
    assert canonical.encode() not in signed
    # ...and a made-up key of the same serial, framed with the genuine signature, does not verify.
    fake_rest = rest[:16] + _other_key_of_serial(canonical).encode()
    with pytest.raises(BadSignatureError):
        longform.open_long_form(_text("KVL1.", head + fake_rest + sig), batch.supplier.public_key)


def _other_key_of_serial(canonical: str) -> str:
    """A well-formed native key of the same serial as ``canonical`` but another secret (its check symbols fixed)."""
    from keyvault import _fast

    serial = _fast.parse_key(canonical)[1]
    for secret in range(1, 1000):
        keys, _ = _fast.issue_keys(serial, 1, bytes(16), secret.to_bytes(_fast.SECRET_BYTES, "big"))
        if keys[0] != canonical:
            assert _fast.parse_key(keys[0])[1] == serial
            return str(keys[0])
    raise AssertionError("no other key")


def test_a_forged_long_form_around_a_genuine_key_gains_nothing(platform: Vault,
                                                               long_issued: tuple[Issued, list[str]]) -> None:
    """The store ignores a long form's signature: it judges the key inside, so forged fields change nothing."""
    batch, forms = long_issued
    head, rest, _ = _fields(forms[3])
    version, serial, _, _ = struct.unpack_from(">BQQQ", head)
    forged_head = struct.pack(">BQQQ", version, serial, 0, 0) + bytes((9,)) + b"GOLD-9999"
    forged = _text("KVL1.", forged_head + rest + bytes(64))
    answer = platform.verify(forged)
    assert answer == platform.verify(batch.keys[3])  # the store's own product and window, not the forged ones
    assert answer.product == "GOLD-500"
    assert platform.redeem(forged, "order-F").status is Status.ACCEPTED
    assert platform.redeem(batch.keys[3], "order-G").status is Status.REDEEMED  # spent once, whatever its form
    # A long form whose key is made up: unknown, as the bare made-up key would be.
    fake = _text("KVL1.", head + rest[:16] + _other_key_of_serial(rest[16:].decode()).encode() + bytes(64))
    assert platform.verify(fake).status is Status.UNKNOWN


def test_damaged_long_forms_are_malformed_and_never_echo_the_key(platform: Vault,
                                                                 long_issued: tuple[Issued, list[str]]) -> None:
    batch, forms = long_issued
    form, key = forms[5], batch.keys[5].replace("-", "")
    damaged = [form[:cut] for cut in range(5, len(form), 7)] + [
        form[:30] + "+" + form[31:], form[:30] + "/" + form[31:], form + "==", form[:40] + " " + form[41:],
        form[:40] + "é" + form[41:], "KVL2." + form[5:], "KVL1."]
    for bad in damaged:
        with pytest.raises(MalformedKeyError) as caught:
            longform.open_long_form(bad, batch.supplier.public_key)
        assert key not in str(caught.value)
        result = platform.verify(bad)
        assert result.status in (Status.MALFORMED, Status.UNKNOWN), bad
        assert key not in repr(result) and form not in repr(result)
    assert platform.verify(form).status is Status.VALID  # nothing above spent or locked it


def test_json_export_carries_long_forms(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    out = tmp_path / "keys.json"
    supplier_store.issue_batch(supplier, "P", 3, keys_out=out, manifest_out=tmp_path / "m.kvm", long_form=True)
    doc = json.loads(out.read_text())
    assert all(longform.inner_key(k["long_form"]) == k["key"].replace("-", "") for k in doc["keys"])
    plain = tmp_path / "plain.csv"
    supplier_store.issue_batch(supplier, "P", 3, keys_out=plain, manifest_out=tmp_path / "m2.kvm")
    assert "long_form" not in plain.read_text()


# -- the command line ------------------------------------------------------------------------------------


def test_cli_receipts_and_long_forms(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    ident, store = root / "acme.identity", root / "store"
    ok("supplier", "init", "--name", "Acme Games", "--out", ident)
    ok("--store", store, "init")
    (root / "acme.pub").write_bytes(ok("identity", "show", "--public", ident).stdout_bytes)
    (root / "engine.pub").write_bytes(ok("--store", store, "identity", "show", "--public").stdout_bytes)
    keys_csv = root / "keys.csv"
    ok("--store", store, "batch", "issue", "--supplier", ident, "--product", "GOLD", "--count", 4, "--keys-out",
       keys_csv, "--manifest-out", root / "m.kvm", "--long-form", "--valid-days", 30)
    with open(keys_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    form, serial = rows[0]["long_form"], rows[0]["serial"]

    out = ok("verify-offline", form, "--supplier", root / "acme.pub").stdout
    assert "AUTHENTIC" in out and serial in out and "GOLD" in out and "already redeemed" in out
    assert rows[0]["key"] not in out and form not in out
    assert one_json(ok("verify-offline", "-", "--supplier", root / "acme.pub", "--json", input=form + "\n"))[
        "authentic"] is True
    bad = kv("verify-offline", form[:-3] + ("AAA" if form[-3:] != "AAA" else "BBB"), "--supplier", root / "acme.pub")
    assert bad.exit_code == EXIT_REFUSED and "NOT AUTHENTIC" in bad.stdout
    assert kv("verify-offline", form, "--supplier", root / "engine.pub").exit_code == EXIT_REFUSED
    assert kv("verify-offline", form, "--supplier", root / "missing.pub").exit_code == EXIT_ERROR

    assert kv("--store", store, "redeem", form, "--order", "o-1").exit_code == EXIT_OK
    text = ok("--store", store, "receipt", "show", serial).stdout.strip()
    assert text.startswith("KVR1.")
    out = ok("verify-receipt", text, "--engine", root / "engine.pub").stdout
    assert "AUTHENTIC" in out and "o-1" in out and serial in out and "Acme Games" in out
    wrong = kv("verify-receipt", text, "--engine", root / "acme.pub")
    assert wrong.exit_code == EXIT_REFUSED and "NOT AUTHENTIC" in wrong.stdout
    assert kv("verify-receipt", text[:-4], "--engine", root / "engine.pub").exit_code == EXIT_REFUSED
    (root / "r.txt").write_text(text + "\n")
    ok("verify-receipt", root / "r.txt", "--engine", root / "engine.pub")
    ok("--store", store, "receipt", "upgrade", root / "r.txt", "--out", root / "up.json")
    doc = one_json(ok("verify-receipt", root / "up.json", "--engine", root / "engine.pub", "--json"))
    assert doc["authentic"] and doc["proven_in_log"] and doc["order_id"] == "o-1"
    tampered = json.loads((root / "up.json").read_text())
    tampered["leaf"] = base64.b64encode(b"kv1/event" + bytes(60)).decode()
    (root / "bad.json").write_text(json.dumps(tampered))
    assert kv("verify-receipt", root / "bad.json", "--engine", root / "engine.pub").exit_code == EXIT_REFUSED
    assert kv("--store", store, "receipt", "show", rows[1]["serial"]).exit_code == EXIT_ERROR  # not redeemed
    assert parse_serial(serial) >= 0


def test_pae_binds_the_receipt_type() -> None:
    assert pae(fmt.PAYLOAD_TYPE, b"x") != pae(longform.PAYLOAD_TYPE, b"x")
