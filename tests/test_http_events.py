"""The SSE extension: ``GET …/file_batches/{id}/events`` streams the WatchFileBatch messages
in order (snapshot first, increasing ids, a terminal status last) and resumes after a
dropped connection from ``Last-Event-ID``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.batch_helpers import create_batch, create_store, prose, upload_all
from tests.conftest import Running
from tests.http_helpers import auth, base_url
from tests.rpc_helpers import wait_for

Event = dict[str, Any]


async def read_events(
    source: httpx.Response | AsyncIterator[str], limit: int = 10_000
) -> list[Event]:
    """The events of an SSE response (or of its lines, read on from where they are) until
    it ends, or ``limit`` events."""
    lines = source.aiter_lines() if isinstance(source, httpx.Response) else source
    events: list[Event] = []
    fields: dict[str, str] = {}
    async for line in lines:
        if line.startswith(":"):
            continue  # a keep-alive comment
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if fields:
            data = json.loads(fields["data"])
            assert int(fields["id"]) == data["sequence"]
            assert fields["event"] == data["type"]
            events.append(data)
            fields = {}
            if len(events) >= limit:
                break
    return events


def check_order(events: list[Event]) -> None:
    assert events[0]["type"] == "snapshot"
    assert all(e["type"] == "change" for e in events[1:])
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences)), sequences
    assert events[-1]["file_batch"]["status"] != "in_progress"
    assert all(e["file_batch"]["status"] == "in_progress" for e in events[:-1])


async def test_events_arrive_in_order_and_resume(running: Running) -> None:
    alice = running.alice
    store = await create_store(alice)
    ids = await upload_all(alice, [(f"e{i}.txt", prose(i, 3000).encode()) for i in range(12)])
    batch = await create_batch(alice, store.id, ids)
    path = f"/vector_stores/{store.id}/file_batches/{batch.id}/events"
    async with httpx.AsyncClient(
        base_url=base_url(running), headers=auth(alice.key), timeout=60
    ) as http:
        # Drop the connection after the first event, then resume from its id.
        async with http.stream("GET", path) as first:
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/event-stream")
            assert first.headers["x-request-id"]
            head = await read_events(first, limit=1)
        seen = head[0]["sequence"]
        async with http.stream("GET", path, headers={"last-event-id": str(seen)}) as resumed:
            rest = await read_events(resumed)
        check_order(rest)
        assert all(e["sequence"] >= seen for e in rest)
        # Every file's final status arrived once the stream ended, across both connections.
        final: dict[str, str] = {}
        for event in head + rest:
            for update in event["files"]:
                final[update["file_id"]] = update["status"]
        assert set(final) <= set(ids)
        listed = (await http.get(f"/vector_stores/{store.id}/files?limit=100")).json()["data"]
        assert {f["id"]: f["status"] for f in listed if f["id"] in final} == final
        ended = rest[-1]["file_batch"]
        assert ended["file_counts"]["completed"] == len(ids)

        # Watching the finished batch: one snapshot, then the stream ends; from the last
        # id on, the snapshot carries no file changes.
        async with http.stream("GET", path) as again:
            whole = await read_events(again)
        assert [e["type"] for e in whole] == ["snapshot"]
        assert len(whole[0]["files"]) == len(ids)
        last = rest[-1]["sequence"]
        async with http.stream("GET", f"{path}?after_sequence={last}") as tail:
            nothing_new = await read_events(tail)
        assert [e["files"] for e in nothing_new] == [[]]
    # Every stream, the dropped one too, gave its watcher back.
    await wait_for(lambda: running.server.core.hub.watcher_count == 0)


async def test_events_errors(running: Running) -> None:
    alice, bob = running.alice, running.bob
    store = await create_store(alice)
    ids = await upload_all(alice, [("x.txt", b"some words to index\n")])
    batch = await create_batch(alice, store.id, ids)
    path = f"/vector_stores/{store.id}/file_batches/{batch.id}/events"
    async with httpx.AsyncClient(base_url=base_url(running), timeout=30) as http:
        theirs = await http.get(path, headers=auth(bob.key))
        assert theirs.status_code == 404
        assert theirs.json()["error"]["type"] == "invalid_request_error"
        bad = await http.get(path, headers=auth(alice.key) | {"last-event-id": "soon"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "Last-Event-ID"


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_a_drain_ends_event_streams_and_refuses_requests(running: Running) -> None:
    alice = running.alice
    store = await create_store(alice)
    ids = await upload_all(alice, [(f"s{i}.txt", prose(i, 20_000).encode()) for i in range(30)])
    batch = await create_batch(alice, store.id, ids)
    path = f"/vector_stores/{store.id}/file_batches/{batch.id}/events"
    async with httpx.AsyncClient(
        base_url=base_url(running), headers=auth(alice.key), timeout=60
    ) as http:
        async with http.stream("GET", path) as stream:
            lines = stream.aiter_lines()
            first = await read_events(lines, limit=1)
            assert first[0]["file_batch"]["status"] == "in_progress"
            stopping = asyncio.create_task(running.server.stop(grace=5))
            rest = await asyncio.wait_for(read_events(lines), 30)  # ends: the server drains
        assert all(e["file_batch"]["status"] == "in_progress" for e in rest)
        try:
            late = await http.get("/files")
        except httpx.TransportError:
            pass  # the listener is already closed
        else:
            assert late.status_code == 503
            assert late.json()["error"]["type"] == "server_error"
        await asyncio.wait_for(stopping, 60)
