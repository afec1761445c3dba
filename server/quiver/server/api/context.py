"""Per-call context set by the interceptor: the caller and the request id."""

from __future__ import annotations

import contextvars

from quiver.server.core.principal import Principal

principal_var: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served."""
    return principal_var.get()
