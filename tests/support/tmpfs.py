"""A small tmpfs to run out of disk for real, and a ballast file that fills it.

Shared by the disk-full tests (``small_tmpfs``, which skips the test unless root) and the
soak's disk-full fault (``bench/soak/``). Mounting needs root; callers decide what to do when
it is refused.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mounts a tmpfs of ``size`` (e.g. "8m") on ``path``; None when mounted, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        return f"cannot run mount: {exc}"
    if mounted.returncode != 0:
        return f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}"
    return None


def unmount(path: Path) -> None:
    """Lazily unmounts ``path`` (what is still open there keeps working until closed)."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def fill(directory: Path, leave: int = 0) -> Path:
    """Fills the filesystem of ``directory`` until at most ``leave`` bytes are free, with a
    ballast file ``directory/ballast``; delete it to give the space back."""
    ballast = directory / "ballast"
    block = b"\0" * 65536
    with ballast.open("wb") as f:
        while True:
            free = free_bytes(directory)
            if free <= leave:
                break
            try:
                f.write(block[: max(1, min(len(block), free - leave))])
                f.flush()
            except OSError:
                break
    return ballast


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
