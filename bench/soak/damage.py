"""Index damage: what a failing disk could do to a saved index while the server is down."""

from __future__ import annotations

import random
from pathlib import Path

from quiver.server.index import integrity

from tests.support.index_damage import break_links

INDEX_DAMAGE = ("neighbour-ids", "random-4k", "truncated", "no-sidecar")


def damage_an_index(rng: random.Random, indexes: Path) -> str:
    """Damages one saved index while the server is down, as a disk could: the next start must
    refuse it before hnswlib reads it (damaged links used to segfault the first search) and
    rebuild it from SQLite; the end checks then find every chunk in it and every file."""
    saved = sorted(indexes.glob("*.hnsw")) if indexes.exists() else []
    if not saved:
        return "no index saved yet to damage"
    path = rng.choice(saved)
    how = rng.choice(INDEX_DAMAGE)
    data = bytearray(path.read_bytes())
    if how == "neighbour-ids" and len(data) >= integrity.HEADER.size:
        path.write_bytes(break_links(bytes(data)))
    elif how == "random-4k":
        path.write_bytes(rng.randbytes(4096))
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        integrity.sidecar_path(path).unlink(missing_ok=True)
    return f"damaged index {path.name} ({how})"
