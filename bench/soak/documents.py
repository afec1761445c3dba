"""The documents the soak uploads: mixed kinds, each with a token no other file has."""

from __future__ import annotations

import json
import random

from quiver.client import (
    ChunkingStrategy,
)

from tests.support.docgen import make_docx, make_pdf

VALID_KINDS = ("text", "large", "markdown", "json", "html", "pdf", "docx")
KIND_WEIGHTS = {
    "text": 22,
    "large": 4,  # a long text file: its upload and processing take a while, so kills hit them
    "markdown": 12,
    "json": 12,
    "html": 12,
    "pdf": 10,
    "docx": 10,
    "empty": 7,
    "binary": 13,
}
AUTO_AS_STORED = ChunkingStrategy.static(800, 400)  # what a file attached with "auto" shows
CHUNKINGS: tuple[ChunkingStrategy | None, ...] = (
    None,
    ChunkingStrategy(),
    ChunkingStrategy.static(200, 50),
    ChunkingStrategy.static(400, 100),
)
_VOCABULARY = (
    "vector store batch watch stream index chunk token embed search filter rank fusion phrase "
    "keyword hnsw sqlite durable restart crash recover tenant upload download harbour river "
    "mountain lantern copper meadow orchard violet thunder glacier canyon falcon willow amber "
    "quartz saffron compass anchor beacon cobalt ember fjord granite harvest island jasmine "
    "kestrel lagoon marble nectar oasis pepper quiver raven summit tundra umber valley walnut "
    "yarrow zephyr almond basalt cedar delta eclipse fennel garnet hollow indigo juniper kelp "
    "lichen mosaic nimbus opal prairie quill reef sierra thistle urchin vellum wharf"
)
WORDS = _VOCABULARY.split()


def as_stored(strategy: ChunkingStrategy | None) -> ChunkingStrategy:
    """The chunking a store file reports: "auto" (or none) is shown as static 800/400."""
    return AUTO_AS_STORED if strategy is None or strategy.type == "auto" else strategy


def random_words(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(count)]


def _with_token(rng: random.Random, words: list[str], token: str) -> list[str]:
    out = list(words)
    out.insert(rng.randrange(len(out) + 1), token)
    return out


def _lines(words: list[str], per_line: int) -> list[str]:
    return [" ".join(words[i : i + per_line]) for i in range(0, len(words), per_line)]


_MAX_WORDS = {"pdf": 600, "docx": 800}  # small documents


def make_document(rng: random.Random, kind: str, n: int, words: int) -> tuple[str, bytes, str]:
    """(filename, bytes, token) of a document of ``kind``; the token is a word no other
    document has (for the kinds that fail by design it is not in the bytes)."""
    token = f"tok{rng.getrandbits(128):032x}"
    words = min(words, _MAX_WORDS.get(kind, words))  # before the token goes in: it stays
    body = _with_token(rng, random_words(rng, words), token)
    if kind in ("text", "large"):
        return f"notes-{n}.txt", "\n".join(_lines(body, 12)).encode(), token
    if kind == "markdown":
        lines = [f"# Field notes {n}", "", *(f"- {line}" for line in _lines(body, 10))]
        lines += ["", "```", "print('hello')", "```"]
        return f"notes-{n}.md", "\n".join(lines).encode(), token
    if kind == "json":
        record = {"id": n, "title": " ".join(body[:5]), "lines": _lines(body, 8), "ok": True}
        return f"record-{n}.json", json.dumps(record, indent=1).encode(), token
    if kind == "html":
        paragraphs = "".join(f"<p>{line}</p>\n" for line in _lines(body, 15))
        page = (
            f"<!doctype html><html><head><title>page {n}</title><style>p {{margin: 0}}</style>"
            f"</head><body><h1>Page {n}</h1>\n{paragraphs}<script>var x = 1;</script>"
            "</body></html>"
        )
        return f"page-{n}.html", page.encode(), token
    if kind == "pdf":
        return f"report-{n}.pdf", make_pdf(_lines(body, 10)), token
    if kind == "docx":
        table = [[rng.choice(WORDS), rng.choice(WORDS)] for _ in range(3)]
        return f"memo-{n}.docx", make_docx(_lines(body, 30), table), token
    if kind == "empty":
        return f"empty-{n}.txt", b"", token
    if kind == "binary":
        size = rng.randint(256, 8192)
        if rng.random() < 0.5:
            return f"image-{n}.png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(size), token
        return f"blob-{n}.bin", b"\x00\x01\x02\x03" + rng.randbytes(size), token
    raise ValueError(f"unknown kind {kind!r}")
