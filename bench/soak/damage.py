"""Index damage: what a failing disk could do to a saved index while the server is down."""

from __future__ import annotations

import random
from pathlib import Path

from quiver.server.index import integrity

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
        count, per_element = integrity.HEADER.unpack_from(data)[2:4]
        for element in range(count):
            base = integrity.HEADER.size + element * per_element
            links = int.from_bytes(data[base : base + 2], "little")
            for j in range(min(links, 64)):
                at = base + 4 + 4 * j
                data[at : at + 4] = (0x7FFFFFF0 ^ j).to_bytes(4, "little")
        path.write_bytes(bytes(data))
    elif how == "random-4k":
        path.write_bytes(rng.randbytes(4096))
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        integrity.sidecar_path(path).unlink(missing_ok=True)
    return f"damaged index {path.name} ({how})"
