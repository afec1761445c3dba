"""Crash loop: SIGKILL a real ``quiver serve`` again and again under load, then prove that
nothing an RPC reported as done was lost (DESIGN.md §5: "SIGKILL loses nothing that an RPC
reported as done").

    .venv/bin/python -m bench.soak --kills 20          # the soak (a few minutes)
    .venv/bin/python -m bench.soak --kills 3 --quick   # the short version (tests/test_soak.py)

Client tasks keep uploading mixed files (text, markdown, JSON, HTML, PDF, DOCX, and empty or
binary files that fail by design), attach them to stores in batches (with attributes, some
with static chunking, a few cancelled) and search, while a chaos task SIGKILLs the server
at random moments (``--seed``), sometimes while it is still starting up, and restarts it on
the same data directory and port. Only what the server confirmed is recorded: an
UploadFile that returned a File, a CreateFileBatch that returned a batch (a call whose reply
was lost is retried with the same ``request_id``, which must give the same batch), and
every file status a WatchFileBatch stream reported. After the last kill no new work is
created; once every batch has ended the server is stopped with SIGTERM (exit 0 expected)
and the data is checked, online and then straight from the SQLite file and index files:

(a) every confirmed upload is there, byte for byte (GetFile, DownloadFile sha256);
(b) every confirmed batch ended, its file_counts add up and match ListFileBatchFiles, the
    attributes and chunking sent are kept, retried request ids give the same batch, no
    status a watch stream reported was taken back, and no batch exists that was not asked for;
(c) every completed file has its chunks exactly once (0..n-1, no duplicates, none for
    unfinished files), each store's saved hnswlib index holds exactly the store's chunk ids,
    and a search for the file's unique token finds it;
(d) ``PRAGMA integrity_check`` is ok (plus the FTS5 index and foreign keys);
(e) failed files failed for the expected reason (empty → invalid_file, binary →
    unsupported_file); ``server_error`` only for a file whose batch lived through a kill,
    and then it is listed, not hidden;
plus: no RPC failed except while the server was killed, SIGTERM exits 0, and a clean
restart afterwards reconciles nothing, and no process of a killed server (its ingest
workers) outlives it: they die with it (PR_SET_PDEATHSIG).

The server runs with ``--index-save-interval 2`` (``--index-save-interval``), so kills land
before, during and after index saves, not only on indexes never saved.

After every third kill (``--damage-every``) one saved index is damaged while the server is
down, as a failing disk could: neighbour ids pointed out of range (this used to segfault the
first search), 4 KB of random bytes, a truncated file, or its checksum sidecar removed. The
restart must refuse it before hnswlib reads it and rebuild it from SQLite; checks (c) then
find every chunk in the saved index and every file by search.

Before every third kill (``--disk-full-every``) the disk fills up for a few seconds while
the load runs: the data dir lives on its own small tmpfs (``--tmpfs-size``, mounted when the
soak runs as root; otherwise the fault is skipped and the summary says why), and a ballast
file (``bench/tmpfs.py``) leaves 256 KiB free, filled just after a CreateFileBatch was sent.
Meanwhile writes must be refused with RESOURCE_EXHAUSTED / DISK_FULL (expected, and a
refused upload or batch is never counted as confirmed; a refused batch is asked again with
the same request id), ingest commits are retried, and once the ballast is gone everything
completes: the checks above hold as for kills, and any other failure is unexpected.

Prints a summary with PASS/FAIL per check; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import grpc
import numpy as np
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quiver.client import (
    AsyncClient,
    BatchFile,
    BatchUpdate,
    ChunkingStrategy,
    FailedPreconditionError,
    FileBatch,
    QuiverError,
    SearchResponse,
    VectorStore,
    VectorStoreFile,
)
from quiver.client.types import AttributeValue
from quiver.server.index import integrity
from quiver.server.index.hnsw import VectorIndex

from bench import tmpfs
from bench.serverproc import free_port
from tests.docgen import make_docx, make_pdf

T = TypeVar("T")

VALID_KINDS = ("text", "large", "markdown", "json", "html", "pdf", "docx")
KIND_WEIGHTS = {
    "text": 22,
    "large": 4,  # a long text file: its upload and processing take a while, so kills hit them
    "markdown": 12,
    "json": 12,
    "html": 12,
    "pdf": 10,
    "docx": 10,
    "empty": 7,
    "binary": 13,
}
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
AUTO_AS_STORED = ChunkingStrategy.static(800, 400)  # what a file attached with "auto" shows
CHUNKINGS: tuple[ChunkingStrategy | None, ...] = (
    None,
    ChunkingStrategy(),
    ChunkingStrategy.static(200, 50),
    ChunkingStrategy.static(400, 100),
)
_VOCABULARY = (
    "vector store batch watch stream index chunk token embed search filter rank fusion phrase "
    "keyword hnsw sqlite durable restart crash recover tenant upload download harbour river "
    "mountain lantern copper meadow orchard violet thunder glacier canyon falcon willow amber "
    "quartz saffron compass anchor beacon cobalt ember fjord granite harvest island jasmine "
    "kestrel lagoon marble nectar oasis pepper quiver raven summit tundra umber valley walnut "
    "yarrow zephyr almond basalt cedar delta eclipse fennel garnet hollow indigo juniper kelp "
    "lichen mosaic nimbus opal prairie quill reef sierra thistle urchin vellum wharf"
)
WORDS = _VOCABULARY.split()


# -- options --------------------------------------------------------------------------------------


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


# -- what the server confirmed --------------------------------------------------------------------


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


DISK_FULL_LEAVE = 256 * 1024  # bytes left free while the disk is "full"


class Disk:
    """The data dir's own small tmpfs, filled with a ballast file now and then."""

    def __init__(self, data_dir: Path, mounted: bool, why_not: str = "") -> None:
        self.data_dir = data_dir
        self.mounted = mounted
        self.why_not = why_not
        self.full = False  # the ballast is in place
        self.fills = 0  # episodes started
        self.free = asyncio.Event()
        self.free.set()
        self.events: list[str] = []
        self.peak_used = 0  # bytes the data dir's filesystem held, ballast not counted

    def note_usage(self) -> None:
        if self.mounted and not self.full:
            stat = os.statvfs(self.data_dir)
            used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
            self.peak_used = max(self.peak_used, used)

    def expects_refusal(self, fills_at_send: int, full_at_send: bool) -> bool:
        """Whether a DISK_FULL answer fits: the disk was full when the RPC was sent, is full
        now, or was filled while it ran."""
        return full_at_send or self.full or self.fills != fills_at_send

    async def fill_for(self, seconds: float) -> tuple[float, int]:
        """Fills the disk to ``DISK_FULL_LEAVE`` free bytes, holds it ``seconds``, frees it;
        returns (seconds it took to fill, ballast bytes)."""
        self.note_usage()
        started = time.monotonic()
        self.fills += 1
        self.full = True
        self.free.clear()
        ballast = self.data_dir / "ballast"
        try:
            await asyncio.to_thread(tmpfs.fill, self.data_dir, DISK_FULL_LEAVE)
            filled_in = time.monotonic() - started
            size = ballast.stat().st_size
            await asyncio.sleep(seconds)
        finally:
            ballast.unlink(missing_ok=True)
            self.full = False
            self.free.set()
        return filled_in, size


# -- the server process ---------------------------------------------------------------------------


class ServerLoop:
    """``quiver serve`` on one port and data dir, started, SIGKILLed and restarted."""

    def __init__(self, options: Options, run_dir: Path, disk: Disk) -> None:
        self.options = options
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.data_dir = disk.data_dir
        self.disk = disk
        self.log_path = run_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.starts = 0
        self.epoch = 0  # bumped just before every kill
        self.up = asyncio.Event()
        self.serving_times: list[float] = []
        self.per_start: list[str] = []  # seconds to SERVING, or "killed", by start
        self.kills: list[str] = []  # one line per kill
        self._left_behind: list[dict[int, Member]] = []  # what each kill left alive
        self.orphans: list[str] = []
        self._all: list[subprocess.Popen[bytes]] = []
        self._log: IO[bytes] | None = None
        self._reapers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.write(f"--- soak: start #{self.starts} ---\n".encode())
        self._log.flush()
        command = [sys.executable, "-m", "quiver.client.cli", "serve"]
        command += ["--listen", self.target, "--data-dir", str(self.data_dir)]
        command += ["--ingest-workers", str(self.options.ingest_workers)]
        command += ["--log-level", self.options.log_level]
        command += ["--index-save-interval", str(self.options.index_save_interval)]
        # A killed server's files are taken up once their job leases expire: keep them short.
        command += ["--job-lease-seconds", "2", "--job-renew-seconds", "0.5"]
        self.started = time.monotonic()
        # Its own session: the ingest workers share its process group, so whatever of it
        # survives a kill can be found (and reaped) by that group id.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self._all.append(self.process)

    async def wait_serving(self, timeout: float) -> float:
        """Waits until health says SERVING; returns the seconds since ``start``."""
        process = self.process
        assert process is not None
        if self.up.is_set():
            return 0.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"quiver serve exited with {process.returncode} while starting; "
                    f"see {self.log_path}"
                )
            # A channel per attempt: one kept across attempts would wait out gRPC's
            # reconnect backoff (1 s and more) and make the start look slower than it is.
            async with aio.insecure_channel(self.target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                except aio.AioRpcError:
                    reply = None
            if reply is not None and reply.status == health_pb2.HealthCheckResponse.SERVING:
                seconds = time.monotonic() - self.started
                self.serving_times.append(seconds)
                self.per_start.append(f"{seconds:.2f}")
                self.up.set()
                return seconds
            await asyncio.sleep(0.05)
        raise TimeoutError(f"quiver serve on {self.target} was not SERVING after {timeout:g} s")

    async def kill(self, why: str, in_flight: int, open_batches: int) -> None:
        process = self.process
        assert process is not None
        self.epoch += 1
        if not self.up.is_set():
            self.per_start.append("killed")
        self.up.clear()
        age = time.monotonic() - self.started
        group = _group_members(process.pid)  # while the leader lives the group is surely ours
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)
        group.update(_group_members(process.pid))  # workers it spawned meanwhile
        group.pop(process.pid, None)
        self.kills.append(
            f"kill {len(self.kills) + 1}: {why}, {age:.2f} s after start, "
            f"{in_flight} RPCs in flight, {open_batches} batches unfinished"
        )
        self._left_behind.append(group)
        self._reapers.append(asyncio.create_task(self._reap(group, len(self.kills))))

    async def _reap(self, group: dict[int, Member], kill: int) -> None:
        """Records processes of a killed server that outlive it (its ingest workers), then
        kills them: they would otherwise pile up over the soak."""
        await asyncio.sleep(3.0)
        alive = [f"{pid} ({m.name})" for pid, m in group.items() if _same_process(pid, m)]
        if alive:
            self.orphans.append(
                f"kill {kill}: {len(alive)} process(es) of the killed server still alive 3 s "
                f"later: {', '.join(alive)}"
            )
        _kill_members(group)

    async def wait_reapers(self) -> None:
        if self._reapers:
            await asyncio.wait(self._reapers, timeout=10)

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM; the exit code, or None when it had to be killed after ``timeout``."""
        process = self.process
        assert process is not None
        self.epoch += 1  # a new server life: clients open new channels
        self.up.clear()
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            self._kill_now(process)
            return None

    def _kill_now(self, process: subprocess.Popen[bytes]) -> None:
        group = _group_members(process.pid)
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        _kill_members(group)

    def kill_everything(self) -> None:
        """Every process this soak started and what was left of them, by pid (each checked
        by its start time, so a reused pid is never hit)."""
        for process in self._all:
            if process.poll() is None:
                self._kill_now(process)
        for task in self._reapers:
            task.cancel()
        for group in self._left_behind:
            _kill_members(group)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(frozen=True)
class Member:
    name: str
    started: int  # clock ticks after boot (/proc/PID/stat field 22): tells a reused pid apart


def _stat(pid: int) -> tuple[str, str, int, int] | None:
    """(name, state, process group, start time) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, fields[0], int(fields[2]), int(fields[19])


def _group_members(group: int) -> dict[int, Member]:
    """Live (non-zombie) processes in process group ``group``."""
    members: dict[int, Member] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] != "Z" and stat[2] == group:
                members[int(entry.name)] = Member(stat[0], stat[3])
    return members


def _same_process(pid: int, member: Member) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z" and stat[3] == member.started


def _kill_members(group: dict[int, Member]) -> None:
    for pid, member in group.items():
        if _same_process(pid, member):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# -- documents ------------------------------------------------------------------------------------


def _as_stored(strategy: ChunkingStrategy | None) -> ChunkingStrategy:
    """The chunking a store file reports: "auto" (or none) is shown as static 800/400."""
    return AUTO_AS_STORED if strategy is None or strategy.type == "auto" else strategy


def _words(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(count)]


def _with_token(rng: random.Random, words: list[str], token: str) -> list[str]:
    out = list(words)
    out.insert(rng.randrange(len(out) + 1), token)
    return out


def _lines(words: list[str], per_line: int) -> list[str]:
    return [" ".join(words[i : i + per_line]) for i in range(0, len(words), per_line)]


_MAX_WORDS = {"pdf": 600, "docx": 800}  # small documents


def make_document(rng: random.Random, kind: str, n: int, words: int) -> tuple[str, bytes, str]:
    """(filename, bytes, token) of a document of ``kind``; the token is a word no other
    document has (for the kinds that fail by design it is not in the bytes)."""
    token = f"tok{rng.getrandbits(128):032x}"
    words = min(words, _MAX_WORDS.get(kind, words))  # before the token goes in: it stays
    body = _with_token(rng, _words(rng, words), token)
    if kind in ("text", "large"):
        return f"notes-{n}.txt", "\n".join(_lines(body, 12)).encode(), token
    if kind == "markdown":
        lines = [f"# Field notes {n}", "", *(f"- {line}" for line in _lines(body, 10))]
        lines += ["", "```", "print('hello')", "```"]
        return f"notes-{n}.md", "\n".join(lines).encode(), token
    if kind == "json":
        record = {"id": n, "title": " ".join(body[:5]), "lines": _lines(body, 8), "ok": True}
        return f"record-{n}.json", json.dumps(record, indent=1).encode(), token
    if kind == "html":
        paragraphs = "".join(f"<p>{line}</p>\n" for line in _lines(body, 15))
        page = (
            f"<!doctype html><html><head><title>page {n}</title><style>p {{margin: 0}}</style>"
            f"</head><body><h1>Page {n}</h1>\n{paragraphs}<script>var x = 1;</script>"
            "</body></html>"
        )
        return f"page-{n}.html", page.encode(), token
    if kind == "pdf":
        return f"report-{n}.pdf", make_pdf(_lines(body, 10)), token
    if kind == "docx":
        table = [[rng.choice(WORDS), rng.choice(WORDS)] for _ in range(3)]
        return f"memo-{n}.docx", make_docx(_lines(body, 30), table), token
    if kind == "empty":
        return f"empty-{n}.txt", b"", token
    if kind == "binary":
        size = rng.randint(256, 8192)
        if rng.random() < 0.5:
            return f"image-{n}.png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(size), token
        return f"blob-{n}.bin", b"\x00\x01\x02\x03" + rng.randbytes(size), token
    raise ValueError(f"unknown kind {kind!r}")


# -- the load, and the chaos ----------------------------------------------------------------------


class Soak:
    def __init__(self, options: Options, server: ServerLoop) -> None:
        self.options = options
        self.profile = options.profile
        self.server = server
        self.stores: dict[str, int] = {}  # id → embedding dimensions
        self.uploads: dict[str, Upload] = {}
        self.batches: dict[str, Batch] = {}  # by batch id
        self.sent_request_ids: set[str] = set()
        self.given_up: list[str] = []  # request ids never confirmed
        self.lost_uploads: Counter[str] = Counter()  # by kind
        self.cut: Counter[str] = Counter()  # "Method CODE" of RPCs cut by a kill
        self.unexpected: list[str] = []
        self.refused: Counter[str] = Counter()  # by method: DISK_FULL while the disk was full
        self.disk = server.disk
        self.stream_problems: list[str] = []
        self.idempotency: list[str] = []  # mismatches
        self.idempotency_ok = 0
        self.searches = 0
        self.in_flight = 0
        self.rpc_sent = asyncio.Event()
        self.awaited: str | None = None  # the RPC the chaos task waits for ("" any)
        self.sent = ""  # the one that came
        self.stop_work = asyncio.Event()
        self.watchers: list[asyncio.Task[None]] = []
        self._clients: list[AsyncClient] = []
        self._client_lock = asyncio.Lock()
        self._client_epoch = -1
        self._documents = 0

    # -- calls --------------------------------------------------------------------------------

    async def client(self) -> AsyncClient:
        """The client of this server life, made once the server is SERVING (raises InFlight
        when it is not). A new life gets a new channel, and the old channels are closed
        first: gRPC shares connections (subchannels) between channels to the same target,
        so an old channel left open would hand the new one its reconnect backoff and its
        stale "connection refused"."""
        async with self._client_lock:
            if not self.server.up.is_set():
                raise InFlight("the server is not up")
            if self._client_epoch != self.server.epoch or not self._clients:
                await self.close_clients()  # their calls failed with the server they used
                self._clients.append(
                    AsyncClient(
                        target=self.server.target, timeout=self.profile.rpc_timeout, max_retries=0
                    )
                )
                self._client_epoch = self.server.epoch
            return self._clients[-1]

    async def close_clients(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()

    async def wait_up(self) -> None:
        await asyncio.wait_for(self.server.up.wait(), self.profile.start_timeout * 3)

    async def call(
        self,
        method: str,
        fn: Callable[[AsyncClient], Awaitable[T]],
        expected: tuple[type[QuiverError], ...] = (),
    ) -> T:
        """Runs one RPC. A failure while the server was killed (or not up when it was sent)
        raises InFlight; any other failure is re-raised, and recorded as unexpected unless
        it is one of ``expected``."""
        epoch, up = self.server.epoch, self.server.up.is_set()
        fills, full = self.disk.fills, self.disk.full
        if not up:
            self.cut[f"{method} (not sent: server down)"] += 1
            raise InFlight(method)
        self.in_flight += 1
        if self.awaited is not None and self.awaited in ("", method):
            self.awaited, self.sent = None, method
            self.rpc_sent.set()
        try:
            return await fn(await self.client())
        except QuiverError as exc:
            if epoch != self.server.epoch and exc.code in KILL_CODES:
                self.cut[f"{method} {exc.code.name}"] += 1
                raise InFlight(method) from exc
            if self.disk_full_refusal(exc, fills, full):
                self.refused[method] += 1
                raise Refused(method) from exc
            if not isinstance(exc, expected):
                self.unexpected.append(f"{method}: {exc}")
            raise
        finally:
            self.in_flight -= 1

    def disk_full_refusal(self, exc: QuiverError, fills: int, full: bool) -> bool:
        return (
            exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and exc.reason == "DISK_FULL"
            and self.disk.expects_refusal(fills, full)
        )

    # -- client loops ---------------------------------------------------------------------------

    async def create_stores(self) -> None:
        for i in range(self.profile.stores):

            def create(c: AsyncClient, i: int = i) -> Awaitable[VectorStore]:
                return c.vector_stores.create(
                    name=f"soak-{i}", metadata={"soak": "1"}, embedding_dimensions=512 >> (i % 2)
                )

            store = await self.call("CreateVectorStore", create)
            self.stores[store.id] = store.embedding_dimensions

    def open_batches(self) -> int:
        return sum(1 for b in self.batches.values() if b.watched_final is None)

    async def client_loop(self, n: int) -> None:
        rng = random.Random(f"{self.options.seed}-client-{n}")
        while not self.stop_work.is_set():
            while self.open_batches() >= self.profile.max_open_batches:
                if self.stop_work.is_set():
                    return
                await asyncio.sleep(0.2)
            uploaded: list[Upload] = []
            for _ in range(rng.randint(*self.profile.files_per_batch)):
                if self.stop_work.is_set():
                    break
                upload = await self.upload_one(rng)
                if upload is not None:
                    uploaded.append(upload)
                await asyncio.sleep(rng.uniform(*self.profile.pause))
            if uploaded and not self.stop_work.is_set():
                batch = await self.create_batch(rng, n, uploaded)
                if batch is not None:
                    self.watchers.append(asyncio.create_task(self.watch(batch)))
                    if rng.random() < self.profile.cancel_chance:
                        await asyncio.sleep(rng.uniform(0.0, 0.05))
                        await self.cancel(batch)
            await asyncio.sleep(rng.uniform(*self.profile.pause))

    async def upload_one(self, rng: random.Random) -> Upload | None:
        self._documents += 1
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        words = self.profile.large_words if kind == "large" else self.profile.words
        name, data, token = make_document(rng, kind, self._documents, rng.randint(*words))
        digest = hashlib.sha256(data).hexdigest()
        await self.wait_up()
        try:
            file = await self.call("UploadFile", lambda c: c.files.upload((name, data)))
        except InFlight:
            self.lost_uploads[kind] += 1
            return None
        except Refused:
            return None  # never confirmed, so never counted
        except QuiverError:
            return None  # recorded as unexpected
        if file.bytes != len(data) or file.sha256 != digest or file.filename != name:
            self.unexpected.append(
                f"UploadFile {name}: answered bytes={file.bytes} sha256={file.sha256[:12]} "
                f"filename={file.filename!r}, sent {len(data)} bytes sha256={digest[:12]}"
            )
        upload = Upload(
            file.id, kind, name, digest, len(data), token if kind in VALID_KINDS else None
        )
        self.uploads[file.id] = upload
        return upload

    async def create_batch(self, rng: random.Random, n: int, uploads: list[Upload]) -> Batch | None:
        store_id = rng.choice(sorted(self.stores))
        tag = f"c{n}-{rng.getrandbits(48):012x}"
        request_id = f"soak-{tag}"
        chunking = rng.choice(CHUNKINGS)
        attributes: dict[str, dict[str, AttributeValue]] = {}
        chunkings: dict[str, ChunkingStrategy] = {}
        specs: list[BatchFile] | None = None
        batch_attributes: dict[str, AttributeValue] | None = None
        if rng.random() < 0.5:  # file_ids with batch-level attributes and chunking
            batch_attributes = {"soak_batch": tag, "soak_client": n, "soak_even": n % 2 == 0}
            for u in uploads:
                attributes[u.file_id] = dict(batch_attributes)
                chunkings[u.file_id] = _as_stored(chunking)
        else:  # files, each with its own
            specs = []
            for i, u in enumerate(uploads):
                own: dict[str, AttributeValue] = {"soak_batch": tag, "soak_kind": u.kind, "i": i}
                strategy = rng.choice(CHUNKINGS)
                specs.append(BatchFile(u.file_id, attributes=own, chunking_strategy=strategy))
                attributes[u.file_id] = own
                chunkings[u.file_id] = _as_stored(strategy)
        file_ids = [u.file_id for u in uploads]

        def create(c: AsyncClient) -> Awaitable[FileBatch]:
            return c.vector_stores.file_batches.create(
                vector_store_id=store_id,
                file_ids=file_ids if specs is None else None,
                files=specs,
                attributes=batch_attributes,
                chunking_strategy=chunking if specs is None else None,
                request_id=request_id,
            )

        self.sent_request_ids.add(request_id)
        lost = False
        first_epoch: int | None = None  # the batch may date from the first attempt
        for _ in range(30):
            await self.wait_up()
            if first_epoch is None:
                first_epoch = self.server.epoch
            try:
                created = await self.call("CreateFileBatch", create)
                break
            except InFlight:
                lost = True  # the reply was lost: retry with the same request id
            except Refused:  # not created: the same request once the disk has room again
                await self.disk.free.wait()
                await asyncio.sleep(0.2)
            except QuiverError:
                self.given_up.append(request_id)
                return None
        else:
            self.given_up.append(request_id)
            return None
        batch = Batch(
            batch_id=created.id,
            request_id=request_id,
            store_id=store_id,
            file_ids=file_ids,
            attributes=attributes,
            chunking=chunkings,
            created_epoch=first_epoch if first_epoch is not None else self.server.epoch,
            reply_lost=lost,
            create=create,
        )
        if created.id in self.batches:
            self.idempotency.append(f"{request_id}: a new request gave existing {created.id}")
        self.batches[created.id] = batch
        if lost:  # the same request id once more: the same batch again
            await self.check_same_batch(batch, create)
        return batch

    async def check_same_batch(
        self, batch: Batch, create: Callable[[AsyncClient], Awaitable[FileBatch]]
    ) -> None:
        for _ in range(30):
            await self.wait_up()
            try:
                again = await self.call("CreateFileBatch", create)
            except InFlight:
                continue
            except Refused:
                await self.disk.free.wait()
                continue
            except QuiverError as exc:
                self.idempotency.append(f"{batch.request_id}: the retry failed: {exc}")
                return
            if again.id == batch.batch_id:
                self.idempotency_ok += 1
            else:
                self.idempotency.append(
                    f"{batch.request_id}: gave {batch.batch_id}, then {again.id}"
                )
            return

    async def cancel(self, batch: Batch) -> None:
        await self.wait_up()
        try:
            await self.call(
                "CancelFileBatch",
                lambda c: c.vector_stores.file_batches.cancel(
                    batch.batch_id, vector_store_id=batch.store_id
                ),
                expected=(FailedPreconditionError,),  # the batch has already ended
            )
            batch.cancel = "confirmed"
        except InFlight:
            batch.cancel = "lost"
        except Refused:
            batch.cancel = "disk-full"  # refused: the batch must not end cancelled
        except FailedPreconditionError:
            batch.cancel = "refused"
        except QuiverError:
            batch.cancel = "lost"

    async def watch(self, batch: Batch) -> None:
        """Follows the batch to its end across kills, resuming after the last sequence."""
        failures = 0
        while failures < 5:
            await self.wait_up()
            epoch = self.server.epoch
            fills, full = self.disk.fills, self.disk.full
            try:
                client = await self.client()
                async for update in client.vector_stores.file_batches.watch(
                    batch.batch_id,
                    vector_store_id=batch.store_id,
                    after_sequence=batch.last_sequence,
                ):
                    self.on_update(batch, update)
                    if update.batch.done:
                        batch.terminal_epoch = self.server.epoch
                        return
                self.stream_problems.append(
                    f"{batch.batch_id}: WatchFileBatch ended OK without a terminal message"
                )
                return
            except InFlight:
                continue
            except QuiverError as exc:
                if epoch != self.server.epoch and exc.code in KILL_CODES:
                    batch.reconnects += 1
                    self.cut[f"WatchFileBatch {exc.code.name}"] += 1
                    continue
                if self.disk_full_refusal(exc, fills, full):
                    self.refused["WatchFileBatch"] += 1
                    await self.disk.free.wait()
                    continue
                self.unexpected.append(f"WatchFileBatch {batch.batch_id}: {exc}")
                failures += 1
                await asyncio.sleep(0.5)

    def on_update(self, batch: Batch, update: BatchUpdate) -> None:
        where = f"{batch.batch_id} seq {update.sequence}"
        if update.snapshot and update.sequence < batch.last_sequence:
            self.stream_problems.append(
                f"{where}: snapshot older than the change {batch.last_sequence} already seen"
            )
        if not update.snapshot and update.sequence <= batch.last_sequence:
            self.stream_problems.append(f"{where}: change after {batch.last_sequence} sent again")
        batch.last_sequence = max(batch.last_sequence, update.sequence)
        for f in update.files:
            before = batch.reported.get(f.file_id)
            if before is not None and before != f.status:
                self.stream_problems.append(
                    f"{where}: {f.file_id} was reported {before}, now {f.status}"
                )
            if f.status in TERMINAL:
                batch.reported[f.file_id] = f.status
        if batch.watched_final is not None and not update.batch.done:
            self.stream_problems.append(
                f"{where}: batch was reported {batch.watched_final.status}, now in_progress"
            )
        if update.batch.done:
            batch.watched_final = update.batch

    async def search_loop(self) -> None:
        rng = random.Random(f"{self.options.seed}-search")
        while not self.stop_work.is_set():
            await self.wait_up()
            store_id = rng.choice(sorted(self.stores))
            tokens = [u.token for u in self.uploads.values() if u.token]
            query = (
                rng.choice(tokens)
                if tokens and rng.random() < 0.5
                else " ".join(_words(rng, rng.randint(1, 5)))
            )
            filters: dict[str, object] | None = (
                {"type": "eq", "key": "soak_even", "value": True} if rng.random() < 0.2 else None
            )

            def search(
                c: AsyncClient,
                store_id: str = store_id,
                query: str = query,
                filters: dict[str, object] | None = filters,
            ) -> Awaitable[SearchResponse]:
                return c.vector_stores.search(
                    store_id, query=query, max_num_results=10, filters=filters
                )

            with contextlib.suppress(InFlight, Refused, QuiverError):
                await self.call("SearchVectorStore", search)
                self.searches += 1
            await asyncio.sleep(rng.uniform(0.05, 0.3))

    async def unfinished_batch(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_batches():
                return True
            await asyncio.sleep(0.005)
        return False

    async def next_rpc(self, method: str, timeout: float) -> str | None:
        """Waits until an RPC (``method``, or any when empty) is sent; returns its name,
        or None after ``timeout``."""
        self.rpc_sent.clear()
        self.awaited = method
        try:
            await asyncio.wait_for(self.rpc_sent.wait(), timeout)
        except TimeoutError:
            return None
        finally:
            self.awaited = None
        return self.sent

    async def chaos(self) -> None:
        """``kills`` SIGKILLs at random moments; returns with the server SERVING again."""
        rng = random.Random(f"{self.options.seed}-chaos")
        damage_rng = random.Random(f"{self.options.seed}-damage")  # kill times stay as they were
        disk_rng = random.Random(f"{self.options.seed}-disk")
        every_full = self.options.disk_full_every if self.disk.mounted else 0
        for i in range(self.options.kills):
            disk_full = bool(every_full) and (i + 1) % every_full == 0
            if i > 0 and rng.random() < self.profile.startup_kill_chance and not disk_full:
                await asyncio.sleep(rng.uniform(0.05, 1.0))  # after the previous start
                moment = "during start-up"
            else:
                await self.server.wait_serving(self.profile.start_timeout)
                if disk_full:
                    await self.disk_full_episode(disk_rng, i + 1)
                await asyncio.sleep(rng.uniform(*self.profile.kill_after))
                moment = await self.pick_moment(rng)
            self.disk.note_usage()
            await self.server.kill(moment, self.in_flight, self.open_batches())
            every = self.options.damage_every
            if every and (i + 1) % every == 0:
                self.server.kills[-1] += "; then " + damage_an_index(
                    damage_rng, self.server.data_dir / "indexes"
                )
            self.server.start()
        await self.server.wait_serving(self.profile.start_timeout)

    async def disk_full_episode(self, rng: random.Random, kill: int) -> None:
        """Fills the disk for a few seconds while the load runs, then gives the space back.
        It fills just after a CreateFileBatch was sent (when one comes within 5 s), so that
        batch's files are processed, and their commits retried, on the full disk."""
        await self.next_rpc("CreateFileBatch", timeout=5.0)
        await asyncio.sleep(rng.uniform(0.02, 0.2))
        refused_before = sum(self.refused.values())
        seconds = rng.uniform(*self.options.disk_full_seconds)
        open_batches = self.open_batches()
        filled_in, ballast = await self.disk.fill_for(seconds)
        self.disk.events.append(
            f"before kill {kill}: disk full ({ballast / 2**20:.1f} MiB ballast, filled in "
            f"{filled_in:.2f} s, {DISK_FULL_LEAVE // 1024} KiB left) for {seconds:.1f} s, "
            f"{open_batches} batches unfinished; "
            f"{sum(self.refused.values()) - refused_before} RPCs refused with DISK_FULL"
        )

    async def pick_moment(self, rng: random.Random) -> str:
        """Sometimes waits for a sharper moment to kill at; says which one it was."""
        target = rng.random()
        chance = self.profile.in_rpc_kill_chance
        if target < chance:
            # Right after an RPC went out: its reply is likely lost, and the work behind it
            # may or may not be committed.
            method = rng.choice(("UploadFile", "CreateFileBatch", "CancelFileBatch", ""))
            sent = await self.next_rpc(method, timeout=5.0)
            if sent is not None:
                await asyncio.sleep(rng.uniform(0.0, 0.003))
                return f"just after a {sent} was sent"
        elif target < 2 * chance and await self.unfinished_batch(timeout=5.0):
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            return "while batches were processed"
        return "serving"


# -- index damage ---------------------------------------------------------------------------------

INDEX_DAMAGE = ("neighbour-ids", "random-4k", "truncated", "no-sidecar")


def damage_an_index(rng: random.Random, indexes: Path) -> str:
    """Damages one saved index while the server is down, as a disk could: the next start must
    refuse it before hnswlib reads it (damaged links used to segfault the first search) and
    rebuild it from SQLite; the end checks then find every chunk in it and every file."""
    saved = sorted(indexes.glob("*.hnsw")) if indexes.exists() else []
    if not saved:
        return "no index saved yet to damage"
    path = rng.choice(saved)
    how = rng.choice(INDEX_DAMAGE)
    data = bytearray(path.read_bytes())
    if how == "neighbour-ids" and len(data) >= integrity.HEADER.size:
        count, per_element = integrity.HEADER.unpack_from(data)[2:4]
        for element in range(count):
            base = integrity.HEADER.size + element * per_element
            links = int.from_bytes(data[base : base + 2], "little")
            for j in range(min(links, 64)):
                at = base + 4 + 4 * j
                data[at : at + 4] = (0x7FFFFFF0 ^ j).to_bytes(4, "little")
        path.write_bytes(bytes(data))
    elif how == "random-4k":
        path.write_bytes(rng.randbytes(4096))
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        integrity.sidecar_path(path).unlink(missing_ok=True)
    return f"damaged index {path.name} ({how})"


# -- checks ---------------------------------------------------------------------------------------


async def gather_limited(limit: int, coros: Iterable[Awaitable[None]]) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[None]) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


async def check_uploads(soak: Soak) -> Check:
    check = Check("(a) every confirmed upload is kept, byte for byte")
    client = await soak.client()

    async def one(upload: Upload) -> None:
        try:
            file = await client.files.retrieve(upload.file_id)
            data = await client.files.content(upload.file_id, timeout=soak.profile.rpc_timeout)
        except QuiverError as exc:
            check.fail(f"{upload.file_id} ({upload.filename}): {exc}")
            return
        if (file.bytes, file.sha256, file.filename) != (
            upload.size,
            upload.sha256,
            upload.filename,
        ):
            check.fail(f"{upload.file_id}: GetFile says {file.bytes} bytes {file.sha256[:12]}")
        if hashlib.sha256(data).hexdigest() != upload.sha256:
            check.fail(f"{upload.file_id} ({upload.filename}): downloaded bytes differ")

    await gather_limited(8, (one(u) for u in soak.uploads.values()))
    lost = sum(soak.lost_uploads.values())
    check.summary = (
        f"{len(soak.uploads) - len(check.problems)}/{len(soak.uploads)} intact "
        f"({lost} uploads cut by kills were not counted)"
    )
    return check


@dataclass
class Listed:
    """What the server says about one batch at the end."""

    batch: FileBatch
    files: dict[str, VectorStoreFile]


async def list_batches(soak: Soak, check: Check) -> dict[str, Listed]:
    client = await soak.client()
    out: dict[str, Listed] = {}

    async def one(b: Batch) -> None:
        try:
            got = await client.vector_stores.file_batches.retrieve(
                b.batch_id, vector_store_id=b.store_id
            )
            files = {
                f.id: f
                async for f in client.vector_stores.file_batches.list_files(
                    b.batch_id, vector_store_id=b.store_id
                )
            }
        except QuiverError as exc:
            check.fail(f"{b.batch_id}: {exc}")
            return
        out[b.batch_id] = Listed(got, files)

    await gather_limited(8, (one(b) for b in soak.batches.values()))
    return out


def check_batches(soak: Soak, listed: dict[str, Listed], check: Check) -> None:
    for b in soak.batches.values():
        entry = listed.get(b.batch_id)
        if entry is None:
            continue
        got, files, counts = entry.batch, entry.files, entry.batch.file_counts
        where = f"{b.batch_id} ({b.request_id})"
        if got.status == "in_progress":
            check.fail(f"{where}: still in_progress after the drain")
        if (
            counts.in_progress
            or counts.total != counts.completed + counts.failed + counts.cancelled
        ):
            check.fail(f"{where}: file_counts do not add up: {counts}")
        if counts.total != len(b.file_ids):
            check.fail(f"{where}: total {counts.total}, the batch had {len(b.file_ids)} files")
        if set(files) != set(b.file_ids):
            check.fail(f"{where}: ListFileBatchFiles gave {sorted(files)}, sent {b.file_ids}")
        statuses = Counter(f.status for f in files.values())
        listed_counts = (statuses["completed"], statuses["failed"], statuses["cancelled"])
        if listed_counts != (counts.completed, counts.failed, counts.cancelled):
            check.fail(f"{where}: file_counts {counts} but ListFileBatchFiles has {statuses}")
        for file_id, f in files.items():
            if file_id in b.attributes and f.attributes != b.attributes[file_id]:
                check.fail(
                    f"{where}: {file_id} attributes {f.attributes} != {b.attributes[file_id]}"
                )
            if file_id in b.chunking and f.chunking_strategy != b.chunking[file_id]:
                check.fail(
                    f"{where}: {file_id} chunking {f.chunking_strategy} != {b.chunking[file_id]}"
                )
            reported = b.reported.get(file_id)
            if reported is not None and reported != f.status:
                check.fail(f"{where}: {file_id} was streamed as {reported}, is now {f.status}")
        if b.watched_final is not None and b.watched_final.status != got.status:
            check.fail(f"{where}: streamed as {b.watched_final.status}, is now {got.status}")
        cancelled = got.status == "cancelled" or statuses["cancelled"] > 0
        if b.cancel == "confirmed" and got.status != "cancelled":
            check.fail(f"{where}: CancelFileBatch succeeded but the batch ended {got.status}")
        if cancelled and b.cancel not in ("confirmed", "lost"):
            check.fail(f"{where}: cancelled ({got.status}, {statuses}) but no cancel was asked")
    for problem in soak.stream_problems:
        check.fail(f"WatchFileBatch: {problem}")
    for problem in soak.idempotency:
        check.fail(f"request_id: {problem}")


async def check_store_counts(soak: Soak, listed: dict[str, Listed], check: Check) -> None:
    client = await soak.client()
    for store_id in soak.stores:
        expected: Counter[str] = Counter()
        for b in soak.batches.values():
            if b.store_id == store_id and b.batch_id in listed:
                expected.update(f.status for f in listed[b.batch_id].files.values())
        store = await client.vector_stores.retrieve(store_id)
        counts = store.file_counts
        have = (counts.completed, counts.failed, counts.cancelled, counts.in_progress)
        want = (expected["completed"], expected["failed"], expected["cancelled"], 0)
        if have != want:
            check.fail(f"store {store_id}: file_counts {counts}, its batches' files give {want}")


async def replay_request_ids(soak: Soak, check: Check) -> None:
    """Every batch's CreateFileBatch once more, the same body with the same request id (a
    different body is refused with ALREADY_EXISTS): the same batch."""
    client = await soak.client()

    async def one(b: Batch) -> None:
        assert b.create is not None
        try:
            again = await b.create(client)
        except QuiverError as exc:
            check.fail(f"{b.request_id}: replaying CreateFileBatch failed: {exc}")
            return
        if again.id != b.batch_id:
            check.fail(f"{b.request_id}: replay gave {again.id}, not {b.batch_id}")
        else:
            soak.idempotency_ok += 1

    await gather_limited(8, (one(b) for b in soak.batches.values()))


def check_reasons(soak: Soak, listed: dict[str, Listed], final_epoch: int) -> Check:
    check = Check("(e) files failed for the expected reasons")
    codes: Counter[str] = Counter()
    for b in soak.batches.values():
        entry = listed.get(b.batch_id)
        if entry is None:
            continue
        ended = final_epoch if b.terminal_epoch is None else b.terminal_epoch
        lived_through_kill = b.created_epoch != ended
        for file_id, f in entry.files.items():
            upload = soak.uploads[file_id]
            code = f.last_error.code if f.last_error else ""
            message = f.last_error.message if f.last_error else ""
            codes[f"{upload.kind}:{f.status}{':' + code if code else ''}"] += 1
            where = f"{file_id} ({upload.filename}, batch {b.batch_id})"
            if f.status == "cancelled":
                continue  # checked with the batch: only when a cancel was asked
            if code == "server_error":
                line = f"{where}: server_error: {message}"
                if lived_through_kill:
                    check.notes.append(f"after a kill: {line}")
                else:
                    check.fail(f"no kill while it ran: {line}")
                continue
            if upload.kind in EXPECTED_ERROR:
                if f.status != "failed" or code != EXPECTED_ERROR[upload.kind]:
                    check.fail(
                        f"{where}: {f.status} {code or ''} {message}, expected failed "
                        f"{EXPECTED_ERROR[upload.kind]}"
                    )
            elif f.status != "completed":
                check.fail(f"{where}: a valid {upload.kind} file ended {f.status} {code} {message}")
    check.summary = ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))
    return check


async def check_findable(soak: Soak, listed: dict[str, Listed], check: Check) -> int:
    client = await soak.client()
    wanted = [
        (entry.batch.vector_store_id, file_id, soak.uploads[file_id].token)
        for entry in listed.values()
        for file_id, f in entry.files.items()
        if f.status == "completed"
    ]
    missing: list[str] = []

    async def one(store_id: str, file_id: str, token: str | None) -> None:
        if token is None:
            check.fail(f"{file_id} completed but it is a {soak.uploads[file_id].kind} file")
            return
        try:
            found = await client.vector_stores.search(store_id, query=token, max_num_results=10)
        except QuiverError as exc:
            check.fail(f"search for {file_id}'s token: {exc}")
            return
        if file_id not in {hit.file_id for hit in found.data}:
            missing.append(file_id)

    await gather_limited(4, (one(*w) for w in wanted))
    for file_id in missing:
        check.fail(
            f"{file_id} ({soak.uploads[file_id].filename}): completed, but a search for "
            f"its unique token does not return it"
        )
    return len(wanted) - len(missing)


def check_database(
    soak: Soak,
    db_path: Path,
    index_dir: Path,
    listed: dict[str, Listed],
    chunks_check: Check,
    index_check: Check,
    batches_check: Check,
) -> int:
    """The stopped server's SQLite file and saved indexes. Returns the number of chunks."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        for store_id, file_id, index, count in conn.execute(
            "SELECT vector_store_id, file_id, chunk_index, COUNT(*) FROM chunks "
            "GROUP BY vector_store_id, file_id, chunk_index HAVING COUNT(*) > 1"
        ):
            chunks_check.fail(f"{store_id}/{file_id}: chunk {index} stored {count} times")
        per_file: dict[tuple[str, str], list[int]] = {}
        for store_id, file_id, index in conn.execute(
            "SELECT vector_store_id, file_id, chunk_index FROM chunks"
        ):
            per_file.setdefault((store_id, file_id), []).append(index)
        for (store_id, file_id), indexes in per_file.items():
            if sorted(indexes) != list(range(len(indexes))):
                chunks_check.fail(
                    f"{store_id}/{file_id}: chunk_index {sorted(indexes)[:20]} is not 0..n-1"
                )
        statuses = {
            (s, f): status
            for s, f, status in conn.execute(
                "SELECT vector_store_id, file_id, status FROM vector_store_files"
            )
        }
        for key, status in statuses.items():
            has = key in per_file
            if status == "completed" and not has:
                chunks_check.fail(f"{key[0]}/{key[1]}: completed with no chunks")
            if status != "completed" and has:
                chunks_check.fail(
                    f"{key[0]}/{key[1]}: {status} but has {len(per_file[key])} chunks"
                )
        for key in per_file:
            if key not in statuses:
                chunks_check.fail(f"{key[0]}/{key[1]}: chunks of a file not in the store")
        for entry in listed.values():
            for file_id, f in entry.files.items():
                stored = statuses.get((entry.batch.vector_store_id, file_id))
                if stored != f.status:
                    chunks_check.fail(f"{file_id}: the API said {f.status}, SQLite says {stored}")

        total = 0
        for store_id, dim in conn.execute("SELECT id, embedding_dimensions FROM vector_stores"):
            ids = np.array(
                [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM chunks WHERE vector_store_id = ? ORDER BY id", (store_id,)
                    )
                ],
                dtype=np.int64,
            )
            total += ids.size
            path = index_dir / f"{store_id}.hnsw"
            if not path.exists():
                if ids.size:
                    index_check.fail(f"{store_id}: {ids.size} chunks but no saved index {path}")
                continue
            labels = VectorIndex.open(path, int(dim)).labels()
            missing = np.setdiff1d(ids, labels)
            extra = np.setdiff1d(labels, ids)
            if missing.size or extra.size:
                index_check.fail(
                    f"{store_id}: index lacks {missing.size} chunk ids {missing[:10].tolist()} "
                    f"and holds {extra.size} others {extra[:10].tolist()}"
                )
            index_check.notes.append(f"{store_id}: {labels.size} labels = {ids.size} chunks")

        rows = {
            request_id: (batch_id, status)
            for batch_id, request_id, status in conn.execute(
                "SELECT id, request_id, status FROM file_batches"
            )
        }
        for request_id, (batch_id, _) in rows.items():
            if request_id not in soak.sent_request_ids:
                batches_check.fail(f"{batch_id}: a batch nobody asked for ({request_id})")
            elif batch_id not in soak.batches and request_id not in soak.given_up:
                batches_check.fail(f"{batch_id}: created for {request_id}, never confirmed")
        for b in soak.batches.values():
            if b.request_id not in rows or rows[b.request_id][0] != b.batch_id:
                batches_check.fail(f"{b.batch_id}: confirmed, not in SQLite")
        return total
    finally:
        conn.close()


def check_integrity(run_dir: Path, db_path: Path) -> Check:
    check = Check("(d) SQLite integrity_check, FTS5 index and foreign keys")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            check.fail(f"integrity_check: {result[:10]}")
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            check.fail(f"foreign_key_check: {broken[:10]}")
    finally:
        conn.close()
    # The FTS5 'integrity-check' is an INSERT: run it on a copy.
    copy = run_dir / "integrity-copy.sqlite3"
    shutil.copyfile(db_path, copy)
    for suffix in ("-wal",):
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():
            shutil.copyfile(side, copy.with_name(copy.name + suffix))
    conn = sqlite3.connect(copy)
    try:
        conn.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('integrity-check')")
    except sqlite3.DatabaseError as exc:
        check.fail(f"FTS5 integrity-check: {exc}")
    finally:
        conn.close()
        for p in run_dir.glob("integrity-copy.sqlite3*"):
            p.unlink()
    check.summary = "ok" if check.passed else "broken"
    return check


@dataclass
class LogFacts:
    resumed_files: int = 0
    reconciled: int = 0
    labels_added: int = 0
    labels_removed: int = 0
    rebuilt: int = 0
    errors: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)  # output that is not a JSON log line
    warnings: Counter[str] = field(default_factory=Counter)
    last_start_reconciled: int = 0


def read_log(path: Path) -> LogFacts:
    """What the server logged (JSON lines) over all its lives; other stderr output (a
    traceback, a warning) is kept as blocks of consecutive lines, first … last."""
    facts = LogFacts()
    if not path.exists():
        return facts
    block: list[str] = []

    def flush() -> None:
        if block:
            first, last = block[0].strip()[:120], block[-1].strip()[:160]
            facts.stderr.append(first if len(block) == 1 else f"{first} … {last}")
            block.clear()

    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("--- soak: start"):
            flush()
            facts.last_start_reconciled = 0
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict):
            if raw.strip():
                # Two unindented lines in a row: the end of one output (a traceback's
                # exception line) and the start of the next.
                if block and not raw[0].isspace() and not block[-1][0].isspace():
                    flush()
                block.append(raw)
            continue
        flush()
        msg, level = str(entry.get("msg", "")), str(entry.get("level", ""))
        if msg == "resuming unfinished files":
            facts.resumed_files += int(entry.get("files", 0))
        elif msg == "reconciled index":
            facts.reconciled += 1
            facts.last_start_reconciled += 1
            facts.labels_added += int(entry.get("added", 0))
            facts.labels_removed += int(entry.get("removed", 0))
            facts.rebuilt += bool(entry.get("rebuilt"))
        if level in ("error", "critical"):
            facts.errors.append(f"{msg} {str(entry.get('exc', ''))[-300:]}".strip())
        elif level == "warning":
            facts.warnings[msg[:100]] += 1
    flush()
    return facts


# -- the run --------------------------------------------------------------------------------------


async def verify_online(soak: Soak, checks: dict[str, Check]) -> dict[str, Listed]:
    checks["a"] = await check_uploads(soak)
    batches = checks["b"]
    listed = await list_batches(soak, batches)
    check_batches(soak, listed, batches)
    await check_store_counts(soak, listed, batches)
    checks["e"] = check_reasons(soak, listed, soak.server.epoch)
    found = await check_findable(soak, listed, checks["c-search"])
    checks["c-search"].summary = f"{found} completed files found by their token"
    await replay_request_ids(soak, batches)
    return listed


async def soak(
    options: Options, run_dir: Path, mounted: bool = False, why_not: str = ""
) -> tuple[bool, list[str]]:
    profile = options.profile
    server = ServerLoop(options, run_dir, Disk(run_dir / "data", mounted, why_not))
    load = Soak(options, server)
    checks: dict[str, Check] = {
        "b": Check("(b) batches ended, counts add up, nothing taken back or made up"),
        "c-chunks": Check("(c) chunks stored exactly once, 0..n-1, only for completed files"),
        "c-index": Check("(c) each saved hnswlib index holds exactly its store's chunk ids"),
        "c-search": Check("(c) every completed file is found by its unique token"),
    }
    fatal: list[str] = []
    started = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    drained_in = 0.0
    chunks = 0
    exit_codes: list[str] = []
    try:
        server.start()
        await server.wait_serving(profile.start_timeout)
        await load.create_stores()
        tasks = [asyncio.create_task(load.client_loop(n)) for n in range(profile.clients)]
        tasks.append(asyncio.create_task(load.search_loop()))
        await load.chaos()
        load.stop_work.set()
        drain_started = time.monotonic()
        done, pending = await asyncio.wait(tasks, timeout=profile.drain_timeout)
        for task in done:
            if task.exception() is not None:
                raise RuntimeError("a client loop crashed") from task.exception()
        if pending:
            fatal.append(f"{len(pending)} client loops did not stop in {profile.drain_timeout} s")
        left = max(1.0, profile.drain_timeout - (time.monotonic() - drain_started))
        if load.watchers:
            _, unfinished = await asyncio.wait(load.watchers, timeout=left)
            for task in unfinished:
                task.cancel()
        drained_in = time.monotonic() - drain_started
        listed = await verify_online(load, checks)

        code = await server.stop()
        exit_codes.append(f"SIGTERM after the soak: exit {code}")
        await server.wait_reapers()
        db_path = server.data_dir / "quiver.sqlite3"
        chunks = check_database(
            load,
            db_path,
            server.data_dir / "indexes",
            listed,
            checks["c-chunks"],
            checks["c-index"],
            checks["b"],
        )
        checks["d"] = check_integrity(run_dir, db_path)

        # A clean restart: SERVING again, nothing to reconcile, the files still found, exit 0.
        server.start()
        await server.wait_serving(profile.start_timeout)
        again = Check("(c) after a clean stop, a restart reconciles nothing and still finds")
        found = await check_findable(load, listed, again)
        code_again = await server.stop()
        exit_codes.append(f"SIGTERM after a clean restart: exit {code_again}")
        facts = read_log(server.log_path)
        if options.log_level in ("debug", "info") and facts.last_start_reconciled:
            again.fail(
                f"{facts.last_start_reconciled} index(es) were reconciled after a clean stop "
                "(the stop did not save what SQLite holds)"
            )
        again.summary = f"{found} files found after the restart"
        checks["c-restart"] = again
        stop_check = Check("SIGTERM exits 0")
        stop_check.summary = "; ".join(exit_codes)
        if code != 0 or code_again != 0:
            stop_check.fail(stop_check.summary)
        checks["stop"] = stop_check
    except Exception as exc:  # reported below, with whatever was checked
        fatal.append(f"{type(exc).__name__}: {exc}")
        fatal.append(traceback.format_exc())
    finally:
        for task in [*tasks, *load.watchers]:
            task.cancel()
        await asyncio.gather(*tasks, *load.watchers, return_exceptions=True)
        await load.close_clients()
        server.kill_everything()

    unexpected = Check("no RPC failed except while the server was being killed")
    for line in load.unexpected:
        unexpected.fail(line)
    checks["rpc"] = unexpected
    orphans = Check("no process of a killed server outlives it")
    for line in server.orphans:
        orphans.fail(line)
    checks["orphans"] = orphans
    checks["disk"] = check_disk_full(load, server.disk, read_log(server.log_path))

    facts = read_log(server.log_path)
    lines = summary(options, load, server, checks, facts, chunks, drained_in, started, fatal)
    passed = not fatal and all(c.passed or c.warn_only for c in checks.values())
    lines.append(f"RESULT: {'PASS' if passed else 'FAIL'}")
    return passed, lines


def check_disk_full(load: Soak, disk: Disk, facts: LogFacts) -> Check:
    """What the disk-full fault did: writes refused with DISK_FULL (any other failure is in
    the "rpc" check), commits retried; the end checks above show they completed."""
    check = Check("disk full: writes refused with RESOURCE_EXHAUSTED/DISK_FULL, then served")
    if not disk.mounted:
        check.warn_only = True
        check.fail(f"fault skipped: {disk.why_not}")
        return check
    retries = sum(n for m, n in facts.warnings.items() if m.startswith("disk full committing"))
    check.summary = (
        f"{len(disk.events)} episodes; refused: {dict(sorted(load.refused.items())) or 'none'}; "
        f"{retries} ingest commits retried on the full disk (server log)"
    )
    check.notes.extend(disk.events)
    if disk.events and not load.refused:
        check.warn_only = True
        check.fail("the disk was filled, but no RPC was refused with DISK_FULL")
    return check


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "none"
    return (
        f"n={len(values)} min {min(values):.2f} s, median {statistics.median(values):.2f} s, "
        f"max {max(values):.2f} s"
    )


def summary(
    options: Options,
    load: Soak,
    server: ServerLoop,
    checks: dict[str, Check],
    facts: LogFacts,
    chunks: int,
    drained_in: float,
    started: float,
    fatal: list[str],
) -> list[str]:
    statuses: Counter[str] = Counter()
    for b in load.batches.values():
        if b.watched_final is not None:
            counts = b.watched_final.file_counts
            statuses.update(
                completed=counts.completed, failed=counts.failed, cancelled=counts.cancelled
            )
    kinds = Counter(u.kind for u in load.uploads.values())
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    retried = sum(b.reply_lost for b in load.batches.values())
    startup_kills = sum(1 for k in server.kills if ": during start-up," in k)
    rpc_kills = sum(1 for k in server.kills if ": just after" in k)
    ingest_kills = sum(1 for k in server.kills if ": while batches" in k)
    out = [
        f"Quiver soak: seed {options.seed}, {'quick' if options.quick else 'full'} profile, "
        f"{time.monotonic() - started:.0f} s",
        f"  kills: {len(server.kills)} ({startup_kills} while the server was starting up, "
        f"{rpc_kills} just after an RPC was sent, {ingest_kills} while batches were processed)",
        f"  restarts: {server.starts - 1} (incl. the final clean restart); start → SERVING: "
        f"{_stats(server.serving_times)}",
        f"    per start (s): {' '.join(server.per_start)}",
        f"  uploads confirmed: {len(load.uploads)} ({by_kind}); "
        f"cut by kills: {sum(load.lost_uploads.values())}",
        f"  batches confirmed: {len(load.batches)} ({retried} only by a retry after a kill); "
        f"request-id replays giving the same batch: "
        f"{load.idempotency_ok}; never confirmed: {len(load.given_up)}",
        f"  cancels: {Counter(b.cancel for b in load.batches.values() if b.cancel)}",
        f"  files: {statuses['completed']} completed, {statuses['failed']} failed, "
        f"{statuses['cancelled']} cancelled; chunks: {chunks}",
        f"  watch reconnects: {sum(b.reconnects for b in load.batches.values())}; searches: "
        f"{load.searches}; drain after the last restart: {drained_in:.1f} s",
        f"  RPCs cut by kills: {dict(sorted(load.cut.items()))}",
        f"  server log: {facts.resumed_files} unfinished files resumed at start-up; "
        f"{facts.reconciled} index reconciliations (+{facts.labels_added} / "
        f"-{facts.labels_removed} labels, {facts.rebuilt} rebuilt); "
        f"{len(facts.errors)} error lines; warnings {dict(facts.warnings)}; "
        f"{len(facts.stderr)} other stderr outputs",
    ]
    disk = server.disk
    if disk.mounted:
        disk.note_usage()
        out.append(
            f"  data dir on its own tmpfs of {options.tmpfs_size}: at most "
            f"{disk.peak_used / 2**20:.1f} MiB used (without ballast); "
            f"{len(disk.events)} disk-full episodes"
        )
    else:
        out.append(f"  disk-full fault skipped: {disk.why_not}")
    out += [f"    {k}" for k in server.kills]
    for line in facts.errors[:10]:
        out.append(f"    server error: {line}")
    for line, count in Counter(facts.stderr).most_common(10):
        out.append(f"    server stderr ({count}x): {line}")
    out.append("checks:")
    order = [
        *("a", "b", "c-chunks", "c-index", "c-search", "c-restart", "d", "e", "stop", "rpc"),
        "disk",
    ]
    for key in sorted(checks, key=lambda k: order.index(k) if k in order else len(order)):
        check = checks[key]
        verdict = "PASS" if check.passed else ("WARN" if check.warn_only else "FAIL")
        out.append(f"  {verdict} {check.name}{': ' + check.summary if check.summary else ''}")
        for problem in check.problems[:15]:
            out.append(f"      - {problem}")
        if len(check.problems) > 15:
            out.append(f"      … and {len(check.problems) - 15} more")
        for note in check.notes[:15]:
            out.append(f"      note: {note}")
    for line in fatal:
        out.append(f"  FAIL {line}")
    return out


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs before checking")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill times and load")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller files, short waits")
    parser.add_argument("--ingest-workers", type=int, default=2)
    parser.add_argument("--log-level", default="info", help="the server's --log-level")
    parser.add_argument(
        "--index-save-interval",
        type=float,
        default=2.0,
        help="the server's --index-save-interval: short, so kills land before, during and "
        "after index saves (default 2)",
    )
    parser.add_argument(
        "--damage-every",
        type=int,
        default=3,
        help="damage a saved index (flipped links, random bytes, truncation, no sidecar) "
        "after every Nth kill, before the restart; 0: never (default 3)",
    )
    parser.add_argument(
        "--disk-full-every",
        type=int,
        default=3,
        help="fill the data dir's disk for a few seconds under load before every Nth kill "
        "(the data dir gets its own small tmpfs; needs root, else skipped); 0: never "
        "(default 3)",
    )
    parser.add_argument(
        "--disk-full-seconds",
        type=float,
        nargs=2,
        default=(2.0, 5.0),
        metavar=("MIN", "MAX"),
        help="how long the disk stays full (default 2 5)",
    )
    parser.add_argument(
        "--tmpfs-size",
        default="",
        help="size of the data dir's tmpfs, e.g. 64m (default by profile and kills)",
    )
    parser.add_argument("--work-dir", type=Path, help="where the data dir and log go")
    parser.add_argument("--keep", action="store_true", help="keep the data dir even on PASS")
    parser.add_argument(
        "--timeout", type=float, default=0, help="bound on the whole run (default by profile)"
    )
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    timeout = args.timeout or (120.0 + 20.0 * args.kills if args.quick else 600.0 + 30 * args.kills)
    return Options(
        kills=args.kills,
        seed=args.seed,
        quick=args.quick,
        ingest_workers=args.ingest_workers,
        log_level=args.log_level,
        index_save_interval=args.index_save_interval,
        damage_every=args.damage_every,
        disk_full_every=args.disk_full_every,
        disk_full_seconds=(min(args.disk_full_seconds), max(args.disk_full_seconds)),
        tmpfs_size=args.tmpfs_size or _tmpfs_size(args.quick, args.kills),
        work_dir=args.work_dir,
        keep=args.keep,
        timeout=timeout,
    )


def _tmpfs_size(quick: bool, kills: int) -> str:
    """About 3-4 times what the data dir grows to (peak, ballast not counted): a quick soak
    grew 2-4 MiB a kill (7-17 MiB in 4 kills, seed 7), a full one ~13 MiB a kill (40.5 MiB
    in 3 kills, seed 7)."""
    if quick:
        return f"{max(64, 16 * kills)}m"
    return f"{max(256, 48 * kills)}m"


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="quiver-soak-", dir=options.work_dir))
    data_dir = run_dir / "data"
    why_not = "--disk-full-every 0"
    if options.disk_full_every:
        why_not = tmpfs.mount_tmpfs(data_dir, options.tmpfs_size) or ""
        if why_not:
            print(f"the disk-full fault is skipped: {why_not}", flush=True)
    mounted = not why_not

    async def bounded() -> tuple[bool, list[str]]:
        return await asyncio.wait_for(soak(options, run_dir, mounted, why_not), options.timeout)

    try:
        try:
            passed, lines = asyncio.run(bounded())
        except TimeoutError:
            passed, lines = False, [f"RESULT: FAIL (the soak ran past {options.timeout:g} s)"]
        if mounted and (options.keep or not passed):  # the tmpfs goes with the unmount
            shutil.copytree(data_dir, run_dir / "data.kept", dirs_exist_ok=True)
    finally:
        if mounted:
            tmpfs.unmount(data_dir)
    print("\n".join(lines), flush=True)
    if passed and not options.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"data dir and server log kept in {run_dir}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
