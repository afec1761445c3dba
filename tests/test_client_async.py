"""``quiver.client.AsyncClient``: every public method against the in-process server, mirroring
tests/test_client_sync.py. Also the sync ``Client`` against the same server, called through
``asyncio.to_thread`` (the server runs on the test's loop, so a blocking call must not)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf.message import Message
from quiver.client import (
    AsyncClient,
    AuthenticationError,
    BatchFile,
    BatchUpdate,
    ChunkingStrategy,
    Client,
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

from tests.support.inproc import Running

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

DOCS: dict[str, bytes] = {
    "otters.md": b"# Otters\nSea otters hold hands while they sleep so they do not drift apart.",
    "owls.txt": b"Owls turn their heads up to 270 degrees and hunt silently at night.",
    "octopus.txt": b"An octopus has three hearts and blue blood; it tastes with its arms.",
}
BINARY = bytes(range(256)) * 8  # NUL bytes: unsupported_file
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


def long_text(seed: int, size: int = 120_000) -> bytes:
    """Distinct plain text of about ``size`` bytes: takes the ingest pool a moment."""
    words = [f"w{seed}x{i % 997}" for i in range(size // 8)]
    lines = [" ".join(words[i : i + 12]) + "." for i in range(0, len(words), 12)]
    return "\n".join(lines).encode()


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


def subject() -> str:
    return f"async-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def client(running: Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        target=running.target,
        api_key=running.alice.key,
        on_behalf_of=subject(),
        timeout=30,
        max_retries=1,
        retry_backoff=0.05,
    ) as c:
        yield c


async def wait_store_file(
    client: AsyncClient, store_id: str, file_id: str, timeout: float = 20
) -> VectorStoreFile:
    async with asyncio.timeout(timeout):
        while True:
            f = await client.vector_stores.files.retrieve(file_id, vector_store_id=store_id)
            if f.status != "in_progress":
                return f
            await asyncio.sleep(0.05)


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
    assert uploaded["path"].filename == "from-path.txt"
    assert uploaded["str path"].filename == "from-path.txt"
    assert uploaded["handle"].filename == "from-path.txt"
    assert uploaded["bytes"].filename == "upload.bin"
    assert uploaded["tuple"].filename == "named.md"
    assert uploaded["renamed"].filename == "renamed.txt"
    assert uploaded["renamed"].purpose == "batch"


async def test_files_retrieve_content_delete(client: AsyncClient) -> None:
    data = (b"0123456789abcdef" * 70_000)[: 1024 * 1024 + 99]  # two stream messages
    f = await client.files.upload(("big.txt", data))
    assert await client.files.retrieve(f.id) == f
    assert await client.files.content(f.id) == data
    assert await client.files.delete(f.id) == Deleted(f.id, "file", True)
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
    assert len(pages) == 4, pages
    assert [f.id for f in await collect(client.files.list(order="asc", page_size=3))] == ids
    assert await collect(client.files.list(purpose="batch")) == []


# -- vector stores -----------------------------------------------------------------------------


async def test_stores_create_retrieve_list_update_delete(client: AsyncClient) -> None:
    stores = client.vector_stores
    store = await stores.create(
        name="docs",
        metadata={"team": "search"},
        expires_after=ExpiresAfter(days=7),
        embedding_model="hash",
        embedding_dimensions=64,
    )
    assert isinstance(store, VectorStore)
    assert_plain(store, "store")
    assert store.id.startswith("vs_") and store.object == "vector_store"
    assert store.metadata == {"team": "search"}
    assert store.expires_after == ExpiresAfter(7, "last_active_at")
    assert store.expires_at is not None
    assert (store.embedding_model, store.embedding_dimensions) == ("hash", 64)
    assert (await stores.retrieve(store.id)).embedding_dimensions == 64

    others = [(await stores.create(name=f"s{i}")).id for i in range(4)]
    listed = await collect(stores.list(page_size=2))
    assert sorted(s.id for s in listed) == sorted([store.id, *others])
    assert [s.id for s in await collect(stores.list(order="asc", page_size=2))] == [
        store.id,
        *others,
    ]

    renamed = await stores.update(store.id, name="renamed")
    assert renamed.name == "renamed" and renamed.metadata == {"team": "search"}
    cleared = await stores.update(store.id, metadata={})
    assert cleared.metadata == {} and cleared.name == "renamed"
    assert (await stores.retrieve(store.id)).metadata == {}

    assert await stores.delete(store.id) == Deleted(store.id, "vector_store.deleted", True)
    with pytest.raises(NotFoundError):
        await stores.retrieve(store.id)


async def test_search(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="search")
    ids = await upload_docs(client)
    kinds = {"otters.md": "mammal", "owls.txt": "bird", "octopus.txt": "mollusc"}
    batch = await client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id,
        files=[BatchFile(fid, attributes={"kind": kinds[name]}) for name, fid in ids.items()],
    )
    assert batch.file_counts.completed == 3
    search = client.vector_stores.search

    one = await search(store.id, query="which animal has three hearts?")
    assert isinstance(one, SearchResponse)
    assert_plain(one, "search")
    assert isinstance(one.data[0], SearchResult)
    assert one.data[0].filename == "octopus.txt"
    assert one.data[0].attributes == {"kind": "mollusc"}
    assert all(0.0 <= r.score <= 1.0 for r in one.data)

    several = await search(store.id, query=["owls at night", "otters"], max_num_results=2)
    assert several.search_query == ["owls at night", "otters"]
    assert 0 < len(several.data) <= 2

    birds = await search(
        store.id, query="animal", filters={"type": "eq", "key": "kind", "value": "bird"}
    )
    assert [r.filename for r in birds.data] == ["owls.txt"]
    not_birds = await search(
        store.id,
        query="animal",
        filters={"type": "nin", "key": "kind", "value": ["bird", "mammal"]},
    )
    assert [r.filename for r in not_birds.data] == ["octopus.txt"]

    vector_only = await search(store.id, query="octopus three hearts", ranker="none")
    assert vector_only.data[0].filename == "octopus.txt"
    top = vector_only.data[0].score
    strict = await search(
        store.id, query="octopus three hearts", ranker="none", score_threshold=top
    )
    assert strict.data and all(r.score >= top for r in strict.data)
    assert len(strict.data) < len(vector_only.data)
    fused = await search(store.id, query="octopus three hearts", ranker="auto")
    assert fused.data[0].filename == "octopus.txt"


# -- vector store files ------------------------------------------------------------------------


async def test_store_files(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="store-files")
    good = await client.files.upload(("otters.md", DOCS["otters.md"]))
    bad = await client.files.upload(("blob.dat", BINARY))
    files = client.vector_stores.files
    created = await files.create(
        vector_store_id=store.id,
        file_id=good.id,
        attributes={"lang": "en", "rank": 2},
        chunking_strategy=ChunkingStrategy.static(200, 50),
    )
    assert isinstance(created, VectorStoreFile)
    assert_plain(created, "store file")
    assert created.attributes == {"lang": "en", "rank": 2}
    await files.create(vector_store_id=store.id, file_id=bad.id)
    assert (await wait_store_file(client, store.id, good.id)).status == "completed"
    failed = await wait_store_file(client, store.id, bad.id)
    assert failed.status == "failed"
    assert failed.last_error is not None and failed.last_error.code == "unsupported_file"

    everything = await collect(files.list(vector_store_id=store.id, page_size=1))
    assert {f.id for f in everything} == {good.id, bad.id}
    completed = await collect(files.list(vector_store_id=store.id, status="completed"))
    assert [f.id for f in completed] == [good.id]
    failures = await collect(files.list(vector_store_id=store.id, status="failed"))
    assert [f.id for f in failures] == [bad.id]

    updated = await files.update(good.id, vector_store_id=store.id, attributes={"lang": "fr"})
    assert updated.attributes == {"lang": "fr"}
    chunks = await files.content(good.id, vector_store_id=store.id)
    assert "Sea otters hold hands" in "".join(chunks)
    deleted = await files.delete(good.id, vector_store_id=store.id)
    assert deleted == Deleted(good.id, "vector_store.file.deleted", True)
    with pytest.raises(NotFoundError):
        await files.retrieve(good.id, vector_store_id=store.id)


# -- file batches ------------------------------------------------------------------------------


async def test_batch_create_retrieve_cancel_list_files(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="batches")
    ids = await upload_docs(client)
    batches = client.vector_stores.file_batches
    batch = await batches.create(
        vector_store_id=store.id,
        file_ids=list(ids.values()),
        attributes={"batch_id": "import-2024-01"},
    )
    assert isinstance(batch, FileBatch)
    assert_plain(batch, "batch")
    assert batch.id.startswith("vsfb_") and batch.file_counts.total == 3
    final = await batches.poll(batch.id, vector_store_id=store.id)
    assert final.status == "completed" and final.file_counts == FileCounts(completed=3, total=3)
    assert await batches.retrieve(batch.id, vector_store_id=store.id) == final
    with pytest.raises(FailedPreconditionError) as info:
        await batches.cancel(batch.id, vector_store_id=store.id)
    assert info.value.reason == "FILE_BATCH_ENDED"
    listed = await collect(batches.list_files(batch.id, vector_store_id=store.id, page_size=2))
    assert sorted(f.id for f in listed) == sorted(ids.values())
    assert all(f.attributes == {"batch_id": "import-2024-01"} for f in listed)
    none_failed = await collect(
        batches.list_files(batch.id, vector_store_id=store.id, status="failed")
    )
    assert none_failed == []

    specs = await batches.create_and_poll(
        vector_store_id=store.id,
        files=[BatchFile(ids["owls.txt"], attributes={"n": 7})],
    )
    assert specs.status == "completed" and specs.file_counts.completed == 1
    (only,) = await collect(batches.list_files(specs.id, vector_store_id=store.id))
    assert only.attributes == {"n": 7}


async def test_batch_watch(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="watch")
    good = [(await client.files.upload((f"d{i}.txt", long_text(i)))).id for i in range(5)]
    bad = (await client.files.upload(("bin.dat", BINARY))).id
    batches = client.vector_stores.file_batches
    batch = await batches.create(vector_store_id=store.id, file_ids=[*good, bad])
    updates = await collect(batches.watch(batch.id, vector_store_id=store.id))
    assert len(updates) > 1 and all(isinstance(u, BatchUpdate) for u in updates)
    for u in updates:
        assert_plain(u, "update")
    assert updates[0].snapshot and updates[0].batch.status == "in_progress"
    assert not any(u.snapshot for u in updates[1:])
    sequences = [u.sequence for u in updates]
    assert sequences == sorted(set(sequences))
    last = updates[-1].batch
    assert last.status == "completed"
    assert last.file_counts == FileCounts(completed=5, failed=1, total=6)
    assert all(not u.batch.done for u in updates[:-1])
    again = await collect(batches.watch(batch.id, vector_store_id=store.id))
    assert len(again) == 1 and again[0].snapshot and again[0].batch == last


async def test_upload_and_poll_ten_files(client: AsyncClient, tmp_path: Path) -> None:
    store = await client.vector_stores.create(name="ten")
    inputs: list[Any] = []
    for i in range(10):
        path = tmp_path / f"note-{i}.txt"
        path.write_text(f"Note number {i}: the quick brown fox jumps over {i} lazy dogs.\n")
        inputs.append(path if i % 2 else (path.name, path.read_bytes()))
    final = await client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id, files=inputs
    )
    assert isinstance(final, FileBatch)
    assert final.status == "completed"
    assert final.file_counts == FileCounts(completed=10, total=10)
    names = {f.filename for f in await collect(client.files.list())}
    assert names == {f"note-{i}.txt" for i in range(10)}


async def test_create_file_batch_spelling(client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="import")
    ids = await upload_docs(client)
    batch = await client.vector_stores.create_file_batch(
        vector_store_id=store.id,
        file_ids=list(ids.values()),
        attributes={"batch_id": "import-2024-01"},
    )
    assert isinstance(batch, FileBatch) and batch.file_counts.total == 3
    final = await client.vector_stores.file_batches.poll(batch.id, vector_store_id=store.id)
    assert final.file_counts.completed == 3
    hits = await client.vector_stores.search(
        store.id,
        query="which animal has three hearts?",
        filters={"type": "eq", "key": "batch_id", "value": "import-2024-01"},
    )
    assert hits.data[0].filename == "octopus.txt"
    assert all(r.attributes == {"batch_id": "import-2024-01"} for r in hits.data)


# -- auth, tenancy, environment ----------------------------------------------------------------


async def test_api_key_and_on_behalf_of(running: Running) -> None:
    me = subject()
    async with AsyncClient(target=running.target, api_key=running.alice.key, on_behalf_of=me) as a:
        store = await a.vector_stores.create(name="mine")
        f = await a.files.upload(("mine.txt", b"mine"))
        assert (await a.vector_stores.retrieve(store.id)).id == store.id
    async with AsyncClient(
        target=running.target, api_key=running.alice.key, on_behalf_of=subject()
    ) as other:
        with pytest.raises(NotFoundError):
            await other.vector_stores.retrieve(store.id)
        with pytest.raises(NotFoundError):
            await other.files.retrieve(f.id)
        assert await collect(other.files.list()) == []
    async with AsyncClient(target=running.target, api_key=running.bob.key, on_behalf_of=me) as b:
        with pytest.raises(NotFoundError):
            await b.vector_stores.retrieve(store.id)
    async with AsyncClient(target=running.target, api_key="qk_wrong", max_retries=0) as wrong:
        with pytest.raises(AuthenticationError) as info:
            await wrong.vector_stores.create(name="x")
        assert info.value.reason == "INVALID_API_KEY"
        with pytest.raises(AuthenticationError):
            await wrong.files.upload(b"x")
        with pytest.raises(AuthenticationError):
            await collect(wrong.files.list())


async def test_environment_defaults(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    me = subject()
    monkeypatch.setenv("QUIVER_TARGET", running.target)
    monkeypatch.setenv("QUIVER_API_KEY", running.alice.key)
    monkeypatch.setenv("QUIVER_ON_BEHALF_OF", me)
    async with AsyncClient() as from_env:
        assert from_env.target == running.target
        store = await from_env.vector_stores.create(name="env")
    async with AsyncClient(target=running.target, api_key=running.alice.key, on_behalf_of=me) as c:
        assert (await c.vector_stores.retrieve(store.id)).name == "env"
    monkeypatch.setenv("QUIVER_API_KEY", "qk_wrong")
    async with AsyncClient(max_retries=0) as wrong:
        with pytest.raises(AuthenticationError):
            await wrong.vector_stores.retrieve(store.id)


# -- the sync client against the in-process server, off the loop -------------------------------


async def test_sync_client_through_to_thread(running: Running, tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(DOCS["octopus.txt"])
    client = Client(target=running.target, api_key=running.alice.key, on_behalf_of=subject())

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), 30)

    try:
        store = await call(client.vector_stores.create, name="threaded")
        final = await call(
            client.vector_stores.file_batches.upload_and_poll,
            vector_store_id=store.id,
            files=[path],
        )
        assert final.status == "completed" and final.file_counts.completed == 1
        hits = await call(client.vector_stores.search, store.id, query="three hearts")
        assert hits.data[0].filename == "a.txt"
        listed = await call(lambda: list(client.vector_stores.list()))
        assert [s.id for s in listed] == [store.id]
    finally:
        client.close()
