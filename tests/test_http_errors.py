"""Bad input and refusals through the HTTP edge: OpenAI's error envelope with the right
status, ``param`` naming the field, never a 500; unknown routes 404 in the same envelope."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import Running
from tests.http_helpers import auth, base_url
from tests.rpc_helpers import tmp_files


def envelope(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return error


@pytest.fixture
async def http(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=base_url(running), headers=auth(running.alice.key), timeout=30
    ) as client:
        yield client


async def _file(http: httpx.AsyncClient, data: bytes = b"a few words\n") -> str:
    made = await http.post(
        "/files", data={"purpose": "assistants"}, files={"file": ("f.txt", data)}
    )
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


async def test_bad_bodies_name_the_field(running: Running, http: httpx.AsyncClient) -> None:
    envelope(await http.post("/vector_stores", content=b"{not json"), 400, "body")
    envelope(await http.post("/vector_stores", content=b"[1, 2]"), 400, "body")
    envelope(await http.post("/vector_stores", content=b'{"a": NaN}'), 400, "body")
    envelope(await http.post("/vector_stores", json={"name": 7}), 400, "name")
    envelope(await http.post("/vector_stores", json={"colour": "red"}), 400, "colour")
    envelope(await http.post("/vector_stores", json={"metadata": {"k": 1}}), 400, "metadata['k']")
    envelope(
        await http.post("/vector_stores", json={"expires_after": {"days": 0}}),
        400,
        "expires_after.days",
    )
    envelope(await http.post("/vector_stores", json={"description": "notes"}), 400, "description")
    store = (await http.post("/vector_stores", json={})).json()["id"]
    search = f"/vector_stores/{store}/search"
    envelope(await http.post(search, json={}), 400, "query")
    envelope(await http.post(search, json={"query": ["ok", 3]}), 400, "query[1]")
    envelope(
        await http.post(search, json={"query": "x", "max_num_results": 99}), 400, "max_num_results"
    )
    envelope(
        await http.post(search, json={"query": "x", "filters": {"type": "near", "key": "k"}}),
        400,
        "filters.type",
    )
    envelope(
        await http.post(
            search,
            json={"query": "x", "filters": {"type": "and", "filters": [{"type": "eq"}]}},
        ),
        400,
        "filters.filters[0].key",
    )
    envelope(
        await http.post(search, json={"query": "x", "ranking_options": {"ranker": "best"}}),
        400,
        "ranking_options.ranker",
    )
    batches = f"/vector_stores/{store}/file_batches"
    envelope(await http.post(batches, json={}), 400, "file_ids")
    envelope(await http.post(batches, json={"file_ids": "file-1"}), 400, "file_ids")
    envelope(
        await http.post(batches, json={"files": [{"file_id": "file-1", "attributes": []}]}),
        400,
        "files[0].attributes",
    )
    envelope(
        await http.post(batches, json={"file_ids": ["f"], "skip_duplicates": True}),
        400,
        "skip_duplicates",
    )
    envelope(
        await http.post(
            f"/vector_stores/{store}/files",
            json={
                "file_id": "file-x",
                "chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 5}},
            },
        ),
        400,
        "chunking_strategy.static",
    )
    envelope(await http.get("/vector_stores?limit=500"), 400, "limit")
    envelope(await http.get("/vector_stores?order=up"), 400, "order")
    envelope(await http.get(f"/vector_stores/{store}/files?filter=done"), 400, "filter")
    envelope(await http.get("/files?purpose=fun"), 400, "purpose")


async def test_uploads_are_checked_as_they_stream(
    running: Running, http: httpx.AsyncClient
) -> None:
    data_dir = running.server.settings.data_dir
    envelope(await http.post("/files", json={"purpose": "assistants"}), 400, "file")
    no_purpose = await http.post("/files", files={"file": ("a.txt", b"x")})
    envelope(no_purpose, 400, "purpose")
    wrong = await http.post(
        "/files",
        data={"purpose": "assistants", "sha256": "0" * 64},
        files={"file": ("a.txt", b"checked")},
    )
    assert envelope(wrong, 400, "sha256")["code"] == "checksum_mismatch"
    envelope(
        await http.post("/files", data={"purpose": "dreams"}, files={"file": ("a.txt", b"x")}),
        400,
        "purpose",
    )
    assert tmp_files(data_dir) == []


@pytest.mark.parametrize("overrides", [{"max_file_bytes": 100_000}])
async def test_an_oversize_upload_is_413(running: Running, http: httpx.AsyncClient) -> None:
    big = await http.post(
        "/files", data={"purpose": "assistants"}, files={"file": ("big.bin", b"x" * 300_000)}
    )
    assert envelope(big, 413)["code"] == "file_too_large"
    assert tmp_files(running.server.settings.data_dir) == []
    assert (await http.get("/files")).json()["data"] == []


async def test_auth_and_tenancy(running: Running, http: httpx.AsyncClient) -> None:
    url = base_url(running)
    async with httpx.AsyncClient(base_url=url, timeout=30) as anonymous:
        assert envelope(await anonymous.get("/files"), 401)["code"] == "missing_api_key"
        wrong = await anonymous.get("/files", headers={"authorization": "Bearer nope"})
        assert envelope(wrong, 401)["code"] == "invalid_api_key"
        basic = await anonymous.get("/files", headers={"authorization": "Basic abc"})
        assert envelope(basic, 401)["code"] == "bad_authorization"
        twice = await anonymous.get(
            "/files",
            headers=[
                ("authorization", f"Bearer {running.alice.key}"),
                ("x-on-behalf-of", "a"),
                ("x-on-behalf-of", "b"),
            ],
        )
        assert envelope(twice, 401)["code"] == "duplicate_header"
        file_id = await _file(http)
        theirs = await anonymous.get(f"/files/{file_id}", headers=auth(running.bob.key))
        envelope(theirs, 404)
        narrower = await anonymous.get(
            f"/files/{file_id}", headers=auth(running.alice.key, "someone")
        )
        envelope(narrower, 404)


async def test_routes_methods_and_conflicts(running: Running, http: httpx.AsyncClient) -> None:
    assert envelope(await http.get("/nothing/here"), 404)["code"] == "unknown_url"
    async with httpx.AsyncClient(base_url=base_url(running, ""), timeout=30) as root:
        envelope(await root.get("/"), 404)
        envelope(await root.get("/api/v1/llm/unknown"), 404)
    envelope(await http.put("/vector_stores"), 405)
    envelope(await http.get("/vector_stores/vs_nope"), 404)
    store = (await http.post("/vector_stores", json={})).json()["id"]
    file_id = await _file(http)
    batch = (
        await http.post(f"/vector_stores/{store}/file_batches", json={"file_ids": [file_id]})
    ).json()
    path = f"/vector_stores/{store}/file_batches/{batch['id']}"
    for _ in range(600):
        if (await http.get(path)).json()["status"] != "in_progress":
            break
        await asyncio.sleep(0.05)
    cancelled = await http.post(path + "/cancel")
    assert envelope(cancelled, 409)["code"] == "file_batch_ended"
    assert cancelled.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("overrides", [{"max_queued_files_per_tenant": 2, "ingest_workers": 1}])
async def test_a_full_queue_is_429(running: Running, http: httpx.AsyncClient) -> None:
    store = (await http.post("/vector_stores", json={})).json()["id"]
    ids = [await _file(http, f"words {i}\n".encode()) for i in range(4)]
    full = await http.post(f"/vector_stores/{store}/file_batches", json={"file_ids": ids})
    assert envelope(full, 429)["type"] == "rate_limit_exceeded"


async def test_draining_answers_503(running: Running, http: httpx.AsyncClient) -> None:
    assert (await http.get("/files")).status_code == 200
    edge = running.server.http
    assert edge is not None
    edge.close("the server is shutting down")  # what QuiverServer.stop does first
    refused = await http.get("/files")
    error = envelope(refused, 503)
    assert error["type"] == "server_error" and "shutting down" in error["message"]
