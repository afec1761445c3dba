"""A keyed Quiver server on its own event loop in a daemon thread.

For the client tests: the blocking client must not share the test's loop with the server, and
the asyncio client's tests (from which the blocking ones are generated) use the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quiver.server.app import QuiverServer
from quiver.server.config import Settings

from tests.support.inproc import keyed


@dataclass
class Background:
    target: str
    alice_key: str
    bob_key: str


class _ServerThread:
    """A QuiverServer on a new event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: QuiverServer | None = None

    def start(self) -> int:
        self.thread.start()

        async def boot() -> int:
            self.server = QuiverServer(self.settings)
            return await self.server.start()

        return asyncio.run_coroutine_threadsafe(boot(), self.loop).result(timeout=30)

    def stop(self) -> None:
        try:
            if self.server is not None:
                done = asyncio.run_coroutine_threadsafe(self.server.stop(grace=1.0), self.loop)
                done.result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


@contextlib.contextmanager
def serve_in_thread(data_dir: Path) -> Iterator[Background]:
    """A server with tenants alice and bob on 127.0.0.1, until the block ends."""
    base = Settings(
        listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=data_dir, ingest_workers=2
    )
    cfg, keys = keyed(base)
    runner = _ServerThread(cfg)
    try:
        port = runner.start()
        yield Background(f"127.0.0.1:{port}", keys["alice"], keys["bob"])
    finally:
        runner.stop()
