"""The ``replicas`` table on PostgreSQL (the SQL of ``storage/replica_rows.py``): each replica
heartbeats its row; the live set is the rows heartbeating within a window. Blocking: call
every method from a thread."""

from __future__ import annotations

from quiver.server.storage.postgres.connection import PgDatabase
from quiver.server.storage.rows import ReplicaRow


class PgReplicaRows:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def beat(self, replica_id: str, address: str, now: float) -> None:
        """``replica_id`` is alive at ``now``, reachable at ``address``."""
        self.db.run(
            "INSERT INTO replicas (id, address, started_at, heartbeat_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "address = EXCLUDED.address, heartbeat_at = EXCLUDED.heartbeat_at",
            (replica_id, address, now, now),
        )

    def live(self, since: float) -> list[ReplicaRow]:
        """The replicas whose last heartbeat is at or after ``since``, by id."""
        rows = self.db.rows(
            "SELECT id, address, heartbeat_at FROM replicas WHERE heartbeat_at >= %s ORDER BY id",
            (since,),
        )
        return [ReplicaRow(r["id"], r["address"], float(r["heartbeat_at"])) for r in rows]

    def leave(self, replica_id: str) -> None:
        """``replica_id`` stops cleanly: the others need not wait for its window."""
        self.db.run("DELETE FROM replicas WHERE id = %s", (replica_id,))

    def forget_before(self, before: float) -> int:
        """Deletes the rows of replicas silent since before ``before``; returns how many."""
        return self.db.run("DELETE FROM replicas WHERE heartbeat_at < %s", (before,))
