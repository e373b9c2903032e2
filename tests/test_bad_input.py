"""Bad input gets a clear error and changes nothing.

Each case runs the CLI the way a user would and checks three things: the exit
code (1 for an error, 2 for usage, 3 for a refused key), a message that says
what is wrong and what to do (never a traceback), and that the store is as it
was: byte for byte when nothing should have been written, or record for record
(refused-attempt counters aside) when a refused key was only counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

import lmdb
import pytest
from click.testing import Result as CliResult

from keyvault import (
    Identity,
    IdentityError,
    KeyvaultError,
    ManifestError,
    NotAStoreError,
    PepperError,
    StoreError,
    StoreVersionError,
    Vault,
    _fast,
)
from keyvault.formats.keyformat import display_key, parse_serial

from cli_support import EXIT_ERROR, EXIT_REFUSED, EXIT_USAGE, World, json_lines, kv, ok, swapped, trust_cli, typo


# -- a clean error ---------------------------------------------------------------------------------


def refused(result: CliResult, *words: str, code: int = EXIT_ERROR) -> str:
    """A clean error: the exit code, one 'Error: ...' message naming ``words`` (under --json: one JSON
    object on stderr's last line), nothing on stdout."""
    assert result.exit_code == code, f"exit {result.exit_code} (expected {code}): {result.output}"
    # Progress labels may come first on stderr; the error is the last thing said.
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    if last.startswith("{"):
        doc = json.loads(last)
        assert doc["exit_code"] == code and doc["error"] and doc["hint"], doc
        message = doc["message"]
    else:
        at = result.stderr.find("Error: ")
        assert at >= 0, f"no 'Error: ' message on stderr: {result.stderr!r}"
        message = result.stderr[at:].strip()
    assert len(message) > 25, f"too terse to act on: {message!r}"
    lowered = message.lower()
    for word in words:
        assert word.lower() in lowered, f"{word!r} not in {message!r}"
    assert result.stdout == "", f"an error also printed on stdout: {result.stdout!r}"
    return message


# -- the state of a store --------------------------------------------------------------------------


def records(store: Path, *, counters: bool = True) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every record of every named database, read with the lmdb module directly."""
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=64, subdir=True, create=False)
    try:
        with env.begin() as txn:
            names = [name for name, _ in txn.cursor()]
            out = {}
            for name in names:
                if name == b"counters" and not counters:
                    continue
                db = env.open_db(name, txn=txn, create=False)
                out[name] = list(txn.cursor(db=db))
        return out
    finally:
        env.close()


def exact(store: Path) -> dict[str, Any]:
    """The store as bytes: nothing may have been written at all."""
    files = sorted(p.name for p in store.iterdir())
    data = {name: hashlib.sha256((store / name).read_bytes()).hexdigest() for name in files if name != "lock.mdb"}
    return {"files": files, "bytes": data, "records": records(store)}


def logical(store: Path) -> dict[str, Any]:
    """The store's records, refused-attempt counters aside (a refused key is counted, by design)."""
    counts = dict(records(store).get(b"counters", []))
    return {"files": sorted(p.name for p in store.iterdir()), "records": records(store, counters=False),
            "counters": {k: v for k, v in counts.items() if b"/refused/" not in k},
            "pepper": (store / "pepper").read_bytes()}


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its SHA-256; nothing may appear or disappear.

    An existing LMDB lock file is only checked for presence: LMDB rewrites its reader table on any open.
    """
    return {str(p.relative_to(path)): ("lock file" if p.name == "lock.mdb" else
                                       hashlib.sha256(p.read_bytes()).hexdigest()) if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


# -- a supplier store and a platform store, made with the CLI --------------------------------------


@pytest.fixture
def world_keys() -> int:
    """The ``world`` fixture (conftest.py) issues 30 keys here: these cases need only a few."""
    return 30


# -- malformed keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("group", range(1, 9))
def test_malformed_key_names_the_group(world: World, group: int) -> None:
    before = logical(world.platform)
    key = typo(world.keys[group], group, pos=2, symbols="XY")
    result = kv("--store", world.platform, "verify", "--json", key)
    assert result.exit_code == EXIT_REFUSED
    (doc,) = json_lines(result)
    assert doc["status"] == "malformed" and doc["group"] == group
    assert f"group {group}" in doc["message"]
    human = kv("--store", world.platform, "verify", key)
    assert human.exit_code == EXIT_REFUSED and f"group {group}" in human.stdout and "malformed" in human.stdout
    assert logical(world.platform) == before


@pytest.mark.parametrize("make, group, words", [
    (lambda k: swapped(k, 6), 6, "swapped"),
    (lambda k: "-".join(g if i != 2 else g[:3] for i, g in enumerate(k.split("-"))), 3, "group 3 has 3 characters"),
    (lambda k: "-".join(g if i != 6 else "U" + g[1:] for i, g in enumerate(k.split("-"))), 7, "alphabet"),
    (lambda k: "-".join(g if i != 4 else g[:1] + "*" + g[2:] for i, g in enumerate(k.split("-"))), 5, "alphabet"),
    (lambda k: "", None, "empty"),
    (lambda k: k * 9, None, "too long"),
])
def test_malformed_key_kinds(world: World, make: Any, group: int | None, words: str) -> None:
    before = logical(world.platform)
    result = kv("--store", world.platform, "verify", "--json", make(world.keys[0]))
    assert result.exit_code == EXIT_REFUSED
    (doc,) = json_lines(result)
    assert doc["status"] == "malformed" and doc.get("group") == group
    assert words in doc["message"]
    assert logical(world.platform) == before


def test_malformed_key_on_a_store_that_also_holds_imported_codes(world: World) -> None:
    """A typo is still told by group when the store also holds upstream codes."""
    cards = world.root / "codes.csv"
    cards.write_text("code\n" + "".join(f"UP{secrets.token_hex(12)}\n" for _ in range(5)))
    ok("--store", world.supplier_store, "batch", "import", "--supplier", world.identity, "--product", "UP", cards,
       "--manifest-out", world.root / "codes.kvm")
    ok("--store", world.platform, "manifest", "import", world.root / "codes.kvm")
    result = kv("--store", world.platform, "verify", "--json", typo(world.keys[0], 6, pos=2, symbols="XY"),
                swapped(world.keys[1], 7))
    assert result.exit_code == EXIT_REFUSED
    docs = json_lines(result)
    assert [(d["status"], d.get("group")) for d in docs] == [("malformed", 6), ("malformed", 7)]


def test_malformed_key_everywhere_else(world: World) -> None:
    bad = typo(world.keys[0], 5, pos=2, symbols="XY")
    before = logical(world.platform)
    redeem = kv("--store", world.platform, "redeem", "--json", bad, "--order", "O-1")
    assert redeem.exit_code == EXIT_REFUSED and json.loads(redeem.stdout)["status"] == "malformed"
    void = kv("--store", world.platform, "void", "--json", bad, "--reason", "refund")
    assert void.exit_code == EXIT_REFUSED and json.loads(void.stdout)["status"] == "malformed"
    refused(kv("--store", world.platform, "trace", bad), "not in this store")
    refused(kv("--store", world.platform, "blacklist", "add", "--key", bad, "--reason", "x"), "not in this store",
            "nothing was changed")
    refused(kv("--store", world.platform, "blacklist", "add", "--serial", "7KQ2-00A", "--reason", "x"), "serial")
    assert logical(world.platform) == before
    assert json_lines(ok("--store", world.platform, "verify", "--json", world.keys[0]))[0]["status"] == "valid"


# -- unknown batch, serial, supplier ---------------------------------------------------------------


def test_unknown_batch_serial_and_supplier(world: World) -> None:
    prefix = world.batch.split("-")[0]
    other_batch = f"{prefix}-ZZZ"
    other_serial = f"{other_batch}-00001"
    before = exact(world.platform)
    for args, words in (
        (("--batch", other_batch), ("batch", other_batch, "not in this store", "keyvault stats")),
        (("--batch", "7KQ2-00A"), ("not in this store",)),
        (("--batch", "not-a-batch!"), ("batch id", "not valid")),
        (("--serial", other_serial), ("serial", "not in this store")),
        (("--supplier", "0123456789abcdef"), ("no such supplier",)),
    ):
        refused(kv("--store", world.platform, "blacklist", "add", *args, "--reason", "stolen"), *words)
        refused(kv("--store", world.platform, "blacklist", "remove", *args, "--reason", "found"))
    refused(kv("--store", world.platform, "blacklist", "remove", "--batch", world.batch, "--reason", "x"),
            "not blacklisted")
    refused(kv("--store", world.platform, "trace", other_serial), "not in this store")
    assert exact(world.platform) == before


# -- manifests: tampered, truncated, empty, colliding ----------------------------------------------


def _layout(manifest: Path) -> dict[str, int]:
    data = manifest.read_bytes()
    header_length = int.from_bytes(data[108:112], "big")
    body = 112 + header_length
    return {"magic": 0, "magic_end": 11, "public_key": 12, "public_key_end": 43, "signature": 44,
            "signature_end": 107, "header_length_high": 108, "header_length_low": 111, "header": 112,
            "header_middle": 112 + header_length // 2, "header_end": body - 1, "body": body,
            "body_middle": (body + len(data)) // 2, "last_byte": len(data) - 1}


def test_manifest_layout_is_what_these_tests_assume(world: World) -> None:
    data = world.manifest.read_bytes()
    layout = _layout(world.manifest)
    assert data[:12] == b"KVMANIFEST2\n"
    header = json.loads(data[112:layout["body"]])
    assert header["batch"] == world.batch and len(data) - layout["body"] == header["body_length"]


@pytest.mark.parametrize("where", ["magic", "magic_end", "public_key", "public_key_end", "signature", "signature_end",
                                   "header_length_high", "header_length_low", "header", "header_middle",
                                   "header_end", "body", "body_middle", "last_byte"])
def test_tampered_manifest_is_refused(tmp_path: Path, world: World, where: str) -> None:
    fresh = tmp_path / "fresh-platform"
    ok("--store", fresh, "init")
    data = bytearray(world.manifest.read_bytes())
    data[_layout(world.manifest)[where]] ^= 0x01
    bad = tmp_path / "tampered.kvm"
    bad.write_bytes(bytes(data))
    before_fresh, before_platform = exact(fresh), exact(world.platform)
    message = refused(kv("--store", fresh, "manifest", "import", bad, "--json"))
    assert any(w in message for w in ("signature", "damaged", "truncated", "not a keyvault manifest", "extra bytes"))
    refused(kv("--store", world.platform, "manifest", "import", bad))  # not "already had" either
    assert exact(fresh) == before_fresh and exact(world.platform) == before_platform


def test_every_single_byte_flip_is_refused_by_the_library(tmp_path: Path, world: World) -> None:
    good = world.manifest.read_bytes()
    bad = tmp_path / "flip.kvm"
    with Vault.init(tmp_path / "lib-platform") as vault:
        before = vault.stats()
        for offset in range(len(good)):
            for mask in (0x01, 0x80):
                data = bytearray(good)
                data[offset] ^= mask
                bad.write_bytes(bytes(data))
                with pytest.raises(ManifestError):
                    vault.import_manifest(bad)
        assert vault.stats() == before
        assert vault.catalog().batches == {}


@pytest.mark.parametrize("cut", ["0", "1", "11", "12", "50", "108", "111", "112", "header_middle", "body-1",
                                 "body", "body_middle", "len-16", "len-1"])
def test_truncated_manifest_is_refused(tmp_path: Path, world: World, cut: str) -> None:
    data = world.manifest.read_bytes()
    layout = _layout(world.manifest)
    length = {"header_middle": layout["header_middle"], "body-1": layout["body"] - 1, "body": layout["body"],
              "body_middle": layout["body_middle"], "len-16": len(data) - 16, "len-1": len(data) - 1}.get(cut)
    length = int(cut) if length is None else length
    short = tmp_path / "short.kvm"
    short.write_bytes(data[:length])
    fresh = tmp_path / "fresh"
    ok("--store", fresh, "init")
    before = exact(fresh)
    refused(kv("--store", fresh, "manifest", "import", short), "empty" if length == 0 else "truncated")
    assert exact(fresh) == before
    with Vault.open(fresh) as vault, pytest.raises(ManifestError):
        vault.import_manifest(short)
    assert exact(fresh) == before


def test_manifest_with_extra_bytes_or_not_a_manifest(tmp_path: Path, world: World) -> None:
    longer = tmp_path / "longer.kvm"
    longer.write_bytes(world.manifest.read_bytes() + b"\0")
    other = tmp_path / "notes.kvm"
    other.write_bytes(b"these are not the bytes you are looking for\n" * 4)
    fresh = tmp_path / "fresh"
    ok("--store", fresh, "init")
    before = exact(fresh)
    refused(kv("--store", fresh, "manifest", "import", longer), "extra bytes")
    refused(kv("--store", fresh, "manifest", "import", other), "not a keyvault manifest")
    refused(kv("--store", fresh, "manifest", "import", world.keys_csv), "not a keyvault manifest")
    refused(kv("--store", fresh, "manifest", "import", tmp_path / "missing.kvm"), "does not exist")
    refused(kv("--store", fresh, "manifest", "import", tmp_path), code=EXIT_USAGE)  # a directory
    assert exact(fresh) == before


def test_manifest_whose_prefix_belongs_to_another_supplier(tmp_path: Path, world: World) -> None:
    prefix = world.batch.split("-")[0]
    impostor = tmp_path / "impostor.identity"
    ok("supplier", "init", "--name", "Impostor Ltd", "--out", impostor, "--prefix", prefix)
    other_store = tmp_path / "impostor-store"
    ok("--store", other_store, "init")
    for n in range(2):
        ok("--store", other_store, "batch", "issue", "--supplier", impostor, "--product", "FAKE", "--count", 5,
           "--keys-out", tmp_path / f"fake{n}.csv", "--manifest-out", tmp_path / f"fake{n}.kvm")
    public = tmp_path / "impostor.pub"
    public.write_bytes(ok("identity", "show", "--public", impostor).stdout_bytes)
    before = exact(world.platform)
    # No second supplier is pinned under a prefix one already holds ...
    refused(kv("--store", world.platform, "trust", "add", public), prefix, "already belongs", "Acme Games")
    assert exact(world.platform) == before
    # ... and pinned in another role, it signs no manifest, under any prefix.
    ok("--store", world.platform, "trust", "add", public, "--role", "distributor")
    before = exact(world.platform)
    refused(kv("--store", world.platform, "manifest", "import", tmp_path / "fake0.kvm"), "only as distributor")
    refused(kv("--store", world.platform, "manifest", "import", tmp_path / "fake1.kvm"), "only as distributor")
    assert exact(world.platform) == before


# -- stores: wrong pepper, not a store, other format -----------------------------------------------


def test_swapped_peppers_are_refused(tmp_path: Path, world: World) -> None:
    a, b = world.supplier_store / "pepper", world.platform / "pepper"
    pa, pb = a.read_bytes(), b.read_bytes()
    before_a, before_b = exact(world.supplier_store), exact(world.platform)
    a.write_bytes(pb)
    b.write_bytes(pa)
    for store, pepper in ((world.supplier_store, a), (world.platform, b)):
        assert stat.S_IMODE(pepper.stat().st_mode) == 0o600
        refused(kv("--store", store, "stats", "--json"), "does not belong to this store", "restore")
        refused(kv("--store", store, "verify", world.keys[0]), "does not belong to this store")
        refused(kv("--store", store, "redeem", world.keys[0], "--order", "O-1"), "does not belong to this store")
        with pytest.raises(PepperError):
            Vault.open(store)
    a.write_bytes(pa)
    b.write_bytes(pb)
    assert exact(world.supplier_store) == before_a and exact(world.platform) == before_b
    assert json_lines(ok("--store", world.platform, "verify", "--json", world.keys[0]))[0]["status"] == "valid"


def test_pepper_file_option_pointing_at_another_stores_pepper(world: World) -> None:
    before = exact(world.platform)
    refused(kv("--store", world.platform, "--pepper-file", world.supplier_store / "pepper", "stats"),
            "does not belong to this store")
    assert exact(world.platform) == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_pepper_readable_by_others_is_refused(world: World, mode: int) -> None:
    pepper = world.platform / "pepper"
    before = exact(world.platform)
    pepper.chmod(mode)
    try:
        refused(kv("--store", world.platform, "verify", world.keys[0]), "pepper", f"{mode:04o}", "chmod 600")
        with pytest.raises(PepperError):
            Vault.open(world.platform)
    finally:
        pepper.chmod(0o600)
    assert exact(world.platform) == before


@pytest.mark.parametrize("content, words", [(None, "missing"), (b"", "damaged"), (b"not hex at all\n", "damaged"),
                                            (b"abcd\n", "damaged")])
def test_missing_or_damaged_pepper(world: World, content: bytes | None, words: str) -> None:
    pepper = world.platform / "pepper"
    saved = pepper.read_bytes()
    records_before = records(world.platform)
    if content is None:
        pepper.unlink()
    else:
        pepper.write_bytes(content)
    refused(kv("--store", world.platform, "stats"), "pepper", words)
    assert records(world.platform) == records_before
    pepper.unlink(missing_ok=True)
    pepper.write_bytes(saved)
    pepper.chmod(0o600)
    ok("--store", world.platform, "stats")  # with its own pepper back, the store works as before


def _not_stores(root: Path) -> dict[str, Path]:
    made = {}
    empty = root / "empty"
    empty.mkdir(parents=True)
    made["empty directory"] = empty
    files = root / "random-files"
    files.mkdir()
    (files / "notes.txt").write_text("groceries\n")
    (files / "blob.bin").write_bytes(os.urandom(4096))
    made["directory of random files"] = files
    fake = root / "random-data-mdb"
    fake.mkdir()
    (fake / "data.mdb").write_bytes(os.urandom(16384))
    made["random data.mdb"] = fake
    other = root / "other-lmdb"
    env = lmdb.open(str(other), max_dbs=4)
    things = env.open_db(b"things")
    with env.begin(write=True) as txn:
        txn.put(b"hello", b"world")
        txn.put(b"k", b"v", db=things)
    env.close()
    made["another program's LMDB"] = other
    meta = root / "lmdb-with-meta"
    env = lmdb.open(str(meta), max_dbs=4)
    db = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"owner", b"someone else", db=db)
    env.close()
    made["LMDB with a meta database"] = meta
    return made


@pytest.mark.parametrize("kind", ["empty directory", "directory of random files", "random data.mdb",
                                  "another program's LMDB", "LMDB with a meta database"])
def test_directory_that_is_not_a_keyvault_store(tmp_path: Path, world: World, kind: str) -> None:
    path = _not_stores(tmp_path / "dirs")[kind]
    before = tree(path)
    for args in (("stats", "--json"), ("verify", world.keys[0]), ("blacklist", "list"),
                 ("manifest", "import", world.manifest)):
        message = refused(kv("--store", path, *args))
        assert str(path) in message
        assert any(w in message for w in ("not a keyvault store", "damaged", "format")), message
    with pytest.raises(StoreError):
        Vault.open(path)
    assert tree(path) == before, "refusing a directory must not change it"


def test_not_a_store_messages(tmp_path: Path) -> None:
    dirs = _not_stores(tmp_path)
    refused(kv("--store", dirs["empty directory"], "stats"), "not a keyvault store", "init")
    refused(kv("--store", dirs["another program's LMDB"], "stats"), "not a keyvault store")
    with pytest.raises(NotAStoreError):
        Vault.open(dirs["empty directory"])
    with pytest.raises(NotAStoreError):
        Vault.open(tmp_path / "does-not-exist")
    assert not (tmp_path / "does-not-exist").exists()


def test_store_path_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    a_file = tmp_path / "store.txt"
    a_file.write_text("x")
    refused(kv("--store", a_file, "stats"), code=EXIT_USAGE)
    assert a_file.read_text() == "x"


def test_init_into_a_non_empty_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    before = tree(target)
    refused(kv("--store", target, "init"), "not empty")
    assert tree(target) == before


def test_store_of_another_format_version_is_refused(tmp_path: Path, world: World) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(world.platform, copy)
    env = lmdb.open(str(copy), max_dbs=64)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn, create=False)
        assert txn.get(b"format", db=meta) == b"keyvault-store/3"
        txn.put(b"format", b"keyvault-store/999", db=meta)
    env.close()
    before = exact(copy)
    for args in (("stats", "--json"), ("verify", world.keys[0]), ("redeem", world.keys[0], "--order", "O-1")):
        refused(kv("--store", copy, *args), "keyvault-store/999", "keyvault-store/3")
    with pytest.raises(StoreVersionError):
        Vault.open(copy)
    assert exact(copy) == before
    # The original is untouched and still works.
    assert json_lines(ok("--store", world.platform, "verify", "--json", world.keys[0]))[0]["status"] == "valid"


# -- identities ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666])
def test_identity_readable_by_others_is_refused(world: World, mode: int) -> None:
    world.identity.chmod(mode)
    before = exact(world.supplier_store)
    keys_out, manifest_out = world.root / "k2.csv", world.root / "m2.kvm"
    refused(kv("--store", world.supplier_store, "batch", "issue", "--supplier", world.identity, "--product", "P",
               "--count", 5, "--keys-out", keys_out, "--manifest-out", manifest_out), f"{mode:04o}", "chmod 600")
    cards = world.root / "cards.csv"
    cards.write_text("code\nABCDEFGHJK123\n")
    refused(kv("--store", world.supplier_store, "batch", "import", "--supplier", world.identity, "--product", "P",
               cards, "--manifest-out", manifest_out), "chmod 600")
    assert not keys_out.exists() and not manifest_out.exists()
    assert exact(world.supplier_store) == before


@pytest.mark.parametrize("content, words", [(b"", "cannot be read"), (b"{not json", "cannot be read"),
                                            (b'{"kind": "keyvault-identity", "version": 1}', "not a valid"),
                                            (None, "does not exist")])
def test_damaged_or_missing_identity(world: World, content: bytes | None, words: str) -> None:
    path = world.root / "broken.identity"
    if content is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, content)
        os.close(fd)
    before = exact(world.supplier_store)
    refused(kv("--store", world.supplier_store, "batch", "issue", "--supplier", path, "--product", "P",
               "--count", 5, "--keys-out", world.root / "k.csv", "--manifest-out", world.root / "m.kvm"), words)
    with pytest.raises(IdentityError):
        Identity.load(path)
    assert not (world.root / "k.csv").exists() and not (world.root / "m.kvm").exists()
    assert exact(world.supplier_store) == before


# -- upstream CSVs ---------------------------------------------------------------------------------


CSV_CASES = {
    "missing columns": (b"serial_no,value\n123,456\n", ("header needs", "code", "card_number", "password")),
    "card number without password column": (b"card_number,amount\n123456,50\n", ("header needs",)),
    "duplicate codes": (b"code\nAAAA1111BBBB\nCCCC2222DDDD\nAAAA1111BBBB\n", ("line 4", "line 2", "repeats")),
    "duplicate after folding": (b"code\nAAAA-1111-BBBB\naaaa1111bbbb\n", ("line 3", "repeats")),
    "duplicate card numbers": (b"card_number,password\n8800123,pw1xyz\n8800123,pw2xyz\n", ("line 3", "repeats")),
    "empty code": (b"code,note\nAAAA1111BBBB,x\n,y\n", ("line 3", "empty")),
    "empty password": (b"card_number,password\n8800123,pw1xyz\n8800124,\n", ("line 3", "password", "empty")),
    "empty card number": (b"card_number,password\n,pw1xyz\n", ("line 2", "card number", "empty")),
    "header only": (b"code\n", ("no cards",)),
    "header only, pairs": (b"card_number,password\n\n\n", ("no cards",)),
    "empty file": (b"", ("empty",)),
    "blank file": (b"\n \n", ("empty",)),
    "short row": (b"card_number,password\n8800123,pw1xyz\n8800124\n", ("line 3", "fields")),
    "not utf-8": (b"code\n\xff\xfeAAAA\n", ("utf-8",)),
    "nul bytes": (b"code\nAAAA\x00BBBB\n", ("nul",)),
    "colon in a code": (b"code\nAAAA:BBBB1234\n", ("line 2", "':'")),
    "code too long": (b"code\n" + b"A" * 200 + b"\n", ("line 2", "at most")),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_upstream_csv_is_refused(world: World, case: str) -> None:
    content, words = CSV_CASES[case]
    cards = world.root / "cards.csv"
    cards.write_bytes(content)
    manifest_out = world.root / "cards.kvm"
    before = exact(world.supplier_store)
    refused(kv("--store", world.supplier_store, "batch", "import", "--supplier", world.identity, "--product",
               "PHONE-30", cards, "--manifest-out", manifest_out, "--json"), *words)
    assert not manifest_out.exists()
    assert exact(world.supplier_store) == before


def test_native_key_in_an_upstream_csv_is_refused(world: World) -> None:
    cards = world.root / "cards.csv"
    cards.write_text(f"code\nAAAA1111BBBB\n{world.keys[0]}\n")
    before = exact(world.supplier_store)
    message = refused(kv("--store", world.supplier_store, "batch", "import", "--supplier", world.identity,
                         "--product", "P", cards, "--manifest-out", world.root / "c.kvm"), "line 3", "native")
    assert world.keys[0] not in message
    assert exact(world.supplier_store) == before


def test_card_already_in_another_batch_is_refused_and_changes_nothing(world: World) -> None:
    first = world.root / "first.csv"
    first.write_text("code\nSHARED0000CODE1\nOWN000000CODE2\n")
    ok("--store", world.supplier_store, "batch", "import", "--supplier", world.identity, "--product", "P", first,
       "--manifest-out", world.root / "first.kvm")
    second = world.root / "second.csv"
    second.write_text("code\nNEW0000000CODE3\nshared0000code1\n")
    before = exact(world.supplier_store)
    refused(kv("--store", world.supplier_store, "batch", "import", "--supplier", world.identity, "--product", "P",
               second, "--manifest-out", world.root / "second.kvm"), "already in this store", "nothing")
    assert not (world.root / "second.kvm").exists(), "a signed manifest was left behind for a refused batch"
    assert exact(world.supplier_store) == before


def test_platform_refuses_a_card_sold_in_two_batches(tmp_path: Path, world: World) -> None:
    shared = "DOUBLE0000SOLD77"
    manifests = []
    for name in ("alpha", "beta"):
        identity, store = tmp_path / f"{name}.identity", tmp_path / f"{name}-store"
        ok("supplier", "init", "--name", name.title(), "--out", identity)
        ok("--store", store, "init")
        cards = tmp_path / f"{name}.csv"
        cards.write_text(f"code\n{shared}\n{name.upper()}0000ONLY{secrets.token_hex(4)}\n")
        manifests.append(tmp_path / f"{name}.kvm")
        ok("--store", store, "batch", "import", "--supplier", identity, "--product", "P", cards,
           "--manifest-out", manifests[-1])
    for name in ("alpha", "beta"):
        trust_cli(world.platform, tmp_path / f"{name}.identity")
    ok("--store", world.platform, "manifest", "import", manifests[0])
    before = exact(world.platform)
    refused(kv("--store", world.platform, "manifest", "import", manifests[1]), "already in this store",
            "sold twice")
    assert exact(world.platform) == before


# -- arguments -------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["", "   ", "\t"])
def test_redeem_with_an_empty_order_id(world: World, order: str) -> None:
    before = exact(world.platform)
    refused(kv("--store", world.platform, "redeem", world.keys[0], "--order", order), "order id", "empty")
    refused(kv("--store", world.platform, "redeem", "--json", world.keys[0], "--order", order), "order id")
    assert exact(world.platform) == before
    assert json_lines(ok("--store", world.platform, "verify", "--json", world.keys[0]))[0]["status"] == "valid"


def test_other_bad_arguments_change_nothing(world: World) -> None:
    before = exact(world.platform)
    refused(kv("--store", world.platform, "redeem", world.keys[0], "--order", "x" * 200), "order id", "at most")
    refused(kv("--store", world.platform, "redeem", world.keys[0], "--order", "bad\x07id"), "order id")
    refused(kv("--store", world.platform, "void", world.keys[0], "--reason", " "), "reason", "empty")
    refused(kv("--store", world.platform, "blacklist", "add", "--batch", world.batch, "--reason", ""), "reason")
    refused(kv("--store", world.platform, "blacklist", "add", "--key", world.keys[0], "--reason", "r" * 600),
            "reason", "at most")
    assert exact(world.platform) == before


def test_issue_refuses_existing_outputs_and_changes_nothing(world: World) -> None:
    before = exact(world.supplier_store)
    taken = world.root / "taken.kvm"
    taken.write_bytes(b"keep me")
    refused(kv("--store", world.supplier_store, "batch", "issue", "--supplier", world.identity, "--product", "P",
               "--count", 5, "--keys-out", world.root / "new.csv", "--manifest-out", taken), "already exists")
    assert taken.read_bytes() == b"keep me" and not (world.root / "new.csv").exists()
    refused(kv("--store", world.supplier_store, "batch", "issue", "--supplier", world.identity, "--product", "P",
               "--count", 5, "--keys-out", world.keys_csv, "--manifest-out", world.root / "new.kvm"),
            "already exists")
    assert not (world.root / "new.kvm").exists()
    assert exact(world.supplier_store) == before


def test_issue_with_bad_product_or_window(world: World) -> None:
    before = exact(world.supplier_store)
    base = ("--store", world.supplier_store, "batch", "issue", "--supplier", world.identity, "--count", 5,
            "--keys-out", world.root / "n.csv", "--manifest-out", world.root / "n.kvm")
    refused(kv(*base, "--product", "  "), "product")
    refused(kv(*base, "--product", "P", "--valid-days", 0), code=EXIT_USAGE)
    refused(kv(*base, "--product", "P", "--valid-from", "yesterday"), code=EXIT_USAGE)
    refused(kv(*base, "--product", "P", "--count", "many"), code=EXIT_USAGE)
    assert not (world.root / "n.csv").exists() and not (world.root / "n.kvm").exists()
    assert exact(world.supplier_store) == before


@pytest.mark.parametrize("args", [
    ("init",), ("stats", "--json"), ("verify", "KEY"), ("redeem", "KEY", "--order", "O"),
    ("void", "KEY", "--reason", "r"),
    ("trace", "KEY"), ("blacklist", "list"), ("blacklist", "add", "--batch", "7KQ2-00A", "--reason", "r"),
    ("manifest", "import", "MANIFEST"),
    ("batch", "issue", "--supplier", "ID", "--product", "P", "--count", "5", "--keys-out", "K", "--manifest-out", "M"),
])
def test_missing_store_is_a_usage_error(tmp_path: Path, world: World, args: tuple[str, ...],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    names = {"KEY": world.keys[0], "MANIFEST": str(world.manifest), "ID": str(world.identity),
             "K": str(tmp_path / "k.csv"), "M": str(tmp_path / "m.kvm")}
    before = exact(world.platform)
    monkeypatch.chdir(tmp_path)  # a store must never be created in the working directory by default
    message = refused(kv(*[names.get(a, a) for a in args]), code=EXIT_USAGE)
    assert "--store" in message and "KEYVAULT_STORE" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    assert exact(world.platform) == before


def test_errors_are_keyvault_errors_in_the_library(tmp_path: Path, world: World) -> None:
    """The library raises the documented exceptions, all under KeyvaultError."""
    with Vault.open(world.platform) as vault:
        for call in (lambda: vault.redeem(world.keys[0], ""), lambda: vault.void(world.keys[0], ""),
                     lambda: vault.blacklist("batch", "ZZZZ-ZZZ", "r"), lambda: vault.blacklist("level", "x", "r"),
                     lambda: vault.trace(display_key(_fast.encode_key(parse_serial(world.serials[0]), 5))),
                     lambda: vault.import_manifest(tmp_path / "nothing.kvm")):
            with pytest.raises(KeyvaultError):
                call()
