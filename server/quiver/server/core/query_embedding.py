"""Search queries embedded off the event loop. A provider that calls out over the network
(``openai:``) gets a lane of its own: a few daemon threads and a bounded wait list, so a slow
or hung endpoint holds up only the searches of its own stores, never the event loop, the
default thread pool the other stores' searches use, or another provider's lane.

Each query embedding ends by its deadline (the search RPC's, else ``default_wait_s`` from
now): past it the search answers DEADLINE_EXCEEDED and the embedder itself stops waiting
for the endpoint (``DeadlineEmbedder.embed_until``), which frees the lane's thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from quiver.server.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from quiver.server.embedders.base import (
    DeadlineEmbedder,
    Embedder,
    EmbeddingDeadlineExceeded,
    EmbeddingError,
    FloatMatrix,
    embed_queries,
)

log = logging.getLogger("quiver.server.query_embedding")


@dataclass(frozen=True)
class LaneLimits:
    """``concurrency`` embeddings run at once, ``queue`` more may wait; ``flags`` names the
    settings in the RESOURCE_EXHAUSTED message when both are full."""

    concurrency: int
    queue: int
    flags: str


_Work = tuple[Future[FloatMatrix], Callable[[], FloatMatrix]]


class _Lane:
    def __init__(self, name: str, limits: LaneLimits) -> None:
        self.name = name
        self.limits = limits
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._threads = [
            threading.Thread(target=self._run, name=f"query-embed-{name}-{i}", daemon=True)
            for i in range(limits.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def admitted(self) -> int:
        with self._lock:
            return self._admitted

    def submit(self, call: Callable[[], FloatMatrix]) -> Future[FloatMatrix]:
        with self._lock:
            if self._admitted >= self.limits.concurrency + self.limits.queue:
                raise ResourceExhausted(
                    f"{self._admitted} search queries are being embedded by or waiting for "
                    f"the '{self.name}' embedding endpoint, which is not keeping up; retry "
                    f"later (the limits are {self.limits.flags})",
                    reason="EMBEDDER_BUSY",
                )
            self._admitted += 1
        future: Future[FloatMatrix] = Future()
        self._work.put((future, call))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._work.put(None)

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            future, call = work
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(call())
                    except BaseException as exc:  # delivered to the waiting search
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._admitted -= 1


class QueryEmbedding:
    """Embeds search queries: on the provider's lane when it has one (``lanes`` maps a
    provider, the model name's part before ':', to its limits), else on the default thread
    pool (``hash``: pure CPU, quick)."""

    def __init__(self, lanes: dict[str, LaneLimits], default_wait_s: float) -> None:
        self._lanes = {name: _Lane(name, limits) for name, limits in lanes.items()}
        self.default_wait_s = default_wait_s

    def admitted(self, provider: str) -> int:
        """Query embeddings running or waiting on ``provider``'s lane."""
        lane = self._lanes.get(provider)
        return 0 if lane is None else lane.admitted

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()

    async def embed(
        self, embedder: Embedder, texts: Sequence[str], deadline: float | None
    ) -> FloatMatrix:
        """The queries' vectors; DEADLINE_EXCEEDED past ``deadline`` (``time.monotonic()``),
        RESOURCE_EXHAUSTED when the lane is full, UNAVAILABLE when the endpoint fails."""
        lane = self._lanes.get(embedder.model.partition(":")[0])
        try:
            if lane is None:  # in-process (hash, local:): the default threads
                return await asyncio.to_thread(embed_queries, embedder, texts)
            if deadline is None:
                deadline = time.monotonic() + self.default_wait_s
            until = deadline

            def call() -> FloatMatrix:
                if isinstance(embedder, DeadlineEmbedder):
                    return embedder.embed_until(texts, until)
                return embed_queries(embedder, texts)

            future = lane.submit(call)
            try:
                return await asyncio.wait_for(
                    asyncio.wrap_future(future), max(0.0, until - time.monotonic())
                )
            except TimeoutError:
                raise _deadline(lane.name) from None
        except EmbeddingDeadlineExceeded:
            raise _deadline(embedder.model) from None
        except EmbeddingError as exc:
            log.warning("query embedding failed: %s", exc)
            raise Unavailable(
                f"the embedding endpoint could not embed the query: {exc}",
                reason="EMBEDDING_FAILED",
            ) from exc


def _deadline(name: str) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the '{name}' embedding endpoint did not embed the query before the search's deadline"
    )
