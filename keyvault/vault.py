"""The front door: :class:`Vault`, a thin typed facade over the :class:`~keyvault.engine.Engine`.

Open a store with :meth:`Vault.open` (or make one with :meth:`Vault.init`);
every check answers a :class:`~keyvault.results.Result`. Related operations
are grouped: ``vault.blacklist.add/lift/entries``, ``vault.trust.add/remove/
list/rotate``, ``vault.tokens.create/revoke/list``; the flat names of earlier
releases (``vault.lift``, ``vault.untrust``, ``vault.create_token``, ...) keep
working.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .engine import (
    BatchInfo,
    BlacklistEntry,
    Catalog,
    Engine,
    Grant,
    Policy,
    Progress,
    ThrottlePolicy,
    Webhooks,
)
from .engine.answers import (
    Activity,
    Audit,
    AuthorityBound,
    AuthorityShown,
    AuthorityStatus,
    AuthorityUnbound,
    Backup,
    CheckReport,
    CheckRow,
    LockedCard,
    Order,
    Page,
    ReceiptProof,
    Restore,
    Stats,
    Trace,
)
from .engine.reconcile import activity, key_report, page
from .engine.receipts import make_receipt, upgrade_receipt
from .engine.shapes import (
    CheckpointEntry,
    LotReceived,
    LotSent,
    TokenEntry,
    TrustEntry,
    TrustRecord,
)
from .formats.bundle import Check
from .formats.identity import Identity, PublicIdentity, Rotation
from .errors import KeyvaultError
from .results import Result
from .vocabulary import Level, Role


class Blacklist:
    """``vault.blacklist``: refuse keys, serials, batches or suppliers, and lift the refusals.

    Calling it (``vault.blacklist(level, target, reason)``) is :meth:`add`.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, level: Level | str, target: str, reason: str) -> BlacklistEntry:
        """Refuse a key, serial, batch or supplier from the next verify on, in every process."""
        return self._engine.blacklist(Level.parse(level), target, reason)

    __call__ = add

    def lift(self, level: Level | str, target: str, reason: str) -> BlacklistEntry:
        """Remove a blacklist entry; lifting needs a reason too (``remove`` is another name for it)."""
        return self._engine.lift(Level.parse(level), target, reason)

    remove = lift

    def entries(self) -> list[BlacklistEntry]:
        """Every blacklist entry: suppliers, then batches, then keys."""
        return self._engine.blacklist_entries()


class Trust:
    """``vault.trust``: the identities whose manifests, transfers and lots this store accepts.

    Calling it (``vault.trust(identity, role)``) is :meth:`add`.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, identity: PublicIdentity, role: Role | str | Sequence[Role | str] | None = None) -> TrustRecord:
        """Pin a public identity in a role or several (default: the roles its file declares, else supplier)."""
        if role is None:
            roles: list[Role | str] = list(identity.roles) or [Role.SUPPLIER]
        else:
            roles = [role] if isinstance(role, (Role, str)) else list(role)
        return self._engine.trust(identity, [Role.parse(r).value for r in roles])

    __call__ = add

    def remove(self, identity: PublicIdentity) -> TrustRecord:
        """Unpin a public identity (what it signed before stays; nothing new is accepted)."""
        return self._engine.untrust(identity)

    def list(self) -> list[TrustEntry]:
        """Every pinned identity."""
        return self._engine.trusted()

    def rotate(self, rotation: Rotation) -> TrustRecord:
        """Accept a key rotation signed by a pinned key and its successor."""
        return self._engine.rotate_trust(rotation)


class Tokens:
    """``vault.tokens``: the bearer tokens of the HTTP service. Calling it (``vault.tokens()``) is :meth:`list`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, name: str, scope: str) -> str:
        """Make a token for ``name`` with ``scope``; returns it (only its hash is kept: show it once)."""
        return self._engine.create_token(name, scope)

    def revoke(self, name: str) -> None:
        """Revoke a token: every server process refuses it from its next request on."""
        self._engine.revoke_token(name)

    def list(self) -> list[TokenEntry]:
        """Each token's name, scope and creation time (never the token or its hash)."""
        return self._engine.tokens()

    __call__ = list

    def authorize(self, token: str) -> Grant | None:
        """The grant a presented token carries, or None when it is unknown or revoked."""
        return self._engine.authorize(token)


class AuthorityBinding:
    """``vault.authority``: the PostgreSQL authority this store's decisions are made in (docs/cluster.md)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def set(self, dsn: str, *, migrate: bool = False,
            cluster_key: str | os.PathLike[str] | None = None) -> AuthorityBound:
        """Bind the store to the authority at ``dsn``; ``migrate`` moves the store's own decisions in first;
        ``cluster_key`` is the cluster engine key file (0600) every process of this node sequences with."""
        return self._engine.bind_authority(dsn, migrate=migrate, cluster_key=cluster_key)

    def cluster_key(self, path: str | os.PathLike[str] | None) -> AuthorityShown:
        """Record the cluster engine key file in the binding (checked first; None clears it); the binding shown."""
        return self._engine.set_cluster_key(path)

    def unset(self) -> AuthorityUnbound:
        """Unbind the store: it decides alone again."""
        return self._engine.unbind_authority()

    def show(self) -> AuthorityShown:
        """Whether the store is bound, the DSN with its password masked, and the cluster key's public id."""
        return self._engine.authority_info()

    def check(self) -> AuthorityStatus:
        """Reachable, schema version, replication state and this node's cache lag."""
        return self._engine.authority_check()

    def catch_up(self) -> int:
        """Apply the authority's newer changes to this node's cache now; how many were read."""
        return self._engine.catch_up()


class Vault:
    """A keyvault store, opened. Use as a context manager, or call :meth:`close`."""

    def __init__(self, engine: Engine) -> None:
        #: The engine behind this facade: for tools and tests that need the store itself.
        self.engine = engine
        self.blacklist = Blacklist(engine)
        self.trust = Trust(engine)
        self.tokens = Tokens(engine)
        self.authority = AuthorityBinding(engine)
        #: The webhook endpoints: add, list, pause, resume, replay, stats (docs/service.md, Webhooks).
        self.webhooks = Webhooks(engine)
        # The hot calls are the engine's own bound methods (the methods below document them): the facade
        # adds no Python call per request.
        self.verify = engine.verify  # type: ignore[method-assign]
        self.verify_many = engine.verify_many  # type: ignore[method-assign]
        self.redeem = engine.redeem  # type: ignore[method-assign]
        self.redeem_many = engine.redeem_many  # type: ignore[method-assign]
        self.authorize = engine.authorize  # type: ignore[method-assign]

    @classmethod
    def init(cls, path: str | os.PathLike[str], *, pepper_file: str | os.PathLike[str] | None = None) -> Vault:
        """Create a new store in an empty or new directory, with a new 0600 pepper file."""
        return cls(Engine.init(path, pepper_file=pepper_file))

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, pepper_file: str | os.PathLike[str] | None = None,
             create: bool = False, authority: bool = True) -> Vault:
        """Open the store at ``path`` (created first when ``create`` is set and none is there).

        A store bound to a PostgreSQL authority connects to it (``authority=False``: it does not, and can
        only verify from its cache, show or unset the binding).
        """
        return cls(Engine.open(path, pepper_file=pepper_file, create=create, authority=authority))

    @property
    def path(self) -> Path:
        """The store directory."""
        return self.engine.path

    def close(self) -> None:
        """Flush pending statistics and close the store."""
        self.webhooks.close()
        self.engine.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Vault {str(self.path)!r}>"

    # -- settings --------------------------------------------------------------------------------

    @property
    def flush_every(self) -> float | None:
        """Seconds between automatic writes of refused-attempt counts (None: only flush_stats() and close())."""
        return self.engine.guard.flush_every

    @flush_every.setter
    def flush_every(self, seconds: float | None) -> None:
        self.engine.guard.flush_every = seconds

    @property
    def fold_slices(self) -> int:
        """How many folds a full overlay takes: 1 for bulk redeems, 10 for shorter pauses (the service)."""
        return self.engine.fold_slices

    @fold_slices.setter
    def fold_slices(self, slices: int) -> None:
        self.engine.fold_slices = slices

    # -- checks ------------------------------------------------------------------------------------

    def verify(self, key: str, *, client: str | None = None) -> Result:
        """Check a key without changing anything: ``valid``, or why it would be refused."""
        return self.engine.verify(key, client=client)

    def verify_many(self, keys: Iterable[str], *, client: str | None = None) -> list[Result]:
        """Verify many keys in one read transaction; one Result per key, in input order."""
        return self.engine.verify_many(keys, client=client)

    def redeem(self, key: str, order_id: str, *, client: str | None = None) -> Result:
        """Spend a key for an order, durably: ``accepted`` once; a retry of that order gets the same answer."""
        return self.engine.redeem(key, order_id, client=client)

    def redeem_many(self, items: Iterable[tuple[str, str]], *, client: str | None = None) -> list[Result]:
        """Redeem (key, order id) pairs in one durable transaction; one Result per pair, in input order."""
        return self.engine.redeem_many(items, client=client)

    def redeem_for(self, items: Sequence[tuple[str, str, str | None]]) -> list[Result]:
        """Redeem (key, order id, client) triples from many callers in one durable transaction."""
        return self.engine.redeem_for(items)

    def void(self, key_or_serial: str, reason: str) -> Result:
        """Withdraw an unused key (refund, recall): ``void`` when done; a redeemed key is refused."""
        return self.engine.void(key_or_serial, reason)

    # -- checkout: holds, count-limited keys, orders ---------------------------------------------

    def hold(self, key: str, order_id: str, ttl: float, *, client: str | None = None) -> Result:
        """Hold a key for an order for ``ttl`` seconds: ``held`` with ``expires_at`` (a retry: the same answer);
        ``client``'s refusal budget is charged as a verify's is."""
        return self.engine.hold(key, order_id, ttl, client=client)

    def confirm(self, order_id: str) -> list[Result]:
        """Turn every hold of an order into a redeem: ``accepted`` per key; an ended hold is ``expired_hold``."""
        return self.engine.confirm(order_id)

    def release(self, order_id: str) -> list[Result]:
        """Give up every hold of an order: ``released`` per key."""
        return self.engine.release(order_id)

    def checkout_for(self, ops: Sequence[tuple[Any, ...]]) -> list[Result | list[Result] | KeyvaultError]:
        """Holds, confirms and releases from many callers in one durable transaction (what a server's
        commit process calls): per op a Result, a list of them, or the KeyvaultError that refused it."""
        return self.engine.checkout_for(ops)

    def order(self, order_id: str) -> Order:
        """Every key an order holds or held (serials, never keys), with its state and times, and the events."""
        return self.engine.order(order_id)

    def catalog(self) -> Catalog:
        """A current snapshot of batches, suppliers and blacklist entries."""
        return self.engine.catalog()

    # -- issuing and importing -------------------------------------------------------------------

    def issue_batch(self, identity: Identity, product: str, count: int, *, keys_out: str | os.PathLike[str],
                    manifest_out: str | os.PathLike[str], valid_from: int | None = None,
                    valid_until: int | None = None, progress: Progress | None = None, uses: int = 1,
                    long_form: bool = False) -> BatchInfo:
        """Issue ``count`` new keys: printable export (0600, once), signed manifest, records in this store.

        ``uses`` above 1 makes count-limited keys: each may be redeemed by up to ``uses`` orders, once each;
        ``long_form`` adds each key's long form (for QR codes and links: the key with its supplier's
        signature, ``keyvault verify-offline`` checks it) to the export; it costs a signature per key.
        """
        return self.engine.issue_batch(identity, product, count, keys_out=keys_out, manifest_out=manifest_out,
                                       valid_from=valid_from, valid_until=valid_until, progress=progress,
                                       uses=uses, long_form=long_form)

    def import_cards(self, identity: Identity, product: str, cards_csv: str | os.PathLike[str], *,
                     manifest_out: str | os.PathLike[str], valid_from: int | None = None,
                     valid_until: int | None = None, progress: Progress | None = None) -> BatchInfo:
        """Make a batch of upstream cards (a CSV of codes, or card numbers and passwords)."""
        return self.engine.import_cards(identity, product, cards_csv, manifest_out=manifest_out,
                                        valid_from=valid_from, valid_until=valid_until, progress=progress)

    def import_manifest(self, path: str | os.PathLike[str], *,
                        progress: Progress | None = None) -> tuple[BatchInfo, bool]:
        """Import a supplier's signed manifest: (batch, True if it was new, False if already here)."""
        return self.engine.import_manifest(path, progress=progress)

    # -- the flat names of the grouped operations ---------------------------------------------------

    def lift(self, level: Level | str, target: str, reason: str) -> BlacklistEntry:
        """Remove a blacklist entry (``vault.blacklist.lift``)."""
        return self.blacklist.lift(level, target, reason)

    def blacklist_entries(self) -> list[BlacklistEntry]:
        """Every blacklist entry (``vault.blacklist.entries``)."""
        return self.blacklist.entries()

    def untrust(self, identity: PublicIdentity) -> TrustRecord:
        """Unpin a public identity (``vault.trust.remove``)."""
        return self.trust.remove(identity)

    def trusted(self) -> list[TrustEntry]:
        """Every pinned identity (``vault.trust.list``)."""
        return self.trust.list()

    def rotate_trust(self, rotation: Rotation) -> TrustRecord:
        """Accept a key rotation (``vault.trust.rotate``)."""
        return self.trust.rotate(rotation)

    def create_token(self, name: str, scope: str) -> str:
        """Make a service token (``vault.tokens.create``)."""
        return self.tokens.create(name, scope)

    def revoke_token(self, name: str) -> None:
        """Revoke a service token (``vault.tokens.revoke``)."""
        self.tokens.revoke(name)

    def authorize(self, token: str) -> Grant | None:
        """The grant a presented token carries, or None (``vault.tokens.authorize``; once per request)."""
        return self.engine.authorize(token)

    # -- throttling ------------------------------------------------------------------------------

    def throttle_policy(self, client: str | None = None) -> ThrottlePolicy:
        """The policy that applies to ``client`` (its own, or the store's default)."""
        return self.engine.throttle_policy(client)

    def set_throttle_policy(self, policy: ThrottlePolicy, client: str | None = None) -> None:
        """Set the store's default policy, or one client's own (``ThrottlePolicy(None)``: never throttled)."""
        self.engine.set_throttle_policy(policy, client)

    def unblock(self, client: str) -> None:
        """Lift a client's block now and restart its count (a support action)."""
        self.engine.unblock(client)

    def unlock_card(self, card_number: str) -> bool:
        """Unlock an imported card locked after too many wrong passwords (a support action); False when it
        had none. The limit is the default policy's ``card_attempts``."""
        return self.engine.unlock_card(card_number)

    def locked_cards(self) -> list[LockedCard]:
        """Imported cards given wrong passwords: number, how many, and when they locked (None: not yet)."""
        return self.engine.locked_cards()

    # -- reports ---------------------------------------------------------------------------------

    def flush_stats(self) -> None:
        """Write buffered refused-attempt counts to the store."""
        self.engine.flush_stats()

    def stats(self) -> Stats:
        """Per-supplier and per-batch counts: issued, imported, redeemed, void, blacklisted, refused."""
        return self.engine.stats()

    def activity(self, since: int | None = None, until: int | None = None, *, daily: bool = False) -> Activity:
        """Redeems and voids in [since, until) (ms since the epoch; None: open), per supplier and batch, and
        with ``daily`` per UTC day: what ``keyvault stats --since --until --daily`` prints."""
        return activity(self.engine, since, until, daily)

    def key_report(self, batch: str) -> Iterator[dict[str, Any]]:
        """Each key of a batch held here, streamed in serial order: serial, state, order id, time, void reason,
        blacklisted. Never the key. Consume it (or close it) promptly: it holds a read transaction."""
        return key_report(self.engine, batch)

    def page(self, what: str, *, after: str | None = None, limit: int = 100) -> Page:
        """One page of ``batches``, ``manifests``, ``blacklist`` or ``tokens``: the items after the cursor
        ``after``, at most ``limit`` (1-1000), and ``next``, the cursor of the next page (None on the last)."""
        return page(self.engine, what, after, limit)

    def trace(self, key_or_serial: str) -> Trace:
        """Where a key came from and what happened to it: supplier, batch, product, history."""
        return self.engine.trace(key_or_serial)

    def check(self, on_check: Callable[[CheckRow], None] | None = None) -> CheckReport:
        """Verify every part of the store and report check by check (``keyvault check``); never raises."""
        return self.engine.check(on_check)

    # -- provenance --------------------------------------------------------------------------------

    @property
    def engine_identity(self) -> PublicIdentity:
        """This store's engine key (it signs the checkpoints): give its public file to bundle verifiers."""
        return self.engine.engine_identity

    def checkpoint(self) -> str:
        """Sign a checkpoint of the event log now (or return the newest if it covers every event): the note."""
        return self.engine.checkpoint()

    def checkpoints(self) -> list[CheckpointEntry]:
        """Every checkpoint the engine signed, oldest first."""
        return self.engine.checkpoints()

    @property
    def checkpoint_policy(self) -> Policy:
        """When checkpoints are signed by themselves."""
        return self.engine.checkpoint_policy

    def set_checkpoint_policy(self, every_events: int, every_seconds: int) -> None:
        """Sign checkpoints by themselves after this many events or seconds, whichever comes first."""
        self.engine.set_checkpoint_policy(every_events, every_seconds)

    def check_since(self, old_note: str) -> Check:
        """Is this store's log an extension of the one ``old_note`` (a checkpoint it signed earlier) saw?"""
        return self.engine.check_since(old_note)

    def receipt(self, key_or_serial: str) -> str:
        """The engine-signed receipt of a key's redeem (by key or serial): one line, ``KVR1.`` and base64url.

        Made on request, after the redeem, from its event in the log: redeems that want none pay nothing.
        The same redeem always gets the same text; NotFoundError when the key was not redeemed here.
        """
        return make_receipt(self.engine, key_or_serial)

    def upgrade_receipt(self, receipt: str) -> ReceiptProof:
        """A receipt of this store with its event's inclusion proof and the signed checkpoint covering it
        (one is signed when none covers it yet): JSON that ``keyvault verify-receipt`` checks whole."""
        return upgrade_receipt(self.engine, receipt, self.engine.checkpoint)

    def verify_log(self) -> int:
        """Walk the event log: chain, tree and checkpoints; how many events. StoreCorruptError if altered."""
        return self.engine.verify_log()

    def send_lot(self, sender: Identity, batch: str, recipient: PublicIdentity, *,
                 manifest: str | os.PathLike[str], out: str | os.PathLike[str],
                 ranges: str | None = None) -> LotSent:
        """Transfer (part of) a batch you hold to ``recipient``: a signed record, and a lot sealed to them."""
        return self.engine.send_lot(sender, batch, recipient, manifest=manifest, out=out, ranges=ranges)

    def receive_lot(self, lot: str | os.PathLike[str], recipient: Identity, *,
                    manifest_out: str | os.PathLike[str] | None = None) -> LotReceived:
        """Open a lot sealed to you: check every signature and hop, record custody, import its batch."""
        return self.engine.receive_lot(lot, recipient, manifest_out=manifest_out)

    def audit(self) -> Audit:
        """Double sales (with both signed records), withheld or forked manifests, and the event log's check."""
        return self.engine.audit()

    def trace_bundle(self, key_or_serial: str) -> dict[str, Any]:
        """A self-contained proof of a key's story, checkable offline (``keyvault verify-bundle``)."""
        return self.engine.trace_bundle(key_or_serial)

    def backup(self, dest: str | os.PathLike[str], *, with_pepper: bool = False) -> Backup:
        """Copy the store, while it serves, into the new or empty directory ``dest``, checked: its manifest.

        The pepper is left out unless ``with_pepper`` (then a 0600 file in the backup).
        """
        return self.engine.backup(dest, with_pepper=with_pepper)

    @staticmethod
    def restore(src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                since: str | Sequence[str] | None = None,
                pepper_file: str | os.PathLike[str] | None = None) -> Restore:
        """Restore a backup into the new store directory ``dest``, checked; what was restored.

        ``since`` is a checkpoint note kept from the live store (or several): a backup whose log does not
        extend each is refused (ProofError). ``pepper_file``: the pepper, when the backup holds none.
        """
        return Engine.restore(src, dest, since=since, pepper_file=pepper_file)
