"""Whether the server takes RPCs now: refused with UNAVAILABLE while it starts or drains."""

from __future__ import annotations

from quiver.server.core.errors import Unavailable


class ServingGate:
    def __init__(self) -> None:
        # Why RPCs are refused right now (starting up, draining), or None when serving.
        self.closed_reason: str | None = "the server is starting"

    def check(self) -> None:
        """Raises Unavailable (reason NOT_SERVING) unless the server is serving."""
        if self.closed_reason is not None:
            raise Unavailable(
                f"{self.closed_reason}; retry shortly (watch grpc.health.v1)",
                reason="NOT_SERVING",
            )
