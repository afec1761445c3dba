"""A limit on requests in flight shared by several processes (the ingest workers): a request
holds an exclusive ``flock`` on one of N slot files while it runs. The kernel drops the lock
when its holder exits, so a worker killed mid-request (file timeout, crash) never leaks a
slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.02


class NoFreeSlot(Exception):
    """No slot came free before the deadline."""


class RequestSlots:
    def __init__(self, directory: str, count: int, name: str = "slot") -> None:
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        self.paths = [str(Path(directory) / f"{name}-{i}.lock") for i in range(count)]

    @contextlib.contextmanager
    def hold(self, deadline: float | None = None) -> Iterator[None]:
        """Holds a free slot for the ``with`` block, waiting for one (polling) as long as
        needed or until ``deadline`` (``time.monotonic()``), past which NoFreeSlot."""
        fd = self._acquire(deadline)
        try:
            yield
        finally:
            os.close(fd)  # closing the descriptor releases its lock

    def _acquire(self, deadline: float | None) -> int:
        start = os.getpid() % len(self.paths)  # spread the processes over the slots
        order = self.paths[start:] + self.paths[:start]
        while True:
            for path in order:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                except BaseException:
                    os.close(fd)
                    raise
                return fd
            if deadline is not None and time.monotonic() >= deadline:
                raise NoFreeSlot(f"no free request slot among {len(self.paths)}")
            time.sleep(POLL_S)
