"""Fixtures: a real grpc.aio Quiver server in-process on port 0, and stubs to call it.

The helpers they use live in ``tests/support/`` (shared with ``bench/``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from quiver.server.config import Settings

from tests.support import profiles
from tests.support.inproc import Running, serving
from tests.support.serve_group import ServeProcess

profiles.load()


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings changes for one test: ``@pytest.mark.parametrize("overrides", [{...}])``."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, overrides: dict[str, Any]) -> Iterator[Settings]:
    base = Settings(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        ingest_workers=2,
    )
    yield replace(base, **overrides)


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    """A keyed server (tenants alice and bob) and one channel to it."""
    async with serving(settings) as running:
        yield running


@pytest.fixture
def processes() -> Iterator[list[ServeProcess]]:
    """``quiver serve`` process groups a test starts (append them); all SIGKILLed at the end."""
    started: list[ServeProcess] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill_group()
