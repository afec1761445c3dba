"""Files attached to a store: attach (alone or for a batch), read, list, update, detach."""

from __future__ import annotations

import builtins
from collections.abc import Mapping

from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.chunk_writer import PendingLabels
from quiver.server.core.db_calls import DbCalls
from quiver.server.core.errors import FailedPrecondition, NotFound
from quiver.server.core.files import FileStore
from quiver.server.core.index_removals import IndexRemovals
from quiver.server.core.job_leases import JobLeases
from quiver.server.core.models import (
    AttributeValue,
    Chunking,
    FileStatus,
    ListParams,
    Page,
    VectorStoreFile,
)
from quiver.server.core.pages import page_of
from quiver.server.core.ports import VectorIndexes
from quiver.server.core.principal import Principal
from quiver.server.core.scheduler import Job, Scheduler, single_queue
from quiver.server.core.status_book import StatusBook
from quiver.server.core.validation import check_page_token
from quiver.server.core.vector_stores import VectorStores
from quiver.server.storage.interfaces import ChunkRepository, StoreFileRepository, Tx
from quiver.server.storage.rows import StoreRow

CONTENT_PAGE_BYTES = 3 * 1024 * 1024
"""Text per GetVectorStoreFileContent page: under gRPC's default 4 MiB receive limit."""


class StoreFiles:
    def __init__(
        self,
        book: StatusBook,
        stores: VectorStores,
        indexes: VectorIndexes,
        scheduler: Scheduler,
        files: FileStore,
        attributes: AttributeIndex,
        pending: PendingLabels | None = None,
        *,
        leases: JobLeases,
        calls: DbCalls,
    ) -> None:
        self.book = book
        self.calls = calls
        self.db = book.db
        self.rows: StoreFileRepository = book.db.store_files
        self.chunks: ChunkRepository = book.db.chunks
        self.stores = stores
        self.indexes = indexes
        self.scheduler = scheduler
        self.files = files
        self.attributes = attributes
        self.removals = IndexRemovals(
            indexes, pending or PendingLabels(), dropped=stores.drops.is_dropped
        )
        self.leases = leases

    # -- attaching -----------------------------------------------------------------------------

    def attach(
        self,
        conn: Tx,
        principal: Principal,
        store: StoreRow,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
        chunking: Chunking,
        batch_id: str | None,
        now: int,
    ) -> tuple[Job, list[int]]:
        """Inside a transaction: (re)attaches a file in progress. Returns its job and the
        chunk ids it had (to drop from the index after the commit)."""
        store_id = store.id
        old = self.rows.attachment(conn, store_id, file_id)
        stale: list[int] = []
        if old is not None:
            if old.batch_id and old.status == FileStatus.IN_PROGRESS:
                # A newer batch takes the file over; the old batch records it as cancelled.
                self.book.set_batch_file(conn, old.batch_id, file_id, FileStatus.CANCELLED)
            stale = self.chunks.delete_of_file(conn, store_id, file_id)
        generation = self.rows.attach(
            conn,
            store_id,
            file_id,
            principal.tenant,
            principal.subject,
            now,
            chunking,
            attributes,
            batch_id,
        )
        job = Job(
            store_id,
            file_id,
            generation,
            batch_id or single_queue(store_id, file_id),
            principal.tenant,
        )
        self.leases.stamp(conn, job)  # the attach is this server's claim of the file
        return job, stale

    def drop_from_index(
        self, store: StoreRow, file_ids: builtins.list[str], chunk_ids: builtins.list[int]
    ) -> None:
        """After the commit that detached these files or attached them anew (their chunks
        gone from the database): out of the vector index (in a thread), of the filters' and
        of the keyword index (told now: a search from now on no longer finds them). On the
        event loop."""
        self.stores.keywords.remove_files(store.id, file_ids)
        self.attributes.changed(store.id, file_ids)
        self.removals.remove_soon(store.id, store.embedding_dimensions, chunk_ids)

    async def create(
        self,
        principal: Principal,
        store_id: str,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
        chunking: Chunking,
    ) -> VectorStoreFile:
        return await self.calls.run(
            self._create, principal, store_id, file_id, attributes, chunking
        )

    def _create(
        self,
        principal: Principal,
        store_id: str,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
        chunking: Chunking,
    ) -> VectorStoreFile:
        store = self.stores.require_writable(principal, store_id)
        self.files.get_now(principal, file_id)  # NOT_FOUND for another caller's or no file
        self.calls.ask_loop(self.scheduler.reserve, principal.tenant, 1)
        try:
            with self.book.transaction() as conn:
                job, stale = self.attach(
                    conn,
                    principal,
                    store,
                    file_id,
                    attributes,
                    chunking,
                    None,
                    int(self.stores.clock()),
                )
                self.stores.touch(store_id)
        except BaseException:
            self.calls.on_loop(self.scheduler.unreserve, principal.tenant, 1)
            raise
        self.calls.on_loop(self._queue, store, file_id, stale, job)
        return self._row(principal, store_id, file_id)

    def _queue(self, store: StoreRow, file_id: str, stale: builtins.list[int], job: Job) -> None:
        """After the attach committed, on the event loop: queued (instead of an older job),
        in the room ``_create`` reserved."""
        self.scheduler.unreserve(job.tenant, 1)
        self.drop_from_index(store, [file_id], stale)
        self.scheduler.remove(lambda j: j.key == job.key)
        self.scheduler.enqueue([job])

    # -- reading -------------------------------------------------------------------------------

    def _row(self, principal: Principal, store_id: str, file_id: str) -> VectorStoreFile:
        self.stores.get_row(principal, store_id)
        row = self.rows.get(store_id, file_id)
        if row is None:
            raise NotFound(
                f"file {file_id[:80]!r} is not attached to vector store {store_id}",
                reason="VECTOR_STORE_FILE_NOT_FOUND",
            )
        return row

    async def get(self, principal: Principal, store_id: str, file_id: str) -> VectorStoreFile:
        return await self.calls.run(self._row, principal, store_id, file_id)

    async def list(
        self,
        principal: Principal,
        store_id: str,
        page: ListParams,
        status: FileStatus | None,
    ) -> Page[VectorStoreFile]:
        return await self.calls.run(self._list, principal, store_id, page, status)

    def _list(
        self,
        principal: Principal,
        store_id: str,
        page: ListParams,
        status: FileStatus | None,
    ) -> Page[VectorStoreFile]:
        self.stores.get_row(principal, store_id)
        return page_of(lambda: self.rows.page(store_id, status, page), lambda file: file)

    async def content(
        self, principal: Principal, store_id: str, file_id: str, page: str = ""
    ) -> tuple[builtins.list[str], str]:
        """One page of the file's chunk texts (whole chunks, about ``CONTENT_PAGE_BYTES`` at
        most, at least one) and the token of the next page ("" on the last page)."""
        start = check_page_token(page)
        return await self.calls.run(self._content, principal, store_id, file_id, start)

    def _content(
        self, principal: Principal, store_id: str, file_id: str, start: int
    ) -> tuple[builtins.list[str], str]:
        row = self._row(principal, store_id, file_id)
        if row.status != FileStatus.COMPLETED:
            raise FailedPrecondition(
                f"file {file_id} is {row.status}; its content is available once completed",
                reason="FILE_NOT_COMPLETED",
            )
        texts: builtins.list[str] = []
        size = 0
        for index, text in self.chunks.texts_from(store_id, file_id, start):
            size += len(text.encode("utf-8")) + 8
            if texts and size > CONTENT_PAGE_BYTES:
                return texts, str(index)
            texts.append(text)
        return texts, ""

    # -- changing ------------------------------------------------------------------------------

    async def update(
        self,
        principal: Principal,
        store_id: str,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
    ) -> VectorStoreFile:
        return await self.calls.run(self._update, principal, store_id, file_id, attributes)

    def _update(
        self,
        principal: Principal,
        store_id: str,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
    ) -> VectorStoreFile:
        self.stores.require_writable(principal, store_id)
        self._row(principal, store_id, file_id)
        with self.db.transaction() as conn:
            self.rows.set_attributes(conn, store_id, file_id, attributes)
            self.stores.touch(store_id)
        self.calls.on_loop(self.attributes.changed, store_id, [file_id])
        return self._row(principal, store_id, file_id)

    async def delete(self, principal: Principal, store_id: str, file_id: str) -> None:
        await self.calls.run(self._delete, principal, store_id, file_id)

    def _delete(self, principal: Principal, store_id: str, file_id: str) -> None:
        store = self.stores.get_row(principal, store_id)
        self._row(principal, store_id, file_id)
        self.detach(store, file_id)

    def detach(self, store: StoreRow, file_id: str) -> None:
        """Removes the file from the store: chunks, index entries, counts, usage."""
        with self.book.transaction() as conn:
            stale = self.remove(conn, store.id, file_id)
        self.calls.on_loop(self.after_removal, store, file_id, stale)

    def remove(self, conn: Tx, store_id: str, file_id: str) -> builtins.list[int]:
        """Inside a transaction: the file's row and chunks out of the store (its batch records
        it cancelled if it was in progress). Returns the chunk ids, for ``after_removal``."""
        row = self.rows.attachment(conn, store_id, file_id)
        if row is None:
            return []
        if row.batch_id and row.status == FileStatus.IN_PROGRESS:
            self.book.set_batch_file(conn, row.batch_id, file_id, FileStatus.CANCELLED)
        stale = self.chunks.delete_of_file(conn, store_id, file_id)
        self.rows.delete(conn, store_id, file_id)
        return stale

    def after_removal(self, store: StoreRow, file_id: str, stale: builtins.list[int]) -> None:
        """After ``remove``'s transaction committed, on the event loop: out of the index and
        of the queue."""
        self.drop_from_index(store, [file_id], stale)
        self.scheduler.remove(lambda j: j.key == (store.id, file_id))

    def stores_holding(
        self, conn: Tx, principal: Principal, file_id: str
    ) -> builtins.list[StoreRow]:
        """The rows of the caller's stores that the file is attached to."""
        return self.stores.rows.with_file(conn, file_id, principal.tenant, principal.subject)
