"""The root ``keyvault`` group: --store / KEYVAULT_STORE, and every command group under it.

Exit codes: 0 done (every key accepted), 3 at least one key refused,
1 error (the message says what to do), 2 usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

import keyvault

from . import (
    authority,
    backup,
    batch,
    blacklist,
    check,
    checkout,
    cluster,
    config,
    demo,
    identity,
    keys,
    provenance,
    receipts,
    reports,
    serve,
    store,
    supplier,
    throttle,
    webhook,
    witness,
)
from .output import EXIT_ERROR, CommandError, State, show_json_error


class KeyvaultGroup(click.Group):
    """The root group: under --json, every error (click's usage errors too) is one JSON object on stderr."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command line; with --json anywhere in it, errors are printed as JSON."""
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(argv, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            show_json_error(exc)
            sys.exit(exc.exit_code)
        except click.Abort:
            show_json_error(CommandError("Aborted", "aborted", "run the command again", EXIT_ERROR))
            sys.exit(EXIT_ERROR)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


@click.group(cls=KeyvaultGroup, context_settings={"auto_envvar_prefix": "KEYVAULT", "help_option_names": ["-h", "--help"]})
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), envvar="KEYVAULT_STORE",
              help="Store directory (or set KEYVAULT_STORE).")
@click.option("--pepper-file", type=click.Path(dir_okay=False, path_type=Path), envvar="KEYVAULT_PEPPER_FILE",
              help="The store's pepper, if kept outside the store directory (or set KEYVAULT_PEPPER_FILE).")
@click.version_option(keyvault.__version__, prog_name="keyvault")
@click.pass_context
def cli(ctx: click.Context, store: Path | None, pepper_file: Path | None) -> None:
    """keyvault: issue, verify and redeem card keys.

    Exit codes: 0 done, 3 a key was refused, 1 error, 2 usage.
    """
    ctx.obj = State(store, pepper_file)


for command in (store.init, store.stats, store.trace, keys.verify, keys.redeem, keys.void, checkout.hold,
                checkout.confirm, checkout.release, demo.demo,
                provenance.audit, provenance.checkpoint, provenance.verify_bundle, receipts.verify_receipt,
                receipts.verify_offline, reports.report, reports.list_, check.check, serve.serve,
                backup.backup, backup.restore):
    cli.add_command(command)
for group in (supplier.supplier, identity.identity, batch.batch, batch.manifest, blacklist.blacklist,
              provenance.trust, provenance.lot, receipts.receipt, throttle.throttle, serve.token,
              config.config, witness.witness, witness.log_group, authority.authority, cluster.cluster,
              webhook.webhook):
    cli.add_command(group)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="keyvault")
