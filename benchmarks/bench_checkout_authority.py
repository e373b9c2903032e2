"""Checkout's cost on a node bound to the PostgreSQL authority, measured (not a test):
``.venv/bin/python benchmarks/bench_checkout_authority.py``.

One purchase a call, through one bound node (the library, one caller): ``hold`` + ``confirm`` of a key against
a plain ``redeem`` of another, alternated in blocks of 50 in the same run (A/B: the machine's load hits both).
Starts a throwaway PostgreSQL 15 (as the tests do) unless ``--dsn`` names one; prints one JSON document.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_authority import start_postgres


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", help="an empty PostgreSQL database to use (default: start a throwaway one)")
    parser.add_argument("--keys", type=int, default=1000, help="purchases each way (default 1,000)")
    args = parser.parse_args()
    from keyvault import Identity, Vault

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        stop: list[str] | None = None
        dsn = args.dsn
        pg = Path(tempfile.mkdtemp(prefix="kvbench-pg-"))  # its own directory: the postgres user must enter it
        if dsn is None:
            dsn, stop = start_postgres(pg)
        try:
            supplier = Identity.generate("Bench Supplier")
            with Vault.init(base / "supplier") as store:
                store.issue_batch(supplier, "BENCH", 2 * args.keys, keys_out=base / "keys.csv",
                                  manifest_out=base / "b.kvm")
            with open(base / "keys.csv", newline="") as fh:
                keys = [row["key"] for row in csv.DictReader(fh)]
            with Vault.init(base / "node") as node:
                node.trust(supplier.public)
                node.import_manifest(base / "b.kvm")
                node.authority.set(dsn)
                held: list[float] = []
                plain: list[float] = []
                for start in range(0, args.keys, 50):
                    for i in range(start, min(start + 50, args.keys)):
                        t = time.perf_counter()
                        assert node.hold(keys[2 * i], f"h{i}", 900).status.value == "held"
                        assert node.confirm(f"h{i}")[0].status.value == "accepted"
                        held.append(time.perf_counter() - t)
                    for i in range(start, min(start + 50, args.keys)):
                        t = time.perf_counter()
                        assert node.redeem(keys[2 * i + 1], f"r{i}").status.value == "accepted"
                        plain.append(time.perf_counter() - t)
        finally:
            if stop is not None:
                subprocess.run(stop, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            shutil.rmtree(pg, ignore_errors=True)

    def summary(times: list[float]) -> dict[str, float]:
        ordered = sorted(times)
        return {"per_second": round(len(times) / sum(times), 1), "p50_ms": round(statistics.median(times) * 1000, 2),
                "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2)}

    print(json.dumps({"purchases": args.keys, "hold_and_confirm": summary(held), "redeem": summary(plain),
                      "ratio": round(sum(held) / sum(plain), 2)}, indent=2))


if __name__ == "__main__":
    main()
