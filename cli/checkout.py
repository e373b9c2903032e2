"""``keyvault hold``, ``confirm`` and ``release``: checkout, one order at a time (docs/service.md, Checkout).

``hold`` takes one key (an argument, or '-' for stdin: arguments show in process lists); ``confirm``
and ``release`` take only the order id, and act on every key the order holds. Exit 3 when a key
is refused (for ``hold``: when the order does not hold the key afterwards).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import click

from keyvault import Result, Status

from .keys import stdin_key
from .output import EXIT_REFUSED, State, emit, handle_errors, json_option

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """Seconds from a length like 90, 90s, 15m, 2h or 1d; UsageError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if match is None:
        raise click.UsageError(f"--ttl {text!r} is not a length: give seconds, or a number and s, m, h or d "
                               "(like 15m); nothing was held")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _line(result: Result) -> str:
    """One human line: serial (never the key), status, and what it means."""
    parts = [f"{result.serial or 'key'}  {result.status.value}"]
    if result.expires_at:
        parts.append(f"until {result.expires_at}")
    if result.redeemed_at and result.status is Status.ACCEPTED:
        parts.append(f"at {result.redeemed_at}")
    if result.uses_left is not None:
        parts.append(f"{result.uses_left} uses left")
    if result.message:
        parts.append(f"({result.message})")
    return "  ".join(parts)


def _emit_all(results: list[Result], as_json: bool, ok: set[Status]) -> None:
    refused = 0
    for result in results:
        refused += result.status not in ok
        emit(as_json, result.to_dict(), _line(result))
    if refused:
        if not as_json:
            click.echo(f"{refused} of {len(results)} keys refused", err=True)
        sys.exit(EXIT_REFUSED)


@click.command()
@click.argument("key")
@click.option("--order", "order_id", required=True, help="The order the key is held for (retries use the same id).")
@click.option("--ttl", default="15m", show_default=True, help="How long the hold lasts: seconds, or 30s, 15m, 2h, 1d.")
@click.option("--client", help="Who is asking (an account, an IP): throttled after too many refusals.")
@json_option
@click.pass_obj
@handle_errors
def hold(state: State, key: str, order_id: str, ttl: str, client: str | None, as_json: bool) -> None:
    """Hold a key for an order while its payment is pending ('-' reads the key from stdin).

    Every other order is refused the key until `keyvault confirm`, `keyvault release` or the end of --ttl.
    Exit 3 unless this order holds the key.
    """
    seconds = parse_ttl(ttl)
    if key == "-":
        key = stdin_key()
    result = state.vault().hold(key, order_id, seconds, client=client)
    emit(as_json, result.to_dict(), _line(result))
    if not result.holds_for(order_id.strip()):
        sys.exit(EXIT_REFUSED)


@click.command()
@click.argument("order_id")
@json_option
@click.pass_obj
@handle_errors
def confirm(state: State, order_id: str, as_json: bool) -> None:
    """Redeem every key ORDER_ID holds (payment arrived); a retry answers the same. Exit 3 if any is refused."""
    _emit_all(state.vault().confirm(order_id), as_json, {Status.ACCEPTED})


@click.command()
@click.argument("order_id")
@json_option
@click.pass_obj
@handle_errors
def release(state: State, order_id: str, as_json: bool) -> None:
    """Give up every hold of ORDER_ID (payment failed): the keys are free for other orders."""
    _emit_all(state.vault().release(order_id), as_json, {Status.RELEASED})


def render_order(doc: dict[str, Any]) -> str:
    """An order's keys and events in plain words."""
    lines = [f"order {doc['order_id']}: {len(doc['keys'])} key(s)"]
    for k in doc["keys"]:
        times = [f"{name.removesuffix('_at')} {k[name]}" for name in ("held_at", "expires_at", "redeemed_at",
                                                                      "released_at", "expired_at", "voided_at")
                 if k.get(name)]
        lines.append(f"  {k['serial']}  {k['state']}  " + ", ".join(times))
    lines.append("  history (each event is in the store's signed, hash-chained log)")
    for e in doc["events"]:
        lines.append(f"    {e['at']}  {e['type']} {e['serial']}")
    return "\n".join(lines)
