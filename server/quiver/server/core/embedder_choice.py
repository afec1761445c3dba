"""Which embedder a new store gets: validates `embedding_model` / `embedding_dimensions`.

The model name and the dimension limits come from embedders/model_names.py, the parser every
later use of the name goes through, so a store that was created can always be searched and
filled.
"""

from __future__ import annotations

from typing import NamedTuple

from quiver.server.core.errors import FailedPrecondition, InvalidArgument
from quiver.server.embedders.model_names import (
    HASH,
    MAX_DIMENSIONS,
    MIN_DIMENSIONS,
    BadModelName,
    parse_model_name,
)


class Choice(NamedTuple):
    model: str
    dimensions: int  # 0: learned from the endpoint's first response
    send_dimensions: bool  # whether requests to the endpoint carry `dimensions`


class EmbedderChoice:
    def __init__(self, default_dimensions: int, openai_base_url: str) -> None:
        self.default_dimensions = default_dimensions
        self.openai_base_url = openai_base_url

    def resolve(self, model: str, dimensions: int) -> Choice:
        model = model or HASH
        try:
            name = parse_model_name(model)
        except BadModelName as exc:
            raise InvalidArgument.one("embedding_model", str(exc)) from exc
        if name.provider == HASH:
            dims = dimensions or self.default_dimensions
        else:
            if not self.openai_base_url:
                raise FailedPrecondition(
                    "this server has no OpenAI-compatible endpoint configured "
                    "(--openai-base-url), so 'openai:' embedding models are unavailable",
                    reason="EMBEDDER_NOT_CONFIGURED",
                )
            if not dimensions:  # not sent: the store learns it from the first response
                return Choice(model, 0, False)
            dims = dimensions
        if not MIN_DIMENSIONS <= dims <= MAX_DIMENSIONS:
            raise InvalidArgument.one(
                "embedding_dimensions", f"must be {MIN_DIMENSIONS}…{MAX_DIMENSIONS}, not {dims}"
            )
        return Choice(model, dims, True)
