"""Runs one call per item, at most ``limit`` at once: tasks for the asyncio client, threads for
the blocking one (scripts/unasync.py turns ``async_bounded_map`` into ``bounded_map``).

Both return the results in the order of the items and raise the error of the first item (in
that order) that failed; items not started by then are not started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def check_limit(name: str, value: int) -> int:
    """``value`` when it is an int of at least 1; else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer of at least 1, not {value!r}")
    return value


async def async_bounded_map(
    call: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int
) -> list[R]:
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with gate:
            return await call(item)

    tasks = [asyncio.create_task(one(item)) for item in items]
    try:
        return [await task for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def bounded_map(call: Callable[[T], R], items: Sequence[T], limit: int) -> list[R]:
    with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="quiver-client") as pool:
        futures = [pool.submit(call, item) for item in items]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
