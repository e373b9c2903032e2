"""The subject index's write cost under durable ``redeem_many`` (docs/benchmarks.md, "Subject index").

Issues ``--keys`` keys into a new store (sync and metasync on, the default checkpoint policy), then
redeems ``--redeems`` of them in random order, in batches of ``--batch``, one durable commit per
batch. Every redeemed key becomes a new subject of the index, so the index grows as the run goes.
For each phase of ``--phase`` redeems it prints: subjects in the index at its end, bytes written per
redeem (``wchar`` of /proc/self/io: every byte LMDB handed to the kernel, pages and meta pages;
deterministic for a given store and machine-independent), CPU per redeem (process time) and the
rate (wall time: noisy on a shared machine).

    .venv/bin/python benchmarks/bench_subject_index.py --keys 1000000 --redeems 600000
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from pathlib import Path

from keyvault import Identity, Vault


def wchar() -> int:
    """Bytes this process has written through write(2)-like calls so far."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("wchar"))


def main() -> None:
    """Run the phases and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--redeems", type=int, default=600_000)
    parser.add_argument("--phase", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--persist-events", type=int, default=None,
                        help="store the index's changed records every this many events (default: keyvault's)")
    args = parser.parse_args()
    if args.persist_events is not None:
        from keyvault.engine.subjects import SubjectIndex

        SubjectIndex.PERSIST_EVENTS = args.persist_events
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        directory = Path(tmp)
        vault = Vault.init(directory / "store")
        export = directory / "keys.csv"
        vault.issue_batch(Identity.generate("Bench"), "BENCH", args.keys, keys_out=export,
                          manifest_out=directory / "batch.kvm")
        with open(export, newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh)
            column = next(rows).index("key")
            keys = [row[column] for row in rows]
        export.unlink()
        random.Random(1).shuffle(keys)
        keys = keys[:args.redeems]
        vault.checkpoint()
        done = 0
        print(f"{'subjects':>10} {'bytes/redeem':>13} {'cpu us/redeem':>14} {'redeems/s':>10}")
        while done < len(keys):
            phase = keys[done:done + args.phase]
            w0, c0, t0 = wchar(), time.process_time(), time.perf_counter()
            for at in range(0, len(phase), args.batch):
                results = vault.redeem_many([(k, f"O-{done + at + i}") for i, k in enumerate(phase[at:at + args.batch])])
                assert all(r.ok for r in results)
            w1, c1, t1 = wchar(), time.process_time(), time.perf_counter()
            done += len(phase)
            print(f"{done:>10,} {(w1 - w0) / len(phase):>13,.0f} {(c1 - c0) / len(phase) * 1e6:>14.1f} "
                  f"{len(phase) / (t1 - t0):>10,.0f}", flush=True)
        try:
            from keyvault.engine.subjects import SubjectIndex
        except ImportError:  # (a keyvault before the index kept its changes in memory)
            SubjectIndex = None  # noqa: N806
        if SubjectIndex is not None and hasattr(SubjectIndex, "root_at"):
            with vault.engine.store.read() as txn:  # what a process that starts pays before its first checkpoint
                size = txn.head().log_size
                stored = vault.engine.log.index.state(txn)[0]
                t0 = time.perf_counter()
                SubjectIndex().root_at(txn, size)
                print(f"a new process replays the {size - stored:,} events since the stored tree in "
                      f"{time.perf_counter() - t0:.2f} s")
        vault.close()


if __name__ == "__main__":
    main()
