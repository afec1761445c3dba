"""The keyword side of search in SQLite: FTS5 over the chunks (``chunks_fts``, kept by
trigger), ranked by its ``bm25()`` (k1 = 1.2, b = 0.75). The core turns the scores into a
relevance (``core/keyword_ranking.py``)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence

from quiver.server.storage.database import Database
from quiver.server.storage.interfaces import BadKeywordQuery

TOKENIZER = "porter unicode61 remove_diacritics 2"  # the same as chunks_fts's
_stemmers = threading.local()


def _any_of(phrases: Sequence[str]) -> str:
    return " OR ".join('"' + p.replace('"', "") + '"' for p in phrases)


class Fts5Keywords:
    """Every method is blocking (they read on the calling thread's read-only connection):
    call them from a thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def best(
        self, store_id: str, phrases: Sequence[str], k: int, files: list[str] | None
    ) -> list[tuple[int, float]]:
        """The store's ``k`` best chunks holding any of ``phrases`` (in ``files`` if given),
        best first, with their BM25 score (positive, higher is better)."""
        try:
            rows = self._table_best(_any_of(phrases), store_id, files, k)
        except sqlite3.OperationalError as exc:
            raise BadKeywordQuery(str(exc)) from None
        if rows is None:
            rows = self.ranked(store_id, phrases, k, files)
        return rows

    def ranked(
        self, store_id: str, phrases: Sequence[str], k: int, files: list[str] | None
    ) -> list[tuple[int, float]]:
        """Like ``best``, ranking the store's matching chunks alone."""
        sql = (
            "SELECT c.id, bm25(chunks_fts) FROM chunks_fts "
            "JOIN chunks c ON c.id = chunks_fts.rowid "
            "WHERE chunks_fts MATCH ? AND c.vector_store_id = ?"
        )
        params: tuple[object, ...] = (store_id,)
        if files is not None:
            sql += " AND c.file_id IN (SELECT value FROM json_each(?))"
            params += (json.dumps(files),)
        sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
        try:
            rows = self.db.reader().execute(sql, (_any_of(phrases), *params, k)).fetchall()
        except sqlite3.OperationalError as exc:
            raise BadKeywordQuery(str(exc)) from None
        return [(int(i), -float(s)) for i, s in rows]

    def _table_best(
        self, expression: str, store_id: str, files: list[str] | None, k: int
    ) -> list[tuple[int, float]] | None:
        """The store's ``k`` best chunks by BM25 when FTS5's own top ``k`` over the whole
        table (``ORDER BY rank``: its sorter, no join per match, about half the cost) shows
        them: when all of those are the store's (in the filter's files), or when fewer than
        ``k`` chunks match in the whole table. None when other stores' chunks crowd the top:
        then the caller ranks the store's chunks alone."""
        reader = self.db.reader()
        top = reader.execute(
            "SELECT rowid, rank FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?",
            (expression, k),
        ).fetchall()
        if not top:
            return []
        sql = (
            "SELECT id FROM chunks WHERE vector_store_id = ? "
            "AND id IN (SELECT value FROM json_each(?))"
        )
        params: tuple[object, ...] = (store_id, json.dumps([i for i, _ in top]))
        if files is not None:
            sql += " AND file_id IN (SELECT value FROM json_each(?))"
            params += (json.dumps(files),)
        mine = {int(i) for (i,) in reader.execute(sql, params)}
        if len(mine) == len(top) or len(top) < k:
            return [(int(i), -float(s)) for i, s in top if i in mine]
        return None

    def holding(self, phrase: str) -> list[int]:
        """The ids of every chunk (of any store) holding the phrase."""
        try:
            return [
                int(chunk_id)
                for (chunk_id,) in self.db.reader().execute(
                    "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?", (_any_of([phrase]),)
                )
            ]
        except sqlite3.OperationalError as exc:
            raise BadKeywordQuery(str(exc)) from None

    def document_frequencies(self, words: Sequence[str]) -> tuple[int, list[int]]:
        """N, the number of chunks indexed, and for each word n, the number holding it (as
        the index stores it: lower-cased, diacritics removed, Porter-stemmed)."""
        reader = self.db.reader()
        total = self.row_count()
        stems = _stems(list(words))
        marks = ",".join("?" * len(stems))
        found = dict(
            reader.execute(f"SELECT term, doc FROM chunks_vocab WHERE term IN ({marks})", stems)
        )
        return total, [int(found.get(stem, 0)) for stem in stems]

    def row_count(self) -> int:
        """N of FTS5's BM25: the row count it keeps in its averages record (block 1 of
        ``chunks_fts_data``, a varint first)."""
        row = self.db.reader().execute("SELECT block FROM chunks_fts_data WHERE id = 1").fetchone()
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
