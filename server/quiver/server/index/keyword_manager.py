"""The keyword indexes of all stores (``keyword.py``, tantivy), kept in step with the
database like the vector indexes: opened lazily, rebuilt from the chunk rows when missing
or damaged, reconciled at start, one directory per store under ``root``.

Writes are told from the event loop (``add`` when a file completes, ``remove_files`` when
files are detached, ``drop`` for a deleted store) and only queued there; a background
thread applies them in groups and commits (a tantivy commit costs tens of milliseconds, too
much for every file at ingest rates): every ``commit_seconds``, or at once when a store's
queue holds ``max_pending`` chunks (``add`` then returns True and the caller waits for
``flush`` off the event loop: the queue stays bounded). A search reads its writes: when the
store has writes not yet committed, ``searchable`` commits them first, on the search's
thread.

Crash-safety: the database is the record. Whatever a crash leaves uncommitted here is found
missing by ``reconcile`` at the next start (chunks of completed files the index lacks are
added from the rows; documents whose chunk is gone or not of a completed file are deleted;
an id held twice is indexed again once). Tantivy's commit is atomic (its meta.json is
switched in one rename), so a kill mid-commit leaves the previous commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from quiver.server.index.keyword import DamagedKeywordIndex, StoreKeywordIndex

log = logging.getLogger("quiver.index")

COMMIT_SECONDS = 1.0
MAX_PENDING_CHUNKS = 20_000
REBUILD_SLICE = 2_000
"""Chunk rows read from the database per step of a rebuild or reconciliation."""

RowLoader = Callable[[Sequence[int]], list[tuple[int, str, str]]]
"""(chunk id, file id, text) of these chunks (those that still exist)."""


@dataclass(frozen=True)
class KeywordReconcileReport:
    store_id: str
    added: int
    removed: int
    rebuilt: bool


@dataclass
class _Queue:
    ops: list[tuple[str, list[tuple[int, str, str]] | list[str]]] = field(default_factory=list)
    chunks: int = 0
    told: int = 0
    """Writes told so far; ``done`` of them are committed."""
    done: int = 0
    since: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while this store's index is written to (one writer at a time)."""


class KeywordIndexes:
    def __init__(
        self,
        root: Path,
        *,
        commit_seconds: float = COMMIT_SECONDS,
        max_pending: int = MAX_PENDING_CHUNKS,
    ) -> None:
        if not commit_seconds > 0:
            raise ValueError(f"keyword_commit_seconds must be above 0, not {commit_seconds}")
        if max_pending < 1:
            raise ValueError(f"keyword_pending_chunks must be at least 1, not {max_pending}")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.commit_seconds = commit_seconds
        self.max_pending = max_pending
        self._open: dict[str, StoreKeywordIndex] = {}
        self._queues: dict[str, _Queue] = {}
        self._lock = threading.Lock()  # guards _open and _queues (never held during I/O)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed_commits = 0

    def path_for(self, store_id: str) -> Path:
        return self.root / store_id

    # -- opening ---------------------------------------------------------------------------------

    def get(self, store_id: str) -> StoreKeywordIndex:
        """The store's index, opened (or created empty) on first use. Blocking."""
        with self._lock:
            index = self._open.get(store_id)
        if index is not None:
            return index
        with self._queue(store_id).lock:
            with self._lock:
                index = self._open.get(store_id)
            if index is None:
                index = StoreKeywordIndex.open(self.path_for(store_id))
                with self._lock:
                    self._open[store_id] = index
        return index

    def _queue(self, store_id: str) -> _Queue:
        with self._lock:
            queue = self._queues.get(store_id)
            if queue is None:
                queue = self._queues[store_id] = _Queue()
            return queue

    @property
    def open_count(self) -> int:
        return len(self._open)

    # -- writes, told from the event loop (no I/O) ------------------------------------------------

    def add(self, store_id: str, rows: list[tuple[int, str, str]]) -> bool:
        """Queues a completed file's chunks (chunk id, file id, text). True when the store's
        queue is full: the caller then waits for ``flush(store_id)`` off the event loop."""
        if not rows:
            return False
        queue = self._tell(store_id, ("add", rows), len(rows))
        return queue.chunks >= self.max_pending

    def remove_files(self, store_id: str, file_ids: list[str]) -> None:
        """Queues the removal of these files' chunks (after the commit that deleted them)."""
        if file_ids:
            self._tell(store_id, ("delete", list(file_ids)), 0)

    def _tell(
        self, store_id: str, op: tuple[str, list[tuple[int, str, str]] | list[str]], chunks: int
    ) -> _Queue:
        queue = self._queue(store_id)
        with self._lock:
            if not queue.ops:
                queue.since = time.monotonic()
            queue.ops.append(op)
            queue.chunks += chunks
            queue.told += 1
        self._start_thread()
        if queue.chunks >= self.max_pending:
            self._wake.set()
        return queue

    # -- applying them (threads) ------------------------------------------------------------------

    def searchable(self, store_id: str) -> StoreKeywordIndex:
        """The store's index with every write told so far committed (read-your-writes; if
        the commit fails, its last commit). Blocking: from the search's thread."""
        queue = self._queue(store_id)
        with self._lock:
            behind = queue.done < queue.told
        if behind:
            try:
                self.flush(store_id)
            except Exception as exc:  # e.g. a full disk: the last commit answers meanwhile
                self.failed_commits += 1
                log.warning("keyword index of %s not committed: %s", store_id, exc)
        return self.get(store_id)

    def flush(self, store_id: str) -> None:
        """Applies and commits the store's queued writes. Blocking."""
        queue = self._queue(store_id)
        with self._lock:
            if queue.done >= queue.told:
                return
        index = self.get(store_id)
        with queue.lock:
            with self._lock:
                ops, queue.ops = queue.ops, []
                queue.chunks = 0
                upto = queue.told
            if not ops:
                return  # committed by the flush this one waited for
            try:
                for kind, payload in ops:
                    if kind == "add":
                        index.add(payload)  # type: ignore[arg-type]
                    else:
                        index.delete_files(payload)  # type: ignore[arg-type]
                index.commit()
            except BaseException:
                index.rollback()
                with self._lock:  # tried again with the next flush, in the same order
                    queue.ops[:0] = ops
                    queue.chunks += sum(len(p) for k, p in ops if k == "add")
                raise
            with self._lock:
                queue.done = max(queue.done, upto)

    def flush_all(self) -> int:
        """Commits every store's queued writes; returns how many stores failed to."""
        failed = 0
        with self._lock:
            stores = [s for s, q in self._queues.items() if q.ops]
        for store_id in stores:
            try:
                self.flush(store_id)
            except Exception as exc:  # kept queued; reconciliation has the truth anyway
                failed += 1
                self.failed_commits += 1
                log.warning("keyword index of %s not committed: %s", store_id, exc)
        return failed

    def _start_thread(self) -> None:
        if self._thread is None and not self._stop.is_set():
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="keyword-commits", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.commit_seconds / 2)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                due = [
                    s
                    for s, q in self._queues.items()
                    if q.ops
                    and (q.chunks >= self.max_pending or now - q.since >= self.commit_seconds)
                ]
            for store_id in due:
                try:
                    self.flush(store_id)
                except Exception as exc:
                    self.failed_commits += 1
                    log.warning("keyword index of %s not committed: %s", store_id, exc)

    # -- stores ---------------------------------------------------------------------------------

    def drop(self, store_id: str) -> None:
        """A deleted store: its queued writes are forgotten, its index closed and removed.
        Blocking (call from a thread)."""
        queue = self._queue(store_id)
        with queue.lock:
            with self._lock:
                queue.ops, queue.chunks = [], 0
                queue.done = queue.told
                index = self._open.pop(store_id, None)
            if index is not None:
                index.close()
            StoreKeywordIndex.remove(self.path_for(store_id))
        with self._lock:
            self._queues.pop(store_id, None)

    def stores_held(self) -> set[str]:
        """The stores whose index is open here or has a directory here (blocking: lists the
        directory)."""
        on_disk = {p.name for p in self.root.iterdir() if p.is_dir()}
        with self._lock:
            return on_disk | self._open.keys()

    def forget_others(self, store_ids: set[str]) -> list[str]:
        """Removes the directories of stores not in ``store_ids`` (deleted before their index
        was); returns them. Blocking, at start."""
        gone = [p.name for p in self.root.iterdir() if p.is_dir() and p.name not in store_ids]
        for store_id in gone:
            self.drop(store_id)
        return gone

    def reconcile(
        self, store_id: str, stored: npt.NDArray[np.int64], load: RowLoader
    ) -> KeywordReconcileReport:
        """Makes the store's index hold exactly the chunk ids ``stored`` (those of its
        completed files), each once. A missing or damaged index is rebuilt from the rows.
        Blocking, at start (before any write is told)."""
        self.flush(store_id)
        rebuilt = not (self.path_for(store_id) / "meta.json").exists()
        try:
            index = self.get(store_id)
        except DamagedKeywordIndex as exc:
            log.warning("keyword index of %s is unusable (%s): rebuilding it", store_id, exc)
            StoreKeywordIndex.remove(self.path_for(store_id))
            index, rebuilt = self.get(store_id), True
        held = index.chunk_ids()
        unique, counts = np.unique(held, return_counts=True)
        twice = unique[counts > 1]
        stored = np.unique(stored)
        missing = np.setdiff1d(stored, unique, assume_unique=True)
        extra = np.setdiff1d(unique, stored, assume_unique=True)
        again = np.intersect1d(twice, stored, assume_unique=True)
        if not (len(missing) or len(extra) or len(twice)):
            return KeywordReconcileReport(store_id, 0, 0, rebuilt)
        queue = self._queue(store_id)
        with queue.lock:
            try:
                index.delete_chunks(int(c) for c in np.concatenate([extra, twice]))
                todo = np.concatenate([missing, again])
                for start in range(0, len(todo), REBUILD_SLICE):
                    index.add(load([int(c) for c in todo[start : start + REBUILD_SLICE]]))
                index.commit()
            except BaseException:
                index.rollback()
                raise
        return KeywordReconcileReport(store_id, len(missing), len(extra), rebuilt)

    def close(self) -> None:
        """Stops the commit thread, commits what is queued and lets go of the writers."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        self.flush_all()
        with self._lock:
            indexes = list(self._open.items())
            self._open.clear()
        for store_id, index in indexes:
            try:
                index.close()
            except Exception as exc:  # what was committed stays
                log.warning("keyword index of %s not closed cleanly: %s", store_id, exc)
