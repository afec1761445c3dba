"""Watchers on this server hear of the batch changes other servers commit to a shared
database (PostgreSQL): each wake-up (a notification naming batches, or a periodic poll)
reads the watched batches' newer changes from the table, in order of their sequence, and
hands them to the watch hub as if they had been committed here. The hub drops what it has
already heard (a change committed here is published by the status book too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from quiver.server.core.models import FileBatch, FileStatus, LastError
from quiver.server.core.status_book import StatusBook, batch_from_row
from quiver.server.core.watch import FileUpdate, WatchHub
from quiver.server.storage.interfaces import BatchRepository

log = logging.getLogger("quiver.watch")

Wake = Callable[[set[str] | None], Awaitable[None]]
Listen = Callable[[Wake], Coroutine[Any, Any, None]]
"""Runs until cancelled, calling ``wake`` with the batch ids heard (None: check them all)."""


class SharedWatch:
    def __init__(
        self, batches: BatchRepository, book: StatusBook, hub: WatchHub, listen: Listen
    ) -> None:
        self.batches = batches
        self.book = book
        self.hub = hub
        self.listen = listen
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.listen(self.catch_up), name="shared-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def catch_up(self, batch_ids: set[str] | None) -> None:
        """Publishes the newer changes of the watched batches among ``batch_ids`` (all the
        watched ones for None). Reads run in a thread; a failed read is retried at the next
        wake-up (at most a poll interval later)."""
        watched = self.hub.watched()
        for batch_id, sequence in watched.items():
            if batch_ids is not None and batch_id not in batch_ids:
                continue
            try:
                found = await asyncio.to_thread(self._read, batch_id, sequence)
            except Exception as exc:  # e.g. the database restarting: the next poll retries
                log.warning("reading the changes of batch %s failed: %s", batch_id, exc)
                return
            if found is not None:
                self.hub.publish(*found)

    def _read(
        self, batch_id: str, sequence: int
    ) -> tuple[FileBatch, int, list[tuple[int, FileUpdate]]] | None:
        row = self.batches.get(batch_id)
        if row is None or row.sequence <= sequence:
            return None
        changes = self.batches.sequenced_changes(batch_id, sequence, row.sequence)
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
        return batch_from_row(row, counts), row.sequence, updates
