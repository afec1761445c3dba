"""One RPC's outcome: the rpcs/rpc_seconds metrics and one access log line."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import grpc
from quiver.server.metrics import Metrics

log = logging.getLogger("quiver.rpc")


@dataclass
class CallRecord:
    """What is known about one RPC while it runs."""

    method: str
    started: float = field(default_factory=time.perf_counter)
    code: grpc.StatusCode = grpc.StatusCode.OK
    request_id: str = ""
    tenant: str = ""


def record(call: CallRecord, cancelled: bool, metrics: Metrics) -> None:
    """Counts and logs the finished call; an OK call whose caller went away is CANCELLED."""
    if call.code == grpc.StatusCode.OK and cancelled:
        call.code = grpc.StatusCode.CANCELLED
    seconds = time.perf_counter() - call.started
    name = call.method.rsplit("/", 1)[-1]
    metrics.rpcs.labels(name, call.code.name).inc()
    metrics.rpc_seconds.labels(name).observe(seconds)
    log.info(
        "rpc",
        extra={
            "method": call.method,
            "code": call.code.name,
            "duration_ms": round(seconds * 1000, 2),
            "tenant": call.tenant,
        },
    )
