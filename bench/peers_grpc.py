"""Quiver through gRPC for ``bench/peers.py``: a real ``quiver serve`` process, the same
chunks ingested as one file each (``<id>.txt``, with its ``tenth`` and ``hundredth`` as
the file's attributes, default chunking, the ``hash`` model at 512 dimensions), then the
same queries as text, one client, ranker ``none`` for the vector scenarios (with an
``eq`` filter for 10 % and 1 %) and ``auto`` for hybrid. A hit's file name gives the chunk
id the recall is computed on; the server embeds each text with the same hash embedder, so
its vectors are the benchmark's (a file cut into several chunks would count once).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import struct_pb2
from grpc import aio
from quiver.v1 import (
    file_batches_pb2,
    file_batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

from bench.peers import SCENARIOS, Dataset, K
from tests.support.serve import ServerProcess

BATCH_FILES = 2000
UPLOADS_IN_FLIGHT = 8
TERMINAL = (
    file_batches_pb2.FILE_BATCH_STATUS_COMPLETED,
    file_batches_pb2.FILE_BATCH_STATUS_FAILED,
    file_batches_pb2.FILE_BATCH_STATUS_CANCELLED,
)


async def _one_piece(name: str, data: bytes) -> AsyncIterator[files_pb2.UploadFileRequest]:
    yield files_pb2.UploadFileRequest(filename=name, data=data)


def _number(value: int) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=float(value))


async def _ingest(channel: aio.Channel, data: Dataset, log: Callable[[str], None]) -> str:
    files = files_pb2_grpc.FileServiceStub(channel)
    stores = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
    batches = file_batches_pb2_grpc.FileBatchServiceStub(channel)
    slots = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

    async def upload(i: int) -> str:
        async with slots:
            reply = await files.UploadFile(_one_piece(f"{i}.txt", data.texts[i].encode("utf-8")))
            return str(reply.file.id)

    file_ids = await asyncio.gather(*(upload(i) for i in range(len(data.texts))))
    log(f"  gRPC: {len(file_ids):,} files uploaded")
    store = (
        await stores.CreateVectorStore(
            vector_stores_pb2.CreateVectorStoreRequest(name="peers", embedding_model="hash")
        )
    ).vector_store
    for first in range(0, len(file_ids), BATCH_FILES):
        specs = [
            file_batches_pb2.FileBatchFileSpec(
                file_id=file_ids[i],
                attributes={
                    "tenth": _number(int(data.tenth[i])),
                    "hundredth": _number(int(data.hundredth[i])),
                },
            )
            for i in range(first, min(first + BATCH_FILES, len(file_ids)))
        ]
        batch = (
            await batches.CreateFileBatch(
                file_batches_pb2.CreateFileBatchRequest(vector_store_id=store.id, files=specs)
            )
        ).file_batch
        last = None
        async for message in batches.WatchFileBatch(
            file_batches_pb2.WatchFileBatchRequest(vector_store_id=store.id, batch_id=batch.id)
        ):
            last = message
        if last is None or last.file_batch.status != file_batches_pb2.FILE_BATCH_STATUS_COMPLETED:
            raise RuntimeError(f"batch {batch.id} ended as {last}")
        log(f"  gRPC: {first + len(specs):,} files completed")
    return str(store.id)


async def _measure(channel: aio.Channel, store_id: str, data: Dataset) -> dict[str, Any]:
    stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
    out: dict[str, Any] = {}
    runs: list[tuple[str, str, vector_stores_pb2.Filter | None]] = [
        (
            s.name,
            "none",
            None
            if s.key is None
            else vector_stores_pb2.Filter(type="eq", key=s.key, value=_number(s.value)),
        )
        for s in SCENARIOS
    ]
    runs.append(("hybrid", "auto", None))
    for name, ranker, where in runs:

        async def search(q: int, ranker: str = ranker, where: Any = where) -> list[int]:
            request = vector_stores_pb2.SearchVectorStoreRequest(
                vector_store_id=store_id,
                query=[data.queries[q]],
                max_num_results=K,
                ranking_options=vector_stores_pb2.RankingOptions(ranker=ranker),
            )
            if where is not None:
                request.filters.CopyFrom(where)
            reply = await stub.SearchVectorStore(request)
            return [int(hit.filename.removesuffix(".txt")) for hit in reply.data]

        await search(0)  # warm-up
        latencies: list[float] = []
        found: list[list[int]] = []
        wall = time.perf_counter()
        for q in range(len(data.queries)):
            t = time.perf_counter()
            found.append(await search(q))
            latencies.append(time.perf_counter() - t)
        out[name] = {"latencies": latencies, "wall_s": time.perf_counter() - wall, "found": found}
    return out


def run_grpc(data: Dataset, log: Callable[[str], None]) -> dict[str, Any]:
    """Raw answers in the drivers' shape (``build_s``: upload and ingest through gRPC)."""
    server = ServerProcess.start("--http-listen", "off", workers=2)
    try:

        async def go() -> dict[str, Any]:
            async with aio.insecure_channel(server.target) as channel:
                start = time.perf_counter()
                store_id = await _ingest(channel, data, log)
                build = time.perf_counter() - start
                scenarios = await _measure(channel, store_id, data)
                return {
                    "build_s": build,
                    "notes": "gRPC: ranker none (filters: eq on file attributes); hybrid: auto",
                    "scenarios": scenarios,
                }

        return asyncio.run(go())
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
