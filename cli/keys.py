"""``keyvault verify``, ``redeem`` and ``void``: one key or many, never echoed.

Each takes keys as arguments, from ``--file FILE``, or from stdin (``-``), one per line; input is
read in chunks of at most ``_CHUNK`` lines, each line at most ``MAX_LINE`` bytes, so memory stays
bounded however large the input is. A chunk is read and checked whole before anything in it is done.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO

import click

from keyvault import Result, Status

from .output import EXIT_REFUSED, State, emit, handle_errors, json_option

_CHUNK = 1000  # keys per transaction when streaming
#: Longest input line read (bytes): a key, an imported card:password, or KEY,ORDER with its order id.
MAX_LINE = 1024
_HOW = "give keys as arguments, or --file FILE, or '-' for stdin"


def _line(result: Result, where: str) -> str:
    """One human line about a result: serial (never the key), status, why."""
    who = result.serial or where
    extra = []
    if result.supplier_name:
        extra.append(f"{result.supplier_name}, {result.product}")
    if result.message:
        extra.append(result.message)
    return f"{who}  {result.status.value}" + (f"  ({'; '.join(extra)})" if extra else "")


def stdin_key() -> str:
    """The one non-blank line of stdin (bounded, UTF-8), for commands that take one key; UsageError otherwise."""
    lines = read_lines(sys.stdin.buffer, "stdin")
    key = next(lines, None)
    if key is None:
        raise click.UsageError("no key given: stdin is empty or holds only blank lines")
    if next(lines, None) is not None:
        raise click.UsageError("stdin holds more than one line: this command takes one key; give one key per "
                               "run (`keyvault verify`, `redeem` and `void` take many); nothing was done")
    return key


def read_lines(stream: IO[bytes], where: str) -> Iterator[str]:
    """The non-blank lines of a byte stream, stripped; UsageError for a line that is too long or not UTF-8."""
    number = 0
    while raw := stream.readline(MAX_LINE + 1):
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            raise click.UsageError(f"line {number} of {where} is longer than {MAX_LINE} bytes: it is not a key "
                                   "(one key per line); nothing from that line on was done")
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise click.UsageError(f"line {number} of {where} is not UTF-8 text: give keys as text, one per "
                                   "line; nothing from that line on was done") from None
        if text:
            yield text


def _source(keys: tuple[str, ...], key_file: IO[bytes] | None) -> Iterator[str]:
    """Keys (or KEY,ORDER items) from the arguments, --file, or stdin ('-')."""
    if keys == ("-",):
        keys, key_file = (), sys.stdin.buffer
    if keys and key_file is not None:
        raise click.UsageError(f"{_HOW} (one of them)")
    if key_file is None:
        if not keys:
            raise click.UsageError(f"no key given: {_HOW}")
        return iter(keys)
    name = getattr(key_file, "name", None)
    where = str(name) if isinstance(name, str) and name not in ("-", "<stdin>") else "stdin"
    return read_lines(key_file, where)


def _chunks(items: Iterator[str]) -> Iterator[list[str]]:
    """Lists of at most _CHUNK items; UsageError when there is none at all (an empty file, blank lines)."""
    first = True
    while chunk := list(islice(items, _CHUNK)):
        first = False
        yield chunk
    if first:
        raise click.UsageError(f"no key given: the input is empty or holds only blank lines; {_HOW}")


def _finish(refused: int, n: int, as_json: bool) -> None:
    if refused:
        if not as_json:
            click.echo(f"{refused} of {n} keys refused", err=True)
        sys.exit(EXIT_REFUSED)


def _file_option(help_text: str):  # type: ignore[no-untyped-def]
    return click.option("--file", "key_file", type=click.File("rb"), help=help_text)


@click.command()
@click.argument("keys", nargs=-1)
@_file_option("Read keys from a file, one per line ('-' for stdin).")
@click.option("--client", help="Who is asking (an account, an IP): throttled after too many refusals.")
@json_option
@click.pass_obj
@handle_errors
def verify(state: State, keys: tuple[str, ...], key_file: IO[bytes] | None, client: str | None,
           as_json: bool) -> None:
    """Check keys without spending them. Keys as arguments, from --file, or '-' for stdin.

    Prefer --file or stdin: arguments show in process lists and shell history.
    """
    source = _source(keys, key_file)
    vault = state.vault()
    refused = n = 0
    for chunk in _chunks(source):
        for result in vault.verify_many(chunk, client=client):
            n += 1
            refused += not result.ok
            emit(as_json, result.to_dict(), _line(result, f"key {n}"))
        sys.stdout.flush()
    _finish(refused, n, as_json)


def _orders(items: Iterable[str], order_id: str | None) -> Iterator[tuple[str, str]]:
    """(key, order id) pairs from KEY,ORDER items, or one key and --order."""
    for number, item in enumerate(items, start=1):
        if order_id is not None:
            if number > 1:
                raise click.UsageError("--order names the order of a single key; for many keys give "
                                       "KEY,ORDER lines instead; nothing was redeemed")
            if "," in item:
                raise click.UsageError("give either KEY,ORDER or --order, not both; nothing was redeemed")
            yield item, order_id
            continue
        key, comma, order = item.partition(",")
        if not comma or not key.strip() or not order.strip():
            raise click.UsageError(f"item {number} has no order id: give KEY,ORDER (one per line), or --order "
                                   "ORDER for a single key; nothing from that item on was redeemed")
        yield key.strip(), order.strip()


@click.command()
@click.argument("keys", nargs=-1)
@_file_option("Read KEY,ORDER lines from a file ('-' for stdin).")
@click.option("--order", "order_id", help="The order a single key pays for (retries use the same id); "
              "for many keys give KEY,ORDER instead.")
@click.option("--client", help="Who is asking (an account, an IP): throttled after too many refusals.")
@json_option
@click.pass_obj
@handle_errors
def redeem(state: State, keys: tuple[str, ...], key_file: IO[bytes] | None, order_id: str | None,
           client: str | None, as_json: bool) -> None:
    """Spend keys for orders, durably: KEY,ORDER as arguments, from --file, or '-' for stdin; or one key and --order.

    Retrying an order gets the same answer. Exit 3 if any key is refused.
    """
    pairs = _orders(_source(keys, key_file), order_id)
    vault = state.vault()
    refused = n = 0
    while chunk := list(islice(pairs, _CHUNK)):  # the whole chunk is parsed before any key is redeemed
        for result, (_, order) in zip(vault.redeem_many(chunk, client=client), chunk):
            n += 1
            refused += not result.ok
            emit(as_json, result.to_dict(), _line(result, f"key {n}") + (f"  order {order}" if result.ok else ""))
        sys.stdout.flush()
    if n == 0:
        raise click.UsageError(f"no key given: the input is empty or holds only blank lines; {_HOW}")
    _finish(refused, n, as_json)


@click.command()
@click.argument("keys_or_serials", nargs=-1)
@_file_option("Read keys or serials from a file, one per line ('-' for stdin).")
@click.option("--reason", required=True, help="Why (refund, recall, ...): kept in each key's history.")
@json_option
@click.pass_obj
@handle_errors
def void(state: State, keys_or_serials: tuple[str, ...], key_file: IO[bytes] | None, reason: str,
         as_json: bool) -> None:
    """Withdraw unused keys, by key or serial: as arguments, from --file, or '-' for stdin.

    A redeemed key cannot be voided. Exit 3 if any is refused.
    """
    source = _source(keys_or_serials, key_file)
    vault = state.vault()
    refused = n = 0
    for chunk in _chunks(source):
        for item in chunk:
            result = vault.void(item, reason)
            n += 1
            refused += result.status is not Status.VOID
            emit(as_json, result.to_dict(), _line(result, f"key {n}"))
        sys.stdout.flush()
    _finish(refused, n, as_json)
