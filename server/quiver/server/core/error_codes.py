"""The codes of a store file's ``last_error``: the one list ingest/ and core/ both use.

A leaf module (it imports nothing of the server), so the ingest worker processes can use
it without loading the core.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """``last_error.code`` of a failed file (the values OpenAI's API uses)."""

    INVALID_FILE = "invalid_file"
    """The file's own doing: unreadable, empty, too slow or too large to parse."""
    UNSUPPORTED_FILE = "unsupported_file"
    """A file type the server does not read."""
    SERVER_ERROR = "server_error"
    """The server's doing: embedding, storage or a worker failed, or the store went away."""
