"""The event leaf: the bytes of one event of the log, and how to read them (docs/provenance.md).

A leaf is ``kv1/event || u64 index || previous leaf hash || kind || u64 at ms
|| body`` (version 1), or ``kv2/event`` and the same header, then the links
section (the previous event about each of its subjects: docs/provenance.md,
"Complete histories"), then the body (version 2, written since). A redeem's or void's body is the serial (u64) and then the order id
or reason in UTF-8; every other kind's body is compact JSON. The compiled core
writes leaves (``_fast.event_leaf``, ``_fast.ledger_leaves``); this module
reads them.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .. import _fast
from ..errors import StoreCorruptError
from .keyformat import batch_text, serial_text

# Checkout events (docs/format.md): JSON bodies naming the serial and the order, like every kind but
# redeem and void; a log without them reads as before.
KIND_HOLD = 20  # {serial, order_id, expires_at (ms)}: an order holds a key
KIND_CONFIRM = 21  # {serial, order_id}: the hold became a redeem or a use (the redeem event follows it)
KIND_RELEASE = 22  # {serial, order_id}: the order gave its hold up
KIND_EXPIRE = 23  # {serial, order_id, expires_at}: a hold found ended (written by the next change that sees it)
KIND_USE = 24  # {serial, order_id, uses_left}: one use of a count-limited key

KIND_NAMES = {_fast.KIND_SUPPLIER: "supplier", _fast.KIND_ISSUE: "issue", _fast.KIND_IMPORT: "import",
              _fast.KIND_REDEEM: "redeem", _fast.KIND_VOID: "void", _fast.KIND_BLACKLIST: "blacklist",
              _fast.KIND_LIFT: "lift", _fast.KIND_TRANSFER: "transfer", _fast.KIND_TRUST: "trust",
              KIND_HOLD: "hold", KIND_CONFIRM: "confirm", KIND_RELEASE: "release", KIND_EXPIRE: "expire",
              KIND_USE: "use"}
KINDS = {name: kind for kind, name in KIND_NAMES.items()}

LEAF = struct.Struct(">9sQ32sBQ")  # tag, index, previous leaf hash, kind, at ms: then the body
CHANGE_BODY = struct.Struct(">Q")  # a redeem or void body: serial, then the order id or reason in UTF-8

NO_LINK = 0xFFFF_FFFF_FFFF_FFFF  # a link naming no earlier event: the first event about its subject
TAGS = (b"kv1/event", b"kv2/event")


def encode_links(links: list[tuple[bytes, int | None]]) -> bytes:
    """The links section of a version 2 leaf: u8 count, then per subject u8 length || subject || u64 previous."""
    if len(links) > 255 or any(not 0 < len(subject) < 256 for subject, _ in links):
        raise ValueError("an event has at most 255 subjects of 1 to 255 bytes each")
    return bytes((len(links),)) + b"".join(bytes((len(subject),)) + subject + CHANGE_BODY.pack(
        NO_LINK if previous is None else previous) for subject, previous in links)


def split_leaf(leaf: bytes) -> tuple[int, list[tuple[bytes, int | None]] | None, int]:
    """(version, links or None for a version 1 leaf, where the body starts); StoreCorruptError for a damaged one."""
    if len(leaf) < LEAF.size or bytes(leaf[:9]) not in TAGS:
        raise StoreCorruptError("an event is not an event leaf: the event log is damaged; run `keyvault audit`")
    if leaf[:9] == b"kv1/event":
        return 1, None, LEAF.size
    at = LEAF.size
    links: list[tuple[bytes, int | None]] = []
    try:
        count = leaf[at]
        at += 1
        for _ in range(count):
            length = leaf[at]
            subject = bytes(leaf[at + 1:at + 1 + length])
            previous = CHANGE_BODY.unpack_from(leaf, at + 1 + length)[0]
            if not length or len(subject) != length:
                raise IndexError
            links.append((subject, None if previous == NO_LINK else previous))
            at += 1 + length + 8
    except (IndexError, struct.error):
        raise StoreCorruptError("an event's links section is cut short: the event log is damaged; "
                                "run `keyvault audit`") from None
    return 2, links, at


def body_at(leaf: bytes) -> int:
    """Where the body of an event leaf (either version) starts."""
    return split_leaf(leaf)[2]


def parse_leaf(leaf: bytes) -> dict[str, Any]:
    """An event leaf as a dict: index, kind, at (ms), previous (hex), links (version 2), and the body's fields."""
    tag, index, previous, kind, at_ms = LEAF.unpack_from(leaf)
    if tag not in TAGS or kind not in KIND_NAMES:
        raise StoreCorruptError(f"event {index} is not an event leaf: the event log is damaged; run `keyvault audit`")
    _, links, at = split_leaf(leaf)
    body = bytes(leaf[at:])
    event: dict[str, Any] = {"index": index, "type": KIND_NAMES[kind], "at_ms": at_ms, "previous": previous.hex()}
    if links is not None:
        event["links"] = [{"subject": subject_name(subject), "previous": link} for subject, link in links]
    if kind in (_fast.KIND_REDEEM, _fast.KIND_VOID):
        serial = CHANGE_BODY.unpack_from(body)[0]
        text = body[CHANGE_BODY.size:].decode("utf-8", "replace")
        event.update(serial=serial_text(serial), **({"order_id": text} if kind == _fast.KIND_REDEEM else {"reason": text}))
    else:
        event.update(json.loads(body))
    return event


def subject_name(subject: bytes) -> str:
    """A subject in words: ``key <serial>``, ``batch <batch>``, ``supplier <id>`` (else its hex)."""
    level, rest = subject[:1], subject[1:]
    if level == b"K" and len(rest) == 8:
        return "key " + serial_text(int.from_bytes(rest, "big"))
    if level == b"B" and len(rest) == 8:
        return "batch " + batch_text(int.from_bytes(rest, "big"))
    if level == b"S" and rest.isascii() and rest.decode().isprintable():
        return "supplier " + rest.decode()
    return "subject " + subject.hex()


def change_of(leaf: bytes) -> tuple[int, int, int, str] | None:
    """(serial, state, at ms, text) of a redeem or void leaf; None for any other event."""
    kind = leaf[LEAF.size - 9]
    if kind == _fast.KIND_REDEEM:
        state = 1
    elif kind == _fast.KIND_VOID:
        state = 2
    else:
        return None
    at_ms = int.from_bytes(leaf[LEAF.size - 8:LEAF.size], "big")
    at = LEAF.size if leaf[:9] == b"kv1/event" else body_at(leaf)
    if len(leaf) < at + CHANGE_BODY.size:
        raise StoreCorruptError("a redeem or void event of the log is cut short: the event log is damaged; run "
                                "`keyvault check` and restore the store from a backup")
    serial = CHANGE_BODY.unpack_from(leaf, at)[0]
    return serial, state, at_ms, bytes(leaf[at + CHANGE_BODY.size:]).decode("utf-8", "replace")
