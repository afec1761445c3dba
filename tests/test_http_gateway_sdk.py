"""The gateway SDK (``meetkai-mka1``) against the HTTP edge's ``/api/v1/llm`` paths: the
seed's exact call returns a batch shaped like the seed's example response, field for field,
with and without ``x_on_behalf_of``; another on-behalf-of id cannot see it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from mka1 import SDK
from mka1.errors import SDKDefaultError

from tests.conftest import Running
from tests.http_helpers import auth, base_url

# The seed's example response (DESIGN.md); ids and times differ, every field is there.
SEED_BATCH: dict[str, Any] = {
    "id": "vsfb_abc123",
    "object": "vector_store.file_batch",
    "created_at": 1704067200,
    "vector_store_id": "vs_abc123",
    "status": "in_progress",
    "file_counts": {"in_progress": 3, "completed": 0, "failed": 0, "cancelled": 0, "total": 3},
}


async def _store_with_files(
    running: Running, http: httpx.AsyncClient, on_behalf_of: str
) -> tuple[str, list[str]]:
    """A store and three files, made through the gateway prefix by (alice, on_behalf_of)."""
    headers = auth(running.alice.key, on_behalf_of)
    ids = []
    for i in range(3):
        made = await http.post(
            "/files",
            headers=headers,
            data={"purpose": "assistants"},
            files={"file": (f"doc{i}.txt", f"document number {i} about imports\n".encode())},
        )
        assert made.status_code == 200, made.text
        ids.append(made.json()["id"])
    store = await http.post("/vector_stores", headers=headers, json={"name": "gateway"})
    assert store.status_code == 200, store.text
    return store.json()["id"], ids


@pytest.mark.parametrize("on_behalf_of", ["", "user-42"])
async def test_the_seeds_exact_call(running: Running, on_behalf_of: str) -> None:
    gateway = base_url(running, "/api/v1/llm")
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        store_id, file_ids = await _store_with_files(running, http, on_behalf_of)
        sdk = SDK(bearer_auth=running.alice.key, server_url=base_url(running, ""))

        def seed_call() -> Any:  # the SDK is synchronous: off this test's (the server's) loop
            extra = {"x_on_behalf_of": on_behalf_of} if on_behalf_of else {}
            return sdk.llm.vector_stores.create_file_batch(
                vector_store_id=store_id,
                file_ids=file_ids,
                attributes={"batch_id": "import-2024-01"},
                **extra,
            )

        batch = await asyncio.to_thread(seed_call)
        got = batch.model_dump(mode="json")
        assert set(got) == set(SEED_BATCH)
        assert got["object"] == SEED_BATCH["object"]
        assert got["status"] == SEED_BATCH["status"]
        assert got["file_counts"] == SEED_BATCH["file_counts"]
        assert got["vector_store_id"] == store_id and got["id"].startswith("vsfb_")
        assert isinstance(got["created_at"], int)

        # The raw JSON too: the same keys as the seed's, integers as JSON numbers.
        raw = await http.get(
            f"/vector_stores/{store_id}/file_batches/{got['id']}",
            headers=auth(running.alice.key, on_behalf_of),
        )
        assert raw.status_code == 200 and set(raw.json()) == set(SEED_BATCH)
        assert isinstance(raw.json()["file_counts"]["total"], int)

        # Another on-behalf-of id (or none, when it had one) does not see it.
        other = "user-7" if on_behalf_of else "user-1"

        def as_other() -> Any:
            return sdk.llm.vector_stores.get_file_batch(
                vector_store_id=store_id, batch_id=got["id"], x_on_behalf_of=other
            )

        with pytest.raises(SDKDefaultError) as hidden:
            await asyncio.to_thread(as_other)
        assert hidden.value.status_code == 404
        files = await http.get(
            f"/vector_stores/{store_id}/files", headers=auth(running.alice.key, other)
        )
        assert files.status_code == 404
        assert files.json()["error"]["type"] == "invalid_request_error"
