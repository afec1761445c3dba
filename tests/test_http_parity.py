"""Parity: the same operations through gRPC and through HTTP give the same objects.

One walk makes half of everything through each edge, then reads every object back through
both and compares them field for field (proto enums as OpenAI's lower-case strings)."""

from __future__ import annotations

from typing import Any

import httpx
from google.protobuf import struct_pb2
from quiver.v1 import file_batches_pb2, files_pb2, vector_stores_pb2

from tests.batch_helpers import attrs, create_batch, create_store, poll_batch
from tests.conftest import Running, Tenant
from tests.http_helpers import auth, base_url, until
from tests.rpc_helpers import upload

Json = dict[str, Any]


def _status(message: Any, field: str = "status") -> str:
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    return str(enum.values_by_number[getattr(message, field)].name.split("_STATUS_")[1].lower())


def _value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    assert kind is not None
    return getattr(v, kind)


def _counts(c: Any) -> Json:
    return {
        "in_progress": c.in_progress,
        "completed": c.completed,
        "failed": c.failed,
        "cancelled": c.cancelled,
        "total": c.total,
    }


def file_json(f: files_pb2.File) -> Json:
    return {
        k: getattr(f, k) for k in ("id", "object", "bytes", "created_at", "filename", "purpose")
    } | {"sha256": f.sha256}


def store_json(s: vector_stores_pb2.VectorStore) -> Json:
    return {
        "id": s.id,
        "object": s.object,
        "created_at": s.created_at,
        "name": s.name,
        "usage_bytes": s.usage_bytes,
        "file_counts": _counts(s.file_counts),
        "status": _status(s),
        "expires_after": {"anchor": s.expires_after.anchor, "days": s.expires_after.days}
        if s.HasField("expires_after")
        else None,
        "expires_at": s.expires_at if s.HasField("expires_at") else None,
        "last_active_at": s.last_active_at,
        "metadata": dict(s.metadata),
        "embedding_model": s.embedding_model,
        "embedding_dimensions": s.embedding_dimensions,
    }


def store_file_json(f: vector_stores_pb2.VectorStoreFile) -> Json:
    static = f.chunking_strategy.static
    return {
        "id": f.id,
        "object": f.object,
        "created_at": f.created_at,
        "vector_store_id": f.vector_store_id,
        "status": _status(f),
        "usage_bytes": f.usage_bytes,
        "last_error": {"code": f.last_error.code, "message": f.last_error.message}
        if f.HasField("last_error")
        else None,
        "chunking_strategy": {
            "type": f.chunking_strategy.type,
            "static": {
                "max_chunk_size_tokens": static.max_chunk_size_tokens,
                "chunk_overlap_tokens": static.chunk_overlap_tokens,
            },
        },
        "attributes": {k: _value(v) for k, v in f.attributes.items()},
    }


def batch_json(b: file_batches_pb2.FileBatch) -> Json:
    return {
        "id": b.id,
        "object": b.object,
        "created_at": b.created_at,
        "vector_store_id": b.vector_store_id,
        "status": _status(b),
        "file_counts": _counts(b.file_counts),
    }


def hit_json(h: vector_stores_pb2.SearchResult) -> Json:
    return {
        "file_id": h.file_id,
        "filename": h.filename,
        "score": h.score,
        "attributes": {k: _value(v) for k, v in h.attributes.items()},
        "content": [{"type": c.type, "text": c.text} for c in h.content],
    }


async def _ok(response: httpx.Response) -> Json:
    assert response.status_code == 200, response.text
    data: Json = response.json()
    return data


async def test_grpc_and_http_give_the_same_objects(running: Running) -> None:
    alice: Tenant = running.alice
    md = alice.metadata
    async with httpx.AsyncClient(
        base_url=base_url(running), headers=auth(alice.key), timeout=30
    ) as http:
        # Half through each edge.
        g_file = await upload(alice, "grpc.txt", b"parity over grpc: lanterns and harbours\n")
        h_file = await _ok(
            await http.post(
                "/files",
                data={"purpose": "assistants"},
                files={"file": ("http.txt", b"parity over http: lanterns and lighthouses\n")},
            )
        )
        g_store = await create_store(alice, name="from grpc")
        h_store = await _ok(await http.post("/vector_stores", json={"name": "from http"}))
        g_batch = await create_batch(
            alice, g_store.id, [g_file.id, h_file["id"]], attributes=attrs(edge="grpc", n=1)
        )
        h_batch = await _ok(
            await http.post(
                f"/vector_stores/{h_store['id']}/file_batches",
                json={
                    "file_ids": [g_file.id, h_file["id"]],
                    "attributes": {"edge": "http", "n": 1},
                },
            )
        )
        await poll_batch(alice, g_store.id, g_batch.id)
        await until(
            "the HTTP batch",
            lambda: http.get(f"/vector_stores/{h_store['id']}/file_batches/{h_batch['id']}"),
            lambda r: r.json()["status"] != "in_progress",
        )

        # Every object, read back through both edges.
        for file_id in (g_file.id, h_file["id"]):
            got = await alice.files.GetFile(files_pb2.GetFileRequest(file_id=file_id), metadata=md)
            extra = {"status": "processed", "status_details": None, "expires_at": None}
            assert await _ok(await http.get(f"/files/{file_id}")) == file_json(got.file) | extra
        for store_id in (g_store.id, h_store["id"]):
            got_store = await alice.stores.GetVectorStore(
                vector_stores_pb2.GetVectorStoreRequest(vector_store_id=store_id), metadata=md
            )
            assert await _ok(await http.get(f"/vector_stores/{store_id}")) == store_json(
                got_store.vector_store
            )
            listed = await alice.stores.ListVectorStoreFiles(
                vector_stores_pb2.ListVectorStoreFilesRequest(
                    vector_store_id=store_id, order="asc"
                ),
                metadata=md,
            )
            page = await _ok(await http.get(f"/vector_stores/{store_id}/files?order=asc"))
            assert page["data"] == [store_file_json(f) for f in listed.data]
            assert (page["object"], page["first_id"], page["last_id"], page["has_more"]) == (
                listed.object,
                listed.first_id,
                listed.last_id,
                listed.has_more,
            )
            searched = await alice.stores.SearchVectorStore(
                vector_stores_pb2.SearchVectorStoreRequest(
                    vector_store_id=store_id, query=["lanterns"]
                ),
                metadata=md,
            )
            found = await _ok(
                await http.post(f"/vector_stores/{store_id}/search", json={"query": "lanterns"})
            )
            assert found["data"] == [hit_json(h) for h in searched.data]
            assert found["search_query"] == list(searched.search_query) == ["lanterns"]
            assert found["object"] == searched.object
        for store_id, batch_id in ((g_store.id, g_batch.id), (h_store["id"], h_batch["id"])):
            got_batch = await alice.batches.GetFileBatch(
                file_batches_pb2.GetFileBatchRequest(vector_store_id=store_id, batch_id=batch_id),
                metadata=md,
            )
            assert await _ok(
                await http.get(f"/vector_stores/{store_id}/file_batches/{batch_id}")
            ) == batch_json(got_batch.file_batch)
            assert got_batch.file_batch.file_counts.completed == 2
        files = await alice.files.ListFiles(files_pb2.ListFilesRequest(), metadata=md)
        listed_files = await _ok(await http.get("/files"))
        assert [f["id"] for f in listed_files["data"]] == [f.id for f in files.data]
