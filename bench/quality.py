"""Retrieval quality on labelled real text: nDCG@10, MRR@10 and recall@10 of every Quiver
ranker, through the gRPC API of a real server, next to plain Okapi BM25 over the very same
chunks.

The collection (``bench/quality_corpus.py``): sections of the Linux kernel's documentation
(``apt-get install linux-doc-6.1``); a document is a section's body without its title, a
query is a section's title that does not occur verbatim in its body and names no other
section. One right document per query; scores at document level (a document ranks by its
best chunk; the first 10 distinct documents count).

1. An in-process Quiver server (port 0, a temporary data directory, the default ``hash``
   embedder) ingests the documents through UploadFile / CreateFileBatch (static chunking)
   / WatchFileBatch.
2. Every query is sent with SearchVectorStore (50 chunks) for ranker ``none`` and ``auto``.
3. The store's chunks are read back from the server's SQLite database (read-only) and
   ranked with ``bench/okapi.py`` (k1 1.2, b 0.75, Porter-stemmed FTS5 tokens).

    .venv/bin/python -m bench.quality                  # ~3,000 documents, ~1,000 queries
    .venv/bin/python -m bench.quality --sweep          # also: auto under other fusion weights
    .venv/bin/python -m bench.quality --model local:all-minilm-l6-v2 --sweep
    .venv/bin/python -m bench.quality --model local:all-minilm-l6-v2 --long-text truncate

``--sweep`` is the tuning tool: it re-runs ``auto`` with other weights for the store's
embedder (patched into the running server's search module, which is in this process).
``--model`` picks the store's embedder (default ``hash``); ``--long-text`` runs a ``local:``
model with that long-text policy instead of its own (a ``--models-dir`` made for the run).
Figures are printed and written to ``bench/results/quality.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings
from quiver.server.core import fusion as fusion_module
from quiver.server.core import keyword_ranking as keyword_module
from quiver.v1 import common_pb2, vector_stores_pb2, vector_stores_pb2_grpc

from bench.okapi import Okapi, tokenize
from bench.quality_corpus import Collection, build
from bench.results import RESULTS_DIR, save_results
from bench.search import ingest

PACKAGED_MODELS = Path(__file__).parent.parent / "server/quiver/server/embedders/models"

K = 10
CHUNKS_PER_QUERY = 50
CLIENTS = 4  # searches in flight at once (results do not depend on it)
_DOC_NAME = re.compile(r"d(\d{5})\.txt$")


@dataclass(frozen=True)
class Scores:
    ndcg: float
    mrr: float
    recall: float

    def row(self, name: str) -> str:
        return f"{name:<70} {self.ndcg:>8.4f} {self.mrr:>8.4f} {self.recall:>10.4f}"

    def as_json(self) -> dict[str, float]:
        return {"ndcg@10": self.ndcg, "mrr@10": self.mrr, "recall@10": self.recall}


def evaluate(rankings: Sequence[Sequence[int]], right: Sequence[int]) -> Scores:
    """One right document per query: nDCG@10 = 1/log2(1 + rank), MRR@10 = 1/rank,
    recall@10 = 1 when it is in the first 10 (0 for all three otherwise)."""
    ndcg = mrr = recall = 0.0
    for ranking, target in zip(rankings, right, strict=True):
        top = list(ranking[:K])
        if target in top:
            rank = top.index(target) + 1
            ndcg += 1 / math.log2(1 + rank)
            mrr += 1 / rank
            recall += 1
    n = max(1, len(right))
    return Scores(ndcg / n, mrr / n, recall / n)


def distinct(documents: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(documents))


# -- Quiver over gRPC ----------------------------------------------------------------------


async def quiver_rankings(
    stub: vector_stores_pb2_grpc.VectorStoreServiceAsyncStub,
    store_id: str,
    queries: Sequence[str],
    ranker: str,
) -> list[list[int]]:
    gate = asyncio.Semaphore(CLIENTS)

    async def one(query: str) -> list[int]:
        async with gate:
            reply = await stub.SearchVectorStore(
                vector_stores_pb2.SearchVectorStoreRequest(
                    vector_store_id=store_id,
                    query=[query],
                    max_num_results=CHUNKS_PER_QUERY,
                    ranking_options=vector_stores_pb2.RankingOptions(ranker=ranker),
                )
            )
        return distinct([_document(r.filename) for r in reply.data])

    return list(await asyncio.gather(*(one(q) for q in queries)))


def _document(filename: str) -> int:
    match = _DOC_NAME.search(filename)
    assert match, filename
    return int(match.group(1))


def stored_chunks(data_dir: Path, store_id: str) -> tuple[list[str], list[int]]:
    """The store's chunk texts and the document each belongs to, from SQLite (read-only)."""
    db = sqlite3.connect(f"file:{data_dir / 'quiver.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT c.text, f.filename FROM chunks c JOIN files f ON f.id = c.file_id "
            "WHERE c.vector_store_id = ? ORDER BY c.id",
            (store_id,),
        ).fetchall()
    finally:
        db.close()
    return [text for text, _ in rows], [_document(name) for _, name in rows]


def bm25_rankings(
    chunks: Sequence[str], owners: Sequence[int], queries: Sequence[str]
) -> list[list[int]]:
    okapi = Okapi(chunks)
    owner = np.asarray(owners, dtype=np.int64)
    out: list[list[int]] = []
    for tokens in tokenize(queries):
        scores = okapi.scores(tokens)
        top = np.argsort(-scores, kind="stable")[: CHUNKS_PER_QUERY * 4]
        out.append(distinct([int(owner[i]) for i in top if scores[i] > 0]))
    return out


# -- the run ---------------------------------------------------------------------------------


def local_sweep_grid() -> list[dict[str, Any]]:
    """Fusion settings for a real (``local:``) model: mostly the vector weight."""
    return [
        {"vector_weight": w, "phrase_boost": 0.5, "pair_boost": 0.15, "stop_words": True}
        for w in (0.5, 1.0, 1.5, 2.0, 3.0)
    ]


def models_dir_with_policy(root: Path, model: str, long_text: str) -> Path:
    """A --models-dir holding ``model`` (a shipped ``local:`` model) with ``long_text``."""
    name = model.split(":", 1)[1]
    source = PACKAGED_MODELS / name
    target = root / "models" / name
    target.mkdir(parents=True)
    config = json.loads((source / "model.json").read_text())
    config["long_text"] = long_text
    (target / "model.json").write_text(json.dumps(config))
    (target / config.get("tokenizer", "tokenizer.json")).symlink_to(
        source / config.get("tokenizer", "tokenizer.json")
    )
    return root / "models"


def sweep_grid() -> list[dict[str, Any]]:
    """Fusion settings for the hash embedder tried by ``--sweep``: the vector weight, the
    boosts for the exact phrase and for pairs of adjacent query words, and whether English
    stop words stay out of the keyword query."""
    grid = [
        {"vector_weight": w, "phrase_boost": 0.1, "pair_boost": b, "stop_words": True}
        for w in (0.0, 0.25, 0.5)
        for b in (0.0, 0.15, 0.3)
    ]
    return [
        *grid,
        {"vector_weight": 1.0, "phrase_boost": 0.1, "pair_boost": 0.15, "stop_words": True},
        {"vector_weight": 0.25, "phrase_boost": 0.0, "pair_boost": 0.15, "stop_words": True},
        {"vector_weight": 0.25, "phrase_boost": 0.1, "pair_boost": 0.15, "stop_words": False},
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    collection: Collection = build(args.documents, args.queries, args.seed)
    queries = [q for q, _ in collection.queries]
    right = [d for _, d in collection.queries]
    body_mb = sum(len(d.body) for d in collection.documents) / 1e6
    print(
        f"collection: {len(collection.documents)} documents ({body_mb:.1f} MB), "
        f"{len(queries)} queries, seed {args.seed} ({time.perf_counter() - started:.1f} s)"
    )
    with tempfile.TemporaryDirectory(prefix="quiver-quality-") as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        paths = []
        for i, doc in enumerate(collection.documents):
            path = folder / f"d{i:05d}.txt"
            path.write_text(doc.body + "\n", encoding="utf-8")
            paths.append(path)
        data_dir = Path(tmp) / "data"
        models_dir = (
            models_dir_with_policy(Path(tmp), args.model, args.long_text)
            if args.long_text
            else None
        )
        server = QuiverServer(
            Settings(
                http_listen="127.0.0.1:0",
                listen="127.0.0.1:0",
                data_dir=data_dir,
                ingest_workers=args.workers,
                models_dir=models_dir,
                # A model on a shared machine may be slow; no file fails for that here.
                file_timeout=3600.0,
                file_parse_seconds=3600.0,
            )
        )
        port = await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            chunking = common_pb2.ChunkingStrategy(
                type="static",
                static=common_pb2.StaticChunkingStrategy(
                    max_chunk_size_tokens=args.chunk_tokens,
                    chunk_overlap_tokens=args.overlap,
                ),
            )
            t = time.perf_counter()
            done = await ingest(channel, paths, chunking, args.model)
            print(
                f"ingested {done.files} files ({done.failed} failed) in "
                f"{time.perf_counter() - t:.1f} s"
            )
            chunks, owners = stored_chunks(data_dir, done.store_id)
            print(f"{len(chunks)} chunks of {args.chunk_tokens} tokens, overlap {args.overlap}")
            stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
            results: dict[str, Scores] = {}
            results["plain BM25 (Okapi, same chunks)"] = evaluate(
                bm25_rankings(chunks, owners, queries), right
            )
            for ranker in ("none", "auto"):
                t = time.perf_counter()
                rankings = await quiver_rankings(stub, done.store_id, queries, ranker)
                results[f"quiver ranker={ranker}"] = evaluate(rankings, right)
                print(f"ranker {ranker}: {time.perf_counter() - t:.1f} s")
            sweep: list[dict[str, Any]] = []
            if args.sweep:
                sweep = await run_sweep(stub, done.store_id, queries, right, args.model)
        finally:
            await channel.close(None)
            await server.stop(grace=1.0)
    print()
    print(f"{'':<70} {'nDCG@10':>8} {'MRR@10':>8} {'recall@10':>10}")
    for name, scores in results.items():
        print(scores.row(name))
    baseline = results["plain BM25 (Okapi, same chunks)"].ndcg
    print(f"\nauto - BM25 nDCG@10: {results['quiver ranker=auto'].ndcg - baseline:+.4f}")
    return {
        "collection": {
            "source": "linux-doc-6.1 reStructuredText sections (title = query)",
            "documents": len(collection.documents),
            "queries": len(queries),
            "chunks": len(chunks),
            "chunk_tokens": args.chunk_tokens,
            "overlap_tokens": args.overlap,
            "seed": args.seed,
            "embedding_model": args.model,
            "long_text": args.long_text or "the model's own",
        },
        "results": {name: s.as_json() for name, s in results.items()},
        "sweep": sweep,
    }


async def run_sweep(
    stub: vector_stores_pb2_grpc.VectorStoreServiceAsyncStub,
    store_id: str,
    queries: Sequence[str],
    right: Sequence[int],
    model: str,
) -> list[dict[str, Any]]:
    key = model.split(":", 1)[0]
    shipped = fusion_module.fusion_for(model)
    stop_words = keyword_module.STOP_WORDS
    out: list[dict[str, Any]] = []
    print(f"\nsweep ({model} embedder; shipped: {shipped}, stop words left out)")
    grid = sweep_grid() if key == "hash" else local_sweep_grid()
    try:
        for setting in grid:
            fusion_module.FUSION[key] = fusion_module.Fusion(
                vector_weight=setting["vector_weight"],
                phrase_boost=setting["phrase_boost"],
                pair_boost=setting["pair_boost"],
            )
            keyword_module.STOP_WORDS = stop_words if setting["stop_words"] else frozenset()
            scores = evaluate(await quiver_rankings(stub, store_id, queries, "auto"), right)
            print(scores.row(f"auto {setting}"))
            out.append({**setting, **scores.as_json()})
    finally:
        fusion_module.FUSION[key] = shipped
        keyword_module.STOP_WORDS = stop_words
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--overlap", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="also try other fusion weights")
    parser.add_argument("--model", default="hash", help="the store's embedding_model")
    parser.add_argument(
        "--long-text",
        choices=("windows", "truncate"),
        default="",
        help="a local: model's long-text policy for this run (default: its model.json's)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "quality.json")
    args = parser.parse_args()
    data = asyncio.run(run(args))
    print(f"wrote {save_results(args.out, data)}")


if __name__ == "__main__":
    main()
