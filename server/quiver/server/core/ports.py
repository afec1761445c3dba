"""The replaceable parts the core works with, in its own terms (``typing.Protocol``s).

Today's implementations: ``ingest/pool.py`` ``IngestPool`` and ``ingest/ray_executor.py``
``RayExecutor`` (the ingest executors),
``storage/blobs.py`` ``BlobStore`` (the blob store), ``index/manager.py`` ``IndexManager``
with ``index/hnsw.py`` ``VectorIndex`` (the vector index), ``index/keyword_manager.py``
``KeywordIndexes`` with ``index/keyword.py`` ``StoreKeywordIndex`` (the keyword index, on
tantivy). The repositories of the database are in ``storage/interfaces.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from quiver.server.index.keyword_manager import KeywordReconcileReport, RowLoader
from quiver.server.index.manager import ReconcileReport, VectorLoader
from quiver.server.ingest.worker import WorkerInput, WorkerOutput
from quiver.server.storage.blob_location import BlobLocation, BlobRef


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


class BlobReader(Protocol):
    """A stored blob read piece by piece (``read`` may block: call it in a thread)."""

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...


class Blobs(Protocol):
    """Uploaded files' bytes, by sha256 (content-addressed). Every method but ``ref`` and
    ``open`` may block (disk or network): run them off the event loop."""

    @property
    def location(self) -> BlobLocation: ...

    def ref(self, sha256: str, size: int) -> BlobRef:
        """The blob's address, for an ingest worker (which reads it with ``read_blob``)."""
        ...

    def writer(self) -> BlobWriter: ...

    def open(self, sha256: str) -> BlobReader:
        """Reading starts at the first ``read`` (FileNotFoundError there if missing)."""
        ...

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

    def remove_held(self, store_id: str, labels: Sequence[int]) -> None:
        """``labels`` marked deleted in the store's index, if it is open here."""
        ...

    def drop(self, store_id: str) -> None: ...

    def reconcile(
        self, store_id: str, dim: int, stored: npt.NDArray[np.int64], load: VectorLoader
    ) -> ReconcileReport: ...

    def save_all(self) -> int: ...


class KeywordIndex(Protocol):
    """One store's full-text index over its completed chunks (blocking: from a thread).
    Terms are words as the index holds them (``terms`` of a text)."""

    def terms(self, text: str) -> list[str]: ...

    def document_frequencies(self, terms: Sequence[str]) -> tuple[int, list[int]]: ...

    def best(
        self, terms: Sequence[str], k: int, files: Sequence[str] | None
    ) -> list[tuple[int, float]]: ...

    def counted(
        self, terms: Sequence[str], k: int, files: Sequence[str] | None
    ) -> list[tuple[int, int, list[int], int]]: ...

    def average_length(self) -> float: ...

    def mean_file_length(self) -> float: ...

    def file_lengths(self, keys: Sequence[int]) -> dict[int, int]: ...

    def phrased(
        self, phrases: Sequence[Sequence[str]], k: int, files: Sequence[str] | None
    ) -> list[int]: ...

    def phrases_held(
        self, phrases: Sequence[Sequence[str]], among: Sequence[int]
    ) -> dict[int, int]: ...


class KeywordIndexes(Protocol):
    """The keyword indexes of all stores: writes told from the event loop and committed in
    groups by a thread, searches that read their writes, reconciled with the rows at start."""

    def searchable(self, store_id: str) -> KeywordIndex: ...

    def add(self, store_id: str, rows: list[tuple[int, str, str]]) -> bool: ...

    def flush(self, store_id: str) -> None: ...

    def remove_files(self, store_id: str, file_ids: list[str]) -> None: ...

    def drop(self, store_id: str) -> None: ...

    def forget_others(self, store_ids: set[str]) -> list[str]: ...

    def reconcile(
        self, store_id: str, stored: npt.NDArray[np.int64], load: RowLoader
    ) -> KeywordReconcileReport: ...

    def close(self) -> None: ...
