"""``keyvault batch`` and ``keyvault manifest``: issuing and importing batches."""

from __future__ import annotations

import datetime as dt
import math
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from keyvault import BatchInfo, Identity, ThrottlePolicy
from keyvault.engine import read_cards_csv
from keyvault.formats.keyformat import normalize_imported
from keyvault.formats.manifest import read_manifest

from .output import State, emit, handle_errors, json_option, progress

F = TypeVar("F", bound=Callable[..., Any])
_DAY_MS = 86_400_000


def window_options(f: F) -> F:
    """--valid-from and --valid-days for a batch's validity window."""
    f = click.option("--valid-days", type=click.FloatRange(min=0, min_open=True),
                     help="Keys expire this many days after --valid-from (or now).")(f)
    return click.option("--valid-from", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]),
                        help="Keys are refused before this UTC date/time.")(f)


def window(valid_from: dt.datetime | None, valid_days: float | None) -> tuple[int | None, int | None]:
    """(valid_from, valid_until) in ms since the epoch."""
    start = int(valid_from.replace(tzinfo=dt.timezone.utc).timestamp() * 1000) if valid_from else None
    base = start if start is not None else int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    until = base + int(valid_days * _DAY_MS) if valid_days else None
    return start, until


def describe(info: BatchInfo, verb: str) -> str:
    """One human line about a batch."""
    until = f", valid until {info.to_dict()['valid_until']}" if info.valid_until else ""
    uses = f", {info.uses:,} uses each (once per order)" if info.uses != 1 else ""
    return (f"{verb} batch {info.id}: {info.count:,} {info.kind} keys of {info.product} from "
            f"{info.supplier_name} (supplier id {info.supplier}){until}{uses}")


@click.group()
def batch() -> None:
    """Issue batches of keys, or import upstream cards as a batch."""


@batch.command("issue")
@click.option("--supplier", "identity_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The supplier's identity file (from `keyvault supplier init`).")
@click.option("--product", required=True, help="Product / SKU the keys are for.")
@click.option("--count", required=True, type=click.IntRange(min=1), help="How many keys.")
@click.option("--uses", default=1, show_default=True, type=click.IntRange(min=1, max=1_000_000),
              help="How many orders may each redeem a key (once each): above 1, count-limited keys.")
@window_options
@click.option("--keys-out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The one-time printable export (.csv, or .json); created 0600, never overwritten.")
@click.option("--manifest-out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The signed manifest for platforms (.kvm).")
@click.option("--long-form", is_flag=True,
              help="Add each key's long form (the key signed by the supplier, for QR codes and links) to the export.")
@json_option
@click.pass_obj
@handle_errors
def issue(state: State, identity_file: Path, product: str, count: int, uses: int, valid_from: dt.datetime | None,
          valid_days: float | None, keys_out: Path, manifest_out: Path, long_form: bool, as_json: bool) -> None:
    """Issue a batch: keys for the printer (once), a signed manifest, records in this store."""
    identity = Identity.load(identity_file)
    start, until = window(valid_from, valid_days)
    vault = state.vault()
    report, finish = progress("issuing keys", count)
    try:
        info = vault.issue_batch(identity, product, count, keys_out=keys_out, manifest_out=manifest_out,
                                 valid_from=start, valid_until=until, progress=report, uses=uses,
                                 long_form=long_form)
    finally:
        finish()
    doc = {**info.to_dict(), "keys_out": str(keys_out), "manifest_out": str(manifest_out), "long_form": long_form}
    emit(as_json, doc, describe(info, "issued") +
         f"\nprintable keys: {keys_out} (mode 0600) - LIVE KEYS, the only copy: deliver encrypted, then destroy"
         f"\nmanifest for platforms: {manifest_out} (holds no keys)")


@batch.command("import")
@click.option("--supplier", "identity_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The identity that signs the batch's manifest.")
@click.option("--product", required=True, help="Product / SKU the cards are for.")
@click.argument("cards_csv", type=click.Path(dir_okay=False, path_type=Path))
@window_options
@click.option("--manifest-out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The signed manifest for platforms (.kvm).")
@json_option
@click.pass_obj
@handle_errors
def import_(state: State, identity_file: Path, product: str, cards_csv: Path, valid_from: dt.datetime | None,
            valid_days: float | None, manifest_out: Path, as_json: bool) -> None:
    """Make a batch of upstream cards from a CSV: a 'code' column, or 'card_number' and 'password'."""
    identity = Identity.load(identity_file)
    start, until = window(valid_from, valid_days)
    if cards_csv.exists() and not cards_csv.is_file():
        raise click.UsageError(f"{cards_csv} is not a regular file (a pipe or a device): the cards are read twice, "
                               "checked and then imported, so give a file; nothing was imported")
    kind, rows = read_cards_csv(cards_csv)  # checked before anything is written
    report, finish = progress("hashing cards", len(rows))
    try:
        info = state.vault().import_cards(identity, product, cards_csv, manifest_out=manifest_out,
                                          valid_from=start, valid_until=until, progress=report)
    finally:
        finish()
    emit(as_json, {**info.to_dict(), "manifest_out": str(manifest_out)},
         describe(info, "imported") + f"\nmanifest for platforms: {manifest_out}"
         f"\n{cards_csv} still holds the cards in plaintext: store it safely or destroy it")
    secrets = [password for _, password in rows] if kind == "pair" else [code for code, _ in rows]
    bits = entropy_bits(secrets)
    if bits < WEAK_BITS:
        click.echo(weak_warning(kind, bits, len(rows), state.vault().throttle_policy()), err=True)


#: Codes or passwords with fewer bits than this can be guessed: `batch import` warns.
WEAK_BITS = 40


def entropy_bits(secrets: list[str]) -> float:
    """Bits of entropy of the weakest secret, estimated from the alphabet and length actually seen
    (as keyvault folds them: upper case, spaces and dashes dropped)."""
    folded = [normalize_imported(s) for s in secrets]
    seen = set("".join(folded))
    alphabet = (10 if seen & set(string.digits) else 0) + (26 if seen & set(string.ascii_uppercase) else 0)
    alphabet += len(seen - set(string.digits) - set(string.ascii_uppercase))  # other symbols: those seen
    shortest = min((len(s) for s in folded), default=0)
    return shortest * math.log2(alphabet) if alphabet > 1 else 0.0


def weak_warning(kind: str, bits: float, count: int, policy: ThrottlePolicy) -> str:
    """What a platform should know about guessable codes or passwords, with the current policy's numbers."""
    what = "passwords" if kind == "pair" else "codes"
    per_day = policy.guesses_per_day()
    pace = ("the throttle allows no limit of guesses per client (the default policy is unlimited)"
            if per_day is None else
            f"the throttle allows one client {per_day:,} guesses per day with the current policy "
            f"({policy.max_refused} refused keys per {policy.window_seconds} s, then blocked "
            f"{policy.block_seconds} s)")
    if kind == "pair":
        lock = (f"each card locks after {policy.card_attempts} wrong passwords, so a guesser finds one card in "
                f"about {max(1, round(2 ** bits / policy.card_attempts)):,} it tries"
                if policy.card_attempts else "cards never lock (keyvault throttle set --card-attempts N)")
    else:
        lock = (f"every guess is tried against all {count:,} codes: about one in "
                f"{max(1, round(2 ** bits / count)):,} finds one")
    return (f"warning: these {what} carry only about {bits:.0f} bits of entropy (under {WEAK_BITS}): {pace}; "
            f"{lock}. Name a client on every verify and redeem, and keep the policy strict "
            "(keyvault throttle set).")


@click.group()
def manifest() -> None:
    """Signed batch manifests."""


@manifest.command("import")
@click.argument("manifest_file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@click.pass_obj
@handle_errors
def manifest_import(state: State, manifest_file: Path, as_json: bool) -> None:
    """Import a supplier's signed manifest (signature checked first; all or nothing)."""
    verified = read_manifest(manifest_file)
    report, finish = progress("storing records", verified.count)
    try:
        info, new = state.vault().import_manifest(manifest_file, progress=report)
    finally:
        finish()
    emit(as_json, {**info.to_dict(), "new": new},
         describe(info, "imported" if new else "already had") + ("" if new else " (nothing changed)"))
