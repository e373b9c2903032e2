"""``keyvault witness`` (init, serve, submit, add, list, remove) and ``keyvault log export-tiles``: cosigned, auditable checkpoints."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from keyvault import Identity
from keyvault.engine import (LogWitness, add_witness, export_tiles, list_witnesses, remove_witness, submit_all,
                             submit_checkpoint)
from keyvault.errors import StoreExistsError, UsageError
from keyvault.formats.cosignature import Witness
from keyvault.formats.identity import PublicIdentity
from keyvault.service.limits import Limits
from keyvault.service.witnessd import serve_witness

from .output import State, emit, handle_errors, json_option

_FILE = click.Path(dir_okay=False, path_type=Path)
log = logging.getLogger("keyvault.witness")
F = TypeVar("F", bound=Callable[..., Any])
LIMITS = Limits()  # the defaults, as `keyvault serve` has them


@click.group()
def witness() -> None:
    """Witnesses: cosign a store's checkpoints only while its log grows consistently (C2SP tlog-witness)."""


@witness.command("init")
@click.argument("name")
@click.option("--out", required=True, type=_FILE, help="Where to write the witness identity (0600).")
@json_option
@handle_errors
def witness_init(name: str, out: Path, as_json: bool) -> None:
    """Create a witness identity NAME (a key name like witness.example/w1: no spaces, no '+')."""
    if out.exists():
        raise StoreExistsError(f"{out} already exists; choose another --out (a witness key is never overwritten)")
    who = Identity.generate(name)
    key = Witness(who.name, who.public_key)  # refuses a name a note cannot carry
    who.save(out)
    emit(as_json, {"name": who.name, "fingerprint": who.fingerprint, "vkey": key.vkey(), "file": str(out)},
         f"witness {who.name!r} created: {out}\nfingerprint  {who.fingerprint}\nverifier key {key.vkey()}\n"
         f"give verifiers its public file: keyvault identity show --public {out} > witness.pub")


def _limit_options(f: F) -> F:
    """The connection limits of `keyvault serve`, for the witness's own server (the same defaults)."""
    for name, kind, text in reversed(_LIMIT_FLAGS):
        f = click.option(name, default=getattr(LIMITS, name[2:].replace("-", "_")), type=kind, show_default=True,
                         help=text)(f)
    return f


_LIMIT_FLAGS = [
    ("--max-header-bytes", click.IntRange(1024, 1 << 20), "Bytes of a request's line and headers; beyond: 431."),
    ("--max-headers", click.IntRange(8, 10_000), "Header lines of a request; beyond: 431."),
    ("--max-request-line", click.IntRange(256, 1 << 20), "Bytes of a request's target; beyond: 414."),
    ("--header-timeout", click.FloatRange(0.1, 3600), "Seconds from a request's first byte to the end of its "
                                                      "headers; beyond: 408, closed."),
    ("--body-timeout", click.FloatRange(0.1, 3600), "Seconds for a request body, plus one per 64 KiB received; "
                                                    "beyond: 408, closed."),
    ("--keep-alive", click.FloatRange(0.1, 3600), "Seconds a connection may stay idle, before its first request "
                                                  "too; then it is closed."),
    ("--max-connections", click.IntRange(1, 1_000_000), "Open connections; beyond, the one idle longest is closed."),
]


@witness.command("serve")
@click.option("--identity", "identity_file", required=True, type=_FILE, help="The witness identity (0600).")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of the witness's durable state (the newest size and root per log).")
@click.option("--log", "logs", multiple=True, required=True, type=_FILE,
              help="A store's engine public file (`keyvault identity show --public`): a log to witness. Repeat.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7380, type=click.IntRange(0, 65535), show_default=True,
              help="Port to listen on (0: any free port, printed).")
@_limit_options
@handle_errors
def witness_serve(identity_file: Path, state_dir: Path, logs: tuple[Path, ...], host: str, port: int,
                  **limits: Any) -> None:
    """Serve POST /add-checkpoint (C2SP tlog-witness) until SIGTERM or SIGINT, with the service's connection limits."""
    witness_state = LogWitness(Identity.load(identity_file), state_dir, [PublicIdentity.load(p) for p in logs])

    def ready(bound: int) -> None:
        click.echo(f"witness listening on http://{host}:{bound}/add-checkpoint", err=True)
        sys.stderr.flush()

    serve_witness(witness_state, host, port, replace(LIMITS, **limits), ready)


@witness.command("submit")
@click.argument("url", required=False)
@click.option("--witness", "witness_file", type=_FILE,
              help="The witness's public identity file: its cosignature is checked before it is kept.")
@json_option
@click.pass_obj
@handle_errors
def witness_submit(state: State, url: str | None, witness_file: Path | None, as_json: bool) -> None:
    """Send the newest checkpoint to the witness at URL (or, without URL, to every witness `witness add` named)
    and keep each cosignature with the checkpoint."""
    vault = state.vault()
    if (url is None) != (witness_file is None):
        raise UsageError("give a URL and its --witness file, or neither (to submit to every witness `keyvault "
                         "witness add` named)")
    vault.checkpoint()  # a checkpoint covering every event so far
    if url is None or witness_file is None:
        outcomes = submit_all(vault.engine)
        if not outcomes:
            raise UsageError("this store names no witness: `keyvault witness add URL --witness W.pub` names one")
        emit(as_json, {"witnesses": outcomes},
             "\n".join(f"{o['witness']}: " + (f"cosigned at {o['size']:,} events" if o["ok"] else f"failed: {o['error']}")
                       for o in outcomes))
        if not all(o["ok"] for o in outcomes):
            sys.exit(1)
        return
    doc = submit_checkpoint(vault.engine, url, PublicIdentity.load(witness_file))
    emit(as_json, doc, f"cosigned by {doc['witness']!r} at {doc['size']:,} events (the witness had seen "
                       f"{doc['old_size']:,}):\n{doc['note'].rstrip()}")


@witness.command("add")
@click.argument("url")
@click.option("--witness", "witness_file", required=True, type=_FILE,
              help="The witness's public identity file (`keyvault identity show --public` of its identity).")
@json_option
@click.pass_obj
@handle_errors
def witness_add(state: State, url: str, witness_file: Path, as_json: bool) -> None:
    """Submit every new checkpoint to the witness at URL: the cluster's (a store bound to an authority) or this
    store's (`keyvault serve` submits after each checkpoint)."""
    doc = add_witness(state.vault().engine, url, PublicIdentity.load(witness_file))
    emit(as_json, doc, f"witness {doc['name']!r} at {doc['url']} added ({doc['scope']}): {doc['vkey']}")


@witness.command("list")
@json_option
@click.pass_obj
@handle_errors
def witness_list(state: State, as_json: bool) -> None:
    """The witnesses new checkpoints are submitted to."""
    rows = list_witnesses(state.vault().engine)
    emit(as_json, {"witnesses": rows}, "\n".join(f"{w['name']}  {w['url']}  ({w['scope']})" for w in rows)
         or "no witness: `keyvault witness add URL --witness W.pub` names one")


@witness.command("remove")
@click.argument("name")
@json_option
@click.pass_obj
@handle_errors
def witness_remove(state: State, name: str, as_json: bool) -> None:
    """Stop submitting to the witness NAME (or URL)."""
    doc = remove_witness(state.vault().engine, name)
    emit(as_json, doc, f"removed: {', '.join(doc['removed'])}")


@click.group("log")
def log_group() -> None:
    """The event log, published for outside auditors."""


@log_group.command("export-tiles")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_obj
@handle_errors
def export(state: State, directory: Path, as_json: bool) -> None:
    """Write the log as C2SP tlog-tiles (checkpoint, tile/<L>/<N>, tile/entries/<N>) to serve as static files."""
    vault = state.vault()
    vault.checkpoint()
    doc = export_tiles(vault.engine, directory)
    emit(as_json, doc, f"{doc['size']:,} events as tiles in {directory}: {doc['written']} files written, "
                       f"{doc['kept']} full tiles already there")
