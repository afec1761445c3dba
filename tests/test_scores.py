"""Scores mean relevance under every ranker (issue "search engine", item 3): an unrelated
query scores low under ``auto`` as under ``none``, a better match never scores lower than a
worse one, results come in the order of their scores, and ``score_threshold`` drops the
irrelevant hits under the default ranker."""

from __future__ import annotations

from tests.support.inproc import Running
from tests.test_search import Doc, build_store, real_docs, search, static

PETS = [
    Doc(
        "hamster.txt",
        "Our hamster sleeps all day and runs on its wheel at night. Hamsters keep food in "
        "their cheeks and hide it in the bedding.",
        {},
    ),
    Doc(
        "parrot.txt",
        "The parrot repeats words it hears in the kitchen and loves sunflower seeds, apples "
        "and a warm perch near the window.",
        {},
    ),
    Doc(
        "goldfish.txt",
        "Goldfish need a large tank with a filter; feed them small flakes twice a day and "
        "change a quarter of the water every week.",
        {},
    ),
]
UNRELATED = "quantum chromodynamics lattice"
LOW = 0.3


async def test_unrelated_query_scores_low_under_every_ranker(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, PETS)
    for ranker in ("none", "auto", "default-2024-11-15"):
        reply = await search(alice, store.id, UNRELATED, ranker=ranker)
        assert len(reply.data) == 3, ranker  # no threshold: every note, each scoring low
        assert max(r.score for r in reply.data) < LOW, (ranker, [r.score for r in reply.data])


async def test_score_threshold_drops_irrelevant_hits_under_auto(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, PETS)
    hamster = store.file_ids[0]
    for ranker in ("", "auto"):
        gone = await search(alice, store.id, UNRELATED, ranker=ranker, threshold=LOW)
        assert list(gone.data) == [], [r.score for r in gone.data]
        kept = await search(alice, store.id, "hamster wheel", ranker=ranker, threshold=LOW)
        assert [r.file_id for r in kept.data] == [hamster], [
            (r.filename, r.score) for r in kept.data
        ]
        every = await search(alice, store.id, "hamster wheel", ranker=ranker)
        assert every.data[0].file_id == hamster
        assert all(r.score < LOW for r in every.data[1:]), [r.score for r in every.data]


async def test_a_better_match_never_scores_lower(running: Running) -> None:
    """Documents holding all, two, one and none of the query's words, among real text: under
    ``auto`` they score in that order, and the one holding none scores low."""
    alice = running.alice
    graded = [
        Doc("all.txt", "The goldfish tank filter hums quietly while the goldfish swim.", {}),
        Doc("two.txt", "A goldfish tank stands by the door, freshly cleaned on Sunday.", {}),
        Doc("one.txt", "The goldfish was a present from an aunt who lives by the sea.", {}),
        Doc("none.txt", "Bread rises best in a warm kitchen when the dough is kneaded well.", {}),
    ]
    store = await build_store(alice, [*graded, *real_docs(6)])
    reply = await search(alice, store.id, "goldfish tank filter", ranker="auto", max_results=20)
    score = {r.filename: r.score for r in reply.data}
    assert score["all.txt"] > score["two.txt"] > score["one.txt"] > score.get("none.txt", 0.0)
    assert score.get("none.txt", 0.0) < LOW
    assert reply.data[0].filename == "all.txt"


async def test_scores_never_increase_down_the_results(running: Running) -> None:
    alice = running.alice
    store = await build_store(alice, [*PETS, *real_docs(10)])
    for queries in (
        ("hamster wheel",),
        ("insert mode commands and the cursor",),
        ("regular expression pattern", "window split vertical"),
        (UNRELATED,),
    ):
        for ranker in ("none", "auto"):
            reply = await search(alice, store.id, *queries, ranker=ranker, max_results=50)
            scores = [r.score for r in reply.data]
            assert scores, (queries, ranker)
            assert all(0.0 <= s <= 1.0 for s in scores), scores
            assert scores == sorted(scores, reverse=True), (queries, ranker, scores)


async def test_other_stores_chunks_never_crowd_out_a_stores_own(running: Running) -> None:
    """Another tenant's store holding many chunks that match the query better (they fill
    the whole table's keyword top): this store still gets its own best chunks, scored."""
    crowd = " ".join(["The hamster wheel squeaks; oil the hamster wheel."] * 400)
    await build_store(running.bob, [Doc("wheels.txt", crowd, {})], chunking=static(100))
    alice = running.alice
    store = await build_store(alice, PETS)
    reply = await search(alice, store.id, "hamster wheel", ranker="auto")
    assert {r.file_id for r in reply.data} <= set(store.file_ids)
    assert reply.data[0].file_id == store.file_ids[0]
    assert reply.data[0].score >= LOW > reply.data[1].score
