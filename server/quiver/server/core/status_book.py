"""Every change of a store file's status goes through here, so the store's counts, the
batch's record, the batch's watch sequence and the watchers stay in step.

Use ``with book.transaction() as conn:``; the watch hub is told after the commit.

Transactions may run on database threads (``core/db_calls.py``): what a transaction records
is the thread's own, the book's transactions run one at a time in this process (a lock held
from BEGIN until the hub has been handed the changes, so watchers hear of them in commit
order; with SQLite every write is serialized anyway), and the hub (the event loop's) is told
on the loop.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

from quiver.server.core.db_calls import DbCalls
from quiver.server.core.error_codes import ErrorCode
from quiver.server.core.models import BatchStatus, FileBatch, FileCounts, FileStatus, LastError
from quiver.server.core.watch import FileUpdate, WatchHub
from quiver.server.storage.interfaces import BatchRepository, Storage, StoreFileRepository, Tx
from quiver.server.storage.rows import BatchRow

BATCH_ENDED = LastError(
    ErrorCode.SERVER_ERROR,
    "the batch ended (its vector store was deleted or expired) before this file was processed",
)


def batch_from_row(row: BatchRow, counts: FileCounts) -> FileBatch:
    return FileBatch(
        id=row.id,
        created_at=row.created_at,
        vector_store_id=row.vector_store_id,
        status=BatchStatus(row.status),
        file_counts=counts,
    )


class _Record(threading.local):
    """One thread's transaction in progress: what it changed, for the watchers."""

    def __init__(self) -> None:
        self.changes: dict[str, list[tuple[int, FileUpdate]]] = {}
        self.touched: set[str] = set()
        self.final: dict[str, tuple[FileBatch, int]] = {}
        self.after: list[Callable[[], object]] = []
        self.depth = 0


class StatusBook:
    def __init__(self, db: Storage, hub: WatchHub, calls: DbCalls | None = None) -> None:
        self.db = db
        self.batches: BatchRepository = db.batches
        self.files: StoreFileRepository = db.store_files
        self.hub = hub
        self.calls = calls
        self._record = _Record()
        self._serial = threading.RLock()

    def serial(self) -> AbstractContextManager[bool]:
        """Held, the book's transactions wait (e.g. while a watcher's snapshot is read)."""
        return self._serial

    @contextmanager
    def transaction(self, prepare: Callable[[Tx], object] | None = None) -> Iterator[Tx]:
        """``prepare`` (outermost only): run first in the same database transaction, before
        the book's lock is taken, for long work that locks no row another book transaction
        waits for (a file's new chunk rows), so the book's other transactions need not wait
        for it; the commit and the watchers' news still come under the lock."""
        record = self._record
        opened = ExitStack()
        if prepare is not None and record.depth == 0:
            try:
                prepare(opened.enter_context(self.db.transaction()))
            except BaseException:
                if not opened.__exit__(*sys.exc_info()):
                    raise
        with self._serial:
            record.depth += 1
            try:
                with opened, self.db.transaction() as conn:  # (joins the one opened above)
                    yield conn
            except BaseException:
                if record.depth == 1:
                    record.changes, record.touched, record.final = {}, set(), {}
                    record.after = []
                raise
            finally:
                record.depth -= 1
            if record.depth == 0:
                self._publish()

    def after_commit(self, then: Callable[[], object]) -> None:
        """Inside a ``transaction``: ``then`` runs once it has committed, after the watchers
        were told, still before the book's next transaction (not at all if it fails)."""
        self._record.after.append(then)

    def _publish(self) -> None:
        record = self._record
        touched, changes, final = record.touched, record.changes, record.final
        after = record.after
        record.changes, record.touched, record.final, record.after = {}, set(), {}, []
        for batch_id in touched:
            row = self.batches.get(batch_id)
            if row is not None:
                batch, sequence = batch_from_row(row, self.batch_counts(batch_id)), row.sequence
            elif batch_id in final:  # deleted with its store: its last state was kept
                batch, sequence = final[batch_id]
            else:
                continue
            updates = changes.get(batch_id, [])
            if self.calls is None:
                self.hub.publish(batch, sequence, updates)
            else:
                self.calls.on_loop(self.hub.publish, batch, sequence, updates)
        for then in after:
            then()

    def batch_counts(self, batch_id: str) -> FileCounts:
        return FileCounts.from_status_counts(self.batches.status_counts(batch_id))

    def set_file(
        self,
        conn: Tx,
        store_id: str,
        file_id: str,
        status: FileStatus,
        error: LastError | None = None,
        usage_bytes: int = 0,
    ) -> None:
        """Sets a store file's status (inside a ``transaction``) and records it in its batch."""
        batch_id = self.files.set_status(conn, store_id, file_id, status, error, usage_bytes)
        if batch_id is not None:
            self.set_batch_file(conn, batch_id, file_id, status, error)

    def set_batch_file(
        self,
        conn: Tx,
        batch_id: str,
        file_id: str,
        status: FileStatus,
        error: LastError | None = None,
    ) -> None:
        current = self.batches.file_status(conn, batch_id, file_id)
        if current != FileStatus.IN_PROGRESS.value:
            return  # the batch's record of a settled file never changes again
        sequence = self.batches.next_sequence(conn, batch_id)
        assert sequence is not None  # its batch_files row refers to it
        self.batches.set_file(conn, batch_id, file_id, status, error, sequence)
        self._record.changes.setdefault(batch_id, []).append(
            (sequence, FileUpdate(file_id, status, error))
        )
        self._record.touched.add(batch_id)
        self.batches.settle(conn, batch_id)  # ends the batch once none is in progress

    def end_batch(
        self,
        conn: Tx,
        batch_id: str,
        status: BatchStatus,
        error: LastError = BATCH_ENDED,
    ) -> None:
        """Ends a batch that cannot go on (store deleted or expired): a change of its own.

        Its files still in progress are recorded ``failed`` with ``error`` in the same change,
        so the terminal message and every later GetFileBatch count none in progress (a file
        in flight may still settle in its store; the batch's record of it is final).
        """
        sequence = self.batches.end(conn, batch_id, status)
        if sequence is None:
            return
        unfinished = self.batches.fail_unfinished(conn, batch_id, error, sequence)
        self._record.changes.setdefault(batch_id, []).extend(
            (sequence, FileUpdate(f, FileStatus.FAILED, error)) for f in unfinished
        )
        row = self.batches.get(batch_id)
        assert row is not None  # just updated in this transaction
        self._record.final[batch_id] = (
            batch_from_row(row, self.batch_counts(batch_id)),
            sequence,
        )
        self._record.touched.add(batch_id)
