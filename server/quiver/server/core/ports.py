"""The replaceable parts the core works with, in its own terms (``typing.Protocol``s).

Today's implementations: ``ingest/pool.py`` ``IngestPool`` and ``ingest/ray_executor.py``
``RayExecutor`` (the ingest executors),
``storage/blobs.py`` ``BlobStore`` (the blob store), ``index/manager.py`` ``IndexManager``
with ``index/hnsw.py`` ``VectorIndex`` (the vector index). The repositories of the
database are in ``storage/interfaces.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt
from quiver.server.index.manager import ReconcileReport, VectorLoader
from quiver.server.ingest.worker import WorkerInput, WorkerOutput


class IngestExecutor(Protocol):
    """Runs one file's parse → chunk → embed somewhere else than the event loop.

    Raises ``FileTimedOut`` or ``WorkerOutOfMemory`` (the file's doing) and ``WorkerCrashed``
    (``ingest/pool.py``) when the work did not finish."""

    async def run(self, job: WorkerInput) -> WorkerOutput: ...


class IngestBackend(IngestExecutor, Protocol):
    """An ingest executor with a life: started before files flow, closed at the end."""

    @property
    def restarts(self) -> int:
        """Workers replaced (or tasks run again) after a crash or a timeout."""
        ...

    async def start(self) -> None:
        """Raises ``WorkerStartFailed`` when it cannot work."""
        ...

    def worker_pids(self) -> list[int]: ...

    def close(self) -> None: ...


class BlobWriter(Protocol):
    """One upload's bytes on their way into the blob store."""

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...

    def write(self, data: bytes) -> None: ...

    def commit(self) -> str: ...

    def abort(self) -> None: ...


class Blobs(Protocol):
    """Uploaded files' bytes, by sha256 (content-addressed)."""

    def path_for(self, sha256: str) -> Path: ...

    def writer(self) -> BlobWriter: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def delete(self, sha256: str) -> None: ...


class VectorIndex(Protocol):
    """One store's approximate nearest-neighbour index of unit vectors, by chunk id."""

    def add(self, labels: npt.ArrayLike, vectors: npt.ArrayLike) -> None: ...

    def mark_deleted(self, labels: npt.ArrayLike) -> None: ...

    def knn(
        self,
        vectors: npt.ArrayLike,
        k: int,
        filter: Callable[[int], bool] | None = None,
        ef: int | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...

    def vectors(self, labels: npt.ArrayLike) -> npt.NDArray[np.float32]: ...


class VectorIndexes(Protocol):
    """The indexes of all stores."""

    def get(self, store_id: str, dim: int) -> VectorIndex: ...

    def changed(self, store_id: str, index: VectorIndex) -> None: ...

    def drop(self, store_id: str) -> None: ...

    def reconcile(
        self, store_id: str, dim: int, stored: npt.NDArray[np.int64], load: VectorLoader
    ) -> ReconcileReport: ...

    def save_all(self) -> int: ...
