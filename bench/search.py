"""Search latency, throughput and recall@10: the service (SearchVectorStore over gRPC to a
``quiver serve`` subprocess) next to the same hnswlib index queried in-process, in one run.

1. Ingest: real text (``bench/corpus.py``: kernel docs, Vim's manual, Python's stdlib)
   through the real server: UploadFile, CreateFileBatch with static chunking (default 100
   tokens, no overlap: many chunks from a modest corpus, none of them near-duplicates of
   another), then WatchFileBatch to the end.
2. gRPC: ``--queries`` short queries (word runs sampled from the corpus), one client at a
   time and ``--concurrency`` clients at once (asyncio tasks over a few channels), for
   ranker ``none`` (vector only) and ``auto`` (vector + FTS5 keywords, fused).
3. The server is stopped with SIGTERM (it saves its index); its SQLite database is read
   read-only for the stored vectors (exact numpy top-10 = the truth) and its saved index
   is loaded with ``VectorIndex.open`` and queried in-process, one thread and
   ``--concurrency`` threads, with and without embedding the query.

    .venv/bin/python -m bench.search --chunks 100000

Timings depend on the machine; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quiver.server.config import Settings
from quiver.server.embedders.hashing import HashEmbedder
from quiver.server.index.hnsw import VectorIndex
from quiver.server.ingest.chunking import ChunkingParams, chunk_text
from quiver.v1 import (
    common_pb2,
    file_batches_pb2,
    file_batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

from bench.corpus import corpus_files
from bench.ingest import free_port

K = 10
MAX_BATCH_FILES = 2000
PIECE = 1 << 20
CHANNELS = 4
_QUERY_WORD = re.compile(r"[A-Za-z]{3,}")
TERMINAL = (
    file_batches_pb2.FILE_BATCH_STATUS_COMPLETED,
    file_batches_pb2.FILE_BATCH_STATUS_FAILED,
    file_batches_pb2.FILE_BATCH_STATUS_CANCELLED,
)

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


# -- measurements --------------------------------------------------------------------------


@dataclass
class Run:
    """One way of searching: sequential latencies, and throughput under concurrency."""

    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, one client
    sequential_seconds: float = 0.0
    concurrent_latencies: list[float] = field(default_factory=list)
    concurrent_seconds: float = 0.0
    recall: float | None = None
    tie_aware: float | None = None

    def p(self, q: float, concurrent: bool = False) -> float:
        values = self.concurrent_latencies if concurrent else self.latencies
        return float(np.percentile(np.asarray(values), q)) * 1000.0

    @property
    def qps_1(self) -> float:
        return len(self.latencies) / self.sequential_seconds

    @property
    def qps_n(self) -> float:
        return len(self.concurrent_latencies) / self.concurrent_seconds


def row(run: Run) -> str:
    recall = "n/a" if run.recall is None else f"{run.recall:.4f}"
    tied = "n/a" if run.tie_aware is None else f"{run.tie_aware:.4f}"
    return (
        f"{run.name:<34} {run.p(50):>8.2f} {run.p(99):>8.2f} {run.qps_1:>9,.0f} "
        f"{run.p(50, True):>8.2f} {run.p(99, True):>8.2f} {run.qps_n:>9,.0f} {recall:>9} "
        f"{tied:>9}"
    )


def header(concurrency: int) -> str:
    n = f"@{concurrency}"
    return (
        f"{'':<34} {'p50 ms':>8} {'p99 ms':>8} {'QPS @1':>9} "
        f"{'p50' + n:>8} {'p99' + n:>8} {'QPS' + n:>9} {'recall@10':>9} {'tie-aware':>9}"
    )


def recall_at_k(found: Sequence[set[int]], truth: Labels) -> float:
    """|found ∩ exact top k| / k, averaged over the queries."""
    hits = sum(len(f & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


@dataclass
class Truth:
    """Exact top-k labels, and what a found label must score to count under ties."""

    ids: Labels  # sorted chunk ids (the labels)
    vectors: Matrix  # their unit vectors, in that order
    queries: Matrix
    top: Labels  # (queries, K) exact top-k labels, best first
    kth: Matrix  # (queries,) similarity of the k-th one

    def tie_aware(self, found: Sequence[set[int]]) -> float:
        """Counts a found label as right when it is as similar to the query as the k-th
        exact neighbour: the corpus holds identical chunks, which brute force orders
        arbitrarily, and short queries tie often."""
        good = 0
        for q, labels in enumerate(found):
            rows = np.searchsorted(self.ids, np.fromiter(labels, dtype=np.int64))
            similarity = self.vectors[rows] @ self.queries[q]
            good += min(K, int((similarity >= self.kth[q] - 1e-6).sum()))
        return good / self.top.size


# -- corpus and queries --------------------------------------------------------------------


def pick_corpus(chunks: int, params: ChunkingParams) -> tuple[list[Path], int]:
    """Corpus files, in order, until chunking them as the server will gives ``chunks``."""
    paths: list[Path] = []
    total = 0
    for path in corpus_files(10**10):
        paths.append(path)
        total += len(chunk_text(path.read_text(encoding="utf-8"), params))
        if total >= chunks:
            break
    return paths, total


def held_out_chunks(
    ingested: Sequence[Path], params: ChunkingParams, count: int, seed: int
) -> list[str]:
    """``count`` chunks of corpus files that were not ingested (fewer if the corpus runs out):
    queries shaped like the stored chunks, as in tests/test_recall.py."""
    skip = set(ingested)
    texts: list[str] = []
    for path in corpus_files(10**10):
        if path not in skip:
            texts += [c.text for c in chunk_text(path.read_text(encoding="utf-8"), params)]
            if len(texts) >= 20 * count:
                break
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(texts))[:count]
    return [texts[i] for i in sorted(picked)]


def sample_queries(paths: Sequence[Path], count: int, seed: int) -> list[str]:
    """Runs of 3…8 words (3+ letters) from random places in the corpus: short, keyword-like
    queries such as people type."""
    rng = np.random.default_rng(seed)
    words = [_QUERY_WORD.findall(p.read_text(encoding="utf-8")) for p in paths]
    files = [w for w in words if len(w) >= 20]
    queries: list[str] = []
    while len(queries) < count:
        chosen = files[int(rng.integers(len(files)))]
        length = int(rng.integers(3, 9))
        start = int(rng.integers(len(chosen) - length))
        queries.append(" ".join(chosen[start : start + length]))
    return queries


# -- the server ------------------------------------------------------------------------------


def start_server(workers: int, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "quiver.server.cli", "serve"]
    command += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    command += ["--ingest-workers", str(workers), "--log-level", "error"]
    return subprocess.Popen(command), f"127.0.0.1:{port}"


async def wait_serving(channel: aio.Channel) -> None:
    """Until the server's health reports SERVING (it is NOT_SERVING while it recovers)."""
    await asyncio.wait_for(channel.channel_ready(), 60)
    health = health_pb2_grpc.HealthStub(channel)
    call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    async for reply in call:
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            call.cancel()
            return
    raise RuntimeError("the server never reported SERVING")


async def _pieces(name: str, data: bytes) -> AsyncIterator[files_pb2.UploadFileRequest]:
    yield files_pb2.UploadFileRequest(filename=name, data=data[:PIECE])
    for start in range(PIECE, len(data), PIECE):
        yield files_pb2.UploadFileRequest(data=data[start : start + PIECE])


@dataclass
class Ingested:
    store_id: str
    files: int
    failed: int
    upload_seconds: float
    batch_seconds: float


async def ingest(
    channel: aio.Channel,
    paths: Sequence[Path],
    chunking: common_pb2.ChunkingStrategy,
    embedding_model: str = "",
) -> Ingested:
    files = files_pb2_grpc.FileServiceStub(channel)
    stores = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
    batches = file_batches_pb2_grpc.FileBatchServiceStub(channel)
    started = time.perf_counter()
    ids = [
        (await files.UploadFile(_pieces(f"{i:05d}-{p.name}", p.read_bytes()))).file.id
        for i, p in enumerate(paths)
    ]
    upload_seconds = time.perf_counter() - started
    store = (
        await stores.CreateVectorStore(
            vector_stores_pb2.CreateVectorStoreRequest(
                name="bench", embedding_model=embedding_model
            )
        )
    ).vector_store
    started = time.perf_counter()
    completed = failed = 0
    for first in range(0, len(ids), MAX_BATCH_FILES):
        batch = (
            await batches.CreateFileBatch(
                file_batches_pb2.CreateFileBatchRequest(
                    vector_store_id=store.id,
                    file_ids=ids[first : first + MAX_BATCH_FILES],
                    chunking_strategy=chunking,
                )
            )
        ).file_batch
        last = None
        async for message in batches.WatchFileBatch(
            file_batches_pb2.WatchFileBatchRequest(vector_store_id=store.id, batch_id=batch.id)
        ):
            last = message
        assert last is not None and last.file_batch.status in TERMINAL
        completed += last.file_batch.file_counts.completed
        failed += last.file_batch.file_counts.failed
    return Ingested(store.id, completed, failed, upload_seconds, time.perf_counter() - started)


# -- searching over gRPC -------------------------------------------------------------------

Search = Callable[[str], Awaitable[vector_stores_pb2.SearchVectorStoreResponse]]


def searcher(
    stub: vector_stores_pb2_grpc.VectorStoreServiceAsyncStub, store_id: str, ranker: str
) -> Search:
    async def search(query: str) -> vector_stores_pb2.SearchVectorStoreResponse:
        reply: vector_stores_pb2.SearchVectorStoreResponse = await stub.SearchVectorStore(
            vector_stores_pb2.SearchVectorStoreRequest(
                vector_store_id=store_id,
                query=[query],
                max_num_results=K,
                ranking_options=vector_stores_pb2.RankingOptions(ranker=ranker),
            )
        )
        return reply

    return search


@dataclass(frozen=True)
class Load:
    """The concurrent phase: ``clients`` at once send every query, round after round, for
    ``rounds`` rounds or until ``seconds`` have passed (at least one round)."""

    clients: int
    rounds: int
    seconds: float


async def grpc_run(
    name: str, searches: Sequence[Search], queries: Sequence[str], load: Load
) -> tuple[Run, list[vector_stores_pb2.SearchVectorStoreResponse]]:
    run = Run(name)
    for query in queries[:20]:  # warm-up
        await searches[0](query)
    replies: list[vector_stores_pb2.SearchVectorStoreResponse] = []
    started = time.perf_counter()
    for query in queries:
        t = time.perf_counter()
        replies.append(await searches[0](query))
        run.latencies.append(time.perf_counter() - t)
    run.sequential_seconds = time.perf_counter() - started

    async def client(search: Search, pending: Iterator[str]) -> None:
        for query in pending:  # the clients share one iterator: each query is sent once
            t = time.perf_counter()
            await search(query)
            run.concurrent_latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    for _ in range(load.rounds):
        pending = iter(queries)
        await asyncio.gather(
            *(client(searches[i % len(searches)], pending) for i in range(load.clients))
        )
        if time.perf_counter() - started >= load.seconds:
            break
    run.concurrent_seconds = time.perf_counter() - started
    return run, replies


async def measure_grpc(
    target: str, store_id: str, queries: Sequence[str], load: Load
) -> tuple[list[Run], list[vector_stores_pb2.SearchVectorStoreResponse]]:
    channels = [aio.insecure_channel(target) for _ in range(CHANNELS)]
    try:
        stubs = [vector_stores_pb2_grpc.VectorStoreServiceStub(c) for c in channels]
        runs: list[Run] = []
        vector_replies: list[vector_stores_pb2.SearchVectorStoreResponse] = []
        for ranker in ("none", "auto"):
            run, replies = await grpc_run(
                f"gRPC SearchVectorStore ranker={ranker}",
                [searcher(s, store_id, ranker) for s in stubs],
                queries,
                load,
            )
            runs.append(run)
            if ranker == "none":
                vector_replies = replies
        return runs, vector_replies
    finally:
        for channel in channels:
            await channel.close(None)


# -- in-process ----------------------------------------------------------------------------


def inprocess_run(
    name: str, work: Callable[[int], set[int]], count: int, load: Load
) -> tuple[Run, list[set[int]]]:
    run = Run(name)
    for i in range(min(20, count)):  # warm-up
        work(i)
    found: list[set[int]] = []
    started = time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        found.append(work(i))
        run.latencies.append(time.perf_counter() - t)
    run.sequential_seconds = time.perf_counter() - started

    def timed(i: int) -> float:
        t = time.perf_counter()
        work(i)
        return time.perf_counter() - t

    with ThreadPoolExecutor(load.clients) as pool:
        started = time.perf_counter()
        for _ in range(load.rounds):
            run.concurrent_latencies += pool.map(timed, range(count))
            if time.perf_counter() - started >= load.seconds:
                break
        run.concurrent_seconds = time.perf_counter() - started
    return run, found


def read_vectors(data_dir: Path, store_id: str, dim: int) -> tuple[Labels, Matrix, sqlite3.Row]:
    db = sqlite3.connect(f"file:{data_dir / 'quiver.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT id, vector FROM chunks WHERE vector_store_id = ? ORDER BY id", (store_id,)
        ).fetchall()
        totals = db.execute(
            "SELECT COUNT(*), SUM(token_count), SUM(LENGTH(text)) FROM chunks "
            "WHERE vector_store_id = ?",
            (store_id,),
        ).fetchone()
    finally:
        db.close()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, dim)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return ids, unit, totals


def chunk_ids_by_text(data_dir: Path, store_id: str) -> dict[tuple[str, str], list[int]]:
    """(file id, chunk text) → chunk ids: what a gRPC result names, mapped back to labels."""
    db = sqlite3.connect(f"file:{data_dir / 'quiver.sqlite3'}?mode=ro", uri=True)
    out: dict[tuple[str, str], list[int]] = {}
    try:
        for chunk_id, file_id, text in db.execute(
            "SELECT id, file_id, text FROM chunks WHERE vector_store_id = ?", (store_id,)
        ):
            out.setdefault((file_id, text), []).append(chunk_id)
    finally:
        db.close()
    return out


def exact_top_k(ids: Labels, vectors: Matrix, queries: Matrix) -> Truth:
    top = np.empty((len(queries), K), dtype=np.int64)
    kth = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), 100):
        similarity = queries[start : start + 100] @ vectors.T
        best = np.argpartition(-similarity, K, axis=1)[:, :K]
        scores = np.take_along_axis(similarity, best, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        top[start : start + 100] = ids[np.take_along_axis(best, order, axis=1)]
        kth[start : start + 100] = np.take_along_axis(scores, order, axis=1)[:, -1]
    return Truth(ids, vectors, queries, top, kth)


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks in the store")
    parser.add_argument("--queries", type=int, default=500, help="queries per measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--rounds", type=int, default=4, help="times the concurrent clients send each query"
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=10.0,
        help="no further concurrent round once this many seconds have passed",
    )
    parser.add_argument("--chunk-tokens", type=int, default=100, help="static chunk size")
    parser.add_argument("--overlap-tokens", type=int, default=0, help="static chunk overlap")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the server's data dir")
    args = parser.parse_args()
    settings = Settings()
    load = Load(args.concurrency, args.rounds, args.round_seconds)
    dim = settings.embedding_dimensions
    params = ChunkingParams(args.chunk_tokens, args.overlap_tokens)
    chunking = common_pb2.ChunkingStrategy(
        type="static",
        static=common_pb2.StaticChunkingStrategy(
            max_chunk_size_tokens=args.chunk_tokens, chunk_overlap_tokens=args.overlap_tokens
        ),
    )

    paths, expected_chunks = pick_corpus(args.chunks, params)
    size = sum(p.stat().st_size for p in paths)
    print(
        f"corpus: {len(paths)} files, {size / 1e6:.1f} MB (bench/corpus.py, first files first), "
        f"static chunking {args.chunk_tokens}/{args.overlap_tokens} tokens "
        f"→ {expected_chunks:,} chunks"
    )
    if expected_chunks < args.chunks:
        print(
            f"note: the corpus gives only {expected_chunks:,} chunks of {args.chunk_tokens} "
            "tokens; use --chunk-tokens 100 or an overlap for more",
            file=sys.stderr,
        )
    queries = sample_queries(paths, args.queries, args.seed)
    print(f"queries: {len(queries)} runs of 3…8 words from the corpus, e.g. {queries[0]!r}")
    print(
        f"index: hnswlib M={settings.hnsw_m} ef_construction={settings.hnsw_ef_construction} "
        f"ef_search={settings.hnsw_ef_search}; hash embedder, {dim} dimensions; "
        f"{os.cpu_count()} CPUs; {args.workers} ingest workers"
    )

    data_dir = Path(tempfile.mkdtemp(prefix="quiver-bench-search-"))
    proc, target = start_server(args.workers, data_dir)
    try:

        async def served() -> tuple[
            Ingested, list[Run], list[vector_stores_pb2.SearchVectorStoreResponse]
        ]:
            channel = aio.insecure_channel(target)
            try:
                await wait_serving(channel)
                done = await ingest(channel, paths, chunking)
            finally:
                await channel.close(None)
            runs, replies = await measure_grpc(target, done.store_id, queries, load)
            return done, runs, replies

        ingested, grpc_runs, vector_replies = asyncio.run(served())
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    if code != 0:
        print(f"warning: the server exited with {code}", file=sys.stderr)

    try:
        ids, vectors, (chunks, tokens, chars) = read_vectors(data_dir, ingested.store_id, dim)
        print(
            f"\ningest through the server: {ingested.files} files ({ingested.failed} failed), "
            f"{chunks:,} chunks, {tokens:,} tokens, {chars / 1e6:.1f} M characters\n"
            f"  upload {ingested.upload_seconds:.1f} s ({size / 1e6 / ingested.upload_seconds:.1f} "
            f"MB/s); batch {ingested.batch_seconds:.1f} s ({chunks / ingested.batch_seconds:,.0f} "
            f"chunks/s, {tokens / ingested.batch_seconds:,.0f} tokens/s)"
        )

        embedder = HashEmbedder(dim)
        query_vectors = embedder.embed(queries)
        truth = exact_top_k(ids, vectors, query_vectors)
        by_text = chunk_ids_by_text(data_dir, ingested.store_id)
        grpc_found = [
            {c for r in reply.data for c in by_text.get((r.file_id, r.content[0].text), [])}
            for reply in vector_replies
        ]
        grpc_runs[0].recall = recall_at_k(grpc_found, truth.top)
        grpc_runs[0].tie_aware = truth.tie_aware(grpc_found)

        started = time.perf_counter()
        index = VectorIndex.open(
            data_dir / "indexes" / f"{ingested.store_id}.hnsw",
            dim,
            ef_search=settings.hnsw_ef_search,
        )
        load_seconds = time.perf_counter() - started
        assert index.live_count == len(ids), (index.live_count, len(ids))

        def knn_only(i: int) -> set[int]:
            labels, _ = index.knn(query_vectors[i], K)
            return set(labels[0].tolist())

        def embed_and_knn(i: int) -> set[int]:
            labels, _ = index.knn(embedder.embed([queries[i]])[0], K)
            return set(labels[0].tolist())

        knn_run, knn_found = inprocess_run(
            "in-process VectorIndex.knn", knn_only, len(queries), load
        )
        knn_run.recall = recall_at_k(knn_found, truth.top)
        knn_run.tie_aware = truth.tie_aware(knn_found)
        full_run, full_found = inprocess_run(
            "in-process embed + knn", embed_and_knn, len(queries), load
        )
        full_run.recall = recall_at_k(full_found, truth.top)
        full_run.tie_aware = truth.tie_aware(full_found)

        # Recall by ef_search, in-process, for the short queries and for held-out chunks.
        chunk_queries = held_out_chunks(paths, params, 200, args.seed)
        query_sets = [("short queries", truth)]
        if chunk_queries:
            chunk_truth = exact_top_k(ids, vectors, embedder.embed(chunk_queries))
            query_sets.append((f"{len(chunk_queries)} held-out chunks", chunk_truth))
        sweep: list[str] = []
        for ef in sorted({64, 100, 128, 200, 400, 800, settings.hnsw_ef_search}):
            cells = [f"  ef_search={ef:<4}"]
            for _, sweep_truth in query_sets:
                started = time.perf_counter()
                labels, _ = index.knn(sweep_truth.queries, K, ef=ef)
                ms = (time.perf_counter() - started) / len(labels) * 1000
                found = [set(r.tolist()) for r in labels]
                cells.append(
                    f"{recall_at_k(found, sweep_truth.top):>9.4f} "
                    f"{sweep_truth.tie_aware(found):>9.4f} {ms:>8.3f}"
                )
            mark = "  <- default" if ef == settings.hnsw_ef_search else ""
            sweep.append("   ".join(cells) + mark)
    finally:
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)

    print(f"saved index loaded in-process in {load_seconds:.1f} s ({index.live_count:,} vectors)")
    print(
        f"\nsearch, top {K}; @1 = one client, {len(queries)} queries one after another; "
        f"@{args.concurrency} = {args.concurrency} concurrent clients sending them up to "
        f"{args.rounds} times (no new round after {args.round_seconds:.0f} s) "
        f"(gRPC: asyncio tasks over {CHANNELS} channels; in-process: threads)"
    )
    print(header(args.concurrency))
    for run in (*grpc_runs, knn_run, full_run):
        print(row(run))
    vector = grpc_runs[0]
    print(
        "\nin-process recall@10 by ef_search (same index; k=10; one thread): "
        + " | ".join(name for name, _ in query_sets)
    )
    print(
        f"  {'':<14}"
        + "   ".join(f"{'recall@10':>9} {'tie-aware':>9} {'ms/query':>8}" for _ in query_sets)
    )
    print("\n".join(sweep))
    print("\nratios gRPC / in-process (latency > 1: gRPC slower; QPS < 1: gRPC serves fewer)")
    print("gRPC ranker=none / in-process embed + knn:")
    print(
        f"  p50 latency x{vector.p(50) / full_run.p(50):.1f}, "
        f"p99 latency x{vector.p(99) / full_run.p(99):.1f}, "
        f"QPS @1 x{vector.qps_1 / full_run.qps_1:.2f}, "
        f"QPS @{args.concurrency} x{vector.qps_n / full_run.qps_n:.2f}"
    )
    print("gRPC ranker=none / in-process knn only:")
    print(
        f"  p50 latency x{vector.p(50) / knn_run.p(50):.1f}, "
        f"QPS @1 x{vector.qps_1 / knn_run.qps_1:.2f}, "
        f"QPS @{args.concurrency} x{vector.qps_n / knn_run.qps_n:.2f}"
    )
    hybrid = grpc_runs[1]
    print(
        f"ranker=auto / ranker=none over gRPC: p50 x{hybrid.p(50) / vector.p(50):.1f}, "
        f"QPS @1 x{hybrid.qps_1 / vector.qps_1:.2f}"
    )


if __name__ == "__main__":
    main()
