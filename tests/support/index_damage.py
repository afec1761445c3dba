"""Damage to a saved hnswlib index, as a failing disk could do it: each must be refused
before hnswlib reads the file (tests/test_index.py, tests/test_damaged_data.py, the soak)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from quiver.server.index.integrity import HEADER


def break_links(data: bytes) -> bytes:
    """Every level-0 neighbour id pointed far past the last element: hnswlib loads the file
    and its first search reads outside its memory (a segfault)."""
    out = bytearray(data)
    (_, _, count, per_element, *_rest) = HEADER.unpack_from(out)
    for element in range(count):
        base = HEADER.size + element * per_element
        (links,) = struct.unpack_from("<H", out, base)
        for j in range(links):
            struct.pack_into("<I", out, base + 4 + 4 * j, 0x7FFFFFF0 ^ j)
    return bytes(out)


def break_link_counts(data: bytes) -> bytes:
    out = bytearray(data)
    (_, _, count, per_element, *_rest) = HEADER.unpack_from(out)
    for element in range(count):
        struct.pack_into("<H", out, HEADER.size + element * per_element, 0xFFFF)
    return bytes(out)


# name → (change to the file's bytes, what the refusal names)
DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "neighbour-ids": (break_links, "sha256"),
    "link-counts": (break_link_counts, "sha256"),
    "random-4k": (lambda data: np.random.default_rng(9).bytes(4096), "bytes"),
    "truncated": (lambda data: data[: len(data) // 2], "bytes"),
    "header-only": (lambda data: data[:20], "bytes"),
    "empty": (lambda data: b"", "bytes"),
}
