"""Recall@10 of the hnswlib index with the server's default settings, on real text.

Built in-process (no gRPC) to stay fast: the first 20,200 chunks of ``tests/support/corpus.py``'s
real text (the kernel's documentation when installed, else Vim's manual, then Python's
stdlib) in non-overlapping 200-token chunks, embedded with the default ``hash`` embedder
and added to a ``VectorIndex`` configured exactly as ``Settings()`` configures a store's
index (M, ef_construction, ef_search). Queries are 200 held-out chunks (never added to the
index); the truth is numpy brute force over the same vectors.

Run with ``-s`` to see the recall at a few other ef values too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from quiver.server.config import Settings
from quiver.server.embedders.hashing import HashEmbedder
from quiver.server.index.hnsw import VectorIndex
from quiver.server.ingest.chunking import ChunkingParams, chunk_text

from tests.support.corpus import corpus_files

CHUNKS = 20_000
QUERIES = 200
K = 10
CHUNKING = ChunkingParams(max_tokens=200, overlap_tokens=0)
MIN_RECALL = 0.95

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


def real_chunks(count: int) -> list[str]:
    texts: list[str] = []
    for path in corpus_files(10**9):
        texts += [c.text for c in chunk_text(path.read_text(encoding="utf-8"), CHUNKING)]
        if len(texts) >= count:
            return texts
    pytest.fail(f"the corpus gives only {len(texts)} chunks of {CHUNKING.max_tokens} tokens")


def label_recall(found: Labels, truth: Labels) -> float:
    """|found ∩ truth| / k, averaged over the queries."""
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return sum(hits) / truth.size


def tie_aware_recall(found: Labels, similarity: Matrix, truth: Labels) -> float:
    """Counts a found label as right when it is as similar as the k-th true neighbour: the
    corpus holds identical chunks (licence headers …), which brute force orders arbitrarily."""
    kth = np.take_along_axis(similarity, truth[:, -1:], axis=1)
    found_similarity = np.take_along_axis(similarity, np.maximum(found, 0), axis=1)
    good = (found >= 0) & (found_similarity >= kth - 1e-6)
    return float(good.sum()) / truth.size


@pytest.mark.slow
def test_recall_at_10_with_default_settings(tmp_path: Path) -> None:
    defaults = Settings()
    texts = real_chunks(CHUNKS + QUERIES)
    order = np.random.default_rng(0).permutation(len(texts))
    held_out, indexed = order[:QUERIES], np.sort(order[QUERIES:])
    assert len(indexed) >= CHUNKS

    embedder = HashEmbedder(defaults.embedding_dimensions)
    data = embedder.embed([texts[i] for i in indexed])
    queries = embedder.embed([texts[i] for i in held_out])

    index = VectorIndex(
        tmp_path / "recall.hnsw",
        defaults.embedding_dimensions,
        m=defaults.hnsw_m,
        ef_construction=defaults.hnsw_ef_construction,
        ef_search=defaults.hnsw_ef_search,
    )
    for start in range(0, len(data), 5_000):
        labels = np.arange(start, min(start + 5_000, len(data)), dtype=np.int64)
        index.add(labels, data[labels])
    assert index.live_count == len(data)
    assert index.ef_search == defaults.hnsw_ef_search

    # The truth: cosine similarity over the vectors as hnswlib holds them (unit length).
    stored = index.vectors(np.arange(len(data), dtype=np.int64))
    similarity = (queries @ stored.T).astype(np.float32)
    truth = np.argsort(-similarity, axis=1, kind="stable")[:, :K]

    found, _ = index.knn(queries, K)
    recall = label_recall(found, truth)
    tied = tie_aware_recall(found, similarity, truth)

    lines = [
        f"recall@{K} on {len(data):,} chunks, {QUERIES} held-out queries "
        f"(M={defaults.hnsw_m}, ef_construction={defaults.hnsw_ef_construction})"
    ]
    for ef in sorted({64, 100, 128, 200, 256, 400, defaults.hnsw_ef_search}):
        at_ef, _ = index.knn(queries, K, ef=ef)
        mark = "  <- default" if ef == defaults.hnsw_ef_search else ""
        lines.append(
            f"  ef_search={ef:<4} recall {label_recall(at_ef, truth):.4f}  "
            f"tie-aware {tie_aware_recall(at_ef, similarity, truth):.4f}{mark}"
        )
    print("\n" + "\n".join(lines))

    assert recall >= MIN_RECALL, "\n".join(lines)
    assert tied >= recall
