"""Search from any replica (api/forwarding.py, core/replicas.py) with real servers in-process
on port 0, through generated stubs.

Two servers cannot share one SQLite data directory (its lock), so each runs on its own copy
of one directory holding the same store, files and chunks (made by one server, then copied
while stopped), and each is told of the other the way it learns of replicas: by a heartbeat
row in its own ``replicas`` table. The owner of the store then follows from rendezvous
hashing, and the tests check who answered (``x-quiver-replica``), how many hops were taken,
and that the answers are the same. Sharing one database between replicas waits for the
PostgreSQL backend (issue 15).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio
from quiver.server.api.forwarding import PeerChannels
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.config import Settings
from quiver.server.core import index_sync
from quiver.v1 import vector_stores_pb2 as pb

from tests.support import elsewhere
from tests.support.batch_helpers import (
    get_store,
)
from tests.support.inproc import Tenant
from tests.support.replica_pair import (
    Node,
    Pair,
    id_winning,
    replica_pair,
    unused_address,
)
from tests.support.rpc_helpers import error_reason, wait_for

SERVED_BY = "x-quiver-replica"
FORWARDED = "x-quiver-forwarded-by"
QUERY = "the quiet river under the northern bridge"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Two replicas holding one store of four files: ``owner`` owns it, ``other`` does not."""
    async with replica_pair(tmp_path) as two:
        yield two


async def search(
    tenant: Tenant, store_id: str, query: str = QUERY, ranker: str = ""
) -> tuple[list[tuple[str, float, str]], str]:
    """The hits (file, score, text) and the replica that searched."""
    call = tenant.stores.SearchVectorStore(
        pb.SearchVectorStoreRequest(
            vector_store_id=store_id,
            query=[query],
            max_num_results=8,
            ranking_options=pb.RankingOptions(ranker=ranker),
        ),
        metadata=tenant.metadata,
        timeout=30,
    )
    reply = await call
    served = [v for k, v in await call.trailing_metadata() or () if k == SERVED_BY]
    hits = [(h.file_id, h.score, h.content[0].text) for h in reply.data]
    return hits, str(served[0]) if served else ""


def forwards(node: Node, outcome: str) -> float:
    """The node's ``quiver_search_forwards_total`` for ``outcome``."""
    registry = node.server.core.metrics.registry
    value = registry.get_sample_value("quiver_search_forwards_total", {"outcome": outcome})
    return 0.0 if value is None else value


async def test_a_search_on_any_replica_is_answered_by_the_owner_once(pair: Pair) -> None:
    direct, served = await search(pair.owner.alice, pair.store_id)
    assert direct and served == pair.owner.id
    assert pair.owner.server.forwarder.forwarded == 0
    through, served = await search(pair.other.alice, pair.store_id)
    assert served == pair.owner.id  # one hop, to the owner
    assert through == direct
    assert pair.other.server.forwarder.forwarded == 1
    assert pair.owner.server.forwarder.forwarded == 0  # the owner answered, never forwarded
    assert forwards(pair.other, "forwarded") == 1 and forwards(pair.owner, "forwarded") == 0


async def test_a_forwarded_search_is_never_forwarded_again(pair: Pair) -> None:
    """Views that disagree (the owner believes a third replica, reached at the other's
    address, owns the store) still cost one hop at most."""
    direct, _ = await search(pair.owner.alice, pair.store_id)
    third = id_winning(pair.store_id, [pair.owner.id, pair.other.id], "third")
    await pair.owner.hear_of(third, pair.other.address)
    assert not pair.owner.server.core.replicas.route(pair.store_id).local
    # other → owner (marked forwarded) → answered by the owner, though it would forward.
    hits, served = await search(pair.other.alice, pair.store_id)
    assert (hits, served) == (direct, pair.owner.id)
    # owner → "third" (the other) → answered there, though it thinks the owner owns it.
    hits, served = await search(pair.owner.alice, pair.store_id)
    assert (hits, served) == (direct, pair.other.id)
    assert pair.owner.server.forwarder.forwarded == 1
    assert pair.other.server.forwarder.forwarded == 1


async def test_the_owner_answers_another_tenant_as_it_would_directly(pair: Pair) -> None:
    with pytest.raises(aio.AioRpcError) as direct:
        await search(pair.owner.bob, pair.store_id)
    with pytest.raises(aio.AioRpcError) as forwarded:
        await search(pair.other.bob, pair.store_id)
    assert direct.value.code() == forwarded.value.code() == grpc.StatusCode.NOT_FOUND
    assert direct.value.details() == forwarded.value.details()
    assert error_reason(direct.value) == error_reason(forwarded.value)
    assert pair.other.server.forwarder.forwarded == 1


async def test_an_unreachable_owner_is_marked_dead_and_the_search_answered_here(
    pair: Pair,
) -> None:
    direct, _ = await search(pair.owner.alice, pair.store_id)
    ghost = id_winning(pair.store_id, [pair.owner.id, pair.other.id], "ghost")
    await pair.other.hear_of(ghost, unused_address())
    replicas = pair.other.server.core.replicas
    epoch = replicas.epoch
    assert replicas.route(pair.store_id).owner.replica_id == ghost
    hits, served = await search(pair.other.alice, pair.store_id)
    assert (hits, served) == (direct, pair.other.id)
    assert pair.other.server.forwarder.fallbacks == 1
    assert forwards(pair.other, "owner_unreachable") == 1
    assert ghost not in [r.replica_id for r in replicas.view.replicas]
    assert replicas.epoch == epoch + 1
    # Its row is still within the window, but it stays out until it heartbeats again.
    await replicas.refresh()
    hits, served = await search(pair.other.alice, pair.store_id)
    assert (hits, served) == (direct, pair.owner.id)
    assert pair.other.server.forwarder.fallbacks == 1


def commit_elsewhere(node: Node, store_id: str, text: str, vector: np.ndarray) -> None:
    """What another replica leaves in the shared database for one completed file of one
    chunk (rows only: this node's index never hears of it)."""
    now = int(time.time())
    with node.server.core.db.transaction() as conn:
        conn.execute(
            "INSERT INTO files (id, tenant, subject, filename, purpose, bytes, sha256, "
            "created_at) VALUES ('file-elsewhere', 'alice', '', 'elsewhere.txt', "
            "'assistants', ?, ?, ?)",
            (len(text), "0" * 64, now),
        )
        conn.execute(
            "INSERT INTO vector_store_files (vector_store_id, file_id, tenant, subject, "
            "created_at, status, chunk_max_tokens, chunk_overlap_tokens, chunk_auto) "
            "VALUES (?, 'file-elsewhere', 'alice', '', ?, 'completed', 800, 400, 1)",
            (store_id, now),
        )
        conn.execute(
            "INSERT INTO chunks (vector_store_id, file_id, tenant, subject, chunk_index, "
            "token_count, text, vector) VALUES (?, 'file-elsewhere', 'alice', '', 0, 8, ?, ?)",
            (store_id, text, vector.astype(np.float32).tobytes()),
        )
        elsewhere.stamp_committed(conn, store_id, "file-elsewhere")  # its completion's last step


async def test_the_owner_catches_up_with_chunks_committed_elsewhere(pair: Pair) -> None:
    """Read-your-writes: a chunk another replica committed is found at once, through any
    replica, by the vector ranking alone (ranker none: no keyword search reads it)."""
    fresh = "zebra quartz xylophone marmalade"
    store = await get_store(pair.owner.alice, pair.store_id)
    embedder = pair.owner.server.core.embedders.embedder_for(
        store.embedding_model, store.embedding_dimensions, True
    )
    vector = embedder.embed([fresh])[0]
    before, _ = await search(pair.other.alice, pair.store_id, fresh, "none")
    assert before and all(text != fresh for _, _, text in before)
    commit_elsewhere(pair.owner, pair.store_id, fresh, vector / np.linalg.norm(vector))
    hits, served = await search(pair.other.alice, pair.store_id, fresh, "none")
    assert served == pair.owner.id
    assert hits[0][0] == "file-elsewhere" and hits[0][2] == fresh
    assert hits[0][1] > 0.99


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"advertise": "0.0.0.0:50051"}, "--advertise"),
        ({"advertise": "replica-1"}, "--advertise"),
        ({"replica_heartbeat_seconds": 5.0, "replica_timeout_seconds": 6.0}, "--replica-timeout"),
        ({"replica_forward_timeout_seconds": -1.0}, "--replica-forward-timeout-seconds"),
    ],
)
def test_replica_settings_that_cannot_work_refuse_to_start(
    tmp_path: Path, change: dict[str, Any], flag: str
) -> None:
    settings = replace(
        Settings(listen="127.0.0.1:0", http_listen="off", data_dir=tmp_path), **change
    )
    with pytest.raises(ConfigError, match=flag):
        QuiverServer(settings)


async def test_peer_channels_are_bounded() -> None:
    channels = PeerChannels(None, [], max_channels=2)
    for port in (1, 2, 3, 2):
        channels.stub(f"127.0.0.1:{port}")
    assert channels.open_count == 2
    await channels.close()
    assert channels.open_count == 0


async def test_while_a_taken_over_store_is_rebuilt_it_is_searched_exactly(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner unreachable, the other replica takes the store, whose index it does not
    hold (dropped here); the index is rebuilt in the background (forced for any full
    reconcile, and held back until the search answered), and meanwhile the search ranks the
    stored vectors exactly: the same files and texts, the same scores to float rounding."""
    monkeypatch.setattr(index_sync, "INLINE_ADDS", -1)
    release = threading.Event()
    rebuild = index_sync.IndexSync._rebuild

    def held_back(self: index_sync.IndexSync, plan: Any) -> None:
        release.wait(30)
        rebuild(self, plan)

    monkeypatch.setattr(index_sync.IndexSync, "_rebuild", held_back)
    direct, _ = await search(pair.owner.alice, pair.store_id, ranker="none")
    indexes = pair.other.server.core.indexes
    indexes.drop(pair.store_id)  # this replica holds nothing of the store
    ghost = id_winning(pair.store_id, [pair.owner.id, pair.other.id], "ghost")
    await pair.other.hear_of(ghost, unused_address())
    try:
        hits, served = await search(pair.other.alice, pair.store_id, ranker="none")
    finally:
        release.set()
    assert served == pair.other.id
    assert [(f, t) for f, _, t in hits] == [(f, t) for f, _, t in direct]
    assert [s for _, s, _ in hits] == pytest.approx([s for _, s, _ in direct], abs=1e-5)
    sync = pair.other.server.core.searcher.sync
    assert sync is not None
    await wait_for(lambda: sync.rebuilds_in_progress == 0, within=30)
    # Its own index, rebuilt (a call marked as forwarded already is answered where it lands).
    here = replace(pair.other.alice, metadata=(*pair.other.alice.metadata, (FORWARDED, "test")))
    hits, served = await search(here, pair.store_id, ranker="none")
    assert served == pair.other.id
    assert [(f, t) for f, _, t in hits] == [(f, t) for f, _, t in direct]
    assert [s for _, s, _ in hits] == pytest.approx([s for _, s, _ in direct], abs=1e-5)
