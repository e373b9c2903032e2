"""Witness cosignatures (C2SP tlog-cosignature), the witness (tlog-witness add-checkpoint), tiles and
consistency proofs: each promise with the test that tries to break it (forks, rollbacks, replays, bad
proofs, wrong keys, races, a witness SIGKILLed mid-request, bundles with forged or doubled cosignatures).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from conftest import issue
from service_support import KEYVAULT
from keyvault import Identity, Vault
from keyvault.engine import LogWitness, consistency_proof, export_tiles, newest_checkpoint, read_tile
from keyvault.errors import ProofError, StoreCorruptError
from keyvault.formats import checkpoint as notes
from keyvault.formats import cosignature, merkle, tiles
from keyvault.formats.bundle import engine_origin

# -- the cosignature format -------------------------------------------------------------------------------

SPEC_NOTE = ("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
             "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzG"
             "ku9nTo+zyWE+xeMcTOAYQ8=\n"
             "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZq"
             "hf5nNo0xUe+mbIUBkBIfZ+qnA==\n").encode()
SPEC_MESSAGE = (b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
                b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")
KEY = nacl.signing.SigningKey(bytes(range(32)))
OTHER = nacl.signing.SigningKey(bytes(range(1, 33)))
W1 = cosignature.Witness("witness.example/w1", bytes(KEY.verify_key))
W2 = cosignature.Witness("witness.example/w2", bytes(OTHER.verify_key))


def a_note(size: int = 5, root: bytes = b"\x07" * 32) -> bytes:
    return notes.sign(notes.Checkpoint("example.com/log", size, root), "example.com/log",
                      nacl.signing.SigningKey(b"\x09" * 32))


def cosigned(note: bytes, key: nacl.signing.SigningKey = KEY, name: str = "witness.example/w1",
             when: int = 1_700_000_000) -> bytes:
    text, _ = notes.split_note(note)
    return note + cosignature.line(text, name, key, when)


def test_the_specs_example_cosignature_parses_as_the_spec_says() -> None:
    """The C2SP example: a 76-byte timestamped signature, dated 1679315147, over exactly the message shown."""
    text, found = cosignature.cosignatures(SPEC_NOTE)
    assert [c.name for c in found] == ["witness.example.com/w1"]  # the log's own 0x01 signature is not one
    assert found[0].timestamp == 1679315147 and found[0].key_id == base64.b64decode("jWbPPw==")
    assert cosignature.signed_message(text, found[0].timestamp) == SPEC_MESSAGE
    # The spec publishes no key for w1: a key of ours under that name is not it, and its line is ignored.
    impostor = cosignature.Witness("witness.example.com/w1", bytes(KEY.verify_key))
    with pytest.raises(ProofError, match="0 of the 1 given witnesses"):
        cosignature.verify(SPEC_NOTE, [impostor], 1)


def test_key_id_is_type_0x04_and_the_vkey_round_trips() -> None:
    pub = bytes(KEY.verify_key)
    assert cosignature.key_id("w", pub) == __import__("hashlib").sha256(b"w\n\x04" + pub).digest()[:4]
    assert cosignature.key_id("w", pub) != notes.key_id("w", pub)  # never mistaken for a checkpoint signature
    assert cosignature.Witness.from_vkey(W1.vkey()) == W1
    name, hint, key = W1.vkey().split("+", 2)
    for bad in (f"{name}+00000000+{key}", f"{name}+{hint}+" + base64.b64encode(b"\x01" + pub).decode(),
                f"{name}+{hint}+not-base64", "nothing"):
        with pytest.raises(ProofError):
            cosignature.Witness.from_vkey(bad)
    with pytest.raises(ProofError):
        cosignature.Witness("has space", pub)


def test_round_trip_and_k_of_n() -> None:
    note = cosigned(cosigned(a_note()), OTHER, "witness.example/w2")
    seen = cosignature.verify(note, [W1, W2], 2, now_seconds=1_700_000_000)
    assert sorted(w.name for w, _ in seen) == ["witness.example/w1", "witness.example/w2"]
    assert notes.open_note(note, "example.com/log", [notes.Verifier("example.com/log",
                           bytes(nacl.signing.SigningKey(b"\x09" * 32).verify_key))]).size == 5


def test_a_duplicated_cosignature_refuses_the_note() -> None:
    note = cosigned(a_note())
    doubled = note + note[note.rindex("\u2014".encode()):]
    assert len(cosignature.cosignatures(doubled)[1]) == 2
    with pytest.raises(ProofError, match="two cosignatures by witness"):
        cosignature.verify(doubled, [W1, W2], 1)
    with pytest.raises(ProofError, match="only 1 distinct witness keys"):
        cosignature.verify(doubled, [W1, W1], 2)


def test_a_cosignature_by_a_key_not_given_is_ignored_never_counted() -> None:
    note = cosigned(a_note(), OTHER, "witness.example/w1")  # W1's name, another key
    with pytest.raises(ProofError, match="0 of the 1"):
        cosignature.verify(note, [W1], 1)
    assert cosignature.verify(note, [W1], 0) == []


def test_a_cosignature_of_another_checkpoint_is_refused() -> None:
    other = cosigned(a_note(6))
    moved = a_note(5) + other[other.rindex("\u2014".encode()):]
    with pytest.raises(ProofError, match="does not verify over this checkpoint"):
        cosignature.verify(moved, [W1], 1)


def test_a_cosignature_dated_in_the_future_is_refused() -> None:
    note = cosigned(a_note(), when=2_000_000_000)
    with pytest.raises(ProofError, match="in the future"):
        cosignature.verify(note, [W1], 1, now_seconds=1_700_000_000)


@pytest.mark.parametrize("position", range(0, 110, 3))
def test_every_byte_of_a_cosignature_line_matters(position: int) -> None:
    note = a_note()
    line = cosigned(note)[len(note):]
    start = line.index(b" ", 4) + 1  # the base64 blob
    if start + position >= len(line) - 3:
        return
    damaged = bytearray(line)
    damaged[start + position] = ord("A") if damaged[start + position] != ord("A") else ord("B")
    with pytest.raises(ProofError):
        cosignature.verify(note + bytes(damaged), [W1], 1, now_seconds=1_700_000_000)


# -- tiles ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "text"), [(0, "000"), (7, "007"), (999, "999"), (1000, "x001/000"),
                                             (1234067, "x001/x234/067"), (10**9, "x001/x000/x000/000")])
def test_tile_index_encoding(index: int, text: str) -> None:
    assert tiles.encode_index(index) == text
    assert tiles.parse_tile_path(f"tile/0/{text}") == (0, index, 256)
    assert tiles.parse_tile_path(f"tile/entries/{text}.p/7") == (-1, index, 7)
    assert tiles.tile_path(3, index, 12) == f"tile/3/{text}.p/12"


@pytest.mark.parametrize("path", ["tile/0/1", "tile/0/0001", "tile/64/000", "tile/01/000", "tile/0/x000/001",
                                  "tile/0/000.p/0", "tile/0/000.p/256", "tile/0/000.p/07", "tile/0/001/002",
                                  "tile/x/000", "tile/0/000/", "/tile/0/000", "tile/0/000.p/", "tile/entries/x01/000"])
def test_bad_tile_paths_are_refused(path: str) -> None:
    with pytest.raises(ProofError, match="tile"):
        tiles.parse_tile_path(path)


def test_the_specs_70000_example() -> None:
    found = Counter((level, width == 256) for level, _, width in tiles.tiles(70_000))
    assert found == {(0, True): 273, (0, False): 1, (1, True): 1, (1, False): 1, (2, False): 1}
    assert [(lvl, w) for lvl, _, w in tiles.tiles(70_000) if w < 256] == [(0, 112), (1, 17), (2, 1)]
    assert [(lvl, w) for lvl, _, w in tiles.tiles(256)] == [(0, 256), (1, 1)]
    assert list(tiles.tiles(0)) == []


def test_tiles_rebuild_every_root_and_entry_bundles_round_trip() -> None:
    entries = [os.urandom(random.randrange(0, 300)) for _ in range(600)]
    leaves = [merkle.leaf_hash(e) for e in entries]
    perfect = merkle.perfect_from_leaves(leaves)
    level0 = b"".join(tiles.tile_hashes(perfect, 0, i, w) for lvl, i, w in tiles.tiles(600) if lvl == 0)
    assert [level0[i:i + 32] for i in range(0, len(level0), 32)] == leaves
    full = tiles.tile_hashes(perfect, 0, 0, 256)
    assert merkle.root([full[i:i + 32] for i in range(0, 8192, 32)]) == tiles.tile_hashes(perfect, 1, 0, 1)
    bundle = tiles.entry_bundle(entries[:256])
    assert tiles.read_entry_bundle(bundle) == entries[:256]
    for cut in (1, 2, len(bundle) - 1):
        if cut < len(bundle):
            with pytest.raises(ProofError, match="truncated"):
                tiles.read_entry_bundle(bundle[:-cut] if cut != len(bundle) - 1 else bundle[:1])
    with pytest.raises(ProofError, match="at most 65535"):
        tiles.entry_bundle([b"x" * 65536])


def test_proof_text_encoding_is_strict() -> None:
    hashes = [os.urandom(32) for _ in range(3)]
    assert tiles.decode_proof(tiles.encode_proof(hashes)) == hashes
    assert tiles.decode_proof("") == []
    text = tiles.encode_proof(hashes)
    for bad in (text[:-1], text.replace("\n", "\r\n", 1), text + "AAAA\n", "x" * 44 + "\n",
                tiles.encode_proof([os.urandom(32)] * 64)):
        with pytest.raises(ProofError):
            tiles.decode_proof(bad)


# -- a store, a witness over it, and forks of it ----------------------------------------------------------


@pytest.fixture
def log_store(tmp_path: Path, supplier: Identity) -> Iterator[Vault]:
    """A store whose log has some events and a checkpoint."""
    with Vault.init(tmp_path / "store") as vault:
        for n in range(3):
            issue(vault, supplier, tmp_path / "files", count=5 + n)
        vault.checkpoint()
        yield vault


def grow(vault: Vault, supplier: Identity, out: Path, times: int = 1) -> tuple[int, bytes]:
    """More events and a new checkpoint: (size, note)."""
    for _ in range(times):
        issue(vault, supplier, out, count=3)
    vault.checkpoint()
    return newest_checkpoint(vault.engine)


def request(old: int, proof: list[bytes], note: bytes) -> bytes:
    return f"old {old}\n".encode() + tiles.encode_proof(proof).encode() + b"\n" + note


def a_witness(tmp_path: Path, vault: Vault, name: str = "witness.example/w1") -> LogWitness:
    identity_file = tmp_path / f"{name.replace('/', '_')}.json"
    if not identity_file.exists():
        Identity.generate(name).save(identity_file)
    return LogWitness(Identity.load(identity_file), tmp_path / f"state-{name.replace('/', '_')}",
                      [vault.engine_identity])


def test_a_witness_cosigns_consistent_growth_only(tmp_path: Path, log_store: Vault, supplier: Identity) -> None:
    witness = a_witness(tmp_path, log_store)
    size1, note1 = newest_checkpoint(log_store.engine)
    first = witness.add_checkpoint(request(0, [], note1))
    assert first.status == 200, first.body
    assert cosignature.verify(note1 + first.body, [witness.key], 1)
    assert witness.state()[engine_origin(log_store.engine_identity.public_key)][0] == size1
    size2, note2 = grow(log_store, supplier, tmp_path / "files")
    proof = consistency_proof(log_store.engine, size1, size2)
    # A bad consistency proof: refused, nothing recorded.
    for bad in ([], proof[:-1], proof + [proof[0]], [bytes(32)] + proof[1:], list(reversed(proof))):
        answer = witness.add_checkpoint(request(size1, bad, note2))
        assert answer.status == 422, (bad, answer)
    assert witness.state()[engine_origin(log_store.engine_identity.public_key)][0] == size1
    assert witness.add_checkpoint(request(size1, proof, note2)).status == 200
    # A replayed old genuine checkpoint: the witness has seen more.
    replay = witness.add_checkpoint(request(size1, [], note1))
    assert (replay.status, replay.body, replay.content_type) == (409, f"{size2}\n".encode(), "text/x.tlog.size")
    assert witness.add_checkpoint(request(size2, [], note1)).status == 400  # old size > checkpoint size
    again = witness.add_checkpoint(request(size2, [], note2))  # the same checkpoint again: cosigned again
    assert again.status == 200


def test_a_witness_refuses_forks_and_wrong_keys(tmp_path: Path, log_store: Vault, supplier: Identity) -> None:
    witness = a_witness(tmp_path, log_store)
    size, note = newest_checkpoint(log_store.engine)
    assert witness.add_checkpoint(request(0, [], note)).status == 200
    engine_key = log_store.engine.log.engine
    origin = engine_origin(engine_key.public_key)
    fork = notes.sign(notes.Checkpoint(origin, size, os.urandom(32)), origin, engine_key.signing_key)
    answer = witness.add_checkpoint(request(size, [], fork))  # same size, another root: a fork
    assert answer.status == 422 and b"forked" in answer.body
    impostor = Identity.generate("impostor")
    forged = notes.sign(notes.Checkpoint(origin, size + 5, os.urandom(32)), origin, impostor.signing_key)
    assert witness.add_checkpoint(request(size, [], forged)).status == 403  # not the log's key
    other = Identity.generate("other")
    elsewhere = notes.sign(notes.Checkpoint(engine_origin(other.public_key), 3, os.urandom(32)),
                           engine_origin(other.public_key), other.signing_key)
    assert witness.add_checkpoint(request(0, [], elsewhere)).status == 404  # a log it does not follow
    empty = notes.sign(notes.Checkpoint(origin, 0, bytes(32)), origin, engine_key.signing_key)
    assert witness.add_checkpoint(request(0, [], empty)).status == 422
    assert witness.add_checkpoint(request(0, [bytes(32)], note)).status in (409, 422)
    for malformed in (b"", b"old 01\n\n" + note, b"old -1\n\n" + note, b"new 0\n\n" + note, b"old 0\n" + note,
                      b"old 0\nnot base64\n\n" + note, b"old 0\n\n" + note[:-3]):
        assert witness.add_checkpoint(malformed).status == 400, malformed
    assert witness.state()[origin][0] == size  # nothing of the above moved it


def test_a_forked_copy_of_the_store_never_collects_a_cosignature(tmp_path: Path, log_store: Vault,
                                                                 supplier: Identity) -> None:
    witness = a_witness(tmp_path, log_store)
    size, note = newest_checkpoint(log_store.engine)
    assert witness.add_checkpoint(request(0, [], note)).status == 200
    copy = tmp_path / "forked-store"
    shutil.copytree(log_store.path, copy)
    grown, grown_note = grow(log_store, supplier, tmp_path / "a")
    with Vault.open(copy) as forked:
        fork_size, fork_note = grow(forked, supplier, tmp_path / "b", times=2)
        assert fork_size > size
        fork_proof = consistency_proof(forked.engine, size, fork_size)
        # The fork is consistent with what the witness saw: it wins the race and is cosigned ...
        assert witness.add_checkpoint(request(size, fork_proof, fork_note)).status == 200
    # ... and from then on the live store's history can never be cosigned: from any old size, any proof.
    for old in (0, size, fork_size):
        proof = consistency_proof(log_store.engine, old, grown) if 0 < old <= grown else []
        assert witness.add_checkpoint(request(old, proof, grown_note)).status in (400, 409, 422)


def test_concurrent_submissions_cosign_exactly_one(tmp_path: Path, log_store: Vault, supplier: Identity) -> None:
    """Many submissions from the same old size, through two witness objects sharing one state (as two
    processes would): exactly one is cosigned, the others are told the new size."""
    witness, twin = a_witness(tmp_path, log_store), a_witness(tmp_path, log_store)
    size, note = newest_checkpoint(log_store.engine)
    assert witness.add_checkpoint(request(0, [], note)).status == 200
    sizes = [(size, note)]
    for _ in range(4):
        sizes.append(grow(log_store, supplier, tmp_path / "more"))
    bodies = [request(size, consistency_proof(log_store.engine, size, s), n) for s, n in sizes[1:]] * 4
    random.shuffle(bodies)
    answers: list[int] = []
    barrier = threading.Barrier(len(bodies))

    def submit(n: int, body: bytes) -> None:
        barrier.wait()
        answers.append((witness if n % 2 else twin).add_checkpoint(body).status)

    threads = [threading.Thread(target=submit, args=(n, b)) for n, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(answers) == {200: 1, 409: len(bodies) - 1}


def test_a_damaged_state_file_stops_all_cosigning(tmp_path: Path, log_store: Vault) -> None:
    witness = a_witness(tmp_path, log_store)
    _, note = newest_checkpoint(log_store.engine)
    assert witness.add_checkpoint(request(0, [], note)).status == 200
    witness.file.write_text(witness.file.read_text()[:-10])
    with pytest.raises(StoreCorruptError, match="damaged"):
        witness.add_checkpoint(request(0, [], note))
    with pytest.raises(StoreCorruptError):
        a_witness(tmp_path, log_store)


# -- the witness server, killed mid-request -------------------------------------------------------------


class Served:
    """``keyvault witness serve`` in its own process."""

    def __init__(self, tmp_path: Path, identity: Path, engine_pub: Path) -> None:
        self.args = [KEYVAULT, "witness", "serve", "--identity", str(identity), "--state", str(tmp_path / "ws"),
                     "--log", str(engine_pub), "--port", "0"]
        self.log = tmp_path / "witness.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Served:
        self.log.write_bytes(b"")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if "listening on " in text:
                self.url = text.split("listening on ", 1)[1].split()[0]
                return self
            assert self.proc.poll() is None, text
            time.sleep(0.02)
        raise AssertionError(self.log.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def post(self, body: bytes) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, data=body, method="POST"), timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


@pytest.fixture
def served(tmp_path: Path, log_store: Vault) -> Iterator[Served]:
    identity = tmp_path / "w1.json"
    Identity.generate("witness.example/w1").save(identity)
    engine_pub = tmp_path / "engine.pub"
    log_store.engine_identity.save(engine_pub)
    server = Served(tmp_path, identity, engine_pub).start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()


def test_a_witness_killed_mid_request_never_cosigns_an_inconsistent_checkpoint(
        tmp_path: Path, log_store: Vault, supplier: Identity, served: Served) -> None:
    """The live log grows and each submission races a SIGKILL; after every restart the witness holds a whole
    record (the old size or the new), a 200 it sent was recorded first, and a fork of the log taken before
    that growth is cosigned only while the witness has answered nothing of the live branch, and then the
    live branch never again."""
    size, note = newest_checkpoint(log_store.engine)
    assert served.post(request(0, [], note))[0] == 200
    copy = tmp_path / "forked-store"
    shutil.copytree(log_store.path, copy)
    live = [grow(log_store, supplier, tmp_path / "a") for _ in range(4)]
    with Vault.open(copy) as forked:
        fork_size, fork_note = grow(forked, supplier, tmp_path / "b", times=6)
        fork_proof = consistency_proof(forked.engine, size, fork_size)
    rng = random.Random()
    recorded, live_answered, fork_answered = size, False, False
    for new_size, new_note in live:
        old = recorded
        body = request(old, consistency_proof(log_store.engine, old, new_size) if old <= new_size else [], new_note)
        outcome: list[tuple[int, bytes]] = []
        sender = threading.Thread(target=lambda: outcome.append(_post_or_fail(served, body)))
        sender.start()
        time.sleep(rng.uniform(0, 0.01))
        served.kill()  # somewhere between receiving, checking, persisting and answering
        sender.join()
        served.start()
        state = json.loads((tmp_path / "ws" / "witness-state.json").read_text())["logs"]
        recorded = next(iter(state.values()))["size"]
        assert recorded in (old, new_size) or (fork_answered and recorded == fork_size)
        if outcome and outcome[0][0] == 200:
            assert recorded == new_size and not fork_answered  # what was cosigned was persisted first
            live_answered = True
        # The fork, claimed from the size the witness recorded or from where it forked.
        for claimed in {size, recorded}:
            proof = fork_proof if claimed == size else []
            if served.post(request(claimed, proof, fork_note))[0] == 200:
                # (the same fork checkpoint cosigned again is no news)
                assert fork_answered or (not live_answered and recorded == size), "a fork cosigned after the live log"
                fork_answered, recorded = True, fork_size
    if not fork_answered:  # the live log still is, from what the witness holds
        top, top_note = live[-1]
        if recorded < top:
            status, line = served.post(request(recorded, consistency_proof(log_store.engine, recorded, top),
                                               top_note))
            assert status == 200, line
    else:
        top, top_note = live[-1]
        for old in {size, recorded, top}:
            proof = consistency_proof(log_store.engine, old, top) if old <= top else []
            assert served.post(request(old, proof, top_note))[0] in (400, 409, 422)


def _post_or_fail(served: Served, body: bytes) -> tuple[int, bytes]:
    try:
        return served.post(body)
    except (urllib.error.URLError, OSError, http.client.HTTPException):  # killed before or while answering
        return 0, b""


# -- the CLI: submit, keep, bundles that carry cosignatures, proofs, tiles ------------------------------


def kv(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYVAULT, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_submitted_cosignatures_travel_in_bundles(tmp_path: Path, supplier: Identity, served: Served,
                                                   log_store: Vault) -> None:
    store = log_store.path
    keys_dir = tmp_path / "bundle-files"
    batch = issue(log_store, supplier, keys_dir, count=4)
    log_store.close()
    w1_pub, w2_file, w2_pub = tmp_path / "w1.pub", tmp_path / "w2.json", tmp_path / "w2.pub"
    assert kv("identity", "show", "--public", tmp_path / "w1.json").returncode == 0
    (w1_pub).write_text(kv("identity", "show", "--public", tmp_path / "w1.json").stdout)
    made = kv("witness", "init", "witness.example/w2", "--out", w2_file)
    assert made.returncode == 0 and "witness.example/w2+" in made.stdout, made.stderr
    w2_pub.write_text(kv("identity", "show", "--public", w2_file).stdout)
    assert kv("witness", "init", "has space", "--out", tmp_path / "bad.json").returncode != 0
    submitted = kv("--store", store, "witness", "submit", served.url, "--witness", w1_pub, "--json")
    assert submitted.returncode == 0, submitted.stderr
    again = kv("--store", store, "witness", "submit", served.url, "--witness", w1_pub, "--json")
    assert again.returncode == 0, again.stderr  # the same size again: the duplicate line is not stored twice
    assert json.loads(again.stdout)["note"].count("witness.example/w1") == 1
    wrong = kv("--store", store, "witness", "submit", served.url, "--witness", w2_pub)
    assert wrong.returncode != 0 and "0 of the 1 given witnesses" in wrong.stderr
    bundle_file = tmp_path / "b.json"
    made_bundle = kv("--store", store, "trace", batch.serials[0], "--bundle", bundle_file)
    assert made_bundle.returncode == 0, made_bundle.stderr
    engine_pub, supplier_pub = tmp_path / "engine.pub", tmp_path / "acme.pub"
    supplier.public.save(supplier_pub)
    trust = ["--trust", supplier_pub, "--trust", engine_pub]

    def check(path: Path, *more: object) -> subprocess.CompletedProcess[str]:
        return kv("verify-bundle", path, *trust, *more)

    passed = check(bundle_file, "--witness", w1_pub)
    assert passed.returncode == 0 and "PASS witness cosignatures" in passed.stdout, passed.stdout
    # Required but missing: a second witness that never cosigned.
    failed = check(bundle_file, "--witness", w1_pub, "--witness", w2_pub)
    assert failed.returncode == 3 and "FAIL witness cosignatures: 1 of the 2" in failed.stdout
    assert check(bundle_file, "--witness", w1_pub, "--witness", w2_pub, "--min-witnesses", "1").returncode == 0
    # The same witness given twice is one witness.
    doubled = check(bundle_file, "--witness", w1_pub, "--witness", w1_pub, "--min-witnesses", "2")
    assert doubled.returncode == 3 and "FAIL witness cosignatures" in doubled.stdout
    # A duplicated cosignature line refuses the note (a store keeps one line per witness).
    doc = json.loads(bundle_file.read_text())
    line = next(x for x in doc["checkpoint"].split("\n") if "witness.example/w1" in x)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({**doc, "checkpoint": doc["checkpoint"] + line + "\n"}))
    out = check(dup, "--witness", w1_pub)
    assert out.returncode == 3 and "FAIL witness cosignatures: the checkpoint carries two cosignatures" in out.stdout
    # A cosignature by a non-witness key (w2's key signing as w2, but only w1 is given; and the engine key).
    w2 = Identity.load(w2_file)
    text = doc["checkpoint"].encode()[:doc["checkpoint"].encode().index(b"\n\n") + 1]
    by_w2 = cosignature.line(text, w2.name, w2.signing_key, int(time.time())).decode()
    only_w2 = doc["checkpoint"].replace(line + "\n", by_w2)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**doc, "checkpoint": only_w2}))
    out = check(forged, "--witness", w1_pub)
    assert out.returncode == 3 and "FAIL witness cosignatures: 0 of the 1" in out.stdout
    out = check(bundle_file, "--witness", engine_pub)
    assert out.returncode == 3 and "FAIL witness cosignatures" in out.stdout and "independent" in out.stdout
    # A cosignature over a different checkpoint: w1's line moved onto another (genuine) checkpoint.
    with Vault.open(store) as vault:
        issue(vault, Identity.generate("Other Games"), keys_dir, count=2)  # events about another supplier
        newer = vault.checkpoint()
    moved = tmp_path / "moved.json"
    newer_with_line = newer + line + "\n"
    moved.write_text(json.dumps({**doc, "checkpoint": newer_with_line}))
    out = check(moved, "--witness", w1_pub)
    assert out.returncode == 3 and "FAIL" in out.stdout
    assert "does not verify over this checkpoint" in out.stdout
    # Events after the cosigned checkpoint: a bundle is made under the newest checkpoint (its subject index
    # proofs are of the newest index), uncosigned until the store submits it to its witness again.
    later = tmp_path / "later.json"
    assert kv("--store", store, "trace", batch.serials[1], "--bundle", later).returncode == 0
    assert "witness.example/w1" not in json.loads(later.read_text())["checkpoint"]
    assert check(later, "--witness", w1_pub).returncode == 3
    assert kv("--store", store, "witness", "submit", served.url, "--witness", w1_pub).returncode == 0
    later = tmp_path / "later-cosigned.json"
    assert kv("--store", store, "trace", batch.serials[1], "--bundle", later).returncode == 0
    assert "witness.example/w1" in json.loads(later.read_text())["checkpoint"]
    assert check(later, "--witness", w1_pub).returncode == 0
    # A store with cosigned checkpoints still passes its own audit and check.
    audited = kv("--store", store, "audit")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    checked = kv("--store", store, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_consistency_proofs_and_tiles_from_the_cli_and_library(tmp_path: Path, log_store: Vault,
                                                                 supplier: Identity) -> None:
    size1, note1 = newest_checkpoint(log_store.engine)
    size2, note2 = grow(log_store, supplier, tmp_path / "f", times=3)
    store = log_store.path
    root1 = notes.split_note(note1)[0].split(b"\n")[2]
    root2 = notes.split_note(note2)[0].split(b"\n")[2]
    log_store.close()
    printed = kv("--store", store, "checkpoint", "--proof", size1, size2)
    assert printed.returncode == 0, printed.stderr
    proof = tiles.decode_proof(printed.stdout)
    merkle.verify_consistency(size1, size2, base64.b64decode(root1), base64.b64decode(root2), proof)
    as_json = json.loads(kv("--store", store, "checkpoint", "--proof", size1, size2, "--json").stdout)
    assert [base64.b64decode(h) for h in as_json["proof"]] == proof
    refused = kv("--store", store, "checkpoint", "--proof", size2, size1)
    assert refused.returncode == 1 and "OLD <= NEW" in refused.stderr
    out = tmp_path / "tiles"
    exported = kv("--store", store, "log", "export-tiles", out, "--json")
    assert exported.returncode == 0, exported.stderr
    size = json.loads(exported.stdout)["size"]
    checkpoint_note = (out / "checkpoint").read_bytes()
    cp = notes.open_note(checkpoint_note, None, [notes.Verifier(engine_origin(supplier_key(store)),
                                                                 supplier_key(store))])
    entries: list[bytes] = []
    for level, index, width in tiles.tiles(size):
        if level == 0:
            entries += tiles.read_entry_bundle((out / tiles.tile_path(-1, index, width)).read_bytes())
    assert len(entries) == size
    leaves = [merkle.leaf_hash(e) for e in entries]
    assert merkle.root(leaves) == cp.root
    level0 = b"".join((out / tiles.tile_path(0, i, w)).read_bytes() for lvl, i, w in tiles.tiles(size) if lvl == 0)
    assert level0 == b"".join(leaves)
    again = json.loads(kv("--store", store, "log", "export-tiles", out, "--json").stdout)
    assert again["written"] >= 1 and again["kept"] == sum(1 for _, _, w in tiles.tiles(size) if w == 256) * 1 + \
        sum(1 for lvl, _, w in tiles.tiles(size) if w == 256 and lvl == 0)
    with Vault.open(store) as vault:
        assert read_tile(vault.engine, tiles.tile_path(0, 0, min(size, 256))) == level0[:min(size, 256) * 32]
        with pytest.raises(ProofError, match="no tile"):
            read_tile(vault.engine, tiles.tile_path(0, 0, 256) if size < 256 else tiles.tile_path(5, 0, 1))
        assert export_tiles(vault.engine, out)["size"] == size


def supplier_key(store: Path) -> bytes:
    with Vault.open(store) as vault:
        return vault.engine_identity.public_key


def test_the_service_publishes_the_log_without_credentials(tmp_path: Path, log_store: Vault,
                                                           supplier: Identity) -> None:
    from service_support import Server

    size1, _ = newest_checkpoint(log_store.engine)
    size, note = grow(log_store, supplier, tmp_path / "f", times=2)
    engine = log_store.engine_identity
    log_store.close()
    server = Server(log_store.path, tmp_path / "serve.log", workers=1).start()
    try:
        got = server.request("GET", "/v1/log/checkpoint")
        assert got.status == 200 and got.headers["content-type"].startswith("text/plain")
        cp = notes.open_note(got.body, None, [notes.Verifier(engine_origin(engine.public_key), engine.public_key)])
        assert cp.size >= size
        width = cp.size % 256 or 256
        tile = server.request("GET", "/v1/log/" + tiles.tile_path(0, 0, width))
        assert tile.status == 200 and len(tile.body) == 32 * width
        assert "immutable" in tile.headers["cache-control"]
        assert got.headers["cache-control"] == "no-store"
        entries = server.request("GET", "/v1/log/" + tiles.tile_path(-1, 0, width))
        leaves = [merkle.leaf_hash(e) for e in tiles.read_entry_bundle(entries.body)]
        assert b"".join(leaves) == tile.body and merkle.root(leaves) == cp.root
        for bad in ("/v1/log/tile/0/001", "/v1/log/tile/0/000.p/255", "/v1/log/tile/9/000", "/v1/log/tile/0/1",
                    "/v1/log/tile/../../etc/passwd"):
            answer = server.request("GET", bad)
            assert answer.status == 404 and answer.headers["cache-control"] == "no-store", bad
        proof = server.request("GET", f"/v1/log/consistency?old={size1}&new={cp.size}")
        assert proof.status == 200
        old_root = merkle.root(leaves[:size1])
        merkle.verify_consistency(size1, cp.size, old_root, cp.root, tiles.decode_proof(proof.body.decode()))
        assert server.request("GET", f"/v1/log/consistency?old={size1}").body == proof.body
        for query in ("old=x", "", f"old={cp.size + 1}", f"old=3&new={cp.size + 5}"):
            assert server.request("GET", f"/v1/log/consistency?{query}").status == 422, query
        assert server.request("POST", "/v1/log/checkpoint").status == 405
    finally:
        server.stop()


def test_the_store_keeps_one_verified_line_per_witness(tmp_path: Path, log_store: Vault) -> None:
    from keyvault.engine.witness import keep_cosignatures

    w1 = Identity.generate("witness.example/w1")
    key = cosignature.Witness(w1.name, w1.public_key)
    size, note = newest_checkpoint(log_store.engine)
    text, _ = notes.split_note(note)
    first = cosignature.line(text, w1.name, w1.signing_key, 1_700_000_000)
    second = cosignature.line(text, w1.name, w1.signing_key, 1_700_000_100)
    keep_cosignatures(log_store.engine, size, first, key)
    kept = keep_cosignatures(log_store.engine, size, second, key)
    assert newest_checkpoint(log_store.engine)[1] == kept == note + second  # the newer replaced the older
    other = notes.Checkpoint(engine_origin(log_store.engine_identity.public_key), size + 1, bytes(32)).body()
    for bad in (cosignature.line(other, w1.name, w1.signing_key, 1_700_000_200),  # another checkpoint's
                cosignature.line(text, w1.name, Identity.generate("x").signing_key, 1_700_000_200), b"junk\n"):
        with pytest.raises(ProofError):
            keep_cosignatures(log_store.engine, size, bad, key)
    assert newest_checkpoint(log_store.engine)[1] == kept  # nothing stored
    assert log_store.verify_log() == size


def test_the_witness_server_answers_hostile_requests_and_keeps_serving(served: Served, log_store: Vault) -> None:
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(served.url)

    def raw(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            return conn.getresponse().status
        finally:
            conn.close()

    assert raw("GET", "/add-checkpoint") == 405
    assert raw("POST", "/elsewhere", b"x") == 404
    assert raw("POST", "/add-checkpoint", None, {"Content-Length": "99999999"}) == 413
    # Not a length at all: the HTTP parser refuses the request before the witness sees it.
    assert raw("POST", "/add-checkpoint", None, {"Content-Length": "-1"}) == 400
    assert raw("POST", "/add-checkpoint", None, {"Content-Length": "x"}) == 400
    assert raw("POST", "/add-checkpoint", os.urandom(3000)) == 400
    _, note = newest_checkpoint(log_store.engine)
    assert served.post(request(0, [], note))[0] == 200  # still serving, state intact
    assert served.proc is not None and served.proc.poll() is None


@pytest.mark.parametrize("crash_at", ["write", "fsync", "replace", "dir-fsync"])
def test_a_crash_while_persisting_leaves_the_old_or_the_new_record_and_no_cosignature(
        tmp_path: Path, log_store: Vault, supplier: Identity, monkeypatch: pytest.MonkeyPatch, crash_at: str) -> None:
    """Each step of the atomic replace fails in turn (as a power cut would stop it there): the request gets no
    cosignature, a restarted witness reads a whole record (the old, or the new one it never answered), and from
    then on it cosigns one branch of a fork, never both."""
    witness = a_witness(tmp_path, log_store)
    size1, note1 = newest_checkpoint(log_store.engine)
    assert witness.add_checkpoint(request(0, [], note1)).status == 200
    copy = tmp_path / "forked-store"
    shutil.copytree(log_store.path, copy)
    size2, note2 = grow(log_store, supplier, tmp_path / "a")
    calls = {"fsync": 0}
    real_fsync, real_replace, real_open = os.fsync, os.replace, open

    class Crash(Exception):
        pass

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        if (crash_at == "fsync" and calls["fsync"] == 1) or (crash_at == "dir-fsync" and calls["fsync"] == 2):
            raise Crash
        real_fsync(fd)

    def replace(a: object, b: object) -> None:
        if crash_at == "replace":
            raise Crash
        real_replace(a, b)  # type: ignore[arg-type]

    def opener(file: object, mode: str = "r", *args: object, **kw: object) -> object:
        if crash_at == "write" and str(file).endswith(".tmp") and "w" in mode:
            raise Crash
        return real_open(file, mode, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr("builtins.open", opener)
    with pytest.raises(Crash):
        witness.add_checkpoint(request(size1, consistency_proof(log_store.engine, size1, size2), note2))
    monkeypatch.undo()
    restarted = a_witness(tmp_path, log_store)
    recorded = next(iter(restarted.state().values()))[0]
    assert recorded == (size2 if crash_at == "dir-fsync" else size1)
    # It answered only size1: either branch may be cosigned next, but never both.
    with Vault.open(copy) as forked:
        fork_size, fork_note = grow(forked, supplier, tmp_path / "b", times=3)
        proof = consistency_proof(forked.engine, recorded, fork_size) if recorded == size1 else []
        fork_ok = restarted.add_checkpoint(request(recorded, proof, fork_note)).status == 200
    size3, note3 = grow(log_store, supplier, tmp_path / "a")
    live_ok = False
    for old in {recorded, size1, size2, fork_size}:
        proof = consistency_proof(log_store.engine, old, size3) if old <= size3 else []
        live_ok |= restarted.add_checkpoint(request(old, proof, note3)).status == 200
    assert fork_ok != live_ok
    assert live_ok == (crash_at == "dir-fsync" or not fork_ok)  # recorded size2: the fork is refused


# -- a store names its witnesses; `keyvault serve` submits; a node's witness route ------------------------


def _cosigned_by(note: bytes, identity: Identity) -> bool:
    return bool(cosignature.cosigners(note, [cosignature.Witness(identity.name, identity.public_key)]))


def test_serve_submits_each_new_checkpoint_to_the_witnesses_the_store_names(
        tmp_path: Path, supplier: Identity, served: Served, log_store: Vault) -> None:
    from service_support import Server

    store = log_store.path
    log_store.close()
    w1 = Identity.load(tmp_path / "w1.json")
    w1_pub = tmp_path / "w1.pub"
    w1.public.save(w1_pub)
    assert kv("--store", store, "witness", "submit").returncode != 0  # names none yet: says so
    assert kv("--store", store, "witness", "add", "ftp://x", "--witness", w1_pub).returncode != 0
    added = kv("--store", store, "witness", "add", served.url, "--witness", w1_pub, "--json")
    assert added.returncode == 0 and json.loads(added.stdout)["scope"] == "store", added.stderr
    kv("--store", store, "witness", "add", served.url, "--witness", w1_pub)  # again: still one entry
    listed = json.loads(kv("--store", store, "witness", "list", "--json").stdout)["witnesses"]
    assert [(w["name"], w["url"]) for w in listed] == [(w1.name, served.url)]
    server = Server(store, tmp_path / "serve.log", workers=1).start()
    try:
        def newest() -> bytes:
            return server.request("GET", "/v1/log/checkpoint").body

        deadline = time.monotonic() + 60
        while not _cosigned_by(newest(), w1) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _cosigned_by(newest(), w1), (tmp_path / "serve.log").read_text()[-2000:]
        with Vault.open(store) as vault:  # a new checkpoint while serving: submitted too
            issue(vault, supplier, tmp_path / "more", count=3)
            vault.checkpoint()
            size = newest_checkpoint(vault.engine)[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (_cosigned_by(newest(), w1) and f"\n{size}\n" in newest().decode()):
            time.sleep(0.1)
        assert _cosigned_by(newest(), w1) and f"\n{size}\n" in newest().decode()
        served.kill()  # the witness is down: the service goes on, the failure is logged
        with Vault.open(store) as vault:
            issue(vault, supplier, tmp_path / "more", count=3)
            vault.checkpoint()
        deadline = time.monotonic() + 60
        while "did not cosign" not in (tmp_path / "serve.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "did not cosign" in (tmp_path / "serve.log").read_text()
        assert server.request("GET", "/healthz").status == 200
    finally:
        server.stop()
    by_hand = kv("--store", store, "witness", "submit", "--json")  # to every named witness: it is down
    assert by_hand.returncode != 0 and json.loads(by_hand.stdout)["witnesses"][0]["ok"] is False
    assert kv("--store", store, "witness", "remove", w1.name).returncode == 0
    assert kv("--store", store, "witness", "remove", w1.name).returncode != 0
    assert json.loads(kv("--store", store, "witness", "list", "--json").stdout)["witnesses"] == []


def test_a_node_witness_answers_add_checkpoint_on_the_service(tmp_path: Path, log_store: Vault, supplier: Identity,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from service_support import Server

    size, note = grow(log_store, supplier, tmp_path / "f")
    engine_pub = tmp_path / "engine.pub"
    log_store.engine_identity.save(engine_pub)
    other = Vault.init(tmp_path / "other")  # a store of its own, whose log this witness does not follow
    other.checkpoint()
    foreign = newest_checkpoint(other.engine)[1]
    other.close()
    log_store.close()
    plain = Server(tmp_path / "other", tmp_path / "plain.log", workers=1).start()
    try:  # a node started without a witness identity is no witness
        got = plain.request("POST", "/v1/witness/add-checkpoint", raw=request(0, [], note))
        assert got.status == 404 and "KEYVAULT_WITNESS_IDENTITY" in json.loads(got.body)["detail"]
    finally:
        plain.stop()
    who = Identity.generate("node.example/n1")
    who.save(tmp_path / "node-witness.json")
    monkeypatch.setenv("KEYVAULT_WITNESS_IDENTITY", str(tmp_path / "node-witness.json"))
    monkeypatch.setenv("KEYVAULT_WITNESS_LOGS", str(engine_pub))
    server = Server(tmp_path / "other", tmp_path / "serve.log", workers=2).start()
    try:
        path = "/v1/witness/add-checkpoint"
        got = server.request("POST", path, raw=request(0, [], note))  # no token: witnesses are public
        assert got.status == 200 and _cosigned_by(note + got.body, who)
        again = server.request("POST", path, raw=request(0, [], note))  # a replay: the size it saw
        assert again.status == 409 and again.body == f"{size}\n".encode()
        assert again.headers["content-type"] == "text/x.tlog.size"
        assert server.request("POST", path, raw=request(size, [], note)).status == 200  # the same again is fine
        assert server.request("POST", path, raw=request(0, [], foreign)).status == 404  # a log it does not follow
        assert server.request("POST", path, raw=b"old x\n\n" + note).status == 400
        assert server.request("POST", path, raw=b"x" * (LogWitness.max_request + 1)).status == 413
        assert server.request("GET", path).status == 405
        state = json.loads((tmp_path / "node-witness.json.state" / "witness-state.json").read_text())
        assert list(state["logs"].values())[0]["size"] == size  # durable, beside the identity, not in the store
        assert not (tmp_path / "other" / "witness").exists()
    finally:
        server.stop()
