"""Finding keys in the store and judging them: the batch check's callers, and the slow paths beside it.

Native keys are judged in one pass by the compiled batch check
(``_fast.check_keys``); imported codes, card:password pairs and serials take
the slow path here, which ends in the same rule book (``_fast.judge``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .. import _fast
from ..errors import MalformedKeyError, UsageError
from ..formats.longform import inner_key, looks_long
from ..formats.keyformat import (
    MAX_IMPORTED,
    batch_key,
    importable,
    looks_like_serial,
    looks_native,
    malformed,
    mistyped_native,
    normalize_imported,
    parse_serial,
    serial_text,
)
from ..results import Result, Status
from ..store import ACTIVE, REDEEMED, Txn
from ..store.records import SEAL_SIZE, from_u64, u64, unpack_card
from .catalog import BatchInfo, Catalog
from .ledger import Change

_DUMMY_SALT = bytes(16)  # hashed for unknown batches, so unknown and wrong keys cost the same
_NO_SUCH_KEY = "no such key in this store"
_DAMAGED = ("this key's record is damaged: refused; restore the store from a backup "
            "(`keyvault check` finds every damaged record)")


class CardLocks(Protocol):
    """Wrong passwords counted per imported card (``guard.py``): a locked card's answer, or None to go on."""

    def enter(self, card: bytes) -> Result | None: ...  # noqa: D102

    def leave(self, card: bytes, right: bool) -> None: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class Found:
    """A key located in the store and matched against its tag."""

    serial: int
    batch: BatchInfo
    state: int
    tag: bytes
    outcome: bytes | None  # its outcome record, seal checked and removed (None: active, missing or damaged)


def locate(txn: Txn, cat: Catalog, pepper: bytes, key: str, locks: CardLocks | None = None) -> Found | Result:
    """Find a typed key's record and check its tag; a Result when it cannot be found (or its card is locked)."""
    if not isinstance(key, str):
        raise UsageError("a key must be a string")
    if looks_long(key):  # a long form redeems as its inner key (signature not checked: formats/longform.py)
        try:
            key = inner_key(key)
        except MalformedKeyError as exc:
            return Result(Status.MALFORMED, message=str(exc))
    outcome, serial, canonical, position = _fast.parse_key(key)
    if outcome == _fast.OK:
        batch = cat.batches.get(batch_key(serial))
        material = canonical
    else:
        # Native-shaped input is a mistyped native key, never an imported code.
        imported = None if looks_native(key) or not importable(key) else _imported(txn, cat, pepper, key)
        if imported is None or (imported[0] < 0 and mistyped_native(key)):  # no such code: a mistyped key
            group, message = malformed(outcome, position, key)
            return Result(Status.MALFORMED, group=group, message=message)
        serial, material = imported  # serial -1: not found, but hashed all the same
        batch = cat.batches.get(batch_key(serial)) if serial >= 0 else None
        if locks is not None and batch is not None and ":" in key:  # a card's password: attempts are limited
            card = material.partition(b"\0")[0]
            refused = locks.enter(card)
            if refused is not None:
                return refused
            found = locate(txn, cat, pepper, key)
            locks.leave(card, isinstance(found, Found))
            return found
    expected = _fast.tag(pepper, _fast.verifier(batch.salt if batch else _DUMMY_SALT, material))
    record = txn.get("cards", u64(serial)) if batch is not None else None
    if record is None or batch is None:
        return Result(Status.UNKNOWN, serial=serial_text(serial) if serial >= 0 else None,
                      batch=batch.id if batch else None, message=_NO_SUCH_KEY)
    if not _fast.tags_equal(bytes(record[1:17]), expected):
        return Result(Status.UNKNOWN, serial=serial_text(serial), batch=batch.id, message=_NO_SUCH_KEY)
    return _found(txn, pepper, serial, batch, record)


def _found(txn: Txn, pepper: bytes, serial: int, batch: BatchInfo, record: bytes) -> Found | Result:
    """A located card whose seal vouches for it (with its outcome record when it is not active), or damaged."""
    card = unpack_card(pepper, serial, record)
    if card is None:
        return Result(Status.DAMAGED, serial=serial_text(serial), batch=batch.id, message=_DAMAGED)
    state, tag = card
    outcome = None
    if state != ACTIVE:
        outcome = _fast.open_outcome(pepper, serial, txn.get("outcomes", u64(serial)))
    return Found(serial, batch, state, tag, outcome)


def _imported(txn: Txn, cat: Catalog, pepper: bytes, key: str) -> tuple[int, bytes] | None:
    """(serial or -1, verifier material) for an imported code or card:password, if it could be one."""
    if not cat.has_imported or len(key) > 2 * MAX_IMPORTED + 1:
        return None
    if ":" in key:
        card, _, password = key.partition(":")
        card, password = normalize_imported(card), normalize_imported(password)
        if not card or not password or not (card + password).isascii():  # imported cards are ASCII
            return None
        locator, material = _fast.locator(b"card:" + card.encode()), card.encode() + b"\0" + password.encode()
    else:
        code = normalize_imported(key)
        if not code or not code.isascii():
            return None
        locator, material = _fast.locator(b"code:" + code.encode()), code.encode()
    found = txn.get("locators", _fast.store_locator(pepper, locator))
    return (from_u64(found) if found else -1), material


def find(txn: Txn, cat: Catalog, pepper: bytes, key_or_serial: str) -> Found | Result:
    """Locate by key (tag checked) or by public serial (for support staff, who hold no keys)."""
    if not isinstance(key_or_serial, str):
        raise UsageError("a key or serial must be a string")
    if looks_like_serial(key_or_serial):
        serial = parse_serial(key_or_serial)
        batch = cat.batches.get(batch_key(serial))
        record = txn.get("cards", u64(serial)) if batch else None
        if record is None or batch is None:
            return Result(Status.UNKNOWN, serial=serial_text(serial), message="no such serial in this store")
        return _found(txn, pepper, serial, batch, record)
    return locate(txn, cat, pepper, key_or_serial)


def judge(txn: Txn, cat: Catalog, found: Found, overlay: dict[int, Change], now: int) -> Result:
    """The status of a located key (the same rules as the batch check: ``_fast.judge``)."""
    change = overlay.get(found.serial)
    result: Result = _fast.judge(found.serial, found.state, cat.rows[found.batch.key], cat.key_rows, change,
                                 found.outcome, now)
    return result


def check(txn: Txn, cat: Catalog, pepper: bytes, overlay: dict[int, Change], keys: list[str],
          now: int, locks: CardLocks | None = None) -> list[Result]:
    """Judge keys in one pass: native keys in the compiled batch check, the rest one by one."""
    try:
        results: list[Result] = _fast.check_keys(keys, pepper, cat.rows, cat.key_rows, overlay,
                                                 txn.cursor("cards"), txn.cursor("outcomes"), now)
    except TypeError:
        raise UsageError("a key must be a string") from None
    for i, result in enumerate(results):
        if result is None:
            found = locate(txn, cat, pepper, keys[i], locks)
            results[i] = found if isinstance(found, Result) else judge(txn, cat, found, overlay, now)
    unknown = [r.serial for r in results if r.status is Status.UNKNOWN and r.serial is not None]
    if unknown:
        _as_costly_as_a_refusal(txn, unknown, now)
    return results


_PAD_ROW = (bytes(16), None, None, None, "0000-000", "0" * 16, "-", "-")
_PAD_OUTCOME = bytes((REDEEMED,)) + bytes(16) + b"padding"
_PAD_SEALED = _PAD_OUTCOME + bytes(SEAL_SIZE)


def _as_costly_as_a_refusal(txn: Txn, serials: list[str], now: int) -> None:
    """Spend on each ``unknown`` answer what refusing a spent key costs (read its outcome record, judge it),
    so the time of an answer tells no more than its status (docs/reliability.md, Timing)."""
    numbers = sorted(_fast.parse_serial(s) for s in serials)
    txn.get_many("outcomes", [u64(n) for n in numbers])
    for number in numbers:
        _fast.open_outcome(_PAD_ROW[0], number, _PAD_SEALED)
        _fast.judge(number, REDEEMED, _PAD_ROW, {}, None, _PAD_OUTCOME, now)
