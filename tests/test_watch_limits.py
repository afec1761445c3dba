"""Watchers cost what they must and no more: capped per tenant and in all, and a change wakes
each watcher of its batch at most once per wake of the feed, not once per change."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from grpc import aio
from quiver.server.config import Settings
from quiver.server.core.models import BatchStatus, FileBatch, FileCounts, FileStatus
from quiver.server.core.watch import FileUpdate, WatchHub

from tests.batch_helpers import (
    B_COMPLETED,
    WatchCall,
    create_batch,
    create_store,
    prose,
    read_message,
    read_to_end,
    start_watch,
    upload_all,
)
from tests.conftest import Running, Tenant
from tests.http_double import reply_json
from tests.rpc_helpers import error_reason, wait_for


class HeldEndpoint:
    """An OpenAI-compatible /v1/embeddings that holds every request until released: batches
    on it stay in progress as long as a test needs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                endpoint.release.wait(60)
                dims = int(body.get("dimensions") or 8)
                data = [
                    {"object": "embedding", "index": i, "embedding": [1.0] + [0.0] * (dims - 1)}
                    for i, _ in enumerate(body["input"])
                ]
                reply_json(self, 200, {"object": "list", "data": data, "model": "m"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def held() -> Iterator[HeldEndpoint]:
    endpoint = HeldEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


@pytest.fixture
def settings(settings: Settings, held: HeldEndpoint) -> Settings:
    return replace(
        settings,
        openai_base_url=held.base_url,
        ingest_workers=1,
        max_watchers_per_tenant=3,
        max_watchers=5,
    )


async def running_batch(tenant: Tenant, name: str) -> tuple[str, str]:
    """A one-file batch whose embedding is held: it stays in progress."""
    store = await create_store(tenant, embedding_model="openai:m", embedding_dimensions=8)
    ids = await upload_all(tenant, [(f"{name}.txt", prose(1, 500).encode())])
    return store.id, (await create_batch(tenant, store.id, ids)).id


async def attached(tenant: Tenant, store_id: str, batch_id: str) -> WatchCall:
    call = start_watch(tenant, store_id, batch_id)
    assert await read_message(call) is not None  # the snapshot: the watcher is attached
    return call


async def refused(call: WatchCall) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await read_message(call)
    return info.value


async def test_watchers_are_capped_per_tenant_and_in_all(
    running: Running, held: HeldEndpoint
) -> None:
    a, b = running.alice, running.bob
    hub = running.server.core.hub
    a_store, a_batch = await running_batch(a, "alice")
    b_store, b_batch = await running_batch(b, "bob")
    alices = [await attached(a, a_store, a_batch) for _ in range(3)]
    err = await refused(start_watch(a, a_store, a_batch))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-watchers-per-tenant" in (err.details() or "")
    assert error_reason(err) == "TENANT_WATCHERS_EXHAUSTED"
    # Bob is not refused for Alice's watchers, up to the server's limit of five.
    bobs = [await attached(b, b_store, b_batch) for _ in range(2)]
    err = await refused(start_watch(b, b_store, b_batch))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-watchers)" in (err.details() or "")
    assert error_reason(err) == "WATCHERS_EXHAUSTED"
    assert hub.watcher_count == 5
    # A watcher that goes away frees its place.
    alices.pop().cancel()
    await wait_for(lambda: hub.watcher_count == 4, within=10)
    bobs.append(await attached(b, b_store, b_batch))
    held.release.set()
    for call in alices + bobs:
        messages = await read_to_end(call, within=60)
        assert messages[-1].file_batch.status == B_COMPLETED
    await wait_for(lambda: hub.watcher_count == 0, within=10)


# -- the hub: no work per watcher on every change -------------------------------------------


def batch_state(done: int, total: int) -> FileBatch:
    status = BatchStatus.COMPLETED if done == total else BatchStatus.IN_PROGRESS
    return FileBatch("vsfb_x", 0, "vs_x", status, FileCounts(total - done, done))


async def test_changes_in_quick_succession_wake_each_watcher_once_or_twice() -> None:
    """200 watchers, 20 changes published a loop turn apart (as file commits come): each
    watcher used to send 20 messages (4,000 in all, each built and converted on the loop);
    now the feed wakes them once the changes have come, with the changes folded."""
    hub = WatchHub(max_watchers=1000, max_watchers_per_tenant=1000)
    total = 20
    followers = [hub.follow(batch_state(0, total), 0, "t") for _ in range(200)]
    received: list[list[int]] = [[] for _ in followers]

    async def read(i: int) -> None:
        async for message in followers[i]:
            received[i].append(len(message.files))
        followers[i].close()

    readers = [asyncio.create_task(read(i)) for i in range(len(followers))]
    await asyncio.sleep(0)
    for n in range(1, total + 1):
        update = FileUpdate(f"file-{n}", FileStatus.COMPLETED)
        hub.publish(batch_state(n, total), n, [(n, update)])
        for _ in range(3):
            await asyncio.sleep(0)  # the readers run between changes
    await asyncio.wait_for(asyncio.gather(*readers), 30)
    messages = [len(r) for r in received]
    print(f"messages per watcher: max {max(messages)}, total {sum(messages)}")
    assert all(sum(r) == total for r in received), "every change reaches every watcher"
    assert max(messages) <= 3, messages
    assert hub.watcher_count == 0
