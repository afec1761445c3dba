"""What a worker process does with one file: parse → chunk → embed. Runs in the spawn pool.

Everything here is picklable and free of protobuf, SQLite and the event loop.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from quiver.server.embedders.base import Embedder, EmbeddingError
from quiver.server.embedders.registry import EmbedderSpec, make_embedder
from quiver.server.ingest.chunking import ChunkingParams, chunk_text, get_encoding
from quiver.server.ingest.parsing import (
    INVALID_FILE,
    SERVER_ERROR,
    FileProcessingError,
    parse_document,
)

PR_SET_PDEATHSIG = 1
MAX_TEXT_CHARS = 64_000_000
"""Above this a file's chunks, tokens and vectors would take gigabytes in one worker."""


@dataclass(frozen=True)
class WorkerInput:
    path: str
    filename: str
    max_tokens: int
    overlap_tokens: int
    embedder: EmbedderSpec


@dataclass(frozen=True)
class WorkerOutput:
    """Chunks with their vectors, or the reason the file failed (code, message)."""

    texts: list[str] = field(default_factory=list)
    token_counts: list[int] = field(default_factory=list)
    vectors: npt.NDArray[np.float32] | None = None
    error: tuple[str, str] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this worker when the server process dies, even by SIGKILL,
    so no orphaned worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def warm_up() -> int:
    """Pool initializer (and first task): ties the worker's life to the server's and loads
    the tokenizer, so files don't pay for it."""
    _die_with_parent()
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    get_encoding()
    return os.getpid()


@lru_cache(maxsize=16)
def _embedder(spec: EmbedderSpec) -> Embedder:
    return make_embedder(spec)


def process(job: WorkerInput) -> WorkerOutput:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    try:
        with open(job.path, "rb") as f:
            data = f.read()
        text = parse_document(data, job.filename)
        del data
        if len(text) > MAX_TEXT_CHARS:
            return WorkerOutput(
                error=(
                    INVALID_FILE,
                    f"the file's text is {len(text):,} characters; the server indexes at most "
                    f"{MAX_TEXT_CHARS:,} per file (split it into several files)",
                ),
                seconds=seconds,
            )
        seconds["parse"] = time.perf_counter() - started
        mark = time.perf_counter()
        chunks = chunk_text(text, ChunkingParams(job.max_tokens, job.overlap_tokens))
        seconds["chunk"] = time.perf_counter() - mark
        if not chunks:
            return WorkerOutput(error=(INVALID_FILE, "file has no text"), seconds=seconds)
        mark = time.perf_counter()
        texts = [c.text for c in chunks]
        vectors = _embedder(job.embedder).embed(texts).astype(np.float32, copy=False)
        seconds["embed"] = time.perf_counter() - mark
    except FileProcessingError as exc:
        return WorkerOutput(error=(exc.code, exc.message), seconds=seconds)
    except EmbeddingError as exc:
        return WorkerOutput(error=(SERVER_ERROR, f"embedding failed: {exc}"), seconds=seconds)
    except FileNotFoundError:
        return WorkerOutput(
            error=(SERVER_ERROR, "the file's stored bytes are missing on the server"),
            seconds=seconds,
        )
    except MemoryError:
        return WorkerOutput(
            error=(SERVER_ERROR, "the file needed more memory than the worker has"),
            seconds=seconds,
        )
    return WorkerOutput(
        texts=texts,
        token_counts=[c.token_count for c in chunks],
        vectors=vectors,
        seconds=seconds,
    )
