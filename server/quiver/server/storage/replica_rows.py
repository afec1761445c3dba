"""The ``replicas`` table (SQLite): each replica heartbeats its row; the live set is the rows
heartbeating within a window. Blocking: call every method from a thread.

The SQL is plain (``INSERT … ON CONFLICT … DO UPDATE``, no SQLite-only function) so another
database can run it as written, with its own placeholders.
"""

from __future__ import annotations

from quiver.server.storage.database import Database
from quiver.server.storage.rows import ReplicaRow


class ReplicaRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    def beat(self, replica_id: str, address: str, now: float) -> None:
        """``replica_id`` is alive at ``now``, reachable at ``address``."""
        with self.db.slice() as conn:
            conn.execute(
                "INSERT INTO replicas (id, address, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "address = excluded.address, heartbeat_at = excluded.heartbeat_at",
                (replica_id, address, now, now),
            )

    def live(self, since: float) -> list[ReplicaRow]:
        """The replicas whose last heartbeat is at or after ``since``, by id."""
        rows = (
            self.db.reader()
            .execute(
                "SELECT id, address, heartbeat_at FROM replicas WHERE heartbeat_at >= ? "
                "ORDER BY id",
                (since,),
            )
            .fetchall()
        )
        return [ReplicaRow(r[0], r[1], float(r[2])) for r in rows]

    def leave(self, replica_id: str) -> None:
        """``replica_id`` stops (a clean stop): the others need not wait for its window."""
        with self.db.slice() as conn:
            conn.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))

    def forget_before(self, before: float) -> int:
        """Deletes the rows of replicas silent since before ``before`` (long dead); returns
        how many (the table stays as small as the replicas that ran recently)."""
        with self.db.slice() as conn:
            return conn.execute("DELETE FROM replicas WHERE heartbeat_at < ?", (before,)).rowcount
