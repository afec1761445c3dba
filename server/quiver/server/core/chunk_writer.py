"""Writes a file's chunks to the database and its vectors to the store's index, from a thread, in
bounded slices, so neither the event loop nor other writers wait long for any of it.

On SQLite (``ChunkRepository.in_commit()`` None) chunks are written in slices of their own
while their file is still ``in_progress``; on PostgreSQL they are inserted in the file's
completing transaction instead (``Processing._complete``), and this module only deletes.
Sliced, chunks are written while their file is still ``in_progress``: search returns only chunks of
``completed`` files, and start-up recovery deletes the chunks of files left in progress. Each
slice first checks, in its own transaction, that the job is still wanted (same generation,
still in progress, its batch not cancelled), so a file detached, re-attached or cancelled
meanwhile stops at its next slice. The file becomes ``completed`` afterwards, in one short
transaction on the event loop (``Processing``).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import numpy.typing as npt
from quiver.server.core.ports import VectorIndex
from quiver.server.storage.interfaces import ChunkRepository, Storage
from quiver.server.storage.rows import NotWanted, Owner

__all__ = ["ChunkWriter", "NotWanted", "Owner", "PendingLabels", "add_to_index"]

SLICE_SECONDS = 0.02
"""How long one write transaction should hold SQLite's write lock: the event loop's own
writes wait at most about this long. Rows per slice adapt to it (a chunk
costs from ~0.05 ms to a few ms, by its length and the machine's load)."""
MIN_SLICE_ROWS = 8
MAX_SLICE_ROWS = 256
INDEX_SLICE = 256
"""Vectors per hnswlib ``add_items`` call; the index's write lock is released in between, so
searches of the store go on during a large file's indexing."""


class Pacer:
    """Rows per slice, adjusted after each slice so that a slice takes about SLICE_SECONDS."""

    def __init__(self, rows: int = MIN_SLICE_ROWS) -> None:
        self.rows = rows

    def took(self, seconds: float) -> None:
        factor = SLICE_SECONDS / max(seconds, 1e-5)
        self.rows = max(
            MIN_SLICE_ROWS, min(MAX_SLICE_ROWS, int(self.rows * min(2.0, max(0.5, factor))))
        )


class ChunkWriter:
    def __init__(self, db: Storage) -> None:
        self.db = db
        self.rows: ChunkRepository = db.chunks

    def write(
        self,
        owner: Owner,
        texts: list[str],
        token_counts: list[int],
        vectors: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.int64]:
        """Inserts the chunks (blocking: call from a thread); returns their ids in order.

        Raises ``NotWanted`` once the job is no longer wanted, after deleting what it wrote;
        on any other error the rows written so far stay (the caller deletes them, or start-up
        recovery does).
        """
        ids = np.empty(len(texts), dtype=np.int64)
        done = 0
        pacer = Pacer()
        try:
            while done < len(texts):
                end = min(done + pacer.rows, len(texts))
                started = time.perf_counter()
                ids[done:end] = self.rows.insert_slice(
                    owner, texts, token_counts, vectors, done, end
                )
                pacer.took(time.perf_counter() - started)
                done = end
        except NotWanted:
            self.delete(ids[:done])
            raise
        return ids

    def delete(self, ids: npt.NDArray[np.int64]) -> None:
        """Deletes chunks by id (those already gone are skipped), in slices."""
        pacer = Pacer()
        start = 0
        while start < len(ids):
            part = [int(i) for i in ids[start : start + pacer.rows]]
            began = time.perf_counter()
            self.rows.delete_slice(part)
            pacer.took(time.perf_counter() - began)
            start += len(part)

    def delete_file(self, store_id: str, file_id: str) -> int:
        """Deletes every chunk of one store file, in slices; returns how many there were."""
        return self._delete_of(store_id, file_id)

    def delete_leftovers(self, owner: Owner) -> list[int]:
        """Deletes the chunks a failed attempt of ``owner``'s job left, in slices, as long as
        the file is still in progress with the job's generation (never those of a newer
        attachment of the same file); returns their ids."""
        pacer = Pacer()
        deleted: list[int] = []
        while True:
            rows = pacer.rows
            began = time.perf_counter()
            ids = self.rows.delete_leftovers_slice(owner, rows)
            if ids is None:
                return deleted
            deleted += ids
            pacer.took(time.perf_counter() - began)
            if len(ids) < rows:
                return deleted

    def delete_store(self, store_id: str) -> int:
        """Deletes every chunk of a (deleted) store, in slices; returns how many there were."""
        return self._delete_of(store_id, None)

    def _delete_of(self, store_id: str, file_id: str | None) -> int:
        deleted = 0
        pacer = Pacer()
        while True:
            rows = pacer.rows
            began = time.perf_counter()
            n = self.rows.delete_of_slice(store_id, file_id, rows)
            pacer.took(time.perf_counter() - began)
            deleted += n
            if n < rows:
                return deleted


def add_to_index(
    index: VectorIndex, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]
) -> None:
    """Adds the vectors in slices (blocking: call from a thread)."""
    for start in range(0, len(ids), INDEX_SLICE):
        index.add(ids[start : start + INDEX_SLICE], vectors[start : start + INDEX_SLICE])


class PendingLabels:
    """Labels already in a store's index whose chunks are not part of a completed file (being
    committed, or being taken back out): searches skip them."""

    def __init__(self) -> None:
        self._by_store: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def add(self, store_id: str, ids: npt.NDArray[np.int64]) -> None:
        with self._lock:
            self._by_store.setdefault(store_id, set()).update(ids.tolist())

    def discard(self, store_id: str, ids: npt.NDArray[np.int64]) -> None:
        with self._lock:
            held = self._by_store.get(store_id)
            if held is not None:
                held.difference_update(ids.tolist())
                if not held:
                    del self._by_store[store_id]

    def of(self, store_id: str) -> frozenset[int]:
        """A snapshot of the store's pending labels (usually empty)."""
        with self._lock:
            return frozenset(self._by_store.get(store_id, ()))
