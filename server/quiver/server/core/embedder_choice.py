"""Which embedder a new store gets: validates `embedding_model` / `embedding_dimensions`."""

from __future__ import annotations

from quiver.server.core.errors import FailedPrecondition, InvalidArgument

HASH = "hash"
OPENAI_PREFIX = "openai:"
MIN_DIMENSIONS = 8
MAX_DIMENSIONS = 4096


class EmbedderChoice:
    def __init__(self, default_dimensions: int, openai_base_url: str) -> None:
        self.default_dimensions = default_dimensions
        self.openai_base_url = openai_base_url

    def resolve(self, model: str, dimensions: int) -> tuple[str, int]:
        model = model or HASH
        if model == HASH:
            dims = dimensions or self.default_dimensions
        elif model.startswith(OPENAI_PREFIX) and len(model) > len(OPENAI_PREFIX):
            if not self.openai_base_url:
                raise FailedPrecondition(
                    "this server has no OpenAI-compatible endpoint configured "
                    "(--openai-base-url), so 'openai:' embedding models are unavailable",
                    reason="EMBEDDER_NOT_CONFIGURED",
                )
            if not dimensions:
                raise InvalidArgument.one(
                    "embedding_dimensions", "is required with an 'openai:<model>' embedder"
                )
            dims = dimensions
        else:
            raise InvalidArgument.one(
                "embedding_model", f"must be 'hash' or 'openai:<model>', not {model[:80]!r}"
            )
        if not MIN_DIMENSIONS <= dims <= MAX_DIMENSIONS:
            raise InvalidArgument.one(
                "embedding_dimensions", f"must be {MIN_DIMENSIONS}…{MAX_DIMENSIONS}, not {dims}"
            )
        return model, dims
