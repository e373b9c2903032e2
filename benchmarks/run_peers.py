#!/usr/bin/env python
"""keyvault side by side with what a platform would use instead, in one run, on one machine.

    python benchmarks/run_peers.py [--keys 1000000] [--peers plain,sqlite,redis,postgres]
                                   [--keyvault | --no-keyvault] [--json-out FILE]

(``make bench-peers`` installs Redis, PostgreSQL and the client libraries, then runs this.)

Columns: keyvault (the installed package, through its public API: benchmarks/keyvault_workloads.py)
and the peers (benchmarks/peers/): plain py-lmdb + hashlib, SQLite (WAL, synchronous=FULL),
Redis (AOF, appendfsync always) and PostgreSQL (fsync and synchronous_commit on). Redis and
PostgreSQL are started here, on the loopback, in a temporary directory beside the others' files,
and stopped when their column is done (also on an error or Ctrl-C). A peer that cannot be
started is reported as skipped, with the reason; nothing is ever filled in for it.

Each column runs alone, in turn: start, load N keys, the four timed workloads, an untimed
exactly-once check, stop, delete its files. Workloads: see benchmarks/peers/workloads.py. The
figures are medians of --repeats runs of about --target seconds each. Nothing here asserts a
time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from peers import PEER_MODULES
from peers.common import MIN_KEYS, REDEEM_BATCH, VERIFY_BATCH, WORKLOADS, Unavailable, make_dataset
from peers.cpuwatch import CpuWatch
from peers.workloads import RUNNERS, Measurement, NotImplementedYet, Settings, check_exactly_once

LABELS = {
    "load": "load (bulk insert N keys)",
    "verify_one": "verify, one call per key",
    "verify_many": f"verify_many, batches of {VERIFY_BATCH:,}",
    "redeem_many": f"redeem_many, durable, batches of {REDEEM_BATCH:,}",
    "redeem_concurrent": "redeem, {callers} concurrent callers, durable",
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rate_text(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M/s"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f} k/s"
    return f"{rate:.0f} /s"


# -- the machine ----------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mount_of(path: Path) -> str:
    """Device and filesystem type under path (from /proc/mounts: longest matching mount point)."""
    best, found = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, point, fstype = line.split()[:3]
            if str(path).startswith(point) and len(point) > len(best):
                best, found = point, f"{device} ({fstype}) mounted on {point}"
    except OSError:
        pass
    return found


def _sync_cost(directory: Path, rounds: int = 200) -> dict[str, float]:
    """Median microseconds of write(4 KiB) + fdatasync: appending (as a log does) and in place."""
    path = directory / "fsync-probe"
    block = os.urandom(4096)
    out: dict[str, float] = {}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for mode in ("append", "overwrite"):
            if mode == "overwrite":
                os.lseek(fd, 0, os.SEEK_SET)
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                os.write(fd, block)
                os.fdatasync(fd)
                times.append(time.perf_counter() - t0)
            out[f"write_4k_fdatasync_{mode}_us"] = round(statistics.median(times) * 1e6, 1)
    finally:
        os.close(fd)
        path.unlink()
    return out


def _other_servers() -> list[str]:
    """Database servers already running on this machine (not ours: they compete for CPU and disk)."""
    seen = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        if name in ("redis-server", "postgres", "postmaster", "mysqld", "mariadbd", "mongod"):
            seen.append(f"{name} (pid {comm.parent.name})")
    return sorted(seen)


def loadavg() -> float:
    """The 1-minute load average: above ~0.5 before a run, something else is using the CPUs."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def machine(workdir: Path) -> dict[str, Any]:
    try:
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        memory = f"{mem / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        memory = "unknown"
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory": memory,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "workdir": str(workdir),
        "disk": _mount_of(workdir),
        **_sync_cost(workdir),
        "other_servers": _other_servers(),
        "loadavg_at_start": loadavg(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


# -- running a column -----------------------------------------------------------------------

def _start_module(column: str) -> Any:
    if column == "keyvault":
        return importlib.import_module("keyvault_workloads")
    return importlib.import_module(f"peers.{PEER_MODULES[column]}")


def run_column(column: str, data: Any, settings: Settings, workdir: Path, result: dict[str, Any]) -> None:
    """Start one column, run every workload on it, stop it, delete its files.

    Fills ``result`` as it goes, so an interrupted run still reports what was measured.
    """
    result.update({"status": "ran", "workloads": {}})
    watch = CpuWatch()
    watch.start()
    coldir = workdir / column
    coldir.mkdir()
    try:
        with ExitStack() as stack:
            _log(f"[{column}] starting")
            try:
                peer = _start_module(column).start(coldir, data.pepper, stack)
            except Unavailable as exc:
                _log(f"[{column}] skipped: {exc}")
                result.update({"status": "skipped", "reason": str(exc)})
                return
            except Exception as exc:  # a peer that cannot start is skipped, with the reason
                traceback.print_exc()
                result.update({"status": "skipped", "reason": f"could not start: {exc!r}"[:300]})
                return
            result["settings"] = peer.settings
            _log(f"[{column}] {peer.settings}")
            for workload in WORKLOADS:
                t0 = time.monotonic()
                try:
                    m = RUNNERS[workload](peer, data, settings)
                except NotImplementedYet as exc:
                    m = Measurement(workload, "not implemented yet", note=str(exc))
                except Exception as exc:
                    traceback.print_exc()
                    m = Measurement(workload, "error", note=f"{exc}"[:300])
                result["workloads"][workload] = m.as_json()
                shown = rate_text(m.rate) if m.rate is not None else f"{m.status} {m.note}"
                runs = ", ".join(f"{r['ops']:,} in {r['seconds']:.2f} s" for r in m.runs)
                _log(f"[{column}] {workload}: {shown}" + (f" ({runs})" if runs else "")
                     + f" [{time.monotonic() - t0:.1f} s]")
                if workload == "load" and m.status != "ok":
                    for rest in WORKLOADS[1:]:
                        result["workloads"][rest] = Measurement(rest, "error", note="load failed").as_json()
                    break
            else:
                try:
                    result["check"] = check_exactly_once(peer, data)
                except Exception as exc:
                    traceback.print_exc()
                    result["check"] = f"FAILED: {exc}"
                _log(f"[{column}] exactly-once check: {result['check']}")
            # Before the servers stop: their CPU time is ours, not "other".
            result["other_cpu"] = watch.stop(getattr(peer, "server_pids", list)())
            if result["other_cpu"]:
                _log(f"[{column}] other processes meanwhile: {result['other_cpu']['other_share']:.0%} of the CPUs")
    finally:
        shutil.rmtree(coldir, ignore_errors=True)  # also drops its pages from the page cache


# -- the table ------------------------------------------------------------------------------

def _cell(col: dict[str, Any] | None, workload: str) -> str:
    if col is None:
        return "not run"
    if col["status"] == "skipped":
        return "skipped"
    m = col["workloads"].get(workload)
    if m is None:
        return "not run"
    if m["status"] == "ok":
        return rate_text(m["rate"])
    return m["status"]


def _rate(col: dict[str, Any] | None, workload: str) -> float | None:
    if col is None or col["status"] != "ran":
        return None
    m = col["workloads"].get(workload)
    return m["rate"] if m and m["status"] == "ok" else None


def table(report: dict[str, Any]) -> str:
    columns: dict[str, Any] = report["columns"]
    peers = [c for c in report["order"] if c != "keyvault"]
    with_kv = "keyvault" in report["order"]
    head = ["workload"] + (["keyvault"] if with_kv else []) + peers
    if with_kv:
        head += [f"keyvault/{p}" for p in peers]
    rows = []
    for workload in WORKLOADS:
        label = LABELS[workload].format(callers=report["settings"]["callers"])
        row = [label] + [_cell(columns.get(c), workload) for c in report["order"]]
        if with_kv:
            kv = _rate(columns.get("keyvault"), workload)
            for p in peers:
                pr = _rate(columns.get(p), workload)
                row.append(f"{kv / pr:.2f}x" if kv is not None and pr else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    out = [line(head), "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2))
                                      for i, w in enumerate(widths)) + "|"]
    out += [line(r) for r in rows]
    notes = []
    for name in report["order"]:
        col = columns.get(name)
        if col is None:
            notes.append(f"- {name}: not run (interrupted)")
        elif col["status"] == "skipped":
            notes.append(f"- {name}: skipped ({col['reason']})")
        else:
            notes.append(f"- {name}: {col.get('settings', '')}")
            for workload, m in col["workloads"].items():
                if m["status"] != "ok":
                    notes.append(f"  - {workload}: {m['status']} ({m['note']})")
                elif workload in ("load", "redeem_concurrent", "verify_one") and m["note"]:
                    notes.append(f"  - {workload}: {m['note']}")
            if "check" in col:
                notes.append(f"  - exactly-once check: {col['check']}")
            other = col.get("other_cpu")
            if other:
                notes.append(f"  - other processes on the machine meanwhile: {other['other_share']:.0%} of the CPUs "
                             f"({other['other_cpu_seconds']:g} CPU-s in {other['seconds']:g} s)")
    return "\n".join(out + [""] + notes)


BUSY_SHARE = 0.05  # other processes using more than this share of the CPUs during a column: say so


def _busy_warning(report: dict[str, Any]) -> str:
    busy = [f"{name} {col['other_cpu']['other_share']:.0%}" for name, col in report["columns"].items()
            if (col.get("other_cpu") or {}).get("other_share", 0) > BUSY_SHARE]
    if not busy:
        return ""
    return ("\nWARNING: other processes used the CPUs during the run (share of all CPUs, per column: "
            + ", ".join(busy) + "): those columns' figures are low, and the ratios against them off")


def header(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    return (f"{report['keys']:,} keys; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, {m['os']}, "
            f"Linux {m['kernel']}, Python {m['python']}\n"
            f"files in {m['workdir']} on {m['disk']}; write 4 KiB + fdatasync: "
            f"{m['write_4k_fdatasync_append_us']:.0f} us appending, "
            f"{m['write_4k_fdatasync_overwrite_us']:.0f} us in place (medians)\n"
            f"each figure: median of {s['repeats']} runs of ~{s['target']:g} s (load: one run); ops/s"
            + (f"\nWARNING: other servers running during the run: {', '.join(m['other_servers'])}"
               if m.get("other_servers") else "")
            + (f"\nWARNING: the machine was busy before the run (1-minute load average "
               f"{m['loadavg_at_start']:.2f})" if m["loadavg_at_start"] > 0.7 else "")
            + _busy_warning(report))


# -- main -----------------------------------------------------------------------------------

def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys in every store (default 1,000,000)")
    ap.add_argument("--peers", default=",".join(PEER_MODULES),
                    help=f"comma-separated peers, from {','.join(PEER_MODULES)} (default: all)")
    ap.add_argument("--keyvault", action=argparse.BooleanOptionalAction, default=True,
                    help="run the keyvault column (default: yes)")
    ap.add_argument("--json-out", type=Path, help="also write the results as JSON to this file")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where the stores go (a new temporary directory under it; default: %(default)s)")
    ap.add_argument("--target", type=float, default=3.0, help="seconds per measured run (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="measured runs per workload (default 3)")
    ap.add_argument("--callers", type=int, default=32, help="concurrent redeem callers (default 32)")
    ap.add_argument("--concurrency", choices=("auto", "threads", "processes"), default="auto",
                    help="how redeem_concurrent runs its callers; auto: each column's choice (threads, "
                         "processes for Redis)")
    ap.add_argument("--seed", type=int, default=20261125, help="seed of the generated data")
    args = ap.parse_args(argv)
    args.peer_list = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peer_list if p not in PEER_MODULES]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEER_MODULES)}")
    if args.keys < MIN_KEYS:
        ap.error(f"--keys must be at least {MIN_KEYS:,}")
    if args.repeats < 1 or args.target <= 0 or args.callers < 1:
        ap.error("--repeats and --callers must be at least 1, --target positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    order = (["keyvault"] if args.keyvault else []) + args.peer_list
    if not order:
        print("nothing to run: no peers and --no-keyvault", file=sys.stderr)
        return 2
    settings = Settings(target=args.target, repeats=args.repeats, callers=args.callers,
                        concurrency=args.concurrency)
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="kv-bench-peers-", dir=args.workdir)).resolve()
    workdir.chmod(0o711)  # searchable, not listable: PostgreSQL runs as its own user when we are root
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    report: dict[str, Any] = {"keys": args.keys, "order": order, "columns": {},
                              "settings": {"target": args.target, "repeats": args.repeats,
                                           "callers": args.callers, "concurrency": args.concurrency,
                                           "seed": args.seed,
                                           "verify_batch": VERIFY_BATCH, "redeem_batch": REDEEM_BATCH}}
    interrupted = False
    try:
        report["machine"] = machine(workdir)
        import keyvault
        from keyvault import _fast

        report["keyvault"] = {"version": keyvault.__version__, "path": str(Path(keyvault.__file__).parent),
                              "compiled": _fast.COMPILED}
        _log(f"keyvault {keyvault.__version__} from {report['keyvault']['path']} "
             f"({'compiled' if _fast.COMPILED else 'PURE-PYTHON'} core)")
        _log(f"generating {args.keys:,} keys (seed {args.seed})")
        data = make_dataset(args.keys, args.seed)
        for column in order:
            report["columns"][column] = {}
            run_column(column, data, settings, workdir, report["columns"][column])
    except KeyboardInterrupt:
        interrupted = True
        _log("interrupted: everything started was stopped; partial results follow")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "machine" not in report:
        return 130
    text = header(report) + "\n\n" + table(report)
    report["table"] = text
    report["interrupted"] = interrupted
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        _log(f"results written to {args.json_out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
