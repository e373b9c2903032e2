"""The authority's tables in PostgreSQL, and the version table that says which layout a database holds.

Portable to PostgreSQL-wire databases (CockroachDB, YugabyteDB): plain tables, one sequence, primary
keys; every decision is ``INSERT … ON CONFLICT DO NOTHING RETURNING`` plus a read for the losers.
"""

from __future__ import annotations

#: The layout this version writes and reads; a database at a newer version is refused.
SCHEMA_VERSION = 1

#: Statements that bring an empty database (or one at an older version) to SCHEMA_VERSION, idempotent.
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS keyvault_schema (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now())""",
    # Every change (redeem, void, blacklist add and lift) takes the next number: the nodes' caches catch up by it.
    "CREATE SEQUENCE IF NOT EXISTS keyvault_change",
    # A key's decided state: one row per serial that is not active (the primary key is exactly-once).
    """CREATE TABLE IF NOT EXISTS keyvault_keys (
        serial bigint PRIMARY KEY,
        state smallint NOT NULL,
        text text NOT NULL,
        at_ms bigint NOT NULL,
        change bigint NOT NULL)""",
    # Blacklist entries by their stored target (level byte + serial, batch key or supplier id).
    """CREATE TABLE IF NOT EXISTS keyvault_blacklist (
        target bytea PRIMARY KEY,
        level text NOT NULL,
        shown text NOT NULL,
        reason text NOT NULL,
        at_ms bigint NOT NULL,
        change bigint NOT NULL)""",
    # The event of every change, written by the transaction that decides it.
    """CREATE TABLE IF NOT EXISTS keyvault_changes (
        change bigint PRIMARY KEY,
        kind text NOT NULL,
        serial bigint,
        target bytea,
        text text NOT NULL,
        at_ms bigint NOT NULL)""",
    # Signed manifest files by their SHA-256: imported on one node, fetched and checked by every other.
    """CREATE TABLE IF NOT EXISTS keyvault_manifests (
        hash bytea PRIMARY KEY,
        body bytea NOT NULL,
        at_ms bigint NOT NULL,
        change bigint NOT NULL)""",
    # Service tokens (their hashes only), valid on every node.
    """CREATE TABLE IF NOT EXISTS keyvault_tokens (
        name text PRIMARY KEY,
        hash text NOT NULL,
        scope text NOT NULL,
        created bigint NOT NULL,
        change bigint NOT NULL)""",
    # Pinned identities (supplier, platform, … keys whose signatures nodes accept), for every node.
    """CREATE TABLE IF NOT EXISTS keyvault_trust (
        public_key bytea PRIMARY KEY,
        name text NOT NULL,
        prefix bigint NOT NULL,
        role text NOT NULL,
        pinned boolean NOT NULL,
        change bigint NOT NULL)""",
    f"INSERT INTO keyvault_schema (version) VALUES ({SCHEMA_VERSION}) ON CONFLICT (version) DO NOTHING",
]
