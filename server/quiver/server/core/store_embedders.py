"""The embedder of an existing store: the spec its ingest workers build it from, and the
instance searches embed their queries with (kept, a few per server)."""

from __future__ import annotations

import functools

from quiver.server.core.errors import FailedPrecondition
from quiver.server.embedders.base import Embedder
from quiver.server.embedders.model_names import BadModelName
from quiver.server.embedders.registry import EmbedderSpec, make_embedder


class StoreEmbedders:
    """``openai_base_url`` / ``openai_api_key``: the server's endpoint for ``openai:``
    models ("" for the default URL / no key)."""

    def __init__(self, openai_base_url: str, openai_api_key: str) -> None:
        self.openai_base_url = openai_base_url
        self.openai_api_key = openai_api_key

    def spec_for(self, model: str, dimensions: int, send_dimensions: bool) -> EmbedderSpec:
        return EmbedderSpec(
            model,
            dimensions,
            base_url=self.openai_base_url or None,
            api_key=self.openai_api_key or None,
            send_dimensions=send_dimensions,
        )

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one per core, a few embedders, kept for life
    def embedder_for(self, model: str, dimensions: int, send_dimensions: bool) -> Embedder:
        try:
            return make_embedder(self.spec_for(model, dimensions, send_dimensions))
        except BadModelName as exc:  # a store made before creation checked the grammar
            raise FailedPrecondition(
                f"this vector store's embedding_model {model[:80]!r} is not valid ({exc}); "
                "create a new store with a valid one",
                reason="EMBEDDING_MODEL_INVALID",
            ) from exc
