"""The ``vector_store_files`` table: files attached to a store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping

from quiver.server.core.models import (
    AttributeValue,
    Chunking,
    FileStatus,
    LastError,
    VectorStoreFile,
)
from quiver.server.storage.database import Database
from quiver.server.storage.pagination import PageSpec, Rows, fetch_page
from quiver.server.storage.rows import Attachment, Tx, conn_of


def store_file_from_row(row: sqlite3.Row) -> VectorStoreFile:
    error = (
        LastError(row["last_error_code"], row["last_error_message"])
        if row["last_error_code"]
        else None
    )
    return VectorStoreFile(
        id=row["file_id"],
        created_at=row["created_at"],
        vector_store_id=row["vector_store_id"],
        status=FileStatus(row["status"]),
        usage_bytes=row["usage_bytes"],
        last_error=error,
        chunking=Chunking(
            row["chunk_max_tokens"], row["chunk_overlap_tokens"], bool(row["chunk_auto"])
        ),
        attributes=json.loads(row["attributes"]),
    )


class StoreFileRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, store_id: str, file_id: str) -> VectorStoreFile | None:
        row = self.db.execute(
            "SELECT * FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
            (store_id, file_id),
        ).fetchone()
        return None if row is None else store_file_from_row(row)

    def attachment(self, tx: Tx, store_id: str, file_id: str) -> Attachment | None:
        row = (
            conn_of(tx)
            .execute(
                "SELECT batch_id, status FROM vector_store_files "
                "WHERE vector_store_id = ? AND file_id = ?",
                (store_id, file_id),
            )
            .fetchone()
        )
        return None if row is None else Attachment(row["batch_id"], row["status"])

    def attach(
        self,
        tx: Tx,
        store_id: str,
        file_id: str,
        tenant: str,
        subject: str,
        now: int,
        chunking: Chunking,
        attributes: Mapping[str, AttributeValue],
        batch_id: str | None,
    ) -> int:
        """Attaches the file in progress (again: its error and usage cleared, its generation
        raised); returns its generation."""
        row = (
            conn_of(tx)
            .execute(
                "INSERT INTO vector_store_files (vector_store_id, file_id, tenant, subject, "
                "created_at, status, chunk_max_tokens, chunk_overlap_tokens, chunk_auto, "
                "attributes, batch_id, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (vector_store_id, file_id) DO UPDATE SET status = excluded.status, "
                "last_error_code = NULL, last_error_message = NULL, usage_bytes = 0, "
                "chunk_max_tokens = excluded.chunk_max_tokens, "
                "chunk_overlap_tokens = excluded.chunk_overlap_tokens, "
                "chunk_auto = excluded.chunk_auto, attributes = excluded.attributes, "
                "batch_id = excluded.batch_id, generation = generation + 1 "
                "RETURNING generation",
                (
                    store_id,
                    file_id,
                    tenant,
                    subject,
                    now,
                    FileStatus.IN_PROGRESS.value,
                    chunking.max_tokens,
                    chunking.overlap_tokens,
                    int(chunking.auto),
                    json.dumps(dict(attributes), sort_keys=True),
                    batch_id,
                ),
            )
            .fetchone()
        )
        return int(row["generation"])

    def page(
        self, store_id: str, status: FileStatus | None, page: PageSpec
    ) -> Rows[VectorStoreFile]:
        where = "vector_store_id = ?"
        params: tuple[object, ...] = (store_id,)
        if status is not None:
            where += " AND status = ?"
            params += (status.value,)
        return fetch_page(
            self.db,
            table="vector_store_files",
            where=where,
            params=params,
            page=page,
            convert=store_file_from_row,
            id_col="file_id",
        )

    def status_counts(self, store_id: str) -> list[tuple[str, int, int]]:
        """(status, files, their usage_bytes) for each status the store's files have."""
        return [
            (status, count, used)
            for status, count, used in self.db.execute(
                "SELECT status, COUNT(*), COALESCE(SUM(usage_bytes), 0) FROM vector_store_files "
                "WHERE vector_store_id = ? GROUP BY status",
                (store_id,),
            )
        ]

    def set_attributes(
        self, tx: Tx, store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None:
        conn_of(tx).execute(
            "UPDATE vector_store_files SET attributes = ? "
            "WHERE vector_store_id = ? AND file_id = ?",
            (json.dumps(dict(attributes), sort_keys=True), store_id, file_id),
        )

    def set_status(
        self,
        tx: Tx,
        store_id: str,
        file_id: str,
        status: FileStatus,
        error: LastError | None,
        usage_bytes: int,
    ) -> str | None:
        """Sets the status; returns the batch the file was attached for (None if none, or if
        the file is no longer attached)."""
        row = (
            conn_of(tx)
            .execute(
                "UPDATE vector_store_files SET status = ?, last_error_code = ?, "
                "last_error_message = ?, usage_bytes = ? "
                "WHERE vector_store_id = ? AND file_id = ? RETURNING batch_id",
                (
                    status.value,
                    error.code if error else None,
                    error.message if error else None,
                    usage_bytes,
                    store_id,
                    file_id,
                ),
            )
            .fetchone()
        )
        return None if row is None else row["batch_id"]

    def mark_committed(self, tx: Tx, store_id: str, file_id: str) -> int:
        """Raises the store's commit sequence and stamps the file with it (inside the file's
        completing transaction, as late as possible in it); returns the new value. SQLite
        serializes its writers, so commit order is sequence order."""
        conn = conn_of(tx)
        row = conn.execute(
            "UPDATE vector_stores SET commit_seq = commit_seq + 1 WHERE id = ? "
            "RETURNING commit_seq",
            (store_id,),
        ).fetchone()
        if row is None:
            return 0
        sequence = int(row["commit_seq"])
        conn.execute(
            "UPDATE vector_store_files SET commit_seq = ? "
            "WHERE vector_store_id = ? AND file_id = ?",
            (sequence, store_id, file_id),
        )
        return sequence

    def delete(self, tx: Tx, store_id: str, file_id: str) -> None:
        conn_of(tx).execute(
            "DELETE FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
            (store_id, file_id),
        )

    def in_progress(self, tx: Tx, store_id: str) -> list[str]:
        """The ids of the store's files in progress."""
        return [
            r[0]
            for r in conn_of(tx)
            .execute(
                "SELECT file_id FROM vector_store_files WHERE vector_store_id = ? AND status = ?",
                (store_id, FileStatus.IN_PROGRESS.value),
            )
            .fetchall()
        ]

    def completed_attributes(
        self, store_id: str, file_ids: list[str] | None = None
    ) -> list[tuple[str, dict[str, AttributeValue]]]:
        """(file id, attributes) of the store's completed files (of those of ``file_ids``
        only, if given). Blocking (it may read many rows): call it from a thread."""
        sql = (
            "SELECT file_id, attributes FROM vector_store_files "
            "WHERE vector_store_id = ? AND status = ?"
        )
        params: tuple[str, ...] = (store_id, FileStatus.COMPLETED.value)
        if file_ids is not None:
            sql += " AND file_id IN (SELECT value FROM json_each(?))"
            params = (*params, json.dumps(file_ids))
        rows = self.db.reader().execute(sql, params).fetchall()
        return [(file_id, json.loads(attributes)) for file_id, attributes in rows]
