"""Runs one server on the core that core/root.py builds: the gRPC server, its servicers, health,
reflection, and the lifecycle (start, recover, drain, stop)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time

import grpc
from grpc import aio
from grpc_health.v1 import _async as health_aio  # what health.aio refers to
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from quiver.server.api.file_batches import FileBatchServicer
from quiver.server.api.files import FileServicer
from quiver.server.api.forwarding import PeerChannels, SearchForwarder
from quiver.server.api.interceptor import QuiverInterceptor
from quiver.server.api.reflection_v1 import enable_reflection
from quiver.server.api.vector_stores import VectorStoreServicer
from quiver.server.auth.keys import KeyConfigError, KeyRing
from quiver.server.config import Settings, check_http_listen
from quiver.server.core import row_scan
from quiver.server.core.root import build_core
from quiver.server.http.search_forwarding import HttpSearchForwarding
from quiver.server.http.server import BindError, HttpEdge
from quiver.server.http.services import HttpServices
from quiver.server.ingest.pool import WorkerStartFailed
from quiver.server.storage.dir_lock import DirectoryInUse, DirLock
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


async def _nothing() -> None:
    return None


def advertised_address(listen: str, port: int, advertise: str) -> str:
    """Where other replicas reach this one: ``advertise`` if set, else the listen host (this
    machine's name for a wildcard host) with the port bound."""
    if advertise:
        return advertise
    host = listen.rsplit(":", 1)[0]
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


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
        self._check_http(settings)
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

    def _check_http(self, settings: Settings) -> None:
        """The HTTP listener's address: valid, and (it serves no TLS) keys cross a public
        address in clear text only with --insecure."""
        problem = check_http_listen(settings.http_listen)
        if problem is not None:
            raise ConfigError(problem)
        if settings.http_listen == "off" or is_loopback(settings.http_listen):
            return
        if self.keys.open:
            raise ConfigError(
                f"no API keys are configured, so HTTP may only listen on loopback, not "
                f"{settings.http_listen}; add keys or pass --http-listen off"
            )
        if not settings.insecure:
            raise ConfigError(
                f"the HTTP API serves no TLS: API keys would travel in clear text to "
                f"{settings.http_listen}; listen on loopback behind a TLS-terminating proxy, "
                "pass --insecure, or --http-listen off"
            )

    def _build(self, settings: Settings) -> None:
        """Builds the core on the data directory (whose lock is held)."""
        try:
            self.core = build_core(settings)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.metrics_port = 0
        self.health = health_aio.HealthServicer()
        self.interceptor = QuiverInterceptor(self.keys, self.core.metrics)
        self.port = 0
        self.forwarder = SearchForwarder(
            self.core.replicas,
            PeerChannels(self._peer_credentials(settings), server_options(settings)[:2]),
            settings.replica_forward_timeout_seconds,
            self.core.metrics,
        )
        self.http = (
            None
            if settings.http_listen == "off"
            else HttpEdge(
                settings.http_listen,
                HttpServices(
                    files=self.core.files,
                    file_deletion=self.core.file_deletion,
                    uploads=self.core.uploads,
                    stores=self.core.stores,
                    store_files=self.core.store_files,
                    batches=self.core.batches,
                    searcher=self.core.searcher,
                    upload_idle_timeout=settings.upload_idle_timeout,
                    search_forwarding=HttpSearchForwarding(self.forwarder),
                ),
                self.keys,
                self.core.metrics,
                max_connections=settings.max_connections,
            )
        )
        self.http_port = 0
        self._server: aio.Server | None = None
        self._saver: asyncio.Task[None] | None = None
        self._config_watcher: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._stopping = False

    def _peer_credentials(self, settings: Settings) -> grpc.ChannelCredentials | None:
        """How this replica dials the others: as clients dial it (plaintext, or TLS checked
        against the system's roots; with mutual TLS it shows its own certificate)."""
        if self.certificates is None:
            return None
        if not self.certificates.mutual or settings.tls_key is None or settings.tls_cert is None:
            return grpc.ssl_channel_credentials()
        return grpc.ssl_channel_credentials(
            private_key=settings.tls_key.read_bytes(),
            certificate_chain=settings.tls_cert.read_bytes(),
        )

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def start(self) -> int:
        started = time.perf_counter()
        core = self.core
        try:
            await core.start_workers()
        except WorkerStartFailed as exc:
            self._close_storage()  # releases the data directory too
            raise ConfigError(f"the ingest workers cannot start: {exc}") from None
        options = server_options(self.settings)
        server = aio.server(interceptors=[self.interceptor], options=options)
        files_pb2_grpc.add_FileServiceServicer_to_server(
            FileServicer(
                core.files, core.file_deletion, core.uploads, self.settings.upload_idle_timeout
            ),
            server,
        )
        vector_stores_pb2_grpc.add_VectorStoreServiceServicer_to_server(
            VectorStoreServicer(
                core.stores, core.store_files, core.batches, core.searcher, self.forwarder
            ),
            server,
        )
        file_batches_pb2_grpc.add_FileBatchServiceServicer_to_server(
            FileBatchServicer(core.batches), server
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
        if self.http is not None:
            try:
                self.http_port = await self.http.start()
            except BindError as exc:
                self._close_storage()
                raise ConfigError(str(exc)) from None
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
        await core.replicas.join(
            advertised_address(self.settings.listen, self.port, self.settings.advertise)
        )
        core.replicas.start()
        if self.settings.metrics_listen:
            self.metrics_port = core.metrics.serve(self.settings.metrics_listen)
        core.start_processing()
        self._saver = asyncio.create_task(self._save_periodically(), name="index-saver")
        if self.settings.reload_interval > 0 and self.keys.file is not None and not self.keys.open:
            self._config_watcher = asyncio.create_task(
                self._watch_keys_file(), name="keys-file-watcher"
            )
        self.interceptor.closed_reason = None
        if self.http is not None:
            self.http.open()
        await self._set_health(Serving.SERVING)
        log.info(
            "serving",
            extra={
                "listen": self.settings.listen,
                "port": self.port,
                "http_port": self.http_port or "off",
                "tls": "off"
                if self.certificates is None
                else ("mutual" if self.certificates.mutual else "on"),
                "startup_ms": round((time.perf_counter() - started) * 1000, 1),
                "exact_search": row_scan.describe(),
            },
        )
        return self.port

    async def _recover(self) -> None:
        """Takes up unfinished files and reconciles every index before SERVING."""
        self.interceptor.closed_reason = "the server is starting (recovering unfinished work)"
        await self.core.recover()

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.index_save_interval)
            await asyncio.to_thread(self.core.indexes.save_all)

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
        await self.core.replicas.stop()  # its row goes: the others stop forwarding here
        if self.settings.drain_delay > 0:  # let load balancers see NOT_SERVING and move away
            await asyncio.sleep(self.settings.drain_delay)
        self.interceptor.closed_reason = "the server is shutting down"
        if self.http is not None:  # new HTTP requests answer 503, event streams end
            self.http.close("the server is shutting down")
        await asyncio.gather(
            self._server.stop(grace), self.http.stop(grace) if self.http is not None else _nothing()
        )
        for task in (self._saver, self._config_watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.forwarder.channels.close()
        await self.core.stop_processing()  # unfinished files resume at the next start
        self._close_storage()
        log.info("stopped")

    def _close_storage(self) -> None:
        if self._stopped.is_set():
            return
        try:
            self.core.metrics.close()
            self.core.close()
        finally:
            self.dir_lock.release()  # another server may use the directory from now on
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
