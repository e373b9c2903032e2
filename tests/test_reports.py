"""Reports a supplier reconciles with: time windows, per-key reports (streamed), and paged lists."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
import types
from pathlib import Path

import pytest
from cli_support import EXIT_ERROR, EXIT_USAGE, kv, ok, one_json
from conftest import Issued, issue

from keyvault import Identity, NotFoundError, UsageError, Vault
from keyvault.clock import now_ms
from keyvault.engine import ledger

_DAY = 86_400_000


def test_activity_counts_redeems_and_voids_in_a_window(platform: Vault, issued: Issued) -> None:
    before = now_ms()
    platform.redeem_many([(issued.keys[0], "o-0"), (issued.keys[1], "o-1")])
    platform.void(issued.serials[2], "refund")
    doc = platform.activity(before, now_ms() + 1, daily=True)
    assert (doc.totals.redeemed, doc.totals.void) == (2, 1)
    assert doc.to_dict()["batches"] == [{"batch": issued.batch.id, "supplier": issued.batch.supplier,
                                         "product": "POINTS-100", "redeemed": 2, "void": 1}]
    assert doc["suppliers"][0]["name"] == "Acme Games" and doc["suppliers"][0]["redeemed"] == 2
    assert sum(d["redeemed"] for d in doc["days"]) == 2 and doc["days"][-1]["batches"][0]["void"] == 1
    assert platform.activity(now_ms() + _DAY).to_dict()["totals"] == {"redeemed": 0, "void": 0}  # since: after all
    assert platform.activity(None, before).to_dict()["totals"] == {"redeemed": 0, "void": 0}  # until: before all
    whole = platform.activity()
    assert whole.days is None and "days" not in whole.to_dict()
    with pytest.raises(UsageError):
        platform.activity(before, before)


def test_key_report_says_what_became_of_each_key_and_never_the_key(platform: Vault, issued: Issued,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    platform.redeem(issued.keys[0], "order-0")
    platform.void(issued.serials[1], "refund")
    platform.blacklist("serial", issued.serials[2], "lost in the post")
    rows = platform.key_report(issued.batch.id)
    assert isinstance(rows, types.GeneratorType)  # streamed, not gathered
    first = list(rows)
    assert [r["serial"] for r in first] == issued.serials
    assert first[0] | {"at": None} == {"serial": issued.serials[0], "state": "redeemed", "order_id": "order-0",
                                       "at": None, "reason": None, "blacklisted": False}
    assert first[0]["at"] is not None
    assert (first[1]["state"], first[1]["reason"]) == ("void", "refund")
    assert (first[2]["state"], first[2]["blacklisted"]) == ("active", True)
    assert {r["state"] for r in first[3:]} == {"active"}
    text = json.dumps(first)
    assert not any(k in text or k.replace("-", "") in text for k in issued.keys)
    monkeypatch.setattr(ledger, "FOLD_AT", 1)
    platform.redeem(issued.keys[5], "order-5")  # folds every change into the card and outcome records
    folded = list(platform.key_report(issued.batch.id))
    assert folded[:3] == first[:3] and folded[5]["order_id"] == "order-5"
    platform.blacklist("batch", issued.batch.id, "recall")
    assert all(r["blacklisted"] for r in platform.key_report(issued.batch.id))
    with pytest.raises(NotFoundError):
        list(platform.key_report("ZZZZ-000"))
    with pytest.raises(UsageError):
        list(platform.key_report("not a batch"))


def test_key_report_streams_in_bounded_memory(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    """100,000 keys reported: the peak is a few rows and the read, never a list of every row (a list of
    100,000 row dicts alone takes about 40 MB)."""
    batch = supplier_store.issue_batch(supplier, "BULK", 100_000, keys_out=tmp_path / "k.csv",
                                       manifest_out=tmp_path / "m.kvm")
    supplier_store.redeem_many([(line.split(",")[1], f"o-{i}") for i, line in
                                enumerate((tmp_path / "k.csv").read_text().splitlines()[1:1001])])
    out = io.StringIO()
    writer = csv.writer(out)
    tracemalloc.start()
    try:
        count = 0
        for row in supplier_store.key_report(batch.id):
            writer.writerow(row.values())
            count += 1
            if count % 10_000 == 0:
                out.seek(0)
                out.truncate()  # the writer's output goes elsewhere in real use (a file, a pipe)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100_000
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while streaming 100,000 rows"


def test_pages_walk_every_item_once(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    made = [issue(supplier_store, supplier, tmp_path / "b", count=2).batch.id for _ in range(7)]
    for name in ("zeta", "alpha", "mid"):
        supplier_store.tokens.create(name, "verify")
    for what, field, expected in (("batches", "batch", sorted(made)), ("tokens", "name", ["alpha", "mid", "zeta"])):
        seen, after = [], None
        while True:
            doc = supplier_store.page(what, after=after, limit=3)
            assert len(doc[what]) <= 3
            seen += [item[field] for item in doc[what]]
            after = doc["next"]
            if after is None:
                break
        assert seen == expected
    manifests = supplier_store.page("manifests", limit=1000)["manifests"]
    assert len(manifests) == 7 and manifests == sorted(manifests, key=lambda m: m["manifest"])
    assert supplier_store.page("blacklist").to_dict() == {"blacklist": [], "next": None}
    assert supplier_store.page("batches", after="ZZZZ-ZZZ").to_dict() == {"batches": [], "next": None}
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": True}, {"after": ""}, {"after": "x" * 201}):
        with pytest.raises(UsageError):
            supplier_store.page("batches", **bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        supplier_store.page("keys")


def test_cli_report_stats_window_and_list(world) -> None:  # type: ignore[no-untyped-def]
    store = world.platform
    ok("--store", store, "redeem", world.keys[0], "--order", "o-0")
    ok("--store", store, "void", world.serials[1], "--reason", "refund")
    rows = list(csv.DictReader(io.StringIO(ok("--store", store, "report", "--batch", world.batch).stdout)))
    assert len(rows) == len(world.keys) and rows[0]["state"] == "redeemed" and rows[0]["order_id"] == "o-0"
    assert rows[1]["reason"] == "refund" and list(rows[0]) == ["serial", "state", "order_id", "at", "reason",
                                                               "blacklisted"]
    doc = json.loads(ok("--store", store, "report", "--batch", world.batch, "--format", "json").stdout)
    assert doc["batch"] == world.batch and len(doc["keys"]) == len(world.keys)
    whole = ok("--store", store, "report", "--batch", world.batch, "--format", "json").stdout
    assert not any(k in whole for k in world.keys)
    missing = kv("--store", store, "report", "--batch", "ZZZZ-000")
    assert missing.exit_code == EXIT_ERROR and missing.stdout == ""  # nothing half-printed
    window = one_json(ok("--store", store, "stats", "--since", "2020-01-01", "--daily", "--json"))
    assert window["totals"] == {"redeemed": 1, "void": 1} and window["days"]
    assert "1 redeemed" in ok("--store", store, "stats", "--since", "2020-01-01").stdout
    assert kv("--store", store, "stats", "--since", "2027-01-01", "--until", "2026-01-01").exit_code == EXIT_ERROR
    assert kv("--store", store, "stats", "--since", "yesterday").exit_code == EXIT_USAGE
    page = one_json(ok("--store", store, "list", "batches", "--limit", "1", "--json"))
    assert page["batches"][0]["batch"] == world.batch and page["next"] is None
    assert "more:" not in ok("--store", store, "list", "manifests").stdout
    assert kv("--store", store, "list", "batches", "--limit", "0").exit_code == EXIT_USAGE
    assert kv("--store", store, "list", "keys").exit_code == EXIT_USAGE


def test_async_twins_stream_the_key_report(tmp_path: Path, supplier: Identity, supplier_store: Vault) -> None:
    import asyncio

    from keyvault.aio import AsyncVault

    batch = issue(supplier_store, supplier, tmp_path / "a", count=2500)
    supplier_store.redeem(batch.keys[0], "o-0")
    path = supplier_store.path
    supplier_store.close()

    async def main() -> None:
        async with await AsyncVault.open(path) as vault:
            rows = [row async for row in await vault.key_report(batch.batch.id)]
            assert [r["serial"] for r in rows] == batch.serials and rows[0]["order_id"] == "o-0"
            left = await vault.key_report(batch.batch.id)
            async for _ in left:
                break  # a reader that leaves early stops the walk
            await left.aclose()
            with pytest.raises(NotFoundError):
                async for _ in await vault.key_report("ZZZZ-000"):
                    pass
            assert (await vault.page("batches"))["batches"][0]["batch"] == batch.batch.id
            assert (await vault.activity())["totals"]["redeemed"] == 1
            text = await vault.receipt(batch.serials[0])
            assert (await vault.upgrade_receipt(text))["receipt"] == text

    asyncio.run(main())
