"""Backups of a serving store and restores: consistent under load, checked, refused when stale, forked or altered."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_support import EXIT_ERROR, EXIT_REFUSED, kv, ok, one_json
from conftest import issue

from keyvault import Identity, PepperError, ProofError, StoreError, StoreExistsError, Vault
from keyvault.errors import StoreCorruptError, StoreFullError, UsageError
from keyvault.formats.events import parse_leaf
from keyvault.store import LmdbStore


def make_store(root: Path, supplier: Identity, count: int = 60, redeem: int = 5) -> list[str]:
    """A store at ``root`` that issued ``count`` keys and redeemed the first ``redeem``; its keys. Closed after."""
    with Vault.init(root) as vault:
        keys = issue(vault, supplier, root.parent / f"{root.name}-files", count=count).keys
        for i, key in enumerate(keys[:redeem]):
            assert vault.redeem(key, f"order-{i}").status.value == "accepted"
    return keys


def redeems_in(store: Path, pepper: Path | None = None) -> list[tuple[str, str]]:
    """(serial, order id) of every redeem event in a store's log, in log order."""
    with Vault.open(store, pepper_file=pepper) as vault:
        engine = vault.engine
        with engine.store.read() as txn:
            events = [parse_leaf(bytes(leaf)) for _, leaf in txn.items("events")]
    return [(e["serial"], e["order_id"]) for e in events if e["type"] == "redeem"]


def leftovers(parent: Path) -> list[str]:
    """Temporary directories a backup or restore left beside its destination."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- under load --------------------------------------------------------------------------------


def test_backup_under_redeem_load_is_consistent_and_restores_every_redeem(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    keys = make_store(store, supplier, count=3000, redeem=0)
    acked: list[tuple[str, str]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    with Vault.open(store) as vault:

        def redeem_storm() -> None:
            try:
                for i, key in enumerate(keys):
                    if stop.is_set():
                        return
                    result = vault.redeem(key, f"load-{i}")
                    assert result.status.value == "accepted", result
                    acked.append((result.serial, f"load-{i}"))
            except BaseException as exc:  # reported to the test below
                errors.append(exc)

        worker = threading.Thread(target=redeem_storm)
        worker.start()
        try:
            while len(acked) < 50 and worker.is_alive():
                threading.Event().wait(0.001)
            manifest = vault.backup(tmp_path / "backup")
            at_backup = len(acked)
            while len(acked) < manifest["redeemed"] + 50 and worker.is_alive():
                threading.Event().wait(0.001)
        finally:
            stop.set()
            worker.join()
        assert not errors, errors
        note = vault.checkpoint()

    # The copy is one snapshot: its redeems are the first ones acknowledged, in order, and the load went on.
    assert 50 <= manifest["redeemed"] < len(acked)
    assert manifest["redeemed"] <= at_backup + 1  # at most the one in flight when the copy began
    restored = tmp_path / "restored"
    doc = Vault.restore(tmp_path / "backup", restored, pepper_file=store / "pepper")
    assert doc["warning"] and "--since" in doc["warning"]
    in_backup = redeems_in(restored, store / "pepper")
    assert len(in_backup) == manifest["redeemed"]
    assert in_backup == acked[:len(in_backup)]
    # The restored store refuses every key the backup recorded as redeemed, and answers the others.
    spent = {serial for serial, _ in in_backup}
    with Vault.open(restored, pepper_file=store / "pepper") as vault:
        answers = vault.verify_many(keys[:len(acked)])
        for (serial, order), answer in zip(acked, answers):
            if serial in spent:
                assert answer.status.value == "redeemed" and answer.order_id == order
            else:
                assert answer.status.value == "valid"  # redeemed after the backup: why --since matters
        for key in keys[:len(in_backup)]:
            assert vault.redeem(key, "again").status.value == "redeemed"
        assert vault.check()["ok"]
    # The checkpoint kept after the load proves this backup stale.
    with pytest.raises(ProofError, match="does not extend the checkpoint you pinned"):
        Vault.restore(tmp_path / "backup", tmp_path / "restored-2", since=note, pepper_file=store / "pepper")
    assert not (tmp_path / "restored-2").exists()
    assert leftovers(tmp_path) == []


# -- what a backup holds -----------------------------------------------------------------------


def test_backup_holds_a_checked_manifest_the_engine_key_and_no_pepper(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    keys = make_store(store, supplier, count=60, redeem=7)
    with Vault.open(store) as vault:
        assert vault.void(keys[-1], "lost").status.value == "void"
        manifest = vault.backup(tmp_path / "b")
        events = vault.verify_log()
        newest = vault.checkpoints()[-1]
    backup = tmp_path / "b"
    assert sorted(os.listdir(backup)) == ["backup.json", "data.mdb", "engine.key"]
    assert mode(backup / "engine.key") == 0o600
    assert mode(backup) == 0o700
    doc = json.loads((backup / "backup.json").read_text())
    assert doc == {k: v for k, v in manifest.to_dict().items() if k != "path"}
    assert (doc["format"], doc["batches"], doc["keys"], doc["redeemed"], doc["void"]) == \
        ("keyvault/backup/v1", 1, 60, 7, 1)
    assert doc["log_size"] == events and doc["checkpoint"]["size"] == events == newest["size"]
    assert doc["checkpoint"]["note"] == newest["note"] and doc["pepper"] is False
    pepper = (store / "pepper").read_bytes()
    assert all(pepper.strip() not in p.read_bytes() for p in backup.iterdir())


def test_with_pepper_writes_it_0600_and_restore_uses_it(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    keys = make_store(store, supplier)
    with Vault.open(store) as vault:
        vault.backup(tmp_path / "b", with_pepper=True)
    assert mode(tmp_path / "b" / "pepper") == 0o600
    assert (tmp_path / "b" / "pepper").read_bytes() == (store / "pepper").read_bytes()
    doc = Vault.restore(tmp_path / "b", tmp_path / "r")
    assert doc["pepper_file"] == str(tmp_path / "r" / "pepper")
    assert mode(tmp_path / "r" / "pepper") == 0o600 and mode(tmp_path / "r" / "engine.key") == 0o600
    with Vault.open(tmp_path / "r") as vault:
        assert vault.verify(keys[0]).status.value == "redeemed"
        assert vault.verify(keys[-1]).status.value == "valid"


def test_dest_must_be_new_or_empty(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    make_store(store, supplier)
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with Vault.open(store) as vault:
        with pytest.raises(UsageError, match="not empty"):
            vault.backup(full)
        with pytest.raises(UsageError, match="is a file"):
            vault.backup(a_file)
        with pytest.raises(StoreExistsError):
            vault.backup(store)
        with pytest.raises(UsageError, match="does not exist"):
            vault.backup(tmp_path / "no" / "such")
        assert os.listdir(full) == ["notes.txt"]
        empty = tmp_path / "empty"
        empty.mkdir()
        vault.backup(empty)
    assert (empty / "backup.json").exists()
    assert leftovers(tmp_path) == []


def test_a_failed_backup_leaves_nothing_behind(tmp_path: Path, supplier: Identity,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "live"
    make_store(store, supplier)
    real = LmdbStore.copy_to

    def copy_then_fail(self: LmdbStore, dest: Path) -> None:
        real(self, dest)
        raise StoreFullError("the disk is full (simulated)")

    monkeypatch.setattr(LmdbStore, "copy_to", copy_then_fail)
    with Vault.open(store) as vault:
        with pytest.raises(StoreFullError):
            vault.backup(tmp_path / "b")
        assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []
        monkeypatch.setattr(LmdbStore, "copy_to", real)
        monkeypatch.setattr("keyvault.engine.backup._figures", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
        with pytest.raises(StoreFullError, match="nothing was left behind"):
            vault.backup(tmp_path / "b")
        assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


# -- restore: stale, forked, altered ---------------------------------------------------------------


def test_since_a_newer_checkpoint_refuses_a_stale_backup(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    keys = make_store(store, supplier, redeem=3)
    ok("--store", store, "backup", tmp_path / "old")
    with Vault.open(store) as vault:
        vault.redeem(keys[10], "after-the-backup")
    kept = tmp_path / "kept.json"
    kept.write_text(ok("--store", store, "checkpoint", "--json").stdout)
    result = kv("--pepper-file", store / "pepper", "restore", tmp_path / "old", tmp_path / "r", "--since", kept)
    assert result.exit_code == EXIT_REFUSED, result.output
    assert "does not extend the checkpoint you pinned" in result.stderr and "rolled back" in result.stderr
    assert not (tmp_path / "r").exists() and leftovers(tmp_path) == []
    # A backup taken after the kept checkpoint extends it (a note file works as well as the JSON).
    ok("--store", store, "backup", tmp_path / "new")
    kept_note = tmp_path / "kept.note"
    kept_note.write_text(json.loads(kept.read_text())["note"])
    result = ok("restore", tmp_path / "new", tmp_path / "r", "--since", kept_note, "--pepper-file", store / "pepper")
    assert "PASS" in result.stdout and "WARNING" not in result.stderr
    with Vault.open(tmp_path / "r", pepper_file=store / "pepper") as vault:
        assert vault.verify(keys[10]).status.value == "redeemed"


def test_a_forked_stores_backup_is_refused(tmp_path: Path, supplier: Identity) -> None:
    live = tmp_path / "live"
    keys = make_store(live, supplier)
    fork = tmp_path / "fork"
    fork.mkdir(mode=0o700)
    for name in ("data.mdb", "engine.key", "pepper"):
        shutil.copy2(live / name, fork / name)
    with Vault.open(live) as vault:
        vault.redeem(keys[20], "real")
        kept = vault.checkpoint()
    with Vault.open(fork) as vault:  # same engine key, same size, another history
        vault.redeem(keys[21], "forged")
        vault.redeem(keys[22], "forged")
        vault.backup(tmp_path / "fork-backup", with_pepper=True)
    with pytest.raises(ProofError, match="does not extend"):
        Vault.restore(tmp_path / "fork-backup", tmp_path / "r", since=kept)
    assert not (tmp_path / "r").exists() and leftovers(tmp_path) == []
    # The live store's own backup passes the same check.
    with Vault.open(live) as vault:
        vault.backup(tmp_path / "live-backup", with_pepper=True)
    assert Vault.restore(tmp_path / "live-backup", tmp_path / "r", since=kept)["since"][0]["ok"]


def test_a_checkpoint_of_another_store_is_refused(tmp_path: Path, supplier: Identity) -> None:
    make_store(tmp_path / "a", supplier)
    make_store(tmp_path / "other", supplier)
    with Vault.open(tmp_path / "other") as vault:
        foreign = vault.checkpoint()
    with Vault.open(tmp_path / "a") as vault:
        vault.backup(tmp_path / "b", with_pepper=True)
    with pytest.raises(ProofError):
        Vault.restore(tmp_path / "b", tmp_path / "r", since=foreign)
    with pytest.raises(ProofError):
        Vault.restore(tmp_path / "b", tmp_path / "r", since="not a checkpoint")
    assert not (tmp_path / "r").exists()


@pytest.fixture
def backup(tmp_path: Path, supplier: Identity) -> Path:
    """A backup (with its pepper) of a store with 60 keys, 5 redeemed."""
    make_store(tmp_path / "live", supplier)
    with Vault.open(tmp_path / "live") as vault:
        vault.backup(tmp_path / "b", with_pepper=True)
    return tmp_path / "b"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [0, 4096 + 16, -1, -4000])
def test_a_flipped_byte_in_data_mdb_is_refused(tmp_path: Path, backup: Path, offset: int) -> None:
    size = (backup / "data.mdb").stat().st_size
    flip(backup / "data.mdb", offset % size)
    result = kv("restore", backup, tmp_path / "r")
    assert result.exit_code == EXIT_ERROR
    assert "data.mdb is not the file its manifest describes" in result.stderr
    assert not (tmp_path / "r").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(("field", "value", "message"), [
    ("redeemed", 4, "says redeemed 4"),
    ("void", 1, "says void 1"),
    ("keys", 61, "says keys 61"),
    ("log_size", 1, "says log_size 1"),
    ("engine_public_key", "00" * 32, "engine key is not the one"),
    ("data_sha256", "0" * 64, "not the file its manifest describes"),
    ("format", "keyvault/backup/v9", "this keyvault reads"),
    ("surprise", 1, "manifest .* is damaged"),
    ("batches", "1", "manifest .* is damaged"),
])
def test_an_edited_manifest_is_refused(tmp_path: Path, backup: Path, field: str, value: object,
                                       message: str) -> None:
    doc = json.loads((backup / "backup.json").read_text())
    doc[field] = value
    (backup / "backup.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=message):
        Vault.restore(backup, tmp_path / "r")
    assert not (tmp_path / "r").exists() and leftovers(tmp_path) == []


def test_an_edited_checkpoint_in_the_manifest_is_refused(tmp_path: Path, backup: Path) -> None:
    doc = json.loads((backup / "backup.json").read_text())
    doc["checkpoint"]["size"] -= 1
    (backup / "backup.json").write_text(json.dumps(doc))
    with pytest.raises(StoreCorruptError, match="says checkpoint"):
        Vault.restore(backup, tmp_path / "r")


def test_a_swapped_engine_key_is_refused(tmp_path: Path, backup: Path) -> None:
    (backup / "engine.key").unlink()
    Identity.generate("keyvault-engine").save(backup / "engine.key")
    with pytest.raises(StoreCorruptError, match="engine key"):
        Vault.restore(backup, tmp_path / "r")


def test_restore_refuses_an_existing_store_or_a_full_directory(tmp_path: Path, backup: Path) -> None:
    with pytest.raises(StoreExistsError):
        Vault.restore(backup, tmp_path / "live")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    result = kv("restore", backup, full)
    assert result.exit_code == EXIT_ERROR and "not empty" in result.stderr
    assert os.listdir(full) == ["x"]
    result = kv("restore", tmp_path / "live", tmp_path / "r")
    assert result.exit_code == EXIT_ERROR and "not a keyvault backup" in result.stderr


def test_pepper_wrong_or_missing_is_refused(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    make_store(store, supplier)
    make_store(tmp_path / "other", supplier)
    with Vault.open(store) as vault:
        vault.backup(tmp_path / "b")
    with pytest.raises(PepperError, match="holds no pepper"):
        Vault.restore(tmp_path / "b", tmp_path / "r")
    with pytest.raises(PepperError, match="does not belong to this store"):
        Vault.restore(tmp_path / "b", tmp_path / "r", pepper_file=tmp_path / "other" / "pepper")
    result = kv("restore", tmp_path / "b", tmp_path / "r", "--pepper-file", tmp_path / "other" / "pepper")
    assert result.exit_code == EXIT_ERROR and "does not belong to this store" in result.stderr
    assert not (tmp_path / "r").exists() and leftovers(tmp_path) == []
    # The right pepper file stays where it is: the restored store is opened with it, as the live one was.
    doc = Vault.restore(tmp_path / "b", tmp_path / "r", pepper_file=store / "pepper")
    assert doc["pepper_file"] == str(store / "pepper") and not (tmp_path / "r" / "pepper").exists()


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_json_output_of_backup_and_restore(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    make_store(store, supplier, redeem=4)
    made = one_json(ok("--store", store, "backup", tmp_path / "b", "--with-pepper", "--json"))
    assert (made["path"], made["redeemed"], made["keys"], made["pepper"]) == (str(tmp_path / "b"), 4, 60, True)
    assert made == {**json.loads((tmp_path / "b" / "backup.json").read_text()), "path": str(tmp_path / "b")}
    result = ok("restore", tmp_path / "b", tmp_path / "r", "--json")
    doc = one_json(result)
    assert doc["store"] == str(tmp_path / "r") and doc["since"] == [] and doc["manifest"]["redeemed"] == 4
    assert "--since" in doc["warning"] and "WARNING: nothing proves this backup is not stale" in result.stderr
    kept = tmp_path / "kept.json"
    kept.write_text(ok("--store", store, "checkpoint", "--json").stdout)
    doc = one_json(ok("restore", tmp_path / "b", tmp_path / "r2", "--since", kept, "--json"))
    assert [c["ok"] for c in doc["since"]] == [True] and doc["warning"] is None


def test_cli_text_output_and_bad_since_file(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    make_store(store, supplier)
    result = ok("--store", store, "backup", tmp_path / "b")
    assert "copy verified" in result.stdout and "pepper is not in the backup" in result.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{\"size\": 3}")
    result = kv("restore", tmp_path / "b", tmp_path / "r", "--since", bad, "--pepper-file", store / "pepper")
    assert result.exit_code == EXIT_ERROR and "without a \"note\"" in result.stderr
    assert not (tmp_path / "r").exists()
    result = kv("--store", store, "backup", tmp_path / "b")
    assert result.exit_code == EXIT_ERROR and "already holds a backup" in result.stderr


def test_every_pinned_checkpoint_must_be_extended(tmp_path: Path, supplier: Identity) -> None:
    store = tmp_path / "live"
    keys = make_store(store, supplier)
    with Vault.open(store) as vault:
        older = vault.checkpoint()
        vault.backup(tmp_path / "b", with_pepper=True)
        vault.redeem(keys[30], "later")
        newer = vault.checkpoint()
    assert len(Vault.restore(tmp_path / "b", tmp_path / "r", since=[older])["since"]) == 1
    with pytest.raises(ProofError):
        Vault.restore(tmp_path / "b", tmp_path / "r2", since=[older, newer])
    older_file, newer_file = tmp_path / "older.note", tmp_path / "newer.note"
    older_file.write_text(older)
    newer_file.write_text(newer)
    result = kv("restore", tmp_path / "b", tmp_path / "r2", "--since", older_file, "--since", newer_file)
    assert result.exit_code == EXIT_REFUSED and not (tmp_path / "r2").exists()


def test_backup_under_redeems_from_another_process(tmp_path: Path, supplier: Identity) -> None:
    """A serving process redeems while `keyvault backup` runs in another: the copy is one of its snapshots."""
    store = tmp_path / "live"
    keys = make_store(store, supplier, count=3000, redeem=0)
    (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
    script = (
        "import sys\n"
        "from keyvault import Vault\n"
        "keys = open(sys.argv[2]).read().split()\n"
        "with Vault.open(sys.argv[1]) as vault:\n"
        "    for i, key in enumerate(keys):\n"
        "        r = vault.redeem(key, f'p-{i}')\n"
        "        assert r.status.value == 'accepted', r\n"
        "        print(r.serial, f'p-{i}', flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(store), str(tmp_path / "keys.txt")],
                             stdout=subprocess.PIPE, text=True, cwd=tmp_path)  # the installed keyvault
    acked: list[tuple[str, str]] = []
    assert child.stdout is not None
    try:
        while len(acked) < 50:
            line = child.stdout.readline()
            assert line, "the redeeming process stopped early"
            serial, order = line.split()
            acked.append((serial, order))
        made = one_json(ok("--store", store, "backup", tmp_path / "b", "--json"))
        while len(acked) < made["redeemed"] + 50:
            line = child.stdout.readline()
            assert line, "the redeeming process stopped early"
            serial, order = line.split()
            acked.append((serial, order))
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    ok("restore", tmp_path / "b", tmp_path / "r", "--pepper-file", store / "pepper")
    in_backup = redeems_in(tmp_path / "r", store / "pepper")
    assert 50 <= len(in_backup) == made["redeemed"] < len(acked)
    assert in_backup == acked[:len(in_backup)]
    with Vault.open(tmp_path / "r", pepper_file=store / "pepper") as vault:
        assert {r.status.value for r in vault.verify_many(keys[:len(in_backup)])} == {"redeemed"}
        assert vault.verify_log() == made["log_size"]
