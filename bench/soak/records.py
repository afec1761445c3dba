"""What the server confirmed (uploads, batches), how a check reports, and how a call ended."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from quiver.client import (
    AsyncClient,
    ChunkingStrategy,
    FileBatch,
)
from quiver.client.types import AttributeValue

# How an RPC cut by a kill can end. Any other code is the server's answer, kill or not (a
# NOT_FOUND after a restart is a lost object, not a casualty).
KILL_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
EXPECTED_ERROR = {"empty": "invalid_file", "binary": "unsupported_file"}
TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Upload:
    file_id: str
    kind: str
    filename: str
    sha256: str
    size: int
    token: str | None  # a word only this file contains (None for files that fail by design)


@dataclass
class Batch:
    batch_id: str
    request_id: str
    store_id: str
    file_ids: list[str]
    attributes: dict[str, dict[str, AttributeValue]]  # expected, per file
    chunking: dict[str, ChunkingStrategy]  # expected, per file
    created_epoch: int
    reply_lost: bool  # confirmed only by a retry with the same request id
    cancel: str = ""  # "", "confirmed", "refused" (already ended) or "lost"
    last_sequence: int = 0
    reported: dict[str, str] = field(default_factory=dict)  # file → terminal status streamed
    watched_final: FileBatch | None = None
    terminal_epoch: int | None = None
    reconnects: int = 0
    # The CreateFileBatch call as sent (same body, same request id): replayed at the end.
    create: Callable[[AsyncClient], Awaitable[FileBatch]] | None = None


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: str = ""
    warn_only: bool = False  # reported, not counted as a failure

    @property
    def passed(self) -> bool:
        return not self.problems

    def fail(self, problem: str) -> None:
        self.problems.append(problem)


class InFlight(Exception):
    """An RPC failed because the server was killed while it ran (or was down when sent)."""


class Refused(Exception):
    """A write was refused with RESOURCE_EXHAUSTED / DISK_FULL while the soak had filled the
    disk: expected, and nothing it asked for counts as confirmed."""
