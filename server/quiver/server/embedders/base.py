"""The embedder interface shared by every embedding provider."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]


class EmbeddingError(Exception):
    """Embedding failed for good (after any retries); the message says what happened."""


class EmbeddingDeadlineExceeded(EmbeddingError):
    """The caller's deadline passed before the embedding was computed."""


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    @property
    def model(self) -> str:
        """The model name recorded on a vector store, e.g. ``hash`` or ``openai:<model>``."""
        ...

    @property
    def dimensions(self) -> int:
        """The length of every vector this embedder returns."""
        ...

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Return a float32 array of shape ``(len(texts), dimensions)``.

        Every row has unit L2 norm, except that a text with no features gives a zero row.
        Raises ``EmbeddingError`` when the embedding cannot be computed.
        """
        ...


@runtime_checkable
class DeadlineEmbedder(Protocol):
    """An embedder that calls out (e.g. over HTTP) and can stop at a caller's deadline."""

    def embed_until(self, texts: Sequence[str], deadline: float | None) -> FloatMatrix:
        """``embed``, but raising ``EmbeddingDeadlineExceeded`` rather than working past
        ``deadline`` (a ``time.monotonic()`` instant; None: no deadline)."""
        ...


@runtime_checkable
class QueryEmbedder(Protocol):
    """An embedder that embeds search queries differently from chunks (e.g. with the
    ``query: `` prefix an e5 model needs)."""

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix: ...


def embed_queries(embedder: Embedder, texts: Sequence[str]) -> FloatMatrix:
    """Embed search queries: ``embed_queries`` where the embedder has it, else ``embed``."""
    if isinstance(embedder, QueryEmbedder):
        return embedder.embed_queries(texts)
    return embedder.embed(texts)


def l2_normalise(matrix: npt.ArrayLike) -> FloatMatrix:
    """Return ``matrix`` as float32 with each non-zero row scaled to unit L2 norm."""
    values = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    scaled: npt.NDArray[np.float64] = np.divide(
        values, norms, out=np.zeros_like(values), where=norms > 0
    )
    return scaled.astype(np.float32)
