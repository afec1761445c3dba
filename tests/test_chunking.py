"""Token chunking: window arithmetic and chunk text checked against tiktoken itself."""

from __future__ import annotations

import itertools
import math
import random
import socket
from pathlib import Path

import pytest
import tiktoken
import tiktoken.registry
from hypothesis import given, settings
from hypothesis import strategies as st
from quiver.server.ingest import chunking
from quiver.server.ingest.chunking import (
    AUTO,
    ChunkingParams,
    chunk_text,
    count_tokens,
    get_encoding,
    token_windows,
)

from tests.support.profiles import examples

STATIC_100_50 = ChunkingParams(max_tokens=100, overlap_tokens=50)
# Common English words that are one cl100k token both with and without a leading space, so a
# text of N of them joined by spaces is exactly N tokens.
_WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be",
    "by", "at", "this", "from", "or", "an", "are", "not", "have", "but", "had", "they", "which",
    "one", "you", "were", "all", "we", "her", "she", "there", "has", "been", "if", "more",
    "when", "will", "would", "who", "so", "no", "can", "what", "about", "their", "said", "out",
    "some", "time", "only", "into", "up", "than", "them", "could", "then", "its", "two", "may",
    "like", "other", "new", "these", "over", "also", "my", "after", "first", "way", "me", "see",
    "did", "most",
)  # fmt: skip


def _word_document(n_tokens: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(n_tokens))


def _expected_count(n: int, params: ChunkingParams) -> int:
    if n == 0:
        return 0
    step = params.max_tokens - params.overlap_tokens
    return 1 + math.ceil(max(0, n - params.max_tokens) / step)


def test_encoding_is_cl100k_base() -> None:
    encoding = get_encoding()
    assert encoding is get_encoding()  # cached
    assert encoding.n_vocab == 100277
    assert encoding.encode_ordinary("hello world") == [15339, 1917]


def test_encoding_loads_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    get_encoding.cache_clear()
    try:
        assert get_encoding().encode_ordinary("hello world") == [15339, 1917]
    finally:
        get_encoding.cache_clear()


def test_special_tokens_are_plain_text() -> None:
    assert count_tokens("<|endoftext|>") == 7
    chunks = chunk_text("before <|endoftext|> after", STATIC_100_50)
    assert [c.text for c in chunks] == ["before <|endoftext|> after"]


def test_count_tokens() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens(_word_document(1234)) == 1234


@pytest.mark.parametrize(
    ("n", "params", "expected"),
    [
        (0, STATIC_100_50, []),
        (1, STATIC_100_50, [(0, 1)]),
        (100, STATIC_100_50, [(0, 100)]),
        (101, STATIC_100_50, [(0, 100), (50, 101)]),
        (150, STATIC_100_50, [(0, 100), (50, 150)]),
        (151, STATIC_100_50, [(0, 100), (50, 150), (100, 151)]),
        (800, AUTO, [(0, 800)]),
        (1000, AUTO, [(0, 800), (400, 1000)]),
        (1201, AUTO, [(0, 800), (400, 1200), (800, 1201)]),
        (250, ChunkingParams(100, 0), [(0, 100), (100, 200), (200, 250)]),
    ],
)
def test_token_windows_examples(
    n: int, params: ChunkingParams, expected: list[tuple[int, int]]
) -> None:
    assert token_windows(n, params) == expected


@settings(max_examples=examples(100))
@given(
    n=st.integers(min_value=0, max_value=50_000),
    max_tokens=st.integers(min_value=100, max_value=4096),
    overlap_share=st.floats(min_value=0.0, max_value=0.5),
)
def test_token_windows_properties(n: int, max_tokens: int, overlap_share: float) -> None:
    params = ChunkingParams(max_tokens, int(max_tokens * overlap_share))
    windows = token_windows(n, params)
    assert len(windows) == _expected_count(n, params)
    if n == 0:
        return
    assert windows[0][0] == 0
    assert windows[-1][1] == n
    for (start, end), (next_start, next_end) in itertools.pairwise(windows):
        assert end - start == params.max_tokens  # only the last window may be short
        assert next_start - start == params.max_tokens - params.overlap_tokens
        assert end - next_start == params.overlap_tokens  # exact overlap
        assert next_end > end
    assert all(0 < end - start <= params.max_tokens for start, end in windows)


@pytest.mark.parametrize("params", [ChunkingParams(100, 100), ChunkingParams(100, 150)])
def test_token_windows_rejects_non_advancing_params(params: ChunkingParams) -> None:
    with pytest.raises(ValueError):
        token_windows(10, params)


def test_10000_token_document_static_100_50_gives_199_exact_windows() -> None:
    encoding = get_encoding()
    text = _word_document(10_000)
    tokens = encoding.encode_ordinary(text)
    assert len(tokens) == 10_000

    chunks = chunk_text(text, STATIC_100_50)

    assert len(chunks) == 199
    for i, chunk in enumerate(chunks):
        start, end = 50 * i, min(50 * i + 100, 10_000)
        assert chunk.index == i
        assert (chunk.token_start, chunk.token_count) == (start, end - start)
        assert chunk.text == encoding.decode(tokens[start:end])
        assert encoding.encode_ordinary(chunk.text) == tokens[start:end]
    assert chunks[-1].token_start + chunks[-1].token_count == 10_000
    for previous, current in itertools.pairwise(chunks):
        shared = tokens[current.token_start : previous.token_start + previous.token_count]
        assert len(shared) == 50
        assert encoding.encode_ordinary(previous.text)[-50:] == shared
        assert encoding.encode_ordinary(current.text)[:50] == shared


def test_10000_token_document_auto() -> None:
    encoding = get_encoding()
    text = _word_document(10_000, seed=11)
    tokens = encoding.encode_ordinary(text)

    chunks = chunk_text(text, AUTO)

    assert len(chunks) == _expected_count(10_000, AUTO) == 24
    assert [(c.token_start, c.token_count) for c in chunks] == [
        (start, end - start) for start, end in token_windows(10_000, AUTO)
    ]
    for chunk in chunks:
        window = tokens[chunk.token_start : chunk.token_start + chunk.token_count]
        assert encoding.encode_ordinary(chunk.text) == window


@pytest.mark.parametrize("params", [AUTO, STATIC_100_50, ChunkingParams(4096, 2048)])
def test_mixed_unicode_text_windows_match_tiktoken(params: ChunkingParams) -> None:
    encoding = get_encoding()
    rng = random.Random(3)
    pieces = ["naïve café", "日本語のテキスト", "emoji 🎉🚀", "code: x = f(y) + 1;", "\n\n", "Ω≈ç√"]
    text = " ".join(rng.choice(pieces) for _ in range(3000))
    tokens = encoding.encode_ordinary(text)

    chunks = chunk_text(text, params)

    assert len(chunks) == _expected_count(len(tokens), params)
    for chunk, (start, end) in zip(chunks, token_windows(len(tokens), params), strict=True):
        assert (chunk.token_start, chunk.token_count) == (start, end - start)
        assert chunk.text == encoding.decode(tokens[start:end], errors="replace")


def test_short_document_is_one_chunk() -> None:
    text = "A short note about vector stores."
    for params in (AUTO, STATIC_100_50):
        chunks = chunk_text(text, params)
        assert len(chunks) == 1
        assert chunks[0].text == text
        assert chunks[0].token_start == 0
        assert chunks[0].token_count == count_tokens(text)


def test_exactly_max_tokens_is_one_chunk() -> None:
    assert len(chunk_text(_word_document(100), STATIC_100_50)) == 1
    assert len(chunk_text(_word_document(101), STATIC_100_50)) == 2


def test_empty_text_has_no_chunks() -> None:
    assert chunk_text("", AUTO) == []
    assert chunk_text("", STATIC_100_50) == []


@settings(max_examples=examples(80), deadline=None)
@given(
    st.lists(
        st.from_regex(r"[ab.é😀1][ab \t.é😀1]{0,6}", fullmatch=True),
        min_size=1,
        max_size=80,
    )
)
def test_segmented_encoding_matches_whole_text(lines: list[str]) -> None:
    """Cutting long texts into segments (at newlines followed by text) never changes their
    tokens. Lines are shorter than half a segment, so such a cut point always exists."""
    text = "\n".join(lines)
    old = chunking.SEGMENT_CHARS
    chunking.SEGMENT_CHARS = 16
    try:
        assert chunking.encode(text) == chunking.get_encoding().encode_ordinary(text)
    finally:
        chunking.SEGMENT_CHARS = old


def test_one_giant_line_is_cut_and_still_encoded() -> None:
    text = "a" * (3 * chunking.SEGMENT_CHARS + 5)
    assert len(chunking._segments(text)) == 4
    assert sum(len(s) for s in chunking._segments(text)) == len(text)
    assert chunking.count_tokens(text) > 0


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.from_regex(r"[ab.é😀1][ab \t.é😀1]{0,6}", fullmatch=True), min_size=0, max_size=80),
    st.integers(min_value=1, max_value=40),
    st.floats(min_value=0, max_value=0.9),
)
def test_streamed_chunks_equal_windows_of_the_whole_text(
    lines: list[str], max_tokens: int, overlap_share: float
) -> None:
    """The chunker holds only a window's worth of tokens across segments; its chunks are
    still exactly the token windows of the whole text, decoded."""
    text = "\n".join(lines)
    params = ChunkingParams(max_tokens, min(max_tokens - 1, int(max_tokens * overlap_share)))
    old = chunking.SEGMENT_CHARS
    chunking.SEGMENT_CHARS = 16
    try:
        tokens = chunking.encode(text)
        chunks = chunk_text(text, params)
    finally:
        chunking.SEGMENT_CHARS = old
    encoding = get_encoding()
    windows = token_windows(len(tokens), params)
    assert [(c.index, c.token_start, c.token_count) for c in chunks] == [
        (i, start, end - start) for i, (start, end) in enumerate(windows)
    ]
    assert [c.text for c in chunks] == [
        encoding.decode(tokens[start:end], errors="replace") for start, end in windows
    ]
