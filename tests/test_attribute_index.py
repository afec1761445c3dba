"""The filters' attribute index (core/attribute_index.py) kept between queries: its table
changed row by row equals the reference evaluator (property based), and through a real
server it follows every change (attributes updated, file detached, file attached and
completed, store deleted) without a rebuild, and stays right with more stores than its cap.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.filters import AttributeTable, parse_filter
from quiver.v1 import common_pb2, vector_stores_pb2

from tests.support.inproc import Running, Tenant
from tests.support.profiles import examples
from tests.support.rpc_helpers import upload
from tests.test_filters import FilterDict, Scalar, raw, reference, unit_attributes, unit_filters
from tests.test_search import Store, build_store, eq, real_docs, search, value

pb = vector_stores_pb2

# -- unit: a table changed in place equals the reference ---------------------------------------

changes = st.lists(st.tuples(st.integers(0, 7), st.one_of(st.none(), unit_attributes)), max_size=30)


@hypothesis_settings(max_examples=examples(800), deadline=None)
@given(unit_filters, st.lists(unit_attributes, max_size=8), changes)
def test_table_changed_in_place_equals_reference(
    node: FilterDict,
    initial: list[dict[str, Scalar]],
    steps: list[tuple[int, dict[str, Scalar] | None]],
) -> None:
    table = AttributeTable(initial)  # type: ignore[arg-type]
    rows: dict[int, dict[str, Scalar]] = dict(enumerate(initial))
    for row, attributes in steps:  # None: the row is dropped
        if attributes is None:
            table.drop(row)
            rows.pop(row, None)
        else:
            table.put(row, attributes)
            rows[row] = attributes
    parsed = parse_filter(raw(node))
    expected = {i for i, attributes in rows.items() if reference(node, attributes)}
    assert table.select(parsed).tolist() == sorted(expected)
    assert table.size == len(rows)


# -- through the server ------------------------------------------------------------------------


async def files_matching(tenant: Tenant, store_id: str, filters: pb.Filter) -> set[str]:
    """The files of every chunk a filtered search returns (ranker none, 50 results: more
    than the chunks of these small stores)."""
    reply = await search(tenant, store_id, "the", ranker="none", max_results=50, filters=filters)
    return {r.file_id for r in reply.data}


def group_members(store: Store, group: str) -> set[str]:
    return {f for f, attributes in store.attributes.items() if attributes["group"] == group}


async def test_filtered_search_follows_every_change(running: Running) -> None:
    alice = running.alice
    attributes = running.server.core.attributes
    store = await build_store(alice, real_docs(6))  # groups a, b, c, a, b, c
    in_a = eq("group", "a")
    assert await files_matching(alice, store.id, in_a) == group_members(store, "a")
    assert attributes.builds == 1

    # Attributes updated: the file moves from b to a.
    moved = store.file_ids[1]
    await alice.stores.UpdateVectorStoreFile(
        pb.UpdateVectorStoreFileRequest(
            vector_store_id=store.id,
            file_id=moved,
            attributes={"group": value("a"), "n": value(1.0)},
        ),
        metadata=alice.metadata,
    )
    expected = group_members(store, "a") | {moved}
    assert await files_matching(alice, store.id, in_a) == expected
    assert await files_matching(alice, store.id, eq("group", "b")) == {store.file_ids[4]}
    # Its old keys are gone with the old attributes.
    assert await files_matching(alice, store.id, eq("even", False)) == {
        store.file_ids[3],
        store.file_ids[5],
    }

    # Detached: gone from the filter's matches.
    gone = store.file_ids[0]
    await alice.stores.DeleteVectorStoreFile(
        pb.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=gone),
        metadata=alice.metadata,
    )
    expected.discard(gone)
    assert await files_matching(alice, store.id, in_a) == expected

    # A new file attached in group a: found once it is completed (not while in progress).
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
    expected.add(new)
    assert await files_matching(alice, store.id, in_a) == expected
    assert attributes.builds == 1, "each change was applied in place, never by a rebuild"

    # Store deleted: its entry is dropped and it is not found.
    cached = attributes.cached_stores
    await alice.stores.DeleteVectorStore(
        pb.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=alice.metadata
    )
    assert attributes.cached_stores == cached - 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await files_matching(alice, store.id, in_a)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("overrides", [{"attribute_index_stores": 2}])
async def test_more_stores_than_the_cap_answer_correctly(running: Running) -> None:
    alice = running.alice
    attributes = running.server.core.attributes
    docs = real_docs(3)
    stores = [await build_store(alice, docs) for _ in range(4)]
    filters: list[tuple[pb.Filter, Any]] = [
        (eq("group", "b"), lambda a: a["group"] == "b"),
        (pb.Filter(type="gte", key="n", value=value(1.0)), lambda a: a["n"] >= 1.0),
    ]
    for _ in range(2):  # round robin: every store evicted and rebuilt in turn
        for store in stores:
            for filter, wanted in filters:
                expected = {f for f, a in store.attributes.items() if wanted(a)}
                assert await files_matching(alice, store.id, filter) == expected
            assert attributes.cached_stores <= 2
    assert attributes.builds == 8


# -- unit: changes told while an entry is being built ------------------------------------------


class Rows:
    """The two reads the index makes, over a dict the test changes (as storage would after a
    commit); ``hold`` pauses the first full read until ``go`` is set."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {"f1": {"g": "a"}, "f2": {"g": "b"}}
        self.hold = threading.Event()
        self.go = threading.Event()

    def completed_attributes(
        self, store_id: str, file_ids: list[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        snapshot = dict(self.files)
        if file_ids is None and not self.hold.is_set():
            self.hold.set()
            assert self.go.wait(10)
        return [(f, a) for f, a in snapshot.items() if file_ids is None or f in file_ids]

    def ids_by_file(self, store_id: str, file_ids: list[str] | None = None) -> dict[str, list[int]]:
        number = {"f1": [1, 2], "f2": [3], "f3": [4, 5]}
        return {f: number[f] for f in self.files if file_ids is None or f in file_ids}


def test_a_change_during_the_build_is_read_by_the_next_selection() -> None:
    rows = Rows()
    index = AttributeIndex(rows, rows, max_stores=4)  # type: ignore[arg-type]
    in_a = parse_filter(raw({"type": "eq", "key": "g", "value": "a"}))
    first: list[Any] = []
    building = threading.Thread(target=lambda: first.append(index.select("vs", in_a)))
    building.start()
    assert rows.hold.wait(10)
    rows.files["f3"] = {"g": "a"}  # committed while the build read the old rows…
    index.changed("vs", ["f3"])  # …and told after the commit
    rows.go.set()
    building.join(10)
    assert first[0].files == ["f1"] and first[0].labels.tolist() == [1, 2]
    assert index.select_inline("vs", in_a) is None  # an unread change: not inline
    second = index.select("vs", in_a)
    assert second.files == ["f1", "f3"] and second.labels.tolist() == [1, 2, 4, 5]
    assert index.builds == 1
    inline = index.select_inline("vs", in_a)  # up to date and small: evaluated inline
    assert inline is not None and inline.files == ["f1", "f3"]
    del rows.files["f1"]
    index.changed("vs", ["f1"])
    assert index.select("vs", in_a).files == ["f3"]
    index.forget("vs")
    assert index.cached_stores == 0
