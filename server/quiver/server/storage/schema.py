"""The SQLite schema. Every row carries its owner (tenant, subject)."""

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Uploaded files. The bytes live in blobs/ under their sha256.
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    subject TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (tenant, subject, seq);
CREATE INDEX IF NOT EXISTS files_by_sha256 ON files (sha256);

CREATE TABLE IF NOT EXISTS vector_stores (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    subject TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL,
    expires_anchor TEXT,
    expires_days INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    embedding_model TEXT NOT NULL,
    -- 0 until the first vectors arrive when the embedder's dimension is learned.
    embedding_dimensions INTEGER NOT NULL,
    -- 1: requests to the embedder carry `dimensions`; 0: never (learned from a response).
    dimensions_sent INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS vector_stores_by_owner ON vector_stores (tenant, subject, seq);

-- A file attached to a store. status: in_progress | completed | cancelled | failed.
CREATE TABLE IF NOT EXISTS vector_store_files (
    seq INTEGER PRIMARY KEY,
    vector_store_id TEXT NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    file_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    last_error_code TEXT,
    last_error_message TEXT,
    chunk_max_tokens INTEGER NOT NULL,
    chunk_overlap_tokens INTEGER NOT NULL,
    chunk_auto INTEGER NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}',
    usage_bytes INTEGER NOT NULL DEFAULT 0,
    batch_id TEXT,
    -- Bumped whenever the file is (re)queued, so a stale worker result is recognised.
    generation INTEGER NOT NULL DEFAULT 0,
    -- The job lease (storage/jobs.py): the server instance that claimed the file (NULL: never
    -- claimed) and until when (unix seconds; 0: claimable now). Every claim bumps generation.
    lease_owner TEXT,
    lease_expires_at REAL NOT NULL DEFAULT 0,
    UNIQUE (vector_store_id, file_id)
);
CREATE INDEX IF NOT EXISTS vector_store_files_by_status
    ON vector_store_files (vector_store_id, status);
CREATE INDEX IF NOT EXISTS vector_store_files_by_file ON vector_store_files (file_id);
CREATE INDEX IF NOT EXISTS vector_store_files_by_batch ON vector_store_files (batch_id);

-- status: in_progress | completed | cancelled | failed. sequence: the watch sequence.
CREATE TABLE IF NOT EXISTS file_batches (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    vector_store_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    sequence INTEGER NOT NULL DEFAULT 0,
    -- What a retry with the same request_id must repeat (core/batches.request_digest).
    request_digest TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS file_batches_by_request
    ON file_batches (tenant, subject, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS file_batches_by_store ON file_batches (vector_store_id);

-- The batch's own record of each of its files (a file may later be re-attached elsewhere).
CREATE TABLE IF NOT EXISTS batch_files (
    seq INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL REFERENCES file_batches (id) ON DELETE CASCADE,
    file_id TEXT NOT NULL,
    status TEXT NOT NULL,
    last_error_code TEXT,
    last_error_message TEXT,
    -- The batch sequence at which this file last changed.
    changed_at_sequence INTEGER NOT NULL DEFAULT 0,
    UNIQUE (batch_id, file_id)
);
CREATE INDEX IF NOT EXISTS batch_files_by_status ON batch_files (batch_id, status);

-- Chunks: id is the label in the store's hnswlib index (never reused), vector: float32 bytes.
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vector_store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    subject TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    token_count INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (vector_store_id, file_id, chunk_index)
);
CREATE INDEX IF NOT EXISTS chunks_by_store ON chunks (vector_store_id, id);

-- The replicas serving this database (core/replicas.py): each one heartbeats its row; a row
-- whose heartbeat_at (unix seconds, the replica's clock) is older than the live window is a
-- dead replica's. address: the host:port other replicas forward searches to.
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""


# Columns added after a table first shipped: (table, column, definition). CREATE TABLE IF NOT
# EXISTS does not add them to an existing database; Database._migrate does.
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("vector_stores", "dimensions_sent", "INTEGER NOT NULL DEFAULT 1"),
    ("file_batches", "request_digest", "TEXT"),
    ("vector_store_files", "lease_owner", "TEXT"),
    ("vector_store_files", "lease_expires_at", "REAL NOT NULL DEFAULT 0"),
    # The store's commit sequence (core/index_sync.py): raised by each file's completing
    # transaction; a database made before it starts at 0 (its completed files at 0 too).
    ("vector_stores", "commit_seq", "INTEGER NOT NULL DEFAULT 0"),
    # The store's commit_seq at which the file last completed (0: never, or before the
    # column existed).
    ("vector_store_files", "commit_seq", "INTEGER NOT NULL DEFAULT 0"),
]

# Indexes on added columns: created after ADDED_COLUMNS (an older database lacks the columns
# while SCHEMA runs).
ADDED_INDEXES: list[str] = [
    # The sweep: unfinished files whose lease has expired (or that were never claimed).
    "CREATE INDEX IF NOT EXISTS vector_store_files_by_lease_expiry "
    "ON vector_store_files (lease_expires_at) WHERE status = 'in_progress'",
    # The heartbeat: the unfinished files one server holds.
    "CREATE INDEX IF NOT EXISTS vector_store_files_by_lease_owner "
    "ON vector_store_files (lease_owner, lease_expires_at) WHERE status = 'in_progress'",
    # The index catch-up: the files a store completed after a commit sequence.
    "CREATE INDEX IF NOT EXISTS vector_store_files_by_commit "
    "ON vector_store_files (vector_store_id, commit_seq)",
]

# What an older data directory has and this version no longer keeps, dropped at open: the
# FTS5 keyword index (chunks_fts, kept by trigger on every chunk insert and delete), replaced
# by the per-store tantivy indexes under keyword/ (index/keyword.py), built from the rows.
DROPPED: list[str] = [
    "DROP TRIGGER IF EXISTS chunks_fts_insert",
    "DROP TRIGGER IF EXISTS chunks_fts_delete",
    "DROP TABLE IF EXISTS chunks_vocab",
    "DROP TABLE IF EXISTS chunks_fts",
]
