"""Checks an hnswlib index file before hnswlib reads it, and after hnswlib writes it.

hnswlib trusts its files: flipped neighbour ids or link counts make the first search
segfault, random bytes make ``load_index`` raise ``OverflowError`` or allocate without bound,
and ``save_index`` reports no write error (on a full disk it leaves a truncated file). So:

- after ``save_index`` the temp file is walked (header, level-0 block, then every element's
  upper-level link list) to the exact length hnswlib meant to write; a short or long file is
  refused before it can replace the good one;
- beside each index a small JSON sidecar (``<index>.json``, written atomically) records the
  file's size and sha256, the dimension, the element count and a digest of the labels; at
  load the file is checked against it before hnswlib touches the bytes, and the labels
  hnswlib reads are checked after.

Any mismatch raises ``CorruptIndex``; the caller rebuilds the index from SQLite.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

# hnswlib 0.8 saveIndex: offsetLevel0, max_elements, cur_element_count, size_data_per_element,
# label_offset, offsetData (size_t), maxlevel (int), enterpoint_node (uint32), maxM, maxM0, M
# (size_t), mult (double), ef_construction (size_t).
HEADER = struct.Struct("<6QiI3QdQ")
_LINK_SIZE = struct.Struct("<I")
FORMAT = 1
_FLOAT = np.dtype(np.float32).itemsize


class CorruptIndex(ValueError):
    """An index file that is damaged, truncated or not vouched for by its sidecar."""


@dataclass(frozen=True)
class Header:
    max_elements: int
    element_count: int
    data_per_element: int
    dim: int
    max_m: int
    max_m0: int


@dataclass(frozen=True)
class Sidecar:
    """What the saver vouches for: the file as written and the labels it holds."""

    format: int
    size: int
    sha256: str
    dim: int
    element_count: int
    deleted_count: int
    labels_sha256: str


def sidecar_path(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + ".json")


def sidecar_tmp_path(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + ".json.tmp")


def read_header(data: bytes | mmap.mmap, path: Path) -> Header:
    if len(data) < HEADER.size:
        raise CorruptIndex(f"{path} is not an hnswlib index (too short: {len(data)} bytes)")
    (
        offset_level0,
        max_elements,
        count,
        per_element,
        label_offset,
        offset_data,
        _max_level,
        _enter_point,
        max_m,
        max_m0,
        _m,
        _mult,
        _ef_construction,
    ) = HEADER.unpack_from(data)
    dim, rest = divmod(label_offset - offset_data, _FLOAT)
    if (
        offset_level0 != 0
        or rest
        or dim < 1
        or count > max_elements
        or offset_data != 4 + 4 * max_m0
        or per_element != label_offset + 8
        or HEADER.size + count * per_element > len(data)
    ):
        raise CorruptIndex(f"{path} has an invalid hnswlib header")
    return Header(max_elements, count, per_element, dim, max_m, max_m0)


def written_length(data: bytes | mmap.mmap, path: Path) -> int:
    """The length hnswlib's own layout gives the file: the header, the level-0 block, then
    per element a uint32 size and that many bytes of upper-level links."""
    header = read_header(data, path)
    links_per_level = 4 + 4 * header.max_m
    pos = HEADER.size + header.element_count * header.data_per_element
    end = len(data)
    for _ in range(header.element_count):
        if pos + 4 > end:
            raise CorruptIndex(f"{path} is truncated ({end} bytes, more expected)")
        (size,) = _LINK_SIZE.unpack_from(data, pos)
        if size % links_per_level:
            raise CorruptIndex(f"{path} has an invalid link list size {size}")
        pos += 4 + size
    return pos


def check_written(path: Path) -> tuple[int, str]:
    """``(size, sha256)`` of an index file hnswlib just wrote, once its length is exactly what
    its layout says (hnswlib does not report write errors: a full disk leaves it short)."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorruptIndex(f"{path} is empty (was the disk full?)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            expected = written_length(data, path)
            if expected != size:
                raise CorruptIndex(
                    f"{path} holds {size} bytes where hnswlib's layout needs {expected} "
                    "(was the disk full?)"
                )
            digest = hashlib.sha256(data).hexdigest()
        os.fsync(f.fileno())
    return size, digest


def labels_digest(labels: npt.NDArray[np.int64]) -> str:
    """sha256 of the sorted labels (little-endian int64)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def write_sidecar(index_path: Path, sidecar: Sidecar) -> Path:
    """Writes the sidecar to a temp file, fsynced; returns it for the caller to rename."""
    tmp = sidecar_tmp_path(index_path)
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(asdict(sidecar), f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def read_sidecar(index_path: Path) -> Sidecar:
    path = sidecar_path(index_path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        sidecar = Sidecar(**raw)
    except FileNotFoundError:
        raise CorruptIndex(
            f"{index_path} has no checksum file {path.name} (saved by an older version, or "
            "the save was cut short): not trusted"
        ) from None
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptIndex(f"{path} is unreadable: {exc}") from None
    if sidecar.format != FORMAT:
        raise CorruptIndex(f"{path} has format {sidecar.format}, not {FORMAT}")
    return sidecar


def verify_file(index_path: Path, dim: int) -> tuple[Sidecar, Header]:
    """Checks ``index_path`` against its sidecar (size, sha256, dimension, element count)
    before hnswlib is allowed to read it."""
    sidecar = read_sidecar(index_path)
    with index_path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != sidecar.size:
            raise CorruptIndex(
                f"{index_path} holds {size} bytes, its checksum file says {sidecar.size}"
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if hashlib.sha256(data).hexdigest() != sidecar.sha256:
                raise CorruptIndex(f"{index_path} does not match its sha256 (damaged on disk)")
            header = read_header(data, index_path)
    if header.dim != dim or sidecar.dim != dim:
        raise CorruptIndex(f"{index_path} holds vectors of dim {header.dim}, not {dim}")
    if header.element_count != sidecar.element_count:
        raise CorruptIndex(
            f"{index_path} holds {header.element_count} elements, its checksum file says "
            f"{sidecar.element_count}"
        )
    return sidecar, header


def verify_labels(
    index_path: Path, sidecar: Sidecar, labels: npt.NDArray[np.int64], deleted: int
) -> None:
    """Checks the labels hnswlib loaded against those the saver recorded."""
    if labels.size != sidecar.element_count or labels_digest(labels) != sidecar.labels_sha256:
        raise CorruptIndex(f"{index_path} does not hold the labels its checksum file records")
    if deleted != sidecar.deleted_count:
        raise CorruptIndex(
            f"{index_path} has {deleted} deleted labels, its checksum file says "
            f"{sidecar.deleted_count}"
        )
