"""Turns a queued store file into committed chunks: prepare → worker pool → commit.

The worker parses, chunks and embeds. Then, off the event loop, the vectors are added to the
store's index in bounded slices (``chunk_writer``), and the file becomes ``completed`` in one
transaction at the end, which raises the store's commit sequence last (the index catch-up of
other replicas reads by it). The chunk rows: on SQLite written in short slices of their own
before (its single write lock is never held long); on PostgreSQL inserted in that completing
transaction under ids reserved beforehand, so the chunks, the status, the counts and the
sequences commit together or not at all. Every database call runs
on ``calls``' threads (core/db_calls.py); the scheduler's queue stays the event loop's. A
result that arrives for a file that was deleted, re-attached or cancelled meanwhile is
recognised by its generation and dropped (with whatever of it was already written). A
commit that fails because the disk is full is tried again with backoff, then the file fails
with ``server_error``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.chunk_writer import (
    ChunkWriter,
    NotWanted,
    Owner,
    PendingLabels,
    add_to_index,
)
from quiver.server.core.db_calls import DbCalls
from quiver.server.core.error_codes import ErrorCode
from quiver.server.core.job_leases import JobLeases
from quiver.server.core.models import BatchStatus, FileStatus, LastError
from quiver.server.core.ports import (
    Blobs,
    IngestExecutor,
    KeywordIndexes,
    VectorIndex,
    VectorIndexes,
)
from quiver.server.core.scheduler import Job, Scheduler
from quiver.server.core.status_book import StatusBook
from quiver.server.core.vector_stores import VectorStores
from quiver.server.embedders.registry import EmbedderSpec
from quiver.server.ingest.pool import (
    FileTimedOut,
    WorkerCrashed,
    WorkerOutOfMemory,
)
from quiver.server.ingest.worker import WorkerInput, WorkerOutput
from quiver.server.metrics import Metrics
from quiver.server.storage.database import DatabaseError, is_disk_full
from quiver.server.storage.interfaces import (
    BatchRepository,
    ChunkRepository,
    ChunksInCommit,
    Storage,
    StoreFileRepository,
    Tx,
    VectorStoreRepository,
)
from quiver.server.storage.rows import StorageUnavailable

log = logging.getLogger("quiver.ingest")

_T = TypeVar("_T")

DATABASE_RETRY_SECONDS = 2.0
"""How soon a file is tried again after the database could not be reached."""
MAX_RETRY_DELAY = 60.0
"""Longest wait between two attempts to store a file's chunks on a full disk."""

SpecFor = Callable[[str, int, bool], EmbedderSpec]
"""(store's embedding model, dimensions) → the spec a worker builds its embedder from."""


async def _outcome(work: asyncio.Future[_T]) -> _T | None:
    """What ``work`` (a thread's, e.g. the completing transaction) answered (None: also when
    it failed); waits for it to end."""
    try:
        return await work
    except BaseException:
        return None


class Processing:
    def __init__(
        self,
        db: Storage,
        book: StatusBook,
        blobs: Blobs,
        stores: VectorStores,
        indexes: VectorIndexes,
        pool: IngestExecutor,
        scheduler: Scheduler,
        spec_for: SpecFor,
        metrics: Metrics,
        attributes: AttributeIndex,
        *,
        commit_attempts: int = 8,
        retry_delay: float = 1.0,
        pending: PendingLabels | None = None,
        leases: JobLeases,
        keywords: KeywordIndexes,
        calls: DbCalls,
    ) -> None:
        self.db = db
        self.calls = calls
        self.batch_rows: BatchRepository = db.batches
        self.file_rows: StoreFileRepository = db.store_files
        self.store_rows: VectorStoreRepository = db.stores
        self.chunk_rows: ChunkRepository = db.chunks
        self.book = book
        self.blobs = blobs
        self.stores = stores
        self.indexes = indexes
        self.pool = pool
        self.spec_for = spec_for
        self.scheduler = scheduler  # runs ``process``: given it at ``Scheduler.start``
        self.metrics = metrics
        self.attributes = attributes
        self.writer = ChunkWriter(db)
        self.pending = pending or PendingLabels()
        self.commit_attempts = max(1, commit_attempts)
        self.retry_delay = retry_delay
        self._later: set[asyncio.Task[None]] = set()
        self._after_outage: set[tuple[str, str]] = set()
        self.leases = leases
        self.keywords = keywords

    # -- one file ----------------------------------------------------------------------------

    def _current(self, job: Job) -> dict[str, Any] | None:
        """The file's row if this job is still wanted (in progress, same generation, its
        lease held by this server)."""
        row = self.db.jobs.current(job.store_id, job.file_id)
        if (
            row is None
            or row["status"] != FileStatus.IN_PROGRESS
            or row["generation"] != job.generation
            or row["lease_owner"] != self.leases.owner
        ):
            return None
        return row

    def _note_dropped(self, job: Job) -> None:
        """``job``'s result is being dropped: if that is because the file was claimed again
        (its lease lost to another server, or re-claimed after it expired), count and log it."""
        lease = self.leases.lease(None, job)
        if lease is None:
            return  # detached or deleted meanwhile: nothing unusual
        lost = lease.owner != self.leases.owner
        if lease.status != FileStatus.IN_PROGRESS and not lost:
            return  # settled (e.g. cancelled) meanwhile under this server's own claim
        if lease.status == FileStatus.IN_PROGRESS and self.leases.holds(lease, job):
            return
        # Lost: another server claimed the file again after this one's lease expired (and
        # may already have settled it): this late result is refused.
        self.metrics.stale_results.labels("lease_lost" if lost else "superseded").inc()
        log.log(
            logging.WARNING if lost else logging.INFO,  # superseded: e.g. re-attached meanwhile
            "dropping the result of %s in %s: generation %d was claimed again "
            "(now generation %d, owner %s)",
            job.file_id,
            job.store_id,
            job.generation,
            lease.generation,
            lease.owner,
        )

    async def process(self, job: Job) -> None:
        """One queued file; while the database cannot be reached (a networked one restarting)
        the file is queued again every DATABASE_RETRY_SECONDS instead of being lost (it
        stays in progress under this server's lease, which the heartbeat keeps renewing)."""
        try:
            await self._process(job)
        except StorageUnavailable as exc:
            log.warning(
                "database unavailable while processing %s (%s): trying it again in %g s",
                job.file_id,
                exc,
                DATABASE_RETRY_SECONDS,
            )
            self._after_outage.add(job.key)  # its next commit deletes what this one wrote
            loop = asyncio.get_running_loop()
            loop.call_later(DATABASE_RETRY_SECONDS, self.scheduler.enqueue, [job])

    async def _process(self, job: Job) -> None:
        row = await self.calls.run(self._current, job)
        if row is None:
            await self.calls.run(self._note_dropped, job)
            return
        if await self.calls.run(self.stores.is_expired, job.store_id):
            await self._fail_expired(job, "the vector store expired before this file was processed")
            return
        work = WorkerInput(
            blob=self.blobs.ref(row["sha256"], row["file_bytes"]),
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
            await self._settle(job, LastError(ErrorCode.INVALID_FILE, str(exc)))
            return
        except WorkerCrashed as exc:
            if job.suspect:
                await self._settle(
                    job,
                    LastError(ErrorCode.SERVER_ERROR, f"{exc} (twice); the file was not processed"),
                )
            else:
                log.warning("worker died with %s in flight: retrying it alone", job.file_id)
                self.scheduler.requeue_suspect(job)
            return
        except StorageUnavailable:
            raise
        except Exception as exc:
            log.exception("unexpected failure processing %s", job.file_id)
            await self._settle(
                job, LastError(ErrorCode.SERVER_ERROR, f"internal error: {type(exc).__name__}")
            )
            return
        await self._commit(job, output)

    async def _settle(self, job: Job, error: LastError) -> None:
        """Ends the job ``failed`` with ``error`` (``cancelled`` if its batch was). If that
        cannot be written for want of disk space, it is tried again later until it is."""
        try:
            await self.calls.run(self._settle_now, job, error)
        except (DatabaseError, OSError) as exc:
            if not is_disk_full(exc):
                raise
            self._settle_soon(job, error, exc)

    def _settle_soon(self, job: Job, error: LastError, exc: BaseException) -> None:
        log.warning("disk full: recording %s as failed later (%s)", job.file_id, exc)
        task = asyncio.get_running_loop().create_task(self._settle_later(job, error))
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def _settle_now(self, job: Job, error: LastError) -> None:
        with self.book.transaction() as conn:
            wanted = self._current(job) is not None
            if wanted:
                cancelled = self._cancel_requested(conn, job)
                status = FileStatus.CANCELLED if cancelled else FileStatus.FAILED
                self.book.set_file(
                    conn, job.store_id, job.file_id, status, None if cancelled else error
                )
        if not wanted:  # a late failure is a stale result too
            self._note_dropped(job)
            return
        self.metrics.files.labels(status.value).inc()

    async def _settle_later(self, job: Job, error: LastError, *, now: bool = False) -> None:
        """Settles the job once the disk has room again (first deleting whatever chunks its
        failed commits left), trying with backoff until it is written or no longer wanted."""
        delay = self.retry_delay
        while True:
            if not now:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
            now = False
            row = await self.calls.run(self._current, job)
            if row is None:
                return
            try:
                await asyncio.to_thread(self._delete_leftovers, self._owner(job, row))
                await self.calls.run(self._settle_now, job, error)
                return
            except (DatabaseError, OSError) as exc:
                if not is_disk_full(exc):
                    log.exception("recording %s as failed failed", job.file_id)
                    return
                log.warning("disk still full: %s stays in progress for now", job.file_id)

    @staticmethod
    def _owner(job: Job, row: dict[str, Any]) -> Owner:
        return Owner(
            job.store_id,
            job.file_id,
            job.generation,
            job.queue if row["batch_id"] == job.queue else None,
            row["tenant"],
            row["subject"],
        )

    def _cancel_requested(self, conn: Tx, job: Job) -> bool:
        return self.batch_rows.cancel_requested(conn, job.queue)

    async def _commit(self, job: Job, output: WorkerOutput) -> None:
        """Stores the worker's output; a commit that fails because the disk is full is tried
        again with backoff (``commit_attempts`` in all), then the file fails."""
        if output.error is not None:
            await self._settle(job, LastError(*output.error))
            return
        delay = self.retry_delay
        for attempt in range(1, self.commit_attempts + 1):
            try:
                leftovers = attempt > 1 or job.key in self._after_outage
                await self._store(job, output, leftovers=leftovers)
                self._after_outage.discard(job.key)
                return
            except (ValueError, RuntimeError, DatabaseError, OSError) as exc:
                if isinstance(exc, StorageUnavailable):
                    raise  # tried again once the database is back (``process``)
                if not is_disk_full(exc):
                    log.exception("committing %s failed", job.file_id)
                    await self._settle(
                        job, LastError(ErrorCode.SERVER_ERROR, f"storing the chunks failed: {exc}")
                    )
                    return
                if attempt == self.commit_attempts:
                    log.error("committing %s failed %d times: %s", job.file_id, attempt, exc)
                    message = f"storing the chunks failed ({attempt} attempts): {exc}"
                    await self._settle_later(
                        job, LastError(ErrorCode.SERVER_ERROR, message), now=True
                    )
                    return
                log.warning(
                    "disk full committing %s (attempt %d of %d): retrying in %.1f s",
                    job.file_id,
                    attempt,
                    self.commit_attempts,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
            if await self.calls.run(self._current, job) is None:
                return

    async def _store(self, job: Job, output: WorkerOutput, *, leftovers: bool) -> None:
        """Chunks into SQLite and vectors into the index in slices from a thread, then the
        status flip in one short transaction here. ``leftovers``: first delete the chunks a
        failed attempt may have left."""
        assert output.vectors is not None
        vectors = output.vectors
        started = time.perf_counter()
        row = await self.calls.run(self._current, job)
        if row is None:
            await self.calls.run(self._note_dropped, job)
            return
        if await self.calls.run(self.stores.is_expired, job.store_id):
            await self._fail_expired(
                job, "the vector store expired while this file was being processed"
            )
            return
        owner = self._owner(job, row)
        if leftovers:  # (PostgreSQL: none from new writes; older versions' slices may remain)
            await asyncio.to_thread(self._delete_leftovers, owner)
        in_commit = self.chunk_rows.in_commit()
        if in_commit is not None:  # rows written by the completing transaction itself
            ids = await self.calls.run(in_commit.reserve_ids, len(output.texts))
        else:
            try:
                ids = await asyncio.to_thread(
                    self.writer.write, owner, output.texts, output.token_counts, vectors
                )
            except NotWanted:
                await self.calls.run(self._not_wanted, job)
                return
        dim = int(row["embedding_dimensions"])
        if dim != vectors.shape[1]:  # not known yet (an `openai:` store): learnt now
            dim = await self.calls.run(self._learn_dimensions, job.store_id, vectors.shape[1])
        index = self.indexes.get(job.store_id, dim)
        indexing = time.perf_counter()
        self.pending.add(job.store_id, ids)  # in the index, not yet searchable
        try:
            adding = asyncio.ensure_future(asyncio.to_thread(add_to_index, index, ids, vectors))
            try:
                await asyncio.shield(adding)
                index_seconds = time.perf_counter() - indexing
                in_flight = self.scheduler.in_flight_files(job.store_id)
                completing = asyncio.ensure_future(
                    self.calls.run(self._complete, job, output, ids, in_flight, owner, in_commit)
                )
            except BaseException:
                # Cancelled (a stop) while the vectors are added on their thread, which goes
                # on: the labels are taken out once it is done (taken out before, the ones it
                # adds later would stay, searchable and saved, with no chunk behind them).
                await _outcome(adding)
                await self._discard(job.store_id, index, ids, stored=in_commit is None)
                raise
            try:
                full = await asyncio.shield(completing)
            except BaseException:
                # Cancelled (a stop) while the transaction runs on its thread, which it
                # finishes whole: the file's chunks are cleaned up only if it did not commit
                # the file as completed (else they are the completed file's own).
                if await _outcome(completing) is None:
                    await self._discard(job.store_id, index, ids, stored=in_commit is None)
                raise
            if full is None:
                await self._discard(job.store_id, index, ids, stored=in_commit is None)
                return
        finally:
            self.pending.discard(job.store_id, ids)
        self.attributes.changed(job.store_id, [job.file_id])  # filterable from now on
        if full:  # the store's keyword queue is at its bound: wait for its commit
            try:
                await asyncio.to_thread(self.keywords.flush, job.store_id)
            except Exception as exc:  # kept queued (and reconciled at the next start)
                log.warning("keyword index of %s not committed: %s", job.store_id, exc)
        self.indexes.changed(job.store_id, index)
        await asyncio.to_thread(self.db.checkpoint)
        m = self.metrics
        m.files.labels(FileStatus.COMPLETED.value).inc()
        m.chunks.inc(len(output.texts))
        m.tokens.inc(sum(output.token_counts))
        for stage, seconds in output.seconds.items():
            m.stage_seconds.labels(stage).observe(seconds)
        m.stage_seconds.labels("index").observe(index_seconds)
        m.stage_seconds.labels("commit").observe(time.perf_counter() - started - index_seconds)

    def _not_wanted(self, job: Job) -> None:
        self._note_dropped(job)
        self._cancel_if_requested(job)

    def _learn_dimensions(self, store_id: str, width: int) -> int:
        with self.book.transaction() as conn:
            return self.stores.learn_dimensions(conn, store_id, width)

    def _complete(
        self,
        job: Job,
        output: WorkerOutput,
        ids: npt.NDArray[np.int64],
        in_flight: frozenset[str],
        owner: Owner,
        in_commit: ChunksInCommit | None,
    ) -> bool | None:
        """The final transaction (on a database thread): ``completed`` if the job is still
        wanted (and still this server's claim of the file: same generation, same lease
        owner); then its chunks are told to the keyword index before the book's next
        transaction (a search from now on reads them). None if not completed, else whether
        the store's keyword queue is full (then wait for its commit).

        ``in_commit`` (PostgreSQL): the chunk rows are inserted first in this same
        transaction, before the book's lock is taken, under the ids reserved for them; if it
        fails none remains, and if the file is not completed they are deleted in it."""
        assert output.vectors is not None
        vectors = output.vectors

        def insert(conn: Tx) -> None:
            assert in_commit is not None
            in_commit.insert_reserved(conn, owner, ids, output.texts, output.token_counts, vectors)

        full: list[bool] = []
        with self.book.transaction(None if in_commit is None else insert) as conn:
            if not self._complete_rows(job, output, in_flight):
                if in_commit is not None:
                    in_commit.delete_reserved(conn, ids)
                return None
            rows = [
                (int(i), job.file_id, t) for i, t in zip(ids.tolist(), output.texts, strict=True)
            ]
            self.book.after_commit(lambda: full.append(self.keywords.add(job.store_id, rows)))
        return full[0] if full else False

    def _complete_rows(self, job: Job, output: WorkerOutput, in_flight: frozenset[str]) -> bool:
        assert output.vectors is not None
        with self.book.transaction() as conn:
            # Read inside the transaction, the row locked (PostgreSQL): no other server's
            # claim can commit between this check and the status flip below.
            if not self.leases.holds(self.leases.lease(conn, job), job):
                self._note_dropped(job)
                return False
            if self._cancel_requested(conn, job):
                self.book.set_file(conn, job.store_id, job.file_id, FileStatus.CANCELLED)
                return False
            if self.stores.is_expired(job.store_id):
                # Not completed: an expired store refuses writes (and `touch` below would
                # make it look active again).
                self._fail_expired_now(
                    job, "the vector store expired while this file was being processed", in_flight
                )
                return False
            usage = output.vectors.nbytes + sum(len(t.encode("utf-8")) for t in output.texts)
            self.book.set_file(
                conn, job.store_id, job.file_id, FileStatus.COMPLETED, usage_bytes=usage
            )
            self.stores.touch(job.store_id)
            # Last: the store's commit sequence, under its row's lock until commit (the
            # index catch-up of every replica reads the files completed after a value).
            self.file_rows.mark_committed(conn, job.store_id, job.file_id)
        return True

    def _cancel_if_requested(self, job: Job) -> None:
        with self.book.transaction() as conn:
            if self._current(job) is not None and self._cancel_requested(conn, job):
                self.book.set_file(conn, job.store_id, job.file_id, FileStatus.CANCELLED)

    async def _discard(
        self, store_id: str, index: VectorIndex, ids: npt.NDArray[np.int64], *, stored: bool
    ) -> None:
        """Takes chunks that will not complete back out of the index and, if they were
        ``stored`` before the completing transaction (SQLite), out of the database."""
        try:
            await asyncio.to_thread(index.mark_deleted, ids)
            self.indexes.changed(store_id, index)
            if stored:
                await asyncio.to_thread(self.writer.delete, ids)
        except (DatabaseError, OSError) as exc:  # e.g. still no disk space: recovery or the
            # next attempt (which deletes the file's leftovers first) removes them
            log.warning("could not remove %d chunks of %s: %s", len(ids), store_id, exc)

    # -- whole stores ------------------------------------------------------------------------

    async def _fail_expired(self, job: Job, reason: str) -> None:
        """``job``'s store expired: the job (in flight, so ``fail_store_work`` leaves it alone)
        and the store's other unfinished work fail, in one transaction."""
        in_flight = self.scheduler.in_flight_files(job.store_id)
        try:
            await self.calls.run(self._fail_expired_now, job, reason, in_flight)
        except (DatabaseError, OSError) as exc:
            if not is_disk_full(exc):
                raise
            self._settle_soon(job, LastError(ErrorCode.SERVER_ERROR, reason), exc)

    def _fail_expired_now(self, job: Job, reason: str, in_flight: frozenset[str]) -> None:
        """``_fail_expired``'s body; ``in_flight``: the store's files in flight (a moment
        ago, on the loop)."""
        with self.book.transaction():
            self.fail_store_work(job.store_id, reason, in_flight)
            self._settle_now(job, LastError(ErrorCode.SERVER_ERROR, reason))

    def fail_store_work(self, store_id: str, reason: str, in_flight: frozenset[str]) -> None:
        """The store can take no more work (expired): its running batches end ``failed``
        (its queued files leave the queue, on the loop; those in flight settle themselves)."""
        self.calls.on_loop(self.scheduler.remove, lambda j: j.store_id == store_id)
        with self.book.transaction() as conn:
            # Batches first: once their last file settles they would end ``completed``.
            for batch_id in self.batch_rows.in_progress(conn, store_id):
                self.book.end_batch(conn, batch_id, BatchStatus.FAILED)
            for file_id in self.file_rows.in_progress(conn, store_id):
                if file_id not in in_flight:
                    self.book.set_file(
                        conn,
                        store_id,
                        file_id,
                        FileStatus.FAILED,
                        LastError(ErrorCode.SERVER_ERROR, reason),
                    )

    # -- start-up ----------------------------------------------------------------------------

    def _room(self) -> int:
        """How many more files the scheduler's queue takes (claims are bounded by it), less
        the room requests hold for files they are attaching."""
        return max(0, self.scheduler.max_queued - self.scheduler.queued - self.scheduler.reserved)

    def _claim_expired(self, room: int) -> list[Job]:
        """Claims the unfinished files whose lease expired or that were never claimed (those of
        a cancelled batch are cancelled instead), ``room`` at most; returns their jobs."""
        with self.book.transaction() as conn:
            for store_id, file_id in self.leases.expired_in_cancelled_batches(conn):
                self.book.set_file(conn, store_id, file_id, FileStatus.CANCELLED)
            return self.leases.claim_expired(conn, room)

    def recover(self) -> list[Job]:
        """At start: takes up the files left in progress whose lease expired (or that were
        never claimed), without duplicate chunks; returns the jobs. Files whose lease another
        server instance still holds are left to it (or to the sweep, once it expires)."""
        return self._claim_expired(self._room())

    async def sweep(self) -> int:
        """Periodically: claims the files whose lease expired meanwhile, deletes the chunks
        their previous owner left, and queues them. Returns how many were claimed."""
        jobs = await self.calls.run(self._claim_expired, self._room())
        if not jobs:
            return 0
        keys = {j.key for j in jobs}
        self.scheduler.remove(lambda j: j.key in keys)  # queued under a claim now superseded
        await asyncio.to_thread(self._delete_claimed_leftovers, jobs)
        self.scheduler.enqueue(jobs)
        return len(jobs)

    def _delete_claimed_leftovers(self, jobs: list[Job]) -> None:
        """Blocking: the chunks the previous owners of ``jobs`` left, each only while its
        claim is still current (never the chunks of a newer attachment)."""
        for job in jobs:
            self._delete_leftovers(
                Owner(job.store_id, job.file_id, job.generation, None, job.tenant, "")
            )

    def _delete_leftovers(self, owner: Owner) -> None:
        """Blocking: the chunks an earlier attempt at ``owner``'s file left, out of the
        database and, if the start's reconciliation put them there, out of the index (they
        never completed; kept, they would stay in every saved index until a restart)."""
        self.indexes.remove_held(owner.store_id, self.writer.delete_leftovers(owner))

    def release_leases(self) -> None:
        """At a clean stop, after the scheduler: the files left unfinished may be claimed at
        once (by the next start) instead of when their leases expire."""
        with self.book.transaction() as conn:
            released = self.leases.release(conn)
        if released:
            log.info("released the leases of unfinished files", extra={"files": released})

    def delete_leftovers(self, jobs: list[Job]) -> None:
        """Blocking (call it from a thread, before ``reconcile_indexes``): deletes the chunks
        written for files now taken up again (so none is stored twice) and those of stores
        deleted before their chunks were."""
        for job in jobs:
            self.writer.delete_file(job.store_id, job.file_id)
        for store_id, file_id in self.chunk_rows.settled_with_chunks():
            # Settled (e.g. cancelled in flight), then the server died before the attempt's
            # rows were deleted: no later attempt or recovery of the file would.
            log.info("deleting the chunks left by ended file %s in %s", file_id, store_id)
            self.writer.delete_file(store_id, file_id)
        for store_id in self.chunk_rows.stores_deleted_from_thread():
            log.info("deleting the chunks of deleted store %s", store_id)
            self.writer.delete_store(store_id)

    def reconcile_indexes(self) -> None:
        stores = self.store_rows.dimensioned()
        for store_id in self.keywords.forget_others({s for s, _ in stores}):
            log.info("removed the keyword index of deleted store %s", store_id)
        for store_id, _ in stores:
            kw = self.keywords.reconcile(
                store_id, self.chunk_rows.completed_ids(store_id), self.chunk_rows.keyword_rows
            )
            if kw.added or kw.removed or kw.rebuilt:
                log.info(
                    "reconciled keyword index",
                    extra={
                        "store": store_id,
                        "added": kw.added,
                        "removed": kw.removed,
                        "rebuilt": kw.rebuilt,
                    },
                )
        for store_id, dim in stores:
            stored = self.chunk_rows.ids_of_store(store_id)
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
                found = self.chunk_rows.vectors(part)
                for j, chunk_id in enumerate(part):
                    out[start + j] = np.frombuffer(found[chunk_id], dtype=np.float32)
            return out

        return load
