"""The ``keyvault`` command line, driven as a script would drive it: every command, human and --json.

A supplier store and a platform store are built with the CLI itself (never
with an open library Vault beside it: one LMDB environment per process).
Exit codes are the documented ones: 0 all accepted, 3 a key refused, 1 error,
2 usage.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from keyvault import Status, Vault, _fast
from keyvault.formats.keyformat import display_key, parse_serial

from cli_support import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    World,
    json_lines,
    kv,
    make_world,
    ok,
    one_json,
    read_keys,
    swapped,
    trust_cli,
    typo,
)

BASE_FIELDS = ("status", "serial", "batch", "supplier")


# -- helpers ------------------------------------------------------------------------------------


def forged(serial: str) -> str:
    """A well-formed key (right check characters) for a real serial, with a guessed secret."""
    return display_key(_fast.encode_key(parse_serial(serial), secrets.randbits(80)))


def stats(store: Path) -> dict[str, Any]:
    doc: dict[str, Any] = one_json(ok("--store", store, "stats", "--json"))
    return doc


# -- init and supplier init ---------------------------------------------------------------------


def test_init_human_and_json(tmp_path: Path) -> None:
    human = ok("--store", tmp_path / "a", "init")
    assert "created store" in human.stdout and "pepper" in human.stdout
    assert (tmp_path / "a" / "data.mdb").is_file()
    assert stat.S_IMODE((tmp_path / "a" / "pepper").stat().st_mode) == 0o600

    doc = one_json(ok("--store", tmp_path / "b", "init", "--json"))
    assert doc == {"store": str(tmp_path / "b"), "pepper_file": str(tmp_path / "b" / "pepper")}
    assert stat.S_IMODE(Path(doc["pepper_file"]).stat().st_mode) == 0o600
    # The new store opens and is empty.
    assert stats(tmp_path / "b")["totals"]["keys"] == 0


def test_init_twice_is_refused_and_keeps_the_store(world: World) -> None:
    pepper = (world.platform / "pepper").read_bytes()
    result = kv("--store", world.platform, "init")
    assert result.exit_code == EXIT_ERROR
    assert "already holds a keyvault store" in result.stderr
    assert (world.platform / "pepper").read_bytes() == pepper
    assert stats(world.platform)["totals"]["keys"] == len(world.keys)


def test_init_with_pepper_outside_the_store(tmp_path: Path) -> None:
    pepper = tmp_path / "secrets" / "kv.pepper"
    pepper.parent.mkdir()
    doc = one_json(ok("--store", tmp_path / "s", "--pepper-file", pepper, "init", "--json"))
    assert doc["pepper_file"] == str(pepper)
    assert stat.S_IMODE(pepper.stat().st_mode) == 0o600
    assert not (tmp_path / "s" / "pepper").exists()
    # Without the pepper the store cannot be used; with it (option or environment) it can.
    assert kv("--store", tmp_path / "s", "stats", "--json").exit_code == EXIT_ERROR
    ok("--store", tmp_path / "s", "--pepper-file", pepper, "stats", "--json")
    ok("--store", tmp_path / "s", "stats", "--json", env={"KEYVAULT_PEPPER_FILE": str(pepper)})


def test_supplier_init_human_and_json(tmp_path: Path) -> None:
    out = tmp_path / "acme.identity"
    doc = one_json(ok("supplier", "init", "--name", "Acme Games", "--out", out, "--json"))
    assert doc["name"] == "Acme Games" and doc["file"] == str(out)
    assert len(doc["id"]) == 16 and int(doc["id"], 16) >= 0
    assert len(doc["prefix"]) == 4 and all(c in _fast.ALPHABET for c in doc["prefix"])
    assert len(bytes.fromhex(doc["public_key"])) == 32
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    secret_key = json.loads(out.read_text())["secret_key"]
    assert secret_key not in json.dumps(doc)

    human = ok("supplier", "init", "--name", "Other Co", "--out", tmp_path / "other.identity", "--prefix", "7KQ2")
    assert "created supplier 'Other Co'" in human.stdout and "7KQ2" in human.stdout

    # An identity is never overwritten.
    before = out.read_bytes()
    again = kv("supplier", "init", "--name", "Mallory", "--out", out)
    assert again.exit_code == EXIT_ERROR and "already exists" in again.stderr
    assert out.read_bytes() == before


# -- batch issue, batch import, manifest import ---------------------------------------------------


def test_batch_issue_json_export_and_manifest(tmp_path: Path) -> None:
    w = make_world(tmp_path, count=60)
    mode = stat.S_IMODE(w.keys_csv.stat().st_mode)
    assert mode == 0o600, f"the printable export has mode {mode:04o}"
    with open(w.keys_csv, newline="") as fh:
        header = next(csv.reader(fh))
    assert {"serial", "key"} <= set(header)
    assert len(w.keys) == len(set(w.keys)) == 60
    assert w.serials == [f"{w.batch}-{_fast.format_serial(parse_serial(w.serials[0]) + i)[7:]}" for i in range(60)]
    assert all(s.startswith(w.batch + "-") for s in w.serials)
    assert w.batch.startswith(w.prefix + "-")
    # The manifest holds no key.
    body = w.manifest.read_bytes()
    assert not any(k.replace("-", "").encode() in body or k.encode() in body for k in w.keys)
    # The supplier's own store knows the keys it issued.
    results = json_lines(ok("--store", w.supplier_store, "verify", "--json", *w.keys[:5]))
    assert [r["status"] for r in results] == ["valid"] * 5
    assert [r["serial"] for r in results] == w.serials[:5]
    s = stats(w.supplier_store)["totals"]
    assert (s["keys"], s["issued"], s["imported"], s["batches"], s["suppliers"]) == (60, 60, 0, 1, 1)


def test_batch_issue_human_output_json_export_and_window(world: World) -> None:
    keys_json, manifest = world.root / "more.json", world.root / "more.kvm"
    human = ok("--store", world.supplier_store, "batch", "issue", "--supplier", world.identity, "--product",
               "VIP-30D", "--count", 12, "--valid-days", 30, "--keys-out", keys_json, "--manifest-out", manifest)
    assert "issued batch" in human.stdout and "12" in human.stdout and "VIP-30D" in human.stdout
    assert str(keys_json) in human.stdout and str(manifest) in human.stdout
    assert stat.S_IMODE(keys_json.stat().st_mode) == 0o600
    export = json.loads(keys_json.read_text())
    assert len(export["keys"]) == 12 and {"serial", "key"} <= set(export["keys"][0])
    until = dt.datetime.fromisoformat(export["valid_until"].replace("Z", "+00:00"))
    days = (until - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
    assert 29.9 < days <= 30.0
    imported = one_json(ok("--store", world.platform, "manifest", "import", manifest, "--json"))
    assert imported["valid_until"] == export["valid_until"] and imported["product"] == "VIP-30D"
    assert imported["batch"] != world.batch
    key = export["keys"][0]["key"]
    assert json_lines(ok("--store", world.platform, "verify", "--json", key))[0]["status"] == "valid"


def test_validity_window_expired_and_not_yet_valid(world: World) -> None:
    for name, start, status in (("old", "2020-01-01", "expired"), ("new", "2999-01-01", "not_yet_valid")):
        keys_csv, manifest = world.root / f"{name}.csv", world.root / f"{name}.kvm"
        ok("--store", world.supplier_store, "batch", "issue", "--supplier", world.identity, "--product", "P",
           "--count", 3, "--valid-from", start, "--valid-days", 1, "--keys-out", keys_csv, "--manifest-out", manifest)
        ok("--store", world.platform, "manifest", "import", manifest)
        key = read_keys(keys_csv)[0][0]
        result = kv("--store", world.platform, "verify", "--json", key)
        assert result.exit_code == EXIT_REFUSED
        assert json_lines(result)[0]["status"] == status
        redeem = kv("--store", world.platform, "redeem", "--json", key, "--order", f"O-{name}")
        assert redeem.exit_code == EXIT_REFUSED and json_lines(redeem)[0]["status"] == status


def _codes(n: int) -> list[str]:
    return ["GC" + secrets.token_hex(10).upper() for _ in range(n)]


def test_batch_import_code_csv(world: World) -> None:
    codes = _codes(25)
    cards = world.root / "codes.csv"
    cards.write_text("code,note\n" + "".join(f"{c},upstream lot 7\n" for c in codes))
    manifest = world.root / "codes.kvm"
    doc = one_json(ok("--store", world.supplier_store, "batch", "import", "--supplier", world.identity,
                      "--product", "STEAM-50", cards, "--manifest-out", manifest, "--json"))
    assert doc["kind"] == "code" and doc["count"] == 25 and doc["product"] == "STEAM-50"
    assert doc["origin"] == "upstream" and doc["supplier"] == world.supplier_id
    assert doc["manifest_out"] == str(manifest)
    assert not any(c.encode() in manifest.read_bytes() for c in codes)

    imported = one_json(ok("--store", world.platform, "manifest", "import", manifest, "--json"))
    assert imported["batch"] == doc["batch"] and imported["new"] is True and imported["origin"] == "manifest"
    # Codes verify in any case, with separators the customer may add.
    typed = [codes[0], codes[1].lower(), codes[2][:6] + "-" + codes[2][6:]]
    results = json_lines(ok("--store", world.platform, "verify", "--json", *typed))
    assert [r["status"] for r in results] == ["valid"] * 3
    assert all(r["batch"] == doc["batch"] and r["supplier"] == world.supplier_id for r in results)
    assert results[0]["serial"] == f"{doc['batch']}-00000"
    unknown = kv("--store", world.platform, "verify", "--json", "GC" + secrets.token_hex(10).upper())
    assert unknown.exit_code == EXIT_REFUSED and json_lines(unknown)[0]["status"] == "unknown"
    redeem = one_json(ok("--store", world.platform, "redeem", "--json", codes[3], "--order", "ORD-CODE"))
    assert redeem["status"] == "accepted" and redeem["order_id"] == "ORD-CODE"


def test_batch_import_card_password_csv(world: World) -> None:
    cards = [(f"8800{secrets.randbelow(10**12):012d}", secrets.token_hex(8)) for _ in range(20)]
    path = world.root / "cards.csv"
    path.write_text("card_number,password\n" + "".join(f"{n},{p}\n" for n, p in cards))
    manifest = world.root / "cards.kvm"
    human = ok("--store", world.supplier_store, "batch", "import", "--supplier", world.identity, "--product",
               "PHONE-30", path, "--manifest-out", manifest)
    assert "imported batch" in human.stdout and "20 pair keys" in human.stdout
    assert "plaintext" in human.stdout  # the CSV itself still holds the cards: the user is told
    imported = one_json(ok("--store", world.platform, "manifest", "import", manifest, "--json"))
    assert imported["kind"] == "pair" and imported["count"] == 20

    number, password = cards[4]
    valid = json_lines(ok("--store", world.platform, "verify", "--json", f"{number}:{password}"))[0]
    assert valid["status"] == "valid" and valid["batch"] == imported["batch"]
    wrong = kv("--store", world.platform, "verify", "--json", f"{number}:{password[:-1]}0"
               if password[-1] != "0" else f"{number}:{password[:-1]}1")
    assert wrong.exit_code == EXIT_REFUSED and json_lines(wrong)[0]["status"] == "unknown"
    # The public card number is shown by trace (support staff look cards up by it).
    trace = one_json(ok("--store", world.platform, "trace", "--json", valid["serial"]))
    assert trace["card_number"] == number
    accepted = one_json(ok("--store", world.platform, "redeem", "--json", f"{number}:{password}", "--order", "P1"))
    assert accepted["status"] == "accepted"


def test_manifest_import_json_and_reimport_changes_nothing(world: World) -> None:
    before = stats(world.platform)
    again = one_json(ok("--store", world.platform, "manifest", "import", world.manifest, "--json"))
    assert again["new"] is False and again["batch"] == world.batch and again["count"] == len(world.keys)
    human = ok("--store", world.platform, "manifest", "import", world.manifest)
    assert "nothing changed" in human.stdout
    assert stats(world.platform) == before
    totals = before["totals"]
    assert (totals["keys"], totals["imported"], totals["issued"], totals["batches"]) == (len(world.keys),
                                                                                         len(world.keys), 0, 1)


def test_manifest_import_human(tmp_path: Path, world: World) -> None:
    fresh = tmp_path / "fresh"
    ok("--store", fresh, "init")
    trust_cli(fresh, world.identity)
    human = ok("--store", fresh, "manifest", "import", world.manifest)
    assert f"imported batch {world.batch}" in human.stdout
    assert world.supplier_name in human.stdout and world.supplier_id in human.stdout


# -- verify ----------------------------------------------------------------------------------------


def test_verify_json_lines_in_input_order(world: World) -> None:
    k = world.keys
    inputs = [k[0], typo(k[1], 6), forged(world.serials[2]), k[3], swapped(k[4], 7), k[5]]
    result = kv("--store", world.platform, "verify", "--json", *inputs)
    assert result.exit_code == EXIT_REFUSED
    docs = json_lines(result)
    assert [d["status"] for d in docs] == ["valid", "malformed", "unknown", "valid", "malformed", "valid"]
    for doc in docs:
        missing = [f for f in BASE_FIELDS if f not in doc]
        assert not missing, f"a {doc['status']} line lacks {missing}: {doc}"
    assert [docs[i]["serial"] for i in (0, 3, 5)] == [world.serials[i] for i in (0, 3, 5)]
    assert all(docs[i]["batch"] == world.batch and docs[i]["supplier"] == world.supplier_id for i in (0, 3, 5))
    assert docs[1]["group"] == 6 and docs[4]["group"] == 7
    assert docs[2]["serial"] == world.serials[2]  # the guessed key's serial is public; its secret is wrong
    assert not any(key in result.output or key.replace("-", "") in result.output for key in inputs)


def test_verify_accepts_what_customers_type(world: World) -> None:
    key = world.keys[7]
    forms = [key.lower(), key.replace("-", ""), key.replace("-", " "), "  " + key + "  ",
             key.replace("0", "O").replace("1", "l")]
    docs = json_lines(ok("--store", world.platform, "verify", "--json", *forms))
    assert [d["status"] for d in docs] == ["valid"] * len(forms)
    assert {d["serial"] for d in docs} == {world.serials[7]}


def test_verify_human_output(world: World) -> None:
    good = ok("--store", world.platform, "verify", *world.keys[:3])
    lines = good.stdout.splitlines()
    assert len(lines) == 3
    for line, serial in zip(lines, world.serials):
        assert line.startswith(serial) and "valid" in line and world.supplier_name in line
    bad = kv("--store", world.platform, "verify", world.keys[0], typo(world.keys[1], 8))
    assert bad.exit_code == EXIT_REFUSED
    assert "malformed" in bad.stdout and "group 8" in bad.stdout
    assert "1 of 2 keys refused" in bad.stderr


def test_verify_from_file_and_stdin(world: World) -> None:
    keys = world.keys[:30]
    key_file = world.root / "to-check.txt"
    key_file.write_text("\n".join(keys[:10]) + "\n\n" + "\n".join(keys[10:]) + "\n")
    from_file = json_lines(ok("--store", world.platform, "verify", "--json", "--file", key_file))
    assert [d["serial"] for d in from_file] == world.serials[:30]
    assert {d["status"] for d in from_file} == {"valid"}

    also = json_lines(ok("--store", world.platform, "verify", "--json", "--file", "-",
                         input="\n".join(keys[:3]) + "\n"))
    assert [d["serial"] for d in also] == world.serials[:3]


def test_verify_from_stdin_dash(world: World) -> None:
    keys = world.keys
    mixed = keys[:5] + [typo(keys[5], 2)] + keys[6:10]
    from_stdin = kv("--store", world.platform, "verify", "--json", "-", input="\n".join(mixed) + "\n")
    assert from_stdin.exit_code == EXIT_REFUSED
    docs = json_lines(from_stdin)
    assert [d["status"] for d in docs] == ["valid"] * 5 + ["malformed"] + ["valid"] * 4
    assert [d.get("serial") for d in docs[:5]] == world.serials[:5]
    human = ok("--store", world.platform, "verify", "-", input=keys[0] + "\n")
    assert human.stdout.startswith(world.serials[0])


def test_verify_needs_exactly_one_source(world: World) -> None:
    none = kv("--store", world.platform, "verify")
    assert none.exit_code == EXIT_USAGE
    key_file = world.root / "k.txt"
    key_file.write_text(world.keys[0] + "\n")
    both = kv("--store", world.platform, "verify", world.keys[1], "--file", key_file)
    assert both.exit_code == EXIT_USAGE


# -- redeem and void -------------------------------------------------------------------------------


def test_redeem_accept_retry_and_other_order(world: World) -> None:
    key = world.keys[0]
    first = kv("--store", world.platform, "redeem", "--json", key, "--order", "ORDER-1001")
    assert first.exit_code == EXIT_OK
    accepted = json_lines(first)
    assert len(accepted) == 1
    doc = accepted[0]
    assert doc["status"] == "accepted" and doc["order_id"] == "ORDER-1001"
    assert (doc["serial"], doc["batch"], doc["supplier"]) == (world.serials[0], world.batch, world.supplier_id)
    assert doc["redeemed_at"].endswith("Z")

    retry = kv("--store", world.platform, "redeem", "--json", key, "--order", "ORDER-1001")
    assert retry.exit_code == EXIT_OK
    assert json_lines(retry) == accepted  # the very same answer, time included

    other = kv("--store", world.platform, "redeem", "--json", key, "--order", "ORDER-2002")
    assert other.exit_code == EXIT_REFUSED
    refused = json_lines(other)[0]
    assert refused["status"] == "redeemed"
    assert refused["order_id"] == "ORDER-1001" and refused["redeemed_at"] == doc["redeemed_at"]
    assert refused["serial"] == world.serials[0]

    human = kv("--store", world.platform, "redeem", key, "--order", "ORDER-3003")
    assert human.exit_code == EXIT_REFUSED and "ORDER-1001" in human.stdout and "redeemed" in human.stdout
    check = kv("--store", world.platform, "verify", "--json", key)
    assert check.exit_code == EXIT_REFUSED
    assert json_lines(check)[0]["order_id"] == "ORDER-1001"
    assert stats(world.platform)["totals"]["redeemed"] == 1


def test_redeem_from_stdin(world: World) -> None:
    piped = ok("--store", world.platform, "redeem", "--json", "-", "--order", "W-2", input=world.keys[2] + "\n")
    assert one_json(piped)["status"] == "accepted" and one_json(piped)["serial"] == world.serials[2]


def test_void_from_stdin(world: World) -> None:
    piped = ok("--store", world.platform, "void", "--json", "-", "--reason", "refund", input=world.keys[2] + "\n")
    assert one_json(piped)["status"] == "void" and one_json(piped)["serial"] == world.serials[2]


def test_redeem_human(world: World) -> None:
    human = ok("--store", world.platform, "redeem", world.keys[1], "--order", "W-1")
    assert world.serials[1] in human.stdout and "accepted" in human.stdout and "W-1" in human.stdout
    malformed = kv("--store", world.platform, "redeem", "--json", typo(world.keys[3], 5), "--order", "W-3")
    assert malformed.exit_code == EXIT_REFUSED
    assert one_json(malformed)["status"] == "malformed" and one_json(malformed)["group"] == 5


def test_void_by_key_and_by_serial(world: World) -> None:
    by_key = kv("--store", world.platform, "void", "--json", world.keys[0], "--reason", "customer refund")
    assert by_key.exit_code == EXIT_OK
    doc = one_json(by_key)
    assert doc["status"] == "void" and doc["reason"] == "customer refund" and doc["serial"] == world.serials[0]
    assert doc["batch"] == world.batch and doc["supplier"] == world.supplier_id

    human = ok("--store", world.platform, "void", world.serials[1], "--reason", "recall")
    assert world.serials[1] in human.stdout and "void" in human.stdout

    for i, reason in ((0, "customer refund"), (1, "recall")):
        check = kv("--store", world.platform, "verify", "--json", world.keys[i])
        assert check.exit_code == EXIT_REFUSED
        line = json_lines(check)[0]
        assert line["status"] == "void" and line["reason"] == reason
        spend = kv("--store", world.platform, "redeem", "--json", world.keys[i], "--order", f"late-{i}")
        assert spend.exit_code == EXIT_REFUSED and one_json(spend)["status"] == "void"
    assert stats(world.platform)["totals"]["void"] == 2


def test_void_of_redeemed_key_is_refused(world: World) -> None:
    ok("--store", world.platform, "redeem", world.keys[0], "--order", "KEEP-1")
    for target in (world.keys[0], world.serials[0]):
        result = kv("--store", world.platform, "void", "--json", target, "--reason", "refund")
        assert result.exit_code == EXIT_REFUSED
        doc = one_json(result)
        assert doc["status"] == "redeemed" and doc["order_id"] == "KEEP-1"
    again = one_json(ok("--store", world.platform, "redeem", "--json", world.keys[0], "--order", "KEEP-1"))
    assert again["status"] == "accepted"
    totals = stats(world.platform)["totals"]
    assert (totals["redeemed"], totals["void"]) == (1, 0)


def test_void_unknown_serial_is_refused(world: World) -> None:
    missing = f"{world.batch}-{_fast.format_serial(parse_serial(world.serials[-1]) + 1)[7:]}"
    result = kv("--store", world.platform, "void", "--json", missing, "--reason", "refund")
    assert result.exit_code == EXIT_REFUSED and one_json(result)["status"] == "unknown"


# -- blacklist -------------------------------------------------------------------------------------


def _status_of(world: World, key: str) -> dict[str, Any]:
    result = kv("--store", world.platform, "verify", "--json", key)
    doc = json_lines(result)[0]
    assert result.exit_code == (EXIT_OK if doc["status"] == "valid" else EXIT_REFUSED)
    return doc


def test_blacklist_by_key(world: World) -> None:
    added = one_json(ok("--store", world.platform, "blacklist", "add", "--key", world.keys[0], "--reason",
                        "sold on a grey market", "--json"))
    assert added == {**added, "level": "key", "target": world.serials[0], "reason": "sold on a grey market"}
    doc = _status_of(world, world.keys[0])
    assert (doc["status"], doc["level"], doc["reason"]) == ("blacklisted", "key", "sold on a grey market")
    assert _status_of(world, world.keys[1])["status"] == "valid"
    refused = kv("--store", world.platform, "redeem", "--json", world.keys[0], "--order", "B-1")
    assert refused.exit_code == EXIT_REFUSED and one_json(refused)["status"] == "blacklisted"

    ok("--store", world.platform, "blacklist", "add", "--key", world.keys[1], "--reason", "leaked")
    assert _status_of(world, world.keys[1])["status"] == "blacklisted"

    listed = one_json(ok("--store", world.platform, "blacklist", "list", "--json"))
    assert sorted((e["level"], e["target"]) for e in listed) == [("key", world.serials[0]), ("key", world.serials[1])]

    lifted = one_json(ok("--store", world.platform, "blacklist", "lift", "--key", world.keys[0], "--reason",
                         "cleared by support", "--json"))
    assert (lifted["level"], lifted["target"], lifted["reason"]) == ("key", world.serials[0], "cleared by support")
    assert _status_of(world, world.keys[0])["status"] == "valid"
    assert [e["target"] for e in one_json(ok("--store", world.platform, "blacklist", "list", "--json"))] == [
        world.serials[1]]


def test_blacklist_key_from_stdin(world: World) -> None:
    """The key may come from stdin, to keep it out of the process list."""
    ok("--store", world.platform, "blacklist", "add", "--key", "-", "--reason", "leaked", input=world.keys[1] + "\n")
    assert _status_of(world, world.keys[1])["status"] == "blacklisted"
    ok("--store", world.platform, "blacklist", "lift", "--key", "-", "--reason", "ok", input=world.keys[1] + "\n")
    assert _status_of(world, world.keys[1])["status"] == "valid"


def test_blacklist_by_serial(world: World) -> None:
    human = ok("--store", world.platform, "blacklist", "add", "--serial", world.serials[2], "--reason", "stolen")
    assert "blacklisted key" in human.stdout and world.serials[2] in human.stdout
    doc = _status_of(world, world.keys[2])
    assert (doc["status"], doc["level"], doc["reason"]) == ("blacklisted", "key", "stolen")
    human = ok("--store", world.platform, "blacklist", "lift", "--serial", world.serials[2], "--reason", "found")
    assert "lifted" in human.stdout
    assert _status_of(world, world.keys[2])["status"] == "valid"


def test_blacklist_by_batch(world: World) -> None:
    ok("--store", world.platform, "blacklist", "add", "--batch", world.batch, "--reason", "lot stolen in transit")
    for key in (world.keys[0], world.keys[-1]):
        doc = _status_of(world, key)
        assert (doc["status"], doc["level"], doc["reason"]) == ("blacklisted", "batch", "lot stolen in transit")
    s = stats(world.platform)
    assert s["batches"][0]["batch_blacklisted"] is True and s["totals"]["blacklist_entries"] == 1
    ok("--store", world.platform, "blacklist", "lift", "--batch", world.batch, "--reason", "lot recovered")
    assert _status_of(world, world.keys[0])["status"] == "valid"
    assert stats(world.platform)["batches"][0]["batch_blacklisted"] is False


def test_blacklist_by_supplier_id_and_prefix(world: World) -> None:
    added = one_json(ok("--store", world.platform, "blacklist", "add", "--supplier", world.supplier_id, "--reason",
                        "supplier banned for life", "--json"))
    assert (added["level"], added["target"]) == ("supplier", world.supplier_id)
    doc = _status_of(world, world.keys[3])
    assert (doc["status"], doc["level"], doc["reason"]) == ("blacklisted", "supplier", "supplier banned for life")
    assert stats(world.platform)["suppliers"][0]["supplier_blacklisted"] is True
    # Lifted by issuer prefix, which names the same supplier.
    ok("--store", world.platform, "blacklist", "lift", "--supplier", world.prefix, "--reason", "appeal won")
    assert _status_of(world, world.keys[3])["status"] == "valid"
    ok("--store", world.platform, "blacklist", "add", "--supplier", world.prefix, "--reason", "again")
    assert _status_of(world, world.keys[3])["level"] == "supplier"


def test_blacklist_broadest_entry_wins(world: World) -> None:
    ok("--store", world.platform, "blacklist", "add", "--key", world.keys[0], "--reason", "key-level")
    ok("--store", world.platform, "blacklist", "add", "--batch", world.batch, "--reason", "batch-level")
    assert _status_of(world, world.keys[0])["level"] == "batch"
    ok("--store", world.platform, "blacklist", "remove", "--batch", world.batch, "--reason", "done")
    assert _status_of(world, world.keys[0])["level"] == "key"


def test_blacklist_lifting_needs_a_reason(world: World) -> None:
    ok("--store", world.platform, "blacklist", "add", "--batch", world.batch, "--reason", "stolen")
    no_reason = kv("--store", world.platform, "blacklist", "remove", "--batch", world.batch)
    assert no_reason.exit_code == EXIT_USAGE and "--reason" in no_reason.output
    empty_reason = kv("--store", world.platform, "blacklist", "remove", "--batch", world.batch, "--reason", "  ")
    assert empty_reason.exit_code == EXIT_ERROR and "reason" in empty_reason.stderr
    assert _status_of(world, world.keys[0])["status"] == "blacklisted"
    assert len(one_json(ok("--store", world.platform, "blacklist", "list", "--json"))) == 1


def test_blacklist_target_rules(world: World) -> None:
    none = kv("--store", world.platform, "blacklist", "add", "--reason", "x")
    assert none.exit_code == EXIT_USAGE
    two = kv("--store", world.platform, "blacklist", "add", "--batch", world.batch, "--serial", world.serials[0],
             "--reason", "x")
    assert two.exit_code == EXIT_USAGE
    not_listed = kv("--store", world.platform, "blacklist", "remove", "--batch", world.batch, "--reason", "x")
    assert not_listed.exit_code == EXIT_ERROR and "not blacklisted" in not_listed.stderr
    assert one_json(ok("--store", world.platform, "blacklist", "list", "--json")) == []


def test_blacklist_list_human(world: World) -> None:
    empty = ok("--store", world.platform, "blacklist", "list")
    assert "empty" in empty.stdout
    ok("--store", world.platform, "blacklist", "add", "--serial", world.serials[4], "--reason", "chargeback")
    ok("--store", world.platform, "blacklist", "add", "--supplier", world.supplier_id, "--reason", "fraud ring")
    lines = ok("--store", world.platform, "blacklist", "list").stdout.splitlines()
    assert len(lines) == 2
    assert any(world.serials[4] in line and "chargeback" in line and "key" in line for line in lines)
    assert any(world.supplier_id in line and "fraud ring" in line for line in lines)


# -- stats and trace -------------------------------------------------------------------------------


def test_stats_json_figures(world: World) -> None:
    p = world.platform
    n = len(world.keys)
    ok("--store", p, "redeem", world.keys[0], "--order", "S-1")
    ok("--store", p, "redeem", world.keys[0], "--order", "S-1")  # a retry is not a refusal
    assert kv("--store", p, "redeem", world.keys[0], "--order", "S-2").exit_code == EXIT_REFUSED  # redeemed
    ok("--store", p, "redeem", world.keys[1], "--order", "S-3")
    ok("--store", p, "void", world.keys[2], "--reason", "refund")
    ok("--store", p, "blacklist", "add", "--key", world.keys[3], "--reason", "fraud")
    assert kv("--store", p, "verify", world.keys[3]).exit_code == EXIT_REFUSED  # blacklisted
    assert kv("--store", p, "verify", world.keys[2], world.keys[2]).exit_code == EXIT_REFUSED  # void x2
    assert kv("--store", p, "verify", forged(world.serials[5])).exit_code == EXIT_REFUSED  # unknown, in the batch
    assert kv("--store", p, "verify", typo(world.keys[6], 4)).exit_code == EXIT_REFUSED  # malformed: no batch
    ok("--store", p, "verify", *world.keys[4:10])  # valid: not counted as refusals

    doc = stats(p)
    t = doc["totals"]
    assert (t["suppliers"], t["batches"], t["keys"], t["issued"], t["imported"]) == (1, 1, n, 0, n)
    assert (t["redeemed"], t["void"], t["blacklisted"], t["active"]) == (2, 1, 1, n - 4)  # each key counted once
    assert t["blacklist_entries"] == 1
    assert t["refused"] == {"blacklisted": 1, "malformed": 1, "redeemed": 1, "unknown": 1, "void": 2}
    assert t["refused_total"] == 6

    (b,) = doc["batches"]
    assert (b["batch"], b["supplier"], b["product"], b["count"], b["kind"]) == (world.batch, world.supplier_id,
                                                                               world.product, n, "native")
    assert (b["redeemed"], b["void"], b["blacklisted"], b["active"]) == (2, 1, 1, n - 4)
    assert b["refused"] == {"blacklisted": 1, "redeemed": 1, "unknown": 1, "void": 2} and b["refused_total"] == 5
    (s,) = doc["suppliers"]
    assert (s["supplier"], s["name"], s["prefix"], s["batches"], s["keys"]) == (world.supplier_id,
                                                                                world.supplier_name, world.prefix, 1, n)
    assert (s["redeemed"], s["void"], s["blacklisted"], s["refused_total"]) == (2, 1, 1, 5)

    # The supplier's store saw none of this.
    st = stats(world.supplier_store)["totals"]
    assert (st["keys"], st["issued"], st["imported"], st["redeemed"], st["void"]) == (n, n, 0, 0, 0)


def test_stats_human(world: World) -> None:
    ok("--store", world.platform, "redeem", world.keys[0], "--order", "H-1")
    out = ok("--store", world.platform, "stats").stdout
    assert f"{len(world.keys)} keys in 1 batch from 1 supplier:" in out
    assert "1 redeemed" in out
    assert world.batch in out and world.supplier_name in out and world.supplier_id in out


def test_trace_by_key_and_by_serial(world: World) -> None:
    ok("--store", world.platform, "redeem", world.keys[0], "--order", "T-77")
    by_key = one_json(ok("--store", world.platform, "trace", "--json", world.keys[0]))
    by_serial = one_json(ok("--store", world.platform, "trace", "--json", world.serials[0]))
    # The same story; each checked its own fresh bundle (by key, the key opened its commitment too).
    assert by_key.pop("verification")["ok"] and by_serial.pop("verification")["ok"]
    assert by_key == by_serial
    assert by_key["serial"] == world.serials[0] and by_key["index"] == 0
    assert by_key["supplier"]["id"] == world.supplier_id and by_key["supplier"]["name"] == world.supplier_name
    assert by_key["batch"]["batch"] == world.batch and by_key["batch"]["product"] == world.product
    assert by_key["status"]["status"] == "redeemed" and by_key["status"]["order_id"] == "T-77"
    types = [e["type"] for e in by_key["events"]]
    assert types == ["trust", "supplier", "import", "redeem"]
    assert by_key["events"][-1]["order_id"] == "T-77"
    human = ok("--store", world.platform, "trace", world.serials[0]).stdout
    for text in (world.serials[0], world.supplier_name, world.supplier_id, world.product, world.batch,
                 "redeemed by order T-77"):
        assert text in human
    assert world.keys[0] not in human

    # The supplier's store tells its own side of the story.
    own = one_json(ok("--store", world.supplier_store, "trace", "--json", world.serials[1]))
    assert [e["type"] for e in own["events"]] == ["trust", "supplier", "issue"]
    assert own["status"]["status"] == "valid"


def test_trace_from_stdin(world: World) -> None:
    by_serial = one_json(ok("--store", world.platform, "trace", "--json", world.serials[0]))
    piped = one_json(ok("--store", world.platform, "trace", "--json", "-", input=world.keys[0] + "\n"))
    assert piped.pop("verification")["ok"] and by_serial.pop("verification")["ok"]
    assert piped == by_serial


def test_trace_shows_void_and_blacklist_history(world: World) -> None:
    ok("--store", world.platform, "void", world.keys[5], "--reason", "refund #12")
    ok("--store", world.platform, "blacklist", "add", "--batch", world.batch, "--reason", "audit")
    doc = one_json(ok("--store", world.platform, "trace", "--json", world.keys[5]))
    assert [e["type"] for e in doc["events"]][-2:] == ["void", "blacklist"]
    assert doc["blacklist"][0]["level"] == "batch" and doc["status"]["status"] == "void"
    human = ok("--store", world.platform, "trace", world.keys[5]).stdout
    assert "voided: refund #12" in human and "audit" in human


def test_trace_of_unknown_key_is_an_error(world: World) -> None:
    result = kv("--store", world.platform, "trace", forged(world.serials[0]))
    assert result.exit_code == EXIT_ERROR and "not in this store" in result.stderr


# -- demo ------------------------------------------------------------------------------------------


def test_demo_json_summary(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    doc = one_json(ok("demo", "--count", 30, "--json", "--dir", keep))
    assert doc["count"] == 30 and doc["retry_matches_first"] is True and doc["proof_checks_pass"] is True
    assert doc["compiled"] is _fast.COMPILED
    t = doc["totals"]
    assert (t["keys"], t["redeemed"], t["void"], t["blacklist_entries"]) == (30, 1, 1, 1)
    assert t["refused"] == {"blacklisted": 1, "malformed": 1, "redeemed": 1, "void": 1}
    assert all(rate > 0 for rate in doc["rates"].values())
    assert stat.S_IMODE((keep / "keys.csv").stat().st_mode) == 0o600
    # The demo's platform store is a real store that the CLI can open.
    assert stats(keep / "platform-store")["totals"]["redeemed"] == 1


def test_demo_human(tmp_path: Path) -> None:
    result = ok("demo", "--count", 20, "--dir", tmp_path / "d")
    out = result.stdout
    assert "the retry got the first answer: True" in out
    assert "already redeemed by order ORDER-1001" in out
    assert "blacklisted" in out and "Summary" in out
    keys, _ = read_keys(tmp_path / "d" / "keys.csv")
    assert not any(k in result.output for k in keys)


# -- exit codes, --store and the installed script ------------------------------------------------


def test_usage_errors_exit_2(world: World) -> None:
    assert kv("stats", "--json").exit_code == EXIT_USAGE  # no --store
    assert kv("verify", world.keys[0]).exit_code == EXIT_USAGE
    assert kv("init").exit_code == EXIT_USAGE
    assert kv("--store", world.platform, "no-such-command").exit_code == EXIT_USAGE
    assert kv("--store", world.platform, "redeem", world.keys[0]).exit_code == EXIT_USAGE  # no --order
    assert kv("--store", world.platform, "void", world.keys[0]).exit_code == EXIT_USAGE  # no --reason
    assert kv("--store", world.platform, "batch", "issue", "--supplier", world.identity, "--product", "P",
              "--count", 0, "--keys-out", world.root / "x.csv", "--manifest-out", world.root / "x.kvm"
              ).exit_code == EXIT_USAGE
    # Nothing was spent by all that.
    assert stats(world.platform)["totals"]["active"] == len(world.keys)


def test_store_from_environment(world: World) -> None:
    env = {"KEYVAULT_STORE": str(world.platform)}
    assert one_json(ok("stats", "--json", env=env))["totals"]["keys"] == len(world.keys)
    assert json_lines(ok("verify", "--json", world.keys[0], env=env))[0]["status"] == "valid"


def test_help_lists_every_command() -> None:
    out = ok("--help").stdout
    for command in ("init", "supplier", "batch", "manifest", "verify", "redeem", "void", "blacklist", "stats",
                    "trace", "demo"):
        assert command in out
    codes = out[out.index("Exit codes"):]
    assert all(digit in codes for digit in "0123"), codes


def _script() -> str:
    beside = Path(sys.executable).parent / "keyvault"
    found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("keyvault")
    assert found, "the `keyvault` console script is not installed"
    return found


def _process_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KEYVAULT_") or k in (
        "KEYVAULT_NO_EXTENSIONS", "KEYVAULT_REQUIRE_EXTENSIONS")}


def test_installed_console_script(world: World) -> None:
    script = _script()
    env = _process_env()
    help_ = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert help_.returncode == 0 and "verify" in help_.stdout and "redeem" in help_.stdout

    keys = "\n".join(world.keys[:3] + [typo(world.keys[3], 7)]) + "\n"
    run = subprocess.run([script, "--store", str(world.platform), "verify", "--json", "-"], input=keys,
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == EXIT_REFUSED, run.stderr
    docs = [json.loads(line) for line in run.stdout.splitlines()]
    assert [d["status"] for d in docs] == ["valid", "valid", "valid", "malformed"]
    assert "Traceback" not in run.stderr

    usage = subprocess.run([script, "stats"], capture_output=True, text=True, env=env, timeout=60)
    assert usage.returncode == EXIT_USAGE and "Traceback" not in usage.stderr


def test_blacklist_from_another_process_takes_effect_on_next_verify(world: World) -> None:
    script = _script()
    with Vault.open(world.platform) as vault:
        assert vault.verify(world.keys[0]).status is Status.VALID
        done = subprocess.run([script, "--store", str(world.platform), "blacklist", "add", "--batch", world.batch,
                               "--reason", "reported stolen"], capture_output=True, text=True,
                              env=_process_env(), timeout=60)
        assert done.returncode == 0, done.stderr
        result = vault.verify(world.keys[0])
        assert result.status is Status.BLACKLISTED and result.level == "batch"
        assert result.reason == "reported stolen"
