"""Roles: what each pinned key may sign, prefix ownership, role declarations in public identity files,
trust records of earlier versions, and the signed time of checkpoints (freshness of bundles)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cli_support import ok
from conftest import issue
from keyvault import BadSignatureError, Identity, IdentityError, TrustError, Vault
from keyvault.formats import bundle
from keyvault.formats.checkpoint import open_note, split_note
from keyvault.formats.identity import PublicIdentity
from keyvault.store.records import dump


def _state(vault: Vault) -> tuple[int, list[str], list[str]]:
    """What a refused import must leave as it was: the log, the batches, the pins."""
    return (vault.verify_log(), sorted(b.id for b in vault.catalog().batches.values()),
            sorted(json.dumps(t, sort_keys=True) for t in vault.trusted()))


def test_a_pinned_supplier_cannot_issue_under_another_suppliers_prefix(tmp_path: Path, supplier: Identity,
                                                                       supplier_store: Vault, platform: Vault) -> None:
    evil = Identity.generate("Evil Corp")
    platform.trust(evil.public)  # a genuine supplier, pinned under its own prefix
    squatter = Identity("Evil Corp", supplier.prefix, evil.signing_key)  # the same key, Acme's prefix
    with Vault.init(tmp_path / "evil-store") as other:
        squat = issue(other, squatter, tmp_path / "evil-files", 10)
    before = _state(platform)
    with pytest.raises(TrustError, match=f"under prefix {supplier.prefix_text}.*owns prefix {evil.prefix_text}"):
        platform.import_manifest(squat.manifest)
    assert _state(platform) == before
    # Acme's real batches are not blocked by the attempt.
    real = issue(supplier_store, supplier, tmp_path / "files", 10)
    platform.import_manifest(real.manifest)
    assert platform.verify(real.keys[0]).status.value == "valid"


def test_a_distributor_cannot_resign_a_suppliers_manifest(tmp_path: Path, supplier: Identity,
                                                          supplier_store: Vault, platform: Vault) -> None:
    dist = Identity.generate("Dist Co")
    platform.trust(dist.public, "distributor")
    # The distributor's key signs a batch under Acme's name and prefix.
    resigned = Identity(supplier.name, supplier.prefix, dist.signing_key)
    with Vault.init(tmp_path / "dist-store") as other:
        forged = issue(other, resigned, tmp_path / "dist-files", 10)
    before = _state(platform)
    with pytest.raises(TrustError, match="pinned here only as distributor: only a supplier's key may sign it"):
        platform.import_manifest(forged.manifest)
    assert _state(platform) == before
    genuine = issue(supplier_store, supplier, tmp_path / "files", 10)
    platform.import_manifest(genuine.manifest)  # the genuine one is not refused afterwards


def test_a_second_supplier_is_not_pinned_under_a_held_prefix(platform: Vault, supplier: Identity) -> None:
    twin = Identity.generate("Acme Gam\u0435s", supplier.prefix_text)  # a look-alike name, the same prefix
    before = _state(platform)
    with pytest.raises(TrustError, match=f"prefix {supplier.prefix_text} already belongs to 'Acme Games'"):
        platform.trust(twin.public)
    assert _state(platform) == before
    platform.trust(twin.public, ["distributor"])  # it may still pass lots on
    assert [t["roles"] for t in platform.trusted() if t["name"] != "Acme Games"] == [["distributor"]]


def test_a_manifest_naming_its_supplier_otherwise_than_its_pin_is_refused(tmp_path: Path, supplier: Identity,
                                                                         platform: Vault) -> None:
    renamed = Identity("Acme Games Ltd", supplier.prefix, supplier.signing_key)
    with Vault.init(tmp_path / "other") as other:
        batch = issue(other, renamed, tmp_path / "files", 10)
    with pytest.raises(TrustError, match="names its supplier 'Acme Games Ltd', but its key is pinned here as"):
        platform.import_manifest(batch.manifest)


def test_pinning_again_adds_roles_and_each_change_is_an_event(platform: Vault, supplier: Identity) -> None:
    size = platform.verify_log()
    assert platform.trust(supplier.public)["roles"] == ["supplier"]  # already: nothing changes
    assert platform.verify_log() == size
    record = platform.trust(supplier.public, ["distributor", "witness"])
    assert record["roles"] == ["supplier", "distributor", "witness"] and record["role"] == "supplier"
    assert platform.verify_log() == size + 1
    with pytest.raises(Exception, match="unknown trust role"):
        platform.trust(supplier.public, "oracle")


@pytest.mark.parametrize("stored, roles", [("platform", ["engine"]), ("own", ["supplier"]),
                                           ("distributor", ["distributor"]), ("supplier", ["supplier"])])
def test_a_trust_record_of_an_earlier_version_is_read_in_todays_roles(tmp_path: Path, supplier: Identity,
                                                                      stored: str, roles: list[str]) -> None:
    with Vault.init(tmp_path / "store") as vault:
        def write(txn):  # type: ignore[no-untyped-def]
            txn.put("trust", supplier.public_key, dump({"name": supplier.name, "prefix": supplier.prefix_text,
                                                        "role": stored, "pinned_at": 1, "fingerprint":
                                                        supplier.fingerprint, "rotated_from": None,
                                                        "rotated_to": None}))
            txn.bump_generation()

        vault.engine.store.write(write)
        assert [t["roles"] for t in vault.trusted()] == [roles]
        with Vault.init(tmp_path / "issuer") as issuer:
            batch = issue(issuer, supplier, tmp_path / "files", 10)
        if "supplier" in roles:
            vault.import_manifest(batch.manifest)
        else:
            with pytest.raises(TrustError, match=f"only as {roles[0]}"):
                vault.import_manifest(batch.manifest)


def test_a_public_identity_declares_roles_signed_by_its_key(tmp_path: Path, supplier: Identity) -> None:
    declared = supplier.public_with_roles(["engine", "supplier"])
    loaded = PublicIdentity.from_bytes(declared.to_bytes())
    assert loaded.roles == ("engine", "supplier") and loaded == supplier.public
    doc = json.loads(declared.to_bytes())
    for change, words in [(lambda d: d["roles"].append("witness"), "does not verify"),
                          (lambda d: d.__setitem__("roles", ["supplier"]), "does not verify"),
                          (lambda d: d.__setitem__("name", "Acme Gam\u0435s"), "does not verify"),
                          (lambda d: d.pop("roles_signature"), "come together"),
                          (lambda d: d.__setitem__("roles", ["supplier", "engine"]), "sorted"),
                          (lambda d: d.__setitem__("roles", ["oracle"]), "distinct names"),
                          (lambda d: d.__setitem__("roles", []), "non-empty")]:
        edited = json.loads(json.dumps(doc))
        change(edited)
        with pytest.raises((IdentityError, BadSignatureError), match=words):
            PublicIdentity.from_bytes(json.dumps(edited).encode())
    # Signed by another key, the declaration is refused too.
    other = Identity.generate("Other")
    stolen = dict(doc, roles_signature=json.loads(other.public_with_roles(["engine", "supplier"]).to_bytes())[
        "roles_signature"])
    with pytest.raises(BadSignatureError, match="does not verify"):
        PublicIdentity.from_bytes(json.dumps(stolen).encode())


def test_cli_declares_roles_and_trust_add_pins_them(tmp_path: Path) -> None:
    identity = tmp_path / "dist.identity"
    ok("supplier", "init", "--name", "Dist Co", "--out", identity, "--json")
    public = tmp_path / "dist.pub"
    public.write_bytes(ok("identity", "show", "--public", "--role", "distributor", identity).stdout_bytes)
    assert PublicIdentity.load(public).roles == ("distributor",)
    store = tmp_path / "store"
    ok("--store", store, "init")
    pinned = json.loads(ok("--store", store, "trust", "add", public, "--json").stdout)
    assert pinned["roles"] == ["distributor"]
    engine = json.loads(ok("--store", store, "identity", "show", "--json").stdout)
    assert engine["roles"] == ["engine"]


def test_checkpoints_carry_their_signed_time_and_bundles_their_age(tmp_path: Path, supplier: Identity,
                                                                   supplier_store: Vault) -> None:
    b = issue(supplier_store, supplier, tmp_path / "files", 10)
    engine = supplier_store.engine_identity
    note = supplier_store.checkpoint().encode()
    origin = bundle.engine_origin(engine.public_key)
    signed = open_note(note, origin, [bundle.Verifier(origin, engine.public_key)])
    assert signed.time is not None and abs(signed.time - time.time() * 1000) < 60_000
    assert supplier_store.checkpoint().encode() == note  # within a second, the same note
    time.sleep(1.1)  # older than a second: signed again, same size and root, a newer time
    again = open_note(supplier_store.checkpoint().encode(), origin, [bundle.Verifier(origin, engine.public_key)])
    assert (again.size, again.root) == (signed.size, signed.root) and again.time is not None
    assert again.time > signed.time
    assert supplier_store.verify_log() == signed.size
    doc = json.dumps(supplier_store.trace_bundle(b.serials[1])).encode()
    text, _ = split_note(json.loads(doc)["checkpoint"].encode())
    at = int([line for line in text.decode().split("\n") if line.startswith("time ")][0][5:])
    keys = bundle.Trusted(suppliers=(supplier.public,), engines=(engine,))
    assert all(c.ok for c in bundle.verify(doc, keys, max_age_ms=5_000, now_ms=at + 5_000))
    stale = bundle.verify(doc, keys, max_age_ms=5_000, now_ms=at + 5_001)
    assert [c.name for c in stale if not c.ok] == ["checkpoint age"]
    future = bundle.verify(doc, keys, now_ms=at - bundle.CLOCK_SKEW_MS - 1)
    assert [c.name for c in future if not c.ok] == ["checkpoint age"]


def test_a_bundle_status_is_judged_at_the_checkpoints_time(tmp_path: Path, supplier: Identity,
                                                           supplier_store: Vault) -> None:
    now = int(time.time() * 1000)
    b = issue(supplier_store, supplier, tmp_path / "files", 10, valid_until=now + 1500)
    keys = bundle.Trusted(suppliers=(supplier.public,), engines=(supplier_store.engine_identity,))
    before = supplier_store.trace_bundle(b.serials[0])
    assert before["status"] == {"status": "valid", "order_id": None}
    assert all(c.ok for c in bundle.verify(json.dumps(before).encode(), keys))
    time.sleep(1.6)
    after = supplier_store.trace_bundle(b.serials[0])
    assert after["status"] == {"status": "expired", "order_id": None}
    assert all(c.ok for c in bundle.verify(json.dumps(after).encode(), keys))
    # The old bundle, claiming expired, and the new one, claiming valid, both fail.
    for doc, claim in ((before, "expired"), (after, "valid")):
        checks = bundle.verify(json.dumps(dict(doc, status={"status": claim, "order_id": None})).encode(), keys)
        assert [c.name for c in checks if not c.ok] == ["status replayed from events"]


def test_verify_bundle_needs_keys_and_a_readable_max_age(tmp_path: Path) -> None:
    from cli_support import kv
    vectors = Path(__file__).resolve().parent / "vectors" / "bundles"
    bundle_file = vectors / "pass-valid.bundle"
    nothing = kv("verify-bundle", bundle_file)
    assert nothing.exit_code == 2 and "--supplier FILE and --engine FILE" in nothing.output
    keys = ["--supplier", vectors / "keys/acme.pub", "--engine", vectors / "keys/engine.pub"]
    for bad in ("24", "h", "5x", "-5d", "1.5h", "\u0664d", "0s"):
        result = kv("verify-bundle", bundle_file, *keys, "--max-age", bad)
        assert result.exit_code == 2 and "whole number and a unit" in result.output, (bad, result.output)
    assert kv("verify-bundle", bundle_file, *keys, "--max-age", "100000d").exit_code == 0
    # A role-declaring file given under another role: the role given on the command line is the one it gets.
    swapped = kv("verify-bundle", bundle_file, "--supplier", vectors / "keys/acme.pub", "--supplier",
                 vectors / "keys/engine.pub")
    assert swapped.exit_code == 3 and "FAIL checkpoint signature" in swapped.output
