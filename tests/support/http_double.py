"""A real HTTP server on a loopback port for test doubles (fake embedding endpoints)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler], name: str) -> Iterator[str]:
    """Serves ``handler`` on 127.0.0.1 in a thread; yields its base URL (``…/v1``)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def reply_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: object,
    headers: dict[str, str] | None = None,
) -> None:
    """Answers ``handler``'s request with ``body`` as JSON."""
    payload = json.dumps(body).encode()
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


# -- a scripted OpenAI-compatible /v1/embeddings endpoint ------------------------------------


def fake_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic vector for ``text`` (the same in every process)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
    rng = random.Random(seed)
    return [rng.gauss(0.0, 1.0) + 0.01 for _ in range(dimensions)]


@dataclass
class SlowEmbeddings:
    """POST /v1/embeddings, slow or failing on demand.

    - ``delay_s``: every request waits this long before it is answered;
    - ``max_fast_inputs``: a request of more inputs than this waits for ``release`` (up to
      60 s) before it is answered, like a CPU endpoint overwhelmed by a large batch (0: off);
    - ``hanging``: every request waits for ``release``;
    - ``fail``: the HTTP statuses of the next requests (popped one per request), each with
      ``retry_after`` as its Retry-After header when set, and an OpenAI-shaped error body
      holding ``error_message``.

    Records every request's body (``bodies``), how many are in flight (``in_flight``: from
    arrival until the answer starts going out) and the most ever in flight at once
    (``max_in_flight``).
    """

    base_url: str = ""
    dimensions: int = 16
    delay_s: float = 0.0
    max_fast_inputs: int = 0
    hanging: bool = False
    fail: list[int] = field(default_factory=list)
    retry_after: str | None = None
    error_message: str = "fake error"
    release: threading.Event = field(default_factory=threading.Event)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inputs(self) -> list[str]:
        """Every input of every request so far, in arrival order."""
        with self.lock:
            return [text for body in self.bodies for text in body["input"]]

    def wait_for_requests(self, count: int, within: float = 10.0) -> None:
        """Waits until ``count`` requests have been read (a request its client gave up on
        may be read a little after the client moved on)."""
        until = time.monotonic() + within
        while len(self.sizes()) < count and time.monotonic() < until:
            time.sleep(0.01)

    def sizes(self) -> list[int]:
        """The number of inputs of each request so far."""
        with self.lock:
            return [len(body["input"]) for body in self.bodies]

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self.lock:
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            status = self.fail.pop(0) if self.fail else 200
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            slow = 0 < self.max_fast_inputs < len(body["input"])
            if self.hanging or slow:
                self.release.wait(timeout=60)
        finally:
            with self.lock:  # no longer in flight once the answer starts going out
                self.in_flight -= 1
        if status != 200:
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            reply_json(handler, status, {"error": {"message": self.error_message}}, headers)
            return
        dimensions = int(body.get("dimensions") or self.dimensions)
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(text, dimensions)}
            for i, text in enumerate(body["input"])
        ]
        reply_json(handler, 200, {"object": "list", "data": data, "model": body["model"]})

    def handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                # A client that timed out went away: its answer has nowhere to go.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    endpoint._answer(self, body)

        return Handler


@contextlib.contextmanager
def slow_embeddings(**options: Any) -> Iterator[SlowEmbeddings]:
    """A running ``SlowEmbeddings`` endpoint; released (no request left waiting) at exit."""
    endpoint = SlowEmbeddings(**options)
    with serve_http(endpoint.handler(), "slow-embeddings") as base_url:
        endpoint.base_url = base_url
        try:
            yield endpoint
        finally:
            endpoint.hanging = False
            endpoint.release.set()
