"""Webhook endpoints, and the event log read as their outbox.

Every change is an event of the signed log, appended in the transaction that
decides it: the log is the outbox. An endpoint is a URL, the event kinds it
wants, a secret and a cursor, the index of the first event it has not
acknowledged (store/outbox.py). A delivery worker (service/delivery.py) asks
:meth:`Webhooks.due` for the next messages past the cursor, posts them in log
order and moves the cursor with :meth:`Webhooks.ack`. Nothing is written on
the redeem path; an event that did not commit was never in the log, so no
message is ever made for it; a message's id is its event's, the same on
every retry and replay. A message holds no card key: only serials, batches,
statuses, order ids or reasons, times and the event's index.
"""

from __future__ import annotations

import json
import secrets
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..clock import iso, now_ms
from ..errors import NotFoundError, StoreCorruptError, UsageError
from ..formats import webhooks as signing
from ..formats.events import KINDS, LEAF, parse_leaf
from ..store.outbox import OutboxStore
from ..store.records import from_u64, u64
from .state import State

EVENT_KINDS = tuple(sorted(KINDS))  # what an endpoint may subscribe to
STATUS = {"redeem": "redeemed", "void": "voided", "blacklist": "blacklisted", "lift": "lifted"}
MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class Message:
    """One webhook to send: its id (stable across retries), the event's index, and the JSON body."""

    id: str
    index: int
    kind: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Due:
    """The next messages of an endpoint, and the cursor to acknowledge once they are all delivered."""

    endpoint: str
    url: str
    secret: str
    messages: list[Message]
    cursor: int
    epoch: int  # moved by a replay: an acknowledgement of an older epoch leaves the cursor alone


def message_id(engine_id: str, index: int) -> str:
    """The ``webhook-id`` of event ``index`` of a store (its engine's id): stable, unique per store and event."""
    return f"evt_{engine_id[:16]}_{index}"


def payload(leaf: bytes) -> tuple[str, bytes]:
    """(kind, JSON body) of the message for one event leaf: type, timestamp and data, never a card key."""
    event = parse_leaf(leaf)
    kind = event.pop("type")
    index, at_ms = event.pop("index"), event.pop("at_ms")
    event.pop("previous", None)
    if kind in ("redeem", "void"):
        event["batch"] = event["serial"][:8]
    if kind in STATUS:
        event["status"] = STATUS[kind]
    data = {"event": index, "at": iso(at_ms), **event}
    body = {"type": kind, "timestamp": iso(at_ms), "data": data}
    return kind, json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL or any(
            c.isspace() for c in url):
        raise UsageError("a webhook URL is http:// or https://, a host and a path, like "
                         "https://platform.example/keyvault/hooks")
    if parts.username or parts.password:
        raise UsageError("put no user or password in a webhook URL: the receiver checks the signature instead")
    return url


def _events(events: list[str] | tuple[str, ...] | str) -> list[str]:
    names = [e.strip() for e in events.split(",")] if isinstance(events, str) else [e.strip() for e in events]
    names = [e for e in names if e]
    unknown = [e for e in names if e not in KINDS]
    if unknown or not names:
        raise UsageError(f"unknown webhook event {', '.join(unknown) or '(none given)'}: choose among "
                         f"{', '.join(EVENT_KINDS)}, comma-separated")
    return sorted(set(names))


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """An endpoint as shown: everything but its secret."""
    return {k: v for k, v in record.items() if k != "secret"}


class Webhooks:
    """The webhook endpoints of one store (``vault.webhooks``)."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._outbox: OutboxStore | None = None
        self._opening = threading.Lock()

    @property
    def outbox(self) -> OutboxStore:
        """The endpoints' environment, opened on first use."""
        if self._outbox is None:
            with self._opening:  # two threads opening it at once would open one LMDB environment twice
                if self._outbox is None:
                    self._outbox = OutboxStore(self._state.path)
        return self._outbox

    def close(self) -> None:
        """Close the endpoints' environment, if it was opened."""
        if self._outbox is not None:
            self._outbox.close()

    def claim(self) -> int | None:
        """Take the store's delivery lock (one delivery worker per store): a descriptor to close, or None."""
        return self.outbox.claim()

    def _size(self) -> int:
        with self._state.store.read() as txn:
            return self._state.log.size(txn)

    # -- endpoints -------------------------------------------------------------------------------

    def add(self, url: str, events: list[str] | str, secret: str | None = None) -> dict[str, Any]:
        """Add an endpoint for the events from now on; its record with its secret (made when not given)."""
        secret = secret if secret is not None else signing.make_secret()
        if not secret.startswith(signing.SECRET_PREFIX):
            raise UsageError("a webhook secret is 'whsec_' followed by base64: leave it out to have one made")
        signing.secret_key(secret)
        record = {"id": "ep_" + secrets.token_hex(8), "url": _url(url), "events": _events(events), "secret": secret,
                  "paused": False, "created_at": iso(now_ms()), "cursor": self._size(), "epoch": 0, "delivered": 0,
                  "attempts": 0, "failing_since": None, "last_error": None, "last_error_at": None,
                  "last_delivered_at": None, "retry_at": None}
        self.outbox.update(record["id"], lambda old: record)
        return record

    def list(self) -> list[dict[str, Any]]:
        """Every endpoint (never its secret)."""
        return [_public(r) for r in self.outbox.all()]

    def get(self, endpoint: str) -> dict[str, Any]:
        """One endpoint (never its secret); NotFoundError when there is none by that id."""
        record = self.outbox.get(endpoint)
        if record is None:
            raise NotFoundError(f"no webhook endpoint {endpoint!r}: `keyvault webhook list` shows them")
        return _public(record)

    def _change(self, endpoint: str, **fields: Any) -> dict[str, Any]:
        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            if old is None:
                raise NotFoundError(f"no webhook endpoint {endpoint!r}: `keyvault webhook list` shows them")
            return {**old, **fields}

        return _public(self.outbox.update(endpoint, change))

    def remove(self, endpoint: str) -> dict[str, Any]:
        """Remove an endpoint: nothing more is sent to it; the removed record."""
        found = self.get(endpoint)
        self.outbox.update(endpoint, lambda old: None)
        return found

    def pause(self, endpoint: str) -> dict[str, Any]:
        """Stop sending to an endpoint: its events accumulate (its cursor stays) until :meth:`resume`."""
        return self._change(endpoint, paused=True)

    def resume(self, endpoint: str) -> dict[str, Any]:
        """Send to a paused endpoint again, from where it stopped, at once."""
        return self._change(endpoint, paused=False, retry_at=None, attempts=0)

    def replay(self, endpoint: str, since_ms: int) -> dict[str, Any]:
        """Send an endpoint every event since ``since_ms`` again (same ids); the endpoint, its cursor moved back."""
        self.get(endpoint)
        with self._state.store.read() as txn:
            lo, hi = 0, self._state.log.size(txn)
            while lo < hi:  # the first event at or after since_ms (times grow along the log)
                mid = (lo + hi) // 2
                at = LEAF.unpack_from(self._state.log.leaf(txn, mid))[4]
                lo, hi = (mid + 1, hi) if at < since_ms else (lo, mid)

        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            if old is None:
                raise NotFoundError(f"no webhook endpoint {endpoint!r}: `keyvault webhook list` shows them")
            return {**old, "cursor": lo, "epoch": old["epoch"] + 1, "retry_at": None, "attempts": 0}

        return _public(self.outbox.update(endpoint, change))

    # -- delivery --------------------------------------------------------------------------------

    def due(self, endpoint: str, limit: int = 100, scan: int = 10_000) -> Due | None:
        """The next messages past an endpoint's cursor (up to ``limit``, looking at up to ``scan`` events);
        None when it is paused or gone."""
        record = self.outbox.get(endpoint)
        if record is None or record["paused"]:
            return None
        cursor = int(record["cursor"])
        wanted = {KINDS[k] for k in record["events"]}
        engine_id = self._state.log.engine.id
        messages: list[Message] = []
        with self._state.store.read() as txn:
            size = self._state.log.size(txn)
            for key, leaf in txn.items_from("events", u64(cursor)):
                index = from_u64(key)
                if index >= size or index >= cursor + scan or len(messages) >= limit:
                    break
                if index != cursor:
                    raise StoreCorruptError(f"event {cursor} is missing from the event log: run `keyvault audit`")
                cursor += 1
                if leaf[LEAF.size - 9] in wanted:
                    kind, body = payload(bytes(leaf))
                    messages.append(Message(message_id(engine_id, index), index, kind, body))
        return Due(endpoint, record["url"], record["secret"], messages, cursor, int(record["epoch"]))

    def ack(self, endpoint: str, epoch: int, cursor: int, delivered: int) -> None:
        """Record that every message before event ``cursor`` was delivered (``delivered`` of them just now)."""

        def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
            if old is None:
                return None  # removed meanwhile
            new = {**old, "delivered": old["delivered"] + delivered, "attempts": 0, "failing_since": None,
                   "retry_at": None}
            if old.get("epoch", 0) == epoch:  # else a replay moved the cursor meanwhile: it stands
                new["cursor"] = max(old["cursor"], cursor)
            if delivered:
                new["last_delivered_at"] = iso(now_ms())
            return new

        self.outbox.update(endpoint, change, durable=False)  # a lost acknowledgement only resends

    def fail(self, endpoint: str, error: str, retry_at_ms: int) -> int:
        """Record a failed attempt (the error, when to try again); how many attempts failed in a row."""

        def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
            if old is None:
                return None
            now = iso(now_ms())
            return {**old, "attempts": old["attempts"] + 1, "failing_since": old["failing_since"] or now,
                    "last_error": error[:500], "last_error_at": now, "retry_at": iso(retry_at_ms)}

        new = self.outbox.update(endpoint, change, durable=False)
        return 0 if new is None else int(new["attempts"])

    def stats(self) -> list[dict[str, Any]]:
        """Per endpoint: delivered, pending (events of its kinds not yet acknowledged), failing, last error."""
        out = []
        with self._state.store.read() as txn:
            size = self._state.log.size(txn)
            for record in self.outbox.all():
                wanted = {KINDS[k] for k in record["events"]}
                pending = sum(1 for _, leaf in txn.items_from("events", u64(record["cursor"]))
                              if leaf[LEAF.size - 9] in wanted)
                out.append({"id": record["id"], "url": record["url"], "paused": record["paused"],
                            "delivered": record["delivered"], "pending": pending, "behind": size - record["cursor"],
                            "failing": record["attempts"] > 0, "attempts": record["attempts"],
                            "failing_since": record["failing_since"], "last_error": record["last_error"],
                            "last_error_at": record["last_error_at"], "retry_at": record["retry_at"],
                            "last_delivered_at": record["last_delivered_at"]})
        return out
