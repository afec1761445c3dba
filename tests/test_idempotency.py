"""CreateFileBatch's request_id: a retry gets its batch back; the same id with another body is
ALREADY_EXISTS naming what differs. NOT_FOUND for unknown file ids names each in a
google.rpc.ResourceInfo detail."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from quiver.v1 import file_batches_pb2

from tests.support.batch_helpers import attrs, create_store, static, upload_all
from tests.support.inproc import Running, Tenant
from tests.support.rpc_helpers import error_reason, status_of


async def files(tenant: Tenant, n: int) -> list[str]:
    return await upload_all(tenant, [(f"i{i}.txt", f"file {i} words".encode()) for i in range(n)])


async def create(tenant: Tenant, **kw: Any) -> file_batches_pb2.FileBatch:
    reply = await tenant.batches.CreateFileBatch(
        file_batches_pb2.CreateFileBatchRequest(**kw), metadata=tenant.metadata
    )
    batch: file_batches_pb2.FileBatch = reply.file_batch
    return batch


async def refused(tenant: Tenant, **kw: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await create(tenant, **kw)
    return caught.value


async def test_a_reused_request_id_with_another_body_names_the_difference(
    running: Running,
) -> None:
    a = running.alice
    store = (await create_store(a)).id
    ids = await files(a, 3)
    first = await create(a, vector_store_id=store, file_ids=ids[:2], request_id="r-1")
    # The same body, files in another order: a retry, the same batch.
    again = await create(a, vector_store_id=store, file_ids=ids[1::-1], request_id="r-1")
    assert again.id == first.id

    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"file_ids": ids}, ["file_ids"]),
        ({"file_ids": ids[:2], "attributes": attrs(team="x")}, ["attributes"]),
        ({"file_ids": ids[:2], "chunking_strategy": static(200, 20)}, ["chunking_strategy"]),
        (
            {
                "files": [
                    file_batches_pb2.FileBatchFileSpec(file_id=ids[0], attributes=attrs(n=1)),
                    file_batches_pb2.FileBatchFileSpec(file_id=ids[2]),
                ]
            },
            ["file_ids", "attributes"],
        ),
    ]
    for body, differ in cases:
        err = await refused(a, vector_store_id=store, request_id="r-1", **body)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        message = err.details() or ""
        assert f"{', '.join(differ)} differ" in message, message
        assert first.id in message
        assert error_reason(err) == "REQUEST_ID_REUSED"

    other = (await create_store(a)).id
    err = await refused(a, vector_store_id=other, file_ids=ids[:2], request_id="r-1")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "vector_store_id differ" in (err.details() or "")

    # The same files and attribute values, but on other files.
    def swapped(first: int, second: int) -> list[file_batches_pb2.FileBatchFileSpec]:
        return [
            file_batches_pb2.FileBatchFileSpec(file_id=ids[0], attributes=attrs(n=first)),
            file_batches_pb2.FileBatchFileSpec(file_id=ids[1], attributes=attrs(n=second)),
        ]

    await create(a, vector_store_id=store, request_id="r-2", files=swapped(2, 1))
    err = await refused(a, vector_store_id=store, request_id="r-2", files=swapped(1, 2))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "files (which file has which" in (err.details() or "")

    # Same files, batch-level attributes written per file: the same request.
    same = await create(
        a,
        vector_store_id=store,
        files=[file_batches_pb2.FileBatchFileSpec(file_id=i) for i in ids[:2]],
        request_id="r-1",
    )
    assert same.id == first.id


async def test_unknown_file_ids_come_back_as_resource_info_details(running: Running) -> None:
    a = running.alice
    store = (await create_store(a)).id
    ids = await files(a, 1)
    ghosts = [f"file-ghost{i:020d}" for i in range(3)]
    err = await refused(a, vector_store_id=store, file_ids=[ghosts[0], ids[0], *ghosts[1:]])
    assert err.code() == grpc.StatusCode.NOT_FOUND
    found: list[tuple[str, str]] = []
    for detail in status_of(err).details:
        if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            found.append((info.resource_type, info.resource_name))
    assert found == [("file", g) for g in ghosts]


async def test_many_unknown_file_ids_keep_the_trailer_small(running: Running) -> None:
    a = running.alice
    store = (await create_store(a)).id
    ghosts = [f"file-ghost{i:020d}" for i in range(2000)]
    err = await refused(a, vector_store_id=store, file_ids=ghosts)
    assert err.code() == grpc.StatusCode.NOT_FOUND  # not "Stream removed" past 8 KiB
    infos = [d for d in status_of(err).details if d.Is(error_details_pb2.ResourceInfo.DESCRIPTOR)]
    assert 10 <= len(infos) < 100
    assert "2000 file(s) not found" in (err.details() or "")
