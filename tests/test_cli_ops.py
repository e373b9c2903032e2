"""Operators' commands on the newer surface: one key means one key, and a full disk leaves no file behind.

Single-key commands that read stdin (`hold -`, `trace -`, `blacklist add --key -`, `receipt show -`,
`verify-offline -`) refuse stdin holding more than one key instead of acting on the first and dropping
the rest. Every command that writes a file (`trace --bundle`, `receipt upgrade --out`, `lot send --out`,
`lot receive --manifest-out`, `log export-tiles`) writes it whole or not at all on a full disk, says so,
and can be run again once there is room. The full-disk tests mount a small tmpfs (root only: skipped
with the reason otherwise, as in test_full_disk.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_support import EXIT_ERROR, EXIT_OK, EXIT_USAGE, World, json_lines, kv, ok
from test_full_disk import _fill, small_disk  # noqa: F401 (the fixture)


def _public(world: World, store: Path, name: str) -> Path:
    path = world.root / name
    path.write_bytes(ok("--store", store, "identity", "show", "--public").stdout_bytes)
    return path


def _status(world: World, key: str) -> str:
    return str(json_lines(kv("--store", world.platform, "verify", "--json", key))[0]["status"])


# -- one key means one key ------------------------------------------------------------------------------


def test_single_key_commands_refuse_stdin_with_more_than_one_key(world: World) -> None:
    two = f"{world.keys[0]}\n{world.keys[1]}\n"
    ok("--store", world.platform, "redeem", "--order", "PAID", world.keys[2])
    supplier_pub = world.root / "acme.pub"
    supplier_pub.write_bytes(ok("identity", "show", "--public", world.identity).stdout_bytes)
    for args in (("hold", "-", "--order", "O-1"), ("trace", "-"), ("blacklist", "add", "--key", "-", "--reason", "r"),
                 ("receipt", "show", "-"), ("verify-offline", "-", "--supplier", supplier_pub)):
        result = kv("--store", world.platform, *args, input=two)
        assert result.exit_code == EXIT_USAGE, (args, result.output)
        assert "more than one" in result.output and "nothing was done" in result.output, (args, result.output)
        doc = json.loads(kv("--store", world.platform, *args, "--json", input=two).stderr.strip())
        assert doc["error"] == "UsageError" and doc["exit_code"] == EXIT_USAGE
    # Nothing happened to either key: not held, not blacklisted.
    assert _status(world, world.keys[0]) == _status(world, world.keys[1]) == "valid"
    assert "no entries" in ok("--store", world.platform, "blacklist", "list").stdout.lower() or \
        not json.loads(ok("--store", world.platform, "blacklist", "list", "--json").stdout)
    # One key, even with blank lines around it, still works.
    held = json.loads(ok("--store", world.platform, "hold", "--json", "-", "--order", "O-1",
                         input=f"\n{world.keys[0]}\n\n").stdout)
    assert held["status"] == "held"


def test_verify_receipt_reads_an_upgraded_receipt_from_stdin(world: World) -> None:
    ok("--store", world.platform, "redeem", "--order", "ORDER-9", world.keys[0])
    engine = _public(world, world.platform, "engine.pub")
    text = ok("--store", world.platform, "receipt", "show", world.serials[0]).stdout.strip()
    upgraded = ok("--store", world.platform, "receipt", "upgrade", text).stdout
    assert upgraded.count("\n") > 1  # indented JSON: many lines
    for given in (text + "\n", upgraded):
        checked = kv("verify-receipt", "-", "--engine", engine, "--json", input=given)
        assert checked.exit_code == EXIT_OK, checked.output
        assert json.loads(checked.stdout)["order_id"] == "ORDER-9"
    assert json.loads(kv("verify-receipt", "-", "--engine", engine, "--json", input=upgraded).stdout)["proven_in_log"]
    two = kv("verify-receipt", "-", "--engine", engine, input=f"{text}\n{text}\n")
    assert two.exit_code == EXIT_USAGE and "more than one" in two.output


# -- a full disk leaves nothing behind ------------------------------------------------------------------


def _no_room(result, as_json: bool = False) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == EXIT_ERROR, result.output
    assert "Traceback" not in result.output and "OSError" not in result.output
    if as_json:
        doc = json.loads(result.stderr.strip().splitlines()[-1])
        assert doc["error"] == "StoreFullError" and "no room on the disk" in doc["message"], doc
    else:
        assert "no room on the disk" in result.stderr, result.stderr


def _left(disk: Path) -> list[str]:
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))


def test_trace_bundle_and_receipt_upgrade_on_a_full_disk(world: World, small_disk: Path) -> None:  # noqa: F811
    ok("--store", world.platform, "redeem", "--order", "ORDER-1", world.keys[0])
    text = ok("--store", world.platform, "receipt", "show", world.serials[0]).stdout.strip()
    filler = _fill(small_disk, leave=0)
    for as_json in (False, True):
        flag = ("--json",) if as_json else ()
        _no_room(kv("--store", world.platform, "trace", world.serials[0], "--bundle", small_disk / "proof.json",
                    *flag), as_json)
        _no_room(kv("--store", world.platform, "receipt", "upgrade", text, "--out", small_disk / "r.json"))
        assert _left(small_disk) == ["filler"]
    os.truncate(filler, 0)
    ok("--store", world.platform, "trace", world.serials[0], "--bundle", small_disk / "proof.json")
    ok("--store", world.platform, "receipt", "upgrade", text, "--out", small_disk / "r.json")
    assert json.loads((small_disk / "proof.json").read_text())["serial"] == world.serials[0]
    engine = _public(world, world.platform, "engine.pub")
    ok("verify-receipt", small_disk / "r.json", "--engine", engine)
    # Neither overwrites a file that is there.
    again = kv("--store", world.platform, "receipt", "upgrade", text, "--out", small_disk / "r.json")
    assert again.exit_code in (EXIT_ERROR, EXIT_USAGE) and "already exists" in again.output


def test_lot_send_on_a_full_disk_sends_nothing_and_can_be_retried(world: World, small_disk: Path) -> None:  # noqa: F811
    east = world.root / "east.identity"
    ok("supplier", "init", "--name", "East", "--out", east)
    east_pub = world.root / "east.pub"
    east_pub.write_bytes(ok("identity", "show", "--public", east).stdout_bytes)
    send = ("--store", world.supplier_store, "lot", "send", "--batch", world.batch, "--range", "0-19", "--to", east_pub,
            "--identity", world.identity, "--manifest", world.manifest, "--out", small_disk / "east.kvl")
    filler = _fill(small_disk, leave=0)
    _no_room(kv(*send))
    _no_room(kv(*send, "--json"), as_json=True)
    assert _left(small_disk) == ["filler"]
    audit = json.loads(kv("--store", world.supplier_store, "audit", "--json").stdout)
    assert audit["double_sales"] == []  # the refused sends were never made: no transfer, no evidence
    os.truncate(filler, 0)
    ok(*send)  # the retry is the first sale, not a second one
    assert (small_disk / "east.kvl").stat().st_size > 0
    east_store = world.root / "east-store"
    ok("--store", east_store, "init")
    ok("--store", east_store, "trust", "add", _supplier_pub(world))
    # Receiving with the copy of the manifest on a full disk: received, and the message says so.
    filler.unlink()
    _fill(small_disk, leave=0)
    received = kv("--store", east_store, "lot", "receive", small_disk / "east.kvl", "--identity", east,
                  "--manifest-out", small_disk / "copy.kvm")
    _no_room(received)
    assert "copy.kvm" not in _left(small_disk)
    assert "the lot was received" in received.stderr
    assert json.loads(ok("--store", east_store, "stats", "--json").stdout)["totals"]["keys"] == 20


def _supplier_pub(world: World) -> Path:
    path = world.root / "acme.pub"
    path.write_bytes(ok("identity", "show", "--public", world.identity).stdout_bytes)
    return path


def test_export_tiles_on_a_full_disk_leaves_nothing_it_wrote(world: World, small_disk: Path) -> None:  # noqa: F811
    out = small_disk / "log"
    ok("--store", world.platform, "redeem", "--order", "O", world.keys[0])
    first = json.loads(ok("--store", world.platform, "log", "export-tiles", out, "--json").stdout)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for i in range(1, 30):  # more events: new tiles to write
        ok("--store", world.platform, "redeem", "--order", f"O{i}", world.keys[i])
    _fill(small_disk, leave=0)
    _no_room(kv("--store", world.platform, "log", "export-tiles", out))
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier export, untouched: no new tile, no .tmp, the old checkpoint
    assert first["size"] > 0


@pytest.mark.parametrize("form", ["csv", "json"])
def test_report_to_a_full_disk_is_a_clean_error(world: World, small_disk: Path, form: str) -> None:  # noqa: F811
    import subprocess
    import sys

    _fill(small_disk, leave=0)
    target = small_disk / f"report.{form}"
    with open(target, "wb") as out:
        proc = subprocess.run([sys.executable, "-I", "-c", "from keyvault.cli.main import main; main()",
                               "--store", str(world.platform), "report", "--batch", world.batch, "--format", form],
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    assert proc.returncode == EXIT_ERROR, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert "no room on the disk" in proc.stderr, proc.stderr
    # With --out, the report is a new file made whole or not at all.
    made = kv("--store", world.platform, "report", "--batch", world.batch, "--format", form,
              "--out", small_disk / f"out.{form}")
    _no_room(made)
    assert _left(small_disk) == ["filler", f"report.{form}"]
    (small_disk / "filler").unlink()
    ok("--store", world.platform, "report", "--batch", world.batch, "--format", form, "--out", small_disk / f"out.{form}")
    streamed = ok("--store", world.platform, "report", "--batch", world.batch, "--format", form).stdout
    assert (small_disk / f"out.{form}").read_text() == streamed
    assert streamed.count(world.serials[-1]) == 1


# -- files that never end ----------------------------------------------------------------------------------


_BOUNDED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: reading /dev/zero whole would fail
from keyvault.cli.main import main
sys.argv[0] = "keyvault"
main()
"""


def test_files_read_whole_are_bounded(world: World, tmp_path: Path) -> None:
    """/dev/zero given where a checkpoint, a bundle or a config file is expected: refused, in bounded memory."""
    import subprocess
    import sys

    supplier_pub = _supplier_pub(world)
    backup = tmp_path / "bk"
    ok("--store", world.platform, "backup", backup)
    for args in (("--store", world.platform, "checkpoint", "--since", "/dev/zero"),
                 ("verify-bundle", "/dev/zero", "--supplier", supplier_pub),
                 ("restore", backup, tmp_path / "restored", "--since", "/dev/zero",
                  "--pepper-file", world.platform / "pepper"),
                 ("config", "show", "--config", "/dev/zero")):
        proc = subprocess.run([sys.executable, "-I", "-c", _BOUNDED, *map(str, args)], capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode in (EXIT_ERROR, EXIT_USAGE), (args, proc.returncode, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-500:]
        assert "bytes, so it is not" in proc.stderr, (args, proc.stderr[-500:])
    assert not (tmp_path / "restored").exists()


def test_lot_receive_and_batch_import_read_a_device_in_bounded_memory(world: World, tmp_path: Path) -> None:
    import subprocess
    import sys

    east = world.root / "east.identity"
    ok("supplier", "init", "--name", "East", "--out", east)
    for args, said in ((("--store", world.platform, "lot", "receive", "/dev/zero", "--identity", east), "256 MiB"),
                       (("--store", world.supplier_store, "batch", "import", "--supplier", world.identity, "--product",
                         "X", "/dev/zero", "--manifest-out", tmp_path / "x.kvm"), "not a regular file")):
        proc = subprocess.run([sys.executable, "-I", "-c", _BOUNDED, *map(str, args)], capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode in (EXIT_ERROR, EXIT_USAGE), (args, proc.returncode, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr and said in proc.stderr, proc.stderr[-500:]
    assert not (tmp_path / "x.kvm").exists()
