"""Keyword search on the PostgreSQL storage: not here. The keyword index becomes a per-store
cache built from the chunk rows (tantivy, like the hnswlib index), which works on any
storage; until it is in, keyword and hybrid ranking answer FAILED_PRECONDITION naming the
way out (``ranking_options.ranker`` ``none``)."""

from __future__ import annotations

from collections.abc import Sequence

from quiver.server.core.errors import FailedPrecondition

MESSAGE = (
    "ranking_options.ranker: keyword and hybrid ranking are not available with the "
    "PostgreSQL storage (--database postgresql://...) yet; search with ranker 'none'"
)


def _unavailable() -> FailedPrecondition:
    return FailedPrecondition(MESSAGE, reason="KEYWORD_INDEX_UNAVAILABLE")


class NoKeywordIndex:
    """A ``KeywordIndex`` whose every call fails with FAILED_PRECONDITION."""

    def best(
        self, store_id: str, phrases: Sequence[str], k: int, files: list[str] | None
    ) -> list[tuple[int, float]]:
        raise _unavailable()

    def ranked(
        self, store_id: str, phrases: Sequence[str], k: int, files: list[str] | None
    ) -> list[tuple[int, float]]:
        raise _unavailable()

    def holding(self, phrase: str) -> list[int]:
        raise _unavailable()

    def document_frequencies(self, words: Sequence[str]) -> tuple[int, list[int]]:
        raise _unavailable()
