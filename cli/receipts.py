"""Receipts and long forms: ``receipt show|upgrade``, ``verify-receipt`` and ``verify-offline``.

``verify-receipt`` and ``verify-offline`` need no store: public identity files only. They exit 0 when
what they were given is authentic, 3 when it is not, 1 when it cannot be read, 2 on usage errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from keyvault import KeyvaultError
from keyvault.formats import longform
from keyvault.formats import receipt as fmt
from keyvault.formats.identity import PublicIdentity, public_part

from .keys import stdin_key
from .output import EXIT_REFUSED, State, emit, handle_errors, json_option, write_new_file

_FILE = click.Path(dir_okay=False, path_type=Path)
_MAX_FILE = 1024 * 1024  # an upgraded receipt is a few KiB


def _given(value: str, what: str) -> str:
    """The text itself, stdin's first line ('-'), or the contents of the file it names."""
    if value == "-":  # a receipt's one line, or an upgraded receipt's JSON (many lines)
        data = sys.stdin.buffer.read(_MAX_FILE + 1)
        if len(data) > _MAX_FILE:
            raise click.UsageError(f"stdin holds over 1 MiB: it is not a {what}; nothing was done")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise click.UsageError(f"stdin is not UTF-8 text: it is not a {what}; nothing was done") from None
        if text.lstrip().startswith("{"):
            return text
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            raise click.UsageError(f"stdin holds {'no' if not lines else 'more than one'} {what}: give exactly one "
                                   "(one line, or an upgraded receipt's JSON); nothing was done")
        return lines[0]
    if value.startswith((fmt.PREFIX, longform.PREFIX)) or "/" not in value and not Path(value).is_file():
        return value
    try:
        with open(value, "rb") as fh:
            data = fh.read(_MAX_FILE + 1)
        if len(data) > _MAX_FILE:
            raise click.ClickException(f"{value} is over 1 MiB: it is not a {what}")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read the {what} {value}: {exc}") from None


def _engine(path: Path) -> PublicIdentity:
    try:
        return public_part(path)
    except KeyvaultError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def receipt() -> None:
    """Signed receipts of redeems: make one again, or upgrade one to a full inclusion proof."""


@receipt.command("show")
@click.argument("key_or_serial")
@json_option
@click.pass_obj
@handle_errors
def receipt_show(state: State, key_or_serial: str, as_json: bool) -> None:
    """The engine-signed receipt of a redeemed key (by key, serial, or '-' for stdin): one line for a QR code."""
    if key_or_serial == "-":
        key_or_serial = stdin_key()
    text = state.vault().receipt(key_or_serial)
    emit(as_json, {"receipt": text, "bytes": len(text)}, text)


@receipt.command("upgrade")
@click.argument("receipt_text", metavar="RECEIPT")
@click.option("--out", type=_FILE, help="Write the upgraded receipt here (new file) instead of stdout.")
@click.pass_obj
@handle_errors
def receipt_upgrade(state: State, receipt_text: str, out: Path | None) -> None:
    """Add the inclusion proof of a receipt's event and the signed checkpoint covering it (JSON).

    RECEIPT is the receipt's text, '-' for stdin, or a file holding it.
    """
    data = fmt.encode_proof(state.vault().upgrade_receipt(_given(receipt_text, "receipt")).to_dict())
    if out is None:
        click.echo(data.decode("utf-8"), nl=False)
        return
    write_new_file(out, data)
    click.echo(f"upgraded receipt written to {out}", err=True)


@click.command("verify-receipt")
@click.argument("receipt_text", metavar="RECEIPT")
@click.option("--engine", "engine_file", required=True, type=_FILE,
              help="The store's engine public identity (engine.pub, from `keyvault identity show --public`).")
@json_option
def verify_receipt(receipt_text: str, engine_file: Path, as_json: bool) -> None:
    """Check a receipt offline: authentic or not, and what it says. An upgraded receipt is checked whole.

    RECEIPT is the receipt's text, '-' for stdin, or a file (the text, or `keyvault receipt upgrade`'s JSON).
    Exit 0 when authentic, 3 when not.
    """
    text = _given(receipt_text, "receipt")
    engine = _engine(engine_file)
    upgraded = text.lstrip().startswith("{")
    try:
        if upgraded:
            found, size = fmt.open_proof(text.encode("utf-8"), engine.public_key)
        else:
            found, size = fmt.open_receipt(text, engine.public_key), None
    except KeyvaultError as exc:
        emit(as_json, {"authentic": False, "error": str(exc)}, f"NOT AUTHENTIC: {exc}")
        sys.exit(EXIT_REFUSED)
    doc = {"authentic": True, **found.to_dict(), "proven_in_log": upgraded, "checkpoint_size": size}
    lines = [f"AUTHENTIC receipt, signed by engine key {engine.fingerprint}",
             f"serial     {doc['serial']}  (batch {doc['batch']})",
             f"supplier   {found.supplier_name} (prefix {found.supplier_prefix}, id {found.supplier_id})",
             f"order      {found.order_id}",
             f"redeemed   {doc['redeemed_at']}  (event {found.index} of the store's log)"]
    lines.append(f"the event is that redeem, included in the log under a checkpoint of {size:,} events signed by "
                 "the same engine key" if upgraded else
                 "not yet proven in the log: `keyvault receipt upgrade` adds the inclusion proof")
    emit(as_json, doc, "\n".join(lines))


@click.command("verify-offline")
@click.argument("long_form", metavar="LONGFORM")
@click.option("--supplier", "supplier_file", required=True, type=_FILE,
              help="The supplier's public identity file (acme.pub).")
@json_option
def verify_offline(long_form: str, supplier_file: Path, as_json: bool) -> None:
    """Check a long-form key offline against its supplier's public identity (never prints the key).

    LONGFORM is the long form, or '-' to read it from stdin (keeps it out of the shell's history).
    Exit 0 when authentic, 3 when not. It cannot say whether the key was already redeemed.
    """
    text = stdin_key() if long_form == "-" else long_form
    supplier = _engine(supplier_file)
    try:
        found = longform.open_long_form(text, supplier.public_key)
    except KeyvaultError as exc:
        emit(as_json, {"authentic": False, "error": str(exc)}, f"NOT AUTHENTIC: {exc}")
        sys.exit(EXIT_REFUSED)
    doc = {"authentic": True, **found.to_dict(), "supplier": supplier.name,
           "redeemed": None, "note": longform.CANNOT_KNOW}
    lines = [f"AUTHENTIC long-form key, signed by {supplier.name!r} (fingerprint {supplier.fingerprint})",
             f"serial     {doc['serial']}  (batch {doc['batch']})",
             f"product    {found.product}",
             f"valid      from {doc['valid_from'] or 'issue'} until {doc['valid_until'] or 'no end'}",
             longform.CANNOT_KNOW]
    emit(as_json, doc, "\n".join(lines))
