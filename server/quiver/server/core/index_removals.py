"""Takes chunks out of a store's index off the event loop.

``mark_deleted`` needs the index's write lock, which an ingest may hold for a slice of
``add_items``; the event loop must not wait for it. The labels are hidden from searches at
once (``PendingLabels``) and marked deleted in a thread. A store deleted meanwhile (its
caches dropped, ``core/store_drops.py``) is left alone: its index is not opened again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np
from quiver.server.core.chunk_writer import PendingLabels
from quiver.server.core.ports import VectorIndexes

log = logging.getLogger("quiver.index")


class IndexRemovals:
    def __init__(
        self,
        indexes: VectorIndexes,
        pending: PendingLabels,
        dropped: Callable[[str], bool] = lambda store_id: False,
    ) -> None:
        self.indexes = indexes
        self.pending = pending
        self.dropped = dropped
        self._tasks: set[asyncio.Task[None]] = set()

    def remove_soon(self, store_id: str, dim: int, chunk_ids: list[int]) -> None:
        """From the event loop: hides the labels now, marks them deleted in a thread."""
        if not chunk_ids:
            return
        labels = np.asarray(chunk_ids, dtype=np.int64)
        self.pending.add(store_id, labels)
        task = asyncio.get_running_loop().create_task(self._remove(store_id, dim, labels))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, store_id: str, dim: int, labels: np.ndarray) -> None:
        try:
            if self.dropped(store_id):
                return
            index = self.indexes.get(store_id, dim)
            await asyncio.to_thread(index.mark_deleted, labels)
            self.indexes.changed(store_id, index)
        except Exception:  # the index keeps them; start-up reconciliation drops them
            log.exception("removing %d labels from the index of %s failed", len(labels), store_id)
        finally:
            self.pending.discard(store_id, labels)

    async def wait(self) -> None:
        """Until every removal started so far is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
