"""Reports a supplier can reconcile with: ``stats --since/--until/--daily`` (its rendering), ``report`` and
``list``. Every report names keys by serial only, never the key itself."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from keyvault import Vault

from .output import State, emit, handle_errors, json_option, write_new_file

F = TypeVar("F", bound=Callable[..., Any])
_WHEN = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"])
REPORT_COLUMNS = ("serial", "state", "order_id", "at", "reason", "blacklisted")
LISTS = ("batches", "manifests", "blacklist", "tokens")
_CHUNK = 64 * 1024  # bytes of CSV text per write


def window_options(f: F) -> F:
    """--since, --until (UTC, --until excluded) and --daily."""
    f = click.option("--daily", is_flag=True, help="Also count per UTC day.")(f)
    f = click.option("--until", type=_WHEN, help="Count events before this UTC date/time (excluded).")(f)
    return click.option("--since", type=_WHEN, help="Count events from this UTC date/time on.")(f)


def _ms(when: dt.datetime | None) -> int | None:
    return None if when is None else int(when.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)


def show_activity(vault: Vault, since: dt.datetime | None, until: dt.datetime | None, daily: bool,
                  as_json: bool) -> None:
    """Print the redeems and voids of a time window (``keyvault stats --since --until --daily``)."""
    doc = vault.activity(_ms(since), _ms(until), daily=daily).to_dict()
    if as_json:
        emit(True, doc, "")
        return
    t = doc["totals"]
    click.echo(f"from {doc['since'] or 'the start'} until {doc['until'] or 'now'}: {t['redeemed']:,} redeemed, "
               f"{t['void']:,} void")
    for s in doc["suppliers"]:
        click.echo(f"  supplier {s['name']} (id {s['supplier']}, prefix {s['prefix']}): {s['redeemed']:,} redeemed, "
                   f"{s['void']:,} void")
    for b in doc["batches"]:
        click.echo(f"  batch {b['batch']} {b['product']}: {b['redeemed']:,} redeemed, {b['void']:,} void")
    for d in doc.get("days", []):
        click.echo(f"  {d['day']}: {d['redeemed']:,} redeemed, {d['void']:,} void"
                   + "".join(f"; {b['batch']} {b['redeemed']:,}/{b['void']:,}" for b in d["batches"]))


@click.command()
@click.option("--batch", required=True, help="The batch id, like 7KQ2-00A.")
@click.option("--format", "form", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="CSV (a header, then one row per key) or JSON (one document with a `keys` array).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this new file, whole or not at all, instead of stdout.")
@click.pass_obj
@handle_errors
def report(state: State, batch: str, form: str, out: Path | None) -> None:
    """Every key of a batch, streamed: serial, state, order id, time, void reason, blacklisted (never the key)."""
    if out is not None and out.exists():
        raise click.UsageError(f"{out} already exists; choose another --out (a file is never overwritten)")
    rows = state.vault().key_report(batch)
    first = next(rows, None)  # a batch that is not here fails before anything is printed
    parts = _report_text(batch, form, first, rows)
    if out is not None:
        write_new_file(out, (part.encode("utf-8") for part in parts))
        click.echo(f"report of batch {batch.upper()} written to {out}", err=True)
        return
    for part in parts:
        sys.stdout.write(part)
    sys.stdout.flush()


def _report_text(batch: str, form: str, first: dict[str, Any] | None, rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The report in chunks of text: CSV, or one JSON document."""
    if form == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(REPORT_COLUMNS)
        while first is not None:
            writer.writerow(["" if first[c] is None else str(first[c]).lower() if c == "blacklisted" else first[c]
                             for c in REPORT_COLUMNS])
            if buf.tell() > _CHUNK:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
            first = next(rows, None)
        yield buf.getvalue()
        return
    yield '{"batch": %s, "keys": [' % json.dumps(batch.upper())
    sep = "\n"
    while first is not None:
        yield sep + json.dumps(first, ensure_ascii=False)
        sep = ",\n"
        first = next(rows, None)
    yield "\n]}\n"


@click.command("list")
@click.argument("what", type=click.Choice(LISTS))
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Items per page.")
@click.option("--after", help="The cursor: the `next` the previous page printed.")
@json_option
@click.pass_obj
@handle_errors
def list_(state: State, what: str, limit: int, after: str | None, as_json: bool) -> None:
    """One page of the store's batches, manifests, blacklist entries or tokens, in a stable order."""
    doc = state.vault().page(what, after=after, limit=limit).to_dict()
    lines = [_line(what, item) for item in doc[what]]
    if doc["next"]:
        lines.append(f"more: keyvault list {what} --limit {limit} --after {doc['next']}")
    emit(as_json, doc, "\n".join(lines) or f"no {what}")


def _line(what: str, item: dict[str, Any]) -> str:
    if what == "batches":
        return f"{item['batch']}  {item['count']:>10,}  {item['product']}  ({item['supplier_name']}, {item['origin']})"
    if what == "manifests":
        return f"{item['manifest']}  {item['batch']}  {item['count']:,} keys  {item['supplier_name']}"
    if what == "blacklist":
        return f"{item['level']:<8} {item['target']}  {item['reason']}  ({item['at']})"
    return f"{item['name']:<24} {item['scope']:<8} {item['created_at']}"
