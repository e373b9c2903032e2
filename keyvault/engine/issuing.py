"""Issuing batches, importing upstream cards, and importing manifests.

Both sides go through :func:`import_manifest`: a supplier's own store takes
its records from the manifest it has just signed, exactly as a platform's
does, so the two can never disagree about what was issued.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .. import _fast
from ..clock import iso, now_ms
from ..errors import ConflictError, ImportFileError, KeyvaultError, StoreFullError, TrustError, UsageError
from ..fields import check_text
from ..formats import longform
from ..formats.identity import Identity, fingerprint
from ..formats.keyformat import (
    MAX_BATCH_SIZE,
    MAX_BATCHES,
    MAX_IMPORTED,
    batch_text,
    display_key,
    looks_native,
    make_batch,
    make_serial,
    normalize_imported,
    prefix_text,
    serial_text,
)
from ..formats.manifest import CHUNK, PAYLOAD_TYPE, SEED_BYTES, Manifest, write_manifest
from ..store import Txn
from ..store.records import (
    BATCHES_DIGEST,
    LEVEL_BATCH,
    LEVEL_SUPPLIER,
    MAX_USES,
    batches_digest,
    batches_digest_of,
    dump,
    u64,
)
from .catalog import BatchInfo, Catalog
from .state import State
from ..vocabulary import Role
from .trust import check_signer, pin

#: Progress callbacks get the stage ("generate", "store") and how many keys it just finished.
Progress = Callable[[str, int], None]

EXPORT_WARNING = ("LIVE CARD KEYS: this file is the only plaintext copy, made once for printing. "
                  "Whoever holds it holds the money. Deliver it encrypted, then destroy it.")
_CODE_COLUMNS = ("code", "key", "card_key", "redeem_code", "cdkey")
_CARD_COLUMNS = ("card_number", "card_no", "card", "number", "serial")
_PASSWORD_COLUMNS = ("password", "pin", "secret", "pass", "card_password")


def _nothing(stage: str, n: int) -> None:
    pass


def _check_batch_args(product: str, count: int, valid_from: int | None, valid_until: int | None) -> str:
    name = check_text(product, "product", MAX_IMPORTED)
    if not isinstance(count, int) or not 0 < count <= MAX_BATCH_SIZE:
        raise UsageError(f"a batch holds 1 to {MAX_BATCH_SIZE:,} keys")
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise UsageError("the validity window ends before it begins; check --valid-from and --valid-days")
    return name


def _check_supplier(cat: Catalog, sid: str, name: str, prefix: int) -> None:
    """Refuse a supplier whose prefix another supplier holds, or who is blacklisted."""
    owner = cat.prefix_owner(prefix)
    if owner is not None and owner != sid:
        theirs = cat.suppliers[owner]["name"]
        raise ConflictError(f"issuer prefix {prefix_text(prefix)} already belongs to supplier {theirs!r} "
                            f"(id {owner}) in this store; the supplier must issue under another prefix "
                            "(`keyvault supplier init --prefix`)")
    blocked = cat.suppliers_blocked.get(sid)
    if blocked is not None:
        raise ConflictError(f"supplier {name!r} (id {sid}) is blacklisted ({blocked.reason}); "
                            "its batches are refused until the entry is lifted")


def _register_supplier(state: State, txn: Txn, cat: Catalog, sid: str, name: str, prefix: int, public_key: bytes,
                       now: int) -> dict[str, Any]:
    """The supplier's record, registering it (and its prefix) on first sight."""
    _check_supplier(cat, sid, name, prefix)
    doc = cat.suppliers.get(sid)
    if doc is None:
        doc = {"name": name, "prefix": prefix_text(prefix), "public_key": public_key.hex(), "first_seen": now,
               "next_batch": 0}
        txn.put("prefixes", u64(prefix), sid.encode())
        state.log.append(txn, "supplier", now, {"supplier": sid, "name": name, "prefix": prefix_text(prefix),
                                                 "public_key": public_key.hex()}, [LEVEL_SUPPLIER + sid.encode()])
    return dict(doc)


def next_batch(state: State, identity: Identity) -> int:
    """This supplier's next batch number here; nothing is written until the batch is stored whole.

    Two issues racing in one store get the same number: the second one's import is then refused
    as a conflicting batch, and its files are removed.
    """
    cat = state.catalog()
    _check_supplier(cat, identity.id, identity.name, identity.prefix)
    number = int(cat.suppliers.get(identity.id, {}).get("next_batch", 0))
    while make_batch(identity.prefix, number) in cat.batches:
        number += 1
    if number >= MAX_BATCHES:
        raise ConflictError(f"issuer prefix {identity.prefix_text} has used all {MAX_BATCHES:,} batch numbers; "
                            "create a new supplier identity with another prefix")
    return number


def _check_outputs(*paths: Path) -> None:
    """Refuse before any work when an output exists or cannot be created."""
    for path in paths:
        if path.exists():
            raise UsageError(f"{path} already exists; choose another file (outputs are never overwritten)")
        if not path.parent.is_dir():
            raise UsageError(f"cannot create {path}: {path.parent} is not a directory")


def _store_own(state: State, manifest: Manifest, origin: str, progress: Progress | None,
               *outputs: Path) -> BatchInfo:
    """Import a batch this store just made; on refusal remove its files, so nothing is left half-done."""
    try:
        info, _ = import_manifest(state, manifest, origin, progress)
    except BaseException:
        for path in outputs:
            path.unlink(missing_ok=True)
        raise
    return info


def _header(state: State, identity: Identity, number: int, product: str, count: int, kind: str, salt: bytes,
            valid_from: int | None, valid_until: int | None, uses: int = 1) -> dict[str, Any]:
    previous = state.catalog().suppliers.get(identity.id, {}).get("last_manifest")
    return ({"uses": uses} if uses != 1 else {}) | {
        "previous": previous,
        "format": PAYLOAD_TYPE,
        "batch": batch_text(make_batch(identity.prefix, number)),
        "batch_number": number,
        "prefix": identity.prefix_text,
        "prefix_value": identity.prefix,
        "supplier": {"id": identity.id, "name": identity.name, "public_key": identity.public_key.hex()},
        "product": product,
        "count": count,
        "kind": kind,
        "salt": salt.hex(),
        "valid_from": valid_from,
        "valid_until": valid_until,
        "created_at": now_ms(),
    }


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class _Export:
    """The one-time printable export: CSV (serial,key,...) or JSON, created 0600, never overwritten."""

    def __init__(self, path: Path, batch: str, product: str, valid_until: int | None,
                 long_form: Callable[[int, str], str] | None = None) -> None:
        self.path = path
        self._long_form = long_form  # (serial, canonical key) -> the key's long form, when asked for
        self._as_json = path.suffix.lower() == ".json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UsageError(f"{path} already exists; choose another --keys-out (an export is never overwritten)") from None
        except OSError as exc:
            raise UsageError(f"cannot create {path}: {exc.strerror}") from None
        self._fh: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self._batch, self._product, self._until = batch, product, iso(valid_until) or ""
        self._first = True
        if self._as_json:
            self._fh.write('{"warning": %s, "batch": "%s", "product": %s, "valid_until": %s, "keys": [\n' % (
                _json(EXPORT_WARNING), batch, _json(product), _json(self._until or None)))
        else:
            head = io.StringIO()
            writer = csv.writer(head)
            writer.writerow(["serial", "key", "batch", "product", "valid_until"] + (["long_form"] if long_form else []))
            self._fh.write(head.getvalue())
            rest = io.StringIO()
            csv.writer(rest).writerow([self._batch, self._product, self._until])
            self._suffix = rest.getvalue()[:-2]  # the CSV-encoded batch, product, valid_until of every row

    def write(self, first_serial: int, keys: list[str]) -> None:
        signer = self._long_form
        if self._as_json:
            rows = ",\n".join('{"serial": "%s", "key": "%s"%s}' % (
                serial_text(first_serial + i), display_key(k),
                ', "long_form": "%s"' % signer(first_serial + i, k) if signer else "") for i, k in enumerate(keys))
            self._fh.write(("" if self._first else ",\n") + rows)
        elif signer is not None:
            self._fh.write("".join(f"{serial_text(first_serial + i)},{display_key(k)},{self._suffix},"
                                   f"{signer(first_serial + i, k)}\r\n" for i, k in enumerate(keys)))
        else:
            self._fh.write(_fast.export_rows(first_serial, keys, self._suffix))
        self._first = False

    def close(self) -> None:
        if self._as_json:
            self._fh.write("\n]}\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def discard(self) -> None:
        try:
            self._fh.close()  # flushes: on a full disk that fails too, and the file must still go
        except OSError:
            pass
        finally:
            self.path.unlink(missing_ok=True)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _commit_chunk(first: int, seed: bytes, keys: list[str]) -> tuple[bytes, bytes]:
    """A chunk's commitments and their Merkle root (issue_batch's second thread)."""
    commitments = _fast.commitments(first, seed, keys)
    return commitments, _fast.merkle_root(commitments)


def issue_batch(state: State, identity: Identity, product: str, count: int, keys_out: Path, manifest_out: Path,
                valid_from: int | None, valid_until: int | None, progress: Progress | None,
                uses: int = 1, long_form: bool = False) -> BatchInfo:
    """Generate a batch in chunks (bounded memory), export it once, sign its manifest, store its records.

    ``long_form`` adds each key's long form (``formats/longform.py``: an Ed25519 signature per key) to the export.
    """
    product = _check_batch_args(product, count, valid_from, valid_until)
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_USES:
        raise UsageError(f"--uses is how many orders may redeem each key: 1 to {MAX_USES:,}")
    report = progress or _nothing
    _check_outputs(keys_out, manifest_out)
    number = next_batch(state, identity)
    batch = make_batch(identity.prefix, number)
    first = make_serial(batch, 0)
    salt, seed = os.urandom(16), os.urandom(SEED_BYTES)
    if long_form:  # a product a long form cannot hold is refused before anything is written
        longform.make(longform.LongForm(first, valid_from, valid_until, product), bytes(16),
                      "0" * longform.KEY_SYMBOLS, identity.signing_key)

    def sign_long(serial: int, key: str) -> str:
        fields = longform.LongForm(serial, valid_from, valid_until, product)
        return longform.make(fields, _fast.key_salt(seed, serial), key, identity.signing_key)

    export = _Export(keys_out, batch_text(batch), product, valid_until, sign_long if long_form else None)

    def body() -> Iterator[tuple[bytes, bytes, bytes]]:
        # Pipelined: a second thread hashes chunk i's commitments and their Merkle root (the compiled
        # core lets go of the GIL meanwhile) while this one generates and exports chunk i + 1. At most
        # two chunks are in flight, they come out in order, the thread's errors are raised here, and
        # leaving (done, failed or closed) cancels what has not started and waits for what has.
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyvault-commit")
        try:
            done = 0
            pending = None  # the previous chunk: (verifiers, future of (commitments, root), keys in it)
            while done < count or pending is not None:
                current = None
                if done < count:
                    n = min(CHUNK, count - done)
                    keys, verifiers = _fast.issue_keys(first + done, n, salt, os.urandom(n * _fast.SECRET_BYTES))
                    current = (verifiers, pool.submit(_commit_chunk, first + done, seed, keys), n)
                    export.write(first + done, keys)
                    del keys, verifiers
                    done += n
                if pending is not None:
                    records, future, size = pending
                    pending = None
                    commitments, root = future.result()
                    yield records, commitments, root
                    del records, commitments
                    report("generate", size)
                pending = current
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    try:
        manifest = write_manifest(manifest_out, identity,
                                  _header(state, identity, number, product, count, "native", salt, valid_from,
                                          valid_until, uses), seed, body())
        export.close()
    except BaseException as exc:
        export.discard()
        if isinstance(exc, OSError) and not isinstance(exc, KeyvaultError) and exc.errno in _NO_ROOM:
            raise StoreFullError(f"no room on the disk to write {keys_out} and {manifest_out} "
                                 f"({exc.strerror}): nothing was kept; free some space (or write them "
                                 "elsewhere) and run the command again") from None
        raise
    return _store_own(state, manifest, "issued", progress, manifest_out, keys_out)


CSV_PIPE_LIMIT = 256 << 20  # bytes of cards read from a pipe or a device, at most


def read_cards_csv(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """Parse an upstream CSV: ("code", [(code, "")]) or ("pair", [(card number, password)])."""
    try:
        with open(path, "rb") as fh:  # a pipe or device (<(gpg -d ...)) is read up to CSV_PIPE_LIMIT, never without end
            info = os.fstat(fh.fileno())
            size = info.st_size if stat.S_ISREG(info.st_mode) else CSV_PIPE_LIMIT
            raw = fh.read(size + 1)
    except FileNotFoundError:
        raise ImportFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > size:
        raise ImportFileError(f"{path} is over {CSV_PIPE_LIMIT >> 20} MiB read from a pipe or device: import it in "
                              "parts, or from a file")
    if not raw.strip():
        raise ImportFileError(f"{path} is empty; it needs a header row (code, or card_number,password) and cards")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    if "\0" in text:
        raise ImportFileError(f"{path} contains NUL bytes: it is not a CSV file, or it is damaged")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except (StopIteration, csv.Error):
        raise ImportFileError(f"{path} has no header row") from None

    def column(names: tuple[str, ...]) -> int | None:
        return next((header.index(n) for n in names if n in header), None)

    code_col, card_col, pass_col = column(_CODE_COLUMNS), column(_CARD_COLUMNS), column(_PASSWORD_COLUMNS)
    cols: tuple[int, ...]
    if pass_col is not None and card_col is not None:
        kind, cols = "pair", (card_col, pass_col)
    elif code_col is not None:
        kind, cols = "code", (code_col,)
    else:
        raise ImportFileError(f"{path}: the header needs a 'code' column, or 'card_number' and 'password' columns "
                              f"(found: {', '.join(header) or 'nothing'})")
    rows: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    width = max(cols) + 1
    try:
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) < width:
                raise ImportFileError(f"{path} line {line} has {len(fields)} fields, the header needs {width}: "
                                      "the file may be truncated")
            values = [_imported_value(path, line, fields[c], what) for c, what in
                      zip(cols, ("card number", "password") if kind == "pair" else ("code",))]
            ident = values[0]
            if ident in seen:
                what = "card number" if kind == "pair" else "code"
                raise ImportFileError(f"{path} line {line} repeats the {what} of line {seen[ident]}; "
                                      "each card may appear once")
            seen[ident] = line
            rows.append((values[0], values[1] if kind == "pair" else ""))
    except csv.Error as exc:
        raise ImportFileError(f"{path} line {reader.line_num} is not valid CSV ({exc})") from None
    if not rows:
        raise ImportFileError(f"{path} has a header but no cards")
    if len(rows) > MAX_BATCH_SIZE:
        raise ImportFileError(f"{path} has {len(rows):,} cards; a batch holds at most {MAX_BATCH_SIZE:,}: split it")
    return kind, rows


def _imported_value(path: Path, line: int, value: str, what: str) -> str:
    """A folded upstream value, checked; errors name the line, never the value."""
    folded = normalize_imported(value)
    if not folded:
        raise ImportFileError(f"{path} line {line}: the {what} is empty")
    if len(folded) > MAX_IMPORTED or not folded.isascii() or not folded.isprintable():
        raise ImportFileError(f"{path} line {line}: the {what} must be at most {MAX_IMPORTED} printable ASCII "
                              "characters")
    if ":" in folded:
        raise ImportFileError(f"{path} line {line}: the {what} contains ':', which keyvault uses between a card "
                              "number and its password")
    if what != "password" and looks_native(folded):
        raise ImportFileError(f"{path} line {line}: the {what} looks like a native keyvault key; native keys are "
                              "issued with `keyvault batch issue`, not imported")
    return folded


def import_cards(state: State, identity: Identity, product: str, cards_csv: Path, manifest_out: Path,
                 valid_from: int | None, valid_until: int | None, progress: Progress | None) -> BatchInfo:
    """Turn an upstream CSV into a batch: locators and verifiers in a signed manifest, records stored."""
    kind, rows = read_cards_csv(cards_csv)
    product = _check_batch_args(product, len(rows), valid_from, valid_until)
    _check_outputs(manifest_out)
    number = next_batch(state, identity)
    first = make_serial(make_batch(identity.prefix, number), 0)
    salt, seed = os.urandom(16), os.urandom(SEED_BYTES)
    report = progress or _nothing

    def body() -> Iterator[tuple[bytes, bytes]]:
        for start in range(0, len(rows), CHUNK):
            part = bytearray()
            materials = []
            for ident, password in rows[start:start + CHUNK]:
                if kind == "pair":
                    locator = _fast.locator(b"card:" + ident.encode())
                    material = ident.encode() + b"\0" + password.encode()
                else:
                    locator, material = _fast.locator(b"code:" + ident.encode()), ident.encode()
                part += locator + _fast.verifier(salt, material)
                materials.append(material)
            yield bytes(part), _fast.commitments(first + start, seed, materials)
            report("generate", len(materials))

    # Public card numbers, length-prefixed, for support and trace.
    trailer = [b"".join(bytes([len(ident)]) + ident.encode() for ident, _ in rows)] if kind == "pair" else []
    manifest = write_manifest(manifest_out, identity,
                              _header(state, identity, number, product, len(rows), kind, salt, valid_from,
                                      valid_until), seed, body(), trailer)
    return _store_own(state, manifest, "upstream", progress, manifest_out)


def import_manifest(state: State, manifest: Manifest, origin: str, progress: Progress | None) -> tuple[BatchInfo, bool]:
    """Store a verified manifest's batch in one transaction: all of it, or (on any refusal) none of it.

    A manifest from elsewhere (origin "manifest") must be signed by a supplier this store pins; a
    store's own batches pin the identity that issued them.
    """
    return state.store.write(lambda txn: import_in(state, txn, manifest, origin, progress))


def import_in(state: State, txn: Txn, manifest: Manifest, origin: str,
              progress: Progress | None) -> tuple[BatchInfo, bool]:
    """import_manifest's work, inside a caller's write transaction (a lot's receipt shares it)."""
    header = manifest.header
    supplier = header["supplier"]
    sid, batch = supplier["id"], manifest.batch
    public_key = manifest.public_key
    report = progress or _nothing
    cat = state.current(txn)
    now = now_ms()
    if not cat.trusts(public_key) and origin != "manifest":  # a store's own issuing identity
        pin(state, txn, cat, supplier["name"], header["prefix_value"], public_key, [Role.SUPPLIER.value], now)
        cat = state.current(txn)
    # Only a key pinned as a supplier signs manifests, only under the prefix pinned with it, in its pinned name.
    pinned = check_signer(cat, public_key, Role.SUPPLIER, f"manifest {manifest.path} (batch {batch_text(batch)})")
    if pinned["prefix"] != prefix_text(header["prefix_value"]):
        raise TrustError(f"manifest {manifest.path} issues batch {batch_text(batch)} under prefix "
                         f"{prefix_text(header['prefix_value'])}, but its signer {pinned['name']!r} (fingerprint "
                         f"{fingerprint(public_key)}) owns prefix {pinned['prefix']} here: a supplier issues only "
                         "under its own prefix. Nothing was imported")
    if pinned["name"] != supplier["name"]:
        raise TrustError(f"manifest {manifest.path} names its supplier {supplier['name']!r}, but its key is pinned "
                         f"here as {pinned['name']!r}: ask the supplier which is right (a new name comes with "
                         "`keyvault identity rotate --name`). Nothing was imported")
    # The prefix check comes first: another supplier's batch "PPPP-000" is a prefix collision.
    doc = _register_supplier(state, txn, cat, sid, supplier["name"], header["prefix_value"], public_key, now)
    existing = cat.batches.get(batch)
    if existing is not None:
        if existing.manifest == manifest.id:
            return existing, False
        raise ConflictError(f"batch {batch_text(batch)} is already in this store from a different manifest "
                            f"(added {iso(existing.added_at)}); a batch id is never reused: ask the supplier "
                            "which manifest is genuine")
    info = BatchInfo(key=batch, supplier=sid, supplier_name=supplier["name"], product=header["product"],
                     kind=manifest.kind, origin=origin, count=manifest.count, valid_from=header["valid_from"],
                     valid_until=header["valid_until"], created_at=header["created_at"], added_at=now,
                     manifest=manifest.id, salt=manifest.salt, uses=manifest.fields.uses)
    serial = make_serial(batch, 0)
    size = 16 if manifest.kind == "native" else 32
    for chunk in manifest.records():
        n = len(chunk) // size
        if txn.put_sorted("cards", _fast.card_records(serial, chunk, size, state.pepper)) != n:
            raise ConflictError(f"serials of batch {batch_text(batch)} are already in this store without "
                                "their batch: the store is inconsistent; restore it from a backup")
        if manifest.kind != "native":
            for i in range(n):
                locator = _fast.store_locator(state.pepper, chunk[i * size:i * size + 16])
                if not txn.put("locators", locator, u64(serial + i),
                               overwrite=False):
                    raise ConflictError(f"card {serial_text(serial + i)} of batch {batch_text(batch)} is already "
                                        "in this store in another batch: the same card would be sold twice. "
                                        "Nothing was imported")
        serial += n
        report("store", n)
    if manifest.kind == "pair":
        first = make_serial(batch, 0)
        for i, number in enumerate(manifest.card_numbers()):
            txn.put("upstream", u64(first + i), number.encode())
    store_commitments(txn, state.pepper, manifest)
    record = dump(info.to_record())
    digest = txn.get("meta", BATCHES_DIGEST)  # absent in a store made before it: started from what is there
    digest = batches_digest_of(txn.items("batches")) if digest is None else digest
    txn.put("meta", BATCHES_DIGEST, batches_digest(digest, u64(batch), txn.get("batches", u64(batch)), record))
    txn.put("batches", u64(batch), record)
    if header["batch_number"] + 1 >= int(doc["next_batch"]):
        doc["last_manifest"] = manifest.id
    doc["next_batch"] = max(int(doc["next_batch"]), int(header["batch_number"]) + 1)
    txn.put("suppliers", sid.encode(), dump(doc))
    txn.bump_generation()
    state.log.append(txn, "import" if origin == "manifest" else "issue", now,
                      {"batch": batch_text(batch), "supplier": sid, "supplier_name": supplier["name"],
                       "product": header["product"], "count": manifest.count, "kind": manifest.kind,
                       "origin": origin, "manifest": manifest.id, "merkle_root": header["merkle_root"],
                       "previous": header["previous"]},
                      [LEVEL_BATCH + u64(batch), LEVEL_SUPPLIER + sid.encode()])
    return info, True


COMMIT_VALUES = 127  # commitments per stored value: 4,064 bytes, one overflow page of LMDB's 4 KiB


def store_commitments(txn: Txn, pepper: bytes, manifest: Manifest) -> None:
    """Keep what a trace bundle needs: the signed header, every commitment, the slice roots, the seed (wrapped)."""
    batch = u64(manifest.batch)
    txn.put("manifests", bytes.fromhex(manifest.id), manifest.signed)
    step = COMMIT_VALUES * 32
    carry = b""  # commitments left over from the previous part: parts are not multiples of 127
    n = 0
    for part in manifest.commitments():
        data = memoryview(carry + part)
        whole = len(data) // step * step
        pairs = [(batch + b"C" + (n + i).to_bytes(4, "big"), bytes(data[at:at + step]))
                 for i, at in enumerate(range(0, whole, step))]
        n += len(pairs)
        txn.put_sorted("commitments", pairs)
        carry = bytes(data[whole:])
    if carry:
        txn.put_sorted("commitments", [(batch + b"C" + n.to_bytes(4, "big"), carry)])
    txn.put_sorted("commitments", [(batch + b"R" + i.to_bytes(4, "big"), root)
                                   for i, root in enumerate(manifest.chunk_roots)])
    txn.put("commitments", batch + b"S", _wrap_seed(pepper, manifest.batch, manifest.seed()))


def _wrap_seed(pepper: bytes, batch: int, seed: bytes) -> bytes:
    """The seed XOR a pepper-keyed pad: a stolen store file alone cannot derive any key's salt."""
    pad = hashlib.blake2b(u64(batch), key=pepper, digest_size=SEED_BYTES, person=b"kv1/seed-wrap").digest()
    return bytes(a ^ b for a, b in zip(seed, pad))


unwrap_seed = _wrap_seed  # XOR is its own inverse
