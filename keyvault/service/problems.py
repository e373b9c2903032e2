"""RFC 9457 problem details: one stable ``type`` per class of error, a message that says what to do."""

from __future__ import annotations

import json
from typing import Any

from ..errors import (
    ClosedError,
    ConflictError,
    CustodyError,
    KeyvaultError,
    ManifestError,
    NotFoundError,
    OutcomeUnknownError,
    ProofError,
    StoreError,
    StoreFullError,
    TrustError,
)
from .bodies import BodyError

TYPE_PREFIX = "urn:keyvault:problem:"

#: Every problem the service answers: name -> (HTTP status, title). docs/service.md lists them.
PROBLEMS: dict[str, tuple[int, str]] = {
    "bad-request": (400, "The request is not usable HTTP"),
    "malformed-json": (400, "The body is not valid JSON"),
    "unauthorized": (401, "A valid bearer token is required"),
    "forbidden": (403, "The token's scope does not allow this"),
    "not-found": (404, "No such resource"),
    "method-not-allowed": (405, "Method not allowed on this path"),
    "request-timeout": (408, "The request did not arrive in time"),
    "conflict": (409, "The change contradicts what the store holds"),
    "body-too-large": (413, "The request body is too large"),
    "uri-too-long": (414, "The request target is too long"),
    "unsupported-media-type": (415, "Send the body as application/json"),
    "invalid-request": (422, "The request does not match the API"),
    "batch-too-large": (422, "Too many items in one request"),
    "rejected-manifest": (422, "The manifest was refused"),
    "untrusted-signer": (422, "The signer is not trusted by this store"),
    "headers-too-large": (431, "The request's headers are too large"),
    "store-unavailable": (503, "The store cannot serve this request now"),
    "outcome-unknown": (503, "The outcome is not known: retry with the same order id"),
    "overloaded": (503, "The service has no room for another connection"),
    "store-full": (507, "The store's disk is full"),
}


class Problem(Exception):
    """An error answer: its problem name and a detail that says what to do (never a key, never a body)."""

    def __init__(self, name: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.name = name
        self.detail = detail
        self.headers = headers or []

    @property
    def status(self) -> int:
        """The HTTP status of this problem."""
        return PROBLEMS[self.name][0]

    def body(self, request_id: bytes | None = None) -> bytes:
        """The application/problem+json document (with the request's id, when given, as ``request_id``)."""
        doc: dict[str, Any] = {"type": TYPE_PREFIX + self.name, "title": PROBLEMS[self.name][1],
                               "status": self.status, "detail": self.detail}
        if request_id is not None:
            doc["request_id"] = request_id.decode("ascii")
        return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def from_error(exc: KeyvaultError) -> Problem:
    """The problem for one of keyvault's own errors (their messages never hold a key)."""
    detail = str(exc)
    if isinstance(exc, BodyError):
        return Problem(exc.problem, detail)
    if isinstance(exc, StoreFullError):
        return Problem("store-full", detail)
    if isinstance(exc, NotFoundError):
        return Problem("not-found", detail)
    if isinstance(exc, ConflictError):
        return Problem("conflict", detail)
    if isinstance(exc, TrustError):
        return Problem("untrusted-signer", detail)
    if isinstance(exc, (ManifestError, CustodyError, ProofError)):
        return Problem("rejected-manifest", detail)
    if isinstance(exc, OutcomeUnknownError):
        return Problem("outcome-unknown", detail)
    if isinstance(exc, ClosedError):
        return Problem("store-unavailable", "the service is shutting down; retry on another instance")
    if isinstance(exc, StoreError):
        return Problem("store-unavailable", detail)
    return Problem("invalid-request", detail)
