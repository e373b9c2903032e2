"""The plaintext sweep: no key, code or password anywhere but the one printable export.

Keys are issued (native) and upstream cards imported (single codes, and card
numbers with passwords: long random values, so a chance match is impossible).
Then every command runs on the supplier's store and the platform's store,
human and --json, including the error paths; every byte the CLI prints and
every exception and repr the library makes is kept. At the end every file of
both stores (and the manifests and identities beside them) is read as bytes
and searched for every key in every form that could leak: display form,
canonical form, the secret part alone, any case, as UTF-8, UTF-16-LE and
UTF-16-BE. The printable export is the one allowed place, and it is 0600.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import secrets
import stat
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from keyvault import Identity, KeyvaultError, Result, Vault, _fast
from keyvault.cli.main import cli

from cli_support import ok, trust_cli
from keyvault.formats.keyformat import display_key, parse_batch, parse_prefix, parse_serial

ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KEYVAULT_") and name not in ("KEYVAULT_NO_EXTENSIONS", "KEYVAULT_REQUIRE_EXTENSIONS"):
            monkeypatch.delenv(name)


# -- what must never leak, and how it is searched for ----------------------------------------------


def key_forms(key: str) -> list[str]:
    """Every text form of a native key that would give it away (searched case-insensitively)."""
    canonical = key.replace("-", "").upper()
    assert len(canonical) == _fast.KEY_SYMBOLS
    groups = display_key(canonical).split("-")
    return [
        display_key(canonical),  # as printed
        canonical,  # as stored by a careless engine
        canonical[13:29],  # the 80-bit secret alone
        "-".join(groups[4:7]),  # the secret's middle 12 symbols, as printed
        " ".join(groups),  # as some people type it
    ]


def text_forms(value: str) -> list[str]:
    """An upstream code or password: as given and as folded (case is handled by the search)."""
    return sorted({value, value.replace("-", "").replace(" ", "")})


def needles(forms: Iterable[str]) -> list[bytes]:
    """Lower-cased byte patterns for every form in every encoding."""
    out = set()
    for form in forms:
        assert len(form) >= 12, "a needle this short could match by chance"
        for encoding in ENCODINGS:
            out.add(form.lower().encode(encoding))
    return sorted(out)


def find_leaks(haystack: bytes, patterns: dict[bytes, str]) -> list[str]:
    """The labels of the patterns found in ``haystack`` (compared lower-cased)."""
    lowered = haystack.lower()
    return sorted({label for pattern, label in patterns.items() if pattern in lowered})


def text_leaks(text: str, forms: dict[str, str]) -> list[str]:
    lowered = text.lower()
    return sorted({label for form, label in forms.items() if form.lower() in lowered})


def files_under(*roots: Path, skip: Iterable[Path] = ()) -> Iterator[Path]:
    excluded = {p.resolve() for p in skip}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.resolve() not in excluded:
                yield path


@dataclass
class Secrets:
    """Everything secret in a sweep, with a label per form (the label never holds the secret)."""

    text: dict[str, str] = field(default_factory=dict)  # form -> label

    def add_key(self, key: str, label: str) -> None:
        for i, form in enumerate(key_forms(key)):
            self.text[form] = f"{label} (form {i})"

    def add_value(self, value: str, label: str) -> None:
        for i, form in enumerate(text_forms(value)):
            self.text[form] = f"{label} (form {i})"

    def add_bytes(self, raw: bytes, label: str) -> None:
        self.text[raw.hex()] = f"{label} (hex)"

    def patterns(self) -> dict[bytes, str]:
        out: dict[bytes, str] = {}
        for form, label in self.text.items():
            for pattern in needles([form]):
                out[pattern] = label
        return out


# -- the search itself must be able to fail ----------------------------------------------------------


def test_the_search_finds_every_form_and_encoding() -> None:
    key = display_key(_fast.encode_key(0x123456789ABCDEF, secrets.randbits(80)))
    found = Secrets()
    found.add_key(key, "k")
    patterns = found.patterns()
    for form in key_forms(key):
        for encoding in ENCODINGS:
            for case in (form, form.lower()):
                blob = os.urandom(300) + case.encode(encoding) + os.urandom(300)
                assert find_leaks(blob, patterns), (form, encoding)
    # A key split only by LMDB page boundaries is not our concern; a random blob must not match.
    assert find_leaks(os.urandom(1 << 16), patterns) == []
    assert text_leaks(f"oops {key.lower().replace('-', '')}!", found.text)


# -- the sweep ---------------------------------------------------------------------------------------


class Recorder:
    """Runs the CLI and keeps every character it prints (stdout and stderr) and every exception."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.runs = 0
        self.problems: list[str] = []  # crashes and unexpected exit codes, told without the arguments

    def __call__(self, *args: object, input: str | None = None, expect: int | None = None) -> None:
        result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
        self.runs += 1
        self.texts += [result.stdout, result.stderr, result.output]
        words = [str(a) for a in args[:4]]
        command = " ".join(w for w in words if w.isalpha() or w in ("--json",))  # never a key or a path
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            assert result.exc_info is not None
            self.texts.append("".join(traceback.format_exception(*result.exc_info)))
            self.problems.append(f"run {self.runs} ({command}): raised {result.exception!r}"[:300])
        elif expect is not None and result.exit_code != expect:
            self.problems.append(f"run {self.runs} ({command}): exit {result.exit_code}, expected {expect}")

    def library(self, thing: object) -> None:
        """Keep what a library call made: a result's repr, or an exception's message, repr and traceback."""
        self.texts.append(repr(thing))
        if isinstance(thing, BaseException):
            self.texts += [str(thing), *map(str, thing.args),
                           "".join(traceback.format_exception(type(thing), thing, thing.__traceback__))]
        elif isinstance(thing, Result):
            self.texts += [str(thing), json.dumps(thing.to_dict())]


def typo(key: str) -> str:
    """One character of the secret (group 6) replaced."""
    groups = key.split("-")
    g = groups[5]
    groups[5] = g[:2] + ("X" if g[2] != "X" else "Y") + g[3:]
    return "-".join(groups)


def forged(serial: str) -> str:
    return display_key(_fast.encode_key(parse_serial(serial), secrets.randbits(80)))


def read_csv_keys(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["key"] for r in rows], [r["serial"] for r in rows]


@dataclass
class Sweep:
    root: Path
    stores: list[Path]
    exports: list[Path]
    inputs: Path
    secrets: Secrets
    rec: Recorder
    keys: list[str]
    codes: list[str]
    cards: list[tuple[str, str]]


def _run_everything(root: Path) -> Sweep:
    rec = Recorder()
    found = Secrets()
    inputs, exports = root / "inputs", root / "exports"
    inputs.mkdir(parents=True)
    exports.mkdir()
    sup, plat = root / "supplier-store", root / "platform-store"
    identity = root / "acme.identity"

    rec("supplier", "init", "--name", "Acme Games", "--out", identity, "--json", expect=0)
    for store in (sup, plat):
        rec("--store", store, "init", expect=0)
        rec("--store", store, "init", "--json", expect=1)  # refused: already a store
    trust_cli(plat, identity)

    # Native keys: a CSV export and a JSON export.
    keys_csv, keys_json = exports / "keys.csv", exports / "keys.json"
    rec("--store", sup, "batch", "issue", "--supplier", identity, "--product", "POINTS-100", "--count", 60,
        "--keys-out", keys_csv, "--manifest-out", root / "native.kvm", "--json", expect=0)
    rec("--store", sup, "batch", "issue", "--supplier", identity, "--product", "POINTS-500", "--count", 30,
        "--valid-days", 10, "--keys-out", keys_json, "--manifest-out", root / "native2.kvm", expect=0)
    keys, serials = read_csv_keys(keys_csv)
    doc = json.loads(keys_json.read_text())
    keys2, serials2 = [k["key"] for k in doc["keys"]], [k["serial"] for k in doc["keys"]]

    # Upstream cards: long random codes, and card numbers with passwords.
    codes = ["Gc" + secrets.token_hex(14) for _ in range(30)]
    cards = [(f"6200{secrets.randbelow(10**14):014d}", "Pw" + secrets.token_hex(12)) for _ in range(30)]
    (inputs / "codes.csv").write_text("code\n" + "".join(f"{c}\n" for c in codes))
    (inputs / "cards.csv").write_text("card_number,password\n" + "".join(f"{n},{p}\n" for n, p in cards))
    rec("--store", sup, "batch", "import", "--supplier", identity, "--product", "STEAM-50", inputs / "codes.csv",
        "--manifest-out", root / "codes.kvm", "--json", expect=0)
    rec("--store", sup, "batch", "import", "--supplier", identity, "--product", "PHONE-30", inputs / "cards.csv",
        "--manifest-out", root / "cards.kvm", expect=0)

    for i, key in enumerate(keys + keys2):
        found.add_key(key, f"native key {i}")
    for i, code in enumerate(codes):
        found.add_value(code, f"code {i}")
    for i, (_, password) in enumerate(cards):
        found.add_value(password, f"password {i}")

    # Bad upstream CSVs whose error messages must not quote the cards.
    bad_csvs = {
        "dupe.csv": f"code\n{codes[0]}\n{codes[1]}\n{codes[0].upper()}\n",
        "colon.csv": f"code\n{codes[2]}:{codes[3]}\n",
        "native.csv": f"code\n{keys[0]}\n",
        "long.csv": "code\n" + codes[4] * 6 + "\n",
        "nopass.csv": f"card_number,password\n{cards[0][0]},\n{cards[1][0]},{cards[1][1]}\n",
        "short.csv": f"card_number,password,note\n{cards[2][0]},{cards[2][1]},x\n{cards[3][1]}\n",
    }
    for name, text in bad_csvs.items():
        (inputs / name).write_text(text)
        rec("--store", sup, "batch", "import", "--supplier", identity, "--product", "BAD", inputs / name,
            "--manifest-out", root / f"{name}.kvm", "--json", expect=1)

    for manifest in ("native.kvm", "native2.kvm", "codes.kvm", "cards.kvm"):
        rec("--store", plat, "manifest", "import", root / manifest, "--json", expect=0)
        rec("--store", plat, "manifest", "import", root / manifest, expect=0)  # again: nothing changes
    rec("--store", plat, "manifest", "import", keys_csv, expect=1)  # the export is not a manifest

    # Provenance with a key in hand: a bundle made from the key, checked with the key.
    engine = root / "platform-engine.pub"
    engine.write_bytes(ok("--store", plat, "identity", "show", "--public").stdout_bytes)
    rec("--store", plat, "redeem", keys[40], "--order", "ORDER-40", expect=0)
    rec("--store", plat, "trace", keys[40], "--bundle", root / "bundle.json", expect=0)
    rec("--store", plat, "trace", keys[41], "--json", expect=0)
    rec("verify-bundle", root / "bundle.json", "--trust", identity.with_suffix(".pub"), "--trust", engine, "--key",
        keys[40], expect=0)
    rec("verify-bundle", root / "bundle.json", "--trust", identity.with_suffix(".pub"), "--trust", engine, "--key",
        keys[41], "--json", expect=3)
    rec("--store", plat, "audit", expect=0)
    rec("--store", plat, "checkpoint", expect=0)

    # Key lists fed to --file and stdin.
    (inputs / "check.txt").write_text("\n".join(keys[:20] + [typo(keys[20]), keys[21].lower()]) + "\n")
    for store in (sup, plat):
        rec("--store", store, "verify", *keys[:5], expect=0)
        rec("--store", store, "verify", "--json", *keys[5:10], typo(keys[10]), forged(serials[11]), expect=3)
        rec("--store", store, "verify", "--file", inputs / "check.txt", expect=3)
        rec("--store", store, "verify", "--json", "--file", inputs / "check.txt", expect=3)
        rec("--store", store, "verify", "--json", "-", input="\n".join(keys2[:10] + codes[:5]) + "\n", expect=0)
        rec("--store", store, "verify", "-", input="\n".join(f"{n}:{p}" for n, p in cards[:5]) + "\n", expect=0)
        rec("--store", store, "verify", "--json", f"{cards[5][0]}:{cards[6][1]}", codes[6][:-1] + "Q0", expect=3)
        rec("--store", store, "verify", "--json", "--file", keys_csv, expect=3)  # a CSV line is not a key
        rec("--store", store, "verify", "--json", keys[12] + "7", keys[13][:-3], expect=3)

        # Redeem: accepted, retried, refused for another order; typos; empty order ids.
        rec("--store", store, "redeem", keys[30], "--order", "ORDER-1", expect=0)
        rec("--store", store, "redeem", "--json", keys[30], "--order", "ORDER-1", expect=0)
        rec("--store", store, "redeem", "--json", keys[30], "--order", "ORDER-2", expect=3)
        rec("--store", store, "redeem", keys[30], "--order", "ORDER-3", expect=3)
        rec("--store", store, "redeem", "--json", "-", "--order", "ORDER-4", input=keys2[0] + "\n", expect=0)
        rec("--store", store, "redeem", "--json", codes[7], "--order", "ORDER-5", expect=0)
        rec("--store", store, "redeem", f"{cards[7][0]}:{cards[7][1]}", "--order", "ORDER-6", expect=0)
        rec("--store", store, "redeem", "--json", f"{cards[7][0]}:{cards[7][1]}", "--order", "ORDER-7", expect=3)
        rec("--store", store, "redeem", "--json", typo(keys[31]), "--order", "ORDER-8", expect=3)
        rec("--store", store, "redeem", forged(serials[31]), "--order", "ORDER-8", expect=3)
        rec("--store", store, "redeem", keys[32], "--order", "", expect=1)
        rec("--store", store, "redeem", "--json", keys[32], "--order", "   ", expect=1)

        # Void: by key, by serial, of a redeemed key, of a typo, without a reason.
        rec("--store", store, "void", keys[33], "--reason", "refund", expect=0)
        rec("--store", store, "void", "--json", serials[34], "--reason", "recall", expect=0)
        rec("--store", store, "void", "--json", codes[8], "--reason", "refund", expect=0)
        rec("--store", store, "void", "--json", keys[30], "--reason", "refund", expect=3)
        rec("--store", store, "void", typo(keys[35]), "--reason", "refund", expect=3)
        rec("--store", store, "void", "--json", keys[35], "--reason", "", expect=1)
        rec("--store", store, "void", "-", "--reason", "refund", input=keys[36] + "\n", expect=0)

        # Blacklist at every level, and every way of getting it wrong.
        rec("--store", store, "blacklist", "add", "--key", keys[40], "--reason", "grey market", "--json", expect=0)
        rec("--store", store, "blacklist", "add", "--key", "-", "--reason", "leak", input=codes[9] + "\n", expect=0)
        rec("--store", store, "blacklist", "add", "--key", f"{cards[9][0]}:{cards[9][1]}", "--reason", "x", expect=0)
        rec("--store", store, "blacklist", "add", "--serial", serials[41], "--reason", "stolen", expect=0)
        rec("--store", store, "blacklist", "add", "--batch", serials2[0][:8], "--reason", "lot lost", expect=0)
        rec("--store", store, "verify", "--json", keys[40], keys[41], keys2[1], codes[9], expect=3)
        rec("--store", store, "blacklist", "add", "--key", typo(keys[42]), "--reason", "x", expect=1)
        rec("--store", store, "blacklist", "add", "--key", forged(serials[42]), "--reason", "x", expect=1)
        rec("--store", store, "blacklist", "add", "--serial", keys[42], "--reason", "x", expect=1)
        rec("--store", store, "blacklist", "add", "--batch", keys[42], "--reason", "x", "--json", expect=1)
        rec("--store", store, "blacklist", "add", "--supplier", keys[42], "--reason", "x", expect=1)
        rec("--store", store, "blacklist", "add", "--key", codes[10][:-2], "--reason", "x", expect=1)
        rec("--store", store, "blacklist", "add", "--key", keys[43], "--reason", "", expect=1)
        rec("--store", store, "blacklist", "remove", "--key", keys[44], "--reason", "x", expect=1)
        rec("--store", store, "blacklist", "list", expect=0)
        rec("--store", store, "blacklist", "list", "--json", expect=0)
        rec("--store", store, "blacklist", "remove", "--key", keys[40], "--reason", "cleared", "--json", expect=0)
        rec("--store", store, "blacklist", "remove", "--batch", serials2[0][:8], "--reason", "found", expect=0)
        rec("--store", store, "blacklist", "add", "--supplier", serials[0][:4], "--reason", "banned", expect=0)
        rec("--store", store, "verify", *keys[45:48], expect=3)
        rec("--store", store, "blacklist", "remove", "--supplier", serials[0][:4], "--reason", "appeal", expect=0)

        # Trace and stats.
        for target in (keys[30], serials[30], codes[7], f"{cards[7][0]}:{cards[7][1]}", keys[33]):
            rec("--store", store, "trace", target, expect=0)
            rec("--store", store, "trace", "--json", target, expect=0)
        rec("--store", store, "trace", "-", input=keys[41] + "\n", expect=0)
        rec("--store", store, "trace", typo(keys[50]), expect=1)
        rec("--store", store, "trace", "--json", forged(serials[50]), expect=1)
        rec("--store", store, "trace", codes[11][:-1], expect=1)
        rec("--store", store, "stats", expect=0)
        rec("--store", store, "stats", "--json", expect=0)

    # A platform that holds native keys only (typos are told by group there).
    native_only = root / "native-only-store"
    rec("--store", native_only, "init", expect=0)
    trust_cli(native_only, identity)
    rec("--store", native_only, "manifest", "import", root / "native.kvm", expect=0)
    rec("--store", native_only, "verify", typo(keys[1]), keys[2] + "7", keys[3][:-2], keys[4], expect=3)
    rec("--store", native_only, "verify", "--json", typo(keys[1]), keys[2] + "7", keys[3][:-2], keys[4], expect=3)
    rec("--store", native_only, "redeem", "--json", typo(keys[5]), "--order", "N-1", expect=3)
    rec("--store", native_only, "void", typo(keys[5]), "--reason", "refund", expect=3)
    rec("--store", native_only, "trace", typo(keys[5]), expect=1)
    rec("--store", native_only, "blacklist", "add", "--key", typo(keys[5]), "--reason", "x", expect=1)
    rec("--store", native_only, "stats", "--json", expect=0)

    # The demo, human and --json, keeping its files so its keys can be searched for too.
    rec("demo", "--count", 20, "--dir", root / "demo", expect=0)
    rec("demo", "--count", 15, "--dir", root / "demo-json", "--json", expect=0)
    demo_exports = [root / "demo" / "keys.csv", root / "demo-json" / "keys.csv"]
    for n, export in enumerate(demo_exports):
        for i, key in enumerate(read_csv_keys(export)[0]):
            found.add_key(key, f"demo {n} key {i}")

    # The library: exceptions and reprs made with keys in hand.
    for store in (sup, plat, native_only):
        with Vault.open(store) as vault:
            rec.library(vault)
            for thing in (keys[0], typo(keys[1]), forged(serials[2]), keys[30], keys[33], keys[40], keys[45], codes[0],
                          codes[7], f"{cards[0][0]}:{cards[0][1]}", f"{cards[0][0]}:{cards[1][1]}", keys[2].lower()):
                rec.library(vault.verify(thing))
            for r in vault.verify_many(keys[:10] + codes[:3]):
                rec.library(r)
            rec.library(vault.redeem(keys[55], "LIB-1"))
            rec.library(vault.redeem(keys[55], "LIB-2"))
            rec.library(vault.void(keys[56], "lib refund"))
            rec.library(vault.void(keys[55], "lib refund"))
            calls: list[Callable[[], object]] = [
                lambda: vault.trace(typo(keys[3])),
                lambda: vault.trace(forged(serials[3])),
                lambda: vault.trace(codes[12] + "X"),
                lambda: vault.blacklist("serial", keys[4], "r"),
                lambda: vault.blacklist("batch", keys[4], "r"),
                lambda: vault.blacklist("supplier", keys[4], "r"),
                lambda: vault.blacklist("key", typo(keys[4]), "r"),
                lambda: vault.blacklist(keys[4], keys[5], "r"),
                lambda: vault.lift("key", keys[5], "r"),
                lambda: vault.redeem(keys[6], ""),
                lambda: vault.redeem(keys[6], "x" * 500),
                lambda: vault.void(keys[6], " "),
                lambda: vault.import_manifest(keys_csv),
                lambda: vault.import_cards(Identity.load(identity), "P", inputs / "dupe.csv",
                                           manifest_out=root / "lib.kvm"),
                lambda: vault.import_cards(Identity.load(identity), "P", inputs / "native.csv",
                                           manifest_out=root / "lib.kvm"),
                lambda: vault.import_cards(Identity.load(identity), "P", inputs / "colon.csv",
                                           manifest_out=root / "lib.kvm"),
                lambda: vault.import_cards(Identity.load(identity), "P", keys_csv, manifest_out=root / "lib.kvm"),
                lambda: parse_serial(keys[7]),
                lambda: parse_batch(keys[7]),
                lambda: parse_prefix(keys[7]),
                lambda: Identity.generate(keys[8], prefix=keys[8]),
                lambda: Identity.load(keys_csv),
            ]
            for call in calls:
                try:
                    outcome = call()
                except (KeyvaultError, ValueError) as exc:
                    rec.library(exc)
                else:
                    rec.library(outcome)
    rec.library(Identity.load(identity))

    return Sweep(root, [sup, plat, native_only], [keys_csv, keys_json, *demo_exports], inputs, found, rec,
                 keys + keys2, codes, cards)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """One long session over both stores (module scope: the sweep is read by several tests)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ)
             if k.startswith("KEYVAULT_") and k not in ("KEYVAULT_NO_EXTENSIONS", "KEYVAULT_REQUIRE_EXTENSIONS")}
    try:
        return _run_everything(tmp_path_factory.mktemp("sweep"))
    finally:
        os.environ.update(saved)


def test_sweep_ran_every_command(sweep: Sweep) -> None:
    assert sweep.rec.runs > 150
    assert not sweep.rec.problems, "\n".join(sweep.rec.problems)
    joined = "\n".join(sweep.rec.texts)
    for word in ("accepted", "redeemed", "void", "blacklisted", "malformed", "unknown", "valid",
                 "already redeemed by order ORDER-1", "not in this store", "must not be empty"):
        assert word in joined, word


def _masked(text: str, forms: dict[str, str]) -> str:
    """``text`` with every secret form replaced, so a failure report does not print secrets."""
    for form in sorted(forms, key=len, reverse=True):
        text = re.sub(re.escape(form), "<SECRET>", text, flags=re.IGNORECASE)
    return text


def test_no_secret_in_any_output_or_exception(sweep: Sweep) -> None:
    leaks = []
    for text in sweep.rec.texts:
        found = text_leaks(text, sweep.secrets.text)
        if found:
            masked = _masked(text, sweep.secrets.text)
            at = masked.find("<SECRET>")
            leaks.append(f"{found[:3]} in: ...{masked[max(0, at - 200):at + 60]}...")
    assert not leaks, f"{len(leaks)} outputs hold a secret; the first: {leaks[0]}"


def test_no_secret_in_any_store_file(sweep: Sweep) -> None:
    patterns = sweep.secrets.patterns()
    searched = list(files_under(sweep.root, skip=[*sweep.exports, *sweep.inputs.rglob("*")]))
    names = {p.name for p in searched}
    assert {"data.mdb", "lock.mdb", "pepper", "native.kvm", "codes.kvm", "cards.kvm", "acme.identity"} <= names
    assert sum(p.name == "data.mdb" for p in searched) == 7  # three stores here, two per demo
    leaks = {}
    for path in searched:
        found = find_leaks(path.read_bytes(), patterns)
        if found:
            leaks[str(path.relative_to(sweep.root))] = found[:5]
    assert not leaks, f"plaintext secrets at rest: {leaks}"


def test_the_export_is_the_only_plaintext_and_it_is_0600(sweep: Sweep) -> None:
    for export in sweep.exports:
        mode = stat.S_IMODE(export.stat().st_mode)
        assert mode == 0o600, f"{export.name} has mode {mode:04o}"
    # The search does find the keys where they are allowed to be: it is not blind.
    text = b"".join(e.read_bytes() for e in sweep.exports)
    patterns = {p: label for p, label in sweep.secrets.patterns().items() if label.startswith(("native", "demo"))}
    hits = {h.split(" (")[0] for h in find_leaks(text, patterns)}
    assert {h for h in hits if h.startswith("native")} == {f"native key {i}" for i in range(len(sweep.keys))}
    assert len([h for h in hits if h.startswith("demo")]) == 20 + 15


def test_pepper_and_identity_secrets_appear_nowhere_else(sweep: Sweep) -> None:
    identity_file = sweep.root / "acme.identity"
    seed = base64.b64decode(json.loads(identity_file.read_text())["secret_key"])
    private = {"identity seed": seed}
    for store in sweep.stores:
        private[f"pepper of {store.name}"] = bytes.fromhex((store / "pepper").read_text().strip())
        engine = json.loads((store / "engine.key").read_text())["secret_key"]
        private[f"engine key of {store.name}"] = base64.b64decode(engine)
    text_forms_ = {raw.hex(): label for label, raw in private.items()}
    text_forms_.update({base64.b64encode(raw).decode(): label for label, raw in private.items()})
    for text in sweep.rec.texts:
        assert not text_leaks(text, text_forms_)
    allowed = {identity_file.resolve(), *((s / "pepper").resolve() for s in sweep.stores),
               *((s / "engine.key").resolve() for s in sweep.stores)}
    for path in files_under(sweep.root):
        if path.resolve() in allowed:
            continue
        data = path.read_bytes()
        lowered = data.lower()
        for label, raw in private.items():
            assert raw not in data, f"{label} raw in {path.name}"
            assert raw.hex().encode() not in lowered, f"{label} (hex) in {path.name}"
            assert base64.b64encode(raw) not in data, f"{label} (base64) in {path.name}"


def test_private_files_are_0600(sweep: Sweep) -> None:
    for path in [sweep.root / "acme.identity", *(s / "pepper" for s in sweep.stores),
                 *(s / "engine.key" for s in sweep.stores), *sweep.exports]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name} has mode {mode:04o}"


def test_an_unsafe_engine_key_is_refused(tmp_path: Path) -> None:
    """The engine key signs the store's checkpoints: readable by others, it is refused like the pepper."""
    Vault.init(tmp_path / "s").close()
    engine = tmp_path / "s" / "engine.key"
    engine.chmod(0o644)
    with pytest.raises(KeyvaultError, match="chmod 600"):
        Vault.open(tmp_path / "s")
    engine.chmod(0o600)
    engine.rename(tmp_path / "elsewhere.key")
    with pytest.raises(KeyvaultError, match="engine key"):
        Vault.open(tmp_path / "s")


# -- reprs -------------------------------------------------------------------------------------------


def test_reprs_hold_no_secret(tmp_path: Path) -> None:
    identity = Identity.generate("Repr Co")
    seed = bytes(identity.signing_key)
    for text in (repr(identity), str(identity)):
        assert seed.hex() not in text and base64.b64encode(seed).decode() not in text
        assert "signing_key" not in text
    with Vault.init(tmp_path / "s") as vault:
        pepper = bytes.fromhex((tmp_path / "s" / "pepper").read_text().strip())
        info = vault.issue_batch(identity, "P", 20, keys_out=tmp_path / "k.csv", manifest_out=tmp_path / "b.kvm")
        keys, _ = read_csv_keys(tmp_path / "k.csv")
        for text in (repr(vault), str(vault), repr(info)):
            assert pepper.hex() not in text.lower() and base64.b64encode(pepper).decode() not in text
        found = Secrets()
        for i, key in enumerate(keys):
            found.add_key(key, f"key {i}")
        results = [vault.verify(keys[0]), vault.redeem(keys[1], "R-1"), vault.redeem(keys[1], "R-2"),
                   vault.void(keys[2], "refund"), vault.verify(typo(keys[3])), vault.verify(keys[4].lower())]
        vault.blacklist("key", keys[5], "stolen")
        results.append(vault.verify(keys[5]))
        assert [r.status.value for r in results] == ["valid", "accepted", "redeemed", "void", "malformed", "valid",
                                                     "blacklisted"]
        for result in results:
            for text in (repr(result), str(result), json.dumps(result.to_dict())):
                assert not text_leaks(text, found.text), text_leaks(text, found.text)
        entries = vault.blacklist_entries()
        assert entries and all(not text_leaks(repr(e), found.text) for e in entries)
        trace = json.dumps(vault.trace(keys[1]).to_dict())
        assert not text_leaks(trace, found.text)


# -- the service's JSON logs ------------------------------------------------------------------------------


def test_json_logs_hold_no_key_token_or_pepper(tmp_path: Path) -> None:
    """`serve --log-format json` under traffic that carries keys everywhere a client may put them (bodies, paths,
    request ids, wrong tokens): every line is one JSON object, and no key, token or pepper appears in any."""
    import http.client

    from conftest import eventually, issue
    from service_support import Server, make_token

    supplier = Identity.generate("Acme Games")
    with Vault.init(tmp_path / "supplier") as made:
        batch = issue(made, supplier, tmp_path / "files", count=20)
    store = tmp_path / "platform"
    with Vault.init(store) as platform:
        platform.trust(supplier.public)
        platform.import_manifest(batch.manifest)
    tokens = {scope: make_token(store, f"{scope}-app", scope) for scope in ("verify", "redeem")}
    found = Secrets()
    for i, key in enumerate(batch.keys):
        found.add_key(key, f"key {i}")
    for scope, token in tokens.items():
        found.add_value(token, f"{scope} token")
    found.add_bytes((store / "pepper").read_bytes(), "pepper")
    server = Server(store, tmp_path / "serve.log", workers=1, args=("--log-format", "json")).start()
    try:
        keys = batch.keys
        server.request("POST", "/v1/verify", {"keys": keys[:5]}, token=tokens["verify"])
        server.request("POST", "/v1/verify", {"keys": [keys[5][:-1] + "Z"]}, token=tokens["verify"])
        server.request("POST", "/v1/redeem", {"key": keys[6], "order_id": "o-1"}, token=tokens["redeem"])
        server.request("POST", "/v1/redeem", {"key": keys[6], "order_id": "o-2"}, token=tokens["redeem"])
        server.request("POST", "/v1/redeem", {"key": keys[7]}, token=tokens["redeem"])  # no order: 422
        server.request("GET", f"/v1/trace/{keys[8]}", token=tokens["redeem"])
        server.request("GET", f"/v1/{keys[9]}", token=tokens["redeem"])  # a key as a path: 404
        server.request("POST", "/v1/verify", {"keys": [keys[10]]}, token=tokens["redeem"][:-1] + "x")  # 401
        server.request("POST", "/v1/verify", {"keys": [keys[11]]}, token=tokens["verify"],
                       headers={"X-Request-Id": keys[11] + " and more"})  # invalid: a new id
        server.request("POST", "/v1/verify", raw=b'{"keys": ["' + keys[12].encode() + b'"', token=tokens["verify"],
                       headers={"Content-Type": "application/json"})  # malformed JSON
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", f"/v1/verify?key={keys[13]}", body=b"{}", headers={"Content-Type": "application/json"})
        conn.getresponse().read()
        conn.close()
        eventually(lambda: server.log.read_text().count('"keyvault.access"') >= 11, "access lines are missing")
    finally:
        assert server.stop() == 0
    log = server.log.read_bytes()
    assert find_leaks(log, found.patterns()) == []
    lines = [json.loads(line) for line in log.decode().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "keyvault.access"]
    assert {line["route"] for line in access} >= {"/v1/verify", "/v1/redeem", "/v1/trace/{serial}"}
    assert all(re.fullmatch(r"[0-9a-f]{16}", line["request_id"]) for line in access)
    assert {line["logger"] for line in lines} >= {"keyvault.service", "uvicorn.error", "keyvault.access"}
