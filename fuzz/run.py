"""Coverage-guided fuzzing of keyvault's parsers with atheris (libFuzzer for Python).

    python fuzz/run.py --seconds-per-target 60            # every target, one after another
    python fuzz/run.py --target manifest --target lot     # some of them
    python fuzz/run.py --list                             # the targets and what each one checks

Each target (fuzz/targets.py) runs in a child process of its own for a fixed budget
(libFuzzer's -max_total_time), from a corpus seeded with real files made by a small store
(a manifest, a lot, a transfer, a trace bundle, a checkpoint note, identity and rotation files,
upstream CSVs, keys). The report gives the executions each target ran. A target crashes when an
input makes its check raise anything but a classified KeyvaultError, breaks a property (a store
changed by a refused input, the compiled and pure twins disagreeing, a forged file accepted), or
hangs (-timeout); libFuzzer saves that input, and this script moves it to
fuzz/regressions/<target>/, where tests/test_hostile_input.py replays it on every test run. The
exit status is 1 if any target crashed (or could not run), else 0.

Known, reported bugs (targets.KNOWN_BUGS) are counted and reported but do not stop the fuzzer,
so a run goes on looking for new ones; --strict-known makes them crashes too.

atheris comes from requirements-dev.txt (wheels for Linux x86_64, CPython 3.10-3.13); elsewhere:
``pip install atheris`` (a source build needs clang with libFuzzer).

Instrumentation: keyvault's Python modules (including the pure twin keyvault._fast._pure) are
instrumented as they are imported, so coverage feedback comes from the Python layers. The compiled
core (keyvault._fast._core, a Cython extension) is not instrumented: it runs, and its answers are
compared with the pure twin's, but libFuzzer gets no coverage from inside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"
FULL_STATS_EVERY = 500  # inputs between full stats() comparisons (every input compares the store's head)
INSTALL_HINT = ("atheris is not installed: `pip install -r requirements-dev.txt` (or `pip install atheris`; "
                "wheels exist for Linux x86_64 and CPython 3.10-3.13; elsewhere it builds from source with clang and libFuzzer)")


def _load_targets():
    """fuzz/targets.py as a module (fuzz/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("keyvault_fuzz_targets", HERE / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- the child: one target under libFuzzer ----------------------------------------------------------


def child(name: str, seconds: int, workdir: Path, corpus: Path, strict_known: bool, max_len: int | None) -> None:
    try:
        import atheris
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        sys.exit(3)
    # Everything keyvault is imported (so instrumented) here; the Cython core is not instrumented.
    with atheris.instrument_imports(include=["keyvault"]):
        targets = _load_targets()
    target = targets.TARGETS[name]
    fx = targets.fixtures(workdir / "fixtures")
    corpus.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(target.seeds(fx)):
        (corpus / f"seed-{n}").write_bytes(seed)
    takes_full = "full" in inspect.signature(target.check).parameters
    hits_file = workdir / "known-hits.json"
    state = {"n": 0, "written": 0.0}

    def test_one_input(data: bytes) -> None:
        state["n"] += 1
        try:
            if takes_full and state["n"] % FULL_STATS_EVERY == 0:
                target.check(data, full=True)
            else:
                target.check(data)
        except Exception as error:
            bug = targets.known_bug(error)
            if bug is None or strict_known:
                raise
            first = bug.id not in targets.KNOWN_HITS
            targets.KNOWN_HITS[bug.id] = targets.KNOWN_HITS.get(bug.id, 0) + 1
            now = time.monotonic()
            if first or now - state["written"] > 1.0:  # libFuzzer exits without running atexit hooks
                hits_file.write_text(json.dumps(targets.KNOWN_HITS))
                state["written"] = now

    args = [sys.argv[0], str(corpus), f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
            f"-artifact_prefix={workdir / 'artifacts'}/", "-print_final_stats=1", "-print_pcs=0"]
    if max_len:
        args.append(f"-max_len={max_len}")
    (workdir / "artifacts").mkdir(exist_ok=True)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


def replay(name: str, path: Path) -> int:
    """Run one saved input through its target with fresh fixtures, strictly: 0 if it passes, 1 if not."""
    targets = _load_targets()
    try:
        targets.TARGETS[name].check(path.read_bytes())
    except Exception as error:  # the finding: print it as the replay test would show it
        import traceback

        traceback.print_exception(error)
        return 1
    return 0


# -- the parent: run each target, collect the figures and the crashes --------------------------------


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(r"^#(\d+)\s", re.M)
_COV = re.compile(r"cov: (\d+) ft: (\d+)")


def run_target(name: str, seconds: int, corpus_root: Path | None, strict_known: bool, max_len: int | None,
               keep_logs: Path | None) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"keyvault-fuzz-{name}-"))
    corpus = (corpus_root / name) if corpus_root else workdir / "corpus"
    log = workdir / "libfuzzer.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--seconds-per-target", str(seconds),
           "--workdir", str(workdir), "--corpus", str(corpus)]
    if strict_known:
        cmd.append("--strict-known")
    if max_len:
        cmd += ["--max-len", str(max_len)]
    started = time.monotonic()
    with open(log, "wb") as out:
        # A hard ceiling above libFuzzer's own budget, in case a hang defeats -timeout.
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=seconds + 120,
                                cwd=workdir).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    elapsed = time.monotonic() - started
    text = log.read_text("utf-8", "replace")
    execs = None
    for pattern in (_STAT, _DONE):
        found = pattern.findall(text)
        if found:
            execs = int(found[-1] if isinstance(found[-1], str) else found[-1][0])
            break
    if execs is None:
        progress = _PROGRESS.findall(text)
        execs = int(progress[-1]) if progress else 0
    cov = _COV.findall(text)
    hits_file = workdir / "known-hits.json"
    known = json.loads(hits_file.read_text()) if hits_file.exists() else {}
    saved = []
    artifacts = workdir / "artifacts"
    if artifacts.is_dir():
        for artifact in sorted(artifacts.iterdir()):
            dest_dir = REGRESSIONS / name
            dest_dir.mkdir(parents=True, exist_ok=True)
            dest = dest_dir / artifact.name
            shutil.copyfile(artifact, dest)
            # Fixtures are rebuilt per process (fresh salts and roots): check the input replays without the
            # fuzzing process's ones, as tests/test_hostile_input.py will replay it.
            again = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--replay", name, str(dest)],
                                   capture_output=True, text=True, timeout=300)
            saved.append((dest, again.returncode != 0))
    crashed = rc != 0 or bool(saved)
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, keep_logs / f"{name}.log")
    result = {"target": name, "executions": execs, "seconds": round(elapsed, 1), "exit": rc, "crashed": crashed,
              "cov": int(cov[-1][0]) if cov else None, "features": int(cov[-1][1]) if cov else None,
              "known_bug_hits": known,
              "saved": [{"file": str(p.relative_to(HERE.parent)), "replays": r} for p, r in saved]}
    if crashed:
        result["log_tail"] = "\n".join(text.splitlines()[-60:])
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds-per-target", type=int, default=60, help="fuzzing budget of each target (60)")
    parser.add_argument("--target", action="append", default=[], help="run this target (repeatable; default all)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--corpus", type=Path, help="keep corpora under this folder (one subfolder per target); "
                                                    "default: a fresh seeded corpus each run")
    parser.add_argument("--strict-known", action="store_true", help="treat known, reported bugs as crashes too")
    parser.add_argument("--max-len", type=int, help="libFuzzer -max_len (default: the larger of 4096 and the "
                                                    "largest seed)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--logs", type=Path, help="copy each target's libFuzzer log into this folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--replay", nargs=2, metavar=("TARGET", "FILE"),
                        help="run one saved input through its target (no atheris needed); exit 1 if it fails")
    args = parser.parse_args(argv)

    if args.replay:
        return replay(args.replay[0], Path(args.replay[1]))

    if args.child:
        child(args.child, args.seconds_per_target, args.workdir, args.corpus, args.strict_known, args.max_len)
        return 0  # not reached: libFuzzer exits the process

    targets = _load_targets()
    if args.list:
        for target in targets.TARGETS.values():
            print(f"{target.name:<11} {target.what}")
        return 0
    names = args.target or list(targets.TARGETS)
    unknown = [n for n in names if n not in targets.TARGETS]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}; --list shows them")
    if importlib.util.find_spec("atheris") is None:
        print(f"fuzz/run.py: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.seconds_per_target < 1:
        parser.error("--seconds-per-target must be at least 1")

    print(f"fuzzing {len(names)} target(s), {args.seconds_per_target} s each "
          f"(python {sys.version.split()[0]}, keyvault compiled core: {targets.fast.COMPILED})", flush=True)
    results = []
    for name in names:
        result = run_target(name, args.seconds_per_target, args.corpus, args.strict_known, args.max_len, args.logs)
        results.append(result)
        known = ", ".join(f"{k} x{v}" for k, v in sorted(result["known_bug_hits"].items())) or "none"
        status = "CRASHED" if result["crashed"] else "ok"
        print(f"  {name:<11} {result['executions']:>10,} executions in {result['seconds']:>6} s  "
              f"cov {result['cov']}  {status}  (known bugs hit: {known})", flush=True)
        if result["crashed"]:
            print("    " + result["log_tail"].replace("\n", "\n    "), flush=True)
            for saved in result["saved"]:
                note = ("it replays with fresh fixtures" if saved["replays"] else
                        "it does NOT replay with fresh fixtures (it depended on this run's salts or roots): "
                        "make a patch-mode input of it by hand")
                print(f"    crashing input saved: {saved['file']} (tests/test_hostile_input.py replays it; {note})",
                      flush=True)
    total = sum(r["executions"] for r in results)
    crashed = [r["target"] for r in results if r["crashed"]]
    if args.json:
        print(json.dumps({"seconds_per_target": args.seconds_per_target, "total_executions": total,
                          "targets": results}, indent=2))
    print(f"{total:,} executions in all; " + (f"CRASHED: {', '.join(crashed)}" if crashed else "no crash"))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
