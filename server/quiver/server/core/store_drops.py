"""A deleted store's caches on this replica, dropped: its vector index (and its file), its
keyword index (and its directory), its attribute index entry and its index sync state.

The same drop serves a store deleted here (``VectorStores.delete``) and one deleted through
another replica sharing the database: ``drop_deleted`` compares the stores this replica
holds anything of with the database's rows and drops those whose row is gone (called by the
shared watch, ``core/shared_watch.py``, about once a second). Dropping twice, or dropping a
store never held here, does nothing.

The drop runs on a thread: it removes files and waits for the index locks (a save of the
vector index, a commit of the keyword index in progress). Each dropped store is remembered
(the newest ``REMEMBERED`` of them), so a search of it that raced with the drop answers
NOT_FOUND (``Searcher``), and drops again whatever it opened meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.errors import NotFound
from quiver.server.storage.interfaces import VectorStoreRepository

log = logging.getLogger("quiver.stores")

REMEMBERED = 65_536
"""Dropped store ids kept (about 5 MB at most); store ids are never reused."""


def store_not_found(store_id: str) -> NotFound:
    """The answer for a store that does not exist (or no longer does)."""
    return NotFound(f"no vector store with id {store_id[:80]!r}", reason="VECTOR_STORE_NOT_FOUND")


Drop = Callable[[str], None]
"""Forgets one store in one cache (blocking, idempotent)."""
Held = Callable[[], set[str]]
"""The stores one cache holds anything of (blocking)."""


class DroppableIndexes(Protocol):
    """An index manager whose stores can be listed and dropped (both blocking)."""

    def drop(self, store_id: str) -> None: ...

    def stores_held(self) -> set[str]: ...


class StoreDrops:
    """``caches``: each cache's (drop, held) pair, dropped in this order."""

    def __init__(
        self,
        rows: VectorStoreRepository,
        caches: list[tuple[Drop, Held]],
        *,
        remembered: int = REMEMBERED,
    ) -> None:
        if remembered < 1:
            raise ValueError(f"remembered must be at least 1, not {remembered}")
        self.rows = rows
        self.caches = caches
        self.remembered = remembered
        self._dropped: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.drops = 0
        """Stores dropped because their row was found gone (tests and logs read it)."""

    @classmethod
    def of(
        cls,
        rows: VectorStoreRepository,
        *,
        attributes: AttributeIndex,
        indexes: DroppableIndexes,
        keywords: DroppableIndexes,
        forget_sync: Drop | None = None,
    ) -> StoreDrops:
        """The drops of this server's caches: memory first, then the files."""
        caches: list[tuple[Drop, Held]] = [(attributes.forget, attributes.cached_store_ids)]
        if forget_sync is not None:  # held only with the store's vector index
            caches.append((forget_sync, set))
        caches += [
            (indexes.drop, indexes.stores_held),
            (keywords.drop, keywords.stores_held),
        ]
        return cls(rows, caches)

    def is_dropped(self, store_id: str) -> bool:
        with self._lock:
            return store_id in self._dropped

    def _remember(self, store_id: str) -> None:
        with self._lock:
            self._dropped[store_id] = None
            self._dropped.move_to_end(store_id)
            while len(self._dropped) > self.remembered:
                self._dropped.popitem(last=False)

    async def drop(self, store_id: str) -> None:
        """From the event loop, once the store's row is gone: every cache of it dropped
        (in a thread)."""
        self._remember(store_id)
        await asyncio.to_thread(self.drop_now, store_id)

    def drop_now(self, store_id: str) -> None:
        """Blocking: every cache of the store dropped; a cache that fails is logged and the
        others are dropped still (the next ``drop_deleted`` tries it again)."""
        self._remember(store_id)
        for forget, _ in self.caches:
            try:
                forget(store_id)
            except Exception:
                log.exception("dropping a cache of deleted store %s failed", store_id)

    async def gone(self, store_id: str) -> bool:
        """From the event loop, when a search of the store failed: whether the store was
        deleted meanwhile (dropped here, or its row gone: then dropped now), so the search
        answers NOT_FOUND. A read that fails says no (the search's own error stands)."""
        if not self.is_dropped(store_id):
            try:
                if not await asyncio.to_thread(self.rows.absent, [store_id]):
                    return False
            except Exception as exc:
                log.warning("could not tell whether store %s still exists: %s", store_id, exc)
                return False
        await self.drop(store_id)
        return True

    def held(self) -> set[str]:
        """Blocking: the stores this replica holds anything of."""
        out: set[str] = set()
        for _, held in self.caches:
            out |= held()
        return out

    def deleted_held(self) -> list[str]:
        """Blocking: the stores this replica holds anything of whose row is gone."""
        held = self.held()
        return self.rows.absent(sorted(held)) if held else []

    async def drop_deleted(self) -> list[str]:
        """From the event loop: drops every store held here whose row is gone (deleted
        through any replica); returns them."""
        gone = await asyncio.to_thread(self.deleted_held)
        for store_id in gone:
            log.info("dropping the caches of store %s, deleted elsewhere", store_id)
            await self.drop(store_id)
            self.drops += 1
        return gone
