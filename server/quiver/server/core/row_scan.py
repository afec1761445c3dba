"""Exact top-k over chosen rows of a store's cached vectors, in two passes: a scan of the
rows' int8 codes (a quarter of the float32 bytes, read in place by a native kernel, no
gathered copy), then the float32 product over the few rows that scan cannot rule out.
The result is the exact ranking, the same as ``exact_ranking`` over the float32 rows:

- each row ``v`` (unit, float32) is kept as ``scale · c + e`` with ``c`` int8
  (``scale = max |v_j| / 127``), and beside it ``residual = ‖e‖`` and ``norm = scale · ‖c‖``;
- the query ``q`` becomes ``t · d + f`` with ``d`` int16 (``t = max |q_j| / D``, ``D`` small
  enough that no int32 sum of ``c · d`` overflows) and ``‖f‖`` computed;
- the kernel sums ``c · d`` exactly (integers), so with ``approx = scale · t · (c · d)``:
  ``|v · q - approx| ≤ residual · ‖q‖ + norm · ‖f‖`` (Cauchy-Schwarz, twice), plus
  ``SCAN_SLACK`` for the float32 arithmetic of the bounds themselves;
- a row whose upper bound is below the k-th largest lower bound is beaten by k rows for
  sure; every other row (the candidates, a few dozen) is scored in float32 (a second
  kernel, reading those rows in place; a few hundred rows or fewer skip the first pass).

The kernels are ``native/rowscan.c``, compiled at install (hatch_build.py); without them
numpy computes the same figures (``np.take`` of the rows, then a product), slower.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
Matrix = npt.NDArray[np.float32]
Codes = npt.NDArray[np.int8]
Floats = npt.NDArray[np.float32]

SCAN_SLACK = 1e-4
"""Added to each row's bound (times ``max(1, ‖q‖)``) for the float32 rounding of the
bounds' arithmetic (relative errors ~1e-7)."""

DIRECT_MAX_ROWS = 256
"""Up to this many rows the float32 rows are ranked directly (the first pass would cost
more than it saves)."""

SORT_ALL_ROWS = 64
"""Up to this many rows a ranking sorts them all (cheaper than a partition first)."""

CODE_MAX = 127
QUERY_CODE_MAX = 32767
INT32_MAX = 2**31 - 1

LIBRARY = Path(__file__).resolve().parent.parent / "native" / "_rowscan.so"


def _load_kernels() -> tuple[Any, Any]:
    """(quiver_scan_bounds, quiver_dot_rows_f32), or (None, None) when not built (or built
    from an older source without them)."""
    try:
        library = ctypes.CDLL(str(LIBRARY))  # CDLL: the GIL is released during the call
        scan, dot = library.quiver_scan_bounds, library.quiver_dot_rows_f32
    except (OSError, AttributeError):
        return None, None
    pointer, size, real, double = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_double
    scan.argtypes = [pointer, size, pointer, size, pointer, double, pointer, pointer, pointer]
    scan.argtypes += [real, real, real, pointer, pointer]
    scan.restype = None
    dot.argtypes = [pointer, size, pointer, size, pointer, pointer]
    dot.restype = None
    return scan, dot


_KERNEL, _DOT = _load_kernels()
NATIVE = _KERNEL is not None
"""Whether the compiled kernels were loaded (else numpy computes the same figures)."""


def describe() -> str:
    """One line for the server's start-up log."""
    if NATIVE:
        return f"exact filtered search: native int8 row scan ({LIBRARY.name})"
    return f"exact filtered search: numpy row scan ({LIBRARY.name} not built at install)"


def quantize(matrix: Matrix) -> tuple[Codes, Floats, Floats, Floats]:
    """Each row's int8 codes, scale, residual norm and codes' norm (the module docstring)."""
    rows = np.asarray(matrix, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"quantize takes a matrix, not shape {rows.shape}")
    peak = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(len(rows), np.float32)
    scale = np.where(peak > 0, peak / CODE_MAX, 1.0).astype(np.float32)
    codes = np.clip(np.rint(rows / scale[:, None]), -CODE_MAX, CODE_MAX).astype(np.int8)
    scaled = scale[:, None].astype(np.float64) * codes
    error = rows.astype(np.float64) - scaled
    residual = np.sqrt(np.einsum("ij,ij->i", error, error))
    norm = np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
    # Rounded up, so that the float32 copies still bound the float64 values.
    up = np.float32(1 + 1e-6)
    return codes, scale, residual.astype(np.float32) * up, norm.astype(np.float32) * up


def query_codes(query: Floats) -> tuple[npt.NDArray[np.int16], float, float]:
    """The query's int16 codes ``d``, their scale ``t`` and the norm of ``q - t · d``."""
    q = np.asarray(query, dtype=np.float64)
    top = min(QUERY_CODE_MAX, INT32_MAX // (CODE_MAX * max(1, len(q))))
    peak = float(np.abs(q).max()) if len(q) else 0.0
    step = peak / top if peak > 0 else 1.0
    codes = np.rint(q * (1.0 / step))  # |codes| <= top (rint of at most top * (1 + 2^-52))
    error = q - step * codes
    return codes.astype(np.int16), step, float(np.sqrt(error @ error))


@dataclass(frozen=True)
class ScanRows:
    """A snapshot of a store's cached vectors (arrays only ever appended to or replaced
    whole, so rows already chosen never change under a reader) and which of their rows a
    selection holds."""

    labels: Ids
    matrix: Matrix
    codes: Codes
    scale: Floats
    residual: Floats
    norm: Floats
    rows: Ids

    def __post_init__(self) -> None:
        # The kernels read these rows unchecked: a wrong one must fail here, not read memory.
        rows = self.rows
        if rows.dtype != np.int64 or rows.ndim != 1:
            raise TypeError(f"rows must be a 1-d int64 array, not {rows.dtype} {rows.shape}")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(self.codes)):
            raise IndexError(f"rows outside the {len(self.codes)} rows held")
        if self.codes.shape != self.matrix.shape or len(self.labels) < len(self.codes):
            raise ValueError("codes, vectors and labels of different shapes")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_labels(self) -> Ids:
        return self.labels[self.rows]

    def top(self, query: Floats, k: int) -> list[tuple[int, float]]:
        """The ``k`` best rows for ``query``: (label, product), best first, ties by label;
        exactly ``exact_ranking`` over the float32 rows."""
        if k <= 0 or not len(self.rows):
            return []
        rows = self.rows
        if len(rows) > max(k, DIRECT_MAX_ROWS):
            rows = rows[candidates(self, query, k)]
        return ranked(self.labels[rows], products(self.matrix, rows, query), k)


def bounds(scan: ScanRows, query: Floats) -> tuple[Floats, Floats]:
    """For each of ``scan.rows``: a lower and an upper bound of its float32 vector's product
    with ``query`` (the module docstring); the native kernel reads the codes in place."""
    rows = np.ascontiguousarray(scan.rows, dtype=np.int64)
    d, step, rounding = query_codes(query)
    query = np.ascontiguousarray(query, dtype=np.float32)
    reach = float(np.sqrt(np.dot(query, query)))
    slack = SCAN_SLACK * max(1.0, reach)
    if _KERNEL is None or not scan.codes.flags.c_contiguous or not len(rows):
        products = np.take(scan.codes, rows, axis=0).astype(np.int64) @ d.astype(np.int64)
        approx = (products * step).astype(np.float32) * scan.scale[rows]
        bound = scan.residual[rows] * np.float32(reach) + scan.norm[rows] * np.float32(rounding)
        bound += np.float32(slack)
        return approx - bound, approx + bound
    lower = np.empty(len(rows), dtype=np.float32)
    upper = np.empty(len(rows), dtype=np.float32)
    _KERNEL(
        scan.codes.ctypes.data, scan.codes.shape[1], rows.ctypes.data, len(rows),
        d.ctypes.data, step, scan.scale.ctypes.data, scan.residual.ctypes.data,
        scan.norm.ctypes.data, reach, rounding, slack, lower.ctypes.data, upper.ctypes.data,
    )  # fmt: skip
    return lower, upper


def candidates(scan: ScanRows, query: Floats, k: int) -> Ids:
    """Positions (into ``scan.rows``) of the rows that may be among the ``k`` best: every
    row whose upper bound reaches the k-th largest lower bound."""
    if len(scan.rows) <= k:
        return np.arange(len(scan.rows), dtype=np.int64)
    lower, upper = bounds(scan, query)
    kth_lower = np.partition(lower, len(lower) - k)[len(lower) - k]
    return np.flatnonzero(upper >= kth_lower)


def products(matrix: Matrix, rows: Ids, query: Floats) -> Floats:
    """``matrix[rows] @ query`` in float32, the rows read in place when the kernel is
    loaded (its sums are ordered differently from BLAS's: the last bit may differ)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    query = np.ascontiguousarray(query, dtype=np.float32)
    if _DOT is None or not matrix.flags.c_contiguous or matrix.dtype != np.float32:
        out: Floats = np.take(matrix, rows, axis=0) @ query
        return out
    out = np.empty(len(rows), dtype=np.float32)
    _DOT(
        matrix.ctypes.data, matrix.shape[1], rows.ctypes.data, len(rows), query.ctypes.data,
        out.ctypes.data,
    )  # fmt: skip
    return out


def exact_ranking(labels: Ids, vectors: Matrix, query: Floats, k: int) -> list[tuple[int, float]]:
    """The ``k`` labels whose unit vectors (rows of ``vectors``) are most similar to the unit
    ``query``, best first (ties by label, whatever the rows' order), with their cosine
    similarity."""
    if not len(labels):
        return []
    return ranked(labels, vectors @ query, k)


def ranked(labels: Ids, similarity: Floats, k: int) -> list[tuple[int, float]]:
    """The ``k`` best (label, similarity), best first, ties by label."""
    if not len(labels) or k <= 0:
        return []
    if len(similarity) > max(k, SORT_ALL_ROWS):
        kth = np.partition(similarity, len(similarity) - k)[len(similarity) - k]
        best = np.flatnonzero(similarity >= kth)  # the k best and any tied with the k-th
        top = best[np.lexsort((labels[best], -similarity[best]))][:k]
    else:
        top = np.lexsort((labels, -similarity))[:k]
    return list(zip(labels[top].tolist(), similarity[top].tolist(), strict=True))
