"""Read-your-writes for a store's vector index, a cache of the database's chunks: before a
search reads the index, chunks committed since it was last synced (by any replica) are added.

Per store this keeps the epoch the index was last fully reconciled at and a *watermark*: the
chunk id below which every chunk of a completed file is in the index. A search at the same
epoch reads only the chunk ids above the watermark (a short indexed range read); at another
epoch (the live replicas changed, so the store may have been served elsewhere meanwhile) the
index is first reconciled in full: chunks of completed files added, chunks no longer stored
marked deleted. Chunks of files still in progress are never added here (this replica's own
are added by its ingest, hidden until completed); the watermark stops below the first of
them, so they are added once their file completes.

Files whose chunks are added here completed elsewhere: the store's attribute index (filters)
is told, and forgets the store at a full reconcile (rebuilt at its next filtered search).
Off (``active`` false) while this replica has never seen another one: alone on its database,
its own ingest keeps its indexes current, as on a single node.

Blocking: ``catch_up`` runs on a thread, never on the event loop.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from quiver.server.storage.interfaces import IndexSyncRepository

SCAN_ROWS = 10_000
"""Chunk ids per database read."""
LOAD_ROWS = 500
"""Vectors per database read."""
MAX_STORES = 4096
"""Stores whose sync state is kept (least recently searched out: fully reconciled at their
next search)."""


class SyncedIndex(Protocol):
    def add(self, labels: npt.ArrayLike, vectors: npt.ArrayLike) -> None: ...

    def mark_deleted(self, labels: npt.ArrayLike) -> None: ...

    def labels(self) -> npt.NDArray[np.int64]: ...

    def holds(self, labels: npt.ArrayLike) -> npt.NDArray[np.bool_]: ...


class FileChanges(Protocol):
    """The attribute index (core/attribute_index.py), as far as syncing tells it anything."""

    def changed(self, store_id: str, file_ids: Iterable[str]) -> None: ...

    def forget(self, store_id: str) -> None: ...


class SyncedIndexes(Protocol):
    def get(self, store_id: str, dim: int) -> SyncedIndex: ...

    def changed(self, store_id: str, index: object) -> None: ...


@dataclass(frozen=True)
class SyncReport:
    store_id: str
    added: int
    removed: int
    full: bool
    watermark: int


@dataclass(frozen=True)
class _State:
    epoch: int
    watermark: int


@dataclass
class _Walk:
    completed: list[int]
    every: list[int]
    watermark: int
    files: dict[int, str]
    """The file of each completed chunk."""


class IndexSync:
    def __init__(
        self,
        rows: IndexSyncRepository,
        indexes: SyncedIndexes,
        epoch: Callable[[], int],
        *,
        files: FileChanges | None = None,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.rows = rows
        self.indexes = indexes
        self.epoch = epoch
        self.files = files
        self.active = active
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, store_id: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(store_id)
            if lock is None:
                lock = self._locks[store_id] = threading.Lock()
            return lock

    def forget(self, store_id: str) -> None:
        """The store was deleted (or its index dropped): start over at its next search."""
        with self._guard:
            self._states.pop(store_id, None)
            self._locks.pop(store_id, None)

    def catch_up(self, store_id: str, dim: int) -> SyncReport:
        """Blocking: the store's index holds every chunk of its completed files (see the
        module's docstring); returns what changed."""
        epoch = self.epoch()
        with self._lock_for(store_id):
            index = self.indexes.get(store_id, dim)
            with self._guard:
                state = self._states.get(store_id)
            full = state is None or state.epoch != epoch
            walk = self._walk(store_id, 0 if state is None or full else state.watermark, full)
            wanted = np.asarray(walk.completed, dtype=np.int64)
            if full:
                held = index.labels()
                missing = np.setdiff1d(wanted, held)
                extra = np.setdiff1d(held, np.asarray(walk.every, dtype=np.int64))
            else:
                missing = wanted[~index.holds(wanted)] if len(wanted) else wanted
                extra = np.empty(0, dtype=np.int64)
            added = self._add(index, missing, dim)
            if len(extra):
                index.mark_deleted(extra)
            if added or len(extra):
                self.indexes.changed(store_id, index)
            if self.files is not None:
                if full:
                    self.files.forget(store_id)
                elif len(missing):
                    self.files.changed(store_id, {walk.files[int(i)] for i in missing})
            with self._guard:
                self._states[store_id] = _State(epoch, walk.watermark)
                self._states.move_to_end(store_id)
                while len(self._states) > MAX_STORES:
                    evicted, _ = self._states.popitem(last=False)
                    self._locks.pop(evicted, None)
            return SyncReport(store_id, added, len(extra), full, walk.watermark)

    def _walk(self, store_id: str, after: int, every: bool) -> _Walk:
        """The completed chunk ids above ``after`` (and, when ``every``, all of them) and the
        new watermark: just below the first chunk of an unfinished file, else the last id."""
        out = _Walk([], [], after, {})
        unfinished = False
        cursor = after
        while True:
            rows = self.rows.chunks_after(store_id, cursor, SCAN_ROWS)
            for row in rows:
                if row.completed:
                    out.completed.append(row.id)
                    out.files[row.id] = row.file_id
                    if not unfinished:
                        out.watermark = row.id
                else:
                    unfinished = True
                if every:
                    out.every.append(row.id)
            if len(rows) < SCAN_ROWS:
                return out
            cursor = rows[-1].id

    def _add(self, index: SyncedIndex, ids: npt.NDArray[np.int64], dim: int) -> int:
        added = 0
        for start in range(0, len(ids), LOAD_ROWS):
            part = [int(i) for i in ids[start : start + LOAD_ROWS]]
            found = self.rows.vectors(part)
            keep = [i for i in part if len(found.get(i, b"")) == 4 * dim]
            if not keep:
                continue
            vectors = np.frombuffer(b"".join(found[i] for i in keep), dtype=np.float32)
            index.add(np.asarray(keep, dtype=np.int64), vectors.reshape(len(keep), dim))
            added += len(keep)
        return added
