"""Helpers for the HTTP edge's tests: its URL on a running server, and polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tests.conftest import Running

T = TypeVar("T")


def base_url(running: Running, prefix: str = "/v1") -> str:
    port = running.server.http_port
    assert port, "the server was started without its HTTP listener"
    return f"http://127.0.0.1:{port}{prefix}"


def auth(key: str, on_behalf_of: str = "") -> dict[str, str]:
    headers = {"authorization": f"Bearer {key}"}
    if on_behalf_of:
        headers["x-on-behalf-of"] = on_behalf_of
    return headers


async def until(
    what: str, probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], seconds: float = 60
) -> T:
    """Polls ``probe`` until ``done`` says so; fails the test naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: last {value!r}"
        await asyncio.sleep(0.05)
