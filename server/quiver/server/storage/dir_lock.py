"""One data directory, one server: an exclusive ``flock`` on ``DATA_DIR/quiver.lock``.

The lock is taken before the database is opened and held until the server stops. The
kernel drops it when the process dies however it dies (SIGKILL included), so a crash
leaves no stale lock: the file stays, but nobody holds it. The file records the holder's
pid and listen address (written after the lock is taken), for the refusal message of the
next server. The descriptor is not inheritable, so the spawned ingest workers never
hold it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "quiver.lock"


class DirectoryInUse(Exception):
    """Another process holds the data directory's lock."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        self.data_dir = data_dir
        self.holder = holder  # "pid 123, listening on 127.0.0.1:50051", or "" if unknown
        who = holder or "another process (its pid is not recorded yet)"
        super().__init__(
            f"the data directory {data_dir} is in use by {who}; "
            "stop that server first, or pass another --data-dir"
        )


class DirLock:
    """The exclusive lock of one data directory, held from ``acquire`` to ``release``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.data_dir = data_dir
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, address: str) -> None:
        """Takes the lock (without waiting) and records this pid and ``address``.

        Raises DirectoryInUse naming the holder if another process has it.
        """
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise DirectoryInUse(self.data_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.record(address)

    def record(self, address: str) -> None:
        """Rewrites the holder line, e.g. once the real port of ``host:0`` is known."""
        if self._fd is None:
            return
        line = f"{os.getpid()} {address}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, line, 0)

    def release(self) -> None:
        """Clears the holder line and drops the lock (the file stays; that is harmless)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the only descriptor releases the flock


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return ""


def _describe(content: str) -> str:
    """'pid 123, listening on 127.0.0.1:50051' from the lock file's '123 127.0.0.1:50051'."""
    pid, _, address = content.strip().partition(" ")
    if not pid.isdigit():
        return ""
    return f"pid {pid}, listening on {address}" if address else f"pid {pid}"
