"""An embedder for any OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, vLLM, TEI,
Ollama ...), using only the standard library.

Texts go in requests of at most ``batch_size`` inputs, each with ``prefix`` put in front (a
model such as e5 wants "query: " or "passage: "), each request waiting at most ``timeout_s``.

Timeouts: a request of several inputs that times out is split in halves, each sent again
(and split again if it times out too); the rest of that ``embed`` call then uses the size
that worked. A single input that times out is retried ``timeout_retries`` times with backoff
before the embedding fails, naming the timeout.

Retries: HTTP 429, HTTP 5xx and connection errors are retried up to ``max_retries`` times
(so at most ``1 + max_retries`` requests per batch), sleeping
``min(backoff_max_s, backoff_base_s * 2**retry)`` scaled by a random factor in [0.5, 1]
between attempts, or the response's ``Retry-After`` (seconds or an HTTP date; capped by
``backoff_max_s``) when it sends one. Any other 4xx fails at once with the endpoint's own
error message, and so does a malformed response.

``embed_until`` stops at a caller's deadline: no request waits past it, no backoff sleeps past
it (``EmbeddingDeadlineExceeded``). ``slots`` bounds the requests in flight across processes
(embedders/request_slots.py).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from quiver.server.embedders.base import (
    EmbeddingDeadlineExceeded,
    EmbeddingError,
    FloatMatrix,
    l2_normalise,
)
from quiver.server.embedders.openai_tuning import TIMEOUT_RETRIES
from quiver.server.embedders.request_slots import NoFreeSlot, RequestSlots

_PROBE_TEXT = "dimension probe"
_BODY_EXCERPT = 300


class _RetryableError(Exception):
    def __init__(self, description: str, retry_after_s: float | None = None) -> None:
        super().__init__(description)
        self.retry_after_s = retry_after_s


class _TimedOut(Exception):
    """One request waited its whole timeout for an answer."""


class OpenAIEmbedder:
    """Embeds through ``POST {base_url}/embeddings``; see the module docstring for timeouts,
    splitting and retries.

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
        timeout_retries: int = TIMEOUT_RETRIES,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        prefix: str = "",
        slots: RequestSlots | None = None,
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
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout_retries < 0:
            raise ValueError(f"timeout_retries must be >= 0, got {timeout_retries}")
        self.endpoint = f"{base_url.rstrip('/')}/embeddings"
        self.api_model = model
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.timeout_retries = timeout_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.prefix = prefix
        self._slots = slots
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
        return self.embed_until(texts, None)

    def embed_until(self, texts: Sequence[str], deadline: float | None) -> FloatMatrix:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        inputs = [self.prefix + text for text in texts] if self.prefix else list(texts)
        blocks: list[FloatMatrix] = []
        size = self.batch_size
        done = 0
        while done < len(inputs):
            batch = inputs[done : done + size]
            block, size = self._embed_splitting(batch, deadline)
            blocks.append(block)
            done += len(batch)
        return l2_normalise(np.concatenate(blocks))

    def _embed_splitting(self, batch: list[str], deadline: float | None) -> tuple[FloatMatrix, int]:
        """The batch's vectors and the largest request size that answered in time."""
        try:
            return self._embed_batch(batch, deadline), len(batch)
        except _TimedOut:
            half = (len(batch) + 1) // 2
            first, first_size = self._embed_splitting(batch[:half], deadline)
            second, second_size = self._embed_splitting(batch[half:], deadline)
            return np.concatenate([first, second]), min(first_size, second_size)

    def _embed_batch(self, batch: list[str], deadline: float | None) -> FloatMatrix:
        payload: dict[str, Any] = {
            "model": self.api_model,
            "input": batch,
            "encoding_format": "float",
        }
        if self._requested_dimensions is not None:
            payload["dimensions"] = self._requested_dimensions
        body = json.dumps(payload).encode()
        return self._parse(self._post_with_retries(body, batch, deadline), len(batch))

    def _post_with_retries(self, body: bytes, batch: list[str], deadline: float | None) -> bytes:
        """The response body; raises _TimedOut for a request of several inputs that timed
        out (the caller splits it), EmbeddingError when retries are used up."""
        retries = timeouts = 0
        while True:
            timeout = self._timeout_before(deadline)
            try:
                return self._post(body, timeout, deadline)
            except _TimedOut as exc:
                if timeout < self.timeout_s:  # cut short by the caller's deadline
                    raise self._deadline_error() from exc
                if len(batch) > 1:
                    raise
                if timeouts == self.timeout_retries:
                    raise EmbeddingError(
                        f"POST {self.endpoint}: one input ({len(batch[0])} characters) got no "
                        f"answer within {self.timeout_s:g} s in {timeouts + 1} attempts "
                        "(raise --openai-timeout, or use a faster endpoint)"
                    ) from exc
                delay = self._delay(timeouts, None)
                timeouts += 1
            except _RetryableError as exc:
                if retries == self.max_retries:
                    raise EmbeddingError(
                        f"POST {self.endpoint} failed after {retries + 1} attempts: {exc}"
                    ) from exc
                delay = self._delay(retries, exc.retry_after_s)
                retries += 1
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise self._deadline_error()
            self._sleep(delay)

    def _timeout_before(self, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout_s
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._deadline_error()
        return min(self.timeout_s, left)

    def _deadline_error(self) -> EmbeddingDeadlineExceeded:
        return EmbeddingDeadlineExceeded(
            f"POST {self.endpoint}: the caller's deadline passed before the endpoint answered"
        )

    def _delay(self, retry: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.backoff_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0**retry)
        return ceiling * self._random.uniform(0.5, 1.0)

    def _post(self, body: bytes, timeout: float, deadline: float | None) -> bytes:
        if self._slots is None:
            return self._send(body, timeout)
        try:
            with self._slots.hold(deadline):
                return self._send(body, timeout)
        except NoFreeSlot as exc:
            raise self._deadline_error() from exc

    def _send(self, body: bytes, timeout: float) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                detail = _error_message(exc.read())
            except (OSError, http.client.HTTPException):
                detail = exc.reason
            if status == 429 or status >= 500:
                raise _RetryableError(
                    f"HTTP {status}: {detail}", _retry_after(exc.headers.get("Retry-After"))
                ) from exc
            raise EmbeddingError(
                f"POST {self.endpoint} failed with HTTP {status} (not retried): {detail}"
            ) from exc
        except TimeoutError as exc:
            raise _TimedOut(f"no answer within {timeout:g} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _TimedOut(f"no answer within {timeout:g} s") from exc
            raise _RetryableError(f"connection error: {exc.reason!r}") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise _RetryableError(f"connection error: {exc!r}") from exc

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
    """Parse a ``Retry-After`` header: seconds, or an HTTP date (seconds from now)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
        return max(0.0, seconds)
    return seconds if seconds >= 0 else None


def _error_message(raw: bytes) -> str:
    """The endpoint's own words: OpenAI's ``{"error": {"message": …}}`` when it sends that
    shape, else an excerpt of the body."""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return _excerpt(raw)
    return _excerpt(str(message).encode()) if message else _excerpt(raw)


def _excerpt(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."
