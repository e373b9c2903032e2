"""The cluster's one event log: numbered by one node at a time, checked by every node.

Every change (redeem, void, blacklist add and lift) writes its row in ``keyvault_changes`` in the
transaction that decides it. The *sequencer* — whichever node process holds PostgreSQL's advisory
lock :data:`LOG_LOCK` on its own session — turns those rows, in change-number order, into the leaves of
one RFC 9162 Merkle log (``keyvault_log``): version 2 event leaves, hash-chained and linked to the
previous event about each subject exactly as a single store writes them (docs/provenance.md). It signs
checkpoints with the **cluster engine key** (``keyvault_checkpoints``), each only after checking that its
tree extends the last signed one. When its session ends (the node died), another node's sequencer takes
the lock and goes on from what PostgreSQL holds.

Order without gaps: change numbers are drawn when a transaction runs and become visible when it
commits, so a lower number can appear after a higher one. Before each batch the sequencer reads the
sequence's last number L and waits until every transaction of this database that began before that
read has ended; then every change numbered up to L is either visible or never will be, and the batch
takes exactly those, in order.

The fence: a batch is one transaction that locks the head row (size, last leaf hash, change reached),
inserts the leaves under their indices (primary key: an index is never taken twice; unique change:
a change is never logged twice) and moves the head only from the head it read. Two sequencers (the lock
bypassed, or a session thought dead) cannot both append after the same head: the second finds the head
moved, rolls back, and reloads.

Every node's *mirror* (:class:`Mirror`) reads the log after the position it has checked, checks each leaf
against the one before (index, previous hash, its hash column), and each checkpoint's signature and root
against the leaves; a row altered in PostgreSQL is reported (:class:`~keyvault.errors.StoreCorruptError`),
never believed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ... import _fast
from ...clock import now_ms
from ...errors import AuthorityError, IdentityError, KeyvaultError, ProofError, StoreCorruptError
from ...formats import cosignature, history, merkle
from ...formats.checkpoint import MAX_NOTE_BYTES, TIME_LINE, Checkpoint, Verifier, open_note, sign
from ...formats.events import CHANGE_BODY, KINDS, LEAF, encode_links, split_leaf
from ...formats.bundle import engine_origin
from ...formats.identity import Identity
from ...formats.keyformat import batch_text, serial_text
from ...formats.manifest import read_manifest
from ...store.records import dump, u64
from ..catalog import blacklist_target
from ..checkout import order_subject
from ..witness import WITNESS_ENV, ask_witness, own_witness_key

log = logging.getLogger("keyvault.cluster_log")

#: The advisory lock whose holder numbers the cluster log (one session in the whole cluster).
LOG_LOCK = 7264932
#: The change kinds that are events of the log (a manifest put in force is its batch's import event; tokens
#: and trust pins travel but are not logged).
LOGGED = ("redeem", "void", "blacklist", "lift", "manifest", "hold", "confirm", "release", "expire", "use")
#: Checkout kinds: JSON bodies naming the key and the order (and a hold's end, a use's uses left), as one store's.
CHECKOUT = {"hold": "expires_at", "confirm": None, "release": None, "expire": "expires_at", "use": "uses_left"}
#: Environment variable naming the cluster engine key's identity file (0600) on nodes that may sequence.
KEY_ENV = "KEYVAULT_CLUSTER_KEY"
#: Changes taken per batch at most.
BATCH = 5000
#: A mirror reads the newest this many checkpoints again each step (for the cosignatures added since).
REREAD = 8

_ZERO = bytes(32)


def origin_of(public_key: bytes) -> str:
    """The cluster log's origin: an engine key's log (``keyvault/`` and its short id), the cluster key's."""
    return engine_origin(public_key)


def load_key(path: str | None = None) -> Identity | None:
    """The cluster engine key from ``path`` (else $KEYVAULT_CLUSTER_KEY), or None when neither names one."""
    path = path or os.environ.get(KEY_ENV)
    if not path:
        return None
    try:
        return Identity.load(path)
    except IdentityError as exc:
        raise AuthorityError(f"the cluster engine key ({KEY_ENV}) cannot be used: {exc}") from None


def import_event(body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The import event of a registry manifest (its body and subjects, as a store's import writes them)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "registry.kvm")
        with open(path, "wb") as fh:
            fh.write(body)
        manifest = read_manifest(path)
    header = manifest.header
    supplier = header["supplier"]
    doc = {"batch": batch_text(manifest.batch), "supplier": supplier["id"], "supplier_name": supplier["name"],
           "product": header["product"], "count": manifest.count, "kind": manifest.kind, "origin": "manifest",
           "manifest": manifest.id, "merkle_root": header["merkle_root"], "previous": header["previous"]}
    return doc, [b"B" + u64(manifest.batch), b"S" + str(supplier["id"]).encode()]


def checkout_event(kind: str, serial: int, order: str, detail: int | None) -> tuple[dict[str, Any], list[bytes]]:
    """A checkout change's event body and subjects (the key and the order), as one store's checkout writes them."""
    doc: dict[str, Any] = {"serial": serial_text(serial), "order_id": order}
    if CHECKOUT[kind] is not None:
        doc[CHECKOUT[kind]] = detail
    return doc, [b"K" + u64(serial), order_subject(order)]


def subjects_of(row: tuple[Any, ...]) -> list[bytes]:
    """The subjects of a change row's event: a redeemed or void key; a blacklist entry's target; a manifest's
    batch and supplier (its row carries them, found when the batch was read)."""
    kind, serial, target = row[1], row[2], row[3]
    if kind in ("redeem", "void"):
        return [b"K" + u64(serial or 0)]
    if kind == "manifest" or kind in CHECKOUT:
        return list(row[6][1])
    return [bytes(target or b"")]


def leaf_of(index: int, prev: bytes, row: tuple[Any, ...], links: list[tuple[bytes, int | None]]) -> bytes:
    """The event leaf of one change row (change, kind, serial, target, text, at ms[, import event]), as one store
    writes it."""
    _, kind, serial, target, text, at = row[:6]
    if kind in ("redeem", "void"):
        body = CHANGE_BODY.pack(serial) + text.encode("utf-8")
    elif kind == "manifest":
        body, kind = dump(row[6][0]), "import"
    elif kind in CHECKOUT:
        body = dump(row[6][0])
    else:
        level, shown = blacklist_target(bytes(target))
        body = dump({"level": level, "target": shown, "reason": text})
    return _fast.event_leaf(index, prev, KINDS[kind], at, body, encode_links(links))


def _unsigned(value: int | None) -> int | None:
    return None if value is None else value + (1 << 64) if value < 0 else value


class Tree:
    """The leaf hashes of the log as one sequencer or mirror holds them, with roots and proofs."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []

    @property
    def size(self) -> int:
        """How many leaves."""
        return len(self.hashes)

    @property
    def last(self) -> bytes:
        """The last leaf hash (zeros for an empty log)."""
        return self.hashes[-1] if self.hashes else _ZERO

    def root(self, size: int | None = None) -> bytes:
        """The root at ``size`` leaves (all, by default)."""
        return merkle.root(self.hashes[:self.size if size is None else size])

    def consistency(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 consistency proof from size ``old`` to ``new``."""
        return merkle.consistency_proof(old, new, merkle.perfect_from_leaves(self.hashes[:new]))

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` at ``size``."""
        return merkle.inclusion_proof(index, size, merkle.perfect_from_leaves(self.hashes[:size]))


def check_leaf(index: int, prev: bytes, leaf: bytes, stored_hash: bytes) -> bytes:
    """A log row checked against the one before it; its leaf hash (StoreCorruptError naming what is wrong)."""
    try:
        split_leaf(leaf)
        tag, at_index, named_prev, _, _ = LEAF.unpack_from(leaf)
    except Exception:  # noqa: BLE001 - any damage to the bytes is the same finding
        raise StoreCorruptError(f"cluster log entry {index} is not an event leaf: the authority's keyvault_log was "
                                "altered; nothing after it is believed (restore the database "
                                "from a backup)") from None
    if at_index != index:
        raise StoreCorruptError(f"cluster log entry {index} names index {at_index}: keyvault_log was altered")
    if named_prev != prev:
        raise StoreCorruptError(f"cluster log entry {index} does not name the hash of entry {index - 1}: the "
                                "hash chain is broken, keyvault_log was altered")
    digest = merkle.leaf_hash(leaf)
    if digest != stored_hash:
        raise StoreCorruptError(f"cluster log entry {index} does not hash to its recorded hash: keyvault_log was "
                                "altered")
    return digest


class Sequencer:
    """Numbers the cluster log while this process holds :data:`LOG_LOCK` (a background thread, or by steps)."""

    def __init__(self, authority: Any, key: Identity, *, take_lock: bool = True, interval: float = 0.2,
                 every_events: int = 10_000, every_seconds: float = 10.0,
                 own_witness: bytes | None | str = "env") -> None:
        self.authority = authority
        self.key = key
        self.origin = origin_of(key.public_key)
        #: This node's witness key (from $KEYVAULT_WITNESS_IDENTITY unless given): recorded as the signer of the
        #: checkpoints this process signs, so this node's witness is never counted for them.
        self.own_witness: bytes | None = own_witness_key() if own_witness == "env" else \
            (own_witness if isinstance(own_witness, bytes) else None)
        #: Submits each new checkpoint to the cluster's witnesses (started with the thread; tests step it).
        self.cosigner = Cosigner(self)
        #: False only in tests: act as sequencer without the lock (the fence must still hold).
        self.take_lock = take_lock
        self.interval = interval
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.tree = Tree()
        self.change = 0
        self.holding = False
        self.conn: Any = None
        self._signed_at = 0.0
        #: One user of the session at a time (the thread, and callers such as tests and `authority check`).
        self._mutex = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Called inside a batch's transaction, before the head moves (tests make two sequencers race here).
        self.before_fence: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Sequencer {self.origin} holding={self.holding} size={self.tree.size}>"

    # -- the session and the lock ------------------------------------------------------------------

    def _session(self) -> Any:
        if self.conn is None or self.conn.closed:
            self.holding = False
            self.conn = self.authority.session()
        return self.conn

    def acquire(self) -> bool:
        """Try to become the sequencer (without waiting); True when this process holds the lock now."""
        with self._mutex:
            return self._guard(self._acquire)

    def _guard(self, work: Callable[[], Any]) -> Any:
        """``work()``, with a lost session (PostgreSQL gone, failed over) given up and reported as AuthorityError."""
        try:
            return work()
        except (KeyvaultError, _Fenced):
            raise
        except Exception as exc:  # noqa: BLE001 - psycopg's errors: the session is given up, the lock with it
            self.release()
            raise AuthorityError(f"the cluster log's session was lost ({str(exc).strip()[:200]}); nothing was "
                                 "half-written: try again") from None

    def _acquire(self) -> bool:
        conn = self._session()
        if not self.holding:
            if self.take_lock:
                conn.autocommit = True
                self.holding = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (LOG_LOCK,)).fetchone()[0])
                conn.autocommit = False
            else:
                self.holding = True
            if self.holding:
                try:
                    self.load()
                except BaseException:
                    self.release()  # a log it cannot extend, or a key not the cluster's: it does not sequence
                    raise
        return self.holding

    def release(self) -> None:
        """Give the lock up and close the session."""
        with self._mutex:
            self._release()

    def _release(self) -> None:
        conn, self.conn, held, self.holding = self.conn, None, self.holding, False
        if conn is not None:
            try:
                if held and self.take_lock and not conn.closed:  # at once, not when the server sees the close
                    conn.rollback()
                    conn.autocommit = True
                    conn.execute("SELECT pg_advisory_unlock(%s)", (LOG_LOCK,))
            except Exception:  # noqa: BLE001 - a dead session releases its lock by ending
                pass
            finally:
                conn.close()

    def load(self) -> None:
        """Read and check what PostgreSQL holds (every leaf, the last checkpoint) before extending it."""
        conn = self._session()
        with conn.transaction():
            self._register(conn)
            rows = conn.execute("SELECT idx, leaf, hash FROM keyvault_log ORDER BY idx").fetchall()
            head = conn.execute("SELECT size, last_hash, change FROM keyvault_log_head").fetchone()
            last = conn.execute("SELECT size, root FROM keyvault_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        tree = Tree()
        for idx, leaf, digest in rows:
            if idx != tree.size:
                raise StoreCorruptError(f"cluster log entry {tree.size} is missing: keyvault_log was altered")
            tree.hashes.append(check_leaf(idx, tree.last, bytes(leaf), bytes(digest)))
        if (head[0], bytes(head[1])) != (tree.size, tree.last):
            raise StoreCorruptError(f"the cluster log's head says {head[0]} entries but {tree.size} are held: "
                                    "keyvault_log or keyvault_log_head was altered")
        if last is not None and (last[0] > tree.size or tree.root(last[0]) != bytes(last[1])):
            raise StoreCorruptError(f"the cluster log no longer matches its checkpoint at size {last[0]}: it was "
                                    "altered; nothing more will be signed")
        self.tree, self.change = tree, int(head[2])

    def _register(self, conn: Any) -> None:
        conn.execute("INSERT INTO keyvault_cluster (one, name, public_key, origin) VALUES (true, %s, %s, %s) "
                     "ON CONFLICT (one) DO NOTHING", (self.key.name, self.key.public_key, self.origin))
        held = bytes(conn.execute("SELECT public_key FROM keyvault_cluster").fetchone()[0])
        if held != self.key.public_key:
            raise AuthorityError("this node's cluster engine key is not the cluster's (keyvault_cluster names "
                                 "another): give every node the same key file; this node will not sequence")

    # -- numbering ---------------------------------------------------------------------------------

    def _horizon(self, conn: Any) -> int:
        """The highest change number every change up to which is committed or abandoned."""
        conn.autocommit = True
        try:
            last, called, started = conn.execute(
                "SELECT last_value, is_called, clock_timestamp() FROM keyvault_change").fetchone()
            warned = time.monotonic() + 30
            while True:
                # A transaction holds a change number only while a statement runs or once it has written (a
                # read left open in a transaction holds none, and is not waited for).
                busy = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                    "AND (state = 'active' OR state LIKE 'idle in transaction%%' AND backend_xid IS NOT NULL) "
                    "AND xact_start < %s", (started,)).fetchone()[0]
                if not busy:
                    return int(last) if called else 0
                if time.monotonic() > warned:
                    log.warning("cluster log: waiting 30 s already for %d transactions that began before this "
                                "batch to end (the log goes on once they do)", busy)
                    warned = time.monotonic() + 30
                time.sleep(0.005)
        finally:
            conn.autocommit = False

    def step(self) -> int:
        """One batch: the changes up to the horizon, appended in order; how many entries were added."""
        with self._mutex:
            return int(self._guard(self._step))

    def _step(self) -> int:
        if not self._acquire():
            return 0
        conn = self._session()
        horizon = self._horizon(conn)
        if horizon <= self.change:
            self._sign(False)
            return 0
        try:
            with conn.transaction():
                added = self._batch(conn, horizon)
        except _Fenced as exc:
            log.warning("cluster log: %s; reloading", exc)
            self.load()
            return 0
        self.tree.hashes.extend(added[0])
        self.change = added[1]
        self._sign(False)
        return len(added[0])

    def _batch(self, conn: Any, horizon: int) -> tuple[list[bytes], int]:
        head = conn.execute("SELECT size, last_hash, change FROM keyvault_log_head FOR UPDATE").fetchone()
        if (head[0], bytes(head[1]), head[2]) != (self.tree.size, self.tree.last, self.change):
            raise _Fenced(f"the log's head is at {head[0]} entries and change {head[2]}, not where this sequencer "
                          f"left it ({self.tree.size}, {self.change}): another sequencer appended")
        rows = conn.execute("SELECT change, kind, serial, target, text, at_ms, detail FROM keyvault_changes "
                            "WHERE change > %s AND change <= %s ORDER BY change LIMIT %s",
                            (self.change, horizon, BATCH)).fetchall()
        reached = horizon if len(rows) < BATCH else int(rows[-1][0])
        rows = [(r[0], r[1], _unsigned(r[2]), None if r[3] is None else bytes(r[3]), r[4], int(r[5]))
                + ((checkout_event(r[1], _unsigned(r[2]) or 0, r[4], r[6]),) if r[1] in CHECKOUT else ())
                for r in rows if r[1] in LOGGED]
        for n, row in enumerate(rows):
            if row[1] == "manifest":
                body = conn.execute("SELECT body FROM keyvault_manifests WHERE hash = %s", (row[3],)).fetchone()
                rows[n] = (*row, import_event(bytes(body[0])))
        wanted = sorted({s for r in rows for s in subjects_of(r)})
        latest: dict[bytes, int | None] = dict.fromkeys(wanted)
        if wanted:
            for subject, at in conn.execute("SELECT subject, latest FROM keyvault_log_subjects "
                                            "WHERE subject = ANY(%s)", (wanted,)).fetchall():
                latest[bytes(subject)] = int(at)
        index, prev = self.tree.size, self.tree.last
        leaves, hashes = [], []
        for row in rows:
            subjects = subjects_of(row)
            leaf = leaf_of(index, prev, row, [(s, latest[s]) for s in subjects])
            prev = merkle.leaf_hash(leaf)
            leaves.append((index, row[0], leaf, prev))
            hashes.append(prev)
            for s in subjects:
                latest[s] = index
            index += 1
        if leaves:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO keyvault_log (idx, change, leaf, hash) VALUES (%s, %s, %s, %s)", leaves)
                moved = [(s, at) for s, at in latest.items() if at is not None]
                cur.executemany("INSERT INTO keyvault_log_subjects (subject, latest) VALUES (%s, %s) "
                                "ON CONFLICT (subject) DO UPDATE SET latest = excluded.latest", moved)
        if self.before_fence is not None:
            self.before_fence()
        done = conn.execute("UPDATE keyvault_log_head SET size = %s, last_hash = %s, change = %s "
                            "WHERE size = %s AND change = %s AND EXISTS (SELECT 1 FROM keyvault_log WHERE idx = %s) "
                            "RETURNING size", (index, prev, reached, self.tree.size, self.change,
                                                index - 1)).fetchone() if index else \
            conn.execute("UPDATE keyvault_log_head SET change = %s WHERE size = 0 AND change = %s RETURNING size",
                         (reached, self.change)).fetchone()
        if done is None:
            raise _Fenced("the log's head moved while this batch was written: another sequencer appended")
        return hashes, reached

    # -- checkpoints ---------------------------------------------------------------------------------

    def maybe_sign(self, *, force: bool = False) -> bytes | None:
        """Sign a checkpoint of the log as PostgreSQL holds it when due (or ``force``); its note, or None."""
        with self._mutex:
            return self._guard(lambda: self._sign(force))

    def _sign(self, force: bool) -> bytes | None:
        if not self._acquire():
            return None
        conn = self._session()
        with conn.transaction():
            last = conn.execute("SELECT size, root FROM keyvault_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
            last_size = 0 if last is None else int(last[0])
            size = self.tree.size
            due = size > last_size and (size - last_size >= self.every_events
                                        or time.monotonic() - self._signed_at >= self.every_seconds)
            if not (force and size >= last_size) and not due:
                return None
            if last is not None and (last_size > size or self.tree.root(last_size) != bytes(last[1])):
                log.error("cluster log: the log at size %s does not extend the checkpoint signed at size %s: "
                          "refusing to sign (keyvault_log or keyvault_checkpoints was altered)", size, last_size)
                raise StoreCorruptError(f"the cluster log does not extend its checkpoint at size {last_size}: "
                                        "nothing will be signed; keyvault_log or keyvault_checkpoints was altered")
            head = conn.execute("SELECT size, last_hash FROM keyvault_log_head").fetchone()
            if (head[0], bytes(head[1])) != (size, self.tree.last):
                return None  # another sequencer moved the log: the next step reloads
            subjects = conn.execute("SELECT subject, latest FROM keyvault_log_subjects").fetchall()
            index = history.root_of({history.subject_key(bytes(s)): int(at) for s, at in subjects})
            at = now_ms()
            root = self.tree.root(size)
            note = sign(Checkpoint(self.origin, size, root, (f"{TIME_LINE}{at}", history.extension_line(index))),
                        self.origin, self.key.signing_key)
            conn.execute("INSERT INTO keyvault_checkpoints (size, root, at_ms, note, signer) "
                         "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (size) DO UPDATE SET at_ms = excluded.at_ms, "
                         "note = excluded.note, signer = excluded.signer WHERE keyvault_checkpoints.root = excluded.root",
                         (size, root, at, note, self.own_witness))
        self._signed_at = time.monotonic()
        self.cosigner.wake()
        return note

    # -- the thread ------------------------------------------------------------------------------------

    def start(self) -> Sequencer:
        """Run in a background thread: try for the lock, and number the log while holding it."""
        self._thread = threading.Thread(target=self._run, name="keyvault-cluster-sequencer", daemon=True)
        self._thread.start()
        self.cosigner.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.step() >= BATCH:
                    continue
            except StoreCorruptError as exc:
                log.error("cluster log: %s", exc)
                self.release()
                self._stop.wait(5.0)
                continue
            except Exception as exc:  # noqa: BLE001 - a lost session or a failover: a new session tries again
                log.info("cluster log sequencer: %s; trying again", exc)
                self.release()
            self._stop.wait(self.interval if self.holding else 1.0)
        self.release()

    def stop(self) -> None:
        """Stop the thread and give the lock up."""
        self._stop.set()
        self.cosigner.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


class Cosigner:
    """Submits the cluster's newest checkpoint to every registered witness but the signing node's own, and keeps
    each cosignature in the checkpoint's note in PostgreSQL (so every node's bundles carry it).

    Only while its sequencer holds the log lock. Asynchronous and bounded: each witness is asked in a thread
    of its own with a deadline (``timeout`` per request); one that fails is retried with exponential backoff
    (to ``max_backoff`` seconds), each failure logged; nothing here is on a redeem's path.
    """

    def __init__(self, sequencer: Sequencer, *, timeout: float = 5.0, max_backoff: float = 60.0,
                 ask: Callable[..., tuple[bytes, int]] = ask_witness) -> None:
        self.sequencer = sequencer
        self.timeout = timeout
        self.max_backoff = max_backoff
        #: The add-checkpoint exchange (tests put a witness in process here).
        self.ask = ask
        self.seen: dict[bytes, int] = {}  # witness key -> the size it last cosigned (a hint: it says on 409)
        self.failures: dict[bytes, int] = {}
        self.retry_at: dict[bytes, float] = {}
        self.outcome: dict[str, str] = {}  # witness name -> what happened last (for tests and logs)
        self._inflight: dict[bytes, Future[None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="keyvault-cosigner")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None  # its own session for reading the newest checkpoint and the witnesses

    def wake(self) -> None:
        """A checkpoint was signed: submit it now."""
        self._wake.set()

    def start(self) -> None:
        """Run in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="keyvault-cluster-cosigner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; submissions under way end at their deadline."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._thread is None or not self._thread.is_alive():
            self._drop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)  # also the clock of the retries
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.round()
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: the next round tries again
                log.info("cluster log cosigner: %s; trying again", str(exc).strip()[:200])
        self._drop()

    def round(self, wait: bool = False) -> dict[str, str]:
        """Submit the newest checkpoint to every witness due (not cosigned yet, not backing off, not asked already);
        with ``wait``, wait for the answers. The last outcome per witness name."""
        if not self.sequencer.holding:
            self._drop()
            return {}
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.sequencer.authority.session()
                self._conn.autocommit = True
            newest = self._conn.execute("SELECT size, note, signer FROM keyvault_checkpoints "
                                        "ORDER BY size DESC LIMIT 1").fetchone()
            witnesses = self._conn.execute("SELECT public_key, name, url FROM keyvault_witnesses "
                                           "ORDER BY name").fetchall()
        except BaseException:
            self._drop()
            raise
        if newest is None:
            return {}
        size, note, signer = int(newest[0]), bytes(newest[1]), None if newest[2] is None else bytes(newest[2])
        tree = self.sequencer.tree
        if tree.size < size:
            return {}  # the sequencer is reloading the log: the next round
        now = time.monotonic()
        started = []
        for public_key, name, url in witnesses:
            public_key = bytes(public_key)
            if public_key in (self.sequencer.own_witness, signer):
                self.outcome[name] = "signer"  # a node never witnesses a checkpoint it signed
                continue
            try:
                witness = cosignature.Witness(name, public_key)
            except ProofError as exc:
                self.outcome[name] = f"unusable: {exc}"
                continue
            if cosignature.cosigners(note, [witness]):
                self.outcome[name] = f"cosigned {size}"
                continue
            running = self._inflight.get(public_key)
            if running is not None and not running.done() or now < self.retry_at.get(public_key, 0.0):
                continue
            job = self._pool.submit(self._submit, witness, url, size, note, tree)
            self._inflight[public_key] = job
            started.append(job)
        if wait:
            for job in started:
                job.result()
        return dict(self.outcome)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is being dropped anyway
                pass

    def _submit(self, witness: cosignature.Witness, url: str, size: int, note: bytes, tree: Tree) -> None:
        key = witness.public_key
        try:
            lines, _ = self.ask(url, size, note, lambda old: tree.consistency(old, size),
                                old=min(self.seen.get(key, 0), size), timeout=self.timeout)
            self._keep(size, lines, witness)
        except KeyvaultError as exc:
            failures = self.failures.get(key, 0) + 1
            self.failures[key] = failures
            pause = min(self.max_backoff, 0.5 * 2 ** min(failures, 20))
            self.retry_at[key] = time.monotonic() + pause
            self.outcome[witness.name] = f"failed: {exc}"
            (log.error if isinstance(exc, ProofError) else log.warning)(
                "cluster log: witness %s did not cosign the checkpoint at size %s (try %s): %s; next try in %.1f s",
                witness.name, size, failures, exc, pause)
            return
        except Exception as exc:  # noqa: BLE001 - a bug or PostgreSQL away: logged, retried
            self.retry_at[key] = time.monotonic() + self.max_backoff / 4
            self.outcome[witness.name] = f"failed: {exc}"
            log.warning("cluster log: keeping witness %s's cosignature failed: %s", witness.name, exc)
            return
        self.seen[key] = size
        self.failures.pop(key, None)
        self.retry_at.pop(key, None)
        self.outcome[witness.name] = f"cosigned {size}"
        log.info("cluster log: witness %s cosigned the checkpoint at size %s", witness.name, size)

    def _keep(self, size: int, lines: bytes, witness: cosignature.Witness) -> None:
        """Merge the witness's cosignature into the checkpoint's note (checked over its text) in PostgreSQL."""
        with self.sequencer.authority.session() as conn, conn.transaction():
            row = conn.execute("SELECT note FROM keyvault_checkpoints WHERE size = %s FOR UPDATE", (size,)).fetchone()
            if row is None:
                raise ProofError(f"the checkpoint at size {size} is gone from the authority")
            note = bytes(row[0])
            merged = cosignature.merge(note, lines, witness, MAX_NOTE_BYTES)
            if merged != note:
                conn.execute("UPDATE keyvault_checkpoints SET note = %s WHERE size = %s", (merged, size))


class _Fenced(Exception):
    """A batch found the log's head moved by another sequencer."""


class Mirror:
    """A node's checked copy of the cluster log's position: every leaf and checkpoint it has read was checked."""

    def __init__(self, public_key: bytes | None = None) -> None:
        self.public_key = public_key
        self.tree = Tree()
        self.leaves: list[bytes] = []
        self.checkpoints: dict[int, bytes] = {}
        self.problem: str | None = None
        self._lock = threading.Lock()  # the follower thread and callers (bundles, checks) step it in turn

    def step(self, authority: Any, limit: int = 10_000) -> int:
        """Read and check the log's entries and checkpoints after this mirror's position; how many entries were
        added. A bad entry or checkpoint is StoreCorruptError (also kept in ``problem``) and nothing past it
        is taken."""
        with self._lock:
            try:
                return self._step(authority, limit)
            except (StoreCorruptError, ProofError) as exc:
                self.problem = str(exc)
                raise StoreCorruptError(str(exc)) from None

    def _step(self, authority: Any, limit: int) -> int:
        identity = authority.cluster_identity()
        if identity is None:
            return 0
        if self.public_key is None:
            self.public_key = identity[1]
        elif identity[1] != self.public_key:
            raise StoreCorruptError("the authority names another cluster engine key than the one this node checked "
                                    "the log with: keyvault_cluster was altered")
        rows = authority.log_since(self.tree.size, limit)
        hashes, leaves = [], []
        prev = self.tree.last
        for idx, _, leaf, digest in rows:
            if idx != self.tree.size + len(hashes):
                raise StoreCorruptError(f"cluster log entry {self.tree.size + len(hashes)} is missing: keyvault_log "
                                        "was altered")
            prev = check_leaf(idx, prev, leaf, digest)
            hashes.append(prev)
            leaves.append(leaf)
        candidate = Tree()
        candidate.hashes = self.tree.hashes + hashes
        verifier = Verifier(origin_of(self.public_key), self.public_key)
        known = sorted(self.checkpoints)
        # The newest few are read again: witnesses' cosignatures are added to their notes after they are signed.
        for size, root, note in authority.log_checkpoints(known[-REREAD] - 1 if len(known) >= REREAD else 0):
            if size > candidate.size or size in self.checkpoints and self.checkpoints[size] == note:
                continue
            checkpoint = open_note(note, origin_of(self.public_key), [verifier])
            if checkpoint.size != size or checkpoint.root != root or candidate.root(size) != root:
                raise StoreCorruptError(f"the cluster checkpoint at size {size} does not match the log's entries: "
                                        "keyvault_log or keyvault_checkpoints was altered")
            self.checkpoints[size] = note
        self.tree = candidate
        self.leaves.extend(leaves)
        self.problem = None
        return len(hashes)

    def latest(self, cover: int | None = None) -> tuple[int, Checkpoint] | None:
        """The newest checked checkpoint: (size, checkpoint), or None. With ``cover``, of the checkpoints of more
        than ``cover`` entries, the one with the most witness cosignatures (the newest of those)."""
        if not self.checkpoints or self.public_key is None:
            return None
        size = max(self.checkpoints)
        if cover is not None:
            covering = [s for s in self.checkpoints if s > cover]
            if not covering:
                return None
            size = max(covering, key=lambda s: (len(cosignature.cosignatures(self.checkpoints[s])[1]), s))
        origin = origin_of(self.public_key)
        return size, open_note(self.checkpoints[size], origin, [Verifier(origin, self.public_key)])

    def find(self, serial: int) -> list[int]:
        """The indices of the entries about key ``serial`` (its redeem or void, key-level blacklist entries)."""
        subject = b"K" + u64(serial)
        out = []
        for index, leaf in enumerate(self.leaves):
            _, links, _ = split_leaf(leaf)
            if links and any(s == subject for s, _ in links):
                out.append(index)
        return out


def verify_log(authority: Any) -> dict[str, Any]:
    """Walk the whole cluster log from PostgreSQL: every entry chained and hashed, every checkpoint signed by the
    cluster key over the entries, each extending the one before (a consistency proof checked); a summary."""
    mirror = Mirror()
    while mirror.step(authority):
        pass
    sizes = sorted(mirror.checkpoints)
    origin = origin_of(mirror.public_key) if mirror.public_key else None
    roots = {s: mirror.tree.root(s) for s in sizes}
    for old, new in zip(sizes, sizes[1:]):
        merkle.verify_consistency(old, new, roots[old], roots[new], mirror.tree.consistency(old, new))
    return {"size": mirror.tree.size, "checkpoints": len(sizes), "origin": origin,
            "newest_checkpoint": sizes[-1] if sizes else 0}


def change_numbers(leaves: list[bytes]) -> list[tuple[str, int | None]]:
    """(kind, serial or None) of each leaf, for reports and tests."""
    from ...formats.events import KIND_NAMES

    out = []
    for leaf in leaves:
        kind = KIND_NAMES[LEAF.unpack_from(leaf)[3]]
        serial = CHANGE_BODY.unpack_from(leaf, split_leaf(leaf)[2])[0] if kind in ("redeem", "void") else None
        out.append((kind, serial))
    return out


__all__ = ["KEY_ENV", "LOG_LOCK", "WITNESS_ENV", "Cosigner", "Mirror", "Sequencer", "Tree", "check_leaf", "leaf_of", "load_key",
           "origin_of", "verify_log"]
