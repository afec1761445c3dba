"""The blocking ``quiver.client.Client``: every public method against a real server.

The server runs on its own event loop in a daemon thread (the sync client blocks, so it must
not share the test's loop). Each test gets a client narrowed to a fresh on-behalf-of id, so
tests sharing the module's server never see each other's files and stores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from quiver.client import (
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
from quiver.server.app import QuiverServer
from quiver.server.config import Settings

from tests.conftest import keyed

pytestmark = pytest.mark.timeout(60)

DOCS: dict[str, bytes] = {
    "otters.md": b"# Otters\nSea otters hold hands while they sleep so they do not drift apart.",
    "owls.txt": b"Owls turn their heads up to 270 degrees and hunt silently at night.",
    "octopus.txt": b"An octopus has three hearts and blue blood; it tastes with its arms.",
}
BINARY = bytes(range(256)) * 8  # NUL bytes: unsupported_file


# -- a server on a background thread -------------------------------------------------------


@dataclass
class Background:
    target: str
    alice_key: str
    bob_key: str


class _ServerThread:
    """A QuiverServer on a new event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: QuiverServer | None = None

    def start(self) -> int:
        self.thread.start()

        async def boot() -> int:
            self.server = QuiverServer(self.settings)
            return await self.server.start()

        return asyncio.run_coroutine_threadsafe(boot(), self.loop).result(timeout=30)

    def stop(self) -> None:
        try:
            if self.server is not None:
                done = asyncio.run_coroutine_threadsafe(self.server.stop(grace=1.0), self.loop)
                done.result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


@pytest.fixture(scope="module")
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    base = Settings(
        http_listen="127.0.0.1:0",
        listen="127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("sync") / "data",
        ingest_workers=2,
    )
    cfg, keys = keyed(base)
    runner = _ServerThread(cfg)
    try:
        port = runner.start()
        yield Background(f"127.0.0.1:{port}", keys["alice"], keys["bob"])
    finally:
        runner.stop()


def subject() -> str:
    return f"sync-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(background: Background) -> Iterator[Client]:
    with Client(
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


def long_text(seed: int, size: int = 120_000) -> bytes:
    """Distinct plain text of about ``size`` bytes: takes the ingest pool a moment."""
    words = [f"w{seed}x{i % 997}" for i in range(size // 8)]
    lines = [" ".join(words[i : i + 12]) + "." for i in range(0, len(words), 12)]
    return "\n".join(lines).encode()


def wait_store_file(
    client: Client, store_id: str, file_id: str, timeout: float = 20
) -> VectorStoreFile:
    deadline = time.monotonic() + timeout
    while True:
        f = client.vector_stores.files.retrieve(file_id, vector_store_id=store_id)
        if f.status != "in_progress":
            return f
        assert time.monotonic() < deadline, f"{file_id} still in_progress after {timeout}s"
        time.sleep(0.05)


def upload_docs(client: Client) -> dict[str, str]:
    """filename -> file id."""
    return {name: client.files.upload((name, data)).id for name, data in DOCS.items()}


def loaded_store(client: Client, attributes: dict[str, Any] | None = None) -> str:
    store = client.vector_stores.create(name="animals")
    ids = upload_docs(client)
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=list(ids.values()), attributes=attributes
    )
    assert batch.status == "completed", batch
    assert batch.file_counts.completed == len(DOCS)
    return store.id


# -- files -------------------------------------------------------------------------------------


def test_files_upload_every_input_kind(client: Client, tmp_path: Path) -> None:
    data = b"quiver accepts paths, bytes, tuples and open files\n"
    path = tmp_path / "from-path.txt"
    path.write_bytes(data)
    with path.open("rb") as handle:
        from_handle = client.files.upload(handle)
    uploaded = {
        "path": client.files.upload(path),
        "str path": client.files.upload(str(path)),
        "bytes": client.files.upload(data),
        "tuple": client.files.upload(("named.md", data)),
        "handle": from_handle,
        "renamed": client.files.upload(data, filename="renamed.txt", purpose="batch"),
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


def test_files_upload_larger_than_one_piece(client: Client) -> None:
    data = (b"0123456789abcdef" * 70_000)[: 1024 * 1024 + 4321]  # two stream messages
    f = client.files.upload(("big.txt", data))
    assert f.bytes == len(data)
    assert client.files.content(f.id) == data


def test_files_retrieve_content_delete(client: Client) -> None:
    f = client.files.upload(("note.txt", b"remember the milk"))
    got = client.files.retrieve(f.id)
    assert got == f
    assert client.files.content(f.id) == b"remember the milk"
    deleted = client.files.delete(f.id)
    assert deleted == Deleted(f.id, "file", True)
    with pytest.raises(NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(NotFoundError):
        client.files.content(f.id)


def test_files_list_iterates_across_pages(client: Client) -> None:
    ids = [client.files.upload((f"f{i}.txt", f"file {i}".encode())).id for i in range(7)]
    pages: list[str] = []
    transport: Any = client._transport
    real_call = transport.call

    def counting(method: Any, request: Any, **kw: Any) -> Any:
        if type(request).__name__ == "ListFilesRequest":
            pages.append(request.after)
        return real_call(method, request, **kw)

    transport.call = counting
    listed = list(client.files.list(page_size=2))
    assert sorted(f.id for f in listed) == sorted(ids)
    assert len(pages) == 4, pages  # 2 + 2 + 2 + 1
    assert pages[0] == ""
    assert all(isinstance(f, File) for f in listed)
    ascending = [f.id for f in client.files.list(order="asc", page_size=3)]
    assert ascending == ids
    assert [f.id for f in client.files.list(purpose="batch")] == []


# -- vector stores -----------------------------------------------------------------------------


def test_stores_create_with_options_and_retrieve(client: Client) -> None:
    store = client.vector_stores.create(
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
    got = client.vector_stores.retrieve(store.id)
    assert got.id == store.id
    assert got.metadata == store.metadata
    assert got.embedding_dimensions == 64
    plain = client.vector_stores.create()
    assert plain.expires_after is None and plain.expires_at is None
    assert plain.metadata == {}


def test_stores_list_across_pages(client: Client) -> None:
    ids = [client.vector_stores.create(name=f"s{i}").id for i in range(5)]
    listed = list(client.vector_stores.list(page_size=2))
    assert sorted(s.id for s in listed) == sorted(ids)
    assert [s.id for s in client.vector_stores.list(order="asc", page_size=2)] == ids
    assert all(isinstance(s, VectorStore) for s in listed)


def test_stores_update_and_delete(client: Client) -> None:
    store = client.vector_stores.create(name="before", metadata={"k": "v"})
    renamed = client.vector_stores.update(store.id, name="after")
    assert renamed.name == "after"
    assert renamed.metadata == {"k": "v"}  # untouched: not in the update
    changed = client.vector_stores.update(store.id, metadata={"a": "1", "b": "2"})
    assert changed.metadata == {"a": "1", "b": "2"}
    assert changed.name == "after"
    cleared = client.vector_stores.update(store.id, metadata={})
    assert cleared.metadata == {}
    assert client.vector_stores.retrieve(store.id).metadata == {}
    expiring = client.vector_stores.update(store.id, expires_after=ExpiresAfter(days=3))
    assert expiring.expires_after == ExpiresAfter(3)
    deleted = client.vector_stores.delete(store.id)
    assert deleted == Deleted(store.id, "vector_store.deleted", True)
    with pytest.raises(NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_search_query_forms_filters_ranker_threshold(client: Client) -> None:
    store = client.vector_stores.create(name="search")
    ids = upload_docs(client)
    kinds = {"otters.md": "mammal", "owls.txt": "bird", "octopus.txt": "mollusc"}
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id,
        files=[
            BatchFile(fid, attributes={"kind": kinds[name], "legs": len(name)})
            for name, fid in ids.items()
        ],
    )
    assert batch.file_counts.completed == 3
    search = client.vector_stores.search

    one = search(store.id, query="which animal has three hearts?")
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

    several = search(store.id, query=["owls hunt at night", "sleeping otters"], max_num_results=2)
    assert several.search_query == ["owls hunt at night", "sleeping otters"]
    assert len(several.data) <= 2
    assert {r.filename for r in several.data} <= set(DOCS)

    eq = search(store.id, query="animal", filters={"type": "eq", "key": "kind", "value": "bird"})
    assert [r.filename for r in eq.data] == ["owls.txt"]
    either = search(
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
    both = search(
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

    vector_only = search(store.id, query="three hearts blue blood", ranker="none")
    assert vector_only.data[0].filename == "octopus.txt"
    fused = search(store.id, query="three hearts blue blood", ranker="auto")
    assert fused.data[0].filename == "octopus.txt"

    everything = search(store.id, query="octopus three hearts", ranker="none")
    top = everything.data[0].score
    strict = search(store.id, query="octopus three hearts", ranker="none", score_threshold=top)
    assert strict.data and all(r.score >= top for r in strict.data)
    assert len(strict.data) < len(everything.data)
    nothing = search(store.id, query="octopus", filters={"type": "eq", "key": "kind", "value": "x"})
    assert nothing.data == []


# -- vector store files ------------------------------------------------------------------------


def test_store_files_create_retrieve_list_update_content_delete(client: Client) -> None:
    store = client.vector_stores.create(name="store-files")
    good = client.files.upload(("otters.md", DOCS["otters.md"]))
    bad = client.files.upload(("blob.dat", BINARY))
    created = client.vector_stores.files.create(
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
    client.vector_stores.files.create(vector_store_id=store.id, file_id=bad.id)

    done = wait_store_file(client, store.id, good.id)
    assert done.status == "completed" and done.last_error is None
    assert done.usage_bytes > 0
    failed = wait_store_file(client, store.id, bad.id)
    assert failed.status == "failed"
    assert failed.last_error is not None and failed.last_error.code == "unsupported_file"

    files = client.vector_stores.files
    assert {f.id for f in files.list(vector_store_id=store.id)} == {good.id, bad.id}
    assert [f.id for f in files.list(vector_store_id=store.id, status="completed")] == [good.id]
    assert [f.id for f in files.list(vector_store_id=store.id, status="failed")] == [bad.id]
    assert [f.id for f in files.list(vector_store_id=store.id, status="cancelled")] == []
    assert len(list(files.list(vector_store_id=store.id, page_size=1))) == 2
    with pytest.raises(ValueError, match="status filter"):
        list(files.list(vector_store_id=store.id, status="done"))

    updated = files.update(good.id, vector_store_id=store.id, attributes={"lang": "fr"})
    assert updated.attributes == {"lang": "fr"}
    assert files.retrieve(good.id, vector_store_id=store.id).attributes == {"lang": "fr"}

    chunks = files.content(good.id, vector_store_id=store.id)
    assert isinstance(chunks, list) and chunks
    assert "Sea otters hold hands" in "".join(chunks)

    deleted = files.delete(good.id, vector_store_id=store.id)
    assert deleted == Deleted(good.id, "vector_store.file.deleted", True)
    with pytest.raises(NotFoundError):
        files.retrieve(good.id, vector_store_id=store.id)
    assert client.files.retrieve(good.id).id == good.id  # the file itself stays


# -- file batches ------------------------------------------------------------------------------


def test_batch_create_with_file_ids_retrieve_cancel_list_files(client: Client) -> None:
    store = client.vector_stores.create(name="batches")
    ids = upload_docs(client)
    batches = client.vector_stores.file_batches
    batch = batches.create(
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
    final = batches.poll(batch.id, vector_store_id=store.id)
    assert final.status == "completed" and final.done
    assert final.file_counts == FileCounts(completed=3, total=3)
    assert batches.retrieve(batch.id, vector_store_id=store.id) == final
    with pytest.raises(FailedPreconditionError) as info:
        batches.cancel(batch.id, vector_store_id=store.id)
    assert info.value.reason == "FILE_BATCH_ENDED"
    listed = list(batches.list_files(batch.id, vector_store_id=store.id, page_size=2))
    assert sorted(f.id for f in listed) == sorted(ids.values())
    assert all(f.attributes == {"batch_id": "import-2024-01", "priority": 1.5} for f in listed)
    assert list(batches.list_files(batch.id, vector_store_id=store.id, status="failed")) == []


def test_batch_create_with_per_file_specs(client: Client) -> None:
    store = client.vector_stores.create(name="specs")
    ids = upload_docs(client)
    batches = client.vector_stores.file_batches
    batch = batches.create_and_poll(
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
    by_id = {f.id: f for f in batches.list_files(batch.id, vector_store_id=store.id)}
    assert by_id[ids["otters.md"]].attributes == {"n": 1}
    assert by_id[ids["owls.txt"]].attributes == {"n": 2}
    assert by_id[ids["owls.txt"]].chunking_strategy == ChunkingStrategy.static(100, 0)
    assert by_id[ids["octopus.txt"]].attributes == {}
    auto = by_id[ids["octopus.txt"]].chunking_strategy  # auto: reported as 800 / 400
    assert (auto.max_chunk_size_tokens, auto.chunk_overlap_tokens) == (800, 400)


def test_batch_watch_snapshot_then_changes_to_terminal(client: Client) -> None:
    store = client.vector_stores.create(name="watch")
    # big enough that the batch is still running when the watch starts
    good = [client.files.upload((f"doc{i}.txt", long_text(i))).id for i in range(5)]
    bad = client.files.upload(("bin.dat", BINARY)).id
    batches = client.vector_stores.file_batches
    batch = batches.create(vector_store_id=store.id, file_ids=[*good, bad])
    updates = list(batches.watch(batch.id, vector_store_id=store.id))
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
    failed = list(batches.list_files(batch.id, vector_store_id=store.id, status="failed"))
    assert [f.id for f in failed] == [bad]
    # a finished batch: its snapshot, then the stream ends
    again = list(batches.watch(batch.id, vector_store_id=store.id))
    assert len(again) == 1 and again[0].snapshot and again[0].batch == last
    # resuming after the last sequence seen sends nothing older
    resumed = list(batches.watch(batch.id, vector_store_id=store.id, after_sequence=sequences[-1]))
    assert all(u.sequence > sequences[-1] or u.snapshot for u in resumed)


def test_upload_and_poll_ten_files(client: Client, tmp_path: Path) -> None:
    store = client.vector_stores.create(name="ten")
    paths: list[Path] = []
    for i in range(10):
        path = tmp_path / f"note-{i}.txt"
        path.write_text(f"Note number {i}: the quick brown fox jumps over {i} lazy dogs.\n")
        paths.append(path)
    final = client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id, files=paths, attributes={"batch_id": "ten"}
    )
    assert isinstance(final, FileBatch)
    assert final.status == "completed"
    assert final.file_counts == FileCounts(completed=10, total=10)
    assert client.vector_stores.retrieve(store.id).file_counts.completed == 10
    names = {f.filename for f in client.files.list()}
    assert names == {p.name for p in paths}


def test_create_file_batch_spelling_and_filtered_search(client: Client) -> None:
    store = client.vector_stores.create(name="import")
    ids = upload_docs(client)
    batch = client.vector_stores.create_file_batch(
        vector_store_id=store.id,
        file_ids=list(ids.values()),
        attributes={"batch_id": "import-2024-01"},
    )
    assert isinstance(batch, FileBatch)
    assert batch.file_counts.total == 3
    final = client.vector_stores.file_batches.poll(batch.id, vector_store_id=store.id)
    assert final.file_counts.completed == 3
    hits = client.vector_stores.search(
        store.id,
        query="which animal has three hearts?",
        filters={"type": "eq", "key": "batch_id", "value": "import-2024-01"},
    )
    assert hits.data[0].filename == "octopus.txt"
    assert all(r.attributes["batch_id"] == "import-2024-01" for r in hits.data)


def test_create_with_request_id_is_idempotent(client: Client) -> None:
    store = client.vector_stores.create(name="retry")
    ids = list(upload_docs(client).values())
    batches = client.vector_stores.file_batches
    first = batches.create(vector_store_id=store.id, file_ids=ids, request_id="req-sync-1")
    second = batches.create(vector_store_id=store.id, file_ids=ids, request_id="req-sync-1")
    assert second.id == first.id
    batches.poll(first.id, vector_store_id=store.id)


# -- auth, tenancy and the environment --------------------------------------------------------


def test_api_key_and_on_behalf_of_are_sent(background: Background) -> None:
    me = subject()
    with Client(target=background.target, api_key=background.alice_key, on_behalf_of=me) as a:
        store = a.vector_stores.create(name="mine")
        f = a.files.upload(("mine.txt", b"mine"))
    with Client(target=background.target, api_key=background.alice_key, on_behalf_of=me) as same:
        assert same.vector_stores.retrieve(store.id).id == store.id
        assert same.files.retrieve(f.id).id == f.id
    with Client(
        target=background.target, api_key=background.alice_key, on_behalf_of=subject()
    ) as other:
        with pytest.raises(NotFoundError):
            other.vector_stores.retrieve(store.id)
        with pytest.raises(NotFoundError):
            other.files.retrieve(f.id)
        assert all(s.id != store.id for s in other.vector_stores.list())
    tenant_wide = Client(target=background.target, api_key=background.alice_key)
    with tenant_wide, pytest.raises(NotFoundError):
        tenant_wide.vector_stores.retrieve(store.id)
    bob = Client(target=background.target, api_key=background.bob_key, on_behalf_of=me)
    with bob, pytest.raises(NotFoundError):
        bob.vector_stores.retrieve(store.id)


def test_wrong_or_missing_key_is_an_authentication_error(background: Background) -> None:
    with Client(target=background.target, api_key="qk_wrong", max_retries=0) as wrong:
        with pytest.raises(AuthenticationError) as info:
            wrong.vector_stores.create(name="x")
        assert info.value.reason == "INVALID_API_KEY"
        with pytest.raises(AuthenticationError):
            list(wrong.files.list())
        with pytest.raises(AuthenticationError):
            wrong.files.upload(b"data")
    with Client(target=background.target, api_key="", max_retries=0) as missing:
        with pytest.raises(AuthenticationError) as info:
            missing.vector_stores.retrieve("vs_x")
        assert info.value.reason == "MISSING_API_KEY"


def test_environment_defaults(background: Background, monkeypatch: pytest.MonkeyPatch) -> None:
    me = subject()
    monkeypatch.setenv("QUIVER_TARGET", background.target)
    monkeypatch.setenv("QUIVER_API_KEY", background.alice_key)
    monkeypatch.setenv("QUIVER_ON_BEHALF_OF", me)
    with Client() as from_env:
        assert from_env.target == background.target
        store = from_env.vector_stores.create(name="env")
    with Client(target=background.target, api_key=background.alice_key, on_behalf_of=me) as c:
        assert c.vector_stores.retrieve(store.id).name == "env"
    # arguments win over the environment
    monkeypatch.setenv("QUIVER_API_KEY", "qk_wrong")
    with Client(api_key=background.alice_key, on_behalf_of=me) as explicit:
        assert explicit.vector_stores.retrieve(store.id).id == store.id
    with Client(max_retries=0) as wrong, pytest.raises(AuthenticationError):
        wrong.vector_stores.retrieve(store.id)
    monkeypatch.delenv("QUIVER_TARGET")
    with Client() as default:
        assert default.target == "localhost:50051"
