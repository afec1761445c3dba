"""The IDF of the keyword ranking stays defined when its two reads disagree: chunks committed
between reading N (the indexed chunks) and n (those holding a word) can make n exceed N."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from quiver.server.core.keyword_ranking import idfs
from quiver.server.core.ports import KeywordIndex


class Frequencies:
    """A keyword index that answers ``document_frequencies`` with fixed numbers."""

    def __init__(self, total: int, counts: list[int]) -> None:
        self.total = total
        self.counts = counts

    def document_frequencies(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        assert len(terms) == len(self.counts)
        return self.total, self.counts

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"idfs should only read document frequencies, not {name}")


def index(total: int, counts: list[int]) -> KeywordIndex:
    return cast(KeywordIndex, Frequencies(total, counts))


def test_a_word_counted_in_more_chunks_than_were_counted_gets_the_smallest_idf() -> None:
    # Before: math.log of a negative number (ValueError → INTERNAL for the search).
    smallest = idfs(index(10, [10]), ["a"])[0]
    assert idfs(index(10, [12, 11]), ["a", "b"]) == [smallest, smallest]
    assert smallest > 0


def test_rarer_words_weigh_more_and_every_idf_is_positive() -> None:
    rare, common, everywhere = idfs(index(1000, [1, 400, 1000]), ["r", "c", "e"])
    assert rare > common > everywhere > 0
