"""A call's text metadata by lower-case key; a header that must come once, sent twice, refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grpc import aio
from quiver.server.core.errors import Unauthenticated

SINGLE_HEADERS = frozenset({"authorization", "x-on-behalf-of"})


@dataclass
class CallMetadata:
    values: dict[str, str] = field(default_factory=dict)
    # Keys among SINGLE_HEADERS sent more than once, in the order first repeated.
    repeated: list[str] = field(default_factory=list)

    def require_single(self) -> None:
        """Which copy would win is an accident of ordering: refuse the call."""
        if self.repeated:
            raise Unauthenticated(
                f"'{self.repeated[0]}' metadata was sent more than once; send it exactly once",
                reason="DUPLICATE_METADATA",
            )


def read_metadata(context: aio.ServicerContext[Any, Any]) -> CallMetadata:
    metadata = CallMetadata()
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        name = key.lower()
        if name in metadata.values and name in SINGLE_HEADERS and name not in metadata.repeated:
            metadata.repeated.append(name)
        metadata.values[name] = value
    return metadata
