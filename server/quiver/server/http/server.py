"""Runs the HTTP edge in the server's own event loop (uvicorn as a task, no signal handlers
of its own: ``quiver serve`` handles signals and drains both edges)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Generator

import uvicorn
from quiver.server.auth.keys import KeyRing
from quiver.server.http.app import build_app
from quiver.server.http.guard import Gate
from quiver.server.http.services import HttpServices
from quiver.server.metrics import Metrics


class BindError(Exception):
    """The HTTP address cannot be listened on."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the process's signals belong to `quiver serve`


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class HttpEdge:
    """The HTTP listener. ``start`` binds and serves; ``close`` refuses new requests (503 in
    OpenAI's envelope) and ends event streams; ``stop`` lets in-flight requests finish."""

    def __init__(
        self,
        listen: str,
        services: HttpServices,
        keys: KeyRing,
        metrics: Metrics,
        *,
        max_connections: int,
    ) -> None:
        self.listen = listen
        self.gate = Gate(keys, metrics)
        self.closing = asyncio.Event()
        self.app = build_app(services, self.gate, self.closing)
        self.max_connections = max_connections
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def _bind(self) -> socket.socket:
        try:
            host, port = split_listen(self.listen)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
        except (ValueError, OSError) as exc:
            raise BindError(f"cannot listen on {self.listen} for HTTP: {exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted connections inherit it: uvicorn writes a response's head and body
            # apart, and without it the body waits ~40 ms for the client's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise BindError(f"cannot listen on {self.listen} for HTTP: {exc}") from None
        return sock

    async def start(self) -> int:
        sock = self._bind()
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            limit_concurrency=self.max_connections,
            h11_max_incomplete_event_size=64 * 1024,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-edge")
        while not self._server.started and not self._task.done():  # noqa: ASYNC110 - uvicorn has no startup event
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
            raise BindError(f"the HTTP server on {self.listen} stopped at once")
        return self.port

    def open(self) -> None:
        self.gate.closed_reason = None

    def close(self, reason: str) -> None:
        """From now on every request answers 503; event streams end."""
        self.gate.closed_reason = reason
        self.closing.set()

    async def stop(self, grace: float) -> None:
        """In-flight requests get ``grace`` seconds to finish, then are cancelled."""
        if self._server is None or self._task is None:
            return
        # uvicorn takes whole seconds, and 0 would mean "wait for ever".
        self._server.config.timeout_graceful_shutdown = max(1, math.ceil(grace))
        self._server.should_exit = True
        await self._task
