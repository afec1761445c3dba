"""The grpc server's transport limits: message size, streams per connection, keepalive
policy, connection idle and age. Each comes from a setting (flag, QUIVER_* env, default)."""

from __future__ import annotations

from quiver.server.config import Settings


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        # The server pings quiet connections, so a vanished client's calls end.
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout)),
        # ... and keeps pinging through a quiet watch (0: no cap on pings without data).
        ("grpc.http2.max_pings_without_data", 0),
        # Clients may ping this often (the Python client: every 30 s), even between calls.
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.min_ping_interval)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_idle_ms", _ms(settings.max_connection_idle)),
        ("grpc.max_connection_age_ms", _ms(settings.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace)),
    ]
