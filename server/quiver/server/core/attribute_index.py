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

Vectors for exact search (``vector_bytes`` > 0): an entry built with a dimension also keeps
its files' stored vectors (unit length, float32), read with the files' chunk ids and changed
with them, so an exact filtered search is one concatenation and one matrix product instead
of a database read. All entries' vectors and cached selections together stay under
``vector_bytes`` (least recently used entries out; an entry whose vectors alone exceed it
keeps none and its exact searches read the database, as without this cache).

Selections are cached per entry (``SELECTIONS_PER_ENTRY``, keyed by the filter's ``repr``,
which tells ``1``, ``1.0`` and ``True`` apart) until the entry next changes, with their
labels' vectors gathered in one contiguous matrix and, on demand, their labels as a set
(hnswlib's filter callback): a repeated filter costs a dictionary lookup.

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

SELECTIONS_PER_ENTRY = 16
"""Selections (of distinct filters) an entry keeps until its next change."""

VECTOR_READ_SLICE = 10_000
"""Chunk ids per database read of vectors (under SQLite's bound parameters)."""

_EMPTY = np.zeros(0, dtype=np.int64)
Matrix = npt.NDArray[np.float32]


@dataclass
class Selection:
    """The completed files a filter matches (ascending by file id) and their chunk ids.

    ``vectors``: when the store's vectors are cached, the unit vectors of ``vector_labels``
    (the chunk ids among ``labels`` whose stored vector has the store's dimension), row by
    row; else None."""

    files: list[str]
    labels: npt.NDArray[np.int64]
    vector_labels: npt.NDArray[np.int64] = field(default_factory=lambda: _EMPTY)
    vectors: Matrix | None = None
    _members: frozenset[int] | None = None

    def members(self) -> frozenset[int]:
        """``labels`` as a set, made once per selection (a cached one is reused)."""
        members = self._members
        if members is None:
            members = self._members = frozenset(self.labels.tolist())
        return members

    @property
    def nbytes(self) -> int:
        held = self.labels.nbytes + self.vector_labels.nbytes
        return held + (0 if self.vectors is None else self.vectors.nbytes)


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
    dim: int = 0
    """Vectors kept (of this dimension) when positive."""
    vectors_of: dict[int, tuple[npt.NDArray[np.int64], Matrix]] = field(default_factory=dict)
    vector_bytes: int = 0
    refused: int = 0
    """The dimension whose vectors did not fit in the cache (not tried again)."""
    selections: OrderedDict[str, Selection] = field(default_factory=OrderedDict)
    selection_bytes: int = 0

    @property
    def nbytes(self) -> int:
        return self.vector_bytes + self.selection_bytes

    def put(
        self,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
        labels: list[int],
        vectors: tuple[npt.NDArray[np.int64], Matrix] | None = None,
    ) -> None:
        row = self.row_of.get(file_id)
        if row is None:
            row = self.next_row
            self.next_row += 1
            self.row_of[file_id] = row
            self.file_of[row] = file_id
        self.table.put(row, attributes)
        self.labels_of[row] = np.asarray(labels, dtype=np.int64)
        self._drop_vectors(row)
        if vectors is not None:
            self.vectors_of[row] = vectors
            self.vector_bytes += vectors[0].nbytes + vectors[1].nbytes
        self._changed()

    def drop(self, file_id: str) -> None:
        row = self.row_of.pop(file_id, None)
        if row is None:
            return
        del self.file_of[row]
        del self.labels_of[row]
        self._drop_vectors(row)
        self.table.drop(row)
        self._changed()

    def _drop_vectors(self, row: int) -> None:
        old = self.vectors_of.pop(row, None)
        if old is not None:
            self.vector_bytes -= old[0].nbytes + old[1].nbytes

    def forget_vectors(self) -> None:
        self.dim = 0
        self.vectors_of.clear()
        self.vector_bytes = 0
        self._changed()

    def _changed(self) -> None:
        self.selections.clear()
        self.selection_bytes = 0

    def cached(self, key: str) -> Selection | None:
        found = self.selections.get(key)
        if found is not None:
            self.selections.move_to_end(key)
        return found

    def select(self, filter: Filter, key: str, cache_bytes: int) -> Selection:
        """The selection; kept for the next query when it takes at most ``cache_bytes``."""
        found = self.cached(key)
        if found is not None:
            return found
        rows = self.table.select(filter)
        pairs = sorted((self.file_of[r], r) for r in rows)
        arrays = [self.labels_of[r] for _, r in pairs]
        labels = np.concatenate(arrays) if arrays else _EMPTY
        selection = Selection([f for f, _ in pairs], labels)
        if self.dim > 0:
            kept = [self.vectors_of[r] for _, r in pairs if r in self.vectors_of]
            selection.vector_labels = np.concatenate([k[0] for k in kept]) if kept else _EMPTY
            selection.vectors = (
                np.concatenate([k[1] for k in kept])
                if kept
                else np.zeros((0, self.dim), dtype=np.float32)
            )
        if selection.nbytes <= cache_bytes:
            self.selections[key] = selection
            self.selection_bytes += selection.nbytes
            while len(self.selections) > SELECTIONS_PER_ENTRY:
                _, old = self.selections.popitem(last=False)
                self.selection_bytes -= old.nbytes
        return selection


def unit_rows(
    labels: list[int], blobs: Mapping[int, bytes], dim: int
) -> tuple[npt.NDArray[np.int64], Matrix]:
    """The vectors of ``labels`` found in ``blobs`` (float32 bytes by id) with dimension
    ``dim``, in the order of ``labels``, scaled to unit length (a zero vector stays zero),
    and their ids."""
    ids = [i for i in labels if len(blobs.get(i, b"")) == 4 * dim]
    if not ids:
        return _EMPTY, np.zeros((0, dim), dtype=np.float32)
    matrix = np.frombuffer(b"".join(blobs[i] for i in ids), dtype=np.float32).reshape(-1, dim)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms > 0, norms, 1.0)
    return np.asarray(ids, dtype=np.int64), np.ascontiguousarray(unit, dtype=np.float32)


class AttributeIndex:
    def __init__(
        self,
        files: StoreFileRepository,
        chunks: ChunkRepository,
        *,
        max_stores: int,
        vector_bytes: int = 0,
    ) -> None:
        if max_stores < 1:
            raise ValueError(f"attribute_index_stores must be at least 1, not {max_stores}")
        if vector_bytes < 0:
            raise ValueError(f"the vector cache must not be negative, not {vector_bytes}")
        self.files = files
        self.chunks = chunks
        self.max_stores = max_stores
        self.vector_bytes = vector_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._pending_lock = threading.Lock()
        self.builds = 0
        """Full builds from storage so far (tests and metrics read it)."""
        self.vector_loads = 0
        """Reads of a whole store's vectors so far (tests read it)."""

    @property
    def cached_stores(self) -> int:
        return len(self._entries)

    @property
    def cached_bytes(self) -> int:
        """Vectors and cached selections held, all entries together."""
        with self._pending_lock:
            return sum(entry.nbytes for entry in self._entries.values())

    @property
    def _selection_bytes(self) -> int:
        return max(self.vector_bytes // 8, 4 << 20)

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

    def select_inline(self, store_id: str, filter: Filter, dim: int = 0) -> Selection | None:
        """The selection, if it is cheap now (entry built and up to date, its lock free, the
        vectors of ``dim`` loaded if they are to be kept, the selection cached or the filter
        small for the store's size); else None: call ``select`` from a thread."""
        with self._pending_lock:
            entry = self._entries.get(store_id)
            if entry is None or not entry.built or entry.pending:
                return None
            self._entries.move_to_end(store_id)
        if not entry.lock.acquire(blocking=False):
            return None
        try:
            if entry.pending or self._wants_vectors(entry, dim):
                return None  # a change told since the check above, or vectors to read
            key = repr(filter)
            found = entry.cached(key)
            if found is not None:
                return found
            if entry.table.size * filter_nodes(filter) > INLINE_BUDGET or entry.dim > 0:
                return None  # gathering vectors is a copy of many rows: on a thread
            return entry.select(filter, key, self._selection_bytes)
        finally:
            entry.lock.release()

    def select(self, store_id: str, filter: Filter, dim: int = 0) -> Selection:
        """The completed files ``filter`` matches and their chunk ids (and, when the cache
        holds them, their vectors of dimension ``dim``). Blocking (it may read storage):
        call it from a thread."""
        entry = self._entry(store_id)
        with entry.lock:
            if not entry.built:
                self._build(store_id, entry)
            else:
                self._refresh(store_id, entry)
            if self._wants_vectors(entry, dim):
                self._load_vectors(entry, dim)
            selection = entry.select(filter, repr(filter), self._selection_bytes)
        self._trim(entry)
        return selection

    def _wants_vectors(self, entry: _Entry, dim: int) -> bool:
        return self.vector_bytes > 0 and dim > 0 and entry.dim != dim and entry.refused != dim

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

    def _trim(self, keep: _Entry) -> None:
        """Least recently used entries out until the cache is within ``vector_bytes``."""
        with self._pending_lock:
            total = sum(entry.nbytes for entry in self._entries.values())
            for store_id in list(self._entries):
                if total <= self.vector_bytes:
                    break
                entry = self._entries[store_id]
                if entry is not keep and entry.nbytes > 0:
                    total -= entry.nbytes
                    del self._entries[store_id]

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
        read = [i for f in changed for i in labels.get(f, [])] if entry.dim > 0 else []
        vectors = self._read_vectors(read)
        for file_id in changed:
            if file_id not in rows:
                entry.drop(file_id)
                continue
            held = labels.get(file_id, [])
            kept = unit_rows(held, vectors, entry.dim) if entry.dim > 0 else None
            entry.put(file_id, rows[file_id], held, kept)
        if entry.vector_bytes > self.vector_bytes:  # grew past the whole cache
            entry.refused = entry.dim
            entry.forget_vectors()

    def _load_vectors(self, entry: _Entry, dim: int) -> None:
        """Reads the vectors of every file of the entry, unless they cannot fit."""
        entry.forget_vectors()
        count = sum(labels.size for labels in entry.labels_of.values())
        if count * (4 * dim + 8) > self.vector_bytes:
            entry.refused = dim
            return
        read = [i for labels in entry.labels_of.values() for i in labels.tolist()]
        vectors = self._read_vectors(read)
        entry.dim = dim
        for row, labels in entry.labels_of.items():
            kept = unit_rows(labels.tolist(), vectors, dim)
            entry.vectors_of[row] = kept
            entry.vector_bytes += kept[0].nbytes + kept[1].nbytes
        self.vector_loads += 1

    def _read_vectors(self, ids: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for start in range(0, len(ids), VECTOR_READ_SLICE):
            out.update(self.chunks.vectors_from_thread(ids[start : start + VECTOR_READ_SLICE]))
        return out
