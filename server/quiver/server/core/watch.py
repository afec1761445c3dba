"""The watch hub: fan-out of batch changes to any number of WatchFileBatch streams.

Each watched batch has a feed: its newest sequence and state, and the log of file changes
since the feed opened (bounded: a file changes status a few times at most, and a batch has
at most 2,000 files). A watcher remembers only the last sequence it sent; when it wakes it
sends every change it has not sent, folded into one message, so a slow reader costs nothing
but its place in the log and never holds up processing or other watchers.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field

from quiver.server.core.models import BatchStatus, FileBatch, FileStatus, LastError


@dataclass(frozen=True)
class FileUpdate:
    file_id: str
    status: FileStatus
    last_error: LastError | None = None


@dataclass(frozen=True)
class WatchMessage:
    sequence: int
    snapshot: bool
    batch: FileBatch
    files: list[FileUpdate]


@dataclass
class _Feed:
    sequence: int
    batch: FileBatch
    seqs: list[int] = field(default_factory=list)
    updates: list[FileUpdate] = field(default_factory=list)
    waiters: set[asyncio.Event] = field(default_factory=set)

    def changes_after(self, sequence: int) -> list[FileUpdate]:
        start = bisect.bisect_right(self.seqs, sequence)
        newest: dict[str, FileUpdate] = {}
        for update in self.updates[start:]:
            newest.pop(update.file_id, None)
            newest[update.file_id] = update
        return list(newest.values())


def is_terminal(status: BatchStatus) -> bool:
    return status is not BatchStatus.IN_PROGRESS


class WatchHub:
    def __init__(self) -> None:
        self._feeds: dict[str, _Feed] = {}

    @property
    def watcher_count(self) -> int:
        return sum(len(f.waiters) for f in self._feeds.values())

    def publish(
        self, batch: FileBatch, sequence: int, changes: list[tuple[int, FileUpdate]]
    ) -> None:
        """Records changes (already committed) and wakes the batch's watchers."""
        feed = self._feeds.get(batch.id)
        if feed is None:
            return  # nobody watches: the database is the record
        for seq, update in changes:
            if seq > feed.sequence:  # older ones are in every follower's snapshot already
                feed.seqs.append(seq)
                feed.updates.append(update)
        feed.sequence = max(feed.sequence, sequence)
        feed.batch = batch
        for waiter in feed.waiters:
            waiter.set()

    def follow(self, batch: FileBatch, sequence: int) -> _Follower:
        """Starts following from ``sequence`` (what the caller's snapshot covered)."""
        feed = self._feeds.get(batch.id)
        if feed is None:
            feed = self._feeds[batch.id] = _Feed(sequence=sequence, batch=batch)
        return _Follower(self, batch.id, feed, sequence)

    def _release(self, batch_id: str, event: asyncio.Event) -> None:
        feed = self._feeds.get(batch_id)
        if feed is None:
            return
        feed.waiters.discard(event)
        if not feed.waiters:
            del self._feeds[batch_id]


class _Follower:
    """One watcher's cursor on a feed. Use as an async iterator; ends after a terminal state."""

    def __init__(self, hub: WatchHub, batch_id: str, feed: _Feed, sequence: int) -> None:
        self._hub = hub
        self._batch_id = batch_id
        self._feed = feed
        self._last = sequence
        self._event = asyncio.Event()
        feed.waiters.add(self._event)
        self._done = is_terminal(feed.batch.status) and feed.sequence <= sequence

    def close(self) -> None:
        self._hub._release(self._batch_id, self._event)

    def __aiter__(self) -> _Follower:
        return self

    async def __anext__(self) -> WatchMessage:
        if self._done:
            raise StopAsyncIteration
        while self._feed.sequence <= self._last:
            self._event.clear()
            await self._event.wait()
        feed = self._feed
        message = WatchMessage(feed.sequence, False, feed.batch, feed.changes_after(self._last))
        self._last = feed.sequence
        self._done = is_terminal(feed.batch.status)
        return message
