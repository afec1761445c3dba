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
    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("./quiver-data")
    api_keys_file: Path | None = None
    api_keys: str = ""
    max_file_bytes: int = 512 * MiB
    max_message_bytes: int = 16 * MiB
    grace_period: float = 10.0
    drain_delay: float = 0.0
    log_level: str = "info"
    ingest_workers: int = max(1, (os.cpu_count() or 2))
    max_queued_files: int = 100_000
    file_timeout: float = 300.0
    commit_attempts: int = 8
    commit_retry_delay: float = 1.0
    embedding_dimensions: int = 512
    index_save_interval: float = 30.0
    exact_search_max_chunks: int = 2000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 256
    metrics_listen: str = ""
    openai_base_url: str = ""
    openai_api_key: str = ""


_HELP: dict[str, str] = {
    "listen": "host:port to serve gRPC on",
    "data_dir": "directory for the SQLite database, file blobs and indexes",
    "api_keys_file": "file of hashed API keys ('quiver keys add' writes it); none = open mode, "
    "loopback only",
    "api_keys": "hashed API keys inline, same format as the file, comma separated",
    "max_file_bytes": "largest file UploadFile accepts, in bytes",
    "max_message_bytes": "largest single gRPC message accepted, in bytes",
    "grace_period": "seconds in-flight RPCs get to finish on SIGTERM/SIGINT",
    "drain_delay": "seconds health reports NOT_SERVING before the server stops accepting "
    "RPCs, so load balancers move away first (set it to your probe interval)",
    "log_level": "debug, info, warning or error",
    "ingest_workers": "worker processes that parse, chunk and embed files",
    "max_queued_files": "files waiting for ingest before CreateFileBatch answers "
    "RESOURCE_EXHAUSTED",
    "file_timeout": "seconds one file may take in a worker before it fails with server_error",
    "commit_attempts": "times a file's chunks are tried to be stored when the disk is full "
    "before the file fails with server_error",
    "commit_retry_delay": "seconds before the first retry on a full disk (doubling, at most 60)",
    "embedding_dimensions": "default vector dimension of the 'hash' embedder",
    "index_save_interval": "seconds between saves of changed indexes (also saved at stop)",
    "exact_search_max_chunks": "a filtered search whose filter leaves at most this many chunks "
    "is exact (numpy) instead of approximate (hnswlib)",
    "hnsw_m": "hnswlib M (graph degree) for new indexes",
    "hnsw_ef_construction": "hnswlib ef_construction for new indexes",
    "hnsw_ef_search": "hnswlib ef used for queries (raised as needed for k and filters)",
    "metrics_listen": "host:port for a Prometheus /metrics endpoint (off when empty), "
    "e.g. 127.0.0.1:9464",
    "openai_base_url": "OpenAI-compatible endpoint for 'openai:<model>' stores, "
    "e.g. http://127.0.0.1:8000/v1",
    "openai_api_key": "API key sent to that endpoint",
}


def env_name(field: str) -> str:
    return "QUIVER_" + field.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        default: Any = f.default
        kind = type(default) if default is not None else Path
        if f.name == "api_keys_file":
            kind = Path
        env = os.environ.get(env_name(f.name))
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


def from_namespace(ns: argparse.Namespace) -> Settings:
    return Settings(**{f.name: getattr(ns, f.name) for f in fields(Settings)})
