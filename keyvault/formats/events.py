"""The event leaf: the bytes of one event of the log, and how to read them (docs/provenance.md).

A leaf is ``kv1/event || u64 index || previous leaf hash || kind || u64 at ms
|| body``. A redeem's or void's body is the serial (u64) and then the order id
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
from .keyformat import serial_text

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

def parse_leaf(leaf: bytes) -> dict[str, Any]:
    """An event leaf as a dict: index, kind, at (ms), previous (hex), and the body's fields."""
    tag, index, previous, kind, at_ms = LEAF.unpack_from(leaf)
    if tag != b"kv1/event" or kind not in KIND_NAMES:
        raise StoreCorruptError(f"event {index} is not an event leaf: the event log is damaged; run `keyvault audit`")
    body = bytes(leaf[LEAF.size:])
    event: dict[str, Any] = {"index": index, "type": KIND_NAMES[kind], "at_ms": at_ms, "previous": previous.hex()}
    if kind in (_fast.KIND_REDEEM, _fast.KIND_VOID):
        serial = CHANGE_BODY.unpack_from(body)[0]
        text = body[CHANGE_BODY.size:].decode("utf-8", "replace")
        event.update(serial=serial_text(serial), **({"order_id": text} if kind == _fast.KIND_REDEEM else {"reason": text}))
    else:
        event.update(json.loads(body))
    return event


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
    serial = CHANGE_BODY.unpack_from(leaf, LEAF.size)[0]
    return serial, state, at_ms, bytes(leaf[LEAF.size + CHANGE_BODY.size:]).decode("utf-8", "replace")
