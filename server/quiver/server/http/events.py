"""``GET …/file_batches/{batch_id}/events``: WatchFileBatch as Server-Sent Events.

Each message is one event: ``id`` = its sequence, ``event`` = ``snapshot`` or ``change``,
``data`` = the message as JSON. A client that reconnects sends ``Last-Event-ID`` (or
``?after_sequence=``) and is not sent older changes again. The stream ends after the batch's
terminal state, or when the server starts draining. Watchers count against the same caps as
gRPC's (``--max-watchers``, ``--max-watchers-per-tenant``); a slow reader holds up only
itself (the server's send waits for the socket, and the hub folds changes meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from quiver.server.core.batches import FileBatches
from quiver.server.core.errors import InvalidArgument
from quiver.server.core.principal import Principal
from quiver.server.core.validation import check_sequence
from quiver.server.core.watch import WatchMessage
from quiver.server.http import convert
from starlette.requests import Request
from starlette.responses import StreamingResponse

KEEPALIVE_SECONDS = 15.0


def _after(request: Request) -> int:
    header = request.headers.get("last-event-id", "")
    raw, field = (
        (header, "Last-Event-ID")
        if header
        else (
            request.query_params.get("after_sequence", ""),
            "after_sequence",
        )
    )
    if not raw:
        return 0
    if len(raw) > 20 or not raw.isascii() or not raw.isdigit():
        raise InvalidArgument.one(
            field, f"must be a sequence from a previous event, not {raw[:40]!r}"
        )
    return check_sequence(int(raw), field)


def encode(message: WatchMessage) -> bytes:
    data = json.dumps(convert.watch_out(message), separators=(",", ":"))
    kind = "snapshot" if message.snapshot else "change"
    return f"id: {message.sequence}\nevent: {kind}\ndata: {data}\n\n".encode()


async def batch_events(
    request: Request,
    principal: Principal,
    batches: FileBatches,
    store_id: str,
    batch_id: str,
    closing: asyncio.Event,
) -> StreamingResponse:
    stream: Any = batches.watch(principal, store_id, batch_id, _after(request))
    try:  # the snapshot first: a missing batch or a full watcher cap answers an error
        first = await anext(stream)
    except BaseException:
        await stream.aclose()
        raise
    return StreamingResponse(
        _events(stream, first, closing),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _events(stream: Any, first: WatchMessage, closing: asyncio.Event) -> AsyncIterator[bytes]:
    closed = asyncio.ensure_future(closing.wait())
    pending: asyncio.Future[WatchMessage] | None = None
    try:
        yield encode(first)
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(stream))
            done, _ = await asyncio.wait(
                {pending, closed}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                try:
                    message = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield encode(message)
            elif closed in done:
                return
            else:
                yield b": keep-alive\n\n"
    finally:
        for task in (pending, closed):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await task
        await stream.aclose()
