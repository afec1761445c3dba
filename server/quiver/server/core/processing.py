"""Turns a queued store file into committed chunks: prepare → worker pool → commit.

The worker parses, chunks and embeds; this process adds the vectors to the store's index
and commits chunks, vectors, text and the file's new status in one SQLite transaction. A
result that arrives for a file that was deleted, re-attached or cancelled meanwhile is
recognised by its generation and dropped.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from quiver.server.core.models import BatchStatus, FileStatus, LastError
from quiver.server.core.scheduler import Job, Scheduler, single_queue
from quiver.server.core.status_book import StatusBook
from quiver.server.core.vector_stores import VectorStores
from quiver.server.embedders.registry import EmbedderSpec
from quiver.server.index.manager import IndexManager
from quiver.server.ingest.parsing import INVALID_FILE, SERVER_ERROR
from quiver.server.ingest.pool import (
    FileTimedOut,
    IngestPool,
    WorkerCrashed,
    WorkerOutOfMemory,
)
from quiver.server.ingest.worker import WorkerInput, WorkerOutput
from quiver.server.metrics import Metrics
from quiver.server.storage.blobs import BlobStore
from quiver.server.storage.database import Database

log = logging.getLogger("quiver.ingest")

SpecFor = Callable[[str, int, bool], EmbedderSpec]
"""(store's embedding model, dimensions) → the spec a worker builds its embedder from."""


class Processing:
    def __init__(
        self,
        db: Database,
        book: StatusBook,
        blobs: BlobStore,
        stores: VectorStores,
        indexes: IndexManager,
        pool: IngestPool,
        spec_for: SpecFor,
        metrics: Metrics,
    ) -> None:
        self.db = db
        self.book = book
        self.blobs = blobs
        self.stores = stores
        self.indexes = indexes
        self.pool = pool
        self.spec_for = spec_for
        self.scheduler: Scheduler | None = None  # set by the app (they refer to each other)
        self.metrics = metrics

    # -- one file ----------------------------------------------------------------------------

    def _current(self, job: Job) -> sqlite3.Row | None:
        """The file's row if this job is still wanted (in progress, same generation)."""
        row: sqlite3.Row | None = self.db.execute(
            "SELECT f.*, s.embedding_model, s.embedding_dimensions, s.dimensions_sent, "
            "files.sha256, "
            "files.filename FROM vector_store_files f "
            "JOIN vector_stores s ON s.id = f.vector_store_id "
            "JOIN files ON files.id = f.file_id "
            "WHERE f.vector_store_id = ? AND f.file_id = ?",
            (job.store_id, job.file_id),
        ).fetchone()
        if (
            row is None
            or row["status"] != FileStatus.IN_PROGRESS
            or row["generation"] != job.generation
        ):
            return None
        return row

    async def process(self, job: Job) -> None:
        row = self._current(job)
        if row is None:
            return
        if self.stores.is_expired(job.store_id):
            self._fail_expired(job, "the vector store expired before this file was processed")
            return
        work = WorkerInput(
            path=str(self.blobs.path_for(row["sha256"])),
            filename=row["filename"],
            max_tokens=row["chunk_max_tokens"],
            overlap_tokens=row["chunk_overlap_tokens"],
            embedder=self.spec_for(
                row["embedding_model"], row["embedding_dimensions"], bool(row["dimensions_sent"])
            ),
        )
        try:
            output = await self.pool.run(work)
        except (FileTimedOut, WorkerOutOfMemory) as exc:  # the file's doing: not retried
            self._settle(job, LastError(INVALID_FILE, str(exc)))
            return
        except WorkerCrashed as exc:
            if job.suspect or self.scheduler is None:
                self._settle(
                    job, LastError(SERVER_ERROR, f"{exc} (twice); the file was not processed")
                )
            else:
                log.warning("worker died with %s in flight: retrying it alone", job.file_id)
                self.scheduler.requeue_suspect(job)
            return
        except Exception as exc:
            log.exception("unexpected failure processing %s", job.file_id)
            self._settle(job, LastError(SERVER_ERROR, f"internal error: {type(exc).__name__}"))
            return
        self._commit(job, output)

    def _settle(self, job: Job, error: LastError) -> None:
        with self.book.transaction() as conn:
            if self._current(job) is None:
                return
            cancelled = self._cancel_requested(conn, job)
            status = FileStatus.CANCELLED if cancelled else FileStatus.FAILED
            self.book.set_file(
                conn, job.store_id, job.file_id, status, None if cancelled else error
            )
        self.metrics.files.labels(status.value).inc()

    def _cancel_requested(self, conn: sqlite3.Connection, job: Job) -> bool:
        row = conn.execute(
            "SELECT cancel_requested FROM file_batches WHERE id = ?", (job.queue,)
        ).fetchone()
        return bool(row and row["cancel_requested"])

    def _commit(self, job: Job, output: WorkerOutput) -> None:
        if output.error is not None:
            self._settle(job, LastError(*output.error))
            return
        assert output.vectors is not None
        started = time.perf_counter()
        try:
            with self.book.transaction() as conn:
                row = self._current(job)
                if row is None:
                    return
                if self._cancel_requested(conn, job):
                    self.book.set_file(conn, job.store_id, job.file_id, FileStatus.CANCELLED)
                    return
                if self.stores.is_expired(job.store_id):
                    # Not written: an expired store refuses writes (and `touch` below would
                    # make it look active again).
                    self._fail_expired(
                        job, "the vector store expired while this file was being processed"
                    )
                    return
                dim = self.stores.learn_dimensions(conn, job.store_id, output.vectors.shape[1])
                ids = self._insert_chunks(conn, job, row, output)
                usage = output.vectors.nbytes + sum(len(t.encode("utf-8")) for t in output.texts)
                # In memory only; if the commit below fails, start-up reconciliation drops them.
                indexing = time.perf_counter()
                self.indexes.add(job.store_id, dim, ids, output.vectors)
                index_seconds = time.perf_counter() - indexing
                self.book.set_file(
                    conn, job.store_id, job.file_id, FileStatus.COMPLETED, usage_bytes=usage
                )
                self.stores.touch(job.store_id)
        except (ValueError, RuntimeError, sqlite3.Error) as exc:
            log.exception("committing %s failed", job.file_id)
            self._settle(job, LastError(SERVER_ERROR, f"storing the chunks failed: {exc}"))
            return
        m = self.metrics
        m.files.labels(FileStatus.COMPLETED.value).inc()
        m.chunks.inc(len(output.texts))
        m.tokens.inc(sum(output.token_counts))
        for stage, seconds in output.seconds.items():
            m.stage_seconds.labels(stage).observe(seconds)
        m.stage_seconds.labels("index").observe(index_seconds)
        m.stage_seconds.labels("commit").observe(time.perf_counter() - started - index_seconds)

    def _insert_chunks(
        self, conn: sqlite3.Connection, job: Job, row: sqlite3.Row, output: WorkerOutput
    ) -> npt.NDArray[np.int64]:
        """One executemany for the file's chunks; their ids follow the table's AUTOINCREMENT
        sequence, which nobody else can move inside this (BEGIN IMMEDIATE) transaction."""
        assert output.vectors is not None
        before = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
        start = int(before[0]) if before else 0
        conn.executemany(
            "INSERT INTO chunks (vector_store_id, file_id, tenant, subject, chunk_index, "
            "token_count, text, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    job.store_id,
                    job.file_id,
                    row["tenant"],
                    row["subject"],
                    i,
                    tokens,
                    text,
                    output.vectors[i].tobytes(),
                )
                for i, (text, tokens) in enumerate(
                    zip(output.texts, output.token_counts, strict=True)
                )
            ],
        )
        after = int(
            conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()[0]
        )
        if after - start != len(output.texts):
            raise RuntimeError(f"chunk ids are not contiguous ({start}..{after})")
        return np.arange(start + 1, after + 1, dtype=np.int64)

    # -- whole stores ------------------------------------------------------------------------

    def _fail_expired(self, job: Job, reason: str) -> None:
        """``job``'s store expired: the job (in flight, so ``fail_store_work`` leaves it alone)
        and the store's other unfinished work fail, in one transaction."""
        with self.book.transaction():
            self.fail_store_work(job.store_id, reason)
            self._settle(job, LastError(SERVER_ERROR, reason))

    def fail_store_work(self, store_id: str, reason: str) -> None:
        """The store can take no more work (expired): its running batches end ``failed``."""
        if self.scheduler is not None:
            self.scheduler.remove(lambda j: j.store_id == store_id)
        with self.book.transaction() as conn:
            # Batches first: once their last file settles they would end ``completed``.
            for (batch_id,) in conn.execute(
                "SELECT id FROM file_batches WHERE vector_store_id = ? AND status = ?",
                (store_id, BatchStatus.IN_PROGRESS.value),
            ).fetchall():
                self.book.end_batch(conn, batch_id, BatchStatus.FAILED)
            for row in conn.execute(
                "SELECT file_id FROM vector_store_files WHERE vector_store_id = ? AND status = ?",
                (store_id, FileStatus.IN_PROGRESS.value),
            ).fetchall():
                if self.scheduler is None or not self.scheduler.is_in_flight(store_id, row[0]):
                    self.book.set_file(
                        conn, store_id, row[0], FileStatus.FAILED, LastError(SERVER_ERROR, reason)
                    )

    def on_store_deleted(self, conn: sqlite3.Connection, store_id: str) -> None:
        """Inside the store's delete transaction: its running batches end ``failed``."""
        if self.scheduler is not None:
            self.scheduler.remove(lambda j: j.store_id == store_id)
        for (batch_id,) in conn.execute(
            "SELECT id FROM file_batches WHERE vector_store_id = ? AND status = ?",
            (store_id, BatchStatus.IN_PROGRESS.value),
        ).fetchall():
            self.book.end_batch(conn, batch_id, BatchStatus.FAILED)
        self.indexes.drop(store_id)

    # -- start-up ----------------------------------------------------------------------------

    def recover(self) -> list[Job]:
        """Takes up every file left in progress, without duplicate chunks; returns the jobs."""
        jobs: list[Job] = []
        with self.book.transaction() as conn:
            # Cancelled batches: their unfinished files are cancelled now.
            for row in conn.execute(
                "SELECT f.vector_store_id, f.file_id FROM vector_store_files f "
                "JOIN file_batches b ON b.id = f.batch_id "
                "WHERE f.status = ? AND b.cancel_requested = 1",
                (FileStatus.IN_PROGRESS.value,),
            ).fetchall():
                self.book.set_file(conn, row[0], row[1], FileStatus.CANCELLED)
            for row in conn.execute(
                "UPDATE vector_store_files SET generation = generation + 1 WHERE status = ? "
                "RETURNING vector_store_id, file_id, generation, batch_id, seq, tenant",
                (FileStatus.IN_PROGRESS.value,),
            ).fetchall():
                # Chunks are only written with `completed`, but be sure: never twice.
                conn.execute(
                    "DELETE FROM chunks WHERE vector_store_id = ? AND file_id = ?",
                    (row["vector_store_id"], row["file_id"]),
                )
                jobs.append(
                    Job(
                        row["vector_store_id"],
                        row["file_id"],
                        row["generation"],
                        row["batch_id"] or single_queue(row["vector_store_id"], row["file_id"]),
                        row["tenant"],
                    )
                )
        return jobs

    def reconcile_indexes(self) -> None:
        for store in self.db.execute(
            "SELECT id, embedding_dimensions FROM vector_stores WHERE embedding_dimensions > 0"
        ).fetchall():
            store_id, dim = store["id"], store["embedding_dimensions"]
            stored = np.fromiter(
                (
                    r[0]
                    for r in self.db.execute(
                        "SELECT id FROM chunks WHERE vector_store_id = ? ORDER BY id", (store_id,)
                    )
                ),
                dtype=np.int64,
            )
            report = self.indexes.reconcile(store_id, dim, stored, self._vector_loader(dim))
            if report.added or report.removed or report.rebuilt:
                log.info(
                    "reconciled index",
                    extra={
                        "store": store_id,
                        "added": report.added,
                        "removed": report.removed,
                        "rebuilt": report.rebuilt,
                    },
                )
        self.indexes.save_all()

    def _vector_loader(self, dim: int) -> Callable[[np.ndarray], np.ndarray]:
        def load(ids: np.ndarray) -> np.ndarray:
            out = np.empty((len(ids), dim), dtype=np.float32)
            for start in range(0, len(ids), 500):
                part = [int(i) for i in ids[start : start + 500]]
                marks = ",".join("?" * len(part))
                found = {
                    r[0]: r[1]
                    for r in self.db.execute(
                        f"SELECT id, vector FROM chunks WHERE id IN ({marks})", tuple(part)
                    )
                }
                for j, chunk_id in enumerate(part):
                    out[start + j] = np.frombuffer(found[chunk_id], dtype=np.float32)
            return out

        return load
