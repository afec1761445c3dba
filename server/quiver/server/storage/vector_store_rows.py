"""The ``vector_stores`` table."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from quiver.server.storage.database import Database
from quiver.server.storage.pagination import PageSpec, Rows, fetch_page
from quiver.server.storage.rows import StoreActivity, StoreRow, Tx, conn_of


def _to_store(row: sqlite3.Row) -> StoreRow:
    return StoreRow(
        id=row["id"],
        tenant=row["tenant"],
        subject=row["subject"],
        name=row["name"],
        created_at=row["created_at"],
        last_active_at=row["last_active_at"],
        expires_anchor=row["expires_anchor"],
        expires_days=row["expires_days"],
        metadata=json.loads(row["metadata"]),
        embedding_model=row["embedding_model"],
        embedding_dimensions=row["embedding_dimensions"],
        dimensions_sent=bool(row["dimensions_sent"]),
    )


class VectorStoreRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, store_id: str, tenant: str, subject: str) -> StoreRow | None:
        row = self.db.execute(
            "SELECT * FROM vector_stores WHERE id = ? AND tenant = ? AND subject = ?",
            (store_id, tenant, subject),
        ).fetchone()
        return None if row is None else _to_store(row)

    def get_in(self, tx: Tx, store_id: str) -> StoreRow | None:
        """Inside a transaction, whoever owns it."""
        row = (
            conn_of(tx).execute("SELECT * FROM vector_stores WHERE id = ?", (store_id,)).fetchone()
        )
        return None if row is None else _to_store(row)

    def page(self, tenant: str, subject: str, page: PageSpec) -> Rows[StoreRow]:
        return fetch_page(
            self.db,
            table="vector_stores",
            where="tenant = ? AND subject = ?",
            params=(tenant, subject),
            page=page,
            convert=_to_store,
        )

    def with_file(self, tx: Tx, file_id: str, tenant: str, subject: str) -> list[StoreRow]:
        """Inside a transaction: the owner's stores the file is attached to."""
        return [
            _to_store(r)
            for r in conn_of(tx)
            .execute(
                "SELECT s.* FROM vector_stores s JOIN vector_store_files f "
                "ON f.vector_store_id = s.id WHERE f.file_id = ? AND s.tenant = ? "
                "AND s.subject = ?",
                (file_id, tenant, subject),
            )
            .fetchall()
        ]

    def dimensioned(self) -> list[tuple[str, int]]:
        """(id, embedding_dimensions) of every store whose dimension is known."""
        return [
            (r["id"], r["embedding_dimensions"])
            for r in self.db.execute(
                "SELECT id, embedding_dimensions FROM vector_stores WHERE embedding_dimensions > 0"
            ).fetchall()
        ]

    def absent(self, store_ids: Sequence[str]) -> list[str]:
        """Those of ``store_ids`` that have no row. Blocking: from a thread."""
        if not store_ids:
            return []
        found = {
            r[0]
            for r in self.db.reader()
            .execute(
                "SELECT id FROM vector_stores WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(store_ids)),),
            )
            .fetchall()
        }
        return [s for s in store_ids if s not in found]

    def activity(self, store_id: str) -> StoreActivity | None:
        row = self.db.execute(
            "SELECT last_active_at, expires_days FROM vector_stores WHERE id = ?", (store_id,)
        ).fetchone()
        return None if row is None else StoreActivity(row[0], row[1])

    def dimensions(self, tx: Tx, store_id: str) -> int:
        """The store's recorded vector dimension (0: not known yet, or no such store)."""
        row = (
            conn_of(tx)
            .execute("SELECT embedding_dimensions FROM vector_stores WHERE id = ?", (store_id,))
            .fetchone()
        )
        return int(row[0]) if row is not None else 0

    def set_dimensions(self, tx: Tx, store_id: str, width: int) -> None:
        conn_of(tx).execute(
            "UPDATE vector_stores SET embedding_dimensions = ? WHERE id = ?", (width, store_id)
        )

    def touch(self, store_id: str, now: int) -> None:
        """Inside the caller's transaction if one is open, else in one of its own."""
        self.db.execute("UPDATE vector_stores SET last_active_at = ? WHERE id = ?", (now, store_id))

    def insert(self, tx: Tx, store: StoreRow) -> None:
        conn_of(tx).execute(
            "INSERT INTO vector_stores (id, tenant, subject, name, created_at, "
            "last_active_at, expires_anchor, expires_days, metadata, embedding_model, "
            "embedding_dimensions, dimensions_sent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                store.id,
                store.tenant,
                store.subject,
                store.name,
                store.created_at,
                store.last_active_at,
                store.expires_anchor,
                store.expires_days,
                json.dumps(store.metadata, sort_keys=True),
                store.embedding_model,
                store.embedding_dimensions,
                int(store.dimensions_sent),
            ),
        )

    def set_name(self, tx: Tx, store_id: str, name: str) -> None:
        conn_of(tx).execute("UPDATE vector_stores SET name = ? WHERE id = ?", (name, store_id))

    def set_metadata(self, tx: Tx, store_id: str, metadata: dict[str, str]) -> None:
        conn_of(tx).execute(
            "UPDATE vector_stores SET metadata = ? WHERE id = ?",
            (json.dumps(metadata, sort_keys=True), store_id),
        )

    def set_expiry(self, tx: Tx, store_id: str, anchor: str | None, days: int | None) -> None:
        conn_of(tx).execute(
            "UPDATE vector_stores SET expires_anchor = ?, expires_days = ? WHERE id = ?",
            (anchor, days, store_id),
        )

    def delete(self, tx: Tx, store_id: str) -> None:
        """The store's row with its file and batch rows (not its chunks: ``ChunkRows``)."""
        conn = conn_of(tx)
        conn.execute("DELETE FROM vector_store_files WHERE vector_store_id = ?", (store_id,))
        conn.execute("DELETE FROM file_batches WHERE vector_store_id = ?", (store_id,))
        conn.execute("DELETE FROM vector_stores WHERE id = ?", (store_id,))
