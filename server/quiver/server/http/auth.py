"""Who is calling: ``Authorization: Bearer <key>`` and ``X-On-Behalf-Of``, checked against
the same KeyRing as the gRPC interceptor, with the same rules and reasons."""

from __future__ import annotations

from quiver.server.auth.keys import KeyRing
from quiver.server.core.errors import Unauthenticated
from quiver.server.core.principal import Principal

OPEN_TENANT = "default"
MAX_ON_BEHALF_OF = 256


def authenticate(keys: KeyRing, authorization: str, on_behalf_of: str) -> Principal:
    """The caller's principal, or Unauthenticated saying what is wrong."""
    if len(on_behalf_of) > MAX_ON_BEHALF_OF or not on_behalf_of.isprintable():
        raise Unauthenticated(
            f"x-on-behalf-of must be printable and at most {MAX_ON_BEHALF_OF} characters",
            reason="BAD_ON_BEHALF_OF",
        )
    if keys.open:
        return Principal(OPEN_TENANT, on_behalf_of)
    scheme, _, key = authorization.partition(" ")
    if not authorization:
        raise Unauthenticated(
            "missing 'Authorization: Bearer <key>' header", reason="MISSING_API_KEY"
        )
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated(
            "the Authorization header must be 'Bearer <key>'", reason="BAD_AUTHORIZATION"
        )
    tenant = keys.tenant_for(key.strip())
    if tenant is None:
        raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
    return Principal(tenant, on_behalf_of)
