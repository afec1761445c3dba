"""The vectors the attribute index keeps for exact filtered search (core/attribute_index.py,
``--exact-search-cache-mb``): unit rows of exactly the chunks the filter keeps, kept in step
with every change without a reload, cached selections dropped at each change and told apart
by value type, bounded by the budget; and, through a real server, filtered results equal to
exact search over the filtered chunks' stored vectors after updates, detach, a new file, the
store's deletion and a restart.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings
from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.chunk_matrix import row_bytes
from quiver.server.core.filters import parse_filter
from quiver.server.embedders.hashing import HashEmbedder
from quiver.v1 import common_pb2, vector_stores_pb2

from tests.support.inproc import Tenant, _tenant, keyed
from tests.support.rpc_helpers import upload
from tests.test_filters import raw
from tests.test_search import build_store, eq, real_docs, search, value

pb = vector_stores_pb2
DIM = 8

# -- unit: an index over rows a test changes -------------------------------------------------


class Rows:
    """The reads the index makes, over dicts the test changes (as storage would after a
    commit); stored vectors are not unit length, so the test sees them scaled."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, dict[str, Any]]] = {
            "vs": {"f1": {"g": "a"}, "f2": {"g": "b"}},
            "other": {"o1": {"g": "a"}},
        }
        self.labels: dict[str, list[int]] = {"f1": [1, 2], "f2": [3], "f3": [4, 5], "o1": [9]}
        rng = np.random.default_rng(3)
        self.vectors = {i: 3.0 * rng.standard_normal(DIM).astype(np.float32) for i in range(10)}
        self.reads = 0

    def completed_attributes(
        self, store_id: str, file_ids: list[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        held = self.files[store_id]
        return [(f, a) for f, a in held.items() if file_ids is None or f in file_ids]

    def ids_by_file(self, store_id: str, file_ids: list[str] | None = None) -> dict[str, list[int]]:
        held = self.files[store_id]
        return {f: self.labels[f] for f in held if file_ids is None or f in file_ids}

    def vectors_from_thread(self, ids: list[int]) -> list[tuple[int, bytes]]:
        self.reads += len(ids)
        return [(i, self.vectors[i].tobytes()) for i in ids]

    def unit(self, labels: list[int]) -> np.ndarray[Any, Any]:
        rows = np.stack([self.vectors[i] for i in labels])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)  # type: ignore[no-any-return]


def a_filter(key: str, v: Any) -> Any:
    return parse_filter(raw({"type": "eq", "key": key, "value": v}))


def test_selected_vectors_follow_every_change_without_a_reload() -> None:
    rows = Rows()
    index = AttributeIndex(rows, rows, max_stores=4, vector_bytes=1 << 20)  # type: ignore[arg-type]
    in_a = a_filter("g", "a")
    first = index.select("vs", in_a, DIM)
    assert first.labels.tolist() == [1, 2] and first.vector_labels.tolist() == [1, 2]
    assert first.vectors is not None
    np.testing.assert_allclose(first.vectors, rows.unit([1, 2]), rtol=1e-6)
    assert index.vector_loads == 1 and rows.reads == 3  # every chunk of the store, once

    # The same filter again: the cached selection, inline too; no read.
    assert index.select("vs", in_a, DIM) is first
    assert index.select_inline("vs", in_a, DIM) is first

    # A file completes in group a: its vectors are read (only its), the cache is dropped.
    rows.files["vs"]["f3"] = {"g": "a"}
    index.changed("vs", ["f3"])
    assert index.select_inline("vs", in_a, DIM) is None  # an unread change: on a thread
    second = index.select("vs", in_a, DIM)
    assert second is not first and second.vector_labels.tolist() == [1, 2, 4, 5]
    assert second.vectors is not None
    np.testing.assert_allclose(second.vectors, rows.unit([1, 2, 4, 5]), rtol=1e-6)
    assert rows.reads == 5

    # Its attributes change (moves to b), then another file is detached.
    rows.files["vs"]["f3"] = {"g": "b"}
    index.changed("vs", ["f3"])
    in_b = index.select("vs", a_filter("g", "b"), DIM)
    assert in_b.vector_labels.tolist() == [3, 4, 5]
    del rows.files["vs"]["f1"]
    index.changed("vs", ["f1"])
    third = index.select("vs", in_a, DIM)
    assert third.labels.tolist() == [] and third.vectors is not None
    assert third.vectors.shape == (0, DIM)
    assert index.builds == 1 and index.vector_loads == 1

    # The store deleted: nothing kept.
    index.forget("vs")
    assert index.cached_stores == 0 and index.cached_bytes == 0


def test_cached_selections_tell_booleans_from_numbers() -> None:
    rows = Rows()
    rows.files["vs"] = {"f1": {"x": True}, "f2": {"x": 1}}
    index = AttributeIndex(rows, rows, max_stores=4, vector_bytes=1 << 20)  # type: ignore[arg-type]
    assert index.select("vs", a_filter("x", True), DIM).files == ["f1"]
    assert index.select("vs", a_filter("x", 1), DIM).files == ["f2"]
    assert index.select("vs", a_filter("x", True), DIM).files == ["f1"]


def test_vectors_stay_within_the_budget() -> None:
    rows = Rows()
    one_store = 3 * row_bytes(DIM)  # vs: three chunks
    # Too small for the store: no vectors kept (exact search then reads the database).
    small = AttributeIndex(rows, rows, max_stores=4, vector_bytes=one_store - 1)  # type: ignore[arg-type]
    refused = small.select("vs", a_filter("g", "a"), DIM)
    assert refused.vectors is None and refused.labels.tolist() == [1, 2]
    assert small.vector_loads == 0 and rows.reads == 0
    assert small.select("vs", a_filter("g", "b"), DIM).vectors is None  # not tried again

    # Room for one store and its selection (vs: 168 + 148 bytes, other: 56 + 76; a selection
    # counts the copy of its vectors it makes once reused), not both: the least recently
    # used store goes.
    budget = 350
    index = AttributeIndex(rows, rows, max_stores=4, vector_bytes=budget)  # type: ignore[arg-type]
    assert index.select("vs", a_filter("g", "a"), DIM).vectors is not None
    assert index.select("other", a_filter("g", "a"), DIM).vectors is not None
    assert index.cached_stores == 1 and index.cached_bytes <= budget
    assert index.select("vs", a_filter("g", "a"), DIM).vectors is not None
    assert index.vector_loads == 3 and index.cached_bytes <= budget


def test_without_a_budget_no_vectors_are_read() -> None:
    rows = Rows()
    index = AttributeIndex(rows, rows, max_stores=4)  # type: ignore[arg-type]
    selection = index.select("vs", a_filter("g", "a"), DIM)
    assert selection.vectors is None and rows.reads == 0


# -- through a real server, across a restart ---------------------------------------------------


def exact_top(
    data_dir: Path, store_id: str, files: set[str], query: str, k: int
) -> list[tuple[str, str, float]]:
    """(file, text, cosine) of the ``k`` chunks of ``files`` most similar to ``query``,
    from the stored vectors, by numpy."""
    db = sqlite3.connect(f"file:{data_dir / 'quiver.sqlite3'}?mode=ro", uri=True)
    try:
        found = db.execute(
            "SELECT file_id, text, vector FROM chunks WHERE vector_store_id = ?", (store_id,)
        ).fetchall()
    finally:
        db.close()
    kept = [(f, t, np.frombuffer(v, dtype=np.float32)) for f, t, v in found if f in files]
    q = HashEmbedder(512).embed([query])[0]
    q = q / np.linalg.norm(q)
    scored = [(f, t, float(v @ q / np.linalg.norm(v))) for f, t, v in kept]
    return sorted(scored, key=lambda r: -r[2])[:k]


async def assert_exact(
    tenant: Tenant, data_dir: Path, store_id: str, filter: pb.Filter, files: set[str]
) -> None:
    query = "the configuration of the kernel"
    reply = await search(tenant, store_id, query, ranker="none", max_results=20, filters=filter)
    got = [(r.file_id, r.content[0].text, r.score) for r in reply.data]
    want = exact_top(data_dir, store_id, files, query, 20)
    assert [(f, t) for f, t, _ in got] == [(f, t) for f, t, _ in want]
    np.testing.assert_allclose([s for *_, s in got], [max(0.0, s) for *_, s in want], atol=1e-5)


async def started(settings: Settings) -> tuple[QuiverServer, aio.Channel, Tenant]:
    cfg, keys = keyed(settings)
    server = QuiverServer(cfg)
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    return server, channel, _tenant("alice", keys["alice"], channel)


async def test_filtered_results_are_exact_across_changes_and_a_restart(settings: Settings) -> None:
    settings = replace(settings, exact_search_cache_mb=64)
    data_dir = settings.data_dir
    server, channel, alice = await started(settings)
    try:
        attributes = server.core.attributes
        store = await build_store(alice, real_docs(6))  # groups a, b, c, a, b, c
        group_a = {f for f, a in store.attributes.items() if a["group"] == "a"}
        await assert_exact(alice, data_dir, store.id, eq("group", "a"), group_a)
        assert attributes.vector_loads == 1 and attributes.cached_bytes > 0

        moved = store.file_ids[1]  # b → a
        await alice.stores.UpdateVectorStoreFile(
            pb.UpdateVectorStoreFileRequest(
                vector_store_id=store.id, file_id=moved, attributes={"group": value("a")}
            ),
            metadata=alice.metadata,
        )
        group_a.add(moved)
        await assert_exact(alice, data_dir, store.id, eq("group", "a"), group_a)

        gone = store.file_ids[0]
        await alice.stores.DeleteVectorStoreFile(
            pb.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=gone),
            metadata=alice.metadata,
        )
        group_a.discard(gone)
        await assert_exact(alice, data_dir, store.id, eq("group", "a"), group_a)

        doc = real_docs(7)[6]
        new = (await upload(alice, doc.name, doc.text.encode())).id
        await alice.stores.CreateVectorStoreFile(
            pb.CreateVectorStoreFileRequest(
                vector_store_id=store.id, file_id=new, attributes={"group": value("a")}
            ),
            metadata=alice.metadata,
        )
        for _ in range(600):
            reply = await alice.stores.GetVectorStoreFile(
                pb.GetVectorStoreFileRequest(vector_store_id=store.id, file_id=new),
                metadata=alice.metadata,
            )
            if reply.vector_store_file.status != common_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS:
                break
            await asyncio.sleep(0.05)
        group_a.add(new)
        await assert_exact(alice, data_dir, store.id, eq("group", "a"), group_a)
        assert attributes.builds == 1 and attributes.vector_loads == 1, "changed in place"
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)

    # A restart starts empty; the first filtered search reads the vectors again.
    server, channel, alice = await started(settings)
    try:
        attributes = server.core.attributes
        assert attributes.cached_stores == 0
        await assert_exact(alice, data_dir, store.id, eq("group", "a"), group_a)
        assert attributes.builds == 1 and attributes.vector_loads == 1
        await alice.stores.DeleteVectorStore(
            pb.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=alice.metadata
        )
        assert attributes.cached_stores == 0 and attributes.cached_bytes == 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await search(alice, store.id, "kernel", ranker="none", filters=eq("group", "a"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)
