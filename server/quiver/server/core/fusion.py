"""Hybrid scores: one relevance in [0, 1] per chunk from its vector similarity and its
keyword relevance, weighted by what the store's embedder is worth.

    keyword  = (chunk + 1.5 · file) / 2.5, each a BM25 over ((k1 + 1) · Σ idf(query word))
               of the chunk (k1 0.9, b 0.4) and of its file (k1 1.2, b 0.75):
               keyword_ranking.py
    boost    = min(1, phrase_boost · [the chunk holds a query as an exact phrase]
                      + pair_boost · share of the query's adjacent word pairs it holds)
    keyword' = keyword + boost · (1 - keyword)
    score    = (vector_weight · max(0, cosine) + keyword') / (vector_weight + 1)

The score is a fixed, increasing function of the two signals, so a chunk that is better on
both never scores lower, and a query none of whose words occur scores at most
``vector_weight / (vector_weight + 1)`` times its cosine similarity: as low under ``auto`` as
under ``none``. The candidates are the union of the best by vector and the best by keyword;
a vector candidate outside the keyword candidates counts keyword 0 (exact when fewer
keyword candidates than asked for matched; otherwise it scored below all of them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from quiver.server.core.keyword_ranking import KeywordMatches


@dataclass(frozen=True)
class Fusion:
    vector_weight: float
    """Weight of the cosine similarity, the keyword relevance weighing 1."""
    phrase_boost: float
    """Share of the way from keyword relevance to 1 that an exact phrase adds."""
    pair_boost: float = 0.0
    """Share of the way to 1 that holding every pair of adjacent query words adds (in
    proportion to the share of pairs held)."""


FUSION: dict[str, Fusion] = {
    # The lexical hash embedder mostly repeats the keyword signal; a little of it helps.
    # Tuned with bench/quality.py --sweep (3,000 kernel-doc sections, 1,000 title queries):
    # nDCG@10 0.631 against plain BM25's 0.620; at phrase boost 0.1, vector weight 0 gives
    # 0.630, 0.25 0.632, 1 0.606; the pair boost adds 0.006; a phrase boost of 0.5 (so that
    # a chunk holding the query word for word comes first) costs 0.001 there. On a held-out
    # sample (--seed 11) auto is level with BM25 (0.613 against 0.616). Pseudo-relevance
    # feedback, an unstemmed second field, pairs within a window and document-level
    # evidence each lost on both samples (bench/quality_variants.py, docs/BENCHMARKS.md).
    # With the keyword side re-scored by BM25 k1 0.9, b 0.4 (keyword_ranking.py), every
    # matching chunk's keyword relevance rises a little, so the phrase boost is 0.6 (0.5
    # no longer put both chunks holding one of two queries word for word in the top 3,
    # tests/test_search.py); 0.6 is 0.001 below 0.5 on seeds 7 and 11, level on 13.
    # With the file evidence in the keyword side (keyword_ranking.FILE_WEIGHT 1.5) auto is
    # +0.010 … +0.022 over plain BM25 on five samples. With it (file weight 1), w 0 and 0.5
    # lost on seeds 7, 11 and 13; p 0.3 gained 0.000 … 0.002, which p keeps at 0.6 anyway:
    # the benchmark's right sections never hold their title word for word (by its
    # construction), so there a phrase boost can only lift wrong ones.
    "hash": Fusion(vector_weight=0.25, phrase_boost=0.6, pair_boost=0.15),
    # A local: model adds what keywords miss. all-MiniLM-L6-v2, bench/quality.py --model
    # local:all-minilm-l6-v2 --sweep (150 kernel-doc sections, 85 title queries, 800/400
    # chunks): nDCG@10 at vector weight 0.5 0.835, 1 0.851, 1.5 0.852, 2 0.842, 3 0.824;
    # plain BM25 0.786. 1 and 1.5 are level within the noise of 85 queries: 1 stays.
    "local": Fusion(vector_weight=1.0, phrase_boost=0.5, pair_boost=0.15),
    # A real model (openai:<model>) adds what keywords miss: equal weight (not measured here).
    "default": Fusion(vector_weight=1.0, phrase_boost=0.5, pair_boost=0.15),
}


def fusion_for(embedding_model: str) -> Fusion:
    """The fusion weights for a store's embedder: ``hash``, or any model (``openai:…``)."""
    return FUSION.get(embedding_model.split(":", 1)[0], FUSION["default"])


def fuse(
    fusion: Fusion,
    vector: list[tuple[int, float]],
    keyword: KeywordMatches,
    cosines: Mapping[int, float],
) -> list[tuple[int, float]]:
    """Every candidate with its fused score, best first (ties by chunk id).

    ``vector``: (chunk id, cosine similarity) of the best by vector; ``cosines``: the
    cosine similarity of keyword candidates the vector side did not return."""
    similarity = dict(vector)
    similarity.update({c: s for c, s in cosines.items() if c not in similarity})
    ids = list(dict.fromkeys([*similarity, *keyword.relevance]))
    if not ids:
        return []
    cos = np.clip(np.asarray([similarity.get(c, 0.0) for c in ids], dtype=np.float64), 0, 1)
    kw = np.asarray([keyword.relevance.get(c, 0.0) for c in ids], dtype=np.float64)
    phrased = np.asarray([c in keyword.phrased for c in ids], dtype=np.float64)
    paired = np.asarray([keyword.paired.get(c, 0.0) for c in ids], dtype=np.float64)
    boost = np.minimum(1.0, fusion.phrase_boost * phrased + fusion.pair_boost * paired)
    kw = kw + boost * (1.0 - kw)
    score: npt.NDArray[np.float64] = (fusion.vector_weight * cos + kw) / (
        fusion.vector_weight + 1.0
    )
    order = sorted(range(len(ids)), key=lambda i: (-score[i], ids[i]))
    return [(ids[i], float(min(1.0, max(0.0, score[i])))) for i in order]
