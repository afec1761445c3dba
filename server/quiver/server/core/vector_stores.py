"""Vector stores: create, read, list, update, delete, and expiry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from quiver.server.core import ids
from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.chunk_writer import ChunkWriter
from quiver.server.core.clock import Clock, system_clock
from quiver.server.core.db_calls import DbCalls
from quiver.server.core.embedder_choice import Choice
from quiver.server.core.errors import FailedPrecondition, FieldViolation
from quiver.server.core.models import (
    BatchStatus,
    ExpiresAfter,
    FileCounts,
    ListParams,
    Page,
    StoreStatus,
    VectorStore,
)
from quiver.server.core.pages import page_of
from quiver.server.core.ports import KeywordIndexes, VectorIndexes
from quiver.server.core.principal import Principal
from quiver.server.core.scheduler import Scheduler
from quiver.server.core.status_book import StatusBook
from quiver.server.core.store_drops import StoreDrops, store_not_found
from quiver.server.core.validation import (
    check_expires_after,
    check_metadata,
    check_name,
    raise_if,
)
from quiver.server.storage.database import DatabaseError
from quiver.server.storage.interfaces import (
    BatchRepository,
    Storage,
    StoreFileRepository,
    Tx,
    VectorStoreRepository,
)
from quiver.server.storage.rows import StorageError, StoreActivity, StoreRow

log = logging.getLogger("quiver.stores")

DAY = 86_400

EmbedderResolver = Callable[[str, int], Choice]
"""(requested model, requested dimensions) → (model, dimensions); raises InvalidArgument."""


@dataclass(frozen=True)
class StoreUpdate:
    """What UpdateVectorStore changes; ``None`` leaves a field as it is."""

    name: str | None = None
    expires_after: ExpiresAfter | None = None
    clear_expires_after: bool = False
    metadata: dict[str, str] | None = None


@dataclass(frozen=True)
class NewStore:
    """A store to create: validated fields and the resolved embedder (see ``prepare``)."""

    name: str
    metadata: dict[str, str]
    expires_after: ExpiresAfter | None
    choice: Choice


class VectorStores:
    """``book``: deleting a store ends its running batches (their watchers hear of it);
    ``scheduler`` and ``drops``: its queued files and its caches (vector, keyword and
    filters' indexes) go with it. Each operation runs its database work on ``calls``'
    threads; the scheduler is told on the event loop, the caches dropped in a thread."""

    def __init__(
        self,
        db: Storage,
        resolve_embedder: EmbedderResolver,
        book: StatusBook,
        scheduler: Scheduler,
        indexes: VectorIndexes,
        attributes: AttributeIndex,
        keywords: KeywordIndexes,
        *,
        calls: DbCalls,
        drops: StoreDrops,
        clock: Clock = system_clock,
    ) -> None:
        self.db = db
        self.drops = drops
        self.calls = calls
        self.rows: VectorStoreRepository = db.stores
        self.file_rows: StoreFileRepository = db.store_files
        self.batch_rows: BatchRepository = db.batches
        self.resolve_embedder = resolve_embedder
        self.book = book
        self.scheduler = scheduler
        self.indexes = indexes
        self.attributes = attributes
        self.keywords = keywords
        self.clock = clock

    # -- reading -------------------------------------------------------------------------

    def get_row(self, principal: Principal, store_id: str) -> StoreRow:
        row = self.rows.get(store_id, principal.tenant, principal.subject)
        if row is None:
            raise store_not_found(store_id)
        return row

    def _expires_at(self, row: StoreRow | StoreActivity) -> int | None:
        if row.expires_days is None:
            return None
        return int(row.last_active_at) + int(row.expires_days) * DAY

    def _is_expired(self, row: StoreRow | StoreActivity) -> bool:
        expires_at = self._expires_at(row)
        return expires_at is not None and self.clock() >= expires_at

    def file_counts(self, store_id: str) -> tuple[FileCounts, int]:
        counts: dict[str, int] = {}
        usage = 0
        for status, count, used in self.file_rows.status_counts(store_id):
            counts[status] = count
            usage += used
        return FileCounts.from_status_counts(counts), usage

    def _to_store(self, row: StoreRow) -> VectorStore:
        counts, usage = self.file_counts(row.id)
        if self._is_expired(row):
            status = StoreStatus.EXPIRED
        elif counts.in_progress:
            status = StoreStatus.IN_PROGRESS
        else:
            status = StoreStatus.COMPLETED
        expires_after = (
            ExpiresAfter(row.expires_anchor or "", row.expires_days)
            if row.expires_days is not None
            else None
        )
        return VectorStore(
            id=row.id,
            created_at=row.created_at,
            name=row.name,
            usage_bytes=usage,
            file_counts=counts,
            status=status,
            expires_after=expires_after,
            expires_at=self._expires_at(row),
            last_active_at=row.last_active_at,
            metadata=dict(row.metadata),
            embedding_model=row.embedding_model,
            embedding_dimensions=row.embedding_dimensions,
        )

    async def get(self, principal: Principal, store_id: str) -> VectorStore:
        return await self.calls.run(self.get_now, principal, store_id)

    def get_now(self, principal: Principal, store_id: str) -> VectorStore:
        """``get``'s body (blocking: on a database thread, or inside another body)."""
        return self._to_store(self.get_row(principal, store_id))

    async def list(self, principal: Principal, page: ListParams) -> Page[VectorStore]:
        return await self.calls.run(self._list, principal, page)

    def _list(self, principal: Principal, page: ListParams) -> Page[VectorStore]:
        return page_of(
            lambda: self.rows.page(principal.tenant, principal.subject, page), self._to_store
        )

    def require_writable(
        self, principal: Principal, store_id: str, refused: str = "no longer accepts changes"
    ) -> StoreRow:
        """The store's row, or FAILED_PRECONDITION (saying what is ``refused``) once expired."""
        row = self.get_row(principal, store_id)
        if self._is_expired(row):
            raise FailedPrecondition(
                f"vector store {store_id} expired at {self._expires_at(row)} "
                f"(unix seconds) and {refused}",
                reason="VECTOR_STORE_EXPIRED",
            )
        return row

    def is_expired(self, store_id: str) -> bool:
        row = self.rows.activity(store_id)
        return row is not None and self._is_expired(row)

    def learn_dimensions(self, conn: Tx, store_id: str, width: int) -> int:
        """The store's vector dimension, recorded from ``width`` (the first vectors' length)
        when it was not known yet. ValueError when vectors of another length arrive."""
        known = self.rows.dimensions(conn, store_id)
        if known == 0:
            self.rows.set_dimensions(conn, store_id, width)
            return width
        if known != width:
            raise ValueError(
                f"the embedder returned {width}-dimensional vectors; this store holds {known}"
            )
        return known

    def touch(self, store_id: str) -> None:
        """Marks activity now (the expiry anchor)."""
        self.rows.touch(store_id, int(self.clock()))

    def touch_if_possible(self, store_id: str) -> None:
        """``touch`` for reads (search): a timestamp that cannot be written (a full disk, a
        busy database) is logged and skipped; the read goes on."""
        try:
            self.touch(store_id)
        except (DatabaseError, StorageError) as exc:
            log.warning("last_active_at of %s not updated: %s", store_id, exc)

    # -- writing -------------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        metadata: Mapping[str, str],
        expires_after: ExpiresAfter | None,
        embedding_model: str,
        embedding_dimensions: int,
    ) -> VectorStore:
        new = self.prepare(
            name=name,
            metadata=metadata,
            expires_after=expires_after,
            embedding_model=embedding_model,
            embedding_dimensions=embedding_dimensions,
        )
        return await self.calls.run(self._create, principal, new)

    def _create(self, principal: Principal, new: NewStore) -> VectorStore:
        with self.db.transaction() as conn:
            store_id = self.insert(conn, principal, new)
        return self.get_now(principal, store_id)

    def prepare(
        self,
        *,
        name: str,
        metadata: Mapping[str, str],
        expires_after: ExpiresAfter | None,
        embedding_model: str,
        embedding_dimensions: int,
    ) -> NewStore:
        """A new store's fields, validated and with its embedder resolved; writes nothing."""
        violations: list[FieldViolation] = check_name(name) + check_metadata(metadata)
        if expires_after is not None:
            expires_after, more = check_expires_after(expires_after.anchor, expires_after.days)
            violations += more
        raise_if(violations)
        choice = self.resolve_embedder(embedding_model, embedding_dimensions)
        return NewStore(name, dict(metadata), expires_after, choice)

    def insert(self, conn: Tx, principal: Principal, new: NewStore) -> str:
        """Inside a transaction: inserts a prepared store; returns its id."""
        now = int(self.clock())
        store_id = ids.new_id(ids.VECTOR_STORE)
        expires_after, choice = new.expires_after, new.choice
        self.rows.insert(
            conn,
            StoreRow(
                id=store_id,
                tenant=principal.tenant,
                subject=principal.subject,
                name=new.name,
                created_at=now,
                last_active_at=now,
                expires_anchor=expires_after.anchor if expires_after else None,
                expires_days=expires_after.days if expires_after else None,
                metadata=new.metadata,
                embedding_model=choice.model,
                embedding_dimensions=choice.dimensions,
                dimensions_sent=choice.send_dimensions,
            ),
        )
        return store_id

    async def update(self, principal: Principal, store_id: str, change: StoreUpdate) -> VectorStore:
        return await self.calls.run(self._update, principal, store_id, change)

    def _update(self, principal: Principal, store_id: str, change: StoreUpdate) -> VectorStore:
        violations: list[FieldViolation] = []
        if change.name is not None:
            violations += check_name(change.name)
        if change.metadata is not None:
            violations += check_metadata(change.metadata)
        expires_after = change.expires_after
        if expires_after is not None:
            expires_after, more = check_expires_after(expires_after.anchor, expires_after.days)
            violations += more
        raise_if(violations)
        self.require_writable(principal, store_id)
        with self.db.transaction() as conn:
            if change.name is not None:
                self.rows.set_name(conn, store_id, change.name)
            if change.metadata is not None:
                self.rows.set_metadata(conn, store_id, change.metadata)
            if expires_after is not None or change.clear_expires_after:
                self.rows.set_expiry(
                    conn,
                    store_id,
                    expires_after.anchor if expires_after else None,
                    expires_after.days if expires_after else None,
                )
            self.touch(store_id)
        return self.get_now(principal, store_id)

    async def delete(self, principal: Principal, store_id: str) -> None:
        """Deletes the store's rows in one short transaction; then its caches here (other
        replicas drop theirs once they see the row gone: ``StoreDrops.drop_deleted``) and
        its chunks (possibly millions of rows), in slices from a thread. Chunks of a store
        that no longer exists are never read, and start-up deletes any left by a crash."""
        await self.calls.run(self._delete_rows, principal, store_id)
        await self.drops.drop(store_id)
        await asyncio.to_thread(ChunkWriter(self.db).delete_store, store_id)

    def _delete_rows(self, principal: Principal, store_id: str) -> None:
        self.get_row(principal, store_id)
        self.calls.on_loop(self.scheduler.remove, lambda j: j.store_id == store_id)
        with self.book.transaction() as conn:
            # Its running batches end ``failed`` (their watchers get a terminal message).
            for batch_id in self.batch_rows.in_progress(conn, store_id):
                self.book.end_batch(conn, batch_id, BatchStatus.FAILED)
            self.rows.delete(conn, store_id)
