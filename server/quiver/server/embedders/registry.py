"""Build an embedder from the model name recorded on a vector store.

Model names: ``hash`` (the built-in feature-hashing embedder) or ``openai:<model>`` (any
OpenAI-compatible endpoint; ``<model>`` may itself contain colons, e.g. Ollama's
``openai:nomic-embed-text:latest``).
"""

from __future__ import annotations

from dataclasses import dataclass

from quiver.server.embedders.base import Embedder
from quiver.server.embedders.hashing import HashEmbedder
from quiver.server.embedders.openai_compat import OpenAIEmbedder

HASH = "hash"
OPENAI = "openai"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything needed to build a store's embedder; picklable, sent to worker processes.

    ``base_url`` and ``api_key`` apply to ``openai:`` models only; ``base_url`` None means
    ``https://api.openai.com/v1``.
    """

    model: str
    dimensions: int
    base_url: str | None = None
    api_key: str | None = None

    def __repr__(self) -> str:  # never print the key
        key = None if self.api_key is None else "***"
        return (
            f"EmbedderSpec(model={self.model!r}, dimensions={self.dimensions}, "
            f"base_url={self.base_url!r}, api_key={key!r})"
        )


def parse_model_name(name: str) -> tuple[str, str]:
    """Split a model name into ``(provider, model)``: ``hash`` -> ``("hash", "")``,
    ``openai:text-embedding-3-small`` -> ``("openai", "text-embedding-3-small")``.

    Raises ValueError for an unknown provider or a missing model name.
    """
    if name == HASH:
        return HASH, ""
    provider, sep, model = name.partition(":")
    if provider == OPENAI and sep:
        if not model.strip():
            raise ValueError(f"embedding model {name!r} has an empty model name after 'openai:'")
        return OPENAI, model
    raise ValueError(f"unknown embedding model {name!r}: expected 'hash' or 'openai:<model name>'")


def make_embedder(spec: EmbedderSpec) -> Embedder:
    """Build the embedder for ``spec`` (ValueError for an unknown model name)."""
    provider, model = parse_model_name(spec.model)
    if provider == HASH:
        return HashEmbedder(spec.dimensions)
    return OpenAIEmbedder(
        base_url=spec.base_url or DEFAULT_OPENAI_BASE_URL,
        model=model,
        api_key=spec.api_key,
        dimensions=spec.dimensions,
    )
