"""Every change of a store file's status goes through here, so the store's counts, the
batch's record, the batch's watch sequence and the watchers stay in step.

Use ``with book.transaction() as conn:``; the watch hub is told after the commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from quiver.server.core.error_codes import ErrorCode
from quiver.server.core.models import BatchStatus, FileBatch, FileCounts, FileStatus, LastError
from quiver.server.core.watch import FileUpdate, WatchHub
from quiver.server.storage.database import Database

BATCH_ENDED = LastError(
    ErrorCode.SERVER_ERROR,
    "the batch ended (its vector store was deleted or expired) before this file was processed",
)


def batch_from_row(row: sqlite3.Row, counts: FileCounts) -> FileBatch:
    return FileBatch(
        id=row["id"],
        created_at=row["created_at"],
        vector_store_id=row["vector_store_id"],
        status=BatchStatus(row["status"]),
        file_counts=counts,
    )


class StatusBook:
    def __init__(self, db: Database, hub: WatchHub) -> None:
        self.db = db
        self.hub = hub
        self._changes: dict[str, list[tuple[int, FileUpdate]]] = {}
        self._touched: set[str] = set()
        self._final: dict[str, tuple[FileBatch, int]] = {}
        self._depth = 0

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._depth += 1
        try:
            with self.db.transaction() as conn:
                yield conn
        except BaseException:
            if self._depth == 1:
                self._changes, self._touched, self._final = {}, set(), {}
            raise
        finally:
            self._depth -= 1
        if self._depth == 0:
            self._publish()

    def _publish(self) -> None:
        touched, changes, final = self._touched, self._changes, self._final
        self._changes, self._touched, self._final = {}, set(), {}
        for batch_id in touched:
            row = self.db.execute("SELECT * FROM file_batches WHERE id = ?", (batch_id,)).fetchone()
            if row is not None:
                batch, sequence = batch_from_row(row, self.batch_counts(batch_id)), row["sequence"]
            elif batch_id in final:  # deleted with its store: its last state was kept
                batch, sequence = final[batch_id]
            else:
                continue
            self.hub.publish(batch, sequence, changes.get(batch_id, []))

    def batch_counts(self, batch_id: str) -> FileCounts:
        counts = dict(
            self.db.execute(
                "SELECT status, COUNT(*) FROM batch_files WHERE batch_id = ? GROUP BY status",
                (batch_id,),
            ).fetchall()
        )
        return FileCounts.from_status_counts(counts)

    def set_file(
        self,
        conn: sqlite3.Connection,
        store_id: str,
        file_id: str,
        status: FileStatus,
        error: LastError | None = None,
        usage_bytes: int = 0,
    ) -> None:
        """Sets a store file's status (inside a ``transaction``) and records it in its batch."""
        row = conn.execute(
            "UPDATE vector_store_files SET status = ?, last_error_code = ?, "
            "last_error_message = ?, usage_bytes = ? WHERE vector_store_id = ? AND file_id = ? "
            "RETURNING batch_id",
            (
                status.value,
                error.code if error else None,
                error.message if error else None,
                usage_bytes,
                store_id,
                file_id,
            ),
        ).fetchone()
        if row is not None and row["batch_id"] is not None:
            self.set_batch_file(conn, row["batch_id"], file_id, status, error)

    def set_batch_file(
        self,
        conn: sqlite3.Connection,
        batch_id: str,
        file_id: str,
        status: FileStatus,
        error: LastError | None = None,
    ) -> None:
        current = conn.execute(
            "SELECT status FROM batch_files WHERE batch_id = ? AND file_id = ?",
            (batch_id, file_id),
        ).fetchone()
        if current is None or current["status"] != FileStatus.IN_PROGRESS.value:
            return  # the batch's record of a settled file never changes again
        sequence = conn.execute(
            "UPDATE file_batches SET sequence = sequence + 1 WHERE id = ? RETURNING sequence",
            (batch_id,),
        ).fetchone()["sequence"]
        conn.execute(
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
        self._changes.setdefault(batch_id, []).append(
            (sequence, FileUpdate(file_id, status, error))
        )
        self._touched.add(batch_id)
        self._settle_batch(conn, batch_id)

    def _settle_batch(self, conn: sqlite3.Connection, batch_id: str) -> None:
        """Ends the batch once none of its files is in progress."""
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

    def end_batch(
        self,
        conn: sqlite3.Connection,
        batch_id: str,
        status: BatchStatus,
        error: LastError = BATCH_ENDED,
    ) -> None:
        """Ends a batch that cannot go on (store deleted or expired): a change of its own.

        Its files still in progress are recorded ``failed`` with ``error`` in the same change,
        so the terminal message and every later GetFileBatch count none in progress (a file
        in flight may still settle in its store; the batch's record of it is final).
        """
        sequence = conn.execute(
            "UPDATE file_batches SET status = ?, sequence = sequence + 1 WHERE id = ? "
            "RETURNING sequence",
            (status.value, batch_id),
        ).fetchone()
        if sequence is None:
            return
        unfinished = conn.execute(
            "UPDATE batch_files SET status = ?, last_error_code = ?, last_error_message = ?, "
            "changed_at_sequence = ? WHERE batch_id = ? AND status = ? RETURNING file_id",
            (
                FileStatus.FAILED.value,
                error.code,
                error.message,
                sequence[0],
                batch_id,
                FileStatus.IN_PROGRESS.value,
            ),
        ).fetchall()
        self._changes.setdefault(batch_id, []).extend(
            (sequence[0], FileUpdate(r[0], FileStatus.FAILED, error)) for r in unfinished
        )
        row = conn.execute("SELECT * FROM file_batches WHERE id = ?", (batch_id,)).fetchone()
        self._final[batch_id] = (batch_from_row(row, self.batch_counts(batch_id)), sequence[0])
        self._touched.add(batch_id)
