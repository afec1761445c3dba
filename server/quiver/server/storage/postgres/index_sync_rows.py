"""What a store's index must hold, read from PostgreSQL (the SQL of
``storage/index_sync_rows.py``), for the index's owner to catch up with chunks other replicas
committed. Blocking: call every method from a thread."""

from __future__ import annotations

from quiver.server.storage.postgres.connection import PgDatabase
from quiver.server.storage.rows import ChunkState

COMPLETED = "completed"


class PgIndexSyncRows:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def chunks_after(self, store_id: str, after: int, limit: int) -> list[ChunkState]:
        """The store's first ``limit`` chunk ids above ``after``, ascending, each with
        whether its file is completed."""
        rows = self.db.rows(
            "SELECT c.id, c.file_id, f.status FROM chunks c LEFT JOIN vector_store_files f "
            "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id "
            "WHERE c.vector_store_id = %s AND c.id > %s ORDER BY c.id LIMIT %s",
            (store_id, after, limit),
        )
        return [ChunkState(int(r["id"]), r["file_id"], r["status"] == COMPLETED) for r in rows]

    def commit_counter(self, store_id: str) -> int:
        """The store's commit sequence now (0: none yet, or no such store)."""
        row = self.db.one("SELECT commit_seq FROM vector_stores WHERE id = %s", (store_id,))
        return 0 if row is None else int(row["commit_seq"])

    def committed_after(self, store_id: str, after: int, limit: int) -> list[tuple[str, int]]:
        """The store's first ``limit`` completed files whose commit sequence is above
        ``after``, ascending by it. A value seen committed means every lower one of the store
        is committed too (``PgStoreFileRows.mark_committed``)."""
        rows = self.db.rows(
            "SELECT file_id, commit_seq FROM vector_store_files WHERE vector_store_id = %s "
            "AND commit_seq > %s AND status = %s ORDER BY commit_seq LIMIT %s",
            (store_id, after, COMPLETED, limit),
        )
        return [(str(r["file_id"]), int(r["commit_seq"])) for r in rows]

    def chunks_of_files(self, store_id: str, file_ids: list[str]) -> list[tuple[int, str]]:
        """(chunk id, file id) of every chunk of these files of the store, by id."""
        if not file_ids:
            return []
        rows = self.db.rows(
            "SELECT id, file_id FROM chunks WHERE vector_store_id = %s "
            "AND file_id = ANY(%s::text[]) ORDER BY id",
            (store_id, file_ids),
        )
        return [(int(r["id"]), str(r["file_id"])) for r in rows]

    def file_states(self, store_id: str) -> list[tuple[str, str, str]]:
        """Each file attached to the store: its id, status and attributes (JSON text)."""
        rows = self.db.rows(
            "SELECT file_id, status, attributes::text AS attributes FROM vector_store_files "
            "WHERE vector_store_id = %s",
            (store_id,),
        )
        return [(str(r["file_id"]), str(r["status"]), str(r["attributes"])) for r in rows]

    def files_digest(self, store_id: str) -> str:
        """A digest of ``file_states`` (the count and an order-free sum of each row's 64-bit
        hash, PostgreSQL 11's ``hashtextextended``), read without sending the rows: equal
        digests, equal states (but for a 2^-64 chance). ~3x cheaper than md5 per row, ~5x
        cheaper than reading the rows (10,000 files: ~25 ms on a loaded 2-core machine)."""
        rows = self.db.rows(
            "SELECT count(*) AS n, coalesce(sum(hashtextextended("
            "file_id || ':' || status || ':' || attributes::text, 0)), 0) AS h "
            "FROM vector_store_files WHERE vector_store_id = %s",
            (store_id,),
        )
        return f"{rows[0]['n']}:{rows[0]['h']}"

    def vectors(self, ids: list[int]) -> dict[int, bytes]:
        """The stored vectors (float32 bytes) of ``ids`` that still exist."""
        if not ids:
            return {}
        return {
            int(r["id"]): bytes(r["vector"])
            for r in self.db.rows(
                "SELECT id, vector FROM chunks WHERE id = ANY(%s::bigint[])",
                ([int(i) for i in ids],),
            )
        }
