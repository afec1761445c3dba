"""Ranking experiments on the quality collection (``bench/quality.py``): one ingest, then
``auto`` under keyword-side and fusion variants patched into the in-process server, each
next to plain BM25 over the same chunks. Of these, only the BM25 re-scoring is shipped
(docs/BENCHMARKS.md, "Search quality", has the figures); this is the tool that measured them.

    .venv/bin/python -m bench.quality_variants --seed 11
    .venv/bin/python -m bench.quality_variants --seed 7 --only shipped "two b0.5"

Variants:

- ``rm3 …``: RM3-style pseudo-relevance feedback: the top ``d`` keyword hits' term
  distribution (weighted by their relevance, stop words and numbers left out), its ``t``
  best terms by P(w|R)·idf added to the query with weight ``1 - w`` against ``w`` for the
  original words, a second top-k query; relevance over the weighted maximum.
- ``two b…``: a second field with unstemmed words (ASCII folded, lower case) queried
  together with the stemmed one, its terms weighted ``b``.
- ``file g…``: each candidate's fused score raised by ``g`` times the scores of the other
  candidates of its file (document-level evidence).
- ``q…`` / ``slop… q…``: the pair boost ``q`` (adjacent query words), or pairs found
  within ``slop`` positions instead of adjacent.
- ``bm25 k… b… [d…]``: tantivy's top k re-scored with BM25 (k1, b; BM25+ lower bound ``d``
  per matched term) from each candidate's analysed text (read from the database here), the
  store's document frequencies and average length: the tool that chose the shipped
  re-scoring (k1 0.9, b 0.4; ``core/keyword_ranking.py``, whose frequencies come from the
  index instead).
- ``tantivy k1.2 b0.75 p0.5``: the keyword side before the re-scoring (tantivy's own BM25),
  with the phrase boost it shipped with; ``p0.5``: the shipped ranking with that boost.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import tantivy
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings
from quiver.server.core import fusion as fusion_module
from quiver.server.core import keyword_ranking as kr
from quiver.server.core import search as search_module
from quiver.server.core.keyword_ranking import KeywordMatches
from quiver.server.core.ports import KeywordIndex
from quiver.server.index.keyword import MAX_TOKEN_CHARS, StoreKeywordIndex, analyzer
from quiver.v1 import common_pb2, vector_stores_pb2_grpc

from bench.quality import bm25_rankings, evaluate, quiver_rankings, stored_chunks
from bench.quality_corpus import build
from bench.search import ingest

Matcher = Callable[[KeywordIndex, Sequence[str], int, "list[str] | None"], KeywordMatches]
Fuser = Callable[..., list[tuple[int, float]]]
PairShares = Callable[[KeywordIndex, Sequence[str], Sequence[int]], dict[int, float]]

ORIGINAL_MATCHES: Matcher = kr.keyword_matches
ORIGINAL_FUSE: Fuser = fusion_module.fuse
ORIGINAL_PAIRS: PairShares = kr._pair_shares


@dataclass
class Corpus:
    texts: dict[int, str]
    file_of: dict[int, str]
    two_fields: tantivy.Index | None = None
    counts: dict[int, Counter[str]] | None = None
    """Each chunk's analysed words (for ``bm25 …``), computed once, and their number."""
    lengths: dict[int, int] | None = None


def _store_index(index: KeywordIndex) -> StoreKeywordIndex:
    assert isinstance(index, StoreKeywordIndex)
    return index


def _top(searcher: tantivy.Searcher, query: tantivy.Query, k: int) -> list[tuple[int, float]]:
    hits = searcher.search(query, limit=k, count=False).hits
    ids = searcher.fast_field_values("chunk_id", [address for _, address in hits])
    return [(int(c or 0), float(s)) for (s, _), c in zip(hits, ids, strict=True)]


def _within(schema: tantivy.Schema, query: tantivy.Query, files: list[str] | None) -> tantivy.Query:
    if files is None:
        return query
    keep = tantivy.Query.term_set_query(schema, "file_id", list(files))
    return tantivy.Query.boolean_query(
        [
            (tantivy.Occur.Must, query),
            (tantivy.Occur.Must, tantivy.Query.const_score_query(keep, 0.0)),
        ]
    )


def _idf(total: int, n: int) -> float:
    n = min(n, total)
    return math.log(1 + (total - n + 0.5) / (n + 0.5))


def rm3(corpus: Corpus, docs: int, terms_n: int, original: float) -> Matcher:
    def matches(
        index: KeywordIndex, queries: Sequence[str], k: int, files: list[str] | None
    ) -> KeywordMatches:
        first = ORIGINAL_MATCHES(index, queries, k, files)
        if not first.relevance:
            return first
        store = _store_index(index)
        terms = kr.query_terms(queries)
        stems = list(dict.fromkeys(t for w in terms.words for t in index.terms(w)))
        stop = {t for w in kr.STOP_WORDS for t in index.terms(w)}
        top = list(first.relevance.items())[:docs]
        mass = sum(s for _, s in top) or 1.0
        model: dict[str, float] = {}
        for chunk_id, score in top:
            tokens = [t for t in index.terms(corpus.texts[chunk_id]) if not t.isdigit()]
            for term, count in Counter(tokens).items():
                model[term] = model.get(term, 0.0) + (score / mass) * count / len(tokens)
        candidates = [t for t in model if t not in stop and t not in stems]
        total, counts = index.document_frequencies(candidates)
        salience = {t: model[t] * _idf(total, n) for t, n in zip(candidates, counts, strict=True)}
        expansion = sorted(candidates, key=lambda t: -salience[t])[:terms_n]
        norm = sum(model[t] for t in expansion) or 1.0
        weights = dict.fromkeys(stems, 1.0)
        for term in expansion:
            weights[term] = (1 - original) / original * len(stems) * model[term] / norm
        total, frequencies = index.document_frequencies(list(weights))
        best = (kr.K1 + 1) * sum(
            w * _idf(total, n) for w, n in zip(weights.values(), frequencies, strict=True)
        )
        schema = store._schema
        query = tantivy.Query.boolean_query(
            [
                (
                    tantivy.Occur.Should,
                    tantivy.Query.boost_query(tantivy.Query.term_query(schema, "text", t), w),
                )
                for t, w in weights.items()
            ]
        )
        rows = _top(store._searcher, _within(schema, query, files), k)
        relevance = {i: min(1.0, max(0.0, s) / best) for i, s in rows if best > 0}
        return KeywordMatches(
            relevance,
            first.phrased,
            kr._pair_shares(index, terms.pairs, list(relevance)),
            complete=len(rows) < k,
        )

    return matches


def _unstemmed() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_CHARS))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .build()
    )


def two_field_index(corpus: Corpus) -> tantivy.Index:
    """The store's chunks in an index of both fields (stemmed ``text``, unstemmed ``raw``)."""
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("chunk_id", indexed=True, fast=True)
    builder.add_text_field("file_id", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("text", tokenizer_name="quiver_en", index_option="position")
    builder.add_text_field("words", tokenizer_name="quiver_words", index_option="position")
    index = tantivy.Index(builder.build())
    index.register_tokenizer("quiver_en", analyzer())
    index.register_tokenizer("quiver_words", _unstemmed())
    writer = index.writer(heap_size=50_000_000, num_threads=1)
    for chunk_id, text in corpus.texts.items():
        doc = tantivy.Document()
        doc.add_unsigned("chunk_id", chunk_id)
        doc.add_text("file_id", corpus.file_of[chunk_id])
        doc.add_text("text", text)
        doc.add_text("words", text)
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    return index


def two_fields(corpus: Corpus, beta: float) -> Matcher:
    words_analyzer = _unstemmed()

    def matches(
        index: KeywordIndex, queries: Sequence[str], k: int, files: list[str] | None
    ) -> KeywordMatches:
        first = ORIGINAL_MATCHES(index, queries, k, files)
        assert corpus.two_fields is not None
        searcher = corpus.two_fields.searcher()
        schema = corpus.two_fields.schema
        terms = kr.query_terms(queries)
        stems = list(dict.fromkeys(t for w in terms.words for t in index.terms(w)))
        words = list(dict.fromkeys(t for w in terms.words for t in words_analyzer.analyze(w)))
        if not stems:
            return first
        total = int(searcher.num_docs)
        best = (kr.K1 + 1) * (
            sum(_idf(total, searcher.doc_freq("text", t)) for t in stems)
            + beta * sum(_idf(total, searcher.doc_freq("words", t)) for t in words)
        )
        clauses = [
            (tantivy.Occur.Should, tantivy.Query.term_query(schema, "text", t)) for t in stems
        ] + [
            (
                tantivy.Occur.Should,
                tantivy.Query.boost_query(tantivy.Query.term_query(schema, "words", t), beta),
            )
            for t in words
        ]
        query = _within(schema, tantivy.Query.boolean_query(clauses), files)
        rows = _top(searcher, query, k)
        relevance = {i: min(1.0, max(0.0, s) / best) for i, s in rows if best > 0}
        return KeywordMatches(
            relevance,
            first.phrased,
            kr._pair_shares(index, terms.pairs, list(relevance)),
            complete=len(rows) < k,
        )

    return matches


def rescored(corpus: Corpus, k1: float, b: float, delta: float = 0.0) -> Matcher:
    """Tantivy's top k (BM25 1.2/0.75), re-scored with BM25 (k1, b; BM25+ ``delta``) over
    the same analysed words: each candidate's term frequencies and length from its text,
    the store's document frequencies and average length."""

    def matches(
        index: KeywordIndex, queries: Sequence[str], k: int, files: list[str] | None
    ) -> KeywordMatches:
        if corpus.counts is None or corpus.lengths is None:
            words = analyzer()
            corpus.counts = {c: Counter(words.analyze(t)) for c, t in corpus.texts.items()}
            corpus.lengths = {c: sum(n.values()) for c, n in corpus.counts.items()}
        counts, lengths = corpus.counts, corpus.lengths
        average = sum(lengths.values()) / max(1, len(lengths))
        terms = kr.query_terms(queries)
        stems = list(dict.fromkeys(t for w in terms.words for t in index.terms(w)))
        if not stems:
            return KeywordMatches()
        idf = kr.idfs(index, stems)
        best = (k1 + 1 + delta) * sum(idf)
        rows = index.best(stems, k, files)
        scored = []
        for chunk_id, _ in rows:
            tf = counts[chunk_id]
            norm = k1 * (1 - b + b * lengths[chunk_id] / average)
            score = sum(
                w * (tf[t] * (k1 + 1) / (tf[t] + norm) + delta)
                for t, w in zip(stems, idf, strict=True)
                if tf[t]
            )
            scored.append((chunk_id, score))
        scored.sort(key=lambda x: (-x[1], x[0]))
        relevance = {i: min(1.0, max(0.0, s) / best) for i, s in scored if best > 0}
        phrased: list[int] = []
        if terms.phrases:
            phrased = index.phrased([index.terms(p) for p in terms.phrases], k, files)
        return KeywordMatches(
            relevance,
            frozenset(phrased),
            kr._pair_shares(index, terms.pairs, list(relevance)),
            complete=len(rows) < k,
        )

    return matches


def tantivy_scores(
    index: KeywordIndex, queries: Sequence[str], k: int, files: list[str] | None
) -> KeywordMatches:
    """The keyword side before the re-scoring: tantivy's own BM25 (k1 1.2, b 0.75)."""
    terms = kr.query_terms(queries)
    stems = list(dict.fromkeys(t for w in terms.words for t in index.terms(w)))
    if not stems:
        return KeywordMatches()
    best = (1.2 + 1) * sum(kr.idfs(index, stems))
    rows = index.best(stems, k, files)
    relevance = {i: min(1.0, max(0.0, s) / best) for i, s in rows if best > 0}
    phrased: list[int] = []
    if terms.phrases:
        phrased = index.phrased([index.terms(p) for p in terms.phrases], k, files)
    return KeywordMatches(
        relevance,
        frozenset(phrased),
        kr._pair_shares(index, terms.pairs, list(relevance)),
        complete=len(rows) < k,
    )


def file_evidence(corpus: Corpus, gamma: float) -> Fuser:
    def fuse(*args: object) -> list[tuple[int, float]]:
        scored = ORIGINAL_FUSE(*args)
        per_file: dict[str, float] = {}
        for chunk_id, score in scored:
            owner = corpus.file_of.get(chunk_id, "")
            per_file[owner] = per_file.get(owner, 0.0) + score
        raised = [(c, s + gamma * (per_file[corpus.file_of.get(c, "")] - s)) for c, s in scored]
        return sorted(raised, key=lambda x: (-x[1], x[0]))

    return fuse


def pairs_within(slop: int) -> PairShares:
    def shares(
        index: KeywordIndex, pairs: Sequence[str], candidates: Sequence[int]
    ) -> dict[int, float]:
        store = _store_index(index)
        held: dict[int, int] = {}
        if not candidates:
            return {}
        schema = store._schema
        keep = tantivy.Query.term_set_query(schema, "chunk_id", [int(c) for c in candidates])
        for pair in pairs:
            terms = index.terms(pair)
            if len(terms) < 2:
                continue
            query = tantivy.Query.boolean_query(
                [
                    (
                        tantivy.Occur.Must,
                        tantivy.Query.phrase_query(
                            schema, "text", list[str | tuple[int, str]](terms), slop
                        ),
                    ),
                    (tantivy.Occur.Must, tantivy.Query.const_score_query(keep, 0.0)),
                ]
            )
            for chunk_id, _ in _top(store._searcher, query, len(candidates)):
                held[chunk_id] = held.get(chunk_id, 0) + 1
        return {c: n / len(pairs) for c, n in held.items()}

    return shares


@dataclass(frozen=True)
class Variant:
    matches: Matcher = ORIGINAL_MATCHES
    fuse: Fuser = ORIGINAL_FUSE
    pair_slop: int = 0
    pair_boost: float = 0.15
    phrase_boost: float | None = None
    """None: the shipped one."""
    file_weight: float | None = None
    """The keyword side's file evidence weight (keyword_ranking.FILE_WEIGHT); None: the
    shipped one."""
    file_b: float | None = None
    """The file BM25's length normalisation (keyword_ranking.FILE_B); None: the shipped one."""
    vector_weight: float | None = None
    """The hash fusion's vector weight; None: the shipped one."""


def variants(corpus: Corpus) -> dict[str, Variant]:
    return {
        "shipped": Variant(),
        "tantivy k1.2 b0.75 p0.5": Variant(tantivy_scores, phrase_boost=0.5),
        "p0.5": Variant(phrase_boost=0.5),
        "no file evidence": Variant(file_weight=0.0),
        "file w0.25": Variant(file_weight=0.25),
        "file w0.5": Variant(file_weight=0.5),
        "file w1": Variant(file_weight=1.0),
        "file w1.5": Variant(file_weight=1.5),
        "file w2": Variant(file_weight=2.0),
        "file w1 fb1": Variant(file_weight=1.0, file_b=1.0),
        "file w1 fb0.5": Variant(file_weight=1.0, file_b=0.5),
        "file w1 v0": Variant(file_weight=1.0, vector_weight=0.0),
        "file w1 v0.5": Variant(file_weight=1.0, vector_weight=0.5),
        "file w1 q0.3": Variant(file_weight=1.0, pair_boost=0.3),
        "file w1 p0.3": Variant(file_weight=1.0, phrase_boost=0.3),
        "rm3 d10 t10 w0.7": Variant(rm3(corpus, 10, 10, 0.7)),
        "rm3 d10 t10 w0.5": Variant(rm3(corpus, 10, 10, 0.5)),
        "two b0.5": Variant(two_fields(corpus, 0.5)),
        "two b0.25": Variant(two_fields(corpus, 0.25)),
        "two b1": Variant(two_fields(corpus, 1.0)),
        "file g0.05": Variant(fuse=file_evidence(corpus, 0.05)),
        "file g0.1": Variant(fuse=file_evidence(corpus, 0.1)),
        "q0": Variant(pair_boost=0.0),
        "q0.3": Variant(pair_boost=0.3),
        "slop2 q0.15": Variant(pair_slop=2),
        "slop2 q0.3": Variant(pair_slop=2, pair_boost=0.3),
        "slop6 q0.15": Variant(pair_slop=6),
        **{
            f"bm25 k{k1} b{b}" + (f" d{d}" if d else ""): Variant(rescored(corpus, k1, b, d))
            for k1, b, d in [
                (1.2, 0.75, 0.0),
                (0.9, 0.4, 0.0),
                (1.2, 0.4, 0.0),
                (0.9, 0.75, 0.0),
                (1.5, 0.4, 0.0),
                (0.9, 0.2, 0.0),
                (0.6, 0.4, 0.0),
                (1.2, 0.75, 0.5),
                (0.9, 0.4, 0.5),
                (1.2, 0.75, 1.0),
            ]
        },
    }


def patch(matches: Matcher, fuse: Fuser, pairs: PairShares) -> None:
    """Puts the variant's pieces where the in-process server's search looks them up."""
    setattr(search_module, "keyword_matches", matches)  # noqa: B010
    setattr(search_module, "fuse", fuse)  # noqa: B010
    setattr(kr, "_pair_shares", pairs)  # noqa: B010


async def run(seed: int, only: Sequence[str]) -> None:
    collection = build(3000, 1000, seed)
    queries = [q for q, _ in collection.queries]
    right = [d for _, d in collection.queries]
    shipped = fusion_module.FUSION["hash"]
    shipped_file = kr.FILE_WEIGHT
    shipped_file_b = kr.FILE_B
    with tempfile.TemporaryDirectory(prefix="quiver-variants-") as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        paths = []
        for i, doc in enumerate(collection.documents):
            path = folder / f"d{i:05d}.txt"
            path.write_text(doc.body + "\n", encoding="utf-8")
            paths.append(path)
        data_dir = Path(tmp) / "data"
        server = QuiverServer(
            Settings(
                http_listen="127.0.0.1:0",
                listen="127.0.0.1:0",
                data_dir=data_dir,
                ingest_workers=2,
                file_timeout=3600.0,
                file_parse_seconds=3600.0,
            )
        )
        port = await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            chunking = common_pb2.ChunkingStrategy(
                type="static",
                static=common_pb2.StaticChunkingStrategy(
                    max_chunk_size_tokens=200, chunk_overlap_tokens=50
                ),
            )
            done = await ingest(channel, paths, chunking, "hash")
            db = sqlite3.connect(f"file:{data_dir / 'quiver.sqlite3'}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT id, file_id, text FROM chunks").fetchall()
            finally:
                db.close()
            corpus = Corpus({i: t for i, _, t in rows}, {i: f for i, f, _ in rows})
            chunks, owners = stored_chunks(data_dir, done.store_id)
            bm25 = evaluate(bm25_rankings(chunks, owners, queries), right)
            print(f"seed {seed}: {len(chunks)} chunks; plain BM25 nDCG@10 {bm25.ndcg:.4f}")
            stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
            for name, variant in variants(corpus).items():
                if only and name not in only:
                    continue
                if name.startswith("two") and corpus.two_fields is None:
                    corpus.two_fields = two_field_index(corpus)
                pairs = pairs_within(variant.pair_slop) if variant.pair_slop else ORIGINAL_PAIRS
                patch(variant.matches, variant.fuse, pairs)
                kr.FILE_WEIGHT = (
                    shipped_file if variant.file_weight is None else variant.file_weight
                )
                kr.FILE_B = shipped_file_b if variant.file_b is None else variant.file_b
                fusion_module.FUSION["hash"] = fusion_module.Fusion(
                    shipped.vector_weight
                    if variant.vector_weight is None
                    else variant.vector_weight,
                    shipped.phrase_boost if variant.phrase_boost is None else variant.phrase_boost,
                    variant.pair_boost,
                )
                t = time.perf_counter()
                s = evaluate(await quiver_rankings(stub, done.store_id, queries, "auto"), right)
                print(
                    f"seed {seed} {name:<20} nDCG@10 {s.ndcg:.4f} ({s.ndcg - bm25.ndcg:+.4f}) "
                    f"MRR@10 {s.mrr:.4f} recall@10 {s.recall:.4f} "
                    f"({time.perf_counter() - t:.0f} s)",
                    flush=True,
                )
        finally:
            patch(ORIGINAL_MATCHES, ORIGINAL_FUSE, ORIGINAL_PAIRS)
            fusion_module.FUSION["hash"] = shipped
            kr.FILE_WEIGHT = shipped_file
            kr.FILE_B = shipped_file_b
            await channel.close(None)
            await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", nargs="*", default=[], help="variant names to run")
    args = parser.parse_args()
    asyncio.run(run(args.seed, args.only))


if __name__ == "__main__":
    main()
