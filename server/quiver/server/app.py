"""Builds and runs the server: storage, core, ingest, servicers, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time

from grpc import aio
from grpc_health.v1 import _async as health_aio  # what health.aio refers to
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from quiver.server.api.file_batches import FileBatchServicer
from quiver.server.api.files import FileServicer
from quiver.server.api.interceptor import QuiverInterceptor
from quiver.server.api.reflection_v1 import enable_reflection
from quiver.server.api.vector_stores import VectorStoreServicer
from quiver.server.auth.keys import KeyConfigError, KeyRing
from quiver.server.config import Settings
from quiver.server.core.batches import FileBatches
from quiver.server.core.chunk_writer import PendingLabels
from quiver.server.core.embedder_choice import EmbedderChoice
from quiver.server.core.errors import FailedPrecondition
from quiver.server.core.files import FileStore
from quiver.server.core.job_leases import JobLeases, check_lease_settings, new_owner_id
from quiver.server.core.lease_keeper import LeaseKeeper
from quiver.server.core.processing import Processing
from quiver.server.core.scheduler import Scheduler
from quiver.server.core.search import Searcher
from quiver.server.core.status_book import StatusBook
from quiver.server.core.store_files import StoreFiles
from quiver.server.core.upload_slots import UploadSlots
from quiver.server.core.vector_stores import VectorStores
from quiver.server.core.watch import WatchHub
from quiver.server.embedders.base import Embedder
from quiver.server.embedders.model_names import BadModelName
from quiver.server.embedders.registry import EmbedderSpec, make_embedder
from quiver.server.index.manager import IndexManager
from quiver.server.ingest.limits import WorkerLimits, worker_memory_bytes
from quiver.server.ingest.pool import IngestPool, WorkerStartFailed
from quiver.server.metrics import Metrics
from quiver.server.storage.blobs import BlobStore
from quiver.server.storage.database import Database
from quiver.server.storage.dir_lock import DirectoryInUse, DirLock
from quiver.server.storage.jobs import JobsRepository
from quiver.server.tls import CertificateFiles, TlsConfigError, check_settings
from quiver.server.transport_options import server_options
from quiver.v1 import (
    file_batches_pb2,
    file_batches_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

log = logging.getLogger("quiver.server")

SERVICE_NAMES = (
    files_pb2.DESCRIPTOR.services_by_name["FileService"].full_name,
    vector_stores_pb2.DESCRIPTOR.services_by_name["VectorStoreService"].full_name,
    file_batches_pb2.DESCRIPTOR.services_by_name["FileBatchService"].full_name,
)
Serving = health_pb2.HealthCheckResponse.ServingStatus


class ConfigError(Exception):
    """The settings cannot work (e.g. open mode on a public address)."""


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class QuiverServer:
    """One server. ``start`` binds, recovers, then serves; ``stop`` drains and closes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyRing.load(settings.api_keys_file, settings.api_keys)
        if self.keys.open and not is_loopback(settings.listen):
            raise ConfigError(
                f"no API keys are configured, so the server may only listen on loopback, "
                f"not {settings.listen}; add keys with 'quiver keys add TENANT --file FILE' "
                "and pass --api-keys-file FILE"
            )
        try:
            tls = check_settings(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            self.certificates = (
                CertificateFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
                if tls and settings.tls_cert is not None and settings.tls_key is not None
                else None
            )
        except TlsConfigError as exc:
            raise ConfigError(str(exc)) from exc
        plaintext_keys = not self.keys.open and not tls and not settings.insecure
        if plaintext_keys and not is_loopback(settings.listen):
            raise ConfigError(
                f"API keys would travel in clear text to {settings.listen}: serve TLS "
                "with --tls-cert and --tls-key, listen on loopback, or pass --insecure "
                "(e.g. behind a TLS-terminating proxy)"
            )
        try:
            check_lease_settings(settings.job_lease_seconds, settings.job_renew_seconds)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        # One data directory, one server: taken before anything in it is opened, held
        # until stop() (the kernel drops it if the process dies).
        self.dir_lock = DirLock(data)
        try:
            self.dir_lock.acquire(settings.listen)
        except DirectoryInUse as exc:
            raise ConfigError(str(exc)) from None
        try:
            self._build(settings)
        except BaseException:
            self.dir_lock.release()
            raise

    def _build(self, settings: Settings) -> None:
        """Opens storage and wires the core (the data directory's lock is held)."""
        data = settings.data_dir
        self.db = Database(data / "quiver.sqlite3")
        self.blobs = BlobStore(data / "blobs")
        self.hub = WatchHub(
            max_watchers=settings.max_watchers,
            max_watchers_per_tenant=settings.max_watchers_per_tenant,
        )
        self.book = StatusBook(self.db, self.hub)
        self.files = FileStore(self.db, self.blobs, max_file_bytes=settings.max_file_bytes)
        self.uploads = UploadSlots(
            max_total=settings.max_uploads, max_per_tenant=settings.max_uploads_per_tenant
        )
        choice = EmbedderChoice(settings.embedding_dimensions, settings.openai_base_url)
        self.stores = VectorStores(self.db, choice.resolve)
        self.stores.transaction = self.book.transaction
        self.indexes = IndexManager(
            data / "indexes",
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
        )
        # Created before the gRPC server: workers are separate spawned interpreters.
        try:
            memory = worker_memory_bytes(settings.worker_memory, settings.ingest_workers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        limits = WorkerLimits(memory_bytes=memory, parse_seconds=settings.file_parse_seconds)
        self.pool = IngestPool(settings.ingest_workers, settings.file_timeout, limits)
        self.metrics = Metrics()
        self.pending = PendingLabels()  # chunks in an index before their file completes
        # This server instance's claims on the files it ingests (the record is in the database).
        self.leases = JobLeases(JobsRepository(self.db), new_owner_id(), settings.job_lease_seconds)
        self.processing = Processing(
            self.db,
            self.book,
            self.blobs,
            self.stores,
            self.indexes,
            self.pool,
            self._spec_for,
            self.metrics,
            commit_attempts=settings.commit_attempts,
            retry_delay=settings.commit_retry_delay,
            pending=self.pending,
            leases=self.leases,
        )
        self.scheduler = Scheduler(
            self.processing.process,
            max_in_flight=settings.ingest_workers,
            max_queued=settings.max_queued_files,
            max_queued_per_tenant=settings.max_queued_files_per_tenant,
        )
        self.processing.scheduler = self.scheduler
        self.store_files = StoreFiles(
            self.book,
            self.stores,
            self.indexes,
            self.scheduler,
            self.files,
            self.pending,
            leases=self.leases,
        )
        self.lease_keeper = LeaseKeeper(
            self.leases, self.processing.sweep, settings.job_renew_seconds
        )
        self.batches = FileBatches(self.book, self.store_files, self.hub)
        self.searcher = Searcher(
            self.stores,
            self.indexes,
            self._embedder_for,
            exact_max_chunks=settings.exact_search_max_chunks,
            pending=self.pending,
        )
        self.files.detachers.append(self.store_files.detach_everywhere)
        self.stores.deleted_hooks.append(self.processing.on_store_deleted)
        self.metrics.watch_gauges(
            queue_depth=lambda: self.scheduler.queued,
            in_flight=lambda: self.scheduler.in_flight,
            watchers=lambda: self.hub.watcher_count,
            index_vectors=self.indexes.live_vectors,
            indexes_open=lambda: self.indexes.open_count,
            pool_restarts=lambda: self.pool.restarts,
        )
        self.metrics_port = 0
        self.health = health_aio.HealthServicer()
        self.interceptor = QuiverInterceptor(self.keys, self.metrics)
        self.port = 0
        self._server: aio.Server | None = None
        self._saver: asyncio.Task[None] | None = None
        self._config_watcher: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._stopping = False

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one server, a few embedders, kept for life
    def _embedder_for(self, model: str, dimensions: int, send_dimensions: bool) -> Embedder:
        try:
            return make_embedder(self._spec_for(model, dimensions, send_dimensions))
        except BadModelName as exc:  # a store made before creation checked the grammar
            raise FailedPrecondition(
                f"this vector store's embedding_model {model[:80]!r} is not valid ({exc}); "
                "create a new store with a valid one",
                reason="EMBEDDING_MODEL_INVALID",
            ) from exc

    def _spec_for(self, model: str, dimensions: int, send_dimensions: bool) -> EmbedderSpec:
        return EmbedderSpec(
            model,
            dimensions,
            base_url=self.settings.openai_base_url or None,
            api_key=self.settings.openai_api_key or None,
            send_dimensions=send_dimensions,
        )

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def start(self) -> int:
        started = time.perf_counter()
        try:
            await self.pool.start()
        except WorkerStartFailed as exc:
            self._close_storage()  # releases the data directory too
            raise ConfigError(f"the ingest workers cannot start: {exc}") from None
        options = server_options(self.settings)
        server = aio.server(interceptors=[self.interceptor], options=options)
        files_pb2_grpc.add_FileServiceServicer_to_server(
            FileServicer(self.files, self.uploads, self.settings.upload_idle_timeout), server
        )
        vector_stores_pb2_grpc.add_VectorStoreServiceServicer_to_server(
            VectorStoreServicer(self.stores, self.store_files, self.batches, self.searcher), server
        )
        file_batches_pb2_grpc.add_FileBatchServiceServicer_to_server(
            FileBatchServicer(self.batches), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
        await self._set_health(Serving.NOT_SERVING)
        try:
            if self.certificates is None:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                self.port = server.add_secure_port(
                    self.settings.listen, self.certificates.credentials()
                )
        except RuntimeError as exc:  # grpc raises for a busy or invalid address
            self.port = 0
            reason = f": {exc}"
        else:
            reason = ""
        if self.port == 0:
            self._close_storage()
            raise ConfigError(f"cannot listen on {self.settings.listen}{reason}")
        await server.start()
        self._server = server
        host = self.settings.listen.rsplit(":", 1)[0]
        self.dir_lock.record(f"{host}:{self.port}")
        if self.keys.open:
            log.warning(
                "no API keys configured: serving OPEN (no authentication) on loopback only",
                extra={"listen": self.settings.listen},
            )
        await self._recover()
        if self.settings.metrics_listen:
            self.metrics_port = self.metrics.serve(self.settings.metrics_listen)
        self.scheduler.start()
        self.lease_keeper.start()
        self._saver = asyncio.create_task(self._save_periodically(), name="index-saver")
        if self.settings.reload_interval > 0 and self.keys.file is not None and not self.keys.open:
            self._config_watcher = asyncio.create_task(
                self._watch_keys_file(), name="keys-file-watcher"
            )
        self.interceptor.closed_reason = None
        await self._set_health(Serving.SERVING)
        log.info(
            "serving",
            extra={
                "listen": self.settings.listen,
                "port": self.port,
                "tls": "off"
                if self.certificates is None
                else ("mutual" if self.certificates.mutual else "on"),
                "startup_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return self.port

    async def _recover(self) -> None:
        """Takes up unfinished files and reconciles every index before SERVING."""
        self.interceptor.closed_reason = "the server is starting (recovering unfinished work)"
        jobs = self.processing.recover()
        await asyncio.to_thread(self.processing.delete_leftovers, jobs)
        await asyncio.to_thread(self.processing.reconcile_indexes)
        self.scheduler.enqueue(jobs)
        if jobs:
            log.info("resuming unfinished files", extra={"files": len(jobs)})

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.index_save_interval)
            await asyncio.to_thread(self.indexes.save_all)

    def reload(self) -> None:
        """SIGHUP: re-read the API keys file and the TLS files (at the next handshake)."""
        if self.certificates is not None:
            self.certificates.request_reload()
        self._reload_keys()

    def _reload_keys(self) -> None:
        if self.keys.open or self.keys.file is None:
            return
        try:
            self.keys.reload()
        except KeyConfigError as exc:
            log.warning("API keys file not reloaded, keeping the current keys: %s", exc)
        else:
            log.info("API keys reloaded", extra={"keys": len(self.keys)})

    async def _watch_keys_file(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            if self.keys.changed():
                await asyncio.to_thread(self._reload_keys)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new RPCs, let in-flight ones finish, close storage."""
        if self._server is None:  # never started (or failed to): close what __init__ opened
            self._close_storage()
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.grace_period if grace is None else grace
        log.info("draining", extra={"grace_s": grace})
        await self._set_health(Serving.NOT_SERVING)
        if self.settings.drain_delay > 0:  # let load balancers see NOT_SERVING and move away
            await asyncio.sleep(self.settings.drain_delay)
        self.interceptor.closed_reason = "the server is shutting down"
        await self._server.stop(grace)
        for task in (self._saver, self._config_watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.lease_keeper.stop()
        await self.scheduler.stop()  # unfinished files resume at the next start
        try:
            self.processing.release_leases()  # … at once, not when their leases expire
        except Exception:  # e.g. a full disk: they are claimed once the leases expire
            log.exception("releasing the job leases failed")
        self._close_storage()
        log.info("stopped")

    def _close_storage(self) -> None:
        if self._stopped.is_set():
            return
        try:
            self.metrics.close()
            self.pool.close()
            self.indexes.save_all()
            self.db.close()
        finally:
            self.dir_lock.release()  # another server may use the directory from now on
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
