"""Trace bundles: everything needed to check one key's story offline, and the checker.

A bundle (JSON, format ``keyvault/bundle/v2``) holds the key's commitment
and its inclusion proof under the manifest's signed Merkle root, the signed
manifest header, each custody hop, and each event about the key with its
inclusion proof under a checkpoint signed, with its time, by the store's
engine key. Every field is covered by a signature or a proof, or recomputed
by the verifier and compared (docs/provenance.md): nothing rides along
unchecked. The salt is included only when the bundle was made from the key
itself (whoever holds the key may see its salt; a trace by serial must not
help anyone test guesses).

:func:`verify` checks a bundle with public keys taken by role (:class:`Trusted`)
and runs :data:`RULES` in order, one named rule after another; every FAIL line
names the rule that broke. A new rule is one entry in that list.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from .. import clock
from ..errors import BadSignatureError, CustodyError, KeyvaultError, ProofError
from . import merkle
from .checkpoint import Checkpoint, Verifier, open_note, split_note
from .cosignature import witnessed
from .custody import Transfer, check_chain, contains, read_transfer
from .events import parse_leaf, split_leaf
from .history import IndexProof, check_history
from .identity import ROLE_NAMES, PublicIdentity, fingerprint, supplier_id
from .keyformat import serial_text
from .manifest import ManifestHeader, SignedHeader, open_signed_header
from .typed import Hex16, Hex32, Index, decode

FORMAT = "keyvault/bundle/v2"
MAX_BUNDLE_BYTES = 64 << 20  # a bundle is kilobytes; refuse anything this large unread
CLOCK_SKEW_MS = 5 * 60 * 1000  # a checkpoint may be dated this far after the verifier's clock, no further


class BundleStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The key's status as the store judged it at the checkpoint's time; the verifier replays it."""

    status: str
    order_id: str | None


class BundleEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event about the key: its index in the log, its leaf bytes (base64), its inclusion proof (hex)."""

    index: Index
    leaf: str
    proof: list[Hex32]


class Bundle(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A trace bundle as written by :func:`build`: every field required (``salt`` may be null)."""

    format: Literal["keyvault/bundle/v2"]
    serial: str
    index: Index
    status: BundleStatus
    manifest: str  # base64 of the signed manifest header
    commitment: Hex32
    salt: Hex16 | None
    manifest_proof: list[Hex32]
    custody: list[str]  # base64 of each transfer file
    checkpoint: str
    events: list[BundleEvent]
    index_proofs: list[IndexProof]  # per subject: its latest event under the checkpoint (history.py)


_BUNDLE = msgspec.json.Decoder(Bundle)


def read_bundle(data: bytes) -> Bundle:
    """A bundle's JSON decoded strictly (nothing verified yet), or ProofError saying what is wrong.

    Strict means: UTF-8 JSON, no key twice in an object, no unknown or missing field, exact types,
    lower-case hex of the right length for hashes.
    """
    fix = "make it again with `keyvault trace KEY --bundle`"
    if len(data) > MAX_BUNDLE_BYTES:
        raise ProofError(f"the trace bundle is over {MAX_BUNDLE_BYTES >> 20} MiB, so it is not one; {fix}")
    return decode(_BUNDLE, data, what="the trace bundle", error=ProofError, fix=fix)


@dataclass(frozen=True)
class Check:
    """One line of a bundle's verification: the rule checked, whether it held, and in plain words."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``PASS rule: detail`` or ``FAIL rule: detail``."""
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass(frozen=True)
class Trusted:
    """The public keys a verifier trusts, by role: each key may sign only what its roles allow.

    suppliers: manifests under the issuer prefix of their identity (and the first custody hop);
    engines: checkpoints whose origin is ``keyvault/<the key's supplier id>``; witnesses:
    cosignatures of those checkpoints; distributors: nothing a bundle needs (transfers are
    authorised by the chain itself), but a distributor's key is never taken for anything else.
    """

    suppliers: tuple[PublicIdentity, ...] = ()
    distributors: tuple[PublicIdentity, ...] = ()
    engines: tuple[PublicIdentity, ...] = ()
    witnesses: tuple[PublicIdentity, ...] = ()

    @classmethod
    def by_declared_roles(cls, identities: Sequence[PublicIdentity]) -> Trusted:
        """Each identity in the roles its public file declares (signed by its key); none declared: supplier."""
        by: dict[str, list[PublicIdentity]] = {role: [] for role in ROLE_NAMES}
        for who in identities:
            for role in who.roles or ("supplier",):
                by[role].append(who)
        return cls(tuple(by["supplier"]), tuple(by["distributor"]), tuple(by["engine"]), tuple(by["witness"]))

    def roles_of(self, public_key: bytes) -> list[str]:
        """The roles ``public_key`` is trusted in (empty if none)."""
        return [role for role, group in zip(ROLE_NAMES, (self.suppliers, self.distributors, self.engines,
                                                         self.witnesses))
                if any(p.public_key == public_key for p in group)]


def engine_origin(public_key: bytes) -> str:
    """The checkpoint origin (and signer name) of the store whose engine key this is."""
    return f"keyvault/{supplier_id(public_key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    """Strict standard base64 (padded, canonical), else ProofError naming ``what``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProofError(f"{what} is not valid base64") from None
    if _b64(raw) != text:
        raise ProofError(f"{what} is not in canonical base64")
    return raw


def build(*, serial: int, index: int, manifest_signed: bytes, commitment: bytes, salt: bytes | None,
          manifest_proof: list[bytes], custody: list[Transfer], checkpoint: bytes, events: list[tuple[int, bytes,
          list[bytes]]], status: dict[str, Any], index_proofs: list[dict[str, Any]]) -> dict[str, Any]:
    """A bundle from its parts (the store gathers them: Vault.trace_bundle); ``status`` is judged at the
    checkpoint's time and carries only what the verifier replays: ``status`` and ``order_id``."""
    return {
        "format": FORMAT,
        "serial": serial_text(serial),
        "index": index,
        "status": {"status": status["status"], "order_id": status.get("order_id")},
        "manifest": _b64(manifest_signed),
        "commitment": commitment.hex(),
        "salt": salt.hex() if salt is not None else None,
        "manifest_proof": [h.hex() for h in manifest_proof],
        "custody": [_b64(hop.data) for hop in custody],
        "checkpoint": checkpoint.decode("utf-8"),
        "events": [{"index": i, "leaf": _b64(leaf), "proof": [h.hex() for h in proof]} for i, leaf, proof in events],
        "index_proofs": index_proofs,
    }


# -- the rules -----------------------------------------------------------------------------------


class _Stop(Exception):
    """A rule failed that later rules depend on: verification ends after its FAIL line."""


@dataclass
class _Ctx:
    """What the rules share: the inputs, and what earlier rules established."""

    data: bytes
    trusted: Trusted
    material: bytes | None
    max_age_ms: int | None
    now_ms: int | None
    min_witnesses: int | None = None
    doc: Bundle = field(init=False)
    signed: SignedHeader = field(init=False)
    header: ManifestHeader = field(init=False)
    supplier: PublicIdentity = field(init=False)
    chain: list[Transfer] = field(default_factory=list)
    checkpoint: Checkpoint = field(init=False)
    engine: PublicIdentity = field(init=False)
    events: list[dict[str, Any]] = field(default_factory=list)
    linked: dict[int, tuple[list[tuple[bytes, int | None]] | None, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """A named check: ``run`` yields its detail lines (PASS) or raises ProofError (FAIL, named after the rule),
    or yields whole Checks when it judges finer rules of its own (history); ``fatal`` stops verification at its failure (later rules need what it establishes)."""

    name: str
    run: Callable[[_Ctx], Iterator[str | Check]]
    fatal: bool = False


def _read(ctx: _Ctx) -> Iterator[str]:
    try:
        ctx.doc = read_bundle(ctx.data)
    except ProofError as exc:
        text = str(exc)
        if "$.format" in text or "field `format`" in text or "Expected `object`" in text:
            raise ProofError("not a keyvault trace bundle v2 (`keyvault trace KEY --bundle` writes one; a bundle "
                             "of an earlier version binds fewer fields: make it again)") from None
        raise ProofError(f"cannot be read: {exc}") from None
    yield f"{FORMAT}, every field present and well-formed"


def _manifest_signature(ctx: _Ctx) -> Iterator[str]:
    try:
        ctx.signed = open_signed_header(_unb64(ctx.doc.manifest, "the manifest"), where="the manifest")
    except KeyvaultError as exc:
        raise ProofError(str(exc)) from None
    ctx.header = ctx.signed.header
    yield f"batch {ctx.header.batch}, signed by fingerprint {fingerprint(ctx.signed.public_key)}"


def _manifest_signer(ctx: _Ctx) -> Iterator[str]:
    key, header = ctx.signed.public_key, ctx.header
    supplier = next((p for p in ctx.trusted.suppliers if p.public_key == key), None)
    if supplier is None:
        roles = ctx.trusted.roles_of(key)
        raise ProofError(f"the manifest is signed by fingerprint {fingerprint(key)}, "
                         + (f"trusted only as {' and '.join(roles)}, never to sign manifests" if roles else
                            "which is not among the trusted supplier keys given (--supplier)"))
    if header.prefix_value != supplier.prefix:
        raise ProofError(f"the manifest issues under prefix {header.prefix}, but its signer {supplier.name!r} owns "
                         f"prefix {supplier.prefix_text}: a batch under another supplier's prefix")
    if header.supplier.name != supplier.name:
        raise ProofError(f"the manifest names its supplier {header.supplier.name!r}, but the trusted identity of "
                         f"its key is named {supplier.name!r}")
    ctx.supplier = supplier
    yield f"{supplier.name!r} (fingerprint {supplier.fingerprint}), a trusted supplier, owns prefix {header.prefix}"


def _key_in_manifest(ctx: _Ctx) -> Iterator[str]:
    header, doc = ctx.header, ctx.doc
    proof = [bytes.fromhex(h) for h in doc.manifest_proof]
    merkle.verify_inclusion(bytes.fromhex(doc.commitment), doc.index, header.count, proof,
                            bytes.fromhex(header.merkle_root))
    expected = serial_text((header.prefix_value << 15 | header.batch_number) << 25 | doc.index)
    if expected != doc.serial:
        raise ProofError(f"the bundle names serial {doc.serial[:40]!r}, but leaf {doc.index} of this batch is "
                         f"{expected}")
    yield f"serial {doc.serial} is key {doc.index} of {header.count:,} ({len(proof)} proof hashes)"


def _key_opens_commitment(ctx: _Ctx) -> Iterator[str]:
    salt = bytes.fromhex(ctx.doc.salt) if ctx.doc.salt is not None else None
    if ctx.material is None:
        if salt is not None:
            raise ProofError("the bundle carries a salt, which only the key can check: give the key (--key), or "
                             "use a bundle made from the serial (`keyvault trace SERIAL --bundle`)")
        yield "not asked (no key given; the bundle, made from a serial, carries no salt)"
        return
    if salt is None:
        raise ProofError("the bundle carries no salt (it was made from a serial); make it with "
                         "`keyvault trace KEY --bundle`")
    header = ctx.header
    serial = (header.prefix_value << 15 | header.batch_number) << 25 | ctx.doc.index
    if not 0 <= serial < 1 << 64:
        raise ProofError("the manifest names a serial out of range")
    leaf = b"kv1/commit" + serial.to_bytes(8, "big") + salt + ctx.material
    if merkle.leaf_hash(leaf) != bytes.fromhex(ctx.doc.commitment):
        raise ProofError("the key given is not the one this manifest committed to")
    yield "the key given is the one committed to"


def _custody(ctx: _Ctx) -> Iterator[str]:
    for n, encoded in enumerate(ctx.doc.custody, 1):
        try:
            hop = read_transfer(_unb64(encoded, f"custody hop {n}"), f"custody hop {n}")
            ctx.chain.append(hop)
            check_chain(ctx.signed.public_key, ctx.signed.id, ctx.header.count, ctx.chain, ctx.header.batch)
        except (CustodyError, BadSignatureError) as exc:
            raise ProofError(str(exc)) from None
        if not contains(hop.ranges, ctx.doc.index):
            raise ProofError(f"custody hop {n} does not move this key")
        yield (f"hop {n}: {hop.fields.sender.name!r} -> {hop.fields.to.name!r} "
               f"(fingerprint {fingerprint(hop.recipient)}), signed by its holder")
    if not ctx.doc.custody:
        yield "none: the key is still with its supplier's store"


def _checkpoint_signature(ctx: _Ctx) -> Iterator[str]:
    note = ctx.doc.checkpoint.encode("utf-8")
    errors = []
    for engine in ctx.trusted.engines:
        origin = engine_origin(engine.public_key)
        try:
            ctx.checkpoint = open_note(note, None, [Verifier(origin, engine.public_key)])
        except ProofError as exc:
            errors.append(str(exc))
            continue
        ctx.engine = engine
        yield f"{ctx.checkpoint.size:,} events, signed by engine key {engine.fingerprint}"
        return
    if not ctx.trusted.engines:
        raise ProofError("no engine key was given (--engine, or --trust with a file declaring the role engine): "
                         "nothing may vouch for the log")
    others = (("supplier", ctx.trusted.suppliers), ("distributor", ctx.trusted.distributors),
              ("witness", ctx.trusted.witnesses))
    wrong = [role for role, group in others for p in group if _signed_by(note, p.public_key)]
    raise ProofError("no trusted engine key signed this checkpoint"
                     + (f"; a key trusted only as {wrong[0]} did, and it may not sign a log" if wrong else "")
                     + (f" ({errors[0]})" if errors and "signature" in errors[0] and "does not verify" in errors[0]
                        else ""))


def _signed_by(note: bytes, public_key: bytes) -> bool:
    """Whether any signature line of ``note`` is a valid Ed25519 signature by ``public_key`` (any name)."""
    try:
        text, signatures = split_note(note)
    except ProofError:
        return False
    probe = Verifier("probe", public_key)
    return any(probe.verifies(text, sig.signature) for sig in signatures)


def _checkpoint_origin(ctx: _Ctx) -> Iterator[str]:
    expected = engine_origin(ctx.engine.public_key)
    if ctx.checkpoint.origin != expected:
        raise ProofError(f"the checkpoint names log {ctx.checkpoint.origin[:80]!r}, but its signer's log is "
                         f"{expected}: an engine key signs only its own log")
    yield f"{expected}, the log of the engine key that signed it"


def _witnesses(ctx: _Ctx) -> Iterator[str]:
    witnesses = ctx.trusted.witnesses
    required = len(witnesses) if ctx.min_witnesses is None else ctx.min_witnesses
    if not witnesses and not required:
        yield "none required (no --witness given)"
        return
    parties = {p.public_key for p in ctx.trusted.suppliers + ctx.trusted.distributors + ctx.trusted.engines}
    parties |= {ctx.signed.public_key} | {hop.sender for hop in ctx.chain} | {hop.recipient for hop in ctx.chain}
    ok, detail = witnessed(ctx.doc.checkpoint.encode("utf-8"), witnesses, required, parties)
    if not ok:
        raise ProofError(detail)
    yield detail


def _checkpoint_age(ctx: _Ctx) -> Iterator[str]:
    when = ctx.checkpoint.time
    if when is None:
        raise ProofError("the checkpoint carries no signed time line, so its age cannot be known")
    shown = _iso(when)
    if ctx.now_ms is not None and when > ctx.now_ms + CLOCK_SKEW_MS:
        raise ProofError(f"the checkpoint is dated {shown}, in the future: the engine's clock or this one is wrong")
    if ctx.max_age_ms is not None:
        assert ctx.now_ms is not None
        age = ctx.now_ms - when
        if age > ctx.max_age_ms:
            raise ProofError(f"the checkpoint was signed {shown}, {_span(age)} ago, older than the "
                             f"{_span(ctx.max_age_ms)} allowed: ask for a fresh bundle")
        yield f"signed {shown}, {_span(max(age, 0))} ago (at most {_span(ctx.max_age_ms)} allowed)"
        return
    yield f"signed {shown} (no --max-age given)"


def _events(ctx: _Ctx) -> Iterator[str]:
    last = -1
    about = _About(ctx)
    for n, event in enumerate(ctx.doc.events):
        where = f"event {event.index}"
        if event.index <= last:
            raise ProofError(f"{where} is listed after event {last}: events are listed once each, in log order")
        last = event.index
        leaf = _unb64(event.leaf, f"{where}: its leaf")
        proof = [bytes.fromhex(h) for h in event.proof]
        try:
            merkle.verify_inclusion(merkle.leaf_hash(leaf), event.index, ctx.checkpoint.size, proof,
                                    ctx.checkpoint.root)
        except ProofError as exc:
            raise ProofError(f"{where}: {exc}") from None
        try:
            parsed = parse_leaf(leaf)
        except (KeyvaultError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ProofError(f"{where}: its leaf is not an event") from None
        if parsed["index"] != event.index:
            raise ProofError(f"{where}: the leaf says it is event {parsed['index']}")
        about.check(parsed, where)
        ctx.events.append(parsed)
        ctx.linked[event.index] = (split_leaf(leaf)[1], parsed["type"])
        yield f"{where}: {parsed['type']}, about this key, its batch or its supplier, included under the checkpoint"
    if not about.brought_in:
        raise ProofError(f"no issue or import event of manifest {ctx.signed.id[:16]} is in the bundle: this log "
                         "never vouched for this batch")


class _About:
    """Whether an event is about this key, its batch (this manifest) or its supplier."""

    def __init__(self, ctx: _Ctx) -> None:
        self.serial = ctx.doc.serial
        self.index = ctx.doc.index
        self.batch = ctx.header.batch
        self.manifest = ctx.signed.id
        self.supplier = ctx.header.supplier.id
        self.key = ctx.signed.public_key.hex()
        self.hops = {hop.id for hop in ctx.chain}
        self.brought_in = False

    def check(self, event: dict[str, Any], where: str) -> None:
        kind = event["type"]
        try:
            if kind in ("redeem", "void", "hold", "confirm", "release", "expire", "use"):
                ok = event["serial"] == self.serial
            elif kind in ("issue", "import"):  # this batch's (from this manifest only), or another of its supplier
                this = event["batch"] == self.batch
                ok = event["supplier"] == self.supplier and (not this or event["manifest"] == self.manifest)
                self.brought_in |= ok and this
            elif kind == "supplier":
                ok = (event["supplier"], event["public_key"]) == (self.supplier, self.key)
            elif kind == "trust":
                ok = self.key in (event.get("public_key"), event.get("old_public_key"), event.get("new_public_key"))
            elif kind == "transfer":
                ok = event["batch"] == self.batch
                moved = any(first <= self.index < end for first, end in event["ranges"])
                if ok and moved and event["transfer"] not in self.hops:
                    raise ProofError(f"{where}: the log records transfer {str(event['transfer'])[:16]} of this key, "
                                     "but the bundle's custody chain leaves it out")
            elif kind in ("blacklist", "lift"):
                ok = (event["level"], event["target"]) in (("key", self.serial), ("batch", self.batch),
                                                           ("supplier", self.supplier))
            else:
                ok = False
        except ProofError:
            raise
        except (KeyError, TypeError, ValueError):
            raise ProofError(f"{where}: an event of kind {kind} without the fields of one") from None
        if not ok:
            raise ProofError(f"{where}: an event of kind {kind} about another key, batch or supplier")


#: The statuses a bundle may state, and what the replay must find for each (docs/provenance.md).
STATUSES = ("redeemed", "exhausted", "void", "blacklisted", "not_yet_valid", "expired", "held", "valid")


def replayed_status(events: Sequence[dict[str, Any]], header: ManifestHeader, serial: str,
                    at_ms: int) -> tuple[str, str | None]:
    """(status, order id) of a key from its events and its manifest, at ``at_ms`` (the checkpoint's time):
    redeemed (exhausted: the last use of a count-limited key), void, blacklisted (an unlifted entry on the
    key, batch or supplier), not yet valid, expired, held (a hold not confirmed, released or ended by then),
    valid, in that precedence. ProofError if the events redeem or void the key twice."""
    state, order, used, held_until = "active", None, False, None
    blocks: set[tuple[str, str]] = set()
    for event in events:
        kind = event["type"]
        if kind in ("hold", "confirm", "release", "expire", "use") and event["serial"] == serial:
            used |= kind == "use"
            held_until = event["expires_at"] if kind == "hold" else None if kind != "use" else held_until
        elif kind in ("redeem", "void") and event["serial"] == serial:
            if state != "active":
                raise ProofError(f"a second state change of this key ({kind} after {state}): exactly-once broken")
            state = "redeemed" if kind == "redeem" else "void"
            order = event.get("order_id") if kind == "redeem" else None
        elif kind in ("blacklist", "lift"):
            target = (event["level"], event["target"])
            (blocks.add if kind == "blacklist" else blocks.discard)(target)
    if state == "redeemed" and used:
        return "exhausted", None
    if state != "active":
        return state, order
    if blocks:
        return "blacklisted", None
    if header.valid_from is not None and at_ms < header.valid_from:
        return "not_yet_valid", None
    if header.valid_until is not None and at_ms >= header.valid_until:
        return "expired", None
    if held_until is not None and at_ms < held_until:
        return "held", None
    return "valid", None


def _history(ctx: _Ctx) -> Iterator[str | Check]:
    """The completeness rules (history.py): each subject's chain of events, back from its latest under the
    checkpoint's subject index, is all in the bundle."""
    header = ctx.header
    batch_key = header.prefix_value << 15 | header.batch_number
    if not 0 <= ctx.doc.index < 1 << 25 or not 0 <= batch_key < 1 << 39:
        raise ProofError(f"key {ctx.doc.index} of the batch has no subject to check its history under")
    subjects = [(b"K" + (batch_key << 25 | ctx.doc.index).to_bytes(8, "big"), f"key {ctx.doc.serial}"),
                (b"B" + batch_key.to_bytes(8, "big"), f"batch {header.batch}"),
                (b"S" + header.supplier.id.encode(), f"supplier {header.supplier.id}")]
    for rule, held, detail in check_history(ctx.checkpoint, subjects, ctx.doc.index_proofs, ctx.linked,
                                            [event.index for event in ctx.doc.events]):
        yield Check(rule, held, detail)


def _status(ctx: _Ctx) -> Iterator[str]:
    at = ctx.checkpoint.time
    if at is None:
        raise ProofError("the checkpoint carries no time, so validity cannot be replayed")
    status, order = replayed_status(ctx.events, ctx.header, ctx.doc.serial, at)
    claimed = ctx.doc.status
    told = status + (f" by order {order!r}" if order is not None else "")
    if (claimed.status, claimed.order_id) != (status, order):
        said = claimed.status[:40] + (f" by order {claimed.order_id[:80]!r}" if claimed.order_id is not None else "")
        raise ProofError(f"the events and the manifest say {told} at {_iso(at)}; the bundle says {said}")
    yield f"{told} at {_iso(at)}, as the bundle says"


#: Every rule, in the order they run. Each FAIL line names its rule.
RULES: list[Rule] = [
    Rule("bundle", _read, fatal=True),
    Rule("manifest signature", _manifest_signature, fatal=True),
    Rule("manifest signer", _manifest_signer, fatal=True),
    Rule("key in manifest", _key_in_manifest),
    Rule("key opens commitment", _key_opens_commitment),
    Rule("custody", _custody),
    Rule("checkpoint signature", _checkpoint_signature, fatal=True),
    Rule("checkpoint origin", _checkpoint_origin, fatal=True),
    Rule("witness cosignatures", _witnesses),
    Rule("checkpoint age", _checkpoint_age),
    Rule("events", _events, fatal=True),
    Rule("history-complete", _history),
    Rule("status replayed from events", _status),
]


def verify(data: bytes, trusted: Trusted | Sequence[PublicIdentity], key_material: bytes | None = None, *,
           max_age_ms: int | None = None, now_ms: int | None = None,
           min_witnesses: int | None = None) -> list[Check]:
    """Check a bundle with trusted public keys only: one Check per rule (and per item of a rule), failures
    included; never raises for a bad bundle. ``trusted`` is a :class:`Trusted`, or identities taken in the
    roles they declare. ``key_material`` (a key's canonical form) also checks that the key opens the
    commitment; ``max_age_ms`` refuses a checkpoint older than that at ``now_ms`` (default: now);
    ``min_witnesses`` C2SP cosignatures by distinct trusted witnesses are required (default: every one given)."""
    keys = trusted if isinstance(trusted, Trusted) else Trusted.by_declared_roles(trusted)
    ctx = _Ctx(data, keys, key_material, max_age_ms, now_ms if now_ms is not None else clock.now_ms(),
               min_witnesses)
    checks: list[Check] = []
    for rule in RULES:
        try:
            details = list(rule.run(ctx))
        except (ProofError, KeyvaultError) as exc:
            checks.append(Check(rule.name, False, str(exc) or exc.__class__.__name__))
            if rule.fatal:
                break
            continue
        except Exception as exc:  # noqa: BLE001 - whatever a hostile bundle provokes, it is refused, never raised
            checks.append(Check(rule.name, False, f"malformed input ({exc.__class__.__name__})"))
            if rule.fatal:
                break
            continue
        checks.extend(d if isinstance(d, Check) else Check(rule.name, True, d) for d in details)
    return checks


def check_consistent(old_note: bytes, new_note: bytes, prove: Callable[[int, int], list[bytes]],
                     trusted: Sequence[PublicIdentity]) -> Check:
    """Whether a newer checkpoint extends an older one (both signed by a trusted engine key, for its own log)."""
    verifiers = [Verifier(engine_origin(p.public_key), p.public_key) for p in trusted]
    name = "log consistent with the earlier checkpoint"
    try:
        old = open_note(old_note, None, verifiers)
        new = open_note(new_note, old.origin, verifiers)
        if old.size > new.size:
            raise ProofError(f"the log now holds {new.size:,} events, fewer than the {old.size:,} signed earlier: "
                             "it was rolled back")
        merkle.verify_consistency(old.size, new.size, old.root, new.root, prove(old.size, new.size))
    except ProofError as exc:
        return Check(name, False, f"{exc}; the store was rolled back or forked since that checkpoint")
    return Check(name, True, f"{old.size:,} events then, {new.size:,} now: the log only grew")


def _iso(ms: int) -> str:
    try:
        return str(clock.iso(ms))
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms after the epoch"


def _span(ms: int) -> str:
    """A duration for people: 45 s, 12 min, 3 h, 2 days."""
    seconds = ms // 1000
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * 2 or (unit == "min" and seconds >= size):
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
