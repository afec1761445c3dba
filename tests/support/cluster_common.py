"""What the cluster tests share: API keys for two tenants, a tenant's stubs on a replica's
channel, a few hundred small text files, and waiting on the shared database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from quiver.server.auth.keys import hash_key, new_key

from tests.support.batch_helpers import prose
from tests.support.cluster import ClusterReplica
from tests.support.inproc import Tenant, _tenant


def keys_args() -> tuple[dict[str, str], list[str]]:
    keys = {"alice": new_key(), "bob": new_key()}
    inline = ",".join(f"{t} sha256:{hash_key(k).hex()}" for t, k in keys.items())
    return keys, ["--api-keys", inline]


def tenant(replica: ClusterReplica, name: str, keys: dict[str, str]) -> Tenant:
    assert replica.channel is not None
    return _tenant(name, keys[name], replica.channel)


def small_files(n: int, approx_bytes: int = 1500) -> list[tuple[str, bytes]]:
    """``n`` small text files (a chunk or two each), deterministic."""
    return [(f"doc{i:04d}.txt", prose(1000 + i, approx_bytes).encode()) for i in range(n)]


async def until(what: str, check: Callable[[], bool], within: float, every: float = 0.05) -> None:
    """Polls ``check`` (run in a thread: it may query the database) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await asyncio.to_thread(check):
        assert loop.time() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(every)
