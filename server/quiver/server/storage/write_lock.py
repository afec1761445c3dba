"""The lock every SQLite write holds: the event loop's writes go before waiting threads'."""

from __future__ import annotations

import threading


class WriteLock:
    """A mutex where an ``urgent`` acquirer (the event loop) is served as soon as the holder
    releases, before any thread that is waiting or comes back for its next slice. Without
    this, a thread writing slice after slice could take the lock again and again while the
    event loop waits (``threading.Lock`` is not fair)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._urgent = 0

    def acquire(self, urgent: bool = False) -> None:
        with self._cond:
            if urgent:
                self._urgent += 1
                try:
                    while self._held:
                        self._cond.wait()
                finally:
                    self._urgent -= 1
            else:
                while self._held or self._urgent:
                    self._cond.wait()
            self._held = True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release() of a write lock that is not held")
            self._held = False
            self._cond.notify_all()
