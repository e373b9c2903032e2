#!/usr/bin/env python
"""The cost of the access log's format: one-key verify over HTTP with JSON access lines, text lines, and none.

    python benchmarks/service/logformat.py [--rounds 3] [--duration 8] [--workers 2] [--connections 64]
                                           [--keys 100000]

A store of --keys keys is built under .benchmarks/service-logformat/ (with run.py's helpers), a token
made, and `keyvault serve` started three ways: ``--no-access-log``, ``--log-format text`` and
``--log-format json``. Each is loaded by wrk with run.py's verify_one.lua (one random valid key a
request, every answer checked) after a short untimed warm-up; the three take turns for --rounds rounds,
so a neighbour's load on a shared machine falls on all of them alike. The median of each is reported,
with JSON's cost against no access log: the server's CPU time per request (its processes' user and
system time over the run, from /proc, divided by the requests answered; the target: at most 10 %
more), and requests/s and p50, which on a shared machine also measure the neighbours. Every server must
exit 0 on SIGTERM, and the JSON server's log must parse line by line. Results: a table on stdout,
JSON in .benchmarks/service-logformat.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as service  # noqa: E402  (benchmarks/service/run.py: the store, the server, wrk)

MODES = {"off": ["--no-access-log"], "text": ["--log-format", "text"], "json": ["--log-format", "json"]}
TARGET = 0.10  # JSON access lines may cost at most this share of the throughput without access lines


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every process under it (the workers)."""
    total, todo, tick = 0.0, [pid], os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def line_cost(lines: int = 100_000, per_turn: int = 8, repeats: int = 5) -> dict[str, float]:
    """Microseconds per request of the access line alone, in-process (best of ``repeats``): no access log,
    text, JSON; ``per_turn`` requests answered per event-loop turn, the lines written to a file."""
    import asyncio
    import tempfile

    from keyvault.service.accesslog import AccessLog

    out: dict[str, float] = {}
    with tempfile.TemporaryFile() as sink:
        for mode in MODES:
            log = AccessLog(fd=sink.fileno(), enabled=mode != "off", log_format="json" if mode == "json" else "text")

            async def drive() -> float:
                started = time.perf_counter()
                for i in range(lines // per_turn):
                    for _ in range(per_turn):
                        log.add("POST", "/v1/verify", 200, 0.000412, b"5f0c1e6a9b3d2e71")
                    await asyncio.sleep(0)  # the loop's turn ends: the lines are written
                return time.perf_counter() - started

            out[mode] = min(asyncio.run(drive()) for _ in range(repeats)) * 1e6 / lines
    return out


def start(store: Path, workdir: Path, workers: int, mode: str) -> service.Server:
    """`keyvault serve` on a free loopback port with the access log as ``mode`` says."""
    port = service.free_port()
    command = service.keyvault_cli() + ["--store", str(store), "serve", "--bind", f"127.0.0.1:{port}",
                                        "--workers", str(workers), *MODES[mode]]
    return service.Server(mode, command, port, workdir / f"server-{mode}.log")


def main(argv: list[str] | None = None) -> int:
    """Build, serve each way in turns, load, report; 0 when every answer was right and JSON is within target."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three servers (default 3)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of each measured run (default 8)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of untimed warm-up per server (default 2)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--keys", type=int, default=100_000, help="keys in the store (default 100,000)")
    ap.add_argument("--workdir", type=Path, default=service.ROOT / ".benchmarks" / "service-logformat")
    ap.add_argument("--json-out", type=Path, default=service.ROOT / ".benchmarks" / "service-logformat.json")
    ap.add_argument("--wrk", default=shutil.which("wrk"), help="the wrk binary (default: wrk on PATH)")
    args = ap.parse_args(argv)
    if not args.wrk:
        print("wrk is not installed: apt-get install wrk (`make bench-service` does)", file=sys.stderr)
        return 1
    workdir = args.workdir.resolve()
    service.log(f"building a store of {args.keys:,} keys in {workdir}")
    store, keys_file = service.build_store(workdir, args.keys)
    token = service.create_token(store)
    env = {"KVB_KEYS": str(keys_file), "KVB_TOKEN": token, "KVB_BATCH": "1000", "KVB_FIRST": "0",
           "KVB_LAST": str(args.keys)}
    scenario = service.Scenario("verify_one", "verify, one key a request", "keyvault", "verify_one.lua",
                                args.connections)
    out = workdir / "wrk-result.json"
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    failures: list[str] = []
    try:
        for round_ in range(args.rounds):
            for mode in (list(MODES) if round_ % 2 == 0 else list(reversed(MODES))):
                server = start(store, workdir, args.workers, mode)
                try:
                    server.wait_ready()
                    if args.warmup:
                        env["KVB_RUN"] = f"w{time.time_ns()}"
                        service.run_wrk(args.wrk, scenario, server, args.warmup, args.threads, env, out)
                    env["KVB_RUN"] = f"r{time.time_ns()}"
                    cpu = tree_cpu(server.process.pid)
                    r = service.run_wrk(args.wrk, scenario, server, args.duration, args.threads, env, out)
                    r["server_cpu_us_per_request"] = (tree_cpu(server.process.pid) - cpu) * 1e6 / max(1, r["requests"])
                finally:
                    code = server.stop()
                failures += service.problems(f"{mode} round {round_ + 1}", r)
                if code != 0:
                    failures.append(f"the {mode} server exited {code} on SIGTERM:\n{server.log_tail()}")
                if mode == "json":
                    for line in server.log_path.read_text().splitlines():
                        json.loads(line)  # every line of every process is one JSON object
                r.pop("wrk_output", None)
                r.pop("per_thread", None)
                runs[mode].append(r)
                service.log(f"round {round_ + 1} {mode:>4}: {r['rps']:,.0f} req/s, p50 {service.ms(r['latency_us']['p50'])}, "
                            f"p99 {service.ms(r['latency_us']['p99'])}, "
                            f"server CPU {r['server_cpu_us_per_request']:.1f} us/request")
    except service.BenchError as exc:
        failures.append(str(exc))
    finally:
        shutil.rmtree(workdir / "column", ignore_errors=True)
        (workdir / "keys.txt").unlink(missing_ok=True)
    summary = {mode: {"rps": statistics.median(r["rps"] for r in rs),
                      "p50_us": statistics.median(r["latency_us"]["p50"] for r in rs),
                      "p99_us": statistics.median(r["latency_us"]["p99"] for r in rs),
                      "cpu_us": statistics.median(r["server_cpu_us_per_request"] for r in rs),
                      "rounds_rps": [round(r["rps"]) for r in rs]} for mode, rs in runs.items() if rs}
    rows = [["access log", "server CPU per request", "requests/s", "p50", "p99", "each round (req/s)"]]
    for mode, s in summary.items():
        rows.append([mode, f"{s['cpu_us']:.1f} us", f"{s['rps']:,.0f}", service.ms(s["p50_us"]),
                     service.ms(s["p99_us"]), ", ".join(f"{x:,}" for x in s["rounds_rps"])])
    text = (f"one-key verify over HTTP, {args.workers} worker(s), {args.connections} connections, "
            f"{args.rounds} rounds of {args.duration:g} s, {args.keys:,} keys\n\n" + service.table(rows))
    verdict = None
    if "json" in summary and "off" in summary:
        cost = summary["json"]["cpu_us"] / summary["off"]["cpu_us"] - 1
        verdict = cost <= TARGET
        text += (f"\n\nJSON access lines against none: server CPU per request {cost:+.1%} "
                 f"(target: at most +{TARGET:.0%}): {'met' if verdict else 'NOT met'}; requests/s "
                 f"{summary['json']['rps'] / summary['off']['rps'] - 1:+.1%}, p50 "
                 f"{summary['json']['p50_us'] / summary['off']['p50_us'] - 1:+.1%}")
        if "text" in summary:
            text += (f"\ntext access lines against none: server CPU per request "
                     f"{summary['text']['cpu_us'] / summary['off']['cpu_us'] - 1:+.1%}, requests/s "
                     f"{summary['text']['rps'] / summary['off']['rps'] - 1:+.1%}")
        text += ("\n(The verdict is on the service's CPU time per request: on a shared machine, requests/s and "
                 "latency also measure the neighbours.)")
    cost = line_cost()
    text += ("\n\nthe access line alone, in-process (8 requests a loop turn, best of 5): "
             + ", ".join(f"{mode} {us:.2f} us" for mode, us in cost.items()) + " a request")
    if failures:
        text += "\n\nFAILURES:\n" + "\n".join(failures)
    print(text)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"summary": summary, "line_cost_us": cost, "runs": runs, "failures": failures,
                                         "target_met": verdict}, indent=1))
    return 0 if not failures and verdict else 1


if __name__ == "__main__":
    sys.exit(main())
