"""Who is calling: an API key and an optional on-behalf-of id to a Principal.

Framework-free: the gRPC edge passes its metadata here and an HTTP edge its headers. Failures
are core errors (UNAUTHENTICATED with a reason), which each edge maps to its own status.
"""

from __future__ import annotations

from quiver.server.auth.keys import KeyRing
from quiver.server.core.errors import Unauthenticated
from quiver.server.core.principal import Principal

OPEN_TENANT = "default"
"""The one tenant of a server without API keys."""
MAX_ON_BEHALF_OF = 256


def authenticate(keys: KeyRing, authorization: str | None, on_behalf_of: str | None) -> Principal:
    """The caller of a request with these ``authorization`` and ``x-on-behalf-of`` values
    (None: not sent). Raises Unauthenticated."""
    subject = on_behalf_of or ""
    if len(subject) > MAX_ON_BEHALF_OF or not subject.isprintable():
        raise Unauthenticated(
            f"x-on-behalf-of must be printable and at most {MAX_ON_BEHALF_OF} characters",
            reason="BAD_ON_BEHALF_OF",
        )
    if keys.open:
        return Principal(OPEN_TENANT, subject)
    header = authorization or ""
    scheme, _, key = header.partition(" ")
    if not header:
        raise Unauthenticated(
            "missing 'authorization: Bearer <key>' metadata", reason="MISSING_API_KEY"
        )
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated(
            "authorization metadata must be 'Bearer <key>'", reason="BAD_AUTHORIZATION"
        )
    tenant = keys.tenant_for(key.strip())
    if tenant is None:
        raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
    return Principal(tenant, subject)
