"""ChunkMatrix: the chunks of many files in contiguous arrays (their ids and, with a
dimension, their unit vectors as one float32 matrix), each file's chunks one span of rows,
so that the chunks of any set of files are gathered with one index array (a CSR-style
expansion of the files' spans) instead of one concatenation per file. With a dimension, each
row's int8 codes, scale, residual and codes' norm (core/row_scan.py) are kept beside its float32
vector, for the exact search's first pass.

Files are numbered by the caller (core/attribute_index.py uses its AttributeTable's row
numbers); ``start[file]`` and ``count[file]`` locate a file's span. Appending a file's span
is amortised O(its chunks) (capacities double); replacing or dropping a file leaves its old
span dead (a tombstone: its file no longer points at it) until more than
``COMPACT_DEAD_SHARE`` of the rows are dead, when live spans are copied into fresh arrays.
Not thread-safe: the caller serialises changes and reads.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from quiver.server.core.row_scan import ScanRows, quantize

COMPACT_DEAD_SHARE = 0.25
"""Dead rows (of dropped or replaced spans), as a share of the rows in use, past which the
arrays are compacted."""

COMPACT_MIN_ROWS = 64
"""No compaction below this many rows in use (copying them costs more than it saves)."""

Ids = npt.NDArray[np.int64]
Matrix = npt.NDArray[np.float32]


def row_bytes(dim: int) -> int:
    """Bytes one row takes with vectors of ``dim``: its id, float32 vector, int8 codes, scale,
    residual and codes' norm."""
    return 8 + 5 * dim + 12


def spans_index(start: Ids, count: Ids, most: int | None = None) -> Ids:
    """The row numbers of the spans (``start``, ``count``), span after span, in order.
    ``most``: no span is longer (lets one-row spans skip the general expansion)."""
    if most is None and len(count):
        most = int(count.max())
    if most is not None and most <= 1:  # one-chunk files: the starts of the non-empty spans
        return start if bool(count.all()) else start[count > 0]
    total = int(count.sum())
    ends = np.cumsum(count)
    shift = np.repeat(start - (ends - count), count)
    return shift + np.arange(total, dtype=np.int64)


class ChunkMatrix:
    def __init__(self, dim: int) -> None:
        """``dim`` > 0: unit vectors of that dimension are kept beside the ids; 0: ids only."""
        self.dim = dim
        self.labels: Ids = np.zeros(0, dtype=np.int64)
        self.matrix: Matrix = np.zeros((0, dim), dtype=np.float32)
        self.codes = np.zeros((0, dim), dtype=np.int8)
        self.scale = np.zeros(0, dtype=np.float32)
        self.residual = np.zeros(0, dtype=np.float32)
        self.norm = np.zeros(0, dtype=np.float32)
        self.used = 0
        """Rows written (live and dead)."""
        self.dead = 0
        self.start: Ids = np.zeros(0, dtype=np.int64)
        self.count: Ids = np.zeros(0, dtype=np.int64)
        self.most = 0
        """No file holds more rows than this (an upper bound: drops leave it)."""
        self.compactions = 0
        """Compactions so far (tests read it)."""
        self.max_rows = 0
        """When positive, growth doubles capacity only up to this many rows (a budget's
        worth; a larger need still gets exactly what it needs)."""

    @property
    def nbytes(self) -> int:
        """The bytes the row arrays hold (their capacity, not only the live rows)."""
        floats = self.scale.nbytes + self.residual.nbytes + self.norm.nbytes
        return self.labels.nbytes + self.matrix.nbytes + self.codes.nbytes + floats

    @property
    def live(self) -> int:
        return self.used - self.dead

    # -- whole loads -------------------------------------------------------------------------

    def load(self, files: Ids, counts: Ids, labels: Ids, matrix: Matrix | None) -> None:
        """Replaces everything: file ``files[i]`` holds the next ``counts[i]`` rows of
        ``labels`` (and of ``matrix``, unit rows, when ``dim`` > 0), in order; capacity exact."""
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        if self.dim > 0:
            assert matrix is not None and matrix.shape == (len(labels), self.dim)
            self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            self.codes, self.scale, self.residual, self.norm = quantize(self.matrix)
        self.used, self.dead = len(labels), 0
        size = int(files.max()) + 1 if len(files) else 0
        self.start = np.zeros(size, dtype=np.int64)
        self.count = np.zeros(size, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        self.start[files] = np.cumsum(counts) - counts
        self.count[files] = counts
        self.most = int(counts.max()) if len(counts) else 0

    # -- one file at a time ------------------------------------------------------------------

    def held(self, file: int) -> Ids:
        """The ids the file's span holds (empty when it has none)."""
        if file >= len(self.count):
            return np.zeros(0, dtype=np.int64)
        start = int(self.start[file])
        return self.labels[start : start + int(self.count[file])]

    def put(self, file: int, labels: Ids, matrix: Matrix | None = None) -> None:
        """The file's rows are ``labels`` (and ``matrix``) from now on, appended as a new
        span (its old span, if any, is dead)."""
        self.drop(file)
        n = len(labels)
        self._reserve_files(file + 1)
        self._reserve_rows(self.used + n)
        self.labels[self.used : self.used + n] = labels
        if self.dim > 0:
            assert matrix is not None and matrix.shape == (n, self.dim)
            rows = slice(self.used, self.used + n)
            self.matrix[rows] = matrix
            codes, scale, residual, norm = quantize(matrix)
            self.codes[rows], self.scale[rows] = codes, scale
            self.residual[rows], self.norm[rows] = residual, norm
        self.start[file] = self.used
        self.count[file] = n
        self.most = max(self.most, n)
        self.used += n

    def drop(self, file: int) -> None:
        """The file holds no rows from now on (its span is dead)."""
        if file >= len(self.count) or self.count[file] == 0:
            return
        self.dead += int(self.count[file])
        self.count[file] = 0
        if self.used >= COMPACT_MIN_ROWS and self.dead > COMPACT_DEAD_SHARE * self.used:
            self.compact()

    # -- reads -------------------------------------------------------------------------------

    def index(self, files: Ids) -> Ids:
        """The row numbers of the files' spans, file after file (``files`` ascending)."""
        if len(files) and files[-1] >= len(self.count):
            files = files[files < len(self.count)]
        return spans_index(self.start[files], self.count[files], self.most)

    def scan(self, rows: Ids) -> ScanRows:
        """These rows for an exact search (core/row_scan.py), over the arrays as they are
        now: a later change appends rows or replaces the arrays, never rewrites these."""
        quantized = (self.codes, self.scale, self.residual, self.norm)
        return ScanRows(self.labels, self.matrix, *quantized, rows)

    # -- housekeeping ------------------------------------------------------------------------

    def compact(self) -> None:
        """Copies the live spans, in file order, into arrays of exactly their size."""
        files = np.flatnonzero(self.count).astype(np.int64)
        rows = self.index(files)
        counts = self.count[files]
        self.labels = self.labels[rows]
        if self.dim > 0:
            self.matrix = np.take(self.matrix, rows, axis=0)
            self.codes = np.take(self.codes, rows, axis=0)
            self.scale, self.residual = self.scale[rows], self.residual[rows]
            self.norm = self.norm[rows]
        self.used, self.dead = len(rows), 0
        self.start[:] = 0
        self.start[files] = np.cumsum(counts) - counts
        self.compactions += 1

    def _reserve_files(self, size: int) -> None:
        if size <= len(self.count):
            return
        capacity = max(size, 2 * len(self.count), 16)
        self.start = np.concatenate([self.start, np.zeros(capacity - len(self.start), np.int64)])
        self.count = np.concatenate([self.count, np.zeros(capacity - len(self.count), np.int64)])

    def _reserve_rows(self, size: int) -> None:
        if size <= len(self.labels):
            return
        doubled = max(2 * len(self.labels), 16)
        capacity = max(size, min(doubled, self.max_rows) if self.max_rows > 0 else doubled)
        labels = np.zeros(capacity, dtype=np.int64)
        labels[: self.used] = self.labels[: self.used]
        self.labels = labels
        if self.dim > 0:
            matrix = np.zeros((capacity, self.dim), dtype=np.float32)
            matrix[: self.used] = self.matrix[: self.used]
            self.matrix = matrix
            codes = np.zeros((capacity, self.dim), dtype=np.int8)
            codes[: self.used] = self.codes[: self.used]
            self.codes = codes
            for name in ("scale", "residual", "norm"):
                grown = np.zeros(capacity, dtype=np.float32)
                grown[: self.used] = getattr(self, name)[: self.used]
                setattr(self, name, grown)
