"""Backups of a serving store, and restoring them into a new store.

A backup is a directory: ``data.mdb`` (LMDB's compacted copy of one read
transaction, taken while the store serves), ``engine.key`` (0600), the
pepper only when asked for (0600), and ``backup.json``, a manifest of what
it holds (counts, event log size, the newest checkpoint, the data file's
SHA-256). It is written into a temporary directory beside its destination,
checked, and renamed into place: a failure leaves no directory that could be
taken for a backup.

Restoring checks the manifest and the copy again, the pepper against the
store's own record and, given a checkpoint the operator kept from the live
store, that the backup's log extends it (the RFC 9162 consistency proof of
``Engine.check_since``): a stale or forked backup cannot bring spent keys
back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ..clock import iso, now_ms
from ..errors import (
    KeyvaultError,
    PepperError,
    ProofError,
    StoreCorruptError,
    StoreError,
    StoreExistsError,
    StoreFullError,
    UsageError,
)
from ..files import sync, write_new
from ..formats.bundle import Check
from ..formats.events import KINDS, LEAF
from ..formats.identity import Identity
from ..store import LmdbStore
from ..store.lmdbstore import FORMAT as STORE_FORMAT
from ..store.lmdbstore import LMDB_FORMAT
from .answers import Backup, BackupCheckpoint, BackupManifest, Restore, SinceCheck
from .catalog import Catalog
from .eventlog import EventLog
from .keyfiles import ENGINE_FILE, read_engine_key, read_pepper
from .state import State

FORMAT = "keyvault/backup/v1"
MANIFEST = "backup.json"
DATA = "data.mdb"
PEPPER = "pepper"
_CHUNK = 1 << 20
NO_SINCE = ("nothing proves this backup is not stale: it may predate redeems made since, and keys spent after it "
            "was taken would be valid again. Keep a checkpoint of the live store (`keyvault checkpoint --json > "
            "kept.json`, regularly) and restore with --since kept.json to have an older or forked backup refused")


class Restored(Protocol):
    """What a restore opens the new store as: enough to prove its log extends a pinned checkpoint."""

    def check_since(self, old_note: str) -> Check:
        """Whether this store's log extends the one ``old_note`` saw."""

    def close(self) -> None:
        """Close the store."""


def _figures(data_dir: Path, engine: Identity) -> dict[str, Any]:
    """Open the copy in ``data_dir`` read-only, verify its event log, and count what it holds."""
    store = LmdbStore.open(data_dir, readonly=True)
    try:
        with store.read() as txn:
            log = EventLog(engine)
            size = log.verify(txn)  # chain, stored tree, every checkpoint's signature and root
            redeemed = void = 0
            kind_at, redeem, void_kind = LEAF.size - 9, KINDS["redeem"], KINDS["void"]
            for _, leaf in txn.items("events"):  # each leaf's kind byte (the chain was just checked)
                kind = leaf[kind_at]
                redeemed += kind == redeem
                void += kind == void_kind
            cat = Catalog.load(txn, txn.head().generation)
            last = txn.last_key("checkpoints")
            checkpoint = None
            if last is not None:
                newest = log.checkpoints(txn)[-1]
                checkpoint = BackupCheckpoint(newest["size"], newest["root"], newest["note"])
    finally:
        store.close()
    return {"batches": len(cat.batches), "keys": sum(b.count for b in cat.batches.values()), "redeemed": redeemed,
            "void": void, "log_size": size, "checkpoint": checkpoint}


def _sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def read_manifest(src: Path) -> BackupManifest:
    """A backup's manifest, read strictly; StoreCorruptError when it is missing or damaged."""
    path = src / MANIFEST
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=BackupManifest)
    except FileNotFoundError:
        raise StoreError(f"{src} is not a keyvault backup (no {MANIFEST}); make one with `keyvault backup`") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise StoreCorruptError(f"the backup's manifest {path} is damaged ({exc}); use another backup") from None
    if manifest.format != FORMAT:
        raise StoreCorruptError(f"{path} is a {manifest.format!r} manifest; this keyvault reads {FORMAT!r}")
    return manifest


def _verify(manifest: BackupManifest, data_dir: Path, engine: Identity, found: dict[str, Any] | None = None) -> None:
    """The data file in ``data_dir`` and its log are what ``manifest`` says, or StoreCorruptError says what differs.

    ``found``: the copy's figures, when they were just read from it (its log verified).
    """
    if engine.public_key.hex() != manifest.engine_public_key:
        raise StoreCorruptError("the backup's engine key is not the one its manifest names; use another backup")
    size, digest = _sha256(data_dir / DATA)
    if (size, digest) != (manifest.data_bytes, manifest.data_sha256):
        raise StoreCorruptError(f"the backup's {DATA} is not the file its manifest describes ({size:,} bytes, "
                                f"SHA-256 {digest[:16]}…; the manifest says {manifest.data_bytes:,} bytes, "
                                f"{manifest.data_sha256[:16]}…): it was damaged or altered; use another backup")
    try:
        found = found or _figures(data_dir, engine)
    except StoreCorruptError as exc:
        raise StoreCorruptError(f"the backup's copy does not verify: {exc}") from None
    for name, value in found.items():
        if getattr(manifest, name) != value:
            raise StoreCorruptError(f"the backup's manifest says {name} {getattr(manifest, name)!r} but its copy "
                                    f"holds {value!r}: it was altered; use another backup")


def _check_new(dest: Path, what: str) -> None:
    """``dest`` must be a new or empty directory in an existing one."""
    if (dest / MANIFEST).exists():
        raise UsageError(f"{dest} already holds a backup; {what} into a new or empty directory")
    if (dest / DATA).exists():
        raise StoreExistsError(f"{dest} already holds a keyvault store; {what} into a new or empty directory")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is a file; {what} into a new or empty directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise UsageError(f"{dest} is not empty; {what} into a new or empty directory")
    if not dest.absolute().parent.is_dir():
        raise UsageError(f"{dest.absolute().parent} does not exist; create it first")


@contextmanager
def _staged(dest: Path, what: str) -> Iterator[Path]:
    """A temporary directory beside ``dest``, renamed to it when the block succeeds and removed when it fails."""
    dest = dest.absolute()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{what}-", dir=dest.parent))
    except OSError as exc:
        raise _os_error(dest, exc) from None
    try:
        yield tmp
        for path in [*tmp.iterdir(), tmp]:
            sync(path)
        os.rename(tmp, dest)  # replaces an empty directory; refuses one that filled up meanwhile
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, KeyvaultError):
            raise _os_error(dest, exc) from None
        raise
    sync(dest.parent)


def _os_error(dest: Path, exc: OSError) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"no room on the disk for {dest}; nothing was left behind: free some space and try "
                              "again")
    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
        return StoreError(f"{dest} was filled by someone else meanwhile; nothing was written: choose another "
                          "directory")
    return StoreError(f"cannot write {dest}: {exc.strerror}; nothing was left behind")


def take(engine: State, dest: Path, with_pepper: bool) -> Backup:
    """Back the serving store up into ``dest`` (a new or empty directory); its manifest, and where it is."""
    _check_new(dest, "back up")
    try:  # the copy's newest checkpoint is at most a moment old
        engine.store.write(lambda txn: engine.log.maybe_checkpoint(txn, now_ms(), force=True))
    except StoreFullError:
        pass  # a store on a full disk is backed up all the same, with the newest checkpoint it has
    with _staged(dest, "backup") as tmp:
        engine.store.copy_to(tmp)
        engine.log.engine.save(tmp / ENGINE_FILE)
        if with_pepper:
            write_new(tmp / PEPPER, engine.pepper.hex().encode() + b"\n", mode=0o600)
        size, digest = _sha256(tmp / DATA)
        found = _figures(tmp, engine.log.engine)  # the copy opened read-only, its whole log verified
        manifest = BackupManifest(format=FORMAT, created_at=str(iso(now_ms())), store_format=STORE_FORMAT.decode(),
                                  lmdb=LMDB_FORMAT, engine_public_key=engine.log.engine.public_key.hex(),
                                  data_bytes=size, data_sha256=digest, pepper=with_pepper, **found)
        (tmp / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=1) + b"\n")
        _verify(read_manifest(tmp), tmp, read_engine_key(tmp / ENGINE_FILE), found)  # read back as a restore will
    return Backup(**msgspec.structs.asdict(manifest), path=str(dest))


def restore(src: str | os.PathLike[str], dest: str | os.PathLike[str], opener: Callable[[Path, Path], Restored], *,
            since: str | Sequence[str] | None = None,
            pepper_file: str | os.PathLike[str] | None = None) -> Restore:
    """Restore the backup in ``src`` into the new store directory ``dest``, checked; what was restored.

    ``since`` is a checkpoint note kept from the live store (or several): a backup whose log does not extend
    each of them is refused (ProofError). ``pepper_file`` is the store's pepper when the backup holds none
    (it then stays where it is). ``opener(store directory, pepper file)`` opens the restored store.
    """
    source, target = Path(src), Path(dest)
    manifest = read_manifest(source)
    _check_new(target, "restore")
    if pepper_file is None and not (source / PEPPER).exists():
        raise PepperError(f"the backup {source} holds no pepper (it was made without --with-pepper): pass the "
                          "store's pepper file with --pepper-file")
    with _staged(target, "restore") as tmp:
        shutil.copyfile(source / DATA, tmp / DATA)
        engine_key = read_engine_key(source / ENGINE_FILE)
        engine_key.save(tmp / ENGINE_FILE)
        if pepper_file is None:
            write_new(tmp / PEPPER, read_pepper(source / PEPPER).hex().encode() + b"\n", mode=0o600)
            pepper_path = tmp / PEPPER
        else:
            pepper_path = Path(pepper_file)
        _verify(manifest, tmp, engine_key)  # the bytes restored, not the ones read before
        store = opener(tmp, pepper_path)  # PepperError when the pepper is not this store's
        notes = [since] if isinstance(since, str) else list(since or [])
        try:
            checks = [store.check_since(note) for note in notes]
        finally:
            store.close()
        for check in checks:
            if not check.ok:
                raise ProofError(f"refused: the backup does not extend the checkpoint you pinned ({check.detail}). "
                                 "It is older than that checkpoint or from another history, and restoring it could "
                                 "bring spent keys back: restore a newer backup of this store")
    final_pepper = target / PEPPER if pepper_file is None else Path(pepper_file)
    return Restore(store=str(target), backup=str(source), pepper_file=str(final_pepper), manifest=manifest,
                   since=[SinceCheck(ok=check.ok, detail=check.detail) for check in checks],
                   warning=None if checks else NO_SINCE)
