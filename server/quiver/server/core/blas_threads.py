"""numpy's BLAS on one thread in the server process.

Searches run in parallel on threads of their own; a BLAS that also splits each product
across the cores (OpenBLAS does from about 1,000 rows of 512 floats on) then waits for its own
threads whenever the machine is busy. Measured on the shared 2-core machine, an exact search
over 2,000 cached vectors of 512 dimensions: p50 0.16 ms either way, p99 49.6 ms with
OpenBLAS's threads against 4.7 ms on one thread; bench/peers.py's in-process 10 % filter:
10.9 ms p50 with them.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]


def one_blas_thread() -> None:
    """Limits every BLAS library loaded in this process to one thread (for good)."""
    threadpool_limits(limits=1, user_api="blas")
