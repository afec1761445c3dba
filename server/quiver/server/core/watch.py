"""The watch hub: fan-out of batch changes to any number of WatchFileBatch streams.

Each watched batch has a feed: its newest sequence and state, and the log of file changes
since the feed opened (bounded: a file changes status a few times at most, and a batch has
at most 2,000 files). A watcher remembers only the last sequence it sent; when it wakes it
sends every change it has not sent, folded into one message, so a slow reader costs nothing
but its place in the log and never holds up processing or other watchers.

A change costs no work per watcher: it is logged, and the feed's watchers are woken once the
feed has been quiet for a moment that grows with the number of watchers (half a millisecond
per watcher on the server: 1,000 watchers hear of changes at most twice a second, each time
of all of them at once). They are woken a slice at a time, so other callers' work runs in
between, and watchers that wake together share one message. Watchers are capped per tenant
and in all; a caller past a cap gets RESOURCE_EXHAUSTED naming it. Never-read watchers
(whose HTTP/2 window is full) hold one message each in the transport and wake no more.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field

from quiver.server.core.errors import ResourceExhausted
from quiver.server.core.models import BatchStatus, FileBatch, FileStatus, LastError

WAKE_SLICE = 64
"""Watchers woken per turn of the event loop."""


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
    wake: asyncio.TimerHandle | None = None
    # Watchers that wake together send the same message: built once, for each last sequence.
    shared_at: int = -1
    shared: dict[int, WatchMessage] = field(default_factory=dict)

    def message_after(self, sequence: int) -> WatchMessage:
        if self.shared_at != self.sequence:
            self.shared_at, self.shared = self.sequence, {}
        message = self.shared.get(sequence)
        if message is None:
            message = WatchMessage(self.sequence, False, self.batch, self.changes_after(sequence))
            self.shared[sequence] = message
        return message

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
    def __init__(
        self,
        *,
        max_watchers: int = 1000,
        max_watchers_per_tenant: int = 250,
        seconds_per_watcher: float = 0.0005,
    ) -> None:
        self.max_watchers = max_watchers
        self.max_watchers_per_tenant = max_watchers_per_tenant
        self.seconds_per_watcher = seconds_per_watcher
        self._feeds: dict[str, _Feed] = {}
        self._tenants: dict[str, int] = {}
        self._count = 0

    @property
    def watcher_count(self) -> int:
        return self._count

    def watched(self) -> dict[str, int]:
        """The batches watched here, each with the newest sequence its feed has heard."""
        return {batch_id: feed.sequence for batch_id, feed in self._feeds.items()}

    def state_of(self, batch_id: str) -> tuple[FileBatch, int] | None:
        """A watched batch's newest state heard here and its sequence (None: not watched)."""
        feed = self._feeds.get(batch_id)
        return None if feed is None else (feed.batch, feed.sequence)

    def publish(
        self, batch: FileBatch, sequence: int, changes: list[tuple[int, FileUpdate]]
    ) -> None:
        """Records changes (already committed); the batch's watchers hear of them soon."""
        feed = self._feeds.get(batch.id)
        if feed is None:
            return  # nobody watches: the database is the record
        for seq, update in changes:
            if seq > feed.sequence:  # older ones are in every follower's snapshot already
                feed.seqs.append(seq)
                feed.updates.append(update)
        if sequence >= feed.sequence:  # an older read (another server's catch-up) keeps
            feed.sequence, feed.batch = sequence, batch  # the newer state it raced with
        if feed.wake is None:
            delay = self._count * self.seconds_per_watcher
            feed.wake = asyncio.get_running_loop().call_later(delay, self._wake, feed)

    def _wake(self, feed: _Feed) -> None:
        feed.wake = None
        self._wake_slice(list(feed.waiters))

    def _wake_slice(self, waiters: list[asyncio.Event]) -> None:
        for waiter in waiters[:WAKE_SLICE]:
            waiter.set()
        if len(waiters) > WAKE_SLICE:
            asyncio.get_running_loop().call_soon(self._wake_slice, waiters[WAKE_SLICE:])

    def follow(self, batch: FileBatch, sequence: int, tenant: str) -> Follower:
        """Starts following from ``sequence`` (what the caller's snapshot covered)."""
        mine = self._tenants.get(tenant, 0)
        if mine >= self.max_watchers_per_tenant:
            raise ResourceExhausted(
                f"you have {mine} WatchFileBatch streams open, the server's limit per tenant "
                "(--max-watchers-per-tenant); close some, or poll GetFileBatch",
                reason="TENANT_WATCHERS_EXHAUSTED",
            )
        if self._count >= self.max_watchers:
            raise ResourceExhausted(
                f"the server has {self._count} WatchFileBatch streams open, its limit "
                "(--max-watchers); retry shortly, or poll GetFileBatch",
                reason="WATCHERS_EXHAUSTED",
            )
        feed = self._feeds.get(batch.id)
        if feed is None:
            feed = self._feeds[batch.id] = _Feed(sequence=sequence, batch=batch)
        self._tenants[tenant] = mine + 1
        self._count += 1
        return Follower(self, batch.id, feed, sequence, tenant)

    def _release(self, batch_id: str, event: asyncio.Event, tenant: str) -> None:
        self._count -= 1
        left = self._tenants[tenant] - 1
        if left:
            self._tenants[tenant] = left
        else:
            del self._tenants[tenant]
        feed = self._feeds.get(batch_id)
        if feed is None:
            return
        feed.waiters.discard(event)
        if not feed.waiters:
            if feed.wake is not None:
                feed.wake.cancel()
            del self._feeds[batch_id]


class Follower:
    """One watcher's cursor on a feed. Use as an async iterator; ends after a terminal state."""

    def __init__(
        self, hub: WatchHub, batch_id: str, feed: _Feed, sequence: int, tenant: str
    ) -> None:
        self._hub = hub
        self._batch_id = batch_id
        self._feed = feed
        self._last = sequence
        self._tenant = tenant
        self._closed = False
        self._event = asyncio.Event()
        feed.waiters.add(self._event)
        self._done = is_terminal(feed.batch.status) and feed.sequence <= sequence

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._release(self._batch_id, self._event, self._tenant)

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> WatchMessage:
        if self._done:
            raise StopAsyncIteration
        # Only a wake of the feed sends: a watcher that was busy sending when changes came
        # still waits for their wake, so changes are folded for every watcher alike.
        while True:
            await self._event.wait()
            self._event.clear()
            if self._feed.sequence > self._last:
                break
        message = self._feed.message_after(self._last)
        self._last = message.sequence
        self._done = is_terminal(message.batch.status)
        return message
