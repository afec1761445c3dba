"""SearchVectorStore: embed the query, k-NN in the store's index (or exact search when a
filter leaves few chunks), optionally fused with a keyword ranking (the store's tantivy
index, ``index/keyword.py``).

Scores, always in [0, 1], higher is better, comparable across rankers:

- ranker ``none``: the cosine similarity of query and chunk, clipped to [0, 1].
- ranker ``auto`` (and dated aliases such as ``default-2024-11-15``): a weighted mean of
  that cosine similarity and the chunk's keyword relevance (its BM25 score over the highest
  the query could reach, raised by bounded boosts when the chunk holds a query as an exact
  phrase or pairs of its adjacent words), with weights that depend on the store's embedder:
  ``core/fusion.py`` has the formula, ``core/keyword_ranking.py`` the keyword side.

``score_threshold`` drops results scoring below it, on that same scale.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from quiver.server.core.attribute_index import AttributeIndex, Selection
from quiver.server.core.blas_threads import one_blas_thread
from quiver.server.core.chunk_writer import PendingLabels
from quiver.server.core.errors import FieldViolation
from quiver.server.core.filters import Filter
from quiver.server.core.fusion import fuse, fusion_for
from quiver.server.core.index_sync import BRIDGE_MAX_CHUNKS, IndexSync, Rebuilding
from quiver.server.core.keyword_ranking import KeywordMatches, keyword_matches
from quiver.server.core.models import AttributeValue
from quiver.server.core.ports import KeywordIndexes, VectorIndexes
from quiver.server.core.principal import Principal
from quiver.server.core.query_embedding import QueryEmbedding
from quiver.server.core.row_scan import ranked
from quiver.server.core.store_drops import StoreDrops, store_not_found
from quiver.server.core.validation import raise_if
from quiver.server.core.vector_stores import VectorStores
from quiver.server.embedders.base import Embedder
from quiver.server.storage.interfaces import ChunkRepository
from quiver.server.storage.rows import StoreRow

MAX_QUERIES = 10
MAX_QUERY_CHARS = 4096
MAX_RESULTS = 50
DEFAULT_RESULTS = 10
FUSION_CANDIDATES = 50
EXACT_READ_SLICE = 10_000
"""Chunk ids per database read of an exact search (under SQLite's bound parameters)."""
EXACT_FROM_DATABASE_MAX = 2000
"""Most chunks an exact search reads from the database when the attribute index holds no
vectors for the store (measured: 200 vectors ~1.3 ms at 20k chunks; above ~2,000 hnswlib
with the allowed set as its filter is faster)."""
EXACT_INLINE_VALUES = 1 << 18
"""An exact search over at most this many cached vector values (512 rows of 512: ~0.05 ms
quiet, core/row_scan.py) runs on the event loop, a larger one on a thread."""
_DATED_DEFAULT = re.compile(r"^default-\d{4}-\d{2}-\d{2}$")


EmbedderFor = Callable[[str, int, bool], Embedder]


@dataclass(frozen=True)
class SearchRequest:
    queries: list[str]
    max_results: int
    filter: Filter | None
    hybrid: bool
    score_threshold: float


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    file_id: str
    filename: str
    score: float
    attributes: dict[str, AttributeValue]
    text: str


def check_search(
    queries: list[str],
    max_results: int,
    filter: Filter | None,
    ranker: str,
    score_threshold: float,
) -> SearchRequest:
    out: list[FieldViolation] = []
    if not 1 <= len(queries) <= MAX_QUERIES:
        out.append(
            FieldViolation("query", f"must hold 1…{MAX_QUERIES} strings, not {len(queries)}")
        )
    for i, query in enumerate(queries):
        if not query.strip():
            out.append(FieldViolation(f"query[{i}]", "must not be empty"))
        elif len(query) > MAX_QUERY_CHARS:
            out.append(
                FieldViolation(f"query[{i}]", f"is longer than {MAX_QUERY_CHARS} characters")
            )
    if max_results == 0:
        max_results = DEFAULT_RESULTS
    elif not 1 <= max_results <= MAX_RESULTS:
        out.append(FieldViolation("max_num_results", f"must be 1…{MAX_RESULTS}, not {max_results}"))
    ranker = ranker or "auto"
    if ranker not in ("auto", "none") and not _DATED_DEFAULT.match(ranker):
        out.append(
            FieldViolation(
                "ranking_options.ranker",
                f'must be "auto", "none" or a dated default such as "default-2024-11-15"; '
                f"not {ranker[:40]!r}",
            )
        )
    if not (math.isfinite(score_threshold) and 0.0 <= score_threshold <= 1.0):
        out.append(
            FieldViolation("ranking_options.score_threshold", f"must be 0…1, not {score_threshold}")
        )
    raise_if(out)
    return SearchRequest(queries, max_results, filter, ranker != "none", score_threshold)


class Searcher:
    def __init__(
        self,
        stores: VectorStores,
        indexes: VectorIndexes,
        embedder_for: EmbedderFor,
        *,
        exact_max_chunks: int,
        query_embedding: QueryEmbedding,
        attributes: AttributeIndex,
        keywords: KeywordIndexes,
        pending: PendingLabels | None = None,
        sync: IndexSync | None = None,
        drops: StoreDrops | None = None,
    ) -> None:
        self.stores = stores
        self.db = stores.db
        self.chunks: ChunkRepository = stores.db.chunks
        self.keywords = keywords
        self.indexes = indexes
        self.embedder_for = embedder_for
        self.exact_max_chunks = exact_max_chunks
        self.pending = pending or PendingLabels()
        self.query_embedding = query_embedding
        self.attributes = attributes
        self.sync = sync
        self.drops = drops
        one_blas_thread()  # exact searches' matrix products: see core/blas_threads.py
        """Catches the store's index (and attribute index) up with chunks other replicas
        committed (read-your-writes), before a search reads them."""

    async def search(
        self,
        principal: Principal,
        store_id: str,
        request: SearchRequest,
        deadline: float | None = None,
    ) -> list[SearchHit]:
        """``deadline``: the caller's (``time.monotonic()``), which bounds the query's
        embedding (core/query_embedding.py)."""
        store = await self.stores.calls.run(self._store_for, principal, store_id)
        dim = int(store.embedding_dimensions)
        if dim == 0:  # learned from the embedder's first vectors: none were stored yet
            return []
        try:
            hits = await self._search(store, request, deadline)
        except Exception as exc:
            # Deleted meanwhile (here or through another replica): what this search opened
            # again is dropped, and it answers NOT_FOUND.
            if self.drops is not None and await self.drops.gone(store_id):
                raise store_not_found(store_id) from exc
            raise
        if self.drops is not None and self.drops.is_dropped(store_id):
            # The store was deleted while it was searched (here or on another replica).
            await self.drops.drop(store_id)
            raise store_not_found(store_id)
        return hits

    async def _search(
        self, store: StoreRow, request: SearchRequest, deadline: float | None
    ) -> list[SearchHit]:
        store_id, dim = store.id, int(store.embedding_dimensions)
        # On a thread: building a local: model's embedder loads it (once per server).
        embedder = await asyncio.to_thread(
            self.embedder_for, store.embedding_model, dim, store.dimensions_sent
        )
        embedded = await self.query_embedding.embed(embedder, request.queries, deadline)
        query = _unit(embedded.sum(axis=0))
        wanted = (
            max(FUSION_CANDIDATES, 4 * request.max_results)
            if request.hybrid
            else request.max_results
        )
        rebuilding = None
        if self.sync is not None and self.sync.active():
            rebuilding = await asyncio.to_thread(
                self.sync.prepare, store_id, dim, request.filter is not None
            )
        selection = await self._allowed(store_id, request.filter, dim)
        files = None if selection is None else selection.files
        allowed = None if selection is None else selection.labels
        # The keyword ranking reads the store's index on a thread of its own, beside the
        # vector search.
        keywords = (
            asyncio.create_task(
                asyncio.to_thread(self._keywords, store_id, request.queries, wanted, files, query)
            )
            if request.hybrid
            else None
        )
        bridge = await _bridge(rebuilding, allowed)
        if bridge is not None:  # the store's index is being rebuilt: rank its chunks exactly
            vector_ranking = await asyncio.to_thread(
                self._exact, store_id, dim, query, bridge, wanted
            )
        else:
            vector_ranking = await self._vector_ranking(store_id, dim, query, selection, wanted)
        if keywords is not None:
            keyword, cosines = await keywords
            fusion = fusion_for(store.embedding_model)
            scored = fuse(fusion, vector_ranking, keyword, cosines)
        else:
            scored = [(c, max(0.0, min(1.0, s))) for c, s in vector_ranking]
        scored = [(c, s) for c, s in scored if s >= request.score_threshold]
        return await self.stores.calls.run(self._hits, store_id, scored, request.max_results)

    def _store_for(self, principal: Principal, store_id: str) -> StoreRow:
        """On a database thread: the store's row (FAILED_PRECONDITION once expired), and the
        search counted as activity."""
        store = self.stores.require_writable(
            principal, store_id, refused="can no longer be searched"
        )
        self.stores.touch_if_possible(store_id)
        return store

    # -- which chunks may match --------------------------------------------------------------

    async def _allowed(self, store_id: str, filter: Filter | None, dim: int) -> Selection | None:
        """With a filter: the completed files it matches, their chunk ids and (when cached)
        their vectors, from the store's attribute index (core/attribute_index.py): here when
        that is cheap (a cached selection, a small filter), else (first use, unread changes,
        a big filter, vectors to gather) from a thread."""
        if filter is None:
            return None
        selection = self.attributes.select_inline(store_id, filter, dim)
        if selection is None:
            selection = await asyncio.to_thread(self.attributes.select, store_id, filter, dim)
        return selection

    # -- vector rankings -----------------------------------------------------------------------

    async def _vector_ranking(
        self,
        store_id: str,
        dim: int,
        query: npt.NDArray[np.float32],
        selection: Selection | None,
        k: int,
    ) -> list[tuple[int, float]]:
        """Unfiltered: hnswlib. Filtered: exact over the selection's cached vectors when it
        has at most ``exact_max_chunks``; exact over vectors read from the database when
        they are not cached and few; else hnswlib with the selection as its filter."""
        if selection is None:
            return await asyncio.to_thread(self._approximate, store_id, dim, query, None, k)
        scan = selection.scan
        if scan is not None and len(scan) <= self.exact_max_chunks:
            if len(scan) * dim <= EXACT_INLINE_VALUES:
                return selection.top(query, k)
            return await asyncio.to_thread(selection.top, query, k)
        if scan is None and len(selection.labels) <= min(
            self.exact_max_chunks, EXACT_FROM_DATABASE_MAX
        ):
            return await asyncio.to_thread(self._exact, store_id, dim, query, selection.labels, k)
        return await asyncio.to_thread(self._approximate, store_id, dim, query, selection, k)

    def _exact(
        self,
        store_id: str,
        dim: int,
        query: npt.NDArray[np.float32],
        allowed: npt.NDArray[np.int64],
        k: int,
    ) -> list[tuple[int, float]]:
        """Brute force over few chunks, their stored vectors read from the database (from a
        thread). Measured at 20k chunks: 200 vectors in ~1.3 ms this way against ~12 ms
        through hnswlib's ``get_items`` (docs/BENCHMARKS.md, filtered search)."""
        ids: list[int] = []
        blobs: list[bytes] = []
        wanted = allowed.tolist()
        for start in range(0, len(wanted), EXACT_READ_SLICE):
            for chunk_id, blob in self.chunks.vectors_from_thread(
                wanted[start : start + EXACT_READ_SLICE]
            ):
                if len(blob) == 4 * dim:
                    ids.append(chunk_id)
                    blobs.append(blob)
        if not ids:
            return []
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
        norms = np.linalg.norm(vectors, axis=1)
        similarity = ((vectors @ query) / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return ranked(np.asarray(ids, dtype=np.int64), similarity, k)  # ties by chunk id

    def _approximate(
        self,
        store_id: str,
        dim: int,
        query: npt.NDArray[np.float32],
        allowed: Selection | None,
        k: int,
    ) -> list[tuple[int, float]]:
        index = self.indexes.get(store_id, dim)
        hidden = self.pending.of(store_id) if allowed is None else frozenset()
        if allowed is None and not hidden:
            labels, distances = index.knn(query, k)
        elif allowed is None:  # skip chunks of a file still being committed
            labels, distances = index.knn(query, k, filter=lambda label: label not in hidden)
        else:  # the set is made once per cached selection
            labels, distances = index.knn(query, k, filter=allowed.members().__contains__)
        return [
            (int(label), 1.0 - float(distance))
            for label, distance in zip(labels[0], distances[0], strict=True)
            if label >= 0
        ]

    # -- keyword ranking -------------------------------------------------------------------------

    def _keywords(
        self,
        store_id: str,
        queries: list[str],
        k: int,
        files: list[str] | None,
        query: npt.NDArray[np.float32],
    ) -> tuple[KeywordMatches, dict[int, float]]:
        """The keyword ranking (core/keyword_ranking.py) in the store's index, with every
        write told so far committed first, and the cosine similarity of its chunks (their
        stored vectors) for the fusion."""
        index = self.keywords.searchable(store_id)
        found = keyword_matches(index, queries, k, files)
        if not found.relevance:
            return found, {}
        rows = self.chunks.vectors_from_thread(list(found.relevance))
        cosines = {
            int(i): float(np.frombuffer(blob, dtype=np.float32) @ query)
            for i, blob in rows
            if len(blob) == 4 * len(query)
        }
        return found, cosines

    # -- results ---------------------------------------------------------------------------------

    def _hits(self, store_id: str, scored: list[tuple[int, float]], limit: int) -> list[SearchHit]:
        """Rows for the best chunks that still exist (a file deleted meanwhile drops out)."""
        if not scored:
            return []
        top = scored[: limit * 2]
        rows = self.chunks.hits(store_id, [c for c, _ in top])
        hits = [
            SearchHit(
                chunk_id=chunk_id,
                file_id=rows[chunk_id].file_id,
                filename=rows[chunk_id].filename,
                score=score,
                attributes=rows[chunk_id].attributes,
                text=rows[chunk_id].text,
            )
            for chunk_id, score in top
            if chunk_id in rows
        ]
        return hits[:limit]


async def _bridge(
    rebuilding: Rebuilding | None, allowed: npt.NDArray[np.int64] | None
) -> npt.NDArray[np.int64] | None:
    """While the store's index is rebuilt in the background (core/index_sync.py): the chunk
    ids to rank exactly instead (the filter's, else every completed file's), or None once
    the index may be searched: there is no rebuild, or there were too many chunks to rank
    exactly, so the rebuild was awaited (without holding a thread)."""
    if rebuilding is None:
        return None
    bridge = rebuilding.completed if allowed is None else allowed
    if len(bridge) <= BRIDGE_MAX_CHUNKS:
        return bridge
    await asyncio.shield(asyncio.wrap_future(rebuilding.done))
    return None


def _unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norm = float(np.linalg.norm(vector))
    out = vector / norm if norm > 0 else vector
    return np.asarray(out, dtype=np.float32)
