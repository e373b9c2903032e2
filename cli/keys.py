"""``keyvault verify``, ``redeem`` and ``void``: one key or many, never echoed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice
from typing import IO

import click

from keyvault import Result, Status

from .output import EXIT_REFUSED, State, emit, handle_errors, json_option

_CHUNK = 1000  # keys verified per transaction when streaming


def _line(result: Result, where: str) -> str:
    """One human line about a result: serial (never the key), status, why."""
    who = result.serial or where
    extra = []
    if result.supplier_name:
        extra.append(f"{result.supplier_name}, {result.product}")
    if result.message:
        extra.append(result.message)
    return f"{who}  {result.status.value}" + (f"  ({'; '.join(extra)})" if extra else "")


def _lines(stream: IO[str]) -> Iterator[str]:
    for raw in stream:
        text = raw.strip()
        if text:
            yield text


@click.command()
@click.argument("keys", nargs=-1)
@click.option("--file", "key_file", type=click.File("r", encoding="utf-8"),
              help="Read keys from a file, one per line ('-' for stdin).")
@click.option("--client", help="Who is asking (an account, an IP): throttled after too many refusals.")
@json_option
@click.pass_obj
@handle_errors
def verify(state: State, keys: tuple[str, ...], key_file: IO[str] | None, client: str | None, as_json: bool) -> None:
    """Check keys without spending them. Keys as arguments, from --file, or '-' for stdin.

    Prefer --file or stdin: arguments show in process lists and shell history.
    """
    if keys == ("-",):
        key_file, keys = sys.stdin, ()
    if bool(keys) == bool(key_file):
        raise click.UsageError("give keys as arguments, or --file FILE, or '-' for stdin (one of them)")
    vault = state.vault()
    source: Iterator[str] = iter(keys) if keys else _lines(key_file)  # type: ignore[arg-type]
    refused = 0
    n = 0
    while chunk := list(islice(source, _CHUNK)):
        for result in vault.verify_many(chunk, client=client):
            n += 1
            refused += not result.ok
            emit(as_json, result.to_dict(), _line(result, f"key {n}"))
        sys.stdout.flush()
    if refused:
        if not as_json:
            click.echo(f"{refused} of {n} keys refused", err=True)
        sys.exit(EXIT_REFUSED)


def _read_key(key: str) -> str:
    return sys.stdin.readline().strip() if key == "-" else key


@click.command()
@click.argument("key")
@click.option("--order", "order_id", required=True, help="The order this key pays for (retries use the same id).")
@click.option("--client", help="Who is asking (an account, an IP): throttled after too many refusals.")
@json_option
@click.pass_obj
@handle_errors
def redeem(state: State, key: str, order_id: str, client: str | None, as_json: bool) -> None:
    """Spend a key for an order, durably ('-' reads the key from stdin). Retrying an order gets the same answer."""
    result = state.vault().redeem(_read_key(key), order_id, client=client)
    emit(as_json, result.to_dict(), _line(result, "key") + (f"  order {order_id}" if result.ok else ""))
    if not result.ok:
        sys.exit(EXIT_REFUSED)


@click.command()
@click.argument("key_or_serial")
@click.option("--reason", required=True, help="Why (refund, recall, ...): kept in the key's history.")
@json_option
@click.pass_obj
@handle_errors
def void(state: State, key_or_serial: str, reason: str, as_json: bool) -> None:
    """Withdraw an unused key by key or serial ('-' reads stdin); a redeemed key cannot be voided."""
    result = state.vault().void(_read_key(key_or_serial), reason)
    emit(as_json, result.to_dict(), _line(result, "key"))
    if result.status is not Status.VOID:
        sys.exit(EXIT_REFUSED)
