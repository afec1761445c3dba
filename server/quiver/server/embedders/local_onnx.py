"""The ``local:`` embedder: an ONNX model run in this process with ONNX Runtime and a Hugging
Face tokenizer (no torch). See local_models.py for the model directory.

Long texts (``long_text: windows``, the default): a text is split into windows of
``max_tokens - 2`` word pieces (plus the model's two special tokens), each window is pooled
as the model pools, and the text's vector is the windows' vectors averaged with each window
weighted by its word pieces, then L2-normalised. A text that fits one window gets exactly
the model's own vector; nothing of a longer one is cut. With ``truncate`` only the first
window is read.

Threads: ``threads`` intra-op threads (the ingest pool gives each worker cores / workers);
ONNX Runtime releases the GIL while it runs, so the server embeds queries on a thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from quiver.server.embedders.base import EmbeddingError, FloatMatrix, l2_normalise
from quiver.server.embedders.local_models import LocalModel, LocalModelError, check_runtime

WINDOWS_PER_RUN = 32
"""Windows given to ONNX Runtime at once (padded to the longest of them)."""


def local_threads(configured: int, workers: int) -> int:
    """ONNX Runtime threads per embedder: ``configured``, or (0) the cores this process may
    use divided among the ingest workers, at least 1, so workers x threads fit the cores."""
    if configured > 0:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


class LocalOnnxEmbedder:
    """Embeds with ``model`` (a LocalModel); queries carry its ``query_prefix``, chunks its
    ``passage_prefix``."""

    def __init__(self, model: LocalModel, threads: int = 1) -> None:
        check_runtime()
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.spec = model
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(
                str(model.onnx_path), options, providers=["CPUExecutionProvider"]
            )
            self._tokenizer = Tokenizer.from_file(str(model.tokenizer_path))
        except Exception as exc:  # ONNX Runtime and tokenizers raise their own kinds
            raise LocalModelError(f"local model {model.name!r} cannot be loaded: {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise LocalModelError(
                f"local model {model.name!r}: the ONNX graph needs inputs input_ids and "
                f"attention_mask, it has {sorted(self._inputs)}"
            )
        self._output = model.output or self._session.get_outputs()[0].name
        self._first, self._last = self._special_tokens()
        self.threads = max(1, threads)

    @property
    def model(self) -> str:
        return f"local:{self.spec.name}"

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    def __repr__(self) -> str:
        return f"LocalOnnxEmbedder({self.spec.name!r}, threads={self.threads})"

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        return self._embed([self.spec.passage_prefix + t for t in texts])

    def embed_queries(self, texts: Sequence[str]) -> FloatMatrix:
        return self._embed([self.spec.query_prefix + t for t in texts])

    def word_pieces(self, text: str) -> int:
        """The word pieces of ``text`` (without special tokens)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text (e.g. [CLS] … [SEP])."""
        plain = self._tokenizer.encode("a", add_special_tokens=False).ids
        full = self._tokenizer.encode("a", add_special_tokens=True).ids
        at = next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), None)
        if at is None:
            raise LocalModelError(f"local model {self.spec.name!r}: odd tokenizer")
        return full[:at], full[at + len(plain) :]

    def _windows(self, text: str) -> list[list[int]]:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        room = self.spec.max_tokens - len(self._first) - len(self._last)
        if room < 1:
            raise LocalModelError(f"local model {self.spec.name!r}: max_tokens too small")
        pieces = [ids[i : i + room] for i in range(0, len(ids), room)] or [[]]
        if self.spec.long_text == "truncate":
            pieces = pieces[:1]
        return [self._first + p + self._last for p in pieces]

    def _embed(self, texts: list[str]) -> FloatMatrix:
        dim = self.spec.dimensions
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        windows: list[list[int]] = []
        owner: list[int] = []
        for row, text in enumerate(texts):
            for window in self._windows(text):
                windows.append(window)
                owner.append(row)
        pooled = np.zeros((len(windows), dim), dtype=np.float64)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        for start in range(0, len(order), WINDOWS_PER_RUN):
            batch = order[start : start + WINDOWS_PER_RUN]
            pooled[batch] = self._run([windows[i] for i in batch])
        weights = np.asarray([len(w) for w in windows], dtype=np.float64)
        summed = np.zeros((len(texts), dim), dtype=np.float64)
        np.add.at(summed, np.asarray(owner), pooled * weights[:, None])
        if not np.isfinite(summed).all():
            raise EmbeddingError(f"local model {self.spec.name!r} gave non-finite values")
        if self.spec.normalize:
            return l2_normalise(summed)
        return (summed / np.bincount(owner, weights=weights)[:, None]).astype(np.float32)

    def _run(self, windows: list[list[int]]) -> npt.NDArray[np.float64]:
        """Pooled vectors of windows (each already with its special tokens)."""
        longest = max(len(w) for w in windows)
        ids = np.zeros((len(windows), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, window in enumerate(windows):
            ids[i, : len(window)] = window
            mask[i, : len(window)] = 1
        feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        try:
            (states,) = self._session.run([self._output], feed)
        except Exception as exc:  # onnxruntime's own exception types
            raise EmbeddingError(f"local model {self.spec.name!r} failed: {exc}") from exc
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 3 or states.shape[2] != self.spec.dimensions:
            raise EmbeddingError(
                f"local model {self.spec.name!r} gave states of shape {states.shape}, "
                f"expected (windows, tokens, {self.spec.dimensions})"
            )
        if self.spec.pooling == "cls":
            return states[:, 0, :]
        weights = mask[:, :, None].astype(np.float64)
        pooled: npt.NDArray[np.float64] = (states * weights).sum(axis=1) / weights.sum(axis=1)
        return pooled
