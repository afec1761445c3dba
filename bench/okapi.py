"""Plain Okapi BM25 (k1 = 1.2, b = 0.75, Lucene's non-negative IDF), the baseline that
``bench/quality.py`` measures Quiver's rankers against.

Tokens are SQLite FTS5's ``porter unicode61 remove_diacritics 2`` tokenizer (lower case,
diacritics removed, split on anything but letters and digits, Porter-stemmed; no stop
words), obtained by indexing the texts in an in-memory FTS5 table and reading its
``fts5vocab`` instance table.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

K1 = 1.2
B = 0.75
TOKENIZER = "porter unicode61 remove_diacritics 2"


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Each text's tokens, in order, as FTS5 with Quiver's tokenizer stores them."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize='{TOKENIZER}')")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
        conn.executemany("INSERT INTO t (rowid, text) VALUES (?, ?)", enumerate(texts))
        out: list[list[tuple[int, str]]] = [[] for _ in texts]
        for term, doc, offset in conn.execute("SELECT term, doc, offset FROM v"):
            out[doc].append((offset, term))
        return [[term for _, term in sorted(tokens)] for tokens in out]
    finally:
        conn.close()


class Okapi:
    """BM25 over a fixed list of texts (chunks)."""

    def __init__(self, texts: Sequence[str]) -> None:
        tokens = tokenize(texts)
        self.count = len(texts)
        lengths = np.array([len(t) for t in tokens], dtype=np.float64)
        average = float(lengths.mean()) if self.count else 0.0
        self.norm = K1 * (1 - B + B * lengths / max(average, 1e-9))
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, words in enumerate(tokens):
            for term, tf in Counter(words).items():
                ids, tfs = postings.setdefault(term, ([], []))
                ids.append(i)
                tfs.append(tf)
        self.postings = {
            term: (np.asarray(ids, dtype=np.int64), np.asarray(tfs, dtype=np.float64))
            for term, (ids, tfs) in postings.items()
        }

    def idf(self, term: str) -> float:
        found = len(self.postings[term][0]) if term in self.postings else 0
        return math.log(1 + (self.count - found + 0.5) / (found + 0.5))

    def scores(self, query_tokens: Sequence[str]) -> npt.NDArray[np.float64]:
        """Every text's BM25 score for the query (each query token counted once per
        occurrence in the query, as Okapi BM25 does)."""
        out = np.zeros(self.count, dtype=np.float64)
        for term in query_tokens:
            if term not in self.postings:
                continue
            ids, tfs = self.postings[term]
            out[ids] += self.idf(term) * tfs * (K1 + 1) / (tfs + self.norm[ids])
        return out
