"""Shared CLI plumbing: the opened vault in ``ctx.obj``, --json, exit codes, errors."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from keyvault import KeyvaultError, Vault

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

    def vault(self) -> Vault:
        """The store, opened on first use and closed when the command ends."""
        if self._vault is None:
            if self.store is None:
                raise click.UsageError("no store given: pass --store DIR or set KEYVAULT_STORE")
            self._vault = Vault.open(self.store, pepper_file=self.pepper_file)
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


def handle_errors(f: F) -> F:
    """Turn keyvault's errors into a clean message and exit code 1 (never a traceback)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except KeyvaultError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


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
