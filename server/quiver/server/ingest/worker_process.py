"""The main loop of one ingest worker process: limits, then one file at a time over a pipe.

Protocol on the worker's end of its duplex pipe:

- worker → pool, once: ``("ready", pid)`` after warm-up, or ``("error", message)`` if it
  cannot work within its limits (then it exits);
- pool → worker: a `WorkerInput`, or None to exit;
- worker → pool, per file: the `WorkerOutput` (see `transport`).

Limits: the address space (RLIMIT_AS) is capped at the memory limit, so an allocation past it
raises MemoryError and fails the file with invalid_file; each file gets a CPU budget
(RLIMIT_CPU's soft limit moved to "used so far + budget" before each file), whose SIGXCPU
raises `ParseTimeExceeded` in the worker and fails the file with invalid_file.
"""

from __future__ import annotations

import os
import resource
import signal
from multiprocessing.connection import Connection
from types import FrameType

from quiver.server.core.error_codes import ErrorCode
from quiver.server.ingest.limits import MiB, WorkerLimits, vm_size_bytes
from quiver.server.ingest.transport import send_output
from quiver.server.ingest.worker import WorkerInput, WorkerOutput, process, warm_up

HEADROOM_AFTER_WARM_UP = 128 * MiB


class ParseTimeExceeded(BaseException):
    """The file used up its CPU budget (raised from the SIGXCPU handler). A BaseException,
    so that no library's `except Exception` swallows it."""


_armed = False


def _on_sigxcpu(signum: int, frame: FrameType | None) -> None:
    global _armed
    if not _armed:
        return
    _disarm()
    raise ParseTimeExceeded


def _cpu_seconds_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _arm(budget: float) -> None:
    global _armed
    if budget == float("inf"):
        return
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = int(_cpu_seconds_used() + budget) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    _armed = True


def _disarm() -> None:
    global _armed
    _armed = False
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))


def _limit_memory(limits: WorkerLimits) -> str | None:
    """Caps the address space; an error message if the limit leaves no room to work."""
    mapped = vm_size_bytes(os.getpid())
    if mapped and mapped + HEADROOM_AFTER_WARM_UP > limits.memory_bytes:
        return (
            f"the worker memory limit of {limits.memory_mib:,} MiB (--worker-memory) is too "
            f"small: a worker maps {mapped // MiB:,} MiB before reading any file"
        )
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard == resource.RLIM_INFINITY or hard > limits.memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    return None


def parse_time_message(limits: WorkerLimits) -> str:
    return (
        f"the file took longer than {limits.parse_seconds:g} s of CPU to parse, chunk and "
        "embed (--file-parse-seconds)"
    )


def serve(conn: Connection, limits: WorkerLimits) -> None:
    """The worker's whole life (the spawn target)."""
    warm_up()
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    problem = _limit_memory(limits)
    if problem is not None:
        conn.send(("error", problem))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return  # the server closed the pipe
        if job is None:
            return
        assert isinstance(job, WorkerInput)
        output = _run(job, limits)
        send_output(conn, output)
        del output


def _run(job: WorkerInput, limits: WorkerLimits) -> WorkerOutput:
    try:
        try:
            _arm(limits.parse_seconds)
            return process(job, limits)
        finally:
            _disarm()
    except ParseTimeExceeded:
        return WorkerOutput(error=(ErrorCode.INVALID_FILE, parse_time_message(limits)))
