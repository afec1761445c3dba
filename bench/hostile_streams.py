"""Hostile streams against everyone else: another tenant's RPC latency and the server's peak
RSS while one caller holds (a) N stalled uploads, (b) stalled uploads that each sent one large
message, (c) many hanging HTTP/2 streams on one connection without a key. A fresh server per
scenario (peak RSS is a high-water mark). Loopback only; every loop bounded.

    .venv/bin/python -m bench.hostile_streams --uploads 1100 --large 40 --hanging 20000

Against another checkout's server (main's code, for a before/after figure), run with
PYTHONPATH=<checkout>/server:<checkout>/client:. and the same arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc import aio
from quiver.server.auth.keys import hash_key, new_key
from quiver.v1 import files_pb2, files_pb2_grpc, vector_stores_pb2, vector_stores_pb2_grpc

from bench.raw_http2 import RawConnection
from tests.support.serve import ServerProcess

MiB = 1024 * 1024
PER_CHANNEL = 100
UploadCall = aio.StreamUnaryCall[files_pb2.UploadFileRequest, files_pb2.UploadFileResponse]


def md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def stalled(
    first: files_pb2.UploadFileRequest, stop: asyncio.Event
) -> AsyncIterator[files_pb2.UploadFileRequest]:
    yield first
    await stop.wait()  # then the stream just ends; the server never sees more


async def probe(target: str, key: str, calls: int = 30) -> str:
    """Another tenant's GetVectorStore, ``calls`` times in a row (10 s deadline each)."""
    async with aio.insecure_channel(target) as channel:
        stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
        failures: Counter[str] = Counter()
        store = None
        latencies: list[float] = []
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                if store is None:
                    store = (
                        await stub.CreateVectorStore(
                            vector_stores_pb2.CreateVectorStoreRequest(name="victim"),
                            metadata=md(key),
                            timeout=10,
                        )
                    ).vector_store.id
                else:
                    await stub.GetVectorStore(
                        vector_stores_pb2.GetVectorStoreRequest(vector_store_id=store),
                        metadata=md(key),
                        timeout=10,
                    )
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                failures[exc.code().name] += 1
            await asyncio.sleep(0.05)
    if not latencies:
        return f"all {calls} calls failed {dict(failures)}"
    ordered = sorted(latencies)
    return (
        f"{len(latencies)}/{calls} ok, p50 {statistics.median(ordered) * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms, failed {dict(failures)}"
    )


async def stalled_uploads(target: str, key: str, count: int, size: int) -> str:
    """``count`` uploads that send one message of ``size`` bytes, then nothing."""
    channels = [
        aio.insecure_channel(
            target,
            # Each its own connection (channels to one target otherwise share one).
            options=[
                ("grpc.max_send_message_length", 64 * MiB),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        for _ in range(-(-count // PER_CHANNEL))
    ]
    stop = asyncio.Event()
    data = b"x" * (size - 1024)  # the message, with its filename, just under `size`
    calls: list[UploadCall] = []
    for n in range(count):
        stub = files_pb2_grpc.FileServiceStub(channels[n // PER_CHANNEL])
        first = files_pb2.UploadFileRequest(filename=f"stall{n}.bin", data=data)
        calls.append(stub.UploadFile(stalled(first, stop), metadata=md(key)))
        if n % PER_CHANNEL == PER_CHANNEL - 1:
            await asyncio.sleep(0.05)
    await asyncio.sleep(3.0)
    ended: Counter[str] = Counter()
    for call in calls:
        if call.done():
            code = await call.code()
            ended[code.name] += 1
            if code not in (grpc.StatusCode.RESOURCE_EXHAUSTED,) and ended[code.name] == 1:
                print(f"    e.g. {code.name}: {await call.details()}")
    global_note = f"{count - sum(ended.values())} held open, ended early: {dict(ended)}"
    _cleanup.append(lambda: _close(calls, channels, stop))
    return global_note


async def _close(calls: list[UploadCall], channels: list[aio.Channel], stop: asyncio.Event) -> None:
    for call in calls:
        call.cancel()
    stop.set()
    for channel in channels:
        await channel.close(None)


_cleanup: list[Callable[[], Awaitable[None]]] = []


async def hanging_streams(port: int, count: int) -> str:
    """``count`` HTTP/2 streams on one connection, no key, headers only, never read."""
    conn = RawConnection("127.0.0.1", port)
    sent = 0
    try:
        for _ in range(count):
            conn.open_stream("/quiver.v1.FileService/UploadFile")
            sent += 1
    except OSError as exc:  # the server closed the connection, or its buffers are full
        note = f"stopped after {sent}: {exc.__class__.__name__}"
    else:
        note = f"all {sent} sent"
    await asyncio.sleep(3.0)

    async def close() -> None:
        conn.close()

    _cleanup.append(close)
    return note


async def rapid_resets(port: int, seconds: float) -> str:
    """Streams opened and reset at once, back to back, for ``seconds`` (in a thread, so the
    other tenant's calls run meanwhile); the count is printed at the end."""
    stop = threading.Event()
    sent = [0]

    def attack() -> None:
        deadline = time.monotonic() + seconds
        try:
            conn = RawConnection("127.0.0.1", port)
            while not stop.is_set() and time.monotonic() < deadline:
                conn.reset(conn.open_stream("/quiver.v1.FileService/GetFile"))
                sent[0] += 1
                if sent[0] % 1000 == 0:
                    conn.drain()
        except OSError:
            return  # the server closed the connection

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()

    async def close() -> None:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
        print(f"    resets sent: {sent[0]}")

    _cleanup.append(close)
    return f"a thread resetting streams for {seconds:g} s"


async def scenario(name: str, attack: Callable[[ServerProcess, str], Awaitable[str]]) -> None:
    keys = {"attacker": new_key(), "victim": new_key()}
    inline = ",".join(f"{t} sha256:{hash_key(k).hex()}" for t, k in keys.items())
    server = ServerProcess.start("--api-keys", inline)
    try:
        base_rss = server.peak_rss_mb()
        quiet = await probe(server.target, keys["victim"], calls=10)
        note = await attack(server, keys["attacker"])
        fds = len(os.listdir(f"/proc/{server.process.pid}/fd"))
        under = await probe(server.target, keys["victim"])
        print(f"({name}) attack: {note}")
        print(f"    other tenant, quiet:       {quiet}")
        print(f"    other tenant, under it:    {under}")
        print(f"    server peak RSS: {server.peak_rss_mb():.0f} MB (at start {base_rss:.0f} MB)")
        print(f"    server open file descriptors under it: {fds}")
    finally:
        while _cleanup:
            await _cleanup.pop()()
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


async def run(uploads: int, large: int, large_mib: int, hanging: int, resets: float) -> None:
    if uploads:
        await scenario(
            f"a: {uploads} stalled uploads",
            lambda s, k: stalled_uploads(s.target, k, uploads, 1024),
        )
    if large:
        await scenario(
            f"b: {large} stalled uploads of one {large_mib} MiB message",
            lambda s, k: stalled_uploads(s.target, k, large, large_mib * MiB),
        )
    if hanging:
        await scenario(
            f"c: {hanging} hanging streams, one connection, no key",
            lambda s, k: hanging_streams(s.port, hanging),
        )
    if resets:
        await scenario(
            f"d: rapid resets for {resets:g} s", lambda s, k: rapid_resets(s.port, resets)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=1100)
    parser.add_argument("--large", type=int, default=40)
    parser.add_argument(
        "--large-mib", type=int, default=16, help="main's message limit was 16 MiB; now 4"
    )
    parser.add_argument("--hanging", type=int, default=20000)
    parser.add_argument("--resets-seconds", type=float, default=15.0)
    args = parser.parse_args()
    asyncio.run(run(args.uploads, args.large, args.large_mib, args.hanging, args.resets_seconds))


if __name__ == "__main__":
    main()
