"""What a worker process does with one file: parse → chunk → embed, streamed: chunks are
made from the text a window at a time and embedded 256 at a time, so only the text, the
chunks' texts and their float32 vectors (in blocks of 256) are held whole.

Everything here is picklable and free of protobuf, SQLite and the event loop.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from quiver.server.core.error_codes import ErrorCode
from quiver.server.embedders.base import Embedder, EmbeddingError
from quiver.server.embedders.registry import EmbedderSpec, make_embedder
from quiver.server.ingest.chunking import Chunk, ChunkingParams, get_encoding, iter_chunks
from quiver.server.ingest.limits import UNLIMITED, WorkerLimits
from quiver.server.ingest.parsing import FileProcessingError, parse_document
from quiver.server.storage.blob_location import BlobRef
from quiver.server.storage.blob_reader import read_blob
from quiver.server.storage.s3_client import BlobStoreError

PR_SET_PDEATHSIG = 1
EMBED_GROUP = 256
"""Chunks embedded at a time: the embedder's working memory stays that of 256 chunks."""


@dataclass(frozen=True)
class WorkerInput:
    """One file to process: small and picklable (an executor may send it to another
    machine). ``blob`` is the file's content address and where to read it."""

    blob: BlobRef
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
    vector_blocks: list[npt.NDArray[np.float32]] = field(default_factory=list)
    """In a worker: the vectors as embedded, a block per group of chunks, sent to the server
    one by one (no whole-file copy); the server receives them as `vectors`."""

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


def process(job: WorkerInput, limits: WorkerLimits = UNLIMITED) -> WorkerOutput:
    """Parse, chunk and embed one file. A MemoryError (the worker's address space limit was
    reached) fails the file alone, naming the limit."""
    seconds: dict[str, float] = {}
    try:
        return _process(job, limits, seconds)
    except FileProcessingError as exc:
        return WorkerOutput(error=(exc.code, exc.message), seconds=seconds)
    except EmbeddingError as exc:
        return WorkerOutput(
            error=(ErrorCode.SERVER_ERROR, f"embedding failed: {exc}"), seconds=seconds
        )
    except FileNotFoundError:
        return WorkerOutput(
            error=(ErrorCode.SERVER_ERROR, "the file's stored bytes are missing on the server"),
            seconds=seconds,
        )
    except BlobStoreError as exc:
        return WorkerOutput(
            error=(ErrorCode.SERVER_ERROR, f"the file's stored bytes could not be read: {exc}"),
            seconds=seconds,
        )
    except MemoryError:
        pass  # out of the handler first: its traceback holds the frames that hold the memory
    return WorkerOutput(
        error=(ErrorCode.INVALID_FILE, out_of_memory_message(limits)), seconds=seconds
    )


def out_of_memory_message(limits: WorkerLimits) -> str:
    return (
        f"the file needs more memory to process than {limits.memory_hint()} allows "
        "(split it into smaller files)"
    )


def _process(job: WorkerInput, limits: WorkerLimits, seconds: dict[str, float]) -> WorkerOutput:
    started = time.perf_counter()
    data = read_blob(job.blob)
    text = parse_document(data, job.filename, limits)
    del data
    seconds["parse"] = time.perf_counter() - started
    embedder = _embedder(job.embedder)
    params = ChunkingParams(job.max_tokens, job.overlap_tokens)
    texts: list[str] = []
    token_counts: list[int] = []
    blocks: list[npt.NDArray[np.float32]] = []
    chunk_seconds = embed_seconds = 0.0
    mark = time.perf_counter()
    limits.check_memory()
    for group in _groups(iter_chunks(text, params), EMBED_GROUP):
        limits.check_memory()
        now = time.perf_counter()
        chunk_seconds += now - mark
        group_texts = [c.text for c in group]
        blocks.append(embedder.embed(group_texts).astype(np.float32, copy=False))
        texts += group_texts
        token_counts += [c.token_count for c in group]
        mark = time.perf_counter()
        embed_seconds += mark - now
    del text
    seconds["chunk"] = chunk_seconds
    if not texts:
        return WorkerOutput(error=(ErrorCode.INVALID_FILE, "file has no text"), seconds=seconds)
    seconds["embed"] = embed_seconds
    return WorkerOutput(
        texts=texts, token_counts=token_counts, vector_blocks=blocks, seconds=seconds
    )


def _groups(chunks: Iterator[Chunk], size: int) -> Iterator[list[Chunk]]:
    group: list[Chunk] = []
    for chunk in chunks:
        group.append(chunk)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
