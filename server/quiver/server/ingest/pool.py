"""The worker pool: spawn-context processes, a per-file timeout, rebuilt after a crash."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from quiver.server.ingest.worker import WorkerInput, WorkerOutput, process, warm_up

log = logging.getLogger("quiver.ingest")


class WorkerCrashed(Exception):
    """The pool broke while the file was in it (a worker died); the pool has been rebuilt."""


class FileTimedOut(Exception):
    """The file took longer than the per-file timeout; its worker was killed."""


class IngestPool:
    def __init__(self, workers: int, file_timeout: float) -> None:
        self.workers = workers
        self.file_timeout = file_timeout
        self._context = multiprocessing.get_context("spawn")
        self._executor = self._new_executor()
        self.restarts = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=self._context, initializer=warm_up
        )

    async def start(self) -> None:
        """Starts every worker and waits until each has loaded the tokenizer."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, warm_up) for _ in range(self.workers))
        )

    def worker_pids(self) -> list[int]:
        processes = getattr(self._executor, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.pid is not None]

    async def run(self, job: WorkerInput) -> WorkerOutput:
        executor = self._executor
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor, process, job)
        try:
            return await asyncio.wait_for(future, self.file_timeout)
        except TimeoutError:
            self._rebuild(executor, f"a file ran past the {self.file_timeout:g} s timeout")
            raise FileTimedOut(
                f"processing took longer than the server's per-file timeout of "
                f"{self.file_timeout:g} s (--file-timeout)"
            ) from None
        except BrokenProcessPool as exc:
            self._rebuild(executor, "a worker process died")
            raise WorkerCrashed("the worker process handling this file died") from exc

    def _rebuild(self, broken: ProcessPoolExecutor, why: str) -> None:
        if broken is not self._executor:
            return  # another failure already replaced it
        log.warning("rebuilding the ingest pool: %s", why)
        self.restarts += 1
        self._executor = self._new_executor()
        # Hung workers never return: kill them so the old pool's other futures fail fast.
        processes = getattr(broken, "_processes", None) or {}
        for proc in list(processes.values()):
            proc.kill()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        processes = getattr(self._executor, "_processes", None) or {}
        self._executor.shutdown(wait=False, cancel_futures=True)
        for proc in list(processes.values()):
            proc.kill()
