"""The keyword side of hybrid search: Okapi BM25 over a store's chunks (SQLite FTS5's
``bm25()``, k1 = 1.2, b = 0.75), as a relevance in [0, 1].

A query's words (lower case, split on anything but letters and digits, a fixed list of
English stop words left out unless nothing else is left) are OR-ed; every word counts, however
common (leaving out common words cost 0.18 nDCG@10 on ``bench/quality.py``). A chunk's
keyword relevance is its BM25 score divided by the highest score the query could reach,
``(k1 + 1) · Σ idf(word)`` (a chunk holding every word infinitely often), with FTS5's own
``idf = ln((N - n + 0.5) / (n + 0.5))`` (at least 1e-6) over the N chunks of the table, n of
them holding the word. So it is 0 when no word of the query occurs in the chunk, and grows
with the share of the query's information the chunk holds: a query none of whose words occur
anywhere scores 0, whatever the store.

Apart, the chunks holding one of the queries as an exact phrase (several words in order) are
found, for a bounded boost in the fusion.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

K1 = 1.2
"""FTS5's ``bm25()`` term-frequency saturation (its default, used unchanged)."""
MAX_KEYWORDS = 64
MAX_PAIRS = 8
TOKENIZER = "porter unicode61 remove_diacritics 2"  # the same as chunks_fts's
_TOKEN = re.compile(r"[^\W_]+")  # unicode61's tokens: runs of letters and digits
_STOP_WORDS = (
    "a an and are as at be but by do does for from has have how i if in into is it its of "
    "on or so that the their then there these they this to was we were what when where "
    "which who why will with you your"
)
STOP_WORDS = frozenset(_STOP_WORDS.split())
"""Left out of the keyword query: function words whose IDF is near zero in any English
collection (they move no ranking) yet whose postings are the longest to read."""
_stemmers = threading.local()


@dataclass(frozen=True)
class KeywordMatches:
    """The best chunks by BM25, best first, with their relevance in [0, 1]."""

    relevance: dict[int, float] = field(default_factory=dict)
    phrased: frozenset[int] = frozenset()
    """Those holding one of the queries as an exact phrase."""
    paired: dict[int, float] = field(default_factory=dict)
    """Of those holding a pair of the query's adjacent words in order, the share of the
    query's pairs they hold."""
    complete: bool = True
    """Every chunk holding a query word is in ``relevance`` (fewer than asked for matched),
    so any other chunk's keyword relevance is exactly 0."""


@dataclass(frozen=True)
class QueryTerms:
    words: list[str]
    """The distinct words to OR (stop words left out unless nothing else is left)."""
    phrases: list[str]
    """The queries of several words, as exact phrases."""
    pairs: list[str]
    """Adjacent words of a query, neither a stop word, as two-word phrases."""


def query_terms(queries: Sequence[str]) -> QueryTerms:
    words: list[str] = []
    phrases: list[str] = []
    pairs: list[str] = []
    for query in queries:
        tokens = _TOKEN.findall(query.lower())[:MAX_KEYWORDS]
        if len(tokens) > 1:
            phrases.append(" ".join(tokens))
        pairs += [
            f"{a} {b}"
            for a, b in itertools.pairwise(tokens)
            if a not in STOP_WORDS and b not in STOP_WORDS
        ]
        words += tokens
    unique = list(dict.fromkeys(words))
    meaningful = [w for w in unique if w not in STOP_WORDS] or unique
    pairs = list(dict.fromkeys(pairs))
    if len(pairs) == 1 and pairs[0] in phrases:
        pairs = []  # a two-word query: its pair is the phrase
    return QueryTerms(meaningful[:MAX_KEYWORDS], phrases, pairs[:MAX_PAIRS])


def keyword_matches(
    reader: sqlite3.Connection,
    store_id: str,
    queries: Sequence[str],
    k: int,
    files: list[str] | None,
) -> KeywordMatches:
    """The ``k`` best chunks of the store by BM25 over the queries' words, and which of
    them hold an exact phrase; ``files`` limits both to the files a filter matched."""
    terms = query_terms(queries)
    if not terms.words:
        return KeywordMatches()
    best = (K1 + 1) * sum(idfs(reader, terms.words))
    sql = (
        "SELECT c.id, bm25(chunks_fts) FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
        "WHERE chunks_fts MATCH ? AND c.vector_store_id = ?"
    )
    params: tuple[object, ...] = (store_id,)
    if files is not None:
        sql += " AND c.file_id IN (SELECT value FROM json_each(?))"
        params += (json.dumps(files),)
    sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
    try:
        rows = _table_best(reader, _any_of(terms.words), store_id, files, k)
        if rows is None:
            rows = reader.execute(sql, (_any_of(terms.words), *params, k)).fetchall()
    except sqlite3.OperationalError:
        return KeywordMatches()  # an expression FTS5 cannot parse: the vector ranking stands
    relevance = {int(i): min(1.0, max(0.0, -float(s)) / best) for i, s in rows if best > 0}
    phrased: set[int] = set()
    if terms.phrases:
        try:
            held = reader.execute(sql, (_any_of(terms.phrases), *params, k)).fetchall()
        except sqlite3.OperationalError:
            held = []
        phrased = {int(i) for i, _ in held}
    return KeywordMatches(
        relevance,
        frozenset(phrased),
        _pair_shares(reader, terms.pairs, relevance.keys()),
        complete=len(rows) < k,
    )


def _table_best(
    reader: sqlite3.Connection,
    expression: str,
    store_id: str,
    files: list[str] | None,
    k: int,
) -> list[tuple[int, float]] | None:
    """The store's ``k`` best chunks by BM25 when FTS5's own top ``k`` over the whole table
    (``ORDER BY rank``: its sorter, no join per match, about half the cost) shows them: when
    all of those are the store's (in the filter's files), or when fewer than ``k`` chunks
    match in the whole table. None when other stores' chunks crowd the top: then the caller
    ranks the store's chunks alone."""
    top = reader.execute(
        "SELECT rowid, rank FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?",
        (expression, k),
    ).fetchall()
    if not top:
        return []
    sql = (
        "SELECT id FROM chunks WHERE vector_store_id = ? AND id IN (SELECT value FROM json_each(?))"
    )
    params: tuple[object, ...] = (store_id, json.dumps([i for i, _ in top]))
    if files is not None:
        sql += " AND file_id IN (SELECT value FROM json_each(?))"
        params += (json.dumps(files),)
    mine = {int(i) for (i,) in reader.execute(sql, params)}
    if len(mine) == len(top) or len(top) < k:
        return [(int(i), float(s)) for i, s in top if i in mine]
    return None


def _pair_shares(
    reader: sqlite3.Connection, pairs: Sequence[str], candidates: Iterable[int]
) -> dict[int, float]:
    """For each candidate holding any of the pairs, the share of the pairs it holds."""
    wanted = set(candidates)
    held: dict[int, int] = {}
    for pair in pairs:
        try:
            rows = reader.execute(
                "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?", (_any_of([pair]),)
            )
            for (chunk_id,) in rows:
                if chunk_id in wanted:
                    held[chunk_id] = held.get(chunk_id, 0) + 1
        except sqlite3.OperationalError:
            continue
    return {c: n / len(pairs) for c, n in held.items()}


def _any_of(phrases: Sequence[str]) -> str:
    return " OR ".join('"' + p.replace('"', "") + '"' for p in phrases)


def idfs(reader: sqlite3.Connection, words: Sequence[str]) -> list[float]:
    """FTS5's ``bm25()`` IDF of each word: ``ln((N - n + 0.5) / (n + 0.5))``, at least
    1e-6, where N is the number of rows in chunks_fts and n those holding the word."""
    total = row_count(reader)
    stems = _stems(list(words))
    marks = ",".join("?" * len(stems))
    found = dict(
        reader.execute(f"SELECT term, doc FROM chunks_vocab WHERE term IN ({marks})", stems)
    )
    out = []
    for stem in stems:
        n = int(found.get(stem, 0))
        out.append(max(1e-6, math.log((total - n + 0.5) / (n + 0.5))))
    return out


def row_count(reader: sqlite3.Connection) -> int:
    """N of FTS5's BM25: the row count it keeps in its averages record (block 1 of
    ``chunks_fts_data``, a varint first)."""
    row = reader.execute("SELECT block FROM chunks_fts_data WHERE id = 1").fetchone()
    return _varint(bytes(row[0])) if row and row[0] else 0


def _varint(data: bytes) -> int:
    """SQLite's (and FTS5's) variable-length integer at the start of ``data``."""
    value = 0
    for i, byte in enumerate(data[:9]):
        if i == 8:
            return (value << 8) | byte
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value
    return value


def _stems(words: list[str]) -> list[str]:
    """Each word as chunks_fts stores it (lower-cased, diacritics removed, Porter-stemmed),
    by running it through an in-memory FTS5 table with the same tokenizer."""
    conn: sqlite3.Connection | None = getattr(_stemmers, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:")
        conn.execute(f"CREATE VIRTUAL TABLE words USING fts5(word, tokenize='{TOKENIZER}')")
        conn.execute("CREATE VIRTUAL TABLE stems USING fts5vocab(words, instance)")
        _stemmers.conn = conn
    conn.execute("DELETE FROM words")
    conn.executemany("INSERT INTO words (rowid, word) VALUES (?, ?)", enumerate(words))
    found = dict((doc, term) for term, doc in conn.execute("SELECT term, doc FROM stems"))
    return [found.get(i, word) for i, word in enumerate(words)]
