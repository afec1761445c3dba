"""How a periodic task (heartbeat, lease renewal, lease sweep) reports a failed beat."""

from __future__ import annotations

import logging

from quiver.server.storage.database import is_outage


def log_failed_beat(log: logging.Logger, what: str, exc: BaseException) -> None:
    """Call from the ``except`` that caught ``exc``; the task tries again at its next beat.
    An outage that passes by itself (a full disk, the database restarting) is a warning
    without a traceback, so it does not page anyone at every beat; anything else is an error
    with its traceback."""
    if is_outage(exc):
        log.warning("%s failed (tried again soon): %s", what, exc)
    else:
        log.exception("%s failed", what)
