"""The asyncio ``quiver.client.AsyncClient``: every public method against a real server.

The server runs on its own event loop in a daemon thread (tests/server_thread.py), shared by
the module. Each test gets a client narrowed to a fresh on-behalf-of id, so tests sharing the
server never see each other's files and stores. The same tests run for both clients:
tests/test_client_sync.py is generated from tests/test_client_async.py (make unasync).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from google.protobuf.message import Message
from quiver.client import (
    AsyncClient,
    AuthenticationError,
    BatchFile,
    BatchUpdate,
    ChunkingStrategy,
    Deleted,
    ExpiresAfter,
    FailedPreconditionError,
    File,
    FileBatch,
    FileCounts,
    NotFoundError,
    SearchResponse,
    SearchResult,
    VectorStore,
    VectorStoreFile,
)

from tests.support.server_thread import Background, serve_in_thread

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

DOCS: dict[str, bytes] = {
    "otters.md": b"# Otters\nSea otters hold hands while they sleep so they do not drift apart.",
    "owls.txt": b"Owls turn their heads up to 270 degrees and hunt silently at night.",
    "octopus.txt": b"An octopus has three hearts and blue blood; it tastes with its arms.",
}
BINARY = bytes(range(256)) * 8  # NUL bytes: unsupported_file


def subject() -> str:
    return f"async-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    with serve_in_thread(tmp_path_factory.mktemp("client") / "data") as server:
        yield server


@pytest.fixture
async def client(background: Background) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        target=background.target,
        api_key=background.alice_key,
        on_behalf_of=subject(),
        timeout=30,
        max_retries=1,
        retry_backoff=0.05,
    ) as c:
        yield c


# -- helpers ---------------------------------------------------------------------------------

PLAIN = (str, int, float, bool, type(None))


def assert_plain(value: Any, where: str = "value") -> None:
    """Dataclasses, lists, dicts and scalars all the way down: no protobuf anywhere."""
    assert not isinstance(value, Message), f"{where} is a protobuf message"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            assert_plain(getattr(value, f.name), f"{where}.{f.name}")
    elif isinstance(value, list):
        assert type(value) is list, f"{where} is {type(value)!r}, not a list"
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        assert type(value) is dict, f"{where} is {type(value)!r}, not a dict"
        for k, item in value.items():
            assert isinstance(k, str)
            assert_plain(item, f"{where}[{k!r}]")
    else:
        assert isinstance(value, PLAIN), f"{where} is {type(value)!r}"


async def collect(items: AsyncIterator[T]) -> list[T]:
    """Every item of a paged or streamed listing."""
    collected: list[T] = []
    async for item in items:
        collected.append(item)
    return collected


def long_text(seed: int, size: int = 120_000) -> bytes:
    """Distinct plain text of about ``size`` bytes: takes the ingest pool a moment."""
    words = [f"w{seed}x{i % 997}" for i in range(size // 8)]
    lines = [" ".join(words[i : i + 12]) + "." for i in range(0, len(words), 12)]
    return "\n".join(lines).encode()


async def wait_store_file(
    client: AsyncClient, store_id: str, file_id: str, timeout: float = 20
) -> VectorStoreFile:
    for _ in range(round(timeout / 0.05)):
        f = await client.vector_stores.files.retrieve(file_id, vector_store_id=store_id)
        if f.status != "in_progress":
            return f
        await asyncio.sleep(0.05)
    raise AssertionError(f"{file_id} still in_progress after {timeout}s")


async def upload_docs(client: AsyncClient) -> dict[str, str]:
    """filename -> file id."""
    return {name: (await client.files.upload((name, data))).id for name, data in DOCS.items()}


# -- files -------------------------------------------------------------------------------------


async def test_files_upload_every_input_kind(client: AsyncClient, tmp_path: Path) -> None:
    data = b"quiver accepts paths, bytes, tuples and open files\n"
    path = tmp_path / "from-path.txt"
    path.write_bytes(data)
    with path.open("rb") as handle:
        from_handle = await client.files.upload(handle)
    uploaded = {
        "path": await client.files.upload(path),
        "str path": await client.files.upload(str(path)),
        "bytes": await client.files.upload(data),
        "tuple": await client.files.upload(("named.md", data)),
        "handle": from_handle,
        "renamed": await client.files.upload(data, filename="renamed.txt", purpose="batch"),
    }
    digest = hashlib.sha256(data).hexdigest()
    for kind, f in uploaded.items():
        assert isinstance(f, File), kind
        assert_plain(f, kind)
        assert f.id.startswith("file-"), kind
        assert f.bytes == len(data), kind
        assert f.sha256 == digest, kind
        assert f.object == "file"
        assert f.created_at > 0
    assert uploaded["path"].filename == "from-path.txt"
    assert uploaded["str path"].filename == "from-path.txt"
    assert uploaded["handle"].filename == "from-path.txt"
    assert uploaded["bytes"].filename == "upload.bin"
    assert uploaded["tuple"].filename == "named.md"
    assert uploaded["renamed"].filename == "renamed.txt"
    assert uploaded["renamed"].purpose == "batch"
    assert uploaded["path"].purpose == "assistants"
    assert len({f.id for f in uploaded.values()}) == len(uploaded)


async def test_files_upload_larger_than_one_piece(client: AsyncClient) -> None:
    data = (b"0123456789abcdef" * 70_000)[: 1024 * 1024 + 4321]  # two stream messages
    f = await client.files.upload(("big.txt", data))
    assert f.bytes == len(data)
    assert await client.files.content(f.id) == data


async def test_files_retrieve_content_delete(client: AsyncClient) -> None:
    f = await client.files.upload(("note.txt", b"remember the milk"))
    got = await client.files.retrieve(f.id)
    assert got == f
    assert await client.files.content(f.id) == b"remember the milk"
    deleted = await client.files.delete(f.id)
    assert deleted == Deleted(f.id, "file", True)
    with pytest.raises(NotFoundError):
        await client.files.retrieve(f.id)
    with pytest.raises(NotFoundError):
        await client.files.content(f.id)


async def test_files_list_iterates_across_pages(client: AsyncClient) -> None:
    ids = [(await client.files.upload((f"f{i}.txt", f"file {i}".encode()))).id for i in range(7)]
    pages: list[str] = []
    transport: Any = client._transport
    real_call = transport.call

    async def counting(method: Any, request: Any, **kw: Any) -> Any:
        if type(request).__name__ == "ListFilesRequest":
            pages.append(request.after)
        return await real_call(method, request, **kw)

    transport.call = counting
    listed = await collect(client.files.list(page_size=2))
    assert sorted(f.id for f in listed) == sorted(ids)
    assert len(pages) == 4, pages  # 2 + 2 + 2 + 1
    assert pages[0] == ""
    assert all(isinstance(f, File) for f in listed)
    ascending = [f.id async for f in client.files.list(order="asc", page_size=3)]
    assert ascending == ids
    assert [f.id async for f in client.files.list(purpose="batch")] == []


# -- vector stores -----------------------------------------------------------------------------


async def test_stores_create_with_options_and_retrieve(client: AsyncClient) -> None:
    store = await client.vector_stores.create(
        name="docs",
        metadata={"team": "search", "env": "test"},
        expires_after=ExpiresAfter(days=7),
        embedding_model="hash",
        embedding_dimensions=64,
    )
    assert isinstance(store, VectorStore)
    assert_plain(store, "store")
    assert store.id.startswith("vs_")
    assert store.object == "vector_store"
    assert store.name == "docs"
    assert store.metadata == {"team": "search", "env": "test"}
    assert store.expires_after == ExpiresAfter(days=7, anchor="last_active_at")
    assert store.expires_at is not None and store.expires_at > store.created_at
    assert store.embedding_model == "hash"
    assert store.embedding_dimensions == 64
    assert store.file_counts == FileCounts()
    assert store.status == "completed"
    got = await client.vector_stores.retrieve(store.id)
    assert got.id == store.id
    assert got.metadata == store.metadata
    assert got.embedding_dimensions == 64
    plain = await client.vector_stores.create()
    assert plain.expires_after is None and plain.expires_at is None
    assert plain.metadata == {}


async def test_stores_list_across_pages(client: AsyncClient) -> None:
    ids = [(await client.vector_stores.create(name=f"s{i}")).id for i in range(5)]
    listed = await collect(client.vector_stores.list(page_size=2))
    assert sorted(s.id for s in listed) == sorted(ids)
    assert [s.id async for s in client.vector_stores.list(order="asc", page_size=2)] == ids
    assert all(isinstance(s, VectorStore) for s in listed)


async def test_stores_update_and_delete(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="before", metadata={"k": "v"})
    renamed = await client.vector_stores.update(store.id, name="after")
    assert renamed.name == "after"
    assert renamed.metadata == {"k": "v"}  # untouched: not in the update
    changed = await client.vector_stores.update(store.id, metadata={"a": "1", "b": "2"})
    assert changed.metadata == {"a": "1", "b": "2"}
    assert changed.name == "after"
    cleared = await client.vector_stores.update(store.id, metadata={})
    assert cleared.metadata == {}
    assert (await client.vector_stores.retrieve(store.id)).metadata == {}
    expiring = await client.vector_stores.update(store.id, expires_after=ExpiresAfter(days=3))
    assert expiring.expires_after == ExpiresAfter(3)
    deleted = await client.vector_stores.delete(store.id)
    assert deleted == Deleted(store.id, "vector_store.deleted", True)
    with pytest.raises(NotFoundError):
        await client.vector_stores.retrieve(store.id)


async def test_search_query_forms_filters_ranker_threshold(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="search")
    ids = await upload_docs(client)
    kinds = {"otters.md": "mammal", "owls.txt": "bird", "octopus.txt": "mollusc"}
    batch = await client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id,
        files=[
            BatchFile(fid, attributes={"kind": kinds[name], "legs": len(name)})
            for name, fid in ids.items()
        ],
    )
    assert batch.file_counts.completed == 3
    search = client.vector_stores.search

    one = await search(store.id, query="which animal has three hearts?")
    assert isinstance(one, SearchResponse)
    assert_plain(one, "search")
    assert one.search_query == ["which animal has three hearts?"]
    assert one.data and isinstance(one.data[0], SearchResult)
    assert one.data[0].filename == "octopus.txt"
    assert one.data[0].file_id == ids["octopus.txt"]
    assert "three hearts" in one.data[0].text
    assert one.data[0].attributes == {"kind": "mollusc", "legs": len("octopus.txt")}
    assert all(0.0 <= r.score <= 1.0 for r in one.data)
    assert [r.score for r in one.data] == sorted((r.score for r in one.data), reverse=True)

    several = await search(
        store.id, query=["owls hunt at night", "sleeping otters"], max_num_results=2
    )
    assert several.search_query == ["owls hunt at night", "sleeping otters"]
    assert len(several.data) <= 2
    assert {r.filename for r in several.data} <= set(DOCS)

    eq = await search(
        store.id, query="animal", filters={"type": "eq", "key": "kind", "value": "bird"}
    )
    assert [r.filename for r in eq.data] == ["owls.txt"]
    either = await search(
        store.id,
        query="animal",
        filters={
            "type": "or",
            "filters": [
                {"type": "eq", "key": "kind", "value": "bird"},
                {"type": "in", "key": "kind", "value": ["mollusc"]},
            ],
        },
    )
    assert {r.filename for r in either.data} == {"owls.txt", "octopus.txt"}
    both = await search(
        store.id,
        query="animal",
        filters={
            "type": "and",
            "filters": [
                {"type": "ne", "key": "kind", "value": "bird"},
                {"type": "gt", "key": "legs", "value": 9},
            ],
        },
    )
    assert {r.filename for r in both.data} == {"octopus.txt"}

    vector_only = await search(store.id, query="three hearts blue blood", ranker="none")
    assert vector_only.data[0].filename == "octopus.txt"
    fused = await search(store.id, query="three hearts blue blood", ranker="auto")
    assert fused.data[0].filename == "octopus.txt"

    everything = await search(store.id, query="octopus three hearts", ranker="none")
    top = everything.data[0].score
    strict = await search(
        store.id, query="octopus three hearts", ranker="none", score_threshold=top
    )
    assert strict.data and all(r.score >= top for r in strict.data)
    assert len(strict.data) < len(everything.data)
    nothing = await search(
        store.id, query="octopus", filters={"type": "eq", "key": "kind", "value": "x"}
    )
    assert nothing.data == []


# -- vector store files ------------------------------------------------------------------------


async def test_store_files_create_retrieve_list_update_content_delete(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="store-files")
    good = await client.files.upload(("otters.md", DOCS["otters.md"]))
    bad = await client.files.upload(("blob.dat", BINARY))
    created = await client.vector_stores.files.create(
        vector_store_id=store.id,
        file_id=good.id,
        attributes={"lang": "en", "rank": 2, "draft": False},
        chunking_strategy=ChunkingStrategy.static(200, 50),
    )
    assert isinstance(created, VectorStoreFile)
    assert_plain(created, "store file")
    assert created.id == good.id
    assert created.object == "vector_store.file"
    assert created.vector_store_id == store.id
    assert created.attributes == {"lang": "en", "rank": 2, "draft": False}
    assert created.chunking_strategy == ChunkingStrategy.static(200, 50)
    await client.vector_stores.files.create(vector_store_id=store.id, file_id=bad.id)

    done = await wait_store_file(client, store.id, good.id)
    assert done.status == "completed" and done.last_error is None
    assert done.usage_bytes > 0
    failed = await wait_store_file(client, store.id, bad.id)
    assert failed.status == "failed"
    assert failed.last_error is not None and failed.last_error.code == "unsupported_file"

    files = client.vector_stores.files
    assert {f.id async for f in files.list(vector_store_id=store.id)} == {good.id, bad.id}
    assert [f.id async for f in files.list(vector_store_id=store.id, status="completed")] == [
        good.id
    ]
    assert [f.id async for f in files.list(vector_store_id=store.id, status="failed")] == [bad.id]
    assert [f.id async for f in files.list(vector_store_id=store.id, status="cancelled")] == []
    assert len(await collect(files.list(vector_store_id=store.id, page_size=1))) == 2
    with pytest.raises(ValueError, match="status filter"):
        await collect(files.list(vector_store_id=store.id, status="done"))

    updated = await files.update(good.id, vector_store_id=store.id, attributes={"lang": "fr"})
    assert updated.attributes == {"lang": "fr"}
    assert (await files.retrieve(good.id, vector_store_id=store.id)).attributes == {"lang": "fr"}

    chunks = await files.content(good.id, vector_store_id=store.id)
    assert isinstance(chunks, list) and chunks
    assert "Sea otters hold hands" in "".join(chunks)

    deleted = await files.delete(good.id, vector_store_id=store.id)
    assert deleted == Deleted(good.id, "vector_store.file.deleted", True)
    with pytest.raises(NotFoundError):
        await files.retrieve(good.id, vector_store_id=store.id)
    assert (await client.files.retrieve(good.id)).id == good.id  # the file itself stays


# -- file batches ------------------------------------------------------------------------------


async def test_batch_create_with_file_ids_retrieve_cancel_list_files(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="batches")
    ids = await upload_docs(client)
    batches = client.vector_stores.file_batches
    batch = await batches.create(
        vector_store_id=store.id,
        file_ids=list(ids.values()),
        attributes={"batch_id": "import-2024-01", "priority": 1.5},
    )
    assert isinstance(batch, FileBatch)
    assert_plain(batch, "batch")
    assert batch.id.startswith("vsfb_")
    assert batch.object == "vector_store.file_batch"
    assert batch.vector_store_id == store.id
    assert batch.file_counts.total == 3
    final = await batches.poll(batch.id, vector_store_id=store.id)
    assert final.status == "completed" and final.done
    assert final.file_counts == FileCounts(completed=3, total=3)
    assert await batches.retrieve(batch.id, vector_store_id=store.id) == final
    with pytest.raises(FailedPreconditionError) as info:
        await batches.cancel(batch.id, vector_store_id=store.id)
    assert info.value.reason == "FILE_BATCH_ENDED"
    listed = await collect(batches.list_files(batch.id, vector_store_id=store.id, page_size=2))
    assert sorted(f.id for f in listed) == sorted(ids.values())
    assert all(f.attributes == {"batch_id": "import-2024-01", "priority": 1.5} for f in listed)
    assert (
        await collect(batches.list_files(batch.id, vector_store_id=store.id, status="failed")) == []
    )


async def test_batch_create_with_per_file_specs(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="specs")
    ids = await upload_docs(client)
    batches = client.vector_stores.file_batches
    batch = await batches.create_and_poll(
        vector_store_id=store.id,
        files=[
            BatchFile(ids["otters.md"], attributes={"n": 1}),
            BatchFile(
                ids["owls.txt"],
                attributes={"n": 2},
                chunking_strategy=ChunkingStrategy.static(100, 0),
            ),
            BatchFile(ids["octopus.txt"]),
        ],
    )
    assert batch.status == "completed"
    assert batch.file_counts.completed == 3
    by_id = {f.id: f async for f in batches.list_files(batch.id, vector_store_id=store.id)}
    assert by_id[ids["otters.md"]].attributes == {"n": 1}
    assert by_id[ids["owls.txt"]].attributes == {"n": 2}
    assert by_id[ids["owls.txt"]].chunking_strategy == ChunkingStrategy.static(100, 0)
    assert by_id[ids["octopus.txt"]].attributes == {}
    auto = by_id[ids["octopus.txt"]].chunking_strategy  # auto: reported as 800 / 400
    assert (auto.max_chunk_size_tokens, auto.chunk_overlap_tokens) == (800, 400)


async def test_batch_watch_snapshot_then_changes_to_terminal(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="watch")
    # big enough that the batch is still running when the watch starts
    good = [(await client.files.upload((f"doc{i}.txt", long_text(i)))).id for i in range(5)]
    bad = (await client.files.upload(("bin.dat", BINARY))).id
    batches = client.vector_stores.file_batches
    batch = await batches.create(vector_store_id=store.id, file_ids=[*good, bad])
    updates = await collect(batches.watch(batch.id, vector_store_id=store.id))
    assert len(updates) > 1 and all(isinstance(u, BatchUpdate) for u in updates)
    for u in updates:
        assert_plain(u, "update")
    assert updates[0].snapshot
    assert updates[0].batch.status == "in_progress"
    assert not any(u.snapshot for u in updates[1:])
    sequences = [u.sequence for u in updates]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    last = updates[-1].batch
    assert last.done and last.status == "completed"
    assert last.file_counts == FileCounts(completed=5, failed=1, total=6)
    assert all(not u.batch.done for u in updates[:-1])
    changed = {f.file_id: f for u in updates[1:] for f in u.files}
    assert set(changed) <= {*good, bad}
    if bad in changed:  # unless it had failed before the watch began
        assert changed[bad].status == "failed"
        error = changed[bad].last_error
        assert error is not None and error.code == "unsupported_file"
    failed = await collect(batches.list_files(batch.id, vector_store_id=store.id, status="failed"))
    assert [f.id for f in failed] == [bad]
    # a finished batch: its snapshot, then the stream ends
    again = await collect(batches.watch(batch.id, vector_store_id=store.id))
    assert len(again) == 1 and again[0].snapshot and again[0].batch == last
    # resuming after the last sequence seen sends nothing older
    resumed = await collect(
        batches.watch(batch.id, vector_store_id=store.id, after_sequence=sequences[-1])
    )
    assert all(u.sequence > sequences[-1] or u.snapshot for u in resumed)


async def test_upload_and_poll_ten_files(client: AsyncClient, tmp_path: Path) -> None:
    store = await client.vector_stores.create(name="ten")
    paths: list[Path] = []
    for i in range(10):
        path = tmp_path / f"note-{i}.txt"
        path.write_text(f"Note number {i}: the quick brown fox jumps over {i} lazy dogs.\n")
        paths.append(path)
    final = await client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id, files=paths, attributes={"batch_id": "ten"}
    )
    assert isinstance(final, FileBatch)
    assert final.status == "completed"
    assert final.file_counts == FileCounts(completed=10, total=10)
    assert (await client.vector_stores.retrieve(store.id)).file_counts.completed == 10
    names = {f.filename async for f in client.files.list()}
    assert names == {p.name for p in paths}


async def test_upload_and_poll_every_input_kind(client: AsyncClient, tmp_path: Path) -> None:
    store = await client.vector_stores.create(name="kinds")
    path = tmp_path / "a.txt"
    path.write_bytes(DOCS["octopus.txt"])
    inputs: list[Any] = [path, str(path), ("b.md", DOCS["otters.md"]), DOCS["owls.txt"]]
    final = await client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id, files=inputs, max_concurrency=1
    )
    assert final.status == "completed" and final.file_counts.completed == 4
    names = sorted([f.filename async for f in client.files.list()])
    assert names == ["a.txt", "a.txt", "b.md", "upload.bin"]


async def test_upload_and_poll_uploads_at_most_max_concurrency_at_once(
    client: AsyncClient, tmp_path: Path
) -> None:
    store = await client.vector_stores.create(name="bounded")
    real_upload = client.files.upload
    active: list[int] = []
    seen: list[int] = []

    async def slow_upload(file: Any, **kwargs: Any) -> File:
        active.append(1)  # list operations: atomic for the blocking client's threads too
        seen.append(len(active))
        try:
            await asyncio.sleep(0.1)
            return await real_upload(file, **kwargs)
        finally:
            active.pop()

    cast(Any, client.files).upload = slow_upload
    for limit in (1, 3):
        seen.clear()
        files = [(f"n{limit}-{i}.txt", f"note {i} of {limit}".encode()) for i in range(6)]
        final = await client.vector_stores.file_batches.upload_and_poll(
            vector_store_id=store.id, files=files, max_concurrency=limit
        )
        assert final.file_counts.completed == 6
        assert len(seen) == 6 and max(seen) == limit, (limit, seen)


async def test_upload_and_poll_checks_max_concurrency_and_stops_at_a_failure(
    client: AsyncClient, tmp_path: Path
) -> None:
    store = await client.vector_stores.create(name="refused")
    path = tmp_path / "ok.txt"
    path.write_bytes(b"fine")
    batches = client.vector_stores.file_batches
    for bad in (0, -1, 2.5, True, "4", None):
        with pytest.raises(ValueError, match="max_concurrency") as info:
            await batches.upload_and_poll(
                vector_store_id=store.id, files=[path], max_concurrency=cast(Any, bad)
            )
        assert repr(bad) in str(info.value)
    assert await collect(client.files.list()) == []  # refused before any upload
    with pytest.raises(FileNotFoundError):
        await batches.upload_and_poll(
            vector_store_id=store.id, files=[tmp_path / "missing.txt"], max_concurrency=2
        )
    assert (await client.vector_stores.retrieve(store.id)).file_counts.total == 0


async def test_create_file_batch_spelling_and_filtered_search(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="import")
    ids = await upload_docs(client)
    batch = await client.vector_stores.create_file_batch(
        vector_store_id=store.id,
        file_ids=list(ids.values()),
        attributes={"batch_id": "import-2024-01"},
    )
    assert isinstance(batch, FileBatch)
    assert batch.file_counts.total == 3
    final = await client.vector_stores.file_batches.poll(batch.id, vector_store_id=store.id)
    assert final.file_counts.completed == 3
    hits = await client.vector_stores.search(
        store.id,
        query="which animal has three hearts?",
        filters={"type": "eq", "key": "batch_id", "value": "import-2024-01"},
    )
    assert hits.data[0].filename == "octopus.txt"
    assert all(r.attributes["batch_id"] == "import-2024-01" for r in hits.data)


async def test_create_with_request_id_is_idempotent(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="retry")
    ids = list((await upload_docs(client)).values())
    batches = client.vector_stores.file_batches
    first = await batches.create(
        vector_store_id=store.id, file_ids=ids, request_id=f"req-{store.id}"
    )
    second = await batches.create(
        vector_store_id=store.id, file_ids=ids, request_id=f"req-{store.id}"
    )
    assert second.id == first.id
    await batches.poll(first.id, vector_store_id=store.id)


# -- auth, tenancy and the environment --------------------------------------------------------


async def test_api_key_and_on_behalf_of_are_sent(background: Background) -> None:
    me = subject()
    async with AsyncClient(
        target=background.target, api_key=background.alice_key, on_behalf_of=me
    ) as a:
        store = await a.vector_stores.create(name="mine")
        f = await a.files.upload(("mine.txt", b"mine"))
    async with AsyncClient(
        target=background.target, api_key=background.alice_key, on_behalf_of=me
    ) as same:
        assert (await same.vector_stores.retrieve(store.id)).id == store.id
        assert (await same.files.retrieve(f.id)).id == f.id
    async with AsyncClient(
        target=background.target, api_key=background.alice_key, on_behalf_of=subject()
    ) as other:
        with pytest.raises(NotFoundError):
            await other.vector_stores.retrieve(store.id)
        with pytest.raises(NotFoundError):
            await other.files.retrieve(f.id)
        assert store.id not in [s.id async for s in other.vector_stores.list()]
    async with AsyncClient(target=background.target, api_key=background.alice_key) as tenant_wide:
        assert tenant_wide.target == background.target  # the whole tenant, no subject: not its
        with pytest.raises(NotFoundError):
            await tenant_wide.vector_stores.retrieve(store.id)
    async with AsyncClient(
        target=background.target, api_key=background.bob_key, on_behalf_of=me
    ) as bob:
        assert bob.target == background.target  # another tenant, the same subject: not its
        with pytest.raises(NotFoundError):
            await bob.vector_stores.retrieve(store.id)


async def test_wrong_or_missing_key_is_an_authentication_error(background: Background) -> None:
    async with AsyncClient(target=background.target, api_key="qk_wrong", max_retries=0) as wrong:
        with pytest.raises(AuthenticationError) as info:
            await wrong.vector_stores.create(name="x")
        assert info.value.reason == "INVALID_API_KEY"
        with pytest.raises(AuthenticationError):
            await collect(wrong.files.list())
        with pytest.raises(AuthenticationError):
            await wrong.files.upload(b"data")
    async with AsyncClient(target=background.target, api_key="", max_retries=0) as missing:
        with pytest.raises(AuthenticationError) as info:
            await missing.vector_stores.retrieve("vs_x")
        assert info.value.reason == "MISSING_API_KEY"


async def test_environment_defaults(
    background: Background, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = subject()
    monkeypatch.setenv("QUIVER_TARGET", background.target)
    monkeypatch.setenv("QUIVER_API_KEY", background.alice_key)
    monkeypatch.setenv("QUIVER_ON_BEHALF_OF", me)
    async with AsyncClient() as from_env:
        assert from_env.target == background.target
        store = await from_env.vector_stores.create(name="env")
    async with AsyncClient(
        target=background.target, api_key=background.alice_key, on_behalf_of=me
    ) as c:
        assert (await c.vector_stores.retrieve(store.id)).name == "env"
    # arguments win over the environment
    monkeypatch.setenv("QUIVER_API_KEY", "qk_wrong")
    async with AsyncClient(api_key=background.alice_key, on_behalf_of=me) as explicit:
        assert (await explicit.vector_stores.retrieve(store.id)).id == store.id
    async with AsyncClient(max_retries=0) as wrong:
        assert wrong.target == background.target  # from the environment, with its wrong key
        with pytest.raises(AuthenticationError):
            await wrong.vector_stores.retrieve(store.id)
    monkeypatch.delenv("QUIVER_TARGET")
    async with AsyncClient() as default:
        assert default.target == "localhost:50051"
