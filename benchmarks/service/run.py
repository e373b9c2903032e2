#!/usr/bin/env python
"""The HTTP service under load: `keyvault serve` driven by wrk on the loopback, against its own ceiling.

    python benchmarks/service/run.py [--duration 10] [--workers 2] [--connections 64]
                                     [--many-connections 16] [--keys 1000000] [--no-access-log]

(``make bench-service`` installs wrk with apt-get when it is missing, then runs this.)

A fresh store of --keys keys is built for every run under .benchmarks/service/ (about two seconds
for a million keys, with benchmarks/keyvault_workloads.py), its keys written to a 0600 file there
for wrk, a token of scope redeem made with `keyvault token create`. Then, each after a short
untimed warm-up with the same script:

  trivial       a trivial ASGI app (trivial.py) through the same serve(), same workers and
                options, one-key verify requests: the server's own ceiling
  verify_one    POST /v1/verify, one random valid key a request, --connections
  verify_many   POST /v1/verify, 1,000 random valid keys a request, --many-connections
  redeem        POST /v1/redeem, durable, each request a distinct unredeemed key, --connections
  hold_confirm  a purchase: POST /v1/hold of a distinct unredeemed key for a new order, then, once
                held, POST /v1/confirm of that order, --connections (redeems take the first half of
                the keys, purchases the second)

Every answer is checked (wrk's Lua response hook): a non-2xx answer, a result other than
"valid" (verify) or "accepted" (redeem), a socket error or a timeout fails the run, as does a
server that does not exit 0 on SIGTERM. After the server stopped, the store is read back: the
redeemed keys must be the answered accepted ones, plus at most the requests wrk abandoned in
flight when its clock ran out. The store and the key file are deleted at the end (--keep keeps
them). Results: a table on stdout, JSON in .benchmarks/service-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: the peer benchmark's helpers

from keyvault_workloads import KeyvaultColumn  # noqa: E402
from peers.common import free_port  # noqa: E402
from peers.cpuwatch import CpuWatch  # noqa: E402
from run_peers import machine, rate_text  # noqa: E402

KEY_LINE = 40  # bytes a line of the key file: a 39-character key and "\n" (kvbench.lua reads it so)
REDEEM_WARMUP_SHARE = 10  # 1/10 of the keys for the redeem warm-up, the rest for the measured run
METRICS_SECONDS = 1.5  # the workers write their metrics files every second
STOP_SECONDS = 60  # how long a stopping server may take (its grace for requests in flight is 30 s)

#: The targets of the final table.
VERIFY_VS_TRIVIAL = 0.70
MANY_KEYS_PER_SECOND = 1_000_000
REDEEM_PER_SECOND = 10_000
REDEEM_P99_MS = 25.0
HOLD_CONFIRM_COST = 1.5  # a purchase (hold, then confirm) against one redeem, both at full load


class BenchError(Exception):
    """The run cannot go on or its figures are void; the message says why."""


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Scenario:
    """One measured wrk run."""

    name: str
    label: str
    server: str  # "trivial" or "keyvault"
    script: str  # under benchmarks/service/
    connections: int
    keys_per_request: float = 1  # hold_confirm: 0.5 (two requests a key), so keys/s counts purchases


# -- the store --------------------------------------------------------------------------------------

def build_store(workdir: Path, count: int) -> tuple[Path, Path]:
    """A new store of ``count`` issued keys and the 0600 file of its keys (dashed, one a line)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, mode=0o700)
    column = KeyvaultColumn(workdir / "column")
    try:
        column.load(range(count))  # issue_batch: only the count is used
        column.after_load()  # reads the keys back (canonical) and deletes the CSV export
        keys_file = workdir / "keys.txt"
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as out:
            for key in column.keys:
                line = "-".join(key[i:i + 4] for i in range(0, 32, 4)) + "\n"
                if len(line) != KEY_LINE:
                    raise BenchError(f"an issued key is not 32 symbols long (it has {len(key)})")
                out.write(line)
        store = column.vault.path
    finally:
        column.close()
    (workdir / "column" / "batch.kvm").unlink(missing_ok=True)  # the signed manifest: not needed
    return Path(store), keys_file


def read_keys(keys_file: Path) -> list[str]:
    """The keys of the key file, in file order."""
    return keys_file.read_text(encoding="ascii").split()


def keyvault_cli() -> list[str]:
    """The installed ``keyvault`` command (beside this Python)."""
    script = Path(sys.executable).parent / "keyvault"
    if script.exists():
        return [str(script)]
    found = shutil.which("keyvault")
    if found is None:
        raise BenchError("the keyvault command is not installed here: run `make install` first")
    return [found]


def cli_json(args: list[str]) -> Any:
    """Run ``keyvault ARGS`` and parse its JSON output (never shown: it may hold a token)."""
    done = subprocess.run(keyvault_cli() + args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"`keyvault {' '.join(args[2:4])}` failed with exit {done.returncode}: "
                         f"{done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def create_token(store: Path) -> str:
    """A new token of scope redeem, made with the CLI."""
    doc = cli_json(["--store", str(store), "token", "create", "--name", "bench", "--scope", "redeem", "--json"])
    if doc.get("scope") != "redeem" or not doc.get("token"):
        raise BenchError("`keyvault token create --json` did not answer {name, scope, token}")
    return str(doc["token"])


# -- servers ----------------------------------------------------------------------------------------

class Server:
    """A server subprocess on the loopback (its own session), its stderr in a log file."""

    def __init__(self, name: str, command: list[str], port: int, log_path: Path) -> None:
        self.name, self.port, self.log_path = name, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                            start_new_session=True, cwd=ROOT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll GET /healthz until it answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"the {self.name} server exited with {self.process.returncode} while starting:\n"
                                 + self.log_tail())
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise BenchError(f"the {self.name} server did not answer /healthz within {timeout:g} s:\n" + self.log_tail())

    def stop(self) -> int:
        """SIGTERM, wait for it to drain and exit; its exit code (killed after STOP_SECONDS: -9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the supervisor and its workers
                self.process.wait()
        return self.process.returncode

    def commit_totals(self) -> tuple[float, float]:
        """(durable commits, redeem items they carried) from GET /metrics, summed over the workers."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as answer:
            text = answer.read().decode()
        totals = {"keyvault_redeem_commits_total": 0.0, "keyvault_redeem_commit_items_total": 0.0}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            name = name.split("{", 1)[0]
            if name in totals:
                totals[name] += float(value.split()[0])
        return totals["keyvault_redeem_commits_total"], totals["keyvault_redeem_commit_items_total"]

    def log_tail(self, lines: int = 15) -> str:
        """The end of its log (server lines only: no key, token or body is ever logged)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_counts(self) -> dict[str, int]:
        """Lines of its log by level, and access lines by status class."""
        counts: Counter[str] = Counter()
        try:
            with open(self.log_path, errors="replace") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) > 3 and parts[2] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                        counts[parts[2]] += 1
                    if len(parts) > 6 and "keyvault.access[" in parts[3]:
                        counts[f"access {parts[6][:1]}xx"] += 1
        except OSError:
            pass
        return dict(counts)


def start_keyvault(store: Path, workdir: Path, workers: int, access_log: bool) -> Server:
    """`keyvault serve` on an ephemeral loopback port."""
    port = free_port()
    command = keyvault_cli() + ["--store", str(store), "serve", "--bind", f"127.0.0.1:{port}",
                                "--workers", str(workers)] + ([] if access_log else ["--no-access-log"])
    return Server("keyvault", command, port, workdir / "server-keyvault.log")


def start_trivial(workdir: Path, workers: int, access_log: bool) -> Server:
    """trivial.py through the same serve() on an ephemeral loopback port."""
    port = free_port()
    command = [sys.executable, str(HERE / "trivial.py"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    command += [] if access_log else ["--no-access-log"]
    return Server("trivial", command, port, workdir / "server-trivial.log")


# -- wrk --------------------------------------------------------------------------------------------

def run_wrk(wrk: str, scenario: Scenario, server: Server, seconds: float, threads: int, env: dict[str, str],
            out: Path) -> dict[str, Any]:
    """One wrk run; what the script's done() wrote, with wrk's CPU time and other processes' share."""
    out.unlink(missing_ok=True)
    threads = min(threads, scenario.connections)
    command = [wrk, "-t", str(threads), "-c", str(scenario.connections), "-d", f"{max(1, round(seconds))}s",
               "--timeout", "5s", "-s", str(HERE / scenario.script), server.url]
    full_env = {**os.environ, **env, "KVB_DIR": str(HERE), "KVB_THREADS": str(threads), "KVB_OUT": str(out)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    watch = CpuWatch()
    watch.start()
    try:
        done = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=seconds + 120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"could not run wrk on {scenario.name}: {exc}") from None
    other = watch.stop([server.process.pid])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not out.exists():
        raise BenchError(f"wrk failed on {scenario.name} (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    wall = result["duration_us"] / 1e6
    result.update(
        seconds=round(wall, 3), threads=threads, connections=scenario.connections,
        rps=result["requests"] / wall if wall else 0.0,
        wrk_cpu_share=round((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall, 3)
        if wall else None,
        other_cpu_share=(other or {}).get("other_share"),
        wrk_output=done.stdout.strip())
    result["keys_per_second"] = result["rps"] * scenario.keys_per_request
    return result


def problems(name: str, result: dict[str, Any]) -> list[str]:
    """What makes a run's figures void: errors of any kind, unexpected answers, a thread out of keys."""
    found = []
    errors = {k: v for k, v in result["errors"].items() if v}
    if errors:
        found.append(f"{name}: wrk socket errors/timeouts {errors}")
    if result["non2xx"]:
        found.append(f"{name}: {result['non2xx']:,} non-2xx answers (first: {result['first_problem']})")
    if result["unexpected"]:
        found.append(f"{name}: {result['unexpected']:,} results with another status (first: {result['other_status']})")
    if result["exhausted"]:
        found.append(f"{name}: a wrk thread ran out of unredeemed keys: pass a larger --keys or a shorter --duration")
    if result["requests"] == 0:
        found.append(f"{name}: no request was answered")
    return found


# -- the redeem check -------------------------------------------------------------------------------

def check_redeems(store: Path, keys_file: Path, redeem_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """After the server stopped: the store's redeemed keys against what wrk sent and was answered."""
    from keyvault import Vault

    recorded = cli_json(["--store", str(store), "stats", "--json"])["totals"]["redeemed"]
    sent_ranges = [(t["first"], t["first"] + t["sent"]) for run in redeem_runs for t in run["per_thread"].values()]
    # A redeem run: each request a key, accepted or not answered. A purchase run: each key held (or the hold not
    # answered), then confirmed (or the confirm not sent or not answered before wrk stopped: still held).
    plain = [run for run in redeem_runs if not run.get("held")]
    bought = [run for run in redeem_runs if run.get("held")]
    accepted = sum(run["answered"] - run["non2xx"] - run["unexpected"] for run in plain) + \
        sum(run["confirmed"] for run in bought)
    unanswered = sum(run["sent"] - run["answered"] for run in plain) + \
        sum(run["sent"] - run["confirmed"] for run in bought)
    keys = read_keys(keys_file)
    statuses: Counter[str] = Counter()
    outside = 0
    with Vault.open(store) as vault:
        for start in range(0, len(keys), 10_000):
            for i, result in enumerate(vault.verify_many(keys[start:start + 10_000]), start):
                status = result.status.value
                statuses[status] += 1
                if status == "redeemed" and not any(low <= i < high for low, high in sent_ranges):
                    outside += 1
    found = statuses.get("redeemed", 0)
    ok = (recorded == found and outside == 0 and accepted <= found <= accepted + unanswered
          and set(statuses) <= {"valid", "redeemed", "held"}
          and statuses.get("held", 0) <= sum(run["sent"] - run["confirmed"] for run in bought))
    return {"ok": ok, "stats_redeemed": recorded, "keys_redeemed": found, "answered_accepted": accepted,
            "sent_unanswered": unanswered, "redeemed_outside_sent": outside, "statuses": dict(statuses)}


# -- the report -------------------------------------------------------------------------------------

def ms(us: float | None) -> str:
    """Microseconds as milliseconds text."""
    return "-" if us is None else f"{us / 1000:.2f} ms"


def table(rows: list[list[str]]) -> str:
    """A Markdown table, numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             + " |" for r in rows]
    lines.insert(1, "|" + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def results_table(scenarios: list[Scenario], runs: dict[str, dict[str, Any]]) -> str:
    """One row per measured run."""
    rows = [["run", "conns", "requests/s", "keys/s", "p50", "p99", "max", "non-2xx", "other status",
             "wrk CPU", "other CPU"]]
    for s in scenarios:
        r = runs.get(s.name)
        if r is None:
            rows.append([s.label, str(s.connections)] + ["not run"] + ["-"] * 8)
            continue
        lat = r["latency_us"]
        other = r.get("other_cpu_share")
        rows.append([s.label, str(r["connections"]), f"{r['rps']:,.0f}", rate_text(r["keys_per_second"]),
                     ms(lat["p50"]), ms(lat["p99"]), ms(lat["max"]), f"{r['non2xx']:,}", f"{r['unexpected']:,}",
                     f"{r['wrk_cpu_share']:.0%}" if r["wrk_cpu_share"] is not None else "-",
                     f"{other:.0%}" if other is not None else "-"])
    return table(rows)


def targets(runs: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The targets table, and each target's figure and verdict."""
    checks: list[dict[str, Any]] = []

    def add(target: str, measured: float | None, text: str, met: bool | None) -> None:
        checks.append({"target": target, "measured": measured, "text": text, "met": met})

    one, trivial, many, redeem = (runs.get(n) for n in ("verify_one", "trivial", "verify_many", "redeem"))
    if one and trivial and trivial["rps"]:
        ratio = one["rps"] / trivial["rps"]
        add(f"one-key verify >= {VERIFY_VS_TRIVIAL:.0%} of trivial's rate", ratio,
            f"{ratio:.0%} ({one['rps']:,.0f} / {trivial['rps']:,.0f} req/s)", ratio >= VERIFY_VS_TRIVIAL)
    else:
        add(f"one-key verify >= {VERIFY_VS_TRIVIAL:.0%} of trivial's rate", None, "not run", None)
    if many:
        add(f"1,000-key verify >= {MANY_KEYS_PER_SECOND:,} keys/s", many["keys_per_second"],
            f"{many['keys_per_second']:,.0f} keys/s", many["keys_per_second"] >= MANY_KEYS_PER_SECOND)
    else:
        add(f"1,000-key verify >= {MANY_KEYS_PER_SECOND:,} keys/s", None, "not run", None)
    if redeem:
        p99 = redeem["latency_us"]["p99"] / 1000
        add(f"redeem, 64 conns, >= {REDEEM_PER_SECOND:,} req/s", redeem["rps"], f"{redeem['rps']:,.0f} req/s "
            f"({redeem['connections']} conns)", redeem["rps"] >= REDEEM_PER_SECOND)
        add(f"redeem p99 <= {REDEEM_P99_MS:g} ms", p99, f"{p99:.2f} ms", p99 <= REDEEM_P99_MS)
    else:
        add(f"redeem, 64 conns, >= {REDEEM_PER_SECOND:,} req/s", None, "not run", None)
    bought = runs.get("hold_confirm")
    if redeem and bought and bought["keys_per_second"]:
        cost = redeem["keys_per_second"] / bought["keys_per_second"]
        add(f"hold + confirm <= {HOLD_CONFIRM_COST:g}x a redeem's cost", cost,
            f"{cost:.2f}x ({bought['keys_per_second']:,.0f} purchases/s, {redeem['keys_per_second']:,.0f} redeems/s)",
            cost <= HOLD_CONFIRM_COST)
    else:
        add(f"hold + confirm <= {HOLD_CONFIRM_COST:g}x a redeem's cost", None, "not run", None)
    rows = [["target", "measured", "met"]]
    rows += [[c["target"], c["text"], {True: "yes", False: "NO", None: "-"}[c["met"]]] for c in checks]
    return table(rows), checks


# -- main -------------------------------------------------------------------------------------------

def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of each measured run (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of the untimed warm-up before each run "
                    "(default 2; 0: none)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    ap.add_argument("--connections", type=int, default=64,
                    help="connections of the one-key verify, trivial and redeem runs (default 64)")
    ap.add_argument("--many-connections", type=int, default=16,
                    help="connections of the 1,000-key verify run (default 16)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys in the store (default 1,000,000)")
    ap.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                    help="the servers' access log, on stderr to a file (default: on, as in production)")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".benchmarks" / "service",
                    help="the store, key file and server logs (replaced each run; default %(default)s)")
    ap.add_argument("--json-out", type=Path, default=ROOT / ".benchmarks" / "service-latest.json",
                    help="the results as JSON (default %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the store and the key file after the run")
    ap.add_argument("--wrk", default=shutil.which("wrk"), help="the wrk binary (default: wrk on PATH)")
    args = ap.parse_args(argv)
    if args.wrk is None:
        ap.error("wrk is not installed: `make bench-service` installs it (apt-get install wrk)")
    if args.duration < 1 or args.warmup < 0 or args.workers < 1 or args.threads < 1:
        ap.error("--duration must be at least 1 s, --warmup not negative, --workers and --threads at least 1")
    if min(args.connections, args.many_connections) < args.threads:
        ap.error("every connection count must be at least --threads")
    if args.keys < 10_000:
        ap.error("--keys must be at least 10,000")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build, serve, load, check, report; 0 when every answer was right, 1 otherwise."""
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    scenarios = [
        Scenario("trivial", "trivial app (server ceiling), one-key", "trivial", "verify_one.lua", args.connections),
        Scenario("verify_one", "verify, one key a request", "keyvault", "verify_one.lua", args.connections),
        Scenario("verify_many", "verify, 1,000 keys a request", "keyvault", "verify_many.lua",
                 args.many_connections, 1000),
        Scenario("redeem", "redeem, durable, one key a request", "keyvault", "redeem.lua", args.connections),
        Scenario("hold_confirm", "hold, then confirm once held (keys/s: purchases)", "keyvault", "holdconfirm.lua",
                 args.connections, 0.5),
    ]
    import keyvault
    from keyvault import _fast

    report: dict[str, Any] = {
        "settings": {"duration": args.duration, "warmup": args.warmup, "workers": args.workers,
                     "connections": args.connections, "many_connections": args.many_connections,
                     "wrk_threads": args.threads, "keys": args.keys, "access_log": args.access_log},
        "keyvault": {"version": keyvault.__version__, "compiled": _fast.COMPILED,
                     "path": str(Path(keyvault.__file__).parent)},
        "runs": {}, "failures": []}
    runs: dict[str, dict[str, Any]] = report["runs"]
    failures: list[str] = report["failures"]
    workdir: Path = args.workdir.resolve()
    server: Server | None = None
    interrupted = False
    try:
        log(f"keyvault {keyvault.__version__} ({'compiled' if _fast.COMPILED else 'PURE-PYTHON'} core); "
            f"access log {'ON' if args.access_log else 'off'}; {args.workers} worker(s)")
        log(f"building a store of {args.keys:,} keys in {workdir}")
        t0 = time.monotonic()
        store, keys_file = build_store(workdir, args.keys)
        log(f"  built in {time.monotonic() - t0:.1f} s")
        report["machine"] = machine(workdir)
        token = create_token(store)
        env = {"KVB_KEYS": str(keys_file), "KVB_TOKEN": token, "KVB_BATCH": "1000"}
        out = workdir / "wrk-result.json"
        redeem_runs: list[dict[str, Any]] = []
        # Redeems take the first half of the keys, purchases the second: each its warm-up, then its measured run.
        half = args.keys // 2
        warm_keys = half // REDEEM_WARMUP_SHARE
        ranges = {"hold_confirm": (half, half + warm_keys, args.keys)}
        for kind in ("trivial", "keyvault"):
            server = (start_trivial(workdir, args.workers, args.access_log) if kind == "trivial"
                      else start_keyvault(store, workdir, args.workers, args.access_log))
            server.wait_ready()
            log(f"[{kind}] serving on {server.url} (pid {server.process.pid})")
            for s in (s for s in scenarios if s.server == kind):
                run_id = f"b{time.time_ns() // 1_000_000}"
                if args.warmup:
                    low, middle, high = ranges.get(s.name, (0, warm_keys, half))
                    warm_env = {**env, "KVB_RUN": run_id + "w", "KVB_FIRST": str(low), "KVB_LAST": str(middle)}
                    warm = run_wrk(args.wrk, s, server, args.warmup, args.threads, warm_env, out)
                    failures += problems(f"{s.name} (warm-up)", warm)
                    if s.name in ("redeem", "hold_confirm"):
                        redeem_runs.append(warm)
                log(f"[{kind}] {s.name}: {s.connections} connections, {args.duration:g} s")
                if s.name == "redeem":
                    time.sleep(METRICS_SECONDS)  # the workers save their metrics every second
                    commits0 = server.commit_totals()
                low, middle, high = ranges.get(s.name, (0, warm_keys, half))
                run_env = {**env, "KVB_RUN": run_id, "KVB_FIRST": str(middle), "KVB_LAST": str(high)}
                r = run_wrk(args.wrk, s, server, args.duration, args.threads, run_env, out)
                runs[s.name] = r
                failures += problems(s.name, r)
                if s.name == "hold_confirm":
                    redeem_runs.append(r)
                if s.name == "redeem":
                    redeem_runs.append(r)
                    time.sleep(METRICS_SECONDS)
                    commits, items = (b - a for a, b in zip(commits0, server.commit_totals()))
                    r["commits"] = {"commits": commits, "items": items, "per_second": commits / r["seconds"],
                                    "items_per_commit": items / commits if commits else None}
                log(f"[{kind}] {s.name}: {r['rps']:,.0f} req/s, {rate_text(r['keys_per_second'])} keys, "
                    f"p50 {ms(r['latency_us']['p50'])}, p99 {ms(r['latency_us']['p99'])}, "
                    f"{r['non2xx']} non-2xx, {r['unexpected']} other status")
            code = server.stop()
            report.setdefault("servers", {})[kind] = {"exit": code, "log": str(server.log_path),
                                                      "log_lines": server.log_counts()}
            log(f"[{kind}] stopped with SIGTERM: exit {code}; log lines {server.log_counts()}")
            if code != 0:
                failures.append(f"the {kind} server exited {code} on SIGTERM, not 0:\n{server.log_tail()}")
            server = None
        if redeem_runs:
            log("checking the store against the answered redeems")
            check = check_redeems(store, keys_file, redeem_runs)
            report["redeem_check"] = check
            if not check["ok"]:
                failures.append(f"redeem check failed: {check}")
    except BenchError as exc:
        failures.append(str(exc))
    except KeyboardInterrupt:
        interrupted = True
        failures.append("interrupted")
    finally:
        if server is not None:
            code = server.stop()
            log(f"[{server.name}] stopped: exit {code}")
        if not args.keep:
            shutil.rmtree(workdir / "column", ignore_errors=True)
            for name in ("keys.txt", "wrk-result.json"):
                (workdir / name).unlink(missing_ok=True)
    return finish(report, scenarios, args, interrupted)


def finish(report: dict[str, Any], scenarios: list[Scenario], args: argparse.Namespace, interrupted: bool) -> int:
    """Print the tables, write the JSON; the exit status."""
    runs, failures = report["runs"], report["failures"]
    head = (f"keyvault {report['keyvault']['version']} service, {args.workers} worker(s), access log "
            f"{'ON (as in production)' if args.access_log else 'OFF'}; {args.keys:,} keys; wrk {args.threads} "
            f"threads, {args.duration:g} s a run after {args.warmup:g} s warm-up; on the loopback")
    m = report.get("machine")
    if m:
        head += (f"\n{m['cpus']} CPUs ({m['cpu_model']}), {m['memory']}, Linux {m['kernel']}, Python {m['python']}; "
                 f"write 4 KiB + fdatasync {m['write_4k_fdatasync_append_us']:.0f} us; "
                 f"load average at start {m['loadavg_at_start']:.2f}")
    text = head + "\n\n" + results_table(scenarios, runs)
    check = report.get("redeem_check")
    if check:
        text += (f"\n\nredeem check: {check['stats_redeemed']:,} redeemed in the store's stats, "
                 f"{check['keys_redeemed']:,} keys read back redeemed, {check['answered_accepted']:,} answered "
                 f"'accepted' (warm-up included), {check['sent_unanswered']:,} sent but abandoned by wrk at the "
                 f"end of its runs: {'OK' if check['ok'] else 'FAILED'}")
    commits = (runs.get("redeem") or {}).get("commits")
    if commits and commits["commits"]:
        text += (f"\nredeem group commit (from /metrics): {commits['commits']:,.0f} durable commits, "
                 f"{commits['per_second']:,.0f}/s, {commits['items_per_commit']:.1f} redeems a commit on average")
    targets_text, checks = targets(runs)
    report["targets"] = checks
    text += "\n\n" + targets_text
    if failures:
        text += "\n\nFAILED: the figures above are void:\n" + "\n".join(f"- {f}" for f in failures)
    report["table"] = text
    report["interrupted"] = interrupted
    print(text)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results written to {args.json_out}")
    if interrupted:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
