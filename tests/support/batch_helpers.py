"""Helpers for the batch, watch, fault and recovery tests: stores, batches, watching, documents.

Every wait here is bounded: it polls or reads a stream with a deadline and fails the test
with a message saying what it was waiting for.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from quiver.server.core.ports import IngestExecutor
from quiver.server.index.hnsw import VectorIndex
from quiver.server.ingest.chunking import count_tokens
from quiver.server.ingest.worker import WorkerInput, WorkerOutput
from quiver.v1 import common_pb2, file_batches_pb2, vector_stores_pb2

from tests.support.inproc import Tenant
from tests.support.rpc_helpers import upload

FileStatus: TypeAlias = common_pb2.VectorStoreFileStatus.ValueType
BatchStatus: TypeAlias = file_batches_pb2.FileBatchStatus.ValueType

F_IN_PROGRESS = common_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS
F_COMPLETED = common_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED
F_CANCELLED = common_pb2.VECTOR_STORE_FILE_STATUS_CANCELLED
F_FAILED = common_pb2.VECTOR_STORE_FILE_STATUS_FAILED

B_IN_PROGRESS = file_batches_pb2.FILE_BATCH_STATUS_IN_PROGRESS
B_COMPLETED = file_batches_pb2.FILE_BATCH_STATUS_COMPLETED
B_CANCELLED = file_batches_pb2.FILE_BATCH_STATUS_CANCELLED
B_FAILED = file_batches_pb2.FILE_BATCH_STATUS_FAILED
TERMINAL: frozenset[BatchStatus] = frozenset({B_COMPLETED, B_CANCELLED, B_FAILED})

SNAPSHOT = file_batches_pb2.WATCH_EVENT_TYPE_SNAPSHOT
CHANGE = file_batches_pb2.WATCH_EVENT_TYPE_CHANGE

Counts = tuple[int, int, int, int, int]
"""(in_progress, completed, failed, cancelled, total)."""

WatchCall = aio.UnaryStreamCall[
    file_batches_pb2.WatchFileBatchRequest, file_batches_pb2.WatchFileBatchResponse
]


def counts(fc: common_pb2.FileCounts) -> Counts:
    return (fc.in_progress, fc.completed, fc.failed, fc.cancelled, fc.total)


def static(max_tokens: int, overlap: int) -> common_pb2.ChunkingStrategy:
    return common_pb2.ChunkingStrategy(
        type="static",
        static=common_pb2.StaticChunkingStrategy(
            max_chunk_size_tokens=max_tokens, chunk_overlap_tokens=overlap
        ),
    )


def value(v: str | float | bool) -> struct_pb2.Value:
    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, int | float):
        return struct_pb2.Value(number_value=float(v))
    return struct_pb2.Value(string_value=v)


def attrs(**kv: str | float | bool) -> dict[str, struct_pb2.Value]:
    return {k: value(v) for k, v in kv.items()}


# -- documents -----------------------------------------------------------------------------

_SYLLABLES = ["ka", "lo", "mi", "ten", "ra", "vor", "qu", "is", "an", "del", "po", "shu", "ne"]


def words(seed: int, count: int) -> list[str]:
    """``count`` pseudo-words, deterministic for ``seed``."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    return [rng.choice(vocab) for _ in range(count)]


def prose(seed: int, approx_bytes: int) -> str:
    """Varied text in lines and paragraphs, about ``approx_bytes`` long."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    pool = words(seed, max(64, approx_bytes // 4))
    i = 0
    while size < approx_bytes:
        n = rng.randint(6, 18)
        line = " ".join(pool[(i + k) % len(pool)] for k in range(n)).capitalize() + "."
        i += n
        out.append(line)
        size += len(line) + 1
        if rng.random() < 0.2:
            out.append("")
    return "\n".join(out) + "\n"


# Words that are one cl100k token each, also with a leading space.
_ONE_TOKEN_WORDS = ["the", "cat", "sat", "on", "mat", "and", "dog", "ran", "far", "away"]


def text_of_tokens(n_tokens: int, seed: int = 0) -> str:
    """A text of exactly ``n_tokens`` cl100k_base tokens (checked)."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(_ONE_TOKEN_WORDS) for _ in range(n_tokens))
    assert count_tokens(text) == n_tokens
    return text


# -- stores, files, batches -----------------------------------------------------------------


async def create_store(
    tenant: Tenant,
    *,
    name: str = "",
    expires_days: int = 0,
    embedding_model: str = "",
    embedding_dimensions: int = 0,
) -> vector_stores_pb2.VectorStore:
    request = vector_stores_pb2.CreateVectorStoreRequest(
        name=name, embedding_model=embedding_model, embedding_dimensions=embedding_dimensions
    )
    if expires_days:
        request.expires_after.anchor = "last_active_at"
        request.expires_after.days = expires_days
    reply = await tenant.stores.CreateVectorStore(request, metadata=tenant.metadata)
    return reply.vector_store


async def get_store(tenant: Tenant, store_id: str) -> vector_stores_pb2.VectorStore:
    reply = await tenant.stores.GetVectorStore(
        vector_stores_pb2.GetVectorStoreRequest(vector_store_id=store_id),
        metadata=tenant.metadata,
    )
    return reply.vector_store


async def upload_all(
    tenant: Tenant, files: Sequence[tuple[str, bytes]], parallel: int = 8
) -> list[str]:
    """Uploads (filename, data) pairs, a few at a time; returns the ids in the same order."""
    gate = asyncio.Semaphore(parallel)

    async def one(name: str, data: bytes) -> str:
        async with gate:
            return (await upload(tenant, name, data)).id

    return list(await asyncio.gather(*(one(n, d) for n, d in files)))


async def create_batch(
    tenant: Tenant,
    store_id: str,
    file_ids: Sequence[str] = (),
    *,
    files: Sequence[file_batches_pb2.FileBatchFileSpec] = (),
    attributes: Mapping[str, struct_pb2.Value] | None = None,
    chunking: common_pb2.ChunkingStrategy | None = None,
    request_id: str = "",
) -> file_batches_pb2.FileBatch:
    request = file_batches_pb2.CreateFileBatchRequest(
        vector_store_id=store_id,
        file_ids=list(file_ids),
        files=list(files),
        attributes=dict(attributes or {}),
        chunking_strategy=chunking,
        request_id=request_id,
    )
    reply = await tenant.batches.CreateFileBatch(request, metadata=tenant.metadata)
    return reply.file_batch


async def get_batch(tenant: Tenant, store_id: str, batch_id: str) -> file_batches_pb2.FileBatch:
    reply = await tenant.batches.GetFileBatch(
        file_batches_pb2.GetFileBatchRequest(vector_store_id=store_id, batch_id=batch_id),
        metadata=tenant.metadata,
    )
    return reply.file_batch


async def get_file(
    tenant: Tenant, store_id: str, file_id: str
) -> vector_stores_pb2.VectorStoreFile:
    reply = await tenant.stores.GetVectorStoreFile(
        vector_stores_pb2.GetVectorStoreFileRequest(vector_store_id=store_id, file_id=file_id),
        metadata=tenant.metadata,
    )
    return reply.vector_store_file


async def content(tenant: Tenant, store_id: str, file_id: str) -> list[str]:
    """Every chunk's text, following next_page; each page fits a default 4 MiB client."""
    texts: list[str] = []
    page = ""
    while True:
        reply = await tenant.stores.GetVectorStoreFileContent(
            vector_stores_pb2.GetVectorStoreFileContentRequest(
                vector_store_id=store_id, file_id=file_id, page=page
            ),
            metadata=tenant.metadata,
        )
        assert reply.object == "vector_store.file_content.page"
        assert reply.data, "a page always holds at least one chunk"
        assert reply.ByteSize() < 4 * 1024 * 1024
        assert all(part.type == "text" for part in reply.data)
        texts += [part.text for part in reply.data]
        assert reply.has_more == bool(reply.next_page)
        if not reply.has_more:
            return texts
        page = reply.next_page


async def list_store_files(
    tenant: Tenant,
    store_id: str,
    status: FileStatus = common_pb2.VECTOR_STORE_FILE_STATUS_UNSPECIFIED,
) -> list[vector_stores_pb2.VectorStoreFile]:
    """Every store file (all pages, oldest first), optionally of one status."""
    out: list[vector_stores_pb2.VectorStoreFile] = []
    after = ""
    for _ in range(100):
        reply = await tenant.stores.ListVectorStoreFiles(
            vector_stores_pb2.ListVectorStoreFilesRequest(
                vector_store_id=store_id, limit=100, order="asc", after=after, filter=status
            ),
            metadata=tenant.metadata,
        )
        out += reply.data
        if not reply.has_more:
            return out
        after = reply.last_id
    raise AssertionError("ListVectorStoreFiles never stopped saying has_more")


async def list_batch_files(
    tenant: Tenant,
    store_id: str,
    batch_id: str,
    status: FileStatus = common_pb2.VECTOR_STORE_FILE_STATUS_UNSPECIFIED,
) -> list[vector_stores_pb2.VectorStoreFile]:
    out: list[vector_stores_pb2.VectorStoreFile] = []
    after = ""
    for _ in range(100):
        reply = await tenant.batches.ListFileBatchFiles(
            file_batches_pb2.ListFileBatchFilesRequest(
                vector_store_id=store_id,
                batch_id=batch_id,
                limit=100,
                order="asc",
                after=after,
                filter=status,
            ),
            metadata=tenant.metadata,
        )
        out += reply.data
        if not reply.has_more:
            return out
        after = reply.last_id
    raise AssertionError("ListFileBatchFiles never stopped saying has_more")


# -- waiting ---------------------------------------------------------------------------------


async def poll_batch(
    tenant: Tenant, store_id: str, batch_id: str, within: float = 30.0
) -> file_batches_pb2.FileBatch:
    """GetFileBatch until the batch has ended; fails after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        batch = await get_batch(tenant, store_id, batch_id)
        if batch.status in TERMINAL:
            return batch
        assert loop.time() < deadline, f"batch {batch_id} still in progress after {within} s"
        await asyncio.sleep(0.02)


async def poll_file(
    tenant: Tenant, store_id: str, file_id: str, within: float = 30.0
) -> vector_stores_pb2.VectorStoreFile:
    """GetVectorStoreFile until the file is no longer in progress."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        file = await get_file(tenant, store_id, file_id)
        if file.status != F_IN_PROGRESS:
            return file
        assert loop.time() < deadline, f"file {file_id} still in progress after {within} s"
        await asyncio.sleep(0.02)


def start_watch(tenant: Tenant, store_id: str, batch_id: str, after_sequence: int = 0) -> WatchCall:
    return tenant.batches.WatchFileBatch(
        file_batches_pb2.WatchFileBatchRequest(
            vector_store_id=store_id, batch_id=batch_id, after_sequence=after_sequence
        ),
        metadata=tenant.metadata,
    )


async def read_message(
    call: WatchCall, within: float = 30.0
) -> file_batches_pb2.WatchFileBatchResponse | None:
    """The stream's next message, or None at its end."""
    try:
        message = await asyncio.wait_for(call.read(), within)
    except TimeoutError:
        call.cancel()
        raise AssertionError(f"no watch message within {within} s") from None
    if isinstance(message, file_batches_pb2.WatchFileBatchResponse):
        return message
    return None  # grpc.aio.EOF


async def read_to_end(
    call: WatchCall, within: float = 30.0
) -> list[file_batches_pb2.WatchFileBatchResponse]:
    """Every (remaining) message of a watch stream until it ends OK, within ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    messages: list[file_batches_pb2.WatchFileBatchResponse] = []
    while (message := await read_message(call, max(0.01, deadline - loop.time()))) is not None:
        messages.append(message)
    code = await call.code()
    assert code == grpc.StatusCode.OK, (code, await call.details())
    return messages


async def watch_to_end(
    tenant: Tenant,
    store_id: str,
    batch_id: str,
    after_sequence: int = 0,
    within: float = 30.0,
) -> list[file_batches_pb2.WatchFileBatchResponse]:
    return await read_to_end(start_watch(tenant, store_id, batch_id, after_sequence), within)


def check_stream(
    messages: Sequence[file_batches_pb2.WatchFileBatchResponse],
) -> None:
    """The contract of one watch stream: a snapshot, then changes with increasing sequence;
    exactly the last carries a terminal status; counts always add up."""
    assert messages, "the stream sent nothing"
    assert messages[0].type == SNAPSHOT
    assert all(m.type == CHANGE for m in messages[1:]), [m.type for m in messages]
    sequences = [m.sequence for m in messages]
    assert all(a < b for a, b in itertools.pairwise(sequences)), sequences
    assert messages[-1].file_batch.status in TERMINAL
    assert messages[-1].file_batch.file_counts.in_progress == 0, "ended with files in progress"
    assert all(m.file_batch.status == B_IN_PROGRESS for m in messages[:-1])
    for m in messages:
        c = m.file_batch.file_counts
        assert c.in_progress + c.completed + c.failed + c.cancelled == c.total, counts(c)
        assert m.file_batch.object == "vector_store.file_batch"
    for m in messages[1:]:
        assert m.files, "a change message must name the files that changed"
        assert all(f.status != F_IN_PROGRESS for f in m.files)


def final_statuses(
    messages: Iterable[file_batches_pb2.WatchFileBatchResponse],
) -> dict[str, file_batches_pb2.FileBatchFileUpdate]:
    """Each file's newest update across the messages."""
    out: dict[str, file_batches_pb2.FileBatchFileUpdate] = {}
    for m in messages:
        for f in m.files:
            out[f.file_id] = f
    return out


# -- the database, read from outside the server ------------------------------------------


def open_db(data_dir: Path) -> sqlite3.Connection:
    """The server's SQLite database, read-only."""
    uri = f"file:{data_dir / 'quiver.sqlite3'}?mode=ro"
    return sqlite3.connect(uri, uri=True)


def chunk_rows(data_dir: Path, store_id: str) -> dict[str, int]:
    """file id → number of chunk rows, for one store."""
    db = open_db(data_dir)
    try:
        return dict(
            db.execute(
                "SELECT file_id, COUNT(*) FROM chunks WHERE vector_store_id = ? GROUP BY file_id",
                (store_id,),
            ).fetchall()
        )
    finally:
        db.close()


def index_matches_chunks(data_dir: Path, store_id: str) -> tuple[list[int], list[int]]:
    """The store's saved index against its chunk rows (after a stop): the chunk ids it lacks
    and the live labels it holds with no chunk behind them (both empty when it matches)."""
    path = data_dir / "indexes" / f"{store_id}.hnsw"
    db = open_db(data_dir)
    try:
        stored = {
            int(r[0])
            for r in db.execute("SELECT id FROM chunks WHERE vector_store_id = ?", (store_id,))
        }
        (dim,) = db.execute(
            "SELECT embedding_dimensions FROM vector_stores WHERE id = ?", (store_id,)
        ).fetchone()
    finally:
        db.close()
    held = {int(x) for x in VectorIndex.open(path, int(dim)).labels()} if path.exists() else set()
    return sorted(stored - held), sorted(held - stored)


Chunks: TypeAlias = dict[tuple[str, int], tuple[int, str, bytes]]
"""(filename, chunk index) → (token count, text, vector bytes)."""


def stored_chunks(data_dir: Path, store_id: str) -> Chunks:
    """Every chunk of one store, by its file's name and its index (to compare two servers
    that ingested the same files)."""
    db = open_db(data_dir)
    try:
        rows = db.execute(
            "SELECT files.filename, c.chunk_index, c.token_count, c.text, c.vector "
            "FROM chunks c JOIN files ON files.id = c.file_id WHERE c.vector_store_id = ?",
            (store_id,),
        ).fetchall()
    finally:
        db.close()
    return {(name, index): (tokens, text, vector) for name, index, tokens, text, vector in rows}


def duplicate_chunks(data_dir: Path) -> list[tuple[str, str, int, int]]:
    db = open_db(data_dir)
    try:
        return [
            (str(r[0]), str(r[1]), int(r[2]), int(r[3]))
            for r in db.execute(
                "SELECT vector_store_id, file_id, chunk_index, COUNT(*) FROM chunks "
                "GROUP BY vector_store_id, file_id, chunk_index HAVING COUNT(*) > 1"
            )
        ]
    finally:
        db.close()


def chunk_index_gaps(data_dir: Path) -> list[str]:
    """Files whose chunk indexes are not exactly 0…n-1."""
    db = open_db(data_dir)
    try:
        return [
            str(r[0])
            for r in db.execute(
                "SELECT file_id FROM chunks GROUP BY vector_store_id, file_id "
                "HAVING MIN(chunk_index) != 0 OR MAX(chunk_index) != COUNT(*) - 1"
            )
        ]
    finally:
        db.close()


def chunk_texts(data_dir: Path, store_id: str, file_id: str) -> list[str]:
    """A file's chunk texts in order, straight from SQLite (for files too big for one
    GetVectorStoreFileContent message)."""
    db = open_db(data_dir)
    try:
        return [
            str(r[0])
            for r in db.execute(
                "SELECT text FROM chunks WHERE vector_store_id = ? AND file_id = ? "
                "ORDER BY chunk_index",
                (store_id, file_id),
            )
        ]
    finally:
        db.close()


class PoolUse:
    """Wraps an ingest pool's ``run`` (test-side) to count the files sent to it: in all, and
    the most at once."""

    def __init__(self, pool: IngestExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.now = 0
        self.max = 0
        original = pool.run

        async def run(job: WorkerInput) -> WorkerOutput:
            self.calls += 1
            self.now += 1
            self.max = max(self.max, self.now)
            try:
                return await original(job)
            finally:
                self.now -= 1

        monkeypatch.setattr(pool, "run", run)
