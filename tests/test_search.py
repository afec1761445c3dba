"""SearchVectorStore against a real server: validation, response shape, rankers and score
thresholds, hybrid (phrase) ranking on real text, several queries, deletes, tenancy,
expiry, and searches running while a batch is being ingested."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import sqlite3
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from quiver.v1 import common_pb2, file_batches_pb2, vector_stores_pb2

from bench.corpus import corpus_files
from tests.conftest import Running, Tenant
from tests.rpc_helpers import error_reason, upload, violated_fields

pb = vector_stores_pb2
DAY = 86_400
TERMINAL = (
    file_batches_pb2.FILE_BATCH_STATUS_COMPLETED,
    file_batches_pb2.FILE_BATCH_STATUS_FAILED,
    file_batches_pb2.FILE_BATCH_STATUS_CANCELLED,
)


# -- documents ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    name: str
    text: str
    attributes: dict[str, str | float | bool]


@cache
def real_texts(count: int) -> tuple[tuple[str, str], ...]:
    """The first ``count`` documents of 3…30 kB of ``bench/corpus.py``'s real text, in its
    stable order, as (unique filename, text)."""
    out: list[tuple[str, str]] = []
    for path in corpus_files(10**9):
        if 3_000 <= path.stat().st_size <= 30_000:
            out.append((f"{len(out):03d}-{path.name}", path.read_text(encoding="utf-8")))
            if len(out) == count:
                break
    assert len(out) == count, f"the corpus holds only {len(out)} documents of 3…30 kB"
    return tuple(out)


def real_docs(count: int) -> list[Doc]:
    return [
        Doc(name, text, {"n": float(i), "group": ["a", "b", "c"][i % 3], "even": i % 2 == 0})
        for i, (name, text) in enumerate(real_texts(count))
    ]


def words_of(text: str) -> list[str]:
    """Roughly FTS5's unicode61 tokens: lower case, diacritics removed, split on anything
    that is not a letter or digit (underscores too)."""
    plain = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return re.findall(r"[a-z0-9]+", plain)


def unique_phrase(texts: Sequence[str], target: int, length: int = 4) -> str:
    """A phrase of ``length`` words that occurs in ``texts[target]`` and in no other text,
    made of words that each occur in at least three texts (so the words alone do not single
    the document out: only the phrase does), from the body (past a third of the words).

    "Occurs" as FTS5 sees it: the candidates are checked with an in-memory FTS5 table using
    the server's tokenizer (porter stemming, unicode61, diacritics removed).
    """
    fts = sqlite3.connect(":memory:")
    fts.execute(
        "CREATE VIRTUAL TABLE docs USING fts5 (text, "
        "tokenize='porter unicode61 remove_diacritics 2')"
    )
    fts.executemany("INSERT INTO docs (rowid, text) VALUES (?, ?)", enumerate(texts))
    document_frequency: dict[str, int] = {}
    for t in texts:
        for word in set(words_of(t)):
            document_frequency[word] = document_frequency.get(word, 0) + 1
    words = words_of(texts[target])
    for start in range(len(words) // 3, len(words) - length):  # past the headers
        phrase = words[start : start + length]
        if not all(len(w) >= 3 and document_frequency[w] >= 3 for w in phrase):
            continue
        found = fts.execute(
            "SELECT rowid FROM docs WHERE docs MATCH ?", ('"' + " ".join(phrase) + '"',)
        ).fetchall()
        if found == [(target,)]:
            fts.close()
            return " ".join(phrase)
    raise AssertionError(f"no unique phrase in document {target}")


# -- RPC helpers --------------------------------------------------------------------------


def value(v: str | float | bool) -> struct_pb2.Value:
    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, str):
        return struct_pb2.Value(string_value=v)
    return struct_pb2.Value(number_value=v)


def plain(v: struct_pb2.Value) -> str | float | bool:
    kind = v.WhichOneof("kind")
    assert kind in ("string_value", "number_value", "bool_value"), kind
    out: str | float | bool = getattr(v, kind)
    return out


@dataclass
class Store:
    id: str
    file_ids: list[str]  # in the order of the documents
    names: dict[str, str]  # file id → filename
    attributes: dict[str, dict[str, str | float | bool]]


async def create_store(tenant: Tenant, name: str = "search", days: int = 0) -> str:
    request = pb.CreateVectorStoreRequest(name=name)
    if days:
        request.expires_after.CopyFrom(pb.ExpiresAfter(anchor="last_active_at", days=days))
    reply = await tenant.stores.CreateVectorStore(request, metadata=tenant.metadata)
    return reply.vector_store.id


async def start_batch(
    tenant: Tenant,
    store_id: str,
    file_ids: Sequence[str],
    attributes: Sequence[dict[str, str | float | bool]],
    chunking: common_pb2.ChunkingStrategy | None = None,
) -> str:
    reply = await tenant.batches.CreateFileBatch(
        file_batches_pb2.CreateFileBatchRequest(
            vector_store_id=store_id,
            files=[
                file_batches_pb2.FileBatchFileSpec(
                    file_id=file_id,
                    attributes={k: value(v) for k, v in attrs.items()},
                    chunking_strategy=chunking,
                )
                for file_id, attrs in zip(file_ids, attributes, strict=True)
            ],
        ),
        metadata=tenant.metadata,
    )
    return reply.file_batch.id


async def watch_to_terminal(
    tenant: Tenant, store_id: str, batch_id: str
) -> file_batches_pb2.FileBatch:
    """Follows WatchFileBatch to its last message (which carries the terminal status)."""
    last = None
    async for message in tenant.batches.WatchFileBatch(
        file_batches_pb2.WatchFileBatchRequest(vector_store_id=store_id, batch_id=batch_id),
        metadata=tenant.metadata,
        timeout=120,
    ):
        last = message
    assert last is not None and last.file_batch.status in TERMINAL
    return last.file_batch


async def build_store(
    tenant: Tenant,
    docs: Sequence[Doc],
    *,
    chunking: common_pb2.ChunkingStrategy | None = None,
    days: int = 0,
) -> Store:
    file_ids = [(await upload(tenant, d.name, d.text.encode())).id for d in docs]
    store_id = await create_store(tenant, days=days)
    batch_id = await start_batch(tenant, store_id, file_ids, [d.attributes for d in docs], chunking)
    batch = await watch_to_terminal(tenant, store_id, batch_id)
    assert batch.file_counts.completed == len(docs), batch
    return Store(
        store_id,
        file_ids,
        {f: d.name for f, d in zip(file_ids, docs, strict=True)},
        {f: d.attributes for f, d in zip(file_ids, docs, strict=True)},
    )


async def search(
    tenant: Tenant,
    store_id: str,
    *queries: str,
    ranker: str = "",
    threshold: float = 0.0,
    max_results: int = 0,
    filters: pb.Filter | None = None,
    rewrite: bool = False,
) -> pb.SearchVectorStoreResponse:
    request = pb.SearchVectorStoreRequest(
        vector_store_id=store_id,
        query=list(queries),
        max_num_results=max_results,
        ranking_options=pb.RankingOptions(ranker=ranker, score_threshold=threshold),
        rewrite_query=rewrite,
        filters=filters,
    )
    reply: pb.SearchVectorStoreResponse = await tenant.stores.SearchVectorStore(
        request, metadata=tenant.metadata
    )
    return reply


def summary(reply: pb.SearchVectorStoreResponse) -> list[tuple[str, str, float]]:
    return [(r.file_id, r.content[0].text, r.score) for r in reply.data]


def eq(key: str, v: str | float | bool) -> pb.Filter:
    return pb.Filter(type="eq", key=key, value=value(v))


async def file_content(tenant: Tenant, store_id: str, file_id: str) -> list[str]:
    reply = await tenant.stores.GetVectorStoreFileContent(
        pb.GetVectorStoreFileContentRequest(vector_store_id=store_id, file_id=file_id),
        metadata=tenant.metadata,
    )
    return [c.text for c in reply.data]


# -- validation -----------------------------------------------------------------------------


async def test_request_validation(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, real_docs(3))
    Q = "search the manual"
    cases: list[tuple[str, pb.SearchVectorStoreRequest]] = [
        ("query", pb.SearchVectorStoreRequest(query=[])),
        ("query[0]", pb.SearchVectorStoreRequest(query=[""])),
        ("query[1]", pb.SearchVectorStoreRequest(query=[Q, "   \n"])),
        ("query", pb.SearchVectorStoreRequest(query=[Q] * 11)),
        ("query[0]", pb.SearchVectorStoreRequest(query=["x" * 4097])),
        ("max_num_results", pb.SearchVectorStoreRequest(query=[Q], max_num_results=51)),
        ("max_num_results", pb.SearchVectorStoreRequest(query=[Q], max_num_results=-1)),
    ]
    for ranker in ("fancy", "DEFAULT-2024-11-15", "default-2024-1-15", "auto "):
        cases.append(
            (
                "ranking_options.ranker",
                pb.SearchVectorStoreRequest(
                    query=[Q], ranking_options=pb.RankingOptions(ranker=ranker)
                ),
            )
        )
    for threshold in (-0.1, 1.1, math.nan, math.inf):
        cases.append(
            (
                "ranking_options.score_threshold",
                pb.SearchVectorStoreRequest(
                    query=[Q], ranking_options=pb.RankingOptions(score_threshold=threshold)
                ),
            )
        )
    for field, request in cases:
        request.vector_store_id = store.id
        with pytest.raises(aio.AioRpcError) as err:
            await alice.stores.SearchVectorStore(request, metadata=alice.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, request)
        assert field in violated_fields(err.value), (field, violated_fields(err.value))

    # Several problems at once are all reported.
    with pytest.raises(aio.AioRpcError) as err:
        await search(alice, store.id, "", ranker="fancy", threshold=2, max_results=99)
    assert set(violated_fields(err.value)) == {
        "query[0]",
        "max_num_results",
        "ranking_options.ranker",
        "ranking_options.score_threshold",
    }

    # The bounds themselves are accepted.
    ok = await search(alice, store.id, *(["manual"] * 10), max_results=50, threshold=1.0)
    assert list(ok.search_query) == ["manual"] * 10
    await search(alice, store.id, "y" * 4096, max_results=1, threshold=0.0)


async def test_max_num_results(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, real_docs(6), chunking=static(100))
    total = 0
    for file_id in store.file_ids:
        total += len(await file_content(alice, store.id, file_id))
    assert total > 60
    for ranker in ("none", "auto"):
        assert len((await search(alice, store.id, "vim", ranker=ranker)).data) == 10
        for n in (1, 7, 50):
            reply = await search(alice, store.id, "vim", ranker=ranker, max_results=n)
            assert len(reply.data) == n


def static(size: int, overlap: int = 0) -> common_pb2.ChunkingStrategy:
    return common_pb2.ChunkingStrategy(
        type="static",
        static=common_pb2.StaticChunkingStrategy(
            max_chunk_size_tokens=size, chunk_overlap_tokens=overlap
        ),
    )


# -- response shape, rankers, thresholds -------------------------------------------------------


async def test_response_shape(running: Running) -> None:
    alice = running.alice
    docs = real_docs(8)
    store = await build_store(alice, docs)
    contents = {f: await file_content(alice, store.id, f) for f in store.file_ids}
    queries = ["how to open a file", "options of the editor window"]
    for ranker in ("", "auto", "none", "default-2024-11-15"):
        reply = await search(alice, store.id, *queries, ranker=ranker, max_results=20)
        assert reply.object == "vector_store.search_results.page"
        assert list(reply.search_query) == queries
        assert not reply.has_more
        assert len(reply.data) == 20
        scores = [r.score for r in reply.data]
        assert all(0.0 <= s <= 1.0 for s in scores), scores
        assert scores == sorted(scores, reverse=True), scores
        seen: set[tuple[str, str]] = set()
        for r in reply.data:
            assert r.filename == store.names[r.file_id]
            assert {k: plain(v) for k, v in r.attributes.items()} == store.attributes[r.file_id]
            assert [c.type for c in r.content] == ["text"]
            assert r.content[0].text in contents[r.file_id]
            assert (r.file_id, r.content[0].text) not in seen, "a chunk returned twice"
            seen.add((r.file_id, r.content[0].text))


async def test_ranker_none_scores_are_cosine_similarities(running: Running) -> None:
    """With ranker none, a chunk's own text as the query scores ~1.0 and comes first."""
    alice = running.alice
    store = await build_store(alice, real_docs(8), chunking=static(200))
    chunk = (await file_content(alice, store.id, store.file_ids[3]))[1]
    reply = await search(alice, store.id, chunk, ranker="none", max_results=5)
    assert reply.data[0].content[0].text == chunk
    assert reply.data[0].score == pytest.approx(1.0, abs=1e-4)
    assert reply.data[1].score < 0.999


async def test_score_threshold_drops_lower_scores(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, real_docs(10))
    query = "insert mode commands and the cursor"
    for ranker in ("none", "auto"):
        everything = await search(alice, store.id, query, ranker=ranker, max_results=30)
        scores = [r.score for r in everything.data]
        assert len(scores) == 30
        # A threshold strictly between two distinct scores near the middle.
        cut = next(i for i in range(10, 29) if scores[i] > scores[i + 1])
        threshold = (scores[cut] + scores[cut + 1]) / 2
        kept = await search(
            alice, store.id, query, ranker=ranker, max_results=30, threshold=threshold
        )
        assert summary(kept) == summary(everything)[: cut + 1], ranker
        assert all(r.score >= threshold for r in kept.data)
        # Exactly at a score: that result stays (threshold is inclusive).
        at = await search(
            alice, store.id, query, ranker=ranker, max_results=30, threshold=scores[cut]
        )
        assert summary(at) == summary(everything)[: cut + 1], ranker
        # Above every score: nothing.
        above = min(1.0, scores[0] + 1e-6)
        if above > scores[0]:
            none = await search(alice, store.id, query, ranker=ranker, threshold=above)
            assert list(none.data) == []


async def test_rewrite_query_is_accepted_and_changes_nothing(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, real_docs(5))
    queries = ["  What does :help do?  ", "buffers"]
    plain_reply = await search(alice, store.id, *queries)
    rewritten = await search(alice, store.id, *queries, rewrite=True)
    assert list(rewritten.search_query) == queries
    assert summary(rewritten) == summary(plain_reply)


async def test_dated_ranker_is_an_alias_of_auto(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, real_docs(10))
    for query in ("regular expression pattern", "window split vertical"):
        auto = summary(await search(alice, store.id, query, ranker="auto", max_results=25))
        default = summary(await search(alice, store.id, query, max_results=25))
        dated = summary(
            await search(alice, store.id, query, ranker="default-2024-11-15", max_results=25)
        )
        vector_only = summary(await search(alice, store.id, query, ranker="none", max_results=25))
        assert dated == auto == default
        assert dated != vector_only  # auto really is another ranking


# -- hybrid ranking on real text ----------------------------------------------------------------

N_DOCS = 30


async def test_exact_phrase_ranks_its_document_first(running: Running) -> None:
    alice = running.alice
    docs = real_docs(N_DOCS)
    store = await build_store(alice, docs)
    texts = [d.text for d in docs]
    misses: list[str] = []
    for target in range(N_DOCS):  # a phrase from the body of every document in turn
        phrase = unique_phrase(texts, target)
        for ranker in ("auto", "default-2024-11-15"):
            reply = await search(alice, store.id, phrase, ranker=ranker)
            first = reply.data[0]
            if first.file_id != store.file_ids[target]:
                misses.append(f"{phrase!r} ({ranker}): first is document {first.filename}")
            else:
                assert phrase in " ".join(words_of(first.content[0].text))
    assert not misses, misses


async def test_several_queries_are_searched_together(running: Running) -> None:
    alice = running.alice
    docs = real_docs(N_DOCS)
    store = await build_store(alice, docs)
    texts = [d.text for d in docs]
    a, b = unique_phrase(texts, 6), unique_phrase(texts, 21)
    reply = await search(alice, store.id, a, b, max_results=10)
    assert list(reply.search_query) == [a, b]
    top = [r.file_id for r in reply.data[:3]]
    assert store.file_ids[6] in top and store.file_ids[21] in top, (a, b, summary(reply)[:3])
    # Each query alone finds its own document first.
    for phrase, target in ((a, 6), (b, 21)):
        alone = await search(alice, store.id, phrase)
        assert alone.data[0].file_id == store.file_ids[target]


# -- deletes, tenancy, expiry ------------------------------------------------------------------


async def test_deleted_file_never_appears(running: Running) -> None:
    alice = running.alice
    docs = real_docs(12)
    store = await build_store(alice, docs)
    target = 5
    gone = store.file_ids[target]
    phrase = unique_phrase([d.text for d in docs], target)
    own_text = (await file_content(alice, store.id, gone))[0]
    assert (await search(alice, store.id, phrase)).data[0].file_id == gone
    await alice.stores.DeleteVectorStoreFile(
        pb.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=gone),
        metadata=alice.metadata,
    )
    searcher = running.server.core.searcher
    only_gone = eq("n", float(target))
    around_gone = pb.Filter(type="lte", key="n", value=value(float(target + 2)))
    for exact_limit in (searcher.exact_max_chunks, 0):  # exact, then hnswlib
        searcher.exact_max_chunks = exact_limit
        for ranker, filters in itertools.product(("auto", "none"), (None, around_gone, only_gone)):
            for queries in ((phrase,), (own_text[:4000],), (phrase, "vim")):
                reply = await search(
                    alice, store.id, *queries, ranker=ranker, max_results=50, filters=filters
                )
                assert gone not in {r.file_id for r in reply.data}
                if filters is only_gone:
                    assert list(reply.data) == []
                elif filters is around_gone:
                    assert {r.attributes["n"].number_value for r in reply.data} <= {
                        float(n) for n in range(target + 3) if n != target
                    }
                    assert reply.data
                else:
                    assert len(reply.data) == 50


async def test_another_tenants_store_is_not_found(running: Running) -> None:
    alice, bob = running.alice, running.bob
    store = await build_store(alice, real_docs(2))
    for tenant, store_id in (
        (bob, store.id),
        (running.tenant("alice", on_behalf_of="user-7"), store.id),
        (alice, "vs_doesnotexist"),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await search(tenant, store_id, "vim")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await search(alice, store.id, "vim")).data


async def test_expired_store_fails_precondition(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, real_docs(2), days=1)
    assert (await search(alice, store.id, "vim")).data
    running.server.core.stores.clock = lambda: time.time() + 2 * DAY
    with pytest.raises(aio.AioRpcError) as err:
        await search(alice, store.id, "vim")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(err.value) == "VECTOR_STORE_EXPIRED"


# -- searching while a batch is ingested --------------------------------------------------------

INGESTED = 60
MIN_SEARCHES = 200
MAX_SEARCHES = 5_000
CONCURRENCY = 16


async def test_searches_during_ingest(running: Running) -> None:
    alice = running.alice
    docs = real_docs(INGESTED)
    ids = [(await upload(alice, d.name, d.text.encode())).id for d in docs]
    # Two files that fail (not text); their chunks must never show up.
    bad = [
        (await upload(alice, "broken.txt", bytes(range(256)) * 16)).id,
        (await upload(alice, "empty.txt", b"   \n\n  ")).id,
    ]
    store_id = await create_store(alice)
    batch_id = await start_batch(
        alice,
        store_id,
        ids + bad,
        [d.attributes for d in docs] + [{"group": "a"}, {"group": "b"}],
        chunking=static(300, 50),
    )

    done = asyncio.Event()
    final: list[file_batches_pb2.FileBatch] = []

    async def watch() -> None:
        final.append(await watch_to_terminal(alice, store_id, batch_id))
        done.set()

    queries = [
        "the cursor moves to the next word",
        "regular expression",
        "open a file in a new window",
        "import module function",
        "return value of the method",
        "buffer list",
    ]
    counter = itertools.count()
    answers: list[tuple[bool, pb.SearchVectorStoreResponse]] = []

    async def client() -> None:
        while True:
            n = next(counter)
            if n >= MAX_SEARCHES or (n >= MIN_SEARCHES and done.is_set()):
                return
            ranker = ("auto", "none")[n % 2]
            filters = eq("group", "b") if n % 3 == 0 else None
            reply = await search(
                alice,
                store_id,
                queries[n % len(queries)],
                ranker=ranker,
                filters=filters,
                max_results=1 + n % 20,
            )
            answers.append((done.is_set(), reply))

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    await watcher

    batch = final[0]
    assert batch.file_counts.completed == INGESTED
    assert batch.file_counts.failed == len(bad)
    assert len(answers) >= MIN_SEARCHES
    during = [reply for after, reply in answers if not after]
    assert any(reply.data for reply in during), "no search saw a partly ingested store"

    contents = {f: set(await file_content(alice, store_id, f)) for f in ids}
    for _, reply in answers:
        scores = [r.score for r in reply.data]
        assert scores == sorted(scores, reverse=True)
        for r in reply.data:
            assert r.file_id not in bad
            assert r.file_id in contents
            assert r.content[0].text in contents[r.file_id]
            assert 0.0 <= r.score <= 1.0
    for file_id in bad:
        with pytest.raises(aio.AioRpcError) as err:
            await file_content(alice, store_id, file_id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
