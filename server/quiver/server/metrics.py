"""Prometheus metrics, served on their own port when ``--metrics-listen`` is set.

Each server owns a registry (tests run several servers in one process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

log = logging.getLogger("quiver.metrics")

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
STAGE_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter(
            "quiver_rpc_requests",
            "RPCs served, by method and status code",
            ("method", "code"),
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "quiver_rpc_duration_seconds",
            "RPC latency (streams: until they end)",
            ("method",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.files = Counter(
            "quiver_ingest_files",
            "Files that finished ingest, by outcome",
            ("outcome",),
            registry=r,
        )
        self.chunks = Counter("quiver_ingest_chunks", "Chunks committed", registry=r)
        self.tokens = Counter("quiver_ingest_tokens", "Tokens committed", registry=r)
        self.stale_results = Counter(
            "quiver_ingest_stale_results",
            "Ingest results dropped because the file was claimed again meanwhile, by reason "
            "(lease_lost: another server instance holds it; superseded: a newer claim here)",
            ("reason",),
            registry=r,
        )
        self.search_forwards = Counter(
            "quiver_search_forwards",
            "Searches of a store another replica owns, by outcome (forwarded: the owner "
            "answered; owner_unreachable: answered here, the owner marked dead)",
            ("outcome",),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "quiver_ingest_stage_seconds",
            "Time per file in each ingest stage (parse, chunk, embed in the worker; index, "
            "commit in the server)",
            ("stage",),
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.pool_restarts = Gauge(
            "quiver_ingest_pool_restarts",
            "Worker pool rebuilds (after a crash or a timeout) so far",
            registry=r,
        )
        self.queue_depth = Gauge(
            "quiver_ingest_queue_depth", "Files waiting for a worker", registry=r
        )
        self.in_flight = Gauge("quiver_ingest_in_flight", "Files in the worker pool", registry=r)
        self.watchers = Gauge("quiver_watchers_active", "Open WatchFileBatch streams", registry=r)
        self.index_vectors = Gauge(
            "quiver_index_vectors", "Live vectors in the open hnswlib indexes", registry=r
        )
        self.indexes_open = Gauge("quiver_indexes_open", "hnswlib indexes in memory", registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds
        self.peak_rss = Gauge(
            "quiver_process_peak_rss_bytes",
            "Peak resident memory of the server process (VmHWM), not counting workers",
            registry=r,
        )
        self.peak_rss.set_function(_peak_rss)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch_gauges(
        self,
        queue_depth: Callable[[], float],
        in_flight: Callable[[], float],
        watchers: Callable[[], float],
        index_vectors: Callable[[], float],
        indexes_open: Callable[[], float],
        pool_restarts: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time from the live objects."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)
        self.watchers.set_function(watchers)
        self.index_vectors.set_function(index_vectors)
        self.indexes_open.set_function(indexes_open)
        self.pool_restarts.set_function(pool_restarts)

    def serve(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        self._http, self._thread = start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry
        )
        bound = int(self._http.server_port)
        log.info("metrics", extra={"listen": f"{host}:{bound}"})
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def _peak_rss() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0
