"""Fixtures: a real grpc.aio Quiver server in-process on port 0, and stubs to call it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import hypothesis
import pytest
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.auth.keys import hash_key, new_key
from quiver.server.config import Settings
from quiver.v1 import file_batches_pb2_grpc, files_pb2_grpc, vector_stores_pb2_grpc

# -- Hypothesis: deterministic in `make test`, randomized in `make fuzz` ---------------------
#
# "ci" (the default): the same examples on every run and every machine (derandomize), no
# example database (nothing carried between runs), and a failure prints the blob that
# replays it. "fuzz" (`make fuzz`): a fresh random search, FUZZ_SCALE times the examples of
# each test, its time bounded by the Makefile (pytest --timeout per test). Whatever a fuzz
# run finds is added to its test as an explicit @example, so `make test` keeps checking it.

hypothesis.settings.register_profile(
    "ci", derandomize=True, database=None, print_blob=True, deadline=None
)
hypothesis.settings.register_profile(
    "fuzz", derandomize=False, database=None, print_blob=True, deadline=None
)
PROFILE = os.environ.get("QUIVER_HYPOTHESIS_PROFILE", "ci")
hypothesis.settings.load_profile(PROFILE)
FUZZ_SCALE = int(os.environ.get("QUIVER_FUZZ_SCALE", "10")) if PROFILE == "fuzz" else 1


def examples(n: int) -> int:
    """``n`` examples in `make test`; ``n`` times QUIVER_FUZZ_SCALE in `make fuzz`."""
    return n * FUZZ_SCALE


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


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings changes for one test: ``@pytest.mark.parametrize("overrides", [{...}])``."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, overrides: dict[str, Any]) -> Iterator[Settings]:
    base = Settings(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        ingest_workers=2,
    )
    yield replace(base, **overrides)


def keyed(settings: Settings) -> tuple[Settings, dict[str, str]]:
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


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    """A keyed server (tenants alice and bob) and one channel to it."""
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


def code_of(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, aio.AioRpcError), exc
    return exc.code()
