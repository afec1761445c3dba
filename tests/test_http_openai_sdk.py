"""The official ``openai`` package against the HTTP edge of a real server (in-process, port 0):
uploads, stores, batches, pagination, search with a compound filter, content, deletion, and
its typed exceptions for 400, 401 and 404."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.conftest import Running
from tests.http_helpers import base_url

DOCS = {
    "apples.txt": b"Apples grow on trees in orchards. Red apples and green apples are sweet.\n",
    "rust.txt": b"The Rust compiler checks ownership and borrowing at compile time.\n",
    "tides.txt": b"Ocean tides follow the moon; spring tides come at full and new moon.\n",
}


@pytest.fixture
async def client(running: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(
        api_key=running.alice.key, base_url=base_url(running), max_retries=0, timeout=30
    )
    try:
        yield sdk
    finally:
        await sdk.close()


async def test_the_openai_sdk_runs_unchanged(running: Running, client: openai.AsyncOpenAI) -> None:
    uploaded = [
        await client.files.create(file=(name, data), purpose="assistants")
        for name, data in DOCS.items()
    ]
    assert [f.filename for f in uploaded] == list(DOCS)
    assert [f.bytes for f in uploaded] == [len(d) for d in DOCS.values()]
    store = await client.vector_stores.create(name="sdk", metadata={"team": "docs"})
    assert (store.object, store.name, store.metadata) == ("vector_store", "sdk", {"team": "docs"})

    batch = await client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id,
        file_ids=[f.id for f in uploaded[:2]],
        attributes={"kind": "fruit", "year": 2024},
        poll_interval_ms=50,
    )
    # The seed's and the gateway's object name (the SDK's type says "vector_store.files_batch").
    assert str(batch.object) == "vector_store.file_batch"
    assert batch.status == "completed"
    assert (batch.file_counts.completed, batch.file_counts.total) == (2, 2)

    # upload_and_poll: files.create + vector_stores.files.create, polled to the end.
    single = await client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("tides.txt", DOCS["tides.txt"]), poll_interval_ms=50
    )
    assert (single.object, single.status, single.last_error) == (
        "vector_store.file",
        "completed",
        None,
    )
    await client.vector_stores.files.update(
        file_id=single.id,
        vector_store_id=store.id,
        attributes={"kind": "sea", "year": 2023},
    )

    # Pagination through has_more: pages of one, followed by the SDK's own cursor.
    first = await client.vector_stores.files.list(vector_store_id=store.id, limit=1, order="asc")
    assert first.has_more is True and len(first.data) == 1
    seen = [f.id async for f in client.vector_stores.files.list(store.id, limit=1, order="asc")]
    assert len(seen) == 3 and len(set(seen)) == 3
    assert seen[0] == first.data[0].id

    found = await client.vector_stores.search(
        vector_store_id=store.id,
        query=["sweet apples", "orchards"],
        filters={
            "type": "and",
            "filters": [
                {"type": "eq", "key": "kind", "value": "fruit"},
                {"type": "gte", "key": "year", "value": 2024},
            ],
        },
        ranking_options={"ranker": "auto", "score_threshold": 0.0},
        max_num_results=5,
    )
    assert getattr(found, "search_query", None) == ["sweet apples", "orchards"]
    assert found.data[0].filename == "apples.txt"
    assert "tides.txt" not in {hit.filename for hit in found.data}  # the filter left it out
    assert all(hit.attributes == {"kind": "fruit", "year": 2024.0} for hit in found.data)
    assert all(0.0 <= hit.score <= 1.0 for hit in found.data)
    assert "Apples grow" in found.data[0].content[0].text

    content = await client.files.content(uploaded[0].id)
    assert content.read() == DOCS["apples.txt"]

    deleted = await client.vector_stores.files.delete(file_id=single.id, vector_store_id=store.id)
    assert (deleted.id, deleted.deleted) == (single.id, True)
    gone = await client.files.delete(uploaded[2].id)
    assert gone.deleted is True
    listed = [f.id async for f in client.files.list(purpose="assistants")]
    assert uploaded[2].id not in listed and uploaded[0].id in listed
    removed = await client.vector_stores.delete(store.id)
    assert (removed.object, removed.deleted) == ("vector_store.deleted", True)


async def test_its_typed_exceptions(running: Running, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await client.vector_stores.create(name="x" * 300)
    assert bad.value.status_code == 400
    body = bad.value.body
    assert isinstance(body, dict) and body["param"] == "name"
    assert body["type"] == "invalid_request_error"
    assert bad.value.response.headers["x-request-id"]

    stranger = openai.AsyncOpenAI(api_key="sk-wrong", base_url=base_url(running), max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unauth:
        await stranger.vector_stores.list()
    assert unauth.value.status_code == 401
    await stranger.close()

    # Bob's store is not found for Alice: as if it did not exist.
    bob = openai.AsyncOpenAI(api_key=running.bob.key, base_url=base_url(running), max_retries=0)
    theirs = await bob.vector_stores.create(name="bob's")
    await bob.close()
    with pytest.raises(openai.NotFoundError) as missing:
        await client.vector_stores.retrieve(theirs.id)
    assert missing.value.status_code == 404
