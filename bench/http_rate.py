"""HTTP vs gRPC request rate: retrieve (GetVectorStore / GET /v1/vector_stores/{id}) and
search (SearchVectorStore / POST /v1/vector_stores/{id}/search) at 32 concurrent clients,
against one `quiver serve` process, in one run. Each edge gets the same store, the same
queries and the same number of seconds per operation; the figures are completed requests per
second, errors, and p50/p99 latency as the clients saw it.

The Python clients are thin on both sides (generated grpc.aio stubs on one channel; httpx
with a pool of 32 keep-alive connections) and run in this process's one event loop, so
client-side Python cost is part of what is measured for both edges alike. httpx is far
costlier per request than grpc's C core, so HTTP is measured a second time with curl
(``--parallel-max 32``, keep-alive) as the client: ``http-curl`` rows (search repeats one
query there).

    .venv/bin/python -m bench.http_rate --clients 32 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from grpc import aio
from quiver.v1 import (
    file_batches_pb2,
    file_batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

from bench.load import WORDS
from bench.results import RESULTS_DIR, save_results
from bench.serverproc import ServerProcess, free_port


@dataclass
class Phase:
    edge: str
    operation: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _drive(clients: int, seconds: float, call: Callable[[int], Awaitable[None]]) -> Phase:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def client(n: int) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                await call(n * 100_000 + i)
            except Exception:
                errors += 1
            else:
                latencies.append(time.perf_counter() - started)
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [0.0]
    return Phase(
        "",
        "",
        len(latencies),
        errors,
        elapsed,
        statistics.median(ordered) * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


CURL_BATCH = 400


async def _curl(clients: int, seconds: float, url: str, body: str | None) -> Phase:
    """The same HTTP calls from curl (C, ``--parallel-max clients``): what the server does
    when the client costs next to nothing. Batches of CURL_BATCH requests until ``seconds``."""
    latencies: list[float] = []
    errors = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        command = ["curl", "-s", "--no-progress-meter", "--parallel"]
        command += ["--parallel-max", str(clients)]
        command += ["-w", "%{http_code} %{time_total}\n"]
        if body is not None:
            command += ["-H", "content-type: application/json", "-d", body]
        process = await asyncio.create_subprocess_exec(
            *command,
            *(["-o", "/dev/null", url] * CURL_BATCH),  # -o applies to one URL each
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await process.communicate()
        for line in out.decode().splitlines():
            code, took = line.split()
            if code == "200":
                latencies.append(float(took))
            else:
                errors += 1
    elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [0.0]
    return Phase(
        "",
        "",
        len(latencies),
        errors,
        elapsed,
        statistics.median(ordered) * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def _query(i: int) -> str:
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))


async def _corpus(channel: aio.Channel, files: int) -> str:
    """A store of ``files`` small documents, processed to the end."""
    uploads = files_pb2_grpc.FileServiceStub(channel)
    stores = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
    batches = file_batches_pb2_grpc.FileBatchServiceStub(channel)
    ids = []
    for n in range(files):
        text = " ".join(random.Random(n).choice(WORDS) for _ in range(400)).encode()

        async def messages(name: str = f"d{n}.txt", data: bytes = text) -> Any:
            yield files_pb2.UploadFileRequest(filename=name)
            yield files_pb2.UploadFileRequest(data=data)

        ids.append((await uploads.UploadFile(messages())).file.id)
    store = (
        await stores.CreateVectorStore(vector_stores_pb2.CreateVectorStoreRequest(name="rate"))
    ).vector_store.id
    batch = await batches.CreateFileBatch(
        file_batches_pb2.CreateFileBatchRequest(vector_store_id=store, file_ids=ids)
    )
    request = file_batches_pb2.WatchFileBatchRequest(
        vector_store_id=store, batch_id=batch.file_batch.id
    )
    async for _ in batches.WatchFileBatch(request):
        pass  # the stream ends once the batch has
    return store


async def run(clients: int, seconds: float, files: int) -> list[Phase]:
    http_port = free_port()
    server = ServerProcess.start("--http-listen", f"127.0.0.1:{http_port}")
    phases: list[Phase] = []
    try:
        async with aio.insecure_channel(server.target) as channel:
            store = await _corpus(channel, files)
            stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            # TCP_NODELAY: without it a request's pieces wait on delayed ACKs (~40 ms each).
            transport = httpx.AsyncHTTPTransport(
                limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            )
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{http_port}/v1", transport=transport, timeout=30
            ) as http:

                async def grpc_retrieve(i: int) -> None:
                    await stub.GetVectorStore(
                        vector_stores_pb2.GetVectorStoreRequest(vector_store_id=store)
                    )

                async def http_retrieve(i: int) -> None:
                    (await http.get(f"/vector_stores/{store}")).raise_for_status()

                async def grpc_search(i: int) -> None:
                    await stub.SearchVectorStore(
                        vector_stores_pb2.SearchVectorStoreRequest(
                            vector_store_id=store, query=[_query(i)], max_num_results=5
                        )
                    )

                async def http_search(i: int) -> None:
                    response = await http.post(
                        f"/vector_stores/{store}/search",
                        json={"query": _query(i), "max_num_results": 5},
                    )
                    response.raise_for_status()

                root = f"http://127.0.0.1:{http_port}/v1/vector_stores/{store}"
                query = json.dumps({"query": _query(7), "max_num_results": 5})
                plan: list[tuple[str, str, Callable[[], Awaitable[Phase]]]] = [
                    ("grpc", "retrieve", lambda: _drive(clients, seconds, grpc_retrieve)),
                    ("http", "retrieve", lambda: _drive(clients, seconds, http_retrieve)),
                    ("http-curl", "retrieve", lambda: _curl(clients, seconds, root, None)),
                    ("grpc", "search", lambda: _drive(clients, seconds, grpc_search)),
                    ("http", "search", lambda: _drive(clients, seconds, http_search)),
                    (
                        "http-curl",
                        "search",
                        lambda: _curl(clients, seconds, root + "/search", query),
                    ),
                ]
                await _drive(clients, 1.0, grpc_retrieve)  # warm-up: connections, caches
                await _drive(clients, 1.0, http_retrieve)
                for edge, operation, measure in plan:
                    phase = await measure()
                    phase.edge, phase.operation = edge, operation
                    phases.append(phase)
                    print(
                        f"{operation:8} {edge:9}  {phase.rate:8.1f} req/s  "
                        f"errors {phase.errors:3}  p50 {phase.p50_ms:6.1f} ms  "
                        f"p99 {phase.p99_ms:6.1f} ms",
                        flush=True,
                    )
    finally:
        server.stop()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="per edge and operation")
    parser.add_argument("--files", type=int, default=20, help="documents in the store")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "http_rate.json")
    args = parser.parse_args()
    phases = asyncio.run(run(args.clients, args.seconds, args.files))
    save_results(
        args.out,
        {
            "clients": args.clients,
            "seconds_per_phase": args.seconds,
            "files": args.files,
            "phases": [
                {
                    "edge": p.edge,
                    "operation": p.operation,
                    "requests_per_second": round(p.rate, 1),
                    "requests": p.requests,
                    "errors": p.errors,
                    "p50_ms": round(p.p50_ms, 2),
                    "p99_ms": round(p.p99_ms, 2),
                }
                for p in phases
            ],
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
