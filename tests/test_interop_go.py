"""Interop: what keyvault publishes, verified by Go's golang.org/x/mod/sumdb/note and sumdb/tlog.

A store's checkpoint (cosigned by a witness through the real add-checkpoint exchange), its tiles
and entry bundles (``keyvault log export-tiles``), and its inclusion and consistency proofs are
handed to tests/interop/tlogcheck, a small Go program: note.Open with the log's verifier key
string, then with a cosignature/v1 note.Verifier per witness (and on tampered notes, where Go and
keyvault must agree), tlog.TileHashReader (which authenticates
each tile against the root), tlog.TreeHash, CheckRecord/ProveRecord and CheckTree/ProveTree.
Damaged inputs must make it fail, so the check can fail. Needs ``go`` and the Debian package
golang-golang-x-mod-dev; without them the test is skipped, unless KEYVAULT_REQUIRE_CLIENTS=1 (CI).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import issue
from keyvault import Identity, Vault
from keyvault.engine import LogWitness, consistency_proof, export_tiles, newest_checkpoint
from keyvault.errors import ProofError
from keyvault.formats import checkpoint as notes
from keyvault.formats import cosignature, tiles

REQUIRE = os.environ.get("KEYVAULT_REQUIRE_CLIENTS", "") == "1"
GOCODE = Path("/usr/share/gocode")
SOURCE = Path(__file__).parent / "interop" / "tlogcheck"


def _missing() -> str | None:
    if not shutil.which("go"):
        return "go is not installed (apt-get install golang-go)"
    if not (GOCODE / "src/golang.org/x/mod/sumdb/tlog").is_dir():
        return "golang.org/x/mod is not installed (apt-get install golang-golang-x-mod-dev)"
    return None


@pytest.fixture(scope="module")
def tlogcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go checker, built offline in GOPATH mode against the Debian copy of golang.org/x/mod."""
    missing = _missing()
    if missing:
        if REQUIRE:
            pytest.fail(f"KEYVAULT_REQUIRE_CLIENTS=1 but {missing}")
        pytest.skip(f"{missing}; KEYVAULT_REQUIRE_CLIENTS=1 makes this a failure")
    root = tmp_path_factory.mktemp("gopath")
    (root / "src").mkdir()
    shutil.copytree(SOURCE, root / "src" / "tlogcheck")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{root}:{GOCODE}", "GOPROXY": "off",
           "GOFLAGS": "", "GOCACHE": str(root / "cache"), "CGO_ENABLED": "0"}
    built = subprocess.run(["go", "build", "-o", str(root / "tlogcheck"), "."], cwd=root / "src" / "tlogcheck",
                           env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    return root / "tlogcheck"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _vkey(name: str, public_key: bytes) -> str:
    """The Go note verifier key string of an Ed25519 note key: name+hex key id+base64(0x01 || key)."""
    return f"{name}+{notes.key_id(name, public_key).hex()}+" + _b64(b"\x01" + public_key)


def _build(tmp_path: Path, size_events: int) -> tuple[dict[str, Any], Path]:
    """A store of about ``size_events`` events, cosigned, exported, with proofs; the checker's input."""
    supplier = Identity.generate("Acme Games")
    witness_id = Identity.generate("witness.example/w1")
    with Vault.init(tmp_path / "store") as vault:
        witness = LogWitness(witness_id, tmp_path / "wstate", [vault.engine_identity])
        olds: list[tuple[int, bytes]] = []
        while not olds or olds[-1][0] < size_events:
            for _ in range(max(1, size_events // 40)):
                issue(vault, supplier, tmp_path / "files", count=2)
            vault.checkpoint()
            olds.append(newest_checkpoint(vault.engine))
        size, note = newest_checkpoint(vault.engine)
        answer = witness.add_checkpoint(b"old 0\n\n" + note)
        assert answer.status == 200, answer.body
        note += answer.body
        export_tiles(vault.engine, tmp_path / "tiles")
        with vault.engine.store.read() as txn:
            picks = sorted({0, 1, size // 2, size - 1, min(255, size - 1), min(256, size - 1)})
            inclusion = [{"index": i, "leaf": _b64(vault.engine.log.leaf(txn, i)),
                          "proof": [_b64(h) for h in vault.engine.log.inclusion(txn, i, size)]} for i in picks]
        consistency = []
        for old_size, old_note in olds[:-1]:
            root = notes.split_note(old_note)[0].split(b"\n")[2].decode()
            consistency.append({"old": old_size, "old_root": root,
                                "proof": [_b64(h) for h in consistency_proof(vault.engine, old_size, size)]})
        engine = vault.engine_identity
        origin = f"keyvault/{engine.id}"
        doc = {"note": note.decode(), "log_vkey": _vkey(origin, engine.public_key),
               "witnesses": [{"name": witness_id.name, "public_key": _b64(witness_id.public_key)}],
               "tiles": str(tmp_path / "tiles"), "inclusion": inclusion, "consistency": consistency}
    path = tmp_path / "input.json"
    path.write_text(json.dumps(doc))
    return doc, path


def _run(tlogcheck: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tlogcheck), str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("events", [30, 600])
def test_go_verifies_checkpoints_cosignatures_tiles_and_proofs(tmp_path: Path, tlogcheck: Path, events: int) -> None:
    doc, path = _build(tmp_path, events)
    result = _run(tlogcheck, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\nok ") + result.stdout.startswith("ok ") == 6, result.stdout
    size = int(doc["note"].split("\n")[1])
    assert size >= events and len(doc["consistency"]) >= 1
    if events > 256:
        assert any(w == 256 for _, _, w in tiles.tiles(size))  # full tiles and a level-1 tile were read


def test_go_refuses_what_was_damaged(tmp_path: Path, tlogcheck: Path) -> None:
    """Each damage is caught by Go: the checker is not a rubber stamp."""
    doc, path = _build(tmp_path, 30)
    text = doc["note"]

    def damaged(**change: Any) -> subprocess.CompletedProcess[str]:
        out = tmp_path / "damaged.json"
        out.write_text(json.dumps({**doc, **change}))
        return _run(tlogcheck, out)

    size_line = text.split("\n")[1]
    assert "note.Open" in damaged(note=text.replace(f"\n{size_line}\n", f"\n{int(size_line) + 1}\n", 1)).stderr
    line = next(x for x in text.split("\n") if x.startswith("\u2014 witness.example/w1 "))
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[11] ^= 1  # the timestamp
    forged = text.replace(line, f"\u2014 witness.example/w1 {_b64(bytes(blob))}")
    assert "does not verify" in damaged(note=forged).stderr
    proof = doc["inclusion"][1]["proof"]
    bad = [_b64(bytes(32))] + proof[1:]
    assert "CheckRecord" in damaged(inclusion=[{**doc["inclusion"][1], "proof": bad}]).stderr
    assert "CheckTree" in damaged(consistency=[{**doc["consistency"][0], "old": doc["consistency"][0]["old"] - 1}]
                                  ).stderr
    tile = Path(doc["tiles"]) / tiles.tile_path(0, 0, int(size_line) % 256 or 256)
    data = bytearray(tile.read_bytes())
    data[5] ^= 1
    tile.write_bytes(bytes(data))
    assert "tiles" in _run(tlogcheck, path).stderr or "TreeHash" in _run(tlogcheck, path).stderr


def _keyvault_opens(note: bytes, doc: dict[str, Any]) -> bool:
    """keyvault's verdict on a note: the engine's signature (notes.open_note), then each witness's cosignature."""
    name, _, rest = doc["log_vkey"].partition("+")
    engine = base64.b64decode(rest.partition("+")[2])[1:]
    try:
        notes.open_note(note, name, [notes.Verifier(name, engine)])
        cosignature.verify(note, [cosignature.Witness(w["name"], base64.b64decode(w["public_key"]))
                                  for w in doc["witnesses"]], len(doc["witnesses"]))
    except ProofError:
        return False
    return True


def test_go_and_keyvault_agree_on_tampered_notes(tmp_path: Path, tlogcheck: Path) -> None:
    """Go's note.Open, with the log's verifier and a cosignature/v1 verifier per witness, judges each tampered note
    as keyvault does, except where keyvault is stricter on purpose: Go drops a repeated line by a known key
    (unverified), keyvault refuses the note (docs/provenance.md, "Reading a note")."""
    doc, path = _build(tmp_path, 30)
    note = doc["note"]
    text, _, block = note.partition("\n\n")
    engine_line, witness_line = block.rstrip("\n").split("\n")
    stranger = Identity.generate("stranger")
    stranger_line = notes.signature_line((text + "\n").encode(), "stranger.example", stranger.signing_key).decode()
    blob = bytearray(base64.b64decode(witness_line.rsplit(" ", 1)[1]))
    blob[11] ^= 1
    altered = witness_line.rsplit(" ", 1)[0] + " " + _b64(bytes(blob))
    cases = {  # label: (note, Go accepts, keyvault accepts)
        "genuine": (note, True, True),
        "a line by a key nobody trusts added": (note + stranger_line, True, True),
        "the engine's line twice": (text + "\n\n" + engine_line + "\n" + block, True, False),
        "the witness's line twice": (note + witness_line + "\n", True, False),
        "the witness's line, then an altered copy": (note + altered + "\n", True, False),
        "101 signature lines": (note + stranger_line * 99, False, False),
        "the witness's timestamp altered": (note.replace(witness_line, altered), False, False),
        "the witness's line missing": (text + "\n\n" + engine_line + "\n", False, False),
        "the size changed": (note.replace("\n" + text.split("\n")[1] + "\n", "\n1\n", 1), False, False),
        "CRLF line ends": (note.replace("\n", "\r\n"), False, False),
        "no newline after the last signature": (note.rstrip("\n"), False, False),
        "the engine's line under another name": (note.replace(engine_line, engine_line.replace(
            "keyvault/", "keyvault-", 1)), False, False),
    }
    out = tmp_path / "notes.json"
    out.write_text(json.dumps({**doc, "notes": [n for n, _, _ in cases.values()]}))
    result = _run(tlogcheck, out)
    assert result.returncode == 0, result.stdout + result.stderr
    go = {int(line.split(":")[0][5:]): line.endswith(": ok") for line in result.stdout.splitlines()
          if line.startswith("note ")}
    assert len(go) == len(cases)
    for n, (label, (note_, by_go, by_keyvault)) in enumerate(cases.items()):
        assert go[n] == by_go, (label, result.stdout)
        assert _keyvault_opens(note_.encode(), doc) == by_keyvault, label
