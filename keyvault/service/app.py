"""The ASGI application: routes, bearer tokens, JSON in and out, a problem document for every error.

Plain ASGI, no framework: a request is a dictionary lookup, a token check, one
engine call and one JSON document. Verify runs on the event loop (it is a
read, microseconds); redeems go to the commit process (commitd.py);
everything else that writes (void, blacklist, manifests, statistics) runs in
the loop's thread pool, so the loop never waits on a disk flush.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import Status, Vault
from ..engine import Grant, LogWitness, consistency_proof, newest_checkpoint, node_witness, read_tile
from ..errors import KeyvaultError, ProofError
from ..fields import MAX_ORDER_ID, MAX_REASON
from ..formats.answers import results_body
from ..formats.keyformat import looks_like_serial
from ..formats.tiles import encode_proof
from ..vocabulary import Level
from . import bodies
from .accesslog import AccessLog, request_id
from .bodies import MAX_BODY, MAX_CLIENT_ID, MAX_MANIFEST, Body
from .commitd import Op, RemoteCommitter
from .metrics import METRICS_SECONDS, Metrics
from .openapi import document
from .problems import Problem, from_error

error_log = logging.getLogger("keyvault.service")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Answer = tuple[int, bytes, bytes]  # status, body, content type
Handler = Callable[["Service", Scope, Receive, Grant | None], Awaitable[Answer]]

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_TILES = "/v1/log/tile/{path}"
_PROBLEM = b"application/problem+json"
_UNAUTHORIZED = [(b"www-authenticate", b'Bearer realm="keyvault"')]
_ENDPOINT_ID = re.compile(r"ep_[0-9a-f]{16}")


@dataclass(frozen=True)
class Options:
    """What a worker needs to open its store (passed through the environment to spawned workers)."""

    store: Path
    commit_socket: Path  # the commit process's socket: it writes every worker's redeems
    pepper_file: Path | None = None
    run_dir: Path | None = None  # shared by the workers: their metrics files
    access_log: bool = True
    log_format: str = "text"  # of the access log: text or json (logs.py)


class _Gone(Exception):
    """The client disconnected before it sent its whole body."""


class Service:
    """One worker's ASGI application over one store."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._vault: Vault | None = None
        self._committer: RemoteCommitter | None = None
        self.metrics = Metrics(options.run_dir)
        self.access = AccessLog(enabled=options.access_log, log_format=options.log_format)
        self._saver: asyncio.Task[None] | None = None
        self._openapi = json.dumps(document()).encode()

    @property
    def vault(self) -> Vault:
        """The open store (from lifespan startup to shutdown)."""
        if self._vault is None:
            raise Problem("store-unavailable", "the service is starting or stopping; retry in a moment")
        return self._vault

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._start()
                except KeyvaultError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _start(self) -> None:
        """Open the store in this process (after the worker started: never across fork)."""
        vault = Vault.open(self.options.store, pepper_file=self.options.pepper_file)
        vault.flush_every = None  # flushed every second below, off the event loop
        self._committer = RemoteCommitter(self.options.commit_socket)
        self._vault = vault
        self._saver = asyncio.get_running_loop().create_task(self._periodic())

    def _stop(self) -> None:
        """Called once the server has answered every request in flight: commit, flush and close."""
        if self._saver is not None:
            self._saver.cancel()
        if self._committer is not None:
            self._committer.stop()
        if self._vault is not None:
            self._vault.close()
            self._vault = None
        self.metrics.save()
        self.access.flush()

    async def _periodic(self) -> None:
        """Publish the metrics every METRICS_SECONDS (for the other workers' /metrics); flush statistics each second."""
        loop = asyncio.get_running_loop()
        ticks = 0
        while True:
            await asyncio.sleep(METRICS_SECONDS)
            ticks += 1
            try:
                self.metrics.save()
                if self._vault is not None and ticks % round(1 / METRICS_SECONDS) == 0:
                    await loop.run_in_executor(None, self._vault.flush_stats)  # a write: never on the loop
            except (OSError, KeyvaultError):
                pass  # the next turn tries again; metrics and statistics never stop the service

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        route = "(unknown)"
        rid = request_id(scope["headers"])
        headers: list[tuple[bytes, bytes]] = []
        try:
            route, handler, needed = _route(scope)
            grant = self._grant(scope["headers"], needed) if needed else None
            status, body, kind = await handler(self, scope, receive, grant)
        except _Gone:
            return
        except Problem as problem:
            status, body, kind, headers = problem.status, problem.body(rid), _PROBLEM, problem.headers
        except KeyvaultError as exc:
            answer = from_error(exc)
            status, body, kind = answer.status, answer.body(rid), _PROBLEM
        except Exception:  # a bug: logged here (never a request body), answered without details
            error_log.exception("internal error on %s %s", scope["method"], route,
                                extra={"request_id": rid.decode("ascii")})
            status, kind = 500, _PROBLEM
            body = json.dumps({"type": "urn:keyvault:problem:internal-error", "title": "Internal error",
                               "status": 500, "detail": "the service failed on this request; it was logged "
                               "for the operator. A redeem may be retried with the same order id",
                               "request_id": rid.decode("ascii")}).encode()
        cache = b"public, max-age=31536000, immutable" if route == _TILES and status == 200 else b"no-store"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                                (b"cache-control", cache), (b"x-request-id", rid), *headers]})
        await send({"type": "http.response.body", "body": body})
        seconds = time.perf_counter() - start
        self.metrics.request(route, status, seconds)
        self.access.add(scope["method"], route, status, seconds, rid)

    def _grant(self, headers: list[tuple[bytes, bytes]], needed: str) -> Grant:
        """The grant of the request's one Authorization header, or 400/401/403 (a token is never echoed or logged)."""
        authorization = None
        for name, value in headers:
            if name == b"authorization":
                if authorization is not None:  # which one would count is a guess a proxy may make differently
                    raise Problem("bad-request", "send one Authorization header, not several")
                authorization = value
        token = None
        if authorization is not None:
            scheme, _, rest = authorization.partition(b" ")
            if scheme.lower() == b"bearer":
                token = rest.strip().decode("latin-1")
        if not token:
            raise Problem("unauthorized", "send the header 'Authorization: Bearer TOKEN' with a token after "
                          "'Bearer '; the store's operator makes tokens with `keyvault token create`", _UNAUTHORIZED)
        grant = self.vault.authorize(token)
        if grant is None:
            raise Problem("unauthorized", "that token is unknown or was revoked: ask the store's operator for a "
                          "new one (`keyvault token create`)", _UNAUTHORIZED)
        if not grant.allows(needed):
            raise Problem("forbidden", f"the token {grant.name} has scope {grant.scope}; this needs a token with "
                          f"scope {needed} or above")
        return grant

    # -- request bodies ------------------------------------------------------------------------------

    async def _body(self, scope: Scope, receive: Receive, limit: int) -> bytes:
        """The whole request body, refused with 413 as soon as it is known to exceed ``limit``."""
        too_large = f"a request body here is at most {limit} bytes; send fewer items per request"
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise Problem("body-too-large", too_large)
        return b"".join([chunk async for chunk in _chunks(receive, limit, too_large)])

    async def _json(self, scope: Scope, receive: Receive, kind: type[Body]) -> Body:
        """The request's JSON body decoded strictly as ``kind`` (bodies.py), or its problem."""
        _content_type(scope, (b"application/json",), "application/json")
        raw = await self._body(scope, receive, MAX_BODY)
        return bodies.decode(kind, raw)

    @staticmethod
    def _client(grant: Grant | None, client: str | None) -> str | None:
        """Who is asking, for throttling: the token's name with the client the platform names.

        No client, no throttling: a token is a whole platform, and blocking it would stop its checkout.
        """
        assert grant is not None
        if client is None:
            return None
        return grant.name + "/" + bodies.text(client, "client", MAX_CLIENT_ID)

    # -- handlers -------------------------------------------------------------------------------------

    async def verify(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/verify."""
        body = await self._json(scope, receive, bodies.VerifyRequest)
        keys = body.keys
        client = self._client(grant, body.client)
        if len(keys) == 1:  # the checkout case: the engine's single-key path
            results = [self.vault.verify(keys[0], client=client)]
        else:
            results = self.vault.verify_many(keys, client=client)
        self.metrics.keys("verify", results)
        return 200, results_body(results), _JSON

    async def redeem(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/redeem: answered once the redemption is on disk."""
        body = await self._json(scope, receive, bodies.RedeemRequest)
        item = (body.key, bodies.text(body.order_id, "order_id", MAX_ORDER_ID), self._client(grant, body.client))
        result = (await self._redeems.submit([item]))[0]
        self.metrics.keys("redeem", [result])
        # A receipt signs a key's redeem: a count-limited key's uses before its last (uses_left above 0) are
        # not redeems, so they carry none (and must not be given the last use's, which names another order).
        if (body.receipt and result.status is Status.ACCEPTED and result.serial is not None
                and not result.uses_left):
            return _ok({**result.to_dict(), "receipt": await _off_loop(self.vault.receipt, result.serial)})
        return _ok(result.to_dict())

    async def redeem_many(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/redeem-many: one durable commit carries the whole request (and others with it)."""
        body = await self._json(scope, receive, bodies.RedeemManyRequest)
        client = self._client(grant, body.client)
        triples = [(item.key, bodies.text(item.order_id, f"items[{i}].order_id", MAX_ORDER_ID), client)
                   for i, item in enumerate(body.items)]
        results = await self._redeems.submit(triples) if triples else []
        self.metrics.keys("redeem", results)
        return 200, results_body(results), _JSON

    @property
    def _redeems(self) -> RemoteCommitter:
        if self._committer is None:
            raise Problem("store-unavailable", "the service is starting or stopping; retry in a moment")
        return self._committer

    async def _checkout(self, op: tuple[Any, ...]) -> Any:
        """One hold, confirm or release, committed by the commit process with every worker's others."""
        answer = (await self._redeems.submit([op]))[0]  # type: ignore[list-item]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def hold(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/hold: answered once the hold is on disk."""
        body = await self._json(scope, receive, bodies.HoldRequest)
        order = bodies.text(body.order_id, "order_id", MAX_ORDER_ID)
        result = await self._checkout(Op("hold", body.key, order, body.ttl, self._client(grant, body.client)))
        self.metrics.keys("hold", [result])
        return _ok(result.to_dict())

    async def confirm(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/confirm and POST /v1/release: every key of the order, answered once on disk."""
        body = await self._json(scope, receive, bodies.OrderRequest)
        order = bodies.text(body.order_id, "order_id", MAX_ORDER_ID)
        action = "release" if scope["path"].endswith("/release") else "confirm"
        results = await self._checkout(Op(action, None, order, None))
        self.metrics.keys(action, results)
        return 200, results_body(results), _JSON

    async def orders(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/orders/{order_id}: every key (serial) the order redeemed, holds or held, with times."""
        order = bodies.text(scope["path"][len("/v1/orders/"):], "order_id", MAX_ORDER_ID)
        return _ok(await _off_loop(self.vault.order, order))

    async def webhooks(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/webhooks lists the endpoints (never a secret); POST adds one (a secret made is answered once)."""
        if scope["method"] == "GET":
            return _ok({"endpoints": await _off_loop(self.vault.webhooks.list)})
        body = await self._json(scope, receive, bodies.WebhookRequest)
        record = await _off_loop(self.vault.webhooks.add, body.url, list(body.events), body.secret)
        if body.secret is not None:  # the caller has it: never sent back
            record = {k: v for k, v in record.items() if k != "secret"}
        return _ok(record)

    async def webhook_stats(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/webhooks/stats: per endpoint, delivered, pending, failing, last error."""
        return _ok({"endpoints": await _off_loop(self.vault.webhooks.stats)})

    async def webhook(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """DELETE /v1/webhooks/{endpoint}; POST /v1/webhooks/{endpoint}/pause, /resume, /replay (body: since)."""
        endpoint, _, action = scope["path"][len("/v1/webhooks/"):].partition("/")
        if not _ENDPOINT_ID.fullmatch(endpoint):
            raise Problem("not-found", "no such webhook endpoint (ids look like ep_ and 16 hex digits): "
                                       "GET /v1/webhooks lists them")
        hooks = self.vault.webhooks
        if action == "replay":
            body = await self._json(scope, receive, bodies.ReplayRequest)
            since = _when(body.since, "since")
            assert since is not None
            return _ok(await _off_loop(hooks.replay, endpoint, since))
        change = {"": hooks.remove, "pause": hooks.pause, "resume": hooks.resume}[action]
        return _ok(await _off_loop(change, endpoint))

    async def void(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/void."""
        body = await self._json(scope, receive, bodies.VoidRequest)
        reason = bodies.text(body.reason, "reason", MAX_REASON)
        result = await _off_loop(self.vault.void, body.key, reason)
        return _ok(result.to_dict())

    async def blacklist(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/blacklist (add); POST /v1/blacklist/lift, or DELETE /v1/blacklist, lifts (with a reason too)."""
        body = await self._json(scope, receive, bodies.BlacklistRequest)
        reason = bodies.text(body.reason, "reason", MAX_REASON)
        lifting = scope["method"] == "DELETE" or scope["path"].endswith("/lift")
        change = self.vault.blacklist.lift if lifting else self.vault.blacklist.add
        entry = (await _off_loop(change, body.level, body.target, reason)).to_dict()
        if body.level is Level.SERIAL:  # stored as the key's entry (level key); answered as asked
            entry["level"] = Level.SERIAL.value
        return _ok(entry)

    async def stats(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/stats; with ?since=&until= (ISO 8601, UTC) and/or daily=1, the redeems and voids of that window."""
        query = _query(scope, ("since", "until", "daily"))
        if not query:
            return _ok(await _off_loop(self.vault.stats))
        daily = query.get("daily", "0")
        if daily not in ("0", "1", "true", "false"):
            raise Problem("invalid-request", "daily is 1 or 0")
        since, until = _when(query.get("since"), "since"), _when(query.get("until"), "until")
        return _ok(await _off_loop(lambda: self.vault.activity(since, until, daily=daily in ("1", "true"))))

    async def listing(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/batches, /v1/manifests, /v1/blacklist, /v1/tokens: one page (?limit=1..1000&after=CURSOR)."""
        query = _query(scope, ("limit", "after"))
        limit = query.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise Problem("invalid-request", "limit is a whole number from 1 to 1000")
        what = scope["path"][len("/v1/"):]
        return _ok(await _off_loop(lambda: self.vault.page(what, after=query.get("after"), limit=int(limit))))

    async def trace(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/trace/{serial}, with ?bundle=1 the offline bundle (`keyvault verify-bundle` checks it)."""
        serial = scope["path"][len("/v1/trace/"):]
        if not looks_like_serial(serial):
            raise Problem("invalid-request", "trace takes a key's public serial (like 7KQ2-00A-0003F), never the "
                          "key: keys must not travel in URLs")
        query = scope.get("query_string", b"").decode("latin-1")
        bundle = any(part in ("bundle=1", "bundle=true") for part in query.split("&"))
        story = self.vault.trace_bundle if bundle else self.vault.trace
        return _ok(await _off_loop(story, serial))

    async def receipt(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/receipts/{serial}: the signed receipt of a redeemed key (404 when it was not redeemed here)."""
        serial = scope["path"][len("/v1/receipts/"):]
        if not looks_like_serial(serial):
            raise Problem("invalid-request", "receipts are found by the key's public serial (like 7KQ2-00A-0003F), "
                          "never the key: keys must not travel in URLs")
        return _ok({"serial": serial, "receipt": await _off_loop(self.vault.receipt, serial)})

    async def manifests(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/manifests: a supplier's signed manifest file, imported all or nothing."""
        _content_type(scope, (b"application/octet-stream",), "application/octet-stream")
        handle, name = tempfile.mkstemp(prefix="manifest-", suffix=".upload")
        try:
            with os.fdopen(handle, "wb") as out:
                async for chunk in _chunks(receive, MAX_MANIFEST, f"a manifest upload is at most {MAX_MANIFEST} "
                                           "bytes; import bigger ones with `keyvault manifest import` on the "
                                           "store's host"):
                    out.write(chunk)
            try:
                info, new = await _off_loop(self.vault.import_manifest, name)
            except KeyvaultError as exc:  # its message names the temporary file: name the upload instead
                refused = from_error(exc)
                raise Problem(refused.name, refused.detail.replace(name, "the uploaded manifest")) from None
        finally:
            os.unlink(name)
        return _ok({**info.to_dict(), "new": new})

    async def log_checkpoint(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/log/checkpoint: the newest signed checkpoint with its cosignatures (C2SP tlog-tiles)."""
        return 200, newest_checkpoint(self.vault.engine)[1], _TEXT

    async def log_tile(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/log/tile/<L>/<N>[.p/<W>] and /v1/log/tile/entries/<N>[.p/<W>] (C2SP tlog-tiles)."""
        try:
            data = await _off_loop(read_tile, self.vault.engine, scope["path"][len("/v1/log/"):])
        except ProofError as exc:
            raise Problem("not-found", str(exc)) from None
        return 200, data, b"application/octet-stream"

    async def log_consistency(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/log/consistency?old=N&new=M: the RFC 9162 consistency proof, one base64 hash a line."""
        query = dict(p.partition("=")[::2] for p in scope.get("query_string", b"").decode("latin-1").split("&"))
        newest = newest_checkpoint(self.vault.engine)[0]
        try:
            old, new = int(query.get("old", "")), int(query.get("new") or newest)
        except ValueError:
            raise Problem("invalid-request", "give ?old=N (and optionally &new=M), sizes in events") from None
        return 200, encode_proof(await _off_loop(consistency_proof, self.vault.engine, old, new)).encode(), _TEXT

    async def witness_add_checkpoint(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """POST /v1/witness/add-checkpoint: this node's witness cosigns consistent growth (C2SP tlog-witness)."""
        witness = _WITNESSES.get(self.options.store)
        if witness is None:
            witness = await _off_loop(node_witness, self.options.store)
            if witness is None:
                raise Problem("not-found", "this node is no witness: start it with KEYVAULT_WITNESS_IDENTITY (a "
                                           "`keyvault witness init` file) and KEYVAULT_WITNESS_LOGS (the logs' keys)")
            witness = _WITNESSES.setdefault(self.options.store, witness)
        body = await self._body(scope, receive, witness.max_request)
        answer = await _off_loop(witness.add_checkpoint, body)
        return answer.status, answer.body, answer.content_type.encode()

    async def healthz(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /healthz: 200 when the store answers reads."""
        self.vault.catalog()
        return _ok({"status": "ok"})

    async def prometheus(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /metrics."""
        return 200, self.metrics.render().encode(), b"text/plain; version=0.0.4; charset=utf-8"

    async def openapi(self, scope: Scope, receive: Receive, grant: Grant | None) -> Answer:
        """GET /v1/openapi.json."""
        return 200, self._openapi, _JSON


#: This process's node witness per store (its state is on disk, shared by the workers under a file lock).
_WITNESSES: dict[Path, LogWitness] = {}

#: path -> {method: (handler, scope needed or None for no token)}
ROUTES: dict[str, dict[str, tuple[Handler, str | None]]] = {
    "/v1/verify": {"POST": (Service.verify, "verify")},
    "/v1/redeem": {"POST": (Service.redeem, "redeem")},
    "/v1/redeem-many": {"POST": (Service.redeem_many, "redeem")},
    "/v1/hold": {"POST": (Service.hold, "redeem")},
    "/v1/confirm": {"POST": (Service.confirm, "redeem")},
    "/v1/release": {"POST": (Service.confirm, "redeem")},
    "/v1/orders/{order_id}": {"GET": (Service.orders, "redeem")},
    "/v1/webhooks": {"GET": (Service.webhooks, "admin"), "POST": (Service.webhooks, "admin")},
    "/v1/webhooks/stats": {"GET": (Service.webhook_stats, "admin")},
    "/v1/webhooks/{endpoint}": {"DELETE": (Service.webhook, "admin")},
    "/v1/webhooks/{endpoint}/pause": {"POST": (Service.webhook, "admin")},
    "/v1/webhooks/{endpoint}/resume": {"POST": (Service.webhook, "admin")},
    "/v1/webhooks/{endpoint}/replay": {"POST": (Service.webhook, "admin")},
    "/v1/void": {"POST": (Service.void, "admin")},
    "/v1/blacklist": {"POST": (Service.blacklist, "admin"), "DELETE": (Service.blacklist, "admin"),
                      "GET": (Service.listing, "admin")},
    "/v1/blacklist/lift": {"POST": (Service.blacklist, "admin")},
    "/v1/stats": {"GET": (Service.stats, "admin")},
    "/v1/trace/{serial}": {"GET": (Service.trace, "redeem")},
    "/v1/receipts/{serial}": {"GET": (Service.receipt, "redeem")},
    "/v1/manifests": {"POST": (Service.manifests, "admin"), "GET": (Service.listing, "admin")},
    "/v1/batches": {"GET": (Service.listing, "admin")},
    "/v1/tokens": {"GET": (Service.listing, "admin")},
    "/v1/openapi.json": {"GET": (Service.openapi, None)},
    "/v1/log/checkpoint": {"GET": (Service.log_checkpoint, None)},
    "/v1/log/tile/{path}": {"GET": (Service.log_tile, None)},
    "/v1/log/consistency": {"GET": (Service.log_consistency, None)},
    "/v1/witness/add-checkpoint": {"POST": (Service.witness_add_checkpoint, None)},
    "/healthz": {"GET": (Service.healthz, None)},
    "/metrics": {"GET": (Service.prometheus, None)},
}


def _route(scope: Scope) -> tuple[str, Handler, str | None]:
    """(route template, handler, scope needed) for a request, or a 404/405 problem."""
    path = scope["path"]
    route = "/v1/trace/{serial}" if path.startswith("/v1/trace/") and path.count("/") == 3 else path
    route = _TILES if path.startswith("/v1/log/tile/") else route
    if path.startswith("/v1/receipts/") and path.count("/") == 3:
        route = "/v1/receipts/{serial}"
    if path.startswith("/v1/orders/") and len(path) > len("/v1/orders/"):
        route = "/v1/orders/{order_id}"  # an order id may hold '/': everything after the prefix
    if path.startswith("/v1/webhooks/") and path != "/v1/webhooks/stats":
        endpoint, _, action = path[len("/v1/webhooks/"):].partition("/")
        if endpoint and (not action or action in ("pause", "resume", "replay")):
            route = "/v1/webhooks/{endpoint}" + (f"/{action}" if action else "")
    methods = ROUTES.get(route)
    if methods is None:
        raise Problem("not-found", "no such path; GET /v1/openapi.json lists the API")
    entry = methods.get(scope["method"])
    if entry is None:
        allowed = ", ".join(methods)
        raise Problem("method-not-allowed", f"use {allowed} on this path", [(b"allow", allowed.encode())])
    return route, entry[0], entry[1]


async def _chunks(receive: Receive, limit: int, too_large: str) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive: 413 (``too_large``) past ``limit`` bytes, _Gone on a disconnect."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Problem("body-too-large", too_large)
        yield chunk
        if not message.get("more_body", False):
            return


def _content_type(scope: Scope, accepted: tuple[bytes, ...], wanted: str) -> None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            if value.split(b";", 1)[0].strip().lower() in accepted:
                return
            break
    raise Problem("unsupported-media-type", f"send the body with 'Content-Type: {wanted}'")


def _query(scope: Scope, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string's parameters (each at most once, each one of ``allowed``), or a 422 problem."""
    raw = scope.get("query_string", b"").decode("latin-1")
    try:
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw), max_num_fields=10)
    except ValueError:
        raise Problem("invalid-request", "the query string cannot be read") from None
    found: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed or name in found:
            raise Problem("invalid-request", f"this path takes the query parameters {', '.join(allowed)}, each "
                                             "at most once")
        found[name] = value
    return found


def _when(value: str | None, name: str) -> int | None:
    """An ISO 8601 date or time (UTC unless it says otherwise) in ms since the epoch, or a 422 problem."""
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Problem("invalid-request", f"{name} is an ISO 8601 date or time, like 2026-12-01 or "
                                         "2026-12-01T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _ok(doc: Any) -> Answer:
    """A 200 answer: ``doc`` as JSON (a typed report as its ``to_dict()``)."""
    return 200, json.dumps(doc, ensure_ascii=False, default=_to_dict).encode("utf-8"), _JSON


def _to_dict(value: Any) -> Any:
    """json's fallback: the JSON form of a typed report."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON")


async def _off_loop(work: Callable[..., Any], *args: Any) -> Any:
    """Run a call that may write (and so fsync) on the loop's thread pool."""
    return await asyncio.get_running_loop().run_in_executor(None, work, *args)


def create_app() -> Service:
    """The application for a worker, configured from the environment the ``serve`` command set."""
    store = os.environ.get("KEYVAULT_SERVICE_STORE")
    if not store:
        raise KeyvaultError("start the service with `keyvault --store DIR serve`")
    pepper = os.environ.get("KEYVAULT_SERVICE_PEPPER_FILE")
    run_dir = os.environ.get("KEYVAULT_SERVICE_RUN_DIR")
    commits = os.environ.get("KEYVAULT_SERVICE_COMMIT_SOCKET")
    if not commits:
        raise KeyvaultError("start the service with `keyvault --store DIR serve`: it starts the commit process")
    return Service(Options(Path(store), Path(commits), Path(pepper) if pepper else None,
                           Path(run_dir) if run_dir else None,
                           access_log=os.environ.get("KEYVAULT_SERVICE_ACCESS_LOG", "1") == "1",
                           log_format=os.environ.get("KEYVAULT_SERVICE_LOG_FORMAT", "text")))
