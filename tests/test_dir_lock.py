"""One data directory, one server: a second server on a directory in use refuses to start
with one line naming the holder; the lock goes with the holder's stop or death (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from grpc import aio
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.config import Settings
from quiver.v1 import vector_stores_pb2

from tests.conftest import Running
from tests.test_recovery import (  # noqa: F401 - `processes` is a fixture
    ServeProcess,
    free_port,
    processes,
    wait_serving,
)


def serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "quiver.server.cli", "serve"),
            *("--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--ingest-workers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def start_and_stop(data_dir: Path) -> None:
    server = QuiverServer(
        Settings(
            http_listen="127.0.0.1:0", listen="127.0.0.1:0", data_dir=data_dir, ingest_workers=1
        )
    )
    try:
        assert await server.start() > 0
    finally:
        await server.stop(grace=0)


@pytest.mark.e2e
async def test_a_second_serve_on_a_directory_in_use_exits_naming_the_holder(
    running: Running,
) -> None:
    data_dir = running.server.settings.data_dir
    done = serve(data_dir)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"quiver serve: the data directory {data_dir} is in use")
    assert f"pid {os.getpid()}" in lines[0]
    assert f"127.0.0.1:{running.server.port}" in lines[0]

    # The refused server changed nothing: the first one still serves, then stops, and the
    # directory is free for the next server.
    reply = await running.alice.stores.ListVectorStores(
        vector_stores_pb2.ListVectorStoresRequest(),
        metadata=running.alice.metadata,
    )
    assert list(reply.data) == []
    await running.server.stop(grace=0)
    await start_and_stop(data_dir)


async def test_a_second_server_in_process_is_refused_until_the_first_stops(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = QuiverServer(
        Settings(
            http_listen="127.0.0.1:0", listen="127.0.0.1:0", data_dir=data_dir, ingest_workers=1
        )
    )
    port = await first.start()
    try:
        with pytest.raises(ConfigError, match=rf"pid {os.getpid()}, listening on .*:{port}"):
            QuiverServer(
                Settings(
                    http_listen="127.0.0.1:0",
                    listen="127.0.0.1:0",
                    data_dir=data_dir,
                    ingest_workers=1,
                )
            )
    finally:
        await first.stop(grace=0)
    await start_and_stop(data_dir)


@pytest.mark.e2e
async def test_a_sigkilled_server_leaves_no_stale_lock(
    tmp_path: Path,
    processes: list[ServeProcess],  # noqa: F811
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    first = ServeProcess(data_dir, port, tmp_path / "first.log")
    processes.append(first)
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await wait_serving(channel, first)
    finally:
        await channel.close(None)
    with pytest.raises(ConfigError, match=rf"pid {first.proc.pid}, listening on 127.0.0.1:{port}"):
        QuiverServer(
            Settings(
                http_listen="127.0.0.1:0", listen="127.0.0.1:0", data_dir=data_dir, ingest_workers=1
            )
        )

    # Only the server is killed, not its workers: they must not hold the lock either.
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(timeout=10) == -signal.SIGKILL
    await start_and_stop(data_dir)
