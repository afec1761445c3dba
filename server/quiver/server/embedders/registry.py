"""Build an embedder from the model name recorded on a vector store.

Model names follow embedders/model_names.py, the grammar store creation checks too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quiver.server.embedders.base import Embedder
from quiver.server.embedders.hashing import HashEmbedder
from quiver.server.embedders.local_models import find_model
from quiver.server.embedders.local_onnx import LocalOnnxEmbedder
from quiver.server.embedders.model_names import HASH, LOCAL, parse_model_name
from quiver.server.embedders.openai_compat import OpenAIEmbedder
from quiver.server.embedders.openai_tuning import OpenAITuning
from quiver.server.embedders.request_slots import RequestSlots

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
PASSAGE = "passage"
QUERY = "query"


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything needed to build a store's embedder; picklable, sent to worker processes.

    ``base_url`` and ``api_key`` apply to ``openai:`` models only; ``base_url`` None means
    ``https://api.openai.com/v1``. ``dimensions`` 0: not known yet (learned from the first
    response). ``send_dimensions`` False: the endpoint is never sent ``dimensions`` (models
    such as text-embedding-ada-002 reject it); a known ``dimensions`` is still checked.
    ``purpose``: ``passage`` (chunks, in the ingest workers) or ``query`` (search queries),
    which picks the input prefix; ``tuning``: timeout, batch size, prefixes and request slots
    of ``openai:`` models. ``models_dir`` and ``threads`` apply to ``local:`` models only: the
    ``--models-dir`` searched first, and the ONNX Runtime intra-op threads of one embedder.
    """

    model: str
    dimensions: int
    base_url: str | None = None
    api_key: str | None = None
    send_dimensions: bool = True
    purpose: str = PASSAGE
    tuning: OpenAITuning = field(default_factory=OpenAITuning)
    models_dir: str | None = None
    threads: int = 1

    def __repr__(self) -> str:  # never print the key
        key = None if self.api_key is None else "***"
        return (
            f"EmbedderSpec(model={self.model!r}, dimensions={self.dimensions}, "
            f"base_url={self.base_url!r}, api_key={key!r}, "
            f"send_dimensions={self.send_dimensions}, purpose={self.purpose!r}, "
            f"tuning={self.tuning!r}, models_dir={self.models_dir!r}, threads={self.threads})"
        )


def make_embedder(spec: EmbedderSpec) -> Embedder:
    """Build the embedder for ``spec`` (BadModelName, a ValueError, for a bad model name;
    LocalModelError, a ValueError too, for a ``local:`` model that cannot be loaded)."""
    name = parse_model_name(spec.model)
    if name.provider == HASH:
        return HashEmbedder(spec.dimensions)
    if name.provider == LOCAL:
        models_dir = Path(spec.models_dir) if spec.models_dir else None
        return LocalOnnxEmbedder(find_model(name.model, models_dir), spec.threads)
    tuning = spec.tuning
    return OpenAIEmbedder(
        base_url=spec.base_url or DEFAULT_OPENAI_BASE_URL,
        model=name.model,
        api_key=spec.api_key,
        dimensions=spec.dimensions or None,
        send_dimensions=spec.send_dimensions,
        batch_size=tuning.batch_size,
        timeout_s=tuning.timeout_s,
        prefix=tuning.query_prefix if spec.purpose == QUERY else tuning.passage_prefix,
        slots=RequestSlots(tuning.slots_dir, tuning.slots, "openai")
        if tuning.slots_dir and tuning.slots
        else None,
    )
