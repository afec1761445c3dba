"""The pure helpers of ``bench/peers.py``: the dataset it builds and the recall it reports.
No peer is installed here (that is the benchmark's job, in its own virtualenvs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bench.peers import (
    DIM,
    SCENARIOS,
    build_dataset,
    exact_kth,
    figures,
    recall_at_k,
    run_quiver,
    selective_keys,
    split_words,
)


def unit_rows(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rows = np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)
    out: npt.NDArray[np.float32] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def test_split_words_keeps_full_windows_and_a_long_enough_tail() -> None:
    text = " ".join(f"w{i}" for i in range(25))
    assert split_words(text, size=10, min_tail=5) == [
        " ".join(f"w{i}" for i in range(0, 10)),
        " ".join(f"w{i}" for i in range(10, 20)),
        " ".join(f"w{i}" for i in range(20, 25)),
    ]
    assert len(split_words(text, size=10, min_tail=6)) == 2


def test_selective_keys_keep_a_tenth_and_a_hundredth() -> None:
    tenth, hundredth = selective_keys(10_000, seed=3)
    assert np.count_nonzero(tenth == 3) == 1000
    assert np.count_nonzero(hundredth == 7) == 100
    # spread over the ids, not one block of them
    assert np.flatnonzero(hundredth == 7).max() - np.flatnonzero(hundredth == 7).min() > 5000


def test_recall_is_one_for_the_exact_answer_and_drops_with_misses() -> None:
    vectors = unit_rows(200)
    queries = unit_rows(5, seed=1)
    exact = [list(np.argsort(-(vectors @ q))[:10]) for q in queries]
    assert recall_at_k(exact, vectors, queries, None) == pytest.approx(1.0)
    worst = [list(np.argsort(vectors @ q)[:10]) for q in queries]
    assert recall_at_k(worst, vectors, queries, None) == pytest.approx(0.0)
    half = [e[:5] for e in exact]
    assert recall_at_k(half, vectors, queries, None) == pytest.approx(0.5)
    doubled = [e[:5] + e[:5] for e in exact]  # a duplicate id counts once
    assert recall_at_k(doubled, vectors, queries, None) == pytest.approx(0.5)


def test_recall_under_a_filter_counts_hits_outside_it_as_misses() -> None:
    vectors = unit_rows(300)
    queries = unit_rows(4, seed=2)
    allowed = np.arange(0, 300, 3, dtype=np.int64)
    inside = [list(allowed[np.argsort(-(vectors[allowed] @ q))[:10]]) for q in queries]
    assert recall_at_k(inside, vectors, queries, allowed) == pytest.approx(1.0)
    unfiltered = [list(np.argsort(-(vectors @ q))[:10]) for q in queries]
    assert recall_at_k(unfiltered, vectors, queries, allowed) < 1.0
    few = allowed[:4]  # fewer allowed rows than k: all of them is a perfect answer
    assert recall_at_k([list(few)] * 4, vectors, queries, few) == pytest.approx(1.0)
    assert exact_kth(vectors, queries, few, 10)[0] == -np.inf


def test_recall_counts_ties_with_the_kth_exact_hit() -> None:
    base = unit_rows(50)
    query = unit_rows(1, seed=4)
    tenth = int(np.argsort(-(base @ query[0]), kind="stable")[9])
    vectors = np.vstack([base, base[tenth : tenth + 1]])  # row 50 ties with the 10th best
    exact = list(np.argsort(-(vectors @ query[0]), kind="stable")[:10])
    assert tenth in exact and 50 not in exact
    tied = [50 if i == tenth else i for i in exact]
    assert recall_at_k([tied], vectors, query, None) == pytest.approx(1.0)


def test_build_dataset_is_real_text_embedded_by_the_hash_model() -> None:
    data = build_dataset(300, 5, seed=7)
    assert len(data.texts) == len(set(data.texts)) == 300
    assert data.vectors.shape == (300, DIM) and data.query_vectors.shape == (5, DIM)
    assert np.allclose(np.linalg.norm(data.vectors, axis=1), 1.0, atol=1e-4)
    filtered = [data.allowed(s) for s in SCENARIOS]
    assert filtered[0] is None
    assert filtered[1] is not None and filtered[1].size == 30
    assert filtered[2] is not None and filtered[2].size == 3
    assert build_dataset(300, 5, seed=7).texts == data.texts


@pytest.mark.parametrize("fresh", [False, True], ids=["repeated filters", "new filters"])
def test_quivers_in_process_engine_answers_filters_exactly(tmp_path: Path, fresh: bool) -> None:
    """The in-process row drives the server's attribute index and exact search: every
    filtered answer is the exact one (its sets are far under the exact threshold)."""
    data = build_dataset(1000, 5, seed=4)
    raw = run_quiver(data, tmp_path, exact_max=10_000, cache_mb=64, fresh_filters=fresh)
    found = figures(data, raw)
    for scenario in SCENARIOS[1:]:
        assert found[scenario.name]["recall"] == pytest.approx(1.0), scenario.name
    assert found["unfiltered"]["recall"] > 0.5
