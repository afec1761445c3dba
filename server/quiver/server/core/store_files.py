"""Files attached to a store: attach (alone or for a batch), read, list, update, detach."""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Mapping

from quiver.server.core.chunk_writer import PendingLabels
from quiver.server.core.errors import FailedPrecondition, NotFound
from quiver.server.core.files import FileStore
from quiver.server.core.index_removals import IndexRemovals
from quiver.server.core.job_leases import JobLeases
from quiver.server.core.models import (
    AttributeValue,
    Chunking,
    FileStatus,
    LastError,
    ListParams,
    Page,
    VectorStoreFile,
)
from quiver.server.core.principal import Principal
from quiver.server.core.scheduler import Job, Scheduler, single_queue
from quiver.server.core.status_book import StatusBook
from quiver.server.core.validation import check_page_token
from quiver.server.core.vector_stores import VectorStores
from quiver.server.index.manager import IndexManager
from quiver.server.storage.pagination import fetch_page

CONTENT_PAGE_BYTES = 3 * 1024 * 1024
"""Text per GetVectorStoreFileContent page: under gRPC's default 4 MiB receive limit."""


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


def _delete_chunks(conn: sqlite3.Connection, store_id: str, file_id: str) -> list[int]:
    """Deletes a store file's chunks (the FTS trigger follows); returns their ids, which the
    caller then drops from the index once the transaction has committed."""
    return [
        r[0]
        for r in conn.execute(
            "DELETE FROM chunks WHERE vector_store_id = ? AND file_id = ? RETURNING id",
            (store_id, file_id),
        )
    ]


class StoreFiles:
    def __init__(
        self,
        book: StatusBook,
        stores: VectorStores,
        indexes: IndexManager,
        scheduler: Scheduler,
        files: FileStore,
        pending: PendingLabels | None = None,
        *,
        leases: JobLeases,
    ) -> None:
        self.book = book
        self.db = book.db
        self.stores = stores
        self.indexes = indexes
        self.scheduler = scheduler
        self.files = files
        self.removals = IndexRemovals(indexes, pending or PendingLabels())
        self.leases = leases

    # -- attaching -----------------------------------------------------------------------------

    def attach(
        self,
        conn: sqlite3.Connection,
        principal: Principal,
        store: sqlite3.Row,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
        chunking: Chunking,
        batch_id: str | None,
        now: int,
    ) -> tuple[Job, list[int]]:
        """Inside a transaction: (re)attaches a file in progress. Returns its job and the
        chunk ids it had (to drop from the index after the commit)."""
        store_id = store["id"]
        old = conn.execute(
            "SELECT * FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
            (store_id, file_id),
        ).fetchone()
        stale: list[int] = []
        if old is not None:
            if old["batch_id"] and old["status"] == FileStatus.IN_PROGRESS:
                # A newer batch takes the file over; the old batch records it as cancelled.
                self.book.set_batch_file(conn, old["batch_id"], file_id, FileStatus.CANCELLED)
            stale = _delete_chunks(conn, store_id, file_id)
        row = conn.execute(
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
                principal.tenant,
                principal.subject,
                now,
                FileStatus.IN_PROGRESS.value,
                chunking.max_tokens,
                chunking.overlap_tokens,
                int(chunking.auto),
                json.dumps(dict(attributes), sort_keys=True),
                batch_id,
            ),
        ).fetchone()
        job = Job(
            store_id,
            file_id,
            row["generation"],
            batch_id or single_queue(store_id, file_id),
            principal.tenant,
        )
        self.leases.stamp(conn, job)  # the attach is this server's claim of the file
        return job, stale

    def drop_from_index(self, store: sqlite3.Row, chunk_ids: list[int]) -> None:
        """The chunks are gone from SQLite: out of the index too (in a thread)."""
        self.removals.remove_soon(store["id"], store["embedding_dimensions"], chunk_ids)

    def create(
        self,
        principal: Principal,
        store_id: str,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
        chunking: Chunking,
    ) -> VectorStoreFile:
        store = self.stores.require_writable(principal, store_id)
        self.files.get(principal, file_id)  # NOT_FOUND for another caller's or no file
        self.scheduler.check_room(principal.tenant, 1)
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
        self.drop_from_index(store, stale)
        self.scheduler.remove(lambda j: j.key == job.key)
        self.scheduler.enqueue([job])
        return self.get(principal, store_id, file_id)

    # -- reading -------------------------------------------------------------------------------

    def _row(self, principal: Principal, store_id: str, file_id: str) -> sqlite3.Row:
        self.stores.get_row(principal, store_id)
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
            (store_id, file_id),
        ).fetchone()
        if row is None:
            raise NotFound(
                f"file {file_id[:80]!r} is not attached to vector store {store_id}",
                reason="VECTOR_STORE_FILE_NOT_FOUND",
            )
        return row

    def get(self, principal: Principal, store_id: str, file_id: str) -> VectorStoreFile:
        return store_file_from_row(self._row(principal, store_id, file_id))

    def list(
        self,
        principal: Principal,
        store_id: str,
        page: ListParams,
        status: FileStatus | None,
    ) -> Page[VectorStoreFile]:
        self.stores.get_row(principal, store_id)
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

    def content(
        self, principal: Principal, store_id: str, file_id: str, page: str = ""
    ) -> tuple[builtins.list[str], str]:
        """One page of the file's chunk texts (whole chunks, about ``CONTENT_PAGE_BYTES`` at
        most, at least one) and the token of the next page ("" on the last page)."""
        start = check_page_token(page)
        row = self._row(principal, store_id, file_id)
        if row["status"] != FileStatus.COMPLETED:
            raise FailedPrecondition(
                f"file {file_id} is {row['status']}; its content is available once completed",
                reason="FILE_NOT_COMPLETED",
            )
        texts: builtins.list[str] = []
        size = 0
        for index, text in self.db.execute(
            "SELECT chunk_index, text FROM chunks WHERE vector_store_id = ? AND file_id = ? "
            "AND chunk_index >= ? ORDER BY chunk_index",
            (store_id, file_id, start),
        ):
            size += len(text.encode("utf-8")) + 8
            if texts and size > CONTENT_PAGE_BYTES:
                return texts, str(index)
            texts.append(text)
        return texts, ""

    # -- changing ------------------------------------------------------------------------------

    def update(
        self,
        principal: Principal,
        store_id: str,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
    ) -> VectorStoreFile:
        self.stores.require_writable(principal, store_id)
        self._row(principal, store_id, file_id)
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE vector_store_files SET attributes = ? "
                "WHERE vector_store_id = ? AND file_id = ?",
                (json.dumps(dict(attributes), sort_keys=True), store_id, file_id),
            )
            self.stores.touch(store_id)
        return self.get(principal, store_id, file_id)

    def delete(self, principal: Principal, store_id: str, file_id: str) -> None:
        store = self.stores.get_row(principal, store_id)
        self._row(principal, store_id, file_id)
        self.detach(store, file_id)

    def detach(self, store: sqlite3.Row, file_id: str) -> None:
        """Removes the file from the store: chunks, index entries, counts, usage."""
        with self.book.transaction() as conn:
            stale = self.remove(conn, store["id"], file_id)
        self.after_removal(store, file_id, stale)

    def remove(self, conn: sqlite3.Connection, store_id: str, file_id: str) -> builtins.list[int]:
        """Inside a transaction: the file's row and chunks out of the store (its batch records
        it cancelled if it was in progress). Returns the chunk ids, for ``after_removal``."""
        row = conn.execute(
            "SELECT batch_id, status FROM vector_store_files "
            "WHERE vector_store_id = ? AND file_id = ?",
            (store_id, file_id),
        ).fetchone()
        if row is None:
            return []
        if row["batch_id"] and row["status"] == FileStatus.IN_PROGRESS:
            self.book.set_batch_file(conn, row["batch_id"], file_id, FileStatus.CANCELLED)
        stale = _delete_chunks(conn, store_id, file_id)
        conn.execute(
            "DELETE FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
            (store_id, file_id),
        )
        return stale

    def after_removal(self, store: sqlite3.Row, file_id: str, stale: builtins.list[int]) -> None:
        """After ``remove``'s transaction committed: out of the index and of the queue."""
        self.drop_from_index(store, stale)
        self.scheduler.remove(lambda j: j.key == (store["id"], file_id))

    def stores_holding(
        self, conn: sqlite3.Connection, principal: Principal, file_id: str
    ) -> builtins.list[sqlite3.Row]:
        """The rows of the caller's stores that the file is attached to."""
        return conn.execute(
            "SELECT s.* FROM vector_stores s JOIN vector_store_files f "
            "ON f.vector_store_id = s.id WHERE f.file_id = ? AND s.tenant = ? AND s.subject = ?",
            (file_id, principal.tenant, principal.subject),
        ).fetchall()
