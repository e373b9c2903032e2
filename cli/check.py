"""``keyvault check``: verify a whole store (structure, counts, log chain, checkpoints) and report.

The checks run in a child process. LMDB does not check its pages, and a page damaged in some ways
(a node that points past the end of the file) makes it read outside the file: the process dies of
SIGBUS or SIGSEGV instead of getting an error. The tool people run on a suspect store must not die
with it, so the child reports each check as it finishes and the parent turns a crash into a failed
check (or, during opening, into a refusal) that says what happened.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from keyvault.engine import CHECKS
from keyvault.errors import StoreCorruptError, StoreError

from .output import EXIT_REFUSED, State, emit, handle_errors, json_option

_CHILD = "from keyvault.cli.check import child; child()"


@click.command()
@json_option
@click.pass_obj
@handle_errors
def check(state: State, as_json: bool) -> None:
    """Verify the store: records, counts, signed manifests, the event log's chain, tree and checkpoints.

    One PASS or FAIL line per check. Exit 0 when every check passes, 3 when one fails, 1 when the
    store cannot be opened at all.
    """
    if state.store is None:
        raise click.UsageError("no store given: pass --store DIR or set KEYVAULT_STORE")
    doc = run_check(state.store, state.pepper_file)
    emit(as_json, doc, render_check(doc))
    if not doc["ok"]:
        sys.exit(EXIT_REFUSED)


def run_check(store: Path, pepper_file: Path | None) -> dict[str, Any]:
    """``Vault.check`` on ``store`` in a child process: its report, a crash of LMDB included.

    Raises a StoreError (with the child's message) when the store cannot be opened.
    """
    # The child must import the installed keyvault, never a source tree in the working directory: -P
    # (Python 3.11+) keeps the working directory off sys.path; before 3.11 it runs elsewhere.
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    args = [sys.executable, *safe, "-c", _CHILD, str(store.resolve())]
    args += [str(pepper_file.resolve())] if pepper_file else []
    proc = subprocess.run(args, capture_output=True, text=True, check=False,
                          cwd=None if safe else tempfile.gettempdir())
    opened, rows, report, refused = False, [], None, None
    for line in proc.stdout.splitlines():
        message = json.loads(line)
        if "opened" in message:
            opened = True
        elif "row" in message:
            rows.append(message["row"])
        elif "report" in message:
            report = message["report"]
        elif "refused" in message:
            refused = message["refused"]
    if refused is not None:
        raise StoreError(refused)
    if report is not None and proc.returncode == 0:
        report["store"] = str(store)
        return dict(report)
    if proc.returncode < 0:
        crash = _signal_name(-proc.returncode)
        what = (f"LMDB crashed ({crash}) reading {store / 'data.mdb'}: one of its pages is damaged in a way LMDB "
                "does not detect (it points outside the file)")
        if not opened:
            raise StoreCorruptError(f"the store at {store} is damaged: {what}; restore it from a backup")
        for i, name in enumerate(CHECKS[len(rows):]):  # the first of these was running when the child died
            rows.append({"check": name, "ok": False,
                         "detail": what if i == 0 else "not run: LMDB crashed during an earlier check"})
        return {"ok": False, "checks": rows, "counts": {}, "store": str(store), "crashed": crash}
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    raise StoreError(f"the check of {store} stopped unexpectedly: {tail}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def child() -> None:
    """The child's side: open the store, run the checks, print one JSON line per step (flushed at once)."""
    from keyvault import KeyvaultError, Vault

    def say(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    store = Path(sys.argv[1])
    pepper_file = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    try:
        vault = Vault.open(store, pepper_file=pepper_file)
    except KeyvaultError as exc:
        say({"refused": str(exc)})
        return
    say({"opened": True})
    try:
        report = vault.check(lambda row: say({"row": row.to_dict()}))
    finally:
        vault.close()
    say({"report": report.to_dict()})


def render_check(doc: dict[str, Any]) -> str:
    """The report for people: a line per check, then a summary."""
    lines = [f"{'PASS' if c['ok'] else 'FAIL'}  {c['check']}: {c['detail']}" for c in doc["checks"]]
    failed = [c["check"] for c in doc["checks"] if not c["ok"]]
    counts = doc["counts"]
    if failed:
        lines.append(f"store {doc['store']}: {len(failed)} of {len(doc['checks'])} checks FAILED "
                     f"({', '.join(failed)}): restore the store from a backup, or keep it aside for inspection")
    else:
        lines.append(f"store {doc['store']}: all {len(doc['checks'])} checks pass ({counts.get('keys', 0):,} keys, "
                     f"{counts.get('redeemed', 0):,} redeemed, {counts.get('void', 0):,} void, "
                     f"{counts.get('events', 0):,} events, {counts.get('checkpoints', 0):,} checkpoints)")
    return "\n".join(lines)
