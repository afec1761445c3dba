"""``LISTEN quiver_batches`` on a connection of its own, on the event loop (psycopg's async
connection: waiting costs nothing). Each notification names a batch whose changes another
transaction committed; ``wake`` is called with the batch ids heard (a wake-up only: the
watch hub reads the changes from the table), and with None every ``POLL_SECONDS`` and right
after (re)connecting, so a notification missed while disconnected never stalls a watcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg
from quiver.server.storage.postgres.batch_rows import CHANNEL
from quiver.server.storage.postgres.connection import CONNECT_TIMEOUT

log = logging.getLogger("quiver.storage")

POLL_SECONDS = 1.0
RECONNECT_SECONDS = 0.5

Wake = Callable[[set[str] | None], Awaitable[None]]


async def listen(url: str, wake: Wake) -> None:
    """Runs until cancelled; reconnects when the connection drops."""
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
        except psycopg.Error as exc:
            log.warning("LISTEN %s: cannot connect (%s); retrying", CHANNEL, exc)
            await asyncio.sleep(RECONNECT_SECONDS)
            continue
        try:
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                await wake(None)  # whatever was missed while not listening
                while True:
                    heard: set[str] = set()
                    async for note in conn.notifies(timeout=POLL_SECONDS):
                        heard.add(note.payload)
                        break  # a burst: fold what follows into one wake
                    async for note in conn.notifies(timeout=0.005, stop_after=1000):
                        heard.add(note.payload)
                    await wake(heard or None)
        except psycopg.Error as exc:
            log.warning("LISTEN %s: connection lost (%s); reconnecting", CHANNEL, exc)
            await asyncio.sleep(RECONNECT_SECONDS)
