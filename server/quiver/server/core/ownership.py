"""Which live replica owns a store's index: rendezvous (highest-random-weight) hashing of the
store id over the live replicas, and the ownership epoch. Pure logic, no I/O.

Every replica that sees the same live set computes the same owner for every store; when a
replica joins or leaves, only the stores it wins or held move. The epoch is this replica's
count of live-set changes: an index is answered for only at the epoch it was last fully
reconciled at (``core/index_sync.py``), so a store that moved away and back is rebuilt from
the database instead of trusted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quiver.server.storage.rows import ReplicaRow


@dataclass(frozen=True, order=True)
class Replica:
    replica_id: str
    address: str


def weight(replica_id: str, store_id: str) -> int:
    """The replica's random-looking weight for the store (the same on every machine)."""
    digest = hashlib.blake2b(
        f"{store_id}\x00{replica_id}".encode(), digest_size=8, person=b"quiver-hrw"
    ).digest()
    return int.from_bytes(digest, "big")


def owner_of(store_id: str, replicas: Sequence[Replica]) -> Replica | None:
    """The replica of highest weight for ``store_id`` (ties: the greater id); None if none."""
    if not replicas:
        return None
    return max(replicas, key=lambda r: (weight(r.replica_id, store_id), r.replica_id))


@dataclass(frozen=True)
class View:
    """The live replicas as this replica sees them, at an epoch."""

    epoch: int
    me: Replica
    replicas: tuple[Replica, ...]
    """Sorted by id; always holds ``me``."""

    def owner(self, store_id: str) -> Replica:
        found = owner_of(store_id, self.replicas)
        return self.me if found is None else found

    def is_mine(self, store_id: str) -> bool:
        return self.owner(store_id).replica_id == self.me.replica_id


class Ownership:
    """The current view, changed by heartbeats read from the database (``observe``) and by a
    replica found unreachable (``mark_dead``); each change of the live set bumps the epoch."""

    def __init__(self, me: Replica) -> None:
        self._me = me
        self._view = View(1, me, (me,))
        self._dead: dict[str, float] = {}
        """Replicas found unreachable, with the heartbeat they had then: left out until they
        heartbeat again after it."""
        self._last_rows: tuple[ReplicaRow, ...] = ()

    @property
    def view(self) -> View:
        return self._view

    def observe(self, rows: Iterable[ReplicaRow]) -> View:
        """The live rows just read (heartbeats within the window): the new view."""
        self._last_rows = tuple(rows)
        return self._settle()

    def mark_dead(self, replica_id: str) -> View:
        """``replica_id`` did not answer: out of the live set until its next heartbeat
        (never this replica itself)."""
        if replica_id != self._me.replica_id:
            beat = max(
                (r.heartbeat_at for r in self._last_rows if r.replica_id == replica_id),
                default=float("-inf"),
            )
            self._dead[replica_id] = max(beat, self._dead.get(replica_id, float("-inf")))
        return self._settle()

    def _settle(self) -> View:
        seen = {r.replica_id for r in self._last_rows}
        # A dead mark ends with a newer heartbeat, or once its row left the window.
        self._dead = {
            rid: beat
            for rid, beat in self._dead.items()
            if rid in seen
            and not any(r.replica_id == rid and r.heartbeat_at > beat for r in self._last_rows)
        }
        live = {self._me.replica_id: self._me}
        for row in self._last_rows:
            if row.replica_id not in self._dead and row.replica_id != self._me.replica_id:
                live[row.replica_id] = Replica(row.replica_id, row.address)
        replicas = tuple(sorted(live.values()))
        if replicas != self._view.replicas:
            self._view = View(self._view.epoch + 1, self._me, replicas)
        return self._view
