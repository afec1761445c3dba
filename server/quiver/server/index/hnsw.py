"""One hnswlib index (cosine) per vector store, guarded by a readers/writer lock.

hnswlib 0.8 behaviour this module relies on (checked by tests/test_index.py):

- ``add_items`` on a label that is already present replaces its vector in place (no new
  slot); on a label marked deleted it also un-deletes it. So ``add`` is an upsert.
- ``mark_deleted`` raises on unknown or already deleted labels; deleted labels stay in
  ``get_ids_list()`` and in ``element_count`` and keep their slot; the deleted flags are
  saved with the index. hnswlib does not expose which labels are deleted, so after a load
  they are found with ``get_items`` (which raises for deleted labels) over label ranges,
  splitting the ranges that fail.
- ``load_index`` resets ``ef`` to 10 and does not check the dimension, so ``open`` checks
  the dimension stored in the file header and sets ``ef`` again.
- ``load_index`` trusts the file (damaged links segfault the first search) and
  ``save_index`` reports no write error: ``open`` and ``save`` go through ``integrity``
  (a checksum sidecar beside each index, and a check of what was written).
- ``knn_query`` raises "Cannot return the results in a contiguous 2D array" when it finds
  fewer than k results. With a filter or deletions, hnswlib keeps searching until it holds
  max(ef, k) results or has visited every reachable node, so a larger ef cannot find
  more: ``knn`` instead counts the matches reached (through the filter callback) and asks
  again for that many.

Locking: ``add`` and ``mark_deleted`` take the lock exclusively; ``knn``, ``labels`` and
``save`` share it (hnswlib searches and ``save_index`` only read the graph, and
``knn_query`` releases the GIL, so queries run in parallel). Saves are also serialised
among themselves. A ``knn`` call with its own ``ef`` takes the lock exclusively, because
hnswlib's ef is a property of the whole index.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt
from quiver.server.index import integrity
from quiver.server.index.rwlock import RWLock

Labels = npt.NDArray[np.int64]
Distances = npt.NDArray[np.float32]
LabelFilter = Callable[[int], bool]

INITIAL_CAPACITY = 1024
GROWTH = 1.5
_DELETED_SCAN_CHUNK = 1024
_TOO_FEW = "contiguous 2D array"


class VectorIndex:
    """An hnswlib cosine index of float32 vectors keyed by non-negative int64 labels.

    ``__init__`` makes an empty index; ``open`` loads ``path`` when it exists. ``m`` and
    ``ef_construction`` apply to new indexes; a loaded index keeps those it was built with.
    """

    def __init__(
        self,
        path: Path,
        dim: int,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        add_threads: int = 2,
        *,
        _loading: bool = False,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if path.suffix == ".tmp":
            raise ValueError(f"index path must not end in .tmp: {path}")
        self.path = path
        self.dim = dim
        self._ef_search = ef_search
        self._add_threads = add_threads
        self._lock = RWLock()
        self._save_lock = threading.Lock()
        self._index = hnswlib.Index(space="cosine", dim=dim)
        self._all = np.zeros(0, dtype=np.int64)  # sorted labels held, deleted or not
        self._deleted: set[int] = set()
        if not _loading:
            self._index.init_index(
                max_elements=INITIAL_CAPACITY, M=m, ef_construction=ef_construction
            )
            self._index.set_ef(ef_search)

    @classmethod
    def open(
        cls,
        path: Path,
        dim: int,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        add_threads: int = 2,
    ) -> VectorIndex:
        """Load the index saved at ``path``, or make an empty one if there is none."""
        path.with_suffix(".tmp").unlink(missing_ok=True)  # left by an interrupted save
        integrity.sidecar_tmp_path(path).unlink(missing_ok=True)
        if not path.exists():
            integrity.sidecar_path(path).unlink(missing_ok=True)
            return cls(path, dim, m, ef_construction, ef_search, add_threads)
        index = cls(path, dim, m, ef_construction, ef_search, add_threads, _loading=True)
        index._load()
        return index

    def _load(self) -> None:
        """Loads ``path`` once it matches its sidecar (hnswlib trusts whatever it reads)."""
        sidecar, header = integrity.verify_file(self.path, self.dim)
        self._index.load_index(
            str(self.path), max_elements=max(header.max_elements, INITIAL_CAPACITY)
        )
        self._index.set_ef(self._ef_search)
        self._resync()
        integrity.verify_labels(self.path, sidecar, self._all, len(self._deleted))

    def _resync(self) -> None:
        """Recompute the label and deleted sets from hnswlib."""
        self._all = np.sort(np.asarray(self._index.get_ids_list(), dtype=np.int64))
        self._deleted = set()
        pending = [
            self._all[i : i + _DELETED_SCAN_CHUNK]
            for i in range(0, self._all.size, _DELETED_SCAN_CHUNK)
        ]
        while pending:
            chunk = pending.pop()
            try:
                self._index.get_items(chunk)  # raises if any label in it is deleted
            except RuntimeError:
                if chunk.size == 1:
                    self._deleted.add(int(chunk[0]))
                else:
                    half = chunk.size // 2
                    pending += [chunk[:half], chunk[half:]]

    # -- properties ------------------------------------------------------------------------

    @property
    def ef_search(self) -> int:
        """The ef hnswlib searches with (read back from hnswlib)."""
        with self._lock.read():
            return int(self._index.ef)

    @property
    def capacity(self) -> int:
        """Slots allocated in hnswlib (grows on demand)."""
        with self._lock.read():
            return int(self._index.get_max_elements())

    @property
    def live_count(self) -> int:
        """Labels present and not deleted."""
        with self._lock.read():
            return self._all.size - len(self._deleted)

    @property
    def deleted_count(self) -> int:
        """Deleted labels still holding a slot (a rebuild reclaims them)."""
        with self._lock.read():
            return len(self._deleted)

    def labels(self) -> Labels:
        """The live labels, sorted."""
        with self._lock.read():
            deleted = np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted))
            return np.setdiff1d(self._all, deleted, assume_unique=True)

    def holds(self, labels: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether each of ``labels`` is in the index and not deleted."""
        ids = np.asarray(labels, dtype=np.int64).reshape(-1)
        with self._lock.read():
            held = self._holds(ids)
            if self._deleted:
                held &= ~np.isin(ids, np.fromiter(self._deleted, dtype=np.int64))
            return held

    # -- writes ----------------------------------------------------------------------------

    def add(self, labels: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Insert or replace (and un-delete) the vectors for ``labels``.

        A label given twice in one call keeps its last vector.
        """
        ids, data = self._check_batch(labels, vectors)
        if ids.size == 0:
            return
        with self._lock.write():
            new = ids[~self._holds(ids)]
            needed = int(self._index.element_count) + new.size
            capacity = int(self._index.get_max_elements())
            if needed > capacity:
                self._index.resize_index(max(needed, int(capacity * GROWTH)))
            try:
                self._index.add_items(data, ids, num_threads=self._add_threads)
            except BaseException:
                self._resync()
                raise
            if new.size and (self._all.size == 0 or new.min() > self._all[-1]):
                # The usual case (chunk ids only grow): append, no O(n log n) union per add.
                self._all = np.concatenate((self._all, np.sort(new)))
            elif new.size:
                self._all = np.union1d(self._all, new)
            self._deleted.difference_update(ids.tolist())

    def mark_deleted(self, labels: npt.ArrayLike) -> None:
        """Delete ``labels``; labels not present or already deleted are ignored."""
        ids = np.unique(np.asarray(labels, dtype=np.int64).reshape(-1))
        with self._lock.write():
            for label in ids[self._holds(ids)].tolist():
                if label not in self._deleted:
                    self._index.mark_deleted(label)
                    self._deleted.add(label)

    def _holds(self, ids: Labels) -> npt.NDArray[np.bool_]:
        """Whether each label is in the index (deleted or not)."""
        positions = np.searchsorted(self._all, ids)
        found = positions < self._all.size
        found[found] = self._all[positions[found]] == ids[found]
        return found

    def _check_batch(
        self, labels: npt.ArrayLike, vectors: npt.ArrayLike
    ) -> tuple[Labels, npt.NDArray[np.float32]]:
        ids = np.asarray(labels, dtype=np.int64).reshape(-1)
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {data.shape}")
        if data.shape[0] != ids.size:
            raise ValueError(f"{ids.size} labels for {data.shape[0]} vectors")
        if ids.size and ids.min() < 0:
            raise ValueError("labels must be non-negative")
        if not np.isfinite(data).all():
            raise ValueError("vectors must be finite")
        # Keep the last occurrence of each label.
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(ids.size - 1 - last)
        return ids[keep], data[keep]

    # -- reads -----------------------------------------------------------------------------

    def knn(
        self,
        vectors: npt.ArrayLike,
        k: int,
        filter: LabelFilter | None = None,
        ef: int | None = None,
    ) -> tuple[Labels, Distances]:
        """The ``k`` nearest live labels to each query row, nearest first.

        Returns ``(labels, distances)`` of shape ``(queries, k')`` with cosine distances
        (``1 - cosine similarity``); ``k`` is capped by the live count. ``filter(label)``
        keeps only the labels it accepts; it runs under the index's lock, so it must not
        call back into this index. When a query finds fewer than ``k'`` results (a
        selective filter), its row is padded with label -1 and distance inf; ``k'`` is the
        longest row. ``ef`` overrides the index's ``ef_search`` for this call (and then
        takes the index exclusively, since hnswlib's ef is index-wide).
        """
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries.reshape(1, -1)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if ef is None or ef == self._ef_search:
            with self._lock.read():
                return self._search(queries, k, filter)
        with self._lock.write():
            self._index.set_ef(ef)
            try:
                return self._search(queries, k, filter)
            finally:
                self._index.set_ef(self._ef_search)

    def _search(
        self, queries: npt.NDArray[np.float32], k: int, filter: LabelFilter | None
    ) -> tuple[Labels, Distances]:
        k = min(k, self._all.size - len(self._deleted))
        if k == 0 or queries.shape[0] == 0:
            return _empty(queries.shape[0], 0)
        try:
            return self._query(queries, k, filter)
        except RuntimeError as exc:
            if _TOO_FEW not in str(exc):
                raise
        rows = [self._search_row(query, k, filter) for query in queries]
        labels, distances = _empty(len(rows), max(row[0].size for row in rows))
        for i, (row_labels, row_distances) in enumerate(rows):
            labels[i, : row_labels.size] = row_labels
            distances[i, : row_distances.size] = row_distances
        return labels, distances

    def _search_row(
        self, query: npt.NDArray[np.float32], k: int, filter: LabelFilter | None
    ) -> tuple[Labels, Distances]:
        """One query, returning fewer than ``k`` results when fewer can be reached."""
        reached: set[int] = set()

        def counting_filter(label: int) -> bool:
            accepted = filter is None or filter(label)
            if accepted:
                reached.add(label)
            return accepted

        try:
            labels, distances = self._query(query[None, :], k, counting_filter)
            return labels[0], distances[0]
        except RuntimeError as exc:
            if _TOO_FEW not in str(exc):
                raise
        k = len(reached)
        while k > 0:
            try:
                labels, distances = self._query(query[None, :], k, filter)
                return labels[0], distances[0]
            except RuntimeError as exc:
                if _TOO_FEW not in str(exc):
                    raise
                k //= 2
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)

    def _query(
        self, queries: npt.NDArray[np.float32], k: int, filter: LabelFilter | None
    ) -> tuple[Labels, Distances]:
        labels, distances = self._index.knn_query(queries, k=k, num_threads=1, filter=filter)
        return labels.astype(np.int64), distances.astype(np.float32, copy=False)

    def vectors(self, labels: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The stored (unit-length) vectors of live labels, in the order given."""
        ids = np.asarray(labels, dtype=np.int64)
        if ids.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock.read():
            return np.asarray(self._index.get_items(ids), dtype=np.float32)

    # -- persistence -----------------------------------------------------------------------

    def save(self) -> None:
        """Write the index to ``path`` atomically, with its sidecar.

        hnswlib writes a temp file; its length is checked against hnswlib's layout (a full
        disk leaves it short, silently), it is hashed and fsynced, the sidecar is written and
        fsynced, then both are renamed into place and the directory is fsynced. A failure
        leaves the previous index and sidecar as they were and raises (``CorruptIndex`` or
        ``OSError``). A crash between the two renames leaves a pair that does not match: the
        next load refuses it and the index is rebuilt from SQLite.
        """
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._save_lock, self._lock.read():
            sidecar_tmp: Path | None = None
            try:
                self._index.save_index(str(tmp))
                size, digest = integrity.check_written(tmp)
                sidecar = integrity.Sidecar(
                    format=integrity.FORMAT,
                    size=size,
                    sha256=digest,
                    dim=self.dim,
                    element_count=int(self._all.size),
                    deleted_count=len(self._deleted),
                    labels_sha256=integrity.labels_digest(self._all),
                )
                sidecar_tmp = integrity.write_sidecar(self.path, sidecar)
                os.replace(tmp, self.path)
                os.replace(sidecar_tmp, integrity.sidecar_path(self.path))
            finally:
                tmp.unlink(missing_ok=True)
                if sidecar_tmp is not None:
                    sidecar_tmp.unlink(missing_ok=True)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _empty(rows: int, width: int) -> tuple[Labels, Distances]:
    return (
        np.full((rows, width), -1, dtype=np.int64),
        np.full((rows, width), np.inf, dtype=np.float32),
    )
