"""``keyvault authority``: bind a store to a PostgreSQL authority shared by many nodes, show, check, unset."""

from __future__ import annotations

from typing import Any

import click

from .output import State, emit, handle_errors, json_option


@click.group()
def authority() -> None:
    """The PostgreSQL authority that decides redeems, voids and blacklist entries for many nodes."""


@authority.command("set")
@click.argument("dsn")
@click.option("--migrate", is_flag=True,
              help="Move this store's own redeems, voids and blacklist into the authority (one transaction, "
                   "counted back).")
@click.option("--cluster-key", "cluster_key", metavar="FILE",
              help="The cluster engine key's identity file (0600): every process of this node may then sequence "
                   "the cluster event log (checked first: it must be the key the cluster registered).")
@json_option
@click.pass_obj
@handle_errors
def authority_set(state: State, dsn: str, migrate: bool, cluster_key: str | None, as_json: bool) -> None:
    """Bind the store to the authority at DSN (like 'host=db1,db2 dbname=keyvault user=keyvault')."""
    doc = state.vault().authority.set(dsn, migrate=migrate, cluster_key=cluster_key).to_dict()
    moved = f"; moved {doc['moved_keys']} redeemed or void keys and {doc['moved_blacklist']} blacklist entries" \
        if migrate else ""
    keyed = f"; sequences the cluster log with {doc['cluster_key']}" if doc.get("cluster_key") else ""
    emit(as_json, doc, f"bound to {doc['authority']}{moved}{keyed}")


@authority.command("cluster-key")
@click.argument("file", required=False)
@click.option("--clear", is_flag=True, help="Forget the recorded key: this node then only follows the cluster log.")
@json_option
@click.pass_obj
@handle_errors
def authority_cluster_key(state: State, file: str | None, clear: bool, as_json: bool) -> None:
    """Record the cluster engine key FILE (0600) in the binding, checked against the cluster's; or --clear it."""
    from keyvault import AuthorityError, UsageError

    if clear == (file is not None):
        raise UsageError("give the cluster engine key's identity FILE, or --clear (not both); nothing was changed")
    if clear:
        try:
            vault = state.vault()
        except AuthorityError:  # unreachable: clear it offline
            vault = state.vault(authority=False)
    else:
        vault = state.vault()
    doc = vault.authority.cluster_key(file).to_dict()
    emit(as_json, doc, _show(doc))


@authority.command("show")
@json_option
@click.pass_obj
@handle_errors
def authority_show(state: State, as_json: bool) -> None:
    """Show the authority the store is bound to (its password masked); works while PostgreSQL is down."""
    doc = state.vault(authority=False).authority.show().to_dict()
    emit(as_json, doc, _show(doc))


def _show(doc: dict[str, Any]) -> str:
    if not doc["bound"]:
        return "not bound: this store decides alone"
    key = doc["cluster_key"]
    if key is None:
        sequencing = "cluster key:   none (this node follows the cluster log; it does not sequence it)"
    else:
        named = "" if key["from"] == "binding" else f", named by {key['from']}"
        public = f"{key['origin']} ({key['file']}{named})" if key["id"] else f"{key['file']}{named}"
        sequencing = f"cluster key:   {public}\ncan sequence:  " + \
            ("yes" if doc["can_sequence"] else f"no: {key['problem']}")
    return f"bound to {doc['authority']}\n{sequencing}"


@authority.command("check")
@json_option
@click.pass_obj
@handle_errors
def authority_check(state: State, as_json: bool) -> None:
    """Reach the authority: schema version, replication state, and this node's cache lag in change numbers."""
    doc = state.vault().authority.check().to_dict()
    emit(as_json, doc, _say(doc))


@authority.command("unset")
@json_option
@click.pass_obj
@handle_errors
def authority_unset(state: State, as_json: bool) -> None:
    """Unbind the store: it decides alone again, from what its cache holds (works while PostgreSQL is down)."""
    from keyvault import AuthorityError

    try:
        vault = state.vault()
    except AuthorityError:  # unreachable: unbind offline, with the cache as it is
        vault = state.vault(authority=False)
    doc = vault.authority.unset().to_dict()
    emit(as_json, doc, f"unbound from {doc['was']}: this store decides alone again")


def _say(doc: dict[str, Any]) -> str:
    role = "a standby (read-only!)" if doc["in_recovery"] else "the primary"
    standbys = ", ".join(f"{s['name']} {s['state']}/{s['sync_state']}" for s in doc["standbys"]) or "none"
    return "\n".join([
        f"authority: {doc['authority']} (PostgreSQL {doc['server_version']}, {role})",
        f"schema:    version {doc['schema_version']} (this keyvault: {doc['schema_expected']})",
        f"standbys:  {standbys}; synchronous_standby_names={doc['synchronous_standby_names'] or '(none)'}",
        f"changes:   newest {doc['newest_change']}, this node's cache at {doc['cache_change']} "
        f"(lag {doc['cache_lag']})",
    ])
