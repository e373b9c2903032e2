"""Every command tells the truth: many keys for redeem and void, empty and hostile input, bounded reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cli_support import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, World, json_lines, kv, ok

from keyvault.cli.keys import MAX_LINE


def _statuses(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [d["status"] for d in json_lines(result)]


# -- redeem and void take many keys ----------------------------------------------------------------


def test_redeem_many_from_stdin_file_and_arguments(world: World, tmp_path: Path) -> None:
    piped = ok("--store", world.platform, "redeem", "--json", "-",
               input="".join(f"{k},ORD-{i}\n" for i, k in enumerate(world.keys[:3])))
    assert _statuses(piped) == ["accepted"] * 3
    assert [d["order_id"] for d in json_lines(piped)] == ["ORD-0", "ORD-1", "ORD-2"]
    listing = tmp_path / "orders.txt"
    listing.write_text(f"{world.keys[3]},ORD-3\n\n{world.keys[0]},ORD-X\n{world.keys[4]}, ORD-4 \n")
    from_file = kv("--store", world.platform, "redeem", "--json", "--file", listing)
    assert from_file.exit_code == EXIT_REFUSED  # key 0 already went to ORD-0
    assert _statuses(from_file) == ["accepted", "redeemed", "accepted"]
    assert "of 3 keys refused" not in from_file.stdout
    args = ok("--store", world.platform, "redeem", f"{world.keys[5]},ORD-5", f"{world.keys[6]},ORD-6")
    assert args.stdout.count("accepted") == 2 and "ORD-6" in args.stdout
    stats = json_lines(ok("--store", world.platform, "stats", "--json"))[0]
    assert stats["totals"]["redeemed"] == 7


def test_redeem_needs_an_order_per_key(world: World) -> None:
    no_order = kv("--store", world.platform, "redeem", "-", input=f"{world.keys[0]}\n")
    assert no_order.exit_code == EXIT_USAGE and "KEY,ORDER" in no_order.output
    two_with_one_order = kv("--store", world.platform, "redeem", "-", "--order", "O-1",
                            input=f"{world.keys[0]}\n{world.keys[1]}\n")
    assert two_with_one_order.exit_code == EXIT_USAGE and "single key" in two_with_one_order.output
    stats = json_lines(ok("--store", world.platform, "stats", "--json"))[0]
    assert stats["totals"]["redeemed"] == 0  # a usage error changes nothing


def test_void_many_from_stdin_by_key_and_serial(world: World) -> None:
    ok("--store", world.platform, "redeem", world.keys[2], "--order", "SPENT")
    result = kv("--store", world.platform, "void", "--json", "-", "--reason", "recall",
                input=f"{world.keys[0]}\n{world.serials[1]}\n{world.keys[2]}\n")
    assert result.exit_code == EXIT_REFUSED
    assert _statuses(result) == ["void", "void", "redeemed"]
    assert [d["serial"] for d in json_lines(result)] == world.serials[:3]
    stats = json_lines(ok("--store", world.platform, "stats", "--json"))[0]
    assert stats["totals"]["void"] == 2


def test_void_many_file(world: World, tmp_path: Path) -> None:
    listing = tmp_path / "void.txt"
    listing.write_text("".join(s + "\n" for s in world.serials[:5]))
    result = ok("--store", world.platform, "void", "--json", "--file", listing, "--reason", "recall")
    assert _statuses(result) == ["void"] * 5


# -- empty input is a usage error ------------------------------------------------------------------


def test_empty_input_is_a_usage_error(world: World, tmp_path: Path) -> None:
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_text("")
    blank.write_text("\n  \n\t\n")
    for command in (["verify"], ["redeem"], ["void", "--reason", "r"]):
        for how, stdin in ((["-"], ""), (["-"], "\n\n"), (["--file", empty], None), (["--file", blank], None)):
            result = kv("--store", world.platform, *command, *how, input=stdin)
            assert result.exit_code == EXIT_USAGE, (command, how, result.output)
            assert "no key given" in result.output and result.stdout == ""
        bare = kv("--store", world.platform, *command)
        assert bare.exit_code == EXIT_USAGE and "no key given" in bare.output


# -- hostile input: not UTF-8, lines too long ------------------------------------------------------


def test_invalid_utf8_is_a_clean_usage_error(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(world.keys[0].encode() + b"\n\xff\xfe\x00junk\n")
    for command in (["verify"], ["void", "--reason", "r"]):
        result = kv("--store", world.platform, *command, "--file", bad)
        assert result.exit_code == EXIT_USAGE and "line 2" in result.output and "UTF-8" in result.output
        assert "UnicodeDecodeError" not in result.output
    stats = json_lines(ok("--store", world.platform, "stats", "--json"))[0]
    assert stats["totals"]["void"] == 0  # the chunk holding the bad line was not acted on


def test_a_line_too_long_is_refused(world: World) -> None:
    result = kv("--store", world.platform, "verify", "-", input=world.keys[0] + "\n" + "A" * (MAX_LINE + 10) + "\n")
    assert result.exit_code == EXIT_USAGE and "line 2" in result.output and "longer than" in result.output
    fits = kv("--store", world.platform, "verify", "-", input="A" * (MAX_LINE - 1) + "\n")
    assert fits.exit_code in (EXIT_OK, EXIT_REFUSED)


def test_a_huge_line_on_stdin_is_refused_in_bounded_memory(world: World) -> None:
    """200 MB on one line: refused after reading at most MAX_LINE bytes of it (peak RSS measured)."""
    # The child reports its own high-water mark (VmHWM): ru_maxrss would also count the pages of this test
    # process it was spawned from (vfork), so a pytest grown by earlier tests would fail it.
    code = ("import sys\nfrom keyvault.cli.main import cli\ntry:\n"
            "    cli(['--store', sys.argv[1], 'verify', '-'], prog_name='keyvault')\nfinally:\n"
            "    sys.stderr.write(''.join(l for l in open('/proc/self/status') if l.startswith('VmHWM')))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(world.platform)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=world.root)
    assert proc.stdin is not None
    block = b"A" * (1 << 20)
    try:
        for _ in range(200):
            proc.stdin.write(block)
    except BrokenPipeError:  # refused and exited before reading it all: as it should
        pass
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    proc.wait()
    assert proc.returncode == EXIT_USAGE and b"longer than" in err, err
    peak = re.search(rb"VmHWM:\s+(\d+) kB", err)
    assert peak is not None, err
    peak_kib = int(peak.group(1))
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB"


# -- --json: errors are JSON too ---------------------------------------------------------------------


def _json_error(result, code: int) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    doc = json.loads(lines[0])
    assert set(doc) == {"error", "message", "hint", "exit_code"} and doc["exit_code"] == code
    assert doc["message"] and doc["hint"] and "Error:" not in result.stderr
    assert "{" not in result.stdout  # stdout holds results only
    return doc


def test_json_errors_are_one_object_on_stderr(world: World, tmp_path: Path) -> None:
    nowhere = tmp_path / "no-store"
    assert _json_error(kv("--store", nowhere, "stats", "--json"), 1)["error"] == "NotAStoreError"
    assert _json_error(kv("--store", nowhere, "verify", "--json", "-", input="x\n"), 1)["error"] == "NotAStoreError"
    assert _json_error(kv("--store", world.platform, "verify", "--json", "--bogus"), 2)["error"] == "NoSuchOption"
    empty = _json_error(kv("--store", world.platform, "redeem", "--json", "-", input=""), 2)
    assert empty["error"] == "UsageError" and "no key given" in empty["message"]
    missing = _json_error(kv("--store", world.platform, "void", "--json", world.serials[0]), 2)
    assert missing["error"] == "MissingParameter"
    revoke = _json_error(kv("--store", world.platform, "token", "revoke", "nobody", "--json"), 1)
    assert revoke["error"] == "NotFoundError"
    blacklist = _json_error(kv("--store", world.platform, "blacklist", "add", "--batch", "ZZZZ-ZZZ",
                               "--reason", "r", "--json"), 1)
    assert blacklist["error"] in ("NotFoundError", "UsageError")
    trace = _json_error(kv("--store", world.platform, "trace", "ZZZZ-ZZZ-ZZZZZ", "--json"), 1)
    assert trace["error"] == "NotFoundError"


def test_token_revoke_json(world: World) -> None:
    ok("--store", world.platform, "token", "create", "--name", "shop", "--scope", "verify")
    doc = json.loads(ok("--store", world.platform, "token", "revoke", "shop", "--json").stdout)
    assert doc == {"name": "shop", "revoked": True}


def test_public_keys_are_hex_everywhere(world: World) -> None:
    made = json.loads(ok("supplier", "init", "--name", "Hex Co", "--out", world.root / "hex.identity",
                         "--json").stdout)
    shown = json.loads(ok("identity", "show", world.root / "hex.identity", "--json").stdout)
    assert shown["public_key"] == made["public_key"] and len(bytes.fromhex(shown["public_key"])) == 32
    human = ok("identity", "show", world.root / "hex.identity").stdout
    assert made["public_key"] in human
    trace = json.loads(ok("--store", world.platform, "trace", world.serials[0], "--json").stdout)
    acme = json.loads(ok("identity", "show", world.identity, "--json").stdout)
    assert trace["supplier"]["public_key"] == acme["public_key"]


# -- a mistyped native key is malformed, even beside imported codes ----------------------------------


NEAR_NATIVE_CODE = "ABCD-EFGH-JKMN-PQRS-TVWX-YZ23-45"  # 30 key-alphabet symbols: an upstream code of that shape


def _with_codes(world: World) -> None:
    upstream = world.root / "upstream.csv"
    upstream.write_text(f"code\nSTEAM-AAAA-BBBB\n{NEAR_NATIVE_CODE}\n")
    manifest = world.root / "codes.kvm"
    ok("--store", world.supplier_store, "batch", "import", "--supplier", world.identity, "--product", "STEAM-50",
       upstream, "--manifest-out", manifest)
    ok("--store", world.platform, "manifest", "import", manifest)


def _verify(world: World, text: str) -> dict:  # type: ignore[type-arg]
    return json_lines(kv("--store", world.platform, "verify", "--json", "-", input=text + "\n"))[0]


def test_wrong_length_or_alphabet_is_malformed_beside_imported_codes(world: World) -> None:
    _with_codes(world)
    key = world.keys[0]
    short = _verify(world, key[:-1])  # 31 symbols
    assert short["status"] == "malformed" and "group 8 has 3 characters" in short["message"]
    assert _verify(world, key.replace("-", "")[:-1])["message"].startswith("the key has 31 characters")
    assert _verify(world, key + "7")["status"] == "malformed"
    assert "group 8 has 5 characters" in _verify(world, key + "7")["message"]
    dropped_group = _verify(world, key[:-5])
    assert dropped_group["status"] == "malformed" and "28 characters" in dropped_group["message"], dropped_group
    for junk in ("A" * 300, "\x01\x02\x03", "x" * 200, "   -  ", "é" * 10):
        doc = _verify(world, junk) if junk.strip(" -") else None
        if doc is not None:
            assert doc["status"] == "malformed", (junk[:10], doc)
    # Imported codes keep working, whatever their shape; an unknown one is unknown.
    assert _verify(world, "steam-aaaa-bbbb")["status"] == "valid"
    assert _verify(world, NEAR_NATIVE_CODE.lower())["status"] == "valid"
    assert _verify(world, "STEAM-AAAA-BBBX")["status"] == "unknown"
    redeem = json_lines(kv("--store", world.platform, "redeem", "--json", "-",
                           input=f"{key[:-1]},O-1\n{NEAR_NATIVE_CODE},O-2\n"))
    assert [r["status"] for r in redeem] == ["malformed", "accepted"]


def test_wrong_length_is_malformed_without_imported_codes(world: World) -> None:
    assert _verify(world, world.keys[0][:-1])["status"] == "malformed"


# -- stats: right counts at every blacklist level, lots, and words that agree with numbers ----------


def _stats(store: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(ok("--store", store, "stats", "--json").stdout)


def _each_key_once(doc: dict) -> None:  # type: ignore[type-arg]
    for row in [doc["totals"], *doc["suppliers"]]:
        assert row["active"] + row["redeemed"] + row["void"] + row["blacklisted"] == row["keys"], row
    for row in doc["batches"]:
        assert row["active"] + row["redeemed"] + row["void"] + row["blacklisted"] == row["count"], row


def test_stats_counts_every_blacklist_level(world: World) -> None:
    p, n = world.platform, len(world.keys)
    ok("--store", p, "redeem", world.keys[0], "--order", "O-0")
    ok("--store", p, "void", world.keys[1], "--reason", "refund")
    ok("--store", p, "blacklist", "add", "--key", world.keys[2], "--reason", "fraud")
    ok("--store", p, "blacklist", "add", "--key", world.keys[0], "--reason", "fraud, after the sale")
    t = _stats(p)["totals"]
    assert (t["active"], t["redeemed"], t["void"], t["blacklisted"]) == (n - 3, 1, 1, 1)  # keys[0] is spent
    _each_key_once(_stats(p))
    ok("--store", p, "blacklist", "add", "--batch", world.batch, "--reason", "lot stolen")
    doc = _stats(p)
    (b,) = doc["batches"]
    assert (b["active"], b["blacklisted"], b["batch_blacklisted"]) == (0, n - 2, True)
    assert doc["totals"]["blacklist_entries"] == 3
    _each_key_once(doc)
    human = ok("--store", p, "stats").stdout
    assert f"active 0, redeemed 1, void 1, blacklisted {n - 2}" in human
    assert "1 batch " in human and "1 supplier:" in human and "3 blacklist entries" in human
    ok("--store", p, "blacklist", "lift", "--batch", world.batch, "--reason", "found")
    ok("--store", p, "blacklist", "add", "--supplier", world.prefix, "--reason", "supplier gone")
    doc = _stats(p)
    assert (doc["totals"]["active"], doc["totals"]["blacklisted"]) == (0, n - 2)
    assert doc["suppliers"][0]["blacklisted"] == n - 2
    _each_key_once(doc)
    ok("--store", p, "blacklist", "lift", "--supplier", world.prefix, "--reason", "back")
    doc = _stats(p)
    assert (doc["totals"]["active"], doc["totals"]["blacklisted"]) == (n - 3, 1)
    human = ok("--store", p, "stats").stdout
    assert "2 blacklist entries" in human and "1 blacklist entries" not in human and "1 batches" not in human


def test_stats_words_agree_with_numbers(world: World) -> None:
    human = ok("--store", world.platform, "stats").stdout
    assert f"{len(world.keys)} keys in 1 batch from 1 supplier:" in human and "0 blacklist entries" in human
    ok("--store", world.platform, "blacklist", "add", "--key", world.keys[0], "--reason", "fraud")
    assert "1 blacklist entry;" in ok("--store", world.platform, "stats").stdout


def _lot_world(world: World, ranges: str) -> tuple[Path, Path, Path, str]:
    east_id, east_pub, east = world.root / "east.identity", world.root / "east.pub", world.root / "east-store"
    ok("supplier", "init", "--name", "East Agency", "--out", east_id)
    east_pub.write_bytes(ok("identity", "show", "--public", east_id).stdout_bytes)
    acme_pub = world.root / "acme.pub"
    acme_pub.write_bytes(ok("identity", "show", "--public", world.identity).stdout_bytes)
    lot = world.root / "east.kvl"
    ok("--store", world.supplier_store, "lot", "send", "--batch", world.batch, "--range", ranges, "--to", east_pub,
       "--identity", world.identity, "--manifest", world.manifest, "--out", lot)
    ok("--store", east, "init")
    ok("--store", east, "trust", "add", acme_pub)
    received = ok("--store", east, "lot", "receive", lot, "--identity", east_id).stdout
    return east, east_id, east_pub, received


def test_a_receiver_counts_only_the_keys_it_received(world: World) -> None:
    half = len(world.keys) // 2
    east, _, _, received = _lot_world(world, f"0-{half - 1}")
    assert received.startswith(f"received {half} keys of batch {world.batch} ({len(world.keys)} keys)")
    doc = _stats(east)
    (b,) = doc["batches"]
    assert (b["count"], b["active"], b["received_ranges"]) == (half, half, [f"0-{half - 1}"])
    assert (doc["totals"]["keys"], doc["totals"]["active"]) == (half, half)
    ok("--store", east, "redeem", world.keys[0], "--order", "E-1")
    ok("--store", east, "blacklist", "add", "--key", world.keys[1], "--reason", "fraud")
    doc = _stats(east)
    assert (doc["totals"]["active"], doc["totals"]["redeemed"], doc["totals"]["blacklisted"]) == (half - 2, 1, 1)
    _each_key_once(doc)
    assert f"{half} keys (received here in lots: 0-{half - 1})" in ok("--store", east, "stats").stdout
    assert ok("--store", east, "check").exit_code == 0


# -- a double sale refused at the sender leaves evidence --------------------------------------------


def test_a_double_sale_refused_at_the_sender_is_kept_and_audited(world: World) -> None:
    _, _, east_pub, _ = _lot_world(world, "0-9")
    assert "no double sale" in ok("--store", world.supplier_store, "audit").stdout
    again = world.root / "again.kvl"
    refused = kv("--store", world.supplier_store, "lot", "send", "--batch", world.batch, "--range", "5-14",
                 "--to", east_pub, "--identity", world.identity, "--manifest", world.manifest, "--out", again)
    assert refused.exit_code == 1 and "double sale refused" in refused.stderr and not again.exists()
    audit = kv("--store", world.supplier_store, "audit")
    assert audit.exit_code != 0 and "DOUBLE SALE" in audit.stdout and "refused when sending here" in audit.stdout
    doc = json.loads(kv("--store", world.supplier_store, "audit", "--json").stdout)
    (sale,) = doc["double_sales"]
    assert sale["refused_at"] == "send" and sale["second"]["ranges"] == ["5-14"] and sale["first"]["ranges"] == ["0-9"]
    assert ok("--store", world.supplier_store, "check").exit_code == 0


def test_single_key_commands_read_stdin_bounded(world: World) -> None:
    """trace, blacklist add --key and verify-bundle --key read one stdin line, capped and checked like verify."""
    for args in (("trace", "-"), ("blacklist", "add", "--key", "-", "--reason", "r")):
        for stdin in ("", "\n\n", "A" * (MAX_LINE + 5) + "\n"):
            result = kv("--store", world.platform, *args, input=stdin)
            assert result.exit_code == EXIT_USAGE, (args, stdin[:5], result.output)
            assert "no key given" in result.output or "longer than" in result.output
    traced = json.loads(ok("--store", world.platform, "trace", "--json", "-", input=world.keys[0] + "\n").stdout)
    assert traced["serial"] == world.serials[0]
