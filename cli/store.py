"""``keyvault init``, ``stats`` and ``trace``: the store itself."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from keyvault import Vault
from keyvault.formats.bundle import verify as verify_bundle
from keyvault.formats.identity import PublicIdentity
from keyvault.formats.keyformat import key_material, parse_prefix

from .checkout import render_order
from .keys import stdin_key
from .output import State, emit, handle_errors, json_option, write_new_file
from .reports import show_activity, window_options


@click.command()
@json_option
@click.pass_obj
@handle_errors
def init(state: State, as_json: bool) -> None:
    """Create a new store (and its 0600 pepper file) in the --store directory."""
    if state.store is None:
        raise click.UsageError("no store given: pass --store DIR or set KEYVAULT_STORE")
    with Vault.init(state.store, pepper_file=state.pepper_file) as vault:
        pepper = state.pepper_file or Path(vault.path) / "pepper"
        emit(as_json, {"store": str(vault.path), "pepper_file": str(pepper)},
             f"created store {vault.path}\npepper {pepper} (mode 0600): back it up apart from the store; "
             "without it no key can be checked")


@click.command()
@window_options
@json_option
@click.pass_obj
@handle_errors
def stats(state: State, since: dt.datetime | None, until: dt.datetime | None, daily: bool, as_json: bool) -> None:
    """Counts per supplier and batch: issued, imported, redeemed, void, blacklisted, refused.

    With --since, --until or --daily: the redeems and voids of that time window instead (UTC), per
    supplier and batch, and per day with --daily.
    """
    if since or until or daily:
        show_activity(state.vault(), since, until, daily, as_json)
        return
    doc = state.vault().stats().to_dict()
    if as_json:
        emit(True, doc, "")
        return
    t: dict[str, Any] = doc["totals"]
    click.echo(f"{_n(t['keys'], 'key')} in {_n(t['batches'], 'batch')} from {_n(t['suppliers'], 'supplier')}: "
               f"{t['active']:,} active, {t['redeemed']:,} redeemed, {t['void']:,} void, {t['blacklisted']:,} "
               f"blacklisted; {_n(t['blacklist_entries'], 'blacklist entry')}; "
               f"{_n(t['refused_total'], 'refused attempt')}")
    for s in doc["suppliers"]:
        flag = "  BLACKLISTED" if s["supplier_blacklisted"] else ""
        click.echo(f"\nsupplier {s['name']} (id {s['supplier']}, prefix {s['prefix']}){flag}\n"
                   f"  {_n(s['batches'], 'batch')}, {_n(s['keys'], 'key')} (issued here {s['issued']:,}, imported "
                   f"{s['imported']:,}): active {s['active']:,}, redeemed {s['redeemed']:,}, void {s['void']:,}, "
                   f"blacklisted {s['blacklisted']:,}; refused {_refused(s)}")
    for b in doc["batches"]:
        flag = "  BLACKLISTED" if b["batch_blacklisted"] else ""
        until = f", valid until {b['valid_until']}" if b["valid_until"] else ""
        held = (f" (received here in lots: {', '.join(b['received_ranges'])})" if b["received_ranges"] else "")
        click.echo(f"\nbatch {b['batch']} {b['product']} ({b['supplier_name']}, {b['kind']}, {b['origin']}{until}){flag}\n"
                   f"  {_n(b['count'], 'key')}{held}: active {b['active']:,}, redeemed {b['redeemed']:,}, "
                   f"void {b['void']:,}, blacklisted {b['blacklisted']:,}; refused {_refused(b)}")
    if doc["clients"]:
        click.echo("\nclients with refused attempts (most first)")
    for c in doc["clients"][:20]:
        click.echo(f"  {c['client']}: refused {_refused(c)}, throttled answers {c['throttled']:,}")
    if len(doc["clients"]) > 20:
        click.echo(f"  ... and {len(doc['clients']) - 20:,} more (`keyvault stats --json` lists them all)")


_PLURALS = {"batch": "batches", "blacklist entry": "blacklist entries"}


def _n(count: int, word: str) -> str:
    """``count`` and ``word``, the word in the plural unless the count is one: '1 batch', '2 batches'."""
    return f"{count:,} {word if count == 1 else _PLURALS.get(word, word + 's')}"


def _refused(row: dict[str, Any]) -> str:
    if not row["refused_total"]:
        return "0"
    parts = ", ".join(f"{name} {n:,}" for name, n in row["refused"].items())
    return f"{row['refused_total']:,} ({parts})"


@click.command()
@click.argument("key_or_serial", required=False)
@click.option("--bundle", "bundle_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained proof bundle here, for `keyvault verify-bundle`.")
@click.option("--order", "order_id", help="Instead of a key: every key this order holds or held, with times.")
@json_option
@click.pass_obj
@handle_errors
def trace(state: State, key_or_serial: str | None, bundle_out: Path | None, order_id: str | None,
          as_json: bool) -> None:
    """Where a key came from and what happened to it (give the key, or its serial; '-' reads stdin).

    With --order ORDER_ID instead: the keys (serials) the order held, redeemed, released or let expire.
    """
    if order_id is not None:
        if key_or_serial is not None or bundle_out is not None:
            raise click.UsageError("--order traces an order: give no key and no --bundle with it")
        doc = state.vault().order(order_id).to_dict()
        emit(as_json, doc, render_order(doc))
        return
    if key_or_serial is None:
        raise click.UsageError("give a key or serial to trace ('-' reads it from stdin), or --order ORDER_ID")
    if key_or_serial == "-":
        key_or_serial = stdin_key()
    if bundle_out is not None and bundle_out.exists():
        raise click.UsageError(f"{bundle_out} already exists; choose another --bundle file (a file is never "
                               "overwritten)")
    vault = state.vault()
    doc = vault.trace(key_or_serial).to_dict()
    # Every trace checks its own proof, as a verifier elsewhere would, with the keys this store pins.
    proof = json.dumps(vault.trace_bundle(key_or_serial), indent=1) + "\n"
    made = json.loads(proof)
    material = key_material(key_or_serial) if made["salt"] is not None else None  # made from the key: open it
    checks = verify_bundle(proof.encode(), [_supplier_identity(doc), vault.engine_identity], material)
    doc["verification"] = {"ok": all(c.ok for c in checks), "checks": [c.line() for c in checks]}
    if bundle_out is not None:
        write_new_file(bundle_out, proof.encode("utf-8"), "--bundle file")
        doc["bundle"] = {"path": str(bundle_out), "bytes": len(proof.encode())}
    if as_json:
        emit(True, doc, "")
        return
    click.echo(render_trace(doc))


def _supplier_identity(doc: dict[str, Any]) -> PublicIdentity:
    """The key's supplier as the store pinned it, for checking a fresh bundle here."""
    s = doc["supplier"]
    return PublicIdentity(name=s["name"], prefix=parse_prefix(s["prefix"]), public_key=bytes.fromhex(s["public_key"]))


def render_trace(doc: dict[str, Any]) -> str:
    """A trace told in plain words."""
    s, b, st = doc["supplier"], doc["batch"], doc["status"]
    lines = [f"key {doc['serial']} (index {doc['index']} of batch {b['batch']})"]
    if doc["card_number"]:
        lines.append(f"  upstream card number {doc['card_number']}")
    lines += [f"  supplier  {s['name']} (id {s['id']}, issuer prefix {s['prefix']})",
              f"  product   {b['product']}; batch of {b['count']:,} {b['kind']} keys, created {b['created_at']}, "
              f"{'issued in' if b['origin'] != 'manifest' else 'imported into'} this store {b['added_at']}",
              f"  validity  {b['valid_from'] or 'from issue'} .. {b['valid_until'] or 'no end'}",
              f"  status    {st['status']}" + (f": {st['message']}" if st.get("message") else "")]
    for entry in doc["blacklist"]:
        lines.append(f"  blacklist {entry['level']} {entry['target']}: {entry['reason']} (since {entry['at']})")
    lines.append("  history (each event is in the store's signed, hash-chained log)")
    for e in doc["events"]:
        lines.append(f"    {e['at']}  {_describe(e)}")
    if "verification" in doc:
        ok = doc["verification"]["ok"]
        lines.append(f"  signatures and proofs: {'every one holds' if ok else 'NOT ALL HOLD'}")
        lines += [f"    {line}" for line in doc["verification"]["checks"]]
    if "bundle" in doc:
        lines.append(f"  proof bundle written to {doc['bundle']['path']} ({doc['bundle']['bytes']:,} bytes): check it "
                     "anywhere with `keyvault verify-bundle`")
    return "\n".join(lines)


def _describe(e: dict[str, Any]) -> str:
    kind = e["type"]
    if kind == "supplier":
        return f"supplier {e['name']} first seen (prefix {e['prefix']})"
    if kind == "issue":
        return f"batch {e['batch']} of {e['count']:,} issued by {e['supplier_name']} ({e['origin']})"
    if kind == "import":
        return (f"batch {e['batch']} of {e['count']:,} imported from {e['supplier_name']}'s signed manifest "
                f"(Merkle root {e['merkle_root'][:16]}…)")
    if kind == "redeem":
        return f"redeemed by order {e['order_id']}"
    if kind == "void":
        return f"voided: {e['reason']}"
    if kind == "hold":
        return f"held for order {e['order_id']} until {e['expires_at']}"
    if kind == "confirm":
        return f"hold confirmed by order {e['order_id']}"
    if kind == "release":
        return f"hold released by order {e['order_id']}"
    if kind == "expire":
        return f"hold of order {e['order_id']} ended at {e['expires_at']}"
    if kind == "use":
        return f"used by order {e['order_id']} ({e['uses_left']} uses left)"
    if kind == "transfer":
        return (f"{e['from']['name']} transferred keys {', '.join(f'{a}-{b - 1}' for a, b in e['ranges'])} of "
                f"batch {e['batch']} to {e['to']['name']} (signed transfer {e['transfer'][:16]})")
    if kind == "trust":
        action = e.get("action")
        if action == "pin":
            return f"{e['name']} trusted as {e['role']} (fingerprint {e['fingerprint']})"
        if action == "rotate":
            return f"{e['name']} rotated to a new key, signed by the old key and the new"
        return f"trust {action}: {e.get('name')}"
    if kind in ("blacklist", "lift"):
        verb = "blacklisted" if kind == "blacklist" else "blacklist lifted"
        return f"{verb} ({e['level']} {e['target']}): {e['reason']}"
    return str(kind)
