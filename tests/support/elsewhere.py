"""What another replica leaves in a shared database, written here as rows only (never this
replica's index): a store, and a store file with its chunks. For the tests and benchmark of
the index catch-up (core/index_sync.py)."""

from __future__ import annotations

import sqlite3

import numpy as np
from quiver.server.storage.database import Database


def add_store(db: Database, store_id: str, dim: int, tenant: str = "t") -> None:
    db.execute(
        "INSERT INTO vector_stores (id, tenant, subject, name, created_at, last_active_at, "
        "embedding_model, embedding_dimensions) VALUES (?, ?, '', 'n', 0, 0, 'hash', ?)",
        (store_id, tenant, dim),
    )


def commit_file(
    db: Database,
    store_id: str,
    file_id: str,
    vectors: np.ndarray,
    status: str = "completed",
    tenant: str = "t",
) -> list[int]:
    """One store file of ``status`` and one chunk per row of ``vectors``; the chunk ids."""
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO vector_store_files (vector_store_id, file_id, tenant, subject, "
            "created_at, status, chunk_max_tokens, chunk_overlap_tokens, chunk_auto) "
            "VALUES (?, ?, ?, '', 0, ?, 800, 400, 1)",
            (store_id, file_id, tenant, status),
        )
        ids = []
        for i, vector in enumerate(np.asarray(vectors, dtype=np.float32)):
            cursor = conn.execute(
                "INSERT INTO chunks (vector_store_id, file_id, tenant, subject, chunk_index, "
                "token_count, text, vector) VALUES (?, ?, ?, '', ?, 1, ?, ?)",
                (store_id, file_id, tenant, i, f"{file_id} {i}", vector.tobytes()),
            )
            assert cursor.lastrowid is not None
            ids.append(int(cursor.lastrowid))
        if status == "completed":
            stamp_committed(conn, store_id, file_id)
    return ids


def stamp_committed(conn: sqlite3.Connection, store_id: str, file_id: str) -> int:
    """What a replica's completing transaction does last: raises the store's commit sequence
    and stamps the file with it (``StoreFileRows.mark_committed``)."""
    row = conn.execute(
        "UPDATE vector_stores SET commit_seq = commit_seq + 1 WHERE id = ? RETURNING commit_seq",
        (store_id,),
    ).fetchone()
    conn.execute(
        "UPDATE vector_store_files SET commit_seq = ? WHERE vector_store_id = ? AND file_id = ?",
        (int(row[0]), store_id, file_id),
    )
    return int(row[0])


def unit_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out
