"""The soak's options: a profile (full or quick) and the command line's choices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    clients: int  # concurrent upload + batch loops (plus one searcher)
    files_per_batch: tuple[int, int]
    words: tuple[int, int]
    large_words: tuple[int, int]
    pause: tuple[float, float]  # between two uploads of one client
    kill_after: tuple[float, float]  # seconds of SERVING before the next kill
    startup_kill_chance: float  # a kill that hits the server while it starts (recovers)
    in_rpc_kill_chance: float  # a kill right after an RPC was sent (and as many in ingest)
    cancel_chance: float
    max_open_batches: int  # unfinished batches before the clients wait
    rpc_timeout: float
    start_timeout: float
    drain_timeout: float  # for every batch to end after the last restart
    stores: int


FULL = Profile(
    clients=3,
    files_per_batch=(1, 6),
    words=(40, 2500),
    large_words=(50_000, 250_000),
    pause=(0.05, 0.3),
    kill_after=(1.5, 6.0),
    startup_kill_chance=0.15,
    in_rpc_kill_chance=0.35,
    cancel_chance=0.08,
    max_open_batches=24,
    rpc_timeout=30.0,
    start_timeout=60.0,
    drain_timeout=240.0,
    stores=2,
)
QUICK = Profile(
    clients=2,
    files_per_batch=(1, 4),
    words=(20, 500),
    large_words=(10_000, 40_000),
    pause=(0.05, 0.2),
    kill_after=(2.0, 4.0),
    startup_kill_chance=0.2,
    in_rpc_kill_chance=0.35,
    cancel_chance=0.1,
    max_open_batches=8,
    rpc_timeout=15.0,
    start_timeout=45.0,
    drain_timeout=40.0,
    stores=2,
)


@dataclass(frozen=True)
class Options:
    kills: int
    seed: int
    quick: bool
    ingest_workers: int
    log_level: str
    index_save_interval: float
    damage_every: int
    disk_full_every: int
    disk_full_seconds: tuple[float, float]
    tmpfs_size: str
    work_dir: Path | None
    keep: bool
    timeout: float

    @property
    def profile(self) -> Profile:
        return QUICK if self.quick else FULL
