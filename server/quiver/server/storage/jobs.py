"""The job queue's record in the database: which server instance holds which unfinished file.

A file in progress is *leased*: ``lease_owner`` (a server instance id) holds it until
``lease_expires_at`` (unix seconds), and every claim bumps the row's ``generation``, so a
result computed under an older claim is recognised and refused. An attach claims the file for
the attaching server; the owner renews its leases while it works on them; a lease that has
expired (or a row never claimed: ``lease_expires_at`` 0) may be claimed by anyone.

The methods taking ``tx`` run inside the caller's transaction; ``renew`` writes from a
thread in short slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quiver.server.storage.database import Database
from quiver.server.storage.rows import Tx, conn_of

IN_PROGRESS = "in_progress"
RENEW_SLICE = 256
"""Rows one renewal transaction updates (so the event loop's writes never wait long)."""


@dataclass(frozen=True)
class ClaimedFile:
    """A store file just claimed: the generation its result must be committed with."""

    store_id: str
    file_id: str
    generation: int
    batch_id: str | None
    tenant: str
    subject: str


@dataclass(frozen=True)
class Lease:
    """A store file's lease as the database records it."""

    status: str
    owner: str | None
    expires_at: float
    generation: int


class JobsRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def current(self, store_id: str, file_id: str) -> dict[str, Any] | None:
        """The store file's row with what a worker needs of its store and file (status,
        generation, lease owner, chunking, the store's embedder, the file's sha256 and
        name), or None."""
        row = self.db.execute(
            "SELECT f.*, s.embedding_model, s.embedding_dimensions, s.dimensions_sent, "
            "files.sha256, files.bytes AS file_bytes, "
            "files.filename FROM vector_store_files f "
            "JOIN vector_stores s ON s.id = f.vector_store_id "
            "JOIN files ON files.id = f.file_id "
            "WHERE f.vector_store_id = ? AND f.file_id = ?",
            (store_id, file_id),
        ).fetchone()
        return None if row is None else dict(zip(row.keys(), row, strict=True))

    def stamp(self, tx: Tx, store_id: str, file_id: str, owner: str, expires_at: float) -> None:
        """A file just (re)attached, its generation bumped by the attach, is ``owner``'s."""
        conn_of(tx).execute(
            "UPDATE vector_store_files SET lease_owner = ?, lease_expires_at = ? "
            "WHERE vector_store_id = ? AND file_id = ?",
            (owner, expires_at, store_id, file_id),
        )

    def lease(self, tx: Tx | None, store_id: str, file_id: str) -> Lease | None:
        """Inside ``tx``, or (None) on the event loop's connection."""
        row = (
            (self.db.conn if tx is None else conn_of(tx))
            .execute(
                "SELECT status, lease_owner, lease_expires_at, generation FROM vector_store_files "
                "WHERE vector_store_id = ? AND file_id = ?",
                (store_id, file_id),
            )
            .fetchone()
        )
        if row is None:
            return None
        return Lease(row[0], row[1], float(row[2]), int(row[3]))

    def expired_in_cancelled_batches(self, tx: Tx, now: float) -> list[tuple[str, str]]:
        """(store, file) of the claimable unfinished files whose batch was cancelled."""
        return [
            (r[0], r[1])
            for r in conn_of(tx)
            .execute(
                "SELECT f.vector_store_id, f.file_id FROM vector_store_files f "
                "JOIN file_batches b ON b.id = f.batch_id "
                "WHERE f.status = ? AND f.lease_expires_at <= ? AND b.cancel_requested = 1",
                (IN_PROGRESS, now),
            )
            .fetchall()
        ]

    def claim_expired(
        self,
        tx: Tx,
        owner: str,
        now: float,
        expires_at: float,
        limit: int,
    ) -> list[ClaimedFile]:
        """Claims up to ``limit`` unfinished files whose lease expired by ``now`` (or that
        were never claimed), longest expired first (the partial index's order): ``owner``'s
        until ``expires_at``, generation + 1."""
        if limit <= 0:
            return []
        rows = (
            conn_of(tx)
            .execute(
                "UPDATE vector_store_files SET lease_owner = ?, lease_expires_at = ?, "
                "generation = generation + 1 WHERE seq IN (SELECT seq FROM vector_store_files "
                "WHERE status = ? AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?) "
                "RETURNING vector_store_id, file_id, generation, batch_id, tenant, subject",
                (owner, expires_at, IN_PROGRESS, now, limit),
            )
            .fetchall()
        )
        return [ClaimedFile(r[0], r[1], int(r[2]), r[3], r[4], r[5]) for r in rows]

    def renew(self, owner: str, expires_at: float) -> int:
        """Blocking (call it from a thread): ``owner``'s unfinished files are held until
        ``expires_at``; in slices of RENEW_SLICE rows. Returns how many were renewed."""
        renewed = 0
        while True:
            with self.db.slice() as conn:
                n = conn.execute(
                    "UPDATE vector_store_files SET lease_expires_at = ? WHERE seq IN ("
                    "SELECT seq FROM vector_store_files WHERE status = ? AND lease_owner = ? "
                    "AND lease_expires_at < ? LIMIT ?)",
                    (expires_at, IN_PROGRESS, owner, expires_at, RENEW_SLICE),
                ).rowcount
            renewed += n
            if n < RENEW_SLICE:
                return renewed

    def release(self, tx: Tx, owner: str) -> int:
        """``owner``'s unfinished files may be claimed at once (it stops without them)."""
        return (
            conn_of(tx)
            .execute(
                "UPDATE vector_store_files SET lease_expires_at = 0 "
                "WHERE status = ? AND lease_owner = ?",
                (IN_PROGRESS, owner),
            )
            .rowcount
        )
