"""The ``vector_store_files`` table in PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from quiver.server.core.models import (
    AttributeValue,
    Chunking,
    FileStatus,
    LastError,
    VectorStoreFile,
)
from quiver.server.storage.pagination import PageSpec, Rows
from quiver.server.storage.postgres.connection import PgDatabase, execute
from quiver.server.storage.postgres.pagination import fetch_page
from quiver.server.storage.rows import Attachment, Tx


def store_file_from_row(row: DictRow) -> VectorStoreFile:
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
        attributes=dict(row["attributes"]),
    )


class PgStoreFileRows:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def get(self, store_id: str, file_id: str) -> VectorStoreFile | None:
        row = self.db.one(
            "SELECT * FROM vector_store_files WHERE vector_store_id = %s AND file_id = %s",
            (store_id, file_id),
        )
        return None if row is None else store_file_from_row(row)

    def attachment(self, tx: Tx, store_id: str, file_id: str) -> Attachment | None:
        row = execute(
            tx,
            "SELECT batch_id, status FROM vector_store_files "
            "WHERE vector_store_id = %s AND file_id = %s",
            (store_id, file_id),
        ).fetchone()
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
        row = execute(
            tx,
            "INSERT INTO vector_store_files AS f (vector_store_id, file_id, tenant, subject, "
            "created_at, status, chunk_max_tokens, chunk_overlap_tokens, chunk_auto, "
            "attributes, batch_id, generation) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1) "
            "ON CONFLICT (vector_store_id, file_id) DO UPDATE SET status = excluded.status, "
            "last_error_code = NULL, last_error_message = NULL, usage_bytes = 0, "
            "chunk_max_tokens = excluded.chunk_max_tokens, "
            "chunk_overlap_tokens = excluded.chunk_overlap_tokens, "
            "chunk_auto = excluded.chunk_auto, attributes = excluded.attributes, "
            "batch_id = excluded.batch_id, generation = f.generation + 1 "
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
                chunking.auto,
                Jsonb(dict(attributes)),
                batch_id,
            ),
        ).fetchone()
        assert row is not None
        return int(row["generation"])

    def page(
        self, store_id: str, status: FileStatus | None, page: PageSpec
    ) -> Rows[VectorStoreFile]:
        where = "vector_store_id = %s"
        params: tuple[object, ...] = (store_id,)
        if status is not None:
            where += " AND status = %s"
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
        return [
            (r["status"], int(r["n"]), int(r["used"]))
            for r in self.db.rows(
                "SELECT status, COUNT(*) AS n, COALESCE(SUM(usage_bytes), 0) AS used "
                "FROM vector_store_files WHERE vector_store_id = %s GROUP BY status",
                (store_id,),
            )
        ]

    def set_attributes(
        self, tx: Tx, store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None:
        execute(
            tx,
            "UPDATE vector_store_files SET attributes = %s "
            "WHERE vector_store_id = %s AND file_id = %s",
            (Jsonb(dict(attributes)), store_id, file_id),
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
        row = execute(
            tx,
            "UPDATE vector_store_files SET status = %s, last_error_code = %s, "
            "last_error_message = %s, usage_bytes = %s "
            "WHERE vector_store_id = %s AND file_id = %s RETURNING batch_id",
            (
                status.value,
                error.code if error else None,
                error.message if error else None,
                usage_bytes,
                store_id,
                file_id,
            ),
        ).fetchone()
        return None if row is None else row["batch_id"]

    def mark_committed(self, tx: Tx, store_id: str, file_id: str) -> int:
        """Raises the store's commit sequence and stamps the file with it, in one statement
        inside the file's completing transaction, as late as possible in it: the store row
        stays locked until that commits, so the next completion of the store waits for the
        commit before it takes the next value (commit order is sequence order, as with a
        batch's watch sequence); returns the new value (0: the store is gone)."""
        row = execute(
            tx,
            "WITH raised AS (UPDATE vector_stores SET commit_seq = commit_seq + 1 "
            "WHERE id = %s RETURNING commit_seq) "
            "UPDATE vector_store_files f SET commit_seq = raised.commit_seq FROM raised "
            "WHERE f.vector_store_id = %s AND f.file_id = %s RETURNING f.commit_seq",
            (store_id, store_id, file_id),
        ).fetchone()
        return 0 if row is None else int(row["commit_seq"])

    def delete(self, tx: Tx, store_id: str, file_id: str) -> None:
        execute(
            tx,
            "DELETE FROM vector_store_files WHERE vector_store_id = %s AND file_id = %s",
            (store_id, file_id),
        )

    def in_progress(self, tx: Tx, store_id: str) -> list[str]:
        return [
            r["file_id"]
            for r in execute(
                tx,
                "SELECT file_id FROM vector_store_files WHERE vector_store_id = %s AND status = %s",
                (store_id, FileStatus.IN_PROGRESS.value),
            ).fetchall()
        ]

    def completed_attributes(
        self, store_id: str, file_ids: list[str] | None = None
    ) -> list[tuple[str, dict[str, AttributeValue]]]:
        sql = (
            "SELECT file_id, attributes FROM vector_store_files "
            "WHERE vector_store_id = %s AND status = %s"
        )
        params: tuple[object, ...] = (store_id, FileStatus.COMPLETED.value)
        if file_ids is not None:
            sql += " AND file_id = ANY(%s)"
            params += (file_ids,)
        return [(r["file_id"], dict(r["attributes"])) for r in self.db.rows(sql, params)]
