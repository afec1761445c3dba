"""The in-process server's handles: its callers (tenants with their stubs) and API keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.auth.keys import hash_key, new_key
from quiver.server.config import Settings
from quiver.v1 import file_batches_pb2_grpc, files_pb2_grpc, vector_stores_pb2_grpc


@dataclass
class Tenant:
    """A caller: its key, optional on-behalf-of id, and stubs that send both."""

    name: str
    key: str
    files: files_pb2_grpc.FileServiceAsyncStub
    stores: vector_stores_pb2_grpc.VectorStoreServiceAsyncStub
    batches: file_batches_pb2_grpc.FileBatchServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]


@dataclass
class Running:
    server: QuiverServer
    target: str
    channel: aio.Channel
    alice: Tenant
    bob: Tenant

    def tenant(self, name: str, on_behalf_of: str = "") -> Tenant:
        """Tenant ``name`` (alice or bob) narrowed to an on-behalf-of id."""
        base = self.alice if name == "alice" else self.bob
        return _tenant(name, base.key, self.channel, on_behalf_of)


def keyed(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """``settings`` with two fresh keys (tenants alice and bob), and those keys."""
    keys = {"alice": new_key(), "bob": new_key()}
    inline = ",".join(f"{t} sha256:{hash_key(k).hex()}" for t, k in keys.items())
    return replace(settings, api_keys=inline), keys


def _tenant(name: str, key: str, channel: aio.Channel, subject: str = "") -> Tenant:
    md: list[tuple[str, str]] = [("authorization", f"Bearer {key}")]
    if subject:
        md.append(("x-on-behalf-of", subject))
    return Tenant(
        name=name,
        key=key,
        files=files_pb2_grpc.FileServiceStub(channel),
        stores=vector_stores_pb2_grpc.VectorStoreServiceStub(channel),
        batches=file_batches_pb2_grpc.FileBatchServiceStub(channel),
        metadata=tuple(md),
    )


def open_tenant(channel: aio.Channel) -> Tenant:
    """A caller of a server in open mode (no keys): no authorization header."""
    return Tenant(
        name="open",
        key="",
        files=files_pb2_grpc.FileServiceStub(channel),
        stores=vector_stores_pb2_grpc.VectorStoreServiceStub(channel),
        batches=file_batches_pb2_grpc.FileBatchServiceStub(channel),
        metadata=(),
    )


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Running]:
    """A keyed server (tenants alice and bob) in-process on ``settings`` and one channel to
    it; stopped on exit."""
    cfg, keys = keyed(settings)
    server = QuiverServer(cfg)
    port = await server.start()
    target = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(target)
    try:
        yield Running(
            server=server,
            target=target,
            channel=channel,
            alice=_tenant("alice", keys["alice"], channel),
            bob=_tenant("bob", keys["bob"], channel),
        )
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)
