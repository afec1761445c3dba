"""The indexes of all stores: opened lazily, saved when dirty, rebuilt from SQLite if needed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from quiver.server.index.hnsw import VectorIndex
from quiver.server.index.integrity import sidecar_path

log = logging.getLogger("quiver.index")

VectorLoader = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]
"""Reads the stored vectors of the given chunk ids, in that order."""


@dataclass(frozen=True)
class ReconcileReport:
    store_id: str
    added: int
    removed: int
    rebuilt: bool


class IndexManager:
    def __init__(self, root: Path, *, m: int, ef_construction: int, ef_search: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._open: dict[str, VectorIndex] = {}
        self._dirty: set[str] = set()
        self._files = threading.Lock()
        """Held while an index is written to its file, and while a dropped store's file is
        removed: a save that began before the drop cannot put the file back after it."""

    def path_for(self, store_id: str) -> Path:
        return self.root / f"{store_id}.hnsw"

    def get(self, store_id: str, dim: int) -> VectorIndex:
        index = self._open.get(store_id)
        if index is None:
            index = VectorIndex.open(
                self.path_for(store_id),
                dim,
                m=self.m,
                ef_construction=self.ef_construction,
                ef_search=self.ef_search,
            )
            self._open[store_id] = index
        return index

    def add(
        self,
        store_id: str,
        dim: int,
        labels: npt.NDArray[np.int64],
        vectors: npt.NDArray[np.float32],
    ) -> None:
        if len(labels):
            self.get(store_id, dim).add(labels, vectors)
            self._dirty.add(store_id)

    def remove(self, store_id: str, dim: int, labels: npt.NDArray[np.int64]) -> None:
        if len(labels):
            self.get(store_id, dim).mark_deleted(labels)
            self._dirty.add(store_id)

    def remove_held(self, store_id: str, labels: Sequence[int]) -> None:
        """Marks ``labels`` deleted in the store's index if it is open here (a store's index
        is opened at start and kept open, so labels added by this process are in it); an
        index not open holds nothing of this process's. Blocking."""
        index = self._open.get(store_id)
        if index is not None and len(labels):
            index.mark_deleted(np.asarray(labels, dtype=np.int64))
            self.changed(store_id, index)

    def changed(self, store_id: str, index: object) -> None:
        """``index`` (got from ``get``) was written to outside this manager, e.g. in a thread:
        save it with the others, unless the store has been dropped meanwhile."""
        if self._open.get(store_id) is index:
            self._dirty.add(store_id)

    def drop(self, store_id: str) -> None:
        """A deleted store: its index forgotten and its files removed (blocking: it waits
        for a save of the index in progress; call it from a thread)."""
        with self._files:
            self._open.pop(store_id, None)
            self._dirty.discard(store_id)
            self._forget_files(store_id)

    def stores_held(self) -> set[str]:
        """The stores whose index is open here or has a file here (blocking: lists the
        directory)."""
        on_disk = {p.name.removesuffix(".hnsw") for p in self.root.glob("*.hnsw")}
        return on_disk | set(list(self._open))

    def _forget_files(self, store_id: str) -> None:
        path = self.path_for(store_id)
        path.unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def live_vectors(self) -> int:
        return sum(index.live_count for index in list(self._open.values()))

    def save_all(self) -> int:
        """Saves every changed index; returns how many could not be saved.

        A save that fails (a full disk, a write that did not verify) leaves the previous file
        in place, is logged, and the index stays changed so the next save tries again.
        """
        failed = 0
        for store_id in list(self._dirty):
            self._dirty.discard(store_id)
            try:
                with self._files:
                    index = self._open.get(store_id)
                    if index is None:
                        continue
                    index.save()
            except Exception as exc:  # never lose the saver over one index
                failed += 1
                self._dirty.add(store_id)
                log.warning(
                    "index not saved (the previous one is kept; retried at the next save): %s",
                    exc,
                    extra={"store": store_id},
                )
        return failed

    def reconcile(
        self, store_id: str, dim: int, stored: npt.NDArray[np.int64], load: VectorLoader
    ) -> ReconcileReport:
        """Makes the index hold exactly the chunk ids in SQLite (``stored``).

        A missing index file, or one that fails its checks (damaged, truncated, without a
        checksum sidecar, of another dimension) or that hnswlib cannot load, is rebuilt from
        the stored vectors.
        """
        rebuilt = not self.path_for(store_id).exists()
        try:
            index = self.get(store_id, dim)
        except Exception as exc:  # whatever the file holds, SQLite has the truth
            log.warning("index of %s is unusable (%s): rebuilding it from SQLite", store_id, exc)
            self._forget_files(store_id)
            self._open.pop(store_id, None)
            index, rebuilt = self.get(store_id, dim), True
        held = index.labels()
        missing = np.setdiff1d(stored, held, assume_unique=True)
        extra = np.setdiff1d(held, stored, assume_unique=True)
        for start in range(0, len(missing), 10_000):
            part = missing[start : start + 10_000]
            index.add(part, load(part))
        if len(extra):
            index.mark_deleted(extra)
        if len(missing) or len(extra):
            self._dirty.add(store_id)
        return ReconcileReport(store_id, len(missing), len(extra), rebuilt)
