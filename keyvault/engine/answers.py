"""The typed reports the engine answers with: frozen :class:`msgspec.Struct` values, each an :class:`Answer`.

Stats, activity, pages, traces, orders, the store check, the audit, receipt proofs, backups and the
authority binding are typed attributes for programs; ``to_dict()`` is the JSON that ``--json`` and
the HTTP service print (field for field, in order); ``answer["name"]`` still reads a field as the
dicts of earlier releases did. (The smaller trust, token, checkpoint and lot answers are the
``TypedDict``\\s of :mod:`keyvault.engine.shapes`.)
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..results import Result
from .catalog import BatchInfo, BlacklistEntry
from .shapes import TokenEntry


def _plain(obj: Any) -> Any:
    """What ``to_dict`` makes of a value msgspec does not know: its own ``to_dict()``."""
    to_dict = getattr(obj, "to_dict", None)
    if to_dict is None:
        raise NotImplementedError(f"{type(obj).__name__} has no JSON form")
    return to_dict()


class Answer(msgspec.Struct, frozen=True):
    """A typed report: attributes, ``to_dict()`` for its JSON, and ``answer["field"]`` as before."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: the fields (JSON names) in order, nested answers as dicts too."""
        doc: dict[str, Any] = msgspec.to_builtins(self, enc_hook=_plain)
        return doc

    def __getitem__(self, name: str) -> Any:
        """A field by its JSON name (``trace["batch"]``), as the dicts of earlier releases were read."""
        cls = type(self)
        for attr, shown in zip(cls.__struct_fields__, cls.__struct_encode_fields__):
            if shown == name:
                value = getattr(self, attr)
                if value is msgspec.UNSET:  # a field this answer leaves out (absent from its JSON too)
                    break
                return value
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        """A field by its JSON name, or ``default`` when this answer has no such field (as ``dict.get``)."""
        try:
            return self[name]
        except KeyError:
            return default


# -- stats -----------------------------------------------------------------------------------------


class BatchView(Answer, frozen=True, kw_only=True):
    """A batch as reports show it (times as ISO 8601 UTC; the salt and internal number left out)."""

    batch: str
    supplier: str
    supplier_name: str
    product: str
    kind: str  # native | code | pair
    origin: str  # issued | upstream | manifest
    count: int
    valid_from: str | None
    valid_until: str | None
    created_at: str | None
    added_at: str | None
    manifest: str
    uses: int

    @classmethod
    def of(cls, info: BatchInfo) -> BatchView:
        """The view of a catalog batch."""
        return msgspec.convert(info.to_dict(), cls)


class BatchStats(BatchView, frozen=True, kw_only=True):
    """One batch's row of ``stats``: ``count`` is the keys held here (all, or those received in lots)."""

    redeemed: int
    void: int
    blacklisted: int  # unspent keys refused by a key, batch or supplier entry
    active: int  # still spendable
    received_ranges: list[str] | None  # "first-last" indices received in lots; None: the whole batch
    refused: dict[str, int]  # refused attempts by status
    refused_total: int
    batch_blacklisted: bool


class SupplierStats(Answer, frozen=True, kw_only=True):
    """One supplier's row of ``stats``."""

    supplier: str
    name: str
    prefix: str
    batches: int
    issued: int
    imported: int
    keys: int
    redeemed: int
    void: int
    blacklisted: int
    active: int
    refused: dict[str, int]
    refused_total: int
    supplier_blacklisted: bool


class StatsTotals(Answer, frozen=True, kw_only=True):
    """The store's totals: ``active + redeemed + void + blacklisted == keys``."""

    suppliers: int
    batches: int
    keys: int
    issued: int
    imported: int
    redeemed: int
    void: int
    blacklisted: int
    active: int
    refused: dict[str, int]
    refused_total: int
    blacklist_entries: int


class ClientStats(Answer, frozen=True, kw_only=True):
    """One client's refused and throttled attempts."""

    client: str
    refused: dict[str, int]
    refused_total: int
    throttled: int


class Stats(Answer, frozen=True, kw_only=True):
    """``vault.stats()``: totals, then a row per supplier, per batch and per client (most refused first)."""

    totals: StatsTotals
    suppliers: list[SupplierStats]
    batches: list[BatchStats]
    clients: list[ClientStats]


# -- activity --------------------------------------------------------------------------------------


class Counts(Answer, frozen=True, kw_only=True):
    """Redeems and voids in a window."""

    redeemed: int
    void: int


class SupplierActivity(Answer, frozen=True, kw_only=True):
    """One supplier's redeems and voids in a window."""

    supplier: str
    name: str | None
    prefix: str | None
    redeemed: int
    void: int


class BatchActivity(Answer, frozen=True, kw_only=True):
    """One batch's redeems and voids in a window (None: a batch this store no longer lists)."""

    batch: str | None
    supplier: str | None
    product: str | None
    redeemed: int
    void: int


class DayBatch(Answer, frozen=True, kw_only=True):
    """One batch's redeems and voids on one day."""

    batch: str | None
    redeemed: int
    void: int


class Day(Answer, frozen=True, kw_only=True):
    """One UTC day of activity."""

    day: str  # YYYY-MM-DD
    redeemed: int
    void: int
    batches: list[DayBatch]


class Activity(Answer, frozen=True, kw_only=True, omit_defaults=True):
    """``vault.activity()``: redeems and voids in [since, until), per supplier and batch (and day, if asked)."""

    since: str | None
    until: str | None
    totals: Counts
    suppliers: list[SupplierActivity]
    batches: list[BatchActivity]
    days: list[Day] | None = None  # with ``daily`` only


# -- pages -----------------------------------------------------------------------------------------


class ManifestEntry(Answer, frozen=True, kw_only=True):
    """A signed manifest this store imported or made."""

    manifest: str
    batch: str
    supplier: str
    supplier_name: str
    count: int
    created_at: str | None
    added_at: str | None


class Page(Answer, frozen=True, kw_only=True):
    """``vault.page()``: one page of a list; its JSON names the list (``{"batches": [...], "next": ...}``)."""

    what: str  # batches | manifests | blacklist | tokens
    items: list[BatchView] | list[ManifestEntry] | list[BlacklistEntry] | list[TokenEntry]
    next: str | None  # the cursor of the next page; None on the last

    def to_dict(self) -> dict[str, Any]:
        """``{what: items, "next": cursor}``."""
        items = msgspec.to_builtins(self.items, enc_hook=_plain)
        return {self.what: items, "next": self.next}

    def __getitem__(self, name: str) -> Any:
        """``page["batches"]`` (the list by its name), ``page["next"]``."""
        return self.items if name == self.what else super().__getitem__(name)


# -- a key's story, an order ---------------------------------------------------------------------


class TraceSupplier(Answer, frozen=True, kw_only=True):
    """The supplier of a traced key."""

    id: str
    name: str | None
    prefix: str | None
    public_key: str | None  # hex
    first_seen: str | None


class Trace(Answer, frozen=True, kw_only=True):
    """``vault.trace()``: where a key came from and what happened to it, oldest event first."""

    serial: str
    index: int
    card_number: str | None  # an imported card's number
    status: Result  # what a verify answers now
    supplier: TraceSupplier
    batch: BatchView
    blacklist: list[BlacklistEntry]  # the entries that refuse it: its supplier's, batch's, own
    events: list[dict[str, Any]]  # the event log's records, as docs/provenance.md describes each type

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``status`` as the Result's own JSON."""
        doc = super().to_dict()
        doc["status"] = self.status.to_dict()
        return doc

    def __getitem__(self, name: str) -> Any:
        """A field by its JSON name; ``trace["status"]`` is the Result's JSON, as before."""
        return self.status.to_dict() if name == "status" else super().__getitem__(name)


class OrderKey(Answer, frozen=True, kw_only=True, omit_defaults=True):
    """One key (by serial) an order holds or held, with its state and times."""

    serial: str
    state: str | None  # held | redeemed | released | expired | void
    held_at: str | None
    expires_at: str | None
    redeemed_at: str | None
    released_at: str | None
    expired_at: str | None
    uses_left: int | None = None  # a count-limited key's uses left after this order's
    voided_at: str | None = None  # state void: when the key was voided, while the order held it


class Order(Answer, frozen=True, kw_only=True):
    """``vault.order()``: every key an order holds or held, and its checkout events."""

    order_id: str
    keys: list[OrderKey]
    events: list[dict[str, Any]]


class LockedCard(Answer, frozen=True, kw_only=True):
    """An imported card given wrong passwords."""

    card_number: str
    wrong_passwords: int
    locked_at: str | None  # None: not locked yet


# -- the store check, the audit ----------------------------------------------------------------------


class CheckRow(Answer, frozen=True, kw_only=True):
    """One check of ``keyvault check``."""

    check: str
    ok: bool
    detail: str


class CheckReport(Answer, frozen=True, kw_only=True):
    """``vault.check()``: whether every check passed, a row per check in the order they ran, and counts."""

    ok: bool
    checks: list[CheckRow]
    counts: dict[str, int]


class HopRecord(Answer, frozen=True, kw_only=True):
    """One signed transfer record, as the audit shows it."""

    transfer: str
    from_: str = msgspec.field(name="from")
    from_fingerprint: str
    to: str
    to_fingerprint: str
    at: str | None
    ranges: list[str]
    record: str  # the signed record, hex


class DoubleSale(Answer, frozen=True, kw_only=True):
    """Two signed transfers of the same keys: both records."""

    batch: str
    spent_record: str
    detected_at: str | None
    refused_at: str  # send | receive
    first: HopRecord
    second: HopRecord


class ManifestGap(Answer, frozen=True, kw_only=True):
    """A manifest whose predecessor in its supplier's chain is not here (withheld?)."""

    supplier: str
    batch: str
    missing_previous: str


class ManifestFork(Answer, frozen=True, kw_only=True):
    """Two manifests naming the same predecessor."""

    supplier: str
    previous: str
    batches: list[str]


class LogCheck(Answer, frozen=True, kw_only=True, omit_defaults=True):
    """The event log's own check: ``events`` and ``checkpoints`` when ok, else ``error``."""

    ok: bool
    events: int | None = None
    checkpoints: int | None = None
    error: str | None = None


class Audit(Answer, frozen=True, kw_only=True):
    """``vault.audit()``: double sales, withheld or forked manifests, the event log's check."""

    double_sales: list[DoubleSale]
    manifest_gaps: list[ManifestGap]
    manifest_forks: list[ManifestFork]
    event_log: LogCheck
    clean: bool


class ReceiptProof(Answer, frozen=True, kw_only=True):
    """``vault.upgrade_receipt()``: a receipt with its inclusion proof and checkpoint (``keyvault/receipt-proof/v1``)."""

    format: str
    receipt: str
    leaf: str
    proof: list[str]  # hex sibling hashes
    checkpoint: str  # the signed note


# -- backups ---------------------------------------------------------------------------------------


class BackupCheckpoint(Answer, frozen=True, forbid_unknown_fields=True):
    """The newest checkpoint in a backup's log."""

    size: int
    root: str
    note: str


class BackupManifest(Answer, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``backup.json``: what a backup holds, checked again on every restore."""

    format: str
    created_at: str
    store_format: str
    lmdb: str
    engine_public_key: str
    batches: int
    keys: int
    redeemed: int
    void: int
    log_size: int
    checkpoint: BackupCheckpoint | None
    data_bytes: int
    data_sha256: str
    pepper: bool


class Backup(BackupManifest, frozen=True, kw_only=True):
    """``vault.backup()``: the backup's manifest, and where it is."""

    path: str


class SinceCheck(Answer, frozen=True, kw_only=True):
    """Whether a restored log extends one pinned checkpoint."""

    ok: bool
    detail: str


class Restore(Answer, frozen=True, kw_only=True):
    """``Vault.restore()``: the new store, the backup, the pepper file, the manifest, the checks made."""

    store: str
    backup: str
    pepper_file: str
    manifest: BackupManifest
    since: list[SinceCheck]
    warning: str | None  # set when no checkpoint was given to check the backup against


# -- the authority binding ---------------------------------------------------------------------------


class AuthorityBound(Answer, frozen=True, kw_only=True):
    """``vault.authority.set()``: where the store is bound now, what was moved in, the newest change."""

    authority: str  # the DSN, password masked
    moved_keys: int
    moved_blacklist: int
    newest_change: int
    cluster_key: str | None  # the cluster engine key file recorded in the binding


class ClusterKeyState(Answer, frozen=True, kw_only=True):
    """The cluster engine key a bound node sequences the cluster log with (never its secret)."""

    file: str
    from_: str = msgspec.field(name="from")  # "binding", or the environment variable that overrides it
    id: str | None
    origin: str | None
    problem: str | None  # why this node cannot sequence with it


class ClusterLogState(Answer, frozen=True, kw_only=True):
    """The cluster event log as this node checked it."""

    size: int
    checkpoint: int | None
    origin: str | None
    problem: str | None  # tampering found: nothing past it is believed
    sequencer: bool  # whether this process numbers the log now


class AuthorityUnbound(Answer, frozen=True, kw_only=True):
    """``vault.authority.unset()``."""

    authority: None
    was: str


class AuthorityShown(Answer, frozen=True, kw_only=True):
    """``vault.authority.show()``: bound or not, the DSN with its password masked."""

    bound: bool
    authority: str | None
    cluster_key: ClusterKeyState | None | msgspec.UnsetType = msgspec.UNSET  # (absent when not bound)
    can_sequence: bool | msgspec.UnsetType = msgspec.UNSET


class Standby(Answer, frozen=True, kw_only=True):
    """A replica as the authority's primary sees it."""

    name: str | None
    address: str | None
    state: str | None
    sync_state: str | None
    replay_lag_seconds: float | None


class AuthorityStatus(Answer, frozen=True, kw_only=True):
    """``vault.authority.check()``: reachable, schema, replication, and this node's cache lag."""

    reachable: bool
    server_version: str
    in_recovery: bool
    schema_version: int | None
    schema_expected: int
    newest_change: int
    synchronous_standby_names: str
    synchronous_commit: str
    standbys: list[Standby]
    authority: str
    cache_change: int
    cache_lag: int
    manifests_not_imported: dict[str, str]  # manifest hash -> why it could not be imported yet
    cluster_log: ClusterLogState
