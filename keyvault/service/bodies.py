"""The service's limits and the JSON request bodies it accepts, as msgspec types.

One definition serves twice: each body is decoded strictly with its type
(an unknown field, a wrong type or a length beyond a limit is refused by
the decoder), and the OpenAPI document's request schemas are generated from
the same types (openapi.py), so what is documented is what is enforced.

Free text (``client``, ``order_id``, ``reason``) is checked twice over: its
length as sent by the decoder (``minLength``/``maxLength`` in the schema), then
keyvault's own text rule after decoding (``keyvault.fields.check_text``:
stripped, not empty, printable), which no JSON Schema keyword expresses.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from ..engine import EVENT_KINDS
from ..errors import KeyvaultError
from ..fields import MAX_ORDER_ID, MAX_REASON, check_text
from ..vocabulary import Level

#: Limits a client can read in the OpenAPI document and docs/service.md.
MAX_BODY = 4 << 20  # bytes of a JSON request body
MAX_KEYS = 10_000  # keys in one /v1/verify
MAX_ITEMS = 10_000  # items in one /v1/redeem-many
MAX_CLIENT_ID = 63  # characters of the `client` a platform passes (it is keyed with the token name)
MAX_MANIFEST = 1 << 30  # bytes of a manifest upload (streamed to a temporary file)

LEVELS: tuple[str, ...] = tuple(Level.names())

Client = Annotated[str, Meta(
    min_length=1, max_length=MAX_CLIENT_ID,
    description="Who is asking (an account, an IP): clients refused too often are throttled. Keyed together "
                "with the token's name. Printable characters.")]
OrderId = Annotated[str, Meta(min_length=1, max_length=MAX_ORDER_ID,
                              description="The order this key pays for; a retry uses the same id. "
                                          "Printable characters.")]
Reason = Annotated[str, Meta(min_length=1, max_length=MAX_REASON, description="Why. Printable characters.")]
Key = Annotated[str, Meta(description="A key as the shopper typed it: whether it is one is the answer's status.")]


class VerifyRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/verify: keys to check without spending them."""

    keys: Annotated[list[Key], Meta(max_length=MAX_KEYS)]
    client: Client | None = None


class RedeemRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/redeem: spend one key for one order."""

    key: Key
    order_id: OrderId
    client: Client | None = None
    receipt: Annotated[bool, Meta(description="true: an accepted answer carries `receipt`, the redeem signed by "
                                              "the store's engine key (`keyvault verify-receipt` checks it "
                                              "offline). It costs a signature, so it is made only when asked.")] \
        = False


class RedeemItem(Struct, forbid_unknown_fields=True, gc=False):
    """One (key, order) pair of a /v1/redeem-many request."""

    key: Key
    order_id: OrderId


class RedeemManyRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/redeem-many: many (key, order) pairs in one durable commit."""

    items: Annotated[list[RedeemItem], Meta(max_length=MAX_ITEMS)]
    client: Client | None = None


class VoidRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/void: withdraw an unused key."""

    key: Annotated[str, Meta(description="The key, or its public serial.")]
    reason: Reason


class BlacklistRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/blacklist (add) and DELETE /v1/blacklist (lift: it needs a reason too)."""

    level: Level
    target: Annotated[str, Meta(description="A key, a serial, a batch id or a supplier id.")]
    reason: Reason


MAX_TTL = 604_800  # seconds a hold lasts at most (7 days)


class HoldRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/hold: reserve one key for one order while its payment is pending."""

    key: Key
    order_id: OrderId
    ttl: Annotated[float, Meta(ge=1, le=MAX_TTL, description="Seconds the hold lasts (1 to 604800); "
                                                          "a retry of the same order keeps the first expiry.")]
    client: Client | None = None


class OrderRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/confirm and POST /v1/release: every key the order holds."""

    order_id: OrderId


EventKind = Literal[EVENT_KINDS]  # type: ignore[valid-type]  # the kinds of the event log, by name
MAX_URL = 2048


class WebhookRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/webhooks: add an endpoint, sent the events chosen from now on."""

    url: Annotated[str, Meta(min_length=1, max_length=MAX_URL,
                             description="http:// or https://, a host and a path; no user or password.")]
    events: Annotated[list[EventKind], Meta(min_length=1, max_length=len(EVENT_KINDS),
                                            description="The event kinds the endpoint is sent.")]
    secret: Annotated[str, Meta(pattern="^whsec_[A-Za-z0-9+/=]{1,400}$", description=(
        "The endpoint's Standard Webhooks secret (whsec_ and base64). Leave it out to have one made: the answer "
        "then carries it, once."))] | None = None


class ReplayRequest(Struct, forbid_unknown_fields=True):
    """POST /v1/webhooks/{endpoint}/replay: send every event since a time again."""

    since: Annotated[str, Meta(min_length=1, max_length=64, description=(
        "ISO 8601 date or time (UTC unless it says otherwise): every event from then on, with their first ids."))]


#: Every request body type: openapi.py publishes their schemas under these names.
REQUESTS: tuple[type[Struct], ...] = (VerifyRequest, RedeemRequest, RedeemManyRequest, VoidRequest,
                                      BlacklistRequest, HoldRequest, OrderRequest, WebhookRequest, ReplayRequest)

Body = TypeVar("Body", bound=Struct)


class BodyError(KeyvaultError):
    """A request body that cannot be used: ``problem`` names its RFC 9457 type (problems.PROBLEMS)."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {kind: msgspec.json.Decoder(kind) for kind in REQUESTS}
#: The paths of the lists with a batch limit, as msgspec names them in its errors.
_BATCHES = {f"Expected `array` of length <= {MAX_KEYS} - at `$.keys`": "keys",
            f"Expected `array` of length <= {MAX_ITEMS} - at `$.items`": "items"}


def decode(kind: type[Body], raw: bytes) -> Body:
    """The body ``raw`` as a ``kind``, or BodyError: malformed-json, batch-too-large or invalid-request."""
    try:
        return _DECODERS[kind].decode(raw)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        error = str(exc)
    except msgspec.DecodeError:
        raise BodyError("malformed-json", "the body is not valid UTF-8 JSON; send a JSON object") from None
    # The decoder stops at the first mismatch: whether the rest is JSON decides between 400 and 422.
    try:
        json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BodyError("malformed-json", "the body is not valid UTF-8 JSON; send a JSON object") from None
    batch = _BATCHES.get(error)
    if batch is not None:
        limit = MAX_KEYS if batch == "keys" else MAX_ITEMS
        raise BodyError("batch-too-large", f"at most {limit} {batch} per request; split the list")
    raise BodyError("invalid-request", f"{_no_values(error, kind)}: send a {kind.__name__} as GET /v1/openapi.json "
                    "describes it")


_UNKNOWN = re.compile(r"Object contains unknown field `(.*?)`( - at `[^`]*`)?", re.DOTALL)
_MISSING = re.compile(r"Object missing required field `([A-Za-z_]{1,32})`( - at `[^`]*`)?", re.DOTALL)
_NAME = re.compile(r"[A-Za-z_]{1,16}")  # like the API's own names: no digits, no dashes, half a key at most


def _no_values(error: str, kind: type[Struct]) -> str:
    """msgspec's message without what the client sent: an enum value or an odd field name could be a key."""
    if error.startswith("Invalid enum value"):
        at = error.rfind(" - at `")
        error = "Invalid enum value" + (error[at:] if at >= 0 else "")
        if kind is BlacklistRequest:  # its one enum
            error += f" ('level' is one of {', '.join(LEVELS)})"
    missing = _MISSING.fullmatch(error)
    if missing is not None:  # "is missing", in the words the API's users search for
        return f"`{missing.group(1)}` is missing" + (missing.group(2) or "")
    unknown = _UNKNOWN.fullmatch(error)
    if unknown is not None and not _NAME.fullmatch(unknown.group(1)):
        error = "Object contains an unknown field (its name is not repeated here)" + (unknown.group(2) or "")
    return error


def text(value: str, what: str, limit: int) -> str:
    """A free-text field stripped, or BodyError (invalid-request) unless it is 1..limit printable characters."""
    try:
        return check_text(value, what, limit)
    except KeyvaultError as exc:
        raise BodyError("invalid-request", str(exc)) from None
