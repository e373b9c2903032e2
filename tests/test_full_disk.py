"""Growth and full disks: the map grows without losing a write; a full disk fails writes cleanly.

The map test starts stores at 1 MiB (instead of 256 MiB) so that a few batches make them double
several times, in this process and in another one sharing the store. The full-disk tests mount a
24 MiB tmpfs (root only; skipped with the reason otherwise), fill it, and show that a write that
cannot be made fails with :class:`~keyvault.errors.StoreFullError`, that nothing acknowledged is
lost, that the store stays consistent and readable while full, and that it works again as soon
as space returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import issue
from keyvault import Identity, KeyvaultError, Status, StoreFullError, Vault
from keyvault.store import lmdbstore

SMALL_MAP = 1 << 20


def _redeemed_as(vault: Vault, acked: dict[str, str]) -> list[str]:
    """The acknowledged redemptions the store does not hold as acknowledged (order id and all)."""
    keys = list(acked)
    results = []
    for i in range(0, len(keys), 5000):
        results += vault.verify_many(keys[i:i + 5000])
    return [k for k, r in zip(keys, results) if r.status is not Status.REDEEMED or r.order_id != acked[k]]


def _accept(vault: Vault, pairs: list[tuple[str, str]], acked: dict[str, str]) -> None:
    results = vault.redeem_many(pairs)
    assert [r.status for r in results] == [Status.ACCEPTED] * len(pairs)
    acked.update(pairs)


# -- the map grows -----------------------------------------------------------------------------------


_CHILD = """
import json, sys
from keyvault import Vault
from keyvault.store import lmdbstore
lmdbstore.INITIAL_MAP_SIZE = 1 << 20  # start from the file's own size: this process must grow the map itself
store, manifest, keys = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with Vault.open(store) as v:
    before = v.engine.store.info()["map_size"]
    v.import_manifest(manifest)
    acked = {k: f"child-{i}" for i, k in enumerate(keys)}
    assert all(r.status.value == "accepted" for r in v.redeem_many(list(acked.items())))
    info = v.engine.store.info()
    print(json.dumps({"before": before, "after": info["map_size"], "used": (info["last_pgno"] + 1) * 4096,
                      "acked": acked}))
"""


def test_the_map_grows_without_losing_a_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              supplier: Identity) -> None:
    monkeypatch.setattr(lmdbstore, "INITIAL_MAP_SIZE", SMALL_MAP)
    monkeypatch.setattr("keyvault.engine.ledger.FOLD_AT", 8_000)  # folds (bulk rewrites of card records) happen too
    files = tmp_path / "files"
    acked: dict[str, str] = {}
    shop = Identity.generate("Shop")
    with Vault.init(tmp_path / "supplier") as sup, Vault.init(tmp_path / "platform") as plat:
        assert plat.engine.store.info()["map_size"] == SMALL_MAP
        plat.trust(supplier.public)
        batches = [issue(sup, supplier, files, count=n) for n in (20_000, 20_000, 200_000)]
        assert sup.engine.store.info()["map_size"] > 2 * SMALL_MAP  # issuing grew the supplier's map
        for b in batches[:2]:
            plat.import_manifest(b.manifest)
        codes = files / "codes.csv"
        codes.write_text("code\n" + "".join(f"UP-{i:06d}\n" for i in range(5_000)))
        upstream = plat.import_cards(shop, "UPSTREAM", codes, manifest_out=files / "codes.kvm")
        keys = batches[0].keys + batches[1].keys
        for start in range(0, 24_000, 1_000):
            _accept(plat, [(k, f"order-{start + i}") for i, k in enumerate(keys[start:start + 1_000])], acked)
        # Single redeems from several threads share commits, and their retries after a resize.
        singles = keys[24_000:26_000]
        answers: dict[str, Status] = {}

        def redeem(part: list[str]) -> None:
            for key in part:
                answers[key] = plat.redeem(key, f"single-{key[-4:]}").status

        threads = [threading.Thread(target=redeem, args=(singles[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(answers.values()) == {Status.ACCEPTED}
        acked.update({k: f"single-{k[-4:]}" for k in singles})
        _accept(plat, [(f"UP-{i:06d}", f"code-{i}") for i in range(0, 5_000, 5)], acked)
        grown = plat.engine.store.info()["map_size"]
        assert grown >= 8 * SMALL_MAP and grown & (grown - 1) == 0, grown  # doubled, and doubled again
        # Another process imports a big batch and redeems from it, growing the map past the size this
        # process maps: our next transaction adopts the new size (MapResizedError) and reads what it wrote.
        child_keys = batches[2].keys[:3_000]
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, str(plat.path), str(batches[2].manifest),
                               json.dumps(child_keys)], capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        child = json.loads(proc.stdout)
        assert child["after"] > child["before"] and child["used"] > grown  # the data outgrew our map
        assert _redeemed_as(plat, child["acked"]) == []  # read through the larger map, adopted
        assert plat.engine.store.info()["map_size"] == child["after"]
        _accept(plat, [(k, f"after-child-{i}") for i, k in enumerate(batches[2].keys[3_000:4_000])], acked)
        acked.update(child["acked"])
        assert _redeemed_as(plat, acked) == []
    # Reopened (still asking for 1 MiB: the file's own size wins), every acknowledged write is there.
    with Vault.open(tmp_path / "platform") as plat:
        assert _redeemed_as(plat, acked) == []
        totals = plat.stats()["totals"]
        assert totals["redeemed"] == len(acked) and totals["keys"] == 245_000 and upstream.count == 5_000
        report = plat.check()
        assert report["ok"], [c for c in report["checks"] if not c["ok"]]
        assert report["counts"]["outcomes"] > 0 and report["counts"]["unfolded"] > 0


# -- a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs of our own, unmounted afterwards; skipped (with the reason) where it cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk tests mount a 24 MiB tmpfs, which needs root; run them as root (CI does)")
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        pytest.skip("no `mount` command here: the full-disk tests need one to make a small tmpfs")
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or made.returncode}): the full-disk tests "
                    "need the right to (root outside a restricted container)")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def _free(path: Path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


def _fill(path: Path, leave: int) -> Path:
    """A filler file that takes all but ``leave`` bytes of the disk holding ``path``."""
    filler = path / "filler"
    left = _free(path) - leave
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        block = bytes(1 << 20)
        while left > 0:
            left -= os.write(fd, block[:min(left, len(block))])
    finally:
        os.close(fd)
    return filler


def _check_elsewhere(store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-c", "from keyvault.cli.main import main; main()", "--store", str(store),
                           "check", "--json"], capture_output=True, text=True, timeout=300, check=False)


def test_a_full_disk_fails_writes_cleanly_and_the_store_recovers(small_disk: Path, tmp_path: Path,
                                                                  supplier: Identity) -> None:
    files = tmp_path / "files"  # the export and the manifest go to the big disk: only the store fills
    store = small_disk / "store"
    acked: dict[str, str] = {}
    with Vault.init(store) as vault:
        batch = issue(vault, supplier, files, count=60_000)
        filler = _fill(small_disk, leave=1 << 20)
        keys = batch.keys
        error: StoreFullError | None = None
        at = 0
        for at in range(0, len(keys), 500):
            pairs = [(k, f"order-{at + i}") for i, k in enumerate(keys[at:at + 500])]
            try:
                _accept(vault, pairs, acked)
            except KeyvaultError as exc:
                assert type(exc) is StoreFullError, f"{type(exc).__name__}: {exc}"
                error = exc
                break
        assert error is not None, "the disk never filled up"
        assert isinstance(error, OSError) and str(store) in str(error)
        assert "no room" in str(error) and "free some space" in str(error) and "nothing was changed" in str(error)
        print(f"the disk filled after {len(acked):,} acknowledged redemptions: {error}")
        refused = keys[at:at + 500]
        # Nothing of the failed write was kept; everything acknowledged is there; reading works while full.
        assert {r.status for r in vault.verify_many(refused)} == {Status.VALID}
        assert _redeemed_as(vault, acked) == []
        events = vault.verify_log()
        report = vault.check()
        assert report["ok"], [c for c in report["checks"] if not c["ok"]]
        proc = _check_elsewhere(store)  # `keyvault check` in another process, on the full disk
        assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout + proc.stderr
        # Other writes either fit in pages LMDB can reuse or fail the same way; refused-key counting (a
        # buffered write inside verify) never makes a verify fail.
        for name, write in (("redeem", lambda: vault.redeem_many([(k, "again") for k in refused])),
                            ("void", lambda: vault.void(batch.serials[-1], "refund")),
                            ("blacklist", lambda: vault.blacklist("serial", batch.serials[-2], "stolen")),
                            ("checkpoint", vault.checkpoint)):
            try:
                write()
                print(f"while full, a {name} still fitted in reusable pages")
            except KeyvaultError as exc:
                assert type(exc) is StoreFullError, (name, type(exc).__name__, str(exc))
        for _ in range(2):
            assert vault.verify("7KQ2-XMZ7-7KQ2-XMZ7-7KQ2-XMZ7-7KQ2-XMZ7").status is not Status.VALID
            time.sleep(1.1)  # past the flush interval of the refused-attempt counters
        assert _redeemed_as(vault, acked) == [] and vault.verify_log() >= events
        assert vault.check()["ok"]
        # Space returns: the store works again at once, in this process.
        os.truncate(filler, 0)
        state = {k: r.status for k, r in zip(refused, vault.verify_many(refused))}
        todo = [(k, f"late-{i}") for i, k in enumerate(refused) if state[k] is Status.VALID]
        _accept(vault, todo, acked)
        for start in range(at + 500, at + 5_500, 500):
            _accept(vault, [(k, f"later-{start + i}") for i, k in enumerate(keys[start:start + 500])], acked)
        assert vault.verify_log() > events
        assert vault.check()["ok"]
    with Vault.open(store) as vault:
        assert _redeemed_as(vault, acked) == []
        assert vault.check()["ok"]
    proc = _check_elsewhere(store)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_import_on_a_full_disk_is_all_or_nothing(small_disk: Path, tmp_path: Path, supplier: Identity) -> None:
    """A manifest too big for the space left is refused whole; with room, the same import succeeds."""
    files = tmp_path / "files"
    with Vault.init(tmp_path / "supplier") as sup:
        big = issue(sup, supplier, files, count=100_000)
    store = small_disk / "store"
    with Vault.init(store) as vault:
        vault.trust(supplier.public)
        filler = _fill(small_disk, leave=2 << 20)
        with pytest.raises(StoreFullError):
            vault.import_manifest(big.manifest)
        assert vault.catalog().batches == {}
        assert {r.status for r in vault.verify_many(big.keys[:50])} == {Status.UNKNOWN}
        assert vault.check()["ok"]
        os.truncate(filler, 0)
        info, new = vault.import_manifest(big.manifest)
        assert new and info.count == 100_000
        assert {r.status for r in vault.verify_many(big.keys[::997])} == {Status.VALID}
        assert vault.check()["ok"]


_READERS = """
import sys, threading
from keyvault import Vault
with Vault.open(sys.argv[1]) as v:
    n = int(sys.argv[2])
    gate = threading.Barrier(n)
    sizes = []

    def read():
        with v.engine.store.read() as txn:
            gate.wait()  # all n read transactions open at once: n reader slots in the lock file
            sizes.append(txn.head().log_size)

    threads = [threading.Thread(target=read) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(len(sizes))
"""


def test_many_readers_on_a_full_disk(small_disk: Path) -> None:
    """LMDB writes its reader table (lock.mdb, made sparse by ftruncate) through a memory map: a reader
    slot in a page never written before needs a disk block, and on a full disk the process died of
    SIGBUS once more than about 60 read transactions were open at once. The store now gives the lock
    file its blocks when it opens the environment."""
    store = small_disk / "store"
    Vault.init(store).close()
    _fill(small_disk, leave=0)
    proc = subprocess.run([sys.executable, "-I", "-c", _READERS, str(store), "200"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    assert proc.stdout.strip() == "200"
    lock = os.stat(store / "lock.mdb")
    assert lock.st_blocks * 512 >= lock.st_size, "the lock file is sparse"


_NEW_STORE = """
import sys
from keyvault import KeyvaultError, Vault
try:
    Vault.init(sys.argv[1]).close()
    print("made")
except KeyvaultError as exc:
    print("refused", type(exc).__name__, exc)
"""


_NEW_ENVIRONMENT = """
import sys
from pathlib import Path
from keyvault import KeyvaultError
from keyvault.store.lmdbstore import LmdbStore
try:
    LmdbStore.create(Path(sys.argv[1])).close()
    print("made")
except KeyvaultError as exc:
    print("refused", type(exc).__name__, exc)
"""


def test_store_files_created_on_a_full_disk_are_refused_not_a_crash(small_disk: Path) -> None:
    """LMDB makes a new lock file sparse and writes it through a memory map: on a full disk that was a
    SIGBUS. The store now makes the lock file itself, allocated, before LMDB opens it."""
    target = small_disk / "new"
    target.mkdir()
    _fill(small_disk, leave=0)
    proc = subprocess.run([sys.executable, "-I", "-c", _NEW_ENVIRONMENT, str(target)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    assert proc.stdout.startswith("refused StoreFullError"), proc.stdout
    assert "free some space" in proc.stdout
    assert not (target / "lock.mdb").exists() and not (target / "data.mdb").exists()


def test_a_new_store_on_a_full_disk_is_refused_cleanly(small_disk: Path) -> None:
    _fill(small_disk, leave=0)
    proc = subprocess.run([sys.executable, "-I", "-c", _NEW_STORE, str(small_disk / "new")], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    assert proc.stdout.startswith("refused StoreFullError"), proc.stdout


_THROTTLE = """
import sys
from keyvault import Vault
with Vault.open(sys.argv[1]) as v:
    print(v.verify("7KQ2-XMZ7-7KQ2-XMZ7-7KQ2-XMZ7-7KQ2-XMZ7", client="shop-42").status.value)
"""


def test_a_client_verify_on_a_full_disk_does_not_crash(small_disk: Path) -> None:
    store = small_disk / "store"
    Vault.init(store).close()
    _fill(small_disk, leave=0)
    proc = subprocess.run([sys.executable, "-I", "-c", _THROTTLE, str(store)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"


def test_batch_issue_on_a_full_disk_leaves_nothing_and_can_be_retried(small_disk: Path, tmp_path: Path) -> None:
    """The export and manifest fill the disk: a clean StoreFullError, no file left behind, the retry works."""
    from cli_support import EXIT_ERROR, kv, ok

    store, identity = tmp_path / "store", tmp_path / "acme.identity"
    ok("supplier", "init", "--name", "Acme", "--out", identity)
    ok("--store", store, "init")
    filler = _fill(small_disk, leave=256 << 10)
    args = ("--store", store, "batch", "issue", "--supplier", identity, "--product", "P", "--count", 50_000,
            "--keys-out", small_disk / "keys.csv", "--manifest-out", small_disk / "batch.kvm")
    for as_json in (False, True):
        failed = kv(*args, *(("--json",) if as_json else ()))
        assert failed.exit_code == EXIT_ERROR, failed.output
        assert "Traceback" not in failed.stderr and "OSError" not in failed.stderr
        if as_json:
            doc = json.loads(failed.stderr.strip().splitlines()[-1])
            assert doc["error"] == "StoreFullError" and "free some space" in doc["message"]
        else:
            assert "no room on the disk" in failed.stderr and "nothing was kept" in failed.stderr
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no keys.csv, manifest or .part
        assert json.loads(ok("--store", store, "stats", "--json").stdout)["totals"]["batches"] == 0
    os.truncate(filler, 0)
    done = json.loads(ok(*args, "--json").stdout)
    assert done["count"] == 50_000 and (small_disk / "keys.csv").stat().st_size > 0
