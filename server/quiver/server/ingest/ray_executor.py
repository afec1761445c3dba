"""Ingest on Ray (``--ingest ray:auto`` or ``ray://HOST:PORT``): one Ray task per file.

Each task runs the worker's own ``process`` (parse → chunk → embed, ``ingest/worker.py``)
with ``num_cpus=1``, so a file gives the same chunks and vectors as in the local pool. At most
``max_in_flight`` tasks are submitted at once (``--ray-tasks``); further files wait here, not
in Ray. Results are awaited through the ref's future (Ray deserializes them on its own
thread), never by blocking the event loop.

Ray is the executor only, never the queue of record: tasks are submitted with Ray's retries
off, and the database lease (``core/job_leases.py``) decides who finishes a file. Here:

- past the per-file timeout (``--file-timeout``) the task is cancelled with
  ``ray.cancel(force=True)`` (its worker process is killed) and ``FileTimedOut`` is raised,
  as the local pool does (the file fails with ``invalid_file``);
- a task lost with its worker process or its node (``WorkerCrashedError``,
  ``NodeDiedError``, ``ObjectLostError`` …) is submitted again, up to ``retries`` times,
  then ``WorkerCrashed`` is raised (the scheduler retries the file once more, alone);
- a task that Ray's memory monitor killed raises ``WorkerOutOfMemory`` (not retried).

Limits: a Ray worker's address space is not capped (Ray workers map far more than the local
pool's workers, and live on after a file), so the parsers' size caps follow from
``--worker-memory`` as in the local pool but the address-space guard is off, and so is the
CPU budget (``--file-parse-seconds``): the wall-clock ``--file-timeout`` bounds a file.

The job carries the file's blob address (``BlobRef``: sha256, size, where the blobs live),
and the task reads it there: the default data directory serves only tasks on the server's
machine; a cluster needs ``--blobs`` a directory every node mounts, or ``s3://…`` (with the
AWS variables in the nodes' environment).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.exceptions
import ray.util
from quiver.server.ingest.chunking import get_encoding
from quiver.server.ingest.limits import WorkerLimits
from quiver.server.ingest.pool import (
    FileTimedOut,
    WorkerCrashed,
    WorkerOutOfMemory,
    WorkerStartFailed,
)
from quiver.server.ingest.worker import WorkerInput, WorkerOutput, out_of_memory_message, process
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger("quiver.ingest")

TASK_NAME = "quiver_ingest_file"
"""The Ray task's name (a worker running a file shows ``ray::quiver_ingest_file``)."""

LOST: tuple[type[BaseException], ...] = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,  # also ObjectReconstructionFailedError, OwnerDiedError …
    ray.exceptions.ObjectFetchTimedOutError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.TaskUnschedulableError,
)
"""The task did not finish for reasons outside the file: run it again."""


@dataclass(frozen=True)
class RayTaskLimits(WorkerLimits):
    """The parsers' size caps of ``WorkerLimits``, without the address-space guard (a Ray
    worker's address space is Ray's, not the file's)."""

    def check_memory(self) -> None:
        return None

    @classmethod
    def of(cls, limits: WorkerLimits) -> RayTaskLimits:
        return cls(memory_bytes=limits.memory_bytes, parse_seconds=limits.parse_seconds)


def warm_task() -> int:
    """Loads the tokenizer in a Ray worker, so files don't pay for it."""
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    get_encoding()
    return os.getpid()


CLIENT_SESSION_FAILED = ("Starting Ray client server failed", "Initialization failure from server")
"""What Ray Client answers when the session server the head's proxy starts for a new client
exits at once: an open Ray bug (ray-project/ray#63202, the proxy forks it while gRPC threads
run; seen here on 3 of 12 first connections to a fresh head). A second try gets a new one."""
CLIENT_ATTEMPTS = 4
CLIENT_RETRY_SECONDS = 1.0


def connect_client(address: str) -> None:
    """``ray.init`` through Ray Client at ``address`` (``ray://HOST:PORT``), tried again (up to
    CLIENT_ATTEMPTS, a second apart, each logged) when the head's session server dies at start;
    any other error at once."""
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address, log_to_driver=False)
            return
        except ConnectionAbortedError as exc:
            if attempt == CLIENT_ATTEMPTS or not any(t in str(exc) for t in CLIENT_SESSION_FAILED):
                raise
            log.warning(
                "Ray Client session at %s failed to start (%d of %d): trying again",
                address,
                attempt,
                CLIENT_ATTEMPTS,
            )
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(CLIENT_RETRY_SECONDS * attempt)


def warm_placements(per_node: int) -> list[Any]:
    """Where the start-up warm-up runs: on every live node with CPUs, up to ``per_node``
    tasks (its CPUs) each, pinned there (soft: a node gone meanwhile runs it elsewhere).
    Warmed on the submitter's node only, a batch's first files all went there while the
    other nodes' first workers were still importing (a cold worker takes seconds), so
    short batches ran mostly on one node."""
    placements: list[Any] = []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        cpus = int(node.get("Resources", {}).get("CPU", 0))
        if node.get("Alive") and cpus >= 1:
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=True)
            placements.extend([strategy] * min(cpus, per_node))
    return placements or ["DEFAULT"]


def file_task(job: WorkerInput, limits: RayTaskLimits) -> tuple[WorkerOutput, str]:
    """In a Ray worker: the worker's ``process``, its vectors as one array (one object in
    Ray's object store, read by the server without a copy), and the node's address."""
    warm_task()
    node: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    output = process(job, limits)
    if output.error is not None or not output.texts:
        return WorkerOutput(error=output.error, seconds=output.seconds), node
    vectors = np.concatenate(output.vector_blocks).astype(np.float32, copy=False)
    return WorkerOutput(
        texts=output.texts,
        token_counts=output.token_counts,
        vectors=vectors,
        seconds=output.seconds,
    ), node


class RayExecutor:
    """An ``IngestExecutor`` on Ray. ``start`` connects (in a thread); ``close`` shuts Ray
    down if this executor started it."""

    def __init__(
        self,
        address: str,
        *,
        max_in_flight: int,
        file_timeout: float,
        limits: WorkerLimits,
        retries: int = 2,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"--ray-tasks must be at least 1, not {max_in_flight}")
        if retries < 0:
            raise ValueError(f"--ray-task-retries must be 0 or more, not {retries}")
        self.address = address
        self.max_in_flight = max_in_flight
        self.file_timeout = file_timeout
        self.limits = RayTaskLimits.of(limits)
        self.retries = retries
        self.files_by_node: Counter[str] = Counter()
        """Files whose task finished, by the address of the Ray node that ran it."""
        self.restarts = 0
        """Tasks submitted again after their worker or node was lost, or cancelled at the
        timeout (the local pool's count of replaced workers)."""
        self._slots = asyncio.Semaphore(max_in_flight)
        self._started_ray = False
        self._file: Any = None
        self._warm: Any = None
        self._warm_on: list[Any] = []
        # Connecting and cancelling are RPCs: on threads of our own, never the event loop.
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="quiver-ray")

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._threads, self._connect)
        except WorkerStartFailed:
            raise
        except Exception as exc:
            raise WorkerStartFailed(
                f"could not connect to Ray at {self.address!r} (--ingest): {exc}"
            ) from exc
        warm = [self._warm.options(scheduling_strategy=where).remote() for where in self._warm_on]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(ref.future()) for ref in warm)),
                timeout=120,
            )
        except (TimeoutError, ray.exceptions.RayError) as exc:
            raise WorkerStartFailed(f"Ray workers could not load the tokenizer: {exc}") from exc

    def _connect(self) -> None:
        if not ray.is_initialized():
            if self.address == "auto":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                connect_client(self.address)
            self._started_ray = True
        # SPREAD: a batch's files go over every node, not first onto the server's own.
        self._file = ray.remote(num_cpus=1, max_retries=0)(file_task).options(
            name=TASK_NAME, scheduling_strategy="SPREAD"
        )
        self._warm = ray.remote(num_cpus=1, max_retries=0)(warm_task)
        self._warm_on = warm_placements(self.max_in_flight)
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        log.info("ingest on Ray", extra={"address": self.address, "resources": resources})
        cpus = int(resources.get("CPU", 0))
        if cpus < self.max_in_flight:
            log.warning(
                "--ray-tasks %d is more than the Ray cluster's %d CPUs: tasks wait in Ray, "
                "and --file-timeout counts from submission",
                self.max_in_flight,
                cpus,
            )

    def worker_pids(self) -> list[int]:
        """Processes on this machine running one of these files now (by Ray's process title,
        ``ray::quiver_ingest_file``)."""
        return local_task_pids()

    def close(self) -> None:
        if self.files_by_node:
            log.info("ingest on Ray: files by node", extra={"nodes": dict(self.files_by_node)})
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- one file ------------------------------------------------------------------------------

    async def run(self, job: WorkerInput) -> WorkerOutput:
        async with self._slots:
            attempt = 0
            while True:
                try:
                    return await self._once(job)
                except LOST as exc:
                    if attempt >= self.retries:
                        raise WorkerCrashed(
                            f"the Ray task handling this file was lost {attempt + 1} times "
                            f"({type(exc).__name__})"
                        ) from None
                    attempt += 1
                    self.restarts += 1
                    log.warning(
                        "Ray task of %s lost (%s): running it again (%d of %d)",
                        job.filename,
                        type(exc).__name__,
                        attempt,
                        self.retries,
                    )

    async def _once(self, job: WorkerInput) -> WorkerOutput:
        ref = self._file.remote(job, self.limits)
        result = asyncio.wrap_future(ref.future())
        result.add_done_callback(_retrieve)
        try:
            answer = await asyncio.wait_for(asyncio.shield(result), self.file_timeout)
        except TimeoutError:
            self.restarts += 1
            self._cancel(ref)
            raise FileTimedOut(
                f"the file took longer than {self.file_timeout:g} s to parse, chunk and "
                "embed (--file-timeout); its Ray task was cancelled"
            ) from None
        except asyncio.CancelledError:
            self._cancel(ref)
            raise
        except ray.exceptions.OutOfMemoryError:
            raise WorkerOutOfMemory(out_of_memory_message(self.limits)) from None
        except ray.exceptions.TaskCancelledError:
            raise WorkerCrashed("the Ray task handling this file was cancelled") from None
        output, node = answer
        assert isinstance(output, WorkerOutput)
        self.files_by_node[str(node)] += 1
        return output

    def _cancel(self, ref: Any) -> None:
        """Kills the task's worker process (on a thread: an RPC)."""
        self._threads.submit(_cancel_quietly, ref)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Marks a result's exception as seen (a cancelled task's answer is never awaited)."""
    if not future.cancelled():
        future.exception()


def _cancel_quietly(ref: Any) -> None:
    try:
        ray.cancel(ref, force=True)
    except Exception:  # already finished, or Ray is gone: nothing left to stop
        log.debug("cancelling a Ray task failed", exc_info=True)


def local_task_pids() -> list[int]:
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read(200)
        except OSError:
            continue
        if title.startswith(f"ray::{TASK_NAME}".encode()):
            pids.append(int(entry))
    return pids
