"""VectorStoreService against a real server: CRUD, validation limits, expiry, updates, lists."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from quiver.v1 import vector_stores_pb2 as pb

from tests.conftest import Running, Tenant
from tests.rpc_helpers import (
    ListPage,
    PageView,
    check_cursor_pagination,
    error_reason,
    violated_fields,
)

DAY = 86_400


async def create(
    tenant: Tenant,
    *,
    name: str = "",
    metadata: dict[str, str] | None = None,
    expires_after: pb.ExpiresAfter | None = None,
    embedding_model: str = "",
    embedding_dimensions: int = 0,
) -> pb.VectorStore:
    request = pb.CreateVectorStoreRequest(
        name=name,
        metadata=metadata or {},
        expires_after=expires_after,
        embedding_model=embedding_model,
        embedding_dimensions=embedding_dimensions,
    )
    reply = await tenant.stores.CreateVectorStore(request, metadata=tenant.metadata)
    return reply.vector_store


async def get(tenant: Tenant, store_id: str) -> pb.VectorStore:
    reply = await tenant.stores.GetVectorStore(
        pb.GetVectorStoreRequest(vector_store_id=store_id), metadata=tenant.metadata
    )
    return reply.vector_store


async def update(tenant: Tenant, request: pb.UpdateVectorStoreRequest) -> pb.VectorStore:
    reply = await tenant.stores.UpdateVectorStore(request, metadata=tenant.metadata)
    return reply.vector_store


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def stores_page_lister(tenant: Tenant) -> ListPage:
    async def list_page(limit: int, order: str, after: str, before: str) -> PageView:
        reply = await tenant.stores.ListVectorStores(
            pb.ListVectorStoresRequest(limit=limit, order=order, after=after, before=before),
            metadata=tenant.metadata,
        )
        assert reply.object == "list"
        return PageView([s.id for s in reply.data], reply.first_id, reply.last_id, reply.has_more)

    return list_page


# -- create, get, list, update, delete -----------------------------------------------------


async def test_create_defaults(running: Running) -> None:
    a = running.alice
    before = int(time.time())
    store = await create(a, name="docs", metadata={"team": "search"})
    after = int(time.time())
    assert store.id.startswith("vs_") and len(store.id) == len("vs_") + 24
    assert store.object == "vector_store"
    assert store.name == "docs"
    assert dict(store.metadata) == {"team": "search"}
    assert before <= store.created_at <= after
    assert store.last_active_at == store.created_at
    assert store.status == pb.VECTOR_STORE_STATUS_COMPLETED
    fc = store.file_counts
    assert (fc.in_progress, fc.completed, fc.failed, fc.cancelled, fc.total) == (0, 0, 0, 0, 0)
    assert store.usage_bytes == 0
    assert store.embedding_model == "hash"
    assert store.embedding_dimensions == 512
    assert not store.HasField("expires_after")
    assert not store.HasField("expires_at")

    assert await get(a, store.id) == store
    listed = await a.stores.ListVectorStores(pb.ListVectorStoresRequest(), metadata=a.metadata)
    assert list(listed.data) == [store]


async def test_create_with_everything(running: Running) -> None:
    a = running.alice
    store = await create(
        a,
        name="",
        expires_after=pb.ExpiresAfter(anchor="last_active_at", days=365),
        embedding_model="hash",
        embedding_dimensions=64,
    )
    assert store.name == ""
    assert (store.embedding_model, store.embedding_dimensions) == ("hash", 64)
    assert (store.expires_after.anchor, store.expires_after.days) == ("last_active_at", 365)
    assert store.expires_at == store.last_active_at + 365 * DAY


async def test_expiry_anchor_defaults_to_last_active_at(running: Running) -> None:
    store = await create(running.alice, expires_after=pb.ExpiresAfter(days=2))
    assert store.expires_after.anchor == "last_active_at"
    assert store.expires_at == store.last_active_at + 2 * DAY


async def test_update_get_delete(running: Running) -> None:
    a = running.alice
    store = await create(a, name="old")
    renamed = await update(a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, name="new"))
    assert renamed.name == "new"
    assert renamed.id == store.id and renamed.created_at == store.created_at
    assert await get(a, store.id) == renamed

    reply = await a.stores.DeleteVectorStore(
        pb.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=a.metadata
    )
    assert (reply.id, reply.object, reply.deleted) == (store.id, "vector_store.deleted", True)
    with pytest.raises(aio.AioRpcError) as err:
        await get(a, store.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(err.value) == "VECTOR_STORE_NOT_FOUND"
    with pytest.raises(aio.AioRpcError) as err:
        await update(a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, name="x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as err:
        await a.stores.DeleteVectorStore(
            pb.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=a.metadata
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await a.stores.ListVectorStores(pb.ListVectorStoresRequest(), metadata=a.metadata)
    assert list(listed.data) == []


async def test_missing_store_id_is_invalid(running: Running) -> None:
    a = running.alice
    with pytest.raises(aio.AioRpcError) as err:
        await get(a, "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["vector_store_id"]


# -- validation ----------------------------------------------------------------------------

SEVENTEEN = {f"k{i}": "v" for i in range(17)}


async def test_create_rejects(running: Running) -> None:
    a = running.alice
    R = pb.CreateVectorStoreRequest
    for request, field in [
        (R(metadata=SEVENTEEN), "metadata"),
        (R(metadata={"k" * 65: "v"}), "metadata[" + repr("k" * 20)),  # the key, shortened
        (R(metadata={"k": "v" * 513}), "metadata['k']"),
        (R(metadata={"": "v"}), "metadata"),
        (R(name="n" * 257), "name"),
        (R(expires_after=pb.ExpiresAfter(days=0)), "expires_after.days"),
        (R(expires_after=pb.ExpiresAfter(days=366)), "expires_after.days"),
        (R(expires_after=pb.ExpiresAfter(days=-1)), "expires_after.days"),
        (R(expires_after=pb.ExpiresAfter(anchor="created_at", days=1)), "expires_after.anchor"),
        (R(embedding_model="nope"), "embedding_model"),
        (R(embedding_dimensions=4), "embedding_dimensions"),
        (R(embedding_dimensions=7), "embedding_dimensions"),
        (R(embedding_dimensions=5000), "embedding_dimensions"),
        (R(embedding_dimensions=4097), "embedding_dimensions"),
    ]:
        with pytest.raises(aio.AioRpcError) as err:
            await a.stores.CreateVectorStore(request, metadata=a.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        found = violated_fields(err.value)
        assert len(found) == 1 and found[0].startswith(field), (found, field)
        if not field.startswith("metadata["):
            assert found == [field]
    listed = await a.stores.ListVectorStores(pb.ListVectorStoresRequest(), metadata=a.metadata)
    assert list(listed.data) == []


async def test_create_boundaries_succeed(running: Running) -> None:
    a = running.alice
    sixteen = {f"k{i:02d}": "v" for i in range(16)}
    assert dict((await create(a, metadata=sixteen)).metadata) == sixteen
    wide = {"k" * 64: "v" * 512}
    assert dict((await create(a, metadata=wide)).metadata) == wide
    assert (await create(a, name="n" * 256)).name == "n" * 256
    for days in (1, 365):
        made = await create(a, expires_after=pb.ExpiresAfter(days=days))
        assert made.expires_after.days == days
    for dims in (8, 4096):
        assert (await create(a, embedding_dimensions=dims)).embedding_dimensions == dims


async def test_several_violations_are_all_reported(running: Running) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await create(running.alice, name="n" * 257, metadata={"k": "v" * 513})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(violated_fields(err.value)) == ["metadata['k']", "name"]


async def test_update_rejects(running: Running) -> None:
    a = running.alice
    store = await create(a, name="keep", metadata={"a": "b"})
    R = pb.UpdateVectorStoreRequest
    for request, field in [
        (R(metadata=SEVENTEEN), "metadata"),
        (R(metadata={"k": "v" * 513}), "metadata['k']"),
        (R(name="n" * 257), "name"),
        (R(expires_after=pb.ExpiresAfter(days=0)), "expires_after.days"),
        (R(expires_after=pb.ExpiresAfter(days=366)), "expires_after.days"),
        (R(expires_after=pb.ExpiresAfter(anchor="created_at", days=3)), "expires_after.anchor"),
        (R(name="x", update_mask=mask("name", "bogus")), "update_mask"),
        (R(update_mask=mask("embedding_model")), "update_mask"),
    ]:
        request.vector_store_id = store.id
        with pytest.raises(aio.AioRpcError) as err:
            await update(a, request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert violated_fields(err.value) == [field], request
    assert await get(a, store.id) == store  # nothing changed


# -- expiry --------------------------------------------------------------------------------


async def test_expiry(running: Running) -> None:
    a = running.alice
    stores = running.server.core.stores
    store = await create(
        a, name="short", expires_after=pb.ExpiresAfter(anchor="last_active_at", days=1)
    )
    assert (store.expires_after.anchor, store.expires_after.days) == ("last_active_at", 1)
    assert store.expires_at == store.last_active_at + DAY
    assert store.status == pb.VECTOR_STORE_STATUS_COMPLETED

    # One second before expires_at it is still alive; at expires_at it has expired.
    stores.clock = lambda: float(store.expires_at - 1)
    assert (await get(a, store.id)).status == pb.VECTOR_STORE_STATUS_COMPLETED
    stores.clock = lambda: float(store.expires_at)
    assert (await get(a, store.id)).status == pb.VECTOR_STORE_STATUS_EXPIRED

    stores.clock = lambda: time.time() + 2 * DAY
    expired = await get(a, store.id)
    assert expired.status == pb.VECTOR_STORE_STATUS_EXPIRED
    assert expired.expires_at == store.expires_at  # reading does not move the anchor
    listed = await a.stores.ListVectorStores(pb.ListVectorStoresRequest(), metadata=a.metadata)
    assert [s.status for s in listed.data] == [pb.VECTOR_STORE_STATUS_EXPIRED]

    for change in (
        pb.UpdateVectorStoreRequest(vector_store_id=store.id, name="revived"),
        pb.UpdateVectorStoreRequest(
            vector_store_id=store.id, expires_after=pb.ExpiresAfter(days=30)
        ),
        pb.UpdateVectorStoreRequest(vector_store_id=store.id, update_mask=mask("expires_after")),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await update(a, change)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(err.value) == "VECTOR_STORE_EXPIRED"
    assert (await get(a, store.id)).name == "short"

    reply = await a.stores.DeleteVectorStore(
        pb.DeleteVectorStoreRequest(vector_store_id=store.id), metadata=a.metadata
    )
    assert reply.deleted
    with pytest.raises(aio.AioRpcError) as err:
        await get(a, store.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_update_moves_the_expiry_anchor(running: Running) -> None:
    a = running.alice
    store = await create(a, expires_after=pb.ExpiresAfter(days=1))
    later = store.last_active_at + 1000
    running.server.core.stores.clock = lambda: float(later)
    updated = await update(a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, name="x"))
    assert updated.last_active_at == later
    assert updated.expires_at == later + DAY
    running.server.core.stores.clock = lambda: float(store.expires_at)  # the old deadline
    assert (await get(a, store.id)).status == pb.VECTOR_STORE_STATUS_COMPLETED


async def test_store_without_expiry_never_expires(running: Running) -> None:
    a = running.alice
    store = await create(a)
    running.server.core.stores.clock = lambda: time.time() + 1000 * DAY
    assert (await get(a, store.id)).status == pb.VECTOR_STORE_STATUS_COMPLETED
    assert (
        await update(a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, name="ok"))
    ).name == "ok"


# -- update semantics ----------------------------------------------------------------------


async def test_update_without_mask_changes_only_set_fields(running: Running) -> None:
    a = running.alice
    store = await create(a, name="a", metadata={"k": "v"}, expires_after=pb.ExpiresAfter(days=7))

    renamed = await update(a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, name="b"))
    assert renamed.name == "b"
    assert dict(renamed.metadata) == {"k": "v"}
    assert renamed.expires_after.days == 7

    remeta = await update(
        a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, metadata={"x": "y"})
    )
    assert dict(remeta.metadata) == {"x": "y"}  # replaced, not merged
    assert remeta.name == "b"
    assert remeta.expires_after.days == 7

    reexpire = await update(
        a,
        pb.UpdateVectorStoreRequest(
            vector_store_id=store.id, expires_after=pb.ExpiresAfter(days=3)
        ),
    )
    assert reexpire.expires_after.days == 3
    assert reexpire.expires_at == reexpire.last_active_at + 3 * DAY
    assert (reexpire.name, dict(reexpire.metadata)) == ("b", {"x": "y"})

    # Nothing set: nothing changes (empty metadata does not clear without a mask).
    same = await update(a, pb.UpdateVectorStoreRequest(vector_store_id=store.id))
    assert (same.name, dict(same.metadata), same.expires_after.days) == ("b", {"x": "y"}, 3)

    # `name` is optional: present and empty clears it.
    cleared = await update(a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, name=""))
    assert cleared.name == ""
    assert dict(cleared.metadata) == {"x": "y"}


async def test_update_with_mask(running: Running) -> None:
    a = running.alice
    store = await create(a, name="a", metadata={"k": "v"}, expires_after=pb.ExpiresAfter(days=7))

    # Masked metadata left empty is cleared; the unmasked name in the request is ignored.
    no_meta = await update(
        a,
        pb.UpdateVectorStoreRequest(
            vector_store_id=store.id, name="ignored", update_mask=mask("metadata")
        ),
    )
    assert dict(no_meta.metadata) == {}
    assert no_meta.name == "a"
    assert no_meta.expires_after.days == 7

    # Masked expires_after left unset removes the expiry.
    no_expiry = await update(
        a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, update_mask=mask("expires_after"))
    )
    assert not no_expiry.HasField("expires_after")
    assert not no_expiry.HasField("expires_at")
    assert no_expiry.name == "a"
    got = await get(a, store.id)
    assert not got.HasField("expires_after") and not got.HasField("expires_at")

    # Masked name left unset is cleared.
    no_name = await update(
        a, pb.UpdateVectorStoreRequest(vector_store_id=store.id, update_mask=mask("name"))
    )
    assert no_name.name == ""

    # Several paths at once, set.
    both = await update(
        a,
        pb.UpdateVectorStoreRequest(
            vector_store_id=store.id,
            name="z",
            metadata={"p": "q"},
            expires_after=pb.ExpiresAfter(days=2),
            update_mask=mask("name", "metadata", "expires_after"),
        ),
    )
    assert (both.name, dict(both.metadata), both.expires_after.days) == ("z", {"p": "q"}, 2)


# -- listing -------------------------------------------------------------------------------


async def test_list_pagination(running: Running) -> None:
    a = running.alice
    ids = [(await create(a, name=f"s{i}")).id for i in range(7)]
    await check_cursor_pagination(stores_page_lister(a), ids)


async def test_list_limits(running: Running) -> None:
    a = running.alice
    for i in range(21):
        await create(a, name=f"s{i}")
    page = await stores_page_lister(a)(0, "", "", "")
    assert len(page.ids) == 20 and page.has_more
    for request_, field in (
        (pb.ListVectorStoresRequest(limit=101), "limit"),
        (pb.ListVectorStoresRequest(order="up"), "order"),
        (pb.ListVectorStoresRequest(after="vs_" + "n" * 24), "after"),
        (pb.ListVectorStoresRequest(before="vs_" + "n" * 24), "before"),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await a.stores.ListVectorStores(request_, metadata=a.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(err.value) == [field]
