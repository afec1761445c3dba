"""File batches and store files against a real server: validation, mixed documents, exact
chunking, store-file RPCs, deletion under a running batch, cancel."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from quiver.server.core.models import BatchStatus
from quiver.server.ingest.chunking import ChunkingParams, chunk_text
from quiver.v1 import file_batches_pb2, files_pb2, vector_stores_pb2

from tests.support.batch_helpers import (
    B_CANCELLED,
    B_COMPLETED,
    B_FAILED,
    B_IN_PROGRESS,
    F_CANCELLED,
    F_COMPLETED,
    F_FAILED,
    F_IN_PROGRESS,
    PoolUse,
    attrs,
    check_stream,
    chunk_rows,
    chunk_texts,
    content,
    counts,
    create_batch,
    create_store,
    duplicate_chunks,
    final_statuses,
    get_batch,
    get_file,
    get_store,
    list_batch_files,
    list_store_files,
    open_db,
    poll_file,
    prose,
    read_message,
    read_to_end,
    start_watch,
    static,
    text_of_tokens,
    upload_all,
    watch_to_end,
)
from tests.support.docgen import make_docx, make_pdf
from tests.support.inproc import Running, Tenant
from tests.support.rpc_helpers import (
    ListPage,
    PageView,
    check_cursor_pagination,
    error_reason,
    upload,
    violated_fields,
    wait_for,
)

DAY = 86_400


async def rpc_error(call: Awaitable[object]) -> aio.AioRpcError:
    """The error the call fails with (the test fails if it succeeds)."""
    with pytest.raises(aio.AioRpcError) as err:
        await call
    return err.value


async def small_files(tenant: Tenant, n: int, prefix: str = "doc") -> list[str]:
    return await upload_all(
        tenant, [(f"{prefix}{i}.txt", prose(i, 600).encode()) for i in range(n)]
    )


async def store_with_files(tenant: Tenant, n: int) -> tuple[str, list[str]]:
    store = await create_store(tenant, name="batches")
    return store.id, await small_files(tenant, n)


def request(store_id: str, **kw: Any) -> file_batches_pb2.CreateFileBatchRequest:
    return file_batches_pb2.CreateFileBatchRequest(vector_store_id=store_id, **kw)


async def create_fails(tenant: Tenant, req: file_batches_pb2.CreateFileBatchRequest) -> Any:
    return await rpc_error(tenant.batches.CreateFileBatch(req, metadata=tenant.metadata))


async def assert_nothing_attached(tenant: Tenant, store_id: str) -> None:
    assert await list_store_files(tenant, store_id) == []
    store = await get_store(tenant, store_id)
    assert counts(store.file_counts) == (0, 0, 0, 0, 0)


# -- CreateFileBatch validation ------------------------------------------------------------


async def test_create_needs_1_to_2000_files(running: Running) -> None:
    a = running.alice
    store_id, _ = await store_with_files(a, 0)
    err = await create_fails(a, request(store_id))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == ["file_ids"]
    assert error_reason(err) == "INVALID_ARGUMENT"

    too_many = [f"file-{i:024d}" for i in range(2001)]
    err = await create_fails(a, request(store_id, file_ids=too_many))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == ["file_ids"]
    assert "2001" in (err.details() or "")

    await assert_nothing_attached(a, store_id)


async def test_create_rejects_duplicate_ids_naming_the_index(running: Running) -> None:
    a = running.alice
    store_id, ids = await store_with_files(a, 3)
    err = await create_fails(a, request(store_id, file_ids=[ids[0], ids[1], ids[2], ids[1]]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == ["file_ids[3]"]
    assert ids[1] in (err.details() or "")
    await assert_nothing_attached(a, store_id)


async def test_violations_in_files_name_the_files_field(running: Running) -> None:
    """With `files`, a violation names `files[i].file_id`, not a `file_ids` the caller never
    sent."""
    a = running.alice
    store_id, ids = await store_with_files(a, 2)
    specs = [file_batches_pb2.FileBatchFileSpec(file_id=f) for f in (ids[0], ids[1], ids[0])]
    err = await create_fails(a, request(store_id, files=specs))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == ["files[2].file_id"]
    specs = [file_batches_pb2.FileBatchFileSpec(file_id=f) for f in (ids[0], "")]
    err = await create_fails(a, request(store_id, files=specs))
    assert violated_fields(err) == ["files[1].file_id"]
    specs = [file_batches_pb2.FileBatchFileSpec(file_id=f"file-{i:024d}") for i in range(2001)]
    err = await create_fails(a, request(store_id, files=specs))
    assert violated_fields(err) == ["files"]
    await assert_nothing_attached(a, store_id)


async def test_create_rejects_file_ids_and_files_together(running: Running) -> None:
    a = running.alice
    store_id, ids = await store_with_files(a, 2)
    req = request(
        store_id,
        file_ids=[ids[0]],
        files=[file_batches_pb2.FileBatchFileSpec(file_id=ids[1])],
    )
    err = await create_fails(a, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == ["files"]
    await assert_nothing_attached(a, store_id)


async def test_unknown_ids_are_not_found_and_nothing_is_created(running: Running) -> None:
    a = running.alice
    store_id, ids = await store_with_files(a, 2)
    ghosts = ["file-doesnotexist000000000001", "file-doesnotexist000000000002"]
    err = await create_fails(a, request(store_id, file_ids=[ids[0], ghosts[0], ids[1], ghosts[1]]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    details = err.details() or ""
    assert all(g in details for g in ghosts), details
    assert ids[0] not in details and ids[1] not in details
    assert error_reason(err) == "FILE_NOT_FOUND"
    await assert_nothing_attached(a, store_id)

    # Another tenant's file is as unknown as a made-up id.
    bobs = (await upload(running.bob, "bob.txt", b"bob's words")).id
    err = await create_fails(a, request(store_id, file_ids=[ids[0], bobs]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert bobs in (err.details() or "")
    await assert_nothing_attached(a, store_id)

    # And bob cannot add his file to alice's store: the store is not found for him.
    b = running.bob
    err = await create_fails(b, request(store_id, file_ids=[bobs]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await assert_nothing_attached(a, store_id)


BAD_ATTRIBUTES: list[tuple[dict[str, struct_pb2.Value], str]] = [
    ({f"k{i}": struct_pb2.Value(number_value=i) for i in range(17)}, "{f}"),
    ({"k" * 65: struct_pb2.Value(string_value="v")}, "{f}['" + "k" * 20 + "'…]"),
    ({"long": struct_pb2.Value(string_value="x" * 513)}, "{f}['long']"),
    (
        {
            "list": struct_pb2.Value(
                list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value="a")])
            )
        },
        "{f}['list']",
    ),
    ({"nothing": struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)}, "{f}['nothing']"),
    (
        {
            "nested": struct_pb2.Value(
                struct_value=struct_pb2.Struct(fields={"a": struct_pb2.Value(bool_value=True)})
            )
        },
        "{f}['nested']",
    ),
]


async def test_attribute_rules(running: Running) -> None:
    a = running.alice
    store_id, ids = await store_with_files(a, 1)
    for bad, field in BAD_ATTRIBUTES:
        err = await create_fails(a, request(store_id, file_ids=ids, attributes=bad))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert violated_fields(err) == [field.format(f="attributes")]
        spec = file_batches_pb2.FileBatchFileSpec(file_id=ids[0], attributes=bad)
        err = await create_fails(a, request(store_id, files=[spec]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert violated_fields(err) == [field.format(f="files[0].attributes")]
    await assert_nothing_attached(a, store_id)

    # The limits themselves are fine: 16 keys, a 64-character key, a 512-character string.
    ok = {f"k{i}": struct_pb2.Value(number_value=i) for i in range(14)}
    ok["k" * 64] = struct_pb2.Value(bool_value=False)
    ok["s"] = struct_pb2.Value(string_value="x" * 512)
    batch = await create_batch(a, store_id, ids, attributes=ok)
    assert batch.file_counts.total == 1
    assert dict((await get_file(a, store_id, ids[0])).attributes) == ok


async def test_chunking_rules(running: Running) -> None:
    a = running.alice
    store_id, ids = await store_with_files(a, 1)
    cases = [
        (static(99, 0), "chunking_strategy.static.max_chunk_size_tokens"),
        (static(4097, 100), "chunking_strategy.static.max_chunk_size_tokens"),
        (static(400, 201), "chunking_strategy.static.chunk_overlap_tokens"),
        (static(400, -1), "chunking_strategy.static.chunk_overlap_tokens"),
    ]
    for strategy, field in cases:
        err = await create_fails(a, request(store_id, file_ids=ids, chunking_strategy=strategy))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert violated_fields(err) == [field]
        spec = file_batches_pb2.FileBatchFileSpec(file_id=ids[0], chunking_strategy=strategy)
        err = await create_fails(a, request(store_id, files=[spec]))
        assert violated_fields(err) == ["files[0]." + field]
    fancy = static(400, 100)
    fancy.type = "fancy"
    err = await create_fails(a, request(store_id, file_ids=ids, chunking_strategy=fancy))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == ["chunking_strategy.type"]
    assert "fancy" in (err.details() or "")
    await assert_nothing_attached(a, store_id)

    # The bounds are accepted.
    for strategy in (static(100, 50), static(4096, 2048), static(100, 0)):
        batch = await create_batch(a, store_id, ids, chunking=strategy)
        assert batch.status == B_IN_PROGRESS or batch.status == B_COMPLETED
        file = await get_file(a, store_id, ids[0])
        assert file.chunking_strategy == strategy


async def test_per_file_specs_are_applied(running: Running) -> None:
    a = running.alice
    store_id, ids = await store_with_files(a, 3)
    specs = [
        file_batches_pb2.FileBatchFileSpec(
            file_id=ids[0],
            attributes=attrs(lang="en", year=2024),
            chunking_strategy=static(200, 20),
        ),
        file_batches_pb2.FileBatchFileSpec(file_id=ids[1], attributes=attrs(draft=True)),
        file_batches_pb2.FileBatchFileSpec(file_id=ids[2], chunking_strategy=static(300, 150)),
    ]
    # Batch-level attributes and chunking are ignored when `files` is used.
    batch = await create_batch(
        a, store_id, files=specs, attributes=attrs(ignored="yes"), chunking=static(1000, 0)
    )
    assert counts(batch.file_counts)[4] == 3
    expected = [
        (attrs(lang="en", year=2024), static(200, 20)),
        (attrs(draft=True), static(800, 400)),  # auto, shown resolved
        ({}, static(300, 150)),
    ]
    for file_id, (attributes, chunking) in zip(ids, expected, strict=True):
        file = await get_file(a, store_id, file_id)
        assert dict(file.attributes) == attributes
        assert file.chunking_strategy == chunking
    done = await watch_to_end(a, store_id, batch.id)
    assert done[-1].file_batch.status == B_COMPLETED
    # The chunking was really used: a 200/20 file has the chunks chunk_text gives.
    text = prose(0, 600)
    assert await content(a, store_id, ids[0]) == [
        c.text for c in chunk_text(text, ChunkingParams(200, 20))
    ]


async def test_request_id_is_idempotent(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    a = running.alice
    use = PoolUse(running.server.core.pool, monkeypatch)
    store_id, ids = await store_with_files(a, 5)
    first = await create_batch(a, store_id, ids, request_id="retry-me")
    second = await create_batch(a, store_id, ids, request_id="retry-me")
    assert second.id == first.id
    done = await watch_to_end(a, store_id, first.id)
    third = await create_batch(a, store_id, ids, request_id="retry-me")
    assert third.id == first.id and third.status == B_COMPLETED
    assert counts(done[-1].file_batch.file_counts) == (0, 5, 0, 0, 5)
    store = await get_store(a, store_id)
    assert counts(store.file_counts) == (0, 5, 0, 0, 5)
    assert len(await list_store_files(a, store_id)) == 5
    # One batch's worth of work: each file was processed once.
    assert use.calls == 5
    db = open_db(running.server.settings.data_dir)
    try:
        assert db.execute("SELECT COUNT(*) FROM file_batches").fetchone()[0] == 1
    finally:
        db.close()
    rows = chunk_rows(running.server.settings.data_dir, store_id)
    for file_id in ids:
        assert rows[file_id] == len(await content(a, store_id, file_id))

    # The key belongs to the caller: bob may use the same one for his own batch.
    bobs_store = await create_store(running.bob)
    bobs_file = (await upload(running.bob, "b.txt", b"bob")).id
    bobs = await create_batch(running.bob, bobs_store.id, [bobs_file], request_id="retry-me")
    assert bobs.id != first.id
    # Reusing the key for another store is refused rather than silently returning.
    other = await create_store(a)
    err = await create_fails(a, request(other.id, file_ids=ids, request_id="retry-me"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_expired_store_refuses_batches(running: Running) -> None:
    a = running.alice
    store = await create_store(a, expires_days=1)
    ids = await small_files(a, 2)
    running.server.core.stores.clock = lambda: time.time() + 2 * DAY
    err = await create_fails(a, request(store.id, file_ids=ids))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in (err.details() or "")
    assert error_reason(err) == "VECTOR_STORE_EXPIRED"
    err = await rpc_error(
        a.stores.CreateVectorStoreFile(
            vector_stores_pb2.CreateVectorStoreFileRequest(
                vector_store_id=store.id, file_id=ids[0]
            ),
            metadata=a.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    await assert_nothing_attached(a, store.id)


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_a_store_that_expires_under_a_queued_batch_fails_it(running: Running) -> None:
    """The batch's files are all queued (none in flight) when its store expires."""
    a = running.alice
    busy = await create_store(a, name="never expires")
    expiring = await create_store(a, name="expires", expires_days=1)
    big = await upload_all(a, [("big.txt", prose(2, 2_000_000).encode())])
    small = await small_files(a, 3)
    busy_batch = await create_batch(a, busy.id, big)
    await wait_for(lambda: running.server.core.scheduler.in_flight == 1, within=10)
    batch = await create_batch(a, expiring.id, small)
    running.server.core.stores.clock = lambda: time.time() + 2 * DAY
    messages = await watch_to_end(a, expiring.id, batch.id, within=30)
    check_stream(messages)
    assert messages[-1].file_batch.status == B_FAILED
    assert counts(messages[-1].file_batch.file_counts) == (0, 0, 3, 0, 3)
    for update in final_statuses(messages).values():
        assert update.last_error.code == "server_error"
        assert "expired" in update.last_error.message
    assert (await get_store(a, expiring.id)).status == (
        vector_stores_pb2.VECTOR_STORE_STATUS_EXPIRED
    )
    done = await watch_to_end(a, busy.id, busy_batch.id, within=30)
    assert done[-1].file_batch.status == B_COMPLETED


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_a_store_that_expires_under_a_running_batch_fails_it(running: Running) -> None:
    """A file is in flight when the store expires: its result is not written into the
    expired store (which would also make it look active again), and the batch fails."""
    a = running.alice
    store = await create_store(a, expires_days=1)
    docs = [("big.txt", prose(3, 2_000_000).encode())]
    docs += [(f"s{i}.txt", prose(i, 500).encode()) for i in range(3)]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    watch = start_watch(a, store.id, batch.id)
    await wait_for(lambda: running.server.core.scheduler.is_in_flight(store.id, ids[0]), within=10)
    running.server.core.stores.clock = lambda: time.time() + 2 * DAY
    messages = await read_to_end(watch, within=30)
    check_stream(messages)
    assert messages[-1].file_batch.status == B_FAILED
    assert counts(messages[-1].file_batch.file_counts) == (0, 0, 4, 0, 4)
    assert all("expired" in u.last_error.message for u in final_statuses(messages).values())
    after = await get_store(a, store.id)
    assert after.status == vector_stores_pb2.VECTOR_STORE_STATUS_EXPIRED
    assert after.usage_bytes == 0
    assert chunk_rows(running.server.settings.data_dir, store.id) == {}


@pytest.mark.parametrize("overrides", [{"max_queued_files": 3}])
async def test_full_queue_is_resource_exhausted(running: Running) -> None:
    a = running.alice
    store_id, ids = await store_with_files(a, 5)
    err = await create_fails(a, request(store_id, file_ids=ids))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = err.details() or ""
    assert "--max-queued-files" in details and "3" in details, details
    assert error_reason(err) == "INGEST_QUEUE_FULL"
    await assert_nothing_attached(a, store_id)
    batch = await create_batch(a, store_id, ids[:3])
    assert (await watch_to_end(a, store_id, batch.id))[-1].file_batch.status == B_COMPLETED


async def stores_of(tenant: Tenant) -> list[str]:
    reply = await tenant.stores.ListVectorStores(
        vector_stores_pb2.ListVectorStoresRequest(limit=100), metadata=tenant.metadata
    )
    return [s.id for s in reply.data]


async def create_store_fails(tenant: Tenant, file_ids: list[str]) -> aio.AioRpcError:
    return await rpc_error(
        tenant.stores.CreateVectorStore(
            vector_stores_pb2.CreateVectorStoreRequest(name="with files", file_ids=file_ids),
            metadata=tenant.metadata,
        )
    )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"max_queued_files": 3}, "INGEST_QUEUE_FULL"),
        ({"max_queued_files_per_tenant": 3}, "TENANT_INGEST_QUEUE_FULL"),
    ],
)
async def test_create_store_with_files_over_the_queue_limit_creates_no_store(
    running: Running, reason: str
) -> None:
    a = running.alice
    ids = await small_files(a, 5)
    for _ in range(2):  # a retry is refused the same way, and leaves no store either
        err = await create_store_fails(a, ids)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert error_reason(err) == reason
    assert await stores_of(a) == []
    reply = await a.stores.CreateVectorStore(
        vector_stores_pb2.CreateVectorStoreRequest(name="fits", file_ids=ids[:3]),
        metadata=a.metadata,
    )
    assert reply.vector_store.file_counts.total == 3
    assert await stores_of(a) == [reply.vector_store.id]
    assert sorted(f.id for f in await list_store_files(a, reply.vector_store.id)) == sorted(ids[:3])


async def test_create_store_with_unknown_files_creates_nothing(running: Running) -> None:
    a = running.alice
    ids = await small_files(a, 2)
    mine_for_bob = await small_files(running.bob, 1)
    for missing in (["file-nope"], mine_for_bob):
        err = await create_store_fails(a, [*ids, *missing])
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        assert error_reason(err) == "FILE_NOT_FOUND"
    assert await stores_of(a) == []
    db = open_db(running.server.settings.data_dir)
    try:
        assert db.execute("SELECT COUNT(*) FROM vector_store_files").fetchone() == (0,)
    finally:
        db.close()


# -- a batch of mixed documents ----------------------------------------------------------


def mixed_documents() -> tuple[list[tuple[str, bytes]], dict[str, tuple[str, str]]]:
    """50 documents, and for each one that must fail: (last_error code, message part)."""
    docs: list[tuple[str, bytes]] = []
    for i in range(8):
        body = prose(100 + i, 1500 + 300 * i)
        docs.append((f"notes{i}.txt", body.encode()))
        docs.append((f"readme{i}.md", f"# Title {i}\n\n## Section\n\n{body}".encode()))
        code = "\n".join(
            f"def f{i}_{k}(x: int) -> int:\n    return x * {k}  # {w}\n"
            for k, w in enumerate(prose(200 + i, 800).split()[:40])
        )
        docs.append((f"module{i}.py", code.encode()))
        docs.append(
            (
                f"data{i}.json",
                json.dumps({"id": i, "items": prose(300 + i, 900).split()}).encode(),
            )
        )
        html = (
            f"<!doctype html><html><head><title>t{i}</title><style>p{{}}</style></head>"
            f"<body><h1>Page {i}</h1><p>{prose(400 + i, 1000)}</p></body></html>"
        )
        docs.append((f"page{i}.html", html.encode()))
    docs.append(("report.pdf", make_pdf([f"pdf line {k}" for k in range(60)])))
    docs.append(("letter.docx", make_docx(["Dear reader,", "docx body text"], [["a", "b"]])))
    docs.append(("wide.txt", ("UTF-16 text, naïve café\n" * 50).encode("utf-16")))
    rng = random.Random(7)
    binary = b"\x01\x02" + bytes(rng.randrange(256) for _ in range(4096))
    assert b"\x00" in binary
    truncated = make_pdf([f"cut line {k}" for k in range(40)])
    failing: dict[str, tuple[str, str]] = {
        "empty.txt": ("invalid_file", "file is empty"),
        "noise.bin": ("unsupported_file", "binary content"),
        "latin.txt": ("invalid_file", "not valid UTF-8 or UTF-16 text"),
        "broken.json": ("invalid_file", "invalid JSON"),
        "cut.pdf": ("invalid_file", "PDF is corrupt"),
        "image.png": ("unsupported_file", "'png'"),
        "fake.docx": ("invalid_file", "not a DOCX"),
    }
    docs += [
        ("empty.txt", b""),
        ("noise.bin", binary),
        ("latin.txt", "café naïve façade\n".encode("latin-1") * 40),
        ("broken.json", b'{"a": [1, 2, 3}'),
        ("cut.pdf", truncated[: len(truncated) // 2]),
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)),
        ("fake.docx", b"just words, not a zip archive"),
    ]
    assert len(docs) == 50
    return docs, failing


async def test_mixed_batch_of_50(running: Running) -> None:
    a = running.alice
    docs, failing = mixed_documents()
    store = await create_store(a, name="mixed")
    ids = await upload_all(a, docs)
    name_of = {file_id: name for file_id, (name, _) in zip(ids, docs, strict=True)}
    batch = await create_batch(a, store.id, ids)
    assert batch.object == "vector_store.file_batch" and batch.id.startswith("vsfb_")
    assert batch.vector_store_id == store.id
    assert counts(batch.file_counts)[4] == 50
    call = start_watch(a, store.id, batch.id)
    messages = [m async for m in call]
    assert await call.code() == grpc.StatusCode.OK
    check_stream(messages)
    assert len({f.file_id for f in messages[0].files}) == 50
    last = messages[-1].file_batch
    assert last.status == B_COMPLETED
    assert counts(last.file_counts) == (0, 43, 7, 0, 50)

    updates = final_statuses(messages)
    assert set(updates) == set(ids)
    for file_id, update in updates.items():
        name = name_of[file_id]
        if name in failing:
            code, part = failing[name]
            assert update.status == F_FAILED, name
            assert (update.last_error.code, part in update.last_error.message) == (code, True), (
                name,
                update.last_error,
            )
        else:
            assert update.status == F_COMPLETED, (name, update.last_error)
            assert not update.HasField("last_error")

    # The same story from the other RPCs.
    assert counts((await get_batch(a, store.id, batch.id)).file_counts) == (0, 43, 7, 0, 50)
    store_now = await get_store(a, store.id)
    assert counts(store_now.file_counts) == (0, 43, 7, 0, 50)
    failed = await list_batch_files(a, store.id, batch.id, F_FAILED)
    assert sorted(name_of[f.id] for f in failed) == sorted(failing)
    for f in failed:
        assert f.last_error.code == failing[name_of[f.id]][0]
        assert f.usage_bytes == 0
    files = await list_store_files(a, store.id)
    assert sum(f.usage_bytes for f in files) == store_now.usage_bytes
    assert all(f.usage_bytes > 0 for f in files if f.status == F_COMPLETED)
    by_name = {name_of[f.id]: f.id for f in files}
    pdf = await content(a, store.id, by_name["report.pdf"])
    assert "pdf line 0" in pdf[0] and "pdf line 59" in "".join(pdf)
    assert "docx body text" in "".join(await content(a, store.id, by_name["letter.docx"]))
    wide = ("UTF-16 text, naïve café\n" * 50).strip("\n")
    assert (await content(a, store.id, by_name["wide.txt"])) == [
        c.text for c in chunk_text(wide + "\n", ChunkingParams(800, 400))
    ]
    html = "".join(await content(a, store.id, by_name["page0.html"]))
    assert "Page 0" in html and "<p>" not in html and "p{}" not in html


# -- exact chunks ------------------------------------------------------------------------


async def test_content_is_exactly_the_chunks(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    exact = text_of_tokens(10_000, seed=3)
    long_prose = prose(9, 60_000)
    ids = await upload_all(a, [("exact.txt", exact.encode()), ("prose.md", long_prose.encode())])
    specs = [
        file_batches_pb2.FileBatchFileSpec(file_id=ids[0], chunking_strategy=static(100, 50)),
        file_batches_pb2.FileBatchFileSpec(file_id=ids[1]),  # auto
    ]
    batch = await create_batch(a, store.id, files=specs)
    assert (await watch_to_end(a, store.id, batch.id))[-1].file_batch.status == B_COMPLETED

    parts = await content(a, store.id, ids[0])
    assert len(parts) == 199
    assert parts == [c.text for c in chunk_text(exact, ChunkingParams(100, 50))]
    auto = await content(a, store.id, ids[1])
    expected = [c.text for c in chunk_text(long_prose, ChunkingParams(800, 400))]
    assert len(expected) > 10
    assert auto == expected

    rows = chunk_rows(running.server.settings.data_dir, store.id)
    assert rows == {ids[0]: 199, ids[1]: len(expected)}


@pytest.mark.slow
async def test_content_of_a_large_completed_file_can_be_read(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    text = prose(8, 100_000) * 88  # 8.8 MB; auto chunking doubles it (400 of 800 overlap)
    file_id = (await upload(a, "big.txt", text.encode())).id
    batch = await create_batch(a, store.id, [file_id])
    assert (await watch_to_end(a, store.id, batch.id, within=60))[-1].file_batch.status == (
        B_COMPLETED
    )
    # Pages, each under a default client's 4 MiB limit, through the ordinary channel.
    parts = await content(a, store.id, file_id)
    assert parts == chunk_texts(running.server.settings.data_dir, store.id, file_id)


# -- store files -------------------------------------------------------------------------


async def attach(
    tenant: Tenant, store_id: str, file_id: str, **kw: Any
) -> vector_stores_pb2.VectorStoreFile:
    reply = await tenant.stores.CreateVectorStoreFile(
        vector_stores_pb2.CreateVectorStoreFileRequest(
            vector_store_id=store_id, file_id=file_id, **kw
        ),
        metadata=tenant.metadata,
    )
    return reply.vector_store_file


async def test_create_vector_store_file_processes_one_file(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    text = prose(42, 5000)
    file_id = (await upload(a, "one.md", text.encode())).id
    created = await attach(a, store.id, file_id, attributes=attrs(kind="note"))
    assert created.id == file_id and created.object == "vector_store.file"
    assert created.vector_store_id == store.id
    assert created.status == F_IN_PROGRESS
    assert created.usage_bytes == 0
    # In progress, or already done: a small file takes milliseconds.
    assert counts((await get_store(a, store.id)).file_counts) in ((1, 0, 0, 0, 1), (0, 1, 0, 0, 1))
    done = await poll_file(a, store.id, file_id, within=20)
    assert done.status == F_COMPLETED
    assert done.usage_bytes > 0
    assert dict(done.attributes) == attrs(kind="note")
    assert await content(a, store.id, file_id) == [
        c.text for c in chunk_text(text, ChunkingParams(800, 400))
    ]
    after = await get_store(a, store.id)
    assert counts(after.file_counts) == (0, 1, 0, 0, 1)
    assert after.usage_bytes == done.usage_bytes

    # Bob sees none of it.
    b = running.bob
    err = await rpc_error(
        b.stores.GetVectorStoreFile(
            vector_stores_pb2.GetVectorStoreFileRequest(vector_store_id=store.id, file_id=file_id),
            metadata=b.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(attach(a, store.id, "file-nothere"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_list_filter_cursors_update_and_delete(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    docs = [(f"f{i}.txt", prose(i, 700).encode()) for i in range(5)]
    docs.insert(2, ("empty.txt", b""))
    docs.insert(5, ("pic.png", b"\x89PNG\r\n\x1a\n" + bytes(40)))
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    assert (await watch_to_end(a, store.id, batch.id))[-1].file_batch.status == B_COMPLETED

    async def list_page(limit: int, order: str, after: str, before: str) -> PageView:
        reply = await a.stores.ListVectorStoreFiles(
            vector_stores_pb2.ListVectorStoreFilesRequest(
                vector_store_id=store.id, limit=limit, order=order, after=after, before=before
            ),
            metadata=a.metadata,
        )
        assert reply.object == "list"
        return PageView([f.id for f in reply.data], reply.first_id, reply.last_id, reply.has_more)

    lister: ListPage = list_page
    await check_cursor_pagination(lister, ids)
    failed = [f.id for f in await list_store_files(a, store.id, F_FAILED)]
    assert failed == [ids[2], ids[5]]
    completed = [f.id for f in await list_store_files(a, store.id, F_COMPLETED)]
    assert completed == [i for i in ids if i not in failed]
    assert await list_store_files(a, store.id, F_IN_PROGRESS) == []
    batch_completed = await list_batch_files(a, store.id, batch.id, F_COMPLETED)
    assert [f.id for f in batch_completed] == completed

    # Content of a failed file is refused.
    err = await rpc_error(content(a, store.id, ids[2]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(err) == "FILE_NOT_COMPLETED"

    # Update replaces the attributes, and validates them.
    def update(attributes: dict[str, struct_pb2.Value]) -> Any:
        return a.stores.UpdateVectorStoreFile(
            vector_stores_pb2.UpdateVectorStoreFileRequest(
                vector_store_id=store.id, file_id=ids[0], attributes=attributes
            ),
            metadata=a.metadata,
        )

    reply = await update(attrs(team="search", n=3, ok=True))
    assert dict(reply.vector_store_file.attributes) == attrs(team="search", n=3, ok=True)
    assert reply.vector_store_file.status == F_COMPLETED
    await update(attrs(only="this"))
    assert dict((await get_file(a, store.id, ids[0])).attributes) == attrs(only="this")
    for bad, field in BAD_ATTRIBUTES:
        err = await rpc_error(update(bad))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == [field.format(f="attributes")]
    assert dict((await get_file(a, store.id, ids[0])).attributes) == attrs(only="this")
    missing = vector_stores_pb2.UpdateVectorStoreFileRequest(
        vector_store_id=store.id, file_id="file-nothere"
    )
    err = await rpc_error(a.stores.UpdateVectorStoreFile(missing, metadata=a.metadata))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    # Usage: each completed file counts, failed ones don't, and the store is their sum.
    files = await list_store_files(a, store.id)
    usage = {f.id: f.usage_bytes for f in files}
    assert all(usage[i] > 0 for i in completed) and all(usage[i] == 0 for i in failed)
    before = await get_store(a, store.id)
    assert before.usage_bytes == sum(usage.values())
    assert counts(before.file_counts) == (0, 5, 2, 0, 7)
    index = running.server.core.indexes.get(store.id, before.embedding_dimensions)
    rows = chunk_rows(running.server.settings.data_dir, store.id)
    assert index.live_count == sum(rows.values())

    # DeleteVectorStoreFile: gone from lists, counts, usage, chunks and the index.
    reply_del = await a.stores.DeleteVectorStoreFile(
        vector_stores_pb2.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=ids[0]),
        metadata=a.metadata,
    )
    assert (reply_del.id, reply_del.object, reply_del.deleted) == (
        ids[0],
        "vector_store.file.deleted",
        True,
    )
    after = await get_store(a, store.id)
    assert counts(after.file_counts) == (0, 4, 2, 0, 6)
    assert after.usage_bytes == before.usage_bytes - usage[ids[0]]
    assert ids[0] not in [f.id for f in await list_store_files(a, store.id)]
    err = await rpc_error(get_file(a, store.id, ids[0]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    rows_after = chunk_rows(running.server.settings.data_dir, store.id)
    assert ids[0] not in rows_after
    assert index.live_count == sum(rows_after.values()) == sum(rows.values()) - rows[ids[0]]
    # The file itself stays.
    assert (
        await a.files.GetFile(files_pb2.GetFileRequest(file_id=ids[0]), metadata=a.metadata)
    ).file.id == ids[0]

    # Deleting a failed one drops the failed count.
    await a.stores.DeleteVectorStoreFile(
        vector_stores_pb2.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=ids[2]),
        metadata=a.metadata,
    )
    final = await get_store(a, store.id)
    assert counts(final.file_counts) == (0, 4, 1, 0, 5)
    assert final.usage_bytes == after.usage_bytes

    # DeleteFile of an attached file detaches it from the store.
    await a.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=ids[1]), metadata=a.metadata)
    gone = await get_store(a, store.id)
    assert counts(gone.file_counts) == (0, 3, 1, 0, 4)
    assert gone.usage_bytes == final.usage_bytes - usage[ids[1]]
    assert ids[1] not in [f.id for f in await list_store_files(a, store.id)]
    assert ids[1] not in chunk_rows(running.server.settings.data_dir, store.id)
    err = await rpc_error(content(a, store.id, ids[1]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert sum(f.usage_bytes for f in await list_store_files(a, store.id)) == gone.usage_bytes


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_content_of_a_file_in_progress_is_refused(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    big, small = await upload_all(
        a, [("big.txt", prose(1, 3_000_000).encode()), ("small.txt", b"small words")]
    )
    await attach(a, store.id, big)
    await wait_for(lambda: running.server.core.scheduler.in_flight == 1, within=10)
    await attach(a, store.id, small)  # queued behind the big one: one worker
    assert (await get_file(a, store.id, small)).status == F_IN_PROGRESS
    err = await rpc_error(content(a, store.id, small))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "in_progress" in (err.details() or "")
    assert (await poll_file(a, store.id, small, within=30)).status == F_COMPLETED
    assert await content(a, store.id, small) == ["small words"]


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_deleting_the_store_fails_its_running_batch(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    docs = [("big.txt", prose(5, 2_000_000).encode())]
    docs += [(f"s{i}.txt", prose(i, 500).encode()) for i in range(10)]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    watchers = [start_watch(a, store.id, batch.id) for _ in range(2)]
    snapshots = []
    for call in watchers:  # both are following before the store goes
        first = await read_message(call)
        assert first is not None and first.type == file_batches_pb2.WATCH_EVENT_TYPE_SNAPSHOT
        snapshots.append(first)
    await wait_for(lambda: running.server.core.scheduler.in_flight == 1, within=10)
    deleted = await a.stores.DeleteVectorStore(
        vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=a.metadata
    )
    assert deleted.deleted
    for first, call in zip(snapshots, watchers, strict=True):
        rest = await read_to_end(call)
        assert rest, "the watcher got no terminal message"
        check_stream([first, *rest])
        assert rest[-1].file_batch.status == B_FAILED
        # The unfinished files end failed with the batch: none is left counted in progress.
        assert counts(rest[-1].file_batch.file_counts) == (0, 0, 11, 0, 11)
        final = final_statuses([first, *rest])
        assert sorted(final) == sorted(ids)
        for update in final.values():
            assert update.status == F_FAILED
            assert update.last_error.code == "server_error"
            assert "deleted" in update.last_error.message
    # The in-flight file's result is dropped: no chunks, no index, nothing left behind.
    await wait_for(lambda: running.server.core.scheduler.in_flight == 0, within=20)
    assert chunk_rows(running.server.settings.data_dir, store.id) == {}
    err = await rpc_error(get_batch(a, store.id, batch.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert not running.server.core.indexes.path_for(store.id).exists()


@pytest.mark.slow
async def test_reattaching_a_file_in_flight(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer batch takes over a file while the older batch's job for it is still in the
    pool: the old result is dropped, the file is stored once, and the pool never holds more
    files than it has workers."""
    a = running.alice
    use = PoolUse(running.server.core.pool, monkeypatch)
    store = await create_store(a)
    big_text = prose(11, 3_000_000)
    docs = [("big.txt", big_text.encode())]
    docs += [(f"s{i}.txt", prose(i, 150_000).encode()) for i in range(8)]
    ids = await upload_all(a, docs)
    first = await create_batch(a, store.id, ids)
    await wait_for(lambda: running.server.core.scheduler.is_in_flight(store.id, ids[0]), within=10)
    second = await create_batch(a, store.id, ids[:1])
    old, new = await asyncio.gather(
        watch_to_end(a, store.id, first.id, within=60),
        watch_to_end(a, store.id, second.id, within=60),
    )
    assert old[-1].file_batch.status == B_COMPLETED
    assert counts(old[-1].file_batch.file_counts) == (0, 8, 0, 1, 9)
    assert final_statuses(old)[ids[0]].status == F_CANCELLED
    assert counts(new[-1].file_batch.file_counts) == (0, 1, 0, 0, 1)
    assert counts((await get_store(a, store.id)).file_counts) == (0, 9, 0, 0, 9)
    data_dir = running.server.settings.data_dir
    expected = [c.text for c in chunk_text(big_text, ChunkingParams(800, 400))]
    assert chunk_texts(data_dir, store.id, ids[0]) == expected
    assert duplicate_chunks(data_dir) == []
    index = running.server.core.indexes.get(store.id, store.embedding_dimensions)
    assert index.live_count == sum(chunk_rows(data_dir, store.id).values())
    assert use.max <= running.server.settings.ingest_workers, use.max


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_detaching_a_file_in_flight(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = running.alice
    use = PoolUse(running.server.core.pool, monkeypatch)
    store = await create_store(a)
    docs = [("big.txt", prose(12, 2_000_000).encode())]
    docs += [(f"s{i}.txt", prose(i, 500).encode()) for i in range(4)]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    watch = start_watch(a, store.id, batch.id)
    await wait_for(lambda: running.server.core.scheduler.is_in_flight(store.id, ids[0]), within=10)
    await a.stores.DeleteVectorStoreFile(
        vector_stores_pb2.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=ids[0]),
        metadata=a.metadata,
    )
    messages = await read_to_end(watch, within=60)
    check_stream(messages)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert counts(messages[-1].file_batch.file_counts) == (0, 4, 0, 1, 5)
    assert final_statuses(messages)[ids[0]].status == F_CANCELLED
    await wait_for(lambda: running.server.core.scheduler.in_flight == 0, within=20)
    assert counts((await get_store(a, store.id)).file_counts) == (0, 4, 0, 0, 4)
    assert ids[0] not in chunk_rows(running.server.settings.data_dir, store.id)
    assert use.calls == 5  # each file once; the detached one's result was dropped


# -- cancel ------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_cancel_stops_queued_files_at_once(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = running.alice
    use = PoolUse(running.server.core.pool, monkeypatch)
    store = await create_store(a)
    docs = [(f"big{i}.txt", prose(50 + i, 1_500_000).encode()) for i in range(3)]
    docs += [(f"small{i}.txt", prose(i, 800).encode()) for i in range(27)]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    watch = start_watch(a, store.id, batch.id)
    await wait_for(lambda: running.server.core.scheduler.in_flight == 1, within=10)
    reply = await a.batches.CancelFileBatch(
        file_batches_pb2.CancelFileBatchRequest(vector_store_id=store.id, batch_id=batch.id),
        metadata=a.metadata,
    )
    cancelling = reply.file_batch
    in_progress, completed, failed, cancelled, total = counts(cancelling.file_counts)
    assert total == 30 and failed == 0
    # One worker: at most one file is in flight; every queued one is cancelled already.
    assert in_progress <= 1
    assert cancelled == 30 - in_progress - completed
    assert cancelled >= 27
    assert cancelling.status == (B_IN_PROGRESS if in_progress else B_CANCELLED)
    assert running.server.core.scheduler.queued == 0

    messages = [m async for m in watch]
    assert await watch.code() == grpc.StatusCode.OK
    check_stream(messages)
    end = messages[-1].file_batch
    assert end.status == B_CANCELLED
    # The in-flight file was stopped at its next step: its result was dropped.
    assert counts(end.file_counts) == (0, completed, 0, 30 - completed, 30)
    assert counts((await get_store(a, store.id)).file_counts) == (
        0,
        completed,
        0,
        30 - completed,
        30,
    )
    assert sum(chunk_rows(running.server.settings.data_dir, store.id).values()) == sum(
        [
            len(await content(a, store.id, f.id))
            for f in await list_store_files(a, store.id, F_COMPLETED)
        ]
    )
    assert use.calls == completed + in_progress  # nothing started after the cancel

    # A finished batch cannot be cancelled.
    err = await rpc_error(
        a.batches.CancelFileBatch(
            file_batches_pb2.CancelFileBatchRequest(vector_store_id=store.id, batch_id=batch.id),
            metadata=a.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(err) == "FILE_BATCH_ENDED"


async def test_cancel_of_a_completed_batch_is_refused(running: Running) -> None:
    a = running.alice
    store_id, ids = await store_with_files(a, 2)
    batch = await create_batch(a, store_id, ids)
    assert (await watch_to_end(a, store_id, batch.id))[-1].file_batch.status == B_COMPLETED
    err = await rpc_error(
        a.batches.CancelFileBatch(
            file_batches_pb2.CancelFileBatchRequest(vector_store_id=store_id, batch_id=batch.id),
            metadata=a.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "completed" in (err.details() or "")
    assert (await get_batch(a, store_id, batch.id)).status == B_COMPLETED
    # Another tenant cannot even see it.
    b = running.bob
    err = await rpc_error(
        b.batches.CancelFileBatch(
            file_batches_pb2.CancelFileBatchRequest(vector_store_id=store_id, batch_id=batch.id),
            metadata=b.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_cancel_that_loses_the_race_with_the_last_file_is_refused(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch's last file ends it between the cancel's first look (in progress) and its
    # write: the cancel must be refused, not answered OK for a batch that ended completed.
    # The race is replayed: the first look is served the row as it was before the end.
    a = running.alice
    store_id, ids = await store_with_files(a, 2)
    batch = await create_batch(a, store_id, ids)
    assert (await watch_to_end(a, store_id, batch.id))[-1].file_batch.status == B_COMPLETED
    batches = running.server.core.batches
    look = batches._row
    looks: list[str] = []

    def first_look_before_the_end(*args: Any) -> Any:
        row = look(*args)
        looks.append(str(row.status))
        return (
            dataclasses.replace(row, status=BatchStatus.IN_PROGRESS.value)
            if len(looks) == 1
            else row
        )

    monkeypatch.setattr(batches, "_row", first_look_before_the_end)
    err = await rpc_error(
        a.batches.CancelFileBatch(
            file_batches_pb2.CancelFileBatchRequest(vector_store_id=store_id, batch_id=batch.id),
            metadata=a.metadata,
        )
    )
    assert looks[:2] == ["completed", "completed"]
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(err) == "FILE_BATCH_ENDED"
    assert "completed" in (err.details() or "")
    monkeypatch.undo()
    ended = await get_batch(a, store_id, batch.id)
    assert ended.status == B_COMPLETED
    assert counts(ended.file_counts) == (0, 2, 0, 0, 2)


async def test_a_detached_file_stays_listed_in_its_batch(running: Running) -> None:
    """The batch's counts include a file detached after it completed, so its list does too,
    with the status the batch recorded."""
    a = running.alice
    store = await create_store(a)
    ids = await upload_all(a, [(f"d{i}.txt", prose(i, 2_000).encode()) for i in range(3)])
    batch = await create_batch(a, store.id, ids)
    assert (await watch_to_end(a, store.id, batch.id, within=60))[-1].file_batch.status == (
        B_COMPLETED
    )
    await a.stores.DeleteVectorStoreFile(
        vector_stores_pb2.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=ids[0]),
        metadata=a.metadata,
    )
    listed = await list_batch_files(a, store.id, batch.id)
    assert sorted(f.id for f in listed) == sorted(ids)
    assert all(f.status == F_COMPLETED for f in listed)
    assert (await get_batch(a, store.id, batch.id)).file_counts.completed == 3
    assert len(await list_store_files(a, store.id)) == 2


async def test_a_request_id_retry_after_the_store_expired_returns_the_batch(
    running: Running,
) -> None:
    a = running.alice
    store = await create_store(a, expires_days=1)
    ids = await upload_all(a, [("e.txt", prose(1, 1_000).encode())])
    first = await create_batch(a, store.id, ids, request_id="retry-me")
    await watch_to_end(a, store.id, first.id, within=60)
    running.server.core.stores.clock = lambda: time.time() + 3 * 86_400
    again = await create_batch(a, store.id, ids, request_id="retry-me")
    assert again.id == first.id
    with pytest.raises(aio.AioRpcError) as refused:
        await create_batch(a, store.id, ids, request_id="a-new-one")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
