"""The answers' types, as msgspec structs: openapi.py publishes their generated JSON Schemas, and the tests
convert real answers into them strictly (an undocumented field, a missing one or a wrong type fails), so
the document cannot drift from what is answered. The service builds its answers as plain dicts; these types
describe them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

Time = Annotated[str, Meta(description="ISO 8601, UTC.")]
KeyState = Literal["held", "redeemed", "released", "expired", "void"]


class OrderKey(Struct, forbid_unknown_fields=True):
    """One key of an order (its public serial, never the key): its state and when each step happened."""

    serial: str
    state: Annotated[KeyState, Meta(description="What the order has of the key now.")]
    held_at: Time | None
    expires_at: Annotated[str | None, Meta(description="The end of the order's hold (ISO 8601, UTC).")]
    redeemed_at: Time | None
    released_at: Time | None
    expired_at: Time | None
    uses_left: Annotated[int, Meta(description="Count-limited keys: uses left after this order's use.")] | None \
        = None
    voided_at: Annotated[str, Meta(description="State void: when the key was voided while the order held it (ISO "
                                               "8601, UTC); a confirm of the order is refused `void`.")] | None = None


class OrderEvent(Struct, forbid_unknown_fields=True):
    """One event of the order in the store's signed event log."""

    index: Annotated[int, Meta(ge=0, description="The event's index in the log (`keyvault audit` proves it).")]
    type: Literal["hold", "confirm", "release", "expire", "use", "redeem"]
    at: Time
    serial: str
    order_id: str
    expires_at: Time | None = None
    uses_left: int | None = None


class OrderAnswer(Struct, forbid_unknown_fields=True):
    """GET /v1/orders/{order_id}: every key the order redeemed, holds or held, and its events, oldest first."""

    order_id: str
    keys: list[OrderKey]
    events: list[OrderEvent]


class ReceiptAnswer(Struct, forbid_unknown_fields=True):
    """GET /v1/receipts/{serial}: the engine-signed receipt of a redeemed key."""

    serial: str
    receipt: Annotated[str, Meta(description="KVR1.…: `keyvault verify-receipt RECEIPT --engine engine.pub` checks "
                                             "it offline.")]


class WebhookEndpoint(Struct, forbid_unknown_fields=True):
    """A webhook endpoint (its secret only in the answer that made it)."""

    id: str
    url: str
    events: list[str]
    paused: bool
    created_at: Time
    cursor: Annotated[int, Meta(description="The first event of the log not yet acknowledged by the endpoint.")]
    epoch: Annotated[int, Meta(description="Moved by each replay.")]
    delivered: int
    attempts: Annotated[int, Meta(description="Failed attempts in a row (0: not failing).")]
    failing_since: Time | None
    last_error: str | None
    last_error_at: Time | None
    last_delivered_at: Time | None
    retry_at: Time | None
    secret: Annotated[str, Meta(description="POST /v1/webhooks without a secret: the one made, shown only here; "
                                            "give it to the receiver.")] | None = None


class WebhookEndpoints(Struct, forbid_unknown_fields=True):
    """GET /v1/webhooks: every endpoint, never a secret."""

    endpoints: list[WebhookEndpoint]


class WebhookStats(Struct, forbid_unknown_fields=True):
    """One endpoint's delivery: delivered, pending, failing and the last error."""

    id: str
    url: str
    paused: bool
    delivered: int
    pending: Annotated[int, Meta(description="Events of its kinds not yet acknowledged.")]
    behind: Annotated[int, Meta(description="Events of any kind past its cursor.")]
    failing: bool
    attempts: int
    failing_since: Time | None
    last_error: str | None
    last_error_at: Time | None
    retry_at: Time | None
    last_delivered_at: Time | None


class WebhookStatsList(Struct, forbid_unknown_fields=True):
    """GET /v1/webhooks/stats: per endpoint."""

    endpoints: list[WebhookStats]


#: Every answer type: openapi.py publishes their schemas under these names.
ANSWERS: tuple[type[Struct], ...] = (OrderAnswer, ReceiptAnswer, WebhookEndpoint, WebhookEndpoints,
                                     WebhookStatsList)
