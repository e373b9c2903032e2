"""``keyvault identity``: show an identity's public part (or hand it out), and rotate to a new key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from keyvault import Identity, IdentityError
from keyvault.clock import iso
from keyvault.formats.identity import ROLE_NAMES, PublicIdentity, public_part

from .output import State, emit, handle_errors, json_option


@click.group()
def identity() -> None:
    """Identities: show their public part and fingerprint, hand out public files, rotate keys."""


def _fields(who: PublicIdentity) -> dict[str, Any]:
    return {"name": who.name, "id": who.id, "prefix": who.prefix_text, "fingerprint": who.fingerprint,
            "public_key": who.public_key.hex()}  # hex, as everywhere in the CLI


def _engine_identity(state: State) -> PublicIdentity:
    """The store's own engine key (public part)."""
    if state.store is None:
        raise click.UsageError("give an IDENTITY_FILE, or --store DIR (or KEYVAULT_STORE) for the store's engine key")
    return state.vault().engine_identity


@identity.command("show")
@click.argument("identity_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--public", "public_file", is_flag=True,
              help="Write the public identity file to stdout (e.g. `> acme.pub`) and nothing else.")
@click.option("--role", "roles", multiple=True, type=click.Choice(ROLE_NAMES),
              help="Declare a role in the public file, signed by the identity's key (repeat for several; "
                   "needs the secret identity file). The store's engine key declares `engine`.")
@json_option
@click.pass_obj
@handle_errors
def show(state: State, identity_file: Path | None, public_file: bool, roles: tuple[str, ...], as_json: bool) -> None:
    """Show an identity's name, supplier id, issuer prefix, fingerprint and public key.

    IDENTITY_FILE is a secret identity (must be mode 0600) or a public identity file;
    without it, the store's own engine key (--store DIR). The secret key is never shown.
    """
    if public_file and as_json:
        raise click.UsageError("--public writes the public identity file itself; drop --json")
    who = public_part(identity_file) if identity_file is not None else _engine_identity(state)
    if roles:
        if identity_file is None:
            raise click.UsageError("the store's engine key always declares the role engine; drop --role")
        if who.roles_signature is not None and set(roles) == set(who.roles):
            pass  # a public file that already declares exactly these roles
        else:
            try:
                who = Identity.load(identity_file).public_with_roles(sorted(set(roles)))
            except IdentityError as exc:
                raise click.UsageError(f"--role needs the secret identity file, which signs the roles: {exc}") from None
    if public_file:
        click.echo(who.to_bytes(), nl=False)  # bytes: written as they are, so `> NAME.pub` is the file
        return
    doc = _fields(who)
    doc["roles"] = list(who.roles)
    emit(as_json, doc, f"name           {who.name}\n"
                       f"supplier id    {who.id}\n"
                       f"issuer prefix  {who.prefix_text}\n"
                       f"fingerprint    {who.fingerprint}\n"
                       f"roles          {', '.join(who.roles) or 'none declared'}\n"
                       f"public key     {doc['public_key']}")


@identity.command("rotate")
@click.argument("old_identity_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="New secret identity file to create (mode 0600; never overwritten).")
@click.option("--rotation-out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Rotation file to create (public; signed by the old and the new key).")
@click.option("--name", "new_name", help="A new name for the identity (default: keep the old one).")
@json_option
@handle_errors
def rotate(old_identity_file: Path, out: Path, rotation_out: Path, new_name: str | None, as_json: bool) -> None:
    """Move an identity to a fresh key with the same issuer prefix, and write the rotation both keys sign."""
    for path in (out, rotation_out):
        if path.exists() or path.is_symlink():
            raise click.ClickException(f"{path} already exists; choose another path (a file is never overwritten)")
    if out.absolute() == rotation_out.absolute():
        raise click.UsageError("--out and --rotation-out must be different files")
    old = Identity.load(old_identity_file)
    new, rotation = old.rotate(new_name)
    new.save(out)
    try:
        rotation.save(rotation_out)
    except BaseException:
        out.unlink()  # nothing knows the new key yet: leave no orphan secret behind
        raise
    doc = {"name": new.name, "prefix": new.prefix_text, "at": iso(rotation.at),
           "old_id": old.id, "old_fingerprint": old.fingerprint,
           "new_id": new.id, "new_fingerprint": new.fingerprint,
           "identity_file": str(out), "rotation_file": str(rotation_out)}
    emit(as_json, doc,
         f"rotated {new.name!r} (issuer prefix {new.prefix_text}) to a new key\n"
         f"  old key  fingerprint {old.fingerprint}  (supplier id {old.id})\n"
         f"  new key  fingerprint {new.fingerprint}  (supplier id {new.id})\n"
         f"new identity file {out} (mode 0600): keep it secret and backed up; sign with it from now on\n"
         f"send {rotation_out} to every platform that pins the old key; they run "
         f"`keyvault trust rotate {rotation_out}`\n"
         f"keep {old_identity_file} offline until every platform has switched, and never sign with it again")
