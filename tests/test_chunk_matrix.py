"""The contiguous layout of the attribute index (core/chunk_matrix.py): spans appended,
replaced and dropped in any order read back exactly as a per-file reference says, across
capacity growth and compactions; and, through a real server, filtered results that equal
exact search over the stored vectors when every query's filter is new to the cache, after
files completed after the first search, attribute updates, enough detaches to compact the
arrays, and a restart.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import numpy.typing as npt
from quiver.server.config import Settings
from quiver.server.core.chunk_matrix import ChunkMatrix, spans_index
from quiver.server.core.row_scan import quantize
from quiver.v1 import common_pb2, vector_stores_pb2

from tests.support.inproc import Tenant
from tests.support.rpc_helpers import upload
from tests.test_filter_vectors import assert_exact, started
from tests.test_search import build_store, real_docs, static, value

pb = vector_stores_pb2
DIM = 4


def test_spans_index_expands_spans_in_order() -> None:
    start = np.asarray([5, 0, 9, 3], dtype=np.int64)
    count = np.asarray([2, 1, 0, 3], dtype=np.int64)
    assert spans_index(start, count).tolist() == [5, 6, 0, 3, 4, 5]
    ones = np.asarray([1, 1], dtype=np.int64)
    assert spans_index(start[:2], ones).tolist() == [5, 0]
    assert spans_index(start[:0], count[:0]).tolist() == []
    # One-row spans and empty ones (a file without chunks), with and without the bound.
    short = np.asarray([1, 0, 1, 1], dtype=np.int64)
    assert spans_index(start, short).tolist() == [5, 9, 3]
    assert spans_index(start, short, most=1).tolist() == [5, 9, 3]
    assert spans_index(start, count, most=3).tolist() == [5, 6, 0, 3, 4, 5]


def test_random_changes_read_back_as_the_reference() -> None:
    rng = np.random.default_rng(11)
    matrix = ChunkMatrix(DIM)
    reference: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = {}
    next_label = 0
    for step in range(3000):
        file = int(rng.integers(0, 200))
        if rng.random() < 0.35:
            matrix.drop(file)
            reference.pop(file, None)
        else:
            n = int(rng.integers(0, 5))
            labels = np.arange(next_label, next_label + n, dtype=np.int64)
            next_label += n
            vectors = rng.standard_normal((n, DIM)).astype(np.float32)
            matrix.put(file, labels, vectors)
            reference[file] = (labels, vectors)
        if step % 97 == 0 or step == 2999:
            files = np.asarray(
                sorted(int(f) for f in rng.choice(250, size=40, replace=False)), dtype=np.int64
            )
            rows = matrix.index(files)
            held = [f for f in files.tolist() if f in reference]
            want_labels = [i for f in held for i in reference[f][0].tolist()]
            assert matrix.labels[rows].tolist() == want_labels
            if want_labels:
                want = np.concatenate([reference[f][1] for f in held])
                np.testing.assert_array_equal(matrix.matrix[rows], want)
                # The int8 codes and their bounds' terms moved with their rows.
                codes, scale, residual, norm = quantize(want)
                np.testing.assert_array_equal(matrix.codes[rows], codes)
                np.testing.assert_array_equal(matrix.scale[rows], scale)
                np.testing.assert_array_equal(matrix.residual[rows], residual)
                np.testing.assert_array_equal(matrix.norm[rows], norm)
            for f in files.tolist():
                expected = reference[f][0].tolist() if f in reference else []
                assert matrix.held(f).tolist() == expected
            live = sum(len(v[0]) for v in reference.values())
            assert (matrix.live == live and matrix.dead <= 0.25 * matrix.used) or matrix.used < 64
    assert matrix.compactions > 0, "enough dead rows to compact"


def test_growth_stops_doubling_at_the_budget() -> None:
    matrix = ChunkMatrix(DIM)
    matrix.max_rows = 40
    for f in range(35):
        matrix.put(f, np.asarray([f], dtype=np.int64), np.ones((1, DIM), dtype=np.float32))
    assert len(matrix.labels) == 40 and matrix.matrix.shape == (40, DIM)  # 16, 32, then 40
    for f in range(35, 45):
        matrix.put(f, np.asarray([f], dtype=np.int64), np.ones((1, DIM), dtype=np.float32))
    assert len(matrix.labels) == 45, "past the budget: exactly what is needed"
    assert matrix.labels[matrix.index(np.arange(45, dtype=np.int64))].tolist() == list(range(45))


def test_a_compaction_keeps_every_live_span() -> None:
    matrix = ChunkMatrix(0)
    for f in range(100):
        matrix.put(f, np.asarray([10 * f, 10 * f + 1], dtype=np.int64))
    for f in range(0, 60):
        matrix.drop(f)
    assert matrix.compactions >= 1 and matrix.live == 80 and matrix.dead <= 0.25 * matrix.used
    assert matrix.labels[matrix.index(np.asarray([99, 60]))].tolist() == [990, 991, 600, 601]


async def complete(tenant: Tenant, store_id: str, file_id: str, group: str) -> None:
    await tenant.stores.CreateVectorStoreFile(
        pb.CreateVectorStoreFileRequest(
            vector_store_id=store_id, file_id=file_id, attributes={"group": value(group)}
        ),
        metadata=tenant.metadata,
    )
    for _ in range(600):
        reply = await tenant.stores.GetVectorStoreFile(
            pb.GetVectorStoreFileRequest(vector_store_id=store_id, file_id=file_id),
            metadata=tenant.metadata,
        )
        if reply.vector_store_file.status != common_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{file_id} did not complete")


def new_filter(group: str, q: int) -> pb.Filter:
    """``group == g`` and'ed with a ``ne`` no file matches: the same files, a new filter."""
    return pb.Filter(
        type="and",
        filters=[
            pb.Filter(type="eq", key="group", value=value(group)),
            pb.Filter(type="ne", key="n", value=value(-1.0 - q)),
        ],
    )


async def test_new_filters_are_exact_across_appends_compaction_and_a_restart(
    settings: Settings,
) -> None:
    settings = replace(settings, exact_search_cache_mb=64)
    data_dir = settings.data_dir
    docs = real_docs(8)
    server, channel, alice = await started(settings)
    try:
        attributes = server.core.attributes
        store = await build_store(alice, docs[:6], chunking=static(100))  # a, b, c, a, b, c
        group = {f: a["group"] for f, a in store.attributes.items()}

        def members(g: str) -> set[str]:
            return {f for f, held in group.items() if held == g}

        q = 0
        for g in ("a", "b"):
            q += 1
            await assert_exact(alice, data_dir, store.id, new_filter(g, q), members(g))
        assert attributes.vector_loads == 1

        # Files completed after the first search: appended to the kept arrays.
        for doc, g in ((docs[6], "a"), (docs[7], "b")):
            file_id = (await upload(alice, doc.name, doc.text.encode())).id
            await complete(alice, store.id, file_id, g)
            group[file_id] = g
        for g in ("a", "b", "c"):
            q += 1
            await assert_exact(alice, data_dir, store.id, new_filter(g, q), members(g))

        # An attribute update moves a file's rows from one group to another.
        moved = store.file_ids[2]  # c → a
        await alice.stores.UpdateVectorStoreFile(
            pb.UpdateVectorStoreFileRequest(
                vector_store_id=store.id, file_id=moved, attributes={"group": value("a")}
            ),
            metadata=alice.metadata,
        )
        group[moved] = "a"
        q += 1
        await assert_exact(alice, data_dir, store.id, new_filter("a", q), members("a"))

        # Detaching half the files leaves more than a quarter of the rows dead: compacted.
        for gone in store.file_ids[:4]:
            await alice.stores.DeleteVectorStoreFile(
                pb.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=gone),
                metadata=alice.metadata,
            )
            del group[gone]
        for g in ("a", "b", "c"):
            q += 1
            await assert_exact(alice, data_dir, store.id, new_filter(g, q), members(g))
        assert attributes.compactions > 0
        assert attributes.builds == 1 and attributes.vector_loads == 1, "changed in place"
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)

    # A restart starts empty: the arrays are rebuilt from the database, with the same results.
    server, channel, alice = await started(settings)
    try:
        attributes = server.core.attributes
        for g in ("a", "b", "c"):
            q += 1
            await assert_exact(alice, data_dir, store.id, new_filter(g, q), members(g))
        assert attributes.builds == 1 and attributes.vector_loads == 1
        await alice.stores.DeleteVectorStore(
            pb.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=alice.metadata
        )
        assert attributes.cached_stores == 0 and attributes.cached_bytes == 0
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)
