"""The indexes of all stores: opened lazily, saved when dirty, rebuilt from SQLite if needed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from quiver.server.index.hnsw import VectorIndex

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

    def changed(self, store_id: str, index: VectorIndex) -> None:
        """``index`` (got from ``get``) was written to outside this manager, e.g. in a thread:
        save it with the others, unless the store has been dropped meanwhile."""
        if self._open.get(store_id) is index:
            self._dirty.add(store_id)

    def drop(self, store_id: str) -> None:
        self._open.pop(store_id, None)
        self._dirty.discard(store_id)
        self.path_for(store_id).unlink(missing_ok=True)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def live_vectors(self) -> int:
        return sum(index.live_count for index in list(self._open.values()))

    def dirty(self) -> list[VectorIndex]:
        """The indexes changed since their last save (and forgets that they were)."""
        out = [self._open[s] for s in self._dirty if s in self._open]
        self._dirty.clear()
        return out

    def save_all(self) -> None:
        for index in self.dirty():
            index.save()

    def reconcile(
        self, store_id: str, dim: int, stored: npt.NDArray[np.int64], load: VectorLoader
    ) -> ReconcileReport:
        """Makes the index hold exactly the chunk ids in SQLite (``stored``).

        A missing or unreadable index file is rebuilt from the stored vectors.
        """
        rebuilt = not self.path_for(store_id).exists()
        try:
            index = self.get(store_id, dim)
        except (ValueError, RuntimeError) as exc:
            log.warning("index of %s is unreadable (%s): rebuilding it", store_id, exc)
            self.path_for(store_id).unlink(missing_ok=True)
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
