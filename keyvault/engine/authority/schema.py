"""The authority's tables in PostgreSQL, and the version table that says which layout a database holds.

Portable to PostgreSQL-wire databases (CockroachDB, YugabyteDB): plain tables, one sequence, primary
keys; every decision is ``INSERT … ON CONFLICT DO NOTHING RETURNING`` plus a read for the losers.
"""

from __future__ import annotations

#: The layout this version writes and reads; a database at a newer version is refused.
SCHEMA_VERSION = 4

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
    # Version 2: the cluster's one event log (docs/cluster.md, "The cluster event log"), written only by the
    # sequencer: the node holding the log's advisory lock. Each row is one Merkle leaf, numbered without a gap
    # (the primary key and the fenced head below), naming the change it records (each change at most once).
    """CREATE TABLE IF NOT EXISTS keyvault_log (
        idx bigint PRIMARY KEY,
        change bigint NOT NULL UNIQUE,
        leaf bytea NOT NULL,
        hash bytea NOT NULL)""",
    # The log's head, one row: its size, last leaf hash, and the change number every change up to which is
    # in the log (or was not one to log). A batch commits only when it moves the head it read (the fence).
    """CREATE TABLE IF NOT EXISTS keyvault_log_head (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        size bigint NOT NULL,
        last_hash bytea NOT NULL,
        change bigint NOT NULL)""",
    "INSERT INTO keyvault_log_head (one, size, last_hash, change) "
    "VALUES (true, 0, decode(repeat('00', 32), 'hex'), 0) ON CONFLICT (one) DO NOTHING",
    # Each subject's latest event (the links and the subject index every checkpoint commits to).
    """CREATE TABLE IF NOT EXISTS keyvault_log_subjects (
        subject bytea PRIMARY KEY,
        latest bigint NOT NULL)""",
    # Checkpoints signed with the cluster engine key, by tree size.
    """CREATE TABLE IF NOT EXISTS keyvault_checkpoints (
        size bigint PRIMARY KEY,
        root bytea NOT NULL,
        at_ms bigint NOT NULL,
        note bytea NOT NULL)""",
    # The cluster engine key's public half (never the secret): whoever reads it can check the checkpoints.
    """CREATE TABLE IF NOT EXISTS keyvault_cluster (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        name text NOT NULL,
        public_key bytea NOT NULL,
        origin text NOT NULL)""",
    # -- version 3: checkout across nodes (docs/cluster.md, "Holds and count-limited keys") ----------------------
    # A key under checkout (held, or a count-limited key partly used) has a keyvault_keys row of state 0 (active):
    # the row every checkout decision about the key locks (SELECT … FOR UPDATE), and the row a plain redeem or a
    # void of it conflicts with, so each of them waits for the other. Its last use, or a confirmed hold, turns it
    # into the key's redeemed row with the order id; a void turns it into the void row.
    # Live holds: several at once only for a count-limited key (one per order, at most its uses left).
    """CREATE TABLE IF NOT EXISTS keyvault_holds (
        serial bigint NOT NULL,
        order_id text NOT NULL,
        at_ms bigint NOT NULL,
        expires_at_ms bigint NOT NULL,
        change bigint NOT NULL,
        PRIMARY KEY (serial, order_id))""",
    # The uses of count-limited keys: once per (key, order), with the key's limit and the uses left after it.
    """CREATE TABLE IF NOT EXISTS keyvault_uses (
        serial bigint NOT NULL,
        order_id text NOT NULL,
        uses_limit integer NOT NULL,
        uses_left integer NOT NULL,
        at_ms bigint NOT NULL,
        change bigint NOT NULL,
        PRIMARY KEY (serial, order_id))""",
    # A checkout change's number: a hold's or expiry's end (ms), the uses left after a use.
    "ALTER TABLE keyvault_changes ADD COLUMN IF NOT EXISTS detail bigint",
    # An order's keys on any node (`keyvault trace --order`): its changes by order id (a redeem's text).
    "CREATE INDEX IF NOT EXISTS keyvault_changes_text ON keyvault_changes (text, change)",
]

#: Version 4: the nodes witness each other's cluster log (docs/cluster.md, "Nodes witness the cluster log").
WITNESS_SCHEMA = [
    # Every witness the sequencer submits each new cluster checkpoint to: a node's witness or an outside one.
    """CREATE TABLE IF NOT EXISTS keyvault_witnesses (
        public_key bytea PRIMARY KEY,
        name text NOT NULL,
        url text NOT NULL,
        at_ms bigint NOT NULL)""",
    # The witness key of the node whose sequencer signed a checkpoint: that node never cosigns it.
    "ALTER TABLE keyvault_checkpoints ADD COLUMN IF NOT EXISTS signer bytea",
]
SCHEMA += WITNESS_SCHEMA
SCHEMA.append(f"INSERT INTO keyvault_schema (version) VALUES ({SCHEMA_VERSION}) ON CONFLICT (version) DO NOTHING")

