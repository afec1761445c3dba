"""A corpus of real text from the machine's own packages, first to last:

- the Linux kernel's documentation (Debian package ``linux-doc-6.1``: ~31 MB of English
  technical prose as reStructuredText; ``make bench`` installs it from Debian's registry),
- Vim's manual (~10 MB of prose, ships with the Debian image),
- Python's standard library (~40 MB of code, docstrings and comments, ships with Python).

Real, varied, openly licensed, and installable offline from the registries this machine
reaches, unlike web-scraped corpora that would have to be downloaded at run time.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SOURCES = (
    (Path("/usr/share/doc/linux-doc-6.1/html/_sources"), ("*.txt",)),
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
        print(
            f"note: only {total / 1e6:.1f} MB of corpus found "
            "(apt-get install linux-doc-6.1 adds ~31 MB)",
            file=sys.stderr,
        )
