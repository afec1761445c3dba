"""Ingest on a two-node Ray cluster (``make cluster-test``; ``make test`` leaves it out): a
``quiver serve --ingest ray:auto`` on the head node (``RAY_ADDRESS`` = the head's GCS) spreads
a batch's files over both nodes, with the chunks of a single-machine run; a worker node
SIGKILLed mid-batch leaves no file in progress.

The nodes are network namespaces joined by a bridge (``tests/support/ray_cluster.py``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from grpc import aio
from quiver.server.config import Settings
from quiver.server.ingest.ray_executor import RayExecutor, local_task_pids

from tests.support.batch_helpers import (
    B_COMPLETED,
    Chunks,
    check_stream,
    counts,
    create_batch,
    create_store,
    duplicate_chunks,
    prose,
    stored_chunks,
    upload_all,
    watch_to_end,
)
from tests.support.inproc import Running, Tenant, _tenant, keyed
from tests.support.ray_cluster import RAY_CLIENT_PORT, RayCluster, cluster_missing
from tests.support.rpc_helpers import wait_for
from tests.support.serve import is_serving

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PORT = 50051
DOCS = [(f"doc{i:02}.txt", prose(i, 150_000 + 1_000 * i).encode()) for i in range(40)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    reason = cluster_missing()
    if reason is not None:
        pytest.skip(reason)
    started = RayCluster.start(cpus_per_node=1)
    try:
        yield started
    finally:
        started.stop()


@dataclass
class OnHead:
    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    alice: Tenant

    def stop(self) -> list[dict[str, object]]:
        """SIGTERM, wait; the server's JSON log lines."""
        self.proc.terminate()
        self.proc.wait(60)
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@asynccontextmanager
async def serve_on_head(cluster: RayCluster, settings: Settings) -> AsyncIterator[OnHead]:
    cfg, keys = keyed(settings)
    log = settings.data_dir.parent / "serve.log"
    settings.data_dir.mkdir(parents=True)
    target = f"{cluster.head_ip}:{PORT}"
    proc = cluster.serve_on_head(PORT, settings.data_dir, cfg.api_keys, log)
    channel = aio.insecure_channel(target)
    try:
        await wait_for(lambda: proc.poll() is None and is_serving(target), within=120)
        yield OnHead(proc, log, settings.data_dir, _tenant("alice", keys["alice"], channel))
    finally:
        await channel.close(None)
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


async def ingest(tenant: Tenant, data_dir: Path) -> Chunks:
    store = await create_store(tenant)
    ids = await upload_all(tenant, DOCS)
    batch = await create_batch(tenant, store.id, ids)
    messages = await watch_to_end(tenant, store.id, batch.id, within=300)
    check_stream(messages)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert counts(messages[-1].file_batch.file_counts) == (0, len(DOCS), 0, 0, len(DOCS))
    return stored_chunks(data_dir, store.id)


@asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[Running]:
    from quiver.server.app import QuiverServer

    cfg, keys = keyed(settings)
    server = QuiverServer(cfg)
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(
            server=server,
            target=f"127.0.0.1:{port}",
            channel=channel,
            alice=_tenant("alice", keys["alice"], channel),
            bob=_tenant("bob", keys["bob"], channel),
        )
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)


def files_by_node(lines: list[dict[str, object]]) -> dict[str, int]:
    (line,) = [x for x in lines if x.get("msg") == "ingest on Ray: files by node"]
    nodes = line["nodes"]
    assert isinstance(nodes, dict)
    return {str(k): int(v) for k, v in nodes.items()}


async def test_a_batch_spreads_over_both_nodes_with_the_chunks_of_one_machine(
    cluster: RayCluster, tmp_path: Path, settings: Settings
) -> None:
    async with in_process(replace(settings, data_dir=tmp_path / "local")) as local:
        expected = await ingest(local.alice, tmp_path / "local")
    async with serve_on_head(cluster, replace(settings, data_dir=tmp_path / "ray")) as head:
        got = await ingest(head.alice, head.data_dir)
        spread = files_by_node(head.stop())
    assert got == expected
    assert set(spread) == {cluster.head_ip, cluster.worker_ip}, spread
    assert sum(spread.values()) == len(DOCS)
    for node, files in spread.items():
        assert files >= len(DOCS) / 4, (node, spread)


async def test_a_server_outside_the_cluster_ingests_through_ray_client(
    cluster: RayCluster, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--ingest ray://HEAD:10001`` from this (root) namespace, through the head's Ray Client
    server: the batch completes with the chunks of a local run, on both nodes."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # as the cluster's nodes
    client = ray_client_settings(settings, tmp_path, cluster)
    async with in_process(replace(settings, data_dir=tmp_path / "local")) as local:
        expected = await ingest(local.alice, tmp_path / "local")
    async with in_process(client) as remote:
        executor = remote.server.core.pool
        assert isinstance(executor, RayExecutor)
        got = await ingest(remote.alice, client.data_dir)
        spread = dict(executor.files_by_node)
    assert got == expected
    assert sum(spread.values()) == len(DOCS)
    assert set(spread) == {cluster.head_ip, cluster.worker_ip}, spread


def ray_client_settings(settings: Settings, tmp_path: Path, cluster: RayCluster) -> Settings:
    return replace(
        settings,
        data_dir=tmp_path / "client",
        ingest=f"ray://{cluster.head_ip}:{RAY_CLIENT_PORT}",
        ray_tasks=2,
    )


# Last: it leaves the cluster with one node.
async def test_a_worker_node_killed_mid_batch_leaves_no_file_in_progress(
    cluster: RayCluster, tmp_path: Path, settings: Settings
) -> None:
    """SIGKILL every process of the worker node while one of its tasks runs a file: that
    task is lost and runs again on the head; the batch ends with every file completed."""
    async with serve_on_head(cluster, replace(settings, data_dir=tmp_path / "ray")) as head:
        a = head.alice
        store = await create_store(a)
        ids = await upload_all(a, DOCS)
        batch = await create_batch(a, store.id, ids)

        def busy_on_worker_node() -> bool:
            running = set(local_task_pids())
            return bool(running) and bool(running & set(cluster.pids("b")))

        await wait_for(busy_on_worker_node, within=120)  # a file is in a task there now
        cluster.kill_node("b")
        messages = await watch_to_end(a, store.id, batch.id, within=300)
        check_stream(messages)
        final = messages[-1].file_batch
        assert final.file_counts.in_progress == 0
        assert counts(final.file_counts) == (0, len(DOCS), 0, 0, len(DOCS)), final
        assert final.status == B_COMPLETED
        assert len(stored_chunks(head.data_dir, store.id)) > len(DOCS)
        assert duplicate_chunks(head.data_dir) == []
        lines = head.stop()
    spread = files_by_node(lines)
    assert sum(spread.values()) == len(DOCS), spread  # each file's task finished once
    lost = [x for x in lines if "lost" in str(x.get("msg", ""))]
    assert lost, "no task was lost with the node: it was killed too late"
