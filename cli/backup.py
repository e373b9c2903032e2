"""``keyvault backup`` and ``keyvault restore``: a checked copy of a serving store, and a new store made from one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from keyvault import ProofError, Vault

from .output import EXIT_REFUSED, State, emit, handle_errors, json_option, read_bounded

_FILE = click.Path(dir_okay=False, path_type=Path)
_MAX_CHECKPOINT = 1 << 20  # `keyvault checkpoint --json` is a few KiB
_DIR = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.argument("dest", type=_DIR)
@click.option("--with-pepper", is_flag=True, help="Put the pepper in the backup too (a 0600 file). By default it is "
                                                  "left out: keep it apart from the backups.")
@json_option
@click.pass_obj
@handle_errors
def backup(state: State, dest: Path, with_pepper: bool, as_json: bool) -> None:
    """Copy the store, while it serves, into DEST (a new or empty directory), and check the copy."""
    doc = state.vault().backup(dest, with_pepper=with_pepper).to_dict()
    checkpoint = doc["checkpoint"]
    emit(as_json, doc,
         f"backed up {state.store} to {doc['path']}: {doc['keys']:,} keys in {doc['batches']} batches, "
         f"{doc['redeemed']:,} redeemed, {doc['void']:,} void, {doc['log_size']:,} events "
         f"(newest checkpoint at {checkpoint['size'] if checkpoint else 0:,}); copy verified, "
         f"{doc['data_bytes']:,} bytes, SHA-256 {doc['data_sha256']}\n"
         + ("the pepper is in the backup (mode 0600): keep the backup as secret as the store"
            if with_pepper else "the pepper is not in the backup: restoring needs the store's pepper file"))


@click.command()
@click.argument("src", type=_DIR)
@click.argument("directory", metavar="DIR", type=_DIR)
@click.option("--since", type=_FILE, multiple=True,
              help="A checkpoint kept from the live store (`keyvault checkpoint --json`, or its note): refuse a "
                   "backup whose log does not extend it (exit 3). Repeatable.")
@click.option("--pepper-file", "pepper", type=_FILE, help="The store's pepper file, when the backup holds none "
                                                          "(defaults to the global --pepper-file).")
@json_option
@click.pass_obj
@handle_errors
def restore(state: State, src: Path, directory: Path, since: tuple[Path, ...], pepper: Path | None,
            as_json: bool) -> None:
    """Restore the backup in SRC into DIR, a new store directory, after checking it."""
    notes = [_read_note(path) for path in since]
    try:
        doc = Vault.restore(src, directory, since=notes, pepper_file=pepper or state.pepper_file).to_dict()
    except ProofError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    m = doc["manifest"]
    text = (f"restored {src} (taken {m['created_at']}) into {doc['store']}: {m['keys']:,} keys, "
            f"{m['redeemed']:,} redeemed, {m['void']:,} void, {m['log_size']:,} events; pepper {doc['pepper_file']}")
    if Path(doc["pepper_file"]).parent != Path(doc["store"]):
        text += (f"\nthe pepper stays at {doc['pepper_file']}: open the store with --pepper-file "
                 f"{doc['pepper_file']} (or KEYVAULT_PEPPER_FILE)")
    for check in doc["since"]:
        text += f"\nPASS  {check['detail']}"
    if doc["warning"]:
        click.echo(f"WARNING: {doc['warning']}", err=True)
    emit(as_json, doc, text)


def _read_note(path: Path) -> str:
    """A checkpoint note from a file: the note itself, or the JSON of `keyvault checkpoint --json`."""
    try:
        text = read_bounded(path, _MAX_CHECKPOINT, "a checkpoint").decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read the checkpoint {path}: {exc}") from None
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise click.ClickException(f"{path} is not a checkpoint (bad JSON: {exc}); keep the output of "
                                       "`keyvault checkpoint --json` or the note itself") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("note"), str):
            raise click.ClickException(f"{path} holds JSON without a \"note\": keep the output of "
                                       "`keyvault checkpoint --json` or the note itself")
        return str(doc["note"])
    return text
