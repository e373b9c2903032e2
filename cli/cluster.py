"""``keyvault cluster local up|status|down|demo``: a keyvault cluster on the loopback (docs/cluster.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .cluster_demo import run_demo
from .cluster_local import LocalCluster
from .output import EXIT_ERROR, emit, handle_errors, json_option

_DIR = click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
                    help="The cluster's directory (its state file, data and logs).")


@click.group()
def cluster() -> None:
    """Clusters of keyvault nodes sharing one PostgreSQL authority."""


@cluster.group()
def local() -> None:
    """A cluster on this machine's loopback: etcd, Patroni/PostgreSQL and keyvault nodes."""


def _describe(doc: dict[str, Any]) -> str:
    lines = [f"cluster {doc['scope']} in {doc['dir']}",
             f"  leader: {doc['leader'] or 'none'}; sync standby: {', '.join(doc['sync_standby']) or 'none'}",
             f"  dsn: {doc['dsn']}"]
    for proc in doc["processes"]:
        where = proc.get("url") or f"port {proc['port']}"
        lines.append(f"  {proc['kind']:<8} {proc['name']:<7} {proc['role']:<14} {proc.get('state', ''):<10} pid {proc['pid']:<8} "
                     f"{where} {'alive' if proc['alive'] else 'NOT RUNNING'}")
    if doc.get("cluster_pub"):
        lines.append(f"  cluster engine key: {doc['cluster_key']} (every node sequences the cluster log with it); "
                     f"public identity for `verify-bundle --engine`: {doc['cluster_pub']}")
    for node in doc["nodes"]:
        lines.append(f"  {node['name']} admin token: {node['admin_token']}"
                     + ("" if node["bound_to_cluster"] else " (not bound to the cluster: no `authority` command)"))
    return "\n".join(lines)


@local.command("up")
@_DIR
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(1, 16), help="keyvault nodes to start.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes per keyvault node.")
@json_option
@handle_errors
def up(root: Path, nodes: int, workers: int, as_json: bool) -> None:
    """Start three etcd and three PostgreSQL members (Patroni, synchronous) and N keyvault nodes."""
    doc = LocalCluster(root).up(nodes, say=lambda line: click.echo(line, err=True), node_workers=workers)
    emit(as_json, doc, _describe(doc))


@local.command("status")
@_DIR
@json_option
@handle_errors
def status(root: Path, as_json: bool) -> None:
    """Live roles (Patroni's REST API) and which of the started processes are alive."""
    doc = LocalCluster(root).status()
    emit(as_json, doc, _describe(doc))


@local.command("down")
@_DIR
@json_option
@handle_errors
def down(root: Path, as_json: bool) -> None:
    """Stop everything `up` started, by pid, waiting for each (doing nothing when it is already stopped)."""
    stopped = LocalCluster(root).down()
    emit(as_json, {"stopped": stopped},
         "\n".join(f"stopped {p['name']} (pid {p['pid']})" for p in stopped) or "nothing was running")


@local.command("demo")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to start the cluster (default: a new directory under /var/tmp).")
@click.option("--keep", is_flag=True, help="Leave the cluster running at the end.")
@handle_errors
def demo(root: Path | None, keep: bool) -> None:
    """The story: two nodes, redeems across them, the primary killed under load, the checker's summary, a bundle
    made on one node of a key redeemed on the other, verified with the cluster's public key."""
    if not run_demo(root, click.echo, keep=keep):
        click.echo("the checker found acknowledged redeems lost or doubled, or the cluster log or the bundle did not "
                   "check out (above)", err=True)
        raise SystemExit(EXIT_ERROR)
