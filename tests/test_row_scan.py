"""The exact filtered search's two passes (core/row_scan.py): the int8 scan's bounds always
hold the float32 product, so the ranking equals exact_ranking over the float32 rows, with
the native kernel and with the numpy path alike, on rows built to be hard for it (ties,
near-ties, zero vectors, spikes, rows far apart in memory); the kernel is built by the
install and leaves the process's floating point alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from quiver.server.core import row_scan
from quiver.server.core.chunk_matrix import ChunkMatrix
from quiver.server.core.row_scan import ScanRows, bounds, exact_ranking, quantize, query_codes

from tests.support.profiles import examples

Floats = npt.NDArray[np.float32]


def unit(rows: npt.NDArray[Any]) -> Floats:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.asarray(rows / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def scan_of(matrix: Floats, rows: npt.NDArray[np.int64], labels: Any = None) -> ScanRows:
    codes, scale, residual, norm = quantize(matrix)
    ids = np.arange(len(matrix), dtype=np.int64) * 7 + 3 if labels is None else labels
    return ScanRows(ids, matrix, codes, scale, residual, norm, rows)


def assert_same_ranking(
    got: list[tuple[int, float]], want: list[tuple[int, float]], k: int
) -> None:
    """Same length, same scores (float32 products of the same rows), and the same labels
    wherever the score is not within 1e-6 (times the largest) of another: the kernel and
    BLAS may round a row's product a last bit differently."""
    assert len(got) == len(want) == min(k, len(want))
    scores = [s for _, s in want]
    # float32 rounding scales with the products' size (non-unit queries reach ~6).
    tol = 1e-6 * max([1.0, *(abs(x) for x in scores)])
    np.testing.assert_allclose([s for _, s in got], scores, rtol=0, atol=tol)
    for i, ((label, _), (expected, score)) in enumerate(zip(got, want, strict=True)):
        near = [j for j, other in enumerate(scores) if j != i and abs(other - score) <= tol]
        if not near and not (len(want) == k and abs(score - scores[-1]) <= tol):
            assert label == expected, (i, got, want)


def hard_matrix(rng: np.random.Generator, n: int, dim: int, kind: str) -> Floats:
    """Unit rows built against the scan: many equal rows (ties), rows a hair apart, zero
    rows, one-hot spikes (the largest quantisation steps), or plain gaussian rows."""
    base = rng.standard_normal((n, dim)).astype(np.float32)
    if kind == "ties":
        base = base[rng.integers(0, max(1, n // 8), n)]
    elif kind == "near":
        base = base[0] + 1e-4 * base
    elif kind == "zeros":
        base[rng.random(n) < 0.3] = 0.0
    elif kind == "spikes":
        base = 0.01 * base
        base[np.arange(n), rng.integers(0, dim, n)] = 1.0
    return unit(base)


@hypothesis_settings(max_examples=examples(300), deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 700),
    st.sampled_from([1, 3, 8, 33, 96, 512]),
    st.sampled_from(["gauss", "ties", "near", "zeros", "spikes"]),
    st.integers(1, 40),
    st.floats(0.01, 1.0),
    st.booleans(),
)
@example(4, 10, 512, "gauss", 5, 0.5, False)  # scores ~5: 1.4e-6 apart from BLAS's (CI run)
def test_top_equals_exact_ranking(
    seed: int, n: int, dim: int, kind: str, k: int, share: float, unit_query: bool
) -> None:
    rng = np.random.default_rng(seed)
    matrix = hard_matrix(rng, n, dim, kind)
    rows = np.sort(rng.choice(n, size=max(1, int(share * n)), replace=False)).astype(np.int64)
    query = rng.standard_normal(dim).astype(np.float32)
    if kind == "near":
        query = matrix[int(rows[0])] + np.float32(1e-3) * query
    query = unit(query) if unit_query else query * np.float32(3.0)
    scan = scan_of(matrix, rows)
    want = exact_ranking(scan.labels[rows], matrix[rows], query, k)
    assert_same_ranking(scan.top(query, k), want, k)
    # The bounds themselves hold every row's float32 product (the pruning's premise).
    lower, upper = bounds(scan, query)
    products = matrix[rows].astype(np.float64) @ query.astype(np.float64)
    assert np.all(lower <= products + 1e-6) and np.all(products - 1e-6 <= upper)


def test_numpy_path_gives_the_same_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    matrix = hard_matrix(rng, 3000, 512, "gauss")
    rows = np.sort(rng.choice(3000, size=900, replace=False)).astype(np.int64)
    query = unit(rng.standard_normal(512).astype(np.float32))
    scan = scan_of(matrix, rows)
    native = bounds(scan, query)
    native_products = row_scan.products(matrix, rows, query)
    native_top = scan.top(query, 10)
    monkeypatch.setattr(row_scan, "_KERNEL", None)
    monkeypatch.setattr(row_scan, "_DOT", None)
    fallback = bounds(scan, query)
    np.testing.assert_allclose(native[0], fallback[0], atol=1e-6)
    np.testing.assert_allclose(native[1], fallback[1], atol=1e-6)
    np.testing.assert_allclose(native_products, matrix[rows] @ query, atol=1e-6)
    np.testing.assert_array_equal(row_scan.products(matrix, rows, query), matrix[rows] @ query)
    want = exact_ranking(scan.labels[rows], matrix[rows], query, 10)
    assert scan.top(query, 10) == want
    assert_same_ranking(native_top, want, 10)


def test_the_scan_prunes_to_a_few_candidates() -> None:
    """What makes it fast: at 10 % of 20,000 gaussian rows, a few dozen rows are scored in
    float32, not 2,000."""
    rng = np.random.default_rng(9)
    matrix = hard_matrix(rng, 20_000, 512, "gauss")
    rows = np.sort(rng.choice(20_000, size=2_000, replace=False)).astype(np.int64)
    scan = scan_of(matrix, rows)
    kept = [len(row_scan.candidates(scan, unit(rng.standard_normal(512)), 10)) for _ in range(20)]
    assert max(kept) < 200, kept


def test_query_codes_never_overflow_int32() -> None:
    for dim in (1, 512, 4096, 20_000):
        query = np.zeros(dim, dtype=np.float32)
        query[0] = 1.0
        codes, step, rounding = query_codes(query)
        worst = 127 * int(np.abs(codes.astype(np.int64)).sum())
        assert worst <= 2**31 - 1 and rounding == 0.0 and step > 0
        spread = np.full(dim, -1.0, dtype=np.float32)
        codes, _, _ = query_codes(spread)
        assert 127 * int(np.abs(codes.astype(np.int64)).sum()) <= 2**31 - 1


def test_chunk_matrix_scan_is_a_snapshot() -> None:
    """Rows a selection holds keep their vectors while files are appended, replaced and
    compacted behind it."""
    rng = np.random.default_rng(1)
    matrix = ChunkMatrix(16)
    for f in range(100):
        matrix.put(f, np.asarray([f], dtype=np.int64), unit(rng.standard_normal((1, 16))))
    scan = matrix.scan(matrix.index(np.arange(0, 100, 3, dtype=np.int64)))
    query = unit(rng.standard_normal(16).astype(np.float32))
    before = scan.top(query, 5)
    for f in range(100):  # every file replaced, then most dropped: compactions
        matrix.put(f, np.asarray([1000 + f], dtype=np.int64), unit(rng.standard_normal((1, 16))))
    for f in range(80):
        matrix.drop(f)
    assert matrix.compactions > 0
    assert scan.top(query, 5) == before


def test_the_kernel_is_built_and_leaves_floating_point_alone() -> None:
    """`make install` compiles native/rowscan.c (hatch_build.py); a build with -ffast-math
    would have turned on flush-to-zero for the whole process when it loaded."""
    assert row_scan.NATIVE, row_scan.describe()
    assert 2.2250738585072014e-308 / 2 > 0.0
    assert np.float32(1e-38) / np.float32(100) > 0


def test_rows_outside_the_matrix_fail_before_the_kernel_reads_them() -> None:
    matrix = unit(np.random.default_rng(2).standard_normal((10, 8)))
    for rows in ([10], [-1], [0, 3, 11]):
        with pytest.raises(IndexError):
            scan_of(matrix, np.asarray(rows, dtype=np.int64))
    with pytest.raises(TypeError):
        scan_of(matrix, np.asarray([1, 2], dtype=np.int32))
