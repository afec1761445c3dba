"""A heavy tenant and a prober: how long others wait while one tenant works.

The workload (a store of many small files, a filtered search, a large file's ingest) and
the prober (health and the other tenant's GetVectorStore every 50 ms) that
``tests/test_event_loop.py`` asserts on and ``bench/loop_latency.py`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quiver.v1 import (
    file_batches_pb2,
    file_batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

PROBE_EVERY = 0.05
PROBE_DEADLINE = 600.0
UPLOAD_PIECE = 1024 * 1024
ATTRIBUTE_KEYS = 16


@dataclass
class Caller:
    """One tenant's stubs on a channel, and the metadata its calls carry."""

    files: files_pb2_grpc.FileServiceAsyncStub
    stores: vector_stores_pb2_grpc.VectorStoreServiceAsyncStub
    batches: file_batches_pb2_grpc.FileBatchServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def on(cls, channel: aio.Channel, key: str = "") -> Caller:
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        return cls(
            files_pb2_grpc.FileServiceStub(channel),  # an AsyncStub on an aio channel
            vector_stores_pb2_grpc.VectorStoreServiceStub(channel),
            file_batches_pb2_grpc.FileBatchServiceStub(channel),
            metadata,
        )


@dataclass
class Probe:
    """Latencies (seconds) of health and of the other tenant's RPC during one operation."""

    health: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)

    @staticmethod
    def _p99(values: list[float]) -> float:
        if len(values) < 2:
            return max(values, default=0.0)
        return statistics.quantiles(values, n=100, method="inclusive")[98]

    def summary(self) -> dict[str, float]:
        return {
            "probes": len(self.health),
            "health_max_ms": round(max(self.health, default=0.0) * 1000, 1),
            "health_p99_ms": round(self._p99(self.health) * 1000, 1),
            "other_max_ms": round(max(self.other, default=0.0) * 1000, 1),
            "other_p99_ms": round(self._p99(self.other) * 1000, 1),
        }


def _timed(call: Callable[[], object]) -> float:
    """Seconds until ``call`` answered (or failed: a probe past its deadline counts as the
    time it waited)."""
    started = time.perf_counter()
    with contextlib.suppress(grpc.RpcError):
        call()
    return time.perf_counter() - started


def _probe(target: str, other: Caller, store_id: str, probe: Probe, stop: threading.Event) -> None:
    """The prober: its own thread and channel, so that its clock runs on even while the
    event loop of an in-process server (and of the test calling it) is blocked."""
    request = vector_stores_pb2.GetVectorStoreRequest(vector_store_id=store_id)
    check = health_pb2.HealthCheckRequest()
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stores = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
        while not stop.is_set():
            probe.health.append(_timed(lambda: health.Check(check, timeout=PROBE_DEADLINE)))
            probe.other.append(
                _timed(
                    lambda: stores.GetVectorStore(
                        request, metadata=other.metadata, timeout=PROBE_DEADLINE
                    )
                )
            )
            stop.wait(PROBE_EVERY)


async def probe_while(
    work: Awaitable[Any], target: str, other: Caller, store_id: str
) -> tuple[Probe, float]:
    """Runs ``work`` while probing the server at ``target``: health, and ``other``'s
    GetVectorStore of ``store_id``; returns the probe and the work's duration in seconds."""
    probe = Probe()
    stop = threading.Event()
    prober = threading.Thread(target=_probe, args=(target, other, store_id, probe, stop))
    prober.start()
    await asyncio.sleep(PROBE_EVERY * 4)  # a few probes of the quiet server first
    started = time.perf_counter()
    try:
        await work
    finally:
        seconds = time.perf_counter() - started
        await asyncio.sleep(PROBE_EVERY * 2)
        stop.set()
        await asyncio.to_thread(prober.join)
    return probe, seconds


# -- building the cases ----------------------------------------------------------------------


async def _pieces(name: str, data: bytes) -> AsyncIterator[files_pb2.UploadFileRequest]:
    yield files_pb2.UploadFileRequest(filename=name, purpose="assistants")
    for start in range(0, len(data), UPLOAD_PIECE):
        yield files_pb2.UploadFileRequest(data=data[start : start + UPLOAD_PIECE])


async def upload(caller: Caller, name: str, data: bytes) -> str:
    reply = await caller.files.UploadFile(_pieces(name, data), metadata=caller.metadata)
    return str(reply.file.id)


async def create_store(caller: Caller, name: str) -> str:
    reply = await caller.stores.CreateVectorStore(
        vector_stores_pb2.CreateVectorStoreRequest(name=name), metadata=caller.metadata
    )
    return str(reply.vector_store.id)


async def wait_batch(caller: Caller, store_id: str, batch_id: str) -> file_batches_pb2.FileBatch:
    request = file_batches_pb2.GetFileBatchRequest(vector_store_id=store_id, batch_id=batch_id)
    while True:
        reply = await caller.batches.GetFileBatch(request, metadata=caller.metadata)
        batch: file_batches_pb2.FileBatch = reply.file_batch
        if batch.status != file_batches_pb2.FILE_BATCH_STATUS_IN_PROGRESS:
            return batch
        await asyncio.sleep(0.2)


async def ingest(caller: Caller, store_id: str, file_ids: list[str], **batch: Any) -> None:
    """One batch of ``file_ids`` (or of ``files=[FileBatchFileSpec]``); waits until it ends
    and checks every file completed."""
    reply = await caller.batches.CreateFileBatch(
        file_batches_pb2.CreateFileBatchRequest(
            vector_store_id=store_id, file_ids=file_ids, **batch
        ),
        metadata=caller.metadata,
    )
    done = await wait_batch(caller, store_id, reply.file_batch.id)
    if done.file_counts.completed != len(file_ids) + len(batch.get("files", [])):
        raise RuntimeError(f"batch ended {done.status} with counts {done.file_counts}")


def _value(v: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=v)


async def store_of_small_files(caller: Caller, files: int) -> str:
    """A store of ``files`` small files (one upload each, attached in one batch), each with
    string attributes k0…k14 = "v" and k15 naming the file (so no two files' attributes
    are the same)."""
    store_id = await create_store(caller, "many small files")
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with gate:
            return await upload(caller, f"small{i}.txt", f"small file {i} about quivers".encode())

    ids = list(await asyncio.gather(*(one(i) for i in range(files))))
    specs = [
        file_batches_pb2.FileBatchFileSpec(
            file_id=file_id,
            attributes={
                **{f"k{k}": _value("v") for k in range(ATTRIBUTE_KEYS - 1)},
                f"k{ATTRIBUTE_KEYS - 1}": _value(f"file{i}"),
            },
        )
        for i, file_id in enumerate(ids)
    ]
    await ingest(caller, store_id, [], files=specs)
    return store_id


def heavy_filter() -> vector_stores_pb2.Filter:
    """253 nodes: and(4 x or(61 x in-list that fails after scanning 256 values, then one eq
    that holds)), so every file is matched against all of it and every file matches."""
    miss = [struct_pb2.Value(string_value=f"w{i}") for i in range(256)]
    groups = []
    for g in range(4):
        children = [
            vector_stores_pb2.Filter(
                type="in",
                key=f"k{(g * 61 + i) % ATTRIBUTE_KEYS}",
                value=struct_pb2.Value(list_value=struct_pb2.ListValue(values=miss)),
            )
            for i in range(61)
        ]
        children.append(vector_stores_pb2.Filter(type="eq", key="k0", value=_value("v")))
        groups.append(vector_stores_pb2.Filter(type="or", filters=children))
    return vector_stores_pb2.Filter(type="and", filters=groups)


def filter_nodes(f: vector_stores_pb2.Filter) -> int:
    return 1 + sum(filter_nodes(child) for child in f.filters)


async def filtered_search(caller: Caller, store_id: str, searches: int) -> int:
    """``searches`` searches in a row with the heavy filter; returns the results of the last."""
    request = vector_stores_pb2.SearchVectorStoreRequest(
        vector_store_id=store_id, query=["quivers"], max_num_results=10, filters=heavy_filter()
    )
    found = 0
    for _ in range(searches):
        reply = await caller.stores.SearchVectorStore(request, metadata=caller.metadata)
        found = len(reply.data)
    return found


def big_text(megabytes: float) -> bytes:
    """Varied English-like text (many distinct words, so FTS5 has real work)."""
    words = [
        f"{stem}{n}" for stem in ("quiver", "arrow", "bow", "target", "fletch") for n in range(400)
    ]
    out: list[str] = []
    size, i = 0, 0
    target = int(megabytes * 1024 * 1024)
    while size < target:
        line = " ".join(words[(i * 7919 + k * 104729) % len(words)] for k in range(12)) + ".\n"
        out.append(line)
        size += len(line)
        i += 1
    return "".join(out).encode()


# -- the run ---------------------------------------------------------------------------------
