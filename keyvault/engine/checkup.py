"""``keyvault check``: verify a whole store and report, check by check, what holds and what does not.

:func:`check_store` reads the store in one read transaction, streaming every
database with cursors (memory is bounded by the number of batches, one
65,536-key slice of commitments, and the redeems and voids not yet folded),
and verifies:

* the format and LMDB version records, the pepper check, the head and the log's tail record;
* suppliers, issuer prefixes and pinned identities;
* every batch record, and the signed manifest it names: its signature, its id, and its header
  against the batch record;
* the commitments: every stored commitment hashes to its slice root, and the slice roots to the
  manifest's signed Merkle root;
* the card records: one per key of each batch, 33 bytes, sealed, a known state; the locators and card
  numbers of imported batches;
* redeem and void state: every outcome record matches its card and the event it names; every
  folded change has its outcome; no unfolded change touches a key already spent;
* the counters of redeemed, voided and blacklisted keys, per batch, per supplier and in total;
* the blacklist's targets;
* the event log: its hash chain, every checkpoint's signature and root (``EventLog.verify``),
  every stored node of its Merkle tree, its tail record, and the subject index;
* custody: every stored transfer's signature, and the records that index it.

A damaged store never makes it raise: whatever goes wrong while reading (a StoreCorruptError, an
LMDB error, a record that does not parse) becomes a failed check naming the problem. Only opening
the store (``Vault.open``) can refuse it outright.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import lmdb

from .. import _fast
from ..errors import BadSignatureError, KeyvaultError, StoreCorruptError
from ..formats import merkle
from ..formats.custody import read_transfer
from ..formats.events import LEAF as _LEAF_HEAD
from ..formats.events import body_at, change_of
from ..formats.identity import supplier_id
from ..formats.keyformat import (
    INDEX_BITS,
    batch_key,
    MAX_BATCH_SIZE,
    batch_text,
    prefix_text,
    serial_index,
    serial_text,
)
from ..formats.manifest import (
    CHUNK,
    KINDS,
    ManifestHeader,
    manifest_id,
    open_signed_header,
    tree_root,
)
from ..store import Head, Txn
from ..store.lmdbstore import DATABASES, FORMAT, LMDB_FORMAT, Reading
from ..store.records import (
    ACTIVE,
    BATCHES_DIGEST,
    BLACKLIST_DIGEST,
    CARD,
    CHECKOUT_MARK,
    CHECKOUT_MARKED,
    HEAD,
    LEVEL_BATCH,
    LEVEL_KEY,
    LEVEL_SUPPLIER,
    OUTCOME,
    REDEEMED,
    VOIDED,
    batches_digest,
    blacklist_digest,
    checkout_sound,
    from_u64,
    unpack_holds,
    unpack_spent,
    unpack_use,
    load,
    pack_outcome,
    u64,
)
from ..vocabulary import Role
from .catalog import BatchInfo
from .issuing import COMMIT_VALUES
from .keyfiles import pepper_check
from .state import State
from .throttling import ThrottlePolicy

__all__ = ["CHECKS", "check_store"]

#: Problems quoted per check; the rest are counted.
SHOWN = 5
ORIGINS = ("issued", "upstream", "manifest")
_STATE_NAMES = {ACTIVE: "active", REDEEMED: "redeemed", VOIDED: "void"}
_PIN_ROLES = frozenset(Role.names()) | {"platform", "own"}  # a trust record's roles, with those of earlier versions
#: Errors that mean a record or page could not be read as it should: reported, never raised.
_DAMAGE = (KeyvaultError, lmdb.Error, ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error,
           OverflowError)


class _Problems:
    """What one check found wrong: the first few messages, and how many in all."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        """Record one problem."""
        self.total += 1
        if len(self.shown) < SHOWN:
            self.shown.append(message)

    def __bool__(self) -> bool:
        return self.total > 0

    def summary(self) -> str:
        """The problems as one line."""
        more = f"; and {self.total - len(self.shown)} more" if self.total > len(self.shown) else ""
        return "; ".join(self.shown) + more


def _damage(exc: BaseException) -> str:
    """A reading error as a problem line (never a key: the store holds none in plaintext)."""
    if isinstance(exc, KeyvaultError):
        return str(exc)
    if isinstance(exc, lmdb.Error):
        return f"LMDB reports damage while reading ({exc.__class__.__name__}): the store file is corrupt"
    return f"a record does not parse ({exc.__class__.__name__}: {exc})"


class _Checkup:
    """One run of the checks over one read transaction; later checks use what earlier ones read."""

    def __init__(self, state: State, txn: Txn) -> None:
        self.state = state
        self.txn = txn
        self.checks: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.finished: set[str] = set()  # checks whose pass read everything (their figures are whole)
        self.head = Head(0, 0, 0)
        self.suppliers: dict[str, dict[str, Any]] = {}
        self.batches: dict[int, BatchInfo] = {}
        self.merkle_roots: dict[int, str] = {}  # batch -> the signed manifest's merkle_root (hex)
        self.card_states: dict[int, Counter[int]] = defaultdict(Counter)  # batch -> folded states
        self.folded_changes: dict[int, Counter[int]] = defaultdict(Counter)  # batch -> folded redeems/voids
        self.unfolded: dict[int, Counter[int]] = defaultdict(Counter)  # batch -> unfolded redeems/voids
        self.blocked_keys: Counter[int] = Counter()  # batch -> key-level blacklist entries

    # -- running -----------------------------------------------------------------------------------

    def run(self, name: str, check: Callable[[_Problems], str]) -> bool:
        """Run one check; whatever it raises while reading becomes a problem of that check.

        True when LMDB reported damage: the transaction refuses every further read, so the next check
        needs a new one.
        """
        problems = _Problems()
        detail = ""
        broken = False
        try:
            detail = check(problems)
        except _DAMAGE as exc:
            problems.add(_damage(exc))
            broken = isinstance(exc, lmdb.Error)
        else:
            self.finished.add(name)
        self.checks.append({"check": name, "ok": not problems, "detail": problems.summary() if problems else detail})
        return broken

    def report(self) -> dict[str, Any]:
        """The report: ok, one row per check, and what was counted."""
        return {"ok": all(c["ok"] for c in self.checks), "checks": self.checks, "counts": self.counts}

    # -- meta ----------------------------------------------------------------------------------------

    def format(self, problems: _Problems) -> str:
        txn = self.txn
        fmt = txn.get("meta", b"format")
        if fmt != FORMAT:
            problems.add(f"the format record says {fmt!r}, not {FORMAT.decode()!r}")
        written = txn.get("meta", b"lmdb")
        if written != LMDB_FORMAT.encode():
            problems.add(f"the LMDB version record says {written!r}, not {LMDB_FORMAT!r}")
        created = txn.get("meta", b"created_at")
        if created is None or len(created) != 8:
            problems.add("the creation time record is missing or malformed")
        policy = txn.get("meta", b"checkpoint_policy")
        if policy is None:
            problems.add("the checkpoint policy record is missing")
        else:
            doc = load(policy)
            if int(doc["every_events"]) < 1 or int(doc["every_seconds"]) < 1:
                problems.add("the checkpoint policy record is out of range")
        throttling = txn.get("meta", b"throttle_policy")
        if throttling is not None:
            for doc in load(throttling).values():
                ThrottlePolicy.from_dict(doc)
        return f"{FORMAT.decode()}, LMDB {LMDB_FORMAT}, {len(DATABASES)} databases"

    def pepper(self, problems: _Problems) -> str:
        stored = self.txn.get("meta", b"pepper_check")
        if stored is None:
            problems.add("the pepper check record is missing: no pepper can be confirmed for this store")
        elif not _fast.tags_equal(bytes(stored), pepper_check(self.state.pepper)):
            problems.add("the pepper check record does not match the pepper this store was opened with")
        return "the pepper check record matches the pepper in use"

    def head_record(self, problems: _Problems) -> str:
        txn = self.txn
        raw = txn.get("meta", b"head")
        if raw is None:
            problems.add("the head record is missing")
            return ""
        if len(raw) != HEAD.size:
            problems.add(f"the head record is {len(raw)} bytes, not {HEAD.size}")
            return ""
        try:
            head = self.head = txn.head()
        except StoreCorruptError as exc:
            problems.add(str(exc))
            return ""
        if head.folded > head.log_size:
            problems.add(f"the head says {head.folded} events are folded, but the log holds {head.log_size}")
        tail = txn.get("meta", b"log")
        if head.log_size and (tail is None or len(tail) != 32 * (1 + head.log_size.bit_count())):
            problems.add(f"the log's tail record is missing or has the wrong length for {head.log_size} events")
        if not head.log_size and tail is not None:
            problems.add("the log's tail record exists, but the head says the log is empty")
        last = txn.last_key("events")
        if (from_u64(last) + 1 if last is not None else 0) != head.log_size:
            problems.add(f"the last event is {'none' if last is None else from_u64(last)}, but the head says the "
                         f"log holds {head.log_size}")
        newest = txn.last_key("checkpoints")
        if newest is not None and from_u64(newest) > head.log_size:
            problems.add(f"a checkpoint covers {from_u64(newest)} events, more than the {head.log_size} logged")
        return (f"generation {head.generation}, {head.log_size:,} events, folded up to {head.folded:,}")

    # -- suppliers, identities, batches, manifests ---------------------------------------------------

    def suppliers_and_trust(self, problems: _Problems) -> str:
        txn = self.txn
        for key, value in txn.items("suppliers"):
            sid = bytes(key).decode("ascii")
            try:
                doc = load(value)
                if supplier_id(bytes.fromhex(doc["public_key"])) != sid:
                    problems.add(f"supplier {sid}: its record names another supplier's public key")
                if not isinstance(doc["name"], str) or not isinstance(doc["prefix"], str) or \
                        not isinstance(doc["first_seen"], int) or not isinstance(doc["next_batch"], int):
                    problems.add(f"supplier {sid}: its record has a field of the wrong type")
            except (ValueError, KeyError, TypeError) as exc:
                problems.add(f"supplier {sid}: its record does not parse ({exc.__class__.__name__})")
                continue
            self.suppliers[sid] = doc
        prefixes = 0
        for key, value in txn.items("prefixes"):
            prefixes += 1
            prefix, sid = from_u64(key), bytes(value).decode("ascii")
            owner = self.suppliers.get(sid)
            if owner is None:
                problems.add(f"issuer prefix {prefix_text(prefix)} belongs to supplier {sid}, who is not stored")
            elif owner["prefix"] != prefix_text(prefix):
                problems.add(f"issuer prefix {prefix_text(prefix)} belongs to supplier {sid}, whose record says "
                             f"{owner['prefix']}")
        trusted = 0
        for key, value in txn.items("trust"):
            trusted += 1
            if len(key) != 32:
                problems.add(f"a trust record's key is {len(key)} bytes, not a 32-byte public key")
                continue
            try:
                doc = load(value)
                roles = doc.get("roles", [doc["role"]])
                if (not isinstance(doc["name"], str) or not isinstance(doc["role"], str) or not isinstance(roles, list)
                        or not roles or any(r not in _PIN_ROLES for r in roles)):
                    problems.add(f"pinned identity {bytes(key).hex()[:16]}: its record has a field of the wrong type")
            except (ValueError, KeyError, TypeError) as exc:
                problems.add(f"pinned identity {bytes(key).hex()[:16]}: its record does not parse "
                             f"({exc.__class__.__name__})")
        self.counts.update(suppliers=len(self.suppliers), trusted=trusted)
        return f"{len(self.suppliers)} suppliers, {prefixes} issuer prefixes, {trusted} pinned identities"

    def batches_and_manifests(self, problems: _Problems) -> str:
        txn = self.txn
        named: set[bytes] = set()
        digest = bytes(32)
        for key, value in txn.items("batches"):
            digest = batches_digest(digest, key, None, value)
            batch = from_u64(key)
            try:
                info = BatchInfo.from_record(batch, load(value))
            except (ValueError, KeyError, TypeError) as exc:
                problems.add(f"batch {batch_text(batch)}: its record does not parse ({exc.__class__.__name__})")
                continue
            self.batches[batch] = info
            where = f"batch {info.id}"
            if info.kind not in KINDS or info.origin not in ORIGINS or not 0 < info.count <= MAX_BATCH_SIZE \
                    or len(info.salt) != 16:
                problems.add(f"{where}: its record has a field out of range")
            if info.supplier not in self.suppliers:
                problems.add(f"{where}: its supplier {info.supplier} is not stored")
            mid = bytes.fromhex(info.manifest)
            named.add(mid)
            signed = txn.get("manifests", mid)
            if signed is None:
                problems.add(f"{where}: its signed manifest {info.manifest[:16]} is not stored")
                continue
            header = self._manifest_header(bytes(signed), where, problems)
            if header is None:
                continue
            if manifest_id(header[1]) != info.manifest:
                problems.add(f"{where}: the stored manifest's id is not the one its record names")
            fields = header[0]
            expected = {"batch": info.id, "count": info.count, "kind": info.kind, "salt": info.salt.hex(),
                        "product": info.product, "valid_from": info.valid_from, "valid_until": info.valid_until,
                        "created_at": info.created_at}
            wrong = [name for name, value in expected.items() if getattr(fields, name) != value]
            if fields.supplier.id != info.supplier:
                wrong.append("supplier")
            if wrong:
                problems.add(f"{where}: its record disagrees with its signed manifest on {', '.join(wrong)}")
            self.merkle_roots[batch] = fields.merkle_root
        stored = txn.get("meta", BATCHES_DIGEST)
        if stored is not None and digest != bytes(stored):
            problems.add("the batch records do not add up to their digest (meta/batches): a batch record was lost, "
                         "moved or altered; restore the store from a backup")
        manifests = 0
        for key, _ in txn.items("manifests"):
            manifests += 1
            if bytes(key) not in named:
                problems.add(f"manifest {bytes(key).hex()[:16]} is stored, but no batch names it")
        self.counts.update(batches=len(self.batches), keys=sum(b.count for b in self.batches.values()),
                           manifests=manifests)
        return (f"{len(self.batches)} batches of {self.counts['keys']:,} keys; {manifests} signed manifests, "
                "every signature verified")

    @staticmethod
    def _manifest_header(signed: bytes, where: str, problems: _Problems) -> tuple[ManifestHeader, bytes] | None:
        """The header of a stored signed manifest (its signature verified), or None after a problem."""
        try:
            opened = open_signed_header(signed, where=f"{where}: its stored manifest")
        except BadSignatureError:
            problems.add(f"{where}: the signature of its stored manifest does not verify: the record was altered")
            return None
        except KeyvaultError as exc:
            problems.add(str(exc))
            return None
        return opened.header, opened.header_bytes

    # -- commitments ---------------------------------------------------------------------------------

    def commitments(self, problems: _Problems) -> str:
        total = 0
        current: _Commitments | None = None
        orphans: set[int] = set()
        seen: set[int] = set()
        for key, value in self.txn.items("commitments"):
            batch = from_u64(key[:8])
            if current is None or current.batch != batch:
                if current is not None:
                    total += current.finish()
                current = None
                info = self.batches.get(batch)
                if info is None:
                    if batch not in orphans:
                        orphans.add(batch)
                        problems.add(f"commitments are stored for batch {batch_text(batch)}, which is not stored")
                    continue
                seen.add(batch)
                current = _Commitments(info, self.merkle_roots.get(batch), problems)
            current.feed(bytes(key[8:]), bytes(value))
        if current is not None:
            total += current.finish()
        for batch, info in sorted(self.batches.items()):
            if batch not in seen:
                problems.add(f"batch {info.id}: no commitment is stored")
        self.counts["commitments"] = total
        return f"{total:,} key commitments hash to their slice roots and to each signed Merkle root"

    # -- cards, locators, card numbers -----------------------------------------------------------------

    def cards(self, problems: _Problems) -> str:
        present: Counter[int] = Counter()
        unknown: set[int] = set()
        for key, value in self.txn.items("cards"):
            if len(key) != 8:
                problems.add(f"a card record's key is {len(key)} bytes, not a serial")
                continue
            serial = from_u64(key)
            batch = serial >> INDEX_BITS
            info = self.batches.get(batch)
            if info is None:
                if batch not in unknown:
                    unknown.add(batch)
                    problems.add(f"card {serial_text(serial)} belongs to batch {batch_text(batch)}, which is not "
                                 "stored")
                continue
            if serial_index(serial) >= info.count:
                problems.add(f"card {serial_text(serial)} is past the end of batch {info.id} ({info.count:,} keys)")
                continue
            present[batch] += 1
            if len(value) != CARD.size:
                problems.add(f"card {serial_text(serial)}: its record is {len(value)} bytes, not {CARD.size}")
                continue
            if not _fast.card_sound(self.state.pepper, serial, value):
                problems.add(f"card {serial_text(serial)}: its record is damaged (its seal does not match its state "
                             "and tag): the key is refused until the store is restored from a backup")
                continue
            state = value[0]
            if state not in _STATE_NAMES:
                problems.add(f"card {serial_text(serial)}: its record holds state {state}, not 0, 1 or 2")
                continue
            self.card_states[batch][state] += 1
        for batch, info in sorted(self.batches.items()):
            if present[batch] != info.count:
                problems.add(f"batch {info.id} holds {info.count:,} keys but {present[batch]:,} card records: "
                             f"{info.count - present[batch]:,} are missing")
        states: Counter[int] = Counter()
        for counts in self.card_states.values():
            states.update(counts)
        self.counts.update(cards=sum(present.values()), folded_redeemed=states[REDEEMED],
                           folded_void=states[VOIDED])
        return (f"{sum(present.values()):,} card records, one per key, each sealed, with a known state "
                f"({states[ACTIVE]:,} active, {states[REDEEMED]:,} redeemed, {states[VOIDED]:,} void when last folded)")

    def imported_cards(self, problems: _Problems) -> str:
        txn = self.txn
        located: Counter[int] = Counter()
        for key, value in txn.items("locators"):
            if len(key) != 16 or len(value) != 8:
                problems.add("a locator record has the wrong size")
                continue
            serial = from_u64(value)
            info = self.batches.get(serial >> INDEX_BITS)
            if info is None or info.kind == "native":
                problems.add(f"a locator points at {serial_text(serial)}, which is not in an imported batch")
            elif txn.get("cards", value) is None:
                problems.add(f"a locator points at card {serial_text(serial)}, whose record is missing")
            else:
                located[info.key] += 1
        numbered: Counter[int] = Counter()
        for key, value in txn.items("upstream"):
            serial = from_u64(key)
            info = self.batches.get(serial >> INDEX_BITS)
            if info is None or info.kind != "pair" or serial_index(serial) >= info.count:
                problems.add(f"a card number is stored for {serial_text(serial)}, which is not in a card:password "
                             "batch")
                continue
            if not bytes(value).decode("utf-8"):
                problems.add(f"card {serial_text(serial)}: its stored card number is empty")
            numbered[info.key] += 1
        imported = [info for info in self.batches.values() if info.kind != "native"]
        for info in imported:
            if located[info.key] != info.count:
                problems.add(f"batch {info.id}: {located[info.key]:,} locators for {info.count:,} imported cards")
            if info.kind == "pair" and numbered[info.key] != info.count:
                problems.add(f"batch {info.id}: {numbered[info.key]:,} card numbers for {info.count:,} cards")
        return (f"{sum(located.values()):,} locators and {sum(numbered.values()):,} card numbers for "
                f"{len(imported)} imported batches")

    # -- redeem and void state -------------------------------------------------------------------------

    def checkout(self, problems: _Problems) -> str:
        """Holds and count-limited uses: every record sealed for its serial, uses spent matching their records."""
        pepper = self.state.pepper
        holds = 0
        spent: dict[int, int] = {}
        used: Counter[int] = Counter()
        redeems = 0
        marked = False
        rostered: set[bytes] = set()
        for key, value in self.txn.items("checkout"):
            if bytes(key) == CHECKOUT_MARK:
                marked = checkout_sound(pepper, key, value)
                if not marked:
                    problems.add("the checkout table's mark is damaged")
                continue
            kind, rest = bytes(key[:1]), bytes(key[1:])
            if kind == b"R":  # a redeem listed under its order: the event must be that redeem
                redeems += 1
                size = int.from_bytes(rest[:2], "big") if len(rest) >= 2 else -1
                change = None
                if len(rest) == 2 + size + 8 and not value:
                    leaf = self.txn.get("events", rest[-8:])
                    change = change_of(bytes(leaf)) if leaf is not None else None
                if change is None or change[1] != 1 or change[3].encode("utf-8") != rest[2:2 + size]:
                    problems.add(f"an order's redeem record ({bytes(key[:24]).hex()}) does not name a redeem of that "
                                 "order in the event log")
                continue
            if kind not in (b"H", b"N", b"U") or len(rest) < 8:
                problems.add(f"a checkout record's key is malformed ({bytes(key[:12]).hex()})")
                continue
            rostered.add(bytes(key))
            serial = from_u64(rest[:8])
            where = f"key {serial_text(serial)}"
            batch = self.batches.get(batch_key(serial))
            if batch is None or self.txn.get("cards", u64(serial)) is None:
                problems.add(f"{where}: a checkout record names a key this store does not hold")
            try:
                if kind == b"H":
                    if len(rest) != 8 or not unpack_holds(pepper, serial, value):
                        problems.add(f"{where}: its hold record is malformed or empty")
                    holds += 1
                elif kind == b"N":
                    if len(rest) != 8:
                        problems.add(f"{where}: its uses record's key is malformed")
                    stored = unpack_spent(pepper, serial, value)
                    assert stored is not None
                    spent[serial], limit = stored
                    if batch is not None and (limit != batch.uses or not 0 < spent[serial] <= limit):
                        problems.add(f"{where}: {spent[serial]} uses spent of {limit}, in a batch of {batch.uses}-use "
                                     "keys")
                else:
                    order = rest[8:].decode("utf-8")
                    unpack_use(pepper, serial, order, value)
                    used[serial] += 1
            except (StoreCorruptError, UnicodeDecodeError) as exc:
                problems.add(f"{where}: {exc}")
        if self.txn.get("meta", CHECKOUT_MARKED) is not None and not marked:
            problems.add("the checkout table has lost its mark: the table (holds, uses) was lost or replaced; "
                         "restore the store from a backup")
        listed: set[bytes] = set()
        for key, value in self.txn.items("roster"):
            listed.add(bytes(key))
            if value:
                problems.add(f"the roster's listing {bytes(key[:12]).hex()} carries a value (it has none)")
        for key in sorted(listed - rostered):
            problems.add(f"key {serial_text(int.from_bytes(key[1:9], 'big'))}: its {_KINDS.get(key[:1], '?')} record "
                         "is listed in the roster but missing from the checkout table (a damaged page hid it)")
        for key in sorted(rostered - listed):
            problems.add(f"key {serial_text(int.from_bytes(key[1:9], 'big'))}: its {_KINDS.get(key[:1], '?')} record "
                         "is not listed in the roster (a damaged page of the roster, or a record written around "
                         "keyvault)")
        for serial in set(spent) | set(used):
            if spent.get(serial, 0) != used[serial]:
                problems.add(f"key {serial_text(serial)}: {spent.get(serial, 0)} uses counted but {used[serial]} "
                             "use records")
        self.counts["holds"] = holds
        self.counts["uses"] = sum(used.values())
        return (f"{holds:,} held keys, {sum(used.values()):,} uses of count-limited keys, each record sealed and "
                f"listed in the roster; "
                f"{redeems:,} redeems listed under their orders")

    def outcomes(self, problems: _Problems) -> str:
        txn = self.txn
        folded = self.head.folded
        count = 0
        for key, value in txn.items("outcomes"):
            count += 1
            serial = from_u64(key)
            where = f"key {serial_text(serial)}"
            if len(value) < OUTCOME.size:
                problems.add(f"{where}: its outcome record is {len(value)} bytes, too short")
                continue
            body = _fast.open_outcome(self.state.pepper, serial, value)
            if body is None:
                problems.add(f"{where}: its outcome record is damaged (its seal does not match): the key is refused "
                             "until the store is restored from a backup")
                continue
            state, _, index = OUTCOME.unpack_from(body)
            try:
                bytes(body[OUTCOME.size:]).decode("utf-8")
            except UnicodeDecodeError:
                problems.add(f"{where}: its outcome record's order id or reason is not UTF-8")
            if state not in (REDEEMED, VOIDED):
                problems.add(f"{where}: its outcome record holds state {state}, not redeemed or void")
            if index >= folded:
                problems.add(f"{where}: its outcome names event {index}, past the folded part of the log ({folded})")
            card = txn.get("cards", key)
            if card is None:
                problems.add(f"{where}: it has an outcome record but no card record")
            elif card[0] != state:
                problems.add(f"{where}: its outcome says {_STATE_NAMES.get(state, state)} but its card record says "
                             f"{_STATE_NAMES.get(card[0], card[0])}")
        self.counts["outcomes"] = count
        return f"{count:,} outcome records, each matching its card record"

    def ledger(self, problems: _Problems) -> str:
        """Every redeem and void event against the card and outcome records (folded) or the overlay (not)."""
        txn = self.txn
        folded = self.head.folded
        spent: dict[int, int] = {}  # unfolded changes: serial -> event index (bounded by FOLD_AT)
        folded_total = 0
        for key, leaf in txn.items("events"):
            index = from_u64(key)
            try:
                body = body_at(bytes(leaf))
            except StoreCorruptError:
                problems.add(f"event {index} is too short to be an event, or its links section is damaged")
                continue
            if leaf[_LEAF_HEAD.size - 9] in (_fast.KIND_REDEEM, _fast.KIND_VOID) and len(leaf) < body + 8:
                problems.add(f"event {index} is too short to be an event")
                continue
            change = change_of(bytes(leaf))
            if change is None:
                continue
            serial, state, at_ms, text = change
            where = f"event {index} ({'redeem' if state == REDEEMED else 'void'} of {serial_text(serial)})"
            batch = serial >> INDEX_BITS
            card = txn.get("cards", u64(serial))
            if batch not in self.batches or card is None:
                problems.add(f"{where}: no such key in this store")
                continue
            outcome = txn.get("outcomes", u64(serial))
            if index < folded:
                folded_total += 1
                self.folded_changes[batch][state] += 1
                if outcome is None:
                    problems.add(f"{where}: folded, but the key has no outcome record")
                elif bytes(outcome) != pack_outcome(self.state.pepper, serial, state, at_ms, index, text):
                    problems.add(f"{where}: the key's outcome record does not record this event")
                if card[0] != state:
                    problems.add(f"{where}: folded, but the key's card record says {_STATE_NAMES.get(card[0], card[0])}")
            else:
                self.unfolded[batch][state] += 1
                if serial in spent:
                    problems.add(f"{where}: the key was already changed by event {spent[serial]}")
                spent[serial] = index
                if card[0] != ACTIVE:
                    problems.add(f"{where}: the key was already spent before it ({_STATE_NAMES.get(card[0], card[0])} "
                                 "in its card record)")
                elif outcome is not None:
                    problems.add(f"{where}: the key already has an outcome record, from an earlier change")
        outcomes = self.counts.get("outcomes")
        if outcomes is not None and outcomes != folded_total:
            problems.add(f"{outcomes:,} outcome records, but {folded_total:,} folded redeems and voids")
        if "cards" in self.finished:
            for batch, info in sorted(self.batches.items()):
                for state in (REDEEMED, VOIDED):
                    cards, events = self.card_states[batch][state], self.folded_changes[batch][state]
                    if cards != events:
                        problems.add(f"batch {info.id}: {cards:,} card records say {_STATE_NAMES[state]}, but the "
                                     f"folded log holds {events:,} such events")
        unfolded = sum(sum(c.values()) for c in self.unfolded.values())
        self.counts.update(unfolded=unfolded)
        return (f"{folded_total:,} folded redeems and voids match their card and outcome records; "
                f"{unfolded:,} not yet folded, each on a key still active in its card record")

    def counters(self, problems: _Problems) -> str:
        if not {"cards", "redeem and void state", "blacklist"} <= self.finished:
            problems.add("not checked: the card, redeem and blacklist checks could not read everything")
            return ""
        stored: dict[tuple[str, str], int] = {}
        for key, value in self.txn.items("counters"):
            text = bytes(key).decode("utf-8")
            if len(value) != 8:
                problems.add(f"counter {text!r} is {len(value)} bytes, not 8")
                continue
            if text.startswith("C:"):
                continue  # per-client refusals: counted as they happen, with nothing to check them against
            scope, _, name = text.partition("/")
            if name in ("redeemed", "void", "blacklisted"):
                stored[scope, name] = from_u64(value)
        expected: Counter[tuple[str, str]] = Counter()
        for batch, info in self.batches.items():
            figures = {"redeemed": self.card_states[batch][REDEEMED] + self.unfolded[batch][REDEEMED],
                       "void": self.card_states[batch][VOIDED] + self.unfolded[batch][VOIDED],
                       "blacklisted": self.blocked_keys[batch]}
            for name, n in figures.items():
                for scope in ("T", "B:" + info.id, "S:" + info.supplier):
                    expected[scope, name] += n
        checked = 0
        for where in sorted(set(expected) | set(stored)):
            checked += 1
            have, want = stored.get(where, 0), expected[where]
            if have != want:
                scope, name = where
                what = ("the total" if scope == "T" else f"batch {scope[2:]}" if scope.startswith("B:")
                        else f"supplier {scope[2:]}")
                problems.add(f"{what}: the {name} counter says {have:,}, the records say {want:,}")
        return f"{checked} counters of redeemed, void and blacklisted keys agree with the records"

    def blacklist(self, problems: _Problems) -> str:
        txn = self.txn
        count = 0
        digest = bytes(32)
        for key, value in txn.items("blacklist"):
            count += 1
            digest = blacklist_digest(digest, key, None, value)
            level, target = bytes(key[:1]), bytes(key[1:])
            doc = load(value)
            if not isinstance(doc["reason"], str) or not isinstance(doc["at"], int):
                problems.add("a blacklist entry's record has a field of the wrong type")
            if level == LEVEL_KEY:
                serial = from_u64(target)
                if txn.get("cards", target) is None:
                    problems.add(f"key {serial_text(serial)} is blacklisted but not stored")
                else:
                    self.blocked_keys[serial >> INDEX_BITS] += 1
            elif level == LEVEL_BATCH:
                if from_u64(target) not in self.batches:
                    problems.add(f"batch {batch_text(from_u64(target))} is blacklisted but not stored")
            elif level == LEVEL_SUPPLIER:
                if target.decode("ascii") not in self.suppliers:
                    problems.add(f"supplier {target.decode('ascii')} is blacklisted but not stored")
            else:
                problems.add(f"a blacklist entry has an unknown level {level!r}")
        if digest != bytes(txn.get("meta", BLACKLIST_DIGEST) or bytes(32)):
            problems.add("the blacklist's entries do not add up to its digest (meta/blacklist): an entry was lost, "
                         "moved or altered; restore the store from a backup")
        self.counts["blacklist"] = count
        return f"{count} blacklist entries, each naming a stored key, batch or supplier, adding up to their digest"

    # -- the event log ---------------------------------------------------------------------------------

    def event_log(self, problems: _Problems) -> str:
        events = self.state.log.verify(self.txn)
        checkpoints = sum(1 for _ in self.txn.items("checkpoints"))
        self.counts.update(events=events, checkpoints=checkpoints)
        return (f"{events:,} events, each chained to the one before; {checkpoints:,} checkpoints, each signed by "
                "this store's engine key over the root of the events it covers")

    def log_tree(self, problems: _Problems) -> str:
        """Every stored node of the log's Merkle tree, recomputed from the events; the tail; the subject index."""
        txn = self.txn
        stored = iter(txn.items("tree"))
        pending = next(stored, None)
        size, frontier, hashes, last = 0, b"", bytearray(), b""
        nodes_seen = 0

        def flush() -> None:
            nonlocal frontier, pending, nodes_seen
            first = size - len(hashes) // 32
            nodes, frontier = _fast.tree_append(first, frontier, bytes(hashes))
            hashes.clear()
            for key, node in nodes:
                while pending is not None and bytes(pending[0]) < key:
                    problems.add(f"the tree holds a node {from_u64(pending[0])} the events do not make")
                    pending = next(stored, None)
                if pending is None or bytes(pending[0]) > key:
                    problems.add(f"node {from_u64(key)} of the log's tree is missing")
                    continue
                if bytes(pending[1]) != node:
                    problems.add(f"node {from_u64(key)} of the log's tree does not hash the events below it")
                nodes_seen += 1
                pending = next(stored, None)

        for key, leaf in txn.items("events"):
            if from_u64(key) != size:
                problems.add(f"event {size} is missing or out of place")
                break
            last = merkle.leaf_hash(bytes(leaf))
            hashes += last
            size += 1
            if len(hashes) >= CHUNK * 32:
                flush()
        if hashes:
            flush()
        while pending is not None:
            problems.add(f"the tree holds a node {from_u64(pending[0])} the events do not make")
            pending = next(stored, None)
        tail = txn.get("meta", b"log")
        if size and tail is not None and (bytes(tail[:32]) != last or bytes(tail[32:]) != frontier):
            problems.add("the log's tail record does not match its last event and tree")
        subjects = 0
        for key, _ in txn.items("subjects"):
            if key[:1] == b"#":
                continue  # a node of the subject index (checked by recomputing its root)
            subjects += 1
            if len(key) < 9 or from_u64(key[-8:]) >= self.head.log_size:
                problems.add("the subject index names an event past the end of the log")
        self.counts["tree_nodes"] = nodes_seen
        try:
            index = self.state.log.index.verify(txn)
        except StoreCorruptError as exc:
            problems.add(str(exc))
            index = "subject index damaged"
        return (f"{nodes_seen:,} tree nodes recomputed from the events; tail record and {subjects:,} index entries "
                f"agree; {index}")

    # -- custody -----------------------------------------------------------------------------------

    def custody(self, problems: _Problems) -> str:
        txn = self.txn
        transfers = indexed = spends = evidence = 0
        for key, value in txn.items("custody"):
            kind, rest = bytes(key[:1]), bytes(key[1:])
            if kind == b"T":
                transfers += 1
                try:
                    hop = read_transfer(bytes(value), f"stored transfer {rest.hex()[:16]}")
                except KeyvaultError as exc:
                    problems.add(str(exc))
                    continue
                if hop.id != rest.hex():
                    problems.add(f"stored transfer {rest.hex()[:16]} is stored under another transfer's id")
            elif kind == b"H":
                indexed += 1
                batch, tid = from_u64(rest[:8]), rest[8:]
                if batch not in self.batches:
                    problems.add(f"transfer {tid.hex()[:16]} is indexed under batch {batch_text(batch)}, not stored")
                if txn.get("custody", b"T" + tid) is None:
                    problems.add(f"transfer {tid.hex()[:16]} is indexed under its batch but not stored")
            elif kind == b"S":
                spends += 1
                if len(rest) != 40 or len(value) != 40 or txn.get("custody", b"T" + bytes(value[:32])) is None:
                    problems.add("a spend record names a transfer that is not stored")
            elif kind == b"E":
                evidence += 1
                doc = load(value)
                for tid in (rest, bytes.fromhex(doc["conflicts_with"])):
                    if txn.get("custody", b"T" + tid) is None:
                        problems.add(f"double-sale evidence names transfer {tid.hex()[:16]}, which is not stored")
            else:
                problems.add(f"a custody record has an unknown kind {kind!r}")
        self.counts.update(transfers=transfers, double_sales=evidence)
        return (f"{transfers} signed transfers verified; {indexed} batch index entries, {spends} spend records, "
                f"{evidence} double-sale records point at stored transfers")


class _Commitments:
    """One batch's commitment records, fed in key order (C..., R..., S): recomputes the slice roots."""

    def __init__(self, info: BatchInfo, merkle_root: str | None, problems: _Problems) -> None:
        self.info = info
        self.batch = info.key
        self.merkle_root = merkle_root
        self.problems = problems
        self.where = f"batch {info.id}"
        self.values = 0  # C records read
        self.keys = 0  # commitments read
        self.slice = bytearray()  # the current slice's commitments (at most CHUNK * 32 bytes)
        self.roots: list[bytes] = []  # slice roots recomputed
        self.stored: list[bytes] = []  # slice roots stored
        self.seed = False
        self.broken = False  # a problem already reported: stop comparing

    def _fail(self, message: str) -> None:
        if not self.broken:
            self.broken = True
            self.problems.add(f"{self.where}: {message}")

    def _slice_done(self) -> None:
        self.roots.append(_fast.merkle_root(bytes(self.slice)))
        self.slice.clear()

    def feed(self, suffix: bytes, value: bytes) -> None:
        """One record: suffix is C or R with a u32 index, or S."""
        tag = suffix[:1]
        if tag == b"C" and len(suffix) == 5:
            n = int.from_bytes(suffix[1:], "big")
            if n != self.values or self.stored:
                self._fail(f"commitment record {self.values} is missing or out of place")
                return
            self.values += 1
            if len(value) % 32 or len(value) > COMMIT_VALUES * 32:
                self._fail(f"commitment record {n} has the wrong size")
                return
            data = memoryview(value)
            while data:
                room = CHUNK * 32 - len(self.slice)
                self.slice += data[:room]
                data = data[room:]
                if len(self.slice) == CHUNK * 32:
                    self._slice_done()
            self.keys += len(value) // 32
        elif tag == b"R" and len(suffix) == 5:
            n = int.from_bytes(suffix[1:], "big")
            if n != len(self.stored) or len(value) != 32:
                self._fail(f"slice root {len(self.stored)} is missing or malformed")
                return
            self.stored.append(value)
        elif tag == b"S" and not suffix[1:]:
            if len(value) != 32:
                self._fail("its wrapped commitment seed has the wrong size")
            self.seed = True
        else:
            self._fail(f"an unknown commitment record {suffix!r}")

    def finish(self) -> int:
        """Compare what was read with the batch and its manifest; how many commitments were read."""
        info = self.info
        if self.slice:
            self._slice_done()
        slices = -(-info.count // CHUNK)
        if self.keys != info.count:
            self._fail(f"{self.keys:,} commitments are stored for {info.count:,} keys")
        elif len(self.stored) != slices:
            self._fail(f"{len(self.stored)} slice roots are stored for {slices} slices of keys")
        elif self.roots != self.stored:
            bad = next(i for i, (a, b) in enumerate(zip(self.roots, self.stored)) if a != b)
            self._fail(f"the commitments of slice {bad} do not hash to its stored root")
        elif self.merkle_root is not None and tree_root(self.stored).hex() != self.merkle_root:
            self._fail("its slice roots do not make the Merkle root its manifest signs")
        if not self.seed:
            self._fail("its wrapped commitment seed is missing")
        return self.keys


_KINDS = {b"H": "hold", b"N": "uses", b"U": "use"}


#: The checks, in the order they run.
CHECKS = ("format", "pepper", "head", "suppliers and trust", "batches and manifests", "commitments", "cards",
          "imported cards", "outcomes", "redeem and void state", "blacklist", "counters", "event log", "log tree",
          "custody", "checkout")


def check_store(state: State, on_check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Verify every part of an open store and report; never raises for what it finds.

    Returns ``{"ok": bool, "checks": [{"check", "ok", "detail"}, ...], "counts": {...}}``: one row per
    check, in the order they ran; a failed check's detail names the first problems it found (and
    how many in all). Reading happens in one read transaction, so the report describes one moment
    of the store even while other processes write to it; only after LMDB reports a damaged page
    (which ends that transaction) do the remaining checks read in a new one.

    ``on_check`` is called with each check's row as soon as it is known. LMDB does not check its
    pages: a page damaged in some ways (a node pointing past the end of the file) makes it read
    outside the file, which kills the process (SIGBUS) instead of raising. ``keyvault check``
    therefore runs this in a child process and reports such a crash against the check that was
    running (``on_check`` tells it how far the checks got).
    """
    first = state.store.read()
    run = _Checkup(state, first.__enter__())
    reading: Reading | None = first  # the transaction to end: None between ending one and opening the next
    try:
        steps = (run.format, run.pepper, run.head_record, run.suppliers_and_trust, run.batches_and_manifests,
                 run.commitments, run.cards, run.imported_cards, run.outcomes, run.ledger, run.blacklist,
                 run.counters, run.event_log, run.log_tree, run.custody, run.checkout)
        for name, step in zip(CHECKS, steps, strict=True):
            broken = run.run(name, step)
            if on_check is not None:
                on_check(run.checks[-1])
            if broken and reading is not None:
                # LMDB found a damaged page, and that transaction refuses every further read: go on in a new one.
                done, reading = reading, None
                done.__exit__(None, None, None)
                fresh = state.store.read()
                run.txn = fresh.__enter__()
                reading = fresh
        counts = run.counts
        counts.setdefault("keys", 0)
        counts["redeemed"] = counts.get("folded_redeemed", 0) + sum(c[REDEEMED] for c in run.unfolded.values())
        counts["void"] = counts.get("folded_void", 0) + sum(c[VOIDED] for c in run.unfolded.values())
        counts["active"] = counts.get("cards", 0) - counts["redeemed"] - counts["void"]
        return run.report()
    finally:
        if reading is not None:
            reading.__exit__(None, None, None)
