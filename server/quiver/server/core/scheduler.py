"""The ingest queue: bounded in-flight work, tenants served round-robin, then their batches.

Each batch (or single store file) has its own queue, and each tenant its ring of queues. The
scheduler takes one file from the next tenant in turn, from that tenant's next queue: a
tenant with six slow batches (or a thousand single files) gets one turn in every round, like
a tenant with one file, and a 2,000-file batch never starves a 1-file batch of the same
tenant. The queue is bounded globally and per tenant, so one tenant filling it does not get
every other tenant refused. A file that was in the pool when a worker died is a *suspect*: it
runs again alone, so a second crash is surely its own fault.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from quiver.server.core.errors import ResourceExhausted

log = logging.getLogger("quiver.scheduler")


@dataclass(frozen=True)
class Job:
    store_id: str
    file_id: str
    generation: int
    queue: str
    """The batch id, or ``file:<store>:<file>`` for a file attached on its own."""
    tenant: str
    """Whose file it is: the unit of fairness and of the per-tenant queue limit."""
    suspect: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.store_id, self.file_id


def single_queue(store_id: str, file_id: str) -> str:
    return f"file:{store_id}:{file_id}"


Process = Callable[[Job], Awaitable[None]]
"""Runs one job to its end (``Processing.process``); given to ``Scheduler.start``."""


class Scheduler:
    """Built before the processing that it runs (which takes it to requeue and to remove
    jobs): the processing callable arrives with ``start``."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        max_queued: int,
        max_queued_per_tenant: int | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.max_queued_per_tenant = (
            max_queued if max_queued_per_tenant is None else max_queued_per_tenant
        )
        # tenant -> (queue name -> its jobs); both rings turn: the front is served next.
        self._tenants: OrderedDict[str, OrderedDict[str, deque[Job]]] = OrderedDict()
        self._tenant_queued: dict[str, int] = {}
        self._suspects: deque[Job] = deque()
        self._queued = 0
        # Jobs, not keys: a file re-attached while its old job is still in the pool has two
        # jobs in flight for a while, and each must count (and be released) on its own.
        self._in_flight: set[Job] = set()
        # Room promised to requests whose transaction runs on a database thread: counted by
        # ``check_room`` until their jobs are queued (or the request failed).
        self._reserved = 0
        self._tenant_reserved: dict[str, int] = {}
        self._exclusive = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued + len(self._suspects)

    def queued_for(self, tenant: str) -> int:
        return self._tenant_queued.get(tenant, 0)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def is_in_flight(self, store_id: str, file_id: str) -> bool:
        return any(job.key == (store_id, file_id) for job in self._in_flight)

    def in_flight_files(self, store_id: str) -> frozenset[str]:
        return frozenset(job.file_id for job in self._in_flight if job.store_id == store_id)

    def check_room(self, tenant: str, files: int) -> None:
        """RESOURCE_EXHAUSTED, naming the limit, unless ``files`` more fit in the queue."""
        mine = self.queued_for(tenant) + self._tenant_reserved.get(tenant, 0)
        if mine + files > self.max_queued_per_tenant:
            raise ResourceExhausted(
                f"your files waiting for ingest number {mine} and this request adds {files}; "
                f"the server's limit per tenant is {self.max_queued_per_tenant} "
                "(--max-queued-files-per-tenant). Retry when your running batches have "
                "progressed.",
                reason="TENANT_INGEST_QUEUE_FULL",
            )
        held = self.queued + self._reserved
        if held + files > self.max_queued:
            raise ResourceExhausted(
                f"the ingest queue holds {held} files and this request adds {files}; "
                f"the server's limit is {self.max_queued} (--max-queued-files). "
                "Retry when running batches have progressed.",
                reason="INGEST_QUEUE_FULL",
            )

    @property
    def reserved(self) -> int:
        """Room held by requests between their check and their jobs' queueing."""
        return self._reserved

    def reserve(self, tenant: str, files: int) -> None:
        """``check_room``, then that room held for the caller until ``unreserve``: a request
        checks before its transaction and queues after it, on another thread meanwhile."""
        self.check_room(tenant, files)
        self._reserved += files
        self._tenant_reserved[tenant] = self._tenant_reserved.get(tenant, 0) + files

    def unreserve(self, tenant: str, files: int) -> None:
        self._reserved -= files
        left = self._tenant_reserved.get(tenant, 0) - files
        if left > 0:
            self._tenant_reserved[tenant] = left
        else:
            self._tenant_reserved.pop(tenant, None)

    # -- changes -----------------------------------------------------------------------------

    def enqueue(self, jobs: list[Job]) -> None:
        for job in jobs:
            queues = self._tenants.setdefault(job.tenant, OrderedDict())
            queues.setdefault(job.queue, deque()).append(job)
            self._tenant_queued[job.tenant] = self._tenant_queued.get(job.tenant, 0) + 1
        self._queued += len(jobs)
        self._wake.set()

    def requeue_suspect(self, job: Job) -> None:
        self._suspects.append(replace(job, suspect=True))
        self._wake.set()

    def remove(self, match: Callable[[Job], bool]) -> list[Job]:
        """Takes queued (not in-flight) jobs out; returns them."""
        removed: list[Job] = []
        for tenant in list(self._tenants):
            queues = self._tenants[tenant]
            for name in list(queues):
                queue = queues[name]
                gone = [j for j in queue if match(j)]
                if not gone:
                    continue
                removed += gone
                self._tenant_queued[tenant] -= len(gone)
                kept = deque(j for j in queue if not match(j))
                if kept:
                    queues[name] = kept
                else:
                    del queues[name]
            if not queues:
                del self._tenants[tenant]
                self._tenant_queued.pop(tenant, None)
        self._queued -= len(removed)
        suspects = [j for j in self._suspects if match(j)]
        self._suspects = deque(j for j in self._suspects if not match(j))
        return removed + suspects

    # -- running -----------------------------------------------------------------------------

    def _next(self) -> Job | None:
        if self._exclusive:
            return None
        if self._suspects:
            if self._in_flight:
                return None  # let the pool drain, then run the suspect alone
            self._exclusive = True
            return self._suspects.popleft()
        if len(self._in_flight) >= self.max_in_flight or not self._tenants:
            return None
        tenant, queues = next(iter(self._tenants.items()))
        name, queue = next(iter(queues.items()))
        job = queue.popleft()
        self._queued -= 1
        self._tenant_queued[tenant] -= 1
        if queue:
            queues.move_to_end(name)
        else:
            del queues[name]
        if queues:
            self._tenants.move_to_end(tenant)
        else:
            del self._tenants[tenant]
            del self._tenant_queued[tenant]
        return job

    def start(self, process: Process) -> None:
        """Starts running queued jobs through ``process``, ``max_in_flight`` at a time."""
        self._runner = asyncio.create_task(self._run(process), name="ingest-scheduler")

    async def _run(self, process: Process) -> None:
        while True:
            job = self._next()
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._in_flight.add(job)
            task = asyncio.create_task(self._one(job, process))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _one(self, job: Job, process: Process) -> None:
        try:
            await process(job)
        except Exception:
            log.exception("processing %s in %s failed unexpectedly", job.file_id, job.store_id)
        finally:
            self._in_flight.discard(job)
            if job.suspect:
                self._exclusive = False
            self._wake.set()

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
