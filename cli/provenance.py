"""Provenance commands: ``trust``, ``lot``, ``audit``, ``checkpoint`` and ``verify-bundle``."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import click

from keyvault import Identity, KeyvaultError, MalformedKeyError
from keyvault.engine import consistency_proof
from keyvault.formats.bundle import MAX_BUNDLE_BYTES, Check, Trusted, verify as verify_bundle_bytes
from keyvault.formats.identity import PublicIdentity, Rotation, public_part
from keyvault.formats.keyformat import key_material
from keyvault.formats.tiles import encode_proof

from .keys import stdin_key
from .output import EXIT_REFUSED, State, emit, handle_errors, json_option, read_bounded

_FILE = click.Path(dir_okay=False, path_type=Path)
_MAX_CHECKPOINT = 1 << 20  # `keyvault checkpoint --json` is a few KiB


@click.group()
def trust() -> None:
    """The identities this store trusts: suppliers, distributors, platforms."""


@trust.command("add")
@click.argument("public_file", type=_FILE)
@click.option("--role", "roles", multiple=True, type=click.Choice(["supplier", "distributor", "engine", "witness"]),
              help="What this identity may sign here; repeat for several. Default: the roles its file declares, "
                   "else supplier.")
@json_option
@click.pass_obj
@handle_errors
def trust_add(state: State, public_file: Path, roles: tuple[str, ...], as_json: bool) -> None:
    """Pin a public identity file (check its fingerprint with its owner by another channel first)."""
    who = PublicIdentity.load(public_file)
    doc = state.vault().trust(who, list(roles) or None)
    emit(as_json, {"name": who.name, "fingerprint": who.fingerprint, "role": doc["role"], "roles": doc["roles"]},
         f"trusted {who.name!r} as {' and '.join(doc['roles'])} (fingerprint {who.fingerprint})")


@trust.command("remove")
@click.argument("public_file", type=_FILE)
@json_option
@click.pass_obj
@handle_errors
def trust_remove(state: State, public_file: Path, as_json: bool) -> None:
    """Unpin an identity: nothing it signs is accepted from now on (what it signed before stays)."""
    who = public_part(public_file)
    state.vault().untrust(who)
    emit(as_json, {"name": who.name, "fingerprint": who.fingerprint, "removed": True},
         f"no longer trusted: {who.name!r} (fingerprint {who.fingerprint})")


@trust.command("list")
@json_option
@click.pass_obj
@handle_errors
def trust_list(state: State, as_json: bool) -> None:
    """Every pinned identity."""
    rows = state.vault().trusted()
    lines = [f"{r['name']:<24} {','.join(r['roles']):<12} {r['prefix']}  {r['fingerprint']}"
             + ("  (rotated away)" if r["rotated_to"] else "") for r in rows]
    emit(as_json, rows, "\n".join(lines) or "no identity is trusted yet")


@trust.command("rotate")
@click.argument("rotation_file", type=_FILE)
@json_option
@click.pass_obj
@handle_errors
def trust_rotate(state: State, rotation_file: Path, as_json: bool) -> None:
    """Accept a supplier's key rotation, signed by its old key and its new one."""
    rotation = Rotation.load(rotation_file)
    state.vault().rotate_trust(rotation)
    emit(as_json, {"name": rotation.new.name, "old_fingerprint": rotation.old.fingerprint,
                   "new_fingerprint": rotation.new.fingerprint},
         f"{rotation.new.name!r} now signs with {rotation.new.fingerprint} "
         f"(was {rotation.old.fingerprint}, which is no longer accepted)")


@click.group()
def lot() -> None:
    """Lots: keys moved from holder to holder, sealed to the recipient and signed by the sender."""


@lot.command("send")
@click.option("--batch", required=True, help="The batch id, like 7KQ2-00A.")
@click.option("--range", "ranges", help="Key indices to send, like 0-999,5000-5999 (default: the whole batch).")
@click.option("--to", "recipient", required=True, type=_FILE, help="The recipient's public identity file.")
@click.option("--identity", "sender", required=True, type=_FILE, help="Your identity file (0600).")
@click.option("--manifest", required=True, type=_FILE, help="The batch's manifest file.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The lot file to write.")
@json_option
@click.pass_obj
@handle_errors
def lot_send(state: State, batch: str, ranges: str | None, recipient: Path, sender: Path, manifest: Path, out: Path,
             as_json: bool) -> None:
    """Transfer keys you hold: sign the transfer and write a lot only the recipient can open."""
    doc = state.vault().send_lot(Identity.load(sender), batch, PublicIdentity.load(recipient), manifest=manifest,
                                 out=out, ranges=ranges)
    emit(as_json, doc, f"sent {doc['keys']:,} keys of batch {doc['batch']} ({', '.join(doc['ranges'])}) to "
                       f"{doc['to']!r} (fingerprint {doc['to_fingerprint']}): {out}\n"
                       f"transfer {doc['transfer']}")


@lot.command("receive")
@click.argument("lot_file", type=_FILE)
@click.option("--identity", "recipient", required=True, type=_FILE, help="Your identity file (0600).")
@click.option("--manifest-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the batch's manifest here (0600), to send the keys on later.")
@json_option
@click.pass_obj
@handle_errors
def lot_receive(state: State, lot_file: Path, recipient: Path, manifest_out: Path | None, as_json: bool) -> None:
    """Open a lot sealed to you: check every signature and hop, record custody, import the batch."""
    doc = state.vault().receive_lot(lot_file, Identity.load(recipient), manifest_out=manifest_out)
    hops = "\n".join(f"  {h['from']} -> {h['to']} ({', '.join(h['ranges'])})" for h in doc["hops"])
    mine = sum(int(b) - int(a) + 1 for a, b in (r.split("-") for r in doc["hops"][-1]["ranges"])) \
        if doc["hops"] else doc["count"]
    emit(as_json, doc, f"received {mine:,} keys of batch {doc['batch']} ({doc['count']:,} keys) from "
                       f"{doc['supplier']}, through:\n{hops}")


@click.command()
@json_option
@click.pass_obj
@handle_errors
def audit(state: State, as_json: bool) -> None:
    """Report double sales (both signed records), withheld or forked manifests, and the event log's check.

    Exit 0 when clean, 3 when something was found.
    """
    doc = state.vault().audit().to_dict()
    if as_json:
        emit(True, doc, "")
    else:
        click.echo(_render_audit(doc))
    if not doc["clean"]:
        sys.exit(EXIT_REFUSED)


def _render_audit(doc: dict[str, Any]) -> str:
    log = doc["event_log"]
    lines = [f"event log: {'intact' if log['ok'] else 'DAMAGED'}"
             + (f", {log['events']:,} events, {log['checkpoints']:,} signed checkpoints" if log["ok"]
                else f": {log['error']}")]
    for d in doc["double_sales"]:
        first, second = d["first"], d["second"]
        tried = "tried to send" if d["refused_at"] == "send" else "sent"
        where = "refused when sending here" if d["refused_at"] == "send" else "refused when received here"
        lines.append(f"DOUBLE SALE in batch {d['batch']}: {first['from']} sent {', '.join(first['ranges'])} to "
                     f"{first['to']} on {first['at']} (transfer {first['transfer'][:16]}), then "
                     f"{second['from']} {tried} {', '.join(second['ranges'])} to {second['to']} on {second['at']} "
                     f"(transfer {second['transfer'][:16]}; {where}); both signed records are kept")
    for g in doc["manifest_gaps"]:
        lines.append(f"WITHHELD BATCH? {g['batch']} of supplier {g['supplier']} names a previous manifest "
                     f"{g['missing_previous'][:16]} this store never received")
    for f in doc["manifest_forks"]:
        lines.append(f"FORK: supplier {f['supplier']} signed two manifests after {f['previous'][:16]}: "
                     f"{', '.join(f['batches'])}")
    if doc["clean"]:
        lines.append("no double sale, no withheld or forked manifest")
    return "\n".join(lines)


@click.command()
@click.option("--every-events", type=click.IntRange(min=1), help="Sign after this many new events.")
@click.option("--every-seconds", type=click.IntRange(min=1), help="Sign after this many seconds with new events.")
@click.option("--list", "list_all", is_flag=True, help="List every checkpoint signed so far.")
@click.option("--proof", nargs=2, type=click.IntRange(min=0), metavar="OLD NEW",
              help="Print the RFC 9162 consistency proof from OLD to NEW events (one base64 hash a line).")
@click.option("--since", type=_FILE, help="A checkpoint note saved earlier: prove the log only grew since (exit 3 if "
                                          "it was rolled back or forked).")
@json_option
@click.pass_obj
@handle_errors
def checkpoint(state: State, every_events: int | None, every_seconds: int | None, list_all: bool,
               proof: tuple[int, int] | None, since: Path | None, as_json: bool) -> None:
    """Sign a checkpoint of the event log now and print it; or set the cadence, list them, prove or check one."""
    vault = state.vault()
    if proof:
        vault.checkpoint()  # NEW may be every event so far
        hashes = consistency_proof(vault.engine, *proof)
        emit(as_json, {"old": proof[0], "new": proof[1], "proof": [base64.b64encode(h).decode() for h in hashes]},
             encode_proof(hashes).rstrip("\n"))
        return
    if since is not None:
        try:
            old = read_bounded(since, _MAX_CHECKPOINT, "a checkpoint").decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read the checkpoint {since}: {exc}") from None
        check = vault.check_since(old)
        emit(as_json, {"ok": check.ok, "detail": check.detail}, check.line())
        if not check.ok:
            sys.exit(EXIT_REFUSED)
        return
    if every_events or every_seconds:
        policy = vault.checkpoint_policy
        vault.set_checkpoint_policy(every_events or policy.every_events, every_seconds or policy.every_seconds)
        emit(as_json, {"every_events": every_events or policy.every_events,
                       "every_seconds": every_seconds or policy.every_seconds}, "checkpoint cadence set")
        return
    if list_all:
        rows = vault.checkpoints()
        emit(as_json, rows, "\n".join(f"{r['size']:>12,}  {r['at']}  {r['root']}" for r in rows))
        return
    note = vault.checkpoint()
    emit(as_json, {"note": note}, note.rstrip("\n"))


@click.command("verify-bundle")
@click.argument("bundle_file", type=_FILE)
@click.option("--supplier", "suppliers", multiple=True, type=_FILE,
              help="A supplier's public identity file: may sign manifests under its own issuer prefix. Repeat.")
@click.option("--engine", "engines", multiple=True, type=_FILE,
              help="A store's engine key (`keyvault --store DIR identity show --public`): may sign checkpoints of "
                   "its own log. Repeat.")
@click.option("--witness", "witnesses", multiple=True, type=_FILE,
              help="A witness's public identity file: the checkpoint must carry its C2SP cosignature. Repeat.")
@click.option("--trust", "trusted", multiple=True, type=_FILE,
              help="A public identity file in the roles it declares (signed by its key); one declaring none is a "
                   "supplier. Repeat.")
@click.option("--max-age", help="Refuse evidence older than this: the checkpoint's signed time, e.g. 90s, 15m, 24h, "
                                 "7d.")
@click.option("--key", help="The key itself, to check it opens the bundle's commitment ('-' reads stdin).")
@click.option("--min-witnesses", type=click.IntRange(min=0), default=None, help="Require this many cosignatures of "
              "the checkpoint by distinct --witness keys (default: all given).")
@json_option
def verify_bundle(bundle_file: Path, suppliers: tuple[Path, ...], engines: tuple[Path, ...],
                  witnesses: tuple[Path, ...], trusted: tuple[Path, ...], max_age: str | None, key: str | None,
                  min_witnesses: int | None, as_json: bool) -> None:
    """Check a trace bundle offline with public keys only, each in its role: one PASS/FAIL line per rule.

    Exit 0 only if every rule passes, 3 if one failed (a key file refused included), 1 if the bundle file
    cannot be read, 2 if the command line is wrong.
    """
    if not (suppliers or engines or witnesses or trusted):
        raise click.UsageError("give the keys to check with: --supplier FILE and --engine FILE (or --trust FILE)")
    max_age_ms = _duration_ms(max_age)
    material = _key_material(key)
    refused: list[Check] = []

    def load(paths: tuple[Path, ...], option: str) -> list[PublicIdentity]:
        found = []
        for path in paths:
            try:
                found.append(PublicIdentity.load(path))
            except KeyvaultError as exc:  # unreadable, damaged, or its roles or name edited after signing
                refused.append(Check("trusted keys", False, f"{option} {path}: {exc}"))
        return found

    declared = Trusted.by_declared_roles(load(trusted, "--trust"))
    keys = Trusted(suppliers=declared.suppliers + tuple(load(suppliers, "--supplier")),
                   distributors=declared.distributors,
                   engines=declared.engines + tuple(load(engines, "--engine")),
                   witnesses=declared.witnesses + tuple(load(witnesses, "--witness")))
    if refused:
        checks = refused  # nothing is checked with keys that are not the ones meant
    else:
        try:
            data = read_bounded(bundle_file, MAX_BUNDLE_BYTES, "a trace bundle")
        except OSError as exc:
            raise click.ClickException(f"cannot read the bundle {bundle_file}: {exc.strerror}") from None
        except KeyvaultError as exc:  # larger than any bundle (a device like /dev/zero): read no further
            raise click.ClickException(str(exc)) from None
        checks = verify_bundle_bytes(data, keys, material, max_age_ms=max_age_ms, min_witnesses=min_witnesses)
    passed = all(c.ok for c in checks)
    if as_json:
        emit(True, {"ok": passed, "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]}, "")
    else:
        click.echo("\n".join(c.line() for c in checks))
        click.echo("ALL CHECKS PASSED" if passed else "VERIFICATION FAILED")
    if not passed:
        sys.exit(EXIT_REFUSED)


_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _duration_ms(text: str | None) -> int | None:
    """``--max-age`` in ms: a whole number and a unit (s, m, h, d), like 90s or 24h."""
    if text is None:
        return None
    number, unit = text.strip()[:-1], text.strip()[-1:]
    if unit not in _UNITS or not number.isdigit() or not 0 < int(number) <= 10**9 or not number.isascii():
        raise click.BadParameter("give a whole number and a unit: s, m, h or d (like 90s, 15m, 24h, 7d)",
                                 param_hint="--max-age")
    return int(number) * _UNITS[unit]


def _key_material(key: str | None) -> bytes | None:
    """A key's canonical form (what its commitment hashes), or None."""
    if key is None:
        return None
    if key == "-":
        key = stdin_key()
    try:
        return key_material(key)
    except MalformedKeyError:
        raise click.BadParameter("not a valid key (give the key itself, not its serial)", param_hint="--key") from None
