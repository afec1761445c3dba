"""Watchers on this server hear of the batch changes other servers commit to a shared
database (PostgreSQL): each wake-up (a notification naming batches, or a periodic poll)
reads the watched batches' newer changes from the table, in order of their sequence, and
hands them to the watch hub as if they had been committed here. The hub drops what it has
already heard (a change committed here is published by the status book too).

A batch deleted with its store on another server ends ``failed`` there, its unfinished
files recorded failed in the same change, and its rows go in the same transaction: nothing
is left to read. So, for each watched batch, this server keeps what that change is made of:
the batch's state at the newest sequence it read and its files still in progress (caught
up from the same changes it publishes). When the batch's row is gone, its watchers here get
the terminal message the deleting server's watchers got: the next sequence, the batch
``failed`` with its unfinished files counted failed, each of them failed with the same
error (``status_book.BATCH_ENDED``). It is exact when this server had read the batch's last
change before the deletion (every change wakes it; a poll follows within a second).

A store deleted on another server leaves its caches here (its vector and keyword indexes
with their files, its attribute index entry, its index sync state): at a wake-up, at most
every ``STORE_CHECK_SECONDS``, the stores this server holds anything of are compared with
the table and those whose row is gone are dropped (``core/store_drops.py``), in a task of
its own (one at a time), so watchers never wait for files to be removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from quiver.server.core.models import BatchStatus, FileBatch, FileCounts, FileStatus, LastError
from quiver.server.core.status_book import BATCH_ENDED, StatusBook, batch_from_row
from quiver.server.core.store_drops import StoreDrops
from quiver.server.core.watch import FileUpdate, WatchHub
from quiver.server.storage.interfaces import BatchRepository

log = logging.getLogger("quiver.watch")

Wake = Callable[[set[str] | None], Awaitable[None]]
Listen = Callable[[Wake], Coroutine[Any, Any, None]]
"""Runs until cancelled, calling ``wake`` with the batch ids heard (None: check them all)."""

Found = tuple[FileBatch, int, list[tuple[int, FileUpdate]]]

STORE_CHECK_SECONDS = 1.0
"""At most this often, the stores held here are checked for deletion elsewhere."""


class Gone(enum.Enum):
    GONE = "the batch's row is gone"


GONE = Gone.GONE


@dataclass(frozen=True)
class _Known:
    """A watched batch as last read: its state at ``sequence`` and its unfinished files."""

    sequence: int
    batch: FileBatch
    unfinished: frozenset[str]


def ended_with_store(
    batch: FileBatch, sequence: int, unfinished: frozenset[str]
) -> tuple[FileBatch, int, list[tuple[int, FileUpdate]]]:
    """The change that ends a batch whose store was deleted (``StatusBook.end_batch``):
    ``failed``, its unfinished files failed with BATCH_ENDED, at the next sequence."""
    counts = batch.file_counts
    final = replace(
        batch,
        status=BatchStatus.FAILED,
        file_counts=FileCounts(
            in_progress=0,
            completed=counts.completed,
            failed=counts.failed + counts.in_progress,
            cancelled=counts.cancelled,
        ),
    )
    ended = sequence + 1
    updates = [(ended, FileUpdate(f, FileStatus.FAILED, BATCH_ENDED)) for f in sorted(unfinished)]
    return final, ended, updates


class SharedWatch:
    def __init__(
        self,
        batches: BatchRepository,
        book: StatusBook,
        hub: WatchHub,
        listen: Listen,
        *,
        drops: StoreDrops | None = None,
        store_check_s: float = STORE_CHECK_SECONDS,
    ) -> None:
        self.batches = batches
        self.book = book
        self.hub = hub
        self.listen = listen
        self.drops = drops
        self.store_check_s = store_check_s
        self._task: asyncio.Task[None] | None = None
        self._store_check: asyncio.Task[None] | None = None
        self._store_checked = float("-inf")
        self._known: dict[str, _Known] = {}
        """Per watched batch (bounded by the hub's watchers): what its end is made of."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.listen(self.catch_up), name="shared-watch")

    async def stop(self) -> None:
        for task in (self._task, self._store_check):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._store_check = None

    def _check_stores_soon(self) -> None:
        """Starts a check of the stores held here (``StoreDrops.drop_deleted``) unless one
        is running or one started less than ``store_check_s`` ago."""
        if self.drops is None or self._store_check is not None:
            return
        now = time.monotonic()
        if now - self._store_checked < self.store_check_s:
            return
        self._store_checked = now
        self._store_check = asyncio.create_task(self._check_stores(self.drops), name="store-drops")

    async def _check_stores(self, drops: StoreDrops) -> None:
        try:
            await drops.drop_deleted()
        except Exception as exc:  # e.g. the database restarting: the next wake-up retries
            log.warning("checking the stores held here for deletion failed: %s", exc)
        finally:
            self._store_check = None

    async def catch_up(self, batch_ids: set[str] | None) -> None:
        """Publishes the newer changes of the watched batches among ``batch_ids`` (all the
        watched ones for None; a batch watched since the last wake-up is read too). Reads run
        in a thread; a failed read is retried at the next wake-up (at most a poll interval
        later). Stores deleted elsewhere are checked for too (``_check_stores_soon``)."""
        self._check_stores_soon()
        watched = self.hub.watched()
        for gone in self._known.keys() - watched.keys():
            del self._known[gone]
        for batch_id, sequence in watched.items():
            if batch_ids is not None and batch_id not in batch_ids and batch_id in self._known:
                continue
            try:
                found = await asyncio.to_thread(self._read, batch_id, sequence)
            except Exception as exc:  # e.g. the database restarting: the next poll retries
                log.warning("reading the changes of batch %s failed: %s", batch_id, exc)
                return
            ended = self._ended(batch_id) if found is GONE else None
            if isinstance(found, tuple):
                self.hub.publish(*found)
            elif ended is not None:
                self.hub.publish(*ended)

    def _read(self, batch_id: str, sequence: int) -> Found | Gone | None:
        """Blocking (from a thread): the batch's changes after ``sequence``, None when there
        are none, GONE when its row is."""
        row = self.batches.get(batch_id)
        if row is None:
            return GONE
        known = self._known.get(batch_id)
        since = sequence if known is None else min(sequence, known.sequence)
        if row.sequence <= since and known is not None:
            return None
        changes = self.batches.sequenced_changes(batch_id, since, row.sequence)
        counts = self.book.batch_counts(batch_id)
        updates = [
            (
                seq,
                FileUpdate(
                    c.file_id,
                    FileStatus(c.status),
                    LastError(c.last_error_code, c.last_error_message or "")
                    if c.last_error_code
                    else None,
                ),
            )
            for seq, c in changes
        ]
        batch = batch_from_row(row, counts)
        self._remember(batch_id, row.sequence, batch, known, updates)
        if row.sequence <= sequence:
            return None
        return batch, row.sequence, updates

    def _remember(
        self,
        batch_id: str,
        sequence: int,
        batch: FileBatch,
        known: _Known | None,
        updates: list[tuple[int, FileUpdate]],
    ) -> None:
        """Keeps the batch's state at ``sequence`` with its unfinished files: read in full
        the first time, then followed through the changes read. A state whose files cannot
        be told at exactly ``sequence`` (it moved meanwhile) is read again next time."""
        if known is None:
            with self.book.db.transaction() as conn:
                unfinished = frozenset(self.batches.in_progress_files(conn, batch_id))
            again = self.batches.get(batch_id)
            if again is None or again.sequence != sequence:
                return
        else:
            still = set(known.unfinished)
            for _, update in updates:
                if update.status is FileStatus.IN_PROGRESS:
                    still.add(update.file_id)
                else:
                    still.discard(update.file_id)
            unfinished = frozenset(still)
        self._known[batch_id] = _Known(sequence, batch, unfinished)

    def _ended(self, batch_id: str) -> Found | None:
        """The watched batch's row is gone (deleted with its store by another server): the
        change that ended it there, made from what is known of it here (on the event loop:
        the hub's state is read where the status book publishes, so a batch this server
        deleted, whose end it has published, is not ended twice)."""
        known = self._known.pop(batch_id, None)
        state = self.hub.state_of(batch_id)
        if state is None:
            return None
        heard, sequence = state
        if heard.status is not BatchStatus.IN_PROGRESS:
            return None  # its watchers here have had their terminal message
        if known is not None and known.sequence >= sequence:
            return ended_with_store(known.batch, known.sequence, known.unfinished)
        log.warning(
            "batch %s was deleted with its store before its last changes were read here: "
            "its watchers get the end from its last state heard",
            batch_id,
        )
        return ended_with_store(heard, sequence, frozenset() if known is None else known.unfinished)
