"""Filters through an index kept between queries: per store, its completed files'
attributes in an ``AttributeTable`` (core/filters.py: posting sets per key and value) and
each file's chunk ids, so a filtered search is set operations plus one concatenation
instead of reading and matching every file's attributes per query.

A rebuildable cache: the database stays the record. A store's entry is built from storage
on its first filtered search (in the caller's thread), and kept at most ``max_stores``
stores (least recently used out). Changes reach it as *which files changed*, told after
their transaction committed (``changed``: a file completed, its attributes updated, it was
detached or attached anew; ``forget``: the store deleted). The next selection re-reads
those files' rows before it evaluates, so it sees every change committed before the query
started; a change committed meanwhile is read by the next one. More than
``MAX_PENDING_FILES`` unread changes drop the entry (rebuilt on next use).

Concurrency: each entry has a lock held while it is built, refreshed or read, so a
selection never sees a half-applied change; the tiny ``_pending_lock`` guards only the set
of changed files (``changed`` never waits for a selection). A restart starts empty.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from quiver.server.core.filters import AttributeTable, Filter, filter_nodes
from quiver.server.core.models import AttributeValue
from quiver.server.storage.interfaces import ChunkRepository, StoreFileRepository

MAX_PENDING_FILES = 4096
"""Changed files a store's entry holds unread; past it the entry is dropped and rebuilt."""

INLINE_BUDGET = 2_000
"""A selection on a built, up-to-date entry with ``files * filter nodes`` at most this
(measured: under a millisecond, about 0.5 µs per file and node at worst) may run on
the event loop."""

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Selection:
    """The completed files a filter matches (ascending by file id) and their chunk ids."""

    files: list[str]
    labels: npt.NDArray[np.int64]


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    built: bool = False
    table: AttributeTable = field(default_factory=lambda: AttributeTable([]))
    row_of: dict[str, int] = field(default_factory=dict)
    file_of: dict[int, str] = field(default_factory=dict)
    labels_of: dict[int, npt.NDArray[np.int64]] = field(default_factory=dict)
    next_row: int = 0
    pending: set[str] = field(default_factory=set)

    def put(
        self, file_id: str, attributes: Mapping[str, AttributeValue], labels: list[int]
    ) -> None:
        row = self.row_of.get(file_id)
        if row is None:
            row = self.next_row
            self.next_row += 1
            self.row_of[file_id] = row
            self.file_of[row] = file_id
        self.table.put(row, attributes)
        self.labels_of[row] = np.asarray(labels, dtype=np.int64)

    def drop(self, file_id: str) -> None:
        row = self.row_of.pop(file_id, None)
        if row is None:
            return
        del self.file_of[row]
        del self.labels_of[row]
        self.table.drop(row)

    def select(self, filter: Filter) -> Selection:
        rows = self.table.select(filter)
        pairs = sorted((self.file_of[r], r) for r in rows)
        arrays = [self.labels_of[r] for _, r in pairs]
        labels = np.concatenate(arrays) if arrays else _EMPTY
        return Selection([f for f, _ in pairs], labels)


class AttributeIndex:
    def __init__(
        self, files: StoreFileRepository, chunks: ChunkRepository, *, max_stores: int
    ) -> None:
        if max_stores < 1:
            raise ValueError(f"attribute_index_stores must be at least 1, not {max_stores}")
        self.files = files
        self.chunks = chunks
        self.max_stores = max_stores
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._pending_lock = threading.Lock()
        self.builds = 0
        """Full builds from storage so far (tests and metrics read it)."""

    @property
    def cached_stores(self) -> int:
        return len(self._entries)

    # -- changes (after their transaction committed; cheap, from the event loop) -------------

    def changed(self, store_id: str, file_ids: Iterable[str]) -> None:
        """These files of the store changed in the database (any way): re-read at next use."""
        with self._pending_lock:
            entry = self._entries.get(store_id)
            if entry is None:
                return
            entry.pending.update(file_ids)
            if len(entry.pending) > MAX_PENDING_FILES:
                del self._entries[store_id]

    def forget(self, store_id: str) -> None:
        """The store is gone (or its entry is no longer to be trusted)."""
        with self._pending_lock:
            self._entries.pop(store_id, None)

    # -- selections --------------------------------------------------------------------------

    def select_inline(self, store_id: str, filter: Filter) -> Selection | None:
        """The selection, if it is cheap now (entry built and up to date, its lock free, the
        filter small for the store's size); else None: call ``select`` from a thread."""
        with self._pending_lock:
            entry = self._entries.get(store_id)
            if entry is None or not entry.built or entry.pending:
                return None
            self._entries.move_to_end(store_id)
        if entry.table.size * filter_nodes(filter) > INLINE_BUDGET:
            return None
        if not entry.lock.acquire(blocking=False):
            return None
        try:
            if entry.pending:  # a change told since the check above: read it first
                return None
            return entry.select(filter)
        finally:
            entry.lock.release()

    def select(self, store_id: str, filter: Filter) -> Selection:
        """The completed files ``filter`` matches and their chunk ids. Blocking (it may
        read storage): call it from a thread."""
        entry = self._entry(store_id)
        with entry.lock:
            if not entry.built:
                self._build(store_id, entry)
            else:
                self._refresh(store_id, entry)
            return entry.select(filter)

    def _entry(self, store_id: str) -> _Entry:
        with self._pending_lock:
            entry = self._entries.get(store_id)
            if entry is None:
                entry = _Entry()
                self._entries[store_id] = entry
                while len(self._entries) > self.max_stores:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(store_id)
            return entry

    def _take_pending(self, entry: _Entry) -> list[str]:
        with self._pending_lock:
            taken = sorted(entry.pending)
            entry.pending.clear()
            return taken

    def _build(self, store_id: str, entry: _Entry) -> None:
        # Changes told from here on are read again at next use (harmless if already seen).
        self._take_pending(entry)
        rows = self.files.completed_attributes(store_id)
        labels = self.chunks.ids_by_file(store_id, None)
        for file_id, attributes in rows:
            entry.put(file_id, attributes, labels.get(file_id, []))
        entry.built = True
        self.builds += 1

    def _refresh(self, store_id: str, entry: _Entry) -> None:
        changed = self._take_pending(entry)
        if not changed:
            return
        rows = dict(self.files.completed_attributes(store_id, changed))
        labels = self.chunks.ids_by_file(store_id, [f for f in changed if f in rows])
        for file_id in changed:
            if file_id in rows:
                entry.put(file_id, rows[file_id], labels.get(file_id, []))
            else:
                entry.drop(file_id)
