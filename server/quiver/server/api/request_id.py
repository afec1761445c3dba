"""The request id of a call: the caller's ``x-request-id`` when it is sane, else a new one."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

MAX_REQUEST_ID = 128


def request_id(metadata: Mapping[str, str]) -> str:
    supplied = metadata.get("x-request-id", "")
    if 0 < len(supplied) <= MAX_REQUEST_ID and supplied.isprintable():
        return supplied
    return secrets.token_hex(8)
