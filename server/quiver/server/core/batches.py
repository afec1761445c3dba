"""File batches: create (validated, idempotent), read, cancel, list files, and watch."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
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
    AUTO_CHUNKING,
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
from quiver.server.core.principal import Principal
from quiver.server.core.scheduler import Job
from quiver.server.core.status_book import StatusBook, batch_from_row
from quiver.server.core.store_files import StoreFiles, store_file_from_row
from quiver.server.core.validation import check_sequence
from quiver.server.core.watch import FileUpdate, WatchHub, WatchMessage, is_terminal
from quiver.server.storage.pagination import fetch_page

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
        self.store_files = store_files
        self.stores = store_files.stores
        self.scheduler = store_files.scheduler
        self.hub = hub

    # -- creating ------------------------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        store_id: str,
        files: list[BatchFileSpec],
        request_id: str = "",
        listed_in: str = "file_ids",
    ) -> FileBatch:
        self.check_files(files, request_id, listed_in)
        self.stores.get_row(principal, store_id)
        digest = request_digest(store_id, files)
        if request_id:  # a retry gets its batch back, even once the store has expired
            existing = self.db.execute(
                "SELECT id, vector_store_id, request_digest FROM file_batches "
                "WHERE tenant = ? AND subject = ? AND request_id = ?",
                (principal.tenant, principal.subject, request_id),
            ).fetchone()
            if existing is not None:
                differ = differences(existing["request_digest"], digest)
                if existing["vector_store_id"] != store_id or differ:
                    if existing["vector_store_id"] != store_id:
                        differ = ["vector_store_id", *differ]
                    raise AlreadyExists(
                        f"request_id {request_id!r} already created batch {existing['id']} "
                        f"on vector store {existing['vector_store_id']} with a different "
                        f"request: {', '.join(differ)} differ; a retry must send the same "
                        "body, a new request a new request_id",
                        reason="REQUEST_ID_REUSED",
                    )
                return self.get(principal, store_id, existing["id"])
        store = self.stores.require_writable(principal, store_id)
        self.require_files(principal, [f.file_id for f in files])
        self.scheduler.check_room(principal.tenant, len(files))
        with self.book.transaction() as conn:
            batch_id, jobs, stale = self._write(
                conn, principal, store, files, request_id or None, digest if request_id else None
            )
        self._queue(store, jobs, stale)
        return self.get(principal, store_id, batch_id)

    def create_store_with_files(
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
        self.require_files(principal, [f.file_id for f in files])
        new = self.stores.prepare(
            name=name,
            metadata=metadata,
            expires_after=expires_after,
            embedding_model=embedding_model,
            embedding_dimensions=embedding_dimensions,
        )
        self.scheduler.check_room(principal.tenant, len(files))
        with self.book.transaction() as conn:
            store_id = self.stores.insert(conn, principal, new)
            store = conn.execute("SELECT * FROM vector_stores WHERE id = ?", (store_id,)).fetchone()
            _, jobs, stale = self._write(conn, principal, store, files, None, None)
        self._queue(store, jobs, stale)
        return self.stores.get(principal, store_id)

    def _write(
        self,
        conn: sqlite3.Connection,
        principal: Principal,
        store: sqlite3.Row,
        files: list[BatchFileSpec],
        request_id: str | None,
        digest: str | None,
    ) -> tuple[str, list[Job], list[int]]:
        """Inside a transaction: the batch row and its files attached. Returns the batch id,
        the jobs to queue and the stale chunk ids to drop, both after the commit."""
        store_id = store["id"]
        batch_id = ids.new_id(ids.FILE_BATCH)
        now = int(self.stores.clock())
        jobs: list[Job] = []
        stale: list[int] = []
        conn.execute(
            "INSERT INTO file_batches (id, vector_store_id, tenant, subject, created_at, "
            "status, request_id, request_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                batch_id,
                store_id,
                principal.tenant,
                principal.subject,
                now,
                BatchStatus.IN_PROGRESS.value,
                request_id,
                digest,
            ),
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
        conn.executemany(
            "INSERT INTO batch_files (batch_id, file_id, status) VALUES (?, ?, ?)",
            [(batch_id, f.file_id, FileStatus.IN_PROGRESS.value) for f in files],
        )
        self.stores.touch(store_id)
        return batch_id, jobs, stale

    def _queue(self, store: sqlite3.Row, jobs: list[Job], stale: list[int]) -> None:
        """After the commit: drops superseded chunks and queues the batch's files."""
        self.store_files.drop_from_index(store, stale)
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
        found: set[str] = set()
        for start in range(0, len(file_ids), 500):
            part = file_ids[start : start + 500]
            marks = ",".join("?" * len(part))
            found.update(
                r[0]
                for r in self.db.execute(
                    f"SELECT id FROM files WHERE tenant = ? AND subject = ? AND id IN ({marks})",
                    (principal.tenant, principal.subject, *part),
                )
            )
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

    def _row(self, principal: Principal, store_id: str, batch_id: str) -> sqlite3.Row:
        self.stores.get_row(principal, store_id)
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM file_batches WHERE id = ? AND vector_store_id = ?",
            (batch_id, store_id),
        ).fetchone()
        if row is None:
            raise NotFound(
                f"no file batch with id {batch_id[:80]!r} in vector store {store_id}",
                reason="FILE_BATCH_NOT_FOUND",
            )
        return row

    def get(self, principal: Principal, store_id: str, batch_id: str) -> FileBatch:
        row = self._row(principal, store_id, batch_id)
        return batch_from_row(row, self.book.batch_counts(batch_id))

    def list_files(
        self,
        principal: Principal,
        store_id: str,
        batch_id: str,
        page: ListParams,
        status: FileStatus | None,
    ) -> Page[VectorStoreFile]:
        """The batch's files as store files, with the status the batch recorded for each."""
        self._row(principal, store_id, batch_id)
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
            table_params=(AUTO_CHUNKING.max_tokens, AUTO_CHUNKING.overlap_tokens, *params),
        )

    # -- cancelling ----------------------------------------------------------------------------

    def cancel(self, principal: Principal, store_id: str, batch_id: str) -> FileBatch:
        row = self._row(principal, store_id, batch_id)
        if row["status"] != BatchStatus.IN_PROGRESS:
            raise FailedPrecondition(
                f"file batch {batch_id} has already ended ({row['status']}); "
                "only an in-progress batch can be cancelled",
                reason="FILE_BATCH_ENDED",
            )
        self.scheduler.remove(lambda j: j.queue == batch_id)
        with self.book.transaction() as conn:
            conn.execute("UPDATE file_batches SET cancel_requested = 1 WHERE id = ?", (batch_id,))
            for file in conn.execute(
                "SELECT file_id FROM batch_files WHERE batch_id = ? AND status = ?",
                (batch_id, FileStatus.IN_PROGRESS.value),
            ).fetchall():
                if self.scheduler.is_in_flight(store_id, file["file_id"]):
                    continue  # stops at its next step: its result is dropped as cancelled
                self.book.set_file(conn, store_id, file["file_id"], FileStatus.CANCELLED)
        return self.get(principal, store_id, batch_id)

    # -- watching ------------------------------------------------------------------------------

    async def watch(
        self, principal: Principal, store_id: str, batch_id: str, after_sequence: int
    ) -> AsyncIterator[WatchMessage]:
        check_sequence(after_sequence)
        row = self._row(principal, store_id, batch_id)
        batch = batch_from_row(row, self.book.batch_counts(batch_id))
        sequence = int(row["sequence"])
        files = [
            FileUpdate(
                r["file_id"],
                FileStatus(r["status"]),
                LastError(r["last_error_code"], r["last_error_message"])
                if r["last_error_code"]
                else None,
            )
            for r in self.db.execute(
                "SELECT file_id, status, last_error_code, last_error_message FROM batch_files "
                "WHERE batch_id = ? AND changed_at_sequence > ? ORDER BY seq",
                (batch_id, after_sequence if after_sequence else -1),
            )
        ]
        follower = (
            None
            if is_terminal(batch.status)
            else self.hub.follow(batch, sequence, principal.tenant)
        )
        try:
            yield WatchMessage(sequence, True, batch, files)
            if follower is not None:
                async for message in follower:
                    yield message
        finally:
            if follower is not None:
                follower.close()
