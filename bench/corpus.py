"""A corpus of real text that ships with the machine: Vim's manual and Python's standard
library (its sources, docstrings and comments are real, varied English and code).

Both are present wherever this project runs (Vim's runtime files with the Debian base
image, the standard library with every Python), so the benchmark needs no download.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SOURCES = (
    (Path("/usr/share/vim"), ("*.txt",)),
    (Path(sysconfig.get_paths()["stdlib"]), ("*.py", "*.txt", "*.rst")),
)


def corpus_files(limit_bytes: int, min_bytes: int = 512) -> Iterator[Path]:
    """Files from the sources, in a stable order, until ``limit_bytes`` are reached."""
    total = 0
    for root, patterns in SOURCES:
        if not root.exists():
            continue
        for pattern in patterns:
            for path in sorted(root.rglob(pattern)):
                if "site-packages" in path.parts or not path.is_file():
                    continue
                size = path.stat().st_size
                if size < min_bytes or size > 4_000_000:
                    continue
                try:
                    path.read_bytes().decode("utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                yield path
                total += size
                if total >= limit_bytes:
                    return
    if total < limit_bytes:
        print(f"note: only {total / 1e6:.1f} MB of corpus found", file=sys.stderr)
