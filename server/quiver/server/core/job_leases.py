"""This server instance's leases on the files it ingests (the record: storage/jobs.py).

The in-memory scheduler dispatches the work, fairly between tenants; the database records
who owns what. A file is claimed when it is attached (or, if its lease expired or it was
never claimed, by the sweep and at start); the claim bumps its generation. While the server
holds files, a heartbeat renews their leases; a result is committed only if its claim is
still the file's current one (same generation, same owner), else it is dropped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable

from quiver.server.core.scheduler import Job, single_queue
from quiver.server.storage.interfaces import JobRepository
from quiver.server.storage.jobs import Lease
from quiver.server.storage.rows import Tx

MAX_LEASE_SECONDS = 86_400.0


def new_owner_id() -> str:
    """A server instance id: host, pid and a random part (a pid is reused after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def check_lease_settings(lease_seconds: float, renew_seconds: float) -> None:
    """ValueError naming the flag unless the lease and its renewal interval can work."""
    if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
        raise ValueError(
            f"--job-lease-seconds must be more than 0 and at most {MAX_LEASE_SECONDS:g}, "
            f"not {lease_seconds:g}"
        )
    if not 0 < renew_seconds < lease_seconds:
        raise ValueError(
            f"--job-renew-seconds must be more than 0 and less than --job-lease-seconds "
            f"({lease_seconds:g}), not {renew_seconds:g}"
        )


class JobLeases:
    def __init__(
        self,
        repo: JobRepository,
        owner: str,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock  # wall clock: leases are compared across processes

    def _until(self) -> float:
        return self.clock() + self.lease_seconds

    def stamp(self, tx: Tx, job: Job) -> None:
        """Inside the attach's transaction: the attached file is this server's."""
        self.repo.stamp(tx, job.store_id, job.file_id, self.owner, self._until())

    def lease(self, tx: Tx | None, job: Job) -> Lease | None:
        """Inside ``tx``, or (None) read on its own."""
        return self.repo.lease(tx, job.store_id, job.file_id)

    def holds(self, lease: Lease | None, job: Job) -> bool:
        """``job``'s claim is the file's current one. (A lease past its expiry that nobody
        claimed again is still held: a claim bumps the generation inside a transaction, so
        a commit that finds the same generation and owner cannot race one.)"""
        return (
            lease is not None
            and lease.status == "in_progress"
            and lease.owner == self.owner
            and lease.generation == job.generation
        )

    def expired_in_cancelled_batches(self, tx: Tx) -> list[tuple[str, str]]:
        return self.repo.expired_in_cancelled_batches(tx, self.clock())

    def claim_expired(self, tx: Tx, limit: int) -> list[Job]:
        """Inside a transaction: claims up to ``limit`` files whose lease expired (or that were
        never claimed); returns their jobs."""
        claimed = self.repo.claim_expired(tx, self.owner, self.clock(), self._until(), limit)
        return [
            Job(
                c.store_id,
                c.file_id,
                c.generation,
                c.batch_id or single_queue(c.store_id, c.file_id),
                c.tenant,
            )
            for c in claimed
        ]

    async def renew(self) -> int:
        """The heartbeat: every unfinished file this server holds, held for another lease
        (in short write slices, from a thread)."""
        return await asyncio.to_thread(self.repo.renew, self.owner, self._until())

    def release(self, tx: Tx) -> int:
        """At a clean stop: this server's unfinished files may be claimed at once."""
        return self.repo.release(tx, self.owner)
