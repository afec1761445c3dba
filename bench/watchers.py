"""Watch fan-out: 1,000 concurrent WatchFileBatch streams on one 500-file batch.

Prints whether every watcher got the terminal message, the time from the batch's end (the
first terminal message any watcher saw) to the last watcher's terminal message, the
messages received, and the server's peak RSS with and without the watchers.

    .venv/bin/python -m bench.watchers --watchers 1000 --files 500
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

from grpc import aio
from quiver.v1 import file_batches_pb2 as fb
from quiver.v1 import (
    file_batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

from tests.support.serve import ServerProcess


async def _one(name: str, data: bytes) -> AsyncIterator[files_pb2.UploadFileRequest]:
    yield files_pb2.UploadFileRequest(filename=name, data=data)


def _document(i: int, size: int) -> bytes:
    words = ("quiver", "batch", "watch", "stream", "vector", "index", "token", "chunk")
    body = " ".join(f"{words[(i * 7 + j) % len(words)]}{j % 97}" for j in range(size // 8))
    return f"document {i}\n{body}\n".encode()


async def run(watchers: int, files: int, file_bytes: int) -> None:
    # One tenant (open mode) with many watchers: past the default per-tenant cap on purpose.
    cap = str(max(watchers, 1000))
    server = ServerProcess.start("--max-watchers", cap, "--max-watchers-per-tenant", cap)
    try:
        baseline_rss = server.peak_rss_mb()
        # Eight connections (channels to one target otherwise share one, and a connection
        # carries at most --max-concurrent-streams calls at once).
        local = [("grpc.use_local_subchannel_pool", 1)]
        channels = [aio.insecure_channel(server.target, options=local) for _ in range(8)]
        file_stub = files_pb2_grpc.FileServiceStub(channels[0])
        stores = vector_stores_pb2_grpc.VectorStoreServiceStub(channels[0])
        ids = [
            (await file_stub.UploadFile(_one(f"doc{i}.txt", _document(i, file_bytes)))).file.id
            for i in range(files)
        ]
        store = (
            await stores.CreateVectorStore(vector_stores_pb2.CreateVectorStoreRequest(name="fan"))
        ).vector_store
        batch = (
            await file_batches_pb2_grpc.FileBatchServiceStub(channels[0]).CreateFileBatch(
                fb.CreateFileBatchRequest(vector_store_id=store.id, file_ids=ids)
            )
        ).file_batch
        request = fb.WatchFileBatchRequest(vector_store_id=store.id, batch_id=batch.id)
        terminal_at: list[float] = []  # of watchers attached while the batch still ran
        late = 0  # watchers whose first message was already terminal
        messages: list[int] = []
        finals: list[int] = []

        async def watch(n: int) -> None:
            stub = file_batches_pb2_grpc.FileBatchServiceStub(channels[n % len(channels)])
            nonlocal late
            count = 0
            last = None
            async for message in stub.WatchFileBatch(request):
                count += 1
                last = message
            if count == 1:
                late += 1
            else:
                terminal_at.append(time.perf_counter())
            messages.append(count)
            assert last is not None
            finals.append(last.file_batch.status)

        started = time.perf_counter()
        await asyncio.gather(*(watch(n) for n in range(watchers)))
        total = time.perf_counter() - started
        completed = sum(1 for s in finals if s == fb.FILE_BATCH_STATUS_COMPLETED)
        spread = max(terminal_at) - min(terminal_at)
        print(f"batch: {files} files of ~{file_bytes} bytes; {watchers} watchers on 8 channels")
        print(
            f"watchers that got the terminal message: {len(finals)}/{watchers} "
            f"({completed} COMPLETED; {late} attached only after the batch had ended)"
        )
        print(
            f"batch end -> last watcher's terminal message: {spread * 1000:.0f} ms "
            f"(over the {len(terminal_at)} watchers attached while it ran)"
        )
        print(
            f"messages per watcher: min {min(messages)}, max {max(messages)}, "
            f"mean {sum(messages) / len(messages):.1f} (slow readers get changes folded)"
        )
        print(f"watch phase: {total:.1f} s")
        print(f"server peak RSS: {server.peak_rss_mb():.0f} MB (at start {baseline_rss:.0f} MB)")
        for channel in channels:
            await channel.close(None)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--file-bytes", type=int, default=60_000)
    args = parser.parse_args()
    asyncio.run(run(args.watchers, args.files, args.file_bytes))


if __name__ == "__main__":
    main()
