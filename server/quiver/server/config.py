"""Server settings: every one has a flag, a QUIVER_* environment variable and a default."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    # -- where it listens and what it keeps --
    listen: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:8080"
    data_dir: Path = Path("./quiver-data")
    blobs: str = ""
    database: str = ""
    database_threads: int = 4
    database_queue: int = 1024
    api_keys_file: Path | None = None
    api_keys: str = ""
    # -- limits per request, upload and stream --
    max_file_bytes: int = 512 * MiB
    max_message_bytes: int = 4 * MiB
    grace_period: float = 10.0
    upload_idle_timeout: float = 30.0
    max_uploads: int = 64
    max_uploads_per_tenant: int = 16
    max_watchers: int = 1000
    max_watchers_per_tenant: int = 250
    # -- connections --
    max_concurrent_streams: int = 128
    max_connections: int = 1000
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    min_ping_interval: float = 15.0
    max_connection_idle: float = 300.0
    max_connection_age: float = 3600.0
    max_connection_age_grace: float = 600.0
    drain_delay: float = 0.0
    log_level: str = "info"
    # -- ingest --
    ingest: str = "local"
    ingest_workers: int = max(1, (os.cpu_count() or 2))
    max_queued_files: int = 100_000
    max_queued_files_per_tenant: int = 25_000
    file_timeout: float = 300.0
    file_parse_seconds: float = 60.0
    worker_memory: int = 0
    commit_attempts: int = 8
    ray_tasks: int = 8
    ray_task_retries: int = 2
    commit_retry_delay: float = 1.0
    # -- embedding, indexes and search --
    embedding_dimensions: int = 512
    index_save_interval: float = 30.0
    job_lease_seconds: float = 30.0
    job_renew_seconds: float = 10.0
    exact_search_max_chunks: int = 10_000
    exact_search_cache_mb: int = 1024
    attribute_index_stores: int = 64
    keyword_commit_seconds: float = 1.0
    keyword_pending_chunks: int = 20_000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 256
    metrics_listen: str = ""
    openai_base_url: str = ""
    openai_api_key: str = ""
    openai_timeout: float = 30.0
    openai_batch_size: int = 64
    openai_concurrency: int = 4
    openai_query_concurrency: int = 4
    openai_query_queue: int = 64
    openai_query_prefix: str = ""
    openai_passage_prefix: str = ""
    models_dir: Path | None = None
    local_threads: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    reload_interval: float = 2.0
    # -- replicas --
    advertise: str = ""
    replica_heartbeat_seconds: float = 2.0
    replica_timeout_seconds: float = 10.0
    replica_forward_timeout_seconds: float = 5.0


_HELP: dict[str, str] = {
    "listen": "host:port to serve gRPC on",
    "http_listen": "host:port to serve the HTTP/JSON API on (OpenAI's REST paths under /v1 "
    "and /api/v1/llm), in the same process; 'off' disables it",
    "data_dir": "directory for the SQLite database, file blobs and indexes",
    "blobs": "where uploaded files' bytes are kept: empty = DATA_DIR/blobs; an absolute "
    "directory every replica shares (an NFS-style mount); or s3://BUCKET/PREFIX, with the "
    "endpoint, region and credentials from AWS_ENDPOINT_URL(_S3), AWS_REGION (or "
    "AWS_DEFAULT_REGION) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (needs the extra "
    "quiver-vectorstore[s3])",
    "database": "where the rows live: empty = the SQLite file in the data directory; "
    "postgresql://USER@HOST:PORT/DB = PostgreSQL (the [postgres] extra)",
    "database_threads": "threads that run the requests' database calls, off the event loop "
    "(1-8: below PostgreSQL's pool of 10 connections per server, which the "
    "ingest's chunk slices, the heartbeats and the index catch-up share)",
    "database_queue": "database calls that may wait for one of those threads; more answer "
    "UNAVAILABLE at once (the database is then too slow or unreachable)",
    "api_keys_file": "file of hashed API keys ('quiver keys add' writes it); none = open mode, "
    "loopback only",
    "api_keys": "hashed API keys inline, same format as the file, comma separated",
    "max_file_bytes": "largest file UploadFile accepts, in bytes",
    "max_message_bytes": "largest single gRPC message accepted, in bytes (the Python client "
    "uploads in 1 MiB messages)",
    "upload_idle_timeout": "seconds an UploadFile stream may send nothing before it ends with "
    "DEADLINE_EXCEEDED and its temp file is removed",
    "max_uploads": "UploadFile streams open at once, all tenants together; more answer "
    "RESOURCE_EXHAUSTED",
    "max_uploads_per_tenant": "UploadFile streams one tenant may have open at once; more answer "
    "RESOURCE_EXHAUSTED",
    "max_watchers": "WatchFileBatch streams open at once, all tenants together; more answer "
    "RESOURCE_EXHAUSTED",
    "max_watchers_per_tenant": "WatchFileBatch streams one tenant may have open at once; more "
    "answer RESOURCE_EXHAUSTED",
    "max_concurrent_streams": "HTTP/2 streams (calls) one connection may have open at once; "
    "clients queue the rest",
    "max_connections": "client connections open at once; more are closed as they arrive",
    "keepalive_time": "seconds of quiet on a connection before the server pings the client",
    "keepalive_timeout": "seconds the server waits for that ping's answer before closing the "
    "connection",
    "min_ping_interval": "least seconds between a client's keepalive pings the server accepts "
    "(oftener: GOAWAY too_many_pings); the Python client pings every 30 s",
    "max_connection_idle": "seconds a connection with no calls stays open",
    "max_connection_age": "seconds after which a connection is asked to go away (clients "
    "reconnect), so none holds resources for ever",
    "max_connection_age_grace": "seconds the calls of a connection past its age get to finish",
    "grace_period": "seconds in-flight RPCs get to finish on SIGTERM/SIGINT",
    "drain_delay": "seconds health reports NOT_SERVING before the server stops accepting "
    "RPCs, so load balancers move away first (set it to your probe interval)",
    "log_level": "debug, info, warning or error",
    "ingest": "where files are parsed, chunked and embedded: 'local' (--ingest-workers "
    "processes of this server), 'ray:auto' (Ray tasks on a local Ray: this machine's running "
    "one or RAY_ADDRESS, else a new one) or 'ray://HOST:PORT' (Ray tasks on a cluster, through "
    "its Ray Client server); Ray needs the ray extra",
    "ray_tasks": "with --ingest ray:…, Ray tasks (one file each, one CPU each) in flight at "
    "once; further files wait in the server's queue (at most the cluster's CPUs: "
    "--file-timeout counts from submission)",
    "ray_task_retries": "with --ingest ray:…, times a file's Ray task is run again when its "
    "worker process or node is lost",
    "ingest_workers": "worker processes that parse, chunk and embed files",
    "max_queued_files": "files waiting for ingest before CreateFileBatch answers "
    "RESOURCE_EXHAUSTED",
    "max_queued_files_per_tenant": "files of one tenant waiting for ingest before its "
    "CreateFileBatch answers RESOURCE_EXHAUSTED (so one tenant cannot fill the whole queue)",
    "file_timeout": "seconds (wall clock) one file may take in a worker; past it the worker "
    "is stopped and replaced, and the file fails with invalid_file",
    "file_parse_seconds": "CPU seconds one file may use in a worker to parse, chunk and embed "
    "before it fails with invalid_file",
    "worker_memory": "MiB of address space each ingest worker may map (0 = min(4096, half of "
    "physical memory / --ingest-workers)); the parsers' size caps follow from it, and a file "
    "that needs more fails with invalid_file",
    "commit_attempts": "times a file's chunks are tried to be stored when the disk is full "
    "before the file fails with server_error",
    "commit_retry_delay": "seconds before the first retry on a full disk (doubling, at most 60)",
    "embedding_dimensions": "default vector dimension of the 'hash' embedder",
    "index_save_interval": "seconds between saves of changed indexes (also saved at stop)",
    "job_lease_seconds": "seconds a server's claim on a file it ingests lasts without renewal; "
    "after a crash (SIGKILL) the files it held are taken up again once their leases expire",
    "job_renew_seconds": "seconds between renewals of the server's job leases and sweeps for "
    "expired ones (less than --job-lease-seconds)",
    "attribute_index_stores": "stores whose file attributes are kept indexed in memory for "
    "filtered search (least recently searched out; rebuilt from the database on next use)",
    "keyword_commit_seconds": "seconds a completed file's chunks may wait before the keyword "
    "index commits them with others (a search of the store commits them first)",
    "keyword_pending_chunks": "chunks a store's keyword index may hold uncommitted; past it, "
    "ingest waits for a commit",
    "exact_search_max_chunks": "a filtered search whose filter leaves at most this many chunks "
    "is exact (numpy) instead of approximate (hnswlib); at most 2000 when the store's vectors "
    "are not cached (see --exact-search-cache-mb) and must be read from the database",
    "exact_search_cache_mb": "MiB of stored vectors (and cached filter selections) kept in "
    "memory for exact filtered search, all stores together (least recently searched out; "
    "0: none)",
    "hnsw_m": "hnswlib M (graph degree) for new indexes",
    "hnsw_ef_construction": "hnswlib ef_construction for new indexes",
    "hnsw_ef_search": "hnswlib ef used for queries (raised as needed for k and filters)",
    "advertise": "host:port other replicas reach this one's gRPC at, to forward searches of "
    "the stores it owns (empty = the --listen address with the port bound, its host "
    "replaced by this machine's name when it is a wildcard such as 0.0.0.0)",
    "replica_heartbeat_seconds": "seconds between this replica's heartbeats in the database "
    "(and reads of which replicas are live)",
    "replica_timeout_seconds": "seconds without a heartbeat after which a replica counts as "
    "dead and its stores move to the others (at least twice --replica-heartbeat-seconds)",
    "replica_forward_timeout_seconds": "seconds a search forwarded to the replica owning the "
    "store may take (at most the caller's deadline); an owner that does not answer in time "
    "or is unreachable is marked dead and the search is answered here",
    "metrics_listen": "host:port for a Prometheus /metrics endpoint (off when empty), "
    "e.g. 127.0.0.1:9464",
    "openai_base_url": "OpenAI-compatible endpoint for 'openai:<model>' stores, "
    "e.g. http://127.0.0.1:8000/v1",
    "openai_api_key": "API key sent to that endpoint",
    "openai_timeout": "seconds one request to that endpoint may wait for its answer; a "
    "request of several chunks that times out is split in halves and sent again",
    "openai_batch_size": "chunks per request to that endpoint (at most 2048)",
    "openai_concurrency": "requests the ingest workers together keep in flight to that "
    "endpoint; the others wait their turn",
    "openai_query_concurrency": "search query embeddings in flight to that endpoint at once, "
    "on threads of their own (a slow endpoint never holds up searches of other stores)",
    "openai_query_queue": "search query embeddings that may wait for one of those threads; "
    "more answer RESOURCE_EXHAUSTED",
    "openai_query_prefix": "text put before every search query sent to that endpoint, e.g. "
    "'query: ' for e5 models (changing it or the passage prefix needs re-embedded stores)",
    "openai_passage_prefix": "text put before every chunk sent to that endpoint, e.g. "
    "'passage: ' for e5 models",
    "models_dir": "directory of 'local:<name>' models, one <name>/ folder each (model.json, "
    "the ONNX file, tokenizer.json), searched before the models Quiver ships",
    "local_threads": "ONNX Runtime threads of a 'local:' model in each ingest worker and for "
    "queries (0 = cores / --ingest-workers, at least 1)",
    "tls_cert": "PEM certificate chain to serve TLS with (with --tls-key); re-read when the "
    "file changes or on SIGHUP",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "reload_interval": "seconds between checks of the API keys file for changes (0: only on "
    "SIGHUP); TLS files are checked at each new connection",
    "insecure": "allow API keys over plaintext on a non-loopback address (keys then travel "
    "in clear text: only behind a TLS-terminating proxy or on a trusted network)",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag_value(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SystemExit(f"quiver serve: {name} must be one of 1/true/yes/on or 0/false/no/off")


def env_name(field: str) -> str:
    return "QUIVER_" + field.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        default: Any = f.default
        env = os.environ.get(env_name(f.name))
        if isinstance(default, bool):
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action="store_true",
                default=_flag_value(env_name(f.name), env) if env is not None else default,
                help=f"{_HELP[f.name]} (env {env_name(f.name)}=1; default off)",
            )
            continue
        kind = type(default) if default is not None else Path
        if f.name == "api_keys_file":
            kind = Path
        value = kind(env) if env is not None and env != "" else default
        shown = "none" if default is None or default == "" else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=value,
            metavar=f.name.split("_")[-1].upper(),
            help=f"{_HELP[f.name]} (env {env_name(f.name)}; default {shown})",
        )


def check_http_listen(value: str) -> str | None:
    """What is wrong with an ``http_listen`` value ("off" or host:port), or None."""
    if value == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"http_listen must be 'off' or HOST:PORT (port 0…65535), not {value[:80]!r}"
    if ":" in host.strip("[]") and not (host.startswith("[") and host.endswith("]")):
        return f"http_listen: write an IPv6 host in brackets ([::1]:8080), not {value[:80]!r}"
    return None


def check_database(value: str) -> str | None:
    """Why ``--database`` cannot be used, or None: empty (SQLite) or a postgresql:// URL."""
    if value == "":
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return (
            "database must be empty (the SQLite file in the data directory) or a "
            f"postgresql://USER@HOST:PORT/DB URL, not {value[:80]!r}"
        )
    location = rest.split("?", 1)[0]
    host, slash, name = location.rpartition("/")
    if not slash or not name or not host.rpartition("@")[2]:
        return (
            "database: the URL names no host and database "
            f"(postgresql://USER@HOST:PORT/DB), not {value[:80]!r}"
        )
    return None


def from_namespace(ns: argparse.Namespace) -> Settings:
    settings = Settings(**{f.name: getattr(ns, f.name) for f in fields(Settings)})
    problem = check_http_listen(settings.http_listen) or check_database(settings.database)
    if problem is not None:
        raise SystemExit(f"quiver serve: {problem}")
    return settings
