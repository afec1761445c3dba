"""Embedders: turn texts into L2-normalised float32 vectors (pure Python, no gRPC)."""

from quiver.server.embedders.base import Embedder, EmbeddingError
from quiver.server.embedders.hashing import HashEmbedder
from quiver.server.embedders.model_names import parse_model_name
from quiver.server.embedders.openai_compat import OpenAIEmbedder
from quiver.server.embedders.registry import EmbedderSpec, make_embedder

__all__ = [
    "Embedder",
    "EmbedderSpec",
    "EmbeddingError",
    "HashEmbedder",
    "OpenAIEmbedder",
    "make_embedder",
    "parse_model_name",
]
