"""The leased job queue in PostgreSQL (the rules: ``storage/jobs.py``). Expired files are
claimed with ``FOR UPDATE SKIP LOCKED``, so servers sweeping at once take different files
and never wait on each other; every claim bumps the generation (the fence a late commit of
an older claim fails)."""

from __future__ import annotations

from typing import Any

from quiver.server.storage.jobs import IN_PROGRESS, RENEW_SLICE, ClaimedFile, Lease
from quiver.server.storage.postgres.connection import PgDatabase, execute
from quiver.server.storage.rows import Tx


class PgJobs:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def current(self, store_id: str, file_id: str) -> dict[str, Any] | None:
        row = self.db.one(
            "SELECT f.*, s.embedding_model, s.embedding_dimensions, s.dimensions_sent, "
            "files.sha256, files.bytes AS file_bytes, files.filename FROM vector_store_files f "
            "JOIN vector_stores s ON s.id = f.vector_store_id "
            "JOIN files ON files.id = f.file_id "
            "WHERE f.vector_store_id = %s AND f.file_id = %s",
            (store_id, file_id),
        )
        return None if row is None else dict(row)

    def stamp(self, tx: Tx, store_id: str, file_id: str, owner: str, expires_at: float) -> None:
        execute(
            tx,
            "UPDATE vector_store_files SET lease_owner = %s, lease_expires_at = %s "
            "WHERE vector_store_id = %s AND file_id = %s",
            (owner, expires_at, store_id, file_id),
        )

    def lease(self, tx: Tx | None, store_id: str, file_id: str) -> Lease | None:
        """Inside ``tx`` the row stays locked until it commits (``FOR UPDATE``): under READ
        COMMITTED a claim by another server could otherwise commit between this read and
        the caller's write (a claim's ``SKIP LOCKED`` passes over the locked row)."""
        sql = (
            "SELECT status, lease_owner, lease_expires_at, generation FROM vector_store_files "
            "WHERE vector_store_id = %s AND file_id = %s"
        )
        params = (store_id, file_id)
        row = (
            self.db.one(sql, params)
            if tx is None
            else execute(tx, sql + " FOR UPDATE", params).fetchone()
        )
        if row is None:
            return None
        return Lease(
            row["status"],
            row["lease_owner"],
            float(row["lease_expires_at"]),
            int(row["generation"]),
        )

    def expired_in_cancelled_batches(self, tx: Tx, now: float) -> list[tuple[str, str]]:
        return [
            (r["vector_store_id"], r["file_id"])
            for r in execute(
                tx,
                "SELECT f.vector_store_id, f.file_id FROM vector_store_files f "
                "JOIN file_batches b ON b.id = f.batch_id "
                "WHERE f.status = %s AND f.lease_expires_at <= %s AND b.cancel_requested",
                (IN_PROGRESS, now),
            ).fetchall()
        ]

    def claim_expired(
        self, tx: Tx, owner: str, now: float, expires_at: float, limit: int
    ) -> list[ClaimedFile]:
        if limit <= 0:
            return []
        rows = execute(
            tx,
            "UPDATE vector_store_files SET lease_owner = %s, lease_expires_at = %s, "
            "generation = generation + 1 WHERE seq IN (SELECT seq FROM vector_store_files "
            "WHERE status = %s AND lease_expires_at <= %s ORDER BY lease_expires_at LIMIT %s "
            "FOR UPDATE SKIP LOCKED) "
            "RETURNING vector_store_id, file_id, generation, batch_id, tenant, subject",
            (owner, expires_at, IN_PROGRESS, now, limit),
        ).fetchall()
        return [
            ClaimedFile(
                r["vector_store_id"],
                r["file_id"],
                int(r["generation"]),
                r["batch_id"],
                r["tenant"],
                r["subject"],
            )
            for r in rows
        ]

    def renew(self, owner: str, expires_at: float) -> int:
        renewed = 0
        while True:
            with self.db.transaction() as conn:
                n = execute(
                    conn,
                    "UPDATE vector_store_files SET lease_expires_at = %s WHERE seq IN ("
                    "SELECT seq FROM vector_store_files WHERE status = %s AND lease_owner = %s "
                    "AND lease_expires_at < %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                    (expires_at, IN_PROGRESS, owner, expires_at, RENEW_SLICE),
                ).rowcount
            renewed += n
            if n < RENEW_SLICE:
                return renewed

    def release(self, tx: Tx, owner: str) -> int:
        return execute(
            tx,
            "UPDATE vector_store_files SET lease_expires_at = 0 "
            "WHERE status = %s AND lease_owner = %s",
            (IN_PROGRESS, owner),
        ).rowcount
