"""Throughput and latency of a ``local:`` model (default the packaged all-MiniLM-L6-v2):
the model's own speed in-process against a ``local:`` store's ingest through Quiver's gRPC API
on the same cores, and query latency.

1. Files of real text (``tests/support/corpus.py``, the kernel's documentation) are taken
   until their
   800-token chunks (overlap 400, the default chunking) number ``--chunks``.
2. In-process: the same chunks (Quiver's chunker) embedded by the model with one ONNX Runtime
   thread, 256 at a time as a worker does: chunks/s per core (wall and per CPU second).
3. Through the service: an in-process server with ``--workers`` ingest workers of one thread
   each ingests the files into a ``local:`` store (UploadFile, CreateFileBatch with static
   800/400 chunking, WatchFileBatch); chunks/s over the batch, and the event loop's worst
   lag meanwhile (a 10 ms ticker).
4. Query latency: ``embed_queries`` in-process, and SearchVectorStore (``none``, ``auto``)
   one at a time.

    .venv/bin/python -m bench.local_model --chunks 48 --workers 1

Printed and written to ``bench/results/local_model.json``. On a shared machine the wall-clock
figures move with the load: compare the service with the in-process figure of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings
from quiver.server.embedders.local_models import find_model
from quiver.server.embedders.local_onnx import LocalOnnxEmbedder
from quiver.server.ingest.chunking import ChunkingParams, iter_chunks
from quiver.v1 import common_pb2, vector_stores_pb2, vector_stores_pb2_grpc

from bench.results import RESULTS_DIR, save_results
from bench.search import ingest
from tests.support.corpus import corpus_files

PARAMS = ChunkingParams(max_tokens=800, overlap_tokens=400)
GROUP = 256
QUERIES = [
    "how do I mount a file system read only",
    "what happens when memory runs out",
    "which locks protect the page cache",
    "configure the network interface at boot",
    "debugging a kernel crash",
    "power management of USB devices",
    "how are interrupts routed to processors",
    "tracing function calls in the kernel",
    "writing a driver for a serial port",
    "security modules and access control",
]


def pick_files(chunks: int) -> tuple[list[Path], list[str]]:
    paths: list[Path] = []
    texts: list[str] = []
    for path in corpus_files(10**9, 4_000):
        if path.stat().st_size > 40_000:
            continue
        paths.append(path)
        texts += [c.text for c in iter_chunks(path.read_text(encoding="utf-8"), PARAMS)]
        if len(texts) >= chunks:
            return paths, texts
    return paths, texts


def in_process(model: str, texts: Sequence[str]) -> dict[str, float]:
    embedder = LocalOnnxEmbedder(find_model(model.split(":", 1)[1], None), threads=1)
    embedder.embed(["warm up"])
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(0, len(texts), GROUP):
        embedder.embed(list(texts[i : i + GROUP]))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    latencies = []
    for query in QUERIES * 2:
        t = time.perf_counter()
        embedder.embed_queries([query])
        latencies.append(time.perf_counter() - t)
    return {
        "chunks": len(texts),
        "chunks_per_s_wall": len(texts) / wall,
        "chunks_per_cpu_s": len(texts) / cpu,
        "query_embed_p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "query_embed_p95_ms": 1000 * float(np.percentile(latencies, 95)),
    }


async def _ticker(worst: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        worst[0] = max(worst[0], time.perf_counter() - t - 0.01)


async def service(model: str, paths: Sequence[Path], workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="quiver-local-") as tmp:
        server = QuiverServer(
            Settings(
                listen="127.0.0.1:0",
                data_dir=Path(tmp) / "data",
                ingest_workers=workers,
                local_threads=1,
            )
        )
        port = await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            chunking = common_pb2.ChunkingStrategy(
                type="static",
                static=common_pb2.StaticChunkingStrategy(
                    max_chunk_size_tokens=PARAMS.max_tokens,
                    chunk_overlap_tokens=PARAMS.overlap_tokens,
                ),
            )
            worst, stop = [0.0], asyncio.Event()
            ticker = asyncio.create_task(_ticker(worst, stop))
            done = await ingest(channel, paths, chunking, model)
            stop.set()
            await ticker
            assert done.failed == 0, done
            stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
            chunks = _count_chunks(Path(tmp) / "data", done.store_id)
            out: dict[str, float] = {
                "files": done.files,
                "chunks": chunks,
                "batch_seconds": done.batch_seconds,
                "chunks_per_s": chunks / done.batch_seconds,
                "event_loop_worst_lag_ms": 1000 * worst[0],
            }
            for ranker in ("none", "auto"):
                latencies = []
                for query in QUERIES * 2:
                    t = time.perf_counter()
                    await stub.SearchVectorStore(
                        vector_stores_pb2.SearchVectorStoreRequest(
                            vector_store_id=done.store_id,
                            query=[query],
                            ranking_options=vector_stores_pb2.RankingOptions(ranker=ranker),
                        )
                    )
                    latencies.append(time.perf_counter() - t)
                out[f"search_{ranker}_p50_ms"] = 1000 * float(np.percentile(latencies, 50))
                out[f"search_{ranker}_p95_ms"] = 1000 * float(np.percentile(latencies, 95))
            return out
        finally:
            await channel.close(None)
            await server.stop(grace=1.0)


def _count_chunks(data_dir: Path, store_id: str) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'quiver.sqlite3'}?mode=ro", uri=True)
    try:
        (count,) = db.execute(
            "SELECT count(*) FROM chunks WHERE vector_store_id = ?", (store_id,)
        ).fetchone()
    finally:
        db.close()
    return int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="local:all-minilm-l6-v2")
    parser.add_argument("--chunks", type=int, default=48)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "local_model.json")
    args = parser.parse_args()
    paths, texts = pick_files(args.chunks)
    print(f"{len(paths)} files, {len(texts)} chunks of 800 tokens (overlap 400)")
    own = in_process(args.model, texts)
    print("in-process, 1 thread:", {k: round(v, 3) for k, v in own.items()})
    served = asyncio.run(service(args.model, paths, args.workers))
    print(
        f"service, {args.workers} worker(s) x 1 thread:",
        {k: round(v, 3) for k, v in served.items()},
    )
    ratio = served["chunks_per_s"] / (own["chunks_per_s_wall"] * args.workers)
    print(f"service / in-process throughput (same cores): {ratio:.3f}")
    data: dict[str, Any] = {
        "model": args.model,
        "chunking": "static 800/400",
        "workers": args.workers,
        "in_process": own,
        "service": served,
        "service_over_in_process": ratio,
    }
    print(f"wrote {save_results(args.out, data)}")


if __name__ == "__main__":
    main()
