"""The HTTP edge converts and validates a big search filter on a thread, not on the event
loop (as the gRPC edge does past 4 KiB): a small filter is converted on the loop, a big one
(tens of kB of ``in`` lists) elsewhere, and both give the same, right results; a bad node deep
in a big filter is still a 400 naming its path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from quiver.server.http import convert

from tests.support.http_helpers import auth, base_url
from tests.support.inproc import Running
from tests.test_search import build_store, real_docs


@pytest.fixture
async def http(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=base_url(running), headers=auth(running.alice.key), timeout=60
    ) as client:
        yield client


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def big_filter(bad_type: str = "in") -> dict[str, Any]:
    """``group in [a, 255 other values]`` or-ed with 40 lists of values no file holds."""
    wanted = {"type": "in", "key": "group", "value": ["a", *[f"other-{i}" for i in range(255)]]}
    nobody = [
        {"type": "in", "key": "group", "value": [f"x{i}-{j}" for j in range(50)]} for i in range(40)
    ]
    nobody[-1]["type"] = bad_type
    return {"type": "or", "filters": [wanted, *nobody]}


async def test_a_big_filter_is_converted_off_the_event_loop(
    running: Running, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await build_store(running.alice, real_docs(6))  # groups a, b, c, a, b, c
    group_a = {f for f, a in store.attributes.items() if a["group"] == "a"}
    where: list[bool] = []
    real = convert.filter_in

    def spy(value: Any, path: str = "filters", depth: int = 0) -> Any:
        if depth == 0:
            where.append(on_event_loop())
        return real(value, path, depth)

    monkeypatch.setattr(convert, "filter_in", spy)

    async def files_found(filter: dict[str, Any]) -> set[str]:
        reply = await http.post(
            f"/vector_stores/{store.id}/search",
            json={"query": "the", "max_num_results": 50, "filters": filter},
        )
        assert reply.status_code == 200, reply.text
        return {hit["file_id"] for hit in reply.json()["data"]}

    small = {"type": "eq", "key": "group", "value": "a"}
    assert await files_found(small) == group_a
    assert where == [True], "a small filter is converted where it arrives"
    assert len(str(big_filter())) > 16_000
    assert await files_found(big_filter()) == group_a
    assert where == [True, False], "a big filter is converted on a thread"

    refused = await http.post(
        f"/vector_stores/{store.id}/search", json={"query": "the", "filters": big_filter("nope")}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "filters.filters[40].type"
    assert where == [True, False, False]
