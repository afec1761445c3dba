"""Graceful shutdown: health goes NOT_SERVING, new RPCs are refused, in-flight ones finish.

(SIGTERM to a real `quiver serve` process is in test_e2e_grpcurl.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.config import Settings
from quiver.v1 import files_pb2

from tests.conftest import Running, _tenant
from tests.rpc_helpers import (
    blob_files,
    download,
    sha256_hex,
    start_paced_upload,
    tmp_files,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def data_dir(running: Running) -> Path:
    return running.server.settings.data_dir


def stored_file_rows(data: Path) -> int:
    """Rows in the files table, read straight from the database file (the server is stopped)."""
    db = sqlite3.connect(data / "quiver.sqlite3")
    try:
        count: int = db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        return count
    finally:
        db.close()


async def test_graceful_shutdown_lets_an_upload_finish(running: Running) -> None:
    loop = asyncio.get_running_loop()
    a = running.alice
    health = health_pb2_grpc.HealthStub(running.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == SERVING

    first, rest = os.urandom(300_000), os.urandom(500_000)
    paced, call = await start_paced_upload(a, data_dir(running), first)

    started = loop.time()
    stopping = asyncio.create_task(running.server.stop(grace=5))

    # 1. Health turns NOT_SERVING: a watcher connected before the stop is told so.
    update = await asyncio.wait_for(watch.read(), timeout=2)
    assert update.status == NOT_SERVING
    watch.cancel()

    # 2. From now on a health check never says SERVING: it answers NOT_SERVING or, once the
    #    server takes no new RPCs, fails UNAVAILABLE.
    try:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        assert reply.status == NOT_SERVING
    except aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE

    # 3. New RPCs are refused with UNAVAILABLE, promptly (polled; the stop is in progress).
    refused: aio.AioRpcError | None = None
    while refused is None:
        assert loop.time() - started < 2, "new RPCs were still accepted 2 s into the stop"
        try:
            await a.files.ListFiles(files_pb2.ListFilesRequest(), metadata=a.metadata, timeout=1)
        except aio.AioRpcError as exc:
            refused = exc
        else:
            await asyncio.sleep(0.005)
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert not stopping.done()  # still draining: the upload holds it

    # 4. The in-flight upload finishes OK within the grace period, and then stop returns.
    paced.send(files_pb2.UploadFileRequest(data=rest))
    paced.close()
    reply = await asyncio.wait_for(call, timeout=5)
    assert reply.file.bytes == len(first) + len(rest)
    assert reply.file.sha256 == sha256_hex(first + rest)
    await asyncio.wait_for(stopping, timeout=5)
    assert loop.time() - started < 4, "stop waited for the grace period, not for the upload"

    # 5. Storage is closed.
    with pytest.raises(sqlite3.ProgrammingError):
        running.server.core.db.conn.execute("SELECT 1")
    await running.server.stop(grace=1)  # a second stop is a no-op
    await asyncio.wait_for(running.server.wait_stopped(), timeout=1)

    # 6. What the RPC reported as done is there after a restart on the same data.
    again = QuiverServer(running.server.settings)
    port = await again.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        alice = _tenant("alice", a.key, channel)
        meta, content, _ = await download(alice, reply.file.id)
        assert meta == reply.file
        assert content == first + rest
    finally:
        await channel.close(None)
        await again.stop(grace=1)


async def test_grace_period_ends_an_unfinished_upload(running: Running) -> None:
    loop = asyncio.get_running_loop()
    paced, call = await start_paced_upload(running.alice, data_dir(running), b"x" * 1000)
    started = loop.time()
    await asyncio.wait_for(running.server.stop(grace=0.3), timeout=5)
    assert 0.25 <= loop.time() - started < 3  # waited for the grace period, not much longer
    with pytest.raises(aio.AioRpcError) as err:
        await asyncio.wait_for(call, timeout=5)
    assert err.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    paced.close()
    assert tmp_files(data_dir(running)) == []
    with pytest.raises(sqlite3.ProgrammingError):
        running.server.core.db.conn.execute("SELECT 1")


async def test_upload_cut_by_the_grace_period_stores_nothing(running: Running) -> None:
    paced, call = await start_paced_upload(running.alice, data_dir(running), b"x" * 1000)
    await asyncio.wait_for(running.server.stop(grace=0.3), timeout=5)
    with pytest.raises(aio.AioRpcError):
        await asyncio.wait_for(call, timeout=5)
    paced.close()
    assert blob_files(data_dir(running)) == []
    assert stored_file_rows(data_dir(running)) == 0


async def test_stop_without_rpcs_is_quick(running: Running) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await running.server.stop(grace=5)
    assert loop.time() - started < 2
    with pytest.raises(sqlite3.ProgrammingError):
        running.server.core.db.conn.execute("SELECT 1")
    await asyncio.wait_for(running.server.wait_stopped(), timeout=1)


async def test_stop_of_a_server_never_started_returns(tmp_path: Path) -> None:
    server = QuiverServer(
        Settings(http_listen="127.0.0.1:0", listen="127.0.0.1:0", data_dir=tmp_path / "data")
    )
    try:
        await asyncio.wait_for(server.stop(grace=1), timeout=1)
    finally:
        server.core.pool.close()
        with contextlib.suppress(sqlite3.ProgrammingError):
            server.core.db.close()


async def test_start_on_a_busy_port_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = QuiverServer(
            Settings(
                http_listen="127.0.0.1:0", listen=f"127.0.0.1:{port}", data_dir=tmp_path / "data"
            )
        )
        try:
            with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
                await server.start()
        finally:
            server.core.pool.close()
            with contextlib.suppress(sqlite3.ProgrammingError):
                server.core.db.close()
