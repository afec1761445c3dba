"""Wall-clock seconds, injectable so tests can move time (store expiry)."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


def system_clock() -> float:
    return time.time()
