"""How many UploadFile streams may be open at once, per tenant and in all.

Each open upload holds a temp file, its descriptor and up to one message in memory; without
a bound, stalled streams exhaust descriptors and memory for every tenant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from quiver.server.core.errors import ResourceExhausted


class UploadSlots:
    def __init__(self, *, max_total: int, max_per_tenant: int) -> None:
        self.max_total = max_total
        self.max_per_tenant = max_per_tenant
        self._open: dict[str, int] = {}
        self._total = 0

    @property
    def open(self) -> int:
        return self._total

    def open_for(self, tenant: str) -> int:
        return self._open.get(tenant, 0)

    @contextlib.contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """One slot for the duration of an upload; RESOURCE_EXHAUSTED naming the limit."""
        mine = self.open_for(tenant)
        if mine >= self.max_per_tenant:
            raise ResourceExhausted(
                f"you have {mine} uploads open, the server's limit per tenant "
                f"(--max-uploads-per-tenant); finish or cancel one, then retry",
                reason="TENANT_UPLOADS_EXHAUSTED",
            )
        if self._total >= self.max_total:
            raise ResourceExhausted(
                f"the server has {self._total} uploads open, its limit (--max-uploads); "
                "retry shortly",
                reason="UPLOADS_EXHAUSTED",
            )
        self._open[tenant] = mine + 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            left = self._open[tenant] - 1
            if left:
                self._open[tenant] = left
            else:
                del self._open[tenant]
