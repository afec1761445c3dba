"""A damaged data directory never crashes `quiver serve` with a traceback. A damaged index
file is refused before hnswlib reads it and rebuilt from SQLite, and searches answer as they
did before the damage; a damaged database stops the server with one line naming it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from grpc import aio
from quiver.server.cli import DATABASE_FILE
from quiver.server.storage.database import Database
from quiver.v1 import vector_stores_pb2

from tests.support.batch_helpers import (
    B_COMPLETED,
    create_batch,
    create_store,
    prose,
    upload_all,
    watch_to_end,
)
from tests.support.index_damage import DAMAGE
from tests.support.inproc import Tenant, open_tenant
from tests.support.serve import free_port
from tests.support.serve_group import ServeProcess, wait_serving

QUERIES = ["river stone", "quiet morning light", "north wind over the hills"]

Results = list[list[tuple[str, float, str]]]


async def search_all(t: Tenant, store_id: str) -> Results:
    out: Results = []
    for query in QUERIES:
        reply = await t.stores.SearchVectorStore(
            vector_stores_pb2.SearchVectorStoreRequest(
                vector_store_id=store_id,
                query=[query],
                max_num_results=8,
                ranking_options=vector_stores_pb2.RankingOptions(ranker="none"),
            ),
            metadata=t.metadata,
        )
        out.append([(r.file_id, round(r.score, 5), r.content[0].text) for r in reply.data])
    return out


def stop(proc: ServeProcess) -> None:
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0, proc.log()


@pytest.mark.slow
@pytest.mark.e2e
async def test_damaged_index_files_are_rebuilt_at_start(
    tmp_path: Path,
    processes: list[ServeProcess],
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    target = f"127.0.0.1:{port}"
    first = ServeProcess(data_dir, port, tmp_path / "first.log")
    processes.append(first)
    channel = aio.insecure_channel(target)
    try:
        await wait_serving(channel, first)
        t = open_tenant(channel)
        store = await create_store(t, name="damaged")
        docs = [(f"d{i:02}.txt", prose(500 + i, 9_000).encode()) for i in range(20)]
        ids = await upload_all(t, docs)
        batch = await create_batch(t, store.id, ids)
        messages = await watch_to_end(t, store.id, batch.id, within=120)
        assert messages[-1].file_batch.status == B_COMPLETED
        before = await search_all(t, store.id)
        assert all(len(rows) == 8 for rows in before)
    finally:
        await channel.close(None)
    stop(first)  # saves the index and its sidecar

    index_path = data_dir / "indexes" / f"{store.id}.hnsw"
    sidecar = index_path.with_name(index_path.name + ".json")
    assert sidecar.exists(), "the index is saved with its checksum sidecar"
    good, good_sidecar = index_path.read_bytes(), sidecar.read_bytes()
    # Each restart spawns workers (seconds on a busy machine): the unit tests in
    # test_index.py cover every kind of damage, this covers one of each family end to end.
    cases = {name: DAMAGE[name][0] for name in ("neighbour-ids", "random-4k", "truncated")}
    cases["no-sidecar"] = lambda data: data
    for name, change in cases.items():
        index_path.write_bytes(change(good))
        sidecar.write_bytes(good_sidecar)
        if name == "no-sidecar":  # as the previous version left it
            sidecar.unlink()
        proc = ServeProcess(data_dir, port, tmp_path / f"{name}.log")
        processes.append(proc)
        channel = aio.insecure_channel(target)
        try:
            await wait_serving(channel, proc)
            after = await search_all(open_tenant(channel), store.id)
            assert after == before, name
            assert proc.proc.poll() is None, f"{name}: the server died:\n{proc.log()}"
        finally:
            await channel.close(None)
        stop(proc)
        assert "rebuilding it from SQLite" in proc.log(), name
        # The rebuilt index was saved with a sidecar that vouches for it.
        assert sidecar.exists(), name


def _damaged_database(path: Path, how: str) -> None:
    if how == "random-bytes":
        path.write_bytes(np.random.default_rng(3).bytes(64 * 1024))
        return
    db = Database(path)  # a real database, then its schema page overwritten
    db.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = np.random.default_rng(4).bytes(3996)
    path.write_bytes(bytes(data))
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["random-bytes", "schema-page"])
def test_a_damaged_database_stops_the_server_with_one_line(tmp_path: Path, how: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / DATABASE_FILE
    _damaged_database(database, how)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "quiver.server.cli", "serve"),
            *("--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"quiver serve: the database {database} is unusable")
    assert "restore it from a backup" in lines[0]
