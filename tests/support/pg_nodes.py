"""Two servers in-process on port 0 on one PostgreSQL database (``--database``), each with
its own data directory, on the same keys: the fixture body of the PostgreSQL replica tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings

from tests.support.inproc import Tenant, _tenant, keyed
from tests.support.rpc_helpers import wait_for


@dataclass
class Node:
    server: QuiverServer
    channel: aio.Channel
    alice: Tenant

    @property
    def id(self) -> str:
        return self.server.core.replicas.replica_id


@asynccontextmanager
async def pg_nodes(
    tmp_path: Path, pg_url: str, *, ingest_workers: int = 1, live: bool = True
) -> AsyncIterator[list[Node]]:
    """Two servers on ``pg_url``. ``live``: each heartbeats every 0.2 s, and both are
    yielded once each sees the other live (else at the default heartbeat, as started)."""
    settings = Settings(
        listen="127.0.0.1:0", http_listen="off", ingest_workers=ingest_workers, database=pg_url
    )
    base, keys = keyed(replace(settings, replica_heartbeat_seconds=0.2) if live else settings)
    started: list[Node] = []
    try:
        for name in ("a", "b"):
            server = QuiverServer(replace(base, data_dir=tmp_path / name))
            port = await server.start()
            channel = aio.insecure_channel(f"127.0.0.1:{port}")
            started.append(Node(server, channel, _tenant("alice", keys["alice"], channel)))
        if live:
            for node in started:
                await node.server.core.replicas.refresh()
            await wait_for(
                lambda: all(len(n.server.core.replicas.view.replicas) == 2 for n in started),
                within=10,
            )
        yield started
    finally:
        for node in started:
            await node.channel.close(None)
            await node.server.stop(grace=1.0)
