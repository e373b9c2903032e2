"""Redeem receipts made from the store: the redeem's own event, signed by the engine key, and its upgrade.

A receipt is made after the redeem, from what the log holds (the event's serial, order id and time),
never inside the redeem's transaction: a redeem that asks for no receipt pays nothing for them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..errors import NotFoundError, ProofError, StoreCorruptError
from ..formats import receipt as fmt
from ..formats.events import change_of
from ..formats.keyformat import looks_like_serial, serial_text
from ..results import Result
from ..store import REDEEMED, Txn
from ..store.records import OUTCOME
from .answers import ReceiptProof
from .lookup import find
from .state import State


def _redeem_event(state: State, txn: Txn, key_or_serial: str) -> tuple[int, str]:
    """(event index, supplier id) of the redeem of a key or serial; NotFoundError when it is not redeemed."""
    cat = state.current(txn)
    found = find(txn, cat, state.pepper, key_or_serial)
    what = "serial" if looks_like_serial(str(key_or_serial)) else "key"
    if isinstance(found, Result):
        raise NotFoundError(f"that {what} is not in this store ({found.status.value}); no receipt can be made")
    change = state.ledger.sync(txn, txn.head()).get(found.serial)
    if change is not None:
        redeemed, index = change[0] == REDEEMED, change[3]
    else:
        redeemed, index = found.state == REDEEMED, -1
        if redeemed:
            if found.outcome is None or len(found.outcome) < OUTCOME.size:
                raise StoreCorruptError(f"the outcome record of {serial_text(found.serial)} is damaged, so its "
                                        "receipt cannot be made; run `keyvault check` and restore the store")
            index = OUTCOME.unpack_from(found.outcome)[2]
    if not redeemed:
        raise NotFoundError(f"that {what} was not redeemed here, so there is no receipt for it "
                            "(`keyvault trace` shows what became of it)")
    return index, found.batch.supplier


def make_receipt(state: State, key_or_serial: str) -> str:
    """The signed receipt of a key's redeem (the same text every time for the same redeem)."""
    with state.store.read() as txn:
        index, sid = _redeem_event(state, txn, key_or_serial)
        change = change_of(state.log.leaf(txn, index))
        if change is None or change[1] != REDEEMED:
            raise StoreCorruptError(f"event {index} should be this key's redeem but is not: the store is damaged; "
                                    "run `keyvault audit`")
        name = state.current(txn).suppliers.get(sid, {}).get("name", "")
    serial, _, at_ms, order_id = change
    return fmt.make(fmt.Receipt(serial, at_ms, index, sid, name, order_id), state.log.engine.signing_key)


def upgrade_receipt(state: State, text: str, checkpoint: Any) -> ReceiptProof:
    """A receipt of this store with its event's inclusion proof under the oldest checkpoint covering it.

    ``checkpoint`` signs one now (``Engine.checkpoint``) when none covers the event yet.
    """
    receipt = fmt.open_receipt(text, state.log.engine.public_key)
    for _ in range(2):
        with state.store.read() as txn:
            if receipt.index >= state.log.size(txn):
                raise ProofError(f"event {receipt.index} is not in this store's log: the receipt is for another "
                                 "store (same engine key?) or the store was restored from an older backup")
            covering = state.log.covering(txn, receipt.index)
            if covering is not None:
                size, note = covering
                leaf = state.log.leaf(txn, receipt.index)
                doc = fmt.build_proof(text.strip(), leaf, state.log.inclusion(txn, receipt.index, size), note)
                fmt.open_proof(fmt.encode_proof(doc), state.log.engine.public_key)  # this very event, or refuse
                return msgspec.convert(doc, ReceiptProof)
        checkpoint()
    raise ProofError("no checkpoint covers this receipt's event yet; run `keyvault checkpoint` and try again")
