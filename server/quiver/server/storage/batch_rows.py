"""The ``file_batches`` and ``batch_files`` tables: batches and their record of each file."""

from __future__ import annotations

import sqlite3

from quiver.server.core.models import (
    AUTO_CHUNKING,
    BatchStatus,
    FileStatus,
    LastError,
    VectorStoreFile,
)
from quiver.server.storage.database import Database
from quiver.server.storage.pagination import PageSpec, Rows, fetch_page
from quiver.server.storage.rows import BatchFileChange, BatchRow, Tx, conn_of
from quiver.server.storage.store_file_rows import store_file_from_row


def _to_batch(row: sqlite3.Row) -> BatchRow:
    return BatchRow(
        id=row["id"],
        created_at=row["created_at"],
        vector_store_id=row["vector_store_id"],
        status=row["status"],
        sequence=int(row["sequence"]),
        request_digest=row["request_digest"],
    )


class BatchRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- batches -------------------------------------------------------------------------------

    def by_request(self, tenant: str, subject: str, request_id: str) -> BatchRow | None:
        """The owner's batch created with this request_id."""
        row = self.db.execute(
            "SELECT * FROM file_batches WHERE tenant = ? AND subject = ? AND request_id = ?",
            (tenant, subject, request_id),
        ).fetchone()
        return None if row is None else _to_batch(row)

    def get(self, batch_id: str) -> BatchRow | None:
        """On the event loop's connection (inside its transaction, if one is open)."""
        row = self.db.execute("SELECT * FROM file_batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else _to_batch(row)

    def get_in_store(self, batch_id: str, store_id: str) -> BatchRow | None:
        row = self.db.execute(
            "SELECT * FROM file_batches WHERE id = ? AND vector_store_id = ?",
            (batch_id, store_id),
        ).fetchone()
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
        """A new batch in progress."""
        conn_of(tx).execute(
            "INSERT INTO file_batches (id, vector_store_id, tenant, subject, created_at, "
            "status, request_id, request_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        """The ids of the store's batches in progress."""
        return [
            r[0]
            for r in conn_of(tx)
            .execute(
                "SELECT id FROM file_batches WHERE vector_store_id = ? AND status = ?",
                (store_id, BatchStatus.IN_PROGRESS.value),
            )
            .fetchall()
        ]

    def request_cancel(self, tx: Tx, batch_id: str) -> bool:
        """Marks the batch as asked to cancel if it is still in progress; False if it has
        ended (checked in the same statement, so a batch that ends meanwhile is not marked)."""
        done = conn_of(tx).execute(
            "UPDATE file_batches SET cancel_requested = 1 WHERE id = ? AND status = ?",
            (batch_id, BatchStatus.IN_PROGRESS.value),
        )
        return done.rowcount == 1

    def cancel_requested(self, tx: Tx, batch_id: str) -> bool:
        row = (
            conn_of(tx)
            .execute("SELECT cancel_requested FROM file_batches WHERE id = ?", (batch_id,))
            .fetchone()
        )
        return bool(row and row["cancel_requested"])

    def next_sequence(self, tx: Tx, batch_id: str) -> int | None:
        """Raises the batch's watch sequence; the new value (None: no such batch)."""
        row = (
            conn_of(tx)
            .execute(
                "UPDATE file_batches SET sequence = sequence + 1 WHERE id = ? RETURNING sequence",
                (batch_id,),
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    def settle(self, tx: Tx, batch_id: str) -> None:
        """Ends the batch (``cancelled`` if asked to, else ``completed``) once none of its
        files is in progress."""
        conn = conn_of(tx)
        pending = conn.execute(
            "SELECT 1 FROM batch_files WHERE batch_id = ? AND status = ? LIMIT 1",
            (batch_id, FileStatus.IN_PROGRESS.value),
        ).fetchone()
        if pending is not None:
            return
        conn.execute(
            "UPDATE file_batches SET status = CASE WHEN cancel_requested THEN ? ELSE ? END "
            "WHERE id = ? AND status = ?",
            (
                BatchStatus.CANCELLED.value,
                BatchStatus.COMPLETED.value,
                batch_id,
                BatchStatus.IN_PROGRESS.value,
            ),
        )

    def end(self, tx: Tx, batch_id: str, status: BatchStatus) -> int | None:
        """Sets the batch's status with a new watch sequence, returned (None: no batch)."""
        row = (
            conn_of(tx)
            .execute(
                "UPDATE file_batches SET status = ?, sequence = sequence + 1 WHERE id = ? "
                "RETURNING sequence",
                (status.value, batch_id),
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    # -- the batch's files -----------------------------------------------------------------------

    def add_files(self, tx: Tx, batch_id: str, file_ids: list[str]) -> None:
        conn_of(tx).executemany(
            "INSERT INTO batch_files (batch_id, file_id, status) VALUES (?, ?, ?)",
            [(batch_id, f, FileStatus.IN_PROGRESS.value) for f in file_ids],
        )

    def file_status(self, tx: Tx, batch_id: str, file_id: str) -> str | None:
        row = (
            conn_of(tx)
            .execute(
                "SELECT status FROM batch_files WHERE batch_id = ? AND file_id = ?",
                (batch_id, file_id),
            )
            .fetchone()
        )
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
        conn_of(tx).execute(
            "UPDATE batch_files SET status = ?, last_error_code = ?, last_error_message = ?, "
            "changed_at_sequence = ? WHERE batch_id = ? AND file_id = ?",
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
        """Records the batch's files still in progress ``failed``; returns their ids."""
        return [
            r[0]
            for r in conn_of(tx)
            .execute(
                "UPDATE batch_files SET status = ?, last_error_code = ?, "
                "last_error_message = ?, changed_at_sequence = ? "
                "WHERE batch_id = ? AND status = ? RETURNING file_id",
                (
                    FileStatus.FAILED.value,
                    error.code,
                    error.message,
                    sequence,
                    batch_id,
                    FileStatus.IN_PROGRESS.value,
                ),
            )
            .fetchall()
        ]

    def in_progress_files(self, tx: Tx, batch_id: str) -> list[str]:
        return [
            r["file_id"]
            for r in conn_of(tx)
            .execute(
                "SELECT file_id FROM batch_files WHERE batch_id = ? AND status = ?",
                (batch_id, FileStatus.IN_PROGRESS.value),
            )
            .fetchall()
        ]

    def status_counts(self, batch_id: str) -> dict[str, int]:
        return dict(
            self.db.execute(
                "SELECT status, COUNT(*) FROM batch_files WHERE batch_id = ? GROUP BY status",
                (batch_id,),
            ).fetchall()
        )

    def changes_after(self, batch_id: str, after_sequence: int) -> list[BatchFileChange]:
        """The batch's files changed after ``after_sequence`` (all of them for 0), in order."""
        return [
            BatchFileChange(r[0], r[1], r[2], r[3])
            for r in self.db.execute(
                "SELECT file_id, status, last_error_code, last_error_message FROM batch_files "
                "WHERE batch_id = ? AND changed_at_sequence > ? ORDER BY seq",
                (batch_id, after_sequence if after_sequence else -1),
            )
        ]

    def sequenced_changes(
        self, batch_id: str, after_sequence: int, upto: int
    ) -> list[tuple[int, BatchFileChange]]:
        """(sequence, change) of the batch's files changed after ``after_sequence`` and at or
        before ``upto``, in sequence order (what another process's watchers catch up with)."""
        return [
            (int(r[0]), BatchFileChange(r[1], r[2], r[3], r[4]))
            for r in self.db.execute(
                "SELECT changed_at_sequence, file_id, status, last_error_code, "
                "last_error_message FROM batch_files WHERE batch_id = ? "
                "AND changed_at_sequence > ? AND changed_at_sequence <= ? "
                "ORDER BY changed_at_sequence, seq",
                (batch_id, after_sequence, upto),
            )
        ]

    def files_page(
        self, batch_id: str, status: FileStatus | None, page: PageSpec
    ) -> Rows[VectorStoreFile]:
        """The batch's files as store files, with the status the batch recorded for each."""
        where = "b.batch_id = ?"
        params: tuple[object, ...] = (batch_id,)
        if status is not None:
            where += " AND b.status = ?"
            params += (status.value,)
        # LEFT JOIN: a file detached from the store since keeps its place in the batch's list
        # (the batch's counts include it), with the status the batch recorded for it.
        table = (
            "(SELECT b.seq AS seq, b.file_id AS id, b.batch_id AS batch_id, "
            "b.status AS status, b.last_error_code AS last_error_code, "
            "b.last_error_message AS last_error_message, "
            "fb.vector_store_id AS vector_store_id, b.file_id AS file_id, "
            "COALESCE(f.created_at, fb.created_at) AS created_at, "
            "COALESCE(f.chunk_max_tokens, ?) AS chunk_max_tokens, "
            "COALESCE(f.chunk_overlap_tokens, ?) AS chunk_overlap_tokens, "
            "COALESCE(f.chunk_auto, 1) AS chunk_auto, "
            "COALESCE(f.attributes, '{}') AS attributes, "
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
            # A missing strategy is the auto one; its numbers come from one place.
            table_params=(AUTO_CHUNKING.max_tokens, AUTO_CHUNKING.overlap_tokens, *params),
        )
