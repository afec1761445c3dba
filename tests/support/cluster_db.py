"""The cluster tests' view of the shared PostgreSQL database, read from outside the servers
with psycopg: who holds which leases, the chunks each file got, a batch's sequence and the
transitions its files recorded."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row


def connect(url: str) -> psycopg.Connection[dict[str, object]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def pid_of(owner_id: str) -> int:
    """A lease owner / replica id is host:pid:random (core/job_leases.new_owner_id)."""
    return int(owner_id.split(":")[-2])


def held_leases(url: str, store_id: str) -> dict[str, tuple[str, int]]:
    """file id → (lease owner, generation) of the store's files in progress whose lease has
    not expired."""
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT file_id, lease_owner, generation FROM vector_store_files "
            "WHERE vector_store_id = %s AND status = 'in_progress' AND lease_expires_at > %s",
            (store_id, time.time()),
        ).fetchall()
    return {str(r["file_id"]): (str(r["lease_owner"]), int(str(r["generation"]))) for r in rows}


def store_files(url: str, store_id: str) -> dict[str, tuple[str, int, str | None]]:
    """file id → (status, generation, lease owner)."""
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT file_id, status, generation, lease_owner FROM vector_store_files "
            "WHERE vector_store_id = %s",
            (store_id,),
        ).fetchall()
    return {
        str(r["file_id"]): (
            str(r["status"]),
            int(str(r["generation"])),
            None if r["lease_owner"] is None else str(r["lease_owner"]),
        )
        for r in rows
    }


@dataclass(frozen=True)
class ChunkCheck:
    per_file: dict[str, int]
    """file id → chunk rows."""
    duplicates: list[tuple[str, int, int]]
    """(file id, chunk index, rows) appearing more than once."""
    gaps: list[str]
    """Files whose chunk indexes are not exactly 0…n-1."""
    texts: dict[tuple[str, int], str]
    """(filename, chunk index) → text."""


def check_chunks(url: str, store_id: str) -> ChunkCheck:
    with connect(url) as conn:
        per_file = {
            str(r["file_id"]): int(str(r["n"]))
            for r in conn.execute(
                "SELECT file_id, COUNT(*) AS n FROM chunks WHERE vector_store_id = %s "
                "GROUP BY file_id",
                (store_id,),
            )
        }
        duplicates = [
            (str(r["file_id"]), int(str(r["chunk_index"])), int(str(r["n"])))
            for r in conn.execute(
                "SELECT file_id, chunk_index, COUNT(*) AS n FROM chunks "
                "WHERE vector_store_id = %s GROUP BY file_id, chunk_index HAVING COUNT(*) > 1",
                (store_id,),
            )
        ]
        gaps = [
            str(r["file_id"])
            for r in conn.execute(
                "SELECT file_id FROM chunks WHERE vector_store_id = %s GROUP BY file_id "
                "HAVING MIN(chunk_index) != 0 OR MAX(chunk_index) != COUNT(*) - 1",
                (store_id,),
            )
        ]
        texts = {
            (str(r["filename"]), int(str(r["chunk_index"]))): str(r["text"])
            for r in conn.execute(
                "SELECT files.filename, c.chunk_index, c.text FROM chunks c "
                "JOIN files ON files.id = c.file_id WHERE c.vector_store_id = %s",
                (store_id,),
            )
        }
    return ChunkCheck(per_file, duplicates, gaps, texts)


@dataclass(frozen=True)
class BatchRecord:
    sequence: int
    status: str
    transitions: list[int]
    """The changed_at_sequence of every batch file that changed, ascending."""
    statuses: dict[str, str]
    changed_at: dict[str, int]
    """file id → the sequence of its (last) change; 0: none yet."""


def batch_record(url: str, batch_id: str) -> BatchRecord:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT sequence, status FROM file_batches WHERE id = %s", (batch_id,)
        ).fetchone()
        assert row is not None, f"no batch {batch_id}"
        files = conn.execute(
            "SELECT file_id, status, changed_at_sequence FROM batch_files WHERE batch_id = %s",
            (batch_id,),
        ).fetchall()
    return BatchRecord(
        int(str(row["sequence"])),
        str(row["status"]),
        sorted(int(str(f["changed_at_sequence"])) for f in files if f["changed_at_sequence"]),
        {str(f["file_id"]): str(f["status"]) for f in files},
        {str(f["file_id"]): int(str(f["changed_at_sequence"])) for f in files},
    )


def assert_exactly_once(url: str, store_id: str, batch_id: str, files: int) -> dict[str, int]:
    """The batch completed with every file settled once (its sequence, one per transition)
    and every file's chunks stored once; file id → chunk count."""
    record = batch_record(url, batch_id)
    assert record.status == "completed", record.status
    assert set(record.statuses.values()) == {"completed"}, record.statuses
    # One transition per file, each with its own sequence, and the final sequence is their
    # number: no file was settled twice, no sequence was skipped.
    assert record.transitions == list(range(1, files + 1)), record.transitions
    assert record.sequence == files
    rows = store_files(url, store_id)
    assert {s for s, _, _ in rows.values()} == {"completed"}
    chunks = check_chunks(url, store_id)
    assert chunks.duplicates == [], chunks.duplicates
    assert chunks.gaps == [], chunks.gaps
    assert set(chunks.per_file) == set(rows), "a completed file without chunks"
    return chunks.per_file


def stored_chunks(url: str, store_id: str) -> dict[tuple[str, int], tuple[int, str, bytes]]:
    """Every chunk of one store: (filename, chunk index) → (token count, text, vector bytes),
    the shape of ``batch_helpers.stored_chunks`` for a SQLite data directory, so a run on
    the shared database compares with a single-node run."""
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT files.filename, c.chunk_index, c.token_count, c.text, c.vector "
            "FROM chunks c JOIN files ON files.id = c.file_id WHERE c.vector_store_id = %s",
            (store_id,),
        ).fetchall()
    return {
        (str(r["filename"]), int(str(r["chunk_index"]))): (
            int(str(r["token_count"])),
            str(r["text"]),
            bytes(r["vector"]),  # type: ignore[call-overload]
        )
        for r in rows
    }
