"""An embedder for any OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, vLLM, TEI,
Ollama ...), using only the standard library.

Retries: HTTP 429, HTTP 5xx, connection errors and timeouts are retried up to
``max_retries`` times (so at most ``1 + max_retries`` requests per batch), sleeping
``min(backoff_max_s, backoff_base_s * 2**retry)`` scaled by a random factor in [0.5, 1]
between attempts, or the response's ``Retry-After`` seconds (capped by ``backoff_max_s``)
when it sends one. Any other 4xx, or a malformed response, fails at once.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from quiver.server.embedders.base import EmbeddingError, FloatMatrix, l2_normalise

_PROBE_TEXT = "dimension probe"
_BODY_EXCERPT = 300


class _RetryableError(Exception):
    def __init__(self, description: str, retry_after_s: float | None = None) -> None:
        super().__init__(description)
        self.retry_after_s = retry_after_s


class OpenAIEmbedder:
    """Embeds through ``POST {base_url}/embeddings``; see the module docstring for retries.

    ``model`` is the provider's model name (``text-embedding-3-small``); the ``model``
    property reports it as ``openai:<model>``. When ``dimensions`` is given it is sent in
    every request (unless ``send_dimensions`` is False) and every response is checked
    against it; when it is None the dimension
    is learned from the first response (``probe_dimensions()`` embeds one short text to
    learn it, and reading ``dimensions`` before any response does the same).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        dimensions: int | None = None,
        send_dimensions: bool = True,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model:
            raise ValueError("model must not be empty")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if dimensions is not None and dimensions < 1:
            raise ValueError(f"dimensions must be positive, got {dimensions}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.endpoint = f"{base_url.rstrip('/')}/embeddings"
        self.api_model = model
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._api_key = api_key
        self._requested_dimensions = dimensions if send_dimensions else None
        self._dimensions = dimensions
        self._sleep = sleep
        self._random = random.Random()

    @property
    def model(self) -> str:
        return f"openai:{self.api_model}"

    @property
    def dimensions(self) -> int:
        if self._dimensions is None:
            return self.probe_dimensions()
        return self._dimensions

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder(endpoint={self.endpoint!r}, model={self.api_model!r}, "
            f"dimensions={self._dimensions})"
        )

    def probe_dimensions(self) -> int:
        """Embed one short text and return (and remember) the vector dimension."""
        return int(self.embed([_PROBE_TEXT]).shape[1])

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        batches = [
            self._embed_batch(list(texts[i : i + self.batch_size]))
            for i in range(0, len(texts), self.batch_size)
        ]
        return l2_normalise(np.concatenate(batches))

    def _embed_batch(self, batch: list[str]) -> FloatMatrix:
        payload: dict[str, Any] = {
            "model": self.api_model,
            "input": batch,
            "encoding_format": "float",
        }
        if self._requested_dimensions is not None:
            payload["dimensions"] = self._requested_dimensions
        return self._parse(self._post_with_retries(json.dumps(payload).encode()), len(batch))

    def _post_with_retries(self, body: bytes) -> bytes:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._post(body)
            except _RetryableError as exc:
                if attempt + 1 == attempts:
                    raise EmbeddingError(
                        f"POST {self.endpoint} failed after {attempts} attempts: {exc}"
                    ) from exc
                self._sleep(self._delay(attempt, exc.retry_after_s))
        raise AssertionError("unreachable")

    def _delay(self, retry: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.backoff_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0**retry)
        return ceiling * self._random.uniform(0.5, 1.0)

    def _post(self, body: bytes) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                detail = _excerpt(exc.read())
            except (OSError, http.client.HTTPException):
                detail = exc.reason
            if status == 429 or status >= 500:
                raise _RetryableError(
                    f"HTTP {status}: {detail}", _retry_after(exc.headers.get("Retry-After"))
                ) from exc
            raise EmbeddingError(
                f"POST {self.endpoint} failed with HTTP {status} (not retried): {detail}"
            ) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _RetryableError(f"connection error: {reason!r}") from exc

    def _parse(self, raw: bytes, expected_count: int) -> FloatMatrix:
        where = f"response from {self.endpoint}"
        try:
            items = json.loads(raw)["data"]
            ordered = sorted(items, key=lambda item: int(item["index"]))
            indexes = [int(item["index"]) for item in ordered]
            matrix = np.asarray([item["embedding"] for item in ordered], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"malformed {where}: {exc!r}: {_excerpt(raw)}") from exc
        if indexes != list(range(expected_count)):
            raise EmbeddingError(
                f"{where} has {len(indexes)} embeddings, expected {expected_count} "
                f"with indexes 0..{expected_count - 1}"
            )
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise EmbeddingError(f"{where} has embeddings of unequal or zero length")
        if self._dimensions is None:
            self._dimensions = int(matrix.shape[1])
        elif matrix.shape[1] != self._dimensions:
            raise EmbeddingError(
                f"{where} has embeddings of dimension {matrix.shape[1]}, "
                f"expected {self._dimensions}"
            )
        if not np.isfinite(matrix).all():
            raise EmbeddingError(f"{where} has non-finite values")
        return matrix


def _retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds (HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _excerpt(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."
