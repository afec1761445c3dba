"""Object ids in OpenAI's style: a prefix and 24 random letters and digits."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_LENGTH = 24

FILE = "file-"
VECTOR_STORE = "vs_"
FILE_BATCH = "vsfb_"


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))


def looks_like(prefix: str, value: str) -> bool:
    """Whether ``value`` has the shape of an id with ``prefix`` (no database lookup)."""
    body = value[len(prefix) :]
    return (
        value.startswith(prefix)
        and 1 <= len(body) <= 64
        and all(c in _ALPHABET or c in "-_" for c in body)
    )
