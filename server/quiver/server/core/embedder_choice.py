"""Which embedder a new store gets: validates `embedding_model` / `embedding_dimensions`.

The model name and the dimension limits come from embedders/model_names.py, the parser every
later use of the name goes through, so a store that was created can always be searched and
filled.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from quiver.server.core.errors import FailedPrecondition, InvalidArgument
from quiver.server.embedders.local_models import (
    LocalModelError,
    LocalRuntimeMissing,
    check_runtime,
    find_model,
)
from quiver.server.embedders.model_names import (
    HASH,
    LOCAL,
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
    def __init__(
        self, default_dimensions: int, openai_base_url: str, models_dir: Path | None = None
    ) -> None:
        self.default_dimensions = default_dimensions
        self.openai_base_url = openai_base_url
        self.models_dir = models_dir

    def resolve(self, model: str, dimensions: int) -> Choice:
        model = model or HASH
        try:
            name = parse_model_name(model)
        except BadModelName as exc:
            raise InvalidArgument.one("embedding_model", str(exc)) from exc
        if name.provider == HASH:
            dims = dimensions or self.default_dimensions
        elif name.provider == LOCAL:
            return self._local(model, name.model, dimensions)
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

    def _local(self, model: str, name: str, dimensions: int) -> Choice:
        """A ``local:`` model must be found and runnable here; its dimension is its own."""
        try:
            check_runtime()
            found = find_model(name, self.models_dir)
        except LocalRuntimeMissing as exc:
            raise FailedPrecondition(
                f"embedding_model {model!r} is unavailable on this server: {exc}",
                reason="EMBEDDER_NOT_CONFIGURED",
            ) from exc
        except LocalModelError as exc:
            raise InvalidArgument.one("embedding_model", str(exc)) from exc
        if dimensions and dimensions != found.dimensions:
            raise InvalidArgument.one(
                "embedding_dimensions",
                f"{model!r} gives {found.dimensions}-dimensional vectors, not {dimensions} "
                "(leave it 0)",
            )
        return Choice(model, found.dimensions, True)
