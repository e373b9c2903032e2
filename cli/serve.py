"""``keyvault serve`` and ``keyvault token``: the HTTP service for platforms (docs/service.md)."""

from __future__ import annotations

import sys

import click

from keyvault import Scope
from keyvault.service.limits import Limits

_LIMITS = Limits()  # the defaults

from .output import State, emit, handle_errors, json_option


def _bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise click.BadParameter("use HOST:PORT, like 127.0.0.1:8080")
    return host.strip("[]"), int(port)


@click.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (one per core is a good start).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log method, route, status and time of every request on stderr.")
@click.option("--max-header-bytes", default=_LIMITS.max_header_bytes, show_default=True,
              type=click.IntRange(1024, 1 << 20),
              help="Bytes of a request's line and headers; beyond: 431.")
@click.option("--max-headers", default=_LIMITS.max_headers, show_default=True,
              type=click.IntRange(8, 10_000),
              help="Header lines of a request; beyond: 431.")
@click.option("--max-request-line", default=_LIMITS.max_request_line, show_default=True,
              type=click.IntRange(256, 1 << 20),
              help="Bytes of a request's target (path and query); beyond: 414.")
@click.option("--header-timeout", default=_LIMITS.header_timeout, show_default=True,
              type=click.FloatRange(0.1, 3600),
              help="Seconds from a request's first byte to the end of its headers; beyond: 408, closed.")
@click.option("--body-timeout", default=_LIMITS.body_timeout, show_default=True,
              type=click.FloatRange(0.1, 3600),
              help="Seconds for a request body, plus one for each 64 KiB received; beyond: 408, closed.")
@click.option("--keep-alive", default=_LIMITS.keep_alive, show_default=True,
              type=click.FloatRange(0.1, 3600),
              help="Seconds a connection may stay idle, before its first request too; then it is closed.")
@click.option("--max-connections", default=_LIMITS.max_connections, show_default=True,
              type=click.IntRange(1, 1_000_000),
              help="Open connections per worker; beyond, the one idle longest is closed.")
@click.option("--backlog", default=_LIMITS.backlog, show_default=True,
              type=click.IntRange(1, 65535),
              help="Connections the kernel queues until a worker accepts them.")
@click.pass_obj
@handle_errors
def serve(state: State, bind: str, workers: int, access_log: bool, max_header_bytes: int, max_headers: int,
          max_request_line: int, header_timeout: float, body_timeout: float, keep_alive: float,
          max_connections: int, backlog: int) -> None:
    """Serve the HTTP JSON API until SIGTERM; put a TLS-terminating proxy in front of it."""
    from keyvault.service import server

    if state.store is None:
        raise click.UsageError("no store given: pass --store DIR or set KEYVAULT_STORE")
    host, port = _bind(bind)
    limits = Limits(max_header_bytes=max_header_bytes, max_headers=max_headers, max_request_line=max_request_line,
                    header_timeout=header_timeout, body_timeout=body_timeout, keep_alive=keep_alive,
                    max_connections=max_connections, backlog=backlog)
    tokens = server.check(state.store, state.pepper_file, host)
    if tokens == 0:
        click.echo("keyvault: no tokens yet, so every /v1 request will get 401: "
                   "create one with `keyvault token create`", err=True)

    def ready() -> None:  # the port is ours: said only now, so a port in use never reads as "serving"
        click.echo(f"keyvault: serving {state.store} on http://{bind} with {workers} worker(s)", err=True)

    if not server.serve(state.store, state.pepper_file, host, port, workers, access_log=access_log, limits=limits,
                        ready=ready):
        sys.exit(1)


@click.group()
def token() -> None:
    """Bearer tokens for the HTTP service: create, list, revoke."""


@token.command("create")
@click.option("--name", required=True, help="Who holds it (a platform, a service): used in logs and throttling.")
@click.option("--scope", required=True, type=click.Choice(Scope.names()),
              help="verify < redeem < admin: each allows the ones before it.")
@json_option
@click.pass_obj
@handle_errors
def create(state: State, name: str, scope: str, as_json: bool) -> None:
    """Make a token and print it once: only its hash is stored, so keep it now."""
    secret = state.vault().create_token(name, scope)
    emit(as_json, {"name": name, "scope": scope, "token": secret}, secret)
    if not as_json:
        click.echo(f"token {name} ({scope}) created: this is the only time it is shown", err=True)


@token.command("list")
@json_option
@click.pass_obj
@handle_errors
def list_tokens(state: State, as_json: bool) -> None:
    """Each token's name, scope and creation time (never the token)."""
    rows = state.vault().tokens()
    emit(as_json, rows, "\n".join(f"{r['name']}  {r['scope']}  created {r['created_at']}" for r in rows)
         or "no tokens")


@token.command("revoke")
@click.argument("name")
@json_option
@click.pass_obj
@handle_errors
def revoke(state: State, name: str, as_json: bool) -> None:
    """Revoke a token: every worker refuses it from its next request on."""
    state.vault().revoke_token(name)
    emit(as_json, {"name": name, "revoked": True}, f"token {name} revoked")
