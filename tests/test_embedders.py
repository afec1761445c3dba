"""Embedders: the hashing embedder, the OpenAI-compatible client (against a local HTTP
server on 127.0.0.1) and the registry."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from quiver.server.embedders import (
    Embedder,
    EmbedderSpec,
    EmbeddingError,
    HashEmbedder,
    OpenAIEmbedder,
    make_embedder,
    parse_model_name,
)

# --- HashEmbedder -----------------------------------------------------------------------

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcode façade: 東京タワー and naïve café",
    "",
    "!!! ... ???",
    "repeat repeat repeat repeat something else",
]


def test_hash_shape_dtype_and_normalisation() -> None:
    embedder: Embedder = HashEmbedder(256)
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 256)
    assert vectors.dtype == np.float32
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 4]], 1.0, rtol=1e-6)
    assert not vectors[2].any() and not vectors[3].any()  # no words: zero vector
    assert embedder.embed([]).shape == (0, 256)
    assert embedder.model == "hash" and embedder.dimensions == 256


def test_hash_is_stable_golden_values() -> None:
    """Stored vectors depend on these exact values: changing the features breaks stores."""
    hello = HashEmbedder(64).embed(["Hello world"])[0]
    expected = np.zeros(64, dtype=np.float32)
    expected[[12, 48, 56]] = [2 / 3, 2 / 3, 1 / 3]
    np.testing.assert_allclose(hello, expected, atol=1e-6)

    fox = HashEmbedder(32).embed(["The quick brown fox jumps over the lazy dog; the end."])[0]
    a, b, c = 0.1274, 0.2548, 0.5096
    golden = [a, 0.5347, a, 0, 0, -a, 0, b, -b, 0, -c, a, 0, -b, 0, b]
    golden += [-a, 0, 0, 0, 0, 0, -a, -a, a, 0, 0, 0, 0, 0, b, 0]
    np.testing.assert_allclose(fox, golden, atol=1e-4)


def test_hash_is_deterministic_across_processes(tmp_path: Any) -> None:
    here = HashEmbedder(512).embed(TEXTS)
    script = (
        "import sys, json, numpy as np\n"
        "from quiver.server.embedders import HashEmbedder\n"
        "texts = json.loads(sys.stdin.read())\n"
        "np.save(sys.argv[1], HashEmbedder(512).embed(texts))\n"
    )
    for seed in ("1", "98765"):
        out = tmp_path / f"vectors-{seed}.npy"
        subprocess.run(
            [sys.executable, "-c", script, str(out)],
            input=json.dumps(TEXTS),
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
        )
        np.testing.assert_array_equal(np.load(out), here)


def test_hash_case_and_unicode_words() -> None:
    embedder = HashEmbedder(512)
    upper, lower, other = embedder.embed(["CAFÉ Straße", "café straße", "cafe strasse"])
    np.testing.assert_array_equal(upper, lower)
    assert float(upper @ other) < 0.5  # accents and ß are part of the words


def test_hash_similar_texts_are_closer_than_unrelated() -> None:
    query, similar, unrelated = HashEmbedder(512).embed(
        [
            "how do I reset my account password",
            "steps to reset the password of your account",
            "the weather in paris is sunny and warm today",
        ]
    )
    assert float(query @ similar) > 0.3
    assert float(query @ similar) > float(query @ unrelated) + 0.2


def test_hash_bigrams_capture_word_order() -> None:
    ab, ba, ab_again = HashEmbedder(1024).embed(["dog bites man", "man bites dog", "dog bites man"])
    np.testing.assert_array_equal(ab, ab_again)
    assert 0.5 < float(ab @ ba) < 0.99  # same words, different bigrams


@pytest.mark.parametrize("dims", [0, 7, 4097, -1])
def test_hash_dimension_validation(dims: int) -> None:
    with pytest.raises(ValueError, match=r"8\.\.4096"):
        HashEmbedder(dims)


def test_hash_dimension_bounds_accepted() -> None:
    assert HashEmbedder(8).embed(["x y z"]).shape == (1, 8)
    assert HashEmbedder(4096).embed(["x y z"]).shape == (1, 4096)


def test_hash_batch_equals_one_by_one() -> None:
    embedder = HashEmbedder(128)
    batch = embedder.embed(TEXTS)
    for text, row in zip(TEXTS, batch, strict=True):
        np.testing.assert_array_equal(embedder.embed([text])[0], row)


# --- OpenAI-compatible embedder against a local server -----------------------------------

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class FakeEndpoint:
    """A scripted /v1/embeddings endpoint; ``respond`` gets (request number, JSON body)."""

    base_url: str
    respond: Callable[[int, dict[str, Any]], Reply]
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def vector_for(text: str, dims: int = 3) -> list[float]:
    """A deterministic, text-dependent test vector (text 'tN' -> [N + 1, 1, 0, ...])."""
    number = int(text[1:]) if text[1:].isdigit() else len(text)
    return [float(number + 1), 1.0] + [0.0] * (dims - 2)


def ok_reply(body: dict[str, Any], dims: int = 3, reverse: bool = False) -> Reply:
    data = [
        {"object": "embedding", "index": i, "embedding": vector_for(text, dims)}
        for i, text in enumerate(body["input"])
    ]
    if reverse:
        data.reverse()
    payload = {"object": "list", "data": data, "model": body["model"]}
    return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def error_reply(status: int, headers: dict[str, str] | None = None) -> Reply:
    return status, headers or {}, json.dumps({"error": {"message": f"status {status}"}}).encode()


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    state = FakeEndpoint(base_url="", respond=lambda n, body: ok_reply(body))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.loads(raw)
            with lock:
                state.bodies.append(body)
                state.headers.append(dict(self.headers.items()))
                state.paths.append(self.path)
                number = len(state.bodies)
            status, headers, payload = state.respond(number, body)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and went away

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_client(endpoint: FakeEndpoint, sleeps: list[float], **kwargs: Any) -> OpenAIEmbedder:
    options: dict[str, Any] = {"dimensions": 3, "max_retries": 3, "timeout_s": 5.0}
    options.update(kwargs)
    return OpenAIEmbedder(endpoint.base_url, "test-model", sleep=sleeps.append, **options)


def expected_rows(texts: list[str], dims: int = 3) -> np.ndarray[Any, np.dtype[np.float32]]:
    rows = np.array([vector_for(t, dims) for t in texts], dtype=np.float32)
    normalised: np.ndarray[Any, np.dtype[np.float32]] = rows / np.linalg.norm(
        rows, axis=1, keepdims=True
    )
    return normalised


def test_openai_request_shape_and_normalised_result(endpoint: FakeEndpoint) -> None:
    sleeps: list[float] = []
    client: Embedder = make_client(endpoint, sleeps, api_key="sk-test")
    vectors = client.embed(["t1", "t2"])
    np.testing.assert_allclose(vectors, expected_rows(["t1", "t2"]), rtol=1e-6)
    assert vectors.dtype == np.float32
    assert client.model == "openai:test-model" and client.dimensions == 3
    assert endpoint.paths == ["/v1/embeddings"]
    assert endpoint.bodies == [
        {"model": "test-model", "input": ["t1", "t2"], "dimensions": 3, "encoding_format": "float"}
    ]
    assert endpoint.headers[0]["Authorization"] == "Bearer sk-test"
    assert endpoint.headers[0]["Content-Type"] == "application/json"
    assert sleeps == []


def test_openai_429_then_success_honours_retry_after(endpoint: FakeEndpoint) -> None:
    endpoint.respond = lambda n, body: (
        error_reply(429, {"Retry-After": "2"}) if n == 1 else ok_reply(body)
    )
    sleeps: list[float] = []
    vectors = make_client(endpoint, sleeps).embed(["t5"])
    np.testing.assert_allclose(vectors, expected_rows(["t5"]), rtol=1e-6)
    assert len(endpoint.bodies) == 2
    assert sleeps == [2.0]
    assert "Authorization" not in endpoint.headers[0]  # no key, no header


def test_openai_retry_after_is_capped(endpoint: FakeEndpoint) -> None:
    endpoint.respond = lambda n, body: (
        error_reply(503, {"Retry-After": "120"}) if n == 1 else ok_reply(body)
    )
    sleeps: list[float] = []
    make_client(endpoint, sleeps, backoff_max_s=4.0).embed(["t1"])
    assert sleeps == [4.0]


def test_openai_always_500_gives_up_after_max_retries(endpoint: FakeEndpoint) -> None:
    endpoint.respond = lambda n, body: error_reply(500)
    sleeps: list[float] = []
    client = make_client(endpoint, sleeps, max_retries=3, backoff_base_s=0.5, backoff_max_s=1.5)
    with pytest.raises(EmbeddingError) as info:
        client.embed(["t1"])
    assert len(endpoint.bodies) == 4  # the first attempt and 3 retries
    message = str(info.value)
    assert "HTTP 500" in message and "4 attempts" in message and "/v1/embeddings" in message
    # Exponential with jitter in [0.5, 1] of min(cap, base * 2**retry).
    assert len(sleeps) == 3
    for retry, delay in enumerate(sleeps):
        ceiling = min(1.5, 0.5 * 2**retry)
        assert ceiling / 2 <= delay <= ceiling


def test_openai_400_fails_at_once(endpoint: FakeEndpoint) -> None:
    endpoint.respond = lambda n, body: error_reply(400)
    sleeps: list[float] = []
    with pytest.raises(EmbeddingError, match="HTTP 400"):
        make_client(endpoint, sleeps).embed(["t1"])
    assert len(endpoint.bodies) == 1
    assert sleeps == []


def test_openai_batches_of_batch_size(endpoint: FakeEndpoint) -> None:
    texts = [f"t{i}" for i in range(150)]
    sleeps: list[float] = []
    vectors = make_client(endpoint, sleeps).embed(texts)
    assert [len(body["input"]) for body in endpoint.bodies] == [64, 64, 22]
    assert [text for body in endpoint.bodies for text in body["input"]] == texts
    np.testing.assert_allclose(vectors, expected_rows(texts), rtol=1e-6)


def test_openai_reorders_by_index(endpoint: FakeEndpoint) -> None:
    endpoint.respond = lambda n, body: ok_reply(body, reverse=True)
    texts = ["t1", "t2", "t3", "t4"]
    vectors = make_client(endpoint, []).embed(texts)
    np.testing.assert_allclose(vectors, expected_rows(texts), rtol=1e-6)


def test_openai_wrong_dimension_is_an_error(endpoint: FakeEndpoint) -> None:
    endpoint.respond = lambda n, body: ok_reply(body, dims=5)
    with pytest.raises(EmbeddingError, match="dimension 5, expected 3"):
        make_client(endpoint, []).embed(["t1"])
    assert len(endpoint.bodies) == 1


def test_openai_wrong_count_is_an_error(endpoint: FakeEndpoint) -> None:
    def drop_last(n: int, body: dict[str, Any]) -> Reply:
        return ok_reply({**body, "input": body["input"][:-1]})

    endpoint.respond = drop_last
    with pytest.raises(EmbeddingError, match="1 embeddings, expected 2"):
        make_client(endpoint, []).embed(["t1", "t2"])


def test_openai_malformed_json_is_an_error(endpoint: FakeEndpoint) -> None:
    endpoint.respond = lambda n, body: (200, {}, b"<html>not json</html>")
    with pytest.raises(EmbeddingError, match="malformed"):
        make_client(endpoint, []).embed(["t1"])


def test_openai_learns_dimension(endpoint: FakeEndpoint) -> None:
    endpoint.respond = lambda n, body: ok_reply(body, dims=6)
    client = make_client(endpoint, [], dimensions=None)
    assert client.probe_dimensions() == 6
    assert client.dimensions == 6
    assert "dimensions" not in endpoint.bodies[0]
    assert client.embed(["t1", "t2"]).shape == (2, 6)
    assert client.embed([]).shape == (0, 6)
    assert len(endpoint.bodies) == 2


def test_openai_dimension_property_probes_when_unknown(endpoint: FakeEndpoint) -> None:
    client = make_client(endpoint, [], dimensions=None)
    assert client.dimensions == 3
    assert len(endpoint.bodies) == 1


def test_openai_timeout_is_retried(endpoint: FakeEndpoint) -> None:
    def slow_first(n: int, body: dict[str, Any]) -> Reply:
        if n == 1:
            time.sleep(0.6)
        return ok_reply(body)

    endpoint.respond = slow_first
    sleeps: list[float] = []
    vectors = make_client(endpoint, sleeps, timeout_s=0.2).embed(["t1"])
    np.testing.assert_allclose(vectors, expected_rows(["t1"]), rtol=1e-6)
    assert len(sleeps) == 1 and len(endpoint.bodies) == 2


def test_openai_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    client = OpenAIEmbedder(
        f"http://127.0.0.1:{port}/v1", "m", dimensions=3, max_retries=2, sleep=sleeps.append
    )
    with pytest.raises(EmbeddingError, match="failed after 3 attempts: connection error"):
        client.embed(["t1"])
    assert len(sleeps) == 2


def test_openai_argument_validation() -> None:
    with pytest.raises(ValueError):
        OpenAIEmbedder("ftp://example/v1", "m")
    with pytest.raises(ValueError):
        OpenAIEmbedder("http://127.0.0.1/v1", "")
    with pytest.raises(ValueError):
        OpenAIEmbedder("http://127.0.0.1/v1", "m", batch_size=0)


# --- registry ----------------------------------------------------------------------------


def test_parse_model_name() -> None:
    assert parse_model_name("hash") == ("hash", "")
    assert parse_model_name("openai:text-embedding-3-small") == (
        "openai",
        "text-embedding-3-small",
    )
    assert parse_model_name("openai:nomic-embed-text:latest") == (
        "openai",
        "nomic-embed-text:latest",
    )
    for bad in ["", "openai", "openai:", "openai: ", "hash:x", "cohere:embed", "HASH"]:
        with pytest.raises(ValueError):
            parse_model_name(bad)


def test_make_embedder() -> None:
    hashing = make_embedder(EmbedderSpec(model="hash", dimensions=64))
    assert isinstance(hashing, HashEmbedder) and hashing.dimensions == 64

    spec = EmbedderSpec("openai:text-embedding-3-small", 256, "http://127.0.0.1:9/v1", "sk-x")
    remote = make_embedder(pickle.loads(pickle.dumps(spec)))
    assert isinstance(remote, OpenAIEmbedder)
    assert remote.model == "openai:text-embedding-3-small"
    assert remote.api_model == "text-embedding-3-small"
    assert remote.endpoint == "http://127.0.0.1:9/v1/embeddings"
    assert remote.dimensions == 256  # known: no request made
    assert "sk-x" not in repr(spec)

    with pytest.raises(ValueError, match="unknown embedding model"):
        make_embedder(EmbedderSpec(model="bert", dimensions=8))
    with pytest.raises(ValueError, match=r"8\.\.4096"):
        make_embedder(EmbedderSpec(model="hash", dimensions=4))
