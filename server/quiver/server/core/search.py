"""SearchVectorStore: embed the query, k-NN in the store's index (or exact search when a
filter leaves few chunks), optionally fused with an FTS5 keyword ranking.

Scores, always in [0, 1], higher is better:

- ranker ``none``: the cosine similarity of query and chunk, clipped to [0, 1].
- ranker ``auto`` (and dated aliases such as ``default-2024-11-15``): reciprocal rank
  fusion of the vector ranking, the BM25 keyword ranking and, when a query of several words
  occurs as an exact phrase, the ranking of the chunks holding it: ``Σ 1/(60 + rank)`` over
  the rankings that returned anything, divided by its best possible value. So 1.0 means
  "first in every ranking", 0.5 "first in one of two rankings and absent from the other".
  The phrase ranking makes an exact phrase match count twice (it also heads the keyword
  ranking), so the best chunk holding the phrase always comes before chunks that merely
  share its words, however high the vector ranking puts those.

``score_threshold`` drops results scoring below it, on that same scale.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from quiver.server.core.chunk_writer import PendingLabels
from quiver.server.core.errors import FieldViolation
from quiver.server.core.filters import AttributeTable, Filter
from quiver.server.core.models import AttributeValue, FileStatus
from quiver.server.core.principal import Principal
from quiver.server.core.validation import raise_if
from quiver.server.core.vector_stores import VectorStores
from quiver.server.embedders.base import Embedder
from quiver.server.index.manager import IndexManager

RRF_K = 60
MAX_QUERIES = 10
MAX_QUERY_CHARS = 4096
MAX_RESULTS = 50
DEFAULT_RESULTS = 10
FUSION_CANDIDATES = 50
MAX_KEYWORDS = 64
_DATED_DEFAULT = re.compile(r"^default-\d{4}-\d{2}-\d{2}$")
_WORD = re.compile(r"\w+")
# Left out of the keyword OR-query (not of phrases): they match most chunks and make BM25
# sort tens of thousands of rows while adding almost nothing to the ranking.
_STOP_WORDS = (
    "a an and are as at be but by do does for from has have how i if in into is it its of "
    "on or so that the their then there these they this to was we were what when where "
    "which who why will with you your"
)
STOP_WORDS = frozenset(_STOP_WORDS.split())
COMMON_TERM_SHARE = 0.05
"""A word found in more than this share of all chunks is left out of the keyword OR-query
(its IDF is near zero, yet BM25 would score and sort every chunk holding it)."""
MIN_CHUNKS_FOR_PRUNING = 2000
_TOKENIZER = "porter unicode61 remove_diacritics 2"  # the same as chunks_fts's
_stemmers = threading.local()


def _stems(words: list[str]) -> list[str]:
    """Each word as chunks_fts stores it (lower-cased, diacritics removed, Porter-stemmed),
    by running it through an in-memory FTS5 table with the same tokenizer."""
    conn: sqlite3.Connection | None = getattr(_stemmers, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:")
        conn.execute(f"CREATE VIRTUAL TABLE words USING fts5(word, tokenize='{_TOKENIZER}')")
        conn.execute("CREATE VIRTUAL TABLE stems USING fts5vocab(words, instance)")
        _stemmers.conn = conn
    conn.execute("DELETE FROM words")
    conn.executemany("INSERT INTO words (rowid, word) VALUES (?, ?)", enumerate(words))
    found = dict((doc, term) for term, doc in conn.execute("SELECT term, doc FROM stems"))
    return [found.get(i, word) for i, word in enumerate(words)]


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
        indexes: IndexManager,
        embedder_for: EmbedderFor,
        *,
        exact_max_chunks: int,
        pending: PendingLabels | None = None,
    ) -> None:
        self.stores = stores
        self.db = stores.db
        self.indexes = indexes
        self.embedder_for = embedder_for
        self.exact_max_chunks = exact_max_chunks
        self.pending = pending or PendingLabels()

    async def search(
        self, principal: Principal, store_id: str, request: SearchRequest
    ) -> list[SearchHit]:
        store = self.stores.require_writable(
            principal, store_id, refused="can no longer be searched"
        )
        self.stores.touch_if_possible(store_id)
        dim = int(store["embedding_dimensions"])
        if dim == 0:  # learned from the embedder's first vectors: none were stored yet
            return []
        embedder = self.embedder_for(store["embedding_model"], dim, bool(store["dimensions_sent"]))
        embedded = await asyncio.to_thread(embedder.embed, request.queries)
        query = _unit(embedded.sum(axis=0))
        wanted = (
            max(FUSION_CANDIDATES, 4 * request.max_results)
            if request.hybrid
            else request.max_results
        )
        files, allowed = await asyncio.to_thread(self._allowed, store_id, request.filter)
        # The keyword ranking reads SQLite on a thread of its own, beside the vector search.
        keywords = (
            asyncio.create_task(
                asyncio.to_thread(self._keywords, store_id, request.queries, wanted, files)
            )
            if request.hybrid
            else None
        )
        if allowed is not None and len(allowed) <= self.exact_max_chunks:
            vector_ranking = await asyncio.to_thread(
                self._exact, store_id, dim, query, allowed, wanted
            )
        else:
            vector_ranking = await asyncio.to_thread(
                self._approximate, store_id, dim, query, allowed, wanted
            )
        if keywords is not None:
            keyword, phrase = await keywords
            scored = _fuse([[c for c, _ in vector_ranking], keyword, phrase])
        else:
            scored = [(c, max(0.0, min(1.0, s))) for c, s in vector_ranking]
        scored = [(c, s) for c, s in scored if s >= request.score_threshold]
        return self._hits(store_id, scored, request.max_results)

    # -- which chunks may match --------------------------------------------------------------

    def _allowed(
        self, store_id: str, filter: Filter | None
    ) -> tuple[list[str] | None, npt.NDArray[np.int64] | None]:
        """With a filter: the completed files it matches, and their chunk ids. Blocking (it
        reads every completed file's attributes): call it from a thread."""
        if filter is None:
            return None, None
        reader = self.db.reader()
        rows = reader.execute(
            "SELECT file_id, attributes FROM vector_store_files "
            "WHERE vector_store_id = ? AND status = ?",
            (store_id, FileStatus.COMPLETED.value),
        ).fetchall()
        table = AttributeTable([json.loads(attributes) for _, attributes in rows])
        files = [rows[i][0] for i in sorted(table.select(filter))]
        ids = [
            r[0]
            for r in reader.execute(
                "SELECT id FROM chunks WHERE vector_store_id = ? "
                "AND file_id IN (SELECT value FROM json_each(?))",
                (store_id, json.dumps(files)),
            )
        ]
        return files, np.asarray(ids, dtype=np.int64)

    # -- vector rankings -----------------------------------------------------------------------

    def _exact(
        self,
        store_id: str,
        dim: int,
        query: npt.NDArray[np.float32],
        allowed: npt.NDArray[np.int64],
        k: int,
    ) -> list[tuple[int, float]]:
        """Brute force over few chunks (from a thread: it reads the index under its lock)."""
        if len(allowed) == 0:
            return []
        vectors = self.indexes.get(store_id, dim).vectors(allowed)
        similarity = vectors @ query
        top = np.argsort(-similarity, kind="stable")[:k]
        return [(int(allowed[i]), float(similarity[i])) for i in top]

    def _approximate(
        self,
        store_id: str,
        dim: int,
        query: npt.NDArray[np.float32],
        allowed: npt.NDArray[np.int64] | None,
        k: int,
    ) -> list[tuple[int, float]]:
        index = self.indexes.get(store_id, dim)
        hidden = self.pending.of(store_id) if allowed is None else frozenset()
        if allowed is None and not hidden:
            labels, distances = index.knn(query, k)
        elif allowed is None:  # skip chunks of a file still being committed
            labels, distances = index.knn(query, k, filter=lambda label: label not in hidden)
        else:
            members = set(allowed.tolist())
            labels, distances = index.knn(query, k, filter=members.__contains__)
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
    ) -> tuple[list[int], list[int]]:
        """BM25 over FTS5, on a read-only connection of the calling thread: chunks holding a
        query's exact phrase first, then those holding any of its words (stop words left out
        unless nothing else is left); and, apart, the chunks holding an exact phrase.
        ``files`` limits both to the files a filter matched."""
        words: list[str] = []
        phrases: list[str] = []
        for query in queries:
            terms = _WORD.findall(query.lower())
            if len(terms) > 1:
                phrases.append('"' + " ".join(terms[:MAX_KEYWORDS]) + '"')
            words += terms
        unique = list(dict.fromkeys(words))
        meaningful = [w for w in unique if w not in STOP_WORDS] or unique
        if not meaningful:
            return [], []
        reader = self.db.reader()
        meaningful = _without_common(reader, meaningful[:MAX_KEYWORDS])
        expressions = [" OR ".join(phrases)] if phrases else []
        expressions.append(" OR ".join(f'"{w}"' for w in meaningful))
        sql = (
            "SELECT c.id FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
            "WHERE chunks_fts MATCH ? AND c.vector_store_id = ?"
        )
        params: tuple[object, ...] = (store_id,)
        if files is not None:
            sql += " AND c.file_id IN (SELECT value FROM json_each(?))"
            params += (json.dumps(files),)
        sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
        ranking: list[int] = []
        phrased: list[int] = []
        seen: set[int] = set()
        for n, expression in enumerate(expressions):
            try:
                rows = reader.execute(sql, (expression, *params, k)).fetchall()
            except sqlite3.OperationalError:
                continue  # an expression FTS5 cannot parse: the vector ranking still stands
            for (chunk_id,) in rows:
                if chunk_id not in seen and len(ranking) < k:
                    seen.add(chunk_id)
                    ranking.append(chunk_id)
            if phrases and n == 0:
                phrased = list(ranking)
            if len(ranking) >= k:
                break
        return ranking, phrased

    # -- results ---------------------------------------------------------------------------------

    def _hits(self, store_id: str, scored: list[tuple[int, float]], limit: int) -> list[SearchHit]:
        """Rows for the best chunks that still exist (a file deleted meanwhile drops out)."""
        if not scored:
            return []
        top = scored[: limit * 2]
        marks = ",".join("?" * len(top))
        rows = {
            r["id"]: r
            for r in self.db.execute(
                "SELECT c.id, c.file_id, c.text, f.attributes, files.filename FROM chunks c "
                "JOIN vector_store_files f ON f.vector_store_id = c.vector_store_id "
                "AND f.file_id = c.file_id AND f.status = 'completed' "
                "JOIN files ON files.id = c.file_id "
                f"WHERE c.vector_store_id = ? AND c.id IN ({marks})",
                (store_id, *[c for c, _ in top]),
            )
        }
        hits = [
            SearchHit(
                chunk_id=chunk_id,
                file_id=rows[chunk_id]["file_id"],
                filename=rows[chunk_id]["filename"],
                score=score,
                attributes=json.loads(rows[chunk_id]["attributes"]),
                text=rows[chunk_id]["text"],
            )
            for chunk_id, score in top
            if chunk_id in rows
        ]
        return hits[:limit]


def _without_common(reader: sqlite3.Connection, words: list[str]) -> list[str]:
    """``words`` less those found in more than COMMON_TERM_SHARE of all chunks (counted over
    the whole database); the rarest word stays if every one is common."""
    row = reader.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
    chunks = int(row[0]) if row else 0
    if chunks < MIN_CHUNKS_FOR_PRUNING or not words:
        return words
    stems = _stems(words)
    marks = ",".join("?" * len(stems))
    frequency = dict(
        reader.execute(f"SELECT term, doc FROM chunks_vocab WHERE term IN ({marks})", stems)
    )
    counts = [int(frequency.get(stem, 0)) for stem in stems]
    kept = [w for w, n in zip(words, counts, strict=True) if n <= COMMON_TERM_SHARE * chunks]
    return kept or [words[counts.index(min(counts))]]


def _unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norm = float(np.linalg.norm(vector))
    out = vector / norm if norm > 0 else vector
    return np.asarray(out, dtype=np.float32)


def _fuse(rankings: list[list[int]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion, scaled so that first place in every ranking scores 1.0."""
    used = [r for r in rankings if r]
    if not used:
        return []
    scores: dict[int, float] = {}
    for ranking in used:
        for rank, chunk_id in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    best = len(used) / (RRF_K + 1)
    fused = sorted(scores.items(), key=lambda item: -item[1])
    return [(chunk_id, min(1.0, score / best)) for chunk_id, score in fused]
