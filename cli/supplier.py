"""``keyvault supplier``: supplier identities."""

from __future__ import annotations

from pathlib import Path

import click

from keyvault import Identity

from .output import emit, handle_errors, json_option


@click.group()
def supplier() -> None:
    """Supplier identities (Ed25519 key pairs)."""


@supplier.command("init")
@click.option("--name", required=True, help="The supplier's name, as platforms will see it.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Identity file to create (mode 0600; never overwritten).")
@click.option("--prefix", help="Issuer prefix (4 symbols) to use instead of the one derived from the key.")
@json_option
@handle_errors
def init(name: str, out: Path, prefix: str | None, as_json: bool) -> None:
    """Create a supplier identity: a new Ed25519 key pair and issuer prefix."""
    identity = Identity.generate(name, prefix)
    identity.save(out)
    doc = {"name": identity.name, "id": identity.id, "prefix": identity.prefix_text,
           "public_key": identity.public_key.hex(), "file": str(out)}
    emit(as_json, doc, f"created supplier {identity.name!r}: id {identity.id}, issuer prefix {identity.prefix_text}\n"
                       f"identity file {out} (mode 0600): keep it secret and backed up; it signs your batches")
