"""A real HTTP server on a loopback port for test doubles (fake embedding endpoints)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


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


def vector(text: str, dimensions: int) -> list[float]:
    """A fake embedding of ``text``: the same text always gives the same vector."""
    rng = np.random.default_rng(abs(hash(text)) % (2**32))
    return [float(x) for x in rng.standard_normal(dimensions) + 0.01]
