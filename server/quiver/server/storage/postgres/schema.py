"""The PostgreSQL schema: the SQLite backend's tables (``storage/schema.py``) with
PostgreSQL's types (bigint, boolean, bytea vectors, jsonb attributes and metadata), and no
full-text index (the keyword index is a cache built from the chunk rows)."""

from __future__ import annotations

import re

from quiver.server.storage.postgres.connection import Conn, PgDatabase

SCHEMA_VERSION = 1
MIGRATION_LOCK = 0x51_55_49_56  # "QUIV": one server migrates at a time

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS files (
    seq bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    tenant text NOT NULL,
    subject text NOT NULL,
    filename text NOT NULL,
    purpose text NOT NULL,
    bytes bigint NOT NULL,
    sha256 text NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (tenant, subject, seq);
CREATE INDEX IF NOT EXISTS files_by_sha256 ON files (sha256);

CREATE TABLE IF NOT EXISTS vector_stores (
    seq bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    tenant text NOT NULL,
    subject text NOT NULL,
    name text NOT NULL,
    created_at bigint NOT NULL,
    last_active_at bigint NOT NULL,
    expires_anchor text,
    expires_days integer,
    metadata jsonb NOT NULL DEFAULT '{}',
    embedding_model text NOT NULL,
    embedding_dimensions integer NOT NULL,
    dimensions_sent boolean NOT NULL DEFAULT true,
    commit_seq bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS vector_stores_by_owner ON vector_stores (tenant, subject, seq);

CREATE TABLE IF NOT EXISTS vector_store_files (
    seq bigserial PRIMARY KEY,
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    file_id text NOT NULL,
    tenant text NOT NULL,
    subject text NOT NULL,
    created_at bigint NOT NULL,
    status text NOT NULL,
    last_error_code text,
    last_error_message text,
    chunk_max_tokens integer NOT NULL,
    chunk_overlap_tokens integer NOT NULL,
    chunk_auto boolean NOT NULL,
    attributes jsonb NOT NULL DEFAULT '{}',
    usage_bytes bigint NOT NULL DEFAULT 0,
    batch_id text,
    generation bigint NOT NULL DEFAULT 0,
    lease_owner text,
    lease_expires_at double precision NOT NULL DEFAULT 0,
    commit_seq bigint NOT NULL DEFAULT 0,
    UNIQUE (vector_store_id, file_id)
);
CREATE INDEX IF NOT EXISTS vector_store_files_by_status
    ON vector_store_files (vector_store_id, status);
CREATE INDEX IF NOT EXISTS vector_store_files_by_file ON vector_store_files (file_id);
CREATE INDEX IF NOT EXISTS vector_store_files_by_batch ON vector_store_files (batch_id);
CREATE INDEX IF NOT EXISTS vector_store_files_by_lease_expiry
    ON vector_store_files (lease_expires_at) WHERE status = 'in_progress';
CREATE INDEX IF NOT EXISTS vector_store_files_by_lease_owner
    ON vector_store_files (lease_owner, lease_expires_at) WHERE status = 'in_progress';

CREATE TABLE IF NOT EXISTS file_batches (
    seq bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    vector_store_id text NOT NULL,
    tenant text NOT NULL,
    subject text NOT NULL,
    created_at bigint NOT NULL,
    status text NOT NULL,
    cancel_requested boolean NOT NULL DEFAULT false,
    request_id text,
    sequence bigint NOT NULL DEFAULT 0,
    request_digest text
);
CREATE UNIQUE INDEX IF NOT EXISTS file_batches_by_request
    ON file_batches (tenant, subject, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS file_batches_by_store ON file_batches (vector_store_id);

CREATE TABLE IF NOT EXISTS batch_files (
    seq bigserial PRIMARY KEY,
    batch_id text NOT NULL REFERENCES file_batches (id) ON DELETE CASCADE,
    file_id text NOT NULL,
    status text NOT NULL,
    last_error_code text,
    last_error_message text,
    changed_at_sequence bigint NOT NULL DEFAULT 0,
    UNIQUE (batch_id, file_id)
);
CREATE INDEX IF NOT EXISTS batch_files_by_status ON batch_files (batch_id, status);
CREATE INDEX IF NOT EXISTS batch_files_by_change ON batch_files (batch_id, changed_at_sequence);

-- id: the chunk's label in its store's hnswlib index (never reused); vector: float32 bytes.
CREATE TABLE IF NOT EXISTS chunks (
    id bigserial PRIMARY KEY,
    vector_store_id text NOT NULL,
    file_id text NOT NULL,
    tenant text NOT NULL,
    subject text NOT NULL,
    chunk_index integer NOT NULL,
    token_count integer NOT NULL,
    text text NOT NULL,
    vector bytea NOT NULL,
    UNIQUE (vector_store_id, file_id, chunk_index)
);
CREATE INDEX IF NOT EXISTS chunks_by_store ON chunks (vector_store_id, id);

-- The replicas serving this database (core/replicas.py): each heartbeats its row (unix
-- seconds, the replica's clock); address: the host:port others forward searches to.
CREATE TABLE IF NOT EXISTS replicas (
    id text PRIMARY KEY,
    address text NOT NULL,
    started_at double precision NOT NULL,
    heartbeat_at double precision NOT NULL
);
"""

ADDED = """
-- A store's commit sequence (core/index_sync.py), raised under the store row's lock by each
-- file's completing transaction, and the value a file last completed at (0: never). A
-- database made before them gets 0 for both: every completed file at or below the counter.
ALTER TABLE vector_stores ADD COLUMN IF NOT EXISTS commit_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE vector_store_files ADD COLUMN IF NOT EXISTS commit_seq bigint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS vector_store_files_by_commit
    ON vector_store_files (vector_store_id, commit_seq);
"""
"""What was added after the schema first shipped (CREATE TABLE IF NOT EXISTS does not add a
column to an existing table)."""


RELATIONS = tuple(
    re.findall(r"CREATE (?:UNIQUE )?(?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA + ADDED)
)
"""Every table and index the schema makes, by name."""

COLUMNS = tuple(re.findall(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+)", ADDED))
"""Every (table, column) added to a table after it first shipped."""


def migrate(db: PgDatabase) -> None:
    """Creates what is missing, in one transaction under an advisory lock (several servers
    may start on the same database at once). When nothing is missing (every start but the
    first of a version) no DDL runs: ``ALTER TABLE … IF NOT EXISTS`` takes its table's
    ACCESS EXCLUSIVE lock even when the column is there, which would stall the other
    replicas' writes while this one starts, and can deadlock with them."""
    with db.transaction() as conn:
        if _complete(conn):
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(SCHEMA)
        conn.execute(ADDED)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO NOTHING",
            (str(SCHEMA_VERSION),),
        )


def _complete(conn: Conn) -> bool:
    """Whether every relation and added column exists, and the schema version is recorded
    (read from the catalogs: no lock on the tables)."""
    found = conn.execute(
        "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace "
        "WHERE s.nspname = current_schema() AND c.relname = ANY(%s)",
        (list(RELATIONS),),
    ).fetchone()
    if found is None or found["n"] != len(set(RELATIONS)):
        return False
    for table, column in COLUMNS:
        if (
            conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s AND column_name = %s",
                (table, column),
            ).fetchone()
            is None
        ):
            return False
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return version is not None
