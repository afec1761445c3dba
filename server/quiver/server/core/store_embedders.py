"""The embedder of an existing store: the spec its ingest workers build it from, and the
instance searches embed their queries with (kept, a few per server)."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

from quiver.server.core.errors import FailedPrecondition
from quiver.server.embedders.base import Embedder
from quiver.server.embedders.local_models import LocalModelError
from quiver.server.embedders.model_names import BadModelName
from quiver.server.embedders.openai_tuning import OpenAITuning
from quiver.server.embedders.registry import QUERY, EmbedderSpec, make_embedder


class StoreEmbedders:
    """``openai_base_url`` / ``openai_api_key``: the server's endpoint for ``openai:``
    models ("" for the default URL / no key); ``tuning``: its timeouts, batch size, request
    slots and input prefixes. ``models_dir``: the ``--models-dir`` searched for ``local:``
    models first; ``local_threads``: ONNX Runtime threads of one ``local:`` embedder."""

    def __init__(
        self,
        openai_base_url: str,
        openai_api_key: str,
        tuning: OpenAITuning,
        *,
        models_dir: Path | None = None,
        local_threads: int = 1,
    ) -> None:
        self.openai_base_url = openai_base_url
        self.openai_api_key = openai_api_key
        self.tuning = tuning
        self.models_dir = models_dir
        self.local_threads = local_threads

    def spec_for(self, model: str, dimensions: int, send_dimensions: bool) -> EmbedderSpec:
        return EmbedderSpec(
            model,
            dimensions,
            base_url=self.openai_base_url or None,
            api_key=self.openai_api_key or None,
            send_dimensions=send_dimensions,
            tuning=self.tuning,
            models_dir=str(self.models_dir) if self.models_dir else None,
            threads=self.local_threads,
        )

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one per core, a few embedders, kept for life
    def embedder_for(self, model: str, dimensions: int, send_dimensions: bool) -> Embedder:
        """The embedder of a store's search queries (its query prefix, no request slots)."""
        spec = replace(
            self.spec_for(model, dimensions, send_dimensions),
            purpose=QUERY,
            tuning=replace(self.tuning, slots_dir=None, slots=0),
        )
        try:
            return make_embedder(spec)
        except LocalModelError as exc:  # the model or the local extra went away since
            raise FailedPrecondition(
                f"this vector store's embedding_model {model[:80]!r} cannot be loaded: {exc}",
                reason="EMBEDDER_NOT_CONFIGURED",
            ) from exc
        except BadModelName as exc:  # a store made before creation checked the grammar
            raise FailedPrecondition(
                f"this vector store's embedding_model {model[:80]!r} is not valid ({exc}); "
                "create a new store with a valid one",
                reason="EMBEDDING_MODEL_INVALID",
            ) from exc
