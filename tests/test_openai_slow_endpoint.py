"""The `openai:` path against a slow endpoint double (tests/http_double.SlowEmbeddings): a
request that times out is split and sent again, a lone input that keeps timing out fails the
file naming the timeout, 429s wait their Retry-After, other 4xx fail with the endpoint's
words, searches of other stores stay fast while the endpoint hangs, query and passage
prefixes reach it, and the --openai-* settings are validated."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.config import Settings
from quiver.server.embedders.base import EmbeddingDeadlineExceeded, EmbeddingError
from quiver.server.embedders.openai_compat import OpenAIEmbedder, _retry_after
from quiver.server.embedders.openai_tuning import hung_endpoint_seconds
from quiver.server.embedders.request_slots import RequestSlots
from quiver.v1 import vector_stores_pb2 as pb

from tests.batch_helpers import (
    B_COMPLETED,
    F_COMPLETED,
    F_FAILED,
    create_batch,
    create_store,
    final_statuses,
    static,
    upload_all,
    watch_to_end,
)
from tests.conftest import Running
from tests.http_double import SlowEmbeddings, fake_vector, slow_embeddings
from tests.rpc_helpers import error_reason, rpc_error, wait_for

DIMS = 16


@pytest.fixture
def endpoint() -> Iterator[SlowEmbeddings]:
    with slow_embeddings(dimensions=DIMS) as double:
        yield double


@pytest.fixture
def settings(settings: Settings, endpoint: SlowEmbeddings) -> Settings:
    return replace(settings, openai_base_url=endpoint.base_url)


def client(endpoint: SlowEmbeddings, sleeps: list[float], **options: Any) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        endpoint.base_url, "slow-model", dimensions=DIMS, sleep=sleeps.append, **options
    )


def expected(texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
    rows = np.array([fake_vector(t, DIMS) for t in texts], dtype=np.float32)
    unit: np.ndarray[Any, np.dtype[np.float32]] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


# -- the embedder against the double ---------------------------------------------------------


def test_a_request_that_times_out_is_split_until_it_answers(endpoint: SlowEmbeddings) -> None:
    endpoint.max_fast_inputs = 2  # more inputs than that: no answer within the timeout
    sleeps: list[float] = []
    texts = [f"text {i}" for i in range(12)]
    vectors = client(endpoint, sleeps, batch_size=8, timeout_s=0.5).embed(texts)
    np.testing.assert_allclose(vectors, expected(texts), rtol=1e-5)
    # 8 times out → halves of 4 time out → pairs answer; the last 4 go as pairs at once.
    endpoint.wait_for_requests(9)
    assert Counter(endpoint.sizes()) == {8: 1, 4: 2, 2: 6}
    assert endpoint.sizes()[0] == 8
    assert sleeps == []  # a split is sent again at once


def test_a_single_input_that_keeps_timing_out_fails_naming_the_timeout(
    endpoint: SlowEmbeddings,
) -> None:
    endpoint.hanging = True
    sleeps: list[float] = []
    embedder = client(endpoint, sleeps, batch_size=4, timeout_s=0.3, timeout_retries=2)
    with pytest.raises(EmbeddingError) as caught:
        embedder.embed(["only one"])
    message = str(caught.value)
    assert "no answer within 0.3 s in 3 attempts" in message
    assert "--openai-timeout" in message
    endpoint.wait_for_requests(3)
    assert endpoint.sizes() == [1, 1, 1]
    assert len(sleeps) == 2  # backoff between the attempts


def test_429_waits_its_retry_after_and_5xx_is_retried(endpoint: SlowEmbeddings) -> None:
    endpoint.fail = [429, 503]
    endpoint.retry_after = "2"
    sleeps: list[float] = []
    vectors = client(endpoint, sleeps).embed(["a", "b"])
    np.testing.assert_allclose(vectors, expected(["a", "b"]), rtol=1e-5)
    assert sleeps == [2.0, 2.0]
    assert endpoint.sizes() == [2, 2, 2]


def test_retry_after_as_an_http_date() -> None:
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    seconds = _retry_after(soon)
    assert seconds is not None and 3.0 <= seconds <= 5.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert _retry_after("soon") is None


def test_a_4xx_fails_at_once_with_the_endpoints_message(endpoint: SlowEmbeddings) -> None:
    endpoint.fail = [400]
    endpoint.error_message = "This model's maximum context length is 512 tokens"
    sleeps: list[float] = []
    with pytest.raises(EmbeddingError) as caught:
        client(endpoint, sleeps).embed(["far too long"])
    assert "HTTP 400 (not retried): This model's maximum context length is 512 tokens" in str(
        caught.value
    )
    assert endpoint.sizes() == [1] and sleeps == []


def test_embed_until_stops_at_the_deadline(endpoint: SlowEmbeddings) -> None:
    endpoint.hanging = True
    embedder = client(endpoint, [], timeout_s=30.0)
    started = time.monotonic()
    with pytest.raises(EmbeddingDeadlineExceeded):
        embedder.embed_until(["a query"], time.monotonic() + 0.4)
    assert time.monotonic() - started < 5.0


def test_the_prefix_goes_before_every_input(endpoint: SlowEmbeddings) -> None:
    client(endpoint, [], prefix="passage: ").embed(["one", "two"])
    assert endpoint.inputs() == ["passage: one", "passage: two"]


def test_request_slots_bound_requests_in_flight(endpoint: SlowEmbeddings, tmp_path: Path) -> None:
    endpoint.delay_s = 0.2
    slots = RequestSlots(str(tmp_path), 1, "openai")
    embedders = [client(endpoint, [], batch_size=1, slots=slots) for _ in range(3)]
    threads = [
        threading.Thread(target=e.embed, args=([f"t{i}a", f"t{i}b"],))
        for i, e in enumerate(embedders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(endpoint.sizes()) == 6
    assert endpoint.max_in_flight == 1


# -- through the server ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"openai_timeout": 1.0, "openai_batch_size": 8}])
async def test_a_file_whose_first_request_times_out_is_split_and_completes(
    running: Running, endpoint: SlowEmbeddings
) -> None:
    endpoint.max_fast_inputs = 2
    a = running.alice
    store = await create_store(a, embedding_model="openai:slow-model", embedding_dimensions=DIMS)
    text = " ".join(f"word{i} is here" for i in range(400)).encode()
    (file_id,) = await upload_all(a, [("long.txt", text)])
    batch = await create_batch(a, store.id, [file_id], chunking=static(100, 0))
    messages = await watch_to_end(a, store.id, batch.id, within=60)
    update = final_statuses(messages)[file_id]
    assert update.status == F_COMPLETED, update.last_error
    assert messages[-1].file_batch.status == B_COMPLETED
    sizes = endpoint.sizes()
    assert sizes[0] == 8 and max(sizes[1:]) <= 4  # split after the first timeout
    assert sum(size for size in sizes if size <= 2) >= 8  # every chunk embedded in the end


@pytest.mark.parametrize("overrides", [{"openai_timeout": 0.5}])
async def test_a_lone_chunk_that_keeps_timing_out_fails_the_file_with_a_clear_error(
    running: Running, endpoint: SlowEmbeddings
) -> None:
    endpoint.hanging = True
    a = running.alice
    store = await create_store(a, embedding_model="openai:slow-model", embedding_dimensions=DIMS)
    (file_id,) = await upload_all(a, [("short.txt", b"one short chunk")])
    batch = await create_batch(a, store.id, [file_id])
    messages = await watch_to_end(a, store.id, batch.id, within=60)
    update = final_statuses(messages)[file_id]
    assert update.status == F_FAILED
    assert update.last_error.code == "server_error"
    assert "no answer within 0.5 s in 3 attempts" in update.last_error.message
    assert "--openai-timeout" in update.last_error.message


async def search(
    running: Running, store_id: str, query: str, timeout: float | None = None
) -> pb.SearchVectorStoreResponse:
    a = running.alice
    reply: pb.SearchVectorStoreResponse = await a.stores.SearchVectorStore(
        pb.SearchVectorStoreRequest(vector_store_id=store_id, query=[query]),
        metadata=a.metadata,
        timeout=timeout,
    )
    return reply


async def filled_hash_store(running: Running) -> str:
    a = running.alice
    store = await create_store(a)
    ids = await upload_all(a, [("owls.txt", b"Owls hunt at night and sleep by day.")])
    batch = await create_batch(a, store.id, ids)
    messages = await watch_to_end(a, store.id, batch.id, within=30)
    assert messages[-1].file_batch.status == B_COMPLETED
    return store.id


@pytest.mark.parametrize("overrides", [{"openai_query_concurrency": 2}])
async def test_searches_of_a_hash_store_stay_fast_while_the_endpoint_hangs(
    running: Running, endpoint: SlowEmbeddings
) -> None:
    hash_store = await filled_hash_store(running)
    a = running.alice
    slow_store = await create_store(
        a, embedding_model="openai:slow-model", embedding_dimensions=DIMS
    )
    endpoint.hanging = True
    # More hung searches than the default thread pool has threads (2 cores: 6).
    hung = [
        asyncio.ensure_future(search(running, slow_store.id, f"query {i}", timeout=6.0))
        for i in range(12)
    ]
    lane = running.server.core.query_embedding
    await wait_for(lambda: lane.admitted("openai") == 12, within=5)
    for _ in range(10):
        started = time.monotonic()
        found = await search(running, hash_store, "where do owls sleep?", timeout=10.0)
        assert found.data and time.monotonic() - started < 1.5
    # Still hung: the lane's two threads hold a request each, the other ten searches wait.
    await wait_for(lambda: len(endpoint.sizes()) >= 2, within=5)
    assert len(endpoint.sizes()) == 2 and lane.admitted("openai") == 12
    outcomes = await asyncio.gather(*hung, return_exceptions=True)
    codes = [rpc_error(o).code() for o in outcomes if isinstance(o, BaseException)]
    assert len(codes) == 12 and set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    await wait_for(lambda: lane.admitted("openai") == 0, within=5)  # every thread came back


@pytest.mark.parametrize("overrides", [{"openai_query_concurrency": 1, "openai_query_queue": 1}])
async def test_a_full_query_lane_answers_resource_exhausted_naming_the_flags(
    running: Running, endpoint: SlowEmbeddings
) -> None:
    a = running.alice
    store = await create_store(a, embedding_model="openai:slow-model", embedding_dimensions=DIMS)
    endpoint.hanging = True
    held = [
        asyncio.ensure_future(search(running, store.id, f"held {i}", timeout=5.0)) for i in range(2)
    ]
    lane = running.server.core.query_embedding
    await wait_for(lambda: lane.admitted("openai") == 2, within=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(running, store.id, "one too many", timeout=5.0)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--openai-query-concurrency" in (caught.value.details() or "")
    assert error_reason(caught.value) == "EMBEDDER_BUSY"
    endpoint.hanging = False
    endpoint.release.set()
    for reply in await asyncio.gather(*held):
        assert list(reply.search_query)


@pytest.mark.parametrize(
    "overrides", [{"openai_query_prefix": "query: ", "openai_passage_prefix": "passage: "}]
)
async def test_query_and_passage_prefixes_reach_the_endpoint(
    running: Running, endpoint: SlowEmbeddings
) -> None:
    a = running.alice
    store = await create_store(a, embedding_model="openai:e5-like", embedding_dimensions=DIMS)
    ids = await upload_all(a, [("bees.txt", b"Bees dance to tell the hive where flowers are.")])
    batch = await create_batch(a, store.id, ids)
    messages = await watch_to_end(a, store.id, batch.id, within=30)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert endpoint.inputs() == ["passage: Bees dance to tell the hive where flowers are."]
    found = await search(running, store.id, "how do bees talk?")
    assert found.data and list(found.search_query) == ["how do bees talk?"]
    assert endpoint.inputs()[-1] == "query: how do bees talk?"


# -- the settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"openai_timeout": 0.0}, "--openai-timeout"),
        ({"openai_timeout": float("nan")}, "--openai-timeout"),
        ({"openai_batch_size": 0}, "--openai-batch-size"),
        ({"openai_batch_size": 2049}, "--openai-batch-size"),
        ({"openai_concurrency": 0}, "--openai-concurrency"),
        ({"openai_query_concurrency": 257}, "--openai-query-concurrency"),
        ({"openai_query_queue": -1}, "--openai-query-queue"),
        ({"openai_query_prefix": "x" * 257}, "--openai-query-prefix"),
        ({"openai_passage_prefix": "passage:\n"}, "--openai-passage-prefix"),
    ],
)
def test_bad_openai_settings_are_refused_naming_the_flag(
    settings: Settings, change: dict[str, Any], flag: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        QuiverServer(replace(settings, **change))
    assert flag in str(caught.value)
    assert not (settings.data_dir / "quiver.sqlite3").exists()  # refused before opening


def test_the_defaults_let_a_hung_endpoint_fail_a_file_before_its_timeout() -> None:
    """64 → 32 → … → 1 input, each waiting 30 s, then two more tries of the single input:
    270 s, inside the default --file-timeout of 300 s, so the file's last_error names the
    endpoint rather than the worker's wall-clock limit."""
    defaults = Settings()
    hung = hung_endpoint_seconds(defaults.openai_timeout, defaults.openai_batch_size)
    assert hung == 270.0 < defaults.file_timeout
    assert hung_endpoint_seconds(1.0, 1) == 3.0


def test_quiver_serve_refuses_a_bad_setting_from_the_environment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env["QUIVER_OPENAI_BATCH_SIZE"] = "0"
    serve = [sys.executable, "-m", "quiver.server.cli", "serve", "--listen", "127.0.0.1:0"]
    done = subprocess.run(
        [*serve, "--data-dir", str(tmp_path / "data"), "--ingest-workers", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--openai-batch-size must be 1…2048, not 0" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "overrides", [{"openai_concurrency": 1, "ingest_workers": 2, "openai_batch_size": 4}]
)
async def test_the_ingest_workers_together_keep_openai_concurrency_requests_in_flight(
    running: Running, endpoint: SlowEmbeddings
) -> None:
    endpoint.delay_s = 0.2
    a = running.alice
    store = await create_store(a, embedding_model="openai:slow-model", embedding_dimensions=DIMS)
    docs = [(f"f{i}.txt", " ".join(f"w{i}x{j}" for j in range(300)).encode()) for i in range(2)]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids, chunking=static(100, 0))
    messages = await watch_to_end(a, store.id, batch.id, within=60)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert {u.status for u in final_statuses(messages).values()} == {F_COMPLETED}
    assert len(endpoint.sizes()) >= 4  # both workers sent requests…
    assert endpoint.max_in_flight == 1  # …one at a time


@pytest.mark.parametrize("overrides", [{"openai_timeout": 0.5}])
async def test_a_search_without_a_deadline_gets_one_from_the_server(
    running: Running, endpoint: SlowEmbeddings
) -> None:
    a = running.alice
    store = await create_store(a, embedding_model="openai:slow-model", embedding_dimensions=DIMS)
    endpoint.hanging = True
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(running, store.id, "no deadline given")
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not embed the query before the search's deadline" in (caught.value.details() or "")
    assert time.monotonic() - started < 5.0  # twice --openai-timeout, plus the search


async def test_a_search_the_endpoint_refuses_answers_unavailable_with_its_message(
    running: Running, endpoint: SlowEmbeddings
) -> None:
    a = running.alice
    store = await create_store(a, embedding_model="openai:slow-model", embedding_dimensions=DIMS)
    endpoint.fail = [400]
    endpoint.error_message = "model slow-model is not loaded"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(running, store.id, "anything", timeout=10.0)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "model slow-model is not loaded" in (caught.value.details() or "")
    assert error_reason(caught.value) == "EMBEDDING_FAILED"
