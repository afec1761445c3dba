"""Connection settings shared by Client and AsyncClient, with environment defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_TARGET = "localhost:50051"


@dataclass(frozen=True)
class Settings:
    target: str
    api_key: str | None
    on_behalf_of: str | None
    tls: bool
    root_certificates: bytes | None
    certificate_chain: bytes | None
    private_key: bytes | None
    timeout: float | None
    max_retries: int
    retry_backoff: float

    @classmethod
    def resolve(
        cls,
        *,
        target: str | None,
        api_key: str | None,
        on_behalf_of: str | None,
        tls: bool | None,
        root_certificates: bytes | str | Path | None,
        timeout: float | None,
        max_retries: int,
        retry_backoff: float,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
    ) -> Settings:
        """Arguments win; then QUIVER_TARGET / QUIVER_API_KEY / QUIVER_ON_BEHALF_OF and, for
        TLS, QUIVER_TLS_CA / QUIVER_TLS_CERT / QUIVER_TLS_KEY (PEM file paths)."""
        root_certificates = _pem(root_certificates, "QUIVER_TLS_CA")
        certificate_chain = _pem(certificate_chain, "QUIVER_TLS_CERT")
        private_key = _pem(private_key, "QUIVER_TLS_KEY")
        if (certificate_chain is None) != (private_key is None):
            raise ValueError(
                "a client certificate needs both certificate_chain and private_key "
                "(QUIVER_TLS_CERT and QUIVER_TLS_KEY)"
            )
        return cls(
            target=target or os.environ.get("QUIVER_TARGET") or DEFAULT_TARGET,
            api_key=api_key if api_key is not None else os.environ.get("QUIVER_API_KEY"),
            on_behalf_of=on_behalf_of or os.environ.get("QUIVER_ON_BEHALF_OF") or None,
            tls=bool(tls) or root_certificates is not None or certificate_chain is not None,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        if self.api_key:
            out.append(("authorization", f"Bearer {self.api_key}"))
        if self.on_behalf_of:
            out.append(("x-on-behalf-of", self.on_behalf_of))
        return tuple(out)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def backoff(self, attempt: int) -> float:
        return float(min(self.retry_backoff * (2**attempt), 5.0))


def _pem(value: bytes | str | Path | None, env: str) -> bytes | None:
    """PEM bytes given as such, as a file path, or named by the environment variable."""
    if value is None:
        value = os.environ.get(env) or None
    if isinstance(value, str | Path):
        return Path(value).read_bytes()
    return value


KEEPALIVE_TIME_MS = 30_000
"""The client pings a quiet connection this often. The server accepts pings every 15 s at
most (its --min-ping-interval), so these never count as abuse (GOAWAY too_many_pings)."""


def channel_options(keepalive_time_ms: int = KEEPALIVE_TIME_MS) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # The server accepts 4 MiB messages by default; uploads go in 1 MiB pieces.
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Keep pinging through a long quiet call (an upload, a watch), not just twice.
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect soon after a server restart, within the client's own retries.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


CHANNEL_OPTIONS = channel_options()
