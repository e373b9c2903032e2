"""The engine's semantics through the library API: statuses, redeem, void, blacklist, stores."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import lmdb
import pytest

import keyvault
from keyvault import (
    ClosedError,
    ConflictError,
    Identity,
    MalformedKeyError,
    NotAStoreError,
    NotFoundError,
    PepperError,
    Status,
    StoreExistsError,
    StoreVersionError,
    TrustError,
    UsageError,
    Vault,
)
from keyvault import _fast
from keyvault.store import lmdbstore

from conftest import Issued, issue

DAY_MS = 86_400_000


def test_public_surface_is_pinned() -> None:
    assert sorted(keyvault.__all__) == sorted([
        "BadSignatureError", "BatchInfo", "BlacklistEntry", "ClosedError", "ConflictError", "Identity",
        "IdentityError", "ImportFileError", "KeyvaultError", "MalformedKeyError", "ManifestError", "NotAStoreError",
        "NotFoundError", "PepperError", "Result", "Status", "StoreCorruptError", "StoreError", "StoreExistsError",
        "StoreFullError", "StoreVersionError", "UsageError", "Vault", "__version__", "CustodyError", "ProofError",
        "TrustError", "PublicIdentity", "Rotation", "ThrottlePolicy", "Level", "Role", "Scope", "AuthorityError",
        "OutcomeUnknownError",
        # the typed reports (keyvault.engine.answers)
        "Activity", "Answer", "Audit", "AuthorityBound", "AuthorityShown", "AuthorityStatus", "AuthorityUnbound",
        "ClusterKeyState", "ClusterLogState",
        "Backup", "CheckReport", "CheckRow", "LockedCard", "Order", "Page", "ReceiptProof", "Restore", "Stats",
        "Trace",
    ])
    for name in keyvault.__all__:
        assert hasattr(keyvault, name)
    for name in keyvault.__all__:
        obj = getattr(keyvault, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, keyvault.KeyvaultError), name


def test_status_names_are_the_contract() -> None:
    assert {s.value for s in Status} == {"valid", "accepted", "malformed", "unknown", "redeemed", "void",
                                         "blacklisted", "expired", "not_yet_valid", "damaged", "throttled",
                                         "held", "expired_hold", "released", "exhausted"}


def test_valid_key_verifies_with_its_provenance(platform: Vault, issued: Issued) -> None:
    result = platform.verify(issued.keys[5])
    assert result.status is Status.VALID and result.ok
    assert result.serial == issued.serials[5]
    assert result.batch == issued.batch.id
    assert result.supplier == issued.supplier.id
    assert result.supplier_name == "Acme Games"
    assert result.product == "POINTS-100"
    with pytest.raises(AttributeError):
        result.status = Status.VOID  # type: ignore[misc]


def test_typing_variants_of_a_key_verify(platform: Vault, issued: Issued) -> None:
    key = issued.keys[3]
    plain = key.replace("-", "")
    for variant in (key.lower(), plain, " ".join(plain[i:i + 4] for i in range(0, 32, 4)),
                    key.replace("1", "l").replace("0", "O"), "\u3000" + key + "\n"):
        assert platform.verify(variant).status is Status.VALID


def test_a_mistyped_key_is_malformed_and_names_the_group(platform: Vault, issued: Issued) -> None:
    key = issued.keys[0].replace("-", "")
    for position in (0, 5, 13, 31):
        wrong = _fast.ALPHABET[(_fast.ALPHABET.index(key[position]) + 1) % 32]
        result = platform.verify(key[:position] + wrong + key[position + 1:])
        assert result.status is Status.MALFORMED
        assert result.group == position // 4 + 1
        assert result.serial is None
    swapped = next(i for i in range(31) if key[i] != key[i + 1])
    result = platform.verify(key[:swapped] + key[swapped + 1] + key[swapped] + key[swapped + 2:])
    assert result.status is Status.MALFORMED and result.group == swapped // 4 + 1
    assert "swapped" in (result.message or "")
    for garbage in ("", "hello", "x" * 10_000, "1" * 31, "\x00\udcff"):
        assert platform.verify(garbage).status is Status.MALFORMED


def test_unknown_keys(platform: Vault, supplier_store: Vault, issued: Issued) -> None:
    serial = _fast.parse_key(issued.keys[0])[1]
    forged = _fast.encode_key(serial, 12345)  # real serial, wrong secret: well-formed
    assert platform.verify(forged).status is Status.UNKNOWN
    stranger = _fast.encode_key(serial + (1 << 40), 1)  # a batch the store does not hold
    assert platform.verify(stranger).status is Status.UNKNOWN
    assert platform.redeem(forged, "o-1").status is Status.UNKNOWN
    assert platform.verify(issued.keys[0]).status is Status.VALID  # the real key was untouched


def test_redeem_exactly_once_and_idempotent(platform: Vault, issued: Issued) -> None:
    key = issued.keys[0]
    first = platform.redeem(key, "ORDER-1")
    assert first.status is Status.ACCEPTED and first.order_id == "ORDER-1" and first.redeemed_at
    assert platform.redeem(key, "ORDER-1") == first  # a retry: the first answer, unchanged
    other = platform.redeem(key, "ORDER-2")
    assert other.status is Status.REDEEMED
    assert other.order_id == "ORDER-1" and other.redeemed_at == first.redeemed_at
    assert "ORDER-1" in (other.message or "")
    assert platform.verify(key).status is Status.REDEEMED


def test_redeem_is_durable_across_reopen(tmp_path: Path, platform: Vault, issued: Issued) -> None:
    first = platform.redeem(issued.keys[0], "ORDER-9")
    platform.close()
    with Vault.open(tmp_path / "platform-store") as again:
        assert again.redeem(issued.keys[0], "ORDER-9") == first
        assert again.verify(issued.keys[0]).order_id == "ORDER-9"


@pytest.mark.parametrize("order_id", ["", "   ", "x" * 129, "bad\norder", 42])
def test_redeem_refuses_bad_order_ids(platform: Vault, issued: Issued, order_id: object) -> None:
    with pytest.raises(UsageError):
        platform.redeem(issued.keys[0], order_id)  # type: ignore[arg-type]
    assert platform.verify(issued.keys[0]).status is Status.VALID


def test_void(platform: Vault, issued: Issued) -> None:
    voided = platform.void(issued.keys[1], "customer refund")
    assert voided.status is Status.VOID and voided.reason == "customer refund" and voided.voided_at
    assert platform.void(issued.keys[1], "again").reason == "customer refund"  # idempotent, first reason kept
    assert platform.redeem(issued.keys[1], "o-1").status is Status.VOID
    assert platform.void(issued.serials[2], "recall by serial").status is Status.VOID
    assert platform.verify(issued.keys[2]).status is Status.VOID
    platform.redeem(issued.keys[3], "o-3")
    refused = platform.void(issued.keys[3], "too late")
    assert refused.status is Status.REDEEMED and refused.order_id == "o-3"
    with pytest.raises(UsageError):
        platform.void(issued.keys[4], "")
    assert platform.void("7KQ2-00A-0003F", "no such serial").status is Status.UNKNOWN


@pytest.mark.parametrize("level", ["key", "serial", "batch", "supplier"])
def test_blacklist_levels_and_lift(platform: Vault, issued: Issued, level: str) -> None:
    target = {"key": issued.keys[0], "serial": issued.serials[0], "batch": issued.batch.id,
              "supplier": issued.supplier.id}[level]
    entry = platform.blacklist(level, target, "reported stolen")
    assert entry.level == ("key" if level == "serial" else level)
    assert issued.keys[0] not in repr(entry) and issued.keys[0].replace("-", "") not in repr(entry)
    result = platform.verify(issued.keys[0])
    assert result.status is Status.BLACKLISTED
    assert result.reason == "reported stolen" and result.level == entry.level
    assert platform.redeem(issued.keys[0], "o-1").status is Status.BLACKLISTED
    other = platform.verify(issued.keys[1]).status
    assert other is (Status.VALID if entry.level == "key" else Status.BLACKLISTED)
    with pytest.raises(UsageError):
        platform.lift(level, target, " ")
    platform.lift(level, target, "recovered")
    assert platform.verify(issued.keys[0]).status is Status.VALID
    with pytest.raises(NotFoundError):
        platform.lift(level, target, "twice")


def test_blacklist_targets_must_exist(platform: Vault, issued: Issued) -> None:
    with pytest.raises(NotFoundError):
        platform.blacklist("batch", "ZZZZ-ZZZ", "x")
    with pytest.raises(NotFoundError):
        platform.blacklist("supplier", "ffffffffffffffff", "x")
    with pytest.raises(NotFoundError):
        platform.blacklist("serial", "ZZZZ-ZZZ-ZZZZZ", "x")
    with pytest.raises(MalformedKeyError):
        platform.blacklist("batch", "not a batch", "x")
    with pytest.raises(UsageError):
        platform.blacklist("planet", "x", "x")
    assert platform.blacklist_entries() == []


def test_supplier_can_be_named_by_prefix(platform: Vault, issued: Issued) -> None:
    platform.blacklist("supplier", issued.supplier.prefix_text, "lifetime ban")
    assert platform.verify(issued.keys[0]).level == "supplier"


def _blacklist_in_child(path: str, batch: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Vault.open(path) as vault:
        vault.blacklist("batch", batch, "from another process")
    queue.put("done")


def test_blacklist_from_another_process_applies_on_next_verify(tmp_path: Path, platform: Vault,
                                                               issued: Issued) -> None:
    assert platform.verify(issued.keys[0]).status is Status.VALID  # the catalog is now cached
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_blacklist_in_child, args=(str(tmp_path / "platform-store"), issued.batch.id, queue))
    child.start()
    assert queue.get(timeout=60) == "done"
    child.join(60)
    result = platform.verify(issued.keys[0])
    assert result.status is Status.BLACKLISTED and result.reason == "from another process"


def _redeem_in_child(path: str, key: str, order: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with Vault.open(path) as vault:
        queue.put((order, vault.redeem(key, order).status.value))


def test_processes_racing_for_one_key_get_one_acceptance(tmp_path: Path, platform: Vault, issued: Issued) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_redeem_in_child,
                         args=(str(tmp_path / "platform-store"), issued.keys[7], f"order-{i}", queue))
             for i in range(4)]
    for p in procs:
        p.start()
    answers = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    winners = [order for order, status in answers.items() if status == "accepted"]
    assert len(winners) == 1
    assert set(answers.values()) == {"accepted", "redeemed"}
    assert platform.verify(issued.keys[7]).order_id == winners[0]


def test_validity_windows(tmp_path: Path, supplier: Identity, supplier_store: Vault, platform: Vault) -> None:
    now = int(time.time() * 1000)
    later = issue(supplier_store, supplier, tmp_path / "w", 20, valid_from=now + DAY_MS, valid_until=now + 2 * DAY_MS)
    gone = issue(supplier_store, supplier, tmp_path / "w", 20, valid_from=now - 2 * DAY_MS, valid_until=now - DAY_MS)
    for batch in (later, gone):
        platform.import_manifest(batch.manifest)
    assert platform.verify(later.keys[0]).status is Status.NOT_YET_VALID
    assert platform.redeem(later.keys[0], "o").status is Status.NOT_YET_VALID
    assert platform.verify(gone.keys[0]).status is Status.EXPIRED
    assert platform.redeem(gone.keys[0], "o").status is Status.EXPIRED
    with pytest.raises(UsageError):
        supplier_store.issue_batch(supplier, "P", 5, keys_out=tmp_path / "k.csv", manifest_out=tmp_path / "m.kvm",
                                   valid_from=now, valid_until=now - 1)


def test_stats_count_everything(platform: Vault, issued: Issued) -> None:
    platform.redeem(issued.keys[0], "o-1")
    platform.redeem(issued.keys[0], "o-2")  # refused: redeemed
    platform.void(issued.keys[1], "refund")
    platform.blacklist("key", issued.keys[2], "stolen")
    platform.verify(issued.keys[2])  # refused: blacklisted
    platform.verify(_fast.encode_key(_fast.parse_key(issued.keys[3])[1], 7))  # refused: unknown, attributed
    platform.verify("not a key")  # refused: malformed, not attributable
    stats = platform.stats()
    (batch,) = stats["batches"]  # type: ignore[misc]
    assert batch["count"] == 200 and batch["origin"] == "manifest"
    assert (batch["redeemed"], batch["void"], batch["blacklisted"], batch["active"]) == (1, 1, 1, 197)  # once each
    assert batch["refused"] == {"redeemed": 1, "blacklisted": 1, "unknown": 1}
    (supplier,) = stats["suppliers"]  # type: ignore[misc]
    assert supplier["imported"] == 200 and supplier["issued"] == 0 and supplier["redeemed"] == 1
    totals = stats["totals"]
    assert totals["refused"] == {"redeemed": 1, "blacklisted": 1, "unknown": 1, "malformed": 1}  # type: ignore[index]
    assert totals["blacklist_entries"] == 1  # type: ignore[index]


def test_supplier_store_counts_its_batches_as_issued(supplier_store: Vault, issued: Issued) -> None:
    (row,) = supplier_store.stats()["suppliers"]  # type: ignore[misc]
    assert row["issued"] == 200 and row["imported"] == 0


def test_trace_tells_the_history(platform: Vault, issued: Issued) -> None:
    platform.redeem(issued.keys[0], "ORDER-77")
    platform.blacklist("batch", issued.batch.id, "audit")
    trace = platform.trace(issued.serials[0])
    assert trace == platform.trace(issued.keys[0])
    assert trace["supplier"]["name"] == "Acme Games"  # type: ignore[index]
    assert trace["batch"]["product"] == "POINTS-100"  # type: ignore[index]
    assert trace["status"]["status"] == "redeemed"  # type: ignore[index]
    kinds = [e["type"] for e in trace["events"]]  # type: ignore[union-attr]
    assert kinds == ["trust", "supplier", "import", "redeem", "blacklist"]
    with pytest.raises(NotFoundError):
        platform.trace("ZZZZ-ZZZ-ZZZZZ")


def test_manifest_reimport_is_a_no_op_and_conflicts_are_refused(tmp_path: Path, supplier: Identity,
                                                               supplier_store: Vault, platform: Vault,
                                                               issued: Issued) -> None:
    info, new = platform.import_manifest(issued.manifest)
    assert not new and info.id == issued.batch.id
    # Another store of the same supplier issues "the same" batch number: a different manifest.
    rogue_store = Vault.init(tmp_path / "rogue")
    rogue = issue(rogue_store, supplier, tmp_path / "rogue-files", 10)
    rogue_store.close()
    assert rogue.batch.id == issued.batch.id
    with pytest.raises(ConflictError):
        platform.import_manifest(rogue.manifest)
    assert platform.verify(rogue.keys[0]).status is Status.UNKNOWN


def test_colliding_prefix_is_refused(tmp_path: Path, platform: Vault, issued: Issued) -> None:
    impostor = Identity.generate("Impostor", issued.supplier.prefix_text)
    with pytest.raises(TrustError, match="prefix .* already belongs to 'Acme Games'"):
        platform.trust(impostor.public)  # no second supplier is pinned under a prefix one already holds
    platform.trust(impostor.public, "distributor")  # in another role it may be pinned; it signs no manifest
    other_store = Vault.init(tmp_path / "impostor")
    batch = issue(other_store, impostor, tmp_path / "impostor-files", 10)
    other_store.close()
    with pytest.raises(TrustError, match="only as distributor"):
        platform.import_manifest(batch.manifest)
    assert len(platform.stats()["batches"]) == 1  # type: ignore[arg-type]


def test_blacklisted_supplier_cannot_import(tmp_path: Path, supplier_store: Vault, platform: Vault,
                                            issued: Issued) -> None:
    platform.blacklist("supplier", issued.supplier.id, "lifetime ban")
    more = issue(supplier_store, issued.supplier, tmp_path / "more", 10)
    with pytest.raises(ConflictError, match="blacklisted"):
        platform.import_manifest(more.manifest)


def _write_cards(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_imported_codes_and_pairs(tmp_path: Path, supplier: Identity, supplier_store: Vault,
                                  platform: Vault) -> None:
    codes = _write_cards(tmp_path / "codes.csv", "code", ["GIFT-AAAA-1111", "gift-bbbb-2222", "GIFT-CCCC-3333"])
    pairs = _write_cards(tmp_path / "pairs.csv", "card_number,password",
                         ["6222 0001,90001111", "6222 0002,90002222"])
    code_batch = supplier_store.import_cards(supplier, "STEAM-50", codes, manifest_out=tmp_path / "codes.kvm")
    pair_batch = supplier_store.import_cards(supplier, "PHONE-100", pairs, manifest_out=tmp_path / "pairs.kvm")
    assert (code_batch.kind, pair_batch.kind, code_batch.count) == ("code", "pair", 3)
    for manifest in ("codes.kvm", "pairs.kvm"):
        platform.import_manifest(tmp_path / manifest)
    for vault in (supplier_store, platform):
        assert vault.verify("gift aaaa 1111").status is Status.VALID
        assert vault.verify("GIFT-BBBB-2222").batch == code_batch.id
        assert vault.verify("GIFT-DDDD-4444").status is Status.UNKNOWN
        assert vault.verify("62220001:90001111").status is Status.VALID
        assert vault.verify("6222-0002 : 9000 2222").status is Status.VALID
        assert vault.verify("62220002:90001111").status is Status.UNKNOWN  # another card's password
    assert platform.redeem("GIFT-CCCC-3333", "o-1").status is Status.ACCEPTED
    assert platform.redeem("gift-cccc-3333", "o-2").order_id == "o-1"
    assert platform.trace("62220001:90001111")["card_number"] == "62220001"
    # The same upstream card sold again in another batch is refused at import, changing nothing.
    again = _write_cards(tmp_path / "again.csv", "code", ["NEW-CODE-1", "GIFT-AAAA-1111"])
    other_store = Vault.init(tmp_path / "other-supplier-store")
    other = Identity.generate("Reseller")
    platform.trust(other.public)
    other_store.import_cards(other, "STEAM-50", again, manifest_out=tmp_path / "again.kvm")
    other_store.close()
    with pytest.raises(ConflictError, match="sold twice"):
        platform.import_manifest(tmp_path / "again.kvm")
    assert platform.verify("NEW-CODE-1").status is Status.UNKNOWN


def test_store_must_be_a_keyvault_store(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError):
        Vault.open(tmp_path / "empty")
    env = lmdb.open(str(tmp_path / "other"))
    with env.begin(write=True) as txn:
        txn.put(b"hello", b"world")
    env.close()
    with pytest.raises(NotAStoreError):
        Vault.open(tmp_path / "other")
    Vault.init(tmp_path / "s").close()
    with pytest.raises(StoreExistsError):
        Vault.init(tmp_path / "s")


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    Vault.init(tmp_path / "s").close()
    env = lmdb.open(str(tmp_path / "s"), max_dbs=20)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"format", b"keyvault-store/999", db=meta)
    env.close()
    with pytest.raises(StoreVersionError, match="keyvault-store/999"):
        Vault.open(tmp_path / "s")


def test_pepper_is_checked(tmp_path: Path) -> None:
    Vault.init(tmp_path / "a").close()
    Vault.init(tmp_path / "b").close()
    assert (tmp_path / "a" / "pepper").stat().st_mode & 0o777 == 0o600
    with pytest.raises(PepperError, match="does not belong"):
        Vault.open(tmp_path / "a", pepper_file=tmp_path / "b" / "pepper")
    (tmp_path / "b" / "pepper").chmod(0o644)
    with pytest.raises(PepperError, match="chmod 600"):
        Vault.open(tmp_path / "b")
    (tmp_path / "a" / "pepper").unlink()
    with pytest.raises(PepperError, match="missing"):
        Vault.open(tmp_path / "a")


def test_pepper_can_live_outside_the_store(tmp_path: Path) -> None:
    outside = tmp_path / "secrets" / "pepper"
    outside.parent.mkdir()
    Vault.init(tmp_path / "s", pepper_file=outside).close()
    assert not (tmp_path / "s" / "pepper").exists()
    with Vault.open(tmp_path / "s", pepper_file=outside) as vault:
        assert vault.stats()["totals"]["keys"] == 0  # type: ignore[index]


def test_map_grows_by_itself(tmp_path: Path, supplier: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdbstore, "INITIAL_MAP_SIZE", 64 << 10)  # 64 KiB: full after a few hundred keys
    with Vault.init(tmp_path / "small") as vault:
        before = vault.engine.store.info()["map_size"]
        batch = issue(vault, supplier, tmp_path / "files", 5000)
        assert vault.engine.store.info()["map_size"] > before
        assert vault.verify(batch.keys[-1]).status is Status.VALID
        assert vault.redeem(batch.keys[4999], "o").status is Status.ACCEPTED


def test_closed_vault_refuses_work(tmp_path: Path) -> None:
    vault = Vault.init(tmp_path / "s")
    vault.close()
    with pytest.raises(ClosedError):
        vault.verify("x")


@pytest.mark.parametrize("bad", [None, 42, b"1VSX-8000", ["key"]])
def test_non_string_keys_are_usage_errors(platform: Vault, issued: Issued, bad: object) -> None:
    for call in (platform.verify, lambda k: platform.redeem(k, "o"), lambda k: platform.void(k, "r"),
                 platform.trace):
        with pytest.raises(UsageError):
            call(bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        platform.verify_many(["fine", bad])  # type: ignore[list-item]


def test_trace_orders_events_of_the_same_millisecond(platform: Vault, issued: Issued,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import keyvault.engine.engine as engine_module

    frozen = engine_module.now_ms()
    monkeypatch.setattr(engine_module, "now_ms", lambda: frozen)  # redeem and blacklist in one instant
    platform.redeem(issued.keys[0], "ORDER-1")
    platform.blacklist("key", issued.keys[0], "same instant")
    trace = platform.trace(issued.keys[0])
    kinds = [e["type"] for e in trace["events"]]  # type: ignore[union-attr]
    assert kinds == ["trust", "supplier", "import", "redeem", "blacklist"]
    assert trace["events"][3]["at"] == trace["events"][4]["at"]  # type: ignore[index]


def test_a_damaged_state_byte_is_refused_not_trusted(platform: Vault, issued: Issued) -> None:
    from keyvault.store.records import CARD, u64

    serial = _fast.parse_key(issued.keys[0])[1]

    def damage(txn) -> None:  # type: ignore[no-untyped-def]
        _, tag, seal = CARD.unpack(txn.get("cards", u64(serial)))
        txn.put("cards", u64(serial), CARD.pack(7, tag, seal))

    platform.engine.store.write(damage)
    for result in (platform.verify(issued.keys[0]), platform.verify_many([issued.keys[1], issued.keys[0]])[1],
                   platform.redeem(issued.keys[0], "o-1")):
        assert result.status is Status.DAMAGED and "damaged" in (result.message or "")
    assert platform.verify(issued.keys[1]).status is Status.VALID  # the rest of the batch is unharmed


@pytest.mark.parametrize("damage", ["missing", "bad utf-8", "short", "other state"])
def test_a_damaged_outcome_is_refused_alone(platform: Vault, issued: Issued, monkeypatch: pytest.MonkeyPatch,
                                            damage: str) -> None:
    """A redeemed card whose outcome record is missing or damaged vouches for nothing (never the epoch as
    its time), and the rest of a batch check is unharmed."""
    from keyvault.store.records import OUTCOME, u64

    monkeypatch.setattr("keyvault.engine.ledger.FOLD_AT", 2)
    platform.redeem_many([(issued.keys[0], "o-0"), (issued.keys[1], "o-1")])  # folded: outcome records written
    serial = _fast.parse_key(issued.keys[0])[1]
    with platform.engine.store.read() as txn:
        assert txn.head().folded == txn.head().log_size
        state, at, index = OUTCOME.unpack_from(txn.get("outcomes", u64(serial)))
    broken = {"missing": None, "bad utf-8": OUTCOME.pack(state, at, index) + b"o-\xff\xfe",
              "short": OUTCOME.pack(state, at, index)[:5], "other state": OUTCOME.pack(2, at, index) + b"o-0"}[damage]

    def spoil(txn) -> None:  # type: ignore[no-untyped-def]
        if broken is None:
            txn.delete("outcomes", u64(serial))
        else:
            txn.put("outcomes", u64(serial), broken)

    platform.engine.store.write(spoil)
    results = platform.verify_many([issued.keys[2], issued.keys[0], issued.keys[1]])
    assert results[0].status is Status.VALID and results[2].status is Status.REDEEMED
    for result in (results[1], platform.verify(issued.keys[0]), platform.redeem(issued.keys[0], "o-9")):
        assert result.status is Status.DAMAGED and "damaged" in (result.message or "")
        assert result.redeemed_at is None


def test_a_catalog_read_inside_an_aborted_change_is_not_kept(platform: Vault, issued: Issued) -> None:
    """A transaction that changed the configuration and read the catalog, then aborted, must leave no cached
    catalog behind: another writer's next change reuses its generation number (here, a blacklist entry)."""
    from keyvault.store.records import BLACKLIST_DIGEST, LEVEL_KEY, blacklist_digest, dump, u64

    class Abort(Exception):
        pass

    def change_then_abort(txn) -> None:  # type: ignore[no-untyped-def]
        txn.bump_generation()
        platform.engine.current(txn)
        raise Abort

    with pytest.raises(Abort):
        platform.engine.store.write(change_then_abort)
    serial = _fast.parse_key(issued.keys[0])[1]

    def other_writer(txn) -> None:  # type: ignore[no-untyped-def]  # as another process would
        value = dump({"reason": "stolen", "at": 0})
        txn.put("blacklist", LEVEL_KEY + u64(serial), value)
        txn.put("meta", BLACKLIST_DIGEST, blacklist_digest(txn.get("meta", BLACKLIST_DIGEST), LEVEL_KEY + u64(serial),
                                                           None, value))
        txn.bump_generation()

    platform.engine.store.write(other_writer)
    assert platform.verify(issued.keys[0]).status is Status.BLACKLISTED
