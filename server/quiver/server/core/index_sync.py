"""Read-your-writes for a store's vector index, a cache of the database's chunks: before a
search reads the index, chunks committed since it was last synced (by any replica) are added.

Per store this keeps the epoch the index was last fully reconciled at and a *watermark*: a
value of the store's commit sequence (``vector_stores.commit_seq``), which every file's
completing transaction raises, under the store row's lock, as its last step, and stamps on
the file (``vector_store_files.commit_seq``): commit order is sequence order, so once a value
is seen committed every file completed at or below it is too. A search at the same epoch
reads only the completed files stamped above the watermark, then their chunks (two short
indexed reads); at another epoch (the live replicas changed, so the store may have been
served elsewhere meanwhile) the index is first reconciled in full: the store's counter read,
then chunks of completed files added, chunks no longer stored marked deleted; so it is, too,
at least every FULL_EVERY_S seconds. Chunks of files still in progress are never added here
(this replica's own are added by its ingest, hidden until completed): their file is read
once it completes, with a new sequence value.

What the sequence does not raise (a file detached or deleted, its chunks deleted; a file
re-queued, whose chunks stop being searchable at once since search reads only completed
files' chunks; a store's chunks deleted with it) is caught up by the full reconcile, within
FULL_EVERY_S: stale labels in the index are never returned (search joins them to completed
files), they only take room among its nearest neighbours until then.

Files whose chunks are added here completed elsewhere: the store's attribute index (filters)
is told, and forgets the store at a full reconcile (rebuilt at its next filtered search).
What the chunk ids cannot show (a file's attributes updated, a file detached or re-queued
elsewhere) a filtered search catches up with too: it reads a digest of the store's files'
states (id, status, attributes; on PostgreSQL one aggregate over the store's file rows, no
rows sent) and, only when that changed, the states themselves, and tells the attribute index
which files differ from the states it read last (at its first look, the store is forgotten),
so the owner's filtered search reads its writers' writes, whichever replica made them.
Off (``active`` false) while this replica has never seen another one: alone on its database,
its own ingest keeps its indexes current, as on a single node.

A full reconcile that must add many chunks (a store this replica never held, typically
just after its owner died) runs in the background instead of holding up searches (and the
threads they run on): meanwhile the store is searched exactly over its stored vectors, or,
when it is too big for that, the search awaits the rebuild without holding a thread.

The store's keyword index follows the same chunks. When it cannot be written (a full disk),
the search still answers, its keyword ranking from the index's last commit, and the store is
reconciled in full again at its next search, until the keyword index has caught up.

Blocking: ``catch_up`` and ``prepare`` run on a thread, never on the event loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from quiver.server.storage.interfaces import IndexSyncRepository

log = logging.getLogger("quiver.index")

SCAN_ROWS = 10_000
"""Chunk ids per database read."""
FILE_ROWS = 500
"""Committed files per database read of a catch-up."""
LOAD_ROWS = 500
"""Vectors per database read."""
INLINE_ADDS = 2_000
"""A full reconcile adding more chunks than this runs in the background (``prepare``)."""
REBUILDERS = 2
"""Background rebuilds at a time (the others queue; one per store at most)."""
BRIDGE_MAX_CHUNKS = 50_000
"""While its index is rebuilt, a store of at most this many chunks is searched exactly (its
stored vectors read from the database: ~100 MB at 512 floats); a bigger one waits."""
FULL_EVERY_S = 60.0
"""A store's index is reconciled in full at least this often while searched: what the
commit sequence does not show (chunks deleted, files detached or re-queued, attributes
changed elsewhere) is caught up within it."""
MAX_STORES = 4096
"""Stores whose sync state is kept (least recently searched out: fully reconciled at their
next search)."""
MAX_FILE_VIEWS = 1024
"""Stores whose files' states are remembered for filtered searches (least recently searched
out: forgotten by the attribute index at their next filtered search)."""


class SyncedIndex(Protocol):
    def add(self, labels: npt.ArrayLike, vectors: npt.ArrayLike) -> None: ...

    def mark_deleted(self, labels: npt.ArrayLike) -> None: ...

    def labels(self) -> npt.NDArray[np.int64]: ...

    def holds(self, labels: npt.ArrayLike) -> npt.NDArray[np.bool_]: ...


class FileChanges(Protocol):
    """The attribute index (core/attribute_index.py), as far as syncing tells it anything."""

    def changed(self, store_id: str, file_ids: Iterable[str]) -> None: ...

    def forget(self, store_id: str) -> None: ...


class SyncedKeywords(Protocol):
    """The stores' keyword indexes (``index/keyword_manager.py``), caught up like the vector
    index: chunks completed elsewhere added, a full reconcile at a new epoch."""

    def add(self, store_id: str, rows: list[tuple[int, str, str]]) -> bool: ...

    def flush(self, store_id: str) -> None: ...

    def reconcile(
        self,
        store_id: str,
        stored: npt.NDArray[np.int64],
        load: Callable[[Sequence[int]], list[tuple[int, str, str]]],
    ) -> object: ...


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
    reconciled_at: float
    """When the index was last reconciled in full (``time.monotonic()``)."""


@dataclass(frozen=True)
class Rebuilding:
    """A store's index being rebuilt in the background: meanwhile a search ranks
    ``completed`` (the chunk ids of its completed files when the rebuild started) exactly,
    or, past BRIDGE_MAX_CHUNKS, awaits ``done``."""

    completed: npt.NDArray[np.int64]
    done: Future[None]


@dataclass
class _Walk:
    completed: list[int]
    every: list[int]
    watermark: int
    files: dict[int, str]
    """The file of each completed chunk."""


@dataclass(frozen=True)
class _Plan:
    store_id: str
    dim: int
    epoch: int
    started: float
    index: SyncedIndex
    full: bool
    walk: _Walk
    missing: npt.NDArray[np.int64]
    extra: npt.NDArray[np.int64]


class IndexSync:
    def __init__(
        self,
        rows: IndexSyncRepository,
        indexes: SyncedIndexes,
        epoch: Callable[[], int],
        *,
        files: FileChanges | None = None,
        keywords: SyncedKeywords | None = None,
        keyword_rows: Callable[[Sequence[int]], list[tuple[int, str, str]]] | None = None,
        active: Callable[[], bool] = lambda: True,
        full_every_s: float = FULL_EVERY_S,
    ) -> None:
        self.rows = rows
        self.indexes = indexes
        self.epoch = epoch
        self.files = files
        self.keywords = keywords
        self.keyword_rows = keyword_rows
        self.active = active
        self.full_every_s = full_every_s
        self.keyword_failures = 0
        """Catch-ups whose keyword index could not be written (see ``_sync_keywords``)."""
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._building: dict[str, Rebuilding] = {}
        self._file_views: OrderedDict[str, tuple[str, dict[str, int]]] = OrderedDict()
        """Per store, the digest of its files' states (``files_digest``) and a hash of each
        attached file's status and attributes, as last read."""
        self._builder = ThreadPoolExecutor(REBUILDERS, thread_name_prefix="index-rebuild")
        self._closed = False

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
            self._file_views.pop(store_id, None)

    def catch_up(self, store_id: str, dim: int, filtered: bool = False) -> SyncReport:
        """Blocking: the store's index holds every chunk of its completed files (see the
        module's docstring), however many it takes; returns what changed. ``filtered``:
        the attribute index is caught up with its files' states too."""
        if filtered:
            self.sync_files(store_id)
        with self._lock_for(store_id):
            return self._apply(self._plan(store_id, dim))

    def prepare(self, store_id: str, dim: int, filtered: bool = False) -> Rebuilding | None:
        """Blocking (short): None once the store's index is caught up (as ``catch_up``),
        or, when that takes adding more than INLINE_ADDS chunks at a new epoch (a store this
        replica did not hold, e.g. its owner just died), the rebuild started in the
        background (at most REBUILDERS at a time), which the caller searches around.
        ``filtered``: the search has a filter, so the attribute index is caught up with the
        store's files' states first (``sync_files``)."""
        if filtered:
            self.sync_files(store_id)
        with self._guard:
            building = self._building.get(store_id)
        if building is not None:
            return building
        with self._lock_for(store_id):
            with self._guard:
                building = self._building.get(store_id)
            if building is not None:
                return building
            plan = self._plan(store_id, dim)
            if not plan.full or len(plan.missing) <= INLINE_ADDS:
                self._apply(plan)
                return None
            with self._guard:
                done = self._builder.submit(self._rebuild, plan)
                building = Rebuilding(np.asarray(plan.walk.completed, dtype=np.int64), done)
                self._building[store_id] = building
            log.info(
                "rebuilding the index of %s from the database in the background",
                store_id,
                extra={"chunks": len(plan.missing)},
            )
            return building

    def sync_files(self, store_id: str) -> set[str] | None:
        """Blocking: tells the attribute index which of the store's files changed status or
        attributes (or were attached or detached) since this was last called for the store,
        whichever replica changed them; returns them, or None at the first look, when the
        attribute index forgets the store instead (what it holds may predate any change)."""
        if self.files is None:
            return set()
        digest = self.rows.files_digest(store_id)  # read first: a change after it is seen
        with self._guard:  # again next time
            seen = self._file_views.get(store_id)
            if seen is not None and seen[0] == digest:
                self._file_views.move_to_end(store_id)
                return set()
        now = {
            file_id: hash((status, attributes))
            for file_id, status, attributes in self.rows.file_states(store_id)
        }
        with self._guard:
            self._file_views.pop(store_id, None)
            self._file_views[store_id] = (digest, now)
            while len(self._file_views) > MAX_FILE_VIEWS:
                self._file_views.popitem(last=False)
        if seen is None:
            self.files.forget(store_id)
            return None
        before = seen[1]
        changed = {f for f in before.keys() | now.keys() if before.get(f) != now.get(f)}
        if changed:
            self.files.changed(store_id, changed)
        return changed

    def _rebuild(self, plan: _Plan) -> None:
        started = time.perf_counter()
        try:
            report = self._apply(plan)
        except Exception:  # the next search plans it again
            log.exception("rebuilding the index of %s failed", plan.store_id)
        else:
            log.info(
                "rebuilt the index of %s",
                plan.store_id,
                extra={"added": report.added, "seconds": round(time.perf_counter() - started, 3)},
            )
        finally:
            with self._guard:
                self._building.pop(plan.store_id, None)

    @property
    def rebuilds_in_progress(self) -> int:
        """Stores whose index is being rebuilt in the background (or queued for it)."""
        with self._guard:
            return len(self._building)

    def close(self) -> None:
        """Stops the background rebuilds (one in progress finishes its slice of vectors)."""
        self._closed = True
        self._builder.shutdown(wait=False, cancel_futures=True)

    def _plan(self, store_id: str, dim: int) -> _Plan:
        started = time.monotonic()
        epoch = self.epoch()
        index = self.indexes.get(store_id, dim)
        with self._guard:
            state = self._states.get(store_id)
        full = (
            state is None
            or state.epoch != epoch
            or time.monotonic() - state.reconciled_at >= self.full_every_s
        )
        if state is None or full:
            walk = self._walk_all(store_id)
        else:
            walk = self._walk_since(store_id, state.watermark)
        wanted = np.asarray(walk.completed, dtype=np.int64)
        if full:
            held = index.labels()
            missing = np.setdiff1d(wanted, held)
            extra = np.setdiff1d(held, np.asarray(walk.every, dtype=np.int64))
        else:
            missing = wanted[~index.holds(wanted)] if len(wanted) else wanted
            extra = np.empty(0, dtype=np.int64)
        return _Plan(store_id, dim, epoch, started, index, full, walk, missing, extra)

    def _apply(self, plan: _Plan) -> SyncReport:
        store_id, index = plan.store_id, plan.index
        added = self._add(index, plan.missing, plan.dim)
        if len(plan.extra):
            index.mark_deleted(plan.extra)
        if added or len(plan.extra):
            self.indexes.changed(store_id, index)
        keywords_followed = self._sync_keywords(plan)
        if self.files is not None:
            if plan.full:
                self.files.forget(store_id)
            elif len(plan.missing):
                self.files.changed(store_id, {plan.walk.files[int(i)] for i in plan.missing})
        with self._guard:
            before = self._states.get(store_id)
            reconciled_at = plan.started if plan.full or before is None else before.reconciled_at
            if not keywords_followed:
                reconciled_at = -math.inf  # the next plan is a full pass, which retries them
            self._states[store_id] = _State(plan.epoch, plan.walk.watermark, reconciled_at)
            self._states.move_to_end(store_id)
            while len(self._states) > MAX_STORES:
                evicted, _ = self._states.popitem(last=False)
                self._locks.pop(evicted, None)
        return SyncReport(store_id, added, len(plan.extra), plan.full, plan.walk.watermark)

    def _sync_keywords(self, plan: _Plan) -> bool:
        """The keyword index follows the vector index: the same chunks added, and at a full
        pass made to hold exactly the completed chunks (a chunk this replica's own ingest
        queued meanwhile may be added twice; the next full pass removes the copy).

        False when the index could not be written (tantivy's ValueError or an OSError, e.g.
        a full disk): that is logged and counted, not raised, so the search goes on."""
        if self.keywords is None or self.keyword_rows is None:
            return True
        try:
            if plan.full:
                wanted = np.asarray(plan.walk.completed, dtype=np.int64)
                self.keywords.reconcile(plan.store_id, wanted, self.keyword_rows)
            elif len(plan.missing):
                for start in range(0, len(plan.missing), LOAD_ROWS):
                    part = [int(i) for i in plan.missing[start : start + LOAD_ROWS]]
                    if self.keywords.add(plan.store_id, self.keyword_rows(part)):
                        self.keywords.flush(plan.store_id)
        except (OSError, ValueError) as exc:
            self.keyword_failures += 1
            log.warning(
                "keyword index of %s not caught up (a full pass again at its next search): %s",
                plan.store_id,
                exc,
            )
            return False
        return True

    def _walk_all(self, store_id: str) -> _Walk:
        """Every chunk id of the store, those of completed files apart, and the watermark:
        the store's commit sequence read first (every file stamped at or below it is
        committed, so its chunks are in the scan that follows)."""
        out = _Walk([], [], self.rows.commit_counter(store_id), {})
        cursor = 0
        while True:
            rows = self.rows.chunks_after(store_id, cursor, SCAN_ROWS)
            for row in rows:
                if row.completed:
                    out.completed.append(row.id)
                    out.files[row.id] = row.file_id
                out.every.append(row.id)
            if len(rows) < SCAN_ROWS:
                return out
            cursor = rows[-1].id

    def _walk_since(self, store_id: str, after: int) -> _Walk:
        """The chunk ids of the files completed with a commit sequence above ``after``, and
        the new watermark: the last such sequence."""
        out = _Walk([], [], after, {})
        while True:
            files = self.rows.committed_after(store_id, out.watermark, FILE_ROWS)
            if files:
                for chunk_id, file_id in self.rows.chunks_of_files(store_id, [f for f, _ in files]):
                    out.completed.append(chunk_id)
                    out.files[chunk_id] = file_id
                out.watermark = files[-1][1]
            if len(files) < FILE_ROWS:
                return out

    def _add(self, index: SyncedIndex, ids: npt.NDArray[np.int64], dim: int) -> int:
        added = 0
        for start in range(0, len(ids), LOAD_ROWS):
            if self._closed:
                break
            part = [int(i) for i in ids[start : start + LOAD_ROWS]]
            found = self.rows.vectors(part)
            keep = [i for i in part if len(found.get(i, b"")) == 4 * dim]
            if not keep:
                continue
            vectors = np.frombuffer(b"".join(found[i] for i in keep), dtype=np.float32)
            index.add(np.asarray(keep, dtype=np.int64), vectors.reshape(len(keep), dim))
            added += len(keep)
        return added
