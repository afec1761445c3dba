"""The ingest executor ``--ingest`` asks for: the local process pool, or Ray tasks (whose
module, and Ray itself, are imported only then)."""

from __future__ import annotations

from quiver.server.core.ports import IngestBackend
from quiver.server.ingest.ingest_choice import IngestChoice
from quiver.server.ingest.limits import WorkerLimits
from quiver.server.ingest.pool import IngestPool


def make_executor(
    choice: IngestChoice,
    *,
    workers: int,
    ray_tasks: int,
    ray_task_retries: int,
    file_timeout: float,
    limits: WorkerLimits,
) -> IngestBackend:
    """ValueError naming the flag when Ray is asked for but not installed."""
    if not choice.on_ray:
        return IngestPool(workers, file_timeout, limits)
    try:
        from quiver.server.ingest.ray_executor import RayExecutor
    except ImportError as exc:
        raise ValueError(
            f"--ingest {choice.address if choice.address != 'auto' else 'ray:auto'} needs Ray: "
            f"pip install 'quiver-vectorstore[ray]' ({exc})"
        ) from None
    return RayExecutor(
        choice.address,
        max_in_flight=ray_tasks,
        file_timeout=file_timeout,
        limits=limits,
        retries=ray_task_retries,
    )


def in_flight(choice: IngestChoice, *, workers: int, ray_tasks: int) -> int:
    """Files the scheduler lets into the executor at once."""
    return ray_tasks if choice.on_ray else workers
