"""The worker pool: spawn-context worker processes managed one by one, one file at a time each.

Each worker has its own duplex pipe (see `worker_process` for the protocol). A file is sent
to one idle worker; a thread of the pool's own (never the event loop, never the default
executor) waits for the answer. When a file runs past the per-file timeout only its worker
is killed and replaced; files on the other workers go on. A worker that dies with a file
(a segfault, a kill) fails that file alone with `WorkerCrashed` (the scheduler retries it
once, alone); one that dies while its address space was near the memory limit fails it
with `WorkerOutOfMemory` (not retried: it would die again).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from quiver.server.ingest.limits import GUARD_MARGIN, WorkerLimits, vm_size_bytes
from quiver.server.ingest.transport import recv_output
from quiver.server.ingest.worker import WorkerInput, WorkerOutput, out_of_memory_message
from quiver.server.ingest.worker_process import serve

log = logging.getLogger("quiver.ingest")

START_TIMEOUT = 120.0
"""Seconds a new worker may take to import and load the tokenizer (a loaded machine)."""
SAMPLE_INTERVAL = 0.1
"""Seconds between samples of a busy worker's address space (for telling an OOM death)."""
NEAR_LIMIT = 2 * GUARD_MARGIN
"""A worker that dies with its address space this close to the limit died of memory (native
code such as tiktoken's aborts when an allocation fails at the limit; the worker's own guard
stops files at GUARD_MARGIN)."""
RESPAWN_DELAY = 1.0


class WorkerCrashed(Exception):
    """The worker died while the file was in it; it has been replaced."""


class FileTimedOut(Exception):
    """The file took longer than the per-file timeout; its worker was killed and replaced."""


class WorkerOutOfMemory(Exception):
    """The worker died of memory with the file in it (not worth a retry); it was replaced."""


class WorkerStartFailed(RuntimeError):
    """A worker could not start (e.g. the memory limit is below what a worker maps at start)."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    peak_vm: int = field(default=0)


class IngestPool:
    def __init__(
        self, workers: int, file_timeout: float, limits: WorkerLimits | None = None
    ) -> None:
        self.workers = workers
        self.file_timeout = file_timeout
        self.limits = limits or WorkerLimits()
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        # One thread per busy worker plus one per worker being replaced. Workers are started
        # from these threads, which live as long as the pool: PR_SET_PDEATHSIG kills a worker
        # when the thread that started it ends (so at close, or when the server dies).
        self._threads = ThreadPoolExecutor(2 * workers, thread_name_prefix="quiver-ingest-pool")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._live: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts every worker and waits until each has loaded the tokenizer."""
        loop = asyncio.get_running_loop()
        workers = await asyncio.gather(
            *(loop.run_in_executor(self._threads, self._start_ready) for _ in range(self.workers))
        )
        for worker in workers:
            self._idle.put_nowait(worker)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._live if w.process.pid is not None]

    def close(self) -> None:
        self._closed = True
        with self._lock:
            live = list(self._live)
            self._live.clear()
        for worker in live:
            # Not its pipe: a pool thread may be polling it; it sees the pipe end and reaps.
            worker.process.kill()
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- one file ------------------------------------------------------------------------------

    async def run(self, job: WorkerInput) -> WorkerOutput:
        worker = await self._idle.get()
        loop = asyncio.get_running_loop()
        try:
            output = await loop.run_in_executor(self._threads, self._exchange, worker, job)
        except (WorkerCrashed, FileTimedOut, WorkerOutOfMemory) as exc:
            self._replace(worker, str(exc))
            raise
        except BaseException:
            # Cancelled, or a bug: the worker's state is unknown, so it is not reused. Killing
            # is a signal; the thread still waiting on it sees the pipe close and reaps it.
            worker.process.kill()
            self._replace(worker, "its file was abandoned")
            raise
        self._idle.put_nowait(worker)
        return output

    def _exchange(self, worker: _Worker, job: WorkerInput) -> WorkerOutput:
        """In a pool thread: send the file, wait for the answer (bounded by the timeout)."""
        try:
            if not worker.ready:
                self._wait_ready(worker)
            worker.peak_vm = 0
            worker.conn.send(job)
            if not self._wait_answer(worker):
                self._kill(worker)
                raise FileTimedOut(
                    f"the file took longer than {self.file_timeout:g} s to parse, chunk and "
                    "embed (--file-timeout); its worker was stopped"
                )
            return recv_output(worker.conn)
        except (EOFError, OSError, WorkerStartFailed):
            died_of_memory = worker.peak_vm >= self.limits.memory_bytes - NEAR_LIMIT
            self._kill(worker)
            if died_of_memory:
                raise WorkerOutOfMemory(out_of_memory_message(self.limits)) from None
            raise WorkerCrashed(
                f"the worker process handling this file died ({self._exit_of(worker)})"
            ) from None

    def _wait_answer(self, worker: _Worker) -> bool:
        """True once the worker has answered (or closed its pipe), False on timeout; samples
        the worker's address space meanwhile."""
        deadline = time.monotonic() + self.file_timeout
        pid = worker.process.pid or 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if worker.conn.poll(min(SAMPLE_INTERVAL, left)):
                return True
            worker.peak_vm = max(worker.peak_vm, vm_size_bytes(pid))

    # -- starting and replacing workers --------------------------------------------------------

    def _start(self) -> _Worker:
        """In a pool thread: a new worker process, not yet ready."""
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=serve, args=(theirs, self.limits), name="quiver-ingest-worker", daemon=True
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        with self._lock:
            if self._closed:
                process.kill()
                raise WorkerStartFailed("the pool is closed")
            self._live.add(worker)
        return worker

    def _start_ready(self) -> _Worker:
        worker = self._start()
        try:
            self._wait_ready(worker)
        except (EOFError, OSError) as exc:
            self._kill(worker)
            raise WorkerStartFailed(
                f"an ingest worker died while starting ({self._exit_of(worker)})"
            ) from exc
        except WorkerStartFailed:
            self._kill(worker)
            raise
        return worker

    def _wait_ready(self, worker: _Worker) -> None:
        """Raises EOFError if the worker dies first, WorkerStartFailed if it cannot work."""
        if not worker.conn.poll(START_TIMEOUT):
            raise WorkerStartFailed(f"an ingest worker did not start within {START_TIMEOUT:g} s")
        kind, detail = worker.conn.recv()
        if kind != "ready":
            raise WorkerStartFailed(str(detail))
        worker.ready = True

    def _kill(self, worker: _Worker) -> None:
        with self._lock:
            self._live.discard(worker)
        worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()

    @staticmethod
    def _exit_of(worker: _Worker) -> str:
        code = worker.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def _replace(self, worker: _Worker, why: str) -> None:
        """On the loop: counts the restart and starts a replacement in a pool thread."""
        if self._closed:
            return
        log.warning("replacing ingest worker %s: %s", worker.process.pid, why)
        self.restarts += 1
        self._respawn()

    def _respawn(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, self._start)

        def done(f: asyncio.Future[_Worker]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                self._idle.put_nowait(f.result())
            elif not self._closed:
                log.error("could not start an ingest worker (retrying): %s", exc)
                loop.call_later(RESPAWN_DELAY, self._respawn)

        future.add_done_callback(done)
