"""Shared plumbing for the CLI tests: running ``keyvault`` in-process, reading its output, a CLI-made world.

A supplier store and a platform store are built with the CLI itself (never
with an open library Vault beside it: one LMDB environment per process).
The autouse fixture that keeps KEYVAULT_* variables out, and the ``world``
fixture, live in conftest.py.
"""

from __future__ import annotations

import csv
import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from click.testing import Result as CliResult

from keyvault.cli.main import cli

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


# -- running the CLI -------------------------------------------------------------------------------


def kv(*args: object, input: str | None = None, env: dict[str, str] | None = None) -> CliResult:
    """Run ``keyvault ARGS`` in-process; a Python traceback is always a failure."""
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        tb = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"keyvault {' '.join(map(str, args))} raised instead of exiting cleanly:\n{tb}")
    assert "Traceback" not in result.output
    return result


def ok(*args: object, input: str | None = None, env: dict[str, str] | None = None) -> CliResult:
    """Run and require exit 0."""
    result = kv(*args, input=input, env=env)
    assert result.exit_code == EXIT_OK, f"exit {result.exit_code}: {result.output}"
    return result


def trust_cli(store: Path, identity: Path) -> None:
    """Pin a supplier's identity in a store through the CLI (its public file written beside it)."""
    public = identity.with_suffix(".pub")
    public.write_bytes(ok("identity", "show", "--public", identity).stdout_bytes)
    ok("--store", store, "trust", "add", public)


def one_json(result: CliResult) -> Any:
    """The single JSON document a --json command prints on stdout."""
    return json.loads(result.stdout)


def json_lines(result: CliResult) -> list[dict[str, Any]]:
    """JSON Lines on stdout: one object per line, nothing else."""
    lines = result.stdout.splitlines()
    docs = [json.loads(line) for line in lines]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def read_keys(path: Path) -> tuple[list[str], list[str]]:
    """(keys, serials) from a printable CSV export."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["key"] for r in rows], [r["serial"] for r in rows]


# -- mistyped keys ---------------------------------------------------------------------------------


def typo(key: str, group: int, pos: int = 1, symbols: str = "7KQ2XMZ") -> str:
    """``key`` with character ``pos`` (0-based) of ``group`` (1-based) replaced.

    The replacement is the first of ``symbols`` (alphabet symbols) that differs from the character there.
    """
    groups = key.split("-")
    g = groups[group - 1]
    old = g[pos]
    new = next(c for c in symbols if c != old.upper())
    groups[group - 1] = g[:pos] + new + g[pos + 1:]
    return "-".join(groups)


def swapped(key: str, group: int) -> str:
    """``key`` with the first two different neighbouring characters of ``group`` (1-based) swapped."""
    groups = key.split("-")
    g = groups[group - 1]
    for i in range(len(g) - 1):
        if g[i] != g[i + 1]:
            groups[group - 1] = g[:i] + g[i + 1] + g[i] + g[i + 2:]
            return "-".join(groups)
    raise AssertionError("no two different neighbours in that group")


# -- a supplier store and a platform store, made with the CLI --------------------------------------


@dataclass
class World:
    """A supplier store that issued a batch, and a platform store that imported its manifest."""

    root: Path
    identity: Path
    supplier_store: Path
    platform: Path
    keys_csv: Path
    manifest: Path
    batch: str
    supplier_id: str
    supplier_name: str
    prefix: str
    product: str
    keys: list[str]
    serials: list[str]


def make_world(root: Path, count: int = 40, name: str = "Acme Games", product: str = "POINTS-100") -> World:
    """Under ``root``: an identity, a supplier store that issued ``count`` keys, a platform that imported them."""
    root.mkdir(parents=True, exist_ok=True)
    identity = root / "acme.identity"
    who = one_json(ok("supplier", "init", "--name", name, "--out", identity, "--json"))
    sup, plat = root / "supplier-store", root / "platform-store"
    ok("--store", sup, "init")
    ok("--store", plat, "init")
    keys_csv, manifest = root / "keys.csv", root / "batch.kvm"
    issued = one_json(ok("--store", sup, "batch", "issue", "--supplier", identity, "--product", product,
                         "--count", count, "--keys-out", keys_csv, "--manifest-out", manifest, "--json"))
    trust_cli(plat, identity)
    ok("--store", plat, "manifest", "import", manifest)
    keys, serials = read_keys(keys_csv)
    return World(root, identity, sup, plat, keys_csv, manifest, issued["batch"], who["id"], name, who["prefix"],
                 product, keys, serials)
