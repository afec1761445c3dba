"""One store's full-text index on tantivy: a rebuildable cache of its completed chunks
(chunk id, file id, text), in its own directory. The database stays the record.

Candidates come from tantivy's BM25 (k1 = 1.2, b = 0.75, ``idf = ln(1 + (N - n + 0.5) /
(n + 0.5))`` over the store's N chunks, n of them holding the term), top k by its block-max
WAND collector, which skips the postings that cannot reach the current k-th score instead of
scoring every match. For a ranking with other BM25 parameters (``core/keyword_ranking.py``),
``counted`` gives each candidate's term frequencies (read back from tantivy's score of each
term alone) and length (the ``length`` fast field: its analysed words, counted at index
time), and ``average_length`` the store's mean chunk length; for evidence at the level of
whole files, each chunk also carries its file's ``file_key`` (a 63-bit hash of the file id,
a fast field), ``file_lengths`` sums the lengths of given files' chunks and
``mean_file_length`` is the mean over the store's files. Words are split on anything
but letters and digits, lower-cased, folded to ASCII and stemmed (Snowball English), both in
the chunks and in the queries.

Not thread-safe for writes: ``KeywordIndexes`` (``keyword_manager.py``) serialises them.
Searches may run on any thread while a write goes on (they read the last reloaded commit).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tantivy

ANALYZER = "quiver_en"
"""The tokenizer of the ``text`` field, registered on every open (tantivy does not store it)."""
WRITER_HEAP_BYTES = 32_000_000
"""The writer's indexing buffer (tantivy's minimum is 15 MB per thread): past it, tantivy
writes a segment before the commit."""
MAX_TOKEN_CHARS = 40
FILE_LENGTHS_CACHED = 100_000
"""Files whose total length ``file_lengths`` keeps between queries (past it, it starts
over): a file's length changes only when its chunks are written or deleted. The first
query reads every file's (one columnar pass: ~3 ms per 200,000 chunks), so later queries
read only files written since."""
TANTIVY_K1 = 1.2
TANTIVY_B = 0.75
"""The BM25 parameters tantivy scores with (fixed in its Python binding)."""


def analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_CHARS))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def word_counter() -> tantivy.TextAnalyzer:
    """The ``analyzer``'s words, neither folded nor stemmed: as many, at a tenth of the cost
    (its later filters change words, never their number), for the ``length`` field."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_CHARS))
        .build()
    )


def file_key(file_id: str) -> int:
    """The file's key in the index: the first 63 bits of the BLAKE2b hash of its id (stable
    across processes; two of a store's files share one with odds of n² / 2^64)."""
    digest = hashlib.blake2b(file_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("chunk_id", indexed=True, fast=True)
    builder.add_text_field("file_id", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("text", tokenizer_name=ANALYZER, index_option="position")
    builder.add_unsigned_field("length", fast=True)
    builder.add_unsigned_field("file_key", indexed=True, fast=True)
    return builder.build()


FIELDS = ("chunk_id", "file_id", "text", "length", "file_key")
"""An index without every one of these (one written before ``length`` or ``file_key``) is
rebuilt."""


class DamagedKeywordIndex(Exception):
    """The directory holds no usable index (missing pieces, another schema, unreadable)."""


class StoreKeywordIndex:
    def __init__(self, path: Path, index: tantivy.Index) -> None:
        self.path = path
        self._index = index
        self._schema = index.schema
        self._analyzer = analyzer()
        self._counter = word_counter()
        self._writer: tantivy.IndexWriter | None = None
        self._index.reload()
        self._searcher = self._index.searcher()
        self._average: tuple[tantivy.Searcher, float, float, int] | None = None
        self._constants: tuple[tantivy.Searcher, int, float] | None = None
        self._lengths: dict[int, int] = {}
        self._lengths_lock = threading.Lock()
        self._lengths_loaded = False
        """Every file's length was read since the cache last started over."""
        self.length_reads = 0
        """Aggregations ``file_lengths`` ran (for tests and tools)."""
        self._touched: set[int] | None = set()
        """Files written since the last commit (None: any file, after a chunk deletion)."""

    @classmethod
    def open(cls, path: Path) -> StoreKeywordIndex:
        """Opens the index in ``path``, creating an empty one if the directory holds none.
        DamagedKeywordIndex if what is there cannot be used."""
        path.mkdir(parents=True, exist_ok=True)
        try:
            if (path / "meta.json").exists():
                index = tantivy.Index.open(str(path))
                meta = (path / "meta.json").read_text()
                if not all(f'"{n}"' in meta for n in FIELDS):
                    raise DamagedKeywordIndex(f"{path}: another schema")
            else:
                index = tantivy.Index(_schema(), path=str(path))
            index.register_tokenizer(ANALYZER, analyzer())
            index.config_reader("manual")
            opened = cls(path, index)
            opened.chunk_ids()  # reads every segment's fast field: damage shows here
        except DamagedKeywordIndex:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # tantivy's errors, and its panics on damaged files
            # (pyo3's PanicException derives from BaseException)
            raise DamagedKeywordIndex(f"{path}: {type(exc).__name__}: {exc}") from exc
        return opened

    @staticmethod
    def remove(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    # -- writes (one thread at a time; visible after ``commit``) ------------------------------

    def _writer_(self) -> tantivy.IndexWriter:
        if self._writer is None:
            self._writer = self._index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
        return self._writer

    def add(self, rows: Iterable[tuple[int, str, str]]) -> int:
        """Adds (chunk id, file id, text) documents; returns how many."""
        writer = self._writer_()
        n = 0
        for chunk_id, file_id, text in rows:
            doc = tantivy.Document()
            doc.add_unsigned("chunk_id", int(chunk_id))
            doc.add_text("file_id", file_id)
            doc.add_text("text", text)
            doc.add_unsigned("length", len(self._counter.analyze(text)))
            key = file_key(file_id)
            doc.add_unsigned("file_key", key)
            writer.add_document(doc)
            if self._touched is not None:
                self._touched.add(key)
            n += 1
        return n

    def delete_files(self, file_ids: Iterable[str]) -> None:
        writer = self._writer_()
        for file_id in file_ids:
            writer.delete_documents_by_term("file_id", file_id)
            if self._touched is not None:
                self._touched.add(file_key(file_id))

    def delete_chunks(self, chunk_ids: Iterable[int]) -> None:
        writer = self._writer_()
        self._touched = None
        ids = [int(c) for c in chunk_ids]
        for start in range(0, len(ids), 10_000):  # (a plain int term is not the u64's)
            part = ids[start : start + 10_000]
            writer.delete_documents_by_query(
                tantivy.Query.term_set_query(self._schema, "chunk_id", part)
            )

    def commit(self) -> None:
        """Makes the writes so far durable (tantivy's atomic meta.json switch) and visible."""
        if self._writer is None:
            return
        self._writer.commit()
        self._index.reload()
        with self._lengths_lock:
            self._searcher = self._index.searcher()
            self._forget_lengths()

    def _forget_lengths(self) -> None:
        """Drops the cached lengths of the files written since the last commit (all of them
        after a chunk deletion); under ``_lengths_lock``."""
        touched, self._touched = self._touched, set()
        if touched is None:
            self._lengths.clear()
            self._lengths_loaded = False
        else:
            for key in touched:
                self._lengths.pop(key, None)

    def rollback(self) -> None:
        """Forgets the writes since the last commit."""
        if self._writer is not None:
            self._writer.rollback()
        self._touched = set()  # nothing committed: the cached lengths still hold

    def close(self) -> None:
        """Lets go of the writer (its lock and merge threads); uncommitted writes are lost."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.rollback()
            writer.wait_merging_threads()

    # -- reads (any thread) -----------------------------------------------------------------

    @property
    def size(self) -> int:
        """N: the chunks indexed (as of the last commit)."""
        return int(self._searcher.num_docs)

    def chunk_ids(self) -> npt.NDArray[np.int64]:
        """Every indexed chunk id (as of the last commit), sorted; an id held twice appears
        twice."""
        searcher = self._searcher
        total = int(searcher.num_docs)
        if total == 0:
            return np.empty(0, dtype=np.int64)
        hits = searcher.search(tantivy.Query.all_query(), limit=total, count=False).hits
        values = searcher.fast_field_values("chunk_id", [address for _, address in hits])
        return np.sort(np.asarray([int(v or 0) for v in values], dtype=np.int64))

    def terms(self, text: str) -> list[str]:
        """The text's terms as the index holds them (lower-cased, folded, stemmed)."""
        return list(self._analyzer.analyze(text))

    def document_frequencies(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        """N and, for each (analysed) term, how many chunks hold it."""
        searcher = self._searcher
        return int(searcher.num_docs), [int(searcher.doc_freq("text", t)) for t in terms]

    def best(
        self, terms: Sequence[str], k: int, files: Sequence[str] | None
    ) -> list[tuple[int, float]]:
        """The ``k`` best chunks by BM25 over any of ``terms`` (analysed), in ``files`` if
        given, best first, with their score."""
        if not terms or k <= 0 or files == []:
            return []
        query = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "text", t))
                for t in dict.fromkeys(terms)
            ]
        )
        return self._top(self._within(query, files), k)

    def phrased(
        self, phrases: Sequence[Sequence[str]], k: int, files: Sequence[str] | None
    ) -> list[int]:
        """Up to ``k`` chunks holding any of the phrases (each a list of analysed terms, in
        order), in ``files`` if given, those where it is most salient first."""
        queries = [self._phrase(p) for p in phrases if len(p) > 1]
        if not queries or k <= 0 or files == []:
            return []
        query = tantivy.Query.boolean_query([(tantivy.Occur.Should, q) for q in queries])
        return [c for c, _ in self._top(self._within(query, files), k)]

    def phrases_held(
        self, phrases: Sequence[Sequence[str]], among: Sequence[int]
    ) -> dict[int, int]:
        """For each of the chunks ``among`` holding any of the phrases (each a list of
        analysed terms, in order), how many of them it holds. One query: each phrase a
        clause scoring 1 when held, so a chunk's score is its count."""
        clauses = [
            (tantivy.Occur.Should, tantivy.Query.const_score_query(self._phrase(p), 1.0))
            for p in phrases
            if len(p) > 1
        ]
        if not clauses or not among:
            return {}
        query = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Must, tantivy.Query.boolean_query(clauses)),
                (tantivy.Occur.Must, self._among(among)),
            ]
        )
        return {c: round(score) for c, score in self._top(query, len(among))}

    def counted(
        self, terms: Sequence[str], k: int, files: Sequence[str] | None
    ) -> list[tuple[int, int, list[int], int]]:
        """The ``k`` best chunks as ``best`` finds them, best first, each as (chunk id, its
        length in analysed words, how often it holds each of ``terms``, its file's key).

        A term's frequency in a chunk is read back from tantivy's own BM25 score of the term
        alone over these chunks (one query per term): ``s = (k1 + 1) · idf · tf / (tf + K)``
        with ``K = k1 · (1 - b + b · dl / avgdl)``, so ``tf = K · r / (1 - r)`` for
        ``r = s / ((k1 + 1) · idf)``, rounded. Tantivy's ``dl`` is the chunk's length coded
        in one byte, exact up to 40 words and within a few per cent above, so a frequency
        of 6 or more in a long chunk may come out one off (where BM25 has all but
        saturated); below that it is exact (tests/test_keyword_rescoring.py checks it against
        the analysed text)."""
        if not terms or k <= 0 or files == []:
            return []
        searcher = self._searcher
        unique = list(dict.fromkeys(terms))
        query = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "text", t))
                for t in unique
            ]
        )
        hits = searcher.search(self._within(query, files), limit=k, count=False).hits
        if not hits:
            return []
        addresses = [address for _, address in hits]
        ids = [int(c or 0) for c in searcher.fast_field_values("chunk_id", addresses)]
        lengths = [int(n or 0) for n in searcher.fast_field_values("length", addresses)]
        keys = [int(f or 0) for f in searcher.fast_field_values("file_key", addresses)]
        total, average = self._scoring_constants(searcher, query, addresses[0])
        keep = self._among(ids)
        row: dict[int, int] = {}
        for position, held_id in enumerate(ids):  # a chunk briefly held twice: its first copy
            row.setdefault(held_id, position)
        column = {term: j for j, term in enumerate(unique)}
        shares = np.zeros((len(ids), len(unique)), dtype=np.float64)
        for term, j in column.items():
            n = min(int(searcher.doc_freq("text", term)), total)
            weight = (TANTIVY_K1 + 1) * math.log(1 + (total - n + 0.5) / (n + 0.5))
            alone = tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Must, tantivy.Query.term_query(self._schema, "text", term)),
                    (tantivy.Occur.Must, keep),
                ]
            )
            found = searcher.search(alone, limit=len(ids), count=False).hits
            held = searcher.fast_field_values("chunk_id", [address for _, address in found])
            for (score, _), chunk_id in zip(found, held, strict=True):
                i = row.get(int(chunk_id or 0))
                if i is not None:
                    shares[i, j] = float(score) / weight if weight > 0 else 1.0
        length = np.asarray(lengths, dtype=np.float64)
        norm = TANTIVY_K1 * (1 - TANTIVY_B + TANTIVY_B * length / max(average, 1e-9))
        counts = _frequencies(shares, norm[:, None])[:, [column[t] for t in terms]]
        return [
            (chunk_id, n, tfs, key)
            for i, (chunk_id, n, tfs, key) in enumerate(
                zip(ids, lengths, counts.tolist(), keys, strict=True)
            )
            if row[chunk_id] == i
        ]

    def _scoring_constants(
        self, searcher: tantivy.Searcher, query: tantivy.Query, address: tantivy.DocAddress
    ) -> tuple[int, float]:
        """Tantivy's N (every document of the segments, deleted ones included until a
        merge drops them) and average length, as its BM25 uses them, read from its
        explanation of one hit's score; once per commit. ``searcher`` is the one ``address``
        came from (a commit meanwhile replaces ``self._searcher``, whose segments the
        address may not name)."""
        cached = self._constants
        if cached is not None and cached[0] is searcher:
            return cached[1], cached[2]
        found = _explained(json.loads(query.explain(searcher, address).to_json()))
        total = int(found.get("N", searcher.num_docs))
        average = float(found.get("avgdl", 0.0)) or self.average_length(searcher)
        self._constants = (searcher, total, average)
        return total, average

    def average_length(self, searcher: tantivy.Searcher | None = None) -> float:
        """The mean length of the indexed chunks in analysed words (as of the last commit,
        or as ``searcher`` sees them; computed once per commit, by tantivy's columnar
        aggregation)."""
        return self._means(searcher or self._searcher)[0]

    def mean_file_length(self) -> float:
        """The mean over the store's files of their chunks' total length in analysed words
        (as of the last commit; the files counted by tantivy's cardinality aggregation,
        HyperLogLog, within a fraction of a per cent)."""
        return self._means(self._searcher)[1]

    def _means(self, searcher: tantivy.Searcher) -> tuple[float, float, int]:
        """(mean chunk length, mean file length, about how many files), once per commit."""
        cached = self._average
        if cached is not None and cached[0] is searcher:
            return cached[1], cached[2], cached[3]
        chunk = file = files = 0.0
        if int(searcher.num_docs) > 0:
            result = searcher.aggregate(
                tantivy.Query.all_query(),
                {
                    "total": {"sum": {"field": "length"}},
                    "files": {"cardinality": {"field": "file_key"}},
                },
            )
            total = float(result["total"]["value"] or 0.0)
            chunk = total / int(searcher.num_docs)  # every document has a length
            files = float(result["files"]["value"] or 0.0)
            file = total / files if files > 0 else 0.0
        self._average = (searcher, chunk, file, round(files))
        return chunk, file, round(files)

    def file_lengths(self, keys: Sequence[int]) -> dict[int, int]:
        """Each of these files' total length in analysed words (the sum over its chunks,
        as of the last commit), by file key; a file with no chunk left is absent. A file
        not asked about since it was last written costs a columnar pass over its chunks
        (2 ms for 200 files of 250 chunks); then its length is kept until a commit
        writes or deletes its chunks. The first call after the cache starts over reads
        every file's at once (when the store has at most ``FILE_LENGTHS_CACHED`` files)."""
        with self._lengths_lock:
            searcher, loaded = self._searcher, self._lengths_loaded
            found = {k: n for k in map(int, keys) if (n := self._lengths.get(k)) is not None}
        unique = [k for k in dict.fromkeys(int(k) for k in keys) if k not in found]
        if not unique:
            return found
        every = not loaded and self._means(searcher)[2] <= FILE_LENGTHS_CACHED
        read = self._read_lengths(searcher, None if every else unique)
        with self._lengths_lock:
            if searcher is self._searcher:  # no commit since: still the files' lengths
                if every:
                    self._lengths, self._lengths_loaded = read, True
                elif len(self._lengths) + len(read) > FILE_LENGTHS_CACHED:
                    self._lengths, self._lengths_loaded = read, False
                else:
                    self._lengths.update(read)
        return found | {k: read[k] for k in unique if k in read}

    def _read_lengths(self, searcher: tantivy.Searcher, unique: list[int] | None) -> dict[int, int]:
        """The lengths of these files (None: of every file, up to ``FILE_LENGTHS_CACHED``)."""
        self.length_reads += 1
        if unique is None:
            query = tantivy.Query.all_query()
            size = FILE_LENGTHS_CACHED
        else:
            query = tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "file_key", k))
                    for k in unique
                ]
            )
            size = len(unique)
        result = searcher.aggregate(
            query,
            {
                "files": {
                    "terms": {"field": "file_key", "size": size},
                    "aggs": {"length": {"sum": {"field": "length"}}},
                }
            },
        )
        return {
            int(bucket["key"]): int(bucket["length"]["value"] or 0)
            for bucket in result["files"]["buckets"]
        }

    def _among(self, chunk_ids: Sequence[int]) -> tantivy.Query:
        """A filter (scoring 0) keeping the chunks ``chunk_ids``: a union of one-id term
        queries, each a dictionary lookup, where a term set query walks the whole chunk_id
        dictionary (8.8 ms at 50k chunks for 200 ids: its cost grows with the store)."""
        return tantivy.Query.const_score_query(
            tantivy.Query.boolean_query(
                [
                    (
                        tantivy.Occur.Should,
                        tantivy.Query.term_query(self._schema, "chunk_id", int(c)),
                    )
                    for c in chunk_ids
                ]
            ),
            0.0,
        )

    def _phrase(self, terms: Sequence[str]) -> tantivy.Query:
        return tantivy.Query.phrase_query(self._schema, "text", list(terms))

    def _within(self, query: tantivy.Query, files: Sequence[str] | None) -> tantivy.Query:
        """The query limited to the files' chunks (a filter that does not score)."""
        if files is None:
            return query
        keep = tantivy.Query.term_set_query(self._schema, "file_id", list(files))
        return tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Must, query),
                (tantivy.Occur.Must, tantivy.Query.const_score_query(keep, 0.0)),
            ]
        )

    def _top(self, query: tantivy.Query, k: int) -> list[tuple[int, float]]:
        searcher = self._searcher
        hits = searcher.search(query, limit=k, count=False).hits
        if not hits:
            return []
        ids = searcher.fast_field_values("chunk_id", [address for _, address in hits])
        return [(int(c or 0), float(score)) for (score, _), c in zip(hits, ids, strict=True)]


def _frequencies(
    shares: npt.NDArray[np.float64], norm: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """The term frequencies ``tf`` for which ``tf / (tf + norm)`` is each share (0: absent,
    1 or more: beyond any saturation)."""
    inside = np.clip(shares, 0.0, 1.0 - 1e-9)
    tf = np.maximum(1, np.rint(norm * inside / (1.0 - inside)))
    out: npt.NDArray[np.int64] = np.where(shares > 0.0, np.minimum(tf, 1e6), 0).astype(np.int64)
    return out


def _explained(node: object) -> dict[str, float]:
    """``N`` and ``avgdl`` from a tantivy score explanation (JSON), where it gives them."""
    found: dict[str, float] = {}
    if isinstance(node, dict):
        description = str(node.get("description", ""))
        for key in ("N", "avgdl"):
            if description.startswith(f"{key}, ") and key not in found:
                found[key] = float(node.get("value", 0.0))
        for child in node.get("details", []) or []:
            for key, value in _explained(child).items():
                found.setdefault(key, value)
    return found
