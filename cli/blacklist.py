"""``keyvault blacklist``: refuse keys, batches or suppliers (and lift it, with a reason)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .keys import stdin_key
from .output import State, emit, handle_errors, json_option

F = TypeVar("F", bound=Callable[..., Any])


def target_options(f: F) -> F:
    """Exactly one of --key, --serial, --batch, --supplier, and --reason."""
    for name, help_ in (("supplier", "A supplier id or issuer prefix."), ("batch", "A batch id, like 7KQ2-00A."),
                        ("serial", "A serial, like 7KQ2-00A-0003F."), ("key", "A key ('-' reads it from stdin).")):
        f = click.option(f"--{name}", help=help_)(f)
    return click.option("--reason", required=True, help="Why: shown on every refusal and kept in history.")(f)


def _target(key: str | None, serial: str | None, batch: str | None, supplier: str | None) -> tuple[str, str]:
    given = [(level, value) for level, value in (("key", key), ("serial", serial), ("batch", batch),
                                                 ("supplier", supplier)) if value is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --key, --serial, --batch or --supplier")
    level, value = given[0]
    if level == "key" and value == "-":
        value = stdin_key()
    return level, value


@click.group()
def blacklist() -> None:
    """Refuse a key, serial, batch or supplier from the next verify on, in every process."""


@blacklist.command("add")
@target_options
@json_option
@click.pass_obj
@handle_errors
def add(state: State, key: str | None, serial: str | None, batch: str | None, supplier: str | None, reason: str,
        as_json: bool) -> None:
    """Blacklist a key, serial, batch or supplier."""
    entry = state.vault().blacklist(*_target(key, serial, batch, supplier), reason)
    emit(as_json, entry.to_dict(), f"blacklisted {entry.level} {entry.target}: {entry.reason}")


@blacklist.command("lift")
@target_options
@json_option
@click.pass_obj
@handle_errors
def lift(state: State, key: str | None, serial: str | None, batch: str | None, supplier: str | None, reason: str,
         as_json: bool) -> None:
    """Lift a blacklist entry (the reason is kept in history)."""
    entry = state.vault().blacklist.lift(*_target(key, serial, batch, supplier), reason)
    emit(as_json, entry.to_dict(), f"lifted blacklist on {entry.level} {entry.target}: {entry.reason}")


# `blacklist remove`: the same command under its earlier name, kept for scripts that use it.
_remove = copy.copy(lift)
_remove.hidden = True
blacklist.add_command(_remove, "remove")


@blacklist.command("list")
@json_option
@click.pass_obj
@handle_errors
def list_(state: State, as_json: bool) -> None:
    """Every blacklist entry."""
    entries = state.vault().blacklist_entries()
    if as_json:
        emit(True, [e.to_dict() for e in entries], "")
    elif not entries:
        click.echo("the blacklist is empty")
    else:
        for e in entries:
            click.echo(f"{e.level:8} {e.target:18} since {e.at}  {e.reason}")
