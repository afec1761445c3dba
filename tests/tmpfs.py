"""A small tmpfs the test mounts (as root) to run out of disk for real (``bench/tmpfs.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.tmpfs import fill, mount_tmpfs, unmount

__all__ = ["fill", "small_tmpfs"]


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mounts a tmpfs of ``size`` (e.g. "8m") on ``path``; skips the test unless root."""
    refused = mount_tmpfs(path, size)
    if refused is not None:
        pytest.skip(f"cannot fill the disk for real: {refused}")
    try:
        yield path
    finally:
        unmount(path)
