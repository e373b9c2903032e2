"""The PostgreSQL authority's cost, measured (not a test): ``.venv/bin/python benchmarks/bench_authority.py``.

* redeem_many in batches of 1,000 through a bound node (local judging, one INSERT … ON CONFLICT statement
  and one read for the losers per batch, COMMIT, then the node's LMDB cache written), against a bare
  psycopg loop doing the same INSERT … SELECT … FROM unnest(…) ON CONFLICT DO NOTHING per 1,000 rows;
* verify_many of 1,000 keys on the bound node against the same store unbound (verify stays local).

Starts a throwaway PostgreSQL 15 (as the tests do) unless ``--dsn`` names one; prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("KEYVAULT_PG_BIN", "/usr/lib/postgresql/15/bin"))


def start_postgres(base: Path) -> tuple[str, list[str]]:
    """A throwaway server under ``base``: (DSN of its postgres database, the pg_ctl command to stop it)."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"], **quiet)
    pg_ctl = [*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "-o", f"-p {port} -k {base} -c listen_addresses=''", "-l", str(base / "log"), "-w",
                    "start"], **quiet)
    return f"host={base} port={port} dbname=postgres user=postgres", [*pg_ctl, "-m", "fast", "stop"]


def main() -> None:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an empty PostgreSQL database to use (default: start a throwaway one)")
    parser.add_argument("--keys", type=int, default=20_000, help="keys redeemed each way (default 20,000)")
    args = parser.parse_args()
    os.environ["KEYVAULT_AUTHORITY_FOLLOW"] = "0"  # the follower's polls would share the measured CPU
    import psycopg

    from keyvault import Identity, Vault

    root = Path(tempfile.mkdtemp(prefix="kv-bench-authority-"))
    pg_base = Path(tempfile.mkdtemp(prefix="kv-bench-pg-"))  # its own: the postgres user must enter it
    stop: list[str] | None = None
    try:
        dsn = args.dsn
        if dsn is None:
            dsn, stop = start_postgres(pg_base)
        n = args.keys
        supplier = Identity.generate("Bench Supplier")
        with Vault.init(root / "supplier") as sup:
            sup.issue_batch(supplier, "P", 2 * n, keys_out=root / "keys.csv", manifest_out=root / "b.kvm")
        keys = [line.split(",")[1] for line in (root / "keys.csv").read_text().splitlines()[1:]]
        node = Vault.init(root / "node")
        node.trust(supplier.public)
        node.import_manifest(root / "b.kvm")
        out: dict[str, object] = {"keys": n, "batch": 1000, "cpus": os.cpu_count()}

        def rate(fn, items: list, size: int = 1000) -> float:  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            for i in range(0, len(items), size):
                fn(items[i:i + size])
            return round(len(items) / (time.perf_counter() - started))

        sample = keys[:n]
        out["verify_many_unbound_keys_per_s"] = max(rate(node.verify_many, sample) for _ in range(3))
        node.authority.set(dsn)
        out["verify_many_bound_keys_per_s"] = max(rate(node.verify_many, sample) for _ in range(3))
        out["redeem_many_bound_keys_per_s"] = rate(
            lambda chunk: node.redeem_many([(k, f"order-{k[-6:]}") for k in chunk]), sample)
        node.close()
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE bare (serial bigint PRIMARY KEY, text text NOT NULL, at_ms bigint NOT NULL)")
            conn.commit()
            serials = list(range(n))

            def bare(chunk: list[int]) -> None:
                conn.execute("INSERT INTO bare SELECT s, 'order-' || s, 0 FROM unnest(%s::bigint[]) AS s "
                             "ON CONFLICT DO NOTHING RETURNING serial", (chunk,)).fetchall()
                conn.commit()

            out["bare_psycopg_rows_per_s"] = rate(bare, serials)
        print(json.dumps(out, indent=2))
    finally:
        if stop is not None:
            subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(pg_base, ignore_errors=True)


if __name__ == "__main__":
    main()
