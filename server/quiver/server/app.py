"""Builds and runs the server: storage, core, servicers, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from grpc import aio
from grpc_health.v1 import _async as health_aio  # what health.aio refers to
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from quiver.server.api.files import FileServicer
from quiver.server.api.interceptor import QuiverInterceptor
from quiver.server.api.vector_stores import VectorStoreServicer
from quiver.server.auth.keys import KeyRing
from quiver.server.config import Settings
from quiver.server.core.embedder_choice import EmbedderChoice
from quiver.server.core.files import FileStore
from quiver.server.core.vector_stores import VectorStores
from quiver.server.storage.blobs import BlobStore
from quiver.server.storage.database import Database
from quiver.v1 import (
    file_batches_pb2,
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
    """One running server. ``start`` binds and serves; ``stop`` drains and closes storage."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyRing.load(settings.api_keys_file, settings.api_keys)
        if self.keys.open and not is_loopback(settings.listen):
            raise ConfigError(
                f"no API keys are configured, so the server may only listen on loopback, "
                f"not {settings.listen}; add keys with 'quiver keys add TENANT --file FILE' "
                "and pass --api-keys-file FILE"
            )
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.db = Database(data / "quiver.sqlite3")
        self.blobs = BlobStore(data / "blobs")
        self.files = FileStore(self.db, self.blobs, max_file_bytes=settings.max_file_bytes)
        choice = EmbedderChoice(settings.embedding_dimensions, settings.openai_base_url)
        self.stores = VectorStores(self.db, choice.resolve)
        self.health = health_aio.HealthServicer()
        self.port = 0
        self._server: aio.Server | None = None
        self._stopped = asyncio.Event()

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def start(self) -> int:
        options = [
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = aio.server(interceptors=[QuiverInterceptor(self.keys)], options=options)
        files_pb2_grpc.add_FileServiceServicer_to_server(FileServicer(self.files), server)
        vector_stores_pb2_grpc.add_VectorStoreServiceServicer_to_server(
            VectorStoreServicer(self.stores), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise ConfigError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self._server = server
        if self.keys.open:
            log.warning(
                "no API keys configured: serving OPEN (no authentication) on loopback only",
                extra={"listen": self.settings.listen},
            )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"listen": self.settings.listen, "port": self.port})
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new RPCs, let in-flight ones finish, close storage."""
        if self._server is None or self._stopped.is_set():
            return
        grace = self.settings.grace_period if grace is None else grace
        log.info("draining", extra={"grace_s": grace})
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)
        self.db.close()
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
