"""Faults while processing, against a real server: a file past the per-file timeout, a worker
killed mid-file (once: retried alone; twice: server_error), an embedding endpoint that
rate-limits or fails."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from quiver.server.config import Settings
from quiver.server.embedders.registry import EmbedderSpec
from quiver.server.ingest.chunking import ChunkingParams, chunk_text
from quiver.server.ingest.limits import MiB, WorkerLimits, vm_size_bytes
from quiver.server.ingest.pool import IngestPool, WorkerOutOfMemory
from quiver.server.ingest.worker import WorkerInput
from quiver.server.ingest.worker_process import HEADROOM_AFTER_WARM_UP

from tests.support.batch_helpers import (
    B_COMPLETED,
    F_COMPLETED,
    F_FAILED,
    check_stream,
    chunk_texts,
    content,
    counts,
    create_batch,
    create_store,
    final_statuses,
    get_file,
    get_store,
    prose,
    upload_all,
    watch_to_end,
)
from tests.support.blob_refs import blob_of
from tests.support.http_double import fake_vector, reply_json, serve_http
from tests.support.inproc import Running
from tests.support.rpc_helpers import wait_for

# -- a fake OpenAI-compatible embeddings endpoint --------------------------------------------


@dataclass
class Endpoint:
    """POST /v1/embeddings. ``script`` holds the HTTP statuses of the first requests (then
    200s); ``always`` answers every request with that status instead."""

    base_url: str = ""
    script: list[int] = field(default_factory=list)
    always: int | None = None
    retry_after: str | None = None
    requests: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold: threading.Event | None = None
    """When set to an event, every request waits for it before it is answered."""
    arrived: int = 0

    def answer(self, body: dict[str, Any]) -> int:
        with self.lock:
            self.arrived += 1
        if self.hold is not None:
            self.hold.wait(timeout=60)
        with self.lock:
            if self.always is not None:
                status = self.always
            else:
                status = self.script.pop(0) if self.script else 200
            self.requests.append((time.monotonic(), status, body))
            return status


def make_handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            if self.path != "/v1/embeddings":
                self.send_error(404)
                return
            status = endpoint.answer(body)
            if status != 200:
                extra = (
                    {} if endpoint.retry_after is None else {"Retry-After": endpoint.retry_after}
                )
                error = {"error": {"message": f"fake error {status}"}}
                reply_json(self, status, error, extra)
                return
            dims = int(body.get("dimensions") or 8)
            data = [
                {"object": "embedding", "index": i, "embedding": fake_vector(text, dims)}
                for i, text in enumerate(body["input"])
            ]
            reply_json(
                self, 200, {"object": "list", "data": data, "model": body["model"], "usage": {}}
            )

    return Handler


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint()
    with serve_http(make_handler(state), "fake-embeddings") as base_url:
        state.base_url = base_url
        yield state


@pytest.fixture
def settings(settings: Settings, endpoint: Endpoint) -> Settings:
    return replace(settings, openai_base_url=endpoint.base_url)


# -- timeouts and crashes ----------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"file_timeout": 1.0, "ingest_workers": 1}])
async def test_a_file_past_the_timeout_fails_and_others_complete(running: Running) -> None:
    """One worker: the small files run after the timeout, in the replacement worker (whose
    start-up does not count against their timeout). The file's fault: invalid_file."""
    a = running.alice
    store = await create_store(a)
    huge = (prose(1, 100_000) * 300).encode()  # ~30 MB: some 20 s of work
    docs = [("huge.txt", huge)] + [(f"small{i}.txt", prose(i, 500).encode()) for i in range(5)]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    messages = await watch_to_end(a, store.id, batch.id, within=60)
    check_stream(messages)
    assert messages[-1].file_batch.status == B_COMPLETED
    updates = final_statuses(messages)
    huge_update = updates[ids[0]]
    assert huge_update.status == F_FAILED
    assert huge_update.last_error.code == "invalid_file"
    assert "took longer than 1 s" in huge_update.last_error.message
    assert "--file-timeout" in huge_update.last_error.message
    for file_id in ids[1:]:
        assert updates[file_id].status == F_COMPLETED, updates[file_id].last_error
    assert counts(messages[-1].file_batch.file_counts) == (0, 5, 1, 0, 6)
    assert running.server.core.pool.restarts == 1
    assert (await get_file(a, store.id, ids[0])).last_error == huge_update.last_error


@pytest.mark.parametrize("overrides", [{"file_timeout": 6.0, "ingest_workers": 2}])
async def test_a_timeout_stops_only_the_worker_that_holds_the_file(
    running: Running, endpoint: Endpoint
) -> None:
    """The slow file times out on one worker while another file is in flight on the other
    (held by the embedding endpoint): only the slow file's worker is replaced; the other
    file completes, once (not re-run as a suspect), on the same worker process."""
    a = running.alice
    server = running.server
    hold = endpoint.hold = threading.Event()
    slow_store = await create_store(a)
    held_store = await openai_store(running)
    slow_id, held_id = await upload_all(
        a, [("slow.txt", (prose(1, 100_000) * 300).encode()), ("held.txt", b"held words")]
    )
    pids = server.core.pool.worker_pids()
    assert len(pids) == 2
    slow = await create_batch(a, slow_store.id, [slow_id])
    slow_watch = asyncio.ensure_future(watch_to_end(a, slow_store.id, slow.id, within=60))
    await wait_for(lambda: server.core.scheduler.in_flight == 1, within=20)
    # The held file starts 3 s after the slow one, so its own 6 s timeout is still 3 s away
    # when the slow file's comes; it is released as soon as the slow file's worker is gone.
    await asyncio.sleep(3)
    held = await create_batch(a, held_store, [held_id])
    await wait_for(lambda: endpoint.arrived == 1, within=20)  # in flight in its worker
    await wait_for(lambda: server.core.pool.restarts == 1, within=20)
    hold.set()
    messages = await watch_to_end(a, held_store, held.id, within=30)
    assert final_statuses(messages)[held_id].status == F_COMPLETED
    slow_update = final_statuses(await slow_watch)[slow_id]
    assert slow_update.status == F_FAILED
    assert slow_update.last_error.code == "invalid_file"
    assert "took longer than 6 s" in slow_update.last_error.message
    assert endpoint.arrived == 1  # the held file was embedded once: not re-run
    assert server.core.pool.restarts == 1
    survivors = set(pids) & set(server.core.pool.worker_pids())
    assert len(survivors) == 1, (pids, server.core.pool.worker_pids())


@pytest.mark.parametrize(
    "overrides", [{"file_parse_seconds": 1.0, "file_timeout": 300.0, "ingest_workers": 1}]
)
async def test_a_file_past_its_cpu_budget_fails_and_its_worker_goes_on(
    running: Running,
) -> None:
    a = running.alice
    store = await create_store(a)
    pids = running.server.core.pool.worker_pids()
    docs = [("huge.txt", (prose(2, 100_000) * 300).encode()), ("small.txt", b"small words")]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    messages = await watch_to_end(a, store.id, batch.id, within=120)
    huge = final_statuses(messages)[ids[0]]
    assert huge.status == F_FAILED
    assert huge.last_error.code == "invalid_file"
    assert "took longer than 1 s of CPU" in huge.last_error.message
    assert "--file-parse-seconds" in huge.last_error.message
    assert final_statuses(messages)[ids[1]].status == F_COMPLETED
    # The worker raised it itself: no restart.
    assert running.server.core.pool.restarts == 0
    assert running.server.core.pool.worker_pids() == pids


async def test_a_worker_killed_near_its_memory_limit_fails_the_file_as_invalid(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    """As the kernel's OOM killer (or native code failing an allocation) would: the worker
    holding the file dies with its address space near --worker-memory. The file fails with
    invalid_file naming the limit (no retry: it would die again); the worker is replaced.
    The limit is set just above what a warmed-up worker maps, so any death counts."""
    probe = IngestPool(1, file_timeout=60)
    await probe.start()
    (pid,) = probe.worker_pids()
    mapped = vm_size_bytes(pid)
    probe.close()
    limit = mapped + HEADROOM_AFTER_WARM_UP + 16 * MiB
    pool = IngestPool(1, file_timeout=60, limits=WorkerLimits(memory_bytes=limit))
    await pool.start()
    hold = endpoint.hold = threading.Event()
    try:
        path = tmp_path / "f.txt"
        path.write_text("some words to embed")
        spec = EmbedderSpec("openai:fake-embed", 16, base_url=endpoint.base_url)
        run = asyncio.ensure_future(pool.run(WorkerInput(blob_of(path), "f.txt", 800, 400, spec)))
        await wait_for(lambda: endpoint.arrived == 1, within=30)
        await asyncio.sleep(0.3)  # at least one sample of its address space (every 0.1 s)
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerOutOfMemory) as caught:
            await run
        assert f"{limit // MiB:,} MiB (--worker-memory)" in str(caught.value)
        assert pool.restarts == 1
        await wait_for(lambda: len(pool.worker_pids()) == 1, within=30)
        assert pid not in pool.worker_pids()
    finally:
        hold.set()
        pool.close()


async def kill_worker_in_flight(running: Running, not_pid: int = 0) -> int:
    """SIGKILLs the (single) worker once a file is in flight in it; returns its pid."""
    server = running.server

    def ready() -> bool:
        pids = [p for p in server.core.pool.worker_pids() if p != not_pid]
        return server.core.scheduler.in_flight == 1 and len(pids) == 1

    await wait_for(ready, within=20)
    (pid,) = [p for p in server.core.pool.worker_pids() if p != not_pid]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_a_killed_worker_costs_nothing(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    big_text = prose(3, 3_000_000)  # a second or more of work
    docs = [("big.txt", big_text.encode())] + [
        (f"s{i}.txt", prose(i, 400).encode()) for i in range(3)
    ]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    watch = watch_to_end(a, store.id, batch.id, within=60)
    killed = await kill_worker_in_flight(running)
    messages = await watch
    check_stream(messages)
    assert messages[-1].file_batch.status == B_COMPLETED
    # Not the file's fault: retried alone, it completed.
    assert counts(messages[-1].file_batch.file_counts) == (0, 4, 0, 0, 4)
    assert running.server.core.pool.restarts == 1
    assert killed not in running.server.core.pool.worker_pids()
    # Its content is too big for one GetVectorStoreFileContent message: read SQLite.
    parts = chunk_texts(running.server.settings.data_dir, store.id, ids[0])
    assert parts == [c.text for c in chunk_text(big_text, ChunkingParams(800, 400))]


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_a_file_that_kills_its_worker_twice_fails(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    docs = [("big.txt", prose(4, 3_000_000).encode())] + [
        (f"s{i}.txt", prose(i, 400).encode()) for i in range(3)
    ]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    watch = watch_to_end(a, store.id, batch.id, within=60)
    first = await kill_worker_in_flight(running)
    await wait_for(lambda: running.server.core.pool.restarts == 1, within=10)
    await kill_worker_in_flight(running, not_pid=first)  # the suspect, running alone
    messages = await watch
    check_stream(messages)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert counts(messages[-1].file_batch.file_counts) == (0, 3, 1, 0, 4)
    big = final_statuses(messages)[ids[0]]
    assert big.status == F_FAILED
    assert big.last_error.code == "server_error"
    assert "twice" in big.last_error.message and "died" in big.last_error.message
    assert running.server.core.pool.restarts == 2


# -- the embedding endpoint ---------------------------------------------------------------


async def openai_store(running: Running, dims: int = 16) -> str:
    store = await create_store(
        running.alice, embedding_model="openai:fake-embed", embedding_dimensions=dims
    )
    assert (store.embedding_model, store.embedding_dimensions) == ("openai:fake-embed", dims)
    return store.id


async def test_a_rate_limited_embedder_is_retried(running: Running, endpoint: Endpoint) -> None:
    a = running.alice
    endpoint.script = [429]
    endpoint.retry_after = "0"
    store_id = await openai_store(running)
    ids = await upload_all(a, [(f"e{i}.txt", prose(i, 3000).encode()) for i in range(3)])
    batch = await create_batch(a, store_id, ids)
    messages = await watch_to_end(a, store_id, batch.id, within=30)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert counts(messages[-1].file_batch.file_counts) == (0, 3, 0, 0, 3)
    statuses = [status for _, status, _ in endpoint.requests]
    assert statuses[0] == 429 and statuses.count(429) == 1
    assert statuses.count(200) == 3  # one request per file (each under 64 chunks)
    for _, _, body in endpoint.requests:
        assert body["model"] == "fake-embed" and body["dimensions"] == 16
    # The vectors are the endpoint's: the index holds one per chunk.
    total = sum([len(await content(a, store_id, i)) for i in ids])
    assert running.server.core.indexes.get(store_id, 16).live_count == total
    assert total == sum(len(body["input"]) for _, s, body in endpoint.requests if s == 200)


async def test_an_embedder_outage_fails_files_with_server_error(
    running: Running, endpoint: Endpoint
) -> None:
    """No Retry-After: the client backs off 0.25…0.5, 0.5…1, 1…2, 2…4, 4…8 s between its six
    attempts (about 8 to 15 s in all)."""
    a = running.alice
    endpoint.always = 500
    store_id = await openai_store(running)
    ids = await upload_all(a, [("down.txt", prose(1, 2000).encode())])
    started = time.monotonic()
    batch = await create_batch(a, store_id, ids)
    messages = await watch_to_end(a, store_id, batch.id, within=40)
    elapsed = time.monotonic() - started
    assert messages[-1].file_batch.status == B_COMPLETED  # the batch ends; the file failed
    assert counts(messages[-1].file_batch.file_counts) == (0, 0, 1, 0, 1)
    update = final_statuses(messages)[ids[0]]
    assert update.status == F_FAILED
    assert update.last_error.code == "server_error"
    message = update.last_error.message
    assert "embedding failed" in message and "6 attempts" in message and "500" in message
    times = [t for t, _, _ in endpoint.requests]
    assert len(times) == 6
    gaps = np.diff(times)
    floors = [0.25, 0.5, 1.0, 2.0, 4.0]
    assert all(g >= floor * 0.9 for g, floor in zip(gaps, floors, strict=True)), gaps
    assert elapsed < 25
    store = await get_store(a, store_id)
    assert counts(store.file_counts) == (0, 0, 1, 0, 1) and store.usage_bytes == 0
