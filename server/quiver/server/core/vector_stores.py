"""Vector stores: create, read, list, update, delete, and expiry."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from quiver.server.core import ids
from quiver.server.core.chunk_writer import ChunkWriter
from quiver.server.core.clock import Clock, system_clock
from quiver.server.core.embedder_choice import Choice
from quiver.server.core.errors import FailedPrecondition, FieldViolation, NotFound
from quiver.server.core.models import (
    BatchStatus,
    ExpiresAfter,
    FileCounts,
    ListParams,
    Page,
    StoreStatus,
    VectorStore,
)
from quiver.server.core.principal import Principal
from quiver.server.core.scheduler import Scheduler
from quiver.server.core.status_book import StatusBook
from quiver.server.core.validation import (
    check_expires_after,
    check_metadata,
    check_name,
    raise_if,
)
from quiver.server.index.manager import IndexManager
from quiver.server.storage.database import Database
from quiver.server.storage.pagination import fetch_page

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
    ``scheduler`` and ``indexes``: its queued files and its index go with it."""

    def __init__(
        self,
        db: Database,
        resolve_embedder: EmbedderResolver,
        book: StatusBook,
        scheduler: Scheduler,
        indexes: IndexManager,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self.db = db
        self.resolve_embedder = resolve_embedder
        self.book = book
        self.scheduler = scheduler
        self.indexes = indexes
        self.clock = clock

    # -- reading -------------------------------------------------------------------------

    def get_row(self, principal: Principal, store_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM vector_stores WHERE id = ? AND tenant = ? AND subject = ?",
            (store_id, principal.tenant, principal.subject),
        ).fetchone()
        if row is None:
            raise NotFound(
                f"no vector store with id {store_id[:80]!r}", reason="VECTOR_STORE_NOT_FOUND"
            )
        return row

    def _expires_at(self, row: sqlite3.Row) -> int | None:
        if row["expires_days"] is None:
            return None
        return int(row["last_active_at"]) + int(row["expires_days"]) * DAY

    def _is_expired(self, row: sqlite3.Row) -> bool:
        expires_at = self._expires_at(row)
        return expires_at is not None and self.clock() >= expires_at

    def file_counts(self, store_id: str) -> tuple[FileCounts, int]:
        counts: dict[str, int] = {}
        usage = 0
        for status, count, used in self.db.execute(
            "SELECT status, COUNT(*), COALESCE(SUM(usage_bytes), 0) FROM vector_store_files "
            "WHERE vector_store_id = ? GROUP BY status",
            (store_id,),
        ):
            counts[status] = count
            usage += used
        return FileCounts.from_status_counts(counts), usage

    def _to_store(self, row: sqlite3.Row) -> VectorStore:
        counts, usage = self.file_counts(row["id"])
        if self._is_expired(row):
            status = StoreStatus.EXPIRED
        elif counts.in_progress:
            status = StoreStatus.IN_PROGRESS
        else:
            status = StoreStatus.COMPLETED
        expires_after = (
            ExpiresAfter(row["expires_anchor"], row["expires_days"])
            if row["expires_days"] is not None
            else None
        )
        return VectorStore(
            id=row["id"],
            created_at=row["created_at"],
            name=row["name"],
            usage_bytes=usage,
            file_counts=counts,
            status=status,
            expires_after=expires_after,
            expires_at=self._expires_at(row),
            last_active_at=row["last_active_at"],
            metadata=json.loads(row["metadata"]),
            embedding_model=row["embedding_model"],
            embedding_dimensions=row["embedding_dimensions"],
        )

    def get(self, principal: Principal, store_id: str) -> VectorStore:
        return self._to_store(self.get_row(principal, store_id))

    def list(self, principal: Principal, page: ListParams) -> Page[VectorStore]:
        return fetch_page(
            self.db,
            table="vector_stores",
            where="tenant = ? AND subject = ?",
            params=(principal.tenant, principal.subject),
            page=page,
            convert=self._to_store,
        )

    def require_writable(
        self, principal: Principal, store_id: str, refused: str = "no longer accepts changes"
    ) -> sqlite3.Row:
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
        row = self.db.execute(
            "SELECT last_active_at, expires_days FROM vector_stores WHERE id = ?", (store_id,)
        ).fetchone()
        return row is not None and self._is_expired(row)

    def learn_dimensions(self, conn: sqlite3.Connection, store_id: str, width: int) -> int:
        """The store's vector dimension, recorded from ``width`` (the first vectors' length)
        when it was not known yet. ValueError when vectors of another length arrive."""
        row = conn.execute(
            "SELECT embedding_dimensions FROM vector_stores WHERE id = ?", (store_id,)
        ).fetchone()
        known = int(row[0]) if row is not None else 0
        if known == 0:
            conn.execute(
                "UPDATE vector_stores SET embedding_dimensions = ? WHERE id = ?",
                (width, store_id),
            )
            return width
        if known != width:
            raise ValueError(
                f"the embedder returned {width}-dimensional vectors; this store holds {known}"
            )
        return known

    def touch(self, store_id: str) -> None:
        """Marks activity now (the expiry anchor)."""
        self.db.execute(
            "UPDATE vector_stores SET last_active_at = ? WHERE id = ?",
            (int(self.clock()), store_id),
        )

    def touch_if_possible(self, store_id: str) -> None:
        """``touch`` for reads (search): a timestamp that cannot be written (a full disk, a
        busy database) is logged and skipped; the read goes on."""
        try:
            self.touch(store_id)
        except sqlite3.Error as exc:
            log.warning("last_active_at of %s not updated: %s", store_id, exc)

    # -- writing -------------------------------------------------------------------------

    def create(
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
        with self.db.transaction() as conn:
            store_id = self.insert(conn, principal, new)
        return self.get(principal, store_id)

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

    def insert(self, conn: sqlite3.Connection, principal: Principal, new: NewStore) -> str:
        """Inside a transaction: inserts a prepared store; returns its id."""
        now = int(self.clock())
        store_id = ids.new_id(ids.VECTOR_STORE)
        expires_after, choice = new.expires_after, new.choice
        conn.execute(
            "INSERT INTO vector_stores (id, tenant, subject, name, created_at, "
            "last_active_at, expires_anchor, expires_days, metadata, embedding_model, "
            "embedding_dimensions, dimensions_sent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                store_id,
                principal.tenant,
                principal.subject,
                new.name,
                now,
                now,
                expires_after.anchor if expires_after else None,
                expires_after.days if expires_after else None,
                json.dumps(new.metadata, sort_keys=True),
                choice.model,
                choice.dimensions,
                int(choice.send_dimensions),
            ),
        )
        return store_id

    def update(self, principal: Principal, store_id: str, change: StoreUpdate) -> VectorStore:
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
                conn.execute(
                    "UPDATE vector_stores SET name = ? WHERE id = ?", (change.name, store_id)
                )
            if change.metadata is not None:
                conn.execute(
                    "UPDATE vector_stores SET metadata = ? WHERE id = ?",
                    (json.dumps(change.metadata, sort_keys=True), store_id),
                )
            if expires_after is not None or change.clear_expires_after:
                conn.execute(
                    "UPDATE vector_stores SET expires_anchor = ?, expires_days = ? WHERE id = ?",
                    (
                        expires_after.anchor if expires_after else None,
                        expires_after.days if expires_after else None,
                        store_id,
                    ),
                )
            self.touch(store_id)
        return self.get(principal, store_id)

    async def delete(self, principal: Principal, store_id: str) -> None:
        """Deletes the store's rows in one short transaction; then its chunks (possibly
        millions of rows with their text index), in slices from a thread. Chunks of a store
        that no longer exists are never read, and start-up deletes any left by a crash."""
        self.get_row(principal, store_id)
        self.scheduler.remove(lambda j: j.store_id == store_id)
        with self.book.transaction() as conn:
            # Its running batches end ``failed`` (their watchers get a terminal message).
            for (batch_id,) in conn.execute(
                "SELECT id FROM file_batches WHERE vector_store_id = ? AND status = ?",
                (store_id, BatchStatus.IN_PROGRESS.value),
            ).fetchall():
                self.book.end_batch(conn, batch_id, BatchStatus.FAILED)
            conn.execute("DELETE FROM vector_store_files WHERE vector_store_id = ?", (store_id,))
            conn.execute("DELETE FROM file_batches WHERE vector_store_id = ?", (store_id,))
            conn.execute("DELETE FROM vector_stores WHERE id = ?", (store_id,))
        self.indexes.drop(store_id)
        await asyncio.to_thread(ChunkWriter(self.db).delete_store, store_id)
