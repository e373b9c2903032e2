"""``keyvault serve`` and ``keyvault token``: the HTTP service for platforms (docs/service.md)."""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click

from keyvault import Scope
from keyvault.service.limits import Limits

from .config import effective, parse_bind, serve_options
from .output import State, emit, handle_errors, json_option


@click.command()
@serve_options
@click.pass_context
@handle_errors
def serve(ctx: click.Context, config_file: Path | None, **_: Any) -> None:
    """Serve the HTTP JSON API until SIGTERM; put a TLS-terminating proxy in front of it.

    Settings come from flags, then environment variables, then the --config file, then the defaults:
    `keyvault config show` prints the result.
    """
    from keyvault.service import server

    settings, _path = effective(ctx, config_file)
    value = {key: setting.value for key, setting in settings.items()}
    state: State = ctx.obj
    state.store, state.pepper_file = value["store"], value["pepper_file"]
    if state.store is None:
        raise click.UsageError("no store given: pass --store DIR, set KEYVAULT_STORE, or set store in the "
                               "--config file")
    bind = value["serve.bind"]
    host, port = parse_bind(bind)
    workers, log_format = value["serve.workers"], value["serve.log_format"]
    limits = Limits(**{name: value[f"serve.{name}"] for name in Limits.__dataclass_fields__})
    if log_format == "json":  # the lines below, as every other line of the service
        logging.config.dictConfig(server.log_config("json"))
        say: Callable[[str], None] = logging.getLogger("keyvault.service").info
    else:
        say = partial(click.echo, err=True)
    tokens = server.check(state.store, state.pepper_file, host)
    if tokens == 0:
        say("keyvault: no tokens yet, so every /v1 request will get 401: create one with `keyvault token create`")

    def ready() -> None:  # the port is ours: said only now, so a port in use never reads as "serving"
        say(f"keyvault: serving {state.store} on http://{bind} with {workers} worker(s)")

    if not server.serve(state.store, state.pepper_file, host, port, workers, access_log=value["serve.access_log"],
                        limits=limits, ready=ready, log_format=log_format):
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
