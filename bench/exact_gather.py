"""Exact search over a selection of a store's contiguous vector matrix: gather the selected
rows then multiply (``matrix[rows] @ q``, what ``core/attribute_index.py`` does) against
multiply every row then pick (``(matrix @ q)[rows]``), at 10 % and 1 % of ``--rows``.

    .venv/bin/python -m bench.exact_gather --rows 20000

Gaussian unit vectors, 512-d, float32, BLAS on one thread (as the server runs it); the
best of ``--repeat`` rounds of ``--number`` calls each, in ms per call.
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
import numpy.typing as npt
from quiver.server.core.blas_threads import one_blas_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--number", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    one_blas_thread()
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    query = matrix[0].copy()
    for share in (0.10, 0.01):
        rows = np.sort(rng.choice(args.rows, size=int(args.rows * share), replace=False)).astype(
            np.int64
        )

        def gather(rows: npt.NDArray[np.int64] = rows) -> npt.NDArray[np.float32]:
            out: npt.NDArray[np.float32] = np.take(matrix, rows, axis=0) @ query
            return out

        def product(rows: npt.NDArray[np.int64] = rows) -> npt.NDArray[np.float32]:
            out: npt.NDArray[np.float32] = (matrix @ query)[rows]
            return out

        np.testing.assert_allclose(gather(), product(), rtol=1e-5, atol=1e-6)
        figures = {
            name: min(timeit.repeat(fn, number=args.number, repeat=args.repeat))
            / args.number
            * 1000
            for name, fn in (("gather then multiply", gather), ("multiply all then pick", product))
        }
        cells = ", ".join(f"{name} {ms:.3f} ms" for name, ms in figures.items())
        print(f"{share:.0%} of {args.rows:,} rows ({len(rows):,}): {cells}")


if __name__ == "__main__":
    main()
