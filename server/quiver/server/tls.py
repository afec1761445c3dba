"""TLS for the gRPC port: the certificate files, checked at start and re-read when they change.

grpc asks ``fetch`` for a new configuration before each TLS handshake; it answers None
(keep the current one) unless a file's size or mtime changed or ``request_reload`` was
called (SIGHUP). A new set that does not load (a half-written file during a rotation, a key
that does not match its certificate) is logged and the current one is kept, so a rotation
never takes the port down; the next change is tried again.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("quiver.tls")


class TlsConfigError(ValueError):
    """The certificate files are missing, unreadable or do not belong together."""


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[tuple[int, int], ...]
    key: bytes
    chain: bytes
    client_ca: bytes | None


def check_settings(cert: Path | None, key: Path | None, client_ca: Path | None) -> bool:
    """True when TLS is configured; raises TlsConfigError for a half configuration."""
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key (TLS is off)")
        return False
    if cert is None or key is None:
        missing = "--tls-key" if key is None else "--tls-cert"
        raise TlsConfigError(f"--tls-cert and --tls-key go together: {missing} is missing")
    return True


class CertificateFiles:
    """The server's certificate chain, key and optional client CA, as grpc credentials."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self._lock = threading.Lock()
        self._reload_requested = False
        self._failed_stamp: tuple[tuple[int, int], ...] | None = None
        self.reloads = 0
        self._current = self._load()  # raises TlsConfigError: the server does not start

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def _paths(self) -> tuple[Path, ...]:
        return (
            (self.cert, self.key)
            if self.client_ca is None
            else (
                self.cert,
                self.key,
                self.client_ca,
            )
        )

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self._paths():
            try:
                st = path.stat()
            except OSError:
                out.append((-1, -1))
            else:
                out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _load(self) -> _Loaded:
        stamp = self._stamp()
        names = {self.cert: "--tls-cert", self.key: "--tls-key", self.client_ca: "--tls-client-ca"}
        data: dict[Path, bytes] = {}
        for path in self._paths():
            try:
                data[path] = path.read_bytes()
            except OSError as exc:
                raise TlsConfigError(f"cannot read {names[path]} {path}: {exc}") from exc
            if b"-----BEGIN " not in data[path]:
                raise TlsConfigError(f"{names[path]} {path} is not a PEM file")
        # The standard library says clearly what grpc would only report as a failed handshake.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(
                f"--tls-cert {self.cert} and --tls-key {self.key} do not load as a pair: {exc}"
            ) from exc
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise TlsConfigError(
                    f"--tls-client-ca {self.client_ca} is not a PEM CA bundle: {exc}"
                ) from exc
        ca = data[self.client_ca] if self.client_ca is not None else None
        return _Loaded(stamp, data[self.key], data[self.cert], ca)

    def _configuration(self, loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(loaded.key, loaded.chain)], root_certificates=loaded.client_ca
        )

    def credentials(self) -> grpc.ServerCredentials:
        # grpc's stubs say the fetcher returns a configuration; grpc accepts None (no change).
        fetch: Any = self.fetch
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._current),
            fetch,
            require_client_authentication=self.mutual,
        )

    def request_reload(self) -> None:
        """Re-read the files at the next handshake even if they look unchanged (SIGHUP)."""
        with self._lock:
            self._reload_requested = True

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's certificate-configuration fetcher: None keeps the current configuration."""
        with self._lock:
            stamp = self._stamp()
            forced = self._reload_requested
            if not forced and (stamp == self._current.stamp or stamp == self._failed_stamp):
                return None
            self._reload_requested = False
            try:
                loaded = self._load()
            except TlsConfigError as exc:
                self._failed_stamp = stamp
                log.warning("TLS files changed but do not load; keeping the current ones: %s", exc)
                return None
            self._current = loaded
            self._failed_stamp = None
            self.reloads += 1
        log.info("TLS certificate files reloaded", extra={"cert": str(self.cert)})
        return self._configuration(loaded)
