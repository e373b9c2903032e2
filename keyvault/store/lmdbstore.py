"""The LMDB environment: opening, growth, and short transactions behind a narrow interface.

This module owns the environment: it is opened once per process (py-lmdb
guards against a second open) and nothing else links liblmdb. Writes are
serialised in-process by a lock (LMDB allows one writer; two in one process
deadlock, py-lmdb #394) and across processes by LMDB's own lock. The map
starts at 256 MiB (the file is sparse) and doubles on MapFullError; other
processes pick the new size up on MapResizedError. ``set_mapsize`` needs no
transaction open in the process (py-lmdb #97), so a gate holds new readers
back while the map is resized.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

import lmdb

from ..errors import (
    ClosedError,
    NotAStoreError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreVersionError,
)
from . import records
from .records import u64

T = TypeVar("T")

FORMAT = b"keyvault-store/3"
DATABASES = ("meta", "cards", "outcomes", "locators", "upstream", "batches", "commitments", "manifests", "suppliers",
             "prefixes", "trust", "custody", "blacklist", "events", "tree", "checkpoints", "subjects", "counters",
             "checkout", "roster")
#: Databases a store made by an earlier keyvault may lack: made when it is first opened for writing (the
#: roster lists the checkout records already there).
ADDED_LATER = ("checkout", "roster")
INITIAL_MAP_SIZE = 256 << 20
MAX_READERS = 1024  # fixed by the first opener; web workers x threads need more than the default 126
# LMDB 0.9's lock file for MAX_READERS (64-bit): a 192-byte MDB_txninfo that holds the first 64-byte reader slot, then
# one slot per further reader. A larger file would raise LMDB's reader limit to fit it; a smaller one, be extended.
_LOCK_FILE_SIZE = 192 + 64 * (MAX_READERS - 1)
LMDB_FORMAT = "%d.%d" % lmdb.version()[:2]  # on-disk formats of LMDB 0.9 and 1.0 differ

_CORRUPT = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError,
            lmdb.BadRslotError, lmdb.BadTxnError,  # (BadTxnError: a transaction that already met damage)
            lmdb.IncompatibleError,  # a named database whose flags were damaged: keyvault never changes them
            lmdb.CursorFullError,  # a tree deeper than LMDB allows: damaged page links
            lmdb.PageFullError,  # a page's free-space bounds damaged: found when a write adds to it
            lmdb.BadValsizeError,  # a write of a key or value read back from a damaged node's sizes (keyvault
            # bounds every key and value it makes itself)
            lmdb.BadDbiError,  # a named database's record damaged under an open handle
            lmdb.InvalidParameterError)  # a commit refused over a damaged meta page (EINVAL)


_OPEN: weakref.WeakSet[Any] = weakref.WeakSet()  # open handles, made unusable in a child after fork()


def _forked() -> None:
    for handle in list(_OPEN):
        handle._usable = False


os.register_at_fork(after_in_child=_forked)


def unusable_after_fork(handle: Any) -> None:
    """Set ``handle._usable`` to False in a child after fork(): a flag to check instead of getpid() per call."""
    _OPEN.add(handle)


class _Gate:
    """Readers share the gate; a map resize waits for them to leave and keeps new ones out.

    Entering and leaving are an append to and a pop from a list (atomic, no lock); only a pending
    resize takes the lock, waits or wakes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._inside: list[None] = []  # one item per reader inside
        self._resizing = False

    def enter(self) -> None:
        self._inside.append(None)
        if self._resizing:  # set before the resize counts readers: it waits for this one, or this one waits
            with self._lock:
                self._inside.pop()
                self._changed.notify_all()
                while self._resizing:
                    self._changed.wait()
                self._inside.append(None)

    def leave(self) -> None:
        self._inside.pop()
        if self._resizing:
            with self._lock:
                self._changed.notify_all()

    @contextmanager
    def resizing(self) -> Iterator[None]:
        with self._lock:
            while self._resizing:
                self._changed.wait()
            self._resizing = True
            while self._inside:
                self._changed.wait()
        try:
            yield
        finally:
            with self._lock:
                self._resizing = False
                self._changed.notify_all()


class Reading:
    """``with store.read() as txn``: a short read transaction inside the gate (a class: cheaper than a generator)."""

    __slots__ = ("_store", "_txn")

    def __init__(self, store: LmdbStore) -> None:
        self._store = store
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> Txn:
        self._txn = self._store.begin_read()
        return Txn(self._txn, self._store._dbs)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        txn, self._txn = self._txn, None
        if txn is not None:
            self._store.end_read(txn)
        if exc is not None and isinstance(exc, _CORRUPT):
            raise _corrupt(self._store.path, exc) from None


#: What a py-lmdb call can raise (the single-key hot path falls back to the checked path on any of them).
LMDB_ERRORS = (lmdb.Error,)



class Head(NamedTuple):
    """The store's head record (meta/head)."""

    generation: int  # bumped by every change to batches, suppliers, trust or the blacklist
    log_size: int  # events in the event log (the next event's index)
    folded: int  # log size at the last fold: redeems and voids before it are in the card records


class Txn:
    """One transaction over the store's databases; the only way the engine touches LMDB."""

    __slots__ = ("_txn", "_dbs", "bumped")

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._dbs = dbs
        self.bumped = False  # this transaction changed the configuration (it may still abort)

    def get(self, db: str, key: bytes) -> bytes | None:
        """The value under ``key``, or None."""
        value: bytes | None = self._txn.get(key, db=self._dbs[db])
        return value

    def put(self, db: str, key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        """Store a value; False when ``overwrite`` is off and the key exists."""
        return bool(self._txn.put(key, value, db=self._dbs[db], overwrite=overwrite))

    def delete(self, db: str, key: bytes) -> bool:
        """Remove a key; False when it was not there."""
        return bool(self._txn.delete(key, db=self._dbs[db]))

    def items(self, db: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order."""
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            yield key, value

    def items_from(self, db: str, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) from ``start`` on, in key order."""
        cursor = self._txn.cursor(db=self._dbs[db])
        if cursor.set_range(start):
            yield from cursor

    def put_sorted(self, db: str, pairs: list[tuple[bytes, bytes]]) -> int:
        """Insert pairs sorted by key, refusing duplicates; how many were added."""
        cursor = self._txn.cursor(db=self._dbs[db])
        last = cursor.key() if cursor.last() else b""
        append = bool(pairs) and pairs[0][0] > last
        _, added = cursor.putmulti(pairs, dupdata=False, overwrite=False, append=append)
        return int(added)

    def cursor(self, db: str) -> lmdb.Cursor:
        """A raw py-lmdb cursor, for the compiled hot path's bulk reads."""
        return self._txn.cursor(db=self._dbs[db])

    def get_many(self, db: str, keys: list[bytes]) -> list[tuple[bytes, bytes]]:
        """(key, value) for each of ``keys`` that is present (sorted keys read fastest), in one call."""
        pairs: list[tuple[bytes, bytes]] = self._txn.cursor(db=self._dbs[db]).getmulti(keys)
        return pairs

    def put_many(self, db: str, pairs: list[tuple[bytes, bytes]]) -> None:
        """Store many pairs (sorted by key for speed), overwriting what is there."""
        self._txn.cursor(db=self._dbs[db]).putmulti(pairs, dupdata=False, overwrite=True)

    def clear(self, db: str) -> None:
        """Delete every key of ``db`` (the database itself stays)."""
        self._txn.drop(self._dbs[db], delete=False)

    def last_key(self, db: str) -> bytes | None:
        """The greatest key in ``db``."""
        cursor = self._txn.cursor(db=self._dbs[db])
        return cursor.key() if cursor.last() else None

    def counter(self, key: bytes) -> int:
        """A counter's value (0 when never counted)."""
        value = self.get("counters", key)
        return records.from_u64(value) if value else 0

    def add(self, key: bytes, delta: int) -> None:
        """Add ``delta`` to a counter."""
        self.put("counters", key, u64(self.counter(key) + delta))

    def head(self) -> Head:
        """What every check reads first, in one lookup: configuration generation, log size and fold mark."""
        value = self.get("meta", b"head")
        return Head(*records.HEAD.unpack(value)) if value else Head(0, 0, 0)

    def set_head(self, head: Head) -> None:
        """Record a new head (writers only, inside their transaction)."""
        self.put("meta", b"head", records.HEAD.pack(*head))

    def bump_generation(self) -> None:
        """Tell every process that cached configuration (batches, suppliers, blacklist) is stale."""
        head = self.head()
        self.set_head(head._replace(generation=head.generation + 1))
        self.bumped = True


class LmdbStore:
    """One process's handle on a store directory's LMDB environment."""

    def __init__(self, env: lmdb.Environment, dbs: dict[str, lmdb._Database], path: Path) -> None:
        self._env = env
        self._dbs = dbs
        self.path = path
        self._pid = os.getpid()
        self._write_lock = threading.Lock()
        self._gate = _Gate()
        self._closed = False
        self._usable = True  # False once closed, and in a child after fork(): _check() then says which
        unusable_after_fork(self)

    @classmethod
    def create(cls, path: Path) -> LmdbStore:
        """Make a new, empty store in ``path`` (which must hold no store)."""
        allocate_lock_file(path / "lock.mdb")
        env = _open_env(path, create=True)
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name.encode(), txn=txn, create=True) for name in DATABASES}
            meta = dbs["meta"]
            txn.put(b"format", FORMAT, db=meta)
            txn.put(b"lmdb", LMDB_FORMAT.encode(), db=meta)
        return cls(env, dbs, path)

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> LmdbStore:
        """Open an existing store, refusing other formats with a clear message.

        ``readonly`` opens a copy no process serves (a backup) without LMDB's lock file: nothing is written.
        """
        if not (path / "data.mdb").is_file():
            raise NotAStoreError(f"{path} is not a keyvault store (no data.mdb); create one with "
                                 f"`keyvault --store {path} init`")
        _check_lmdb_file(path / "data.mdb")
        had_lock = (path / "lock.mdb").exists()
        try:
            return cls._open_checked(path, readonly)
        except BaseException:
            if not had_lock:  # refusing a directory must leave it as it was
                (path / "lock.mdb").unlink(missing_ok=True)
            raise

    @classmethod
    def _open_checked(cls, path: Path, readonly: bool = False) -> LmdbStore:
        env = _open_env(path, create=False, readonly=readonly)
        try:
            with env.begin() as txn:
                if txn.get(b"meta") is None:
                    raise NotAStoreError(f"{path} holds an LMDB database, but not a keyvault store (if it was one, "
                                         "its data.mdb is damaged: restore it from a backup)")
                meta = env.open_db(b"meta", txn=txn, create=False)
                fmt = txn.get(b"format", db=meta)
                if fmt != FORMAT:
                    shown = fmt.decode("ascii", "replace") if fmt else "none"
                    raise StoreVersionError(
                        f"{path} is a store in format {shown!r}; this keyvault reads {FORMAT.decode()!r}: "
                        "open it with the keyvault version that wrote it"
                    )
                written = (txn.get(b"lmdb", db=meta) or b"?").decode("ascii", "replace")
                if written != LMDB_FORMAT:
                    raise StoreVersionError(f"{path} was written by LMDB {written}, whose on-disk format differs from "
                                            f"LMDB {LMDB_FORMAT} used here: export it with the keyvault that wrote it")
                missing = [name for name in DATABASES if txn.get(name.encode()) is None]
            later = [name for name in missing if name in ADDED_LATER and not readonly]
            missing = [name for name in missing if name not in later]
            if missing:  # (before anything is written: a damaged store is left as it was)
                raise StoreVersionError(f"{path} lacks the {missing[0]!r} database: it is damaged or "
                                        "from another keyvault version; restore it from a backup")
            if later:  # a store of an earlier keyvault: its new databases start empty
                with env.begin(write=True) as txn:
                    for name in later:
                        env.open_db(name.encode(), txn=txn, create=True)
                    if "roster" in later:
                        checkout, roster = (env.open_db(name, txn=txn) for name in (b"checkout", b"roster"))
                        for key in txn.cursor(db=checkout).iternext(values=False):
                            if bytes(key[:1]) in records.ROSTERED:
                                txn.put(key, b"", db=roster)
            # Handles opened inside a read transaction die with it: let py-lmdb open them in its own.
            dbs = {name: env.open_db(name.encode(), create=False) for name in DATABASES}
        except (*_CORRUPT, lmdb.Error) as exc:  # the environment opened: what fails while checking it is damage
            env.close()
            raise StoreCorruptError(f"{path} is damaged ({exc.__class__.__name__}); restore it from a backup") from None
        except BaseException:
            env.close()
            raise
        return cls(env, dbs, path)

    def check_open(self) -> None:
        """Raise ClosedError unless this handle is open, in the process that opened it."""
        self._check()

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("this vault is closed; open it again with Vault.open()")
        if os.getpid() != self._pid:
            raise ClosedError("this vault was opened before fork(); open it again in each worker process")

    def read(self) -> Reading:
        """A short read transaction (keep it short: long readers stop page reuse)."""
        return Reading(self)

    def begin_read(self) -> lmdb.Transaction:
        """A raw py-lmdb read transaction inside the gate, for the single-key hot path; end it with end_read."""
        if not self._usable:
            self._check()
        gate = self._gate
        for _ in range(8):
            gate._inside.append(None)  # gate.enter(), inlined: this is every verify's fixed cost
            if gate._resizing:
                gate._inside.pop()
                gate.enter()
            try:
                return self._env.begin()
            except lmdb.MapResizedError:
                gate.leave()
                self._adopt_map_size()
            except BaseException:
                gate.leave()
                raise
        raise StoreError(f"{self.path}: the map kept being resized by another process; try again")

    def end_read(self, txn: lmdb.Transaction) -> None:
        """End a transaction from begin_read."""
        try:
            txn.abort()
        finally:
            gate = self._gate
            gate._inside.pop()  # gate.leave(), inlined
            if gate._resizing:
                with gate._lock:
                    gate._changed.notify_all()

    def wrap(self, txn: lmdb.Transaction) -> Txn:
        """A begin_read transaction behind the store's Txn interface."""
        return Txn(txn, self._dbs)

    def handle(self, name: str) -> lmdb._Database:
        """A named database's py-lmdb handle, for reads through a begin_read transaction."""
        return self._dbs[name]

    def write(self, work: Callable[[Txn], T], before_commit: Callable[[], None] | None = None) -> T:
        """Run ``work`` in one write transaction and commit it durably; grow the map and retry when full.

        ``work`` may run more than once (after a resize), so it must not act outside the transaction.
        ``before_commit`` is called just before the commit writes and flushes (the GIL is free then).
        """
        self._check()
        for _ in range(32):
            with self._write_lock:
                try:
                    self._gate.enter()
                    try:
                        txn = self._env.begin(write=True)
                        try:
                            result = work(Txn(txn, self._dbs))
                            if before_commit is not None:
                                before_commit()
                            txn.commit()
                            return result
                        except BaseException:
                            txn.abort()
                            raise
                    finally:
                        self._gate.leave()
                except lmdb.MapFullError:
                    self._grow()
                except lmdb.MapResizedError:
                    self._adopt_map_size()
                except lmdb.DiskError as exc:
                    raise _disk_error(self.path, exc) from None
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise _disk_error(self.path, exc) from None
                    raise
                except _CORRUPT as exc:
                    raise _corrupt(self.path, exc) from None
                except lmdb.Error as exc:  # a full disk mid-write comes back as EIO (LMDB: "short write")
                    failed = _write_failed(self.path, exc)
                    if failed is None:
                        raise
                    raise failed from None
        raise StoreError(f"{self.path}: could not complete a write after growing the map; check free disk space")

    def copy_to(self, dest: Path) -> None:
        """Write a consistent, compacted copy of the store as ``dest``/data.mdb while it serves (``dest`` exists).

        LMDB copies one read transaction's snapshot: writers go on meanwhile, and pages they free are not
        reused until the copy ends.
        """
        self._check()
        for _ in range(8):
            try:
                self._gate.enter()
                try:
                    self._env.copy(str(dest), compact=True)
                    return
                finally:
                    self._gate.leave()
            except lmdb.MapResizedError:
                self._adopt_map_size()
            except lmdb.Error as exc:
                message = str(exc)
                if any(message.endswith(os.strerror(code)) for code in (errno.ENOSPC, errno.EDQUOT)):
                    raise StoreFullError(f"the disk holding {dest} has no room for a copy of the store ({exc}): "
                                         "free some space and try again") from None
                raise StoreError(f"cannot copy the store to {dest} ({exc}): check the directory and try again"
                                 ) from None
        raise StoreError(f"{self.path}: the map kept being resized by another process; try again")

    def _grow(self) -> None:
        with self._gate.resizing():
            size = self._env.info()["map_size"]
            try:
                self._env.set_mapsize(size * 2)
            except lmdb.MemoryError:
                raise StoreCorruptError(f"{self.path}: the store's map cannot grow to {size * 2:,} bytes (no address "
                                        "space for it): its size in the store's header may be damaged; run "
                                        "`keyvault check` and restore the store from a backup") from None

    def _adopt_map_size(self) -> None:
        with self._gate.resizing():
            self._env.set_mapsize(0)  # 0: take the size another process has set

    def reader_check(self) -> int:
        """Clear reader slots left by dead processes; how many were cleared."""
        return int(self._env.reader_check())

    def info(self) -> dict[str, int]:
        """LMDB's environment info (map size, last page, readers)."""
        info: dict[str, int] = self._env.info()
        return info

    def close(self) -> None:
        """Close the environment; further use raises ClosedError."""
        if not self._closed:
            self._closed = True
            self._usable = False
            if os.getpid() == self._pid:
                self._env.close()


_META = struct.Struct("<16xII")  # LMDB 0.9 meta page: 16-byte page header, then magic and format version
_MAGIC = 0xBEEFC0DE
# The rest of an LMDB 0.9 meta page (data version 1) that says how much of the file is in use: the page size
# (the free DB's md_pad), the last page used and the transaction id.
_META_USE = struct.Struct("<16xII16xI92xQQ")
_DATA_VERSION = 1


def _check_lmdb_file(data: Path) -> None:
    """Refuse a data.mdb that is not an LMDB file, or is shorter than its pages in use, before LMDB maps it.

    LMDB reads pages through a memory map: a page past the end of a truncated file is a SIGBUS that
    kills the process, not an error, so a truncated file must be refused before it is opened.
    """
    try:
        with open(data, "rb") as fh:
            head = fh.read(_META_USE.size)
            if len(head) < _META.size or _META.unpack_from(head)[0] != _MAGIC:
                raise NotAStoreError(f"{data.parent} is not a keyvault store: {data.name} is not an LMDB file "
                                     "(it is damaged, truncated or something else)")
            used = _bytes_in_use(fh, head)
            size = os.fstat(fh.fileno()).st_size  # after the meta pages: a commit writes its pages first
    except OSError as exc:
        raise StoreError(f"cannot read {data}: {exc.strerror}") from None
    if used is not None and size < used and not _tail_unused(data, size):
        raise StoreCorruptError(f"the store at {data.parent} is damaged: {data.name} is shorter than its last "
                                f"committed transaction says ({size:,} bytes, not {used:,}): it was truncated, or its "
                                "header is damaged; restore it from a backup")


def _bytes_in_use(fh: BinaryIO, first: bytes) -> int | None:
    """Bytes of the file the newest meta page uses (the one LMDB will pick), or None when LMDB itself must judge
    the meta pages (unreadable, another format: it refuses those with an error of its own). A page size no
    LMDB writes is refused here."""
    if len(first) < _META_USE.size:
        return None
    psize = int(_META_USE.unpack_from(first)[2])
    if psize < 512 or psize > 65536 or psize & (psize - 1):  # LMDB would say only "Invalid argument"
        raise StoreCorruptError(f"the store at {Path(fh.name).parent} is damaged: the header of "
                                f"{Path(fh.name).name} names a page size of {psize:,} bytes; restore it from a backup")
    fh.seek(psize)
    second = fh.read(_META_USE.size)
    best: tuple[int, int] | None = None
    for page in (first, second):
        if len(page) < _META_USE.size:
            return None
        magic, version, _, last_page, txnid = _META_USE.unpack_from(page)
        if magic != _MAGIC or version != _DATA_VERSION:
            return None
        if best is None or txnid > best[1]:  # as LMDB chooses: the higher transaction id, the first on a tie
            best = (last_page, txnid)
    assert best is not None
    return (best[0] + 1) * psize


_PAGE_HEAD = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
_NODE_HEAD = struct.Struct("<HHHH")  # lo, hi, flags, key size
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_LEAF2 = 0x01, 0x02, 0x04, 0x20
_F_BIGDATA, _F_SUBDATA = 0x01, 0x02
_NO_PAGE = 0xFFFFFFFFFFFFFFFF
_ROOTS = struct.Struct("<80xQ40xQ")  # in a meta page: the free DB's and the main DB's root pages


def _tail_unused(data: Path, size: int) -> bool:
    """True when every page LMDB can reach from the newest meta page lies inside the file.

    A file may legitimately end before the last page a transaction allocated: pages allocated and
    freed again in the same transaction go on the freelist without ever being written. Only pages
    reachable from the roots are ever read, so walking them tells a short but healthy file from a
    truncated one, without mapping it (a page past the end would be a SIGBUS). Only run in that
    rare case; it reads every page in use once.
    """
    with open(data, "rb") as fh:
        head = fh.read(_META_USE.size)
        psize = int(_META_USE.unpack_from(head)[2])
        if size % psize:
            return False  # LMDB writes whole pages: a cut inside one is a truncation
        pages = size // psize
        fh.seek(psize)
        second = fh.read(_META_USE.size)
        newest = max((head, second), key=lambda meta: _META_USE.unpack_from(meta)[4])
        todo = [root for root in _ROOTS.unpack_from(newest) if root != _NO_PAGE]
        seen: set[int] = set()
        while todo:
            pgno = todo.pop()
            if pgno >= pages:
                return False
            if pgno in seen:
                continue
            seen.add(pgno)
            fh.seek(pgno * psize)
            page = fh.read(psize)
            _, _, flags, lower, _ = _PAGE_HEAD.unpack_from(page)
            if flags & _P_OVERFLOW:  # its page count sits where lower and upper would be
                count = int.from_bytes(page[12:16], "little")
                if pgno + count > pages:
                    return False
                continue
            if flags & _P_LEAF2 or not flags & (_P_BRANCH | _P_LEAF):
                continue  # fixed-size keys hold no pointers; anything else is for LMDB itself to judge
            for i in range((lower - _PAGE_HEAD.size) // 2):
                at = int.from_bytes(page[_PAGE_HEAD.size + 2 * i:_PAGE_HEAD.size + 2 * i + 2], "little")
                if at + _NODE_HEAD.size > psize:
                    continue
                lo, hi, nflags, ksize = _NODE_HEAD.unpack_from(page, at)
                value = at + _NODE_HEAD.size + ksize
                if flags & _P_BRANCH:
                    todo.append(lo | hi << 16 | nflags << 32)
                elif nflags & _F_BIGDATA and value + 8 <= psize:
                    todo.append(int.from_bytes(page[value:value + 8], "little"))
                elif nflags & _F_SUBDATA and value + 48 <= psize:
                    root = int.from_bytes(page[value + 40:value + 48], "little")
                    if root != _NO_PAGE:
                        todo.append(root)
    return True


def _open_env(path: Path, create: bool, readonly: bool = False) -> lmdb.Environment:
    try:
        env = lmdb.open(str(path), subdir=True, create=create, map_size=INITIAL_MAP_SIZE, max_dbs=len(DATABASES) + 2,
                        max_readers=MAX_READERS, readahead=False, lock=not readonly, readonly=readonly, sync=True,
                        metasync=True)
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from None
    except lmdb.Error as exc:
        raise StoreError(f"cannot open the store at {path}: {exc}") from None
    if not readonly:
        env.reader_check()
    return env


def allocate_lock_file(lock: Path) -> None:
    """Make a new LMDB lock file with its disk blocks allocated, before LMDB first opens it.

    LMDB sizes its lock file with ftruncate (a sparse file) and writes the reader table through a
    memory map: on a full disk, the first reader whose slot lies in a page never written before
    would kill the process with SIGBUS. LMDB takes a lock file of the size it wants as it is. Only
    ever done here, before any process holds LMDB's fcntl lock on the file: closing a descriptor of
    a lock file in use drops this process's lock on it, and the next opener would reset the table.
    """
    path = lock.parent
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create the store at {path}: {exc.strerror}") from None
    try:
        os.posix_fallocate(fd, 0, _LOCK_FILE_SIZE)
    except OSError as exc:
        os.close(fd)
        lock.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_error(path, exc) from None
        return  # no fallocate here: LMDB makes the file itself
    os.close(fd)


def _corrupt(path: Path, exc: Exception) -> StoreCorruptError:
    return StoreCorruptError(f"the store at {path} is damaged ({exc.__class__.__name__}): nothing was decided; "
                             "run `keyvault check` and restore it from a backup")


_NEARLY_FULL = 4 << 20  # free bytes under which a write's I/O error is taken for a full disk


def _write_failed(path: Path, exc: lmdb.Error) -> StoreError | None:
    """A write that failed for want of space, or with an I/O error, as a keyvault error (None: neither).

    LMDB reports a write cut short by a full disk as EIO, as it does a failing disk: the free space
    left on the disk tells the two apart. Either way the transaction was not committed.
    """
    message = str(exc)
    if any(message.endswith(os.strerror(code)) for code in (errno.ENOSPC, errno.EDQUOT)):
        return _disk_error(path, exc)
    if not message.endswith(os.strerror(errno.EIO)):
        return None
    try:
        fs = os.statvfs(path)
        full = fs.f_bavail * fs.f_frsize < _NEARLY_FULL
    except OSError:
        full = False
    if full:
        return _disk_error(path, exc)
    return StoreError(f"writing the store at {path} failed ({exc}): the disk is failing, or was full for a "
                      "moment; nothing was changed: check the disk and try again")


def _disk_error(path: Path, exc: Exception) -> StoreFullError:
    return StoreFullError(f"the disk holding {path} has no room for this write ({exc}); nothing was changed: "
                          "free some space and try again")
