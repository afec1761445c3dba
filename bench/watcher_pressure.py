"""Never-read watchers against everyone else: another tenant's RPC latency while one tenant
holds N WatchFileBatch streams it never reads, on a batch that is being processed.

One ingest worker; the attacker's store embeds through a local OpenAI-compatible endpoint
that holds every request until all watchers are attached, then answers at once: every
watcher is attached before the first change, and changes then come as fast as the server
commits files. Prints the watchers the server accepted (and
refused), the other tenant's GetVectorStore latency (p50, p99, max) while the watched batch
ran, and the server's peak RSS.

    .venv/bin/python -m bench.watcher_pressure --watchers 3000 --files 300

Against another checkout's server (e.g. main's code, for a before/after figure), run with
PYTHONPATH=<checkout>/server:<checkout>/client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from grpc import aio
from quiver.server.auth.keys import hash_key, new_key
from quiver.v1 import file_batches_pb2 as fb
from quiver.v1 import (
    file_batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

from tests.support.serve import ServerProcess

PER_CHANNEL = 100
"""Watchers per attacker connection (under the server's streams-per-connection limit)."""


async def _one(name: str, data: bytes) -> AsyncIterator[files_pb2.UploadFileRequest]:
    yield files_pb2.UploadFileRequest(filename=name, data=data)


def _document(i: int, size: int) -> bytes:
    words = ("quiver", "batch", "watch", "stream", "vector", "index", "token", "chunk")
    body = " ".join(f"{words[(i * 7 + j) % len(words)]}{j % 97}" for j in range(size // 8))
    return f"document {i}\n{body}\n".encode()[:size]


def keys_flag() -> tuple[str, dict[str, str]]:
    keys = {"attacker": new_key(), "victim": new_key()}
    return ",".join(f"{t} sha256:{hash_key(k).hex()}" for t, k in keys.items()), keys


def md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class HeldEmbeddings:
    """POST /v1/embeddings that waits for ``release``, then answers with unit vectors."""

    def __init__(self) -> None:
        self.release = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                held.release.wait(300)
                dims = int(body.get("dimensions") or 8)
                vector = [1.0] + [0.0] * (dims - 1)
                data = [
                    {"object": "embedding", "index": i, "embedding": vector}
                    for i in range(len(body["input"]))
                ]
                payload = json.dumps({"object": "list", "data": data, "model": "m"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


async def run(
    watchers: int, files: int, file_bytes: int, seconds: float, server_args: list[str]
) -> None:
    inline, keys = keys_flag()
    held = HeldEmbeddings()
    server = ServerProcess.start(
        "--api-keys", inline, "--openai-base-url", held.base_url, *server_args, workers=1
    )
    attacker, victim = md(keys["attacker"]), md(keys["victim"])
    channels: list[aio.Channel] = []
    try:
        control = aio.insecure_channel(server.target)
        channels.append(control)
        file_stub = files_pb2_grpc.FileServiceStub(control)
        stores = vector_stores_pb2_grpc.VectorStoreServiceStub(control)
        batches = file_batches_pb2_grpc.FileBatchServiceStub(control)
        gate = asyncio.Semaphore(16)

        async def upload(i: int) -> str:
            async with gate:
                reply = await file_stub.UploadFile(
                    _one(f"doc{i}.txt", _document(i, file_bytes)), metadata=attacker
                )
                return str(reply.file.id)

        ids = list(await asyncio.gather(*(upload(i) for i in range(files))))
        store = (
            await stores.CreateVectorStore(
                vector_stores_pb2.CreateVectorStoreRequest(
                    name="pressure", embedding_model="openai:m", embedding_dimensions=8
                ),
                metadata=attacker,
            )
        ).vector_store
        mine = (
            await stores.CreateVectorStore(
                vector_stores_pb2.CreateVectorStoreRequest(name="victim"), metadata=victim
            )
        ).vector_store
        batch = (
            await batches.CreateFileBatch(
                fb.CreateFileBatchRequest(vector_store_id=store.id, file_ids=ids),
                metadata=attacker,
            )
        ).file_batch
        request = fb.WatchFileBatchRequest(vector_store_id=store.id, batch_id=batch.id)
        attack = [
            # Each its own connection (channels to one target otherwise share one).
            aio.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(max(1, -(-watchers // PER_CHANNEL)))
        ]
        channels += attack
        calls: list[aio.UnaryStreamCall[fb.WatchFileBatchRequest, fb.WatchFileBatchResponse]] = []
        for channel in attack:  # a wave per connection, a moment apart
            stub = file_batches_pb2_grpc.FileBatchServiceStub(channel)
            calls += [
                stub.WatchFileBatch(request, metadata=attacker)
                for _ in range(min(PER_CHANNEL, watchers - len(calls)))
            ]
            await asyncio.sleep(0.05)
        # Never read: only wait until each call has either started or been refused.
        await asyncio.wait_for(
            asyncio.gather(*(c.initial_metadata() for c in calls), return_exceptions=True), 120
        )
        await asyncio.sleep(0.5)
        held.release.set()  # the batch now runs
        before = (
            await batches.GetFileBatch(
                fb.GetFileBatchRequest(vector_store_id=store.id, batch_id=batch.id),
                metadata=attacker,
            )
        ).file_batch.file_counts.completed
        # A watch of a running batch does not end by itself: one that did was refused.
        ended = Counter([(await c.code()).name for c in calls if c.done()])
        refused = sum(ended.values())

        latencies: list[float] = []
        failures = 0
        probe = vector_stores_pb2_grpc.VectorStoreServiceStub(aio.insecure_channel(server.target))
        started = time.perf_counter()
        status = fb.FILE_BATCH_STATUS_IN_PROGRESS
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            try:
                await probe.GetVectorStore(
                    vector_stores_pb2.GetVectorStoreRequest(vector_store_id=mine.id),
                    metadata=victim,
                    timeout=30,
                )
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError:
                failures += 1
            if len(latencies) % 20 == 0:
                status = (
                    await batches.GetFileBatch(
                        fb.GetFileBatchRequest(vector_store_id=store.id, batch_id=batch.id),
                        metadata=attacker,
                    )
                ).file_batch.status
                if status != fb.FILE_BATCH_STATUS_IN_PROGRESS:
                    break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        print(f"batch: {files} files of ~{file_bytes} bytes; never-read watchers: {watchers}")
        print(f"watchers refused by the server: {refused} {dict(ended)}")
        print(f"files of the watched batch done before the last watcher attached: {before}")
        print(
            f"other tenant's GetVectorStore over {elapsed:.1f} s ({len(latencies)} calls, "
            f"{failures} failed): p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms"
        )
        print(f"batch still in progress at the end: {status == fb.FILE_BATCH_STATUS_IN_PROGRESS}")
        print(f"server peak RSS: {server.peak_rss_mb():.0f} MB")
        for call in calls:
            call.cancel()
    finally:
        for channel in channels:
            await channel.close(None)
        server.stop()
        held.close()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watchers", type=int, default=3000)
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--file-bytes", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="passed to quiver serve, e.g. --server-arg=--max-watchers=5000",
    )
    args = parser.parse_args()
    asyncio.run(run(args.watchers, args.files, args.file_bytes, args.seconds, args.server_arg))


if __name__ == "__main__":
    main()
