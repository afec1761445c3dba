"""A labelled retrieval collection from the Linux kernel's documentation (Debian package
``linux-doc-6.1``, reStructuredText sources): each document is one section's body without
its title, and a query is a section's title, kept only where

- the title is not found verbatim in its own body (nor in its file's other text is it needed:
  the words may occur, the phrase may not),
- the title has at least two words and no other section in the corpus has the same title
  (so it names one document, e.g. "Introduction" is never a query),
- the body holds at least ``MIN_BODY`` characters.

So the query's words are the author's summary of the text, not a copy of it. Built
deterministically: sorted files, a seeded random sample of sections.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KERNEL_DOCS = Path("/usr/share/doc/linux-doc-6.1/html/_sources")
MIN_BODY = 400
MAX_BODY = 12_000
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.!_<>])\1{2,}\s*$")
_TITLE_WORD = re.compile(r"[A-Za-z]{2,}")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Section:
    title: str
    body: str
    source: str  # file path relative to the docs root, for the record


@dataclass(frozen=True)
class Collection:
    documents: list[Section]
    queries: list[tuple[str, int]]  # (query text, index of the one right document)


def _is_title(lines: list[str], i: int) -> bool:
    """Line ``i`` is a section title: text underlined by an adornment at least as long."""
    if i + 1 >= len(lines):
        return False
    text = lines[i].rstrip()
    under = lines[i + 1].rstrip()
    return (
        bool(text.strip())
        and not _ADORNMENT.match(text)
        and not text.startswith((" ", "\t", ".."))
        and bool(_ADORNMENT.match(under))
        and len(under) >= len(text.strip())
    )


def sections(path: Path, root: Path) -> Iterator[Section]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    starts = [i for i in range(len(lines)) if _is_title(lines, i)]
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        body_lines = lines[start + 2 : end]
        if n + 1 < len(starts) and body_lines and _ADORNMENT.match(body_lines[-1]):
            body_lines = body_lines[:-1]  # the next title's overline
        title = lines[start].strip().rstrip(":").strip()
        body = "\n".join(body_lines).strip()
        yield Section(title, body, str(path.relative_to(root)))


def _plain(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def build(documents: int, queries: int, seed: int, root: Path = KERNEL_DOCS) -> Collection:
    if not root.is_dir():
        raise SystemExit(
            f"{root} is missing: install the kernel docs first "
            "(apt-get update && apt-get install -y linux-doc-6.1)"
        )
    every = [
        s
        for path in sorted(root.rglob("*.txt"))
        for s in sections(path, root)
        if MIN_BODY <= len(s.body) <= MAX_BODY
    ]
    titles = Counter(_plain(s.title) for s in every)
    rng = np.random.default_rng(seed)
    picked = sorted(rng.permutation(len(every))[:documents].tolist())
    docs = [every[i] for i in picked]
    askable = [
        i
        for i, s in enumerate(docs)
        if titles[_plain(s.title)] == 1
        and len(_TITLE_WORD.findall(s.title)) >= 2
        and _plain(s.title) not in _plain(s.body)
    ]
    chosen = sorted(rng.permutation(len(askable))[:queries].tolist())
    return Collection(docs, [(docs[askable[i]].title, askable[i]) for i in chosen])
