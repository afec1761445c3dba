"""The keyword side of hybrid search: Okapi BM25 over a store's chunks (its tantivy index,
``index/keyword.py``, stemmed words), as a relevance in [0, 1].

The candidates are the index's top k by its own BM25 (k1 = 1.2, b = 0.75, block-max WAND),
re-scored here with k1 = 0.9, b = 0.4 (Anserini's defaults for passages), from each
candidate's exact term frequencies and length and the store's document frequencies and
average chunk length: ``Σ idf(term) · tf · (k1 + 1) / (tf + k1 · (1 - b + b · dl / avgdl))``.
Chosen on ``bench/quality_variants.py`` seed 7 among ten settings; with the hash fusion
(phrase boost 0.6) ``auto`` gains nDCG@10 +0.001, +0.001 and +0.006 on seeds 7, 11 and 13
over tantivy's parameters (docs/BENCHMARKS.md, "Search quality").

A query's words (lower case, split on anything but letters and digits, a fixed list of
English stop words left out unless nothing else is left) are OR-ed; every other word counts,
however common (leaving out common words cost 0.18 nDCG@10 on ``bench/quality.py``); the
index's top-k collector (block-max WAND) keeps that cheap. A chunk's keyword relevance is its
BM25 score divided by the highest score the query could reach, ``(k1 + 1) · Σ idf(term)``
(a chunk holding every term infinitely often), with the index's own
``idf = ln(1 + (N - n + 0.5) / (n + 0.5))`` over the store's N chunks, n of them holding the
term. So it is 0 when no word of the query occurs in the chunk, and grows with the share of
the query's information the chunk holds: a query none of whose words occur anywhere scores
0, whatever the store.

A chunk's relevance also counts its file as a whole (passage and document evidence
combined, as in Callan's passage retrieval): the file's BM25 (k1 = 1.2, b = 0.75) from the
term frequencies of its chunks among the candidates, summed, over its total length against
the store's mean file length, divided by the same ``(k1 + 1) · Σ idf``:

    chunk    = bm25_chunk / ((0.9 + 1) · Σ idf)
    file     = bm25_file / ((1.2 + 1) · Σ idf)
    keyword  = (chunk + FILE_WEIGHT · file) / (1 + FILE_WEIGHT)       FILE_WEIGHT = 1.5

So a chunk of a file that is about the query as a whole ranks above a like chunk of a file
that mentions it in passing; a chunk holding no query word is not a candidate and scores 0
(its file's evidence counts only for the file's candidate chunks). A file's length is the
sum of its chunks' (overlaps counted twice, as in its term frequencies). With the hash
embedder, ``auto`` minus plain BM25 in nDCG@10 went from -0.000, +0.010, +0.007 to +0.010,
+0.022, +0.012 on ``bench/quality.py`` seeds 7, 11 and 13 (where the weight was chosen
among 0.25, 0.5, 1, 1.5 and 2), and from +0.001, +0.008 to +0.014, +0.021 on seeds 17 and
19, run once after the choice (docs/BENCHMARKS.md, "Search quality").

Apart, the chunks holding one of the queries as an exact phrase (several words in order) are
found, for a bounded boost in the fusion.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from quiver.server.core.ports import KeywordIndex

K1 = 0.9
"""BM25 term-frequency saturation of the re-scoring."""
B = 0.4
"""BM25 length normalisation of the re-scoring."""
FILE_K1 = 1.2
FILE_B = 0.75
"""BM25 parameters of a file's own score (Robertson's defaults)."""
FILE_WEIGHT = 1.5
"""Weight of the file's relevance beside the chunk's (which weighs 1)."""
MAX_KEYWORDS = 64
MAX_PAIRS = 8
_TOKEN = re.compile(r"[^\W_]+")  # unicode61's tokens: runs of letters and digits
_STOP_WORDS = (
    "a an and are as at be but by do does for from has have how i if in into is it its of "
    "on or so that the their then there these they this to was we were what when where "
    "which who why will with you your"
)
STOP_WORDS = frozenset(_STOP_WORDS.split())
"""Left out of the keyword query: function words whose IDF is near zero in any English
collection (they move no ranking) yet whose postings are the longest to read."""


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
    index: KeywordIndex,
    queries: Sequence[str],
    k: int,
    files: list[str] | None,
) -> KeywordMatches:
    """The ``k`` best chunks of the store by BM25 over the queries' words, and which of
    them hold an exact phrase; ``files`` limits both to the files a filter matched (inside
    the index's query, so k of them come back). Blocking (it reads the index): call it
    from a thread."""
    terms = query_terms(queries)
    stems = list(dict.fromkeys(t for w in terms.words for t in index.terms(w)))
    if not stems:
        return KeywordMatches()
    weights = idfs(index, stems)
    reach = sum(weights)
    rows = index.counted(stems, k, files)
    tfs = np.asarray([r[2] for r in rows], dtype=np.float64).reshape(len(rows), len(stems))
    lengths = np.asarray([r[1] for r in rows], dtype=np.float64)
    chunk = bm25_all(weights, tfs, lengths, index.average_length()) / ((K1 + 1) * reach or 1.0)
    file = file_relevance(index, weights, tfs, lengths, [r[3] for r in rows])
    scores = np.clip((chunk + FILE_WEIGHT * file) / (1.0 + FILE_WEIGHT), 0.0, 1.0)
    scored = sorted(
        zip([r[0] for r in rows], scores.tolist(), strict=True),
        key=lambda row: (-row[1], row[0]),
    )
    relevance = dict(scored) if reach > 0 else {}
    phrased: list[int] = []
    if terms.phrases:
        phrased = index.phrased([index.terms(p) for p in terms.phrases], k, files)
    return KeywordMatches(
        relevance,
        frozenset(phrased),
        _pair_shares(index, terms.pairs, list(relevance)),
        complete=len(rows) < k,
    )


def bm25(weights: Sequence[float], tfs: Sequence[int], length: int, average: float) -> float:
    """A chunk's BM25 score (``K1``, ``B``) from its terms' IDF and frequencies and its
    length; it grows with every frequency and, all else equal, falls with the length."""
    norm = K1 * (1 - B + B * length / average) if average > 0 else K1
    return sum(w * tf * (K1 + 1) / (tf + norm) for w, tf in zip(weights, tfs, strict=True) if tf)


def bm25_all(
    weights: Sequence[float],
    tfs: npt.NDArray[np.float64],
    lengths: npt.NDArray[np.float64],
    average: float,
    k1: float = K1,
    b: float = B,
) -> npt.NDArray[np.float64]:
    """``bm25`` of many chunks (or files) at once: ``tfs`` one row per chunk, one column per
    term."""
    norm = k1 * (1 - b + b * lengths / average) if average > 0 else np.full(len(lengths), k1)
    parts = tfs * (k1 + 1) / (tfs + norm[:, None])
    scores: npt.NDArray[np.float64] = parts @ np.asarray(weights, dtype=np.float64)
    return scores


def file_relevance(
    index: KeywordIndex,
    weights: Sequence[float],
    tfs: npt.NDArray[np.float64],
    lengths: npt.NDArray[np.float64],
    keys: Sequence[int],
) -> npt.NDArray[np.float64]:
    """For each candidate chunk, its file's relevance in [0, 1]: the file's BM25
    (``FILE_K1``, ``FILE_B``) from its candidate chunks' term frequencies, summed, its total
    length (at least those chunks' lengths: a file deleted meanwhile) and the store's mean
    file length, over ``(FILE_K1 + 1) · Σ idf``. Zeros when ``FILE_WEIGHT`` is 0."""
    out = np.zeros(len(keys), dtype=np.float64)
    reach = (FILE_K1 + 1) * sum(weights)
    if FILE_WEIGHT == 0 or not keys or reach <= 0:
        return out
    files, row_file = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
    file_tfs = np.zeros((len(files), tfs.shape[1]), dtype=np.float64)
    np.add.at(file_tfs, row_file, tfs)
    seen = np.zeros(len(files), dtype=np.float64)
    np.add.at(seen, row_file, lengths)
    known = index.file_lengths(files.tolist())
    total = np.maximum(seen, [known.get(int(f), 0) for f in files])
    scores = bm25_all(weights, file_tfs, total, index.mean_file_length(), FILE_K1, FILE_B)
    relevance: npt.NDArray[np.float64] = np.clip(scores / reach, 0.0, 1.0)[row_file]
    return relevance


def _pair_shares(
    index: KeywordIndex, pairs: Sequence[str], candidates: Sequence[int]
) -> dict[int, float]:
    """For each candidate holding any of the pairs, the share of the pairs it holds."""
    if not pairs:
        return {}
    held = index.phrases_held([index.terms(pair) for pair in pairs], candidates)
    return {c: n / len(pairs) for c, n in held.items()}


def idfs(index: KeywordIndex, terms: Sequence[str]) -> list[float]:
    """The index's BM25 IDF of each term: ``ln(1 + (N - n + 0.5) / (n + 0.5))``, where N is
    the number of indexed chunks and n those holding the term.

    N and the n are two reads: a commit between them can make an n exceed N, so each n is
    taken as at most N (the term is then in every chunk: the smallest IDF)."""
    total, counts = index.document_frequencies(terms)
    held = [min(n, total) for n in counts]
    return [math.log(1 + (total - n + 0.5) / (n + 0.5)) for n in held]
