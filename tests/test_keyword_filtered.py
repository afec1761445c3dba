"""A filtered hybrid search gets k keyword hits from the files the filter keeps: the filter is
applied inside the keyword index's query, not to its top k afterwards (where the files it
leaves out, holding the word more often, would crowd out every file it keeps)."""

from __future__ import annotations

from google.protobuf import struct_pb2
from quiver.v1 import vector_stores_pb2

from tests.support.batch_helpers import B_COMPLETED, create_batch, create_store, watch_to_end
from tests.support.inproc import Running, Tenant
from tests.support.rpc_helpers import upload

FILLER = (
    "quarterly report about harbour logistics with shipping lanes cargo cranes and "
    "container yards along the northern docks where tugboats wait for the tide "
)


async def attach(t: Tenant, store_id: str, texts: list[str], group: str) -> list[str]:
    ids = [(await upload(t, f"{group}{i:02}.txt", x.encode())).id for i, x in enumerate(texts)]
    batch = await create_batch(
        t, store_id, ids, attributes={"group": struct_pb2.Value(string_value=group)}
    )
    messages = await watch_to_end(t, store_id, batch.id, within=120)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert messages[-1].file_batch.file_counts.completed == len(ids)
    return ids


async def test_filtered_hybrid_search_returns_k_filtered_keyword_hits(running: Running) -> None:
    t = running.alice
    store = await create_store(t, name="kw-filter")
    # 60 files outside the filter hold the word three times: they fill any unfiltered top 50.
    await attach(t, store.id, [f"zebra zebra zebra {FILLER}{i}" for i in range(60)], "a")
    holding = await attach(t, store.id, [f"{FILLER}{i} zebra {FILLER}" for i in range(10)], "b")
    await attach(t, store.id, [f"{FILLER}{FILLER}{i}" for i in range(10)], "b")

    def request(ranker: str) -> vector_stores_pb2.SearchVectorStoreRequest:
        return vector_stores_pb2.SearchVectorStoreRequest(
            vector_store_id=store.id,
            query=["zebra"],
            max_num_results=10,
            filters=vector_stores_pb2.Filter(
                type="eq", key="group", value=struct_pb2.Value(string_value="b")
            ),
            ranking_options=vector_stores_pb2.RankingOptions(ranker=ranker),
        )

    auto = await t.stores.SearchVectorStore(request("auto"), metadata=t.metadata)
    none = await t.stores.SearchVectorStore(request("none"), metadata=t.metadata)
    assert sorted(r.file_id for r in auto.data) == sorted(holding)
    cosine = {r.file_id: r.score for r in none.data}
    for hit in auto.data:
        assert hit.attributes["group"].string_value == "b"
        # The keyword relevance counted for every one of them: above the vector score alone.
        assert hit.score > cosine.get(hit.file_id, 0.0), (hit.file_id, hit.score)
