"""A `WorkerOutput` over a worker's pipe, in bounded messages.

The texts go in groups of `TEXT_GROUP` (each a small pickle, so the server never spends long
unpickling with the GIL held), the token counts and vectors as raw array bytes (the vectors
block by block as the worker embedded them, read straight into one array: no pickled or
concatenated copy of the biggest part).
"""

from __future__ import annotations

from multiprocessing.connection import Connection

import numpy as np
from quiver.server.ingest.worker import WorkerOutput

TEXT_GROUP = 256


def send_output(conn: Connection, output: WorkerOutput) -> None:
    n = len(output.texts)
    blocks = output.vector_blocks or ([] if output.vectors is None else [output.vectors])
    dims = int(blocks[0].shape[1]) if blocks and n else 0
    conn.send((output.error, output.seconds, n, dims))
    if n == 0:
        return
    for start in range(0, n, TEXT_GROUP):
        conn.send(output.texts[start : start + TEXT_GROUP])
    conn.send_bytes(np.asarray(output.token_counts, dtype=np.int64).data)
    for block in blocks:
        conn.send_bytes(np.ascontiguousarray(block, dtype=np.float32).data)


def recv_output(conn: Connection) -> WorkerOutput:
    """Raises EOFError or OSError if the worker dies part way."""
    error, seconds, n, dims = conn.recv()
    if n == 0:
        return WorkerOutput(error=error, seconds=seconds)
    texts: list[str] = []
    while len(texts) < n:
        texts += conn.recv()
    token_counts = np.empty(n, dtype=np.int64)
    conn.recv_bytes_into(token_counts.data.cast("B"))
    vectors = np.empty((n, dims), dtype=np.float32)
    buffer = vectors.data.cast("B")
    filled = 0
    while filled < len(buffer):
        filled += conn.recv_bytes_into(buffer, filled)
    return WorkerOutput(
        texts=texts,
        token_counts=token_counts.tolist(),
        vectors=vectors,
        error=error,
        seconds=seconds,
    )
