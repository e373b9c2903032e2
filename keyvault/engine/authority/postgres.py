"""The PostgreSQL authority: redeems, voids and blacklist entries decided in one shared database.

Each decision is one transaction on one connection (per process, reconnected after a fork or a lost
connection; ``target_session_attrs=read-write`` finds the primary of a multi-host DSN). A redeem batch is
ONE statement (``INSERT … SELECT … FROM unnest(…) … ON CONFLICT DO NOTHING RETURNING``) that re-checks the
blacklist in PostgreSQL and writes each change's event row, then one read for the keys it did not take.
The answer is given only once COMMIT has returned; a connection lost during COMMIT, or PostgreSQL's warning
that a commit was applied locally but its wait for a synchronous standby was canceled, is
:class:`~keyvault.errors.OutcomeUnknownError` ("retry with the same order id"), never ``accepted``.
Connections carry deadlines (connect_timeout, TCP keepalives, tcp_user_timeout) so a dead primary is
an error in seconds, not a hang, and every round trip (each statement, then the COMMIT) has a deadline of
its own (:data:`DEADLINE`) for a primary that hangs while its kernel still acknowledges: on expiry the
connection's socket is shut down (never a query cancel: a cancelled wait for a synchronous standby is
reported committed), the call fails (unknown outcome once COMMIT may have been sent) and the next call
reconnects. There is no statement_timeout: a commit is never cut short by the server.

Checkout (holds, confirms, releases, count-limited keys) is one transaction per batch over the keys' rows,
locked (:class:`Checkout`): an active row in ``keyvault_keys`` marks a key under checkout, so a plain redeem
or a void of it meets the same row; the rules themselves are the engine's, judged against PostgreSQL's clock.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ...errors import AuthorityError, ConflictError, OutcomeUnknownError, UsageError
from ...store import ACTIVE, REDEEMED, VOIDED
from .schema import SCHEMA, SCHEMA_VERSION

T = TypeVar("T")

#: Connection settings used unless the DSN sets them: a dead server is an error within seconds.
DEFAULTS = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
            "keepalives_count": "3", "tcp_user_timeout": "15000", "target_session_attrs": "read-write",
            "application_name": "keyvault"}

#: Seconds one round trip to PostgreSQL (a statement, or the COMMIT) may take before the connection is
#: closed; KEYVAULT_AUTHORITY_DEADLINE overrides it (seconds; the DSN does not).
DEADLINE = 10.0

_MASKS = [(re.compile(r"(://[^:/@?#]*:)[^@/?#]*@"), r"\1***@"),
          (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I), r"\1***")]


def mask(dsn: str) -> str:
    """The DSN with its password (URL or key=value form) replaced by ***."""
    for pattern, repl in _MASKS:
        dsn = pattern.sub(repl, dsn)
    return dsn


def _signed(serial: int) -> int:
    """A u64 serial as PostgreSQL's bigint (two's complement)."""
    return serial - (1 << 64) if serial >= 1 << 63 else serial


def _unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise AuthorityError("this store is bound to a PostgreSQL authority but psycopg is not installed: "
                             "pip install 'psycopg[binary]' (or unbind it: keyvault authority unset)") from None
    return psycopg


# Every array goes in binary (%b): no per-element text escaping.
_REDEEM = """
WITH i AS (
    SELECT * FROM unnest(%(serials)b::bigint[], %(orders)b::text[], %(kb)b::bytea[], %(bb)b::bytea[],
                         %(sb)b::bytea[]) AS t(serial, order_id, kb, bb, sb)
), ins AS (
    INSERT INTO keyvault_keys (serial, state, text, at_ms, change)
    SELECT i.serial, %(state)s, i.order_id, %(now)s, nextval('keyvault_change') FROM i
    WHERE NOT EXISTS (SELECT 1 FROM keyvault_blacklist b WHERE b.target IN (i.kb, i.bb, i.sb))
    ON CONFLICT (serial) DO NOTHING
    RETURNING serial, change, text, at_ms
), ev AS (
    INSERT INTO keyvault_changes (change, kind, serial, text, at_ms)
    SELECT change, 'redeem', serial, text, at_ms FROM ins
)
SELECT serial, (SELECT pg_notify('keyvault_change', '')) FROM ins
"""

_STANDING = """
SELECT i.serial, k.state, k.text, k.at_ms, bk.reason, bk.at_ms, bb.reason, bb.at_ms, bs.reason, bs.at_ms
FROM unnest(%(serials)b::bigint[], %(kb)b::bytea[], %(bb)b::bytea[], %(sb)b::bytea[]) AS i(serial, kb, bb, sb)
LEFT JOIN keyvault_keys k ON k.serial = i.serial
LEFT JOIN keyvault_blacklist bk ON bk.target = i.kb
LEFT JOIN keyvault_blacklist bb ON bb.target = i.bb
LEFT JOIN keyvault_blacklist bs ON bs.target = i.sb
"""

def deadline_from_env() -> float:
    """The per-round-trip deadline in seconds: KEYVAULT_AUTHORITY_DEADLINE when set, else :data:`DEADLINE`."""
    raw = os.environ.get("KEYVAULT_AUTHORITY_DEADLINE")
    if raw is None or not raw.strip():
        return DEADLINE
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86_400:
        raise UsageError(f"KEYVAULT_AUTHORITY_DEADLINE={raw!r} is not a number of seconds between 0 and 86400: "
                         f"set it like 10 (or unset it for {DEADLINE:g} s)")
    return seconds


class _Watchdog:
    """A thread that shuts a connection's socket down when a round trip outlives its deadline.

    Shutting the socket down (not closing the descriptor, which libpq still owns) wakes a read or write
    blocked on it with an error, whatever PostgreSQL does meanwhile; a disarmed watchdog never fires.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: tuple[float, int] | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._generation = 0
        self._idle = False  # the thread waits for no deadline: the next arm must wake it
        #: True when the last armed round trip was cut by the deadline.
        self.fired = False

    def arm(self, fd: int, seconds: float) -> None:
        """Watch ``fd`` for ``seconds`` from now."""
        with self._cond:
            if self._thread is None or self._pid != os.getpid() or self._stopped:
                self._pid, self._stopped, self._generation = os.getpid(), False, self._generation + 1
                self._thread = threading.Thread(target=self._run, args=(self._generation,),
                                                name="keyvault-authority-deadline", daemon=True)
                self._thread.start()
            self._armed, self.fired = (time.monotonic() + seconds, fd), False
            if self._idle:  # otherwise it wakes by itself at an earlier deadline and sees this one
                self._idle = False
                self._cond.notify()

    def disarm(self) -> None:
        """Stop watching; once this returns the socket is not touched."""
        with self._cond:
            self._armed = None

    def stop(self) -> None:
        """End the thread."""
        with self._cond:
            self._armed, self._stopped = None, True
            self._cond.notify()

    def _run(self, generation: int) -> None:
        with self._cond:
            while not self._stopped and self._generation == generation:
                if self._armed is None:
                    self._idle = True
                    self._cond.wait()
                    continue
                left = self._armed[0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                fd, self._armed, self.fired = self._armed[1], None, True
                try:
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone: the exchange fails on its own


class _Deadlined:
    """A cursor whose every statement gets a fresh deadline: the deadline is per round trip, not per transaction."""

    def __init__(self, cur: Any, rearm: Callable[[], None]) -> None:
        self._cur, self._rearm = cur, rearm

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """The cursor's execute, with the deadline counted from now."""
        self._rearm()
        return self._cur.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


#: Seconds a statement of :meth:`PostgresAuthority.migrate` may take: moving a large store in is one
#: transaction whose statements carry every key at once.
MIGRATE_DEADLINE = 600.0

_SYNC_CANCELED = "synchronous replication"
#: Wakes the other nodes' followers when the transaction commits (their poll by change number is the backstop).
CHANNEL = "keyvault_change"
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


class PostgresAuthority:
    """A node's connection to the shared PostgreSQL authority (one per process)."""

    remote = True

    def __init__(self, dsn: str, deadline: float | None = None) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise UsageError("give the authority as a PostgreSQL DSN, like "
                             "'host=db1,db2 dbname=keyvault user=keyvault' or postgresql://keyvault@db1/keyvault")
        self.dsn = dsn
        self._psycopg = _psycopg()
        try:
            given = self._psycopg.conninfo.conninfo_to_dict(dsn)
        except self._psycopg.ProgrammingError as exc:
            raise UsageError(f"that DSN does not parse ({mask(str(exc))}); give one like "
                             "'host=db1 dbname=keyvault user=keyvault'") from None
        self._params = {**DEFAULTS, **{k: str(v) for k, v in given.items()}}
        if str(self._params.get("host", "")).startswith("/"):
            for tcp_only in ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                             "tcp_user_timeout"):
                self._params.pop(tcp_only, None)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()
        self._notices: list[str] = []
        #: Seconds each round trip may take before the connection is closed (see :data:`DEADLINE`).
        self.deadline = deadline_from_env() if deadline is None else float(deadline)
        if not 0 < self.deadline < 86_400:
            raise UsageError(f"give the authority's deadline in seconds between 0 and 86400, not {deadline!r}")
        self._watchdog = _Watchdog()
        #: Called with the connection just before COMMIT is sent (tests cut the connection here).
        self.before_commit: Callable[[Any], None] | None = None
        self._run(self._ensure_schema, decisive=False)

    def __repr__(self) -> str:
        return f"<PostgresAuthority {mask(self.dsn)!r}>"

    @property
    def shown(self) -> str:
        """The DSN with its password masked."""
        return mask(self.dsn)

    # -- connections and transactions ----------------------------------------------------------

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(**self._params)
        except psycopg.Error as exc:
            raise AuthorityError(f"cannot reach the PostgreSQL authority at {self.shown}: "
                                 f"{mask(str(exc)).strip()}; check that it runs and that the DSN is right "
                                 "(`keyvault authority show`, `keyvault authority check`)") from None
        conn.add_notice_handler(self._notice)
        return conn

    def listener(self) -> Any:
        """A new autocommit connection listening on the change channel (the caller closes it)."""
        conn = self._connect()
        conn.autocommit = True
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _notice(self, diag: Any) -> None:
        self._notices.append(str(diag.message_primary or ""))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone either way
                pass

    def _watched(self, conn: Any, step: Callable[[], T], seconds: float | None = None) -> T:
        """``step()`` on ``conn``: its socket is shut down if no answer came within the deadline."""
        self._watchdog.arm(conn.pgconn.socket, seconds or self.deadline)
        try:
            return step()
        finally:
            self._watchdog.disarm()

    def _run(self, work: Callable[[Any], T], *, decisive: bool = True, deadline: float | None = None) -> T:
        """``work(cursor)`` in one transaction, committed; retried once on a new connection when the old one
        failed before COMMIT (nothing was decided). ``decisive``: a lost COMMIT is OutcomeUnknownError.
        Each round trip (every statement of the work, then the COMMIT) has ``deadline`` seconds (default
        :attr:`deadline`) before the connection is closed."""
        seconds = deadline or self.deadline
        psycopg = self._psycopg
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connection and watchdog are not ours to use
                self._conn, self._pid, self._watchdog = None, os.getpid(), _Watchdog()
            attempt, rolled_back = 1, 0
            while True:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                conn = self._conn

                def step() -> T:
                    fd = conn.pgconn.socket
                    with conn.cursor() as cur:
                        return work(_Deadlined(cur, lambda: self._watchdog.arm(fd, seconds)))

                try:
                    out = self._watched(conn, step, seconds)
                except psycopg.Error as exc:
                    if self._watchdog.fired:
                        self._drop()
                        raise AuthorityError(f"the PostgreSQL authority at {self.shown} did not answer within "
                                             f"{seconds:g} s: the connection was closed before COMMIT, nothing "
                                             "was changed; retry (the next call reconnects)") from None
                    if isinstance(exc, psycopg.errors.TransactionRollback) and rolled_back < 5:
                        rolled_back += 1  # a deadlock between two decisions, broken by PostgreSQL: run it again
                        try:
                            self._watched(conn, conn.rollback, seconds)
                            continue
                        except psycopg.Error:
                            pass  # the connection is gone: handled as a lost one below
                    if isinstance(exc, psycopg.OperationalError):
                        self._drop()
                        if attempt == 2:
                            raise AuthorityError(f"the PostgreSQL authority failed: {mask(str(exc)).strip()}; "
                                                 "nothing was changed: retry") from None
                        attempt = 2
                        continue
                    try:
                        self._watched(conn, conn.rollback, seconds)
                    except psycopg.Error:
                        self._drop()
                    raise AuthorityError(f"the PostgreSQL authority refused the change: {mask(str(exc)).strip()}; "
                                         "nothing was changed") from None
                except BaseException:
                    self._drop()
                    raise
                self._notices.clear()
                try:
                    if self.before_commit is not None:
                        self.before_commit(conn)
                    self._watched(conn, conn.commit, seconds)
                except psycopg.Error as exc:
                    fired = self._watchdog.fired
                    self._drop()
                    lost = (f"PostgreSQL did not answer the COMMIT within {seconds:g} s (the connection was "
                            "closed)" if fired else "the connection to the PostgreSQL authority was lost while it "
                            "committed")
                    if decisive:
                        raise OutcomeUnknownError(f"{lost}: the change may or may not have been made; retry "
                                                  "with the same order id") from None
                    raise AuthorityError(f"{lost}: {mask(str(exc)).strip()}; retry") from None
                if decisive and any(_SYNC_CANCELED in n for n in self._notices):
                    raise OutcomeUnknownError("PostgreSQL committed locally but could not confirm the synchronous "
                                              "standby: the outcome is not known to be durable; retry with the "
                                              "same order id")
                return out

    def _ensure_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7264931)")  # two nodes creating it at once: one after the other
        cur.execute("SELECT to_regclass('keyvault_schema')")
        row = cur.fetchone()
        if row[0] is not None:
            cur.execute("SELECT max(version) FROM keyvault_schema")
            version = cur.fetchone()[0] or 0
            if version > SCHEMA_VERSION:
                raise AuthorityError(f"the authority's schema is version {version}, newer than this keyvault "
                                     f"reads ({SCHEMA_VERSION}): upgrade keyvault on this node")
            if version == SCHEMA_VERSION:
                return
        for statement in SCHEMA:
            cur.execute(statement)

    def close(self) -> None:
        """Close this process's connection."""
        with self._lock:
            if self._pid == os.getpid():
                self._drop()
            self._conn = None
            self._watchdog.stop()

    # -- decisions ---------------------------------------------------------------------------------

    def redeem(self, candidates: list[tuple[int, str, bytes, bytes, bytes, bool]], now: int,
               limited: set[int] | frozenset[int] = frozenset(),
               then: Callable[[Checkout, list[int]], None] | None = None) -> dict[int, tuple[Any, ...]]:
        """Decide redeems (one per distinct serial, the first candidate's order) in one transaction.

        Returns each serial's standing after COMMIT: ((state, text, at ms) or None, then the key, batch and
        supplier blacklist entries' (reason, at ms) or None). The ``limited`` serials (count-limited keys) and
        the keys found under checkout (held, or partly used: an active row) are left to ``then``, called in the
        same transaction with their serials, and left out of the answer.
        """
        first: dict[int, tuple[int, str, bytes, bytes, bytes, bool]] = {}
        for c in candidates:
            if c[0] not in first:
                first[c[0]] = c
        # In serial order: two batches claim their rows in the same order (no deadlock between them).
        eligible = sorted((c for c in first.values() if c[5] and c[0] not in limited), key=lambda c: c[0])
        if eligible:  # the statement's arrays, transposed in one pass
            serials, orders, kb, bb, sb, _ = (list(column) for column in zip(*eligible))
            if max(serials) >= 1 << 63:
                serials = [_signed(s) for s in serials]
            params = {"serials": serials, "orders": orders, "kb": kb, "bb": bb, "sb": sb, "state": REDEEMED,
                      "now": now}

        def work(cur: Any) -> dict[int, tuple[Any, ...]]:
            out: dict[int, tuple[Any, ...]] = {}
            if eligible:
                cur.execute(_REDEEM, params)
                for row in cur.fetchall():
                    serial = row[0] + (1 << 64) if row[0] < 0 else row[0]
                    out[serial] = ((REDEEMED, first[serial][1], now), None, None, None)
            rest = [c for s, c in first.items() if s not in out and s not in limited] \
                if len(out) < len(first) else []
            ruled = sorted(limited)
            if rest:
                cur.execute(_STANDING, {"serials": [_signed(c[0]) for c in rest], "kb": [c[2] for c in rest],
                                        "bb": [c[3] for c in rest], "sb": [c[4] for c in rest]})
                for row in cur.fetchall():
                    if row[1] == ACTIVE and then is not None:  # under checkout: the rules decide it
                        ruled.append(_unsigned(row[0]))
                        continue
                    out[_unsigned(row[0])] = (None if row[1] in (None, ACTIVE) else (row[1], row[2], row[3]),
                                              None if row[4] is None else (row[4], row[5]),
                                              None if row[6] is None else (row[6], row[7]),
                                              None if row[8] is None else (row[8], row[9]))
            if ruled and then is not None:
                then(Checkout(cur), sorted(ruled))
            return out

        return self._run(work)

    def void(self, serial: int, reason: str, now: int) -> tuple[int, str, int]:
        """Void a key no one redeemed; its (state, text, at ms) after COMMIT (the redeem's when it lost)."""
        def work(cur: Any) -> tuple[int, str, int]:
            cur.execute("""
                WITH ins AS (
                    INSERT INTO keyvault_keys (serial, state, text, at_ms, change)
                    VALUES (%(serial)s, %(state)s, %(text)s, %(now)s, nextval('keyvault_change'))
                    ON CONFLICT (serial) DO UPDATE SET state = excluded.state, text = excluded.text,
                                                       at_ms = excluded.at_ms, change = excluded.change
                    WHERE keyvault_keys.state = %(active)s  -- held or partly used: the void wins, it takes the row
                    RETURNING change, serial, text, at_ms
                ), ev AS (
                    INSERT INTO keyvault_changes (change, kind, serial, text, at_ms)
                    SELECT change, 'void', serial, text, at_ms FROM ins
                ) SELECT count(*) FROM ins""", {"serial": _signed(serial), "state": VOIDED, "text": reason,
                                                 "now": now, "active": ACTIVE})
            if cur.fetchone()[0]:
                cur.execute(_NOTIFY)
                return VOIDED, reason, now
            cur.execute("SELECT state, text, at_ms FROM keyvault_keys WHERE serial = %s", (_signed(serial),))
            row = cur.fetchone()
            return int(row[0]), str(row[1]), int(row[2])

        return self._run(work)

    def blacklist(self, target: bytes, level: str, shown: str, reason: str, now: int) -> None:
        """Add (or replace the reason of) a blacklist entry, with its event, in one transaction."""
        def work(cur: Any) -> None:
            cur.execute("""
                WITH ins AS (
                    INSERT INTO keyvault_blacklist (target, level, shown, reason, at_ms, change)
                    VALUES (%(target)s, %(level)s, %(shown)s, %(reason)s, %(now)s, nextval('keyvault_change'))
                    ON CONFLICT (target) DO UPDATE SET reason = excluded.reason, at_ms = excluded.at_ms,
                                                       change = excluded.change
                    RETURNING change, target, reason, at_ms
                ) INSERT INTO keyvault_changes (change, kind, target, text, at_ms)
                  SELECT change, 'blacklist', target, reason, at_ms FROM ins""",
                        {"target": target, "level": level, "shown": shown, "reason": reason, "now": now})
            cur.execute(_NOTIFY)

        self._run(work, decisive=False)

    def lift(self, target: bytes, level: str, shown: str, reason: str, now: int) -> bool:
        """Remove a blacklist entry, with its event; False when there was none."""
        def work(cur: Any) -> bool:
            cur.execute("""
                WITH del AS (DELETE FROM keyvault_blacklist WHERE target = %(target)s RETURNING target)
                INSERT INTO keyvault_changes (change, kind, target, text, at_ms)
                SELECT nextval('keyvault_change'), 'lift', target, %(reason)s, %(now)s FROM del
                RETURNING change""", {"target": target, "reason": reason, "now": now})
            lifted = cur.fetchone() is not None
            if lifted:
                cur.execute(_NOTIFY)
            return lifted

        return self._run(work, decisive=False)

    # -- service tokens ------------------------------------------------------------------------------------

    def add_tokens(self, entries: dict[str, dict[str, Any]], now: int) -> list[str]:
        """Add tokens (name -> {hash, scope, created}); the names that were new (the others are kept as they are)."""
        def work(cur: Any) -> list[str]:
            names = sorted(entries)
            cur.execute("""
                WITH i AS (SELECT * FROM unnest(%(n)s::text[], %(h)s::text[], %(s)s::text[], %(c)s::bigint[])
                           AS t(name, hash, scope, created)),
                ins AS (INSERT INTO keyvault_tokens (name, hash, scope, created, change)
                        SELECT name, hash, scope, created, nextval('keyvault_change') FROM i
                        ON CONFLICT (name) DO NOTHING RETURNING change, name)
                INSERT INTO keyvault_changes (change, kind, text, at_ms)
                SELECT change, 'token', name, %(now)s FROM ins RETURNING text""",
                        {"n": names, "h": [entries[n]["hash"] for n in names],
                         "s": [entries[n]["scope"] for n in names], "c": [entries[n]["created"] for n in names],
                         "now": now})
            added = [r[0] for r in cur.fetchall()]
            if added:
                cur.execute(_NOTIFY)
            return added

        return self._run(work, decisive=False)

    def revoke_token(self, name: str, now: int) -> bool:
        """Revoke a token for every node; False when there was none of that name."""
        def work(cur: Any) -> bool:
            cur.execute("""
                WITH del AS (DELETE FROM keyvault_tokens WHERE name = %s RETURNING name)
                INSERT INTO keyvault_changes (change, kind, text, at_ms)
                SELECT nextval('keyvault_change'), 'token', name, %s FROM del RETURNING change""", (name, now))
            gone = cur.fetchone() is not None
            if gone:
                cur.execute(_NOTIFY)
            return gone

        return self._run(work, decisive=False)

    def tokens(self) -> dict[str, dict[str, Any]]:
        """Every token: name -> {hash, scope, created}."""
        def work(cur: Any) -> dict[str, dict[str, Any]]:
            cur.execute("SELECT name, hash, scope, created FROM keyvault_tokens")
            return {r[0]: {"hash": r[1], "scope": r[2], "created": int(r[3])} for r in cur.fetchall()}

        return self._run(work, decisive=False)

    # -- trust pins ----------------------------------------------------------------------------------------

    def put_trust(self, pins: list[tuple[bytes, str, int, str, bool]], now: int, *, replace: bool = True) -> None:
        """Pin or unpin identities for every node: (public key, name, prefix, role, pinned); ``replace`` False
        keeps what the authority holds for a key already there."""
        def work(cur: Any) -> None:
            conflict = ("DO UPDATE SET pinned = excluded.pinned, role = excluded.role, change = excluded.change"
                        if replace else "DO NOTHING")
            cur.execute(f"""
                WITH i AS (SELECT * FROM unnest(%(k)s::bytea[], %(n)s::text[], %(p)s::bigint[], %(r)s::text[],
                                                %(y)s::boolean[]) AS t(public_key, name, prefix, role, pinned)),
                ins AS (INSERT INTO keyvault_trust (public_key, name, prefix, role, pinned, change)
                        SELECT public_key, name, prefix, role, pinned, nextval('keyvault_change') FROM i
                        ON CONFLICT (public_key) {conflict} RETURNING change, public_key, name)
                INSERT INTO keyvault_changes (change, kind, target, text, at_ms)
                SELECT change, 'trust', public_key, name, %(now)s FROM ins""",
                        {"k": [p[0] for p in pins], "n": [p[1] for p in pins], "p": [p[2] for p in pins],
                         "r": [p[3] for p in pins], "y": [p[4] for p in pins], "now": now})
            cur.execute(_NOTIFY)

        self._run(work, decisive=False)

    def trust_pins(self) -> list[tuple[bytes, str, int, str, bool]]:
        """Every identity the authority pins or unpinned: (public key, name, prefix, role, pinned)."""
        def work(cur: Any) -> list[tuple[bytes, str, int, str, bool]]:
            cur.execute("SELECT public_key, name, prefix, role, pinned FROM keyvault_trust ORDER BY change")
            return [(bytes(r[0]), r[1], int(r[2]), r[3], bool(r[4])) for r in cur.fetchall()]

        return self._run(work, decisive=False)

    # -- the manifest registry --------------------------------------------------------------------------

    def put_manifest(self, digest: bytes, body: bytes, now: int) -> bool:
        """Put a signed manifest file in force for every node (by its SHA-256); False when it was already."""
        def work(cur: Any) -> bool:
            cur.execute("""
                WITH ins AS (
                    INSERT INTO keyvault_manifests (hash, body, at_ms, change)
                    VALUES (%s, %s, %s, nextval('keyvault_change'))
                    ON CONFLICT (hash) DO NOTHING RETURNING change, hash, at_ms
                ) INSERT INTO keyvault_changes (change, kind, target, text, at_ms)
                  SELECT change, 'manifest', hash, '', at_ms FROM ins RETURNING change""", (digest, body, now))
            added = cur.fetchone() is not None
            if added:
                cur.execute(_NOTIFY)
            return added

        return self._run(work, decisive=False)

    def manifest_hashes(self) -> list[bytes]:
        """The SHA-256 of every manifest in the registry, oldest first."""
        def work(cur: Any) -> list[bytes]:
            cur.execute("SELECT hash FROM keyvault_manifests ORDER BY change")
            return [bytes(r[0]) for r in cur.fetchall()]

        return self._run(work, decisive=False)

    def manifest(self, digest: bytes) -> bytes | None:
        """A registered manifest file's bytes, or None."""
        def work(cur: Any) -> bytes | None:
            cur.execute("SELECT body FROM keyvault_manifests WHERE hash = %s", (digest,))
            row = cur.fetchone()
            return None if row is None else bytes(row[0])

        return self._run(work, decisive=False)

    # -- moving a store's own state in, and looking at the authority ----------------------------------

    def migrate(self, keys: list[tuple[int, int, str, int]], entries: list[tuple[bytes, str, str, str, int]]
                ) -> dict[str, int]:
        """Move a store's redeems and voids (serial, state, text, at ms) and blacklist entries in, in one
        transaction; proved by counting them back. ConflictError (nothing moved) when the authority
        already decided one of those keys otherwise."""
        def work(cur: Any) -> dict[str, int]:
            if keys:
                cur.execute("""
                    WITH i AS (SELECT * FROM unnest(%(s)s::bigint[], %(st)s::smallint[], %(t)s::text[],
                                                    %(a)s::bigint[]) AS t(serial, state, text, at_ms)),
                    ins AS (INSERT INTO keyvault_keys (serial, state, text, at_ms, change)
                            SELECT serial, state, text, at_ms, nextval('keyvault_change') FROM i
                            ON CONFLICT (serial) DO NOTHING RETURNING change, serial, state, text, at_ms)
                    INSERT INTO keyvault_changes (change, kind, serial, text, at_ms)
                    SELECT change, CASE WHEN state = %(redeemed)s THEN 'redeem' ELSE 'void' END, serial, text, at_ms
                    FROM ins""", {"s": [_signed(k[0]) for k in keys], "st": [k[1] for k in keys],
                                  "t": [k[2] for k in keys], "a": [k[3] for k in keys], "redeemed": REDEEMED})
                cur.execute("""
                    SELECT count(*) FROM unnest(%(s)s::bigint[], %(st)s::smallint[], %(t)s::text[])
                        AS i(serial, state, text)
                    JOIN keyvault_keys k ON k.serial = i.serial AND k.state = i.state AND k.text = i.text""",
                            {"s": [_signed(k[0]) for k in keys], "st": [k[1] for k in keys],
                             "t": [k[2] for k in keys]})
                held = cur.fetchone()[0]
                if held != len(keys):
                    raise ConflictError(f"{len(keys) - held} of this store's {len(keys)} redeemed or void keys are "
                                        "decided otherwise in the authority (another node redeemed them): nothing "
                                        "was moved; `keyvault authority check` and the keys' traces show them")
            for target, level, shown, reason, at in entries:
                cur.execute("""
                    WITH ins AS (
                        INSERT INTO keyvault_blacklist (target, level, shown, reason, at_ms, change)
                        VALUES (%s, %s, %s, %s, %s, nextval('keyvault_change'))
                        ON CONFLICT (target) DO NOTHING RETURNING change, target, reason, at_ms)
                    INSERT INTO keyvault_changes (change, kind, target, text, at_ms)
                    SELECT change, 'blacklist', target, reason, at_ms FROM ins""",
                            (target, level, shown, reason, at))
            if entries:
                cur.execute("SELECT count(*) FROM keyvault_blacklist WHERE target = ANY(%s)",
                            ([e[0] for e in entries],))
                if cur.fetchone()[0] != len(entries):
                    raise ConflictError("the blacklist did not move whole: nothing was moved; retry")
            return {"keys": len(keys), "blacklist": len(entries)}

        try:
            return self._run(work, decisive=False, deadline=max(self.deadline, MIGRATE_DEADLINE))
        except ConflictError:
            with self._lock:
                self._drop()  # the transaction is abandoned unfinished: the server rolls it back
            raise

    def changes_since(self, change: int, limit: int = 10_000) -> list[tuple[int, str, int | None, bytes | None,
                                                                              str, int, Any]]:
        """Changes after number ``change``, oldest first: (change, kind, serial, target, text, at ms, and for a
        blacklist target the entry held now as (level, reason, at ms), None when there is none)."""
        def work(cur: Any) -> list[Any]:
            cur.execute("""SELECT c.change, c.kind, c.serial, c.target, c.text, c.at_ms, b.level, b.reason, b.at_ms
                           FROM keyvault_changes c LEFT JOIN keyvault_blacklist b ON b.target = c.target
                           WHERE c.change > %s ORDER BY c.change LIMIT %s""", (change, limit))
            return [(r[0], r[1], None if r[2] is None else _unsigned(r[2]), None if r[3] is None else bytes(r[3]),
                     r[4], r[5], None if r[6] is None else (r[6], r[7], r[8])) for r in cur.fetchall()]

        return self._run(work, decisive=False)

    def check(self) -> dict[str, Any]:
        """Reachable, schema version, newest change number, and replication as the primary sees it."""
        def work(cur: Any) -> dict[str, Any]:
            cur.execute("SELECT current_setting('server_version'), pg_is_in_recovery(), "
                        "(SELECT max(version) FROM keyvault_schema), (SELECT max(change) FROM keyvault_changes), "
                        "current_setting('synchronous_standby_names'), current_setting('synchronous_commit')")
            version, recovery, schema, newest, sync_names, sync_commit = cur.fetchone()
            cur.execute("SELECT application_name, client_addr::text, state, sync_state, "
                        "extract(epoch FROM replay_lag) FROM pg_stat_replication ORDER BY application_name")
            standbys = [{"name": r[0], "address": r[1], "state": r[2], "sync_state": r[3],
                         "replay_lag_seconds": None if r[4] is None else float(r[4])} for r in cur.fetchall()]
            return {"reachable": True, "server_version": version, "in_recovery": bool(recovery),
                    "schema_version": schema, "schema_expected": SCHEMA_VERSION, "newest_change": newest or 0,
                    "synchronous_standby_names": sync_names, "synchronous_commit": sync_commit,
                    "standbys": standbys}

        return self._run(work, decisive=False)


    # -- the cluster event log (sequencer.py) ---------------------------------------------------------------

    def session(self) -> Any:
        """A new connection of this node's own (the sequencer's: its advisory lock lives as long as it does)."""
        return self._connect()

    def cluster_identity(self) -> tuple[str, bytes, str] | None:
        """The cluster engine key's (name, public key, log origin), or None before a sequencer registered it."""
        def work(cur: Any) -> tuple[str, bytes, str] | None:
            cur.execute("SELECT name, public_key, origin FROM keyvault_cluster")
            row = cur.fetchone()
            return None if row is None else (row[0], bytes(row[1]), row[2])

        return self._run(work, decisive=False)

    def log_since(self, size: int, limit: int = 10_000) -> list[tuple[int, int, bytes, bytes]]:
        """The cluster log's entries from index ``size`` on: (index, change, leaf, hash), in order."""
        def work(cur: Any) -> list[tuple[int, int, bytes, bytes]]:
            cur.execute("SELECT idx, change, leaf, hash FROM keyvault_log WHERE idx >= %s ORDER BY idx LIMIT %s",
                        (size, limit))
            return [(int(r[0]), int(r[1]), bytes(r[2]), bytes(r[3])) for r in cur.fetchall()]

        return self._run(work, decisive=False)

    def log_checkpoints(self, after: int = 0) -> list[tuple[int, bytes, bytes]]:
        """The cluster log's signed checkpoints at sizes above ``after``: (size, root, note), oldest first."""
        def work(cur: Any) -> list[tuple[int, bytes, bytes]]:
            cur.execute("SELECT size, root, note FROM keyvault_checkpoints WHERE size > %s ORDER BY size", (after,))
            return [(int(r[0]), bytes(r[1]), bytes(r[2])) for r in cur.fetchall()]

        return self._run(work, decisive=False)

    # -- checkout: holds and count-limited keys (the rules are the engine's, checkout.py) -------------------

    def checkout(self, work: Callable[[Checkout], T]) -> T:
        """``work`` over one checkout transaction (keys locked, read, decisions written), committed; its answer
        only once COMMIT returned (a lost COMMIT is OutcomeUnknownError)."""
        return self._run(lambda cur: work(Checkout(cur)))

    def checkout_state(self, serials: list[int]) -> dict[int, tuple[dict[str, tuple[int, int, int]],
                                                                   dict[str, tuple[int, int, int, int]]]]:
        """What the authority holds now of these keys' checkout, read without locking: per serial its live and
        ended holds (order -> (at, expires, change)) and uses (order -> (at, change, uses left, limit))."""
        def work(cur: Any) -> dict[int, Any]:
            return Checkout(cur).read(serials)

        return self._run(work, decisive=False)

    def order_changes(self, order: str) -> list[tuple[int, str, int, int | None, int]]:
        """An order's redeems and checkout changes, oldest first: (change, kind, serial, detail, at ms)."""
        def work(cur: Any) -> list[tuple[int, str, int, int | None, int]]:
            return [(c, kind, serial, detail, at) for c, kind, _, serial, detail, at in Checkout(cur).events([order])]

        return self._run(work, decisive=False)


#: The change kinds of checkout (with ``redeem``, an order's story).
CHECKOUT_KINDS = ("hold", "confirm", "release", "expire", "use")

# PostgreSQL's clock, in ms: every checkout decision judges holds against this one clock, not the node's.
_CLOCK = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"


class Checkout:
    """One checkout transaction on the authority: the keys' rows locked and read, then what the rules decided
    written, with an event row per change. Time is PostgreSQL's (:attr:`now`, read once the keys are locked)."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur
        self._now: int | None = None

    @property
    def now(self) -> int:
        """PostgreSQL's clock (ms) as of this transaction's decisions."""
        if self._now is None:
            self.cur.execute(_CLOCK)
            self._now = int(self.cur.fetchone()[0])
        return self._now

    def events(self, orders: list[str]) -> list[tuple[int, str, str, int, int | None, int]]:
        """These orders' redeems and checkout changes, oldest first: (change, kind, order, serial, detail, at)."""
        self.cur.execute("SELECT change, kind, text, serial, detail, at_ms FROM keyvault_changes "
                         "WHERE text = ANY(%s) AND kind = ANY(%s) AND serial IS NOT NULL ORDER BY change",
                         (orders, ["redeem", *CHECKOUT_KINDS]))
        return [(int(r[0]), r[1], r[2], _unsigned(r[3]), None if r[4] is None else int(r[4]), int(r[5]))
                for r in self.cur.fetchall()]

    def lock(self, serials: list[int]) -> dict[int, tuple[int, str, int] | None]:
        """Lock these keys' rows (made, active, when a key has none), in serial order: two transactions wait for
        each other instead of deciding the same key at once. Each key's decided (state, text, at ms), or None."""
        signed = sorted(_signed(s) for s in set(serials))
        self.cur.execute("INSERT INTO keyvault_keys (serial, state, text, at_ms, change) "
                         "SELECT s, %s, '', 0, 0 FROM unnest(%s::bigint[]) AS s ORDER BY s "
                         "ON CONFLICT (serial) DO NOTHING", (ACTIVE, signed))
        self.cur.execute("SELECT serial, state, text, at_ms FROM keyvault_keys WHERE serial = ANY(%s) "
                         "ORDER BY serial FOR UPDATE", (signed,))
        rows = {_unsigned(r[0]): None if r[1] == ACTIVE else (int(r[1]), str(r[2]), int(r[3]))
                for r in self.cur.fetchall()}
        self._now = None  # the clock is read after the locks: decisions in lock order see time move forward
        return rows

    def read(self, serials: list[int]) -> dict[int, tuple[dict[str, tuple[int, int, int]],
                                                         dict[str, tuple[int, int, int, int]]]]:
        """Each key's holds (order -> (at, expires, change)) and uses (order -> (at, change, uses left, limit))."""
        signed = [_signed(s) for s in set(serials)]
        out: dict[int, Any] = {s: ({}, {}) for s in set(serials)}
        self.cur.execute("SELECT serial, order_id, at_ms, expires_at_ms, change FROM keyvault_holds "
                         "WHERE serial = ANY(%s)", (signed,))
        for r in self.cur.fetchall():
            out[_unsigned(r[0])][0][r[1]] = (int(r[2]), int(r[3]), int(r[4]))
        self.cur.execute("SELECT serial, order_id, at_ms, change, uses_left, uses_limit FROM keyvault_uses "
                         "WHERE serial = ANY(%s)", (signed,))
        for r in self.cur.fetchall():
            out[_unsigned(r[0])][1][r[1]] = (int(r[2]), int(r[3]), int(r[4]), int(r[5]))
        return out

    def blacklisted(self, targets: list[bytes]) -> dict[bytes, tuple[str, int]]:
        """The blacklist entries among these targets: target -> (reason, at ms)."""
        if not targets:
            return {}
        self.cur.execute("SELECT target, reason, at_ms FROM keyvault_blacklist WHERE target = ANY(%s)",
                         (sorted(set(targets)),))
        return {bytes(r[0]): (str(r[1]), int(r[2])) for r in self.cur.fetchall()}

    def write(self, events: list[tuple[str, int, str, int | None]], holds: dict[tuple[int, str], tuple[int, int, int]
                                                                                | None],
              uses: list[tuple[int, str, int, int, int]], redeemed: list[tuple[int, str, int]]) -> list[int]:
        """Write the decisions: ``events`` (kind, serial, order, detail) each with the next change number, in
        order; ``holds`` (serial, order) -> (at, expires, its event's position) or None to remove it; ``uses``
        (serial, order, limit, uses left, event position); ``redeemed`` (serial, order, event position): the
        key's row becomes its redeem. The change numbers given, in the order of ``events``."""
        if not events:
            return []
        cur, now = self.cur, self.now
        cur.execute("SELECT nextval('keyvault_change') FROM generate_series(1, %s)", (len(events),))
        numbers = sorted(int(r[0]) for r in cur.fetchall())
        cur.execute("INSERT INTO keyvault_changes (change, kind, serial, text, at_ms, detail) "
                    "SELECT c, k, s, o, %s, d FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[], "
                    "%s::bigint[]) AS t(c, k, s, o, d)",
                    (now, numbers, [e[0] for e in events], [_signed(e[1]) for e in events], [e[2] for e in events],
                     [e[3] for e in events]))
        gone = [key for key, hold in holds.items() if hold is None]
        if gone:
            cur.execute("DELETE FROM keyvault_holds WHERE (serial, order_id) IN "
                        "(SELECT * FROM unnest(%s::bigint[], %s::text[]))",
                        ([_signed(k[0]) for k in gone], [k[1] for k in gone]))
        made = [(key, hold) for key, hold in holds.items() if hold is not None]
        if made:
            cur.execute("INSERT INTO keyvault_holds (serial, order_id, at_ms, expires_at_ms, change) "
                        "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) "
                        "ON CONFLICT (serial, order_id) DO UPDATE SET at_ms = excluded.at_ms, "
                        "expires_at_ms = excluded.expires_at_ms, change = excluded.change",
                        ([_signed(k[0]) for k, _ in made], [k[1] for k, _ in made], [h[0] for _, h in made],
                         [h[1] for _, h in made], [numbers[h[2]] for _, h in made]))
        if uses:  # the primary key refuses a second use by one order, whatever the rules said
            cur.execute("INSERT INTO keyvault_uses (serial, order_id, uses_limit, uses_left, at_ms, change) "
                        "SELECT s, o, l, u, %s, c FROM unnest(%s::bigint[], %s::text[], %s::integer[], "
                        "%s::integer[], %s::bigint[]) AS t(s, o, l, u, c)",
                        (now, [_signed(u[0]) for u in uses], [u[1] for u in uses], [u[2] for u in uses],
                         [u[3] for u in uses], [numbers[u[4]] for u in uses]))
        if redeemed:
            cur.execute("UPDATE keyvault_keys k SET state = %s, text = r.o, at_ms = %s, change = r.c "
                        "FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS r(s, o, c) "
                        "WHERE k.serial = r.s AND k.state = %s",
                        (REDEEMED, now, [_signed(r[0]) for r in redeemed], [r[1] for r in redeemed],
                         [numbers[r[2]] for r in redeemed], ACTIVE))
            if cur.rowcount != len(redeemed):  # the rows are locked: only a bug gets here; nothing is committed
                raise ConflictError("a checkout redeem found its key decided already: nothing was changed; retry")
        cur.execute(_NOTIFY)
        return numbers
