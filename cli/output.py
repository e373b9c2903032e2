"""Shared CLI plumbing: the opened vault in ``ctx.obj``, --json, exit codes, errors.

Errors go to stderr. Under ``--json`` an error is one JSON object on one line of stderr (stdout keeps
only results): ``{"error": NAME, "message": ..., "hint": ..., "exit_code": N}``, where NAME is the
exception's class name (``StoreFullError``, ``NotAStoreError``, ``UsageError``, click's
``NoSuchOption``, ...), stable across releases.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from keyvault import KeyvaultError, Vault
from keyvault.files import write_new
from keyvault.errors import (
    CustodyError,
    IdentityError,
    ManifestError,
    NotAStoreError,
    NotFoundError,
    PepperError,
    StoreCorruptError,
    StoreFullError,
    TrustError,
    UsageError,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1  # something failed: the message says what to do
EXIT_USAGE = 2  # the command line itself is wrong (click's own code)
EXIT_REFUSED = 3  # the command ran, and at least one key was refused


@dataclass
class State:
    """What the root group hands every command."""

    store: Path | None
    pepper_file: Path | None
    _vault: Vault | None = field(default=None, repr=False)

    def vault(self, *, authority: bool = True) -> Vault:
        """The store, opened on first use and closed when the command ends (``authority``: see Vault.open)."""
        if self._vault is None:
            if self.store is None:
                raise click.UsageError("no store given: pass --store DIR or set KEYVAULT_STORE")
            self._vault = Vault.open(self.store, pepper_file=self.pepper_file, authority=authority)
            click.get_current_context().call_on_close(self._vault.close)
        return self._vault


def json_option(f: F) -> F:
    """Add --json: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text.")(f)


def emit(as_json: bool, doc: Any, text: str) -> None:
    """Print ``doc`` as JSON, or ``text`` for people."""
    if as_json:
        click.echo(json.dumps(doc, ensure_ascii=False, sort_keys=False))
    else:
        click.echo(text)


# What to do next, per kind of error (the first class in an error's MRO found here).
_HINTS: dict[type[BaseException], str] = {
    StoreFullError: "free space on the disk, then run the command again: nothing was half-written",
    NotAStoreError: "check --store (or KEYVAULT_STORE), or create a store with `keyvault --store DIR init`",
    PepperError: "give the store's own pepper file with --pepper-file (or KEYVAULT_PEPPER_FILE)",
    StoreCorruptError: "run `keyvault --store DIR check`, and restore the store from a backup",
    UsageError: "fix the argument named in the message; `keyvault COMMAND --help` shows every option",
    NotFoundError: "check the name, serial or batch id; `keyvault stats` lists what the store holds",
    IdentityError: "check the identity file's path and mode (0600), or make one with `keyvault supplier init`",
    ManifestError: "get the manifest again from its supplier, unaltered",
    TrustError: "pin the supplier's public identity with `keyvault trust add`, after checking its fingerprint",
    CustodyError: "`keyvault audit` shows the custody records",
    KeyvaultError: "the message says what to do",
    OSError: "check the path, its permissions and the free space, then run the command again",
}


def hint_for(exc: BaseException) -> str:
    """A short 'what to do next' for an error."""
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "keyvault"
        return f"`{where} --help` shows the usage"
    return next((hint for kind in type(exc).__mro__ if (hint := _HINTS.get(kind)) is not None),
                "the message says what to do")


class CommandError(click.ClickException):
    """An error a command reports: its stable name (the exception's class), message, hint and exit code."""

    def __init__(self, name: str, message: str, hint: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.name, self.hint, self.exit_code = name, hint, exit_code


def error_doc(exc: click.ClickException) -> dict[str, Any]:
    """The JSON object an error is printed as under --json."""
    name = exc.name if isinstance(exc, CommandError) else type(exc).__name__
    hint = exc.hint if isinstance(exc, CommandError) else hint_for(exc)
    return {"error": name, "message": exc.format_message(), "hint": hint, "exit_code": exc.exit_code}


def show_json_error(exc: click.ClickException) -> None:
    """Print an error as one JSON object on one line of stderr."""
    click.echo(json.dumps(error_doc(exc), ensure_ascii=False), err=True)


def handle_errors(f: F) -> F:
    """Turn keyvault's errors (and the OS's) into a clean message and exit code 1 (never a traceback)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except KeyvaultError as exc:
            raise CommandError(type(exc).__name__, str(exc), hint_for(exc)) from None
        except OSError as exc:  # a file the command reads or writes (a full disk: StoreFullError above)
            where = f": {exc.filename}" if exc.filename else ""
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # stdout redirected to a full disk, say
                _drop_stdout()
                raise CommandError("StoreFullError", f"no room on the disk{where or ' for the output'}: free some "
                                   "space and run the command again", _HINTS[StoreFullError]) from None
            raise CommandError(type(exc).__name__, f"{exc.strerror or exc}{where}", hint_for(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def write_new_file(path: Path, data: bytes | Iterable[bytes], what: str = "--out") -> None:
    """Write a new file whole or not at all (never overwriting one): a synced temporary file linked into place."""
    try:
        write_new(path, data)
    except FileExistsError:
        raise UsageError(f"{path} already exists; choose another {what} (a file is never overwritten)") from None


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A file's bytes, reading at most ``limit`` of them: UsageError for a larger file (or a device like /dev/zero)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{path} is over {limit:,} bytes, so it is not {what}; check the path")
    return data


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so what is still buffered cannot fail again when the process exits."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def progress(label: str, total: int) -> tuple[Callable[[str, int], None], Callable[[], None]]:
    """A progress bar on stderr for long work: (callback(stage, n), finish)."""
    bars: dict[str, Any] = {}
    if not sys.stderr.isatty():  # scripts get no bar noise
        return (lambda stage, n: None), (lambda: None)

    def report(stage: str, n: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.render_finish()
            names = {"generate": label, "store": "storing records"}
            bar = click.progressbar(length=total, label=names.get(stage, stage), file=sys.stderr,
                                    show_pos=True, show_eta=True, width=30)
            bar.__enter__()
            bars[stage] = bar
        bar.update(n)

    def finish() -> None:
        for bar in bars.values():
            bar.__exit__(None, None, None)

    return report, finish
