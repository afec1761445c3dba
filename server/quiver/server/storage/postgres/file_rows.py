"""The ``files`` table in PostgreSQL."""

from __future__ import annotations

from psycopg.rows import DictRow
from quiver.server.core.models import StoredFile
from quiver.server.storage.pagination import PageSpec, Rows
from quiver.server.storage.postgres.connection import PgDatabase, execute
from quiver.server.storage.postgres.pagination import fetch_page
from quiver.server.storage.rows import Tx


def _to_file(row: DictRow) -> StoredFile:
    return StoredFile(
        id=row["id"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        filename=row["filename"],
        purpose=row["purpose"],
        sha256=row["sha256"],
    )


class PgFileRows:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def insert(self, tx: Tx, tenant: str, subject: str, file: StoredFile) -> None:
        execute(
            tx,
            "INSERT INTO files (id, tenant, subject, filename, purpose, bytes, sha256, "
            "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                file.id,
                tenant,
                subject,
                file.filename,
                file.purpose,
                file.bytes,
                file.sha256,
                file.created_at,
            ),
        )

    def get(self, file_id: str, tenant: str, subject: str) -> StoredFile | None:
        row = self.db.one(
            "SELECT * FROM files WHERE id = %s AND tenant = %s AND subject = %s",
            (file_id, tenant, subject),
        )
        return None if row is None else _to_file(row)

    def page(self, tenant: str, subject: str, purpose: str, page: PageSpec) -> Rows[StoredFile]:
        where = "tenant = %s AND subject = %s"
        params: tuple[object, ...] = (tenant, subject)
        if purpose:
            where += " AND purpose = %s"
            params += (purpose,)
        return fetch_page(
            self.db, table="files", where=where, params=params, page=page, convert=_to_file
        )

    def delete(self, tx: Tx, file_id: str) -> None:
        execute(tx, "DELETE FROM files WHERE id = %s", (file_id,))

    def content_in_use(self, tx: Tx, sha256: str) -> bool:
        row = execute(tx, "SELECT 1 FROM files WHERE sha256 = %s LIMIT 1", (sha256,)).fetchone()
        return row is not None

    def existing(self, tenant: str, subject: str, file_ids: list[str]) -> set[str]:
        return {
            r["id"]
            for r in self.db.rows(
                "SELECT id FROM files WHERE tenant = %s AND subject = %s AND id = ANY(%s)",
                (tenant, subject, file_ids),
            )
        }
