"""The composition root: ``build_core`` makes every core service, in dependency order, from
its collaborators (constructor arguments only; nothing is changed after construction).

The edges (the gRPC server in app.py, an HTTP edge) take the ``Core`` it returns; none of
them builds a core service itself, and nothing here imports gRPC, protobuf or an HTTP
framework, so tests and tools can build and run a core without any of them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from quiver.server.config import Settings
from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.batches import FileBatches
from quiver.server.core.chunk_writer import PendingLabels
from quiver.server.core.clock import Clock, system_clock
from quiver.server.core.db_calls import DbCalls, check_db_calls
from quiver.server.core.embedder_choice import EmbedderChoice
from quiver.server.core.file_deletion import FileDeletion
from quiver.server.core.files import FileStore
from quiver.server.core.index_sync import IndexSync
from quiver.server.core.job_leases import JobLeases, check_lease_settings, new_owner_id
from quiver.server.core.lease_keeper import LeaseKeeper
from quiver.server.core.ports import Blobs, IngestBackend
from quiver.server.core.processing import Processing
from quiver.server.core.query_embedding import LaneLimits, QueryEmbedding
from quiver.server.core.replicas import Replicas, check_advertise, check_replica_settings
from quiver.server.core.scheduler import Scheduler
from quiver.server.core.search import Searcher
from quiver.server.core.shared_watch import SharedWatch
from quiver.server.core.status_book import StatusBook
from quiver.server.core.store_drops import StoreDrops
from quiver.server.core.store_embedders import StoreEmbedders
from quiver.server.core.store_files import StoreFiles
from quiver.server.core.upload_slots import UploadSlots
from quiver.server.core.vector_stores import VectorStores
from quiver.server.core.watch import WatchHub
from quiver.server.embedders.local_onnx import local_threads
from quiver.server.embedders.openai_tuning import (
    OpenAITuning,
    check_openai_tuning,
    hung_endpoint_seconds,
)
from quiver.server.index.keyword_manager import KeywordIndexes
from quiver.server.index.manager import IndexManager
from quiver.server.ingest.executor_choice import in_flight, make_executor
from quiver.server.ingest.ingest_choice import parse_ingest
from quiver.server.ingest.limits import WorkerLimits, worker_memory_bytes
from quiver.server.metrics import Metrics
from quiver.server.storage.blob_location import blob_location
from quiver.server.storage.blob_stores import open_blob_store
from quiver.server.storage.choice import change_listener, open_storage
from quiver.server.storage.database import Database
from quiver.server.storage.interfaces import Storage
from quiver.server.storage.sqlite_storage import SqliteStorage

log = logging.getLogger("quiver.server")


@dataclass(frozen=True)
class Core:
    """Every core service of one server, wired together. An edge validates a request,
    calls one of these and converts the answer; it never reaches past them.

    Lifecycle, in this order: ``start_workers`` → ``recover`` → ``start_processing`` …
    ``stop_processing`` → ``close``. Requests may be served once ``recover`` returned.
    """

    storage: Storage
    """The database with its repositories: SQLite (``quiver.sqlite3`` in the data directory)
    or PostgreSQL (``--database postgresql://...``)."""
    blobs: Blobs
    """Uploaded files' bytes, by sha256 (``--blobs``: data_dir/blobs, a shared directory
    or an S3 bucket)."""
    indexes: IndexManager
    """One vector index per store, opened on demand."""
    keywords: KeywordIndexes
    """One keyword (tantivy) index per store, a cache of its completed chunks."""
    pool: IngestBackend
    """What parses, chunks and embeds files (``--ingest``): the worker processes, or Ray."""
    metrics: Metrics
    """Prometheus counters and gauges (served by the app when asked to)."""
    hub: WatchHub
    """Batch watchers (WatchFileBatch), bounded globally and per tenant."""
    book: StatusBook
    """Every status change of a store file; tells the watchers after the commit."""
    pending: PendingLabels
    """Chunks already in an index whose file is not completed yet (hidden from search)."""
    uploads: UploadSlots
    """How many uploads may be open, in all and per tenant."""
    embedders: StoreEmbedders
    """A store's embedder: the workers' spec and the searches' instance."""
    scheduler: Scheduler
    """The bounded, fair ingest queue; runs ``processing.process`` once started."""
    files: FileStore
    """Uploaded files: upload, get, list, download."""
    stores: VectorStores
    """Vector stores: create, get, list, update, delete (with its files and batches)."""
    processing: Processing
    """A queued store file → committed chunks; start-up recovery."""
    store_files: StoreFiles
    """Files attached to a store: attach, get, list, content, update, detach."""
    file_deletion: FileDeletion
    """DeleteFile: detached from every store and deleted in one transaction."""
    batches: FileBatches
    """File batches, and a store created with files (one transaction)."""
    searcher: Searcher
    """SearchVectorStore: vector, keyword and hybrid search with filters."""
    leases: JobLeases
    """This server instance's claims on the files it ingests (recorded in the database)."""
    lease_keeper: LeaseKeeper
    """The heartbeat renewing those claims and the sweep taking up expired ones."""
    query_embedding: QueryEmbedding
    """Search queries' embedding lanes: bounded per provider that calls out (``openai``)."""
    attributes: AttributeIndex
    """Per store, its completed files' attributes indexed for filters (a rebuildable cache)."""
    replicas: Replicas
    """This replica's heartbeat and the live replicas: who owns each store's index."""
    calls: DbCalls
    """The threads every database call of an async core operation runs on."""
    drops: StoreDrops
    """A deleted store's caches here (vector, keyword, attribute indexes, sync state)."""
    shared_watch: SharedWatch | None = None
    """With a shared database (PostgreSQL): watchers here hear of other servers' commits."""

    @property
    def db(self) -> Database:
        """The SQLite database (with the SQLite storage only; TypeError otherwise)."""
        if not isinstance(self.storage, SqliteStorage):
            raise TypeError(f"the storage is {type(self.storage).__name__}, not SQLite")
        return self.storage.database

    async def start_workers(self) -> None:
        """Starts the ingest worker processes, or connects to Ray (WorkerStartFailed if they
        cannot start)."""
        await self.pool.start()

    async def recover(self) -> int:
        """Takes up unfinished files and reconciles every index (database and index files
        in threads); returns how many files were queued again."""
        jobs = await self.calls.run(self.processing.recover)
        await asyncio.to_thread(self.processing.delete_leftovers, jobs)
        await asyncio.to_thread(self.processing.reconcile_indexes)
        self.scheduler.enqueue(jobs)
        if jobs:
            log.info("resuming unfinished files", extra={"files": len(jobs)})
        return len(jobs)

    def start_processing(self) -> None:
        """Queued files start going through the worker pool."""
        self.scheduler.start(self.processing.process)
        self.lease_keeper.start()
        if self.shared_watch is not None:
            self.shared_watch.start()

    async def stop_processing(self) -> None:
        """Stops taking files; those in flight stay in progress and resume at the next
        start (at once: their leases are released)."""
        if self.shared_watch is not None:
            await self.shared_watch.stop()
        await self.lease_keeper.stop()
        await self.scheduler.stop()
        try:
            await self.calls.run(self.processing.release_leases)
        except Exception:  # e.g. a full disk: they are claimed once the leases expire
            log.exception("releasing the job leases failed")

    def close(self) -> None:
        """Stops the query lanes and the workers, saves the indexes and closes the database."""
        self.query_embedding.close()
        if self.searcher.sync is not None:
            self.searcher.sync.close()
        self.pool.close()
        self.calls.close()
        self.indexes.save_all()
        self.keywords.close()
        self.storage.close()


def openai_tuning(settings: Settings) -> OpenAITuning:
    """The ``--openai-*`` settings, validated (ValueError naming every bad one); the ingest
    workers' request slots live in the data directory."""
    problems = check_openai_tuning(
        timeout_s=settings.openai_timeout,
        batch_size=settings.openai_batch_size,
        concurrency=settings.openai_concurrency,
        query_concurrency=settings.openai_query_concurrency,
        query_queue=settings.openai_query_queue,
        query_prefix=settings.openai_query_prefix,
        passage_prefix=settings.openai_passage_prefix,
    )
    if problems:
        raise ValueError("; ".join(problems))
    hung = hung_endpoint_seconds(settings.openai_timeout, settings.openai_batch_size)
    if settings.openai_base_url and settings.file_timeout < hung:
        log.warning(
            "--file-timeout %g s is shorter than the %g s a batch takes to fail against an "
            "embedding endpoint that never answers (--openai-timeout %g s, halving "
            "--openai-batch-size %d down to one input): such files fail with 'took longer "
            "than' instead of naming the endpoint",
            settings.file_timeout,
            hung,
            settings.openai_timeout,
            settings.openai_batch_size,
        )
    slots_dir = settings.data_dir / "embedding-slots"
    slots_dir.mkdir(parents=True, exist_ok=True)
    return OpenAITuning(
        timeout_s=settings.openai_timeout,
        batch_size=settings.openai_batch_size,
        query_prefix=settings.openai_query_prefix,
        passage_prefix=settings.openai_passage_prefix,
        slots_dir=str(slots_dir),
        slots=settings.openai_concurrency,
    )


def build_core(settings: Settings, *, clock: Clock = system_clock) -> Core:
    """Opens the data directory's database, blobs and indexes and builds the core on them.

    ValueError (before anything is opened) for settings that cannot work, such as a worker
    memory limit too small. The caller holds the data directory's lock.
    """
    memory = worker_memory_bytes(settings.worker_memory, settings.ingest_workers)
    ingest = parse_ingest(settings.ingest)
    check_lease_settings(settings.job_lease_seconds, settings.job_renew_seconds)
    check_replica_settings(
        settings.replica_heartbeat_seconds,
        settings.replica_timeout_seconds,
        settings.replica_forward_timeout_seconds,
    )
    bad_calls = check_db_calls(settings.database_threads, settings.database_queue)
    if bad_calls:
        raise ValueError("; ".join(bad_calls))
    bad_advertise = check_advertise(settings.advertise)
    if bad_advertise is not None:
        raise ValueError(bad_advertise)
    limits = WorkerLimits(memory_bytes=memory, parse_seconds=settings.file_parse_seconds)
    tuning = openai_tuning(settings)
    data = settings.data_dir
    location = blob_location(settings.blobs, data)
    blobs = open_blob_store(location, data)
    keywords = KeywordIndexes(
        data / "keyword",
        commit_seconds=settings.keyword_commit_seconds,
        max_pending=settings.keyword_pending_chunks,
    )
    db = open_storage(settings.database, data)
    indexes = IndexManager(
        data / "indexes",
        m=settings.hnsw_m,
        ef_construction=settings.hnsw_ef_construction,
        ef_search=settings.hnsw_ef_search,
    )
    # Created before any gRPC server: workers are separate spawned interpreters.
    pool = make_executor(
        ingest,
        workers=settings.ingest_workers,
        ray_tasks=settings.ray_tasks,
        ray_task_retries=settings.ray_task_retries,
        file_timeout=settings.file_timeout,
        limits=limits,
    )
    metrics = Metrics()
    hub = WatchHub(
        max_watchers=settings.max_watchers,
        max_watchers_per_tenant=settings.max_watchers_per_tenant,
    )
    calls = DbCalls(settings.database_threads, settings.database_queue)
    book = StatusBook(db, hub, calls)
    pending = PendingLabels()
    uploads = UploadSlots(
        max_total=settings.max_uploads, max_per_tenant=settings.max_uploads_per_tenant
    )
    embedders = StoreEmbedders(
        settings.openai_base_url,
        settings.openai_api_key,
        tuning,
        models_dir=settings.models_dir,
        local_threads=local_threads(settings.local_threads, settings.ingest_workers),
    )
    scheduler = Scheduler(
        max_in_flight=in_flight(
            ingest, workers=settings.ingest_workers, ray_tasks=settings.ray_tasks
        ),
        max_queued=settings.max_queued_files,
        max_queued_per_tenant=settings.max_queued_files_per_tenant,
    )
    files = FileStore(db, blobs, max_file_bytes=settings.max_file_bytes, calls=calls, clock=clock)
    choice = EmbedderChoice(
        settings.embedding_dimensions, settings.openai_base_url, settings.models_dir
    )
    attributes = AttributeIndex(
        db.store_files,
        db.chunks,
        max_stores=settings.attribute_index_stores,
        vector_bytes=settings.exact_search_cache_mb << 20,
    )

    def forget_sync(store_id: str) -> None:  # the searcher's, made below
        if searcher.sync is not None:
            searcher.sync.forget(store_id)

    drops = StoreDrops.of(
        db.stores,
        attributes=attributes,
        indexes=indexes,
        keywords=keywords,
        forget_sync=forget_sync,
    )
    stores = VectorStores(
        db,
        choice.resolve,
        book,
        scheduler,
        indexes,
        attributes,
        keywords,
        calls=calls,
        drops=drops,
        clock=clock,
    )
    instance = new_owner_id()  # this server's id: its job leases' owner and its replica id
    leases = JobLeases(db.jobs, instance, settings.job_lease_seconds)
    replicas = Replicas(
        db.replicas,
        instance,
        heartbeat_s=settings.replica_heartbeat_seconds,
        window_s=settings.replica_timeout_seconds,
        clock=clock,
    )
    processing = Processing(
        db,
        book,
        blobs,
        stores,
        indexes,
        pool,
        scheduler,
        embedders.spec_for,
        metrics,
        attributes,
        commit_attempts=settings.commit_attempts,
        retry_delay=settings.commit_retry_delay,
        pending=pending,
        leases=leases,
        keywords=keywords,
        calls=calls,
    )
    store_files = StoreFiles(
        book, stores, indexes, scheduler, files, attributes, pending, leases=leases, calls=calls
    )
    lease_keeper = LeaseKeeper(leases, processing.sweep, settings.job_renew_seconds)
    file_deletion = FileDeletion(book, files, store_files)
    batches = FileBatches(book, store_files, hub)
    query_embedding = QueryEmbedding(
        {
            "openai": LaneLimits(
                settings.openai_query_concurrency,
                settings.openai_query_queue,
                "--openai-query-concurrency and --openai-query-queue",
            )
        },
        default_wait_s=2 * settings.openai_timeout,
    )
    searcher = Searcher(
        stores,
        indexes,
        embedders.embedder_for,
        exact_max_chunks=settings.exact_search_max_chunks,
        pending=pending,
        query_embedding=query_embedding,
        attributes=attributes,
        sync=IndexSync(
            db.index_sync,
            indexes,
            lambda: replicas.epoch,
            files=attributes,
            keywords=keywords,
            keyword_rows=db.chunks.keyword_rows,
            # Alone on its database (one node), its own ingest keeps its indexes current.
            active=lambda: replicas.epoch > 1,
        ),
        keywords=keywords,
        drops=drops,
    )
    metrics.watch_gauges(
        queue_depth=lambda: scheduler.queued,
        in_flight=lambda: scheduler.in_flight,
        watchers=lambda: hub.watcher_count,
        index_vectors=indexes.live_vectors,
        indexes_open=lambda: indexes.open_count,
        pool_restarts=lambda: pool.restarts,
    )
    listen = change_listener(db)
    shared_watch = (
        None if listen is None else SharedWatch(db.batches, book, hub, listen, drops=drops)
    )
    return Core(
        storage=db,
        blobs=blobs,
        indexes=indexes,
        keywords=keywords,
        pool=pool,
        metrics=metrics,
        hub=hub,
        book=book,
        pending=pending,
        uploads=uploads,
        embedders=embedders,
        scheduler=scheduler,
        files=files,
        stores=stores,
        processing=processing,
        store_files=store_files,
        file_deletion=file_deletion,
        batches=batches,
        searcher=searcher,
        leases=leases,
        lease_keeper=lease_keeper,
        query_embedding=query_embedding,
        attributes=attributes,
        replicas=replicas,
        calls=calls,
        drops=drops,
        shared_watch=shared_watch,
    )
