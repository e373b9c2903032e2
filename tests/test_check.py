"""``keyvault check`` and damaged stores.

Part one damages a store's records through the store's own write path (what a bug, a bad restore
or a hand edit could leave behind) and shows that :meth:`keyvault.Vault.check` names
exactly the checks that notice, and never raises. Part two runs the command itself. Part three
damages the *file*: bytes flipped in LMDB's meta pages, in the first data pages, in the middle
and at the end, and the file truncated; each copy is checked by ``keyvault check`` in a separate
process with a timeout, so a crash or a hang is seen, never hidden.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lmdb
import pytest

from cli_support import EXIT_ERROR, EXIT_OK, EXIT_REFUSED, kv
from conftest import issue
from keyvault import Identity, Status, StoreCorruptError, Vault
from keyvault.engine import CHECKS
from keyvault.formats.checkpoint import Checkpoint, sign
from keyvault.formats.keyformat import parse_serial
from keyvault.store import Txn
from keyvault.store.records import from_u64, pack_card, u64

PAGE = 4096  # LMDB's page size on this platform (asserted on the store itself below)


# -- a store with a bit of everything --------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A closed platform store, and what was done to it."""

    root: Path
    keys: list[str]
    serials: list[str]
    batch: str
    pair_batch: str
    redeemed: dict[str, str]  # key -> order id


def _build(root: Path) -> Template:
    """A supplier issues 300 keys and sends them to a platform as a sealed lot (custody records); the
    platform imports upstream card:password pairs, redeems 70 keys and one card, voids two keys,
    blacklists one and lifts another, and is refused a few guesses. FOLD_AT is 25, so most changes
    are folded into card and outcome records and the last 13 are not."""
    files = root / "files"
    files.mkdir(parents=True)
    supplier, shop = Identity.generate("Acme Games"), Identity.generate("Shop")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("keyvault.engine.ledger.FOLD_AT", 25)
        with Vault.init(root / "supplier") as sup:
            batch = issue(sup, supplier, files, count=300)
            sup.send_lot(supplier, batch.batch.id, shop.public, manifest=batch.manifest, out=files / "lot.kvl")
        with Vault.init(root / "platform") as plat:
            plat.trust(supplier.public)
            plat.receive_lot(files / "lot.kvl", shop)
            cards = files / "cards.csv"
            cards.write_text("card_number,password\nC-100,P1\nC-200,P2\nC-300,P3\n")
            pairs = plat.import_cards(shop, "STEAM-50", cards, manifest_out=files / "cards.kvm")
            redeemed: dict[str, str] = {}
            for start in range(0, 70, 10):
                chunk = [(k, f"order-{start + i}") for i, k in enumerate(batch.keys[start:start + 10])]
                assert all(r.status.value == "accepted" for r in plat.redeem_many(chunk))
                redeemed.update(chunk)
            assert plat.redeem("C-100:P1", "order-card").status.value == "accepted"
            plat.void(batch.serials[100], "refund")
            plat.void(batch.serials[101], "refund")
            plat.blacklist("serial", batch.serials[110], "reported stolen")
            plat.blacklist("serial", batch.serials[111], "reported stolen")
            plat.lift("serial", batch.serials[111], "found again")
            plat.verify_many(["7KQ2-XMZ7-7KQ2-XMZ7-7KQ2-XMZ7-7KQ2-XMZ7", "STEAM-NOPE"])
            plat.checkpoint()
    return Template(root / "platform", batch.keys, batch.serials, batch.batch.id, pairs.id, redeemed)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return _build(tmp_path_factory.mktemp("template"))


@pytest.fixture
def store(tmp_path: Path, template: Template) -> Path:
    """A fresh copy of the template store (closed)."""
    copy = tmp_path / "store"
    shutil.copytree(template.root, copy)
    (copy / "lock.mdb").unlink(missing_ok=True)
    return copy


@pytest.fixture
def vault(store: Path) -> Iterator[Vault]:
    with Vault.open(store) as v:
        yield v


def failed(report: dict[str, Any]) -> dict[str, str]:
    """The failed checks of a report: name -> detail."""
    return {c["check"]: c["detail"] for c in report["checks"] if not c["ok"]}


# -- the library: a clean store, then each kind of damage ------------------------------------------


def test_a_clean_store_passes_every_check(vault: Vault, template: Template) -> None:
    report = vault.check()
    assert report["ok"], failed(report)
    assert [c["check"] for c in report["checks"]] == list(CHECKS)
    counts = report["counts"]
    assert counts["batches"] == 2 and counts["keys"] == 303 and counts["cards"] == 303
    assert counts["redeemed"] == 71 and counts["void"] == 2 and counts["active"] == 303 - 73
    assert counts["outcomes"] == 60 and counts["unfolded"] == 13  # both halves of the ledger are checked
    assert counts["transfers"] == 1 and counts["blacklist"] == 1 and counts["commitments"] == 303
    assert counts["events"] == vault.verify_log() and counts["checkpoints"] >= 2
    assert counts["tree_nodes"] == counts["events"] - counts["events"].bit_count()
    stats = vault.stats()["totals"]
    assert (stats["redeemed"], stats["void"], stats["blacklisted"]) == (71, 2, 1)


def _serial(template: Template, i: int) -> bytes:
    return u64(parse_serial(template.serials[i]))


def _first(txn: Txn, db: str, prefix: bytes = b"") -> tuple[bytes, bytes]:
    key, value = next(txn.items(db, prefix))
    return bytes(key), bytes(value)


def _get(txn: Txn, db: str, key: bytes) -> bytes:
    value = txn.get(db, key)
    assert value is not None, (db, key)
    return bytes(value)


def _flip(value: bytes, at: int) -> bytes:
    return value[:at] + bytes([value[at] ^ 0x01]) + value[at + 1:]


def _redeem_event(txn: Txn) -> tuple[bytes, bytes]:
    """The first redeem event of the log (a folded one)."""
    for key, leaf in txn.items("events"):
        if leaf[49] == 4:  # kind byte after tag (9), index (8) and previous hash (32): KIND_REDEEM
            return bytes(key), bytes(leaf)
    raise AssertionError("no redeem event")


def _batch_key(vault: Vault, batch_id: str) -> bytes:
    return u64(next(b.key for b in vault.catalog().batches.values() if b.id == batch_id))


def _forge_checkpoint(vault: Vault, txn: Txn) -> None:
    """Replace the newest checkpoint's note with one signed by another key under this store's origin."""
    key, value = list(txn.items("checkpoints"))[-1]
    size = from_u64(key)
    root = bytes(value[8:40])
    forger = Identity.generate("keyvault-engine")
    note = sign(Checkpoint(vault.engine.log.origin, size, root), vault.engine.log.origin, forger.signing_key)
    txn.put("checkpoints", bytes(key), bytes(value[:40]) + note)


def _double_spend(vault: Vault, template: Template) -> Callable[[Txn], None]:
    """Append a well-chained redeem event for a key the folded records already hold as redeemed."""
    serial = parse_serial(template.serials[0])

    def work(txn: Txn) -> None:
        vault.engine.log.append_changes(txn, [(serial, 1, int(time.time() * 1000), "order-again")])

    return work


#: name -> (the damage, given the open vault and the template; the checks that must fail, and only those)
DAMAGE: dict[str, tuple[Callable[[Vault, Template], Callable[[Txn], Any]], set[str]]] = {
    "a deleted card record": (
        lambda v, t: lambda txn: txn.delete("cards", _serial(t, 250)), {"cards"}),
    "a card record of the wrong size": (
        lambda v, t: lambda txn: txn.put("cards", _serial(t, 251), b"\x00" * 16), {"cards"}),
    "a card's state byte flipped to redeemed": (
        lambda v, t: lambda txn: txn.put("cards", _serial(t, 252), b"\x01" + _get(txn, "cards", _serial(t, 252))[1:]),
        {"cards"}),
    "a card sealed as redeemed without an event": (
        lambda v, t: lambda txn: txn.put("cards", _serial(t, 252), pack_card(
            v.engine.pepper, from_u64(_serial(t, 252)), 1, _get(txn, "cards", _serial(t, 252))[1:17])),
        {"redeem and void state", "counters"}),
    "an altered outcome state": (
        lambda v, t: lambda txn: txn.put("outcomes", _first(txn, "outcomes")[0],
                                         b"\x02" + _first(txn, "outcomes")[1][1:]),
        {"outcomes", "redeem and void state"}),
    "a deleted outcome": (
        lambda v, t: lambda txn: txn.delete("outcomes", _first(txn, "outcomes")[0]),
        {"redeem and void state"}),
    "an altered event": (
        lambda v, t: lambda txn: txn.put("events", _redeem_event(txn)[0], _flip(_redeem_event(txn)[1], -1)),
        {"event log", "log tree", "redeem and void state", "checkout"}),  # (its last byte: the order's redeem list)
    "a second redeem of a spent key, well chained": (
        lambda v, t: _double_spend(v, t), {"redeem and void state", "counters"}),
    "a deleted tree node": (
        lambda v, t: lambda txn: txn.delete("tree", u64(0)), {"log tree"}),
    "an altered tree node": (
        lambda v, t: lambda txn: txn.put("tree", u64(3), _flip(_get(txn, "tree", u64(3)), 0)), {"log tree"}),
    "a forged checkpoint note": (
        lambda v, t: lambda txn: _forge_checkpoint(v, txn), {"event log"}),
    "a wrong counter": (
        lambda v, t: lambda txn: txn.add(f"B:{t.batch}/redeemed".encode(), 1), {"counters"}),
    "a wrong total counter": (
        lambda v, t: lambda txn: txn.add(b"T/void", -1), {"counters"}),
    "a deleted commitments slice root": (
        lambda v, t: lambda txn: txn.delete("commitments", _batch_key(v, t.batch) + b"R" + bytes(4)),
        {"commitments"}),
    "an altered commitment": (
        lambda v, t: lambda txn: txn.put("commitments", _batch_key(v, t.batch) + b"C" + bytes(4),
                                         _flip(_get(txn, "commitments", _batch_key(v, t.batch) + b"C" + bytes(4)), 7)),
        {"commitments"}),
    "an altered signed manifest": (
        lambda v, t: lambda txn: txn.put("manifests", _first(txn, "manifests")[0],
                                         _flip(_first(txn, "manifests")[1], -3)),
        {"batches and manifests"}),
    "a deleted locator": (
        lambda v, t: lambda txn: txn.delete("locators", _first(txn, "locators")[0]), {"imported cards"}),
    "a deleted card number": (
        lambda v, t: lambda txn: txn.delete("upstream", _first(txn, "upstream")[0]), {"imported cards"}),
    "an altered transfer": (
        lambda v, t: lambda txn: txn.put("custody", _first(txn, "custody", b"T")[0],
                                         _flip(_first(txn, "custody", b"T")[1], -5)),
        {"custody"}),
    "a blacklist entry for a key not stored": (
        lambda v, t: lambda txn: txn.put("blacklist", b"K" + u64(1), b'{"at":0,"reason":"x"}'),
        {"blacklist"}),
    "a head that counts an event too many": (
        lambda v, t: lambda txn: txn.set_head(txn.head()._replace(log_size=txn.head().log_size + 1)),
        {"head", "event log"}),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_each_kind_of_damage_fails_exactly_the_checks_that_see_it(vault: Vault, template: Template,
                                                                  case: str) -> None:
    make, expected = DAMAGE[case]
    vault.engine.store.write(make(vault, template))
    report = vault.check()
    assert not report["ok"]
    assert set(failed(report)) == expected, failed(report)
    for name, detail in failed(report).items():
        assert detail and "Traceback" not in detail, (name, detail)
    assert not any(k in json.dumps(report.to_dict()) for k in template.keys), "a report must never show a key"


def test_the_details_name_the_problem(vault: Vault, template: Template) -> None:
    vault.engine.store.write(lambda txn: txn.delete("cards", _serial(template, 250)))
    vault.engine.store.write(lambda txn: txn.add(f"B:{template.batch}/redeemed".encode(), 1))
    vault.engine.store.write(lambda txn: txn.delete("tree", u64(0)))
    vault.engine.store.write(lambda txn: txn.delete("commitments", _batch_key(vault, template.batch) + b"R" + bytes(4)))
    vault.engine.store.write(lambda txn: _forge_checkpoint(vault, txn))
    details = failed(vault.check())
    assert f"batch {template.batch} holds 300 keys but 299 card records: 1 are missing" in details["cards"]
    assert f"batch {template.batch}: the redeemed counter says 71, the records say 70" in details["counters"]
    assert "node 0 of the log's tree is missing" in details["log tree"]
    assert f"batch {template.batch}: 0 slice roots are stored for 1 slices of keys" in details["commitments"]
    assert "does not verify" in details["event log"]


def test_records_that_do_not_parse_are_reported_not_raised(vault: Vault, template: Template) -> None:
    def garble(txn: Txn) -> None:
        txn.put("batches", _batch_key(vault, template.pair_batch), b"{not json")
        txn.put("meta", b"head", b"short")
        txn.put("custody", b"E" + bytes(32), b"[]")
        txn.put("counters", b"T/redeemed", b"\x01")

    vault.engine.store.write(garble)
    report = vault.check()
    assert not report["ok"]
    bad = failed(report)
    assert {"head", "batches and manifests", "custody", "counters"} <= set(bad)
    assert "a JSON record of the store is damaged" in bad["batches and manifests"]
    assert "the head record is 5 bytes" in bad["head"]


def test_a_missing_pepper_check_and_database_records(vault: Vault) -> None:
    vault.engine.store.write(lambda txn: (txn.delete("meta", b"pepper_check"), txn.delete("meta", b"checkpoint_policy")))
    bad = failed(vault.check())
    assert set(bad) == {"pepper", "format"}
    assert "pepper check record is missing" in bad["pepper"]


def test_a_damaged_tree_node_is_what_the_next_checkpoint_trips_on(vault: Vault) -> None:
    """Why the tree gets its own check: EventLog.verify reads the log's root from its tail record, so it
    passes over a lost node that the next checkpoint then refuses to sign over."""
    vault.engine.store.write(lambda txn: txn.delete("tree", u64(0)))
    assert vault.verify_log() > 0
    assert set(failed(vault.check())) == {"log tree"}


def test_check_while_another_thread_redeems(vault: Vault, template: Template) -> None:
    """The report describes one moment: a redeem committed meanwhile never makes it disagree with itself."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def redeem() -> None:
        try:
            for i, key in enumerate(template.keys[150:230]):
                if stop.is_set():
                    return
                vault.redeem(key, f"bg-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=redeem)
    worker.start()
    try:
        reports = [vault.check() for _ in range(5)]
    finally:
        stop.set()
        worker.join()
    assert not errors
    assert all(r["ok"] for r in reports), [failed(r) for r in reports]
    assert vault.check()["ok"]


# -- the command -----------------------------------------------------------------------------------


def test_check_command_on_a_clean_store(store: Path) -> None:
    result = kv("--store", store, "check")
    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(CHECKS) + 1
    assert all(line.startswith("PASS  ") for line in lines[:-1])
    assert lines[-1].startswith(f"store {store}: all {len(CHECKS)} checks pass (303 keys, 71 redeemed, 2 void")
    doc = json.loads(kv("--store", store, "check", "--json").stdout)
    assert doc["ok"] and doc["store"] == str(store) and doc["counts"]["keys"] == 303


def test_check_command_on_a_damaged_store(store: Path, template: Template) -> None:
    with Vault.open(store) as v:
        v.engine.store.write(lambda txn: txn.delete("cards", _serial(template, 250)))
        v.engine.store.write(lambda txn: _forge_checkpoint(v, txn))
    result = kv("--store", store, "check")
    assert result.exit_code == EXIT_REFUSED, result.output
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL  ")]
    assert [line.split(":")[0] for line in fails] == ["FAIL  cards", "FAIL  event log"]
    assert "2 of 16 checks FAILED (cards, event log)" in result.stdout
    doc = json.loads(kv("--store", store, "check", "--json").stdout)
    assert not doc["ok"] and set(failed(doc)) == {"cards", "event log"}


def test_check_command_on_a_store_that_cannot_be_opened(tmp_path: Path, store: Path) -> None:
    result = kv("--store", tmp_path / "nowhere", "check")
    assert result.exit_code == EXIT_ERROR and "is not a keyvault store" in result.stderr
    assert result.stdout == ""
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pepper").write_text("00" * 32 + "\n")
    (tmp_path / "other" / "pepper").chmod(0o600)
    result = kv("--store", store, "--pepper-file", tmp_path / "other" / "pepper", "check")
    assert result.exit_code == EXIT_ERROR and "does not belong to this store" in result.stderr
    result = kv("check")
    assert result.exit_code == 2 and "no store given" in result.output


def test_check_command_from_the_console_script(store: Path) -> None:
    """The installed ``keyvault`` command, as an operator runs it."""
    proc = _cli(store)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]


# -- damaged files ---------------------------------------------------------------------------------

# LMDB 0.9's meta page: 16-byte page header, then magic (u32), version (u32), address (u64), map size
# (u64), the free DB (48 bytes; its first u32 is the page size), the main DB (48 bytes; its root page is
# its last u64), the last page used (u64) and the transaction id (u64).
META_FIELDS = {"magic": 16, "page size": 40, "main root": 128, "last page": 136, "txnid": 144}
PAGE_OFFSETS = {"page number": 0, "flags": 10, "lower and upper": 12, "first node pointer": 16,
                "middle": 2048, "end": PAGE - 8}


def _cli(store: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``keyvault --store STORE check --json`` in its own process: a crash shows as a signal, a hang as a timeout."""
    command = [sys.executable, "-I", "-c", "from keyvault.cli.main import main; main()", "--store", str(store), "check",
               "--json", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("KEYVAULT_")
                               or k in ("KEYVAULT_NO_EXTENSIONS", "KEYVAULT_REQUIRE_EXTENSIONS")})


_OPEN = """
import json, sys
from keyvault import KeyvaultError, Vault
try:
    Vault.open(sys.argv[1]).close()
    print(json.dumps({"opened": True}))
except KeyvaultError as exc:
    print(json.dumps({"refused": type(exc).__name__, "message": str(exc)}))
"""


def _library_open(store: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-I", "-c", _OPEN, str(store)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, f"Vault.open died (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return dict(json.loads(proc.stdout))


def _outcome(store: Path) -> tuple[str, str]:
    """What ``keyvault check`` made of a damaged copy: (refused | failed | crashed-reported | passed, detail).

    Anything else (a traceback, a signal in the command itself, a hang, another exit code) fails the test.
    """
    try:
        proc = _cli(store)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"keyvault check hung on {store}") from None
    assert proc.returncode >= 0, f"keyvault check itself died of signal {-proc.returncode} on {store}"
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == EXIT_ERROR:
        message = proc.stderr.strip()
        if message.startswith("{"):  # `check --json`: the error is one JSON object on stderr
            message = "Error: " + json.loads(message)["message"]
        assert message.startswith("Error: ") and str(store) in message and "\n" not in message, message
        assert any(w in message for w in ("damaged", "truncated", "not an LMDB file", "LMDB data format",
                                          "is a store in format")), message
        if "LMDB crashed" in message:  # while opening, in the command's child: the library would die too
            return "crashed-reported", message
        opened = _library_open(store)
        assert opened.get("refused") in ("StoreCorruptError", "NotAStoreError", "StoreError", "StoreVersionError"), \
            opened
        return "refused", message
    if proc.returncode == EXIT_REFUSED:
        doc = json.loads(proc.stdout)
        assert not doc["ok"] and [c["check"] for c in doc["checks"]] == list(CHECKS)
        bad = failed(doc)
        assert bad and all(bad.values())
        if "crashed" in doc:
            return "crashed-reported", f"{doc['crashed']} in {next(iter(bad))}"
        return "failed", ", ".join(bad)
    assert proc.returncode == EXIT_OK, f"exit {proc.returncode}: {proc.stderr}"
    assert json.loads(proc.stdout)["ok"]
    return "passed", ""


def _flipped(store: Path, offset: int, width: int = 4) -> None:
    with open(store / "data.mdb", "r+b") as fh:
        fh.seek(offset)
        data = fh.read(width)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xA5 for b in data))


def _meta(store: Path, page: int) -> dict[str, int]:
    data = (store / "data.mdb").read_bytes()[page * PAGE:page * PAGE + 152]
    return {name: struct.unpack_from("<Q" if name in ("main root", "last page", "txnid") else "<I", data, at)[0]
            for name, at in META_FIELDS.items()}


def _cases(store: Path, every_page: bool = False) -> dict[str, Callable[[Path], None]]:
    """Named ways to damage a copy of ``store``'s data.mdb."""
    size = (store / "data.mdb").stat().st_size
    pages = size // PAGE
    cases: dict[str, Callable[[Path], None]] = {}
    for page in (0, 1):
        for field, at in META_FIELDS.items():
            cases[f"meta page {page}: {field}"] = partial(_flipped, offset=page * PAGE + at)
    chosen = range(2, pages) if every_page else sorted({2, 3, 4, pages // 2, pages - 2, pages - 1})
    for page in chosen:
        where = "last page" if page == pages - 1 else f"page {page}"
        for name, at in PAGE_OFFSETS.items():
            cases[f"{where}: {name}"] = partial(_flipped, offset=page * PAGE + at)
    for cut in (0, 100, PAGE, 2 * PAGE, 3 * PAGE, size // 2, size - PAGE):
        cases[f"truncated to {cut:,} bytes"] = partial(_truncated, size=cut)
    return cases


def _truncated(store: Path, size: int) -> None:
    os.truncate(store / "data.mdb", size)


def _sweep(tmp_path: Path, store: Path, cases: dict[str, Callable[[Path], None]]) -> dict[str, tuple[str, str]]:
    def run(item: tuple[int, str]) -> tuple[str, tuple[str, str]]:
        n, name = item
        copy = tmp_path / f"case-{n}"
        shutil.copytree(store, copy)
        (copy / "lock.mdb").unlink(missing_ok=True)
        cases[name](copy)
        try:
            return name, _outcome(copy)
        finally:
            shutil.rmtree(copy, ignore_errors=True)

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        return dict(pool.map(run, enumerate(cases)))


def _print_table(results: dict[str, tuple[str, str]]) -> None:
    width = max(len(name) for name in results)
    for name, (kind, detail) in results.items():
        print(f"{name:<{width}}  {kind:<16}  {detail[:140]}")


def test_the_store_file_layout_is_what_these_tests_assume(store: Path) -> None:
    meta = [_meta(store, 0), _meta(store, 1)]
    assert all(m["magic"] == 0xBEEFC0DE and m["page size"] == PAGE for m in meta)
    newest = max(meta, key=lambda m: m["txnid"])
    assert (store / "data.mdb").stat().st_size >= (newest["last page"] + 1) * PAGE


def _compacted(store: Path, into: Path) -> Path:
    """A copy of ``store`` rewritten by LMDB without its free pages: every page of it is read by the check."""
    into.mkdir()
    env = lmdb.open(str(store), max_dbs=64, readonly=True, lock=False)
    try:
        env.copy(str(into), compact=True)
    finally:
        env.close()
    for name in ("pepper", "engine.key"):
        shutil.copy2(store / name, into / name)
    return into


def _reachable_end(data: Path) -> int:
    """The smallest file size that keeps every page LMDB can reach (found by cutting page by page)."""
    from keyvault.store.lmdbstore import _tail_unused

    size = data.stat().st_size
    while size > PAGE and _tail_unused(data, size - PAGE):
        size -= PAGE
    return size


@pytest.mark.parametrize("layout", ["as written", "compacted"])
def test_flipped_bytes_and_truncations_are_refused_or_reported(tmp_path: Path, store: Path, layout: str) -> None:
    if layout == "compacted":
        store = _compacted(store, tmp_path / "compacted")
        assert _outcome(store) == ("passed", "")
    results = _sweep(tmp_path / "sweep", store, _cases(store))
    _print_table(results)
    reachable_end = _reachable_end(store / "data.mdb")
    for name, (kind, detail) in results.items():
        if name.startswith("truncated"):
            cut = int(name.split()[2].replace(",", ""))
            if cut >= reachable_end:  # only free pages never read were cut: the store is whole
                assert kind == "passed", (name, kind, detail)
                continue
            assert kind == "refused", (name, kind, detail)
            if "0 bytes" not in name:
                assert "truncated" in detail or "damaged" in detail, (name, detail)
    # The newest meta page is the one LMDB reads: a flip of its magic, page size or root is never passed over.
    newest = max((0, 1), key=lambda p: _meta(store, p)["txnid"])
    for field in ("magic", "page size", "main root"):
        assert results[f"meta page {newest}: {field}"][0] in ("refused", "failed", "crashed-reported"), field
    assert results[f"meta page {1 - newest}: magic"][0] == "refused"  # LMDB checks both magics
    # Every outcome is one of the four, classified: nothing crashed the command, nothing hung.
    assert {kind for kind, _ in results.values()} <= {"refused", "failed", "crashed-reported", "passed"}


@pytest.mark.skipif(os.environ.get("KEYVAULT_CORRUPTION_SWEEP") != "all",
                    reason="the page-by-page sweep takes minutes: set KEYVAULT_CORRUPTION_SWEEP=all to run it")
@pytest.mark.parametrize("layout", ["as written", "compacted"])
def test_every_page_flipped(tmp_path: Path, store: Path, layout: str) -> None:
    if layout == "compacted":
        store = _compacted(store, tmp_path / "compacted")
    results = _sweep(tmp_path / "sweep", store, _cases(store, every_page=True))
    _print_table(results)
    tally: dict[str, int] = {}
    for kind, _ in results.values():
        tally[kind] = tally.get(kind, 0) + 1
    print(layout, tally)
    # Every flip is classified (no traceback, no hang: _outcome asserts it), and what check is shown is seen.
    assert set(tally) <= {"refused", "failed", "crashed-reported", "passed"}
    newest = max((0, 1), key=lambda p: _meta(store, p)["txnid"])
    for field in ("magic", "page size", "main root"):
        assert results[f"meta page {newest}: {field}"][0] != "passed", field
    if layout == "compacted":  # every page is in use: a flip that passed lay where LMDB never reads
        data = (store / "data.mdb").read_bytes()
        pages = len(data) // PAGE
        for page in range(2, pages):
            _, _, flags, lower, upper = struct.unpack_from("<QHHHH", data, page * PAGE)
            where = "last page" if page == pages - 1 else f"page {page}"
            for name, at in PAGE_OFFSETS.items():
                kind, detail = results[f"{where}: {name}"]
                unread = not flags & 0x04 and lower <= at and at + 4 <= upper  # the free gap between nodes
                assert kind != "passed" or unread, (where, name, flags, lower, upper)


def _leaf_pages(store: Path) -> list[int]:
    """Leaf pages of data.mdb, last first (LMDB 0.9 page header: pgno u64, pad u16, flags u16)."""
    data = (store / "data.mdb").read_bytes()
    pages = []
    for page in range(2, len(data) // PAGE):
        pgno, _, flags, lower = struct.unpack_from("<QHHH", data, page * PAGE)
        if pgno == page and flags & 0x02 and (lower - 16) // 2 >= 1:
            pages.append(page)
    return pages[::-1]


def test_a_page_pointing_outside_the_file_crashes_lmdb_but_not_check(tmp_path: Path, store: Path) -> None:
    """LMDB does not check a page's node pointers: one flipped to point past the end of the file makes
    it read outside the file, and the process dies of SIGBUS (no error is raised). ``keyvault check``
    runs its reading in a child process, so it survives and reports the damage."""
    for page in _leaf_pages(store)[:12]:
        copy = tmp_path / f"page-{page}"
        shutil.copytree(store, copy)
        (copy / "lock.mdb").unlink(missing_ok=True)
        with open(copy / "data.mdb", "r+b") as fh:
            fh.seek(page * PAGE + 16)
            fh.write(struct.pack("<H", 0xFFF8))  # the first node "is" 65,528 bytes into a 4 KiB page
        probe = subprocess.run([sys.executable, "-I", "-c", "import sys; from keyvault import Vault\n"
                                "v = Vault.open(sys.argv[1]); v.check()", str(copy)],
                               capture_output=True, text=True, timeout=120, check=False)
        if probe.returncode >= 0:
            continue  # this page was not read, or the pointer landed inside the file: try the next one
        assert probe.returncode == -signal.SIGBUS, probe.returncode
        kind, detail = _outcome(copy)
        assert kind in ("crashed-reported", "refused"), (kind, detail)
        if kind == "crashed-reported":
            doc = json.loads(_cli(copy).stdout)
            crashed = next(c for c in doc["checks"] if not c["ok"])
            assert "LMDB crashed (SIGBUS)" in crashed["detail"] and "outside the file" in crashed["detail"]
        else:
            assert "LMDB crashed (SIGBUS)" in detail
        return
    pytest.fail("no leaf page near the end of the file made LMDB read outside it; the finding no longer holds?")


def test_a_file_ending_before_pages_allocated_but_never_written_opens(tmp_path: Path) -> None:
    """LMDB may allocate pages in a transaction, free them again and never write them: the file then ends
    before the meta page's last page. Such a store is healthy and must open; a real cut is still refused."""
    store = tmp_path / "short"
    Vault.init(store).close()
    env = lmdb.open(str(store), max_dbs=40)
    meta = env.open_db(b"meta")
    for i in range(300):  # grow the file, then leave a tail of freed pages behind the last written one
        with env.begin(write=True) as txn:
            txn.put(b"filler-%d" % i, b"x" * 100, db=meta)
    with env.begin(write=True) as txn:
        for i in range(300):
            txn.put(b"big-%d" % i, b"y" * 3000, db=meta)
        for i in range(300):
            txn.delete(b"big-%d" % i, db=meta)
            txn.delete(b"filler-%d" % i, db=meta)
    last_page = env.info()["last_pgno"]
    env.close()
    size = (store / "data.mdb").stat().st_size
    assert size < (last_page + 1) * PAGE, "LMDB wrote every page: this test no longer makes the state it tests"
    with Vault.open(store) as vault:
        assert vault.verify("1" + "0" * 31).status in (Status.UNKNOWN, Status.MALFORMED)
    os.truncate(store / "data.mdb", 3 * PAGE)
    with pytest.raises(StoreCorruptError, match="shorter"):
        Vault.open(store)
