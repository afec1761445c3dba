"""A model-free lexical embedder: signed feature hashing of word unigrams and bigrams.

Features and weights (fixed: changing them changes every stored vector):

- Words are ``re.findall(r"\\w+", text.lower())`` (Unicode aware).
- Each word gets a 32-bit id, ``zlib.crc32`` of its UTF-8 bytes (stable across processes,
  unlike ``hash()``). A unigram's key is its id; a bigram's key packs the two ids into 64
  bits. Keys are salted per kind and mixed with the splitmix64 finaliser (uint64 numpy
  arithmetic) into a 64-bit hash ``h``.
- Bucket ``h % dimensions``; sign ``+1`` if bit 63 of ``h`` is clear, else ``-1``.
- Weights: unigrams 1.0, bigrams 0.5, with sublinear term frequency: a feature occurring
  ``c`` times in a text contributes ``weight * (1 + ln c)`` (so a repeated word does not
  drown the rest of a long chunk).
- Each row is L2-normalised; a text with no words gives a zero row.

All per-feature work is vectorised over the whole batch; the only Python loop is the
word -> crc32 step.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from quiver.server.embedders.base import FloatMatrix, l2_normalise
from quiver.server.embedders.model_names import MAX_DIMENSIONS, MIN_DIMENSIONS

UNIGRAM_WEIGHT = 1.0
BIGRAM_WEIGHT = 0.5

_WORD = re.compile(r"\w+")
_UNIGRAM_SALT = np.uint64(0x9E3779B97F4A7C15)
_BIGRAM_SALT = np.uint64(0xD1B54A32D192ED03)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

U64 = npt.NDArray[np.uint64]


def _splitmix64(keys: U64) -> U64:
    """The splitmix64 finaliser, element-wise (uint64 arrays wrap on overflow)."""
    z: U64 = keys ^ (keys >> np.uint64(30))
    z = z * _MIX1
    z = z ^ (z >> np.uint64(27))
    z = z * _MIX2
    return z ^ (z >> np.uint64(31))


class HashEmbedder:
    """Deterministic signed feature hashing; see the module docstring for the features."""

    def __init__(self, dimensions: int = 512) -> None:
        if not isinstance(dimensions, int) or not (MIN_DIMENSIONS <= dimensions <= MAX_DIMENSIONS):
            raise ValueError(
                f"hash embedder dimensions must be an integer in "
                f"{MIN_DIMENSIONS}..{MAX_DIMENSIONS}, got {dimensions!r}"
            )
        self._dimensions = dimensions

    @property
    def model(self) -> str:
        return "hash"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def __repr__(self) -> str:
        return f"HashEmbedder(dimensions={self._dimensions})"

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        n = len(texts)
        word_lists = [_WORD.findall(text.lower()) for text in texts]
        counts = np.fromiter((len(words) for words in word_lists), dtype=np.int64, count=n)
        total = int(counts.sum())
        ids = np.fromiter(
            (zlib.crc32(word.encode()) for words in word_lists for word in words),
            dtype=np.uint64,
            count=total,
        )
        rows = np.repeat(np.arange(n, dtype=np.int64), counts)

        # A bigram joins word i and word i + 1 when both belong to the same text.
        same_text = rows[1:] == rows[:-1]
        bigram_keys = ((ids[:-1] << np.uint64(32)) | ids[1:])[same_text]
        hashes = np.concatenate(
            [_splitmix64(ids ^ _UNIGRAM_SALT), _splitmix64(bigram_keys ^ _BIGRAM_SALT)]
        )
        weights = np.concatenate(
            [
                np.full(total, UNIGRAM_WEIGHT),
                np.full(bigram_keys.size, BIGRAM_WEIGHT),
            ]
        )
        feature_rows = np.concatenate([rows, rows[1:][same_text]])
        return self._accumulate(n, feature_rows, hashes, weights)

    def _accumulate(
        self,
        n: int,
        rows: npt.NDArray[np.int64],
        hashes: U64,
        weights: npt.NDArray[np.float64],
    ) -> FloatMatrix:
        """Sum signed, sublinearly weighted features into an ``(n, dimensions)`` matrix."""
        dim = self._dimensions
        if hashes.size == 0:
            return np.zeros((n, dim), dtype=np.float32)
        # Count each distinct (row, hash) feature once: sort by row then hash.
        order = np.lexsort((hashes, rows))
        rows, hashes, weights = rows[order], hashes[order], weights[order]
        starts = np.flatnonzero(
            np.concatenate([[True], (rows[1:] != rows[:-1]) | (hashes[1:] != hashes[:-1])])
        )
        occurrences = np.diff(np.append(starts, rows.size))
        rows, hashes, weights = rows[starts], hashes[starts], weights[starts]

        signs = 1.0 - 2.0 * (hashes >> np.uint64(63)).astype(np.float64)
        values = signs * weights * (1.0 + np.log(occurrences))
        flat = rows * dim + (hashes % np.uint64(dim)).astype(np.int64)
        matrix = np.bincount(flat, weights=values, minlength=n * dim).reshape(n, dim)
        return l2_normalise(matrix)
