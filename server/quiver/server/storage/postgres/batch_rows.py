"""The ``file_batches`` and ``batch_files`` tables in PostgreSQL.

A batch's watch sequence is raised by an UPDATE of its row, whose row lock is held until the
transaction commits: concurrent writers (threads or other servers) queue on it, so the
sequence is gap-free and increasing. The same statement sends ``NOTIFY quiver_batches``
with the batch id (PostgreSQL folds repeats, so one per transaction and batch), delivered
at commit: other servers' watchers wake and read the changes from the table.
"""

from __future__ import annotations

from psycopg.rows import DictRow
from quiver.server.core.models import (
    AUTO_CHUNKING,
    BatchStatus,
    FileStatus,
    LastError,
    VectorStoreFile,
)
from quiver.server.storage.pagination import PageSpec, Rows
from quiver.server.storage.postgres.connection import PgDatabase, conn_of, execute
from quiver.server.storage.postgres.pagination import fetch_page
from quiver.server.storage.postgres.store_file_rows import store_file_from_row
from quiver.server.storage.rows import BatchFileChange, BatchRow, Tx

CHANNEL = "quiver_batches"


def _to_batch(row: DictRow) -> BatchRow:
    return BatchRow(
        id=row["id"],
        created_at=row["created_at"],
        vector_store_id=row["vector_store_id"],
        status=row["status"],
        sequence=int(row["sequence"]),
        request_digest=row["request_digest"],
    )


class PgBatchRows:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def by_request(self, tenant: str, subject: str, request_id: str) -> BatchRow | None:
        row = self.db.one(
            "SELECT * FROM file_batches WHERE tenant = %s AND subject = %s AND request_id = %s",
            (tenant, subject, request_id),
        )
        return None if row is None else _to_batch(row)

    def get(self, batch_id: str) -> BatchRow | None:
        """Inside the thread's transaction, if one is open."""
        row = self.db.one("SELECT * FROM file_batches WHERE id = %s", (batch_id,))
        return None if row is None else _to_batch(row)

    def get_in_store(self, batch_id: str, store_id: str) -> BatchRow | None:
        row = self.db.one(
            "SELECT * FROM file_batches WHERE id = %s AND vector_store_id = %s",
            (batch_id, store_id),
        )
        return None if row is None else _to_batch(row)

    def insert(
        self,
        tx: Tx,
        batch_id: str,
        store_id: str,
        tenant: str,
        subject: str,
        now: int,
        request_id: str | None,
        digest: str | None,
    ) -> None:
        execute(
            tx,
            "INSERT INTO file_batches (id, vector_store_id, tenant, subject, created_at, "
            "status, request_id, request_digest) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                batch_id,
                store_id,
                tenant,
                subject,
                now,
                BatchStatus.IN_PROGRESS.value,
                request_id,
                digest,
            ),
        )

    def in_progress(self, tx: Tx, store_id: str) -> list[str]:
        return [
            r["id"]
            for r in execute(
                tx,
                "SELECT id FROM file_batches WHERE vector_store_id = %s AND status = %s",
                (store_id, BatchStatus.IN_PROGRESS.value),
            ).fetchall()
        ]

    def request_cancel(self, tx: Tx, batch_id: str) -> bool:
        """Marks the batch as asked to cancel if it is still in progress; False if it has
        ended (the row lock orders this against the settle that ends the batch)."""
        done = execute(
            tx,
            "UPDATE file_batches SET cancel_requested = true WHERE id = %s AND status = %s",
            (batch_id, BatchStatus.IN_PROGRESS.value),
        )
        return done.rowcount == 1

    def cancel_requested(self, tx: Tx, batch_id: str) -> bool:
        row = execute(
            tx, "SELECT cancel_requested FROM file_batches WHERE id = %s", (batch_id,)
        ).fetchone()
        return bool(row and row["cancel_requested"])

    def next_sequence(self, tx: Tx, batch_id: str) -> int | None:
        """Raises the batch's watch sequence (its row stays locked until commit) and tells
        the other servers at commit; the new value (None: no such batch)."""
        row = execute(
            tx,
            "WITH raised AS (UPDATE file_batches SET sequence = sequence + 1 WHERE id = %s "
            "RETURNING sequence) SELECT sequence, pg_notify(%s, %s) FROM raised",
            (batch_id, CHANNEL, batch_id),
        ).fetchone()
        return None if row is None else int(row["sequence"])

    def settle(self, tx: Tx, batch_id: str) -> None:
        conn = conn_of(tx)
        pending = execute(
            conn,
            "SELECT 1 FROM batch_files WHERE batch_id = %s AND status = %s LIMIT 1",
            (batch_id, FileStatus.IN_PROGRESS.value),
        ).fetchone()
        if pending is not None:
            return
        execute(
            conn,
            "UPDATE file_batches SET status = CASE WHEN cancel_requested THEN %s ELSE %s END "
            "WHERE id = %s AND status = %s",
            (
                BatchStatus.CANCELLED.value,
                BatchStatus.COMPLETED.value,
                batch_id,
                BatchStatus.IN_PROGRESS.value,
            ),
        )

    def end(self, tx: Tx, batch_id: str, status: BatchStatus) -> int | None:
        row = execute(
            tx,
            "WITH raised AS (UPDATE file_batches SET status = %s, sequence = sequence + 1 "
            "WHERE id = %s RETURNING sequence) SELECT sequence, pg_notify(%s, %s) FROM raised",
            (status.value, batch_id, CHANNEL, batch_id),
        ).fetchone()
        return None if row is None else int(row["sequence"])

    def add_files(self, tx: Tx, batch_id: str, file_ids: list[str]) -> None:
        execute(
            tx,
            "INSERT INTO batch_files (batch_id, file_id, status) "
            "SELECT %s, f, %s FROM unnest(%s::text[]) WITH ORDINALITY AS u(f, n) ORDER BY n",
            (batch_id, FileStatus.IN_PROGRESS.value, file_ids),
        )

    def file_status(self, tx: Tx, batch_id: str, file_id: str) -> str | None:
        row = execute(
            tx,
            "SELECT status FROM batch_files WHERE batch_id = %s AND file_id = %s",
            (batch_id, file_id),
        ).fetchone()
        return None if row is None else str(row["status"])

    def set_file(
        self,
        tx: Tx,
        batch_id: str,
        file_id: str,
        status: FileStatus,
        error: LastError | None,
        sequence: int,
    ) -> None:
        execute(
            tx,
            "UPDATE batch_files SET status = %s, last_error_code = %s, "
            "last_error_message = %s, changed_at_sequence = %s "
            "WHERE batch_id = %s AND file_id = %s",
            (
                status.value,
                error.code if error else None,
                error.message if error else None,
                sequence,
                batch_id,
                file_id,
            ),
        )

    def fail_unfinished(self, tx: Tx, batch_id: str, error: LastError, sequence: int) -> list[str]:
        return [
            r["file_id"]
            for r in execute(
                tx,
                "UPDATE batch_files SET status = %s, last_error_code = %s, "
                "last_error_message = %s, changed_at_sequence = %s "
                "WHERE batch_id = %s AND status = %s RETURNING file_id",
                (
                    FileStatus.FAILED.value,
                    error.code,
                    error.message,
                    sequence,
                    batch_id,
                    FileStatus.IN_PROGRESS.value,
                ),
            ).fetchall()
        ]

    def in_progress_files(self, tx: Tx, batch_id: str) -> list[str]:
        return [
            r["file_id"]
            for r in execute(
                tx,
                "SELECT file_id FROM batch_files WHERE batch_id = %s AND status = %s",
                (batch_id, FileStatus.IN_PROGRESS.value),
            ).fetchall()
        ]

    def status_counts(self, batch_id: str) -> dict[str, int]:
        return {
            r["status"]: int(r["n"])
            for r in self.db.rows(
                "SELECT status, COUNT(*) AS n FROM batch_files WHERE batch_id = %s GROUP BY status",
                (batch_id,),
            )
        }

    def changes_after(self, batch_id: str, after_sequence: int) -> list[BatchFileChange]:
        return [
            BatchFileChange(
                r["file_id"], r["status"], r["last_error_code"], r["last_error_message"]
            )
            for r in self.db.rows(
                "SELECT file_id, status, last_error_code, last_error_message FROM batch_files "
                "WHERE batch_id = %s AND changed_at_sequence > %s ORDER BY seq",
                (batch_id, after_sequence if after_sequence else -1),
            )
        ]

    def sequenced_changes(
        self, batch_id: str, after_sequence: int, upto: int
    ) -> list[tuple[int, BatchFileChange]]:
        return [
            (
                int(r["changed_at_sequence"]),
                BatchFileChange(
                    r["file_id"], r["status"], r["last_error_code"], r["last_error_message"]
                ),
            )
            for r in self.db.rows(
                "SELECT changed_at_sequence, file_id, status, last_error_code, "
                "last_error_message FROM batch_files WHERE batch_id = %s "
                "AND changed_at_sequence > %s AND changed_at_sequence <= %s "
                "ORDER BY changed_at_sequence, seq",
                (batch_id, after_sequence, upto),
            )
        ]

    def files_page(
        self, batch_id: str, status: FileStatus | None, page: PageSpec
    ) -> Rows[VectorStoreFile]:
        where = "b.batch_id = %s"
        params: tuple[object, ...] = (batch_id,)
        if status is not None:
            where += " AND b.status = %s"
            params += (status.value,)
        table = (
            "(SELECT b.seq AS seq, b.file_id AS id, b.batch_id AS batch_id, "
            "b.status AS status, b.last_error_code AS last_error_code, "
            "b.last_error_message AS last_error_message, "
            "fb.vector_store_id AS vector_store_id, b.file_id AS file_id, "
            "COALESCE(f.created_at, fb.created_at) AS created_at, "
            "COALESCE(f.chunk_max_tokens, %s) AS chunk_max_tokens, "
            "COALESCE(f.chunk_overlap_tokens, %s) AS chunk_overlap_tokens, "
            "COALESCE(f.chunk_auto, true) AS chunk_auto, "
            "COALESCE(f.attributes, '{}'::jsonb) AS attributes, "
            "CASE WHEN f.batch_id = b.batch_id THEN f.usage_bytes ELSE 0 END AS usage_bytes "
            "FROM batch_files b JOIN file_batches fb ON fb.id = b.batch_id "
            "LEFT JOIN vector_store_files f "
            "ON f.file_id = b.file_id AND f.vector_store_id = fb.vector_store_id "
            f"WHERE {where})"
        )
        return fetch_page(
            self.db,
            table=table,
            where="1 = 1",
            params=(),
            page=page,
            convert=store_file_from_row,
            table_params=(AUTO_CHUNKING.max_tokens, AUTO_CHUNKING.overlap_tokens, *params),
        )
