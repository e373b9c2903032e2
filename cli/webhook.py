"""``keyvault webhook``: endpoints that are told of every change, signed per Standard Webhooks."""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path
from typing import Any

import click

from keyvault.engine import EVENT_KINDS

from .output import State, emit, handle_errors, json_option

_TIMES = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%SZ"]


def _line(e: dict[str, Any]) -> str:
    state = "paused" if e["paused"] else "active"
    return f"{e['id']}  {state:6}  {','.join(e['events'])}  {e['url']}"


@click.group()
def webhook() -> None:
    """Webhook endpoints: told of every redeem, void, blacklist... at least once, in order, signed."""


@webhook.command("add")
@click.argument("url")
@click.option("--events", required=True, help=f"Comma-separated, among: {', '.join(EVENT_KINDS)}.")
@click.option("--secret-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A file holding the endpoint's secret (whsec_...).")
@click.option("--generate-secret", is_flag=True, help="Make a secret and print it once: give it to the receiver.")
@json_option
@click.pass_obj
@handle_errors
def add(state: State, url: str, events: str, secret_file: Path | None, generate_secret: bool, as_json: bool) -> None:
    """Send URL the events chosen, from now on (`webhook replay` sends earlier ones)."""
    if (secret_file is None) == (not generate_secret):
        raise click.UsageError("give the endpoint's secret with --secret-file F, or --generate-secret to make one")
    secret = secret_file.read_text().strip() if secret_file is not None else None
    record = state.vault().webhooks.add(url, events, secret)
    shown = {k: v for k, v in record.items() if k != "secret" or generate_secret}
    emit(as_json, shown, f"webhook endpoint {record['id']} added: {_line(record)}")
    if generate_secret and not as_json:
        click.echo(f"secret (shown only now; give it to the receiver): {record['secret']}")


@webhook.command("list")
@json_option
@click.pass_obj
@handle_errors
def list_(state: State, as_json: bool) -> None:
    """Every endpoint (never its secret)."""
    rows = state.vault().webhooks.list()
    emit(as_json, rows, "\n".join(_line(e) for e in rows) or "no webhook endpoints")


def _simple(name: str, verb: str, doc: str) -> None:
    @webhook.command(name, help=doc)
    @click.argument("endpoint")
    @json_option
    @click.pass_obj
    @handle_errors
    def command(state: State, endpoint: str, as_json: bool) -> None:
        record = getattr(state.vault().webhooks, name)(endpoint)
        emit(as_json, record, f"webhook endpoint {endpoint} {verb}")


_simple("remove", "removed", "Remove an endpoint: nothing more is sent to it.")
_simple("pause", "paused", "Stop sending to an endpoint; its events wait until `webhook resume`.")
_simple("resume", "resumed", "Send to a paused endpoint again, from where it stopped.")


@webhook.command("replay")
@click.argument("endpoint")
@click.option("--since", required=True, type=click.DateTime(_TIMES), help="UTC date/time: every event from then on.")
@json_option
@click.pass_obj
@handle_errors
def replay(state: State, endpoint: str, since: dt.datetime, as_json: bool) -> None:
    """Send an endpoint every event since a time again (with their first ids: receivers may skip them)."""
    since_ms = int(since.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
    record = state.vault().webhooks.replay(endpoint, since_ms)
    emit(as_json, record, f"webhook endpoint {endpoint} will be sent every event from index {record['cursor']}")


@webhook.command("stats")
@json_option
@click.pass_obj
@handle_errors
def stats(state: State, as_json: bool) -> None:
    """Per endpoint: delivered, pending, failing, last error."""
    rows = state.vault().webhooks.stats()
    lines = [f"{r['id']}  delivered {r['delivered']}  pending {r['pending']}"
             f"{'  paused' if r['paused'] else ''}"
             f"{'  FAILING since ' + str(r['failing_since']) + ': ' + str(r['last_error']) if r['failing'] else ''}"
             f"  {r['url']}" for r in rows]
    emit(as_json, rows, "\n".join(lines) or "no webhook endpoints")


@webhook.command("run")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for a receiver's answer.")
@click.option("--retry-base", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Seconds before the first retry; doubled after each failure.")
@click.option("--retry-cap", type=click.FloatRange(min=0.01), default=300.0, show_default=True,
              help="The longest wait between retries, in seconds.")
@click.pass_obj
@handle_errors
def run(state: State, timeout: float, retry_base: float, retry_cap: float) -> None:
    """Deliver webhooks until SIGTERM/SIGINT (`keyvault serve` does this itself)."""
    from keyvault.service.delivery import Delivery

    delivery = Delivery(state.vault(), timeout=timeout, retry_base=retry_base, retry_cap=retry_cap)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: delivery.stopping.set())
    click.echo(f"keyvault: delivering webhooks of {state.store}", err=True)
    delivery.run()
