"""The keyword ranking's own BM25 (core/keyword_ranking.py, k1 0.9, b 0.4) over tantivy's
candidates: the term frequencies and lengths the index gives back (index/keyword.py,
``counted``) are those of the analysed text, with the filter inside the query, after
deletions and after a reopen; an index written before the ``length`` or ``file_key`` field
is refused (and so rebuilt at start); a better match never scores lower. The file evidence:
files' lengths (cached until a commit writes them) and their mean, a chunk of a file about
the query ranking above a like one, and the file's relevance monotonic."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tantivy
from quiver.server.core import keyword_ranking
from quiver.server.core.keyword_ranking import bm25, bm25_all, keyword_matches
from quiver.server.index.keyword import (
    DamagedKeywordIndex,
    StoreKeywordIndex,
    analyzer,
    file_key,
)

from tests.support.old_keyword_index import write_older_index

WORDS = [f"word{i}" for i in range(400)]
COMMON = ["lattice", "quantum", "running", "databases", "indexes", "kernel"]


def corpus(n: int, seed: int) -> dict[int, tuple[str, str]]:
    """n chunks of 3 to 300 words (a few common words often repeated), 4 per file."""
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        length = rng.randint(3, 300)
        words = [
            rng.choice(COMMON) if rng.random() < 0.1 else rng.choice(WORDS) for _ in range(length)
        ]
        out[i + 1] = (f"file-{i // 4}", " ".join(words))
    return out


def test_counted_gives_the_analysed_frequencies_and_lengths(tmp_path: Path) -> None:
    chunks = corpus(2000, 1)
    index = StoreKeywordIndex.open(tmp_path / "kw")
    index.add((c, f, t) for c, (f, t) in chunks.items())
    index.commit()
    # Deleted chunks stay in tantivy's segments (and its N and average) until a merge.
    index.delete_files([f"file-{i}" for i in range(0, 500, 3)])
    index.commit()
    alive = {
        c: ft
        for c, ft in chunks.items()
        if int(ft[0].split("-")[1]) % 3 != 0 or int(ft[0].split("-")[1]) >= 500
    }
    words = analyzer()
    counts = {c: Counter(words.analyze(t)) for c, (_, t) in alive.items()}
    lengths = {c: sum(n.values()) for c, n in counts.items()}
    assert index.average_length() == pytest.approx(sum(lengths.values()) / len(lengths))

    checked = 0
    for query in ("lattice quantum", "running kernel word7", "databases indexes word1 word2"):
        terms = index.terms(query)
        rows = index.counted(terms, 200, None)
        assert rows and len(rows) == len({c for c, _, _, _ in rows})
        for chunk_id, length, tfs, _ in rows:
            assert chunk_id in alive
            assert length == lengths[chunk_id]
            for term, tf in zip(terms, tfs, strict=True):
                true = counts[chunk_id][term]
                if true <= 5:  # beyond, tantivy's one-byte length may put it one off
                    assert tf == true, (chunk_id, term)
                    checked += 1
                else:
                    assert abs(tf - true) <= 1
    assert checked > 500

    # The filter stays inside the query: only the files asked for, k of them.
    files = [f"file-{i}" for i in range(1, 500, 3)]
    scoped = index.counted(index.terms("lattice quantum"), 20, files)
    assert len(scoped) == 20
    assert all(alive[c][0] in files for c, _, _, _ in scoped)
    assert index.counted(index.terms("lattice"), 10, []) == []
    assert index.counted(index.terms("zebra"), 10, None) == []


def test_the_length_is_the_analysed_words(tmp_path: Path) -> None:
    texts = [
        "Ünïcödé naïve café, über-cool façade",
        "snake_case and CamelCase words; x" + "y" * 60 + " and a 39-character-" + "z" * 30,
        "digits 123 4.5 6,7 \u2014 dashes \u2013 and \u2603 symbols \u00bd",
        "日本語のテキスト and Ελληνικά λέξεις",
        "",
    ]
    index = StoreKeywordIndex.open(tmp_path / "kw")
    index.add((i + 1, "file-a", t) for i, t in enumerate(texts))
    index.commit()
    searcher = index._searcher
    hits = searcher.search(tantivy.Query.all_query(), limit=10, count=False).hits
    addresses = [a for _, a in hits]
    ids = searcher.fast_field_values("chunk_id", addresses)
    lengths = searcher.fast_field_values("length", addresses)
    words = analyzer()
    assert {int(c or 0): int(n or 0) for c, n in zip(ids, lengths, strict=True)} == {
        i + 1: len(words.analyze(t)) for i, t in enumerate(texts)
    }


def test_lengths_and_ranking_survive_a_reopen(tmp_path: Path) -> None:
    chunks = corpus(300, 2)
    index = StoreKeywordIndex.open(tmp_path / "kw")
    index.add((c, f, t) for c, (f, t) in chunks.items())
    index.commit()
    average = index.average_length()
    before = keyword_matches(index, ["quantum lattice kernel"], 30, None)
    index.close()
    again = StoreKeywordIndex.open(tmp_path / "kw")
    assert again.average_length() == pytest.approx(average)
    after = keyword_matches(again, ["quantum lattice kernel"], 30, None)
    assert list(after.relevance) == list(before.relevance)
    assert list(after.relevance.values()) == pytest.approx(list(before.relevance.values()))


@pytest.mark.parametrize("newest", ["length", "file_key"])
def test_an_index_written_before_the_newest_fields_is_refused(tmp_path: Path, newest: str) -> None:
    """An index from before ``length`` (or before ``file_key``) is refused, so it is
    rebuilt from the database at start (tests/test_keyword_index.py)."""
    path = tmp_path / "old"
    write_older_index(path, before=newest)
    with pytest.raises(DamagedKeywordIndex, match="another schema"):
        StoreKeywordIndex.open(path)


def test_a_better_match_never_scores_lower() -> None:
    weights = [2.0, 0.5]
    for length in (5, 50, 120, 400):
        for tf in range(0, 8):
            # more of a term: never lower
            assert bm25(weights, [tf + 1, 1], length, 120.0) > bm25(weights, [tf, 1], length, 120.0)
            # the same words in a longer chunk: never higher
            if tf:
                assert bm25(weights, [tf, 0], length + 10, 120.0) <= bm25(
                    weights, [tf, 0], length, 120.0
                )
    # never above (k1 + 1) · Σ idf, the normaliser of the relevance
    assert bm25(weights, [10**6, 10**6], 1, 120.0) <= 1.9 * sum(weights) + 1e-9
    assert bm25(weights, [0, 0], 10, 120.0) == 0.0
    # the vectorised form used by the ranking is the same function
    rows = [(tf, tf2, length) for tf in range(4) for tf2 in range(3) for length in (5, 120, 400)]
    many = bm25_all(
        weights,
        np.asarray([[a, b] for a, b, _ in rows], dtype=np.float64),
        np.asarray([n for _, _, n in rows], dtype=np.float64),
        120.0,
    )
    assert many.tolist() == pytest.approx([bm25(weights, [a, b], n, 120.0) for a, b, n in rows])


def test_keyword_relevance_orders_by_the_rescored_bm25(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tantivy (b 0.75) would rank the short chunk holding "lattice" once above the long one
    holding it three times; with b 0.4 the long one comes first (the chunks' own BM25: each
    is a file of its own here, so the file evidence is left out)."""
    monkeypatch.setattr(keyword_ranking, "FILE_WEIGHT", 0.0)
    filler = " ".join(WORDS[:80])
    rows = [
        (1, "file-a", "lattice " + " ".join(WORDS[100:104])),
        (2, "file-b", f"lattice {filler} lattice {filler} lattice"),
        *((i, f"file-{i}", " ".join(WORDS[i : i + 60])) for i in range(3, 40)),
    ]
    index = StoreKeywordIndex.open(tmp_path / "kw")
    index.add(rows)
    index.commit()
    assert [c for c, _ in index.best(index.terms("lattice"), 2, None)] == [1, 2]
    found = keyword_matches(index, ["lattice"], 10, None)
    assert list(found.relevance)[:2] == [2, 1]
    assert found.relevance[2] > found.relevance[1] > 0


def test_file_lengths_and_their_mean(tmp_path: Path) -> None:
    """``file_lengths`` sums a file's chunk lengths, all of them (not only those a query
    finds), and forgets deleted files; ``mean_file_length`` is the mean over files."""
    chunks = corpus(400, 3)  # 100 files of 4 chunks
    index = StoreKeywordIndex.open(tmp_path / "kw")
    index.add((c, f, t) for c, (f, t) in chunks.items())
    index.commit()
    words = analyzer()
    per_file: Counter[str] = Counter()
    for f, t in chunks.values():
        per_file[f] += len(words.analyze(t))
    asked = ["file-0", "file-7", "file-99", "file-unknown"]
    got = index.file_lengths([file_key(f) for f in asked])
    assert got == {file_key(f): per_file[f] for f in asked[:3]}
    assert index.length_reads == 1  # every file's at once
    again = index.file_lengths([file_key(f"file-{i}") for i in range(10, 60)])
    assert again == {file_key(f"file-{i}"): per_file[f"file-{i}"] for i in range(10, 60)}
    assert index.length_reads == 1  # kept
    assert index.mean_file_length() == pytest.approx(sum(per_file.values()) / 100, rel=0.01)

    index.delete_files(["file-7"])
    index.commit()
    assert file_key("file-7") not in index.file_lengths([file_key("file-7")])
    left = [n for f, n in per_file.items() if f != "file-7"]
    assert index.mean_file_length() == pytest.approx(sum(left) / 99, rel=0.01)
    rows = index.counted(index.terms("lattice"), 50, None)
    assert rows and all(key == file_key(chunks[c][0]) for c, _, _, key in rows)

    # Kept between queries, and forgotten when a commit writes the file's chunks.
    key = file_key("file-0")
    assert index.file_lengths([key]) == {key: per_file["file-0"]}
    index.add([(1000, "file-0", "three more words")])
    assert index.file_lengths([key]) == {key: per_file["file-0"]}  # not committed yet
    index.commit()
    reads = index.length_reads
    assert index.file_lengths([key]) == {key: per_file["file-0"] + 3}
    assert index.length_reads == reads + 1  # the file written since: read again
    assert index.file_lengths([file_key("file-1")]) == {file_key("file-1"): per_file["file-1"]}
    assert index.length_reads == reads + 1  # the others are still kept
    first = min(c for c, (f, _) in chunks.items() if f == "file-0")
    index.delete_chunks([first])
    index.commit()
    assert index.file_lengths([key]) == {
        key: per_file["file-0"] + 3 - len(words.analyze(chunks[first][1]))
    }


def test_a_chunk_ranks_higher_in_a_file_about_the_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chunks alike (same words, same length): the one whose file holds the query's
    words in other chunks too comes first; a chunk without any query word still scores 0
    whatever its file; without file evidence the two tie (and the lower id comes first)."""
    filler = [" ".join(WORDS[i : i + 40]) for i in range(0, 360, 40)]
    same = "lattice quantum " + filler[0]
    rows = [
        (1, "file-a", same),
        (2, "file-b", same),
        (3, "file-b", "lattice quantum lattice " + filler[1]),
        (4, "file-b", filler[2]),
        (5, "file-a", filler[3]),
        (6, "file-a", filler[4]),
        *((10 + i, f"file-{i}", filler[5 + i % 4]) for i in range(30)),
    ]
    index = StoreKeywordIndex.open(tmp_path / "kw")
    index.add(rows)
    index.commit()
    found = keyword_matches(index, ["lattice quantum"], 10, None)
    assert found.relevance[2] > found.relevance[1] > 0
    assert 4 not in found.relevance and 5 not in found.relevance
    assert all(0 < r <= 1 for r in found.relevance.values())

    monkeypatch.setattr(keyword_ranking, "FILE_WEIGHT", 0.0)
    alone = keyword_matches(index, ["lattice quantum"], 10, None)
    assert alone.relevance[1] == alone.relevance[2]


class _Files:
    """The two reads ``file_relevance`` makes, over given file lengths."""

    def __init__(self, lengths: dict[int, int], mean: float) -> None:
        self.lengths, self.mean = lengths, mean

    def file_lengths(self, keys: list[int]) -> dict[int, int]:
        return {k: self.lengths[k] for k in keys if k in self.lengths}

    def mean_file_length(self) -> float:
        return self.mean


def test_a_file_about_the_query_never_scores_lower() -> None:
    """The file's relevance grows with its candidates' frequencies, falls with its length,
    stays in [0, 1], is shared by the file's candidates, and is at least what the
    candidates themselves show when the index no longer knows the file."""
    weights = [2.0, 0.5]

    def relevance(tfs: list[list[int]], keys: list[int], lengths: dict[int, int]) -> list[float]:
        files = _Files(lengths, 300.0)
        rows = np.asarray(tfs, dtype=np.float64)
        out = keyword_ranking.file_relevance(
            files,  # type: ignore[arg-type]
            weights,
            rows,
            np.full(len(keys), 100.0),
            keys,
        )
        return [float(x) for x in out]

    base = relevance([[1, 0], [0, 1]], [7, 8], {7: 300, 8: 300})
    assert all(0 < r <= 1 for r in base)
    more = relevance([[1, 0], [0, 1], [2, 0]], [7, 8, 7], {7: 300, 8: 300})
    assert more[0] == more[2] > base[0]  # another candidate of file 7: the file gains
    assert more[1] == base[1]
    longer = relevance([[1, 0], [0, 1]], [7, 8], {7: 3000, 8: 300})
    assert longer[0] < base[0] and longer[1] == base[1]
    unknown = relevance([[1, 0]], [9], {})  # deleted meanwhile: its candidates' length
    assert 0 < unknown[0] <= 1
    saturated = relevance([[10**6, 10**6]], [7], {7: 1})
    assert saturated[0] <= 1.0
