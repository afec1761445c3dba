"""Ingest throughput: the service (upload → CreateFileBatch → terminal WatchFileBatch) next
to the bare pipeline in one process (tiktoken chunking + the same embedder + hnswlib
add_items with 2 threads), on the same corpus in the same run. Prints both and the ratio.

    .venv/bin/python -m bench.ingest --mb 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import hnswlib
import numpy as np
from grpc import aio
from quiver.server.embedders.hashing import HashEmbedder
from quiver.server.ingest.chunking import AUTO, chunk_text
from quiver.server.ingest.parsing import parse_document
from quiver.v1 import (
    file_batches_pb2,
    file_batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

from bench.results import RESULTS_DIR, save_results
from tests.support.corpus import corpus_files
from tests.support.serve import free_port, serve_command

DIMENSIONS = 512


@dataclass
class Result:
    name: str
    seconds: float
    files: int
    chunks: int
    tokens: int

    def line(self) -> str:
        s = self.seconds
        return (
            f"{self.name:<22} {s:8.2f} s  {self.tokens / s:>10,.0f} tokens/s  "
            f"{self.chunks / s:>8,.0f} chunks/s  {self.files / s:>7,.1f} files/s"
        )


def bare_pipeline(paths: list[Path]) -> Result:
    """The ceiling: the same work with no service around it, in one process."""
    embedder = HashEmbedder(DIMENSIONS)
    index = hnswlib.Index(space="cosine", dim=DIMENSIONS)
    index.init_index(max_elements=1024, M=16, ef_construction=200)
    started = time.perf_counter()
    chunks = tokens = 0
    for path in paths:
        text = parse_document(path.read_bytes(), path.name)
        pieces = chunk_text(text, AUTO)
        if not pieces:
            continue
        vectors = embedder.embed([c.text for c in pieces])
        if index.get_current_count() + len(pieces) > index.get_max_elements():
            index.resize_index(max(index.get_max_elements() * 2, chunks + len(pieces)))
        index.add_items(vectors, np.arange(chunks, chunks + len(pieces)), num_threads=2)
        chunks += len(pieces)
        tokens += sum(c.token_count for c in pieces)
    return Result("bare pipeline", time.perf_counter() - started, len(paths), chunks, tokens)


async def _pieces(name: str, data: bytes) -> AsyncIterator[files_pb2.UploadFileRequest]:
    yield files_pb2.UploadFileRequest(filename=name, data=data[: 1 << 20])
    for start in range(1 << 20, len(data), 1 << 20):
        yield files_pb2.UploadFileRequest(data=data[start : start + (1 << 20)])


async def _until_done(
    batches: file_batches_pb2_grpc.FileBatchServiceAsyncStub, batch: file_batches_pb2.FileBatch
) -> file_batches_pb2.FileBatch:
    """The batch's last state, from the terminal WatchFileBatch message."""
    last = batch
    request = file_batches_pb2.WatchFileBatchRequest(
        vector_store_id=batch.vector_store_id, batch_id=batch.id
    )
    async for message in batches.WatchFileBatch(request):
        last = message.file_batch
    return last


def start_server(workers: int) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="quiver-bench-")
    command = serve_command(f"127.0.0.1:{port}", data_dir, "--ingest-workers", str(workers))
    return subprocess.Popen([*command, "--log-level", "error"]), port, data_dir


async def service(
    contents: list[tuple[str, bytes]], port: int, data_dir: str
) -> tuple[Result, float]:
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 60)
        files = files_pb2_grpc.FileServiceStub(channel)
        stores = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
        batches = file_batches_pb2_grpc.FileBatchServiceStub(channel)
        for _ in range(600):  # wait out start-up (UNAVAILABLE until SERVING)
            try:
                await stores.ListVectorStores(vector_stores_pb2.ListVectorStoresRequest())
                break
            except aio.AioRpcError:
                await asyncio.sleep(0.1)
        upload_started = time.perf_counter()
        ids: list[str] = []
        for name, data in contents:
            ids.append((await files.UploadFile(_pieces(name, data))).file.id)
        upload_seconds = time.perf_counter() - upload_started
        store = (
            await stores.CreateVectorStore(
                vector_stores_pb2.CreateVectorStoreRequest(
                    name="bench", embedding_dimensions=DIMENSIONS
                )
            )
        ).vector_store
        started = time.perf_counter()
        # A batch holds at most 2,000 files: larger corpora go in several, all at once.
        created = [
            (
                await batches.CreateFileBatch(
                    file_batches_pb2.CreateFileBatchRequest(
                        vector_store_id=store.id, file_ids=ids[i : i + 2000]
                    )
                )
            ).file_batch
            for i in range(0, len(ids), 2000)
        ]
        finals = await asyncio.gather(*(_until_done(batches, b) for b in created))
        seconds = time.perf_counter() - started
        completed = sum(f.file_counts.completed for f in finals)
        failed = sum(f.file_counts.failed for f in finals)
        if failed:
            print(f"warning: {failed} files failed", file=sys.stderr)
        db = sqlite3.connect(f"file:{data_dir}/quiver.sqlite3?mode=ro", uri=True)
        chunks, tokens = db.execute("SELECT COUNT(*), SUM(token_count) FROM chunks").fetchone()
        db.close()
        return Result("service (gRPC)", seconds, completed, chunks, tokens), upload_seconds
    finally:
        await channel.close(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in MB")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    paths = list(corpus_files(int(args.mb * 1e6)))
    size = sum(p.stat().st_size for p in paths)
    print(f"corpus: {len(paths)} files, {size / 1e6:.1f} MB (kernel docs, Vim manual, stdlib)")
    bare = bare_pipeline(paths)
    contents = [(p.name, p.read_bytes()) for p in paths]
    proc, port, data_dir = start_server(args.workers)
    try:
        served, upload = asyncio.run(service(contents, port, data_dir))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(bare.line())
    print(served.line())
    print(
        f"upload of the corpus through UploadFile: {upload:.2f} s ({size / 1e6 / upload:.1f} MB/s)"
    )
    print(f"service / bare pipeline (tokens/s): {bare.seconds / served.seconds:.2f}")
    save_results(
        RESULTS_DIR / "ingest.json",
        {
            "benchmark": "ingest",
            "corpus": {"files": len(paths), "bytes": size, "mb": args.mb},
            "workers": args.workers,
            "upload_seconds": upload,
            "runs": {"bare": asdict(bare), "service": asdict(served)},
        },
    )


if __name__ == "__main__":
    main()
