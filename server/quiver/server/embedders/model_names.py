"""The grammar of ``embedding_model``: the one parser that store creation, search and the
ingest workers all use, so a name accepted at creation always builds an embedder later.

``hash`` (the built-in feature-hashing embedder), ``openai:<model>`` (any OpenAI-compatible
endpoint; ``<model>`` may itself contain colons, e.g. Ollama's ``nomic-embed-text:latest``;
the model part is 1…256 printable characters without surrounding whitespace) or
``local:<name>`` (an ONNX model run in-process, embedders/local_models.py; ``<name>`` names a
model directory, so it is 1…64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter
or digit).

Also the one place for the limits of ``embedding_dimensions`` (a store's vector width).
"""

from __future__ import annotations

import re
from typing import NamedTuple

HASH = "hash"
OPENAI = "openai"
OPENAI_PREFIX = "openai:"
LOCAL = "local"
LOCAL_PREFIX = "local:"
_LOCAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_MODEL_CHARS = 256
MIN_DIMENSIONS = 8
MAX_DIMENSIONS = 4096


class ModelName(NamedTuple):
    provider: str  # HASH, OPENAI or LOCAL
    model: str  # the provider's model name; "" for hash


class BadModelName(ValueError):
    """The name does not follow the grammar; the message says what is wrong."""


def parse_model_name(name: str) -> ModelName:
    """``hash`` -> ModelName("hash", ""); ``openai:text-embedding-3-small`` ->
    ModelName("openai", "text-embedding-3-small"). Raises BadModelName otherwise."""
    if name == HASH:
        return ModelName(HASH, "")
    if name.startswith(OPENAI_PREFIX):
        model = name[len(OPENAI_PREFIX) :]
        if not model.strip():
            raise BadModelName("needs a model name after 'openai:', e.g. 'openai:<model>'")
        if model != model.strip():
            raise BadModelName(f"model name {model[:80]!r} has leading or trailing whitespace")
        if len(model) > MAX_MODEL_CHARS:
            raise BadModelName(f"model name is longer than {MAX_MODEL_CHARS} characters")
        if not model.isprintable():
            raise BadModelName("model name has control characters")
        return ModelName(OPENAI, model)
    if name.startswith(LOCAL_PREFIX):
        model = name[len(LOCAL_PREFIX) :]
        if not _LOCAL_NAME.fullmatch(model):
            raise BadModelName(
                f"local model name {model[:80]!r} must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit, e.g. 'local:all-minilm-l6-v2'"
            )
        return ModelName(LOCAL, model)
    raise BadModelName(
        f"unknown embedding model {name[:80]!r}: expected 'hash', 'openai:<model>' or "
        "'local:<name>'"
    )
