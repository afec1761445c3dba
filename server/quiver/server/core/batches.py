"""File batches: create (validated, idempotent), read, cancel, list files, and watch."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from quiver.server.core import ids
from quiver.server.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Resource,
)
from quiver.server.core.models import (
    AttributeValue,
    BatchStatus,
    Chunking,
    ExpiresAfter,
    FileBatch,
    FileStatus,
    LastError,
    ListParams,
    Page,
    VectorStore,
    VectorStoreFile,
)
from quiver.server.core.pages import page_of
from quiver.server.core.principal import Principal
from quiver.server.core.scheduler import Job
from quiver.server.core.status_book import StatusBook, batch_from_row
from quiver.server.core.store_files import StoreFiles
from quiver.server.core.validation import check_sequence
from quiver.server.core.vector_stores import NewStore
from quiver.server.core.watch import FileUpdate, Follower, WatchHub, WatchMessage, is_terminal
from quiver.server.storage.interfaces import BatchRepository, FileRepository, Tx
from quiver.server.storage.rows import BatchRow, StoreRow

MAX_BATCH_FILES = 2000
MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class BatchFileSpec:
    """One file of a new batch, with validated attributes and chunking."""

    file_id: str
    attributes: Mapping[str, AttributeValue]
    chunking: Chunking


PARTS = ("file_ids", "attributes", "chunking_strategy")


def request_digest(store_id: str, files: list[BatchFileSpec]) -> str:
    """What a retry must repeat, as JSON of a short sha256 per part: the set of files, the
    set of attribute values and of chunking strategies used, and (``files``) which file got
    which. Order does not matter; a reused request_id with another digest is another
    request."""

    def sha(value: object) -> str:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def distinct(values: list[object]) -> list[str]:
        return sorted({json.dumps(v, sort_keys=True) for v in values})

    ordered = sorted(files, key=lambda f: f.file_id)
    return json.dumps(
        {
            "file_ids": sha([f.file_id for f in ordered]),
            "attributes": sha(distinct([dict(f.attributes) for f in ordered])),
            "chunking_strategy": sha(distinct([dataclasses.astuple(f.chunking) for f in ordered])),
            "files": sha(
                [[f.file_id, dict(f.attributes), dataclasses.astuple(f.chunking)] for f in ordered]
            ),
        },
        sort_keys=True,
    )


def differences(stored: str | None, digest: str) -> list[str]:
    """The request fields that differ; none when the stored batch predates digests."""
    if not stored:
        return []
    old, new = json.loads(stored), json.loads(digest)
    differ = [part for part in PARTS if old.get(part) != new[part]]
    if not differ and old.get("files") != new["files"]:
        differ = ["files (which file has which attributes or chunking_strategy)"]
    return differ


class FileBatches:
    def __init__(self, book: StatusBook, store_files: StoreFiles, hub: WatchHub) -> None:
        self.book = book
        self.db = book.db
        self.rows: BatchRepository = book.db.batches
        self.files: FileRepository = book.db.files
        self.store_files = store_files
        self.stores = store_files.stores
        self.scheduler = store_files.scheduler
        self.calls = store_files.calls
        self.hub = hub

    # -- creating ------------------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        store_id: str,
        files: list[BatchFileSpec],
        request_id: str = "",
        listed_in: str = "file_ids",
    ) -> FileBatch:
        self.check_files(files, request_id, listed_in)
        return await self.calls.run(self._create, principal, store_id, files, request_id)

    def _create(
        self, principal: Principal, store_id: str, files: list[BatchFileSpec], request_id: str
    ) -> FileBatch:
        self.stores.get_row(principal, store_id)
        digest = request_digest(store_id, files)
        if request_id:  # a retry gets its batch back, even once the store has expired
            existing = self.rows.by_request(principal.tenant, principal.subject, request_id)
            if existing is not None:
                differ = differences(existing.request_digest, digest)
                if existing.vector_store_id != store_id or differ:
                    if existing.vector_store_id != store_id:
                        differ = ["vector_store_id", *differ]
                    raise AlreadyExists(
                        f"request_id {request_id!r} already created batch {existing.id} "
                        f"on vector store {existing.vector_store_id} with a different "
                        f"request: {', '.join(differ)} differ; a retry must send the same "
                        "body, a new request a new request_id",
                        reason="REQUEST_ID_REUSED",
                    )
                return self.get_now(principal, store_id, existing.id)
        store = self.stores.require_writable(principal, store_id)
        self.require_files(principal, [f.file_id for f in files])
        self.calls.ask_loop(self.scheduler.reserve, principal.tenant, len(files))
        try:
            with self.book.transaction() as conn:
                batch_id, jobs, stale = self._write(
                    conn,
                    principal,
                    store,
                    files,
                    request_id or None,
                    digest if request_id else None,
                )
        except BaseException:
            self.calls.on_loop(self.scheduler.unreserve, principal.tenant, len(files))
            raise
        self.calls.on_loop(self._queue, store, jobs, stale)
        return self.get_now(principal, store_id, batch_id)

    async def create_store_with_files(
        self,
        principal: Principal,
        files: list[BatchFileSpec],
        *,
        name: str,
        metadata: Mapping[str, str],
        expires_after: ExpiresAfter | None,
        embedding_model: str,
        embedding_dimensions: int,
    ) -> VectorStore:
        """CreateVectorStore with file_ids: the store and a batch of ``files`` in one
        transaction, after every check (the files valid and found, the store's fields
        valid, room in the ingest queue), so a refused request leaves no store behind
        and its retry makes only one."""
        self.check_files(files)
        new = self.stores.prepare(
            name=name,
            metadata=metadata,
            expires_after=expires_after,
            embedding_model=embedding_model,
            embedding_dimensions=embedding_dimensions,
        )
        return await self.calls.run(self._create_store_with_files, principal, files, new)

    def _create_store_with_files(
        self, principal: Principal, files: list[BatchFileSpec], new: NewStore
    ) -> VectorStore:
        self.require_files(principal, [f.file_id for f in files])
        self.calls.ask_loop(self.scheduler.reserve, principal.tenant, len(files))
        try:
            with self.book.transaction() as conn:
                store_id = self.stores.insert(conn, principal, new)
                store = self.stores.rows.get_in(conn, store_id)
                assert store is not None  # inserted just now
                _, jobs, stale = self._write(conn, principal, store, files, None, None)
        except BaseException:
            self.calls.on_loop(self.scheduler.unreserve, principal.tenant, len(files))
            raise
        self.calls.on_loop(self._queue, store, jobs, stale)
        return self.stores.get_now(principal, store_id)

    def _write(
        self,
        conn: Tx,
        principal: Principal,
        store: StoreRow,
        files: list[BatchFileSpec],
        request_id: str | None,
        digest: str | None,
    ) -> tuple[str, list[Job], list[int]]:
        """Inside a transaction: the batch row and its files attached. Returns the batch id,
        the jobs to queue and the stale chunk ids to drop, both after the commit."""
        store_id = store.id
        batch_id = ids.new_id(ids.FILE_BATCH)
        now = int(self.stores.clock())
        jobs: list[Job] = []
        stale: list[int] = []
        self.rows.insert(
            conn, batch_id, store_id, principal.tenant, principal.subject, now, request_id, digest
        )
        for spec in files:
            job, old_chunks = self.store_files.attach(
                conn,
                principal,
                store,
                spec.file_id,
                spec.attributes,
                spec.chunking,
                batch_id,
                now,
            )
            jobs.append(job)
            stale += old_chunks
        self.rows.add_files(conn, batch_id, [f.file_id for f in files])
        self.stores.touch(store_id)
        return batch_id, jobs, stale

    def _queue(self, store: StoreRow, jobs: list[Job], stale: list[int]) -> None:
        """After the commit, on the event loop: drops superseded chunks and queues the
        batch's files (in the room ``reserve``d for them)."""
        if jobs:
            self.scheduler.unreserve(jobs[0].tenant, len(jobs))
        self.store_files.drop_from_index(store, [j.file_id for j in jobs], stale)
        keys = {j.key for j in jobs}
        self.scheduler.remove(lambda j: j.key in keys)  # superseded attachments
        self.scheduler.enqueue(jobs)

    def check_files(
        self, files: list[BatchFileSpec], request_id: str = "", listed_in: str = "file_ids"
    ) -> None:
        """``listed_in``: the request field the files came in, "file_ids" or "files"."""

        def item(i: int) -> str:
            return f"files[{i}].file_id" if listed_in == "files" else f"{listed_in}[{i}]"

        violations: list[FieldViolation] = []
        if not 1 <= len(files) <= MAX_BATCH_FILES:
            violations.append(
                FieldViolation(listed_in, f"must name 1…{MAX_BATCH_FILES} files, not {len(files)}")
            )
        seen: set[str] = set()
        for i, spec in enumerate(files):
            if not spec.file_id:
                violations.append(FieldViolation(item(i), "must not be empty"))
            elif spec.file_id in seen:
                violations.append(FieldViolation(item(i), f"{spec.file_id[:80]!r} is listed twice"))
            seen.add(spec.file_id)
        if len(request_id) > MAX_REQUEST_ID:
            violations.append(
                FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID} characters")
            )
        if violations:
            raise InvalidArgument(violations[:50])

    def require_files(self, principal: Principal, file_ids: list[str]) -> None:
        found = self.files.existing(principal.tenant, principal.subject, file_ids)
        missing = [f for f in file_ids if f not in found]
        if missing:
            shown = ", ".join(m[:80] for m in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise NotFound(
                f"{len(missing)} file(s) not found: {shown}{more}; no batch was created",
                reason="FILE_NOT_FOUND",
                resources=[Resource("file", m) for m in missing],
            )

    # -- reading -------------------------------------------------------------------------------

    def _row(self, principal: Principal, store_id: str, batch_id: str) -> BatchRow:
        self.stores.get_row(principal, store_id)
        row = self.rows.get_in_store(batch_id, store_id)
        if row is None:
            raise NotFound(
                f"no file batch with id {batch_id[:80]!r} in vector store {store_id}",
                reason="FILE_BATCH_NOT_FOUND",
            )
        return row

    async def get(self, principal: Principal, store_id: str, batch_id: str) -> FileBatch:
        return await self.calls.run(self.get_now, principal, store_id, batch_id)

    def get_now(self, principal: Principal, store_id: str, batch_id: str) -> FileBatch:
        """``get``'s body (blocking: on a database thread, or inside another body)."""
        row = self._row(principal, store_id, batch_id)
        return batch_from_row(row, self.book.batch_counts(batch_id))

    async def list_files(
        self,
        principal: Principal,
        store_id: str,
        batch_id: str,
        page: ListParams,
        status: FileStatus | None,
    ) -> Page[VectorStoreFile]:
        """The batch's files as store files, with the status the batch recorded for each."""
        return await self.calls.run(self._list_files, principal, store_id, batch_id, page, status)

    def _list_files(
        self,
        principal: Principal,
        store_id: str,
        batch_id: str,
        page: ListParams,
        status: FileStatus | None,
    ) -> Page[VectorStoreFile]:
        self._row(principal, store_id, batch_id)
        return page_of(lambda: self.rows.files_page(batch_id, status, page), lambda file: file)

    # -- cancelling ----------------------------------------------------------------------------

    async def cancel(self, principal: Principal, store_id: str, batch_id: str) -> FileBatch:
        return await self.calls.run(self._cancel, principal, store_id, batch_id)

    def _stop_queued(self, store_id: str, batch_id: str) -> frozenset[str]:
        """On the event loop: the batch's queued files out of the queue; returns its files
        in flight (no other of its files can start: none is queued any more)."""
        self.scheduler.remove(lambda j: j.queue == batch_id)
        return self.scheduler.in_flight_files(store_id)

    def _cancel(self, principal: Principal, store_id: str, batch_id: str) -> FileBatch:
        row = self._row(principal, store_id, batch_id)
        if row.status != BatchStatus.IN_PROGRESS:
            raise _ended(batch_id, row.status)
        in_flight = self.calls.ask_loop(self._stop_queued, store_id, batch_id)
        with self.book.transaction() as conn:
            if not self.rows.request_cancel(conn, batch_id):
                # Its last file ended it since the check above: too late to cancel.
                raise _ended(batch_id, self._row(principal, store_id, batch_id).status)
            for file_id in self.rows.in_progress_files(conn, batch_id):
                if file_id in in_flight:
                    continue  # stops at its next step: its result is dropped as cancelled
                self.book.set_file(conn, store_id, file_id, FileStatus.CANCELLED)
        return self.get_now(principal, store_id, batch_id)

    # -- watching ------------------------------------------------------------------------------

    async def watch(
        self, principal: Principal, store_id: str, batch_id: str, after_sequence: int
    ) -> AsyncIterator[WatchMessage]:
        check_sequence(after_sequence)
        following: asyncio.Future[Follower | None] = asyncio.get_running_loop().create_future()
        try:
            sequence, batch, files = await self.calls.run(
                self._snapshot, principal, store_id, batch_id, after_sequence, following
            )
            follower = await following
        except BaseException:
            if not following.done():
                following.cancel()  # not followed yet: it never will be
            elif not following.cancelled() and following.exception() is None:
                started = following.result()
                if started is not None:
                    started.close()
            raise
        try:
            yield WatchMessage(sequence, True, batch, files)
            if follower is not None:
                async for message in follower:
                    yield message
        finally:
            if follower is not None:
                follower.close()

    def _snapshot(
        self,
        principal: Principal,
        store_id: str,
        batch_id: str,
        after_sequence: int,
        following: asyncio.Future[Follower | None],
    ) -> tuple[int, FileBatch, list[FileUpdate]]:
        """The batch as it is now and its changes after ``after_sequence``; the watcher starts
        following on the loop before any later commit is told to the hub (the book's
        transactions wait while the snapshot is read), so it misses none."""
        with self.book.serial():
            row = self._row(principal, store_id, batch_id)
            batch = batch_from_row(row, self.book.batch_counts(batch_id))
            files = self._changes(batch_id, after_sequence)
            self.calls.on_loop(self._follow, following, batch, row.sequence, principal.tenant)
        return row.sequence, batch, files

    def _follow(
        self,
        following: asyncio.Future[Follower | None],
        batch: FileBatch,
        sequence: int,
        tenant: str,
    ) -> None:
        if following.done():
            return  # the watcher went away meanwhile
        if is_terminal(batch.status):
            following.set_result(None)
            return
        try:
            following.set_result(self.hub.follow(batch, sequence, tenant))
        except Exception as exc:
            following.set_exception(exc)

    def _changes(self, batch_id: str, after_sequence: int) -> list[FileUpdate]:
        return [
            FileUpdate(
                r.file_id,
                FileStatus(r.status),
                LastError(r.last_error_code, r.last_error_message or "")
                if r.last_error_code
                else None,
            )
            for r in self.rows.changes_after(batch_id, after_sequence)
        ]


def _ended(batch_id: str, status: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"file batch {batch_id} has already ended ({status}); "
        "only an in-progress batch can be cancelled",
        reason="FILE_BATCH_ENDED",
    )
