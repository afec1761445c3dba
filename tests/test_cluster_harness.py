"""The multi-replica harness (tests/support/cluster.py) on its own, without a shared database:
replicas start on their ports, one is SIGKILLed and restarted on the same port and data
directory, and heartbeats under a new replica id while its previous id's row ages out."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.cluster import REPLICA_TIMEOUT_SECONDS, Cluster
from tests.support.serve import is_serving_async

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def replica_rows(data_dir: Path) -> list[tuple[str, str, float]]:
    with sqlite3.connect(data_dir / "quiver.sqlite3") as conn:
        return [
            (r[0], r[1], float(r[2]))
            for r in conn.execute("SELECT id, address, heartbeat_at FROM replicas ORDER BY id")
        ]


async def test_a_killed_replica_restarts_on_its_port_under_a_new_id(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2, database=None)
    await cluster.start()
    try:
        first = replica_rows(cluster[0].data_dir)
        assert [address for _, address, _ in first] == [cluster[0].target]
        cluster.kill(0)
        assert not await is_serving_async(cluster[0].target)
        assert await is_serving_async(cluster[1].target)
        await cluster.restart(0)
        rows = replica_rows(cluster[0].data_dir)
        assert len(rows) == 2 and first[0] in rows  # the dead one's row stays, unrenewed
        await asyncio.sleep(float(REPLICA_TIMEOUT_SECONDS))
        now = time.time()
        live = [r for r in replica_rows(cluster[0].data_dir) if r[2] >= now - 3]
        assert [r[0] for r in live] != [first[0][0]] and len(live) == 1
        assert live[0][1] == cluster[0].target
    except BaseException:
        print(cluster.logs()[-10000:])
        raise
    finally:
        await cluster.close()
