"""What a store's index must hold, read from the database (SQLite) for the index's owner to
catch up with chunks other replicas committed. Blocking: call every method from a thread.

Plain SQL (a join on the unique (store, file) key, no SQLite-only function), so another
database can run it as written.
"""

from __future__ import annotations

import hashlib

from quiver.server.storage.database import Database
from quiver.server.storage.rows import ChunkState

COMPLETED = "completed"


class IndexSyncRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    def chunks_after(self, store_id: str, after: int, limit: int) -> list[ChunkState]:
        """The store's first ``limit`` chunk ids above ``after``, ascending, each with
        whether its file is completed (a chunk of a file still in progress, or detached
        before its chunks were deleted, is not)."""
        rows = (
            self.db.reader()
            .execute(
                "SELECT c.id, c.file_id, f.status FROM chunks c LEFT JOIN vector_store_files f "
                "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id "
                "WHERE c.vector_store_id = ? AND c.id > ? ORDER BY c.id LIMIT ?",
                (store_id, after, limit),
            )
            .fetchall()
        )
        return [ChunkState(int(r[0]), r[1], r[2] == COMPLETED) for r in rows]

    def commit_counter(self, store_id: str) -> int:
        """The store's commit sequence now (0: none yet, or no such store)."""
        row = (
            self.db.reader()
            .execute("SELECT commit_seq FROM vector_stores WHERE id = ?", (store_id,))
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def committed_after(self, store_id: str, after: int, limit: int) -> list[tuple[str, int]]:
        """The store's first ``limit`` completed files whose commit sequence is above
        ``after``, ascending by it: (file id, commit sequence)."""
        rows = (
            self.db.reader()
            .execute(
                "SELECT file_id, commit_seq FROM vector_store_files WHERE vector_store_id = ? "
                "AND commit_seq > ? AND status = ? ORDER BY commit_seq LIMIT ?",
                (store_id, after, COMPLETED, limit),
            )
            .fetchall()
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    def chunks_of_files(self, store_id: str, file_ids: list[str]) -> list[tuple[int, str]]:
        """(chunk id, file id) of every chunk of these files of the store, by id."""
        if not file_ids:
            return []
        marks = ",".join("?" * len(file_ids))
        rows = (
            self.db.reader()
            .execute(
                f"SELECT id, file_id FROM chunks WHERE vector_store_id = ? "
                f"AND file_id IN ({marks}) ORDER BY id",
                (store_id, *file_ids),
            )
            .fetchall()
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    def file_states(self, store_id: str) -> list[tuple[str, str, str]]:
        """Each file attached to the store: its id, status and attributes (JSON text)."""
        rows = (
            self.db.reader()
            .execute(
                "SELECT file_id, status, attributes FROM vector_store_files "
                "WHERE vector_store_id = ?",
                (store_id,),
            )
            .fetchall()
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def files_digest(self, store_id: str) -> str:
        """A digest of ``file_states``: equal digests, equal states. (SQLite has no hash
        function to sum in SQL, and is read in-process: the rows are hashed here.)"""
        states = sorted(self.file_states(store_id))
        return hashlib.sha256(repr(states).encode()).hexdigest()

    def vectors(self, ids: list[int]) -> dict[int, bytes]:
        """The stored vectors (float32 bytes) of ``ids`` that still exist."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = (
            self.db.reader()
            .execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", ids)
            .fetchall()
        )
        return {int(r[0]): bytes(r[1]) for r in rows}
