"""The ``files`` table: uploaded files' rows."""

from __future__ import annotations

import sqlite3

from quiver.server.core.models import StoredFile
from quiver.server.storage.database import Database
from quiver.server.storage.pagination import PageSpec, Rows, fetch_page
from quiver.server.storage.rows import Tx, conn_of


def _to_file(row: sqlite3.Row) -> StoredFile:
    return StoredFile(
        id=row["id"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        filename=row["filename"],
        purpose=row["purpose"],
        sha256=row["sha256"],
    )


class FileRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, tx: Tx, tenant: str, subject: str, file: StoredFile) -> None:
        conn_of(tx).execute(
            "INSERT INTO files (id, tenant, subject, filename, purpose, bytes, sha256, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        row = self.db.execute(
            "SELECT * FROM files WHERE id = ? AND tenant = ? AND subject = ?",
            (file_id, tenant, subject),
        ).fetchone()
        return None if row is None else _to_file(row)

    def page(self, tenant: str, subject: str, purpose: str, page: PageSpec) -> Rows[StoredFile]:
        """The owner's files (of ``purpose`` unless it is empty)."""
        where = "tenant = ? AND subject = ?"
        params: tuple[object, ...] = (tenant, subject)
        if purpose:
            where += " AND purpose = ?"
            params += (purpose,)
        return fetch_page(
            self.db, table="files", where=where, params=params, page=page, convert=_to_file
        )

    def delete(self, tx: Tx, file_id: str) -> None:
        conn_of(tx).execute("DELETE FROM files WHERE id = ?", (file_id,))

    def content_in_use(self, tx: Tx, sha256: str) -> bool:
        """Whether any file still has these bytes."""
        row = (
            conn_of(tx)
            .execute("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", (sha256,))
            .fetchone()
        )
        return row is not None

    def existing(self, tenant: str, subject: str, file_ids: list[str]) -> set[str]:
        """Those of ``file_ids`` that are files of the owner."""
        found: set[str] = set()
        for start in range(0, len(file_ids), 500):
            part = file_ids[start : start + 500]
            marks = ",".join("?" * len(part))
            found.update(
                r[0]
                for r in self.db.execute(
                    f"SELECT id FROM files WHERE tenant = ? AND subject = ? AND id IN ({marks})",
                    (tenant, subject, *part),
                )
            )
        return found
