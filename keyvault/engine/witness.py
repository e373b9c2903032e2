"""Witnessing: a witness's side of C2SP tlog-witness ``add-checkpoint``, the store's side (submit and keep the
cosignatures), and the log as tlog-tiles (read one tile, export them all).

A witness keeps, per log origin, the size and root of the newest checkpoint it cosigned, in one
JSON file replaced atomically (written to a temporary file, fsync'd, renamed, directory fsync'd)
under an exclusive lock, *before* it answers: a witness killed at any moment either answered
nothing or had already recorded what it cosigned, so it never cosigns a checkpoint that is not
a consistent extension of every one it cosigned before.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import now_ms
from ..errors import KeyvaultError, ProofError, StoreCorruptError, StoreFullError, UsageError
from ..formats import cosignature, merkle, tiles
from ..formats.bundle import engine_origin
from ..formats.checkpoint import MAX_NOTE_BYTES, Verifier, open_note, split_note
from ..formats.identity import Identity, PublicIdentity
from ..store.records import CHECKPOINT, from_u64, u64

if TYPE_CHECKING:
    from .state import State

log = logging.getLogger("keyvault.witness")

STATE_FORMAT = "keyvault/witness-state/v1"
#: Environment of `keyvault serve`: this node's witness identity file (0600); unset, the node is no witness.
WITNESS_ENV = "KEYVAULT_WITNESS_IDENTITY"
#: Environment: the public files of the logs this node's witness follows (the cluster's public key), os.pathsep apart.
WITNESS_LOGS_ENV = "KEYVAULT_WITNESS_LOGS"
#: Environment: the directory of this node's witness state (default: beside the identity file, ``FILE.state``).
WITNESS_STATE_ENV = "KEYVAULT_WITNESS_STATE"
#: Meta key of a single store: the witnesses it submits its checkpoints to (JSON).
WITNESSES_META = b"witnesses"
MAX_REQUEST = MAX_NOTE_BYTES + 4096  # an old size line, 63 proof lines and a note
SIZE_TYPE = "text/x.tlog.size"


@dataclass(frozen=True)
class Answer:
    """What the witness answers one add-checkpoint request: HTTP status, body, content type."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def _refuse(status: int, why: str) -> Answer:
    return Answer(status, (why.rstrip(".") + "\n").encode("utf-8"))


class LogWitness:
    """A witness: its cosigning identity, the logs it follows (origin -> engine key), its durable state."""

    max_request = MAX_REQUEST

    def __init__(self, identity: Identity, state_dir: str | os.PathLike[str], logs: Sequence[PublicIdentity]) -> None:
        cosignature.key_id(identity.name, identity.public_key)  # a name a note can carry
        if not logs:
            raise UsageError("a witness needs at least one log to follow: give --log ENGINE.pub (a store's "
                             "`keyvault identity show --public` output)")
        self.identity = identity
        self.key = cosignature.Witness(identity.name, identity.public_key)
        self.logs = {engine_origin(p.public_key): Verifier(engine_origin(p.public_key), p.public_key) for p in logs}
        self.dir = Path(state_dir)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.file = self.dir / "witness-state.json"
        self._lock = threading.Lock()
        self.state()  # a damaged state file refuses to start

    # -- durable state ---------------------------------------------------------------------------

    def state(self) -> dict[str, tuple[int, bytes]]:
        """origin -> (size, root) of the newest checkpoint cosigned; StoreCorruptError if the file is damaged."""
        try:
            data = self.file.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(data)
            if doc["format"] != STATE_FORMAT:
                raise ValueError("format")
            out = {}
            for origin, entry in doc["logs"].items():
                size, root = int(entry["size"]), base64.b64decode(entry["root"], validate=True)
                if size < 0 or len(root) != 32:
                    raise ValueError("entry")
                out[origin] = (size, root)
            return out
        except (ValueError, KeyError, TypeError, AttributeError):
            raise StoreCorruptError(f"the witness state {self.file} is damaged: the witness will not cosign anything "
                                    "until it is restored from a backup") from None

    def _save(self, state: dict[str, tuple[int, bytes]]) -> None:
        doc = {"format": STATE_FORMAT, "logs": {o: {"size": s, "root": base64.b64encode(r).decode()}
                                                for o, (s, r) in sorted(state.items())}}
        tmp = self.dir / "witness-state.json.tmp"
        with open(tmp, "wb") as out:
            out.write(json.dumps(doc, indent=1).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.file)
        handle = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)

    # -- add-checkpoint --------------------------------------------------------------------------

    def add_checkpoint(self, body: bytes) -> Answer:
        """Answer one tlog-witness add-checkpoint request body (C2SP): 200 with a cosignature line, or why not."""
        if len(body) > MAX_REQUEST:
            return _refuse(413, f"the request is larger than {MAX_REQUEST} bytes")
        try:
            old, proof, note = _parse_request(body)
            text, _ = split_note(note)
        except ProofError as exc:
            return _refuse(400, f"malformed request: {exc}")
        origin = text.split(b"\n", 1)[0].decode("utf-8", "replace")
        verifier = self.logs.get(origin)
        if verifier is None:
            return _refuse(404, f"this witness does not follow log {origin[:80]!r}")
        try:
            checkpoint = open_note(note, origin, [verifier])
        except ProofError as exc:
            return _refuse(403, f"the checkpoint is not signed by the key of log {origin!r}: {exc}")
        if old > checkpoint.size:
            return _refuse(400, f"the old size {old} is larger than the checkpoint's size {checkpoint.size}")
        if checkpoint.size == 0 and checkpoint.root != merkle.EMPTY_ROOT:
            return _refuse(422, "a checkpoint of size 0 must carry the root of the empty tree")
        with self._lock, open(self.dir / "witness.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # check and persist atomically, across threads and processes
            state = self.state()
            known_size, known_root = state.get(origin, (0, merkle.EMPTY_ROOT))
            if old != known_size:
                return Answer(409, f"{known_size}\n".encode(), SIZE_TYPE)
            try:
                if old == 0 and proof:
                    raise ProofError("the old size is 0, so the consistency proof must be empty")
                if old == checkpoint.size and checkpoint.root != known_root:
                    raise ProofError(f"a checkpoint of size {old} with another root than the one cosigned: "
                                     "the log forked")
                if 0 < old < checkpoint.size:
                    merkle.verify_consistency(old, checkpoint.size, known_root, checkpoint.root, proof)
            except ProofError as exc:
                return _refuse(422, f"not a consistent extension of the checkpoint cosigned at size {known_size}: {exc}")
            state[origin] = (checkpoint.size, checkpoint.root)
            self._save(state)  # persisted before the cosignature exists
        signed = cosignature.line(text, self.identity.name, self.identity.signing_key, now_ms() // 1000)
        return Answer(200, signed)


def _parse_request(body: bytes) -> tuple[int, list[bytes], bytes]:
    """(old size, proof hashes, note) of an add-checkpoint request body."""
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise ProofError("no empty line between the old size and proof lines and the checkpoint")
    lines = head.decode("ascii", "replace").split("\n")
    first = lines[0]
    number = first[4:]
    if not first.startswith("old ") or not (number == "0" or (number[:1] in "123456789" and number.isdigit()
                                                               and len(number) <= 19)):
        raise ProofError("the first line must be 'old <size>', decimal without leading zeros")
    proof = tiles.decode_proof("".join(line + "\n" for line in lines[1:]))
    return int(number), proof, note


# -- the store's side ----------------------------------------------------------------------------------


def newest_checkpoint(state: State) -> tuple[int, bytes]:
    """(size, note) of the newest signed checkpoint, with the cosignatures stored with it."""
    with state.store.read() as txn:
        last = txn.last_key("checkpoints")
        if last is None:
            raise UsageError("this store has signed no checkpoint yet: run `keyvault checkpoint`")
        return from_u64(last), state.log.note_at(txn, from_u64(last))


def consistency_proof(state: State, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 consistency proof from ``old_size`` to ``new_size`` events, both at most the newest checkpoint."""
    size, _ = newest_checkpoint(state)
    if not 0 <= old_size <= new_size <= size:
        raise UsageError(f"give two sizes with 0 <= OLD <= NEW <= {size} (the newest checkpoint's size), "
                         f"not {old_size} and {new_size}")
    with state.store.read() as txn:
        return state.log.consistency(txn, old_size, new_size)


def keep_cosignatures(state: State, size: int, lines: bytes, witness: cosignature.Witness) -> bytes:
    """Check ``witness``'s cosignature lines against the checkpoint at ``size`` and store them with it; the note."""

    def work(txn: Any) -> bytes:
        stored = txn.get("checkpoints", u64(size))
        if stored is None:
            raise UsageError(f"no checkpoint was signed at size {size}")
        head, note = bytes(stored[:CHECKPOINT.size]), bytes(stored[CHECKPOINT.size:])
        combined = cosignature.merge(note, lines, witness, MAX_NOTE_BYTES)
        if combined != note:  # one line per witness: its newest cosignature replaces an older one
            txn.put("checkpoints", u64(size), head + combined)
        return combined

    result: bytes = state.store.write(work)
    return result


def add_checkpoint_url(url: str) -> str:
    """The add-checkpoint URL of a witness given by its base URL or the full one."""
    base = url.rstrip("/")
    return base if base.endswith("/add-checkpoint") else base + "/add-checkpoint"


class WitnessRefused(ProofError):
    """A witness answered, and refused to cosign (the log is not a consistent extension of what it saw)."""


def ask_witness(url: str, size: int, note: bytes, prove: Callable[[int], list[bytes]], *, old: int = 0,
                timeout: float = 30.0) -> tuple[bytes, int]:
    """One C2SP add-checkpoint exchange: (the witness's cosignature lines, the size it had seen).

    ``prove(old)`` gives the consistency proof from ``old`` to ``size`` events. A 409 answer (the
    witness had seen another size) is retried once more with that size; a witness that saw more
    than ``size`` events, or refuses the proof, is WitnessRefused; an unreachable one KeyvaultError.
    """
    target = add_checkpoint_url(url)
    old = old if 0 <= old <= size else 0  # a hint past this checkpoint: the witness says its size
    for _ in range(3):
        body = f"old {old}\n".encode() + tiles.encode_proof(prove(old) if old else []).encode() + b"\n" + note
        request = urllib.request.Request(target, data=body, method="POST",
                                         headers={"content-type": "text/plain; charset=utf-8"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the operator's URL)
                return response.read(MAX_NOTE_BYTES), old
        except urllib.error.HTTPError as exc:
            answer = exc.read(4096).decode("utf-8", "replace").strip()
            if exc.code == 409:
                try:
                    old = int(answer)
                except ValueError:
                    raise KeyvaultError(f"the witness answered 409 without its size ({answer[:80]!r})") from None
                if old > size:
                    raise WitnessRefused(f"the witness has cosigned {old:,} events of this log, more than the "
                                         f"{size:,} this log holds: the log was rolled back or is a fork; restore "
                                         "the live store or database, never an older copy") from None
                continue
            raise (WitnessRefused if exc.code in (403, 404, 422) else KeyvaultError)(
                f"the witness refused the checkpoint ({exc.code}): {answer[:300]}"
                + ("; this log is not a consistent extension of what it cosigned before: was the store or "
                   "database rolled back or forked?" if exc.code == 422 else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise KeyvaultError(f"cannot reach the witness at {target}: {getattr(exc, 'reason', exc)}; check the "
                                "URL and that the witness runs there") from None
    raise KeyvaultError("the witness kept changing its size; try again")


def submit_checkpoint(state: State, url: str, witness: PublicIdentity | cosignature.Witness, *,
                      timeout: float = 30.0) -> dict[str, Any]:
    """Send the newest checkpoint to a witness's add-checkpoint URL with a consistency proof from the size it
    last cosigned; keep the cosignature it returns with the checkpoint."""
    key = cosignature.Witness(witness.name, witness.public_key)
    size, note = newest_checkpoint(state)
    lines, old = ask_witness(url, size, note, lambda o: consistency_proof(state, o, size), timeout=timeout)
    combined = keep_cosignatures(state, size, lines, key)
    return {"size": size, "old_size": old, "witness": witness.name, "note": combined.decode("utf-8")}


# -- the witnesses a log submits to ---------------------------------------------------------------------


def own_witness_key() -> bytes | None:
    """This node's witness public key, from the identity file $KEYVAULT_WITNESS_IDENTITY names (None if unset)."""
    path = os.environ.get(WITNESS_ENV)
    if not path:
        return None
    try:
        return Identity.load(path).public_key
    except KeyvaultError as exc:
        log.error("this node's witness identity (%s) cannot be read: %s", WITNESS_ENV, exc)
        return None


def node_witness(store: str | os.PathLike[str] | None = None) -> LogWitness | None:
    """This node's witness as the environment configures it (None without $KEYVAULT_WITNESS_IDENTITY); ``store``
    is the serving store (its state is never kept there)."""
    path = os.environ.get(WITNESS_ENV)
    if not path:
        return None
    logs = [PublicIdentity.load(p) for p in os.environ.get(WITNESS_LOGS_ENV, "").split(os.pathsep) if p]
    if not logs:
        raise UsageError(f"{WITNESS_ENV} is set but {WITNESS_LOGS_ENV} names no log to witness: set it to the "
                         "cluster's public file (DIR/cluster.pub of `keyvault cluster local up`)")
    # Beside the identity by default, never in the store: a restored store backup must not roll the witness back.
    state_dir = os.environ.get(WITNESS_STATE_ENV) or Path(path).with_name(Path(path).name + ".state")
    return LogWitness(Identity.load(path), state_dir, logs)


def _clustered(state: State) -> Any:
    """The authority's session maker when the store is bound to a PostgreSQL authority, else None."""
    authority = getattr(state, "authority", None)  # the Engine's: a State alone is never bound
    return authority if getattr(authority, "remote", False) and hasattr(authority, "cluster_identity") else None


def add_witness(state: State, url: str, witness: PublicIdentity) -> dict[str, Any]:
    """Name a witness to submit every new checkpoint to: the cluster's (store bound to an authority) or the store's."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"a witness URL starts with http:// or https://, not {url[:80]!r}")
    key = cosignature.Witness(witness.name, witness.public_key)
    entry = {"name": key.name, "url": url, "vkey": key.vkey()}
    authority = _clustered(state)
    if authority is not None:
        with authority.session() as conn:
            conn.execute("INSERT INTO keyvault_witnesses (public_key, name, url, at_ms) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (public_key) DO UPDATE SET name = excluded.name, url = excluded.url",
                         (key.public_key, key.name, url, now_ms()))
        return {**entry, "scope": "cluster"}

    def work(txn: Any) -> None:
        kept = [w for w in _stored(txn) if w["vkey"] != entry["vkey"]]
        txn.put("meta", WITNESSES_META, json.dumps(kept + [entry]).encode())

    state.store.write(work)
    return {**entry, "scope": "store"}


def _stored(txn: Any) -> list[dict[str, str]]:
    raw = txn.get("meta", WITNESSES_META)
    return [] if raw is None else list(json.loads(bytes(raw)))


def list_witnesses(state: State, *, store_only: bool = False) -> list[dict[str, Any]]:
    """The witnesses new checkpoints are submitted to: name, url, verifier key, and scope (cluster or store);
    with ``store_only``, only those the store itself names (PostgreSQL is not asked)."""
    authority = None if store_only else _clustered(state)
    if authority is not None:
        with authority.session() as conn:
            rows = conn.execute("SELECT name, public_key, url FROM keyvault_witnesses ORDER BY name").fetchall()
        return [{"name": n, "url": u, "vkey": cosignature.Witness(n, bytes(k)).vkey(), "scope": "cluster"}
                for n, k, u in rows]
    with state.store.read() as txn:
        return [{**w, "scope": "store"} for w in _stored(txn)]


def remove_witness(state: State, name: str) -> dict[str, Any]:
    """Stop submitting to the witness of that name (or URL); NotFound-style UsageError when none is named so."""
    authority = _clustered(state)
    if authority is not None:
        with authority.session() as conn:
            gone = conn.execute("DELETE FROM keyvault_witnesses WHERE name = %s OR url = %s RETURNING name",
                                (name, name)).fetchall()
        removed = [r[0] for r in gone]
    else:
        def work(txn: Any) -> list[str]:
            before = _stored(txn)
            kept = [w for w in before if name not in (w["name"], w["url"])]
            txn.put("meta", WITNESSES_META, json.dumps(kept).encode())
            return [w["name"] for w in before if w not in kept]

        removed = state.store.write(work)
    if not removed:
        raise UsageError(f"no witness is named {name[:80]!r}: `keyvault witness list` shows them")
    return {"removed": removed}


def submit_all(state: State, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Submit the newest checkpoint to every witness this store names (not a cluster's: its sequencer does);
    one outcome per witness, failures included (logged), never raised."""
    with state.store.read() as txn:
        named = _stored(txn)
    size, note = newest_checkpoint(state) if named else (0, b"")
    out = []
    for entry in named:
        witness = cosignature.Witness.from_vkey(entry["vkey"])
        if cosignature.cosigners(note, [witness]):
            out.append({"witness": witness.name, "url": entry["url"], "ok": True, "size": size})
            continue  # it cosigned this very checkpoint already
        try:
            done = submit_checkpoint(state, entry["url"], witness, timeout=timeout)
            out.append({"witness": witness.name, "url": entry["url"], "ok": True, "size": done["size"]})
        except KeyvaultError as exc:
            log.warning("witness %s did not cosign this store's checkpoint: %s", witness.name, exc)
            out.append({"witness": witness.name, "url": entry["url"], "ok": False, "error": str(exc)})
    return out


# -- tiles --------------------------------------------------------------------------------------------


def read_tile(state: State, path: str) -> bytes:
    """The bytes of one tile or entry bundle (``tile/...``) of the log up to its newest checkpoint."""
    level, index, width = tiles.parse_tile_path(path)
    size, _ = newest_checkpoint(state)
    if index * tiles.WIDTH + width > size >> (tiles.HEIGHT * max(level, 0)):  # partial tiles of older sizes stay
        raise ProofError(f"the log's newest checkpoint ({size:,} events) has no tile {path}; read the "
                         "checkpoint first and ask for the tiles its size names")
    with state.store.read() as txn:
        if level == -1:
            first = index * tiles.WIDTH
            return tiles.entry_bundle([state.log.leaf(txn, i) for i in range(first, first + width)])
        return tiles.tile_hashes(state.log.perfect(txn), level, index, width)


def export_tiles(state: State, directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the log as tlog-tiles under ``directory`` (checkpoint last); full tiles already there are kept."""
    size, note = newest_checkpoint(state)
    out = Path(directory)
    written = kept = 0
    made: list[Path] = []  # files and directories this export created: removed again if it fails
    try:
        with state.store.read() as txn:
            perfect = state.log.perfect(txn)
            for level, index, width in tiles.tiles(size):
                for lvl in ((level, -1) if level == 0 else (level,)):
                    target = out / tiles.tile_path(lvl, index, width)
                    if width == tiles.WIDTH and target.exists():
                        kept += 1
                        continue
                    if lvl == -1:
                        first = index * tiles.WIDTH
                        data = tiles.entry_bundle([state.log.leaf(txn, i) for i in range(first, first + width)])
                    else:
                        data = tiles.tile_hashes(perfect, lvl, index, width)
                    _write(target, data, made)
                    written += 1
        _write(out / "checkpoint", note, made)
    except OSError as exc:
        for path in reversed(made):  # the newest first: files, then the directories made for them
            try:
                path.rmdir() if path.is_dir() else path.unlink()
            except OSError:
                pass
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"no room on the disk to write the tiles in {out}; what this export wrote was "
                                 "removed (the tiles already there are untouched): free some space and try "
                                 "again") from None
        raise
    return {"size": size, "written": written, "kept": kept, "directory": str(out)}


def _write(target: Path, data: bytes, made: list[Path]) -> None:
    missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    made += reversed(missing)
    tmp = target.with_name(target.name + ".tmp")
    new = not target.exists()
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if new:
        made.append(target)
