"""The per-store keyword index on tantivy (index/keyword.py) and its manager
(index/keyword_manager.py): BM25 top k with the filter inside the query, phrases, writes
queued and committed in groups, read-your-writes, reconciliation with the rows, rebuild of a
damaged index, a bounded queue, a dropped store."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from quiver.server.index.keyword import StoreKeywordIndex
from quiver.server.index.keyword_manager import KeywordIndexes

from tests.support.old_keyword_index import write_older_index

ROWS = [
    (1, "file-a", "The quick brown fox jumps over the lazy dog"),
    (2, "file-a", "Foxes are running through the forest at night"),
    (3, "file-b", "A lazy afternoon with a cup of tea"),
    (4, "file-b", "Brown bears and quick rivers"),
    (5, "file-c", "Nothing about animals here, only databases and indexes"),
]


def rows_of(ids: Sequence[int]) -> list[tuple[int, str, str]]:
    wanted = set(ids)
    return [r for r in ROWS if r[0] in wanted]


def filled(path: Path) -> StoreKeywordIndex:
    index = StoreKeywordIndex.open(path)
    index.add(ROWS)
    index.commit()
    return index


def test_bm25_top_k_stemmed_with_the_filter_inside_the_query(tmp_path: Path) -> None:
    index = filled(tmp_path / "kw")
    assert index.size == 5
    assert index.terms("Running Foxes") == ["run", "fox"]
    best = index.best(index.terms("fox running"), 10, None)
    assert [c for c, _ in best][:1] == [2]  # both words (stemmed) in chunk 2
    assert {c for c, _ in best} == {1, 2}
    assert all(s > 0 for _, s in best)
    # Only the files a filter matched; k of them come back, none of the others.
    assert [c for c, _ in index.best(index.terms("lazy quick"), 1, ["file-b"])] in ([3], [4])
    assert {c for c, _ in index.best(index.terms("lazy quick"), 10, ["file-b"])} == {3, 4}
    assert index.best(index.terms("lazy"), 10, []) == []
    assert index.best(index.terms("zebra"), 10, None) == []
    total, counts = index.document_frequencies(index.terms("lazy zebra"))
    assert (total, counts) == (5, [2, 0])


def test_phrases_and_pairs(tmp_path: Path) -> None:
    index = filled(tmp_path / "kw")
    assert index.phrased([index.terms("lazy dog")], 10, None) == [1]
    assert index.phrased([index.terms("dog lazy")], 10, None) == []
    assert index.phrased([index.terms("quick brown")], 10, ["file-b"]) == []
    bears, lazy_dog, cup_of = (index.terms(p) for p in ("brown bears", "lazy dog", "cup of"))
    assert index.phrases_held([bears], [1, 4]) == {4: 1}
    assert index.phrases_held([bears], [1]) == {}
    # How many of the phrases each chunk holds, in one query; ["x"] is no phrase.
    held = index.phrases_held([bears, lazy_dog, cup_of, ["x"]], [1, 2, 3, 4, 5])
    assert held == {1: 1, 3: 1, 4: 1}
    assert index.phrases_held([lazy_dog, lazy_dog, bears], [1, 4]) == {1: 2, 4: 1}
    assert index.phrases_held([], [1]) == {} and index.phrases_held([bears], []) == {}


def test_writes_are_queued_and_a_search_reads_them(tmp_path: Path) -> None:
    indexes = KeywordIndexes(tmp_path / "keyword", commit_seconds=3600)
    try:
        assert indexes.add("vs_1", ROWS[:2]) is False
        # Not committed by the thread (an hour away), yet the search sees them.
        index = indexes.searchable("vs_1")
        assert {c for c, _ in index.best(index.terms("fox"), 10, None)} == {1, 2}
        indexes.remove_files("vs_1", ["file-a"])
        indexes.add("vs_1", ROWS[2:])
        index = indexes.searchable("vs_1")
        assert index.best(index.terms("fox"), 10, None) == []
        assert list(index.chunk_ids()) == [3, 4, 5]
        assert indexes.searchable("vs_2").size == 0  # another store: its own index
    finally:
        indexes.close()


def test_the_thread_commits_in_groups(tmp_path: Path) -> None:
    indexes = KeywordIndexes(tmp_path / "keyword", commit_seconds=0.2)
    try:
        for row in ROWS:
            indexes.add("vs_1", [row])
        deadline = time.monotonic() + 10
        while indexes.get("vs_1").size < 5:
            assert time.monotonic() < deadline, "never committed"
            time.sleep(0.05)
    finally:
        indexes.close()
    # What was committed is on disk: a new manager opens it as it is.
    again = KeywordIndexes(tmp_path / "keyword")
    try:
        assert list(again.get("vs_1").chunk_ids()) == [1, 2, 3, 4, 5]
    finally:
        again.close()


def test_a_full_queue_asks_the_caller_to_wait_for_a_commit(tmp_path: Path) -> None:
    indexes = KeywordIndexes(tmp_path / "keyword", commit_seconds=3600, max_pending=3)
    try:
        assert indexes.add("vs_1", ROWS[:2]) is False
        assert indexes.add("vs_1", ROWS[2:3]) is True
        indexes.flush("vs_1")
        assert indexes.get("vs_1").size == 3
        assert indexes.add("vs_1", ROWS[3:4]) is False
    finally:
        indexes.close()


def test_bad_settings_are_refused_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keyword_commit_seconds"):
        KeywordIndexes(tmp_path / "k", commit_seconds=0)
    with pytest.raises(ValueError, match="keyword_pending_chunks"):
        KeywordIndexes(tmp_path / "k", max_pending=0)


def test_reconcile_adds_the_missing_deletes_the_extra_and_dedups(tmp_path: Path) -> None:
    root = tmp_path / "keyword"
    index = StoreKeywordIndex.open(root / "vs_1")
    # 1 twice (a crash between a commit and its record), 9 not a completed chunk any more.
    index.add([ROWS[0], ROWS[0], ROWS[1], (9, "file-z", "gone fox")])
    index.commit()
    index.close()
    indexes = KeywordIndexes(root)
    try:
        stored = np.asarray([1, 2, 3, 4, 5], dtype=np.int64)
        report = indexes.reconcile("vs_1", stored, rows_of)
        assert (report.added, report.removed, report.rebuilt) == (3, 1, False)
        assert list(indexes.get("vs_1").chunk_ids()) == [1, 2, 3, 4, 5]
        again = indexes.reconcile("vs_1", stored, rows_of)
        assert (again.added, again.removed) == (0, 0)
        index = indexes.searchable("vs_1")
        assert {c for c, _ in index.best(index.terms("fox"), 10, None)} == {1, 2}
    finally:
        indexes.close()


@pytest.mark.parametrize("damage", ["meta-garbage", "segment-truncated", "missing", "older-schema"])
def test_a_damaged_or_missing_index_is_rebuilt_from_the_rows(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "keyword"
    filled(root / "vs_1").close()
    path = root / "vs_1"
    if damage == "older-schema":
        write_older_index(path, before="file_key")
    elif damage == "meta-garbage":
        (path / "meta.json").write_text("{not json")
    elif damage == "segment-truncated":
        for piece in path.iterdir():
            if piece.suffix in (".fast", ".idx", ".term"):
                piece.write_bytes(piece.read_bytes()[:7])
    else:
        StoreKeywordIndex.remove(path)
    indexes = KeywordIndexes(root)
    try:
        report = indexes.reconcile("vs_1", np.asarray([1, 2, 3, 4, 5], dtype=np.int64), rows_of)
        assert report.rebuilt and report.added == 5
        index = indexes.searchable("vs_1")
        assert list(index.chunk_ids()) == [1, 2, 3, 4, 5]
        assert {c for c, _ in index.best(index.terms("lazy"), 10, None)} == {1, 3}
        rows = index.counted(index.terms("lazy"), 10, None)
        lengths = index.file_lengths([key for *_, key in rows])
        assert len(lengths) == len(rows) and all(n > 0 for n in lengths.values())
    finally:
        indexes.close()


def test_drop_forgets_the_queue_and_removes_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "keyword"
    indexes = KeywordIndexes(root, commit_seconds=3600)
    try:
        indexes.add("vs_1", ROWS)
        indexes.flush("vs_1")
        indexes.add("vs_1", [(6, "file-d", "queued, never committed")])
        indexes.drop("vs_1")
        assert not (root / "vs_1").exists()
        indexes.flush_all()
        assert not (root / "vs_1").exists()
        filled(root / "vs_old").close()
        assert indexes.forget_others({"vs_2"}) == ["vs_old"]
        assert not (root / "vs_old").exists()
    finally:
        indexes.close()
