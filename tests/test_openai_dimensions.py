"""`openai:` stores without `embedding_dimensions`: nothing sends `dimensions` (an endpoint
double rejects it as text-embedding-ada-002 does) and the store learns its dimension from the
first response; one grammar for the model name at creation, in search and in the workers."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import grpc
import pytest
from quiver.server.config import Settings
from quiver.server.storage.database import Database
from quiver.v1 import vector_stores_pb2 as pb

from tests.support.batch_helpers import (
    B_COMPLETED,
    counts,
    create_batch,
    create_store,
    get_store,
    upload_all,
    watch_to_end,
)
from tests.support.http_double import fake_vector, reply_json, serve_http
from tests.support.inproc import Running
from tests.support.rpc_helpers import rpc_error, violated_fields

ADA_DIMENSIONS = 24  # the real model has 1536; the width is what the store must learn


@dataclass
class Ada002:
    """POST /v1/embeddings like text-embedding-ada-002: a body with `dimensions` is a 400."""

    base_url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: Ada002) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            with state.lock:
                state.bodies.append(body)
            if "dimensions" in body:
                status = 400
                reply: dict[str, Any] = {
                    "error": {
                        "message": "This model does not support specifying dimensions.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
            else:
                status = 200
                reply = {
                    "object": "list",
                    "data": [
                        {
                            "object": "embedding",
                            "index": i,
                            "embedding": fake_vector(t, ADA_DIMENSIONS),
                        }
                        for i, t in enumerate(body["input"])
                    ],
                    "model": body["model"],
                    "usage": {"prompt_tokens": 0, "total_tokens": 0},
                }
            reply_json(self, status, reply)

    return Handler


@pytest.fixture
def ada() -> Iterator[Ada002]:
    state = Ada002()
    with serve_http(_handler(state), "ada-002") as base_url:
        state.base_url = base_url
        yield state


@pytest.fixture
def settings(settings: Settings, ada: Ada002) -> Settings:
    return replace(settings, openai_base_url=ada.base_url)


async def search(running: Running, store_id: str, query: str) -> pb.SearchVectorStoreResponse:
    a = running.alice
    reply: pb.SearchVectorStoreResponse = await a.stores.SearchVectorStore(
        pb.SearchVectorStoreRequest(vector_store_id=store_id, query=[query]),
        metadata=a.metadata,
    )
    return reply


async def test_a_store_without_dimensions_learns_them_and_never_sends_them(
    running: Running, ada: Ada002
) -> None:
    a = running.alice
    store = await create_store(a, embedding_model="openai:text-embedding-ada-002")
    assert (store.embedding_model, store.embedding_dimensions) == (
        "openai:text-embedding-ada-002",
        0,  # not known until the first vectors arrive
    )
    empty = await search(running, store.id, "anything at all")
    assert list(empty.data) == [] and list(empty.search_query) == ["anything at all"]
    assert ada.bodies == []  # nothing to search: the endpoint was not asked

    docs = [
        ("owls.txt", b"Owls hunt at night and sleep through the day in hollow trees."),
        ("bees.txt", b"Bees dance to tell the hive where the flowers are."),
    ]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    messages = await watch_to_end(a, store.id, batch.id, within=30)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert counts(messages[-1].file_batch.file_counts) == (0, 2, 0, 0, 2)

    learned = await get_store(a, store.id)
    assert learned.embedding_dimensions == ADA_DIMENSIONS
    found = await search(running, store.id, "where do owls sleep?")
    assert {hit.file_id for hit in found.data} <= set(ids) and found.data
    assert ada.bodies and all("dimensions" not in body for body in ada.bodies)
    assert all(body["model"] == "text-embedding-ada-002" for body in ada.bodies)

    row = running.server.core.db.execute(
        "SELECT embedding_dimensions, dimensions_sent FROM vector_stores WHERE id = ?",
        (store.id,),
    ).fetchone()
    assert tuple(row) == (ADA_DIMENSIONS, 0)  # persisted on the store row


async def test_a_store_with_dimensions_sends_them(running: Running, ada: Ada002) -> None:
    """The same endpoint refuses `dimensions`: a store that asked for them fails its files
    with the endpoint's own words, proving the field is sent when it is set."""
    a = running.alice
    store = await create_store(
        a, embedding_model="openai:text-embedding-ada-002", embedding_dimensions=24
    )
    ids = await upload_all(a, [("x.txt", b"some words to embed")])
    batch = await create_batch(a, store.id, ids)
    messages = await watch_to_end(a, store.id, batch.id, within=30)
    assert counts(messages[-1].file_batch.file_counts) == (0, 0, 1, 0, 1)
    assert ada.bodies and all(body["dimensions"] == 24 for body in ada.bodies)


@pytest.mark.parametrize(
    "model",
    [
        "openai: ",
        "openai:",
        "openai: text-embedding-3-small",
        "openai:model\n",
        "OpenAI:x",
        "hash:",
    ],
)
async def test_a_model_name_search_could_not_use_is_refused_at_creation(
    running: Running, model: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_store(running.alice, embedding_model=model)
    assert rpc_error(caught.value).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["embedding_model"]


def test_an_older_database_gets_the_new_column(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    Database(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE vector_stores DROP COLUMN dimensions_sent")
        conn.execute(
            "INSERT INTO vector_stores (id, tenant, subject, name, created_at, last_active_at, "
            "embedding_model, embedding_dimensions) VALUES ('vs_old', 't', '', '', 0, 0, 'hash', 8)"
        )
    conn.close()
    db = Database(path)
    try:
        row = db.execute("SELECT dimensions_sent FROM vector_stores WHERE id = 'vs_old'")
        assert tuple(row.fetchone()) == (1,)  # stores made before it always sent dimensions
    finally:
        db.close()


async def test_a_store_saved_with_a_bad_model_name_answers_failed_precondition(
    running: Running,
) -> None:
    """Stores created before the grammar was shared may hold a name like 'openai: ': search
    says so instead of INTERNAL."""
    store = await create_store(running.alice)
    running.server.core.db.execute(
        "UPDATE vector_stores SET embedding_model = 'openai: ' WHERE id = ?", (store.id,)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(running, store.id, "anything")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "embedding_model 'openai: '" in (caught.value.details() or "")
