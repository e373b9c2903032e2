"""``keyvault demo``: a supplier and a platform, end to end, on temporary stores."""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from keyvault import Identity, Result, Status, Vault
from keyvault.formats.bundle import verify as verify_bundle
from keyvault.formats.keyformat import compiled, key_material

from .output import emit, handle_errors, json_option, progress
from .store import render_trace


def _say(as_json: bool, text: str) -> None:
    if not as_json:
        click.echo(text)


def _show(as_json: bool, label: str, result: Result) -> None:
    detail = f" - {result.message}" if result.message else ""
    order = f" (order {result.order_id})" if result.status is Status.ACCEPTED else ""
    _say(as_json, f"    {label:34} {result.serial or 'key'}: {result.status.value}{order}{detail}")


@click.command()
@click.option("--count", default=100_000, show_default=True, type=click.IntRange(min=10, max=10_000_000),
              help="Keys in the demo batch.")
@click.option("--dir", "keep", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the demo's stores and files here (default: a temporary directory, removed after).")
@json_option
@handle_errors
def demo(count: int, keep: Path | None, as_json: bool) -> None:
    """Run the whole story: issue a batch, import it, verify, redeem, retry, void, blacklist, trace."""
    work = keep or Path(tempfile.mkdtemp(prefix="keyvault-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary = _run(work, count, as_json)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    emit(as_json, summary, "")


def _run(work: Path, count: int, as_json: bool) -> dict[str, Any]:
    rates: dict[str, float] = {}
    core = "compiled (Cython)" if compiled() else "pure Python"
    _say(as_json, f"keyvault demo in {work} - hot path: {core}\n")

    _say(as_json, "1. The supplier creates an identity and a store")
    acme = Identity.generate("Acme Games")
    acme.save(work / "acme.identity")
    _say(as_json, f"    supplier {acme.name}: id {acme.id}, issuer prefix {acme.prefix_text}")
    supplier = Vault.init(work / "supplier-store")

    _say(as_json, f"\n2. The supplier issues {count:,} keys for product POINTS-500, valid 365 days")
    keys_csv, manifest = work / "keys.csv", work / "batch.kvm"
    report, finish = progress("issuing keys", count)
    started = time.perf_counter()
    try:
        day = 86_400_000
        now = int(time.time() * 1000)
        batch = supplier.issue_batch(acme, "POINTS-500", count, keys_out=keys_csv, manifest_out=manifest,
                                     valid_until=now + 365 * day, progress=None if as_json else report)
    finally:
        finish()
    rates["issue_keys_per_s"] = count / (time.perf_counter() - started)
    _say(as_json, f"    batch {batch.id}: printable export {keys_csv.name} (0600, the only plaintext copy), "
                  f"signed manifest {manifest.name} ({manifest.stat().st_size:,} bytes, no keys in it)")
    _say(as_json, f"    {rates['issue_keys_per_s']:,.0f} keys/s generated, hashed, exported and stored")
    supplier.close()

    _say(as_json, "\n3. The platform imports the manifest (signature checked first)")
    platform = Vault.init(work / "platform-store")
    platform.trust(acme.public)  # pinned after checking its fingerprint with the supplier
    started = time.perf_counter()
    platform.import_manifest(manifest)
    rates["import_keys_per_s"] = count / (time.perf_counter() - started)
    _say(as_json, f"    {count:,} key records stored at {rates['import_keys_per_s']:,.0f} keys/s")

    with open(keys_csv, newline="") as fh:
        keys = [row["key"] for row in csv.DictReader(fh)]

    _say(as_json, f"\n4. Customers' keys are verified at checkout ({len(keys):,} keys)")
    started = time.perf_counter()
    results = platform.verify_many(keys)
    rates["verify_many_keys_per_s"] = len(keys) / (time.perf_counter() - started)
    valid = sum(r.status is Status.VALID for r in results)
    started = time.perf_counter()
    sample = keys[: min(len(keys), 20_000)]
    for key in sample:
        platform.verify(key)
    rates["verify_keys_per_s"] = len(sample) / (time.perf_counter() - started)
    _say(as_json, f"    {valid:,} valid; verify_many {rates['verify_many_keys_per_s']:,.0f} keys/s, "
                  f"verify one by one {rates['verify_keys_per_s']:,.0f} keys/s")
    typo = keys[7][:6] + ("X" if keys[7][6] != "X" else "Y") + keys[7][7:]
    _show(as_json, "a customer mistypes one character:", platform.verify(typo))

    _say(as_json, "\n5. Redemption: exactly once, idempotent per order")
    first = platform.redeem(keys[0], "ORDER-1001")
    _show(as_json, "redeem for order ORDER-1001:", first)
    _show(as_json, "same key, order ORDER-2002:", platform.redeem(keys[0], "ORDER-2002"))
    retry = platform.redeem(keys[0], "ORDER-1001")
    _show(as_json, "ORDER-1001 retried:", retry)
    _say(as_json, f"    the retry got the first answer: {retry == first}")

    _say(as_json, "\n6. A refund voids an unused key")
    _show(as_json, "void (customer refund):", platform.void(keys[1], "customer refund"))
    _show(as_json, "the voided key at checkout:", platform.redeem(keys[1], "ORDER-3003"))

    _say(as_json, "\n7. The batch is reported stolen and blacklisted")
    platform.blacklist("batch", batch.id, "lot reported stolen in transit")
    _show(as_json, "a key of the batch:", platform.verify(keys[2]))

    _say(as_json, "\n8. Trace of the redeemed key, and its proof checked as an outsider would")
    trace = platform.trace(keys[0]).to_dict()
    proof = json.dumps(platform.trace_bundle(keys[0])).encode()
    checks = verify_bundle(proof, [acme.public, platform.engine_identity], key_material(keys[0]))
    trace["verification"] = {"ok": all(c.ok for c in checks), "checks": [c.line() for c in checks]}
    _say(as_json, "    " + render_trace(trace).replace("\n", "\n    "))
    _say(as_json, f"    the bundle is {len(proof):,} bytes: anyone holding Acme's and the platform's public keys "
                  "can check it offline (`keyvault verify-bundle`)")

    stats = platform.stats().to_dict()
    totals: dict[str, Any] = stats["totals"]
    platform.close()
    _say(as_json, f"\n9. Summary (platform store): {totals['keys']:,} keys, {totals['redeemed']} redeemed, "
                  f"{totals['void']} void, {totals['blacklist_entries']} blacklist entry, "
                  f"{totals['refused_total']:,} refused attempts {totals['refused']}")
    _say(as_json, "    rates: " + ", ".join(f"{name} {value:,.0f}" for name, value in rates.items()))
    return {"count": count, "compiled": compiled(), "batch": batch.id, "rates": rates, "totals": totals,
            "retry_matches_first": retry == first, "proof_checks_pass": trace["verification"]["ok"]}
