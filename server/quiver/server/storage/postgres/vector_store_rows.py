"""The ``vector_stores`` table in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from quiver.server.storage.pagination import PageSpec, Rows
from quiver.server.storage.postgres.connection import PgDatabase, execute
from quiver.server.storage.postgres.pagination import fetch_page
from quiver.server.storage.rows import StoreActivity, StoreRow, Tx


def _to_store(row: DictRow) -> StoreRow:
    return StoreRow(
        id=row["id"],
        tenant=row["tenant"],
        subject=row["subject"],
        name=row["name"],
        created_at=row["created_at"],
        last_active_at=row["last_active_at"],
        expires_anchor=row["expires_anchor"],
        expires_days=row["expires_days"],
        metadata=dict(row["metadata"]),
        embedding_model=row["embedding_model"],
        embedding_dimensions=row["embedding_dimensions"],
        dimensions_sent=bool(row["dimensions_sent"]),
    )


class PgVectorStoreRows:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def get(self, store_id: str, tenant: str, subject: str) -> StoreRow | None:
        row = self.db.one(
            "SELECT * FROM vector_stores WHERE id = %s AND tenant = %s AND subject = %s",
            (store_id, tenant, subject),
        )
        return None if row is None else _to_store(row)

    def get_in(self, tx: Tx, store_id: str) -> StoreRow | None:
        row = execute(tx, "SELECT * FROM vector_stores WHERE id = %s", (store_id,)).fetchone()
        return None if row is None else _to_store(row)

    def page(self, tenant: str, subject: str, page: PageSpec) -> Rows[StoreRow]:
        return fetch_page(
            self.db,
            table="vector_stores",
            where="tenant = %s AND subject = %s",
            params=(tenant, subject),
            page=page,
            convert=_to_store,
        )

    def with_file(self, tx: Tx, file_id: str, tenant: str, subject: str) -> list[StoreRow]:
        return [
            _to_store(r)
            for r in execute(
                tx,
                "SELECT s.* FROM vector_stores s JOIN vector_store_files f "
                "ON f.vector_store_id = s.id WHERE f.file_id = %s AND s.tenant = %s "
                "AND s.subject = %s",
                (file_id, tenant, subject),
            ).fetchall()
        ]

    def dimensioned(self) -> list[tuple[str, int]]:
        return [
            (r["id"], r["embedding_dimensions"])
            for r in self.db.rows(
                "SELECT id, embedding_dimensions FROM vector_stores WHERE embedding_dimensions > 0"
            )
        ]

    def absent(self, store_ids: Sequence[str]) -> list[str]:
        if not store_ids:
            return []
        found = {
            r["id"]
            for r in self.db.rows(
                "SELECT id FROM vector_stores WHERE id = ANY(%s::text[])", (list(store_ids),)
            )
        }
        return [s for s in store_ids if s not in found]

    def activity(self, store_id: str) -> StoreActivity | None:
        row = self.db.one(
            "SELECT last_active_at, expires_days FROM vector_stores WHERE id = %s", (store_id,)
        )
        return None if row is None else StoreActivity(row["last_active_at"], row["expires_days"])

    def dimensions(self, tx: Tx, store_id: str) -> int:
        row = execute(
            tx, "SELECT embedding_dimensions FROM vector_stores WHERE id = %s", (store_id,)
        ).fetchone()
        return int(row["embedding_dimensions"]) if row is not None else 0

    def set_dimensions(self, tx: Tx, store_id: str, width: int) -> None:
        execute(
            tx,
            "UPDATE vector_stores SET embedding_dimensions = %s WHERE id = %s",
            (width, store_id),
        )

    def touch(self, store_id: str, now: int) -> None:
        self.db.run(
            "UPDATE vector_stores SET last_active_at = %s WHERE id = %s AND last_active_at <> %s",
            (now, store_id, now),
        )

    def insert(self, tx: Tx, store: StoreRow) -> None:
        execute(
            tx,
            "INSERT INTO vector_stores (id, tenant, subject, name, created_at, "
            "last_active_at, expires_anchor, expires_days, metadata, embedding_model, "
            "embedding_dimensions, dimensions_sent) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                store.id,
                store.tenant,
                store.subject,
                store.name,
                store.created_at,
                store.last_active_at,
                store.expires_anchor,
                store.expires_days,
                Jsonb(store.metadata),
                store.embedding_model,
                store.embedding_dimensions,
                store.dimensions_sent,
            ),
        )

    def set_name(self, tx: Tx, store_id: str, name: str) -> None:
        execute(tx, "UPDATE vector_stores SET name = %s WHERE id = %s", (name, store_id))

    def set_metadata(self, tx: Tx, store_id: str, metadata: dict[str, str]) -> None:
        execute(
            tx, "UPDATE vector_stores SET metadata = %s WHERE id = %s", (Jsonb(metadata), store_id)
        )

    def set_expiry(self, tx: Tx, store_id: str, anchor: str | None, days: int | None) -> None:
        execute(
            tx,
            "UPDATE vector_stores SET expires_anchor = %s, expires_days = %s WHERE id = %s",
            (anchor, days, store_id),
        )

    def delete(self, tx: Tx, store_id: str) -> None:
        execute(tx, "DELETE FROM vector_store_files WHERE vector_store_id = %s", (store_id,))
        execute(tx, "DELETE FROM file_batches WHERE vector_store_id = %s", (store_id,))
        execute(tx, "DELETE FROM vector_stores WHERE id = %s", (store_id,))
