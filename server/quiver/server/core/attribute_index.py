"""Filters through an index kept between queries: per store, its completed files'
attributes in an ``AttributeTable`` (core/filters.py: posting sets per key and value) and
its files' chunk ids, so a filtered search is set operations plus one gather instead of
reading and matching every file's attributes per query.

A rebuildable cache: the database stays the record. A store's entry is built from storage
on its first filtered search (in the caller's thread), and kept at most ``max_stores``
stores (least recently used out). Changes reach it as *which files changed*, told after
their transaction committed (``changed``: a file completed, its attributes updated, it was
detached or attached anew; ``forget``: the store deleted). The next selection re-reads
those files' rows before it evaluates, so it sees every change committed before the query
started; a change committed meanwhile is read by the next one. More than
``MAX_PENDING_FILES`` unread changes drop the entry (rebuilt on next use).

Layout (core/chunk_matrix.py): the chunk ids of the store's completed files in one array,
a span per file (its row in the table numbers it), and, for exact search (``vector_bytes``
> 0, an entry asked with a dimension), their stored vectors (unit length, float32, with
their int8 codes, core/row_scan.py) in one contiguous matrix beside their ids, read once
with every file's chunk ids and changed with them (a completed file's chunks appended, a
detached file's span a tombstone until more than a quarter are dead, then compacted). A
selection, even of a filter never seen, is then the table's rows and one index array
expanded from their spans, nothing copied; an exact filtered search scans those rows in
place (core/row_scan.py), never a database read. All entries' vectors (their arrays'
capacity) and cached selections together stay under ``vector_bytes`` (least recently used
entries out; an entry whose vectors alone exceed it keeps none and its exact searches read
the database, as without this cache).

Selections are cached per entry (``SELECTIONS_PER_ENTRY``, keyed by ``selection_key``,
which tells ``1``, ``1.0`` and ``True`` apart) until the entry next changes, with, on
demand, their labels as a set (hnswlib's filter callback): a repeated filter costs a
dictionary lookup.

Concurrency: each entry has a lock held while it is built, refreshed or read, so a
selection never sees a half-applied change; the tiny ``_pending_lock`` guards only the set
of changed files (``changed`` never waits for a selection). A restart starts empty.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from quiver.server.core.chunk_matrix import ChunkMatrix, row_bytes
from quiver.server.core.filters import AttributeTable, Comparison, Filter, filter_nodes
from quiver.server.core.models import AttributeValue
from quiver.server.core.row_scan import ScanRows, exact_ranking
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
Ids = npt.NDArray[np.int64]
FileIds = npt.NDArray[np.object_]


@dataclass
class Selection:
    """The completed files a filter matches and their chunk ids, file after file in the
    order the files were first indexed (``files``: their ids, ascending).

    ``scan``: when the store's vectors are cached, the rows of the chunks among ``labels``
    whose stored vector has the store's dimension, for an exact search (``top``); else
    None."""

    id_source: FileIds
    """The entry's file id per row (rows are never renumbered nor their id rewritten)."""
    rows: Ids
    label_source: Ids
    label_rows: Ids
    scan: ScanRows | None = None
    reused: bool = False
    """Served from the entry's cache at least once: worth a contiguous copy of its vectors."""
    _labels: Ids | None = None
    _dense: tuple[Ids, Matrix] | None = None
    _members: frozenset[int] | None = None
    _files: list[str] | None = None

    @property
    def labels(self) -> Ids:
        """The chunk ids, taken once per selection, when first asked."""
        labels = self._labels
        if labels is None:
            labels = self._labels = self.label_source[self.label_rows]
        return labels

    def top(self, query: Matrix, k: int) -> list[tuple[int, float]]:
        """The exact ``k`` best of ``scan`` for the unit ``query`` (label, cosine), best first,
        ties by label. A first use scans the store's rows in place (core/row_scan.py); a
        selection asked again copies its vectors into one contiguous matrix once (one BLAS
        product per query after that; its bytes were counted when it was cached)."""
        scan = self.scan
        if scan is None:
            raise ValueError("no cached vectors to rank")
        dense = self._dense
        if dense is None and self.reused:
            dense = self._dense = (scan.row_labels, np.take(scan.matrix, scan.rows, axis=0))
        if dense is not None:
            return exact_ranking(dense[0], dense[1], query, k)
        return scan.top(query, k)

    @property
    def vector_labels(self) -> Ids:
        """The chunk ids whose vectors ``scan`` holds, in its row order."""
        return _EMPTY if self.scan is None else self.scan.row_labels

    @property
    def vectors(self) -> Matrix | None:
        """A copy of those vectors, row by row (for tests and tools: searches scan them in
        place), or None when the store's vectors are not cached."""
        return None if self.scan is None else np.take(self.scan.matrix, self.scan.rows, axis=0)

    @property
    def files(self) -> list[str]:
        """The files' ids, ascending (sorted once per selection, when first asked)."""
        files = self._files
        if files is None:
            files = self._files = sorted(self.id_source[self.rows].tolist())
        return files

    def members(self) -> frozenset[int]:
        """``labels`` as a set, made once per selection (a cached one is reused)."""
        members = self._members
        if members is None:
            members = self._members = frozenset(self.labels.tolist())
        return members

    @property
    def nbytes(self) -> int:
        held = 2 * self.label_rows.nbytes + 8 * len(self.rows)
        if self.scan is None:
            return held
        # Its rows and, once reused, its contiguous copy (ids and vectors).
        copy = len(self.scan) * int(self.scan.matrix.shape[1]) * self.scan.matrix.itemsize
        return held + 2 * int(self.scan.rows.nbytes) + copy


@dataclass
class _Entry:
    """One store: its files' attributes (``table``, one row per file), their chunk ids
    (``ids``) and, when ``dim`` > 0, their unit vectors (``vectors``), both ``ChunkMatrix``
    (core/chunk_matrix.py) whose file numbers are the table's rows."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    built: bool = False
    table: AttributeTable = field(default_factory=lambda: AttributeTable([]))
    row_of: dict[str, int] = field(default_factory=dict)
    file_ids: FileIds = field(default_factory=lambda: np.empty(0, dtype=object))
    """The file id of each row (kept after the file is dropped: a selection taken before
    may still read it)."""
    next_row: int = 0
    pending: set[str] = field(default_factory=set)
    ids: ChunkMatrix = field(default_factory=lambda: ChunkMatrix(0))
    vectors: ChunkMatrix | None = None
    refused: int = 0
    """The dimension whose vectors did not fit in the cache (not tried again)."""
    selections: OrderedDict[Hashable, Selection] = field(default_factory=OrderedDict)
    selection_bytes: int = 0

    @property
    def dim(self) -> int:
        """The dimension of the vectors kept; 0: none kept."""
        return 0 if self.vectors is None else self.vectors.dim

    @property
    def vector_bytes(self) -> int:
        return 0 if self.vectors is None else self.vectors.nbytes

    @property
    def nbytes(self) -> int:
        return self.vector_bytes + self.selection_bytes

    def row(self, file_id: str) -> int:
        """The file's row, numbered anew if the file is new."""
        row = self.row_of.get(file_id)
        if row is None:
            row = self.next_row
            self.next_row += 1
            self.row_of[file_id] = row
            if row >= len(self.file_ids):
                grown = np.empty(max(16, 2 * len(self.file_ids), row + 1), dtype=object)
                grown[: len(self.file_ids)] = self.file_ids
                self.file_ids = grown
            self.file_ids[row] = file_id
        return row

    def put(
        self,
        file_id: str,
        attributes: Mapping[str, AttributeValue],
        labels: Ids,
        vectors: tuple[Ids, Matrix] | None = None,
    ) -> None:
        """The file (new or changed) holds these attributes, chunk ids and (when vectors
        are kept) these unit vectors of its chunks."""
        row = self.row(file_id)
        self.table.put(row, attributes)
        self.ids.put(row, labels)
        if self.vectors is not None:
            assert vectors is not None
            self.vectors.put(row, vectors[0], vectors[1])
        self._changed()

    def put_attributes(self, file_id: str, attributes: Mapping[str, AttributeValue]) -> None:
        """The file's attributes changed, not its chunks."""
        self.table.put(self.row_of[file_id], attributes)
        self._changed()

    def drop(self, file_id: str) -> None:
        row = self.row_of.pop(file_id, None)
        if row is None:
            return
        self.ids.drop(row)
        if self.vectors is not None:
            self.vectors.drop(row)
        self.table.drop(row)
        self._changed()

    def forget_vectors(self) -> None:
        self.vectors = None
        self._changed()

    def _changed(self) -> None:
        self.selections.clear()
        self.selection_bytes = 0

    def cached(self, key: Hashable) -> Selection | None:
        found = self.selections.get(key)
        if found is not None:
            self.selections.move_to_end(key)
            found.reused = True
        return found

    def rows(self, filter: Filter) -> Ids:
        """The rows (files) ``filter`` matches, ascending."""
        return self.table.select(filter)

    def gather(self, rows: Ids) -> Selection:
        """The selection of these rows: where their chunk ids and vectors are (no copy)."""
        selection = Selection(self.file_ids, rows, self.ids.labels, self.ids.index(rows))
        if self.vectors is not None:
            selection.scan = self.vectors.scan(self.vectors.index(rows))
        return selection

    def keep(self, key: Hashable, selection: Selection, cache_bytes: int) -> Selection:
        """Keeps the selection for the next query when it takes at most ``cache_bytes``."""
        size = selection.nbytes
        if size <= cache_bytes:
            self.selections[key] = selection
            self.selection_bytes += size
            while len(self.selections) > SELECTIONS_PER_ENTRY:
                _, old = self.selections.popitem(last=False)
                self.selection_bytes -= old.nbytes
        return selection

    def select(self, filter: Filter, key: Hashable, cache_bytes: int) -> Selection:
        """The selection; kept for the next query when it takes at most ``cache_bytes``."""
        found = self.cached(key)
        if found is not None:
            return found
        return self.keep(key, self.gather(self.rows(filter)), cache_bytes)


def selection_key(filter: Filter) -> Hashable:
    """The filter as a cache key that tells ``1``, ``1.0`` and ``True`` apart (equal and
    equally hashed in Python, but not the same filter value here): each value with its
    type."""
    if isinstance(filter, Comparison):
        value = filter.value
        if isinstance(value, tuple):
            return (filter.op, filter.key, tuple((type(v), v) for v in value))
        return (filter.op, filter.key, type(value), value)
    return (filter.op, tuple(selection_key(f) for f in filter.filters))


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

    def cached_store_ids(self) -> set[str]:
        """The stores that have an entry here."""
        with self._pending_lock:
            return set(self._entries)

    @property
    def cached_bytes(self) -> int:
        """Vectors and cached selections held, all entries together."""
        with self._pending_lock:
            return sum(entry.nbytes for entry in self._entries.values())

    @property
    def compactions(self) -> int:
        """Compactions of the kept entries' chunk arrays so far (tests read it)."""
        with self._pending_lock:
            return sum(
                entry.ids.compactions + (entry.vectors.compactions if entry.vectors else 0)
                for entry in self._entries.values()
            )

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
            key = selection_key(filter)
            found = entry.cached(key)
            if found is not None:
                return found
            if entry.table.size * filter_nodes(filter) > INLINE_BUDGET:
                return None
            return entry.keep(key, entry.gather(entry.rows(filter)), self._selection_bytes)
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
            selection = entry.select(filter, selection_key(filter), self._selection_bytes)
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
        numbers: list[int] = []
        counts: list[int] = []
        flat: list[int] = []
        for file_id, attributes in rows:
            row = entry.row(file_id)
            entry.table.put(row, attributes)
            held = labels.get(file_id, [])
            numbers.append(row)
            counts.append(len(held))
            flat.extend(held)
        entry.ids.load(
            np.asarray(numbers, dtype=np.int64),
            np.asarray(counts, dtype=np.int64),
            np.asarray(flat, dtype=np.int64),
            None,
        )
        entry.built = True
        self.builds += 1

    def _refresh(self, store_id: str, entry: _Entry) -> None:
        changed = self._take_pending(entry)
        if not changed:
            return
        rows = dict(self.files.completed_attributes(store_id, changed))
        found = self.chunks.ids_by_file(store_id, [f for f in changed if f in rows])
        labels = {f: np.asarray(found.get(f, []), dtype=np.int64) for f in rows}
        # A file whose chunks the entry already holds (an attribute update) keeps its rows.
        same = {
            f
            for f in rows
            if f in entry.row_of and np.array_equal(entry.ids.held(entry.row_of[f]), labels[f])
        }
        read = [i for f in changed if f in rows and f not in same for i in labels[f].tolist()]
        vectors = self._read_vectors(read) if entry.dim > 0 else {}
        for file_id in changed:
            if file_id not in rows:
                entry.drop(file_id)
            elif file_id in same:
                entry.put_attributes(file_id, rows[file_id])
            else:
                held = labels[file_id]
                kept = unit_rows(held.tolist(), vectors, entry.dim) if entry.dim > 0 else None
                entry.put(file_id, rows[file_id], held, kept)
        if entry.vector_bytes > self.vector_bytes:  # grew past the whole cache
            entry.refused = entry.dim
            entry.forget_vectors()

    def _load_vectors(self, entry: _Entry, dim: int) -> None:
        """Reads the vectors of every file of the entry into one matrix, unless they
        cannot fit."""
        entry.forget_vectors()
        files = np.flatnonzero(entry.ids.count).astype(np.int64)
        labels = entry.ids.labels[entry.ids.index(files)]
        if len(labels) * row_bytes(dim) > self.vector_bytes:
            entry.refused = dim
            return
        wanted = labels.tolist()
        blobs = self._read_vectors(wanted)
        ids, matrix = unit_rows(wanted, blobs, dim)
        kept = np.fromiter(
            (len(blobs.get(i, b"")) == 4 * dim for i in wanted), dtype=bool, count=len(wanted)
        )
        owner = np.repeat(files, entry.ids.count[files])
        counts = np.bincount(owner[kept], minlength=len(entry.ids.count))[files]
        vectors = ChunkMatrix(dim)
        vectors.max_rows = self.vector_bytes // row_bytes(dim)  # growth stays within budget
        vectors.load(files, counts.astype(np.int64), ids, matrix)
        entry.vectors = vectors
        self.vector_loads += 1

    def _read_vectors(self, ids: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for start in range(0, len(ids), VECTOR_READ_SLICE):
            out.update(self.chunks.vectors_from_thread(ids[start : start + VECTOR_READ_SLICE]))
        return out
