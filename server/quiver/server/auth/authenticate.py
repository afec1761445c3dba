"""Who is calling: an API key and an optional on-behalf-of id to a Principal.

Framework-free: the gRPC edge passes its metadata here and an HTTP edge its headers. Failures
are core errors (UNAUTHENTICATED with a reason), which each edge maps to its own status.
"""

from __future__ import annotations

from typing import Literal

from quiver.server.auth.keys import KeyRing
from quiver.server.core.errors import Unauthenticated
from quiver.server.core.principal import Principal

OPEN_TENANT = "default"
"""The one tenant of a server without API keys."""
MAX_ON_BEHALF_OF = 256


def authenticate(
    keys: KeyRing,
    authorization: str | None,
    on_behalf_of: str | None,
    *,
    carrier: Literal["metadata", "header"] = "metadata",
) -> Principal:
    """The caller of a request with these ``authorization`` and ``x-on-behalf-of`` values
    (None: not sent). Raises Unauthenticated; its message names the ``carrier`` the edge
    reads them from (gRPC metadata, an HTTP header)."""
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
        name = "authorization" if carrier == "metadata" else "Authorization"
        raise Unauthenticated(f"missing '{name}: Bearer <key>' {carrier}", reason="MISSING_API_KEY")
    if scheme.lower() != "bearer" or not key.strip():
        name = "authorization metadata" if carrier == "metadata" else "the Authorization header"
        raise Unauthenticated(f"{name} must be 'Bearer <key>'", reason="BAD_AUTHORIZATION")
    tenant = keys.tenant_for(key.strip())
    if tenant is None:
        raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
    return Principal(tenant, subject)
