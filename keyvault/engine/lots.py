"""A store's side of custody: sending lots, receiving them, and the audit that reports double sales.

The ``custody`` database holds (keys start with one letter):

| key                              | value                                        |
|----------------------------------|----------------------------------------------|
| T + transfer id (32)             | the signed transfer file                     |
| S + spent record id (32) + u64 first | transfer id (32) + u64 end: a spend of [first, end) |
| H + u64 batch + transfer id      | the transfers known for a batch: ``R`` for a lot received here, else empty |
| E + transfer id (32)             | JSON evidence: the transfer refused as a double sale, and the one it collides with |

A hop that spends what another known transfer already spent is a double
sale, whether this store is asked to send it or receives it: it is refused,
and both signed records are kept as evidence (``E``, with ``"side"`` ``send``
or ``receive``), reported by ``keyvault audit``. Receiving stores every new
hop of the incoming chain and marks the last one, addressed to this store's
holder, as received (``R``): ``keyvault stats`` counts only those keys.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from ..clock import iso, now_ms
from ..errors import (
    CustodyError,
    KeyvaultError,
    NotFoundError,
    StoreCorruptError,
    StoreFullError,
    UsageError,
)
from ..files import write_new
from ..formats.custody import (
    Ranges,
    Transfer,
    check_chain,
    contains,
    make_transfer,
    open_lot,
    overlaps,
    read_transfer,
    seal_lot,
)
from ..formats.identity import Identity, PublicIdentity, fingerprint
from ..formats.keyformat import batch_text, parse_batch, serial_index
from ..formats.manifest import ManifestHeader, open_signed_header, read_manifest
from ..store import Txn
from ..store.records import LEVEL_BATCH, dump, from_u64, load, u64
from .catalog import BatchInfo
from .issuing import import_in
from .state import State


def _record(txn: Txn, tid: bytes) -> Transfer:
    data = txn.get("custody", b"T" + tid)
    if data is None:
        raise NotFoundError(f"transfer {tid.hex()} is not in this store")
    return read_transfer(bytes(data), f"stored transfer {tid.hex()[:16]}")


def chain_of(txn: Txn, hop: Transfer, manifest_id: str) -> list[Transfer]:
    """The stored chain that ends with ``hop``, oldest first."""
    chain = [hop]
    while chain[0].previous != manifest_id:
        chain.insert(0, _record(txn, bytes.fromhex(chain[0].previous)))
    return chain


def batch_transfers(txn: Txn, batch: int) -> list[Transfer]:
    """Every transfer this store knows for a batch, oldest first."""
    prefix = b"H" + u64(batch)
    hops = [_record(txn, key[len(prefix):]) for key, _ in txn.items("custody", prefix)]
    return sorted(hops, key=lambda t: (t.doc["at"], t.id))


def _spent_by(txn: Txn, previous: str, ranges: Ranges, tid: str) -> Transfer | None:
    """A known transfer other than ``tid`` that spent an overlapping part of ``previous``."""
    prefix = b"S" + bytes.fromhex(previous)
    for key, value in txn.items("custody", prefix):
        first, end = from_u64(key[-8:]), from_u64(value[32:])
        if value[:32].hex() != tid and overlaps(((first, end),), ranges):
            return _record(txn, bytes(value[:32]))
    return None


#: The value of a batch index entry (``H``) for a lot received here.
RECEIVED = b"R"


def _evidence(txn: Txn, hop: Transfer, earlier: Transfer, now: int, side: str) -> None:
    """Keep a refused double sale: the refused signed transfer and what it collides with."""
    tid = bytes.fromhex(hop.id)
    txn.put("custody", b"T" + tid, hop.data)
    txn.put("custody", b"E" + tid, dump({"conflicts_with": earlier.id, "at": now, "batch": hop.doc["batch"],
                                         "previous": hop.previous, "side": side}))


def _keep(state: State, txn: Txn, hop: Transfer, batch: int, now: int) -> None:
    """Store a new hop, its spends, and its event."""
    tid = bytes.fromhex(hop.id)
    txn.put("custody", b"T" + tid, hop.data)
    txn.put("custody", b"H" + u64(batch) + tid, b"")
    for first, end in hop.ranges:
        txn.put("custody", b"S" + bytes.fromhex(hop.previous) + u64(first), tid + u64(end))
    state.log.append(txn, "transfer", now, {"transfer": hop.id, "batch": hop.doc["batch"], "previous": hop.previous,
                                             "from": hop.doc["from"], "to": hop.doc["to"],
                                             "ranges": [list(r) for r in hop.ranges]},
                      [LEVEL_BATCH + u64(batch)])


PIPE_LIMIT = 256 << 20  # bytes read from a lot that is a pipe or a device, at most


def send(state: State, sender: Identity, batch_ref: str, ranges: Ranges | None, recipient: PublicIdentity,
         manifest_path: Path, out: Path) -> tuple[Transfer, BatchInfo]:
    """Sign a transfer of a lot to ``recipient`` and write it sealed to ``out``."""
    if out.exists():
        raise UsageError(f"{out} already exists; choose another --out (a lot is never overwritten)")
    manifest = read_manifest(manifest_path)
    batch = parse_batch(batch_ref)
    if manifest.batch != batch:
        raise UsageError(f"{manifest_path} is the manifest of batch {batch_text(manifest.batch)}, not {batch_text(batch)}")

    def work(txn: Txn) -> tuple[Transfer, list[Transfer], BatchInfo, Transfer | None]:
        cat = state.current(txn)
        info = cat.batches.get(batch)
        if info is None or info.manifest != manifest.id:
            raise NotFoundError(f"batch {batch_text(batch)} is not in this store from that manifest; only a lot "
                                "you hold can be sent")
        wanted = ranges or ((0, info.count),)
        previous, chain = _holding(txn, sender, manifest.public_key, manifest.id, batch, wanted)
        now = now_ms()
        hop = make_transfer(sender, recipient.name, recipient.public_key, info.id, manifest.id, info.count, wanted,
                            previous, now)
        earlier = _spent_by(txn, previous, hop.ranges, hop.id)
        if earlier is not None:  # kept as evidence, as a received double sale is; nothing is sent
            _evidence(txn, hop, earlier, now, "send")
            return hop, [], info, earlier
        _keep(state, txn, hop, batch, now)
        # The sealed lot is on disk before the transfer commits: a full disk refuses the transfer, not the file.
        try:
            write_new(part, seal_lot(sender, recipient.public_key, chain + [hop], manifest_bytes), mode=0o600)
        except StoreFullError:
            raise StoreFullError(f"no room on the disk to write {out.name}; nothing was sent: free some space and "
                                 "try again") from None
        return hop, chain + [hop], info, None

    manifest_bytes = manifest.path.read_bytes()
    part = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        hop, chain, info, earlier = state.store.write(work)
        if earlier is not None:
            raise CustodyError(f"double sale refused: keys of this lot were already sent to "
                               f"{earlier.doc['to']['name']!r} on {iso(earlier.doc['at'])} (transfer "
                               f"{earlier.id[:16]}); nothing was sent. The refused transfer is kept as evidence: "
                               "`keyvault audit` shows it")
        try:
            os.link(part, out)  # never overwrites; needs no room for the data
        except OSError as exc:
            part.rename(part.with_name(out.name + ".sent"))
            raise UsageError(f"the lot was sent (recorded here) but {out} could not be made ({exc.strerror}): "
                             f"the sealed lot is {out.name}.sent beside it; give that file to the recipient") from None
    finally:
        part.unlink(missing_ok=True)
    return hop, info


def _holding(txn: Txn, holder: Identity, supplier: bytes, manifest_id: str, batch: int,
             wanted: Ranges) -> tuple[str, list[Transfer]]:
    """The record through which ``holder`` holds ``wanted`` (its id) and the chain that led to it."""
    if holder.public_key == supplier:
        return manifest_id, []
    for hop in reversed(batch_transfers(txn, batch)):
        if hop.recipient == holder.public_key and all(
                any(a <= x and y <= b for a, b in hop.ranges) for x, y in wanted):
            return hop.id, chain_of(txn, hop, manifest_id)
    raise CustodyError(f"{holder.name!r} does not hold those keys of batch {batch_text(batch)} here: no transfer "
                       "to them covers the ranges (receive the lot with `keyvault lot receive` first)")


def receive(state: State, lot_path: Path, recipient: Identity,
            manifest_out: Path | None = None) -> tuple[BatchInfo, list[Transfer]]:
    """Open a lot sealed to ``recipient``, check its chain, record custody and import its batch, in one
    transaction. A double sale is refused; both records are kept as evidence."""
    try:
        with open(lot_path, "rb") as fh:  # a pipe or device is read up to PIPE_LIMIT, never without end
            size = os.fstat(fh.fileno()).st_size if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else PIPE_LIMIT
            data = fh.read(size + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {lot_path}: {exc.strerror}") from None
    if len(data) > size:
        raise UsageError(f"{lot_path} is not a file of known size, and over {PIPE_LIMIT >> 20} MiB: give the lot "
                         "file itself")
    sender, chain, manifest_bytes = open_lot(data, recipient, f"lot {lot_path}")
    if manifest_out is not None and manifest_out.exists():
        raise UsageError(f"{manifest_out} already exists; choose another --manifest-out")
    fd, name = tempfile.mkstemp(dir=state.path, prefix=".lot-", suffix=".kvm")
    spool = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(manifest_bytes)
        manifest = read_manifest(spool)
        check_chain(manifest.public_key, manifest.id, manifest.count, chain, manifest.fields.batch)

        def work(txn: Txn) -> tuple[BatchInfo | None, Transfer | None, Transfer | None]:
            now = now_ms()
            for hop in chain:
                tid = bytes.fromhex(hop.id)
                evidence = txn.get("custody", b"E" + tid)
                if evidence is not None:  # refused before: refused again
                    return None, hop, _record(txn, bytes.fromhex(load(evidence)["conflicts_with"]))
                if txn.get("custody", b"T" + tid) is not None:
                    continue
                earlier = _spent_by(txn, hop.previous, hop.ranges, hop.id)
                if earlier is not None:
                    _evidence(txn, hop, earlier, now, "receive")
                    return None, hop, earlier
                _keep(state, txn, hop, manifest.batch, now)
            # The last hop is the one sealed to this store's holder: its keys are the ones received here.
            txn.put("custody", b"H" + u64(manifest.batch) + bytes.fromhex(chain[-1].id), RECEIVED)
            info, _ = import_in(state, txn, manifest, "manifest", None)
            return info, None, None

        info, refused, earlier = state.store.write(work)
        if refused is not None and earlier is not None:
            raise CustodyError(
                f"double sale: {refused.doc['from']['name']!r} sold keys of batch {refused.doc['batch']} that "
                f"{earlier.doc['from']['name']!r} had already transferred to {earlier.doc['to']['name']!r} "
                f"(transfer {earlier.id[:16]}). The lot was refused and both signed records are kept: "
                "`keyvault audit` shows them")
        assert info is not None
        if manifest_out is not None:
            try:
                write_new(manifest_out, manifest_bytes, mode=0o600)
            except FileExistsError:
                raise UsageError(f"the lot was received, but {manifest_out} already exists: its manifest is in the "
                                 "lot file, so nothing is lost") from None
            except StoreFullError as exc:
                raise StoreFullError(f"the lot was received, but {exc}: its manifest is in the lot file, "
                                     "so nothing is lost") from None
        return info, chain
    finally:
        spool.unlink(missing_ok=True)


def audit(state: State) -> dict[str, Any]:
    """Double sales, withheld or forked manifests, and the event log's own check, in one report."""
    with state.store.read() as txn:
        cat = state.current(txn)
        double_sales = []
        for key, value in txn.items("custody", b"E"):
            doc = load(value)
            refused = _record(txn, key[1:])
            earlier = _record(txn, bytes.fromhex(doc["conflicts_with"]))
            double_sales.append({"batch": doc["batch"], "spent_record": doc["previous"], "detected_at": iso(doc["at"]),
                                 "refused_at": doc.get("side", "receive"),
                                 "first": _hop_dict(earlier), "second": _hop_dict(refused)})
        gaps, forks = [], []
        by_supplier: dict[str, dict[str, dict[str, Any]]] = {}
        for info in cat.batches.values():
            signed = txn.get("manifests", bytes.fromhex(info.manifest))
            previous = _signed_header(bytes(signed), info.id).previous if signed is not None else None
            by_supplier.setdefault(info.supplier, {})[info.manifest] = {"batch": info.id, "previous": previous}
        for sid, manifests in sorted(by_supplier.items()):
            seen: dict[str, str] = {}
            for mid, doc in sorted(manifests.items(), key=lambda item: item[1]["batch"]):
                prev = doc["previous"]
                if prev is not None and prev not in manifests:
                    gaps.append({"supplier": sid, "batch": doc["batch"], "missing_previous": prev})
                if prev is not None and prev in seen:
                    forks.append({"supplier": sid, "previous": prev, "batches": [seen[prev], doc["batch"]]})
                if prev is not None:
                    seen[prev] = doc["batch"]
        try:
            events = state.log.verify(txn)
            log: dict[str, Any] = {"ok": True, "events": events, "checkpoints": len(state.log.checkpoints(txn))}
        except StoreCorruptError as exc:  # reported, not raised: an audit tells everything it finds
            log = {"ok": False, "error": str(exc)}
    return {"double_sales": double_sales, "manifest_gaps": gaps, "manifest_forks": forks, "event_log": log,
            "clean": not double_sales and not gaps and not forks and log["ok"]}


def _hop_dict(hop: Transfer) -> dict[str, Any]:
    return {"transfer": hop.id, "from": hop.doc["from"]["name"], "from_fingerprint": fingerprint(hop.sender),
            "to": hop.doc["to"]["name"], "to_fingerprint": fingerprint(hop.recipient), "at": iso(hop.doc["at"]),
            "ranges": [f"{a}-{b - 1}" for a, b in hop.ranges], "record": hop.data.hex()}


def _signed_header(signed: bytes, batch: str) -> ManifestHeader:
    """The header of a stored signed manifest, its signature checked first."""
    try:
        return open_signed_header(signed, where=f"the stored manifest of batch {batch}").header
    except KeyvaultError as exc:
        raise StoreCorruptError(f"{exc}. The store was altered: run `keyvault check`, and restore it from a "
                                "backup") from None


def custody_of(txn: Txn, batch: int, serial: int) -> list[Transfer]:
    """The longest chain of custody this store knows that moved this key, oldest first."""
    index = serial_index(serial)
    best: list[Transfer] = []
    for hop in batch_transfers(txn, batch):
        if contains(hop.ranges, index):
            chain = chain_of(txn, hop, hop.manifest)
            if len(chain) > len(best):
                best = chain
    return best
