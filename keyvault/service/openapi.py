"""The OpenAPI 3.1 document the service serves at /v1/openapi.json (the contract of docs/service.md).

The request bodies' schemas are generated from the msgspec types the service
decodes them with (bodies.py), so the document cannot drift from what is
enforced; the answers' schemas are written here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import __version__
from ..results import Status
from .bodies import (
    REQUESTS,
    BlacklistRequest,
    HoldRequest,
    OrderRequest,
    RedeemManyRequest,
    RedeemRequest,
    ReplayRequest,
    VerifyRequest,
    VoidRequest,
    WebhookRequest,
)
from .problems import PROBLEMS, TYPE_PREFIX
from .schemas import ANSWERS

REF_TEMPLATE = "#/components/schemas/{name}"

_STATUSES = [status.value for status in Status]
REQUEST_ID_PARAMETER = {
    "name": "X-Request-Id", "in": "header", "required": False,
    "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
    "description": "An id for this request (1 to 128 visible ASCII characters), returned as given; any other "
                   "value, or none, gets a new random id. It is logged: never put a key or a token in it."}
REQUEST_ID_HEADER = {"required": True, "description": "The request's id: the client's X-Request-Id when valid, else a new one.",
                     "schema": {"type": "string"}}


_PAGE = [
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
     "description": "Items per page (100 by default)."},
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "The cursor: the `next` of the previous page (absent for the first page; null next: the last)."}]


_ENDPOINT = {"name": "endpoint", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^ep_[0-9a-f]{16}$"},
             "description": "The endpoint's id, as GET /v1/webhooks lists it."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(name=name)}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(ok: dict[str, Any], problems: tuple[int, ...], ok_text: str = "The answer") -> dict[str, Any]:
    """A 200 with ``ok`` as its JSON schema, and a problem document for each status in ``problems``."""
    out: dict[str, Any] = {"200": {"description": ok_text, "content": _json(ok)}}
    for status in problems:
        names = sorted(name for name, (code, _) in PROBLEMS.items() if code == status)
        out[str(status)] = {"description": "A problem: " + ", ".join(names),
                            "content": {"application/problem+json": {"schema": _ref("Problem")}}}
    return out


_READ = (400, 401, 403, 413, 415, 422, 503)  # what any JSON request may answer besides 200
_WRITE = (*_READ, 507)


def _body(kind: type[msgspec.Struct]) -> dict[str, Any]:
    """A JSON request body of type ``kind`` (one of bodies.REQUESTS: its schema is generated)."""
    return {"required": True, "content": _json(_ref(kind.__name__))}


def request_schemas() -> dict[str, Any]:
    """The JSON Schemas of every request body and typed answer (and the types they use), by name, from
    bodies.REQUESTS and schemas.ANSWERS."""
    return msgspec.json.schema_components((*REQUESTS, *ANSWERS), ref_template=REF_TEMPLATE)[1]


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    result = {
        "type": "object", "additionalProperties": False, "required": ["status", "serial", "batch", "supplier"],
        "description": "One key's answer. Never holds the key: only its public serial.",
        "properties": {
            "status": {"type": "string", "enum": _STATUSES},
            "serial": _nullable("string"), "batch": _nullable("string"), "supplier": _nullable("string"),
            "supplier_name": {"type": "string"}, "product": {"type": "string"},
            "order_id": {"type": "string"}, "redeemed_at": {"type": "string"}, "voided_at": {"type": "string"},
            "reason": {"type": "string"}, "level": {"type": "string"}, "group": {"type": "integer"},
            "message": {"type": "string"},
            "receipt": {"type": "string", "description": "POST /v1/redeem with `receipt: true`, when accepted: "
                                                         "the engine-signed receipt (KVR1.…); none for the uses of "
                                                         "a count-limited key before its last (not redeems)."},
            "uses_left": {"type": "integer", "description": "Count-limited keys: uses not yet spent."},
            "expires_at": {"type": "string", "description": "A hold's end (ISO 8601 UTC)."},
        },
    }
    schemas: dict[str, Any] = {
        "Result": result,
        "Results": {"type": "object", "additionalProperties": False, "required": ["results"],
                    "properties": {"results": {"type": "array", "items": _ref("Result")}}},
        "Problem": {
            "type": "object", "required": ["type", "title", "status", "detail", "request_id"],
            "description": f"RFC 9457 problem details; `type` is {TYPE_PREFIX}NAME, stable per class of error.",
            "properties": {"type": {"type": "string", "enum": [TYPE_PREFIX + n for n in PROBLEMS]},
                           "title": {"type": "string"}, "status": {"type": "integer"},
                           "detail": {"type": "string"},
                           "request_id": {"type": "string", "description": "The request's id, as in the "
                                          "X-Request-Id response header and the service's access log."}},
        },
        "BlacklistEntry": {
            "type": "object", "required": ["level", "target", "reason", "at"],
            "properties": {"level": {"type": "string"}, "target": {"type": "string"},
                           "reason": {"type": "string"}, "at": _nullable("string")},
        },
    }
    requests = request_schemas()
    clash = requests.keys() & schemas.keys()
    assert not clash, f"a request type and an answer schema share a name: {clash}"
    schemas.update(requests)
    free = {"type": "object"}
    paths: dict[str, Any] = {
        "/v1/verify": {"post": {
            "summary": "Check keys without spending them (scope verify)", "operationId": "verify",
            "requestBody": _body(VerifyRequest), "responses": _responses(_ref("Results"), _READ)}},
        "/v1/redeem": {"post": {
            "summary": "Spend a key for an order, durably (scope redeem)", "operationId": "redeem",
            "description": "Answered once the redemption is on disk. A retry of the same order gets the "
                           "first answer; another order gets `redeemed` naming the first.",
            "requestBody": _body(RedeemRequest), "responses": _responses(_ref("Result"), _WRITE)}},
        "/v1/redeem-many": {"post": {
            "summary": "Redeem many (key, order) pairs in one durable commit (scope redeem)",
            "operationId": "redeemMany", "requestBody": _body(RedeemManyRequest),
            "responses": _responses(_ref("Results"), _WRITE)}},
        "/v1/hold": {"post": {
            "summary": "Hold a key for an order while its payment is pending (scope redeem)", "operationId": "hold",
            "description": "Answered once the hold is on disk: `held` naming the order, with `expires_at`; a retry "
                           "of the same order gets the same answer. While held, every other order is refused "
                           "(`held`, naming no order) for hold and redeem, and verify answers `held`.",
            "requestBody": _body(HoldRequest), "responses": _responses(_ref("Result"), _WRITE)}},
        "/v1/confirm": {"post": {
            "summary": "Redeem every key the order holds (scope redeem)", "operationId": "confirm",
            "description": "One answer per key: `accepted` (a retry: the first answer), `expired_hold` when the "
                           "hold ended first, `released`, or the key's refusal (`void`, `blacklisted`).",
            "requestBody": _body(OrderRequest), "responses": _responses(_ref("Results"), (*_WRITE, 404))}},
        "/v1/release": {"post": {
            "summary": "Give up every hold of the order (scope redeem)", "operationId": "release",
            "requestBody": _body(OrderRequest), "responses": _responses(_ref("Results"), (*_WRITE, 404))}},
        "/v1/orders/{order_id}": {"get": {
            "summary": "Every key (serial) an order redeemed, holds or held, with states, times and events "
                       "(scope redeem)",
            "operationId": "order",
            "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "The order id, URL-encoded."}],
            "responses": _responses(_ref("OrderAnswer"), (400, 401, 403, 404, 422, 503, 507))}},
        "/v1/webhooks": {
            "get": {"summary": "Every webhook endpoint, never its secret (scope admin)", "operationId": "listWebhooks",
                    "responses": _responses(_ref("WebhookEndpoints"), (400, 401, 403, 503))},
            "post": {"summary": "Add a webhook endpoint, sent the events chosen from now on (scope admin)",
                     "operationId": "addWebhook", "requestBody": _body(WebhookRequest),
                     "description": "Without `secret`, one is made and answered in `secret`, this once.",
                     "responses": _responses(_ref("WebhookEndpoint"), _WRITE)}},
        "/v1/webhooks/stats": {"get": {
            "summary": "Per endpoint: delivered, pending, failing, last error (scope admin)",
            "operationId": "webhookStats", "responses": _responses(_ref("WebhookStatsList"), (400, 401, 403, 503))}},
        "/v1/webhooks/{endpoint}": {"delete": {
            "summary": "Remove a webhook endpoint: nothing more is sent to it (scope admin)",
            "operationId": "removeWebhook", "parameters": [_ENDPOINT],
            "responses": _responses(_ref("WebhookEndpoint"), (400, 401, 403, 404, 503, 507))}},
        "/v1/webhooks/{endpoint}/pause": {"post": {
            "summary": "Stop sending to an endpoint; its events wait until resumed (scope admin)",
            "operationId": "pauseWebhook", "parameters": [_ENDPOINT],
            "responses": _responses(_ref("WebhookEndpoint"), (400, 401, 403, 404, 503, 507))}},
        "/v1/webhooks/{endpoint}/resume": {"post": {
            "summary": "Send to a paused endpoint again, from where it stopped (scope admin)",
            "operationId": "resumeWebhook", "parameters": [_ENDPOINT],
            "responses": _responses(_ref("WebhookEndpoint"), (400, 401, 403, 404, 503, 507))}},
        "/v1/webhooks/{endpoint}/replay": {"post": {
            "summary": "Send an endpoint every event since a time again, with their first ids (scope admin)",
            "operationId": "replayWebhook", "parameters": [_ENDPOINT], "requestBody": _body(ReplayRequest),
            "responses": _responses(_ref("WebhookEndpoint"), (*_WRITE, 404))}},
        "/v1/void": {"post": {
            "summary": "Withdraw an unused key (scope admin)", "operationId": "void",
            "requestBody": _body(VoidRequest), "responses": _responses(_ref("Result"), _WRITE)}},
        "/v1/blacklist": {
            "get": {"summary": "One page of the blacklist entries, by level:target (scope admin)",
                    "operationId": "listBlacklist", "parameters": _PAGE,
                    "responses": _responses(free, (400, 401, 403, 422, 503, 507))},
            "post": {"summary": "Blacklist a key, serial, batch or supplier (scope admin)",
                     "operationId": "blacklist", "requestBody": _body(BlacklistRequest),
                     "responses": _responses(_ref("BlacklistEntry"), (*_WRITE, 404))},
            "delete": {"summary": "Lift a blacklist entry: another spelling of POST /v1/blacklist/lift (scope admin)",
                       "operationId": "liftByDelete", "requestBody": _body(BlacklistRequest),
                       "responses": _responses(_ref("BlacklistEntry"), (*_WRITE, 404))}},
        "/v1/blacklist/lift": {
            "post": {"summary": "Lift a blacklist entry; lifting needs a reason too (scope admin)",
                     "operationId": "lift", "requestBody": _body(BlacklistRequest),
                     "responses": _responses(_ref("BlacklistEntry"), (*_WRITE, 404))}},
        "/v1/stats": {"get": {
            "summary": "Counts per supplier and batch; with since, until or daily, the redeems and voids of "
                       "that window (scope admin)", "operationId": "stats",
            "parameters": [
                {"name": "since", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "ISO 8601 date or time (UTC unless it says otherwise): count events from then."},
                {"name": "until", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "ISO 8601 date or time: count events before then (excluded)."},
                {"name": "daily", "in": "query", "required": False, "schema": {"type": "string", "enum": ["1", "0"]},
                 "description": "1: also count per UTC day."}],
            "responses": _responses(free, (400, 401, 403, 422, 503, 507))}},
        "/v1/batches": {"get": {
            "summary": "One page of the batches, by batch id (scope admin)", "operationId": "listBatches",
            "parameters": _PAGE, "responses": _responses(free, (400, 401, 403, 422, 503, 507))}},
        "/v1/tokens": {"get": {
            "summary": "One page of the service tokens, by name (never a token or its hash) (scope admin)", "operationId": "listTokens",
            "parameters": _PAGE, "responses": _responses(free, (400, 401, 403, 422, 503, 507))}},

        "/v1/trace/{serial}": {"get": {
            "summary": "Where a key came from and what happened to it (scope redeem)", "operationId": "trace",
            "parameters": [
                {"name": "serial", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "The key's public serial (never the key: keys do not go in URLs)."},
                {"name": "bundle", "in": "query", "required": False, "schema": {"type": "string", "enum": ["1"]},
                 "description": "1: the offline bundle that `keyvault verify-bundle` checks."}],
            "responses": _responses(free, (400, 401, 403, 404, 422, 503, 507))}},
        "/v1/receipts/{serial}": {"get": {
            "summary": "The engine-signed receipt of a redeemed key (scope redeem)", "operationId": "receipt",
            "description": "`keyvault verify-receipt RECEIPT --engine engine.pub` checks it offline.",
            "parameters": [
                {"name": "serial", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "The key's public serial (never the key: keys do not go in URLs)."}],
            "responses": _responses(_ref("ReceiptAnswer"), (400, 401, 403, 404, 422, 503, 507))}},
        "/v1/manifests": {"get": {
            "summary": "One page of the manifests imported, by manifest id (scope admin)",
            "operationId": "listManifests", "parameters": _PAGE,
            "responses": _responses(free, (400, 401, 403, 422, 503, 507))}, "post": {
            "summary": "Import a supplier's signed manifest, all or nothing (scope admin)",
            "operationId": "importManifest",
            "requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": _responses(free, (400, 401, 403, 409, 413, 415, 422, 503, 507))}},
        "/v1/openapi.json": {"get": {
            "summary": "This document (no token: client generators fetch it)", "operationId": "openapi",
            "security": [], "responses": _responses(free, (503,))}},
        "/healthz": {"get": {
            "summary": "200 when the store answers reads (no token)", "operationId": "health", "security": [],
            "responses": _responses({"type": "object", "required": ["status"],
                                     "properties": {"status": {"const": "ok"}}}, (503,))}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics, summed over the workers (no token)", "operationId": "metrics",
            "security": [],
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }
    for operations in paths.values():  # every request may name itself; every answer names its request
        for operation in operations.values():
            operation.setdefault("parameters", []).append({"$ref": "#/components/parameters/RequestId"})
            for response in operation["responses"].values():
                response["headers"] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "keyvault", "version": __version__,
                 "description": "Verify, redeem and trace card keys. Every /v1 request carries "
                                "'Authorization: Bearer TOKEN'; scopes nest: verify < redeem < admin."},
        "paths": paths,
        "components": {"schemas": schemas, "parameters": {"RequestId": REQUEST_ID_PARAMETER},
                       "headers": {"RequestId": REQUEST_ID_HEADER},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
